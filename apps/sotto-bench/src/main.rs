//! `sotto-bench`: drives a running Sotto server over its real HTTP API and WebSockets
//! and reports what users feel: messages accepted and delivered per second and the
//! end-to-end latency (send start to recipient receipt).
//!
//! Modes:
//! - `relay`: pre-built MLS-framed ciphertext of a given size (the server only reads
//!   the framing), to measure the server itself;
//! - `e2e`: real clients through the SDK (MLS encryption, local SQLite profiles);
//! - `fanout`: one message to a group of N devices: time until every mailbox entry is
//!   durable (the send's 202) and until every connected device has it;
//! - `idle`: N idle WebSocket connections, for the server's memory per connection.
//!
//! Accounts get random names and keys, so runs can repeat against one server.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use ed25519_dalek::{Signer, SigningKey};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use sotto_api::paths::{self, Endpoint};
use sotto_api::{
    B64, ClientFrame, CommitRequest, CreateGroupRequest, MessageRequest, RegisterRequest,
    RegisterResponse, ServerFrame,
};
use sotto_proto::{
    AccountKeyCertificate, AccountKeyFields, CertificateFields, ConversationId, DeviceCertificate,
    DeviceId, DeviceList, DeviceListFields, IdentityPublicKey, MessageId, Username,
};
use sotto_testkit::framing::{HEADER_LEN as HEADER, application, commit as commit_bytes, welcome};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Relay,
    E2e,
    Fanout,
    Idle,
}

/// Load tool for a running Sotto server.
#[derive(Parser, Debug)]
#[command(name = "sotto-bench", version)]
struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value = "relay")]
    mode: Mode,
    /// The server (http:// only).
    #[arg(long, default_value = "http://127.0.0.1:7480")]
    server: String,
    /// Where recipients hold their WebSockets (relay; default: --server). Another node
    /// of the same deployment measures delivery across nodes.
    #[arg(long)]
    recipient_server: Option<String>,
    /// Conversations, each with one sender (relay, e2e).
    #[arg(long, default_value_t = 1)]
    pairs: usize,
    /// Devices per group, the sender's included (relay: 2 is one-to-one; fanout: N).
    #[arg(long, default_value_t = 2)]
    group_size: usize,
    /// Message size in bytes (relay and fanout: ciphertext; e2e: plaintext text).
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// Target total send rate in messages per second; 0 sends as fast as the server
    /// answers (each sender waits for its previous send).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Fan-out rounds (one message each).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Idle connections to open (idle).
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// How many 127.0.0.x source addresses to spread connections over (each gives about
    /// 28k ports).
    #[arg(long, default_value_t = 4)]
    source_addrs: u8,
    /// Seconds to keep the idle connections open after measuring (idle), e.g. while
    /// other load-tool processes open theirs to other nodes: one process can hold only
    /// as many sockets as its open-file limit allows.
    #[arg(long, default_value_t = 0)]
    hold: u64,
    /// The server's process id, to report its memory (RSS) when it runs on this machine.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print one JSON object with the results instead of text.
    #[arg(long)]
    json: bool,
}

fn main() {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sotto-bench: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(report) => {
            if args.json {
                println!("{report}");
            } else {
                print_human(&report);
            }
        }
        Err(e) => {
            eprintln!("sotto-bench: {e}");
            std::process::exit(1);
        }
    }
}

type Res<T> = Result<T, String>;

async fn run(args: &Args) -> Res<Value> {
    let addr = server_addr(&args.server).await?;
    let rss_before = args.server_pid.and_then(rss_kib);
    let mut report = match args.mode {
        Mode::Relay => relay(args, addr).await?,
        Mode::E2e => e2e(args).await?,
        Mode::Fanout => fanout(args, addr).await?,
        Mode::Idle => idle(args, addr).await?,
    };
    if let Some(pid) = args.server_pid {
        report["server_rss_kib_before"] = json!(rss_before);
        report["server_rss_kib_after"] = json!(rss_kib(pid));
    }
    report["mode"] = json!(format!("{:?}", args.mode).to_lowercase());
    Ok(report)
}

fn print_human(report: &Value) {
    if let Some(map) = report.as_object() {
        for (k, v) in map {
            println!("{k:>24}: {v}");
        }
    }
}

async fn server_addr(url: &str) -> Res<SocketAddr> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("--server {url}: only http:// servers can be driven (run the benchmark next to the server or its TLS proxy)")
    })?;
    let hostport = rest.trim_end_matches('/');
    tokio::net::lookup_host(hostport)
        .await
        .map_err(|e| format!("cannot resolve {hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport} has no address"))
}

