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
                 list_version = CASE WHEN identity_key = excluded.identity_key THEN list_version ELSE NULL END,
                 list_digest = CASE WHEN identity_key = excluded.identity_key THEN list_digest ELSE NULL END",
            params![username.as_str(), &key.as_bytes()[..], i(self.now)],
        )
        .map_err(failed)?;
        Ok(())
    }

    fn seen_device_list(
        &self,
        username: &Username,
    ) -> Result<Option<(u64, [u8; 32])>, TrustStoreError> {
        let row: Option<(Option<i64>, Option<Vec<u8>>)> = self
            .conn
            .query_row(
                "SELECT list_version, list_digest FROM contacts WHERE username = ?1",
                [username.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(failed)?;
        let Some((Some(version), Some(digest))) = row else {
            return Ok(None);
        };
        let digest =
            <[u8; 32]>::try_from(digest.as_slice()).map_err(|_| damaged("device list digest"))?;
        Ok(Some((u(version), digest)))
    }

    fn record_device_list(
        &mut self,
        username: &Username,
        version: u64,
        digest: [u8; 32],
    ) -> Result<(), TrustStoreError> {
        self.conn
            .execute(
                "UPDATE contacts SET list_version = ?2, list_digest = ?3 WHERE username = ?1",
                params![username.as_str(), i(version), &digest[..]],
            )
            .map_err(failed)?;
        Ok(())
    }
}
