//! The KeyPackage directory: upload, count, claim.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use sotto_proto::{DeviceId, Username};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{ApiJson, Authed, B64};

/// Most one-time KeyPackages accepted in one upload.
pub const MAX_UPLOAD: usize = 200;

/// `POST /v1/key-packages` body.
#[derive(Deserialize)]
pub struct UploadRequest {
    #[serde(default)]
    one_time: Vec<B64>,
    #[serde(default)]
    last_resort: Option<B64>,
}

/// The caller's KeyPackage counters.
#[derive(Serialize)]
pub struct StatusResponse {
    one_time_remaining: u32,
    has_last_resort: bool,
}

/// Stores the caller's KeyPackages; answers with the new counters.
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
#[derive(Deserialize)]
pub struct ClaimRequest {
    username: Username,
}

/// One claimed KeyPackage.
#[derive(Serialize)]
pub struct ClaimedKeyPackage {
    device_id: DeviceId,
    key_package: B64,
}

/// `POST /v1/key-packages/claim` answer.
#[derive(Serialize)]
pub struct ClaimResponse {
    key_packages: Vec<ClaimedKeyPackage>,
}

/// Claims one KeyPackage per device of a user.
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
