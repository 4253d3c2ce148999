//! Conversations: resolving what a person typed, creating them, membership, listing and history.

use super::*;

impl Client {
    // ----- conversations -----

    /// The conversation a send goes to: the given conversation (which this device
    /// must still be a member of), or the one-to-one conversation with a user,
    /// created on first use.
    pub(super) async fn conversation_for(
        &self,
        to: Recipient,
    ) -> Result<ConversationId, ClientError> {
        let peer = match to {
            Recipient::Conversation(id) => return self.active(id),
            Recipient::User(peer) => peer,
        };
        if let Some(c) = self.read(|tx| tx.direct_with(&peer))? {
            return Ok(c.id);
        }
        // Their Welcome to a conversation with us may still be in the mailbox.
        self.catch_up().await?;
        if let Some(c) = self.read(|tx| tx.direct_with(&peer))? {
            return Ok(c.id);
        }
        self.start(
            StoredConversation {
                id: ConversationId::from_bytes(self.read(rng_bytes::<16>)?),
                kind: "direct".into(),
                name: None,
                peer: Some(peer.clone()),
                disappearing_secs: None,
                active: true,
            },
            &[peer],
        )
        .await
    }

    /// Whom a person means to send to by `what`: a conversation they would find
    /// with [`Client::find_conversation`], else a user of that name (their one-to-one
    /// conversation starts with the first message).
    pub async fn find_recipient(&self, what: &str) -> Result<Recipient, ClientError> {
        match self.find_conversation(what).await {
            Ok(id) => Ok(Recipient::Conversation(id)),
            Err(ClientError::UnknownConversation(_)) => match Username::parse(what) {
                Ok(user) => Ok(Recipient::User(user)),
                Err(_) => Err(ClientError::UnknownConversation(what.to_owned())),
            },
            Err(e) => Err(e),
        }
    }

    /// The conversation a person means by `what`, as they would type it: a whole
    /// conversation id, the username of a one-to-one conversation, a group's name
    /// (letter case aside), or the start of an id (at least 4 hex digits). More than
    /// one match is [`ClientError::Ambiguous`], listing them; none is
    /// [`ClientError::UnknownConversation`]. Catches up first when nothing matches (a
    /// Welcome may still be in the mailbox).
    pub async fn find_conversation(&self, what: &str) -> Result<ConversationId, ClientError> {
        match self.match_conversation(what) {
            Err(ClientError::UnknownConversation(_)) => {
                self.catch_up().await?;
                self.match_conversation(what)
            }
            found => found,
        }
    }

    fn match_conversation(&self, what: &str) -> Result<ConversationId, ClientError> {
        let all = self.read(|tx| tx.conversations())?;
        let unknown = || ClientError::UnknownConversation(what.to_owned());
        if let Ok(id) = what.parse::<ConversationId>() {
            return all
                .iter()
                .find(|c| c.id == id)
                .map(|c| c.id)
                .ok_or_else(unknown);
        }
        let lower = what.to_ascii_lowercase();
        // A contact: the active one-to-one conversation with them.
        if let Ok(peer) = Username::parse(what)
            && let Some(c) = self.read(|tx| tx.direct_with(&peer))?
        {
            return Ok(c.id);
        }
        let by_name: Vec<&StoredConversation> = all
            .iter()
            .filter(|c| {
                c.kind == "group"
                    && c.name
                        .as_ref()
                        .is_some_and(|n| n.to_lowercase() == what.to_lowercase())
            })
            .collect();
        let by_prefix: Vec<&StoredConversation> =
            if lower.len() >= 4 && lower.chars().all(|c| c.is_ascii_hexdigit()) {
                all.iter()
                    .filter(|c| c.id.to_string().starts_with(&lower))
                    .collect()
            } else {
                Vec::new()
            };
        // A group name before an id prefix.
        let mut matches = [by_name, by_prefix]
            .into_iter()
            .find(|m| !m.is_empty())
            .ok_or_else(unknown)?;
        // Conversations this device still takes part in before those it left.
        if matches.iter().any(|c| c.active) {
            matches.retain(|c| c.active);
        }
        match matches.as_slice() {
            [one] => Ok(one.id),
            many => Err(ClientError::Ambiguous {
                input: what.to_owned(),
                candidates: many
                    .iter()
                    .map(|c| {
                        let label = c
                            .name
                            .clone()
                            .or_else(|| c.peer.as_ref().map(ToString::to_string));
                        match label {
                            Some(label) => format!("{} ({label})", c.id),
                            None => c.id.to_string(),
                        }
                    })
                    .collect(),
            }),
        }
    }

