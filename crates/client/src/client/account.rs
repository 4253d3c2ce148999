//! Registering this device's account, its KeyPackages, and safety numbers.

use super::*;

impl Client {
    // ----- account -----

    /// Creates the account and this device on the server, and uploads KeyPackages.
    #[tracing::instrument(name = "register", skip_all)]
    pub async fn register(&self, username: &Username) -> Result<WhoAmI, ClientError> {
        if let Some(a) = self.read(|tx| tx.account())? {
            return Err(ClientError::AlreadyRegistered(a.username.to_string()));
        }
        let now = self.now();
        let (identity, device, list) = self.read(|tx| {
            let provider = tx.provider();
            let identity = IdentityKeyPair::generate(provider.rand())
                .map_err(|_| ClientError::Local("the system random generator failed".into()))?;
            let device = LocalDevice::create(provider.rand(), &identity, username, now)
                .map_err(|_| ClientError::Local("the system random generator failed".into()))?;
            let list = identity.sign_device_list(username, 1, vec![device.certificate().clone()]);
            Ok((identity, device, list))
        })?;
        let token = self.transport.register(username, &list).await?;
        let account = Account {
            username: username.clone(),
            device,
            identity,
            token,
            server: self.transport.base().to_owned(),
        };
        self.write(|tx| {
            tx.save_account(&account)?;
            // Our own identity is pinned like any contact's.
            Ok(sotto_core::accept_device_list(&mut tx.trust(), &list)?)
        })?;
        self.top_up_key_packages(true).await?;
        self.whoami()
    }

    /// Who this profile is.
    pub fn whoami(&self) -> Result<WhoAmI, ClientError> {
        let a = self.account()?;
        Ok(WhoAmI {
            username: a.username,
            device_id: a.device.device_id(),
            fingerprint: sotto_core::safety::fingerprint_digits(&a.identity.public()),
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
        Ok(SafetyNumber::new(&account.identity.public(), &pinned))
    }

    /// Fetches `user`'s device list from the directory and accepts it: verified,
    /// signed by their pinned key (pinned now on first use), no rollback.
    pub(crate) async fn refresh_device_list(
        &self,
        account: &Account,
        user: &Username,
    ) -> Result<DeviceList, ClientError> {
        let info = self.transport.account(&account.token, user).await?;
        self.write(|tx| {
            Ok(sotto_core::accept_device_list(
                &mut tx.trust(),
                &info.device_list,
            )?)
        })?;
        Ok(info.device_list)
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
