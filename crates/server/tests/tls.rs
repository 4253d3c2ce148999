//! `run()` over a `TlsListener`: HTTPS with a certificate the client trusts, refusals
//! for clients that do not trust it or do not speak TLS, and configuration errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use sotto_server::tls::{TlsConfigError, TlsListener, server_config};
use sotto_server::{AppState, InProcessFanout, ServerConfig, SystemClock, run};
use sotto_server_store::MemoryStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A self-signed certificate for `localhost` and its key, as PEM files in `dir`.
fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

fn client_trusting(cert: &Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(cert).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn start(
    cert: &Path,
    key: &Path,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener = TlsListener::new(tcp, server_config(cert, key).unwrap()).unwrap();
    let addr = axum::serve::Listener::local_addr(&listener).unwrap();
    let state = AppState::new(
        Arc::new(MemoryStore::new()),
        Arc::new(InProcessFanout::new()),
        Arc::new(SystemClock),
        ServerConfig::default(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(listener, state, async {
        let _ = stopped.await;
    }));
    (addr, stop, server)
}

#[tokio::test]
async fn https_serves_clients_that_trust_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "server");
    let (addr, stop, server) = start(&cert, &key).await;

    // A client that never finishes its handshake does not hold up the next one.
    let _silent = TcpStream::connect(addr).await.unwrap();

    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = client_trusting(&cert)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok"), "{response}");

    // A client trusting another certificate refuses this server.
    let (other_cert, _) = self_signed(dir.path(), "other");
    let tcp = TcpStream::connect(addr).await.unwrap();
    let refused = client_trusting(&other_cert)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await;
    assert!(refused.is_err(), "an untrusted certificate was accepted");

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut answer)).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("200"),
        "plain HTTP was served on the TLS port"
    );

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[test]
fn bad_tls_files_are_reported_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "a");
    let (_, other_key) = self_signed(dir.path(), "b");
    let missing = dir.path().join("missing.pem");

    let err = server_config(&missing, &key).unwrap_err();
    assert!(matches!(err, TlsConfigError::Certificate { .. }), "{err}");
    assert!(err.to_string().contains("missing.pem"), "{err}");

    // A key file given as the certificate: no CERTIFICATE block.
    let err = server_config(&key, &key).unwrap_err();
    assert!(matches!(err, TlsConfigError::Certificate { .. }), "{err}");

    let err = server_config(&cert, &cert).unwrap_err();
    assert!(matches!(err, TlsConfigError::Key { .. }), "{err}");

    let err = server_config(&cert, &other_key).unwrap_err();
    assert!(matches!(err, TlsConfigError::Mismatch(_)), "{err}");
}
