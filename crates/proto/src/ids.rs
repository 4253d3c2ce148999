//! Validated identifiers. Each is parsed once where bytes arrive and trusted afterwards.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The username is shorter than 3 or longer than 32 characters.
    #[error("a username must be 3 to 32 characters long, this one has {0}")]
    UsernameLength(usize),
    /// The username has a character outside `a-z 0-9 . _ -`.
    #[error("a username may only contain letters a-z, digits, '.', '_' and '-' (found {0:?})")]
    UsernameCharacter(char),
    /// A hex identifier had the wrong length or a non-hex character.
    #[error("{kind} must be {expected} hexadecimal characters")]
    Hex {
        /// Which identifier was being parsed.
        kind: &'static str,
        /// How many hex characters were expected.
        expected: usize,
    },
    /// A message id is not a UUID version 7.
    #[error("a message id must be a UUIDv7 (like 0190a5b2-7c1e-7cc3-98c4-dc0c0c07398f)")]
    MessageId,
}

/// An account name: `[a-z0-9._-]{3,32}`, case-folded (ASCII upper case is accepted and
/// lowered; anything else outside the set is refused, so two names never look alike).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Username(String);

impl Username {
    /// Smallest allowed length.
    pub const MIN_LEN: usize = 3;
    /// Largest allowed length.
    pub const MAX_LEN: usize = 32;

    /// Parses and case-folds a username.
    pub fn parse(input: &str) -> Result<Self, IdError> {
        let len = input.chars().count();
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&len) {
            return Err(IdError::UsernameLength(len));
        }
        let mut folded = String::with_capacity(input.len());
        for c in input.chars() {
            let c = c.to_ascii_lowercase();
            if !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')) {
                return Err(IdError::UsernameCharacter(c));
            }
            folded.push(c);
        }
        Ok(Self(folded))
    }

    /// The canonical (lower-case) form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Username({})", self.0)
    }
}

impl FromStr for Username {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Username {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Username {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Writes `bytes` as lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Reads exactly `N` bytes of hex (either case).
fn from_hex<const N: usize>(input: &str, kind: &'static str) -> Result<[u8; N], IdError> {
    let err = IdError::Hex {
        kind,
        expected: N * 2,
    };
    let bytes = input.as_bytes();
    if bytes.len() != N * 2 {
        return Err(err);
    }
    let mut out = [0u8; N];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = char::from(pair[0]).to_digit(16).ok_or(err.clone())?;
        let lo = char::from(pair[1]).to_digit(16).ok_or(err.clone())?;
        // Both digits are < 16, so the value fits in a byte.
        out[i] = (hi * 16 + lo) as u8;
    }
    Ok(out)
}

/// Defines a fixed-size random identifier shown as lower-case hex.
macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $len:expr, $kind:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; $len]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;

            /// Wraps raw bytes (for example fresh random bytes from the caller's RNG).
            pub const fn from_bytes(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }

            /// Reads the identifier from a byte slice of exactly the right length.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                <[u8; $len]>::try_from(bytes).ok().map(Self)
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Parses the hex form.
            pub fn parse(input: &str) -> Result<Self, IdError> {
                from_hex::<$len>(input, $kind).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&to_hex(&self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_id!(
    /// One device of an account: 128 random bits, globally unique, opaque (it says
    /// nothing about the account, so it can name mailboxes and fan-out subjects).
    DeviceId,
    16,
    "a device id"
);

hex_id!(
    /// An encrypted attachment blob on the server: 128 random bits the server picks.
    /// Peers name blobs inside messages, so a client uses one only once it parsed as
    /// this (never as a path or URL fragment it was handed).
    BlobId,
    16,
    "a blob id"
);

hex_id!(
    /// A conversation, which is exactly one MLS group: the MLS group id is these bytes.
    ConversationId,
    16,
    "a conversation id"
);

/// The MLS group id of a conversation is the conversation id.
pub type GroupId = ConversationId;

/// A message's client-generated id (UUIDv7: time-ordered, random), used for
/// de-duplication and for receipts, edits, deletes and reactions to refer to.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(uuid::Uuid);

impl MessageId {
    /// Builds a UUIDv7 from a Unix time in milliseconds and 10 random bytes (time and
    /// randomness come from the caller, so this crate stays free of clocks and RNGs).
    pub fn new_v7(unix_ms: u64, random: &[u8; 10]) -> Self {
        Self(uuid::Builder::from_unix_timestamp_millis(unix_ms, random).into_uuid())
    }

    /// Reads a message id from its 16 bytes; refuses anything but a UUIDv7.
    pub fn from_bytes(bytes: [u8; 16]) -> Result<Self, IdError> {
        Self::checked(uuid::Uuid::from_bytes(bytes))
    }

    /// Parses the hyphenated UUID form.
    pub fn parse(input: &str) -> Result<Self, IdError> {
        let uuid = uuid::Uuid::try_parse(input).map_err(|_| IdError::MessageId)?;
        Self::checked(uuid)
    }

    fn checked(uuid: uuid::Uuid) -> Result<Self, IdError> {
        if uuid.get_version_num() == 7 && uuid.get_variant() == uuid::Variant::RFC4122 {
            Ok(Self(uuid))
        } else {
            Err(IdError::MessageId)
        }
    }

    /// The 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// The creation time embedded in the id, in Unix milliseconds.
    pub fn unix_ms(&self) -> u64 {
        let b = self.0.as_bytes();
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl FromStr for MessageId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for MessageId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_case_folded_and_validated() {
        assert_eq!(
            Username::parse("Alice_1.x-y").unwrap().as_str(),
            "alice_1.x-y"
        );
        assert_eq!(Username::parse("ab"), Err(IdError::UsernameLength(2)));
        assert_eq!(
            Username::parse(&"a".repeat(33)),
            Err(IdError::UsernameLength(33))
        );
        assert!(Username::parse(&"a".repeat(32)).is_ok());
        assert_eq!(
            Username::parse("al ice"),
            Err(IdError::UsernameCharacter(' '))
        );
        // Non-ASCII letters that fold or look like ASCII are refused, not normalised.
        assert_eq!(
            Username::parse("ålice"),
            Err(IdError::UsernameCharacter('å'))
        );
        assert_eq!(
            Username::parse("Kelvin\u{212A}"),
            Err(IdError::UsernameCharacter('\u{212A}'))
        );
        let err = Username::parse("a/b").unwrap_err().to_string();
        assert!(err.contains("'/'"), "{err}");
    }

    #[test]
    fn username_serde_validates() {
        let u: Username = serde_json::from_str("\"BOB\"").unwrap();
        assert_eq!(u.as_str(), "bob");
        assert!(serde_json::from_str::<Username>("\"b\"").is_err());
        assert_eq!(serde_json::to_string(&u).unwrap(), "\"bob\"");
    }

    #[test]
    fn hex_ids_round_trip() {
        let id = DeviceId::from_bytes([0xab; 16]);
        let text = id.to_string();
        assert_eq!(text, "ab".repeat(16));
        assert_eq!(DeviceId::parse(&text).unwrap(), id);
        assert_eq!(DeviceId::parse(&text.to_uppercase()).unwrap(), id);
        assert!(DeviceId::parse("abc").is_err());
        assert!(DeviceId::parse(&"zz".repeat(16)).is_err());
        // Multi-byte characters of the right byte length are refused, not sliced.
        assert!(DeviceId::parse(&"é".repeat(16)).is_err());
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<DeviceId>(&json).unwrap(), id);
    }

    #[test]
    fn message_ids_are_uuid_v7() {
        let id = MessageId::new_v7(1_700_000_000_123, &[7; 10]);
        assert_eq!(id.unix_ms(), 1_700_000_000_123);
        assert_eq!(MessageId::parse(&id.to_string()).unwrap(), id);
        assert_eq!(MessageId::from_bytes(*id.as_bytes()).unwrap(), id);
        // A v4 UUID is refused.
        assert_eq!(
            MessageId::parse("936da01f-9abd-4d9d-80c7-02af85c822a8"),
            Err(IdError::MessageId)
        );
        assert!(MessageId::from_bytes([0; 16]).is_err());
        // Later times sort later.
        let later = MessageId::new_v7(1_700_000_000_124, &[0; 10]);
        assert!(later > id);
    }
}
