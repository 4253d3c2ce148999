//! [`SottoProvider`]: crypto plus storage as one `OpenMlsProvider`.

use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use openmls_traits::storage::{CURRENT_VERSION, StorageProvider};

/// The `OpenMlsProvider` Sotto passes to OpenMLS: RustCrypto for crypto and
/// randomness (as `openmls_rust_crypto::OpenMlsRustCrypto` does), with a
/// storage of our choice, usually a [`KvStorage`](super::KvStorage).
#[derive(Debug, Default)]
pub struct SottoProvider<S> {
    crypto: RustCrypto,
    storage: S,
}

impl<S> SottoProvider<S> {
    /// Pairs `storage` with a freshly seeded crypto provider.
    pub fn new(storage: S) -> Self {
        Self {
            crypto: RustCrypto::default(),
            storage,
        }
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

impl<S: StorageProvider<CURRENT_VERSION>> OpenMlsProvider for SottoProvider<S> {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
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
