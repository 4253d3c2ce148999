//! Account-key certificates, device certificates and signed device lists.
//!
//! The key hierarchy (decision 0011): an account's **identity key** is its root. Its
//! secret is the recovery key the person keeps offline; contacts pin its public half
//! and safety numbers are made from it. The root certifies one **account key** at a
//! time (an [`AccountKeyCertificate`] with a generation that only goes up), which lives
//! on the primary device only. The account key certifies each device's MLS signature
//! key ([`DeviceCertificate`]) and signs the list of current devices ([`DeviceList`]),
//! which carries the account-key certificate so that anyone holding the pinned root
//! can verify the whole chain. A new generation revokes the older account keys: a list
//! signed under an older generation than one already seen is refused.
//!
//! Verification lives here, in `proto`, because both the client engine (to refuse ghost
//! devices) and the server (to accept a new device list only when the account's keys
//! signed it) need it; signing needs the secret keys and lives in `sotto-core`.

use std::fmt;

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::ids::{DeviceId, Username, to_hex};
use crate::wire::{DecodeError, Reader, Writer};

/// Domain separation for certificate signatures.
const CERT_LABEL: &[u8] = b"sotto/device-certificate/v2";
/// Domain separation for account-key certificate signatures.
const ACCOUNT_LABEL: &[u8] = b"sotto/account-key/v1";
/// Domain separation for recovery look-up signatures.
const RECOVERY_LOOKUP_LABEL: &[u8] = b"sotto/recovery-lookup/v1";

/// The bytes an account's root signs to read its own directory entry before a
/// recovery (the recovering device holds no token yet): the username and the time.
pub fn recovery_lookup_message(username: &Username, at: u64) -> Vec<u8> {
    let mut w = Writer::new();
    w.bytes16(RECOVERY_LOOKUP_LABEL)
        .bytes16(username.as_str().as_bytes())
        .u64(at);
    w.finish()
}