    /// Creates a group conversation with these members (and all of their devices and
    /// this account's other devices).
    #[tracing::instrument(name = "create_group", skip_all)]
    pub async fn create_group(
        &self,
        name: &str,
        members: &[Username],
    ) -> Result<ConversationId, ClientError> {
        let id = ConversationId::from_bytes(self.read(rng_bytes::<16>)?);
        self.start(
            StoredConversation {
                id,
                kind: "group".into(),
                name: Some(name.to_owned()),
                peer: None,
                disappearing_secs: None,
                active: true,
            },
            members,
        )
        .await?;
        // Members learn the name from the group itself (the server never sees it).
        self.send_content(
            id,
            Content::GroupName(GroupName {
                name: name.to_owned(),
            }),
        )
        .await?;
        Ok(id)
    }

    /// Creates the MLS group and the server's group record, then adds `users` (and
    /// this account's other devices).
    pub(super) async fn start(
        &self,
        row: StoredConversation,
        users: &[Username],
    ) -> Result<ConversationId, ClientError> {
        let account = self.account()?;
        let me = account.username.clone();
        // Look everyone up first: an unknown user fails before anything is created.
        let mut wanted: Vec<Username> = users.iter().filter(|u| **u != me).cloned().collect();
        wanted.sort();
        wanted.dedup();
        for u in &wanted {
            self.transport.account(&account.token, u).await?;
        }
        let id = row.id;
        let now = self.now();
        self.write(|tx| {
            Conversation::create(&tx.provider(), &account.device, id, &self.config)?;
            tx.put_conversation(&row, now)
        })?;
        let mut everyone = wanted;
        everyone.push(me);
        let added = match self.transport.create_group(&account.token, id).await {
            Ok(()) => self.add_users(id, &everyone).await,
            Err(e) => Err(e),
        };
        if let Err(e) = added {
            // Do not keep a conversation nobody else can read: the next send to this
            // user must try again from scratch, not post into an empty group.
            self.write(|tx| {
                if let Some(conv) = Conversation::load(&tx.provider(), id)? {
                    conv.delete(&tx.provider())?;
                }
                tx.delete_conversation(id)
            })?;
            return Err(e);
        }
        Ok(id)
    }

    /// Adds users (all their devices; for this account, its other devices) to a
    /// conversation, retrying on `stale_epoch`.
    #[tracing::instrument(name = "add_members", skip_all)]
    pub async fn add_members(
        &self,
        conversation: ConversationId,
        users: &[Username],
    ) -> Result<(), ClientError> {
        self.active(conversation)?;
        self.add_users(conversation, users).await
    }

    /// `id`, if it is a conversation this device is still a member of.
    pub(super) fn active(&self, id: ConversationId) -> Result<ConversationId, ClientError> {
        match self.read(|tx| tx.conversation(id))? {
            Some(c) if c.active => Ok(id),
            Some(_) => Err(ClientError::NotAMember(id)),
            None => Err(ClientError::UnknownConversation(id.to_string())),
        }
    }

