//! Binary fields: base64 strings in JSON.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes carried as a base64 string (standard alphabet, padded) in JSON.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct B64(pub Vec<u8>);

impl std::fmt::Debug for B64 {
    /// The length only: these are ciphertexts, KeyPackages and signed lists, and
    /// nothing that logs a request should print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "B64({} bytes)", self.0.len())
    }
}

impl From<Vec<u8>> for B64 {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl From<&[u8]> for B64 {
    fn from(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }
}

impl Serialize for B64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        sotto_proto::b64::serde_bytes::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        sotto_proto::b64::serde_bytes::deserialize(d).map(Self)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for B64 {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Byte,
            )))
            .pattern(Some(crate::types::BASE64_PATTERN))
            .description(Some("Base64 (standard alphabet, padded)"))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for B64 {}
