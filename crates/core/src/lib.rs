//! Sotto's end-to-end encryption engine.
//!
//! Turns plaintext into MLS (RFC 9420) messages and back for devices certified by their
//! account, on OpenMLS. This crate does no I/O: no sockets, files, clocks or async
//! runtime. Time and randomness come from the caller or the OpenMLS provider, and MLS
//! state lives behind OpenMLS's `StorageProvider`, which the caller supplies (an
//! in-memory one in tests, SQLite in the client).
//!
//! - [`identity`]: the root (recovery) key, the account key, device keys and certificates.
//! - [`trust`]: pinned identity keys and the checks that refuse ghost devices.
//! - [`conversation`]: conversations as MLS groups of devices.
//! - [`key_package`]: KeyPackage batches for the directory.
//! - [`content`]: the typed plaintext envelope.
//! - [`safety`]: safety numbers.
//! - [`storage`]: a compact OpenMLS storage provider over any key-value backend.

pub mod config;
pub mod content;
pub mod conversation;
pub mod identity;
pub mod key_package;
pub mod safety;
pub mod storage;
pub mod trust;

pub use config::ConversationConfig;
pub use content::{Content, Envelope};
pub use conversation::{
    BoxError, ClaimedKeyPackage, CommitMetadata, Conversation, ConversationError, Incoming,
    MlsProvider, OutgoingCommit, ReceivedMessage, Roster, RosterChange, RosterEntry, SecurityEvent,
    UserKeyPackages,
};
pub use identity::{
    AccountKey, DeviceSigner, IdentityKeyPair, LocalDevice, RecoveryKeyError, device_name,
};
pub use key_package::{KeyPackageBatch, generate_key_packages};
pub use safety::SafetyNumber;
pub use trust::{
    Accepted, MemoryTrustStore, Refusal, TrustError, TrustStore, TrustStoreError,
    accept_device_list,
};

/// Re-exported so callers name the same OpenMLS types this crate uses.
pub use openmls;
pub use openmls_traits;
