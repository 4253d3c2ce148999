//! Base64 (standard alphabet, padded) for binary fields in JSON.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Encodes bytes.
pub fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes text, saying what is wrong when it is not base64.
pub fn decode(text: &str) -> Result<Vec<u8>, String> {
    STANDARD
        .decode(text)
        .map_err(|e| format!("not valid base64: {e}"))
}

/// Serde helper for `Vec<u8>` fields carried as base64 strings:
/// `#[serde(with = "sotto_proto::b64::serde_bytes")]`.
pub mod serde_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes as a base64 string.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::encode(bytes))
    }

    /// Deserializes from a base64 string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        super::decode(&text).map_err(serde::de::Error::custom)
    }
}
