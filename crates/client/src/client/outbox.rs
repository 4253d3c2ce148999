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
                    queue(tx, &[members_event(id, &account.username, &change)])
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

    /// Keeps a conversation's members equal to their accounts' device lists: a device
    /// its account no longer lists (removed from the account, or added by a member
    /// though never listed) is removed by commit, with a security event, before this
    /// client sends anything there. Lists the client lacks, or that name no such
    /// device, are fetched from the directory first. Every member client does this, so
    /// a device removal reaches every conversation, including those the remover is not
    /// in; one commit wins and the others find nothing left to do.
    pub(crate) async fn reconcile(
        &self,
        account: &Account,
        id: ConversationId,
    ) -> Result<(), ClientError> {
        let me = account.device.device_id();
        let mut refreshed: Vec<Username> = Vec::new();
        for _ in 0..COMMIT_RETRIES {
            let unlisted = self.read(|tx| {
                let conv = load(tx, id)?;
                if !conv.is_active() {
                    return Ok(Vec::new());
                }
                Ok(conv.unlisted(&tx.trust())?)
            });
            let unlisted: Vec<_> = match unlisted {
                Ok(u) => u.into_iter().filter(|e| e.device_id != me).collect(),
                Err(ClientError::Engine(ConversationError::DeviceListsNeeded(users))) => {
                    for user in users {
                        self.refresh_device_list(account, &user).await?;
                        refreshed.push(user);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            if unlisted.is_empty() {
                break;
            }
            // The list held may predate the device: ask the directory once per user.
            let mut stale: Vec<Username> = unlisted
                .iter()
                .map(|e| e.username.clone())
                .filter(|u| !refreshed.contains(u))
                .collect();
            stale.dedup();
            if !stale.is_empty() {
                for user in stale {
                    self.refresh_device_list(account, &user).await?;
                    refreshed.push(user);
                }
                continue;
            }
            let devices: Vec<DeviceId> = unlisted.iter().map(|e| e.device_id).collect();
            let out = self.write(|tx| {
                Ok(load(tx, id)?.remove_devices(&tx.provider(), &account.device, &devices)?)
            })?;
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
            if self.submit_commit(account, id, out).await? {
                break;
            }
        }
        self.write(|tx| tx.clear_roster_to_check(id))
    }

    /// Checks the members of every conversation marked for it (see
    /// [`Client::reconcile`]).
    /// A conversation whose check is refused (a contact's list signed by another key)
    /// is reported and left marked; the other conversations, and the sync, go on.
    /// Sending there stays refused until its check passes.
    pub(crate) async fn reconcile_marked(&self, account: &Account) -> Result<(), ClientError> {
        for id in self.read(|tx| tx.rosters_to_check())? {
            match self.reconcile(account, id).await {
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
            self.reconcile(&account, id).await?;
        }
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
