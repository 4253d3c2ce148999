//! Runs the real `sotto-server` binary: start-up line, health check, SIGTERM, bad config.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sotto-server"))
}

#[test]
fn starts_with_defaults_serves_health_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = binary()
        .current_dir(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("SOTTO_LISTEN")
        .env_remove("SOTTO_DATA_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "sotto-server listening on http://127.0.0.1:PORT with data in sotto-data"
    assert!(
        line.starts_with("sotto-server listening on http://127.0.0.1:"),
        "{line}"
    );
    assert!(
        line.trim_end().ends_with("with data in sotto-data"),
        "{line}"
    );
    let addr = line
        .split("http://")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(
        dir.path().join("sotto-data/sotto.db").exists(),
        "database created"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("sotto-data"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o700,
            "data directory private to the server's user"
        );
    }

    let mut stream = TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "graceful shutdown exits 0, got {exit}");
}

#[test]
fn bad_configuration_exits_2_with_a_clear_message() {
    let output = binary()
        .env("SOTTO_RETENTION_DAYS", "forever")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("SOTTO_RETENTION_DAYS"), "{stderr}");
    assert!(stderr.contains("1 to 3650"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn serves_https_with_tls_flags_and_refuses_bad_tls_files_with_exit_2() {
    use rustls::pki_types::pem::PemObject as _;

    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();

    // The certificate given as the key: a configuration error, exit 2, named file.
    let output = binary()
        .current_dir(dir.path())
        .args(["--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&cert)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("private key") && stderr.contains("cert.pem"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("sotto-data").exists(),
        "nothing created on bad config"
    );

    let mut child = binary()
        .current_dir(dir.path())
        .args(["--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("sotto-server listening on https://127.0.0.1:"),
        "{line}"
    );
    let addr = line
        .split("https://")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();

    // A real TLS client that trusts only this certificate gets the health answer.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_file(&cert).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(std::sync::Arc::new(config), "localhost".try_into().unwrap())
            .unwrap();
    let mut tcp = TcpStream::connect(&addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    // The server closes without close_notify after `Connection: close`; keep what came.
    let _ = tls.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
}

/// `sotto-server admin release-username`: against the data of a running server, it
/// deletes the account (its token stops working), says so, and frees the name; an
/// unknown name is a clear failure.
#[test]
fn admin_release_username_frees_the_name_of_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path(), &[]);
    let bob = common::register(&server.addr, "bob", 7);
    let admin = |user: &str| {
        binary()
            .args(["--data-dir"])
            .arg(dir.path())
            .args(["admin", "release-username", user])
            .env_remove("SOTTO_DATA_DIR")
            .output()
            .unwrap()
    };
    let out = admin("bob");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("released bob"));
    let (status, _) =
        common::http(&server.addr, "GET", "/v1/mailbox", Some(&bob.token), None).unwrap();
    assert_eq!(status, 401, "the released account's token is dead");
    // The name can be registered again, with another key.
    common::register(&server.addr, "bob", 8);
    let out = admin("nobody");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no account named nobody"));
    drop(server);
}
