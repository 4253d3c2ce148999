//! Device certificates and signed device lists.
//!
//! An account's Ed25519 identity key certifies each of its devices' MLS signature keys
//! and signs the list of current devices. Verification lives here, in `proto`, because
//! both the client engine (to refuse ghost devices) and the server (to accept a new
//! device list only when the account's key signed it) need it; signing needs the secret
//! key and lives in `sotto-core`.

use std::fmt;

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::ids::{DeviceId, Username, to_hex};
use crate::wire::{DecodeError, Reader, Writer};

/// Domain separation for certificate signatures.
const CERT_LABEL: &[u8] = b"sotto/device-certificate/v1";
/// Domain separation for device-list signatures.
const LIST_LABEL: &[u8] = b"sotto/device-list/v1";
/// Encoding version of a certificate.
const CERT_VERSION: u8 = 1;
/// Encoding version of a device list.
const LIST_VERSION: u8 = 1;
/// Most devices one account may have: bounds decoding and group growth.
pub const MAX_DEVICES: usize = 32;

/// Why a certificate or device list is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The bytes are not a certificate or list.
    #[error("malformed: {0}")]
    Decode(#[from] DecodeError),
    /// The identity public key is not a valid Ed25519 point.
    #[error("the identity key is not a valid Ed25519 public key")]
    InvalidIdentityKey,
    /// The signature does not verify under the identity key.
    #[error("the signature does not verify under {username}'s identity key")]
    BadSignature {
        /// The account the structure claims to belong to.
        username: Username,
    },
    /// A certificate in a list belongs to another account or identity key.
    #[error("device {device} in {username}'s device list is certified for another account")]
    ForeignCertificate {
        /// The list's account.
        username: Username,
        /// The offending device.
        device: DeviceId,
    },
    /// A device appears twice in a list.
    #[error("device {0} appears twice in the device list")]
    DuplicateDevice(DeviceId),
    /// A list has too many devices.
    #[error("a device list may hold at most {MAX_DEVICES} devices")]
    TooManyDevices,
    /// A device list is older than one already seen: a rollback.
    #[error(
        "{username}'s device list went back from version {seen} to {offered}: refusing a rollback"
    )]
    Rollback {
        /// The account.
        username: Username,
        /// Highest version seen before.
        seen: u64,
        /// The version offered now.
        offered: u64,
    },
    /// Two different lists were signed with the same version: the account key signed
    /// conflicting histories (or was stolen).
    #[error("{username}'s device list version {version} differs from the one seen before")]
    Equivocation {
        /// The account.
        username: Username,
        /// The version in question.
        version: u64,
    },
}

/// An account's Ed25519 identity public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityPublicKey([u8; 32]);

impl IdentityPublicKey {
    /// Wraps 32 bytes (validity as a curve point is checked when verifying).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
    /// The raw key.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// Verifies `signature` over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> Result<bool, CertError> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| CertError::InvalidIdentityKey)?;
        // `verify_strict` refuses small-order keys and non-canonical signatures.
        Ok(key
            .verify_strict(message, &Signature::from_bytes(signature))
            .is_ok())
    }
}

impl fmt::Debug for IdentityPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityPublicKey({})", to_hex(&self.0))
    }
}

/// The signed statement "device `device_id` of `username` signs MLS messages with
/// `device_key`", issued by the account identity key `identity_key`.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceCertificate {
    username: Username,
    device_id: DeviceId,
    device_key: [u8; 32],
    identity_key: IdentityPublicKey,
    created_at: u64,
    signature: [u8; 64],
}

/// The fields of a certificate before it is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFields {
    /// The account.
    pub username: Username,
    /// The device.
    pub device_id: DeviceId,
    /// The device's Ed25519 MLS signature public key.
    pub device_key: [u8; 32],
    /// The account identity key that signs.
    pub identity_key: IdentityPublicKey,
    /// Creation time, Unix seconds.
    pub created_at: u64,
}

impl CertificateFields {
    /// The exact bytes the identity key signs.
    pub fn to_be_signed(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes16(CERT_LABEL);
        self.encode_fields(&mut w);
        w.finish()
    }

    fn encode_fields(&self, w: &mut Writer) {
        w.bytes16(self.username.as_str().as_bytes())
            .raw(self.device_id.as_bytes())
            .raw(&self.device_key)
            .raw(self.identity_key.as_bytes())
            .u64(self.created_at);
    }
}

