//! The WebSocket push channel against `run()` on a real port.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Identity, app_bytes, b64, commit_bytes, dev, group, message_id, welcome_bytes};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sotto_proto::{ConversationId, DeviceId};
use sotto_server::{AppState, Fanout, InProcessFanout, ServerConfig, SystemClock, Wake, run};
use sotto_server_store::{MemoryStore, MessageSubmission, Store};
use sotto_server_store_sqlite::SqliteStore;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(30);

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<std::io::Result<()>>,
}

async fn start() -> Server {
    start_with(
        Arc::new(MemoryStore::new()),
        Arc::new(InProcessFanout::new()),
    )
    .await
}

/// A server over a store and fan-out the test can also use directly, as another node
/// would.
async fn start_with(store: Arc<dyn Store>, fanout: Arc<InProcessFanout>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = AppState::new(
        store,
        fanout,
        Arc::new(SystemClock),
        ServerConfig::default(),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(run(listener, state, async move {
        let _ = stopped.await;
    }));
    Server {
        addr,
        stop: Some(stop),
        handle,
    }
}

/// A minimal HTTP/1.1 client: one request per connection.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    // reqwest is built without a default TLS crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = reqwest::Client::new().request(method, format!("http://{addr}{path}"));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    if let Some(b) = body {
        request = request.json(&b);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, value)
}

struct Client {
    device: DeviceId,
    token: String,
}

