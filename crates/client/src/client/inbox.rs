//! Inbound: fetching the mailbox, processing each entry in one transaction with the cursor, acking, and the events and failures it records.

use super::*;

impl Client {
    // ----- receiving -----

    /// Hands out (once) the events queued by processing.
    pub(crate) fn take_events(&self) -> Result<Vec<Event>, ClientError> {
        let events = self.write(|tx| {
            tx.take_queued_events()?
                .iter()
                .map(|json| {
                    serde_json::from_str(json)
                        .map_err(|e| ClientError::Corrupt(format!("a queued event ({e})")))
                })
                .collect::<Result<Vec<Event>, _>>()
        })?;
        Ok(self.emit(events))
    }

    /// Fetches and processes everything pending and acks it; the events stay queued
    /// for the next [`Client::sync`].
    #[tracing::instrument(name = "catch_up", skip_all)]
    pub(crate) async fn catch_up(&self) -> Result<(), ClientError> {
        let account = self.account()?;
        let mut joined = false;
        loop {
            let cursor = self.read(|tx| tx.counter("cursor"))?;
            let entries = self.transport.fetch(&account.token, cursor).await?;
            let Some(last) = entries.last().map(|e| e.seq) else {
                break;
            };
            for entry in entries {
                joined |= entry.kind == EntryKind::Welcome;
                self.process_entry(&account, entry).await?;
            }
            self.transport.ack(&account.token, last).await?;
        }
        self.purge_expired()?;
        if joined {
            self.top_up_key_packages(false).await?;
        }
        Ok(())
    }

    /// Deletes expired disappearing messages with every copy of them: their rows
    /// (overwritten in the database), reactions, queued events, the attachments
    /// saved from them, and the WAL's copies (checkpointed when anything expired).
    pub(crate) fn purge_expired(&self) -> Result<(), ClientError> {
        let now = self.now();
        let (expired, files) = self.write(|tx| tx.delete_expired(now))?;
        if expired == 0 {
            return Ok(());
        }
        for file in &files {
            match std::fs::remove_file(file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ClientError::file("delete the expired attachment", file, e)),
            }
        }
        self.profile()?.checkpoint()
    }

    /// Processes one mailbox entry in one transaction with the cursor move. An entry
    /// that fails is recorded (with the cursor moved past it) so it cannot wedge the
    /// queue; the failure is returned as an event. An entry whose devices cannot be
    /// checked without their accounts' device lists (a new contact, a device this
    /// client has not seen listed) fetches those lists from the directory once and is
    /// checked again: a device the fresh list does not name is refused.
    pub(crate) async fn process_entry(
        &self,
        account: &Account,
        entry: Entry,
    ) -> Result<(), ClientError> {
        let seq = entry.seq;
        if self.read(|tx| tx.counter("cursor"))? >= seq {
            return Ok(());
        }
        if entry.kind == EntryKind::Directory {
            return self.process_directory_notice(account, &entry).await;
        }
        let mut fetched: Vec<Username> = Vec::new();
        let processed = loop {
            let now = self.now();
            // The events are queued in the same transaction as the state change, so a
            // crash can neither lose them nor show them twice.
            let processed = self.write(|tx| {
                let events = handle(tx, &self.config, account, &entry, now)?;
                tx.set_counter("cursor", seq)?;
                queue(tx, &events)?;
                Ok(())
            });
            let wanted: Vec<Username> = match &processed {
                Err(e) => lists_wanted(e)
                    .into_iter()
                    .filter(|u| !fetched.contains(u))
                    .collect(),
                Ok(()) => Vec::new(),
            };
            if wanted.is_empty() {
                break processed;
            }
            let mut refreshed = Ok(());
            for user in wanted {
                refreshed = self.refresh_device_list(account, &user).await.map(drop);
                fetched.push(user);
                if refreshed.is_err() {
                    break;
                }
            }
            match refreshed {
                Ok(()) => {}
                // Not this entry's fault: try it again later.
                Err(e @ (ClientError::Network { .. } | ClientError::Server { .. })) => {
                    return Err(e);
                }
                Err(e) => break Err(e),
            }
        };
        let now = self.now();
        match processed {
            Ok(()) => Ok(()),
            Err(e) if e.is_local() => Err(e),
            Err(e) => {
                let reason = e.to_string();
                let security = security_of(&e);
                self.write(|tx| {
                    tx.record_failure(seq, Some(entry.group), &reason, now)?;
                    let mut events = vec![Event::Failed {
                        seq,
                        reason: reason.clone(),
                    }];
                    if let Some(detail) = &security {
                        tx.record_event(Some(entry.group), "security", detail, now)?;
                        events.push(Event::Security {
                            conversation: Some(entry.group),
                            detail: detail.clone(),
                        });
                    }
                    queue(tx, &events)?;
                    tx.set_counter("cursor", seq)
                })
            }
        }
    }

    /// A directory notice: the account named in the body changed its device list
    /// (or was released). Its list is fetched again; a network failure leaves the
    /// entry for the next fetch, anything else moves the cursor past it.
    async fn process_directory_notice(
        &self,
        account: &Account,
        entry: &Entry,
    ) -> Result<(), ClientError> {
        let user = std::str::from_utf8(&entry.body.0)
            .ok()
            .and_then(|s| Username::parse(s).ok());
        let result = match &user {
            Some(user) => self.directory_notice(account, user).await,
            None => Err(ClientError::Local(
                "a directory notice without a valid username".into(),
            )),
        };
        let now = self.now();
        match result {
            Ok(()) => self.write(|tx| tx.set_counter("cursor", entry.seq)),
            Err(e @ (ClientError::Network { .. } | ClientError::Server { .. })) => Err(e),
            Err(e) if e.is_local() && user.is_some() => Err(e),
            Err(e) => {
                let reason = e.to_string();
                self.write(|tx| {
                    tx.record_failure(entry.seq, None, &reason, now)?;
                    queue(
                        tx,
                        &[Event::Failed {
                            seq: entry.seq,
                            reason: reason.clone(),
                        }],
                    )?;
                    tx.set_counter("cursor", entry.seq)
                })
            }
        }
    }

    pub(super) fn record_security(&self, conversation: Option<ConversationId>, e: &ClientError) {
        if let Some(detail) = security_of(e) {
            let now = self.now();
            let _ = self.write(|tx| tx.record_event(conversation, "security", &detail, now));
            self.emit(vec![Event::Security {
                conversation,
                detail,
            }]);
        }
    }

    /// Recorded failures: (seq, reason).
    pub fn failures(&self) -> Result<Vec<(u64, String)>, ClientError> {
        self.read(|tx| tx.failures())
    }

    /// Recorded security events: (conversation, detail).
    pub fn security_events(&self) -> Result<Vec<(Option<ConversationId>, String)>, ClientError> {
        self.read(|tx| tx.events("security"))
    }
}

/// The users whose device lists processing needs before it can decide: none held yet,
/// or a device missing from the list held (which may be outdated).
fn lists_wanted(e: &ClientError) -> Vec<Username> {
    match e {
        ClientError::Engine(ConversationError::DeviceListsNeeded(users)) => users.clone(),
        ClientError::Engine(
            ConversationError::Refused {
                refusal: sotto_core::Refusal::NotInDeviceList { username, .. },
                ..
            }
            | ConversationError::RefusedWelcome(sotto_core::Refusal::NotInDeviceList {
                username,
                ..
            }),
        ) => vec![username.clone()],
        _ => Vec::new(),
    }
}