/// Domain separation for device-list signatures.
const LIST_LABEL: &[u8] = b"sotto/device-list/v2";
/// Encoding version of a certificate.
const CERT_VERSION: u8 = 2;
/// Encoding version of an account-key certificate.
const ACCOUNT_VERSION: u8 = 1;
/// Encoding version of a device list.
const LIST_VERSION: u8 = 2;
/// Longest device name, in bytes of UTF-8.
pub const MAX_DEVICE_NAME: usize = 64;
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
    /// A signature does not verify under the key that should have made it.
    #[error("a signature does not verify under {username}'s keys")]
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
    /// The list is signed under an account key older than one already seen: that key
    /// was replaced (revoked) by a recovery.
    #[error(
        "{username}'s device list is signed by a revoked account key (generation {offered}, \
         newest seen {seen})"
    )]
    RevokedAccountKey {
        /// The account.
        username: Username,
        /// Newest account-key generation seen before.
        seen: u64,
        /// The generation offered now.
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

/// Reads a canonical (case-folded) username: two encodings of one statement must not
/// both verify.
fn read_username(r: &mut Reader<'_>) -> Result<Username, DecodeError> {
    let name = r.bytes16("username")?;
    std::str::from_utf8(name)
        .ok()
        .and_then(|s| Username::parse(s).ok())
        .filter(|u| u.as_str().as_bytes() == name)
        .ok_or(DecodeError::Invalid("username"))
}

fn signed_by(
    key: &IdentityPublicKey,
    message: &[u8],
    signature: &[u8; 64],
    username: &Username,
) -> Result<(), CertError> {
    if key.verify(message, signature)? {
        Ok(())
    } else {
        Err(CertError::BadSignature {
            username: username.clone(),
        })
    }
}

/// The fields of a signed structure: its domain label, encoding version and encoding.
/// Every signed structure travels as `version ‖ fields ‖ signature` and is signed over
/// `label ‖ fields`.
trait Signable: Sized {
    const LABEL: &'static [u8];
    const VERSION: u8;
    const WHAT: &'static str;
    fn encode_fields(&self, w: &mut Writer);
    fn read_fields(r: &mut Reader<'_>) -> Result<Self, DecodeError>;

    fn signed_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes16(Self::LABEL);
        self.encode_fields(&mut w);
        w.finish()
    }
}

/// `version ‖ fields ‖ signature`.
fn encode_signed<F: Signable>(fields: &F, signature: &[u8; 64]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(F::VERSION);
    fields.encode_fields(&mut w);
    w.raw(signature);
    w.finish()
}

/// Reads `version ‖ fields ‖ signature` (nothing verified).
fn read_signed<F: Signable>(r: &mut Reader<'_>) -> Result<(F, [u8; 64]), DecodeError> {
    let version = r.u8(F::WHAT)?;
    if version != F::VERSION {
        return Err(DecodeError::UnknownVersion {
            what: F::WHAT,
            version,
        });
    }
    let fields = F::read_fields(r)?;
    Ok((fields, r.array("signature")?))
}

/// Decodes exactly one signed structure from `bytes`.
fn decode_signed<F: Signable>(bytes: &[u8]) -> Result<(F, [u8; 64]), DecodeError> {
    let mut r = Reader::new(bytes);
    let decoded = read_signed(&mut r)?;
    r.finish()?;
    Ok(decoded)
}

/// The root's statement "generation `generation` of `username`'s account key is
/// `account_key`": the key that certifies devices and signs device lists until a
/// higher generation replaces it.
#[derive(Clone, PartialEq, Eq)]
pub struct AccountKeyCertificate {
    fields: AccountKeyFields,
    signature: [u8; 64],
}

/// The fields of an account-key certificate before the root signs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountKeyFields {
    /// The account.
    pub username: Username,
    /// The root (identity) key that signs.
    pub identity_key: IdentityPublicKey,
    /// The certified account key.
    pub account_key: IdentityPublicKey,
    /// 1 at registration, one more at each recovery; never goes down.
    pub generation: u64,
    /// Creation time, Unix seconds.
    pub created_at: u64,
}

impl AccountKeyFields {
    /// The exact bytes the root key signs.
    pub fn to_be_signed(&self) -> Vec<u8> {
        self.signed_bytes()
    }
}

impl Signable for AccountKeyFields {
    const LABEL: &'static [u8] = ACCOUNT_LABEL;
    const VERSION: u8 = ACCOUNT_VERSION;
    const WHAT: &'static str = "account key certificate";

    fn encode_fields(&self, w: &mut Writer) {
        w.bytes16(self.username.as_str().as_bytes())
            .raw(self.identity_key.as_bytes())
            .raw(self.account_key.as_bytes())
            .u64(self.generation)
            .u64(self.created_at);
    }

    fn read_fields(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            username: read_username(r)?,
            identity_key: IdentityPublicKey(r.array("identity key")?),
            account_key: IdentityPublicKey(r.array("account key")?),
            generation: r.u64("generation")?,
            created_at: r.u64("created at")?,
        })
    }
}

impl AccountKeyCertificate {
    /// Joins fields and the root's signature over [`AccountKeyFields::to_be_signed`].
    pub fn from_parts(fields: AccountKeyFields, signature: [u8; 64]) -> Self {
        Self { fields, signature }
    }
    /// The account.
    pub fn username(&self) -> &Username {
        &self.fields.username
    }
    /// The root key that signed.
    pub fn identity_key(&self) -> &IdentityPublicKey {
        &self.fields.identity_key
    }
    /// The certified account key.
    pub fn account_key(&self) -> &IdentityPublicKey {
        &self.fields.account_key
    }
    /// The generation: higher replaces lower.
    pub fn generation(&self) -> u64 {
        self.fields.generation
    }
    /// Creation time, Unix seconds.
    pub fn created_at(&self) -> u64 {
        self.fields.created_at
    }

