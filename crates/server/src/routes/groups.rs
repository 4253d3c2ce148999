//! Groups: creation, membership view, commit ordering and message delivery.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use sotto_api::{
    CommitRequest, CommitResponse, CreateGroupRequest, CreateGroupResponse, ErrorBody,
    GroupResponse, MessageRequest, MessageResponse, paths,
};
use sotto_proto::framing::{ContentType, MlsFraming, WireFormat, parse_group_message, wire_format};
use sotto_proto::{ConversationId, DeviceId};
use sotto_server_store::{Accepted, CommitSubmission, EntryKind, MessageSubmission};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, Authed};
use crate::handoff::Ready;
use crate::metrics::WriteKind;
use sotto_server_fanout::Wake;

/// Creates a group whose only member is the caller's device, at epoch 0.
#[utoipa::path(
    post, path = paths::CREATE_GROUP.template, tag = "groups", security(("bearer" = [])),
    request_body = CreateGroupRequest,
    responses(
        (status = 201, description = "Created at epoch 0 with the caller's device", body = CreateGroupResponse),
        (status = 400, description = "bad_request", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 409, description = "group_exists", body = ErrorBody), (status = 413, description = "too_large", body = ErrorBody)
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Authed,
    ApiJson(req): ApiJson<CreateGroupRequest>,
) -> Result<impl IntoResponse, ApiError> {
    state
        .store()
        .create_group(req.group_id, caller.device, Vec::new())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreateGroupResponse {
            group_id: req.group_id,
            epoch: 0,
        }),
    ))
}

/// The group's epoch and member devices (members only).
#[utoipa::path(
    get, path = paths::GROUP.template, tag = "groups", security(("bearer" = [])),
    params(("id" = String, Path, description = "Group id, 32 hex digits")),
    responses(
        (status = 200, description = "Epoch and member devices", body = GroupResponse),
        (status = 400, description = "bad_request", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "not_a_member", body = ErrorBody), (status = 404, description = "unknown_group", body = ErrorBody)
    )
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Authed,
    ApiPath(id): ApiPath<ConversationId>,
) -> Result<Json<GroupResponse>, ApiError> {
    let group = state
        .store()
        .group(id)
        .await?
        .ok_or(ApiError::UnknownGroup)?;
    if !group.members.contains(&caller.device) {
        return Err(ApiError::NotAMember);
    }
    Ok(Json(GroupResponse {
        epoch: group.epoch,
        members: group.members,
    }))
}

/// Reads the framing of a group message and checks it belongs to `group`.
fn framing_for(bytes: &[u8], group: ConversationId, what: &str) -> Result<MlsFraming, ApiError> {
    let framing = parse_group_message(bytes)
        .map_err(|e| ApiError::bad_request(format!("{what} is not an MLS group message: {e}")))?;
    if framing.group_id != group.as_bytes() {
        return Err(ApiError::bad_request(format!(
            "{what} belongs to another group than the one in the path"
        )));
    }
    Ok(framing)
}

/// Wakes every device the store delivered to (once each, with its highest new seq).
/// Returns once the wake-ups survive this node's crash: the sender is answered after.
async fn notify_delivered(state: &AppState, accepted: &Accepted) {
    let mut newest: BTreeMap<DeviceId, u64> = BTreeMap::new();
    for &(device, seq) in &accepted.delivered {
        let top = newest.entry(device).or_default();
        *top = (*top).max(seq);
    }
    let wakes: Vec<(DeviceId, Wake)> = newest
        .into_iter()
        .map(|(device, seq)| (device, Wake::UpTo(seq)))
        .collect();
    state.fanout().notify_many(&wakes).await;
}

