//! The plaintext inside every MLS application message: a versioned, typed envelope.
//!
//! Encoded as CBOR (RFC 8949): compact, binary-safe, self-describing, and readable from
//! any language. The envelope is a map `{v, id, at, t, b}`: format version, message id,
//! sent-at time, content type name and the type's body. A type name this version does
//! not know (from a newer client) decodes as [`Content::Unsupported`] with its name, so
//! the message is kept and shown as "unsupported", never dropped.

use std::fmt;

use serde::{Deserialize, Serialize};
use sotto_proto::MessageId;
use zeroize::Zeroizing;

/// The envelope format this code writes.
pub const ENVELOPE_VERSION: u8 = 1;

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Client-generated UUIDv7, for de-duplication and for later references.
    pub id: MessageId,
    /// When the sender says it sent the message, Unix milliseconds.
    pub sent_at_ms: u64,
    /// What the message says.
    pub content: Content,
}

/// The typed content of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Content {
    /// Plain text.
    Text(Text),
    /// A file, uploaded encrypted; this carries how to fetch and decrypt it.
    Attachment(AttachmentPointer),
    /// An emoji reaction to a message (or its removal).
    Reaction(Reaction),
    /// A replacement text for an earlier message of the same sender.
    Edit(Edit),
    /// "Delete for everyone" of an earlier message of the same sender.
    Delete(Delete),
    /// The recipient has read these messages.
    ReadReceipt(ReadReceipt),
    /// The sender started or stopped typing.
    Typing(Typing),
    /// The conversation's disappearing-messages timer changed.
    DisappearingTimer(DisappearingTimer),
    /// The group's name was set or changed.
    GroupName(GroupName),
    /// A content type this version does not know, or whose body it could not read.
    /// Kept so the UI can say "unsupported message (update Sotto)".
    Unsupported {
        /// The type name as sent.
        kind: String,
    },
}

/// Plain text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Text {
    /// The text.
    pub body: String,
}

/// How to fetch and decrypt an attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentPointer {
    /// The server's id of the encrypted blob (a pointer naming anything else does not
    /// decode as an attachment).
    pub blob_id: sotto_proto::BlobId,
    /// The random AEAD key the blob was encrypted with.
    pub key: AttachmentKey,
    /// SHA-256 of the encrypted blob: binds the key to exactly one ciphertext.
    #[serde(with = "serde_bytes")]
    pub digest: [u8; 32],
    /// Plaintext size in bytes.
    pub size: u64,
    /// MIME type, e.g. `image/png`.
    pub media_type: String,
    /// Original file name, if any.
    pub file_name: Option<String>,
    /// Optional caption.
    pub caption: Option<String>,
}

/// A 256-bit attachment key. No `Debug` output; wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct AttachmentKey(Zeroizing<[u8; 32]>);

impl Serialize for AttachmentKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0.as_slice())
    }
}

impl<'de> Deserialize<'de> for AttachmentKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = Zeroizing::new(serde_bytes::ByteBuf::deserialize(d)?.into_vec());
        let key = <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| serde::de::Error::custom("an attachment key must be 32 bytes"))?;
        Ok(Self(Zeroizing::new(key)))
    }
}

impl AttachmentKey {
    /// Wraps key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }
    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for AttachmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AttachmentKey(***)")
    }
}

/// An emoji reaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    /// The message reacted to.
    pub target: MessageId,
    /// The emoji.
    pub emoji: String,
    /// True to take the reaction back.
    pub remove: bool,
}

/// An edit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edit {
    /// The message edited.
    pub target: MessageId,
    /// Its new text.
    pub body: String,
}

/// A delete for everyone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delete {
    /// The message deleted.
    pub target: MessageId,
}

/// A read receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadReceipt {
    /// The messages read.
    pub targets: Vec<MessageId>,
}

/// A typing indicator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Typing {
    /// True while typing.
    pub active: bool,
}

/// A group's name (sent by its creator, or when someone renames it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupName {
    /// The new name.
    pub name: String,
}

/// A disappearing-messages timer change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisappearingTimer {
    /// Seconds after which messages disappear; `None` turns the timer off.
    pub seconds: Option<u32>,
}

