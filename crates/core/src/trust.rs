//! Whom this client trusts: pinned identity keys ("trust on first use, then pinned")
//! and the newest device list seen per account, plus the checks that turn an MLS leaf
//! into a verified member device or a refusal.
//!
//! This is the ghost defence: a leaf is accepted only if its credential is a device
//! certificate, the certificate signs the leaf's own signature key, the certificate
//! verifies, and it was signed by the identity key pinned for that username.

use std::collections::BTreeMap;

use openmls::prelude::{BasicCredential, Credential, CredentialType};
use sotto_proto::{
    CertError, DeviceCertificate, DeviceId, DeviceList, IdentityPublicKey, Username,
};

/// A trust store could not be read or written (its database failed). The cause is
/// kept as the source. Never a security verdict: nothing was accepted or refused.
#[derive(Debug, thiserror::Error)]
#[error("the trust store failed: {0}")]
pub struct TrustStoreError(#[source] pub crate::conversation::BoxError);

/// Why a trust check did not accept: a refusal (a security event), or a store failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// Refused for security.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The trust store failed; nothing was decided.
    #[error(transparent)]
    Store(#[from] TrustStoreError),
}

/// The client's memory of which identity key belongs to which username, and of the
/// newest device list seen for each. The client crate keeps it in its database; tests
/// use [`MemoryTrustStore`]. Every call may fail (a database error); a failure makes
/// the whole operation fail, so nothing half-checked is ever accepted.
pub trait TrustStore {
    /// The identity key pinned for `username`, if any.
    fn pinned_identity(
        &self,
        username: &Username,
    ) -> Result<Option<IdentityPublicKey>, TrustStoreError>;
    /// Pins `key` for `username` (first use, or after the user accepted a change).
    fn pin_identity(
        &mut self,
        username: &Username,
        key: IdentityPublicKey,
    ) -> Result<(), TrustStoreError>;
    /// Version and digest of the newest device list accepted for `username`.
    fn seen_device_list(
        &self,
        username: &Username,
    ) -> Result<Option<(u64, [u8; 32])>, TrustStoreError>;
    /// Remembers the newest device list accepted for `username`.
    fn record_device_list(
        &mut self,
        username: &Username,
        version: u64,
        digest: [u8; 32],
    ) -> Result<(), TrustStoreError>;
}

/// An in-memory [`TrustStore`].
#[derive(Debug, Default, Clone)]
pub struct MemoryTrustStore {
    pins: BTreeMap<Username, IdentityPublicKey>,
    lists: BTreeMap<Username, (u64, [u8; 32])>,
}

impl TrustStore for MemoryTrustStore {
    fn pinned_identity(
        &self,
        username: &Username,
    ) -> Result<Option<IdentityPublicKey>, TrustStoreError> {
        Ok(self.pins.get(username).copied())
    }
    fn pin_identity(
        &mut self,
        username: &Username,
        key: IdentityPublicKey,
    ) -> Result<(), TrustStoreError> {
        self.pins.insert(username.clone(), key);
        Ok(())
    }
    fn seen_device_list(
        &self,
        username: &Username,
    ) -> Result<Option<(u64, [u8; 32])>, TrustStoreError> {
        Ok(self.lists.get(username).copied())
    }
    fn record_device_list(
        &mut self,
        username: &Username,
        version: u64,
        digest: [u8; 32],
    ) -> Result<(), TrustStoreError> {
        self.lists.insert(username.clone(), (version, digest));
        Ok(())
    }
}

/// Why a member, key package, device list or proposal was refused. Each of these is a
/// security event the user should see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The leaf's credential is not a Sotto device certificate.
    #[error("a member's credential is not a device certificate")]
    NotACertificate,
    /// The certificate certifies a different key than the one the leaf signs with.
    #[error("{username}'s device {device} signs with a key its certificate does not certify")]
    UncertifiedKey {
        /// Claimed account.
        username: Username,
        /// Claimed device.
        device: DeviceId,
    },
    /// The certificate or device list does not verify.
    #[error("invalid certificate: {0}")]
    BadCertificate(#[from] CertError),
    /// The certificate was signed by an identity key other than the pinned one.
    #[error(
        "{username}'s identity key is not the one this device trusts: refusing until it is verified"
    )]
    IdentityKeyChanged {
        /// The account.
        username: Username,
        /// The pinned key.
        pinned: IdentityPublicKey,
        /// The key offered now.
        offered: IdentityPublicKey,
    },
    /// A key package was offered for one user but certifies another.
    #[error("a key package for {expected} is certified for {found}")]
    WrongAccount {
        /// Who it was claimed for.
        expected: Username,
        /// Whom it certifies.
        found: Username,
    },
    /// A key package's device is not in its account's current device list.
    #[error("{username}'s device {device} is not in their current device list")]
    NotInDeviceList {
        /// The account.
        username: Username,
        /// The device.
        device: DeviceId,
    },
    /// A device would appear twice in a conversation.
    #[error("{username}'s device {device} is already a member")]
    DuplicateDevice {
        /// The account.
        username: Username,
        /// The device.
        device: DeviceId,
    },
    /// A leaf update tried to change who the leaf belongs to.
    #[error("a leaf update tried to turn {from_user}'s device into {to_user}'s device {to_device}")]
    IdentityChangedInUpdate {
        /// Previous owner.
        from_user: Username,
        /// New owner.
        to_user: Username,
        /// New device.
        to_device: DeviceId,
    },
    /// A proposal or sender kind Sotto never produces (PSK, re-init, external joins,
    /// group context changes...).
    #[error("unsupported group operation: {0}")]
    UnsupportedOperation(&'static str),
}

