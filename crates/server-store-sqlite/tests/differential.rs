//! Differential property test: random schedules of sends, commits (adds, removes,
//! stale epochs), acks, fetches, device removals, key-package traffic, link slots and
//! expiry run against the in-memory reference store and SQLite; every answer and the
//! store-wide counts must agree at each step.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use proptest::prelude::*;
use sotto_server_store::suite::{T0, dev, gid, msg_id, register, user};
use sotto_server_store::{CommitSubmission, MemoryStore, MessageSubmission, Store};
use sotto_server_store_sqlite::SqliteStore;

const DEVICES: u8 = 6;

#[derive(Debug, Clone)]
enum Op {
    Send {
        sender: u8,
        back: u64,
        id: u64,
    },
    Commit {
        sender: u8,
        skew: i8,
        add: Option<u8>,
        remove: Option<u8>,
    },
    Ack {
        device: u8,
        up_to: u64,
    },
    Fetch {
        device: u8,
        after: u64,
        limit: u32,
    },
    RemoveDevice {
        device: u8,
    },
    Upload {
        device: u8,
        count: u8,
        last_resort: bool,
    },
    Claim {
        device: u8,
    },
    PutSlot {
        slot: u8,
        ttl: u64,
    },
    TakeSlot {
        slot: u8,
    },
    Tick {
        secs: u64,
    },
    Expire {
        retention: u64,
    },
}

fn device() -> impl Strategy<Value = u8> {
    1..=DEVICES
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (device(), 0..5u64, 0..8u64).prop_map(|(sender, back, id)| Op::Send { sender, back, id }),
        4 => (device(), prop_oneof![1 => Just(-1i8), 6 => Just(0i8), 1 => Just(1i8)], proptest::option::of(device()), proptest::option::of(device()))
            .prop_map(|(sender, skew, add, remove)| Op::Commit { sender, skew, add, remove }),
        3 => (device(), 0..12u64).prop_map(|(device, up_to)| Op::Ack { device, up_to }),
        3 => (device(), 0..12u64, 0..5u32).prop_map(|(device, after, limit)| Op::Fetch { device, after, limit }),
        1 => device().prop_map(|device| Op::RemoveDevice { device }),
        1 => (device(), 0..3u8, any::<bool>()).prop_map(|(device, count, last_resort)| Op::Upload { device, count, last_resort }),
        1 => device().prop_map(|device| Op::Claim { device }),
        1 => (0..3u8, 0..100u64).prop_map(|(slot, ttl)| Op::PutSlot { slot, ttl }),
        1 => (0..3u8).prop_map(|slot| Op::TakeSlot { slot }),
        2 => (0..200u64).prop_map(|secs| Op::Tick { secs }),
        1 => (0..300u64).prop_map(|retention| Op::Expire { retention }),
    ]
}

/// Applies one op to a store; returns a printable answer to compare.
async fn apply<S: Store>(store: &S, op: &Op, now: u64, counter: u64) -> String {
    let epoch = store.group(gid(1)).await.unwrap().map_or(0, |g| g.epoch);
    let answer = match op {
        Op::Send { sender, back, id } => format!(
            "{:?}",
            store
                .submit_message(
                    MessageSubmission {
                        group: gid(1),
                        sender: dev(*sender),
                        epoch: epoch.saturating_sub(*back),
                        client_message_id: msg_id(*id),
                        body: vec![*sender, *id as u8],
                    },
                    now,
                )
                .await
        ),
        Op::Commit {
            sender,
            skew,
            add,
            remove,
        } => format!(
            "{:?}",
            store
                .submit_commit(
                    CommitSubmission {
                        group: gid(1),
                        sender: dev(*sender),
                        epoch: epoch.saturating_add_signed(i64::from(*skew)),
                        added: add.iter().map(|n| dev(*n)).collect(),
                        removed: remove.iter().map(|n| dev(*n)).collect(),
                        commit: vec![0xc0, counter as u8],
                        welcome: add.map(|_| vec![0xe1, counter as u8]),
                    },
                    now,
                )
                .await
        ),
        Op::Ack { device, up_to } => format!("{:?}", store.ack(dev(*device), *up_to).await),
        Op::Fetch {
            device,
            after,
            limit,
        } => {
            format!("{:?}", store.fetch(dev(*device), *after, *limit).await)
        }
        Op::RemoveDevice { device } => format!(
            "{:?}",
            store
                .remove_device(&user(&format!("user{device}")), dev(*device))
                .await
        ),
        Op::Upload {
            device,
            count,
            last_resort,
        } => format!(
            "{:?}",
            store
                .upload_key_packages(
                    dev(*device),
                    (0..*count)
                        .map(|i| vec![*device, i, counter as u8])
                        .collect(),
                    last_resort.then(|| vec![*device, 0xff, counter as u8]),
                )
                .await
        ),
        Op::Claim { device } => format!(
            "{:?}",
            store
                .claim_key_packages(&user(&format!("user{device}")))
                .await
        ),
        Op::PutSlot { slot, ttl } => format!(
            "{:?}",
            store
                .put_link_slot([*slot; 16], vec![*slot, counter as u8], now + ttl)
                .await
        ),
        Op::TakeSlot { slot } => format!("{:?}", store.take_link_slot([*slot; 16], now).await),
        Op::Tick { .. } => String::new(),
        Op::Expire { retention } => format!("{:?}", store.expire(now, *retention).await),
    };
    let status: Vec<String> = device_statuses(store).await;
    format!(
        "{answer} | {:?} | {:?} | {status:?}",
        store.stats().await,
        store.group(gid(1)).await
    )
}

async fn device_statuses<S: Store>(store: &S) -> Vec<String> {
    let mut out = Vec::new();
    for n in 1..=DEVICES {
        out.push(format!("{:?}", store.device_status(dev(n)).await));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn sqlite_matches_memory(ops in proptest::collection::vec(op(), 1..80)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let sqlite = SqliteStore::open(dir.path().join("d.db")).unwrap();
            let memory = MemoryStore::new();
            for n in 1..=DEVICES {
                register(&memory, &format!("user{n}"), n, T0).await.unwrap();
                register(&sqlite, &format!("user{n}"), n, T0).await.unwrap();
            }
            let founders = vec![dev(2), dev(3), dev(4)];
            memory.create_group(gid(1), dev(1), founders.clone()).await.unwrap();
            sqlite.create_group(gid(1), dev(1), founders).await.unwrap();
            let mut now = T0;
            for (counter, op) in ops.iter().enumerate() {
                if let Op::Tick { secs } = op {
                    now += secs;
                }
                let expected = apply(&memory, op, now, counter as u64).await;
                let actual = apply(&sqlite, op, now, counter as u64).await;
                prop_assert_eq!(actual, expected, "step {} ({:?})", counter, op);
            }
            Ok(())
        })?;
    }
}
