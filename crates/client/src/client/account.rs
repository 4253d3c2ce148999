//! Registering this device's account, recovering it, its KeyPackages and token, and
//! safety numbers and trust decisions.

use super::*;

/// What registration or recovery gives the person.
pub struct Registered {
    /// Who this profile now is.
    pub whoami: WhoAmI,
    /// The recovery key: shown once, kept offline by the person, stored nowhere. It is
    /// the only way to restore the account if this (primary) device is lost. `None`
    /// after a recovery, whose key the person already has.
    pub recovery_key: Option<zeroize::Zeroizing<String>>,
}

impl std::fmt::Debug for Registered {
    /// The recovery key never reaches a log through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered")
            .field("whoami", &self.whoami)
            .field("recovery_key", &self.recovery_key.as_ref().map(|_| "***"))
            .finish()
    }
}

fn rng_failed() -> ClientError {
    ClientError::Local("the system random generator failed".into())
}

impl Client {
    // ----- account -----

    /// Creates the account with this device as its primary (named `device_name`),
    /// uploads KeyPackages, and answers the recovery key to show the person once.
    #[tracing::instrument(name = "register", skip_all)]
    pub async fn register(
        &self,
        username: &Username,
        device_name: &str,
    ) -> Result<Registered, ClientError> {
        if let Some(a) = self.read(|tx| tx.account())? {
            return Err(ClientError::AlreadyRegistered(a.username.to_string()));
        }
        let now = self.now();
        let (root, account_key, device) = self.read(|tx| {
            let provider = tx.provider();
            let root = IdentityKeyPair::generate(provider.rand()).map_err(|_| rng_failed())?;
            let account_key = AccountKey::generate(provider.rand(), &root, username, 1, now)
                .map_err(|_| rng_failed())?;
            let device = LocalDevice::create(provider.rand(), &account_key, device_name, now)
                .map_err(|_| rng_failed())?;
            Ok((root, account_key, device))
        })?;
        let list = account_key.sign_device_list(1, vec![device.certificate().clone()]);
        let token = self.transport.register(username, &list).await?;
        self.start_account(username, device, account_key, token, &list)
            .await?;
        Ok(Registered {
            whoami: self.whoami()?,
            recovery_key: Some(root.recovery_text()),
        })
    }

    /// Saves a new account's keys, pins its own list, uploads KeyPackages.
    async fn start_account(
        &self,
        username: &Username,
        device: LocalDevice,
        account_key: AccountKey,
        token: String,
        list: &DeviceList,
    ) -> Result<(), ClientError> {
        let account = Account {
            username: username.clone(),
            device,
            account_key: Some(account_key),
            token,
            server: self.transport.base().to_owned(),
        };
        self.write(|tx| {
            tx.save_account(&account)?;
            // The last list this primary signed, to tell its own from a thief's.
            tx.set_own_list_pending(&list.digest())?;
            // Our own identity is pinned like any contact's.
            sotto_core::accept_device_list(&mut tx.trust(), list)?;
            Ok(())
        })?;
        self.top_up_key_packages(true).await
    }

    /// On a new, empty profile: restores `username`'s account with its recovery key.
    /// Certifies a new account key (one generation up) with the root, makes this the
    /// primary device and the account's only one: every old device is revoked (its
    /// token stops working, contacts' clients remove it from conversations and add
    /// this device instead). Contacts keep their verification: the root is the same.
    #[tracing::instrument(name = "recover", skip_all)]
    pub async fn recover(
        &self,
        username: &Username,
        recovery_key: &str,
        device_name: &str,
    ) -> Result<Registered, ClientError> {
        if let Some(a) = self.read(|tx| tx.account())? {
            return Err(ClientError::AlreadyRegistered(a.username.to_string()));
        }
        let root = IdentityKeyPair::from_recovery_text(recovery_key)
            .map_err(|e| ClientError::InvalidRecoveryKey(e.to_string()))?;
        let now = self.now();
        let current = self
            .transport
            .recovery_lookup(username, now, root.sign_recovery_lookup(username, now))
            .await?
            .device_list;
        current.verify().map_err(sotto_core::Refusal::from)?;
        if current.identity_key() != &root.public() {
            return Err(ClientError::WrongRecoveryKey(username.to_string()));
        }
        let generation = current.account().generation() + 1;
        let (account_key, device) = self.read(|tx| {
            let provider = tx.provider();
            let account_key =
                AccountKey::generate(provider.rand(), &root, username, generation, now)
                    .map_err(|_| rng_failed())?;
            let device = LocalDevice::create(provider.rand(), &account_key, device_name, now)
                .map_err(|_| rng_failed())?;
            Ok((account_key, device))
        })?;
        let list =
            account_key.sign_device_list(current.version() + 1, vec![device.certificate().clone()]);
        let token = self.transport.recover(username, &list).await?;
        self.start_account(username, device, account_key, token, &list)
            .await?;
        Ok(Registered {
            whoami: self.whoami()?,
            recovery_key: None,
        })
    }