/// A member device whose certificate was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDevice {
    /// The account.
    pub username: Username,
    /// The device.
    pub device_id: DeviceId,
    /// The account's identity key.
    pub identity_key: IdentityPublicKey,
}

/// Reads the device certificate out of an MLS credential without verifying it.
pub(crate) fn certificate_of(credential: &Credential) -> Result<DeviceCertificate, Refusal> {
    if credential.credential_type() != CredentialType::Basic {
        return Err(Refusal::NotACertificate);
    }
    let basic =
        BasicCredential::try_from(credential.clone()).map_err(|_| Refusal::NotACertificate)?;
    DeviceCertificate::from_bytes(basic.identity()).map_err(|_| Refusal::NotACertificate)
}

/// New pins collected while checking a batch of leaves; applied only when the whole
/// operation is accepted, so a refused commit pins nothing.
#[derive(Debug, Default)]
pub(crate) struct PendingPins(Vec<(Username, IdentityPublicKey)>);

impl PendingPins {
    fn lookup(
        &self,
        trust: &dyn TrustStore,
        username: &Username,
    ) -> Result<Option<IdentityPublicKey>, TrustStoreError> {
        Ok(trust
            .pinned_identity(username)?
            .or_else(|| self.0.iter().find(|(u, _)| u == username).map(|(_, k)| *k)))
    }

    /// Checks `key` against the pin for `username` (or a pin made earlier in this
    /// batch), and schedules a first-use pin if there is none.
    pub(crate) fn check(
        &mut self,
        trust: &dyn TrustStore,
        username: &Username,
        key: IdentityPublicKey,
    ) -> Result<(), TrustError> {
        match self.lookup(trust, username)? {
            Some(pinned) if pinned == key => Ok(()),
            Some(pinned) => Err(Refusal::IdentityKeyChanged {
                username: username.clone(),
                pinned,
                offered: key,
            }
            .into()),
            None => {
                self.0.push((username.clone(), key));
                Ok(())
            }
        }
    }

    /// Writes the collected pins to the trust store.
    pub(crate) fn apply(self, trust: &mut dyn TrustStore) -> Result<(), TrustStoreError> {
        for (username, key) in self.0 {
            trust.pin_identity(&username, key)?;
        }
        Ok(())
    }
}

/// The full leaf check: certificate present, certifies `signature_key`, verifies, and
/// was signed by the trusted identity key for its username.
pub(crate) fn verify_leaf(
    credential: &Credential,
    signature_key: &[u8],
    trust: &dyn TrustStore,
    pins: &mut PendingPins,
) -> Result<VerifiedDevice, TrustError> {
    let cert = certificate_of(credential)?;
    if cert.device_key().as_slice() != signature_key {
        return Err(Refusal::UncertifiedKey {
            username: cert.username().clone(),
            device: cert.device_id(),
        }
        .into());
    }
    cert.verify().map_err(Refusal::from)?;
    pins.check(trust, cert.username(), *cert.identity_key())?;
    Ok(VerifiedDevice {
        username: cert.username().clone(),
        device_id: cert.device_id(),
        identity_key: *cert.identity_key(),
    })
}

/// Accepts a device list fetched from the directory: it must verify, be signed by the
/// pinned identity key (pinning it on first use), and not be older than, or conflict
/// with, the newest list seen. On success the trust store remembers it.
pub fn accept_device_list(trust: &mut dyn TrustStore, list: &DeviceList) -> Result<(), TrustError> {
    list.verify().map_err(Refusal::from)?;
    let mut pins = PendingPins::default();
    pins.check(trust, list.username(), *list.identity_key())?;
    list.check_not_rollback(trust.seen_device_list(list.username())?)
        .map_err(Refusal::from)?;
    pins.apply(trust)?;
    trust.record_device_list(list.username(), list.version(), list.digest())?;
    Ok(())
}
