//! Kill -9 the real server at random moments while a client sends; restart it on the
//! same data directory. Every acknowledged message must be delivered, exactly once;
//! a send whose answer was lost is retried with the same id and is not delivered twice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{drain, group_of_two, http, json_of, private_message, register, start};
use serde_json::json;
use sotto_proto::{ConversationId, MessageId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// 202: the server said it is durable.
    Acked,
    /// The connection broke: it may or may not have been stored.
    Unknown,
}

fn send(addr: &str, token: &str, group: ConversationId, n: u64) -> std::io::Result<u16> {
    let id = MessageId::new_v7(1_800_000_000_000 + n, &[7, 7, 0, 0, 0, 0, 0, 0, 0, n as u8]);
    let body = private_message(group, 1, 1, &n.to_be_bytes());
    let (status, _) = http(
        addr,
        "POST",
        &format!("/v1/groups/{group}/messages"),
        Some(token),
        Some(&json!({"message_id": id.to_string(), "body": sotto_proto::b64::encode(&body)})),
    )?;
    Ok(status)
}

#[test]
fn acknowledged_messages_survive_kill_9_and_arrive_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), &[]);
    let alice = register(&server.addr, "alice", 1);
    let bob = register(&server.addr, "bob", 2);
    let group = ConversationId::from_bytes([9; 16]);
    group_of_two(&server.addr, &alice, &bob, group);

    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    let outcomes: Arc<Mutex<BTreeMap<u64, Outcome>>> = Arc::default();
    let mut next = 0u64;
    let rounds = 12;
    for round in 0..rounds {
        // A sender on its own thread, back to back, until the server dies.
        let stop = Arc::new(AtomicBool::new(false));
        let (addr, token) = (server.addr.clone(), alice.token.clone());
        let (o, s) = (outcomes.clone(), stop.clone());
        let first = next;
        let sender = std::thread::spawn(move || {
            let mut n = first;
            while !s.load(Ordering::SeqCst) {
                match send(&addr, &token, group, n) {
                    Ok(202) => {
                        o.lock().unwrap().insert(n, Outcome::Acked);
                    }
                    Ok(status) => panic!("message {n}: unexpected status {status}"),
                    Err(_) => {
                        o.lock().unwrap().insert(n, Outcome::Unknown);
                        return n + 1;
                    }
                }
                n += 1;
            }
            n
        });
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        std::thread::sleep(Duration::from_millis(20 + (seed >> 33) % 150));
        let _ = server.kill9();
        stop.store(true, Ordering::SeqCst);
        next = sender.join().unwrap();

        server = start(dir.path(), &[]);
        // Retry what we do not know about, with the same message id.
        let unknown: Vec<u64> = outcomes
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, o)| **o == Outcome::Unknown)
            .map(|(n, _)| *n)
            .collect();
        for n in unknown {
            assert_eq!(
                send(&server.addr, &alice.token, group, n).unwrap(),
                202,
                "retry of {n} in round {round}"
            );
            outcomes.lock().unwrap().insert(n, Outcome::Acked);
        }
    }

    let delivered: Vec<u64> = drain(&server.addr, &bob, true)
        .into_iter()
        .filter(|(kind, _)| kind == "message")
        .map(|(_, body)| u64::from_be_bytes(body[body.len() - 8..].try_into().unwrap()))
        .collect();
    let acked: Vec<u64> = outcomes.lock().unwrap().keys().copied().collect();
    let mut sorted = delivered.clone();
    sorted.sort_unstable();
    let mut unique = sorted.clone();
    unique.dedup();
    assert_eq!(
        unique.len(),
        delivered.len(),
        "a message was delivered twice"
    );
    assert_eq!(unique, acked, "delivered != acknowledged (seed above)");
    assert_eq!(delivered, sorted, "delivered out of order");
    assert!(
        acked.len() > rounds,
        "too few messages to mean anything: {}",
        acked.len()
    );
    println!(
        "{} messages acknowledged over {rounds} kill -9 rounds",
        acked.len()
    );

    // The mailbox is empty after the ack, and stays so across a restart.
    server.stop();
    let server = start(dir.path(), &[]);
    assert!(drain(&server.addr, &bob, false).is_empty());
    let (status, body) = http(
        &server.addr,
        "GET",
        "/v1/mailbox?after=0",
        Some(&bob.token),
        None,
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(json_of(&body)["entries"], json!([]));
    server.stop();
}
