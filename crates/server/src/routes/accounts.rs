//! Registration, directory look-up and device-list publication.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use sotto_api::{
    AccountResponse, B64, ErrorBody, PublishRequest, PublishResponse, RegisterRequest,
    RegisterResponse, paths,
};
use sotto_proto::{CertError, DeviceId, Username};
use sotto_server_store::{NewAccount, NewDevice, StoreError};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, Authed, new_token};
use sotto_server_fanout::Wake;

fn cert_error(e: CertError) -> ApiError {
    match e {
        CertError::BadSignature { .. } => ApiError::Forbidden(
            "the device list is not signed by the account's identity key".into(),
        ),
        other => ApiError::bad_request(format!("invalid device list: {other}")),
    }
}

/// Registers an account with its first device and returns that device's token.
#[utoipa::path(
    post, path = paths::REGISTER.template, tag = "accounts",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered; the token is shown only now", body = RegisterResponse),
        (status = 400, description = "Malformed body or device list (bad_request)", body = ErrorBody), (status = 403, description = "Device list not signed by its identity key (forbidden)", body = ErrorBody), (status = 409, description = "username_taken or device_exists", body = ErrorBody), (status = 413, description = "too_large", body = ErrorBody), (status = 500, description = "internal", body = ErrorBody)
    )
)]
pub async fn register(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let list = req.device_list;
    list.verify().map_err(cert_error)?;
    if list.username() != &req.username {
        return Err(ApiError::bad_request(
            "the device list belongs to another username",
        ));
    }
    let [cert] = list.devices() else {
        return Err(ApiError::bad_request(
            "a new account's device list must hold exactly one device",
        ));
    };
    if list.version() < 1 {
        return Err(ApiError::bad_request(
            "the device list version must be at least 1",
        ));
    }
    let (token, token_hash) = new_token()?;
    let device_id = cert.device_id();
    let account = NewAccount {
        username: req.username.clone(),
        identity_key: *list.identity_key(),
        device_list_bytes: list.to_bytes(),
        list_version: list.version(),
        first_device: NewDevice {
            device_id,
            token_hash,
            certificate_bytes: cert.to_bytes(),
        },
    };
    state
        .store()
        .create_account(account, state.clock().now())
        .await?;
    tracing::debug!(device = %device_id, "account registered");
    Ok((
        StatusCode::CREATED,
        Json(RegisterResponse {
            username: req.username,
            device_id,
            token,
        }),
    ))
}

/// The directory entry of an account: its identity key and signed device list.
#[utoipa::path(
    get, path = paths::ACCOUNT.template, tag = "accounts", security(("bearer" = [])),
    params(("username" = String, Path, description = "The account name")),
    responses(
        (status = 200, description = "Identity key and signed device list", body = AccountResponse),
        (status = 400, description = "bad_request", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 404, description = "unknown_user", body = ErrorBody)
    )
)]
pub async fn lookup(
    State(state): State<AppState>,
    _caller: Authed,
    ApiPath(username): ApiPath<Username>,
) -> Result<Json<AccountResponse>, ApiError> {
    let account = state
        .store()
        .account(&username)
        .await?
        .ok_or(ApiError::UnknownUser)?;
    Ok(Json(AccountResponse {
        username: account.username,
        identity_key: account.identity_key,
        device_list: B64(account.device_list_bytes),
    }))
}

/// Publishes a new signed device list: registers at most one new device (returning its
/// token) and removes registered devices the list no longer names.
#[utoipa::path(
    put, path = paths::PUBLISH_DEVICES.template, tag = "accounts", security(("bearer" = [])),
    request_body = PublishRequest,
    responses(
        (status = 200, description = "Published; a new device gets its token here, removed devices lose theirs", body = PublishResponse),
        (status = 400, description = "bad_request", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "forbidden", body = ErrorBody), (status = 409, description = "version_not_increasing or device_exists", body = ErrorBody), (status = 413, description = "too_large", body = ErrorBody)
    )
)]
pub async fn publish_devices(
    State(state): State<AppState>,
    caller: Authed,
    ApiJson(req): ApiJson<PublishRequest>,
) -> Result<Json<PublishResponse>, ApiError> {
    let list = req.device_list;
    let account = state
        .store()
        .account(&caller.username)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    if list.identity_key() != &account.identity_key {
        return Err(ApiError::Forbidden(
            "the device list names another identity key than the account's".into(),
        ));
    }
    if list.username() != &caller.username {
        return Err(ApiError::bad_request(
            "the device list belongs to another username",
        ));
    }
    list.verify().map_err(cert_error)?;
    if list.version() <= account.list_version {
        return Err(ApiError::VersionNotIncreasing {
            current: account.list_version,
        });
    }
    let registered: BTreeSet<DeviceId> = account.devices.iter().map(|d| d.device_id).collect();
    let listed: BTreeSet<DeviceId> = list.devices().iter().map(|c| c.device_id()).collect();
    let new: Vec<DeviceId> = listed.difference(&registered).copied().collect();
    let removed: Vec<DeviceId> = registered.difference(&listed).copied().collect();
    if new.len() > 1 {
        return Err(ApiError::bad_request(
            "a device list may add at most one device at a time",
        ));
    }
    if listed.is_empty() {
        return Err(ApiError::bad_request(
            "a device list must keep at least one device",
        ));
    }
    let mut new_device = None;
    let mut new_token_text = None;
    if let Some(id) = new.first().copied() {
        let cert = list
            .device(id)
            .ok_or_else(|| ApiError::Internal("listed device without certificate".into()))?;
        let (token, token_hash) = new_token()?;
        new_device = Some(NewDevice {
            device_id: id,
            token_hash,
            certificate_bytes: cert.to_bytes(),
        });
        new_token_text = Some(token);
    }
    state
        .store()
        .publish_device_list(
            &caller.username,
            list.to_bytes(),
            list.version(),
            new_device,
            state.clock().now(),
        )
        .await?;
    for id in &removed {
        match state.store().remove_device(&caller.username, *id).await {
            Ok(()) | Err(StoreError::UnknownDevice) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Wake their WebSockets so they notice they are gone.
    let wakes: Vec<(DeviceId, Wake)> = removed.iter().map(|&id| (id, Wake::Reread)).collect();
    state.fanout().notify_many(&wakes).await;
    tracing::debug!(
        added = new.len(),
        removed = removed.len(),
        "device list published"
    );
    Ok(Json(PublishResponse {
        version: list.version(),
        new_device_id: new.first().copied(),
        new_device_token: new_token_text,
        removed,
    }))
}
