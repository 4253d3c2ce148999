//! Error answers: `{"error": {"code", "message", "current_epoch"?}}`.

use serde::{Deserialize, Serialize};

/// Why the server refused a request: one stable code per refusal (see
/// `docs/protocol.md`). Codes this version does not know read as
/// [`ErrorCode::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// Malformed JSON, wrong types, bad base64, invalid ids or framing (400).
    BadRequest,
    /// No, malformed, unknown or revoked bearer token (401).
    Unauthorized,
    /// The device is not a member of the group (403).
    NotAMember,
    /// Understood but not allowed (403).
    Forbidden,
    /// No such resource (404).
    NotFound,
    /// No account has this username (404).
    UnknownUser,
    /// No group has this id (404).
    UnknownGroup,
    /// The username is taken (409).
    UsernameTaken,
    /// The group is at another epoch (409, with `current_epoch`).
    StaleEpoch,
    /// The device list version does not increase (409).
    VersionNotIncreasing,
    /// The group id is taken (409).
    GroupExists,
    /// The device id is already registered (409).
    DeviceExists,
    /// The link slot is in use (409).
    SlotInUse,
    /// The body is larger than allowed (413).
    TooLarge,
    /// The path exists but not with this method (405).
    MethodNotAllowed,
    /// This server keeps no attachments (503).
    AttachmentsDisabled,
    /// A bug or a backend failure (500).
    Internal,
    /// A code this version does not know (a newer server), or no error body at all.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as it travels (`stale_epoch`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::NotAMember => "not_a_member",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::UnknownUser => "unknown_user",
            Self::UnknownGroup => "unknown_group",
            Self::UsernameTaken => "username_taken",
            Self::StaleEpoch => "stale_epoch",
            Self::VersionNotIncreasing => "version_not_increasing",
            Self::GroupExists => "group_exists",
            Self::DeviceExists => "device_exists",
            Self::SlotInUse => "slot_in_use",
            Self::TooLarge => "too_large",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::AttachmentsDisabled => "attachments_disabled",
            Self::Internal => "internal",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// See [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// Human message: what went wrong and what to do.
    pub message: String,
    /// Only with `stale_epoch`: the group's current epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub current_epoch: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_travel_as_snake_case_and_unknown_ones_are_read() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::StaleEpoch,
            ErrorCode::VersionNotIncreasing,
            ErrorCode::AttachmentsDisabled,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
        assert_eq!(
            serde_json::from_str::<ErrorCode>("\"rate_limited_in_2030\"").unwrap(),
            ErrorCode::Unknown
        );
        let body: ErrorBody = serde_json::from_str(
            r#"{"error":{"code":"stale_epoch","message":"m","current_epoch":7}}"#,
        )
        .unwrap();
        assert_eq!(body.error.code, ErrorCode::StaleEpoch);
        assert_eq!(body.error.current_epoch, Some(7));
    }
}
