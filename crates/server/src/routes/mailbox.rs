//! Reading and acknowledging the caller's own mailbox.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use sotto_proto::ConversationId;
use sotto_server_store::{EntryKind, MailboxEntry};

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, Authed, B64};

/// Default page size of a mailbox fetch.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page size of a mailbox fetch.
pub const MAX_LIMIT: u32 = 500;

/// The wire name of an entry kind.
pub fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Commit => "commit",
        EntryKind::Welcome => "welcome",
        _ => "message",
    }
}

/// One mailbox entry on the wire.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EntryView {
    seq: u64,
    #[schema(value_type = String)]
    kind: &'static str,
    #[schema(value_type = String)]
    group: ConversationId,
    #[schema(value_type = String)]
    body: B64,
    received_at: u64,
}

impl From<MailboxEntry> for EntryView {
    fn from(e: MailboxEntry) -> Self {
        Self {
            seq: e.seq,
            kind: kind_name(e.kind),
            group: e.group,
            body: B64(e.body),
            received_at: e.received_at,
        }
    }
}

/// `GET /v1/mailbox` query.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct FetchQuery {
    #[serde(default)]
    after: u64,
    limit: Option<u32>,
}

/// `GET /v1/mailbox` answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FetchResponse {
    entries: Vec<EntryView>,
}

/// The caller's entries after `after`, in seq order.
#[utoipa::path(
    get, path = "/v1/mailbox", tag = "mailbox", security(("bearer" = [])),
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
        entries: entries.into_iter().map(EntryView::from).collect(),
    }))
}

/// `POST /v1/mailbox/ack` body.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct AckRequest {
    up_to: u64,
}

/// `POST /v1/mailbox/ack` answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AckResponse {
    deleted: u64,
}

/// Deletes the caller's entries up to `up_to`.
#[utoipa::path(
    post, path = "/v1/mailbox/ack", tag = "mailbox", security(("bearer" = [])),
    request_body = AckRequest,
    responses(
        (status = 200, description = "Entries up to up_to deleted", body = AckResponse),
        (status = 400, description = "bad_request", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody)
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