/// The server's resident memory in KiB, from /proc.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // Without an OS random source nothing here would be meaningful.
    if getrandom::fill(&mut bytes).is_err() {
        eprintln!("sotto-bench: no OS random source");
        std::process::exit(1);
    }
    bytes
}

fn run_tag() -> String {
    sotto_proto::ids::to_hex(&random::<4>())
}

// ----- HTTP -----

/// One keep-alive HTTP/1.1 connection.
struct Http {
    stream: BufReader<TcpStream>,
}

impl Http {
    async fn open(addr: SocketAddr) -> Res<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        Ok(Self {
            stream: BufReader::new(stream),
        })
    }

    /// One request: `endpoint` at `path` (its template filled in), with a JSON body.
    /// Answers the status and the body as JSON (`null` when it is not JSON).
    async fn request<B: Serialize>(
        &mut self,
        endpoint: Endpoint,
        path: &str,
        token: Option<&str>,
        body: &B,
    ) -> Res<(u16, Value)> {
        let method = endpoint.method.as_str();
        let body = serde_json::to_string(body).map_err(|e| format!("encoding a request: {e}"))?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let io = |e: std::io::Error| format!("HTTP connection failed: {e}");
        let s = self.stream.get_mut();
        s.write_all(head.as_bytes()).await.map_err(io)?;
        s.write_all(body.as_bytes()).await.map_err(io)?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await.map_err(io)?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP response: {line:?}"))?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.map_err(io)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut buf = vec![0; length];
        self.stream.read_exact(&mut buf).await.map_err(io)?;
        Ok((status, serde_json::from_slice(&buf).unwrap_or(Value::Null)))
    }
}

// ----- accounts, groups, frames -----

struct Account {
    token: String,
    device: DeviceId,
}

async fn register(http: &mut Http, username: &str) -> Res<Account> {
    // One key serves as root and account key: the bench needs valid lists, not a
    // realistic hierarchy.
    let sk = SigningKey::from_bytes(&random::<32>());
    let pk = IdentityPublicKey::from_bytes(sk.verifying_key().to_bytes());
    let device = DeviceId::from_bytes(random::<16>());
    let name = Username::parse(username).map_err(|e| format!("bad username: {e}"))?;
    let account_fields = AccountKeyFields {
        username: name.clone(),
        identity_key: pk,
        account_key: pk,
        generation: 1,
        created_at: 1_700_000_000,
    };
    let account_sig = sk.sign(&account_fields.to_be_signed()).to_bytes();
    let cert_fields = CertificateFields {
        username: name.clone(),
        device_id: device,
        device_key: random::<32>(),
        account_key: pk,
        name: "bench".into(),
        created_at: 1_700_000_000,
    };
    let cert_sig = sk.sign(&cert_fields.to_be_signed()).to_bytes();
    let list_fields = DeviceListFields {
        username: name.clone(),
        identity_key: pk,
        account: AccountKeyCertificate::from_parts(account_fields, account_sig),
        version: 1,
        devices: vec![DeviceCertificate::from_parts(cert_fields, cert_sig)],
    };
    let list_sig = sk.sign(&list_fields.to_be_signed()).to_bytes();
    let list = DeviceList::from_parts(list_fields, list_sig);
    let request = RegisterRequest {
        username: name.clone(),
        device_list: list,
    };
    let (status, body) = http
        .request(paths::REGISTER, paths::REGISTER.template, None, &request)
        .await?;
    if status != 201 {
        return Err(format!("registering {username}: HTTP {status} {body}"));
    }
    let answer: RegisterResponse =
        serde_json::from_value(body).map_err(|e| format!("unreadable registration answer: {e}"))?;
    Ok(Account {
        token: answer.token,
        device,
    })
}

/// Registers `count` accounts named `<prefix><i>` over `parallel` connections.
async fn register_many(
    addr: SocketAddr,
    prefix: &str,
    count: usize,
    parallel: usize,
) -> Res<Vec<Account>> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..parallel.max(1) {
        let (next, prefix) = (Arc::clone(&next), prefix.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut http = Http::open(addr).await?;
            let mut made = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= count {
                    return Ok::<_, String>(made);
                }
                made.push((i, register(&mut http, &format!("{prefix}{i}")).await?));
            }
        }));
    }
    let mut all = Vec::with_capacity(count);
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, a)| a).collect())
}

