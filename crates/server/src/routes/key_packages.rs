//! The KeyPackage directory: upload, count, claim.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use sotto_proto::{DeviceId, Username};

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, Authed, B64};

/// Most one-time KeyPackages accepted in one upload.
pub const MAX_UPLOAD: usize = 200;

/// `POST /v1/key-packages` body.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct UploadRequest {
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    one_time: Vec<B64>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    last_resort: Option<B64>,
}

/// The caller's KeyPackage counters.
#[derive(Serialize, utoipa::ToSchema)]
pub struct StatusResponse {
    one_time_remaining: u32,
    has_last_resort: bool,
}

/// Stores the caller's KeyPackages; answers with the new counters.
#[utoipa::path(
    post, path = "/v1/key-packages", tag = "key-packages", security(("bearer" = [])),
    request_body = UploadRequest,
    responses(
        (status = 200, description = "Stored; the new counters", body = StatusResponse),
        (status = 400, description = "bad_request", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody)
    )
)]
pub async fn upload(
    State(state): State<AppState>,
    caller: Authed,
    ApiJson(req): ApiJson<UploadRequest>,
) -> Result<Json<StatusResponse>, ApiError> {
    if req.one_time.len() > MAX_UPLOAD {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_UPLOAD} one-time KeyPackages per upload"
        )));
    }
    if req
        .one_time
        .iter()
        .chain(&req.last_resort)
        .any(|kp| kp.0.is_empty())
    {
        return Err(ApiError::bad_request("a KeyPackage may not be empty"));
    }
    state
        .store()
        .upload_key_packages(
            caller.device,
            req.one_time.into_iter().map(|kp| kp.0).collect(),
            req.last_resort.map(|kp| kp.0),
        )
        .await?;
    status(State(state), caller).await
}

/// The caller's counters (clients top up when low).
#[utoipa::path(
    get, path = "/v1/key-packages", tag = "key-packages", security(("bearer" = [])),
    responses(
        (status = 200, description = "KeyPackages left for this device", body = StatusResponse),
        (status = 401, description = "unauthorized", body = ErrorBody)
    )
)]
pub async fn status(
    State(state): State<AppState>,
    caller: Authed,
) -> Result<Json<StatusResponse>, ApiError> {
    let s = state.store().device_status(caller.device).await?;
    Ok(Json(StatusResponse {
        one_time_remaining: s.one_time_key_packages,
        has_last_resort: s.has_last_resort,
    }))
}

/// `POST /v1/key-packages/claim` body.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct ClaimRequest {
    #[schema(value_type = String)]
    username: Username,
}

/// One claimed KeyPackage.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ClaimedKeyPackage {
    #[schema(value_type = String)]
    device_id: DeviceId,
    #[schema(value_type = String)]
    key_package: B64,
}

/// `POST /v1/key-packages/claim` answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ClaimResponse {
    key_packages: Vec<ClaimedKeyPackage>,
}

/// Claims one KeyPackage per device of a user.
#[utoipa::path(
    post, path = "/v1/key-packages/claim", tag = "key-packages", security(("bearer" = [])),
    request_body = ClaimRequest,
    responses(
        (status = 200, description = "One KeyPackage per device of the user", body = ClaimResponse),
        (status = 400, description = "bad_request", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 404, description = "unknown_user", body = ErrorBody)
    )
)]
pub async fn claim(
    State(state): State<AppState>,
    _caller: Authed,
    ApiJson(req): ApiJson<ClaimRequest>,
) -> Result<Json<ClaimResponse>, ApiError> {
    let claimed = state.store().claim_key_packages(&req.username).await?;
    Ok(Json(ClaimResponse {
        key_packages: claimed
            .into_iter()
            .map(|(device_id, kp)| ClaimedKeyPackage {
                device_id,
                key_package: B64(kp),
            })
            .collect(),
    }))
}