    /// Replaces this device's bearer token: a copy of this profile taken before can no
    /// longer talk to the server as this device.
    pub async fn rotate_token(&self) -> Result<(), ClientError> {
        let account = self.account()?;
        let token = self.transport.rotate_token(&account.token).await?;
        self.write(|tx| tx.set_token(&token))
    }

    /// Who this profile is.
    pub fn whoami(&self) -> Result<WhoAmI, ClientError> {
        let a = self.account()?;
        Ok(WhoAmI {
            username: a.username.clone(),
            device_id: a.device.device_id(),
            device_name: a.device.certificate().name().to_owned(),
            primary: a.is_primary(),
            fingerprint: sotto_core::safety::fingerprint_digits(&a.identity_key()),
            server: a.server,
        })
    }

    /// Uploads a fresh batch of KeyPackages when the server runs low (or `force`).
    pub async fn top_up_key_packages(&self, force: bool) -> Result<(), ClientError> {
        let account = self.account()?;
        if !force {
            let status = self.transport.key_package_status(&account.token).await?;
            if status.one_time_remaining >= KEY_PACKAGE_LOW_WATER && status.has_last_resort {
                return Ok(());
            }
        }
        // The private halves must be stored before the public halves are published.
        let batch = self.write(|tx| {
            Ok(generate_key_packages(
                &tx.provider(),
                &account.device,
                &self.config,
                KEY_PACKAGE_BATCH,
            )?)
        })?;
        self.transport
            .upload_key_packages(&account.token, &batch.one_time, Some(&batch.last_resort))
            .await
    }

    // ----- safety numbers -----

    /// The safety number with `user`, always from the key pinned for them (fetched from
    /// the directory and pinned on first use, from the key that signed their list).
    pub async fn safety_number(&self, user: &Username) -> Result<SafetyNumber, ClientError> {
        let account = self.account()?;
        if self.read(|tx| tx.contact(user))?.is_none() {
            self.refresh_device_list(&account, user).await?;
        }

        let (pinned, _) = self
            .read(|tx| tx.contact(user))?
            .ok_or_else(|| ClientError::Corrupt("a contact pinned a moment ago".into()))?;
        Ok(SafetyNumber::new(&account.identity_key(), &pinned))
    }

    /// The safety number `user` would have with the new identity key the directory
    /// offers for them, while the person has not accepted it (compare it with them,
    /// then [`Client::trust`]); `None` when nothing changed.
    pub fn pending_safety_number(
        &self,
        user: &Username,
    ) -> Result<Option<SafetyNumber>, ClientError> {
        let account = self.account()?;
        Ok(self
            .read(|tx| tx.key_changed(user))?
            .map(|offered| SafetyNumber::new(&account.identity_key(), &offered)))
    }

