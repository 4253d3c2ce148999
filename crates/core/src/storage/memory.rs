//! The in-memory [`KvBackend`] and its snapshot format.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use zeroize::Zeroize;

use super::KvBackend;
use super::framing::{Reader, put_frame};

/// Magic bytes at the start of every snapshot.
const SNAPSHOT_MAGIC: &[u8; 7] = b"SOTTOKV";
/// The snapshot format version this code writes and reads.
const SNAPSHOT_VERSION: u8 = 1;

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// A [`KvBackend`] over an in-memory ordered map, for tests and for
/// snapshotting state to bytes.
///
/// Values hold private key material: they are zeroized when overwritten,
/// deleted or dropped, and `Debug` prints only the number of entries.
///
/// A snapshot ([`MemoryBackend::snapshot`]) is `b"SOTTOKV"`, a format version
/// byte (1), the entry count as a big-endian `u64`, then each entry in key
/// order as a key frame and a value frame (a frame is a big-endian `u64`
/// length followed by the bytes).
#[derive(Default)]
pub struct MemoryBackend {
    entries: RwLock<Map>,
}

/// Why a snapshot could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The input does not start with the snapshot magic bytes.
    #[error("not a Sotto key-value snapshot")]
    BadMagic,
    /// The snapshot was written by a format version this code does not know.
    #[error("unsupported snapshot format version {0}")]
    UnsupportedVersion(u8),
    /// The input ends before the last announced entry.
    #[error("snapshot is truncated")]
    Truncated,
    /// There are bytes after the last announced entry.
    #[error("snapshot has trailing bytes")]
    TrailingBytes,
    /// The same key appears twice.
    #[error("snapshot contains a duplicate key")]
    DuplicateKey,
}

impl MemoryBackend {
    /// Creates an empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of stored entries.
    pub fn len(&self) -> usize {
        self.read_map().len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.read_map().is_empty()
    }

    /// Every stored key, in order. Keys name entries but hold no secrets.
    pub fn keys(&self) -> Vec<Vec<u8>> {
        self.read_map().keys().cloned().collect()
    }

    /// Serializes every entry to bytes (see the type docs for the format).
    ///
    /// The result contains private keys: treat it as a secret.
    pub fn snapshot(&self) -> Vec<u8> {
        let map = self.read_map();
        let mut out = Vec::new();
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.push(SNAPSHOT_VERSION);
        // Lossless: `usize` is at most 64 bits.
        out.extend_from_slice(&(map.len() as u64).to_be_bytes());
        for (key, value) in map.iter() {
            put_frame(&mut out, key);
            put_frame(&mut out, value);
        }
        out
    }

    /// Rebuilds a backend from [`MemoryBackend::snapshot`] output.
    ///
    /// Never panics on malformed input, and never allocates more than the
    /// input's own size, whatever the counts and lengths inside claim.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let mut reader = Reader::new(bytes);
        if reader.take(SNAPSHOT_MAGIC.len()) != Some(SNAPSHOT_MAGIC.as_slice()) {
            return Err(SnapshotError::BadMagic);
        }
        match reader.u8() {
            Some(SNAPSHOT_VERSION) => {}
            Some(other) => return Err(SnapshotError::UnsupportedVersion(other)),
            None => return Err(SnapshotError::Truncated),
        }
        let count = reader.u64().ok_or(SnapshotError::Truncated)?;

