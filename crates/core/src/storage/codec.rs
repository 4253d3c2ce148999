//! How [`KvStorage`](super::KvStorage) turns OpenMLS keys and values into bytes.

use serde::{Serialize, de::DeserializeOwned};

use super::StorageError;

/// A serde data format for stored keys and values.
///
/// The format must be self-describing: OpenMLS deserializes some values
/// (for example the past-epoch deletion policy inside `MlsGroupJoinConfig`)
/// through `#[serde(untagged)]` enums, which formats such as postcard or
/// bincode cannot drive. Encoding must be deterministic, because encoded
/// keys and list items are compared byte for byte.
///
/// The codec is part of the on-disk format: a store written with one codec
/// cannot be read with another.
pub trait Codec {
    /// Encodes `value`.
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StorageError>;

    /// Decodes exactly one value from `bytes`; trailing bytes are an error.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError>;
}

/// JSON, the format of OpenMLS's reference memory store. Readable, but byte
/// strings become arrays of decimal numbers, so values are large.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StorageError> {
        serde_json::to_vec(value).map_err(|e| StorageError::Encode(Box::new(e)))
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
        serde_json::from_slice(bytes).map_err(|e| StorageError::Decode(Box::new(e)))
    }
}

/// CBOR (RFC 8949) via `ciborium`: self-describing like JSON but binary, so
/// values are considerably smaller and faster to parse. The default codec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CborCodec;

impl Codec for CborCodec {
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StorageError> {
        let mut out = Vec::new();
        ciborium::into_writer(value, &mut out).map_err(|e| StorageError::Encode(Box::new(e)))?;
        Ok(out)
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
        let mut rest = bytes;
        let value =
            ciborium::from_reader(&mut rest).map_err(|e| StorageError::Decode(Box::new(e)))?;
        if !rest.is_empty() {
            return Err(StorageError::Decode(
                "trailing bytes after CBOR value".into(),
            ));
        }
        Ok(value)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly
mod tests {
    use super::*;

    fn round_trip<C: Codec>() {
        let value = (vec![1u8, 2, 255], Some("x".to_string()), u64::MAX);
        let bytes = C::encode(&value).unwrap();
        assert_eq!(
            C::decode::<(Vec<u8>, Option<String>, u64)>(&bytes).unwrap(),
            value
        );

        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            C::decode::<(Vec<u8>, Option<String>, u64)>(&trailing),
            Err(StorageError::Decode(_))
        ));
        assert!(matches!(
            C::decode::<(Vec<u8>, Option<String>, u64)>(&bytes[..bytes.len() - 1]),
            Err(StorageError::Decode(_))
        ));
    }

    #[test]
    fn json_round_trips_and_rejects_garbage() {
        round_trip::<JsonCodec>();
    }

    #[test]
    fn cbor_round_trips_and_rejects_garbage() {
        round_trip::<CborCodec>();
    }
}