impl DeviceCertificate {
    /// Joins fields and the identity key's signature over [`CertificateFields::to_be_signed`].
    /// Nothing is checked here; [`DeviceCertificate::verify`] does that.
    pub fn from_parts(fields: CertificateFields, signature: [u8; 64]) -> Self {
        Self {
            username: fields.username,
            device_id: fields.device_id,
            device_key: fields.device_key,
            identity_key: fields.identity_key,
            created_at: fields.created_at,
            signature,
        }
    }

    /// The certified account.
    pub fn username(&self) -> &Username {
        &self.username
    }
    /// The certified device.
    pub fn device_id(&self) -> DeviceId {
        self.device_id
    }
    /// The device's MLS signature public key.
    pub fn device_key(&self) -> &[u8; 32] {
        &self.device_key
    }
    /// The identity key that signed (still to be compared with the pinned one).
    pub fn identity_key(&self) -> &IdentityPublicKey {
        &self.identity_key
    }
    /// Creation time, Unix seconds.
    pub fn created_at(&self) -> u64 {
        self.created_at
    }

    fn fields(&self) -> CertificateFields {
        CertificateFields {
            username: self.username.clone(),
            device_id: self.device_id,
            device_key: self.device_key,
            identity_key: self.identity_key,
            created_at: self.created_at,
        }
    }

    /// Checks the signature under the identity key the certificate names. Whether that
    /// key is the right one for the username is the caller's trust decision.
    pub fn verify(&self) -> Result<(), CertError> {
        if self
            .identity_key
            .verify(&self.fields().to_be_signed(), &self.signature)?
        {
            Ok(())
        } else {
            Err(CertError::BadSignature {
                username: self.username.clone(),
            })
        }
    }

    /// Canonical encoding: version, fields, signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(CERT_VERSION);
        self.fields().encode_fields(&mut w);
        w.raw(&self.signature);
        w.finish()
    }

    /// Decodes (does not verify) a certificate.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let cert = Self::read(&mut r)?;
        r.finish()?;
        Ok(cert)
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let version = r.u8("certificate version")?;
        if version != CERT_VERSION {
            return Err(DecodeError::UnknownVersion {
                what: "certificate",
                version,
            });
        }
        let name = r.bytes16("username")?;
        let username = std::str::from_utf8(name)
            .ok()
            .and_then(|s| Username::parse(s).ok())
            .ok_or(DecodeError::Invalid("username"))?;
        // A certificate must carry the canonical (case-folded) form, or two encodings
        // would exist for one statement.
        if username.as_str().as_bytes() != name {
            return Err(DecodeError::Invalid("username"));
        }
        Ok(Self {
            username,
            device_id: DeviceId::from_bytes(r.array("device id")?),
            device_key: r.array("device key")?,
            identity_key: IdentityPublicKey(r.array("identity key")?),
            created_at: r.u64("created at")?,
            signature: r.array("signature")?,
        })
    }
}

impl fmt::Debug for DeviceCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCertificate")
            .field("username", &self.username)
            .field("device_id", &self.device_id)
            .field("device_key", &to_hex(&self.device_key))
            .field("identity_key", &self.identity_key)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// The fields of a device list before it is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceListFields {
    /// The account.
    pub username: Username,
    /// The account identity key that signs.
    pub identity_key: IdentityPublicKey,
    /// Only ever goes up; clients refuse a lower one than they saw.
    pub version: u64,
    /// Every current device.
    pub devices: Vec<DeviceCertificate>,
}

impl DeviceListFields {
    /// The exact bytes the identity key signs.
    pub fn to_be_signed(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes16(LIST_LABEL);
        self.encode_fields(&mut w);
        w.finish()
    }

    fn encode_fields(&self, w: &mut Writer) {
        w.bytes16(self.username.as_str().as_bytes())
            .raw(self.identity_key.as_bytes())
            .u64(self.version)
            .u16(u16::try_from(self.devices.len()).unwrap_or(u16::MAX));
        for cert in &self.devices {
            w.bytes16(&cert.to_bytes());
        }
    }
}

/// An account's signed, versioned list of current devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceList {
    fields: DeviceListFields,
    signature: [u8; 64],
}

impl DeviceList {
    /// Joins fields and the identity key's signature over [`DeviceListFields::to_be_signed`].
    pub fn from_parts(fields: DeviceListFields, signature: [u8; 64]) -> Self {
        Self { fields, signature }
    }
    /// The account.
    pub fn username(&self) -> &Username {
        &self.fields.username
    }
    /// The signing identity key.
    pub fn identity_key(&self) -> &IdentityPublicKey {
        &self.fields.identity_key
    }
    /// The version counter.
    pub fn version(&self) -> u64 {
        self.fields.version
    }
    /// The current devices' certificates.
    pub fn devices(&self) -> &[DeviceCertificate] {
        &self.fields.devices
    }
    /// The certificate of one device, if it is in the list.
    pub fn device(&self, id: DeviceId) -> Option<&DeviceCertificate> {
        self.fields.devices.iter().find(|c| c.device_id == id)
    }

