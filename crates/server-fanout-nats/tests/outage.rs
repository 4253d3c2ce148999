//! The NATS fan-out between two "nodes" on a private nats-server: wake-ups cross
//! nodes, and when NATS goes away and comes back, connected devices are woken to catch
//! up (wake-ups published meanwhile may be lost; the store still has the entries).
//!
//! Needs the `nats-server` binary (it starts its own on a free port, so the shared
//! service is untouched); skips loudly without it, or fails with
//! `SOTTO_REQUIRE_SERVICES=1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sotto_fanout_nats::NatsFanout;
use sotto_proto::DeviceId;
use sotto_server::{Fanout, FanoutSubscription, Wake};
use sotto_server_store::suite::service_missing;

fn nats_binary() -> Option<String> {
    [
        "nats-server",
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
    ]
    .into_iter()
    .find(|b| {
        Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    })
    .map(str::to_owned)
}

struct Nats(Child);

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_nats(binary: &str, port: u16) -> Nats {
    // Wrapped at once, so the process is killed and reaped on every path.
    let nats = Nats(
        Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return nats;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nats-server did not start on port {port}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private nats-server and two "nodes" connected to it.
struct Cluster {
    binary: String,
    port: u16,
    nats: Nats,
    node1: NatsFanout,
    node2: NatsFanout,
}

/// `None` (reported) when there is no nats-server binary.
async fn cluster(prefix: &str) -> Option<Cluster> {
    let Some(binary) = nats_binary() else {
        service_missing(
            "the nats-server binary",
            &"not found on PATH or in /usr/sbin",
        );
        return None;
    };
    let port = free_port();
    let nats = start_nats(&binary, port).await;
    let url = format!("nats://127.0.0.1:{port}");
    let node1 = NatsFanout::connect(&url, prefix).await.unwrap();
    let node2 = NatsFanout::connect(&url, prefix).await.unwrap();
    Some(Cluster {
        binary,
        port,
        nats,
        node1,
        node2,
    })
}

async fn woken(sub: &mut FanoutSubscription, what: &str) -> Wake {
    tokio::time::timeout(Duration::from_secs(10), sub.woken())
        .await
        .unwrap_or_else(|_| panic!("not woken: {what}"))
}

/// Lets pending wake-ups arrive and consumes them.
async fn settle(sub: &mut FanoutSubscription) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    while tokio::time::timeout(Duration::from_millis(50), sub.woken())
        .await
        .is_ok()
    {}
}

async fn not_woken(sub: &mut FanoutSubscription, within: Duration) -> bool {
    tokio::time::timeout(within, sub.woken()).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_ups_cross_nodes_and_survive_a_nats_outage() {
    let Some(Cluster {
        binary,
        port,
        nats,
        node1,
        node2,
    }) = cluster("outage-test").await
    else {
        return;
    };
    let alice = DeviceId::from_bytes([1; 16]);
    let bob = DeviceId::from_bytes([2; 16]);

    // Bob's socket is on node 2. Its subscription wakes once when it is in place.
    let mut bob_sub = node2.subscribe(bob);
    assert_eq!(
        woken(&mut bob_sub, "subscription in place").await,
        Wake::Reread
    );
    // The client's first `Connected` event also wakes everything (harmless: one extra
    // read); let it pass so the next wake-up is the other node's alone.
    settle(&mut bob_sub).await;
    node1.notify(bob, Wake::UpTo(5)).await;
    // The seq travels, so a node that already sent it reads nothing.
    assert_eq!(
        woken(&mut bob_sub, "a wake-up from the other node").await,
        Wake::UpTo(5)
    );
    settle(&mut bob_sub).await;
    node1.notify(alice, Wake::UpTo(9)).await;
    assert!(not_woken(&mut bob_sub, Duration::from_millis(300)).await);

    // NATS goes away and comes back on the same address.
    drop(nats);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile an entry stored on bob's own node still wakes him.
    node2.notify(bob, Wake::UpTo(7)).await;
    assert_eq!(
        woken(&mut bob_sub, "a wake-up on the same node during the outage").await,
        Wake::UpTo(7)
    );
    let _nats = start_nats(&binary, port).await;
    // Without any notify: the reconnect itself wakes bob, so his connection re-reads
    // the store and picks up whatever was stored while wake-ups could not travel.
    assert_eq!(
        woken(&mut bob_sub, "catch-up after NATS came back").await,
        Wake::Reread
    );
    // And the subscription works again, across nodes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    node1.notify(bob, Wake::UpTo(8)).await;
    assert_eq!(
        woken(&mut bob_sub, "a wake-up after the outage").await,
        Wake::UpTo(8)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_on_another_node_supersedes_the_older_one() {
    let Some(Cluster {
        nats: _nats,
        node1,
        node2,
        ..
    }) = cluster("supersede-test").await
    else {
        return;
    };
    let bob = DeviceId::from_bytes([2; 16]);
    let carol = DeviceId::from_bytes([3; 16]);

    let mut old = node1.subscribe(bob);
    let mut old_superseded = old.take_superseded();
    woken(&mut old, "subscription in place").await;
    // The node's own announcement (this very connection) supersedes nothing, and
    // another device's connection is not bob's.
    node1.announce_connection(bob).await;
    node2.announce_connection(carol).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), old_superseded.announced())
            .await
            .is_err(),
        "superseded by its own or another device's announcement"
    );

    // Bob connects on node 2: the connection on node 1 learns it is the older one.
    let mut new = node2.subscribe(bob);
    let mut new_superseded = new.take_superseded();
    woken(&mut new, "subscription in place").await;
    node2.announce_connection(bob).await;
    tokio::time::timeout(Duration::from_secs(10), old_superseded.announced())
        .await
        .expect("the older connection on node 1 is told");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), new_superseded.announced())
            .await
            .is_err(),
        "the new connection must not supersede itself"
    );
}
