//! Account and device keys (decision 0011).
//!
//! - The **identity key** ([`IdentityKeyPair`]) is the account's root: made at
//!   registration, its secret is shown once as the **recovery key** and never stored.
//!   Contacts pin its public half. It only certifies account keys.
//! - The **account key** ([`AccountKey`]) lives on the primary device only. It
//!   certifies devices and signs device lists. A recovery replaces it with a new
//!   generation, which revokes the old one.
//! - Each **device** has its own Ed25519 key that signs its MLS messages.
//!
//! Secret halves have no `Debug` output and are wiped from memory when dropped.

use std::fmt;

use ed25519_dalek::{Signer as _, SigningKey};
use openmls::prelude::{BasicCredential, CredentialWithKey, SignatureScheme};
use openmls_traits::random::OpenMlsRand;
use openmls_traits::signatures::{Signer, SignerError};
use sha2::{Digest, Sha256};
use sotto_proto::{
    AccountKeyCertificate, AccountKeyFields, CertificateChain, CertificateFields,
    DeviceCertificate, DeviceId, DeviceList, DeviceListFields, IdentityPublicKey, MAX_DEVICE_NAME,
    Username,
};
use zeroize::Zeroizing;

/// Randomness could not be had from the provider.
#[derive(Debug, thiserror::Error)]
#[error("the random number generator failed")]
pub struct RandomnessError;

/// Draws `N` random bytes from the provider's RNG.
pub(crate) fn random_array<const N: usize>(
    rng: &impl OpenMlsRand,
) -> Result<[u8; N], RandomnessError> {
    rng.random_array::<N>().map_err(|_| RandomnessError)
}

/// An Ed25519 secret key: generated from the provider's RNG, saved as its 32 secret
/// bytes. Shared by the account identity key and device keys, which stay distinct types.
struct Ed25519Secret(SigningKey);

impl Ed25519Secret {
    fn generate(rng: &impl OpenMlsRand) -> Result<Self, RandomnessError> {
        let seed = Zeroizing::new(random_array::<32>(rng)?);
        Ok(Self(SigningKey::from_bytes(&seed)))
    }
    fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(bytes))
    }
    fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }
    fn public(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }
    fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

/// An account's root (identity) key pair: certifies account keys only. Its secret is
/// the recovery key; clients keep it only for the moment of registration or recovery.
pub struct IdentityKeyPair {
    key: Ed25519Secret,
}

/// A recovery key as typed does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryKeyError {
    /// Not the right letters or length.
    #[error("a recovery key is 55 letters and digits (spaces and dashes are ignored)")]
    Malformed,
    /// The letters decode but the check digits do not match: a typo.
    #[error("the recovery key has a typo (its check digits do not match)")]
    Checksum,
}

/// Domain separation of the recovery key's check digits.
const RECOVERY_CHECK_LABEL: &[u8] = b"sotto recovery key v1";

impl IdentityKeyPair {
    /// A new key from the provider's randomness (at registration).
    pub fn generate(rng: &impl OpenMlsRand) -> Result<Self, RandomnessError> {
        Ed25519Secret::generate(rng).map(|key| Self { key })
    }

    /// Restores a key from its 32 secret bytes.
    pub fn from_secret_bytes(bytes: &[u8; 32]) -> Self {
        Self {
            key: Ed25519Secret::from_bytes(bytes),
        }
    }

    /// The public half: what contacts pin and safety numbers are made of.
    pub fn public(&self) -> IdentityPublicKey {
        IdentityPublicKey::from_bytes(self.key.public())
    }

    /// The recovery key as shown to the person once: the 32 secret bytes and two check
    /// bytes in base32, 55 characters in groups of five.
    pub fn recovery_text(&self) -> Zeroizing<String> {
        let secret = self.key.to_bytes();
        let mut bytes = Zeroizing::new(Vec::with_capacity(34));
        bytes.extend_from_slice(secret.as_slice());
        bytes.extend_from_slice(&recovery_check(&secret));
        let plain = Zeroizing::new(data_encoding::BASE32_NOPAD.encode(&bytes));
        let groups: Vec<&str> = plain
            .as_bytes()
            .chunks(5)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        Zeroizing::new(groups.join("-"))
    }

    /// Reads a recovery key as typed: case, spaces and dashes do not matter.
    pub fn from_recovery_text(text: &str) -> Result<Self, RecoveryKeyError> {
        let cleaned = Zeroizing::new(
            text.chars()
                .filter(|c| !c.is_whitespace() && *c != '-')
                .map(|c| c.to_ascii_uppercase())
                .collect::<String>(),
        );
        let bytes = Zeroizing::new(
            data_encoding::BASE32_NOPAD
                .decode(cleaned.as_bytes())
                .map_err(|_| RecoveryKeyError::Malformed)?,
        );
        if bytes.len() != 34 {
            return Err(RecoveryKeyError::Malformed);
        }
        let mut secret = Zeroizing::new([0u8; 32]);
        secret.copy_from_slice(&bytes[..32]);
        if recovery_check(&secret) != bytes[32..] {
            return Err(RecoveryKeyError::Checksum);
        }
        Ok(Self::from_secret_bytes(&secret))
    }

