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
/// `contacts` table, inside the current transaction.
///
/// `TrustStore`'s methods cannot fail, so a database error is remembered and returned
/// by [`SqlTrust::finish`]; the caller then rolls the whole transaction back, so a
/// failed read can never leave a wrong pin behind.
pub struct SqlTrust<'t> {
    pub(super) conn: &'t Connection,
    pub(super) failure: RefCell<Option<rusqlite::Error>>,
    pub(super) now: u64,
}

impl SqlTrust<'_> {
    fn note<T: Default>(&self, r: rusqlite::Result<T>) -> T {
        r.unwrap_or_else(|e| {
            self.failure.borrow_mut().get_or_insert(e);
            T::default()
        })
    }

    /// Any database error met while the trust store was in use.
    pub fn finish(self) -> Result<(), ClientError> {
        match self.failure.into_inner() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

impl TrustStore for SqlTrust<'_> {
    fn pinned_identity(&self, username: &Username) -> Option<IdentityPublicKey> {
        let key: Option<Vec<u8>> = self.note(
            self.conn
                .query_row(
                    "SELECT identity_key FROM contacts WHERE username = ?1",
                    [username.as_str()],
                    |r| r.get(0),
                )
                .optional(),
        );
        key.and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok())
            .map(IdentityPublicKey::from_bytes)
    }

    fn pin_identity(&mut self, username: &Username, key: IdentityPublicKey) {
        // A new pin (or an accepted change) is unverified until the user verifies it.
        let r = self.conn.execute(
            "INSERT INTO contacts (username, identity_key, verified, pinned_at) VALUES (?1, ?2, 0, ?3)
             ON CONFLICT (username) DO UPDATE SET identity_key = excluded.identity_key,
                 verified = CASE WHEN identity_key = excluded.identity_key THEN verified ELSE 0 END,
                 list_version = CASE WHEN identity_key = excluded.identity_key THEN list_version ELSE NULL END,
                 list_digest = CASE WHEN identity_key = excluded.identity_key THEN list_digest ELSE NULL END",
            params![username.as_str(), &key.as_bytes()[..], i(self.now)],
        );
        self.note(r.map(drop));
    }

    fn seen_device_list(&self, username: &Username) -> Option<(u64, [u8; 32])> {
        let row: Option<(Option<i64>, Option<Vec<u8>>)> = self.note(
            self.conn
                .query_row(
                    "SELECT list_version, list_digest FROM contacts WHERE username = ?1",
                    [username.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional(),
        );
        let (Some(version), Some(digest)) = row? else {
            return None;
        };
        Some((u(version), <[u8; 32]>::try_from(digest.as_slice()).ok()?))
    }

    fn record_device_list(&mut self, username: &Username, version: u64, digest: [u8; 32]) {
        let r = self.conn.execute(
            "UPDATE contacts SET list_version = ?2, list_digest = ?3 WHERE username = ?1",
            params![username.as_str(), i(version), &digest[..]],
        );
        self.note(r.map(drop));
    }
}
