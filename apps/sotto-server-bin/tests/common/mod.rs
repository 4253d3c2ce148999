//! Drives the real `sotto-server` binary: start/kill/restart on one data directory,
//! and a minimal blocking HTTP/1.1 client (one connection per request).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use sotto_core::IdentityKeyPair;
use sotto_proto::{ConversationId, DeviceId, Username};

/// A running server process and what it printed on stderr (its logs).
pub struct Running {
    pub child: Child,
    pub addr: String,
    logs: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    log_thread: Option<std::thread::JoinHandle<()>>,
}

pub fn start(data_dir: &Path, extra_env: &[(&str, &str)]) -> Running {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sotto-server"));
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env_remove("SOTTO_LISTEN")
        .env_remove("SOTTO_DATA_DIR")
        .env_remove("SOTTO_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .unwrap_or_else(|| panic!("unexpected start-up line {line:?}"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let logs = std::sync::Arc::new(std::sync::Mutex::new(line.into_bytes()));
    let mut stderr = child.stderr.take().unwrap();
    let sink = logs.clone();
    let log_thread = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match stderr.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
        let mut rest = Vec::new();
        let _ = stdout.read_to_end(&mut rest);
        sink.lock().unwrap().extend_from_slice(&rest);
    });
    Running {
        child,
        addr,
        logs,
        log_thread: Some(log_thread),
    }
}

impl Drop for Running {
    /// A test that fails half-way must not leave its server running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Running {
    /// SIGKILL: no chance to flush or close anything.
    pub fn kill9(mut self) -> Vec<u8> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.collect_logs()
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) -> Vec<u8> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "graceful exit, got {exit}");
        self.collect_logs()
    }

    fn collect_logs(&mut self) -> Vec<u8> {
        if let Some(t) = self.log_thread.take() {
            let _ = t.join();
        }
        self.logs.lock().unwrap().clone()
    }
}

/// One HTTP request on its own connection (no pooling: a server killed between two
/// requests must not leave a dead connection behind): status and body (JSON or raw).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> std::io::Result<(u16, Vec<u8>)> {
    static CLIENT: std::sync::OnceLock<reqwest::blocking::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        // reqwest is built without a default TLS crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::blocking::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    });
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(std::io::Error::other)?;
    let mut request = client.request(method, format!("http://{addr}{path}"));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    if let Some(b) = body {
        request = request.json(b);
    }
    let response = request.send().map_err(std::io::Error::other)?;
    let status = response.status().as_u16();
    let bytes = response.bytes().map_err(std::io::Error::other)?;
    Ok((status, bytes.to_vec()))
}

pub fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(bytes)))
}

/// An account whose identity key is derived from `seed`, with one device.
pub struct TestAccount {
    pub username: String,
    pub device: DeviceId,
    pub token: String,
}

pub fn register(addr: &str, username: &str, seed: u8) -> TestAccount {
    let identity = IdentityKeyPair::from_secret_bytes(&[seed; 32]);
    let name = Username::parse(username).unwrap();
    let account = identity.certify_account_key(&name, identity.public(), 1, 1_700_000_000);
    // A test shortcut: the root doubles as the account key (a real client makes a
    // separate one); the chain still verifies.
    let account_key = sotto_core::AccountKey::from_parts(&[seed; 32], account).unwrap();
    let device = DeviceId::from_bytes([seed; 16]);
    let cert =
        account_key.certify_device(device, [seed.wrapping_add(1); 32], "test", 1_700_000_000);
    let list = account_key.sign_device_list(1, vec![cert]);
    let (status, body) = http(
        addr,
        "POST",
        "/v1/accounts",
        None,
        Some(&json!({"username": username, "device_list": list})),
    )
    .unwrap();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    TestAccount {
        username: username.to_owned(),
        device,
        token: json_of(&body)["token"].as_str().unwrap().to_owned(),
    }
}

pub use sotto_testkit::framing::private_message;

/// `owner` creates `group` and adds `member` (epoch 0 → 1).
pub fn group_of_two(addr: &str, owner: &TestAccount, member: &TestAccount, group: ConversationId) {
    let (status, body) = http(
        addr,
        "POST",
        "/v1/groups",
        Some(&owner.token),
        Some(&json!({"group_id": group})),
    )
    .unwrap();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let welcome = sotto_testkit::framing::welcome(b"welcome");
    let commit = json!({
        "epoch": 0,
        "added": [member.device],
        "removed": [],
        "commit": sotto_proto::b64::encode(&private_message(group, 0, 3, b"commit")),
        "welcome": sotto_proto::b64::encode(&welcome),
    });
    let (status, body) = http(
        addr,
        "POST",
        &format!("/v1/groups/{group}/commits"),
        Some(&owner.token),
        Some(&commit),
    )
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

/// Every mailbox entry of `account` (kind, body), acking as it goes if `ack`.
pub fn drain(addr: &str, account: &TestAccount, ack: bool) -> Vec<(String, Vec<u8>)> {
    let mut after = 0;
    let mut out = Vec::new();
    loop {
        let (status, body) = http(
            addr,
            "GET",
            &format!("/v1/mailbox?after={after}&limit=500"),
            Some(&account.token),
            None,
        )
        .unwrap();
        assert_eq!(status, 200);
        let entries = json_of(&body)["entries"].as_array().unwrap().clone();
        let Some(last) = entries.last().map(|e| e["seq"].as_u64().unwrap()) else {
            return out;
        };
        for e in entries {
            out.push((
                e["kind"].as_str().unwrap().to_owned(),
                sotto_proto::b64::decode(e["body"].as_str().unwrap()).unwrap(),
            ));
        }
        if ack {
            let (status, _) = http(
                addr,
                "POST",
                "/v1/mailbox/ack",
                Some(&account.token),
                Some(&json!({"up_to": last})),
            )
            .unwrap();
            assert_eq!(status, 200);
        }
        after = last;
    }
}

pub fn data_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A username written in a test.
pub fn name(text: &str) -> sotto_client::Username {
    text.parse().unwrap()
}
