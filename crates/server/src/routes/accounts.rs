//! Registration, directory look-up and device-list publication.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use sotto_api::{
    AccountResponse, B64, ErrorBody, PublishRequest, PublishResponse, RecoverRequest,
    RecoveryLookupRequest, RegisterRequest, RegisterResponse, TokenResponse, paths,
};
use sotto_proto::{CertError, DeviceId, DeviceList, Username};
use sotto_server_store::{NewAccount, NewDevice, StoreError};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, Authed, new_token};
use sotto_server_fanout::Wake;

fn cert_error(e: CertError) -> ApiError {
    match e {
        CertError::BadSignature { .. } => {
            ApiError::Forbidden("the device list is not signed by the account's keys".into())
        }
        CertError::RevokedAccountKey { .. } => ApiError::Forbidden(
            "the device list is signed by an account key a recovery replaced".into(),
        ),
        other => ApiError::bad_request(format!("invalid device list: {other}")),
    }
}

/// The stored list of an account, to compare account-key generations with.
fn stored_list(bytes: &[u8]) -> Result<DeviceList, ApiError> {
    DeviceList::from_bytes(bytes)
        .map_err(|e| ApiError::Internal(format!("a stored device list does not decode: {e}")))
}

/// Checks a list offered for `account` against the stored one: same account and
/// root, verifies, version above the stored one, account-key generation not below.
fn check_new_list(
    list: &DeviceList,
    account: &sotto_server_store::Account,
) -> Result<DeviceList, ApiError> {
    if list.username() != &account.username {
        return Err(ApiError::bad_request(
            "the device list belongs to another username",
        ));
    }
    if list.identity_key() != &account.identity_key {
        return Err(ApiError::Forbidden(
            "the device list names another identity key than the account's".into(),
        ));
    }
    list.verify().map_err(cert_error)?;
    if list.version() <= account.list_version {
        return Err(ApiError::VersionNotIncreasing {
            current: account.list_version,
        });
    }
    // One step at a time: a stolen account key cannot push the version to the top of
    // the range and leave a recovery no version to use.
    if list.version() != account.list_version + 1 {
        return Err(ApiError::bad_request(format!(
            "the device list version must be {} (the current one plus one)",
            account.list_version + 1
        )));
    }
    let stored = stored_list(&account.device_list_bytes)?;
    list.check_not_rollback(Some(&stored)).map_err(cert_error)?;
    Ok(stored)
}