impl Content {
    /// The type name on the wire.
    pub fn kind(&self) -> &str {
        match self {
            Content::Text(_) => "text",
            Content::Attachment(_) => "attachment",
            Content::Reaction(_) => "reaction",
            Content::Edit(_) => "edit",
            Content::Delete(_) => "delete",
            Content::ReadReceipt(_) => "receipt",
            Content::Typing(_) => "typing",
            Content::DisappearingTimer(_) => "timer",
            Content::GroupName(_) => "group_name",
            Content::Unsupported { kind } => kind,
        }
    }
}

/// Why an envelope could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContentError {
    /// The bytes are not a Sotto envelope at all (no id to keep it under).
    #[error("the message content is not a readable envelope: {0}")]
    Malformed(#[source] crate::conversation::BoxError),
    /// Unsupported content cannot be sent.
    #[error("cannot send content of unsupported kind {0:?}")]
    CannotSendUnsupported(String),
    /// Encoding failed.
    #[error("could not encode the message: {0}")]
    Encode(#[source] crate::conversation::BoxError),
}

/// The outer map on the wire.
#[derive(Serialize, Deserialize)]
struct Wire {
    v: u8,
    id: MessageId,
    at: u64,
    t: String,
    b: ciborium::Value,
}

impl Envelope {
    /// Encodes for encryption.
    pub fn encode(&self) -> Result<Vec<u8>, ContentError> {
        let to_value = |v: &dyn erased::Body| v.to_value();
        let body = match &self.content {
            Content::Text(b) => to_value(b),
            Content::Attachment(b) => to_value(b),
            Content::Reaction(b) => to_value(b),
            Content::Edit(b) => to_value(b),
            Content::Delete(b) => to_value(b),
            Content::ReadReceipt(b) => to_value(b),
            Content::Typing(b) => to_value(b),
            Content::DisappearingTimer(b) => to_value(b),
            Content::GroupName(b) => to_value(b),
            Content::Unsupported { kind } => {
                return Err(ContentError::CannotSendUnsupported(kind.clone()));
            }
        }?;
        let wire = Wire {
            v: ENVELOPE_VERSION,
            id: self.id,
            at: self.sent_at_ms,
            t: self.content.kind().to_owned(),
            b: body,
        };
        let mut out = Vec::new();
        ciborium::into_writer(&wire, &mut out).map_err(|e| ContentError::Encode(e.into()))?;
        Ok(out)
    }

    /// Decodes a received envelope. Unknown or unreadable bodies become
    /// [`Content::Unsupported`]; only bytes without a readable id and time are an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, ContentError> {
        let wire: Wire =
            ciborium::from_reader(bytes).map_err(|e| ContentError::Malformed(e.into()))?;
        let content = if wire.v == ENVELOPE_VERSION {
            decode_body(&wire.t, wire.b)
        } else {
            None
        };
        Ok(Self {
            id: wire.id,
            sent_at_ms: wire.at,
            content: content.unwrap_or(Content::Unsupported { kind: wire.t }),
        })
    }
}

fn decode_body(kind: &str, body: ciborium::Value) -> Option<Content> {
    Some(match kind {
        "text" => Content::Text(body.deserialized().ok()?),
        "attachment" => Content::Attachment(body.deserialized().ok()?),
        "reaction" => Content::Reaction(body.deserialized().ok()?),
        "edit" => Content::Edit(body.deserialized().ok()?),
        "delete" => Content::Delete(body.deserialized().ok()?),
        "receipt" => Content::ReadReceipt(body.deserialized().ok()?),
        "typing" => Content::Typing(body.deserialized().ok()?),
        "timer" => Content::DisappearingTimer(body.deserialized().ok()?),
        "group_name" => Content::GroupName(body.deserialized().ok()?),
        _ => return None,
    })
}

/// Object-safe serialization of a body to a CBOR value.
mod erased {
    use super::ContentError;

    pub(super) trait Body {
        fn to_value(&self) -> Result<ciborium::Value, ContentError>;
    }

