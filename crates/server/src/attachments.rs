//! Attachment blobs: opaque, client-encrypted bytes kept as files in the blob
//! directory and fetched by a random id.
//!
//! The client encrypts a file with a fresh key and puts the blob id, key and digest in
//! an MLS message; the server only ever sees ciphertext. Uploads are streamed to a
//! temporary file (never held whole in memory), synced, then renamed into place, so a
//! blob id is only handed out for a complete, durable blob. A blob's modification time
//! is set to the server clock's upload time and drives expiry after the retention.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::AppState;
use sotto_api::ErrorBody;

use crate::error::ApiError;
use crate::extract::{ApiPath, Authed};

/// Where uploads are written before they are complete.
const TMP_DIR: &str = "tmp";
/// Unfinished uploads older than this (by the file system's clock) are debris from a
/// crash and are deleted by [`expire`].
const TMP_MAX_AGE: Duration = Duration::from_secs(86_400);
/// Download chunk size.
const CHUNK: usize = 64 * 1024;

/// A blob id: 128 random bits as 32 lowercase hex digits.
fn new_id() -> Result<String, ApiError> {
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw)
        .map_err(|e| ApiError::Internal(format!("the system RNG failed: {e}")))?;
    Ok(sotto_proto::ids::to_hex(&raw))
}

fn is_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn blob_dir(state: &AppState) -> Result<&Path, ApiError> {
    state
        .config()
        .blob_dir
        .as_deref()
        .ok_or(ApiError::AttachmentsDisabled)
}

fn io_error(what: &str, e: &io::Error) -> ApiError {
    ApiError::Internal(format!("attachments: {what}: {e}"))
}

/// Streams the body into a new blob. 413 `too_large` past the configured limit
/// (announced by `Content-Length` or discovered while reading).
#[utoipa::path(
    post, path = sotto_api::paths::UPLOAD_ATTACHMENT.template, tag = "attachments", security(("bearer" = [])),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The client-encrypted blob, streamed"),
    responses(
        (status = 201, description = "Durable; its id", body = sotto_api::UploadAttachmentResponse),
        (status = 401, description = "unauthorized", body = ErrorBody), (status = 413, description = "too_large", body = ErrorBody), (status = 503, description = "attachments_disabled", body = ErrorBody)
    )
)]
pub async fn upload(
    State(state): State<AppState>,
    _caller: Authed,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<sotto_api::UploadAttachmentResponse>), ApiError> {
    let dir = blob_dir(&state)?.to_path_buf();
    let limit = state.config().max_attachment_bytes;
    let announced = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit) {
        return Err(ApiError::TooLarge);
    }
    let id = new_id()?;
    let tmp_dir = dir.join(TMP_DIR);
    tokio::fs::create_dir_all(&tmp_dir)
        .await
        .map_err(|e| io_error("cannot create the blob directory", &e))?;
    let tmp = tmp_dir.join(&id);
    let written = match write_body(&tmp, body, limit).await {
        Ok(n) => n,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
    };
    let stamped = UNIX_EPOCH + Duration::from_secs(state.clock().now());
    let finished = finish(tmp.clone(), dir.join(&id), dir, stamped).await;
    if let Err(e) = finished {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(io_error("cannot store the blob", &e));
    }
    state.metrics().attachment_uploaded(written);
    Ok((
        StatusCode::CREATED,
        Json(sotto_api::UploadAttachmentResponse { id, size: written }),
    ))
}

/// Copies the body to `path` chunk by chunk, refusing to go past `limit` bytes.
async fn write_body(path: &Path, body: Body, limit: u64) -> Result<u64, ApiError> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| io_error("cannot create a blob file", &e))?;
    let mut stream = body.into_data_stream();
    let mut written: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::bad_request("the upload was interrupted"))?;
        written += chunk.len() as u64;
        if written > limit {
            return Err(ApiError::TooLarge);
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| io_error("cannot write a blob", &e))?;
    }
    file.flush()
        .await
        .map_err(|e| io_error("cannot write a blob", &e))?;
    Ok(written)
}

