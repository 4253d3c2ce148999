//! Applying an entry's effects to the profile (joining, commits, messages, edits, reactions) and the events they raise.

use super::*;

/// Queues events for the next [`Client::sync`], inside the caller's transaction.
pub(super) fn queue(tx: &ProfileTx<'_>, events: &[Event]) -> Result<(), ClientError> {
    for e in events {
        let json = serde_json::to_string(e)
            .map_err(|e| ClientError::Local(format!("cannot encode an event: {e}")))?;
        tx.queue_event(&json)?;
    }
    Ok(())
}

/// The event of a commit, from the conversation as it is after it: a device added
/// for a user who already had one here is a linked device, a device removed from a
/// user who keeps one is an unlinked device; the rest are members joining or leaving.
pub(super) fn members_event(
    id: ConversationId,
    by: &Username,
    change: &sotto_core::RosterChange,
    after: &Conversation,
) -> Result<Event, ClientError> {
    let roster = after.roster()?;
    let stays = |user: &Username, except: &[sotto_core::RosterEntry]| {
        roster
            .devices()
            .iter()
            .any(|e| &e.username == user && !except.iter().any(|x| x.device_id == e.device_id))
    };
    let (mut added, mut linked, mut removed, mut unlinked) = (vec![], vec![], vec![], vec![]);
    for e in &change.added {
        if stays(&e.username, &change.added) {
            linked.push(MemberDevice::of(e));
        } else {
            added.push((e.username.clone(), e.device_id));
        }
    }
    for e in &change.removed {
        if stays(&e.username, &[]) {
            unlinked.push(MemberDevice::of(e));
        } else {
            removed.push((e.username.clone(), e.device_id));
        }
    }
    Ok(Event::Members {
        conversation: id,
        by: by.clone(),
        added,
        removed,
        linked,
        unlinked,
        removed_me: change.removed_me,
    })
}

pub(super) fn security_of(e: &ClientError) -> Option<String> {
    match e {
        ClientError::Engine(engine) => engine
            .security_event()
            .map(|s: SecurityEvent| s.refusal.to_string()),
        ClientError::Refused(r) => Some(r.to_string()),
        _ => None,
    }
}

