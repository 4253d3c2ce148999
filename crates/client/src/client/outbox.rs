//! Outbound: encrypting and sending one envelope, submitting commits and committing pending proposals (each retried on a stale epoch after catching up).

use super::*;

impl Client {
    /// Where every outbound operation starts: this account, caught up with its
    /// mailbox, so that what it sends is made in the group's current epoch (a message
    /// encrypted in an epoch that already ended would not reach members added since,
    /// and a commit for it would be refused).
    pub(super) async fn outbound(&self) -> Result<Account, ClientError> {
        let account = self.account()?;
        self.catch_up().await?;
        Ok(account)
    }

    /// Sends a staged commit. `Ok(true)` when accepted and applied; `Ok(false)` when
    /// another commit won the epoch (the staged one is dropped and pending entries are
    /// applied, so the caller rebuilds and retries).
    #[tracing::instrument(name = "commit", skip_all, fields(conversation = %id))]
    pub(crate) async fn submit_commit(
        &self,
        account: &Account,
        id: ConversationId,
        out: OutgoingCommit,
    ) -> Result<bool, ClientError> {
        let result = self.transport.commit(&account.token, id, &out).await;
        match result {
            Ok(_) => {
                // The event is queued with the state change, like a received commit's.
                self.write(|tx| {
                    let mut conv = load(tx, id)?;
                    let change = conv.confirm_commit(&tx.provider())?;
                    if change.removed_me {
                        tx.deactivate(id)?;
                    }
                    if change.added.is_empty() && change.removed.is_empty() {
                        // A self-update: nothing for anyone to see.
                        return Ok(());
                    }
                    queue(tx, &[members_event(id, &account.username, &change, &conv)?])
                })?;
                Ok(true)
            }
            Err(e) if e.server_code() == Some(ErrorCode::StaleEpoch) => {
                self.write(|tx| Ok(load(tx, id)?.discard_commit(&tx.provider())?))?;
                self.catch_up().await?;
                Ok(false)
            }
            Err(e) => {
                // Not applied anywhere: drop it so the group is usable again.
                let _ = self.write(|tx| Ok(load(tx, id)?.discard_commit(&tx.provider())?));
                Err(e)
            }
        }
    }