    /// Checks the root's signature (whether the root is the right one for the user is
    /// the caller's trust decision).
    pub fn verify(&self) -> Result<(), CertError> {
        signed_by(
            &self.fields.identity_key,
            &self.fields.to_be_signed(),
            &self.signature,
            &self.fields.username,
        )
    }

    /// Canonical encoding: version, fields, signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_signed(&self.fields, &self.signature)
    }

    /// Decodes (does not verify) an account-key certificate.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (fields, signature) = decode_signed(bytes)?;
        Ok(Self { fields, signature })
    }
}

impl fmt::Debug for AccountKeyCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountKeyCertificate")
            .field("fields", &self.fields)
            .finish_non_exhaustive()
    }
}

/// The signed statement "device `device_id` of `username`, called `name`, signs MLS
/// messages with `device_key`", issued by the account key `account_key`.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceCertificate {
    fields: CertificateFields,
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
    /// The account key that signs (certified by the root in the device list).
    pub account_key: IdentityPublicKey,
    /// The name the person gave the device ("laptop"), at most
    /// [`MAX_DEVICE_NAME`] bytes; may be empty. Peer text: escape it when shown.
    pub name: String,
    /// Creation time, Unix seconds.
    pub created_at: u64,
}

impl CertificateFields {
    /// The exact bytes the account key signs.
    pub fn to_be_signed(&self) -> Vec<u8> {
        self.signed_bytes()
    }
}

impl Signable for CertificateFields {
    const LABEL: &'static [u8] = CERT_LABEL;
    const VERSION: u8 = CERT_VERSION;
    const WHAT: &'static str = "certificate";

    fn encode_fields(&self, w: &mut Writer) {
        w.bytes16(self.username.as_str().as_bytes())
            .raw(self.device_id.as_bytes())
            .raw(&self.device_key)
            .raw(self.account_key.as_bytes())
            .bytes16(self.name.as_bytes())
            .u64(self.created_at);
    }

    fn read_fields(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let username = read_username(r)?;
        let device_id = DeviceId::from_bytes(r.array("device id")?);
        let device_key = r.array("device key")?;
        let account_key = IdentityPublicKey(r.array("account key")?);
        let name = r.bytes16("device name")?;
        if name.len() > MAX_DEVICE_NAME {
            return Err(DecodeError::Invalid("device name length"));
        }
        let name = std::str::from_utf8(name)
            .map_err(|_| DecodeError::Invalid("device name"))?
            .to_owned();
        Ok(Self {
            username,
            device_id,
            device_key,
            account_key,
            name,
            created_at: r.u64("created at")?,
        })
    }
}

impl DeviceCertificate {
    /// Joins fields and the account key's signature over
    /// [`CertificateFields::to_be_signed`]. Nothing is checked here;
    /// [`DeviceCertificate::verify`] does that.
    pub fn from_parts(fields: CertificateFields, signature: [u8; 64]) -> Self {
        Self { fields, signature }
    }

    /// The certified account.
    pub fn username(&self) -> &Username {
        &self.fields.username
    }
    /// The certified device.
    pub fn device_id(&self) -> DeviceId {
        self.fields.device_id
    }
    /// The device's MLS signature public key.
    pub fn device_key(&self) -> &[u8; 32] {
        &self.fields.device_key
    }
    /// The account key that signed (the device list says whether it is current).
    pub fn account_key(&self) -> &IdentityPublicKey {
        &self.fields.account_key
    }
    /// The device's name, as its owner gave it (untrusted text).
    pub fn name(&self) -> &str {
        &self.fields.name
    }
    /// Creation time, Unix seconds.
    pub fn created_at(&self) -> u64 {
        self.fields.created_at
    }

    /// Checks the signature under the account key the certificate names. Whether that
    /// key is the account's current one is for the device list to say.
    pub fn verify(&self) -> Result<(), CertError> {
        signed_by(
            &self.fields.account_key,
            &self.fields.to_be_signed(),
            &self.signature,
            &self.fields.username,
        )
    }