/// Creates a group owned by `owner` and adds `members` in one commit (epoch 0 → 1).
async fn make_group(http: &mut Http, owner: &Account, members: &[DeviceId]) -> Res<ConversationId> {
    let group = ConversationId::from_bytes(random::<16>());
    let (status, body) = http
        .request(
            paths::CREATE_GROUP,
            paths::CREATE_GROUP.template,
            Some(&owner.token),
            &CreateGroupRequest { group_id: group },
        )
        .await?;
    if status != 201 {
        return Err(format!("creating a group: HTTP {status} {body}"));
    }
    let commit = CommitRequest {
        epoch: 0,
        added: members.to_vec(),
        removed: Vec::new(),
        commit: B64(commit_bytes(group, 0, &[0xc0; 64])),
        welcome: Some(B64(welcome(&[0x5a; 64]))),
    };
    let (status, body) = http
        .request(
            paths::COMMIT,
            &paths::commits(group),
            Some(&owner.token),
            &commit,
        )
        .await?;
    if status != 200 {
        return Err(format!("adding members: HTTP {status} {body}"));
    }
    Ok(group)
}

type Ws = WebSocketStream<TcpStream>;

async fn ws_connect(
    addr: SocketAddr,
    token: &str,
    after: u64,
    source: Option<Ipv4Addr>,
) -> Res<Ws> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(IpAddr::V4(ip), 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let stream = socket
        .connect(addr)
        .await
        .map_err(|e| format!("WebSocket connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut req = format!("ws://{addr}{}?after={after}", paths::WEBSOCKET.template)
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let auth = format!("Bearer {token}")
        .parse()
        .map_err(|_| "bad token header".to_owned())?;
    req.headers_mut().insert("authorization", auth);
    // Small read buffers (the library default is 128 KiB per socket): tens of
    // thousands of idle sockets must fit in one process.
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(config))
        .await
        .map_err(|e| format!("WebSocket handshake: {e}"))?;
    Ok(ws)
}

/// An entry frame's seq and body.
fn entry(msg: &Message) -> Option<(u64, Vec<u8>)> {
    let Message::Text(text) = msg else {
        return None;
    };
    let ServerFrame::Entry { seq, body, .. } = serde_json::from_str(text).ok()?;
    Some((seq, sotto_proto::b64::decode(&body).ok()?))
}

/// The ack frame for entries up to `seq`.
fn ack(seq: u64) -> Message {
    let text = serde_json::to_string(&ClientFrame::Ack { up_to: seq })
        .unwrap_or_else(|_| format!(r#"{{"type":"ack","up_to":{seq}}}"#));
    Message::Text(text.into())
}

/// A message request whose body is an application PrivateMessage ending in `tail`.
fn message(group: ConversationId, n: u64, tail: &[u8]) -> MessageRequest {
    MessageRequest {
        message_id: MessageId::new_v7(1_700_000_000_000 + n, &random::<10>()),
        body: B64(application(group, 1, tail)),
    }
}

// ----- measurement -----

#[derive(Default)]
struct Stats {
    accepted: AtomicU64,
    delivered: AtomicU64,
    counting: AtomicBool,
    latencies_us: std::sync::Mutex<Vec<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    fn latency(&self, us: u64) {
        if let Ok(mut l) = self.latencies_us.lock() {
            l.push(us);
        }
    }

    async fn error(&self, kind: String) {
        if self.counting.load(Ordering::Relaxed) {
            *self.errors.lock().await.entry(kind).or_default() += 1;
        }
    }

    /// The summary plus the workload that produced it.
    async fn report(&self, secs: f64, args: &Args, per_group: usize) -> Value {
        let mut report = self.summary(secs).await;
        report["pairs"] = json!(args.pairs);
        report["group_size"] = json!(per_group);
        report["payload_bytes"] = json!(args.payload);
        report["target_rate"] = json!(args.rate);
        report
    }

    async fn summary(&self, secs: f64) -> Value {
        let mut l = self
            .latencies_us
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        l.sort_unstable();
        let pct = |p: f64| -> f64 {
            let i = ((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1));
            l.get(i).copied().unwrap_or(0) as f64 / 1000.0
        };
        json!({
            "seconds": secs,
            "accepted_per_s": (self.accepted.load(Ordering::Relaxed) as f64 / secs).round(),
            "delivered_per_s": (self.delivered.load(Ordering::Relaxed) as f64 / secs).round(),
            "latency_ms": {
                "p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99),
                "max": l.last().copied().unwrap_or(0) as f64 / 1000.0,
            },
            "errors": *self.errors.lock().await,
        })
    }
}

/// Warm-up, then the measured window with progress on stderr; returns measured seconds.
async fn measure(args: &Args, stats: &Stats) -> f64 {
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    stats.counting.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let mut last = (0, 0);
    for s in 1..=args.duration {
        tokio::time::sleep_until((start + Duration::from_secs(s)).into()).await;
        let now = (
            stats.accepted.load(Ordering::Relaxed),
            stats.delivered.load(Ordering::Relaxed),
        );
        eprintln!(
            "[{s:>3}s] accepted {:>7}/s  delivered {:>7}/s",
            now.0 - last.0,
            now.1 - last.1
        );
        last = now;
    }
    stats.counting.store(false, Ordering::Relaxed);
    start.elapsed().as_secs_f64()
}

/// Paces one sender: `None` for back-to-back.
fn pacer(args: &Args, senders: usize) -> Option<tokio::time::Interval> {
    (args.rate > 0.0).then(|| {
        let every = Duration::from_secs_f64(senders as f64 / args.rate);
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        interval
    })
}

// ----- modes -----

async fn relay(args: &Args, addr: SocketAddr) -> Res<Value> {
    if args.payload < HEADER + 8 {
        return Err(format!("--payload must be at least {} bytes", HEADER + 8));
    }
    let tag = run_tag();
    let per_group = args.group_size.max(2);
    eprintln!("setting up {} groups of {per_group} devices", args.pairs);
    let accounts = register_many(addr, &format!("b{tag}r"), args.pairs * per_group, 8).await?;
    let mut http = Http::open(addr).await?;
    let ws_addr = match &args.recipient_server {
        Some(url) => server_addr(url).await?,
        None => addr,
    };
    let epoch0 = Instant::now();
    let stats = Arc::new(Stats::default());
    let running = Arc::new(AtomicBool::new(true));
    let mut tasks = Vec::new();
    let mut accounts = accounts.into_iter();
    for _ in 0..args.pairs {
        let sender = accounts.next().ok_or("too few accounts")?;
        let recipients: Vec<Account> = accounts.by_ref().take(per_group - 1).collect();
        let devices: Vec<DeviceId> = recipients.iter().map(|a| a.device).collect();
        let group = make_group(&mut http, &sender, &devices).await?;
        for r in recipients {
            // Seq 1 is the Welcome.
            let mut ws = ws_connect(ws_addr, &r.token, 1, None).await?;
            let (stats, running) = (Arc::clone(&stats), Arc::clone(&running));
            tasks.push(tokio::spawn(async move {
                while running.load(Ordering::Relaxed) {
                    let Ok(Some(Ok(msg))) =
                        tokio::time::timeout(Duration::from_millis(200), ws.next()).await
                    else {
                        continue;
                    };
                    let Some((seq, body)) = entry(&msg) else {
                        continue;
                    };
                    let now = epoch0.elapsed().as_micros() as u64;
                    let sent = body
                        .get(HEADER..HEADER + 8)
                        .and_then(|b| b.try_into().ok())
                        .map_or(now, u64::from_be_bytes);
                    if ws.send(ack(seq)).await.is_err() {
                        stats.error("websocket closed".into()).await;
                        break;
                    }
                    if stats.counting.load(Ordering::Relaxed) {
                        stats.delivered.fetch_add(1, Ordering::Relaxed);
                        stats.latency(now.saturating_sub(sent));
                    }
                }
            }));
        }
        let (stats, running) = (Arc::clone(&stats), Arc::clone(&running));
        let mut pace = pacer(args, args.pairs);
        let payload = args.payload;
        tasks.push(tokio::spawn(async move {
            let Ok(mut http) = Http::open(addr).await else {
                stats.error("connect".into()).await;
                return;
            };
            let path = paths::messages(group);
            let mut n: u64 = 0;
            while running.load(Ordering::Relaxed) {
                if let Some(p) = pace.as_mut() {
                    p.tick().await;
                }
                n += 1;
                let mut tail = vec![0u8; payload - HEADER];
                tail[..8].copy_from_slice(&(epoch0.elapsed().as_micros() as u64).to_be_bytes());
                let body = message(group, n, &tail);
                match http
                    .request(paths::MESSAGE, &path, Some(&sender.token), &body)
                    .await
                {
                    Ok((202, _)) => {
                        if stats.counting.load(Ordering::Relaxed) {
                            stats.accepted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok((status, body)) => {
                        let code = body["code"].as_str().unwrap_or("").to_owned();
                        stats.error(format!("HTTP {status} {code}")).await;
                    }
                    Err(e) => {
                        stats.error(e).await;
                        return;
                    }
                }
            }
        }));
    }
    let secs = measure(args, &stats).await;
    running.store(false, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    Ok(stats.report(secs, args, per_group).await)
}

async fn e2e(args: &Args) -> Res<Value> {
    use sotto_client::{Client, Event, Recipient, Username};
    let tag = run_tag();
    let homes = tempfile::tempdir().map_err(|e| e.to_string())?;
    let epoch0 = Instant::now();
    let stats = Arc::new(Stats::default());
    let running = Arc::new(AtomicBool::new(true));
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut tasks = Vec::new();
    let per_group = args.group_size.max(2);
    eprintln!(
        "setting up {} conversations of {per_group} real clients",
        args.pairs
    );
    for i in 0..args.pairs {
        let open = |who: String| {
            Client::open(&homes.path().join(&who), &args.server).map_err(|e| e.to_string())
        };
        let username = |text: String| text.parse::<Username>().map_err(|e| e.to_string());
        let sender = open(format!("s{i}"))?;
        sender
            .register(&username(format!("b{tag}s{i}"))?, "bench")
            .await
            .map_err(|e| e.to_string())?;
        let mut names = Vec::new();
        let mut recipients = Vec::new();
        for j in 1..per_group {
            let name = username(format!("b{tag}r{i}x{j}"))?;
            let client = open(format!("r{i}x{j}"))?;
            client
                .register(&name, "bench")
                .await
                .map_err(|e| e.to_string())?;
            names.push(name);
            recipients.push(Arc::new(client));
        }
        // One-to-one: the recipient (the first message sets the conversation up). A
        // group: created first. Either way, then addressed by conversation id.
        let first = if per_group == 2 {
            Recipient::User(names[0].clone())
        } else {
            sender
                .create_group(&format!("bench {i}"), &names)
                .await
                .map_err(|e| e.to_string())?
                .into()
        };
        let target = sender
            .send_text(first, "0")
            .await
            .map_err(|e| e.to_string())?
            .conversation;
        for r in recipients {
            let (st, mut stop) = (Arc::clone(&stats), stop_tx.subscribe());
            tasks.push(tokio::spawn(async move {
                let _ = r
                    .listen(
                        move |events| {
                            let now = epoch0.elapsed().as_micros() as u64;
                            for e in events {
                                let sent = match e {
                                    Event::Message(m) => m
                                        .text
                                        .and_then(|t| t.split(' ').next()?.parse::<u64>().ok()),
                                    _ => None,
                                };
                                if let Some(sent) = sent
                                    && sent > 0
                                    && st.counting.load(Ordering::Relaxed)
                                {
                                    st.delivered.fetch_add(1, Ordering::Relaxed);
                                    st.latency(now.saturating_sub(sent));
                                }
                            }
                        },
                        async move {
                            let _ = stop.recv().await;
                        },
                    )
                    .await;
            }));
        }
        let (stats, running) = (Arc::clone(&stats), Arc::clone(&running));
        let mut pace = pacer(args, args.pairs);
        let payload = args.payload;
        tasks.push(tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                if let Some(p) = pace.as_mut() {
                    p.tick().await;
                }
                let sent = (epoch0.elapsed().as_micros() as u64).max(1);
                // The send time, then padding up to --payload bytes of text.
                let mut text = format!("{sent} ");
                if text.len() < payload {
                    text.push_str(&"x".repeat(payload - text.len()));
                }
                match sender.send_text(target, &text).await {
                    Ok(_) => {
                        if stats.counting.load(Ordering::Relaxed) {
                            stats.accepted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => stats.error(e.to_string()).await,
                }
            }
        }));
    }
    let secs = measure(args, &stats).await;
    running.store(false, Ordering::Relaxed);
    // Let the last deliveries land before stopping the listeners.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop_tx.send(());
    for t in tasks {
        let _ = t.await;
    }
    Ok(stats.report(secs, args, per_group).await)
}

async fn fanout(args: &Args, addr: SocketAddr) -> Res<Value> {
    let tag = run_tag();
    let n = args.group_size.max(2) - 1;
    eprintln!("registering 1 sender and {n} recipient devices");
    let mut accounts = register_many(addr, &format!("b{tag}f"), n + 1, 8).await?;
    let sender = accounts.remove(0);
    let mut http = Http::open(addr).await?;
    let devices: Vec<DeviceId> = accounts.iter().map(|a| a.device).collect();
    let group = make_group(&mut http, &sender, &devices).await?;
    eprintln!("connecting {n} WebSockets");
    let received = Arc::new(AtomicU64::new(0));
    let all_in = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for (i, a) in accounts.iter().enumerate() {
        let source = Ipv4Addr::new(
            127,
            0,
            0,
            1 + (i % usize::from(args.source_addrs.max(1))) as u8,
        );
        let mut ws = ws_connect(addr, &a.token, 1, Some(source)).await?;
        let (received, all_in) = (Arc::clone(&received), Arc::clone(&all_in));
        let expected = n as u64;
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                let Some((seq, _)) = entry(&msg) else {
                    continue;
                };
                let _ = ws.send(ack(seq)).await;
                if received.fetch_add(1, Ordering::SeqCst) + 1 == expected {
                    all_in.notify_one();
                }
            }
        }));
    }
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        received.store(0, Ordering::SeqCst);
        let waiter = all_in.notified();
        let tail = vec![0u8; args.payload.saturating_sub(HEADER)];
        let body = message(group, round as u64, &tail);
        let start = Instant::now();
        let (status, answer) = http
            .request(
                paths::MESSAGE,
                &paths::messages(group),
                Some(&sender.token),
                &body,
            )
            .await?;
        let durable = start.elapsed();
        if status != 202 {
            return Err(format!("fan-out send: HTTP {status} {answer}"));
        }
        tokio::time::timeout(Duration::from_secs(120), waiter)
            .await
            .map_err(|_| {
                format!(
                    "only {} of {n} devices got the message within 120 s",
                    received.load(Ordering::SeqCst)
                )
            })?;
        let everyone = start.elapsed();
        eprintln!(
            "round {round}: durable for all {n} mailboxes after {:.1} ms, on every device after {:.1} ms",
            durable.as_secs_f64() * 1e3,
            everyone.as_secs_f64() * 1e3
        );
        rounds.push(json!({"durable_ms": durable.as_secs_f64() * 1e3, "all_delivered_ms": everyone.as_secs_f64() * 1e3}));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for t in &tasks {
        t.abort();
    }
    Ok(json!({"recipient_devices": n, "payload_bytes": args.payload, "rounds": rounds}))
}

async fn idle(args: &Args, addr: SocketAddr) -> Res<Value> {
    let tag = run_tag();
    let n = args.connections;
    eprintln!("registering {n} devices");
    let accounts = register_many(addr, &format!("b{tag}i"), n, 16).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = args.server_pid.and_then(rss_kib);
    eprintln!(
        "opening {n} idle WebSockets over {} source addresses",
        args.source_addrs
    );
    let open = Arc::new(AtomicU64::new(0));
    let mut sockets = Vec::with_capacity(n);
    for (i, a) in accounts.iter().enumerate() {
        let source = Ipv4Addr::new(
            127,
            0,
            0,
            1 + (i % usize::from(args.source_addrs.max(1))) as u8,
        );
        let mut ws = ws_connect(addr, &a.token, 0, Some(source)).await?;
        open.fetch_add(1, Ordering::Relaxed);
        // Reading answers the server's keep-alive pings, as a real client does.
        let open = Arc::clone(&open);
        sockets.push(tokio::spawn(async move {
            while let Some(Ok(_)) = ws.next().await {}
            open.fetch_sub(1, Ordering::Relaxed);
        }));
        if (i + 1) % 10_000 == 0 {
            eprintln!("  {} open", i + 1);
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = args.server_pid.and_then(rss_kib);
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) => json!((a.saturating_sub(b) as f64 * 1024.0 / n as f64).round()),
        _ => Value::Null,
    };
    let mut report = json!({
        "connections": n,
        "server_rss_kib_registered": rss_before,
        "server_rss_kib_connected": rss_after,
        "server_bytes_per_connection": per_conn,
    });
    if args.hold > 0 {
        eprintln!("holding {n} connections for {} s", args.hold);
        tokio::time::sleep(Duration::from_secs(args.hold)).await;
        report["held_seconds"] = json!(args.hold);
        report["still_open_after_hold"] = json!(open.load(Ordering::Relaxed));
        report["server_rss_kib_after_hold"] = json!(args.server_pid.and_then(rss_kib));
    }
    for socket in sockets {
        socket.abort();
    }
    Ok(report)
}