/// Orders a commit: accepted only for the group's current epoch, once.
#[utoipa::path(
    post, path = paths::COMMIT.template, tag = "groups", security(("bearer" = [])),
    params(("id" = String, Path, description = "Group id, 32 hex digits")),
    request_body = CommitRequest,
    responses(
        (status = 200, description = "Accepted atomically; the group's new epoch", body = CommitResponse),
        (status = 400, description = "bad_request", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "not_a_member", body = ErrorBody), (status = 404, description = "unknown_group or not_found", body = ErrorBody), (status = 409, description = "stale_epoch (with current_epoch)", body = ErrorBody), (status = 413, description = "too_large", body = ErrorBody)
    )
)]
pub async fn commit(
    State(state): State<AppState>,
    caller: Authed,
    ApiPath(id): ApiPath<ConversationId>,
    ApiJson(req): ApiJson<CommitRequest>,
) -> Result<Json<CommitResponse>, ApiError> {
    let framing = framing_for(&req.commit.0, id, "the commit")?;
    if framing.epoch != req.epoch {
        return Err(ApiError::bad_request(format!(
            "the commit's framing says epoch {}, the request says {}",
            framing.epoch, req.epoch
        )));
    }
    if framing.content_type != ContentType::Commit {
        return Err(ApiError::bad_request(
            "the commit's content type is not Commit",
        ));
    }
    match (&req.welcome, req.added.is_empty()) {
        (None, false) => {
            return Err(ApiError::bad_request(
                "a commit that adds devices needs a welcome",
            ));
        }
        (Some(_), true) => {
            return Err(ApiError::bad_request(
                "a welcome needs at least one added device",
            ));
        }
        (Some(w), false) if !matches!(wire_format(&w.0), Ok(WireFormat::Welcome)) => {
            return Err(ApiError::bad_request("the welcome is not an MLS Welcome"));
        }
        _ => {}
    }
    let accepted = state
        .store()
        .submit_commit(
            CommitSubmission {
                group: id,
                sender: caller.device,
                epoch: req.epoch,
                added: req.added,
                removed: req.removed,
                commit: req.commit.0,
                welcome: req.welcome.map(|w| w.0),
            },
            state.clock().now(),
        )
        .await?;
    state
        .metrics()
        .accepted(WriteKind::Commit, false, accepted.delivered.len());
    notify_delivered(&state, &accepted).await;
    tracing::debug!(group = %id, epoch = accepted.epoch, "commit accepted");
    Ok(Json(CommitResponse {
        epoch: accepted.epoch,
    }))
}

/// Delivers an application message to every other member device.
#[utoipa::path(
    post, path = paths::MESSAGE.template, tag = "groups", security(("bearer" = [])),
    params(("id" = String, Path, description = "Group id, 32 hex digits")),
    request_body = MessageRequest,
    responses(
        (status = 202, description = "Durable and fanned out (or a duplicate of an earlier send)", body = MessageResponse),
        (status = 400, description = "bad_request", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "not_a_member", body = ErrorBody), (status = 404, description = "unknown_group", body = ErrorBody), (status = 409, description = "stale_epoch", body = ErrorBody), (status = 413, description = "too_large", body = ErrorBody)
    )
)]
pub async fn message(
    State(state): State<AppState>,
    caller: Authed,
    ApiPath(id): ApiPath<ConversationId>,
    ApiJson(req): ApiJson<MessageRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let framing = framing_for(&req.body.0, id, "the message")?;
    if framing.wire_format != WireFormat::PrivateMessage {
        return Err(ApiError::bad_request(
            "an application message must be an MLS PrivateMessage",
        ));
    }
    // Application messages, and proposals (a member leaving proposes its own
    // removal; another member commits it). Commits go to /commits.
    if !matches!(
        framing.content_type,
        ContentType::Application | ContentType::Proposal
    ) {
        return Err(ApiError::bad_request(
            "the message's content type is not Application or Proposal (commits go to /commits)",
        ));
    }
    // Encoded once for every recipient's socket on this node.
    let body_b64: Arc<str> = Arc::from(sotto_proto::b64::encode(&req.body.0));
    let now = state.clock().now();
    let accepted = state
        .store()
        .submit_message(
            MessageSubmission {
                group: id,
                sender: caller.device,
                epoch: framing.epoch,
                client_message_id: req.message_id,
                body: req.body.0,
            },
            now,
        )
        .await?;
    state.metrics().accepted(
        WriteKind::Message,
        accepted.duplicate,
        accepted.delivered.len(),
    );
    state.hand_off(accepted.delivered.iter().map(|&(device, seq)| {
        let ready = Ready {
            seq,
            kind: EntryKind::Message,
            group: id,
            body_b64: Arc::clone(&body_b64),
            received_at: now,
        };
        (device, ready)
    }));
    notify_delivered(&state, &accepted).await;
    Ok((
        StatusCode::ACCEPTED,
        Json(MessageResponse {
            duplicate: accepted.duplicate,
        }),
    ))
}
