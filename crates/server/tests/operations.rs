//! Attachments (streamed blobs, limits, expiry) and `/metrics`, through `app()`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use common::harness::{Harness, assert_error};
use common::{group, message_id};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sotto_server::{ServerConfig, expire_loop};
use sotto_server_store::MemoryStore;
use tower::ServiceExt;

const DAY: u64 = 86_400;

/// A harness whose blobs live in a temporary directory, with a small size limit.
fn with_blobs(limit: u64) -> (Harness, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs");
    let config = ServerConfig {
        blob_dir: Some(blobs.clone()),
        max_attachment_bytes: limit,
        retention_secs: 30 * DAY,
        ..ServerConfig::default()
    };
    let h = Harness::with_config(Arc::new(MemoryStore::new()), config, Some(dir));
    (h, blobs)
}

fn upload_req(token: Option<&str>, body: Body) -> Request<Body> {
    let mut req =
        Request::post("/v1/attachments").header(header::CONTENT_TYPE, "application/octet-stream");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    req.body(body).unwrap()
}

fn download_req(token: Option<&str>, id: &str) -> Request<Body> {
    let mut req = Request::get(format!("/v1/attachments/{id}"));
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    req.body(Body::empty()).unwrap()
}

/// Status, Content-Length header and body of a download.
async fn download(h: &Harness, token: &str, id: &str) -> (StatusCode, Option<String>, Vec<u8>) {
    let resp = h
        .app
        .clone()
        .oneshot(download_req(Some(token), id))
        .await
        .unwrap();
    let status = resp.status();
    let length = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, length, body)
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(bytes)))
}