    /// Canonical encoding: version, fields, signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_signed(&self.fields, &self.signature)
    }

    /// Decodes (does not verify) a certificate.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (fields, signature) = decode_signed(bytes)?;
        Ok(Self { fields, signature })
    }
}

impl fmt::Debug for DeviceCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.fields;
        f.debug_struct("DeviceCertificate")
            .field("username", &c.username)
            .field("device_id", &c.device_id)
            .field("device_key", &to_hex(&c.device_key))
            .field("account_key", &c.account_key)
            .field("name", &c.name)
            .field("created_at", &c.created_at)
            .finish_non_exhaustive()
    }
}

/// What a device shows in its MLS leaf (decision 0001): its certificate and the root's
/// certificate of the account key that signed it, so that the whole chain up to the
/// pinned root verifies from the leaf alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateChain {
    /// The root's certificate of the account key.
    pub account: AccountKeyCertificate,
    /// The account key's certificate of the device.
    pub device: DeviceCertificate,
}

/// Encoding version of a certificate chain.
const CHAIN_VERSION: u8 = 1;

impl CertificateChain {
    /// Checks both signatures and that they belong together; whether the root is the
    /// one pinned for the user is the caller's trust decision.
    pub fn verify(&self) -> Result<(), CertError> {
        if self.account.username() != self.device.username()
            || self.account.account_key() != self.device.account_key()
        {
            return Err(CertError::ForeignCertificate {
                username: self.account.username().clone(),
                device: self.device.device_id(),
            });
        }
        self.account.verify()?;
        self.device.verify()
    }

    /// The account's root key the chain ends in.
    pub fn identity_key(&self) -> &IdentityPublicKey {
        self.account.identity_key()
    }

    /// Canonical encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(CHAIN_VERSION)
            .bytes16(&self.account.to_bytes())
            .bytes16(&self.device.to_bytes());
        w.finish()
    }

    /// Decodes (does not verify) a chain.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("certificate chain version")?;
        if version != CHAIN_VERSION {
            return Err(DecodeError::UnknownVersion {
                what: "certificate chain",
                version,
            });
        }
        let account = AccountKeyCertificate::from_bytes(r.bytes16("account key certificate")?)?;
        let device = DeviceCertificate::from_bytes(r.bytes16("device certificate")?)?;
        r.finish()?;
        Ok(Self { account, device })
    }
}

/// The fields of a device list before it is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceListFields {
    /// The account.
    pub username: Username,
    /// The account's root (identity) key: what contacts pin.
    pub identity_key: IdentityPublicKey,
    /// The root's certificate of the account key that signs this list.
    pub account: AccountKeyCertificate,
    /// Only ever goes up; clients refuse a lower one than they saw.
    pub version: u64,
    /// Every current device.
    pub devices: Vec<DeviceCertificate>,
}

impl DeviceListFields {
    /// The exact bytes the account key signs.
    pub fn to_be_signed(&self) -> Vec<u8> {
        self.signed_bytes()
    }
}

impl Signable for DeviceListFields {
    const LABEL: &'static [u8] = LIST_LABEL;
    const VERSION: u8 = LIST_VERSION;
    const WHAT: &'static str = "device list";

    fn read_fields(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let username = read_username(r)?;
        let identity_key = IdentityPublicKey(r.array("identity key")?);
        let (account_fields, account_signature) =
            decode_signed::<AccountKeyFields>(r.bytes16("account key certificate")?)?;
        let account = AccountKeyCertificate::from_parts(account_fields, account_signature);
        let version = r.u64("list version")?;
        let count = usize::from(r.u16("device count")?);
        if count > MAX_DEVICES {
            return Err(DecodeError::Invalid("device count"));
        }
        let mut devices = Vec::with_capacity(count);
        for _ in 0..count {
            devices.push(DeviceCertificate::from_bytes(r.bytes16("certificate")?)?);
        }
        Ok(Self {
            username,
            identity_key,
            account,
            version,
            devices,
        })
    }

