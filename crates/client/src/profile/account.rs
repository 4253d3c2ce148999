//! This device's account (keys, token) and the `meta` table's values and counters.

use super::*;

impl ProfileTx<'_> {
    pub(super) fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, ClientError> {
        Ok(self
            .tx
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub(super) fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), ClientError> {
        self.tx.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    pub(super) fn meta_text(&self, key: &str) -> Result<Option<String>, ClientError> {
        self.meta(key)?
            .map(|v| {
                String::from_utf8(v)
                    .map_err(|_| ClientError::Corrupt(format!("profile setting {key}")))
            })
            .transpose()
    }

    fn delete_meta(&self, key: &str) -> Result<(), ClientError> {
        self.tx.execute("DELETE FROM meta WHERE key = ?1", [key])?;
        Ok(())
    }

    /// Stores the account (registration, linking or recovery). The account key is
    /// stored on the primary only; no device stores the root.
    pub fn save_account(&self, account: &Account) -> Result<(), ClientError> {
        self.set_meta("username", account.username.as_str().as_bytes())?;
        self.set_meta("chain", &account.device.chain().to_bytes())?;
        self.set_meta(
            "device_secret",
            account.device.signer().to_secret_bytes().as_slice(),
        )?;
        match &account.account_key {
            Some(key) => {
                self.set_meta("account_secret", key.to_secret_bytes().as_slice())?;
                self.set_meta("account_certificate", &key.certificate().to_bytes())?;
            }
            None => {
                self.delete_meta("account_secret")?;
                self.delete_meta("account_certificate")?;
            }
        }
        self.set_token(&account.token)?;
        self.set_meta("server", account.server.as_bytes())?;
        Ok(())
    }

    /// Records the digest of a device list this (primary) device is about to
    /// publish, so that the directory notice of its own publication is not taken
    /// for a list made elsewhere.
    pub fn set_own_list_pending(&self, digest: &[u8; 32]) -> Result<(), ClientError> {
        self.set_meta("own_list_pending", digest)
    }

    /// Whether `digest` is the list this device last set out to publish.
    pub fn is_own_list_pending(&self, digest: &[u8; 32]) -> Result<bool, ClientError> {
        Ok(self.meta("own_list_pending")?.as_deref() == Some(&digest[..]))
    }

    /// Replaces the bearer token (after a rotation).
    pub fn set_token(&self, token: &str) -> Result<(), ClientError> {
        self.set_meta("token", token.as_bytes())
    }

    /// The account, if this profile has one.
    pub fn account(&self) -> Result<Option<Account>, ClientError> {
        let Some(username) = self.meta_text("username")? else {
            return Ok(None);
        };
        let corrupt = |what: &str| ClientError::Corrupt(format!("the profile's {what}"));
        let username = Username::parse(&username).map_err(|_| corrupt("username"))?;
        let chain = self.meta("chain")?.ok_or_else(|| {
            ClientError::Corrupt(
                "the profile's certificate chain (a profile made before decision 0011: \
                 register or link this device again in a new profile)"
                    .into(),
            )
        })?;
        let chain = CertificateChain::from_bytes(&chain).map_err(|_| corrupt("certificate"))?;
        let secret = |key: &str| -> Result<zeroize::Zeroizing<[u8; 32]>, ClientError> {
            let bytes = zeroize::Zeroizing::new(self.meta(key)?.ok_or_else(|| corrupt(key))?);
            let array: [u8; 32] = bytes.as_slice().try_into().map_err(|_| corrupt(key))?;
            Ok(zeroize::Zeroizing::new(array))
        };
        let signer = DeviceSigner::from_secret_bytes(&*secret("device_secret")?);
        let device = LocalDevice::new(chain, signer).map_err(|_| corrupt("device key"))?;
        let account_key = match self.meta("account_certificate")? {
            None => None,
            Some(cert) => {
                let cert = AccountKeyCertificate::from_bytes(&cert)
                    .map_err(|_| corrupt("account key certificate"))?;
                Some(
                    AccountKey::from_parts(&*secret("account_secret")?, cert)
                        .map_err(|_| corrupt("account key"))?,
                )
            }
        };
        Ok(Some(Account {
            username,
            device,
            account_key,
            token: self.meta_text("token")?.ok_or_else(|| corrupt("token"))?,
            server: self.meta_text("server")?.ok_or_else(|| corrupt("server"))?,
        }))
    }

    /// A small integer setting.
    pub fn counter(&self, key: &str) -> Result<u64, ClientError> {
        Ok(self
            .meta(key)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Sets a small integer setting.
    pub fn set_counter(&self, key: &str, value: u64) -> Result<(), ClientError> {
        self.set_meta(key, &value.to_be_bytes())
    }
}
