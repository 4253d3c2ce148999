//! The KeyPackage directory: upload, count, claim.

use axum::Json;
use axum::extract::State;
use sotto_api::{
    B64, ClaimRequest, ClaimResponse, ClaimedKeyPackage, ErrorBody, KeyPackageStatus,
    UploadKeyPackagesRequest, paths,
};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{ApiJson, Authed};

/// Most one-time KeyPackages accepted in one upload.
pub const MAX_UPLOAD: usize = 200;

/// Stores the caller's KeyPackages; answers with the new counters.
#[utoipa::path(
    post, path = paths::UPLOAD_KEY_PACKAGES.template, tag = "key-packages", security(("bearer" = [])),
    request_body = UploadKeyPackagesRequest,
    responses(
        (status = 200, description = "Stored; the new counters", body = KeyPackageStatus),
        (status = 400, description = "bad_request", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 413, description = "too_large", body = ErrorBody)
    )
)]
pub async fn upload(
    State(state): State<AppState>,
    caller: Authed,
    ApiJson(req): ApiJson<UploadKeyPackagesRequest>,
) -> Result<Json<KeyPackageStatus>, ApiError> {
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
    get, path = paths::KEY_PACKAGE_STATUS.template, tag = "key-packages", security(("bearer" = [])),
    responses(
        (status = 200, description = "KeyPackages left for this device", body = KeyPackageStatus),
        (status = 401, description = "unauthorized", body = ErrorBody)
    )
)]
pub async fn status(
    State(state): State<AppState>,
    caller: Authed,
) -> Result<Json<KeyPackageStatus>, ApiError> {
    let s = state.store().device_status(caller.device).await?;
    Ok(Json(KeyPackageStatus {
        one_time_remaining: s.one_time_key_packages,
        has_last_resort: s.has_last_resort,
    }))
}

/// Claims one KeyPackage per device of a user.
#[utoipa::path(
    post, path = paths::CLAIM_KEY_PACKAGES.template, tag = "key-packages", security(("bearer" = [])),
    request_body = ClaimRequest,
    responses(
        (status = 200, description = "One KeyPackage per device of the user", body = ClaimResponse),
        (status = 400, description = "bad_request", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 404, description = "unknown_user", body = ErrorBody), (status = 413, description = "too_large", body = ErrorBody)
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
