//! Reading and acknowledging the caller's own mailbox.

use axum::Json;
use axum::extract::State;
use sotto_api::{AckRequest, AckResponse, B64, Entry, ErrorBody, FetchQuery, FetchResponse, paths};
use sotto_server_store::{EntryKind, MailboxEntry};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, Authed};

/// Default page size of a mailbox fetch.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page size of a mailbox fetch.
pub const MAX_LIMIT: u32 = 500;

/// The wire kind of a stored entry.
pub fn wire_kind(kind: EntryKind) -> sotto_api::EntryKind {
    match kind {
        EntryKind::Commit => sotto_api::EntryKind::Commit,
        EntryKind::Welcome => sotto_api::EntryKind::Welcome,
        EntryKind::Directory => sotto_api::EntryKind::Directory,
        _ => sotto_api::EntryKind::Message,
    }
}

/// A stored entry as it travels.
fn entry(e: MailboxEntry) -> Entry {
    Entry {
        seq: e.seq,
        kind: wire_kind(e.kind),
        group: e.group,
        body: B64(e.body),
        received_at: e.received_at,
    }
}

/// The caller's entries after `after`, in seq order.
#[utoipa::path(
    get, path = paths::FETCH.template, tag = "mailbox", security(("bearer" = [])),
    params(
        ("after" = Option<u64>, Query, description = "Return entries with a greater seq (default 0)"),
        ("limit" = Option<u32>, Query, description = "At most this many (default 100, max 500)")
    ),
    responses(
        (status = 200, description = "Entries in seq order", body = FetchResponse),
        (status = 400, description = "bad_request", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody)
    )
)]
pub async fn fetch(
    State(state): State<AppState>,
    caller: Authed,
    ApiQuery(q): ApiQuery<FetchQuery>,
) -> Result<Json<FetchResponse>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let entries = state.store().fetch(caller.device, q.after, limit).await?;
    state.metrics().fetched(entries.len() as u64);
    Ok(Json(FetchResponse {
        entries: entries.into_iter().map(entry).collect(),
    }))
}

/// Deletes the caller's entries up to `up_to`.
#[utoipa::path(
    post, path = paths::ACK.template, tag = "mailbox", security(("bearer" = [])),
    request_body = AckRequest,
    responses(
        (status = 200, description = "Entries up to up_to deleted", body = AckResponse),
        (status = 400, description = "bad_request", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 413, description = "too_large", body = ErrorBody)
    )
)]
pub async fn ack(
    State(state): State<AppState>,
    caller: Authed,
    ApiJson(req): ApiJson<AckRequest>,
) -> Result<Json<AckResponse>, ApiError> {
    let deleted = state.store().ack(caller.device, req.up_to).await?;
    state.metrics().acked(deleted);
    Ok(Json(AckResponse { deleted }))
}