    impl<T: serde::Serialize> Body for T {
        fn to_value(&self) -> Result<ciborium::Value, ContentError> {
            ciborium::Value::serialized(self).map_err(|e| ContentError::Encode(e.into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> MessageId {
        MessageId::new_v7(1_700_000_000_000, &[1; 10])
    }

    fn all_kinds() -> Vec<Content> {
        vec![
            Content::Text(Text {
                body: "héllo 👋".into(),
            }),
            Content::Attachment(AttachmentPointer {
                blob_id: sotto_proto::BlobId::from_bytes([7; 16]),
                key: AttachmentKey::from_bytes([9; 32]),
                digest: [8; 32],
                size: 1234,
                media_type: "image/png".into(),
                file_name: Some("cat.png".into()),
                caption: None,
            }),
            Content::Reaction(Reaction {
                target: id(),
                emoji: "👍".into(),
                remove: false,
            }),
            Content::Edit(Edit {
                target: id(),
                body: "fixed".into(),
            }),
            Content::Delete(Delete { target: id() }),
            Content::ReadReceipt(ReadReceipt {
                targets: vec![id(), id()],
            }),
            Content::Typing(Typing { active: true }),
            Content::DisappearingTimer(DisappearingTimer {
                seconds: Some(3600),
            }),
            Content::DisappearingTimer(DisappearingTimer { seconds: None }),
            Content::GroupName(GroupName {
                name: "the club 🎲".into(),
            }),
        ]
    }

    #[test]
    fn every_kind_round_trips() {
        for content in all_kinds() {
            let env = Envelope {
                id: id(),
                sent_at_ms: 42,
                content,
            };
            let back = Envelope::decode(&env.encode().unwrap()).unwrap();
            assert_eq!(back, env);
        }
    }

    #[test]
    fn unknown_kinds_and_versions_are_kept_as_unsupported() {
        let wire = Wire {
            v: 1,
            id: id(),
            at: 5,
            t: "poll".into(),
            b: ciborium::Value::Text("question?".into()),
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(&wire, &mut bytes).unwrap();
        let env = Envelope::decode(&bytes).unwrap();
        assert_eq!(env.id, id());
        assert_eq!(
            env.content,
            Content::Unsupported {
                kind: "poll".into()
            }
        );

        // A known kind with an unreadable body, and a future envelope version.
        for (v, t) in [(1, "text"), (2, "text")] {
            let wire = Wire {
                v,
                id: id(),
                at: 5,
                t: t.into(),
                b: ciborium::Value::Integer(3.into()),
            };
            let mut bytes = Vec::new();
            ciborium::into_writer(&wire, &mut bytes).unwrap();
            assert_eq!(
                Envelope::decode(&bytes).unwrap().content,
                Content::Unsupported {
                    kind: "text".into()
                }
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Envelope::decode(&[]).is_err());
        assert!(Envelope::decode(&[0xff; 40]).is_err());
        let good = Envelope {
            id: id(),
            sent_at_ms: 1,
            content: Content::Text(Text { body: "x".into() }),
        }
        .encode()
        .unwrap();
        for n in 0..good.len() {
            assert!(Envelope::decode(&good[..n]).is_err());
        }
    }

    /// A peer's pointer naming a path instead of a blob (`../../.ssh/id_ed25519`)
    /// never becomes an attachment, so no client joins it to a folder or a URL.
    #[test]
    fn an_attachment_pointer_with_a_path_for_a_blob_id_is_not_an_attachment() {
        let pointer = all_kinds().remove(1);
        let good = Envelope {
            id: id(),
            sent_at_ms: 1,
            content: pointer,
        }
        .encode()
        .unwrap();
        let mut wire: ciborium::Value = ciborium::from_reader(good.as_slice()).unwrap();
        let mut replaced = 0;
        fn replace(v: &mut ciborium::Value, replaced: &mut usize) {
            match v {
                ciborium::Value::Map(entries) => {
                    for (k, v) in entries {
                        if k.as_text() == Some("blob_id") {
                            *v = ciborium::Value::Text("../../.ssh/id_ed25519".into());
                            *replaced += 1;
                        } else {
                            replace(v, replaced);
                        }
                    }
                }
                ciborium::Value::Array(items) => {
                    items.iter_mut().for_each(|v| replace(v, replaced))
                }
                _ => {}
            }
        }
        replace(&mut wire, &mut replaced);
        assert_eq!(replaced, 1);
        let mut bytes = Vec::new();
        ciborium::into_writer(&wire, &mut bytes).unwrap();
        let decoded = Envelope::decode(&bytes).unwrap();
        assert!(
            matches!(&decoded.content, Content::Unsupported { kind } if kind == "attachment"),
            "{:?}",
            decoded.content
        );
    }

    #[test]
    fn attachment_keys_do_not_print() {
        let key = AttachmentKey::from_bytes([0x41; 32]);
        assert_eq!(format!("{key:?}"), "AttachmentKey(***)");
    }
}