    pub(crate) async fn add_users(
        &self,
        id: ConversationId,
        users: &[Username],
    ) -> Result<(), ClientError> {
        let account = self.outbound().await?;
        for _ in 0..COMMIT_RETRIES {
            // Which devices are missing? (Own devices other than this one, all of theirs.)
            let roster = self.read(|tx| Ok(load(tx, id)?.roster()?))?;
            let mut packages = Vec::new();
            for u in users {
                let info = self.transport.account(&account.token, u).await?;
                let missing: Vec<DeviceId> = info
                    .device_list
                    .devices()
                    .iter()
                    .map(|c| c.device_id())
                    .filter(|d| !roster.contains(*d))
                    .collect();
                if missing.is_empty() {
                    continue;
                }
                let claimed = self.transport.claim(&account.token, u).await?;
                // Everything claimed goes to the engine, which checks each KeyPackage
                // against the signed device list and the pinned identity key: a device
                // the server slipped in is refused and reported, never silently
                // dropped. Only devices already in the group are skipped.
                let key_packages = claimed
                    .into_iter()
                    .filter(|(d, _)| !roster.contains(*d))
                    .map(|(_, kp)| kp)
                    .collect::<Vec<_>>();
                if key_packages.is_empty() {
                    continue;
                }
                packages.push((u.clone(), info.device_list, key_packages));
            }
            if packages.is_empty() {
                return Ok(());
            }
            let outgoing = self.write(|tx| {
                let mut conv = load(tx, id)?;
                let mut trust = tx.trust();
                // A user not yet present goes in whole (a KeyPackage for every listed
                // device, none for any other); a user already partly present (own
                // account, or a newly linked device) is added device by device. Either
                // way the engine admits only devices of the user's current list,
                // however many KeyPackages the server returned.
                let (whole, partial): (Vec<_>, Vec<_>) = packages
                    .iter()
                    .partition(|(u, _, _)| !roster.users().contains_key(u));
                let result = if partial.is_empty() {
                    let users: Vec<UserKeyPackages> = whole
                        .iter()
                        .map(|(_, list, kps)| UserKeyPackages {
                            device_list: list.clone(),
                            key_packages: kps.clone(),
                        })
                        .collect();
                    conv.add_users(&tx.provider(), &account.device, &mut trust, &users)
                } else {
                    let mut claimed = Vec::new();
                    for (u, list, kps) in &packages {
                        sotto_core::accept_device_list(&mut trust, list)?;
                        claimed.extend(kps.iter().map(|kp| ClaimedKeyPackage {
                            username: u.clone(),
                            bytes: kp.clone(),
                        }));
                    }
                    conv.add_devices(&tx.provider(), &account.device, &mut trust, &claimed)
                }
                .map(Some);
                Ok(result?)
            });
            let outgoing = match outgoing {
                Ok(Some(o)) => o,
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.record_security(Some(id), &e);
                    return Err(e);
                }
            };
            if self.submit_commit(&account, id, outgoing).await? {
                return Ok(());
            }
        }
        Err(ClientError::Contention {
            operation: "adding members",
        })
    }

    /// Removes users (all their devices) from a conversation.
    #[tracing::instrument(name = "remove_members", skip_all)]
    pub async fn remove_members(
        &self,
        conversation: ConversationId,
        users: &[Username],
    ) -> Result<(), ClientError> {
        let id = self.active(conversation)?;
        let account = self.outbound().await?;
        for _ in 0..COMMIT_RETRIES {
            let out = self.write(|tx| {
                Ok(load(tx, id)?.remove_users(&tx.provider(), &account.device, users)?)
            })?;
            if self.submit_commit(&account, id, out).await? {
                return Ok(());
            }
        }
        Err(ClientError::Contention {
            operation: "removing members",
        })
    }

    /// Leaves a conversation: proposes the removal of every device of this account
    /// (MLS lets only another member commit it; their clients do so when they next
    /// sync) and stops showing the conversation here at once.
    pub async fn leave(&self, id: ConversationId) -> Result<(), ClientError> {
        let account = self.outbound().await?;
        match self.read(|tx| tx.conversation(id))? {
            None => return Err(ClientError::UnknownConversation(id.to_string())),
            Some(c) if !c.active => return Ok(()),
            Some(_) => {}
        }
        let proposals =
            self.write(|tx| Ok(load(tx, id)?.leave(&tx.provider(), &account.device)?))?;
        let now_ms = self.now_ms();
        for (i, proposal) in proposals.iter().enumerate() {
            let random = self.read(rng_bytes::<10>)?;
            let message_id = MessageId::new_v7(now_ms + i as u64, &random);
            self.transport
                .send(&account.token, id, message_id, proposal)
                .await?;
        }
        self.write(|tx| tx.deactivate(id))
    }

    /// The member devices of a conversation as this device holds it (no network),
    /// with their names.
    pub fn member_devices(&self, id: ConversationId) -> Result<Vec<MemberDevice>, ClientError> {
        let roster = self.read(|tx| Ok(load(tx, id)?.roster()?))?;
        Ok(roster.devices().iter().map(MemberDevice::of).collect())
    }

    /// The members of a conversation: users and their devices (after catching up).
    pub async fn members(
        &self,
        id: ConversationId,
    ) -> Result<Vec<(Username, Vec<DeviceId>)>, ClientError> {
        self.catch_up().await?;
        let roster = self.read(|tx| Ok(load(tx, id)?.roster()?))?;
        Ok(roster.users().into_iter().collect())
    }

    /// Every conversation with members and unread counts.
    pub fn conversations(&self) -> Result<Vec<ConversationSummary>, ClientError> {
        self.read(|tx| {
            tx.conversations()?
                .into_iter()
                .map(|c| {
                    let members = match Conversation::load(&tx.provider(), c.id)? {
                        Some(conv) if c.active => conv.roster()?.users().into_keys().collect(),
                        _ => Vec::new(),
                    };
                    let unread = tx.unread(c.id)?;
                    Ok(ConversationSummary {
                        conversation: c,
                        members,
                        unread,
                    })
                })
                .collect()
        })
    }

    /// A conversation's stored messages, oldest first; marks them read.
    pub fn history(&self, id: ConversationId) -> Result<Vec<StoredMessage>, ClientError> {
        self.purge_expired()?;
        self.write(|tx| {
            if tx.conversation(id)?.is_none() {
                return Err(ClientError::UnknownConversation(id.to_string()));
            }
            tx.mark_read(id)?;
            tx.history(id)
        })
    }
}
