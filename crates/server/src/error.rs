//! The one error type of the HTTP API: a stable machine code and a human message for
//! the client; internal details go to the log only.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sotto_api::{ErrorBody, ErrorCode, ErrorDetail};
use sotto_server_store::StoreError;

/// Why a request was refused. Every variant maps to one HTTP status and one stable
/// `code` string (see `docs/protocol.md`).
#[derive(Debug)]
#[non_exhaustive]
pub enum ApiError {
    /// Malformed JSON, wrong types, bad base64, invalid ids or framing (400 `bad_request`).
    BadRequest(String),
    /// No, malformed, unknown or revoked bearer token (401 `unauthorized`).
    Unauthorized,
    /// The device is not a member of the group (403 `not_a_member`).
    NotAMember,
    /// The request is understood but not allowed (403 `forbidden`).
    Forbidden(String),
    /// No such resource (404 `not_found`).
    NotFound(String),
    /// No account has this username (404 `unknown_user`).
    UnknownUser,
    /// No group has this id (404 `unknown_group`).
    UnknownGroup,
    /// The username is taken (409 `username_taken`).
    UsernameTaken,
    /// The group is at another epoch (409 `stale_epoch`, with `current_epoch`).
    StaleEpoch {
        /// The group's current epoch.
        current: u64,
    },
    /// The device list version does not increase (409 `version_not_increasing`).
    VersionNotIncreasing {
        /// The stored version.
        current: u64,
    },
    /// The group id is taken (409 `group_exists`).
    GroupExists,
    /// The device id is already registered (409 `device_exists`).
    DeviceExists,
    /// The link slot is in use (409 `slot_in_use`).
    SlotInUse,
    /// The body is larger than allowed (413 `too_large`).
    TooLarge,
    /// The path exists but not with this method (405 `method_not_allowed`).
    MethodNotAllowed,
    /// This server keeps no attachments (503 `attachments_disabled`).
    AttachmentsDisabled,
    /// A bug or a backend failure (500 `internal`). The detail is logged, never sent.
    Internal(String),
}

impl ApiError {
    /// Shorthand for [`ApiError::BadRequest`].
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest(message.into())
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotAMember | Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) | Self::UnknownUser | Self::UnknownGroup => StatusCode::NOT_FOUND,
            Self::UsernameTaken
            | Self::StaleEpoch { .. }
            | Self::VersionNotIncreasing { .. }
            | Self::GroupExists
            | Self::DeviceExists
            | Self::SlotInUse => StatusCode::CONFLICT,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::AttachmentsDisabled => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::Unauthorized => ErrorCode::Unauthorized,
            Self::NotAMember => ErrorCode::NotAMember,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::UnknownUser => ErrorCode::UnknownUser,
            Self::UnknownGroup => ErrorCode::UnknownGroup,
            Self::UsernameTaken => ErrorCode::UsernameTaken,
            Self::StaleEpoch { .. } => ErrorCode::StaleEpoch,
            Self::VersionNotIncreasing { .. } => ErrorCode::VersionNotIncreasing,
            Self::GroupExists => ErrorCode::GroupExists,
            Self::DeviceExists => ErrorCode::DeviceExists,
            Self::SlotInUse => ErrorCode::SlotInUse,
            Self::TooLarge => ErrorCode::TooLarge,
            Self::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            Self::AttachmentsDisabled => ErrorCode::AttachmentsDisabled,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The human message sent to the client (never internal details).
    pub fn message(&self) -> String {
        match self {
            Self::BadRequest(m) | Self::Forbidden(m) | Self::NotFound(m) => m.clone(),
            Self::Unauthorized => "a valid bearer token is required".into(),
            Self::NotAMember => "this device is not a member of the group".into(),
            Self::UnknownUser => "no account has this username".into(),
            Self::UnknownGroup => "no group has this id".into(),
            Self::UsernameTaken => "the username is already taken".into(),
            Self::StaleEpoch { current } => format!(
                "the group is at epoch {current}: fetch your mailbox, apply what is pending and retry"
            ),
            Self::VersionNotIncreasing { current } => {
                format!("the device list version must be greater than {current}")
            }
            Self::GroupExists => "a group with this id already exists".into(),
            Self::DeviceExists => "a device with this id is already registered".into(),
            Self::SlotInUse => "this link slot is in use".into(),
            Self::TooLarge => "the request body is too large".into(),
            Self::MethodNotAllowed => "this method is not allowed on this path".into(),
            Self::AttachmentsDisabled => {
                "this server does not store attachments: ask its operator to configure a blob directory".into()
            }
            Self::Internal(_) => "internal server error".into(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code(), self.message())
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(detail) = &self {
            tracing::error!(detail = %detail, "internal error while serving a request");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.message(),
                current_epoch: match self {
                    Self::StaleEpoch { current } => Some(current),
                    _ => None,
                },
            },
        };
        (self.status(), Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UsernameTaken => Self::UsernameTaken,
            StoreError::UnknownUser => Self::UnknownUser,
            StoreError::UnknownDevice => Self::NotFound("no such device".into()),
            StoreError::DeviceExists => Self::DeviceExists,
            StoreError::StaleEpoch { current } => Self::StaleEpoch { current },
            StoreError::NotAMember => Self::NotAMember,
            StoreError::GroupExists => Self::GroupExists,
            StoreError::UnknownGroup => Self::UnknownGroup,
            StoreError::VersionNotIncreasing { current } => Self::VersionNotIncreasing { current },
            StoreError::SlotExists => Self::SlotInUse,
            StoreError::Backend(detail) => Self::Internal(format!("store: {detail}")),
            other => Self::Internal(format!("store: {other}")),
        }
    }
}