        // Fill a backend directly so that, on error, its `Drop` zeroizes the
        // values read so far.
        let mut backend = Self::new();
        let map = backend
            .entries
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        // Each entry is at least 16 bytes, so a huge count fails on the
        // first missing entry; nothing is pre-allocated from it.
        for _ in 0..count {
            let key = reader.frame().ok_or(SnapshotError::Truncated)?;
            let value = reader.frame().ok_or(SnapshotError::Truncated)?;
            if map.insert(key.to_vec(), value.to_vec()).is_some() {
                return Err(SnapshotError::DuplicateKey);
            }
        }
        if !reader.is_empty() {
            return Err(SnapshotError::TrailingBytes);
        }
        Ok(backend)
    }

    // Poisoning: every write below is a single `insert` or `remove` on the
    // map, so a panic in another thread while it held the lock cannot have
    // left the map half-updated. Recovering the guard is therefore sound,
    // and it keeps one panicking thread from bricking the store.

    fn read_map(&self) -> RwLockReadGuard<'_, Map> {
        self.entries.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_map(&self) -> RwLockWriteGuard<'_, Map> {
        self.entries.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl KvBackend for MemoryBackend {
    type Error = Infallible;

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Self::Error> {
        Ok(self.read_map().get(key).cloned())
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), Self::Error> {
        if let Some(mut old) = self.write_map().insert(key.to_vec(), value.to_vec()) {
            old.zeroize();
        }
        Ok(())
    }

    fn delete(&self, key: &[u8]) -> Result<(), Self::Error> {
        if let Some(mut old) = self.write_map().remove(key) {
            old.zeroize();
        }
        Ok(())
    }
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("entries", &self.len())
            .finish_non_exhaustive()
    }
}

impl Drop for MemoryBackend {
    fn drop(&mut self) {
        let map = self
            .entries
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        map.values_mut().for_each(Zeroize::zeroize);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly
mod tests {
    use super::*;

    fn sample() -> MemoryBackend {
        let backend = MemoryBackend::new();
        backend.put(b"k1", b"v1").unwrap();
        backend.put(b"k2", b"").unwrap();
        backend.put(b"", b"empty key").unwrap();
        backend
    }

    #[test]
    fn put_get_delete() {
        let backend = sample();
        assert_eq!(backend.get(b"k1").unwrap().as_deref(), Some(&b"v1"[..]));
        backend.put(b"k1", b"v1'").unwrap();
        assert_eq!(backend.get(b"k1").unwrap().as_deref(), Some(&b"v1'"[..]));
        backend.delete(b"k1").unwrap();
        backend.delete(b"missing").unwrap();
        assert_eq!(backend.get(b"k1").unwrap(), None);
        assert_eq!(backend.len(), 2);
    }

    #[test]
    fn snapshot_round_trips() {
        let backend = sample();
        let restored = MemoryBackend::from_snapshot(&backend.snapshot()).unwrap();
        assert_eq!(*restored.read_map(), *backend.read_map());
        assert_eq!(restored.snapshot(), backend.snapshot());

        let empty = MemoryBackend::new().snapshot();
        assert_eq!(empty.len(), 16);
        assert!(MemoryBackend::from_snapshot(&empty).unwrap().is_empty());
    }

    #[test]
    fn malformed_snapshots_are_rejected() {
        let good = sample().snapshot();
        for cut in 0..good.len() {
            let err = MemoryBackend::from_snapshot(&good[..cut]).unwrap_err();
            let expected = if cut < SNAPSHOT_MAGIC.len() {
                SnapshotError::BadMagic
            } else {
                SnapshotError::Truncated
            };
            assert_eq!(err, expected, "cut at {cut}");
        }

        let mut wrong_magic = good.clone();
        wrong_magic[0] ^= 1;
        assert_eq!(
            MemoryBackend::from_snapshot(&wrong_magic).unwrap_err(),
            SnapshotError::BadMagic
        );

        let mut wrong_version = good.clone();
        wrong_version[7] = 2;
        assert_eq!(
            MemoryBackend::from_snapshot(&wrong_version).unwrap_err(),
            SnapshotError::UnsupportedVersion(2)
        );

        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            MemoryBackend::from_snapshot(&trailing).unwrap_err(),
            SnapshotError::TrailingBytes
        );

        let mut huge_count = good[..8].to_vec();
        huge_count.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(
            MemoryBackend::from_snapshot(&huge_count).unwrap_err(),
            SnapshotError::Truncated
        );

        let mut duplicate = good[..8].to_vec();
        duplicate.extend_from_slice(&2u64.to_be_bytes());
        for _ in 0..2 {
            put_frame(&mut duplicate, b"k");
            put_frame(&mut duplicate, b"v");
        }
        assert_eq!(
            MemoryBackend::from_snapshot(&duplicate).unwrap_err(),
            SnapshotError::DuplicateKey
        );
    }

    #[test]
    fn debug_does_not_print_values() {
        let debug = format!("{:?}", sample());
        assert!(!debug.contains("v1") && !debug.contains("118"), "{debug}");
    }
}
