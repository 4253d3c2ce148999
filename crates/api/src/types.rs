//! Request and response bodies, mailbox entries and WebSocket frames.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use sotto_proto::{ConversationId, DeviceId, DeviceList, IdentityPublicKey, MessageId, Username};

use crate::B64;

/// What a username looks like (letters are case-folded by the server).
pub const USERNAME_PATTERN: &str = "^[A-Za-z0-9._-]{3,32}$";
/// A device, conversation (group) or blob id: 128 bits as 32 hex digits.
pub const ID_PATTERN: &str = "^[0-9a-fA-F]{32}$";
/// A message id: a hyphenated UUIDv7.
pub const MESSAGE_ID_PATTERN: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-7[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$";
/// Base64, standard alphabet, padded.
pub const BASE64_PATTERN: &str = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$";

// ----- accounts and devices -----

/// `POST /v1/accounts` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterRequest {
    /// The account name (3 to 32 of `a-z 0-9 . _ -`).
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[A-Za-z0-9._-]{3,32}$"))]
    pub username: Username,
    /// The signed device list naming the first device (base64).
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub device_list: DeviceList,
}

/// `POST /v1/accounts` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterResponse {
    /// The canonical (lower-case) username.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub username: Username,
    /// The registered device.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub device_id: DeviceId,
    /// The device's bearer token, shown only now.
    pub token: String,
}

/// `GET /v1/accounts/{username}` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AccountResponse {
    /// The canonical username.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub username: Username,
    /// The account identity key (base64).
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub identity_key: IdentityPublicKey,
    /// The current signed device list, as stored (base64).
    pub device_list: B64,
}

/// `POST /v1/accounts/{username}/recovery-lookup` body: the account's root signs
/// `recovery_lookup_message(username, at)` (see `sotto_proto`); `at` must be within
/// five minutes of the server's clock. The answer is an [`AccountResponse`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecoveryLookupRequest {
    /// Unix seconds when the signature was made.
    pub at: u64,
    /// The root's Ed25519 signature (base64, 64 bytes).
    pub signature: B64,
}

/// `POST /v1/accounts/{username}/recover` body: the recovered account's first list.
/// Its account-key certificate must be signed by the account's root (its identity
/// key) with a generation above the current one, and it must name exactly one device:
/// the new one. Every other device of the account is removed (tokens revoked). The
/// answer is a [`RegisterResponse`] for the new device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecoverRequest {
    /// The new signed device list (base64).
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub device_list: DeviceList,
}

/// `POST /v1/devices/token` answer: the caller's new bearer token. The token the
/// request was made with stops working at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenResponse {
    /// The new bearer token, shown only now.
    pub token: String,
}

/// `PUT /v1/devices` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublishRequest {
    /// The new signed device list (base64).
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub device_list: DeviceList,
}

/// `PUT /v1/devices` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublishResponse {
    /// The list's version, now current.
    pub version: u64,
    /// The device this list added, if it added one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub new_device_id: Option<DeviceId>,
    /// That device's bearer token, shown only now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_device_token: Option<String>,
    /// Devices this list removed (their tokens and mailboxes are gone).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub removed: Vec<DeviceId>,
}

// ----- key packages -----

/// `POST /v1/key-packages` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UploadKeyPackagesRequest {
    /// One-time KeyPackages (base64 each).
    #[serde(default)]
    pub one_time: Vec<B64>,
    /// A last-resort KeyPackage, replacing the stored one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_resort: Option<B64>,
}

/// The caller's KeyPackage counters (`GET` and `POST /v1/key-packages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyPackageStatus {
    /// One-time KeyPackages left.
    pub one_time_remaining: u32,
    /// Whether a last-resort KeyPackage is stored.
    pub has_last_resort: bool,
}

/// `POST /v1/key-packages/claim` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimRequest {
    /// Whose devices.
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[A-Za-z0-9._-]{3,32}$"))]
    pub username: Username,
}

/// One claimed KeyPackage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimedKeyPackage {
    /// The device it belongs to.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub device_id: DeviceId,
    /// The KeyPackage (base64).
    pub key_package: B64,
}

/// `POST /v1/key-packages/claim` answer: one per device that has one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimResponse {
    /// The claimed KeyPackages.
    pub key_packages: Vec<ClaimedKeyPackage>,
}

// ----- groups -----

/// `POST /v1/groups` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateGroupRequest {
    /// The new group's id (the MLS group id).
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[0-9a-fA-F]{32}$"))]
    pub group_id: ConversationId,
}

/// `POST /v1/groups` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateGroupResponse {
    /// The group's id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub group_id: ConversationId,
    /// Always 0.
    pub epoch: u64,
}

/// `GET /v1/groups/{id}` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupResponse {
    /// The group's current epoch.
    pub epoch: u64,
    /// Its member devices.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub members: Vec<DeviceId>,
}