    /// Fetches `user`'s device list from the directory and accepts it: verified,
    /// signed under their pinned root (pinned now on first use), no rollback, no
    /// revoked account key. What changed is told as events: an account recovered on
    /// a new device (informational), a new identity key (a safety-number change,
    /// remembered until the person accepts it: [`Client::trust`]), an account the
    /// server no longer has, or, for this account's own list on the primary, a list
    /// this device did not sign.
    pub(crate) async fn refresh_device_list(
        &self,
        account: &Account,
        user: &Username,
    ) -> Result<DeviceList, ClientError> {
        let now = self.now();
        let info = match self.transport.account(&account.token, user).await {
            Ok(info) => info,
            Err(ClientError::UnknownUser(name)) => {
                self.write(|tx| {
                    if tx.contact(user)?.is_some() && !tx.is_gone(user)? {
                        tx.set_gone(user, true)?;
                        let event = Event::Contact {
                            user: user.clone(),
                            detail: format!(
                                "{user}'s account no longer exists on the server (its operator \
                                 released the name): messages to {user} cannot be delivered"
                            ),
                        };
                        tx.record_event(None, "contact", &event_detail(&event), now)?;
                        queue(tx, &[event])?;
                    }
                    Ok(())
                })?;
                return Err(ClientError::UnknownUser(name));
            }
            Err(e) => return Err(e),
        };
        let list = info.device_list;
        let outcome = self.write(|tx| {
            let before = tx.device_list_of(user)?;
            match sotto_core::accept_device_list(&mut tx.trust(), &list) {
                Ok(outcome) => {
                    tx.set_gone(user, false)?;
                    tx.clear_key_changed(user)?;
                    let lost_a_device = before.is_some_and(|b| {
                        b.devices()
                            .iter()
                            .any(|c| list.device(c.device_id()).is_none())
                    });
                    if user == &account.username && lost_a_device {
                        // A device of this account was removed: replace the keys
                        // it may have seen in every conversation.
                        tx.make_self_updates_due()?;
                    }
                    let mine = tx.is_own_list_pending(&list.digest())?;
                    let events = list_events(account, user, &list, outcome, mine);
                    for e in &events {
                        let kind = if matches!(e, Event::Security { .. }) {
                            "security"
                        } else {
                            "contact"
                        };
                        tx.record_event(None, kind, &event_detail(e), now)?;
                    }
                    queue(tx, &events)?;
                    Ok(Ok(()))
                }
                Err(sotto_core::TrustError::Refused(
                    refusal @ sotto_core::Refusal::IdentityKeyChanged { offered, .. },
                )) if user != &account.username => {
                    if tx.key_changed(user)? != Some(offered) {
                        tx.set_key_changed(user, &offered)?;
                        let event = Event::Security {
                            conversation: None,
                            detail: format!(
                                "{user}'s safety number changed (a new identity key: a \
                                 reinstall, or someone else). Nothing more is sent to {user} \
                                 until you compare the new safety number and accept it"
                            ),
                        };
                        tx.record_event(None, "security", &event_detail(&event), now)?;
                        queue(tx, &[event])?;
                    }
                    Ok(Err(ClientError::Refused(refusal)))
                }
                Err(sotto_core::TrustError::Refused(refusal)) => {
                    // Rollback, equivocation, a revoked account key, a bad signature:
                    // never silent, but said once while it lasts.
                    let detail = format!("{user}'s device list was refused: {refusal}");
                    let said = tx.events("security")?.last().map(|(_, d)| d.clone());
                    if said.as_deref() != Some(detail.as_str()) {
                        let event = Event::Security {
                            conversation: None,
                            detail,
                        };
                        tx.record_event(None, "security", &event_detail(&event), now)?;
                        queue(tx, &[event])?;
                    }
                    Ok(Err(ClientError::Refused(refusal)))
                }
                Err(e) => Err(ClientError::from(e)),
            }
        })?;
        outcome.map(|()| list)
    }