/// Blob-ish bytes: not all equal, so a truncated or shuffled copy is caught.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test]
async fn attachments_round_trip_byte_exact_for_authenticated_devices_only() {
    let (h, blobs) = with_blobs(4 * 1024 * 1024);
    let alice = h.register("alice", 1, 1).await;
    let bob = h.register("bob", 2, 2).await;

    for len in [0usize, 1, 70_000, 3 * 1024 * 1024] {
        let data = pattern(len);
        // Streamed in uneven chunks, without a Content-Length.
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            data.chunks(7_919).map(|c| Ok(c.to_vec())).collect();
        let body = Body::from_stream(futures_util::stream::iter(chunks));
        let (status, bytes) = h.send(upload_req(Some(&alice.token), body)).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        let answer = json_of(&bytes);
        assert_eq!(answer["size"], len);
        let id = answer["id"].as_str().unwrap().to_owned();
        assert_eq!(id.len(), 32);
        assert!(
            blobs.join(&id).is_file(),
            "the blob is a file under blob_dir"
        );

        // Another account's device fetches it (the key travels in the MLS message).
        let resp = download(&h, &bob.token, &id).await;
        assert_eq!(resp.0, StatusCode::OK);
        assert_eq!(resp.1.as_deref(), Some(len.to_string().as_str()));
        assert!(resp.2 == data, "downloaded bytes differ (len {len})");
    }

    // Nothing left half-written.
    let leftovers: Vec<_> = std::fs::read_dir(blobs.join("tmp")).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Without a token: 401 both ways.
    let (status, bytes) = h.send(upload_req(None, Body::from("x"))).await;
    assert_error(
        status,
        &json_of(&bytes),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let (status, bytes) = h.send(download_req(None, &"0".repeat(32))).await;
    assert_error(
        status,
        &json_of(&bytes),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );

    // Unknown and malformed ids.
    let (status, bytes) = h
        .send(download_req(Some(&bob.token), &"ab".repeat(16)))
        .await;
    assert_error(status, &json_of(&bytes), StatusCode::NOT_FOUND, "not_found");
    for bad in ["..%2Fsotto.db", "ABABABABABABABABABABABABABABABAB", "tmp"] {
        let (status, bytes) = h.send(download_req(Some(&bob.token), bad)).await;
        assert_error(
            status,
            &json_of(&bytes),
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
    }
}

#[tokio::test]
async fn oversize_attachments_are_refused_and_leave_nothing_behind() {
    let (h, blobs) = with_blobs(10_000);
    let alice = h.register("alice", 1, 1).await;

    // Announced too large: refused before reading.
    let req = Request::post("/v1/attachments")
        .header(header::AUTHORIZATION, format!("Bearer {}", alice.token))
        .header(header::CONTENT_LENGTH, "10001")
        .body(Body::from(vec![0u8; 10_001]))
        .unwrap();
    let (status, bytes) = h.send(req).await;
    assert_error(
        status,
        &json_of(&bytes),
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    );

    // Streamed without a length: refused once the limit is crossed.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..11).map(|_| Ok(vec![7u8; 1_000])).collect();
    let body = Body::from_stream(futures_util::stream::iter(chunks));
    let (status, bytes) = h.send(upload_req(Some(&alice.token), body)).await;
    assert_error(
        status,
        &json_of(&bytes),
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    );

    // Exactly the limit is fine.
    let (status, _) = h
        .send(upload_req(
            Some(&alice.token),
            Body::from(vec![1u8; 10_000]),
        ))
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let files: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "tmp")
        .collect();
    assert_eq!(files.len(), 1, "only the accepted blob is kept: {files:?}");
    assert_eq!(std::fs::read_dir(blobs.join("tmp")).unwrap().count(), 0);
}

#[tokio::test]
async fn a_server_without_a_blob_directory_says_attachments_are_disabled() {
    let h = Harness::new();
    let alice = h.register("alice", 1, 1).await;
    let (status, bytes) = h
        .send(upload_req(Some(&alice.token), Body::from("x")))
        .await;
    assert_error(
        status,
        &json_of(&bytes),
        StatusCode::SERVICE_UNAVAILABLE,
        "attachments_disabled",
    );
}

/// On tokio's paused clock, with the expiry loop at its production interval.
#[tokio::test(start_paused = true)]
async fn attachments_expire_after_the_retention() {
    let (h, blobs) = with_blobs(1024);
    let alice = h.register("alice", 1, 1).await;
    let upload = |data: &'static [u8]| {
        let h = &h;
        let token = alice.token.clone();
        async move {
            let (status, bytes) = h.send(upload_req(Some(&token), Body::from(data))).await;
            assert_eq!(status, StatusCode::CREATED);
            json_of(&bytes)["id"].as_str().unwrap().to_owned()
        }
    };
    let old = upload(b"old blob").await;
    h.clock.advance(10 * DAY);
    let young = upload(b"young blob").await;

    // 30 days after the first upload: the old blob is past retention. Even before the
    // sweep it is no longer served.
    h.clock.advance(20 * DAY);
    let (status, _) = h.send(download_req(Some(&alice.token), &old)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(blobs.join(&old).exists(), "not swept yet");

    // A sweep of the expiry loop deletes the file; the young one stays. Each turn
    // waits one interval of virtual time.
    let every = std::time::Duration::from_secs(60);
    let task = tokio::spawn(expire_loop(h.state.clone(), every));
    let mut sweeps = 0;
    while blobs.join(&old).exists() {
        tokio::time::sleep(every).await;
        sweeps += 1;
        assert!(sweeps <= 3, "the expired blob was not swept");
    }
    h.state.begin_shutdown();
    task.await.unwrap();
    assert!(!blobs.join(&old).exists(), "the expired blob is deleted");
    assert!(blobs.join(&young).exists(), "the young blob is kept");
    let (status, _) = h.send(download_req(Some(&alice.token), &young)).await;
    assert_eq!(status, StatusCode::OK);
}

/// The value of the first sample line starting with `series ` (exact series text).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_count_what_happened_without_naming_anyone() {
    let h = Harness::sqlite();
    let g = group(5);
    let (alice, bob) = h.alice_and_bob_in_group(g).await;
    for id in 1..=3 {
        let (status, body) = h.send_message(&alice, g, 1, id).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    // A retry of message 3 is a duplicate, not a new message.
    let (status, body) = h.send_message(&alice, g, 1, 3).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["duplicate"], true);
    let entries = h.mailbox(&bob).await;
    assert_eq!(entries.len(), 4, "welcome + 3 messages");
    let (status, body) = h
        .call(
            Method::POST,
            "/v1/mailbox/ack",
            Some(&bob.token),
            Some(json!({"up_to": entries[3]["seq"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = h
        .call(
            Method::GET,
            "/v1/accounts/nobody-here",
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, bytes) = h
        .send(Request::get("/metrics").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(bytes).unwrap();

    assert_eq!(
        sample(&text, "sotto_messages_accepted_total{kind=\"message\"}"),
        3.0
    );
    assert_eq!(
        sample(&text, "sotto_messages_accepted_total{kind=\"commit\"}"),
        1.0
    );
    assert_eq!(sample(&text, "sotto_duplicate_sends_total"), 1.0);
    // The commit adding bob stored his Welcome; each message one entry for bob.
    assert_eq!(sample(&text, "sotto_mailbox_entries_stored_total"), 4.0);
    assert_eq!(
        sample(&text, "sotto_messages_delivered_total{channel=\"fetch\"}"),
        4.0
    );
    assert_eq!(sample(&text, "sotto_mailbox_entries_acked_total"), 4.0);
    assert_eq!(sample(&text, "sotto_mailbox_depth"), 0.0);
    assert_eq!(sample(&text, "sotto_accounts"), 2.0);
    assert_eq!(sample(&text, "sotto_websocket_connections"), 0.0);
    // SQLite batches its writes: the histogram counts every write request.
    assert!(sample(&text, "sotto_store_commit_batch_size_count") >= 1.0);
    assert!(sample(&text, "sotto_store_commit_batch_size_sum") >= 7.0);
    // Latency by route template: concrete paths (and so usernames, group ids) never
    // appear.
    let messages = "sotto_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/groups/{id}/messages\",status=\"202\"}";
    assert_eq!(sample(&text, messages), 4.0);
    assert_eq!(
        sample(
            &text,
            "sotto_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/accounts/{username}\",status=\"404\"}"
        ),
        1.0
    );
    for secret in [
        "alice",
        "bob",
        "nobody-here",
        &g.to_string(),
        &alice.token,
        &message_id(1).to_string(),
    ] {
        assert!(!text.contains(secret), "metrics mention {secret:?}");
    }
    // Every sample line belongs to a declared metric.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap();
        let base = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            text.contains(&format!("# TYPE {name} ")) || text.contains(&format!("# TYPE {base} ")),
            "undeclared series {line}"
        );
    }
}