    fn encode_fields(&self, w: &mut Writer) {
        w.bytes16(self.username.as_str().as_bytes())
            .raw(self.identity_key.as_bytes())
            .bytes16(&self.account.to_bytes())
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
    /// Joins fields and the account key's signature over [`DeviceListFields::to_be_signed`].
    pub fn from_parts(fields: DeviceListFields, signature: [u8; 64]) -> Self {
        Self { fields, signature }
    }
    /// The account.
    pub fn username(&self) -> &Username {
        &self.fields.username
    }
    /// The account's root (identity) key.
    pub fn identity_key(&self) -> &IdentityPublicKey {
        &self.fields.identity_key
    }
    /// The certificate of the account key that signed the list.
    pub fn account(&self) -> &AccountKeyCertificate {
        &self.fields.account
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
        self.fields.devices.iter().find(|c| c.device_id() == id)
    }

    /// Checks the whole chain: the account-key certificate is this account's and
    /// signed by the root the list names; the list is signed by that account key; every
    /// device certificate is valid, this account's, signed by that same account key,
    /// and appears once.
    pub fn verify(&self) -> Result<(), CertError> {
        let f = &self.fields;
        if f.devices.len() > MAX_DEVICES {
            return Err(CertError::TooManyDevices);
        }
        if f.account.username() != &f.username || f.account.identity_key() != &f.identity_key {
            return Err(CertError::BadSignature {
                username: f.username.clone(),
            });
        }
        f.account.verify()?;
        signed_by(
            f.account.account_key(),
            &f.to_be_signed(),
            &self.signature,
            &f.username,
        )?;
        for (i, cert) in f.devices.iter().enumerate() {
            if cert.username() != &f.username || cert.account_key() != f.account.account_key() {
                return Err(CertError::ForeignCertificate {
                    username: f.username.clone(),
                    device: cert.device_id(),
                });
            }
            cert.verify()?;
            if f.devices[..i]
                .iter()
                .any(|c| c.device_id() == cert.device_id())
            {
                return Err(CertError::DuplicateDevice(cert.device_id()));
            }
        }
        Ok(())
    }

    /// Refuses a list older than, or conflicting with, the newest one seen, or signed
    /// under an account key older than the one that signed it (a revoked key). Lists
    /// are ordered by (account-key generation, version): a newer generation wins
    /// whatever its version, so a stolen account key that pushed the version up
    /// cannot outlast a recovery. Lists of another root are a different identity:
    /// the caller must have refused or accepted that change before (its pin decides),
    /// so they are refused here as an equivocation.
    pub fn check_not_rollback(&self, seen: Option<&DeviceList>) -> Result<(), CertError> {
        let Some(seen) = seen else {
            return Ok(());
        };
        let username = self.fields.username.clone();
        if seen.identity_key() != self.identity_key() {
            return Err(CertError::Equivocation {
                username,
                version: self.fields.version,
            });
        }
        let (seen_generation, offered_generation) =
            (seen.account().generation(), self.account().generation());
        if offered_generation < seen_generation {
            return Err(CertError::RevokedAccountKey {
                username,
                seen: seen_generation,
                offered: offered_generation,
            });
        }
        if offered_generation > seen_generation {
            return Ok(());
        }
        let offered = self.fields.version;
        if offered < seen.version() {
            return Err(CertError::Rollback {
                username,
                seen: seen.version(),
                offered,
            });
        }
        let same_generation_other_key = offered_generation == seen_generation
            && self.account().account_key() != seen.account().account_key();
        if (offered == seen.version() && self.digest() != seen.digest())
            || same_generation_other_key
        {
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
        encode_signed(&self.fields, &self.signature)
    }

    /// Decodes (does not verify) a device list.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (fields, signature) = decode_signed(bytes)?;
        Ok(Self { fields, signature })
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
serde_as_base64!(AccountKeyCertificate);

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
