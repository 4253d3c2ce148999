//! Account and device keys.
//!
//! The **account identity key** (Ed25519) is made at registration and certifies devices;
//! each **device** has its own Ed25519 key that signs its MLS messages. Secret halves
//! have no `Debug` output and are wiped from memory when dropped.

use std::fmt;

use ed25519_dalek::{Signer as _, SigningKey};
use openmls::prelude::{BasicCredential, CredentialWithKey, SignatureScheme};
use openmls_traits::random::OpenMlsRand;
use openmls_traits::signatures::{Signer, SignerError};
use sotto_proto::{
    CertificateFields, DeviceCertificate, DeviceId, DeviceList, DeviceListFields,
    IdentityPublicKey, Username,
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

/// An account's identity key pair. Signs device certificates and device lists only.
pub struct IdentityKeyPair {
    key: Ed25519Secret,
}

impl IdentityKeyPair {
    /// A new key from the provider's randomness (at registration).
    pub fn generate(rng: &impl OpenMlsRand) -> Result<Self, RandomnessError> {
        Ed25519Secret::generate(rng).map(|key| Self { key })
    }

    /// Restores a key from its 32 secret bytes (as saved by [`Self::to_secret_bytes`]).
    pub fn from_secret_bytes(bytes: &[u8; 32]) -> Self {
        Self {
            key: Ed25519Secret::from_bytes(bytes),
        }
    }

    /// The secret bytes, for the client's encrypted store or for sending to a newly
    /// linked device over the link channel. Wiped when the returned value is dropped.
    pub fn to_secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        self.key.to_bytes()
    }

    /// The public half.
    pub fn public(&self) -> IdentityPublicKey {
        IdentityPublicKey::from_bytes(self.key.public())
    }

    /// Certifies a device's MLS signature key for this account.
    pub fn certify_device(
        &self,
        username: &Username,
        device_id: DeviceId,
        device_key: [u8; 32],
        created_at: u64,
    ) -> DeviceCertificate {
        let fields = CertificateFields {
            username: username.clone(),
            device_id,
            device_key,
            identity_key: self.public(),
            created_at,
        };
        let signature = self.key.sign(&fields.to_be_signed());
        DeviceCertificate::from_parts(fields, signature)
    }

    /// Signs a device list. The caller picks a version above every one published before.
    pub fn sign_device_list(
        &self,
        username: &Username,
        version: u64,
        devices: Vec<DeviceCertificate>,
    ) -> DeviceList {
        let fields = DeviceListFields {
            username: username.clone(),
            identity_key: self.public(),
            version,
            devices,
        };
        let signature = self.key.sign(&fields.to_be_signed());
        DeviceList::from_parts(fields, signature)
    }
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

/// This device: its certificate and its signing key.
#[derive(Debug)]
pub struct LocalDevice {
    certificate: DeviceCertificate,
    signer: DeviceSigner,
}

/// The certificate does not match the signing key.
#[derive(Debug, thiserror::Error)]
#[error("the device certificate does not certify this device's signing key")]
pub struct CertificateMismatch;

impl LocalDevice {
    /// Pairs a certificate with the key it certifies.
    pub fn new(
        certificate: DeviceCertificate,
        signer: DeviceSigner,
    ) -> Result<Self, CertificateMismatch> {
        if certificate.device_key() != &signer.public_key() {
            return Err(CertificateMismatch);
        }
        Ok(Self {
            certificate,
            signer,
        })
    }

    /// Makes a new device key and certifies it with the account's identity key
    /// (at registration, or on the approving device when linking).
    pub fn create(
        rng: &impl OpenMlsRand,
        identity: &IdentityKeyPair,
        username: &Username,
        created_at: u64,
    ) -> Result<Self, RandomnessError> {
        let device_id = DeviceId::from_bytes(random_array(rng)?);
        let signer = DeviceSigner::generate(rng)?;
        let certificate =
            identity.certify_device(username, device_id, signer.public_key(), created_at);
        Ok(Self {
            certificate,
            signer,
        })
    }

    /// The account.
    pub fn username(&self) -> &Username {
        self.certificate.username()
    }
    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        self.certificate.device_id()
    }
    /// The certificate.
    pub fn certificate(&self) -> &DeviceCertificate {
        &self.certificate
    }
    /// The signer for OpenMLS operations.
    pub fn signer(&self) -> &DeviceSigner {
        &self.signer
    }

    /// The MLS credential: a basic credential whose identity is the encoded device
    /// certificate (see `docs/decisions/0001-certificate-in-credential.md`).
    pub fn credential_with_key(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: BasicCredential::new(self.certificate.to_bytes()).into(),
            signature_key: self.signer.public_key().to_vec().into(),
        }
    }
}
