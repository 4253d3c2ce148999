//! KeyPackages: how others add this device to a conversation while it is offline.
//!
//! Each device uploads a batch of one-time KeyPackages plus one last-resort KeyPackage
//! (RFC 9420 §16.8: used when the one-time ones run out, so a device can always be
//! reached; reuse weakens forward secrecy for that one join only). The private parts
//! are written to the provider's storage by OpenMLS.

use openmls::prelude::{KeyPackage, Lifetime};

use crate::config::ConversationConfig;
use crate::conversation::ConversationError;
use crate::identity::LocalDevice;

/// A fresh batch of KeyPackages, serialized for upload.
#[derive(Debug, Clone)]
pub struct KeyPackageBatch {
    /// One-time KeyPackages; the server deletes each when claimed.
    pub one_time: Vec<Vec<u8>>,
    /// The last-resort KeyPackage; the server hands it out when no one-time one is left.
    pub last_resort: Vec<u8>,
}

/// Lifetime of a KeyPackage, in seconds (the RFC's recommended maximum order: months).
const LIFETIME_SECONDS: u64 = 60 * 60 * 24 * 90;

fn build<P: crate::conversation::MlsProvider>(
    provider: &P,
    device: &LocalDevice,
    config: &ConversationConfig,
    last_resort: bool,
) -> Result<Vec<u8>, ConversationError> {
    let mut builder = KeyPackage::builder()
        .leaf_node_capabilities(config.capabilities())
        .key_package_lifetime(Lifetime::new(LIFETIME_SECONDS));
    if last_resort {
        builder = builder.mark_as_last_resort();
    }
    let bundle = builder
        .build(
            config.ciphersuite,
            provider,
            device.signer(),
            device.credential_with_key(),
        )
        .map_err(crate::conversation::mls)?;
    bundle
        .key_package()
        .tls_serialize_detached_bytes()
        .map_err(crate::conversation::mls)
}

/// Generates `count` one-time KeyPackages and one last-resort KeyPackage.
pub fn generate_key_packages<P: crate::conversation::MlsProvider>(
    provider: &P,
    device: &LocalDevice,
    config: &ConversationConfig,
    count: usize,
) -> Result<KeyPackageBatch, ConversationError> {
    if !config.is_supported() {
        return Err(ConversationError::UnsupportedCiphersuite(
            config.ciphersuite,
        ));
    }
    let one_time = (0..count)
        .map(|_| build(provider, device, config, false))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(KeyPackageBatch {
        one_time,
        last_resort: build(provider, device, config, true)?,
    })
}

/// Serializes a KeyPackage.
trait TlsBytes {
    fn tls_serialize_detached_bytes(&self) -> Result<Vec<u8>, openmls::prelude::tls_codec::Error>;
}

impl TlsBytes for KeyPackage {
    fn tls_serialize_detached_bytes(&self) -> Result<Vec<u8>, openmls::prelude::tls_codec::Error> {
        use openmls::prelude::tls_codec::Serialize as _;
        self.tls_serialize_detached()
    }
}