    /// Checks the list's signature, and that every certificate is valid, belongs to
    /// this account and identity key, and appears once.
    pub fn verify(&self) -> Result<(), CertError> {
        let f = &self.fields;
        if f.devices.len() > MAX_DEVICES {
            return Err(CertError::TooManyDevices);
        }
        if !f.identity_key.verify(&f.to_be_signed(), &self.signature)? {
            return Err(CertError::BadSignature {
                username: f.username.clone(),
            });
        }
        for (i, cert) in f.devices.iter().enumerate() {
            if cert.username != f.username || cert.identity_key != f.identity_key {
                return Err(CertError::ForeignCertificate {
                    username: f.username.clone(),
                    device: cert.device_id,
                });
            }
            cert.verify()?;
            if f.devices[..i].iter().any(|c| c.device_id == cert.device_id) {
                return Err(CertError::DuplicateDevice(cert.device_id));
            }
        }
        Ok(())
    }

    /// Refuses a list older than, or conflicting with, the newest one seen
    /// (`seen` = that list's version and [`DeviceList::digest`]).
    pub fn check_not_rollback(&self, seen: Option<(u64, [u8; 32])>) -> Result<(), CertError> {
        let Some((seen_version, seen_digest)) = seen else {
            return Ok(());
        };
        let username = self.fields.username.clone();
        let offered = self.fields.version;
        if offered < seen_version {
            return Err(CertError::Rollback {
                username,
                seen: seen_version,
                offered,
            });
        }
        if offered == seen_version && self.digest() != seen_digest {
            return Err(CertError::Equivocation {
                username,
                version: offered,
            });
        }
        Ok(())
    }

    /// SHA-256 of the canonical encoding: identifies this exact list.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.to_bytes()).into()
    }

    /// Canonical encoding: version, fields, signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(LIST_VERSION);
        self.fields.encode_fields(&mut w);
        w.raw(&self.signature);
        w.finish()
    }

    /// Decodes (does not verify) a device list.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("device list version")?;
        if version != LIST_VERSION {
            return Err(DecodeError::UnknownVersion {
                what: "device list",
                version,
            });
        }
        let name = r.bytes16("username")?;
        let username = std::str::from_utf8(name)
            .ok()
            .and_then(|s| Username::parse(s).ok())
            .filter(|u| u.as_str().as_bytes() == name)
            .ok_or(DecodeError::Invalid("username"))?;
        let identity_key = IdentityPublicKey(r.array("identity key")?);
        let list_version = r.u64("list version")?;
        let count = usize::from(r.u16("device count")?);
        if count > MAX_DEVICES {
            return Err(DecodeError::Invalid("device count"));
        }
        let mut devices = Vec::with_capacity(count);
        for _ in 0..count {
            let mut inner = Reader::new(r.bytes16("certificate")?);
            devices.push(DeviceCertificate::read(&mut inner)?);
            inner.finish()?;
        }
        let signature = r.array("signature")?;
        r.finish()?;
        Ok(Self {
            fields: DeviceListFields {
                username,
                identity_key,
                version: list_version,
                devices,
            },
            signature,
        })
    }
}

/// Serde as base64 (standard alphabet) of the canonical encoding, for JSON APIs.
macro_rules! serde_as_base64 {
    ($name:ident) => {
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&crate::b64::encode(&self.to_bytes()))
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                let bytes = crate::b64::decode(&text).map_err(serde::de::Error::custom)?;
                Self::from_bytes(&bytes).map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_as_base64!(DeviceCertificate);
serde_as_base64!(DeviceList);

impl IdentityPublicKey {
    fn to_bytes(self) -> Vec<u8> {
        self.0.to_vec()
    }
    fn from_bytes_checked(bytes: &[u8]) -> Result<Self, DecodeError> {
        <[u8; 32]>::try_from(bytes)
            .map(Self)
            .map_err(|_| DecodeError::Invalid("identity key length"))
    }
}

impl Serialize for IdentityPublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::b64::encode(&self.to_bytes()))
    }
}

impl<'de> Deserialize<'de> for IdentityPublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = crate::b64::decode(&text).map_err(serde::de::Error::custom)?;
        Self::from_bytes_checked(&bytes).map_err(serde::de::Error::custom)
    }
}
