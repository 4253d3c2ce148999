//! Contacts: pinned identity keys, device lists seen, verification; and the engine's trust store over them.

use super::*;

impl ProfileTx<'_> {
    /// The pinned identity key of a contact and whether it was verified.
    pub fn contact(
        &self,
        username: &Username,
    ) -> Result<Option<(IdentityPublicKey, bool)>, ClientError> {
        let row: Option<(Vec<u8>, bool)> = self
            .tx
            .query_row(
                "SELECT identity_key, verified FROM contacts WHERE username = ?1",
                [username.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(k, v)| {
            let key: [u8; 32] = k
                .as_slice()
                .try_into()
                .map_err(|_| ClientError::Corrupt("a pinned identity key".into()))?;
            Ok((IdentityPublicKey::from_bytes(key), v))
        })
        .transpose()
    }

    /// Remembers that the directory offered `offered` as `username`'s identity key,
    /// which differs from the pinned one: sending to them is refused until the
    /// person accepts it ([`ProfileTx::accept_identity`]).
    pub fn set_key_changed(
        &self,
        username: &Username,
        offered: &IdentityPublicKey,
    ) -> Result<(), ClientError> {
        self.tx.execute(
            "UPDATE contacts SET changed_key = ?2 WHERE username = ?1",
            params![username.as_str(), &offered.as_bytes()[..]],
        )?;
        Ok(())
    }

    /// Forgets an offered key (the directory serves the pinned one again).
    pub fn clear_key_changed(&self, username: &Username) -> Result<(), ClientError> {
        self.tx.execute(
            "UPDATE contacts SET changed_key = NULL WHERE username = ?1",
            [username.as_str()],
        )?;
        Ok(())
    }

    /// The identity key the directory offers for `username` in place of the pinned
    /// one, if the person has not accepted it yet.
    pub fn key_changed(
        &self,
        username: &Username,
    ) -> Result<Option<IdentityPublicKey>, ClientError> {
        let key: Option<Option<Vec<u8>>> = self
            .tx
            .query_row(
                "SELECT changed_key FROM contacts WHERE username = ?1",
                [username.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        key.flatten()
            .map(|k| {
                <[u8; 32]>::try_from(k.as_slice())
                    .map(IdentityPublicKey::from_bytes)
                    .map_err(|_| ClientError::Corrupt("a changed identity key".into()))
            })
            .transpose()
    }

    /// Records whether the server still has `username`'s account.
    pub fn set_gone(&self, username: &Username, gone: bool) -> Result<(), ClientError> {
        self.tx.execute(
            "UPDATE contacts SET gone = ?2 WHERE username = ?1",
            params![username.as_str(), gone],
        )?;
        Ok(())
    }

    /// Whether the server said `username`'s account no longer exists.
    pub fn is_gone(&self, username: &Username) -> Result<bool, ClientError> {
        Ok(self
            .tx
            .query_row(
                "SELECT gone FROM contacts WHERE username = ?1",
                [username.as_str()],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(false))
    }

    /// Accepts `key` as `username`'s identity key from now on (the person decided,
    /// after a safety-number change): the pin moves, verification is reset, the old
    /// device list is dropped (the caller records the new one).
    pub fn accept_identity(
        &self,
        username: &Username,
        key: &IdentityPublicKey,
    ) -> Result<(), ClientError> {
        self.tx.execute(
            "UPDATE contacts SET identity_key = ?2, verified = 0, device_list = NULL,
                 changed_key = NULL, gone = 0
             WHERE username = ?1",
            params![username.as_str(), &key.as_bytes()[..]],
        )?;
        Ok(())
    }

    /// The newest device list held for `username`.
    pub fn device_list_of(&self, username: &Username) -> Result<Option<DeviceList>, ClientError> {
        Ok(self.trust().device_list(username)?)
    }

    /// Marks a contact verified.
    pub fn set_verified(&self, username: &Username) -> Result<(), ClientError> {
        self.tx.execute(
            "UPDATE contacts SET verified = 1 WHERE username = ?1",
            [username.as_str()],
        )?;
        Ok(())
    }
}

/// The trust store (pinned identity keys, newest device lists) in the profile's
/// `contacts` table, inside the current transaction: an error makes the caller roll
/// the whole transaction back, so a failed read never leaves a wrong pin behind.
pub struct SqlTrust<'t> {
    pub(super) conn: &'t Connection,
    pub(super) now: u64,
}

fn failed(e: impl std::error::Error + Send + Sync + 'static) -> TrustStoreError {
    TrustStoreError(Box::new(e))
}

/// A damaged stored value is an error, never "nothing pinned": that would pin
/// whatever key the server offers next.
fn damaged(what: &'static str) -> TrustStoreError {
    TrustStoreError(format!("the stored {what} is damaged").into())
}

impl TrustStore for SqlTrust<'_> {
    fn pinned_identity(
        &self,
        username: &Username,
    ) -> Result<Option<IdentityPublicKey>, TrustStoreError> {
        let key: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT identity_key FROM contacts WHERE username = ?1",
                [username.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(failed)?;
        key.map(|k| {
            <[u8; 32]>::try_from(k.as_slice())
                .map(IdentityPublicKey::from_bytes)
                .map_err(|_| damaged("identity key"))
        })
        .transpose()
    }

    fn pin_identity(
        &mut self,
        username: &Username,
        key: IdentityPublicKey,
    ) -> Result<(), TrustStoreError> {
        // A new pin (or an accepted change) is unverified until the user verifies it.
        self.conn.execute(
            "INSERT INTO contacts (username, identity_key, verified, pinned_at) VALUES (?1, ?2, 0, ?3)
             ON CONFLICT (username) DO UPDATE SET identity_key = excluded.identity_key,
                 verified = CASE WHEN identity_key = excluded.identity_key THEN verified ELSE 0 END,
                 device_list = CASE WHEN identity_key = excluded.identity_key THEN device_list ELSE NULL END",
            params![username.as_str(), &key.as_bytes()[..], i(self.now)],
        )
        .map_err(failed)?;
        Ok(())
    }

    fn device_list(&self, username: &Username) -> Result<Option<DeviceList>, TrustStoreError> {
        let bytes: Option<Option<Vec<u8>>> = self
            .conn
            .query_row(
                "SELECT device_list FROM contacts WHERE username = ?1",
                [username.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(failed)?;
        bytes
            .flatten()
            .map(|b| DeviceList::from_bytes(&b).map_err(|_| damaged("device list")))
            .transpose()
    }

    fn record_device_list(&mut self, list: &DeviceList) -> Result<(), TrustStoreError> {
        let changed = self.device_list(list.username())?.as_ref() != Some(list);
        let n = self
            .conn
            .execute(
                "UPDATE contacts SET device_list = ?2 WHERE username = ?1",
                params![list.username().as_str(), list.to_bytes()],
            )
            .map_err(failed)?;
        if n != 1 {
            return Err(TrustStoreError(
                "a device list was recorded for a user with no pinned key".into(),
            ));
        }
        if changed {
            // A device may have left the list: every conversation is checked again.
            self.conn
                .execute(
                    "INSERT OR IGNORE INTO rosters_to_check (conversation)
                     SELECT id FROM conversations WHERE active = 1",
                    [],
                )
                .map_err(failed)?;
        }
        Ok(())
    }
}