/// Applies one mailbox entry inside the caller's transaction.
pub(super) fn handle(
    tx: &ProfileTx<'_>,
    config: &ConversationConfig,
    account: &Account,
    entry: &Entry,
    now: u64,
) -> Result<Vec<Event>, ClientError> {
    match entry.kind {
        EntryKind::Welcome => {
            let mut trust = tx.trust();
            let joined = Conversation::join(&tx.provider(), &mut trust, &entry.body.0, config);
            let joined = match joined {
                Ok(j) => j,
                // A Welcome for a group this device is already in (e.g. a retried
                // commit's Welcome): nothing to do.
                Err(ConversationError::AlreadyMember) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let conv = joined.conversation;
            let users = conv.roster()?.users();
            let others: Vec<&Username> = users.keys().filter(|u| **u != account.username).collect();
            // Two people are a one-to-one conversation unless they already have one:
            // then this is a group of two (its name follows as the group's first
            // message, which also marks it a group).
            let direct_peer = match others.as_slice() {
                [peer] if tx.direct_with(peer)?.is_none() => Some((*peer).clone()),
                _ => None,
            };
            let row = if let Some(peer) = direct_peer {
                StoredConversation {
                    id: conv.id(),
                    kind: "direct".into(),
                    name: None,
                    peer: Some(peer),
                    disappearing_secs: None,
                    active: true,
                }
            } else {
                StoredConversation {
                    id: conv.id(),
                    kind: "group".into(),
                    name: None,
                    peer: None,
                    disappearing_secs: None,
                    active: true,
                }
            };
            tx.put_conversation(&row, now)?;
            tx.mark_roster_to_check(conv.id())?;
            Ok(vec![Event::Joined {
                conversation: conv.id(),
                by: joined.added_by.username,
            }])
        }
        // Directory notices need the network; `process_entry` handles them.
        EntryKind::Directory => Ok(Vec::new()),
        EntryKind::Commit | EntryKind::Message => {
            let Some(mut conv) = Conversation::load(&tx.provider(), entry.group)? else {
                return Err(ClientError::UnknownConversation(entry.group.to_string()));
            };
            let mut trust = tx.trust();
            let incoming = conv.process(&tx.provider(), &mut trust, &entry.body.0);
            match incoming? {
                Incoming::Message(_)
                    if !tx.conversation(entry.group)?.is_some_and(|c| c.active) =>
                {
                    // Left here already (waiting for the removal commit): not shown.
                    Ok(Vec::new())
                }
                Incoming::Message(m) => {
                    let outgoing = m.sender.username == account.username;
                    apply_content(
                        tx,
                        entry.group,
                        &m.sender.username,
                        m.sender.device_id,
                        outgoing,
                        &m.envelope,
                        now,
                    )
                }
                Incoming::Proposal { .. } => {
                    tx.mark_pending_proposals(entry.group)?;
                    Ok(Vec::new())
                }
                Incoming::Commit { change, committer } => {
                    tx.clear_pending_proposals(entry.group)?;
                    if change.removed_me {
                        tx.deactivate(entry.group)?;
                    }
                    if change.added.is_empty() && change.removed.is_empty() {
                        // A member refreshed its keys: nothing changed for anyone.
                        return Ok(Vec::new());
                    }
                    tx.mark_roster_to_check(entry.group)?;
                    Ok(vec![members_event(
                        entry.group,
                        &committer.username,
                        &change,
                        &conv,
                    )?])
                }
                _ => Ok(Vec::new()),
            }
        }
    }
}

/// Stores the effect of a message (sent or received) and says what happened.
pub(super) fn apply_content(
    tx: &ProfileTx<'_>,
    id: ConversationId,
    sender: &Username,
    sender_device: DeviceId,
    outgoing: bool,
    envelope: &Envelope,
    now: u64,
) -> Result<Vec<Event>, ClientError> {
    let message_id = envelope.id;
    let sent_at = envelope.sent_at_ms / 1000;
    let timer = tx.conversation(id)?.and_then(|c| c.disappearing_secs);
    let stored = |kind: &str, text: Option<String>, attachment: Option<String>| StoredMessage {
        conversation: id,
        id: message_id,
        sender: sender.clone(),
        sender_device,
        outgoing,
        kind: kind.to_owned(),
        text,
        attachment,
        sent_at,
        received_at: now,
        edited_at: None,
        deleted: false,
        expires_at: timer.map(|t| now + u64::from(t)),
    };
    let event = match &envelope.content {
        Content::Text(t) => {
            let m = stored("text", Some(t.body.clone()), None);
            tx.insert_message(&m)?.then_some(Event::Message(m))
        }
        Content::Attachment(a) => {
            let meta = serde_json::json!({
                "blob_id": a.blob_id,
                "key": sotto_proto::b64::encode(a.key.as_bytes()),
                "digest": sotto_proto::b64::encode(&a.digest),
                "size": a.size,
                "media_type": a.media_type,
                "name": a.file_name,
            });
            let m = stored("attachment", a.caption.clone(), Some(meta.to_string()));
            tx.insert_message(&m)?.then_some(Event::Message(m))
        }
        Content::Edit(e) => tx
            .edit_message(id, e.target, sender, &e.body, now)?
            .then(|| Event::Edited {
                conversation: id,
                id: e.target,
                text: e.body.clone(),
            }),
        Content::Delete(d) => tx
            .delete_message(id, d.target, sender)?
            .then_some(Event::Deleted {
                conversation: id,
                id: d.target,
            }),
        Content::Reaction(r) => {
            let emoji = (!r.remove).then(|| r.emoji.clone());
            tx.set_reaction(id, r.target, sender, emoji.as_deref())?;
            Some(Event::Reaction {
                conversation: id,
                target: r.target,
                sender: sender.clone(),
                emoji,
            })
        }
        Content::ReadReceipt(r) => Some(Event::Receipt {
            conversation: id,
            reader: sender.clone(),
            targets: r.targets.clone(),
        }),
        Content::Typing(_) => None,
        Content::GroupName(g) => {
            tx.set_name(id, &g.name)?;
            Some(Event::GroupName {
                conversation: id,
                by: sender.clone(),
                name: g.name.clone(),
            })
        }
        Content::DisappearingTimer(t) => {
            tx.set_disappearing(id, t.seconds)?;
            Some(Event::Timer {
                conversation: id,
                seconds: t.seconds,
            })
        }
        Content::Unsupported { kind } => {
            let m = stored(kind, None, None);
            tx.insert_message(&m)?.then_some(Event::Message(m))
        }
        _ => None,
    };
    Ok(event.into_iter().collect())
}
