//! Attachments end to end: encrypted, streamed up, fetched, verified and decrypted;
//! a blob changed on the server is refused and leaves no file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Server, name};
use sotto_client::{ClientError, Event};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_0_b_1_mib_and_20_mib_round_trip_byte_exact() {
    let server = Server::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let dir = tempfile::tempdir().unwrap();
    for (len, name) in [
        (0usize, "empty.bin"),
        (1 << 20, "photo.jpg"),
        (20 << 20, "video.mp4"),
    ] {
        let path = dir.path().join(name);
        let data = pattern(len, len as u8);
        std::fs::write(&path, &data).unwrap();
        let sent = alice
            .client
            .send_file(common::name("bob"), &path, Some("look"))
            .await
            .unwrap();

        let events = bob.client.sync().await.unwrap();
        let Some(Event::Message(m)) = events.into_iter().find(|e| matches!(e, Event::Message(_)))
        else {
            panic!("no message");
        };
        assert_eq!(m.kind, "attachment");
        assert_eq!(m.text.as_deref(), Some("look"));
        assert_eq!(m.id, sent.id);
        let out = bob
            .client
            .save_attachment(m.conversation, m.id, None)
            .await
            .unwrap();
        assert_eq!(out.file_name().unwrap().to_str().unwrap(), name);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode();
            assert_eq!(
                mode(&out) & 0o777,
                0o600,
                "the saved file is its owner's alone"
            );
            assert_eq!(mode(out.parent().unwrap()) & 0o777, 0o700);
        }
        let got = std::fs::read(&out).unwrap();
        assert!(
            got == data,
            "{name}: {} bytes back, {} sent",
            got.len(),
            data.len()
        );
        // The stored message now says where the file is.
        let stored = bob.history(m.conversation);
        let meta: serde_json::Value =
            serde_json::from_str(stored.last().unwrap().attachment.as_deref().unwrap()).unwrap();
        assert_eq!(meta["path"], out.to_str().unwrap());
        assert_eq!(meta["size"], len);
    }
    // Nothing is left in the staging folders.
    for staging in ["outgoing", "incoming"] {
        for home in [alice.client.home(), bob.client.home()] {
            let left = std::fs::read_dir(home.join(staging))
                .map(|d| d.count())
                .unwrap_or(0);
            assert_eq!(left, 0, "{staging} in {}", home.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_blob_is_refused_and_not_saved() {
    let server = Server::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret.txt");
    std::fs::write(&path, pattern(200_000, 7)).unwrap();
    alice
        .client
        .send_file(name("bob"), &path, None)
        .await
        .unwrap();
    let events = bob.client.sync().await.unwrap();
    let Some(Event::Message(m)) = events.into_iter().find(|e| matches!(e, Event::Message(_)))
    else {
        panic!("no message");
    };

    // The server (or a thief with write access) flips one byte of the stored blob.
    let blobs = server.inner.data_dir().join("blobs");
    let blob = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_file())
        .unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[1234] ^= 0x40;
    std::fs::write(&blob, &bytes).unwrap();

    let out = tempfile::tempdir().unwrap();
    let err = bob
        .client
        .save_attachment(m.conversation, m.id, Some(out.path()))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::AttachmentDigest), "{err}");
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        0,
        "no file written"
    );
}
