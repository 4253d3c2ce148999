//! The NATS fan-out between "nodes" on a private nats-server: wake-ups cross nodes;
//! when NATS goes away and comes back, connected devices are woken to catch up
//! (wake-ups published meanwhile may be lost; the store still has the entries); and
//! no wake-up dies with the node that published it: publishes and subscriptions are
//! confirmed by NATS, and a node falling silent makes the others' devices re-read.
//! Slow, stalled and dead links are a proxy between a node and NATS.
//!
//! Needs the `nats-server` binary (it starts its own on a free port, so the shared
//! service is untouched); skips loudly without it, or fails with
//! `SOTTO_REQUIRE_SERVICES=1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sotto_proto::DeviceId;
use sotto_server_fanout::{Fanout, FanoutSubscription, Wake};
use sotto_server_fanout_nats::{NatsFanout, Timing};
use sotto_server_store::suite::service_missing;
use sotto_testkit::proxy::Proxy;

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
    // Polls for the port (up to 30 s: a loaded machine starts processes slowly).
    for _ in 0..600 {
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

/// Clocks that keep heartbeats out of a test about something else: a peer would have
/// to be silent for an hour to count as lost.
const NO_HEARTBEAT_WAKES: Timing = Timing {
    heartbeat: Duration::from_secs(1),
    peer_lost_after: Duration::from_secs(3600),
    confirm_within: Duration::from_secs(2),
};

/// A private nats-server.
struct Server {
    binary: String,
    port: u16,
    nats: Nats,
}

impl Server {
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
}

/// `None` (reported) when there is no nats-server binary.
async fn server() -> Option<Server> {
    let Some(binary) = nats_binary() else {
        service_missing(
            "the nats-server binary",
            &"not found on PATH or in /usr/sbin",
        );
        return None;
    };
    let port = free_port();
    let nats = start_nats(&binary, port).await;
    Some(Server { binary, port, nats })
}

async fn node(url: &str, prefix: &str, timing: Timing) -> NatsFanout {
    NatsFanout::connect_with(url, prefix, timing).await.unwrap()
}

/// Bound for a wake-up that must come: far above any real delivery, so a loaded
/// machine does not fail it; the tests that tell paths apart do it by what arrives,
/// not by when.
const BOUND: Duration = Duration::from_secs(10);

async fn woken(sub: &mut FanoutSubscription, what: &str) -> Wake {
    tokio::time::timeout(BOUND, sub.woken())
        .await
        .unwrap_or_else(|_| panic!("not woken: {what}"))
}

/// Waits until `node` hears `n` other nodes (polls what it reports).
async fn wait_heard(node: &NatsFanout, n: usize) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while node.peers_heard() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node hears {} peers, expected {n}",
            node.peers_heard()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// No wake-up within `within` (a check that something does not happen: a slow machine
/// can only make it pass more easily, never fail it).
async fn not_woken(sub: &mut FanoutSubscription, within: Duration) -> bool {
    tokio::time::timeout(within, sub.woken()).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_ups_cross_nodes_and_survive_a_nats_outage() {
    let Some(Server { binary, port, nats }) = server().await else {
        return;
    };
    let url = format!("nats://127.0.0.1:{port}");
    let node1 = node(&url, "outage-test", NO_HEARTBEAT_WAKES).await;
    let node2 = node(&url, "outage-test", NO_HEARTBEAT_WAKES).await;
    let alice = DeviceId::from_bytes([1; 16]);
    let bob = DeviceId::from_bytes([2; 16]);

    // Bob's socket is on node 2; once `subscribe` returns, NATS has the subscription,
    // so a wake-up from node 1 reaches it (and nothing else woke it).
    let mut bob_sub = node2.subscribe(bob).await;
    node1.notify(bob, Wake::UpTo(5)).await;
    // The seq travels, so a node that already sent it reads nothing.
    assert_eq!(
        woken(&mut bob_sub, "a wake-up from the other node").await,
        Wake::UpTo(5)
    );
    node1.notify(alice, Wake::UpTo(9)).await;
    assert!(not_woken(&mut bob_sub, Duration::from_millis(300)).await);

    // NATS goes away and comes back on the same address.
    drop(nats);
    // Meanwhile an entry stored on bob's own node still wakes him, and the sender is
    // not held up for long by a NATS that cannot confirm.
    node2.notify(bob, Wake::UpTo(7)).await;
    assert_eq!(
        woken(&mut bob_sub, "a wake-up on the same node during the outage").await,
        Wake::UpTo(7)
    );
    let _nats = start_nats(&binary, port).await;
    // Without any notify: the reconnect itself wakes bob, once his subscription is
    // back in place, so his connection re-reads the store and picks up whatever was
    // stored while wake-ups could not travel.
    assert_eq!(
        woken(&mut bob_sub, "catch-up after NATS came back").await,
        Wake::Reread
    );
    // And the subscription works again, across nodes (node 1's wake-up is sent when
    // its own connection is back, if it is not yet).
    node1.notify(bob, Wake::UpTo(8)).await;
    assert_eq!(
        woken(&mut bob_sub, "a wake-up after the outage").await,
        Wake::UpTo(8)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_on_another_node_supersedes_the_older_one() {
    let Some(server) = server().await else {
        return;
    };
    let node1 = node(&server.url(), "supersede-test", NO_HEARTBEAT_WAKES).await;
    let node2 = node(&server.url(), "supersede-test", NO_HEARTBEAT_WAKES).await;
    let bob = DeviceId::from_bytes([2; 16]);
    let carol = DeviceId::from_bytes([3; 16]);

    let mut old = node1.subscribe(bob).await;
    let mut old_superseded = old.take_superseded();
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
    let mut new = node2.subscribe(bob).await;
    let mut new_superseded = new.take_superseded();
    node2.announce_connection(bob).await;
    tokio::time::timeout(BOUND, old_superseded.announced())
        .await
        .expect("the older connection on node 1 is told");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), new_superseded.announced())
            .await
            .is_err(),
        "the new connection must not supersede itself"
    );
}

/// The crash right after the acknowledgement, simulated deterministically: node 1's
/// link to NATS is slow (300 ms each way), so a wake-up it publishes sits in flight
/// for a while. The moment `notify` returns (when the server answers the sender),
/// node 1's host dies: every byte it had not handed to NATS is lost, and its
/// connection never closes. Bob, on node 2, still gets the wake-up itself (its seq:
/// this is not the heartbeat path, which only says "re-read" and is switched off
/// here). Before `notify` waited for NATS, it returned with the wake-up still in the
/// slow link, and bob was never woken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_up_is_with_nats_before_notify_returns() {
    let Some(server) = server().await else {
        return;
    };
    let link = Proxy::start(server.addr(), Duration::from_millis(300))
        .await
        .unwrap();
    let prefix = "confirmed-publish";
    let node1 = node(
        &format!("nats://{}", link.addr()),
        prefix,
        NO_HEARTBEAT_WAKES,
    )
    .await;
    let node2 = node(&server.url(), prefix, NO_HEARTBEAT_WAKES).await;
    let bob = DeviceId::from_bytes([2; 16]);
    let mut bob_sub = node2.subscribe(bob).await;
    for seq in 1..=3 {
        node1.notify(bob, Wake::UpTo(seq)).await;
        // The host dies: what node 1 had not handed over dies with it.
        link.hold();
        assert_eq!(
            woken(&mut bob_sub, "the acknowledged message's wake-up").await,
            Wake::UpTo(seq)
        );
        link.forward();
    }
    link.black_hole();
    node1.notify(bob, Wake::UpTo(4)).await;
    drop(node1);
    // Not the seq (nobody has it); and nothing pretends otherwise.
    assert!(not_woken(&mut bob_sub, Duration::from_millis(500)).await);
}

