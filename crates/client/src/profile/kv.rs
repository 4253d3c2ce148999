//! OpenMLS's key-value storage in the profile's `mls_kv` table.

use super::*;

/// OpenMLS key-value storage in the profile's `mls_kv` table, inside the current
/// transaction.
pub struct SqlKv<'t> {
    pub(super) conn: &'t Connection,
}

impl KvBackend for SqlKv<'_> {
    type Error = rusqlite::Error;

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Self::Error> {
        self.conn
            .prepare_cached("SELECT value FROM mls_kv WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), Self::Error> {
        self.conn
            .prepare_cached(
                "INSERT INTO mls_kv (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![key, value])
            .map(drop)
    }

    fn delete(&self, key: &[u8]) -> Result<(), Self::Error> {
        self.conn
            .prepare_cached("DELETE FROM mls_kv WHERE key = ?1")?
            .execute([key])
            .map(drop)
    }
}
