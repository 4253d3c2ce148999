//! The client against a server that speaks only HTTPS with a self-signed certificate:
//! refused until the certificate is trusted, then everything (including the real-time
//! WebSocket, `wss://`) works.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use sotto_client::{Client, ClientError, Event};
use sotto_testkit::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_wss_with_a_trusted_private_certificate() {
    let (server, ca) = TestServer::start_tls().unwrap();
    assert!(
        server.url().starts_with("https://localhost:"),
        "{}",
        server.url()
    );

    // Without trusting the certificate: a clear network error, nothing registered.
    let home = tempfile::tempdir().unwrap();
    let untrusting = Client::open(home.path(), server.url()).unwrap();
    let err = untrusting
        .register(&name("mallory"), "phone")
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Network { .. }), "{err}");

    let homes = tempfile::tempdir().unwrap();
    let open = |name: &str| {
        Client::open_with_ca(&homes.path().join(name), server.url(), Some(ca.clone())).unwrap()
    };
    let alice = open("alice");
    let bob = Arc::new(open("bob"));
    alice.register(&name("alice"), "phone").await.unwrap();
    bob.register(&name("bob"), "phone").await.unwrap();

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let listener = {
        let bob = bob.clone();
        tokio::spawn(async move {
            bob.listen(
                move |events| {
                    for e in events {
                        if let Event::Message(m) = e {
                            let _ = tx.send(m.text.unwrap_or_default());
                        }
                    }
                },
                async {
                    let _ = stop_rx.await;
                },
            )
            .await
        })
    };
    for i in 0..2 {
        alice
            .send_text(name("bob"), &format!("over tls {i}"))
            .await
            .unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv())
            .await
            .expect("no message within 30 s")
            .unwrap();
        assert_eq!(got, format!("over tls {i}"));
    }
    // Delivered over the WebSocket itself (wss://), not by the HTTP catch-up.
    assert_eq!(
        server.state().live_sockets(),
        1,
        "bob holds a wss:// connection"
    );
    stop_tx.send(()).unwrap();
    listener.await.unwrap().unwrap();
}

/// A username written in a test.
fn name(text: &str) -> sotto_client::Username {
    text.parse().unwrap()
}
