//! Two server processes on one PostgreSQL database and one NATS: real-time delivery
//! both ways between users on different nodes, group fan-out across nodes, and a
//! `kill -9` of one node after which its users carry on through the other with nothing
//! lost.
//!
//! Needs PostgreSQL (`SOTTO_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`; the test creates and drops a database of
//! its own) and NATS (`SOTTO_TEST_NATS_URL`, default `nats://127.0.0.1:4222`). Without
//! them it skips loudly, or fails with `SOTTO_REQUIRE_SERVICES=1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Running, name, start};
use sotto_client::{Client, ClientError, Event};
use sotto_server_store::suite::service_missing;
use sotto_server_store_postgres::scratch::Scratch;
use sotto_testkit::proxy::Proxy;
use tokio::sync::{mpsc, oneshot};

/// Longer than any real delivery, shorter than the server's 30 s keepalive (whose
/// round trip also re-reads the mailbox and would hide a fan-out that never woke).
const DELIVERY: Duration = Duration::from_secs(15);

/// A fresh database and the NATS URL, or `None` (reported) when a service is absent.
async fn services() -> Option<(Scratch, String, String)> {
    let admin_url = std::env::var("SOTTO_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let nats_url =
        std::env::var("SOTTO_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let (database, db_url) = match Scratch::database(&admin_url).await {
        Ok(made) => made,
        Err(e) => {
            service_missing("PostgreSQL", &e);
            return None;
        }
    };
    let nats_addr = nats_url.trim_start_matches("nats://").to_owned();
    if let Err(e) = tokio::net::TcpStream::connect(&nats_addr).await {
        service_missing("NATS", &e);
        return None;
    }
    Some((database, db_url, nats_url))
}

/// Waits until a WebSocket on the node at `addr` has read its mailbox (its first read
/// follows the confirmation of its fan-out subscription).
async fn wait_for_store_read(addr: &str) {
    let addr = addr.to_owned();
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + DELIVERY;
        loop {
            let (status, body) = common::http(&addr, "GET", "/metrics", None, None).unwrap();
            assert_eq!(status, 200);
            let reads: u64 = String::from_utf8_lossy(&body)
                .lines()
                .find_map(|l| l.strip_prefix("sotto_websocket_store_reads_total "))
                .and_then(|v| v.parse().ok())
                .expect("a store-read counter");
            if reads > 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the WebSocket never read its mailbox"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
}

fn node(dir: &std::path::Path, db_url: &str, nats_url: &str, prefix: &str) -> Running {
    start(
        dir,
        &[
            ("SOTTO_STORE", "postgres"),
            ("SOTTO_DATABASE_URL", db_url),
            ("SOTTO_DATABASE_POOL_SIZE", "4"),
            ("SOTTO_FANOUT", "nats"),
            ("SOTTO_NATS_URL", nats_url),
            ("SOTTO_NATS_PREFIX", prefix),
        ],
    )
}

/// A client listening in real time: texts of received messages arrive on the channel.
struct Listening {
    client: Arc<Client>,
    texts: mpsc::UnboundedReceiver<String>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ClientError>>,
}

fn listen(client: Client) -> Listening {
    let client = Arc::new(client);
    let (tx, texts) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = {
        let client = Arc::clone(&client);
        tokio::spawn(async move {
            client
                .listen(
                    move |events| {
                        for event in events {
                            if let Event::Message(m) = event {
                                let _ = tx.send(m.text.unwrap_or_default());
                            }
                        }
                    },
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
        })
    };
    Listening {
        client,
        texts,
        stop,
        task,
    }
}

impl Listening {
    async fn next(&mut self) -> String {
        tokio::time::timeout(DELIVERY, self.texts.recv())
            .await
            .expect("not delivered in real time")
            .unwrap()
    }

    /// Stops listening and hands the client back.
    async fn stop(self) -> Client {
        let _ = self.stop.send(());
        let _ = self.task.await.unwrap();
        Arc::into_inner(self.client).expect("no other holder of the client")
    }
}

async fn registered(homes: &std::path::Path, who: &str, node: &Running) -> Client {
    let client = Client::open(&homes.join(who), &format!("http://{}", node.addr)).unwrap();
    client.register(&name(who), "phone").await.unwrap();
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deliver_in_real_time_and_survive_losing_one() {
    let Some((_database, db_url, nats_url)) = services().await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let prefix = format!("sotto-test-{}", std::process::id());
    let node1 = node(&data.path().join("node1"), &db_url, &nats_url, &prefix);
    let node2 = node(&data.path().join("node2"), &db_url, &nats_url, &prefix);
    let homes = tempfile::tempdir().unwrap();
    let alice = registered(homes.path(), "alice", &node1).await;
    let bob = registered(homes.path(), "bob", &node2).await;
    let carol = registered(homes.path(), "carol", &node2).await;
    let mut alice = listen(alice);
    let mut bob = listen(bob);
    let mut carol = listen(carol);

    // 1:1 across nodes, both ways, each delivered as it is sent.
    alice.client.send_text(name("bob"), "hi bob").await.unwrap();
    assert_eq!(bob.next().await, "hi bob");
    bob.client
        .send_text(name("alice"), "hi alice")
        .await
        .unwrap();
    assert_eq!(alice.next().await, "hi alice");

    // A group spanning both nodes.
    let group = alice
        .client
        .create_group("club", &[name("bob"), name("carol")])
        .await
        .unwrap();
    alice.client.send_text(group, "hello club").await.unwrap();
    assert_eq!(bob.next().await, "hello club");
    assert_eq!(carol.next().await, "hello club");
    carol.client.send_text(group, "carol here").await.unwrap();
    assert_eq!(alice.next().await, "carol here");
    assert_eq!(bob.next().await, "carol here");

    // Node 1 acknowledges five sends and is killed at once.
    for i in 0..5 {
        alice
            .client
            .send_text(name("bob"), &format!("before the crash {i}"))
            .await
            .unwrap();
    }
    node1.kill9();
    for i in 0..5 {
        assert_eq!(bob.next().await, format!("before the crash {i}"));
    }

    // While alice is cut off, bob writes; she comes back through node 2.
    let mut alice_client = alice.stop().await;
    for i in 0..3 {
        bob.client
            .send_text(name("alice"), &format!("while you were away {i}"))
            .await
            .unwrap();
    }
    carol.client.send_text(group, "still here").await.unwrap();
    assert_eq!(bob.next().await, "still here");
    alice_client
        .set_server(&format!("http://{}", node2.addr))
        .unwrap();
    let mut alice = listen(alice_client);
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(alice.next().await);
    }
    assert_eq!(
        got,
        [
            "while you were away 0",
            "while you were away 1",
            "while you were away 2",
            "still here"
        ]
    );
    // And she is live on node 2 now.
    bob.client
        .send_text(name("alice"), "welcome back")
        .await
        .unwrap();
    assert_eq!(alice.next().await, "welcome back");
    alice.client.send_text(group, "thanks").await.unwrap();
    assert_eq!(bob.next().await, "thanks");
    assert_eq!(carol.next().await, "thanks");

    // Nothing more arrived than was sent: no duplicates anywhere.
    for listener in [alice, bob, carol] {
        let mut listener = listener;
        assert!(
            listener.texts.try_recv().is_err(),
            "an unexpected extra message"
        );
        listener.stop().await;
    }
    node2.stop();
}

/// A device has one live connection across the deployment: connecting through node 2
/// closes its older WebSocket on node 1 with "replaced" (4000), as on a single node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_another_node_replaces_the_older_connection() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let Some((_database, db_url, nats_url)) = services().await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let prefix = format!("sotto-replace-{}", std::process::id());
    let node1 = node(&data.path().join("node1"), &db_url, &nats_url, &prefix);
    let node2 = node(&data.path().join("node2"), &db_url, &nats_url, &prefix);
    let addr1 = node1.addr.clone();
    let dave = tokio::task::spawn_blocking(move || common::register(&addr1, "dave", 7))
        .await
        .unwrap();
    let connect = |addr: String, token: String| async move {
        let mut req = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        tokio_tungstenite::connect_async(req).await.unwrap().0
    };
    let mut old = connect(node1.addr.clone(), dave.token.clone()).await;
    // The socket reads its mailbox only once its subscription is in place at NATS:
    // after that read, node 1 hears the newer connection's announcement.
    wait_for_store_read(&node1.addr).await;
    let mut new = connect(node2.addr.clone(), dave.token.clone()).await;
    let closed = tokio::time::timeout(DELIVERY, async {
        while let Some(frame) = old.next().await {
            if let Ok(Message::Close(Some(close))) = frame {
                return Some(close);
            }
        }
        None
    })
    .await
    .expect("the older connection was not closed");
    let close = closed.expect("closed without a close frame");
    assert_eq!(u16::from(close.code), 4000, "{close:?}");
    // The newer connection stays open.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), new.next())
            .await
            .is_err(),
        "the newer connection must stay open"
    );
    drop(new);
    node1.stop();
    node2.stop();
}

/// How node 1 dies right after answering alice's send.
#[derive(Debug, Clone, Copy)]
enum Death {
    /// `kill -9` the instant the 202 arrives.
    Process,
    /// Its host goes: what it had not yet handed to NATS is lost with it (its link
    /// becomes a black hole that never closes), then the process is killed.
    Host,
    /// Its link to NATS is already a black hole when alice sends (NATS cannot confirm;
    /// the node answers after its bound), then it dies: only the other node noticing
    /// its silence can wake bob.
    CutOffThenHost,
}

/// The reproduction: two nodes on PostgreSQL + NATS, node 1's link to NATS
/// slowed to 300 ms each way, alice sending through node 1, bob following on node 2.
/// Node 1 dies the instant it acknowledges alice's message; bob's follower still shows
/// it (and, in the first round, the conversation it opens), three rounds in a row for
/// each way of dying. Before the fix, the first round already left bob waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_acknowledged_by_a_node_that_dies_at_once_is_delivered() {
    let Some((_database, db_url, nats_url)) = services().await else {
        return;
    };
    let nats_addr: std::net::SocketAddr = nats_url
        .trim_start_matches("nats://")
        .parse()
        .expect("SOTTO_TEST_NATS_URL is nats://<ip>:<port>");
    let data = tempfile::tempdir().unwrap();
    let prefix = format!("sotto-crash-{}", std::process::id());
    let node2 = node(&data.path().join("node2"), &db_url, &nats_url, &prefix);
    let homes = tempfile::tempdir().unwrap();
    let bob = registered(homes.path(), "bob", &node2).await;
    let mut bob = listen(bob);
    let mut alice: Option<Client> = None;
    let mut round = 0;
    for death in [Death::Process, Death::Host, Death::CutOffThenHost] {
        for _ in 0..3 {
            round += 1;
            let link = Proxy::start(nats_addr, Duration::from_millis(300))
                .await
                .unwrap();
            let node1 = node(
                &data.path().join(format!("node1-{round}")),
                &db_url,
                &format!("nats://{}", link.addr()),
                &prefix,
            );
            let client = match alice.take() {
                None => registered(homes.path(), "alice", &node1).await,
                Some(mut client) => {
                    client
                        .set_server(&format!("http://{}", node1.addr))
                        .unwrap();
                    client
                }
            };
            if matches!(death, Death::CutOffThenHost) {
                link.black_hole();
            }
            let text = format!("round {round} ({death:?})");
            client.send_text(name("bob"), &text).await.unwrap();
            // The 202 is in: the node dies now.
            if matches!(death, Death::Host) {
                link.black_hole();
            }
            let started = std::time::Instant::now();
            node1.kill9();
            assert_eq!(bob.next().await, text);
            eprintln!("{text}: delivered {:?} after the kill", started.elapsed());
            alice = Some(client);
        }
    }
    assert!(bob.texts.try_recv().is_err(), "an unexpected extra message");
    bob.stop().await;
    node2.stop();
}