    /// A directory notice: `user` published a new device list or was released.
    /// Contacts this client never pinned are ignored (nothing of theirs is held).
    pub(crate) async fn directory_notice(
        &self,
        account: &Account,
        user: &Username,
    ) -> Result<(), ClientError> {
        if user != &account.username && self.read(|tx| tx.contact(user))?.is_none() {
            return Ok(());
        }
        match self.refresh_device_list(account, user).await {
            // Told as events already; the old devices stay until the person decides.
            Ok(_) | Err(ClientError::UnknownUser(_) | ClientError::Refused(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Accepts `user`'s new identity key and device list from the directory, after a
    /// safety-number change the person checked: their verification is reset, and
    /// every conversation with them drops their old devices and gets their new ones at
    /// once. Only the key whose safety number the person could compare
    /// ([`Client::pending_safety_number`]) is accepted: if the directory now serves
    /// yet another key, nothing changes and the new one is reported for comparing.
    /// Answers whether the key was a new one.
    #[tracing::instrument(name = "trust", skip_all)]
    pub async fn trust(&self, user: &Username) -> Result<bool, ClientError> {
        let account = self.account()?;
        if user == &account.username {
            return Err(ClientError::UnknownUser(user.to_string()));
        }
        let list = self
            .transport
            .account(&account.token, user)
            .await?
            .device_list;
        list.verify().map_err(sotto_core::Refusal::from)?;
        let offered = *list.identity_key();
        let changed = self.write(|tx| {
            let pending = tx.key_changed(user)?;
            let changed = match tx.contact(user)? {
                Some((pinned, _)) if pinned != offered => {
                    if pending != Some(offered) {
                        // Not the key the person saw: report it, change nothing.
                        tx.set_key_changed(user, &offered)?;
                        return Ok(None);
                    }
                    tx.accept_identity(user, &offered)?;
                    true
                }
                _ => false,
            };
            sotto_core::accept_device_list(&mut tx.trust(), &list)?;
            tx.clear_key_changed(user)?;
            tx.set_gone(user, false)?;
            Ok(Some(changed))
        })?;
        let Some(changed) = changed else {
            return Err(ClientError::SafetyNumberChanged(user.clone()));
        };
        self.reconcile_every(&account, Adds::Any).await?;
        Ok(changed)
    }

    /// Marks `user` verified if `number` matches the safety number; `Ok(false)`
    /// (and nothing marked) if it does not.
    pub async fn verify(&self, user: &Username, number: &str) -> Result<bool, ClientError> {
        let safety = self.safety_number(user).await?;
        if !safety.matches_digits(number) {
            return Ok(false);
        }
        self.write(|tx| tx.set_verified(user))?;
        Ok(true)
    }

    /// Whether `user` is verified.
    pub fn is_verified(&self, user: &Username) -> Result<bool, ClientError> {
        Ok(self.read(|tx| tx.contact(user))?.is_some_and(|(_, v)| v))
    }
}

/// The text of an informational or security event, for the profile's event log.
pub(super) fn event_detail(e: &Event) -> String {
    match e {
        Event::Security { detail, .. } | Event::Contact { detail, .. } => detail.clone(),
        other => format!("{other:?}"),
    }
}

/// What accepting `user`'s new `list` tells the person.
fn list_events(
    account: &Account,
    user: &Username,
    list: &DeviceList,
    outcome: sotto_core::Accepted,
    published_here: bool,
) -> Vec<Event> {
    use sotto_core::Accepted;
    let own = user == &account.username;
    match outcome {
        Accepted::AccountKeyRotated { .. } if own => vec![Event::Security {
            conversation: None,
            detail: "your account was recovered on another device with the recovery key: \
                     this device is no longer one of its devices"
                .into(),
        }],
        Accepted::AccountKeyRotated { .. } => {
            let names: Vec<&str> = list.devices().iter().map(|c| c.name()).collect();
            vec![Event::Contact {
                user: user.clone(),
                detail: format!(
                    "{user} re-established their account on a new device ({}); their \
                     identity is unchanged",
                    names.join(", ")
                ),
            }]
        }
        // Only the primary signs this account's lists: a newer one under the same
        // account key that it did not accept as its own was made elsewhere.
        Accepted::Updated if own && account.is_primary() && !published_here => {
            vec![Event::Security {
                conversation: None,
                detail: ClientError::ForeignDeviceList {
                    version: list.version(),
                }
                .to_string(),
            }]
        }
        _ => Vec::new(),
    }
}
