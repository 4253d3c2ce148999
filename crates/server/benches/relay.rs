//! A simple relay load benchmark: the real server (`run()`, SQLite store with group
//! commit, `synchronous=FULL`) on 127.0.0.1, driven over real HTTP and WebSocket.
//!
//! `cargo bench -p sotto-server --bench relay` runs 1 pair and 100 pairs. Each pair is
//! a sender and a recipient in their own group. Each sender posts 200-byte application
//! messages back to back over one keep-alive HTTP connection; each recipient holds a
//! WebSocket and acks every entry. It reports messages accepted (202), delivered
//! (pushed to the recipient) and acked per second, and the send-to-receipt latency.
//! Options: `SOTTO_BENCH_SECS` (default 5), `SOTTO_BENCH_PAIRS` (e.g. "1,100").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Identity, app_bytes, b64, commit_bytes, dev, group, welcome_bytes};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sotto_proto::MessageId;
use sotto_server::{AppState, InProcessFanout, ServerConfig, SystemClock, run};
use sotto_server_store::Store;
use sotto_store_sqlite::SqliteStore;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const PAYLOAD: usize = 200;

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream: BufReader::new(stream),
        }
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> (u16, Value) {
        let body = body.to_string();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let s = self.stream.get_mut();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body.as_bytes()).await.unwrap();
        let mut line = String::new();
        self.stream.read_line(&mut line).await.unwrap();
        let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut length = 0usize;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap();
            }
        }
        let mut buf = vec![0; length];
        self.stream.read_exact(&mut buf).await.unwrap();
        (status, serde_json::from_slice(&buf).unwrap_or(Value::Null))
    }
}

struct Pair {
    sender_token: String,
    recipient_token: String,
    group: sotto_proto::ConversationId,
}