    /// Signs a recovery look-up: proof to the server that the caller holds this root,
    /// at Unix time `at`, so that it may read the account's directory entry.
    pub fn sign_recovery_lookup(&self, username: &Username, at: u64) -> [u8; 64] {
        self.key
            .sign(&sotto_proto::recovery_lookup_message(username, at))
    }

    /// Certifies `account_key` as generation `generation` of `username`'s account key.
    pub fn certify_account_key(
        &self,
        username: &Username,
        account_key: IdentityPublicKey,
        generation: u64,
        created_at: u64,
    ) -> AccountKeyCertificate {
        let fields = AccountKeyFields {
            username: username.clone(),
            identity_key: self.public(),
            account_key,
            generation,
            created_at,
        };
        let signature = self.key.sign(&fields.to_be_signed());
        AccountKeyCertificate::from_parts(fields, signature)
    }
}

fn recovery_check(secret: &[u8; 32]) -> [u8; 2] {
    let mut h = Sha256::new();
    h.update(RECOVERY_CHECK_LABEL);
    h.update(secret);
    let digest = h.finalize();
    [digest[0], digest[1]]
}

impl fmt::Debug for IdentityKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IdentityKeyPair(public: {:?}, secret: ***)",
            self.public()
        )
    }
}

/// The secret does not match the account-key certificate it was stored with.
#[derive(Debug, thiserror::Error)]
#[error("the account key does not match its certificate")]
pub struct AccountKeyMismatch;

/// The account key of the primary device, with the root's certificate of it. Certifies
/// devices and signs device lists.
pub struct AccountKey {
    key: Ed25519Secret,
    certificate: AccountKeyCertificate,
}

impl AccountKey {
    /// A new account key of `generation`, certified by `root` (at registration: 1; at
    /// each recovery: one more than the newest generation published).
    pub fn generate(
        rng: &impl OpenMlsRand,
        root: &IdentityKeyPair,
        username: &Username,
        generation: u64,
        created_at: u64,
    ) -> Result<Self, RandomnessError> {
        let key = Ed25519Secret::generate(rng)?;
        let certificate = root.certify_account_key(
            username,
            IdentityPublicKey::from_bytes(key.public()),
            generation,
            created_at,
        );
        Ok(Self { key, certificate })
    }

    /// Restores a key saved with [`Self::to_secret_bytes`] and its certificate.
    pub fn from_parts(
        secret: &[u8; 32],
        certificate: AccountKeyCertificate,
    ) -> Result<Self, AccountKeyMismatch> {
        let key = Ed25519Secret::from_bytes(secret);
        if certificate.account_key().as_bytes() != &key.public() {
            return Err(AccountKeyMismatch);
        }
        Ok(Self { key, certificate })
    }

    /// The secret bytes, for the primary's profile. Wiped when dropped.
    pub fn to_secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        self.key.to_bytes()
    }

    /// The root's certificate of this key.
    pub fn certificate(&self) -> &AccountKeyCertificate {
        &self.certificate
    }

    /// Certifies a device's MLS signature key for this account. `name` is cut to
    /// [`MAX_DEVICE_NAME`] bytes (at a character boundary).
    pub fn certify_device(
        &self,
        device_id: DeviceId,
        device_key: [u8; 32],
        name: &str,
        created_at: u64,
    ) -> DeviceCertificate {
        let fields = CertificateFields {
            username: self.certificate.username().clone(),
            device_id,
            device_key,
            account_key: *self.certificate.account_key(),
            name: device_name(name),
            created_at,
        };
        let signature = self.key.sign(&fields.to_be_signed());
        DeviceCertificate::from_parts(fields, signature)
    }

    /// Signs a device list. The caller picks a version above every one published
    /// before; every certificate must be this key's.
    pub fn sign_device_list(&self, version: u64, devices: Vec<DeviceCertificate>) -> DeviceList {
        let fields = DeviceListFields {
            username: self.certificate.username().clone(),
            identity_key: *self.certificate.identity_key(),
            account: self.certificate.clone(),
            version,
            devices,
        };
        let signature = self.key.sign(&fields.to_be_signed());
        DeviceList::from_parts(fields, signature)
    }
}

/// A device name as certified: trimmed, at most [`MAX_DEVICE_NAME`] bytes.
pub fn device_name(name: &str) -> String {
    let name = name.trim();
    let mut end = name.len().min(MAX_DEVICE_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountKey({:?}, secret: ***)", self.certificate)
    }
}

