//! Registering this device's account, its KeyPackages, and safety numbers.

use super::*;

impl Client {
    // ----- account -----

    /// Creates the account and this device on the server, and uploads KeyPackages.
    #[tracing::instrument(name = "register", skip_all)]
    pub async fn register(&self, username: &str) -> Result<WhoAmI, ClientError> {
        let username = super::username(username)?;
        if let Some(a) = self.read(|tx| tx.account())? {
            return Err(ClientError::AlreadyRegistered(a.username.to_string()));
        }
        let now = self.now();
        let (identity, device, list) = self.read(|tx| {
            let provider = tx.provider();
            let identity = IdentityKeyPair::generate(provider.rand())
                .map_err(|_| ClientError::Local("the system random generator failed".into()))?;
            let device = LocalDevice::create(provider.rand(), &identity, &username, now)
                .map_err(|_| ClientError::Local("the system random generator failed".into()))?;
            let list = identity.sign_device_list(&username, 1, vec![device.certificate().clone()]);
            Ok((identity, device, list))
        })?;
        let token = self.transport.register(&username, &list).await?;
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
            let mut trust = tx.trust();
            sotto_core::accept_device_list(&mut trust, &list)?;
            trust.finish()
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

    /// The safety number with `username` (fetching and pinning their key on first use).
    pub async fn safety_number(&self, username: &str) -> Result<SafetyNumber, ClientError> {
        let account = self.account()?;
        let user = super::username(username)?;
        let pinned = match self.read(|tx| tx.contact(&user))? {
            Some((key, _)) => key,
            None => {
                let info = self.transport.account(&account.token, &user).await?;
                self.write(|tx| {
                    let mut trust = tx.trust();
                    sotto_core::accept_device_list(&mut trust, &info.device_list)?;
                    trust.finish()
                })?;
                info.identity_key
            }
        };
        Ok(SafetyNumber::new(&account.identity.public(), &pinned))
    }

    /// Marks `username` verified if `number` matches the safety number; `Ok(false)`
    /// (and nothing marked) if it does not.
    pub async fn verify(&self, username: &str, number: &str) -> Result<bool, ClientError> {
        let safety = self.safety_number(username).await?;
        let user = super::username(username)?;
        if !safety.matches_digits(number) {
            return Ok(false);
        }
        self.write(|tx| tx.set_verified(&user))?;
        Ok(true)
    }

    /// Whether `username` is verified.
    pub fn is_verified(&self, username: &str) -> Result<bool, ClientError> {
        let user = super::username(username)?;
        Ok(self.read(|tx| tx.contact(&user))?.is_some_and(|(_, v)| v))
    }
}
