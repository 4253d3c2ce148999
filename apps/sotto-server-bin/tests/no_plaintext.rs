//! What the server keeps and logs: real clients send a plaintext sentinel through the
//! real server; no server file or log line ever holds it, device tokens never reach
//! disk or logs, and usernames stay out of logs at the default level.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{contains, data_files, http, name, register, start};
use sotto_client::Client;

const SENTINEL: &str = "SENTINEL-PLAINTEXT-b3f1c2d4e5";

fn scan_files(dir: &std::path::Path, needles: &[(&str, &[u8])]) {
    for file in data_files(dir) {
        let bytes = std::fs::read(&file).unwrap();
        for (what, needle) in needles {
            assert!(
                !contains(&bytes, needle),
                "{what} found in {}",
                file.display()
            );
        }
    }
}

fn run(log_level: Option<&str>) -> (Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<(&str, &str)> = log_level
        .map(|l| vec![("SOTTO_LOG", l)])
        .unwrap_or_default();
    let server = start(&dir.path().join("data"), &env);
    let url = format!("http://{}", server.addr);
    // A raw registration, so the test knows a real token to look for.
    let carol = register(&server.addr, "carol", 3);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let homes = tempfile::tempdir().unwrap();
    runtime.block_on(async {
        let alice = Client::open(&homes.path().join("alice"), &url).unwrap();
        let bob = Client::open(&homes.path().join("bob"), &url).unwrap();
        alice.register(&name("alice"), "phone").await.unwrap();
        bob.register(&name("bob"), "phone").await.unwrap();
        alice.send_text(name("bob"), SENTINEL).await.unwrap();
        // Before bob fetches it: stored as ciphertext only.
        scan_files(&dir.path().join("data"), &[("the plaintext sentinel", SENTINEL.as_bytes()), ("a device token", carol.token.as_bytes())]);
        let events = bob.sync().await.unwrap();
        assert!(
            events.iter().any(|e| matches!(e, sotto_client::Event::Message(m) if m.text.as_deref() == Some(SENTINEL))),
            "bob must read it: {events:?}"
        );
    });
    // A bad request and an unknown user, so error paths log too.
    let (status, _) = http(
        &server.addr,
        "GET",
        "/v1/accounts/nobody-here",
        Some(&carol.token),
        None,
    )
    .unwrap();
    assert_eq!(status, 404);
    let (status, _) = http(
        &server.addr,
        "GET",
        "/v1/mailbox?after=x",
        Some(&carol.token),
        None,
    )
    .unwrap();
    assert_eq!(status, 400);

    let logs = server.stop();
    scan_files(
        &dir.path().join("data"),
        &[
            ("the plaintext sentinel", SENTINEL.as_bytes()),
            ("a device token", carol.token.as_bytes()),
        ],
    );
    (logs, carol.token)
}

#[test]
fn no_plaintext_or_tokens_on_disk_or_in_logs_and_no_usernames_at_info() {
    let (logs, token) = run(None);
    let text = String::from_utf8_lossy(&logs);
    assert!(text.contains("sotto-server listening on"), "{text}");
    assert!(!text.contains(SENTINEL), "{text}");
    assert!(!text.contains(&token), "{text}");
    for name in ["alice", "bob", "carol", "nobody-here"] {
        assert!(
            !text.contains(name),
            "username {name} in info logs:\n{text}"
        );
    }
}

#[test]
fn no_plaintext_or_tokens_in_debug_logs_either() {
    let (logs, token) = run(Some("debug"));
    let text = String::from_utf8_lossy(&logs);
    assert!(text.lines().count() > 3, "debug logging is on: {text}");
    assert!(!text.contains(SENTINEL), "{text}");
    assert!(!text.contains(&token), "{text}");
}