async fn register(addr: SocketAddr, username: &str, n: u8) -> Client {
    let identity = Identity::new(username, n);
    let device = dev(n);
    let (status, body) = http(
        addr,
        "POST",
        "/v1/accounts",
        None,
        Some(json!({"username": username, "device_list": identity.list(1, &[device])})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    Client {
        device,
        token: body["token"].as_str().unwrap().to_owned(),
    }
}

/// alice creates `g` and adds bob (bob's mailbox: seq 1 = the Welcome).
async fn alice_and_bob(addr: SocketAddr, g: ConversationId) -> (Client, Client) {
    let alice = register(addr, "alice", 1).await;
    let bob = register(addr, "bob", 2).await;
    let (status, _) = http(
        addr,
        "POST",
        "/v1/groups",
        Some(&alice.token),
        Some(json!({"group_id": g})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = http(
        addr,
        "POST",
        &format!("/v1/groups/{g}/commits"),
        Some(&alice.token),
        Some(json!({
            "epoch": 0,
            "added": [bob.device],
            "commit": b64(&commit_bytes(g, 0)),
            "welcome": b64(&welcome_bytes()),
        })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    (alice, bob)
}

async fn send_message(addr: SocketAddr, from: &Client, g: ConversationId, n: u8) {
    let (status, body) = http(
        addr,
        "POST",
        &format!("/v1/groups/{g}/messages"),
        Some(&from.token),
        Some(json!({
            "message_id": message_id(n).to_string(),
            "body": b64(&app_bytes(g, 1, &[n; 4])),
        })),
    )
    .await;
    assert_eq!(status, 202, "{body}");
}

async fn connect(addr: SocketAddr, token: &str, after: u64) -> Ws {
    let mut req = format!("ws://{addr}/v1/ws?after={after}")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = connect_async(req).await.unwrap();
    ws
}

/// The next data frame (an entry), skipping pings.
async fn next_entry(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for an entry")
            .expect("socket ended")
            .expect("socket error");
        match msg {
            Message::Text(text) => {
                let v: Value = serde_json::from_str(text.as_str()).unwrap();
                assert_eq!(v["type"], "entry", "{v}");
                return v;
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected an entry, got {other:?}"),
        }
    }
}

/// The close frame the server sends next.
async fn close_frame(ws: &mut Ws) -> CloseFrame {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a close frame")
            .expect("socket ended without a close frame")
            .expect("socket error");
        match msg {
            Message::Close(Some(frame)) => return frame,
            Message::Close(None) => panic!("close without a code"),
            Message::Text(t) => panic!("expected a close frame, got {t}"),
            _ => {}
        }
    }
}

/// Nothing arrives for a while.
async fn silence(ws: &mut Ws) {
    if let Ok(msg) = tokio::time::timeout(Duration::from_millis(300), ws.next()).await {
        panic!("expected silence, got {msg:?}");
    }
}

async fn ack(ws: &mut Ws, up_to: u64) {
    ws.send(Message::text(
        json!({"type": "ack", "up_to": up_to}).to_string(),
    ))
    .await
    .unwrap();
}

/// Waits until the server has processed acks up to the end of `c`'s mailbox.
async fn mailbox_len(addr: SocketAddr, c: &Client) -> usize {
    let (status, body) = http(addr, "GET", "/v1/mailbox", Some(&c.token), None).await;
    assert_eq!(status, 200);
    body["entries"].as_array().unwrap().len()
}

async fn wait_mailbox_empty(addr: SocketAddr, c: &Client) {
    // Polls the observable state; the bound only catches an ack that never applies
    // (a loaded machine's fsyncs can take seconds).
    let deadline = tokio::time::Instant::now() + WAIT;
    while mailbox_len(addr, c).await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ack was not applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn push_ack_and_resume() {
    let server = start().await;
    let addr = server.addr;
    let g = group(1);
    let (alice, bob) = alice_and_bob(addr, g).await;

    let mut ws = connect(addr, &bob.token, 0).await;
    let welcome = next_entry(&mut ws).await;
    assert_eq!(welcome["seq"], 1);
    assert_eq!(welcome["kind"], "welcome");
    assert_eq!(welcome["group"], g.to_string());
    assert_eq!(welcome["body"], b64(&welcome_bytes()));
    assert!(welcome["received_at"].is_u64());

    send_message(addr, &alice, g, 7).await;
    let pushed = next_entry(&mut ws).await;
    assert_eq!(pushed["seq"], 2);
    assert_eq!(pushed["kind"], "message");
    assert_eq!(pushed["body"], b64(&app_bytes(g, 1, &[7; 4])));

    ack(&mut ws, 2).await;
    wait_mailbox_empty(addr, &bob).await;
    ws.close(None).await.unwrap();

    // Resume after the acked seq: nothing is redelivered, new entries still arrive.
    let mut ws = connect(addr, &bob.token, 2).await;
    silence(&mut ws).await;
    send_message(addr, &alice, g, 8).await;
    let pushed = next_entry(&mut ws).await;
    assert_eq!(pushed["seq"], 3);
    assert_eq!(pushed["body"], b64(&app_bytes(g, 1, &[8; 4])));
    // The sender's socket gets nothing.
    let mut alice_ws = connect(addr, &alice.token, 0).await;
    silence(&mut alice_ws).await;
}

/// `sotto_websocket_store_reads_total`.
async fn socket_reads(addr: SocketAddr) -> u64 {
    let (status, body) = http(addr, "GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    let text = body.as_str().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("sotto_websocket_store_reads_total "))
        .unwrap_or_else(|| panic!("no store-read counter in:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn entries_stored_here_are_handed_over_and_others_are_read_from_the_store() {
    let (store, fanout) = (
        Arc::new(MemoryStore::new()),
        Arc::new(InProcessFanout::new()),
    );
    let server = start_with(store.clone(), Arc::clone(&fanout)).await;
    let addr = server.addr;
    let g = group(9);
    let (alice, bob) = alice_and_bob(addr, g).await;
    let mut ws = connect(addr, &bob.token, 0).await;
    assert_eq!(next_entry(&mut ws).await["seq"], 1);
    // Once the ack is applied, the socket has finished its first reads.
    ack(&mut ws, 1).await;
    wait_mailbox_empty(addr, &bob).await;
    let reads = socket_reads(addr).await;

    // Sends through this node reach the socket without a mailbox read.
    for n in 0..10u8 {
        send_message(addr, &alice, g, n).await;
        let entry = next_entry(&mut ws).await;
        assert_eq!(entry["seq"], u64::from(n) + 2);
        assert_eq!(entry["body"], b64(&app_bytes(g, 1, &[n; 4])));
    }
    assert_eq!(
        socket_reads(addr).await,
        reads,
        "handed over, not read back"
    );

    // Another node stores seq 12 and wakes the device: the socket reads it.
    let elsewhere = |n: u8| MessageSubmission {
        group: g,
        sender: alice.device,
        epoch: 1,
        client_message_id: message_id(100 + n),
        body: app_bytes(g, 1, &[100 + n; 4]),
    };
    let accepted = store.submit_message(elsewhere(0), 1).await.unwrap();
    assert_eq!(accepted.delivered, vec![(bob.device, 12)]);
    fanout.notify(bob.device, Wake::UpTo(12)).await;
    let entry = next_entry(&mut ws).await;
    assert_eq!(entry["seq"], 12);
    assert_eq!(entry["body"], b64(&app_bytes(g, 1, &[100; 4])));

    // Seq 13 stored elsewhere with its wake-up not yet arrived, then 14 through this
    // node: the hand-off of 14 shows a gap, so the socket reads 13 first.
    store.submit_message(elsewhere(1), 1).await.unwrap();
    send_message(addr, &alice, g, 20).await;
    let (first, second) = (next_entry(&mut ws).await, next_entry(&mut ws).await);
    assert_eq!((&first["seq"], &second["seq"]), (&json!(13), &json!(14)));
    assert_eq!(first["body"], b64(&app_bytes(g, 1, &[101; 4])));
    assert_eq!(second["body"], b64(&app_bytes(g, 1, &[20; 4])));
    // The late wake-up for 13 sends nothing twice.
    fanout.notify(bob.device, Wake::UpTo(13)).await;
    silence(&mut ws).await;
}

#[tokio::test]
async fn acks_sent_just_before_closing_are_applied() {
    // On SQLite an ack's write takes an fsync, so acks are still being written when the
    // socket closes.
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("server.db")).unwrap();
    let server = start_with(Arc::new(store), Arc::new(InProcessFanout::new())).await;
    let addr = server.addr;
    let g = group(10);
    let (alice, bob) = alice_and_bob(addr, g).await;
    let mut ws = connect(addr, &bob.token, 0).await;
    assert_eq!(next_entry(&mut ws).await["seq"], 1);
    for n in 0..5u8 {
        send_message(addr, &alice, g, n).await;
    }
    for seq in 2..=6 {
        assert_eq!(next_entry(&mut ws).await["seq"], seq);
    }
    // Acks in a burst (they merge while one is being written), then close at once.
    for seq in 1..=6 {
        ack(&mut ws, seq).await;
    }
    ws.close(None).await.unwrap();
    drop(ws);
    wait_mailbox_empty(addr, &bob).await;
    // A new connection resumes from the start and gets nothing again.
    let mut ws = connect(addr, &bob.token, 0).await;
    silence(&mut ws).await;
}

#[tokio::test]
async fn reconnecting_without_ack_redelivers_in_order() {
    let server = start().await;
    let addr = server.addr;
    let g = group(2);
    let (alice, bob) = alice_and_bob(addr, g).await;

    let mut ws = connect(addr, &bob.token, 0).await;
    assert_eq!(next_entry(&mut ws).await["seq"], 1);
    send_message(addr, &alice, g, 1).await;
    send_message(addr, &alice, g, 2).await;
    assert_eq!(next_entry(&mut ws).await["seq"], 2);
    assert_eq!(next_entry(&mut ws).await["seq"], 3);
    drop(ws);

    // Also via ?token= (browsers cannot set headers).
    let url = format!("ws://{addr}/v1/ws?after=0&token={}", bob.token);
    let (mut ws, _) = connect_async(url).await.unwrap();
    let seqs: Vec<Value> = [
        next_entry(&mut ws).await,
        next_entry(&mut ws).await,
        next_entry(&mut ws).await,
    ]
    .into_iter()
    .map(|e| e["seq"].clone())
    .collect();
    assert_eq!(seqs, vec![json!(1), json!(2), json!(3)]);
    silence(&mut ws).await;
}

#[tokio::test]
async fn unauthenticated_upgrades_are_refused() {
    let server = start().await;
    let addr = server.addr;
    assert!(connect_async(format!("ws://{addr}/v1/ws")).await.is_err());
    assert!(
        connect_async(format!(
            "ws://{addr}/v1/ws?token=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        ))
        .await
        .is_err()
    );
    // A plain GET without an upgrade is a JSON 4xx, not a plain-text rejection.
    let bob = register(addr, "bob", 2).await;
    let (status, body) = http(addr, "GET", "/v1/ws", Some(&bob.token), None).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "bad_request");
}

#[tokio::test]
async fn a_second_socket_replaces_the_first() {
    let server = start().await;
    let addr = server.addr;
    let g = group(3);
    let (alice, bob) = alice_and_bob(addr, g).await;

    let mut alice_ws = connect(addr, &alice.token, 0).await;
    let mut first = connect(addr, &bob.token, 1).await;
    let mut second = connect(addr, &bob.token, 1).await;
    let frame = close_frame(&mut first).await;
    assert_eq!(u16::from(frame.code), 4000);
    assert_eq!(frame.reason.as_str(), "replaced by a newer connection");

    send_message(addr, &alice, g, 5).await;
    let pushed = next_entry(&mut second).await;
    assert_eq!(pushed["seq"], 2);

    // Another device's socket is untouched by bob's replacement.
    let (status, _) = http(
        addr,
        "POST",
        &format!("/v1/groups/{g}/messages"),
        Some(&bob.token),
        Some(json!({
            "message_id": message_id(6).to_string(),
            "body": b64(&app_bytes(g, 1, &[6; 4])),
        })),
    )
    .await;
    assert_eq!(status, 202);
    let pushed = next_entry(&mut alice_ws).await;
    assert_eq!(pushed["body"], b64(&app_bytes(g, 1, &[6; 4])));
}

#[tokio::test]
async fn malformed_client_frames_close_that_socket_only() {
    let server = start().await;
    let addr = server.addr;
    let g = group(4);
    let (_alice, bob) = alice_and_bob(addr, g).await;

    let mut ws = connect(addr, &bob.token, 1).await;
    ws.send(Message::Binary(Bytes::from_static(&[
        0xde, 0xad, 0xbe, 0xef, 0x00, 0xff,
    ])))
    .await
    .unwrap();
    let frame = close_frame(&mut ws).await;
    assert_eq!(u16::from(frame.code), 1003);
    assert!(!frame.reason.is_empty());

    for bad in [
        "{not json",
        r#"{"type":"ack","up_to":"x"}"#,
        r#"{"type":"subscribe"}"#,
        "\u{0}\u{1}garbage",
    ] {
        let mut ws = connect(addr, &bob.token, 1).await;
        ws.send(Message::text(bad)).await.unwrap();
        let frame = close_frame(&mut ws).await;
        assert_eq!(u16::from(frame.code), 1007, "{bad}");
        assert!(!frame.reason.is_empty());
    }

    // The server still serves new connections.
    let mut ws = connect(addr, &bob.token, 0).await;
    assert_eq!(next_entry(&mut ws).await["seq"], 1);
    let (status, body) = http(addr, "GET", "/healthz", None, None).await;
    assert_eq!((status, body), (200, json!("ok")));
}

#[tokio::test]
async fn removing_a_device_closes_its_socket() {
    let server = start().await;
    let addr = server.addr;
    let identity = Identity::new("alice", 1);
    let alice = register(addr, "alice", 1).await;
    let laptop = dev(9);
    let (status, body) = http(
        addr,
        "PUT",
        "/v1/devices",
        Some(&alice.token),
        Some(json!({"device_list": identity.list(2, &[alice.device, laptop])})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let laptop_token = body["new_device_token"].as_str().unwrap().to_owned();
    let mut ws = connect(addr, &laptop_token, 0).await;
    silence(&mut ws).await;

    let (status, body) = http(
        addr,
        "PUT",
        "/v1/devices",
        Some(&alice.token),
        Some(json!({"device_list": identity.list(3, &[alice.device])})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let frame = close_frame(&mut ws).await;
    assert_eq!(u16::from(frame.code), 4001);
    assert_eq!(frame.reason.as_str(), "device removed");
}

#[tokio::test]
async fn graceful_shutdown_closes_sockets_with_1001() {
    let mut server = start().await;
    let addr = server.addr;
    let g = group(5);
    let (_alice, bob) = alice_and_bob(addr, g).await;
    let mut ws = connect(addr, &bob.token, 0).await;
    assert_eq!(next_entry(&mut ws).await["seq"], 1);

    server.stop.take().unwrap().send(()).unwrap();
    let frame = close_frame(&mut ws).await;
    assert_eq!(u16::from(frame.code), 1001);
    assert_eq!(frame.reason.as_str(), "server shutting down");
    tokio::time::timeout(WAIT, server.handle)
        .await
        .expect("run() did not return after shutdown")
        .unwrap()
        .unwrap();
    // No longer accepting.
    assert!(TcpStream::connect(addr).await.is_err());
}