/// A device's MLS signature key. Implements OpenMLS's [`Signer`] directly over a kept
/// key, which avoids rebuilding the key on every signature as
/// `openmls_basic_credential` does (about 19 µs per message on our machines).
pub struct DeviceSigner {
    key: Ed25519Secret,
}

impl DeviceSigner {
    /// A new device key from the provider's randomness.
    pub fn generate(rng: &impl OpenMlsRand) -> Result<Self, RandomnessError> {
        Ed25519Secret::generate(rng).map(|key| Self { key })
    }

    /// Restores a key from its secret bytes.
    pub fn from_secret_bytes(bytes: &[u8; 32]) -> Self {
        Self {
            key: Ed25519Secret::from_bytes(bytes),
        }
    }

    /// The secret bytes, for the client's store. Wiped when dropped.
    pub fn to_secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        self.key.to_bytes()
    }

    /// The public key that goes into the certificate and the MLS leaf.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.public()
    }
}

impl Signer for DeviceSigner {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        Ok(self.key.sign(payload).to_vec())
    }

    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

impl fmt::Debug for DeviceSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceSigner(***)")
    }
}

/// This device: its certificate chain and its signing key.
#[derive(Debug)]
pub struct LocalDevice {
    chain: CertificateChain,
    signer: DeviceSigner,
}

/// The certificate does not match the signing key.
#[derive(Debug, thiserror::Error)]
#[error("the device certificate does not certify this device's signing key")]
pub struct CertificateMismatch;

impl LocalDevice {
    /// Pairs a certificate chain with the key it certifies.
    pub fn new(chain: CertificateChain, signer: DeviceSigner) -> Result<Self, CertificateMismatch> {
        if chain.device.device_key() != &signer.public_key() || chain.verify().is_err() {
            return Err(CertificateMismatch);
        }
        Ok(Self { chain, signer })
    }

    /// Makes a new device key and certifies it with the account key (at registration
    /// and recovery, on the primary device).
    pub fn create(
        rng: &impl OpenMlsRand,
        account: &AccountKey,
        name: &str,
        created_at: u64,
    ) -> Result<Self, RandomnessError> {
        let device_id = DeviceId::from_bytes(random_array(rng)?);
        let signer = DeviceSigner::generate(rng)?;
        let device = account.certify_device(device_id, signer.public_key(), name, created_at);
        Ok(Self {
            chain: CertificateChain {
                account: account.certificate().clone(),
                device,
            },
            signer,
        })
    }

    /// The account.
    pub fn username(&self) -> &Username {
        self.chain.device.username()
    }
    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        self.chain.device.device_id()
    }
    /// The device certificate.
    pub fn certificate(&self) -> &DeviceCertificate {
        &self.chain.device
    }
    /// The whole chain, as shown in this device's leaves.
    pub fn chain(&self) -> &CertificateChain {
        &self.chain
    }
    /// The signer for OpenMLS operations.
    pub fn signer(&self) -> &DeviceSigner {
        &self.signer
    }

    /// The MLS credential: a basic credential whose identity is the encoded certificate
    /// chain (see `docs/decisions/0001-certificate-in-credential.md` and 0011).
    pub fn credential_with_key(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: BasicCredential::new(self.chain.to_bytes()).into(),
            signature_key: self.signer.public_key().to_vec().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openmls_rust_crypto::OpenMlsRustCrypto;
    use openmls_traits::OpenMlsProvider as _;

    #[test]
    fn a_recovery_key_round_trips_and_catches_typos() {
        let provider = OpenMlsRustCrypto::default();
        let root = IdentityKeyPair::generate(provider.rand()).expect("rng");
        let text = root.recovery_text();
        assert_eq!(text.len(), 55 + 10, "11 groups of 5 with dashes: {}", *text);
        let back = IdentityKeyPair::from_recovery_text(&text.to_lowercase().replace('-', " "))
            .expect("typed back");
        assert_eq!(back.public(), root.public());
        // One letter changed: the check digits catch it.
        let mut typo: Vec<char> = text.chars().collect();
        typo[3] = if typo[3] == 'A' { 'B' } else { 'A' };
        let typo: String = typo.into_iter().collect();
        assert!(IdentityKeyPair::from_recovery_text(&typo).is_err());
        assert_eq!(
            IdentityKeyPair::from_recovery_text("abc").err(),
            Some(RecoveryKeyError::Malformed)
        );
    }

    #[test]
    fn device_names_are_trimmed_and_bounded_at_a_character_boundary() {
        assert_eq!(device_name("  laptop "), "laptop");
        let long = "é".repeat(40);
        let cut = device_name(&long);
        assert!(cut.len() <= MAX_DEVICE_NAME && cut.chars().all(|c| c == 'é'));
    }
}