/// Heartbeat tests: node 1 behind a proxy, node 2 direct, fast clocks; bob subscribed
/// on node 2, node 2 hearing node 1 (a node only misses peers it has heard), and a
/// first wake-up from node 1 through the working link already consumed.
async fn heartbeat_pair(
    prefix: &str,
) -> Option<(Server, Proxy, NatsFanout, NatsFanout, FanoutSubscription)> {
    let server = server().await?;
    let fast = Timing {
        heartbeat: Duration::from_millis(100),
        peer_lost_after: Duration::from_secs(1),
        confirm_within: Duration::from_millis(300),
    };
    let link = Proxy::start(server.addr(), Duration::ZERO).await.unwrap();
    let node1 = node(&format!("nats://{}", link.addr()), prefix, fast).await;
    let node2 = node(&server.url(), prefix, fast).await;
    let bob = DeviceId::from_bytes([2; 16]);
    let mut bob_sub = node2.subscribe(bob).await;
    wait_heard(&node2, 1).await;
    node1.notify(bob, Wake::UpTo(1)).await;
    assert_eq!(woken(&mut bob_sub, "link works").await, Wake::UpTo(1));
    Some((server, link, node1, node2, bob_sub))
}

/// The host-crash case that confirmation cannot cover: node 1 cannot reach NATS
/// (its link is a black hole, the connection looks open), answers its sender after
/// the confirmation bound, and dies. Node 2 notices node 1's heartbeats stopped and
/// makes every device connected to it re-read its mailbox. Without heartbeats, bob
/// would wait until he reconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_falls_silent_makes_the_others_reread() {
    let Some((_server, link, node1, _node2, mut bob_sub)) = heartbeat_pair("heartbeats").await
    else {
        return;
    };
    assert!(node1.sync().await, "a working link confirms");

    link.black_hole();
    node1
        .notify(DeviceId::from_bytes([2; 16]), Wake::UpTo(2))
        .await;
    assert!(!node1.sync().await, "a black hole cannot confirm");
    drop(node1);
    assert_eq!(
        woken(&mut bob_sub, "node 1 fell silent").await,
        Wake::Reread
    );
}

