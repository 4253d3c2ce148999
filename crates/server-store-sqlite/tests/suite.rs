//! The shared behaviour suite against SQLite (a fresh database in a temp dir per test),
//! plus durability and group-commit checks of its own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use sotto_server_store::suite::{T0, dev, gid, msg_id, register, token, user};
use sotto_server_store::{MessageSubmission, Store};
use sotto_server_store_sqlite::SqliteStore;
use tempfile::TempDir;

fn fresh() -> (SqliteStore, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("sotto.db")).unwrap();
    (store, dir)
}

sotto_server_store::store_suite!(with_guard fresh());

fn message(sender: u8, id: u64, body: &[u8]) -> MessageSubmission {
    MessageSubmission {
        group: gid(1),
        sender: dev(sender),
        epoch: 0,
        client_message_id: msg_id(id),
        body: body.to_vec(),
    }
}

/// What was acknowledged is there after the store is dropped and the file reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sotto.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        register(&store, "alice", 1, T0).await.unwrap();
        register(&store, "bob", 2, T0).await.unwrap();
        store
            .create_group(gid(1), dev(1), vec![dev(2)])
            .await
            .unwrap();
        store
            .submit_message(message(1, 1, b"durable"), T0)
            .await
            .unwrap();
        store
            .submit_message(message(1, 2, b"acked"), T0)
            .await
            .unwrap();
        store.ack(dev(2), 1).await.unwrap();
        store
            .submit_message(message(1, 3, b"kept"), T0)
            .await
            .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.device_by_token(&token(2), T0).await.unwrap(),
        Some((user("bob"), dev(2)))
    );
    let group = store.group(gid(1)).await.unwrap().unwrap();
    assert_eq!(group.members, vec![dev(1), dev(2)]);
    let entries = store.fetch(dev(2), 0, 10).await.unwrap();
    let bodies: Vec<&[u8]> = entries.iter().map(|e| e.body.as_slice()).collect();
    assert_eq!(bodies, vec![&b"acked"[..], &b"kept"[..]]);
    assert_eq!(entries[0].seq, 2);
    assert_eq!(store.stats().await.unwrap().bodies, 2);
    // The idempotency record survived too; seqs continue after the old ones.
    assert!(
        store
            .submit_message(message(1, 3, b"kept"), T0)
            .await
            .unwrap()
            .duplicate
    );
    let next = store
        .submit_message(message(1, 4, b"new"), T0)
        .await
        .unwrap();
    assert_eq!(next.delivered, vec![(dev(2), 4)]);
}

/// Concurrent writers share transactions (the shared check for batching stores).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_group_committed() {
    let (store, _dir) = fresh();
    sotto_server_store::suite::concurrent_writes_are_group_committed(store).await;
}

/// A database from a newer schema is refused rather than misread.
#[tokio::test]
async fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sotto.db");
    drop(SqliteStore::open(&path).unwrap());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    let err = SqliteStore::open(&path).unwrap_err().to_string();
    assert!(err.contains("newer"), "{err}");
}