async fn setup_pair(addr: SocketAddr, i: u8) -> Pair {
    let mut c = Conn::open(addr).await;
    let mut register = async |name: String, n: u8| {
        let id = Identity::new(&name, n);
        let (status, body) = c
            .request(
                "POST",
                "/v1/accounts",
                None,
                &json!({"username": name, "device_list": id.list(1, &[dev(n)])}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["token"].as_str().unwrap().to_owned()
    };
    let (s, r) = (2 * i + 1, 2 * i + 2);
    let sender_token = register(format!("sender{i:03}"), s).await;
    let recipient_token = register(format!("recipient{i:03}"), r).await;
    let g = group(s);
    let (status, _) = c
        .request(
            "POST",
            "/v1/groups",
            Some(&sender_token),
            &json!({"group_id": g}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, body) = c
        .request(
            "POST",
            &format!("/v1/groups/{g}/commits"),
            Some(&sender_token),
            &json!({"epoch": 0, "added": [dev(r)], "commit": b64(&commit_bytes(g, 0)), "welcome": b64(&welcome_bytes())}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    Pair {
        sender_token,
        recipient_token,
        group: g,
    }
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    delivered: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
}

async fn run_pairs(pairs: u8, secs: u64) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("sotto.db")).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = AppState::new(
        store.clone(),
        Arc::new(InProcessFanout::new()),
        Arc::new(SystemClock),
        ServerConfig::default(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(listener, state, async move {
        let _ = stopped.await;
    }));

    let mut set = Vec::new();
    for i in 0..pairs {
        set.push(setup_pair(addr, i).await);
    }
    let epoch0 = Instant::now();
    let counting = Arc::new(AtomicBool::new(false));
    let running = Arc::new(AtomicBool::new(true));
    let counters = Arc::new(Counters::default());
    let latencies = Arc::new(Mutex::new(Vec::<u64>::new()));
    let mut tasks = Vec::new();

    for (i, p) in set.iter().enumerate() {
        // Recipient: WebSocket after the Welcome (seq 1), ack every entry.
        let mut req = format!("ws://{addr}/v1/ws?after=1")
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", p.recipient_token).parse().unwrap(),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let (c, l, run_flag, counting_flag) = (
            counters.clone(),
            latencies.clone(),
            running.clone(),
            counting.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while run_flag.load(Ordering::Relaxed) {
                let Ok(Some(Ok(msg))) =
                    tokio::time::timeout(Duration::from_millis(200), ws.next()).await
                else {
                    continue;
                };
                let Message::Text(text) = msg else { continue };
                let v: Value = serde_json::from_str(&text).unwrap();
                if v["type"] != "entry" {
                    continue;
                }
                let body = sotto_proto::b64::decode(v["body"].as_str().unwrap()).unwrap();
                // The tail starts with the send time in µs since the benchmark start.
                let sent = u64::from_be_bytes(body[31..39].try_into().unwrap());
                let now = epoch0.elapsed().as_micros() as u64;
                let seq = v["seq"].as_u64().unwrap();
                ws.send(Message::Text(
                    json!({"type": "ack", "up_to": seq}).to_string().into(),
                ))
                .await
                .unwrap();
                if counting_flag.load(Ordering::Relaxed) {
                    c.delivered.fetch_add(1, Ordering::Relaxed);
                    c.acked.fetch_add(1, Ordering::Relaxed);
                    l.lock().await.push(now.saturating_sub(sent));
                }
            }
        }));
        // Sender: back-to-back 200-byte messages over one keep-alive connection.
        let (token, g) = (p.sender_token.clone(), p.group);
        let (c, run_flag, counting_flag) = (counters.clone(), running.clone(), counting.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            let path = format!("/v1/groups/{g}/messages");
            let mut n: u64 = 0;
            while run_flag.load(Ordering::Relaxed) {
                n += 1;
                let mut tail = vec![0u8; PAYLOAD - 31];
                tail[..8].copy_from_slice(&(epoch0.elapsed().as_micros() as u64).to_be_bytes());
                let mut rand = [0u8; 10];
                rand[0] = i as u8;
                rand[2..10].copy_from_slice(&n.to_be_bytes());
                let id = MessageId::new_v7(1_700_000_000_000 + n, &rand);
                let body = app_bytes(g, 1, &tail);
                debug_assert_eq!(body.len(), PAYLOAD);
                let (status, _) = conn
                    .request(
                        "POST",
                        &path,
                        Some(&token),
                        &json!({"message_id": id.to_string(), "body": b64(&body)}),
                    )
                    .await;
                if counting_flag.load(Ordering::Relaxed) {
                    if status == 202 {
                        c.accepted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        c.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(1)).await; // warm-up
    counting.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    counting.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    running.store(false, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let _ = stop.send(());
    let _ = server.await;
    let batches = store.batch_stats().unwrap_or_default();

    let mut l = latencies.lock().await.clone();
    l.sort_unstable();
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let rate = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64 / elapsed;
    println!(
        "pairs={pairs:<4} accepted/s={:>8.0} delivered/s={:>8.0} acked/s={:>8.0} errors={} latency_ms p50={:.2} p90={:.2} p99={:.2} max={:.2}",
        rate(&counters.accepted),
        rate(&counters.delivered),
        rate(&counters.acked),
        counters.errors.load(Ordering::Relaxed),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        l.last().copied().unwrap_or(0) as f64 / 1000.0,
    );
    println!(
        "           store: {} write requests in {} transactions (mean batch {:.1}, largest {})",
        batches.writes,
        batches.batches,
        batches.writes as f64 / batches.batches.max(1) as f64,
        batches.largest,
    );
}

fn main() {
    // `cargo test --benches` passes `--bench`-less args; run only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let secs = std::env::var("SOTTO_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let pairs: Vec<u8> = std::env::var("SOTTO_BENCH_PAIRS")
        .unwrap_or_else(|_| "1,100".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for p in pairs {
        rt.block_on(run_pairs(p, secs));
    }
}