/// A node that was silent (a stalled link) and is heard again may have published
/// wake-ups NATS never got: devices re-read when it falls silent and again when it is
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_heard_again_makes_the_others_reread() {
    let Some((_server, link, node1, node2, mut bob_sub)) = heartbeat_pair("heard-again").await
    else {
        return;
    };

    link.hold();
    assert_eq!(woken(&mut bob_sub, "node 1 stalled").await, Wake::Reread);
    assert_eq!(node2.peers_heard(), 0);
    link.forward();
    // Held heartbeats (and anything else) arrive now: node 1 is back.
    assert_eq!(woken(&mut bob_sub, "node 1 is back").await, Wake::Reread);
    assert_eq!(node2.peers_heard(), 1);
    drop(node1);
}

/// A subscription is in place at NATS when `subscribe` returns: node 2's link is slow
/// (300 ms each way), and node 1 publishes the instant bob's socket subscribed. Before
/// `subscribe` waited for NATS, the SUB was still in the slow link, the wake-up was
/// dropped, and bob's socket (which had already read its mailbox) waited forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_is_in_place_when_subscribe_returns() {
    let Some(server) = server().await else {
        return;
    };
    let link = Proxy::start(server.addr(), Duration::from_millis(300))
        .await
        .unwrap();
    let prefix = "confirmed-subscribe";
    let node1 = node(&server.url(), prefix, NO_HEARTBEAT_WAKES).await;
    let node2 = node(
        &format!("nats://{}", link.addr()),
        prefix,
        NO_HEARTBEAT_WAKES,
    )
    .await;
    for n in 1..=3u8 {
        let device = DeviceId::from_bytes([n; 16]);
        let mut sub = node2.subscribe(device).await;
        node1.notify(device, Wake::UpTo(u64::from(n))).await;
        assert_eq!(
            woken(&mut sub, "published right after subscribing").await,
            Wake::UpTo(u64::from(n))
        );
    }
}
