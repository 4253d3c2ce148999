//! The device-link relay: single-use, short-lived slots of opaque (encrypted) bytes.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::AppState;
use sotto_api::ErrorBody;

use crate::error::ApiError;
use crate::extract::{ApiPath, body_bytes};

/// Parses a slot id: exactly 32 hex characters.
fn slot_id(text: &str) -> Result<[u8; 16], ApiError> {
    let bad = || ApiError::bad_request("a link slot id is 32 hexadecimal characters");
    if text.len() != 32 {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    for (i, pair) in text.as_bytes().chunks_exact(2).enumerate() {
        let hi = char::from(pair[0]).to_digit(16).ok_or_else(bad)?;
        let lo = char::from(pair[1]).to_digit(16).ok_or_else(bad)?;
        out[i] = u8::try_from(hi * 16 + lo).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Stores a payload in a free slot until the slot's TTL.
#[utoipa::path(
    put, path = sotto_api::paths::PUT_LINK.template, tag = "link",
    params(("slot" = String, Path, description = "Slot id, 32 hex digits")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "Opaque (client-encrypted) payload"),
    responses(
        (status = 201, description = "Stored until taken or expired"),
        (status = 400, description = "bad_request", body = ErrorBody), (status = 409, description = "slot_in_use", body = ErrorBody), (status = 413, description = "too_large", body = ErrorBody)
    )
)]
pub async fn put_slot(
    State(state): State<AppState>,
    ApiPath(slot): ApiPath<String>,
    req: Request,
) -> Result<impl IntoResponse, ApiError> {
    let slot = slot_id(&slot)?;
    let payload = body_bytes(req, &state).await?;
    if payload.is_empty() {
        return Err(ApiError::bad_request("a link payload may not be empty"));
    }
    if payload.len() > state.config().max_link_payload {
        return Err(ApiError::TooLarge);
    }
    let expires_at = state
        .clock()
        .now()
        .saturating_add(state.config().link_slot_ttl_secs);
    state
        .store()
        .put_link_slot(slot, payload.to_vec(), expires_at)
        .await?;
    Ok(StatusCode::CREATED)
}

/// Takes a slot's payload (once).
#[utoipa::path(
    get, path = sotto_api::paths::TAKE_LINK.template, tag = "link",
    params(("slot" = String, Path, description = "Slot id, 32 hex digits")),
    responses(
        (status = 200, description = "The payload; the slot is deleted", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "bad_request", body = ErrorBody), (status = 404, description = "not_found", body = ErrorBody)
    )
)]
pub async fn take_slot(
    State(state): State<AppState>,
    ApiPath(slot): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let slot = slot_id(&slot)?;
    let payload = state
        .store()
        .take_link_slot(slot, state.clock().now())
        .await?
        .ok_or_else(|| ApiError::NotFound("no such link slot (or it expired)".into()))?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        payload,
    ))
}