/// Makes the upload durable and visible: sync the data, stamp the upload time, rename
/// into place, sync the directory.
async fn finish(tmp: PathBuf, dest: PathBuf, dir: PathBuf, stamped: SystemTime) -> io::Result<()> {
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new().write(true).open(&tmp)?;
        file.set_modified(stamped)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &dest)?;
        std::fs::File::open(&dir)?.sync_all()
    })
    .await
    .map_err(io::Error::other)?
}

/// When the blob at `path` was uploaded, by the server clock (Unix seconds).
fn uploaded_at(meta: &std::fs::Metadata) -> Option<u64> {
    meta.modified()
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

fn expired(uploaded: u64, now: u64, retention_secs: u64) -> bool {
    uploaded.saturating_add(retention_secs) <= now
}

/// `GET /v1/attachments/{id}`: streams the blob.
#[utoipa::path(
    get, path = sotto_api::paths::DOWNLOAD_ATTACHMENT.template, tag = "attachments", security(("bearer" = [])),
    params(("id" = String, Path, description = "Blob id, 32 hex digits")),
    responses(
        (status = 200, description = "The blob, streamed", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "bad_request", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 404, description = "not_found", body = ErrorBody), (status = 503, description = "attachments_disabled", body = ErrorBody)
    )
)]
pub async fn download(
    State(state): State<AppState>,
    _caller: Authed,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let dir = blob_dir(&state)?;
    if !is_id(&id) {
        return Err(ApiError::bad_request(
            "an attachment id is 32 lowercase hex digits",
        ));
    }
    let gone = || ApiError::NotFound("no attachment has this id (it may have expired)".into());
    let file = match tokio::fs::File::open(dir.join(&id)).await {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(gone()),
        Err(e) => return Err(io_error("cannot open a blob", &e)),
    };
    let meta = file
        .metadata()
        .await
        .map_err(|e| io_error("cannot read a blob's metadata", &e))?;
    // Past retention but not swept yet: as good as gone.
    let now = state.clock().now();
    if uploaded_at(&meta).is_none_or(|t| expired(t, now, state.config().retention_secs)) {
        return Err(gone());
    }
    state.metrics().attachment_downloaded();
    let chunks = futures_util::stream::try_unfold(file, |mut file| async move {
        let mut buf = vec![0u8; CHUNK];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok::<_, io::Error>(None);
        }
        buf.truncate(n);
        Ok(Some((Bytes::from(buf), file)))
    });
    Ok((
        [
            (CONTENT_TYPE, "application/octet-stream".to_owned()),
            (CONTENT_LENGTH, meta.len().to_string()),
        ],
        Body::from_stream(chunks),
    )
        .into_response())
}

/// Deletes blobs uploaded more than `retention_secs` before `now`, and unfinished
/// uploads left by a crash. Returns how many blobs were deleted.
pub async fn expire(dir: PathBuf, now: u64, retention_secs: u64) -> io::Result<u64> {
    tokio::task::spawn_blocking(move || {
        let mut deleted = 0;
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str().filter(|n| is_id(n)) else {
                continue;
            };
            let meta = entry.metadata()?;
            if meta.is_file() && uploaded_at(&meta).is_none_or(|t| expired(t, now, retention_secs))
            {
                match std::fs::remove_file(dir.join(name)) {
                    Ok(()) => deleted += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        sweep_tmp(&dir.join(TMP_DIR))?;
        Ok(deleted)
    })
    .await
    .map_err(io::Error::other)?
}

/// Deletes unfinished uploads older than [`TMP_MAX_AGE`] by the file system's clock
/// (these files carry real write times, not the server clock's).
fn sweep_tmp(tmp: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(tmp) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let now = SystemTime::now();
    for entry in entries {
        let entry = entry?;
        let stale = entry
            .metadata()?
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > TMP_MAX_AGE);
        if stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}