/// Tells the devices that share a conversation with `username` (and its own devices)
/// that its directory entry changed, and wakes them. A failure is logged, not
/// returned: the list is published already, and clients also check lists on their own.
async fn notify_directory(state: &AppState, username: &Username, except: &[DeviceId]) {
    match state
        .store()
        .notify_directory(username, except, state.clock().now())
        .await
    {
        Ok(notified) => {
            let wakes: Vec<(DeviceId, Wake)> = notified
                .into_iter()
                .map(|(id, seq)| (id, Wake::UpTo(seq)))
                .collect();
            state.fanout().notify_many(&wakes).await;
        }
        Err(e) => tracing::warn!(error = %e, "could not queue directory notices"),
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
    check_new_list(&list, &account)?;
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
    // Not told: removed devices, and a new device (it fetches the list itself when
    // it starts). The publisher is told too: a stolen copy of the primary publishes
    // under the same device id, and the real primary must hear of it.
    let mut not_told = removed.clone();
    not_told.extend(new.first().copied());
    notify_directory(&state, &caller.username, &not_told).await;
    remove_devices(&state, &caller.username, &removed).await?;
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

/// Deletes `removed` devices of `username` (tokens, mailboxes, memberships) and wakes
/// their WebSockets so that they notice they are gone.
async fn remove_devices(
    state: &AppState,
    username: &Username,
    removed: &[DeviceId],
) -> Result<(), ApiError> {
    for id in removed {
        match state.store().remove_device(username, *id).await {
            Ok(()) | Err(StoreError::UnknownDevice) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let wakes: Vec<(DeviceId, Wake)> = removed.iter().map(|&id| (id, Wake::Reread)).collect();
    state.fanout().notify_many(&wakes).await;
    Ok(())
}

/// Restores an account on a new device with its recovery key: the list must be
/// certified by the account's root under a new account-key generation and name only
/// the new device. Every other device of the account is removed and loses its token.
/// No bearer token: the root's signature is the authority.
#[utoipa::path(
    post, path = paths::RECOVER.template, tag = "accounts",
    params(("username" = String, Path, description = "The account name")),
    request_body = RecoverRequest,
    responses(
        (status = 201, description = "Recovered; the new device's token is shown only now", body = RegisterResponse),
        (status = 400, description = "bad_request", body = ErrorBody), (status = 403, description = "Not certified by the account's root, or no new account-key generation (forbidden)", body = ErrorBody), (status = 404, description = "unknown_user", body = ErrorBody), (status = 409, description = "version_not_increasing or device_exists", body = ErrorBody), (status = 413, description = "too_large", body = ErrorBody)
    )
)]
pub async fn recover(
    State(state): State<AppState>,
    ApiPath(username): ApiPath<Username>,
    ApiJson(req): ApiJson<RecoverRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let list = req.device_list;
    let account = state
        .store()
        .account(&username)
        .await?
        .ok_or(ApiError::UnknownUser)?;
    let stored = check_new_list(&list, &account)?;
    if list.account().generation() <= stored.account().generation() {
        return Err(ApiError::Forbidden(
            "a recovery must certify a new account key (a higher generation)".into(),
        ));
    }
    let [cert] = list.devices() else {
        return Err(ApiError::bad_request(
            "a recovered account's device list must hold exactly one device: the new one",
        ));
    };
    let device_id = cert.device_id();
    if account.devices.iter().any(|d| d.device_id == device_id) {
        return Err(ApiError::DeviceExists);
    }
    let (token, token_hash) = new_token()?;
    state
        .store()
        .publish_device_list(
            &username,
            list.to_bytes(),
            list.version(),
            Some(NewDevice {
                device_id,
                token_hash,
                certificate_bytes: cert.to_bytes(),
            }),
            state.clock().now(),
        )
        .await?;
    let removed: Vec<DeviceId> = account.devices.iter().map(|d| d.device_id).collect();
    // The old devices' conversation peers learn of the new list before the old
    // devices' memberships go with them.
    notify_directory(&state, &username, &[device_id]).await;
    remove_devices(&state, &username, &removed).await?;
    tracing::info!(
        device = %device_id,
        removed = removed.len(),
        "account recovered on a new device"
    );
    Ok((
        StatusCode::CREATED,
        Json(RegisterResponse {
            username,
            device_id,
            token,
        }),
    ))
}

/// How far a recovery look-up's time may be from the server's clock.
const RECOVERY_LOOKUP_WINDOW_SECS: u64 = 300;

/// An account's directory entry for whoever proves to hold its root (a device about
/// to recover the account, which has no token).
#[utoipa::path(
    post, path = paths::RECOVERY_LOOKUP.template, tag = "accounts",
    params(("username" = String, Path, description = "The account name")),
    request_body = RecoveryLookupRequest,
    responses(
        (status = 200, description = "Identity key and signed device list", body = AccountResponse),
        (status = 400, description = "bad_request", body = ErrorBody), (status = 403, description = "Not signed by the account's root, or too old (forbidden)", body = ErrorBody), (status = 404, description = "unknown_user", body = ErrorBody), (status = 413, description = "too_large", body = ErrorBody)
    )
)]
pub async fn recovery_lookup(
    State(state): State<AppState>,
    ApiPath(username): ApiPath<Username>,
    ApiJson(req): ApiJson<RecoveryLookupRequest>,
) -> Result<Json<AccountResponse>, ApiError> {
    let signature: [u8; 64] = req
        .signature
        .0
        .as_slice()
        .try_into()
        .map_err(|_| ApiError::bad_request("a signature is 64 bytes"))?;
    let account = state
        .store()
        .account(&username)
        .await?
        .ok_or(ApiError::UnknownUser)?;
    if state.clock().now().abs_diff(req.at) > RECOVERY_LOOKUP_WINDOW_SECS {
        return Err(ApiError::Forbidden(
            "the recovery look-up is too old or from the future: check this device's clock".into(),
        ));
    }
    let message = sotto_proto::recovery_lookup_message(&username, req.at);
    if !account
        .identity_key
        .verify(&message, &signature)
        .unwrap_or(false)
    {
        return Err(ApiError::Forbidden(
            "the recovery look-up is not signed by the account's recovery key".into(),
        ));
    }
    Ok(Json(AccountResponse {
        username: account.username,
        identity_key: account.identity_key,
        device_list: B64(account.device_list_bytes),
    }))
}

/// Replaces the caller's bearer token; the one the request was made with stops working.
#[utoipa::path(
    post, path = paths::ROTATE_TOKEN.template, tag = "accounts", security(("bearer" = [])),
    responses(
        (status = 200, description = "The new token, shown only now", body = TokenResponse),
        (status = 401, description = "unauthorized", body = ErrorBody)
    )
)]
pub async fn rotate_token(
    State(state): State<AppState>,
    caller: Authed,
) -> Result<Json<TokenResponse>, ApiError> {
    let (token, token_hash) = new_token()?;
    state
        .store()
        .rotate_token(caller.device, token_hash)
        .await?;
    tracing::debug!(device = %caller.device, "token rotated");
    Ok(Json(TokenResponse { token }))
}
