//! The SDK's tracing: spans for sync, send and commit, and never message content.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use sotto_client::Client;
use sotto_testkit::TestServer;

/// Everything the subscriber writes, kept for inspection.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn sends_and_syncs_are_traced_without_their_content() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::NEW)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = TestServer::start().unwrap();
    let homes = tempfile::tempdir().unwrap();
    let alice = Client::open(&homes.path().join("a"), server.url()).unwrap();
    let bob = Client::open(&homes.path().join("b"), server.url()).unwrap();
    alice.register(&name("alice"), "phone").await.unwrap();
    bob.register(&name("bob"), "phone").await.unwrap();
    let secret = "the-launch-code-is-0451";
    alice.send_text(name("bob"), secret).await.unwrap();
    bob.sync().await.unwrap();

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for span in ["send", "commit", "sync", "catch_up", "register"] {
        assert!(
            text.contains(&format!("{span}{{")) || text.contains(&format!("{span}:")),
            "no {span} span in:\n{text}"
        );
    }
    assert!(!text.contains(secret), "message content reached the trace");
}

/// A username written in a test.
fn name(text: &str) -> sotto_client::Username {
    text.parse().unwrap()
}
