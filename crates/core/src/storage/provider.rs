//! [`SottoProvider`]: crypto plus storage as one `OpenMlsProvider`.

use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::random::OpenMlsRand;
use openmls_traits::storage::{CURRENT_VERSION, StorageProvider};

/// The `OpenMlsProvider` Sotto passes to OpenMLS: a crypto provider that also supplies
/// randomness (RustCrypto by default, as `openmls_rust_crypto::OpenMlsRustCrypto`
/// does) with a storage of our choice, usually a [`KvStorage`](super::KvStorage).
#[derive(Debug, Default)]
pub struct SottoProvider<S, C = RustCrypto> {
    crypto: C,
    storage: S,
}

impl<S> SottoProvider<S> {
    /// Pairs `storage` with a freshly seeded RustCrypto provider.
    pub fn new(storage: S) -> Self {
        Self::with_crypto(RustCrypto::default(), storage)
    }
}

impl<S, C> SottoProvider<S, C> {
    /// Pairs `storage` with the given crypto provider.
    pub fn with_crypto(crypto: C, storage: S) -> Self {
        Self { crypto, storage }
    }

    /// The storage.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Drops the crypto provider and returns the storage.
    pub fn into_storage(self) -> S {
        self.storage
    }
}

impl<S, C> OpenMlsProvider for SottoProvider<S, C>
where
    S: StorageProvider<CURRENT_VERSION>,
    C: OpenMlsCrypto + OpenMlsRand,
{
    type CryptoProvider = C;
    type RandProvider = C;
    type StorageProvider = S;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}