    /// Keeps a conversation's members equal to their accounts' device lists:
    ///
    /// - a device its account no longer lists (removed from the account, revoked by a
    ///   recovery, or added by a member though never listed) is removed by commit
    ///   before this client sends anything there. Every member client does this, so a
    ///   device removal reaches every conversation, including those the remover is not
    ///   in; one commit wins and the others find nothing left to do;
    /// - a device its account lists but that is not a member (newly linked, or the
    ///   device an account was recovered on) is added, first, so that an account
    ///   whose devices all changed stays in the conversation. With [`Adds::Designated`]
    ///   only one member adds (see [`designated_adder`]), so that members do not race
    ///   and burn the new device's KeyPackages; before a send ([`Adds::Any`]) this
    ///   client adds whatever is missing itself.
    ///
    /// Lists the client lacks, or that name no such device, are fetched from the
    /// directory first. A device whose KeyPackages are not on the server yet leaves
    /// the conversation marked, to be tried again at the next sync.
    pub(crate) async fn reconcile(
        &self,
        account: &Account,
        id: ConversationId,
        adds: Adds,
    ) -> Result<(), ClientError> {
        let me = account.device.device_id();
        let mut refreshed: Vec<Username> = Vec::new();
        let mut unaddable: Vec<Username> = Vec::new();
        let mut settled = false;
        for _ in 0..COMMIT_RETRIES {
            let state = self.read(|tx| {
                let conv = load(tx, id)?;
                if !conv.is_active() {
                    return Ok(None);
                }
                let trust = tx.trust();
                let unlisted = conv.unlisted(&trust)?;
                Ok(Some((unlisted, conv.missing(&trust)?, conv.roster()?)))
            });
            let (unlisted, missing, roster) = match state {
                Ok(Some(state)) => state,
                Ok(None) => {
                    settled = true;
                    break;
                }
                Err(ClientError::Engine(ConversationError::DeviceListsNeeded(users))) => {
                    for user in users {
                        self.refresh_for_check(account, &user).await?;
                        refreshed.push(user);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let unlisted: Vec<_> = unlisted.into_iter().filter(|e| e.device_id != me).collect();
            // The list held may predate the device: ask the directory once per user.
            let mut stale: Vec<Username> = unlisted
                .iter()
                .map(|e| e.username.clone())
                .filter(|u| !refreshed.contains(u))
                .collect();
            stale.sort();
            stale.dedup();
            if !stale.is_empty() {
                for user in stale {
                    self.refresh_for_check(account, &user).await?;
                    refreshed.push(user);
                }
                continue;
            }
            let mut to_add: Vec<Username> = missing
                .iter()
                .map(|(u, _)| u.clone())
                .filter(|u| !unaddable.contains(u))
                .filter(|u| {
                    adds == Adds::Any || designated_adder(&roster, &unlisted, u) == Some(me)
                })
                .collect();
            to_add.sort();
            to_add.dedup();
            let wanted: Vec<DeviceId> = missing.iter().map(|(_, d)| *d).collect();
            let claimed = self.claim_listed(account, &to_add, &wanted).await?;
            if !to_add.is_empty() && claimed.is_empty() {
                // Not on the server yet (a device that just recovered uploads its
                // KeyPackages right after): the next sync tries again.
                unaddable.extend(to_add);
            }
            // A member none of whose devices here is current (recovered, or a new
            // identity accepted) keeps the old ones until the new ones can come in
            // the same commit: removing them alone would drop the member.
            let replaced_later = |user: &Username| {
                roster
                    .devices()
                    .iter()
                    .filter(|e| &e.username == user)
                    .all(|e| unlisted.iter().any(|u| u.device_id == e.device_id))
                    && !claimed.iter().any(|c| &c.username == user)
            };
            let unlisted: Vec<_> = unlisted
                .iter()
                .filter(|e| !replaced_later(&e.username))
                .cloned()
                .collect();
            if claimed.is_empty() && unlisted.is_empty() {
                settled = true;
                break;
            }
            // Added and removed in one commit: the new devices' Welcome never shows
            // them the devices they replace.
            let removed: Vec<DeviceId> = unlisted.iter().map(|e| e.device_id).collect();
            let out = self.write(|tx| {
                Ok(load(tx, id)?.replace_devices(
                    &tx.provider(),
                    &account.device,
                    &mut tx.trust(),
                    &claimed,
                    &removed,
                )?)
            });
            let out = match out {
                Ok(out) => out,
                Err(e) => {
                    self.record_security(Some(id), &e);
                    return Err(e);
                }
            };
            let now = self.now();
            let events: Vec<Event> = unlisted
                .iter()
                .map(|e| Event::Security {
                    conversation: Some(id),
                    detail: format!(
                        "{}'s device {} is not in their device list: removed it from the conversation",
                        e.username, e.device_id
                    ),
                })
                .collect();
            self.write(|tx| {
                for e in &events {
                    if let Event::Security { detail, .. } = e {
                        tx.record_event(Some(id), "security", detail, now)?;
                    }
                }
                queue(tx, &events)
            })?;
            self.submit_commit(account, id, out).await?;
        }
        if !settled {
            // Still not in line after every retry: stay marked (sending there stays
            // refused) rather than send to members that should not read.
            return Err(ClientError::Contention {
                operation: "bringing the members in line with their device lists",
            });
        }
        if unaddable.is_empty() {
            self.write(|tx| tx.clear_roster_to_check(id))?;
        }
        Ok(())
    }

    /// Refreshes a list for a member check. An account the server no longer has, or
    /// whose key changed, was reported by the refresh; its devices stay until the
    /// person decides, and the check goes on for the others.
    async fn refresh_for_check(
        &self,
        account: &Account,
        user: &Username,
    ) -> Result<(), ClientError> {
        match self.refresh_device_list(account, user).await {
            Ok(_) => Ok(()),
            Err(ClientError::UnknownUser(_))
            | Err(ClientError::Refused(sotto_core::Refusal::IdentityKeyChanged { .. }))
                if self.read(|tx| tx.device_list_of(user))?.is_some() =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Claims one KeyPackage for each of `devices` (devices of `users` their lists
    /// name that are not members); the engine then admits only listed devices.
    async fn claim_listed(
        &self,
        account: &Account,
        users: &[Username],
        devices: &[DeviceId],
    ) -> Result<Vec<ClaimedKeyPackage>, ClientError> {
        let mut claimed = Vec::new();
        for user in users {
            for (device, bytes) in self.transport.claim(&account.token, user).await? {
                if devices.contains(&device) {
                    claimed.push(ClaimedKeyPackage {
                        username: user.clone(),
                        bytes,
                    });
                }
            }
        }
        Ok(claimed)
    }

    /// Checks, before a send, that every other member can read it: nobody whose
    /// safety number changed without the person accepting it, nobody whose account
    /// the server released, and each with at least one current device here. In a
    /// one-to-one conversation any of these refuses the send; in a group the send
    /// goes on and the members it cannot reach are answered.
    pub(crate) async fn unreachable(
        &self,
        account: &Account,
        id: ConversationId,
    ) -> Result<Vec<(Username, String)>, ClientError> {
        let others = |roster: &sotto_core::Roster| -> Vec<(Username, Vec<DeviceId>)> {
            roster
                .users()
                .into_iter()
                .filter(|(u, _)| *u != account.username)
                .collect()
        };
        // An account the server had released may have registered again: a look-up
        // tells (only for those, not for every member on every send).
        let gone: Vec<Username> = self.read(|tx| {
            let roster = load(tx, id)?.roster()?;
            let mut gone = Vec::new();
            for (user, _) in others(&roster) {
                if tx.is_gone(&user)? {
                    gone.push(user);
                }
            }
            Ok(gone)
        })?;
        for user in &gone {
            match self.refresh_device_list(account, user).await {
                Ok(_) | Err(ClientError::Refused(_) | ClientError::UnknownUser(_)) => {}
                Err(e) => return Err(e),
            }
        }
        // Everything else from one read of the profile.
        let (direct, verdicts) = self.read(|tx| {
            let direct = tx.conversation(id)?.is_some_and(|c| c.kind == "direct");
            let conv = load(tx, id)?;
            // Compared by whole certificate: a device is current only if its
            // account's list holds this very certificate.
            let unlisted: Vec<DeviceId> = match conv.unlisted(&tx.trust()) {
                Ok(entries) => entries.into_iter().map(|e| e.device_id).collect(),
                Err(ConversationError::DeviceListsNeeded(_)) => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            let mut verdicts = Vec::new();
            for (user, devices) in others(&conv.roster()?) {
                let verdict = if tx.key_changed(&user)?.is_some() {
                    Some(Unreachable::KeyChanged)
                } else if tx.is_gone(&user)? {
                    Some(Unreachable::Gone)
                } else if devices.iter().all(|d| unlisted.contains(d)) {
                    Some(Unreachable::NoCurrentDevice)
                } else {
                    None
                };
                verdicts.extend(verdict.map(|v| (user, v)));
            }
            Ok((direct, verdicts))
        })?;
        let mut unreachable = Vec::new();
        for (user, verdict) in verdicts {
            let reason = match verdict {
                Unreachable::KeyChanged if direct => {
                    return Err(ClientError::SafetyNumberChanged(user));
                }
                Unreachable::KeyChanged => {
                    "their safety number changed and you have not accepted the new one"
                }
                Unreachable::Gone => "their account no longer exists on the server",
                Unreachable::NoCurrentDevice => {
                    "none of their current devices is in this conversation yet"
                }
            }
            .to_owned();
            if direct {
                return Err(ClientError::Unreachable { user, reason });
            }
            unreachable.push((user, reason));
        }
        Ok(unreachable)
    }

    /// Periodic upkeep while a client runs: expired messages go, and this device's
    /// keys are refreshed where due.
    pub(crate) async fn housekeeping(&self) -> Result<(), ClientError> {
        self.purge_expired()?;
        // The own-list check runs whatever the self-updates did.
        let updated = self.self_update_due().await;
        self.check_own_list().await?;
        updated
    }

    /// Compares this account's list in the directory with the one this device
    /// holds. A copy of this device's profile shares its mailbox and can take the
    /// directory notice of what it published; this look-up cannot be taken away. On
    /// the primary, a list it did not sign is reported (a security event).
    pub(crate) async fn check_own_list(&self) -> Result<(), ClientError> {
        let account = self.account()?;
        match self.refresh_device_list(&account, &account.username).await {
            // A list under a revoked key or other refusal was reported as an event.
            Ok(_) | Err(ClientError::Refused(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Refreshes this device's leaf (a commit with a new path secret) in every
    /// conversation where it has not done so for [`SELF_UPDATE_EVERY`], or at once
    /// after a device of its account was removed: post-compromise security, so that
    /// keys a thief copied stop opening new messages.
    pub(crate) async fn self_update_due(&self) -> Result<(), ClientError> {
        let account = self.account()?;
        let now = self.now();
        let due =
            self.write(|tx| tx.self_updates_due(now.saturating_sub(SELF_UPDATE_EVERY), now))?;
        for id in due {
            for _ in 0..COMMIT_RETRIES {
                let out = self
                    .write(|tx| Ok(load(tx, id)?.self_update(&tx.provider(), &account.device)?))?;
                if self.submit_commit(&account, id, out).await? {
                    // Only a commit the server took counts; one that lost every
                    // race stays due for the next round.
                    self.write(|tx| tx.set_self_updated(id, now))?;
                    break;
                }
            }
        }
        Ok(())
    }

    /// Runs the member check of every marked conversation, each on its own: one that
    /// fails does not keep the others from their check. Answers the first failure.
    pub(crate) async fn reconcile_every(
        &self,
        account: &Account,
        adds: Adds,
    ) -> Result<(), ClientError> {
        let mut first = None;
        for id in self.read(|tx| tx.rosters_to_check())? {
            if let Err(e) = self.reconcile(account, id, adds).await {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Checks the members of every conversation marked for it (see
    /// [`Client::reconcile`]).
    /// A conversation whose check is refused (a contact's list signed by another key)
    /// is reported and left marked; the other conversations, and the sync, go on.
    /// Sending there stays refused until its check passes.
    pub(crate) async fn reconcile_marked(&self, account: &Account) -> Result<(), ClientError> {
        for id in self.read(|tx| tx.rosters_to_check())? {
            match self.reconcile(account, id, Adds::Designated).await {
                Ok(()) => {}
                Err(e)
                    if e.is_local()
                        || matches!(
                            e,
                            ClientError::Network { .. } | ClientError::Server { .. }
                        ) =>
                {
                    return Err(e);
                }
                Err(e) => {
                    let detail = security_of(&e).unwrap_or_else(|| e.to_string());
                    let now = self.now();
                    let event = Event::Security {
                        conversation: Some(id),
                        detail: format!("cannot check the members' devices: {detail}"),
                    };
                    self.write(|tx| {
                        if let Event::Security { detail, .. } = &event {
                            tx.record_event(Some(id), "security", detail, now)?;
                        }
                        queue(tx, std::slice::from_ref(&event))
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Commits proposals other members queued (a member leaving), in every
    /// conversation that has some; retries after losing an epoch race. Then checks the
    /// members of conversations that changed against their device lists.
    pub(crate) async fn commit_pending_proposals(&self) -> Result<(), ClientError> {
        let account = self.account()?;
        for id in self.read(|tx| tx.pending_proposals())? {
            for _ in 0..COMMIT_RETRIES {
                let out = self.write(|tx| {
                    let Some(mut conv) = Conversation::load(&tx.provider(), id)? else {
                        return Ok(None);
                    };
                    if !conv.is_active() {
                        return Ok(None);
                    }
                    Ok(conv.commit_pending_proposals(&tx.provider(), &account.device)?)
                })?;
                let Some(out) = out else { break };
                if self.submit_commit(&account, id, out).await? {
                    break;
                }
            }
            self.write(|tx| tx.clear_pending_proposals(id))?;
        }
        self.reconcile_marked(&account).await
    }

    /// Encrypts and sends one envelope, storing its effect locally first. The send is
    /// retried with the same message id on a stale epoch (after catching up).
    #[tracing::instrument(name = "send", skip_all, fields(conversation = %id))]
    pub(super) async fn send_content(
        &self,
        id: ConversationId,
        content: Content,
    ) -> Result<Sent, ClientError> {
        let account = self.outbound().await?;
        if self.read(|tx| tx.rosters_to_check())?.contains(&id) {
            self.reconcile(&account, id, Adds::Any).await?;
        }
        let unreachable = self.unreachable(&account, id).await?;
        let now_ms = self.now_ms();
        let now = now_ms / 1000;
        let message_id = self.read(|tx| {
            let random = rng_bytes::<10>(tx)?;
            Ok(MessageId::new_v7(now_ms, &random))
        })?;
        let envelope = Envelope {
            id: message_id,
            sent_at_ms: now_ms,
            content,
        };
        for attempt in 0..COMMIT_RETRIES {
            let body = self.write(|tx| {
                let mut conv = load(tx, id)?;
                let body = conv.encrypt(&tx.provider(), &account.device, &envelope)?;
                if attempt == 0 {
                    apply_content(
                        tx,
                        id,
                        &account.username,
                        account.device.device_id(),
                        true,
                        &envelope,
                        now,
                    )?;
                }
                Ok(body)
            })?;
            match self
                .transport
                .send(&account.token, id, message_id, &body)
                .await
            {
                Ok(_) => {
                    return Ok(Sent {
                        id: message_id,
                        conversation: id,
                        unreachable,
                    });
                }
                Err(e) if e.server_code() == Some(ErrorCode::StaleEpoch) => {
                    self.catch_up().await?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Contention {
            operation: "sending",
        })
    }
}

/// Why a member cannot read what this client is about to send.
enum Unreachable {
    /// Their identity key changed and the person has not accepted the new one.
    KeyChanged,
    /// The server no longer has their account.
    Gone,
    /// None of their devices here is in their current list.
    NoCurrentDevice,
}

/// How often this device refreshes its own keys in each conversation (seconds).
pub(crate) const SELF_UPDATE_EVERY: u64 = 86_400;

/// Who adds missing devices during a background member check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Adds {
    /// Only the designated member ([`designated_adder`]).
    Designated,
    /// This client, whoever is designated (before a send, after a trust decision).
    Any,
}

/// The one member device that adds `user`'s missing devices during background
/// checks, so that members do not race: the lowest leaf among `user`'s own current
/// devices (a device linked to an account is added by its siblings), else the lowest
/// leaf among the other members' current devices (an account recovered on a new
/// device, or whose key the person accepted anew). Others add it before they send.
pub(crate) fn designated_adder(
    roster: &sotto_core::Roster,
    unlisted: &[sotto_core::RosterEntry],
    user: &Username,
) -> Option<DeviceId> {
    let current =
        |e: &&sotto_core::RosterEntry| !unlisted.iter().any(|u| u.device_id == e.device_id);
    let own = roster
        .devices()
        .iter()
        .filter(current)
        .filter(|e| &e.username == user)
        .min_by_key(|e| e.leaf);
    own.or_else(|| {
        roster
            .devices()
            .iter()
            .filter(current)
            .min_by_key(|e| e.leaf)
    })
    .map(|e| e.device_id)
}