/// `POST /v1/groups/{id}/commits` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommitRequest {
    /// The epoch the commit was made in.
    pub epoch: u64,
    /// Devices the commit adds.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub added: Vec<DeviceId>,
    /// Devices the commit removes.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub removed: Vec<DeviceId>,
    /// The MLS commit (base64).
    pub commit: B64,
    /// The MLS Welcome for the added devices (base64), with `added` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub welcome: Option<B64>,
}

/// `POST /v1/groups/{id}/commits` answer.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommitResponse {
    /// The group's new epoch.
    pub epoch: u64,
}

/// `POST /v1/groups/{id}/messages` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessageRequest {
    /// The client's id for the message (de-duplicates resends).
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-7[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$"))]
    pub message_id: MessageId,
    /// The MLS PrivateMessage (base64).
    pub body: B64,
}

/// `POST /v1/groups/{id}/messages` answer.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessageResponse {
    /// Whether this message id was already accepted (nothing new was stored).
    pub duplicate: bool,
}

// ----- mailbox -----

/// What a mailbox entry carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// An MLS Welcome: the device was added to the group.
    Welcome,
    /// An MLS commit of the group.
    Commit,
    /// An application message or a proposal.
    Message,
    /// A directory notice: the account named in the body (its username, UTF-8)
    /// published a new device list or was released by the operator. Fetch its
    /// directory entry again. Its `group` is all zeros (it belongs to no group).
    Directory,
}

/// One mailbox entry (`GET /v1/mailbox`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Entry {
    /// The per-device sequence number.
    pub seq: u64,
    /// What the body is.
    pub kind: EntryKind,
    /// The conversation.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub group: ConversationId,
    /// The MLS bytes (base64).
    pub body: B64,
    /// When the server accepted it (Unix seconds).
    pub received_at: u64,
}

/// `GET /v1/mailbox` query.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct FetchQuery {
    /// Return entries with a greater seq (default 0).
    #[serde(default)]
    pub after: u64,
    /// At most this many (default 100, max 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `GET /v1/mailbox` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FetchResponse {
    /// Entries in seq order.
    pub entries: Vec<Entry>,
}

/// `POST /v1/mailbox/ack` body.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AckRequest {
    /// Delete entries up to and including this seq.
    pub up_to: u64,
}

/// `POST /v1/mailbox/ack` answer.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AckResponse {
    /// How many entries were deleted.
    pub deleted: u64,
}

// ----- attachments -----

/// `POST /v1/attachments` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UploadAttachmentResponse {
    /// The blob id (32 hex digits), for `GET /v1/attachments/{id}`.
    pub id: String,
    /// Its size in bytes.
    pub size: u64,
}

// ----- WebSocket -----

/// `GET /v1/ws` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WsQuery {
    /// Resume after this seq (the last acked).
    #[serde(default)]
    pub after: u64,
    /// The device token, for clients that cannot set headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// A frame the server sends on the WebSocket (JSON text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// A mailbox entry, as in [`Entry`], with its body still in base64 (the server
    /// encodes a message once for all its recipients).
    Entry {
        /// The per-device sequence number.
        seq: u64,
        /// What the body is.
        kind: EntryKind,
        /// The conversation.
        group: ConversationId,
        /// The MLS bytes, base64.
        #[serde(borrow)]
        body: Cow<'a, str>,
        /// When the server accepted it.
        received_at: u64,
    },
}

/// A frame the client sends on the WebSocket (JSON text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Entries up to and including `up_to` are processed: delete them.
    Ack {
        /// The highest processed seq.
        up_to: u64,
    },
}

/// WebSocket close codes beyond the standard ones.
pub mod close {
    /// Another connection of this device took over (on this node or another).
    pub const REPLACED: u16 = 4000;
    /// This device was removed from its account.
    pub const DEVICE_REMOVED: u16 = 4001;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_keep_their_wire_shape() {
        let group = ConversationId::from_bytes([0xab; 16]);
        let frame = ServerFrame::Entry {
            seq: 3,
            kind: EntryKind::Welcome,
            group,
            body: Cow::Borrowed("AAE="),
            received_at: 9,
        };
        let text = serde_json::to_string(&frame).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"type":"entry","seq":3,"kind":"welcome","group":"{group}","body":"AAE=","received_at":9}}"#
            )
        );
        assert_eq!(
            serde_json::from_str::<ServerFrame<'_>>(&text).unwrap(),
            frame
        );
        assert_eq!(
            serde_json::to_string(&ClientFrame::Ack { up_to: 5 }).unwrap(),
            r#"{"type":"ack","up_to":5}"#
        );
    }

    #[test]
    fn optional_fields_are_left_out_and_read_back() {
        let publish = PublishResponse {
            version: 2,
            new_device_id: None,
            new_device_token: None,
            removed: Vec::new(),
        };
        assert_eq!(
            serde_json::to_string(&publish).unwrap(),
            r#"{"version":2,"removed":[]}"#
        );
        let upload: UploadKeyPackagesRequest = serde_json::from_str("{}").unwrap();
        assert!(upload.one_time.is_empty() && upload.last_resort.is_none());
    }
}
