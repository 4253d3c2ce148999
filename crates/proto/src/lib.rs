//! Sotto's wire vocabulary: validated identifiers, device certificates and device lists
//! (with their verification), and a reader for the cleartext MLS framing.
//!
//! Everything here is plain data and pure functions: no I/O, no clocks, no RNG. Both
//! the client engine (`sotto-core`) and the server depend on this crate, and on nothing
//! of each other.

pub mod b64;
pub mod cert;
pub mod framing;
pub mod ids;
mod wire;

pub use cert::{
    AccountKeyCertificate, AccountKeyFields, CertError, CertificateChain, CertificateFields,
    DeviceCertificate, DeviceList, DeviceListFields, IdentityPublicKey, MAX_DEVICE_NAME,
    recovery_lookup_message,
};
pub use ids::{BlobId, ConversationId, DeviceId, GroupId, IdError, MessageId, Username};
pub use wire::DecodeError;
