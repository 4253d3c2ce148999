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
    CertError, CertificateChain, DeviceCertificate, DeviceId, DeviceList, IdentityPublicKey,
    Username,
};

/// A trust store could not be read or written (its database failed). The cause is
/// kept as the source. Never a security verdict: nothing was accepted or refused.
#[derive(Debug, thiserror::Error)]
#[error("the trust store failed: {0}")]
pub struct TrustStoreError(#[source] pub crate::conversation::BoxError);

/// Why a trust check did not accept: a refusal (a security event), a store failure,
/// or a user whose device list this client does not hold yet.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// Refused for security.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The trust store failed; nothing was decided.
    #[error(transparent)]
    Store(#[from] TrustStoreError),
    /// No verified device list is held for this user: fetch it from the directory,
    /// accept it ([`accept_device_list`]) and check again. Identity keys are pinned
    /// from the directory only, never from what a group member shows.
    #[error("{0}'s device list is needed to check their device")]
    NoDeviceList(Username),
}

/// The client's memory of which identity key belongs to which username (pinned from
/// the directory on first use), and of the newest device list accepted for each: a
/// device takes part in a conversation only if that list names it. The client crate
/// keeps it in its database; tests use [`MemoryTrustStore`]. Every call may fail (a
/// database error); a failure makes the whole operation fail, so nothing half-checked
/// is ever accepted.
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
    /// The newest device list accepted for `username`.
    fn device_list(&self, username: &Username) -> Result<Option<DeviceList>, TrustStoreError>;
    /// Remembers `list` as the newest accepted for its user.
    fn record_device_list(&mut self, list: &DeviceList) -> Result<(), TrustStoreError>;
}

/// An in-memory [`TrustStore`].
#[derive(Debug, Default, Clone)]
pub struct MemoryTrustStore {
    pins: BTreeMap<Username, IdentityPublicKey>,
    lists: BTreeMap<Username, DeviceList>,
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
        if self.pins.insert(username.clone(), key) != Some(key) {
            // A new key makes the lists signed by the old one worthless.
            self.lists.remove(username);
        }
        Ok(())
    }
    fn device_list(&self, username: &Username) -> Result<Option<DeviceList>, TrustStoreError> {
        Ok(self.lists.get(username).cloned())
    }
    fn record_device_list(&mut self, list: &DeviceList) -> Result<(), TrustStoreError> {
        self.lists.insert(list.username().clone(), list.clone());
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
    /// The directory's answer for a user contradicts itself: its device list is
    /// another user's, or is signed by a key other than the identity key it names.
    #[error("the directory's answer for {username} is inconsistent (a lying server?)")]
    InconsistentDirectory {
        /// The user looked up.
        username: Username,
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

/// Reads the certificate chain out of an MLS credential without verifying it.
pub(crate) fn chain_of(credential: &Credential) -> Result<CertificateChain, Refusal> {
    if credential.credential_type() != CredentialType::Basic {
        return Err(Refusal::NotACertificate);
    }
    let basic =
        BasicCredential::try_from(credential.clone()).map_err(|_| Refusal::NotACertificate)?;
    CertificateChain::from_bytes(basic.identity()).map_err(|_| Refusal::NotACertificate)
}

/// Reads the device certificate out of an MLS credential without verifying it.
pub(crate) fn certificate_of(credential: &Credential) -> Result<DeviceCertificate, Refusal> {
    chain_of(credential).map(|chain| chain.device)
}

/// Whether a leaf's device must be in its account's newest device list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listing {
    /// Devices this client adds: a device missing from the list is refused, whatever
    /// KeyPackage the server returned for it.
    Required,
    /// Devices others added (commits, a Welcome's tree): a group's history must be
    /// processed as it happened, and a device may have been listed when it was added
    /// and removed since. Such a device is reported by [`crate::Conversation::unlisted`]
    /// and its removal committed before this client sends anything.
    Reported,
}

/// The leaf check: a certificate chain is present, certifies `signature_key`,
/// verifies, and ends in the root pinned for its username, which comes from the user's
/// device list as fetched from the directory (never from what a member shows); with
/// [`Listing::Required`], also the very certificate that list holds (so signed by the
/// current account key, not a revoked one).
pub(crate) fn verify_leaf(
    credential: &Credential,
    signature_key: &[u8],
    trust: &dyn TrustStore,
    listing: Listing,
) -> Result<VerifiedDevice, TrustError> {
    let chain = chain_of(credential)?;
    let cert = &chain.device;
    if cert.device_key().as_slice() != signature_key {
        return Err(Refusal::UncertifiedKey {
            username: cert.username().clone(),
            device: cert.device_id(),
        }
        .into());
    }
    chain.verify().map_err(Refusal::from)?;
    let Some(list) = trust.device_list(cert.username())? else {
        return Err(TrustError::NoDeviceList(cert.username().clone()));
    };
    if list.identity_key() != chain.identity_key() {
        return Err(Refusal::IdentityKeyChanged {
            username: cert.username().clone(),
            pinned: *list.identity_key(),
            offered: *chain.identity_key(),
        }
        .into());
    }
    if listing == Listing::Required && !is_listed(&list, cert) {
        return Err(Refusal::NotInDeviceList {
            username: cert.username().clone(),
            device: cert.device_id(),
        }
        .into());
    }
    Ok(VerifiedDevice {
        username: cert.username().clone(),
        device_id: cert.device_id(),
        identity_key: *chain.identity_key(),
    })
}

/// Whether `list` names exactly this certificate.
pub(crate) fn is_listed(list: &DeviceList, cert: &DeviceCertificate) -> bool {
    list.device(cert.device_id()) == Some(cert)
}

/// What accepting a device list changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// The first list of this user: their root key is pinned now.
    FirstSeen,
    /// The same list as held.
    Unchanged,
    /// A newer list under the same account key (a device linked or removed).
    Updated,
    /// A newer list under a new account key certified by the same root: the account
    /// was recovered on a new device (informational: the identity did not change).
    AccountKeyRotated {
        /// The new account key's generation.
        generation: u64,
    },
}

/// Accepts a device list fetched from the directory: it must verify, be signed under
/// the pinned root (pinning it on first use: the only place a pin is made), and not be
/// older than, or conflict with, the newest list seen, nor be signed by an account
/// key older than the newest seen (a revoked one). On success the trust store keeps it
/// as the user's current list.
pub fn accept_device_list(
    trust: &mut dyn TrustStore,
    list: &DeviceList,
) -> Result<Accepted, TrustError> {
    list.verify().map_err(Refusal::from)?;
    let pinned = trust.pinned_identity(list.username())?;
    if let Some(pinned) = pinned
        && pinned != *list.identity_key()
    {
        return Err(Refusal::IdentityKeyChanged {
            username: list.username().clone(),
            pinned,
            offered: *list.identity_key(),
        }
        .into());
    }
    let seen = trust.device_list(list.username())?;
    list.check_not_rollback(seen.as_ref())
        .map_err(Refusal::from)?;
    if pinned.is_none() {
        trust.pin_identity(list.username(), *list.identity_key())?;
    }
    let outcome = match &seen {
        None => Accepted::FirstSeen,
        Some(seen) if seen == list => Accepted::Unchanged,
        Some(seen) if seen.account().generation() < list.account().generation() => {
            Accepted::AccountKeyRotated {
                generation: list.account().generation(),
            }
        }
        Some(_) => Accepted::Updated,
    };
    if outcome != Accepted::Unchanged {
        trust.record_device_list(list)?;
    }
    Ok(outcome)
}
