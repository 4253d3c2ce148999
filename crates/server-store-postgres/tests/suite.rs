//! The shared behaviour suite against PostgreSQL (a fresh schema per test), plus checks
//! of its own: group commit, two nodes racing on one database, refusing a newer schema.
//!
//! The database is `SOTTO_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). When it is unreachable the tests skip
//! loudly, or fail with `SOTTO_REQUIRE_SERVICES=1`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::sync::Arc;

use sotto_server_store::suite::{T0, dev, gid, msg_id, register, service_missing};
use sotto_server_store::{CommitSubmission, MessageSubmission, Store, StoreError};
use sotto_server_store_postgres::scratch::Scratch;
use sotto_server_store_postgres::{PostgresOptions, PostgresStore};

fn database_url() -> String {
    std::env::var("SOTTO_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn fresh_schema() -> Scratch {
    Scratch::schema(&database_url()).unwrap()
}

async fn open(schema: &Scratch) -> Result<PostgresStore, StoreError> {
    let mut options = PostgresOptions::new(database_url());
    options.pool_size = 8;
    options.schema = Some(schema.name().to_owned());
    PostgresStore::connect(&options).await
}

async fn fresh() -> Option<(PostgresStore, Scratch)> {
    let schema = fresh_schema();
    match open(&schema).await {
        Ok(store) => Some((store, schema)),
        Err(e) => {
            service_missing("PostgreSQL", &e);
            None
        }
    }
}

sotto_server_store::store_suite!(optional fresh().await);

fn message(sender: u8, id: u64) -> MessageSubmission {
    MessageSubmission {
        group: gid(1),
        sender: dev(sender),
        epoch: 0,
        client_message_id: msg_id(id),
        body: b"m".to_vec(),
    }
}

/// Concurrent writers share transactions (the shared check for batching stores).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_group_committed() {
    let Some((store, _schema)) = fresh().await else {
        return;
    };
    sotto_server_store::suite::concurrent_writes_are_group_committed(store).await;
}

/// Two nodes (two stores on one database) race commits for the same epochs and sends
/// with the same ids: one commit per epoch, one delivery per message id, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_database_agree() {
    let Some((node1, schema)) = fresh().await else {
        return;
    };
    let node2 = open(&schema).await.unwrap();
    let nodes = [Arc::new(node1), Arc::new(node2)];
    let members: Vec<u8> = (1..=10).collect();
    for n in &members {
        register(&*nodes[0], &format!("user{n}"), *n, T0)
            .await
            .unwrap();
    }
    nodes[1]
        .create_group(gid(1), dev(1), members.iter().map(|n| dev(*n)).collect())
        .await
        .unwrap();
    for epoch in 0..5u64 {
        let mut tasks = Vec::new();
        for n in members.clone() {
            let node = Arc::clone(&nodes[usize::from(n % 2)]);
            tasks.push(tokio::spawn(async move {
                node.submit_commit(
                    CommitSubmission {
                        group: gid(1),
                        sender: dev(n),
                        epoch,
                        added: vec![],
                        removed: vec![],
                        commit: vec![epoch as u8],
                        welcome: None,
                    },
                    T0,
                )
                .await
            }));
        }
        let mut accepted = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(a) => {
                    assert_eq!(a.epoch, epoch + 1);
                    accepted += 1;
                }
                Err(StoreError::StaleEpoch { current }) => assert_eq!(current, epoch + 1),
                Err(other) => panic!("unexpected: {other}"),
            }
        }
        assert_eq!(accepted, 1, "exactly one commit for epoch {epoch}");
    }
    // The same 50 sends arrive at both nodes at once (a client retrying through the
    // load balancer): each is delivered once.
    let mut tasks = Vec::new();
    for i in 0..50u64 {
        for node in &nodes {
            let node = Arc::clone(node);
            tasks.push(tokio::spawn(async move {
                let mut m = message(1, 1_000 + i);
                m.epoch = 5;
                node.submit_message(m, T0).await.unwrap()
            }));
        }
    }
    let mut fresh_sends = 0;
    for task in tasks {
        if !task.await.unwrap().duplicate {
            fresh_sends += 1;
        }
    }
    assert_eq!(fresh_sends, 50);
    let entries = nodes[0].fetch(dev(2), 0, 1_000).await.unwrap();
    // 5 commits from others (or 4 if dev(2) won one) + 50 messages, seqs gap-free.
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=entries.len() as u64).collect::<Vec<u64>>());
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.kind == sotto_server_store::EntryKind::Message)
            .count(),
        50
    );
    // Both devices ack on different nodes at the same time: every body goes.
    let (a, b) = tokio::join!(nodes[0].ack(dev(2), u64::MAX), async {
        let mut total = 0;
        for n in 3..=10u8 {
            total += nodes[1].ack(dev(n), u64::MAX).await.unwrap();
        }
        total
    });
    assert!(a.unwrap() > 0 && b > 0);
    nodes[0].ack(dev(1), u64::MAX).await.unwrap();
    let stats = nodes[1].stats().await.unwrap();
    assert_eq!((stats.mailbox_entries, stats.bodies), (0, 0));
}

/// A database migrated by a newer server is refused rather than misread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_schema_is_refused() {
    let Some((store, schema)) = fresh().await else {
        return;
    };
    sqlx::query("INSERT INTO sotto_migrations (version) VALUES (99)")
        .execute(store.pool())
        .await
        .unwrap();
    store.close().await;
    let err = open(&schema).await.unwrap_err().to_string();
    assert!(err.contains("newer"), "{err}");
}
