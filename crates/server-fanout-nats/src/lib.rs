//! The NATS [`Fanout`]: wake-ups between Sotto server nodes.
//!
//! A node that holds a device's WebSocket subscribes to that device's subject
//! (`<prefix>.wake.<device id in hex>`: an opaque random id, never a username); a node
//! that stores a mailbox entry publishes the entry's seq there (8 bytes, big-endian;
//! an empty message means "re-read"). Wake-ups carry no ciphertext: the woken
//! connection reads the mailbox from the shared store, so a lost or duplicated wake-up
//! costs at most one extra read, never a message.
//!
//! A node that opens a device's WebSocket also publishes its random node id on
//! `<prefix>.conn.<device id>`; a node holding an older connection of that device is
//! told through [`FanoutSubscription::take_superseded`] and closes it, so a device has
//! one live connection across the deployment.
//!
//! A node also wakes its own connections directly, without waiting for NATS's echo.
//!
//! # No wake-up dies with its node (decision 0008)
//!
//! `publish` only queues a message in the client's buffer. So that a node killed right
//! after answering a sender cannot take the recipients' wake-ups with it:
//!
//! - **Confirmed publishes.** [`Fanout::notify_many`] returns only after a *sync*: the
//!   node publishes a token on its own `<prefix>.sync.<node id>` subject and waits for
//!   it to come back. NATS handles a connection's messages in order, so when the token
//!   is back the server has routed every wake-up published before it. Concurrent
//!   callers share one sync (one round trip per batch, not per message). While NATS
//!   does not answer within [`Timing::confirm_within`] the caller goes on (the entry
//!   is durable; sending must not stop during an outage), and the heartbeats below
//!   cover what may be lost.
//! - **Confirmed subscriptions.** [`Fanout::subscribe`] returns only once a sync has
//!   come back after the subscription, so a mailbox read that follows cannot miss a
//!   wake-up the server then drops. After a reconnect (the client re-subscribes on its
//!   own) a sync runs before every local device is woken to re-read.
//! - **Heartbeats.** Each node publishes on `<prefix>.node.<node id>` every
//!   [`Timing::heartbeat`] and listens to the others. When a peer falls silent for
//!   [`Timing::peer_lost_after`] (killed, host lost, cut off from NATS) or is heard
//!   again after that, every device connected here re-reads its mailbox once: whatever
//!   the silent node published and NATS never got (bytes die in order, so its
//!   heartbeats died too) is read from the store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use sotto_proto::DeviceId;
use sotto_proto::ids::to_hex;
use sotto_server_fanout::{Fanout, FanoutSubscription, Wake, WakeMark};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// Default subject prefix.
pub const DEFAULT_PREFIX: &str = "sotto";

/// The clocks of the delivery guarantees (see the crate documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often this node says it is alive.
    pub heartbeat: Duration,
    /// A peer silent this long is taken for lost: devices connected here re-read.
    pub peer_lost_after: Duration,
    /// How long a publish or a subscription waits for NATS to confirm it before
    /// carrying on unconfirmed (heartbeats then cover it).
    pub confirm_within: Duration,
}

impl Default for Timing {
    /// A lost node is noticed 3 to 4 s after its last heartbeat; a sender waits at
    /// most 2 s for a NATS that does not answer.
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
            peer_lost_after: Duration::from_secs(3),
            confirm_within: Duration::from_secs(2),
        }
    }
}

/// This node's listeners of one device: wake-ups, "connected on another node", and
/// whether NATS has the subscription.
struct Listeners {
    wake: watch::Sender<WakeMark>,
    superseded: watch::Sender<u64>,
    live: watch::Sender<bool>,
}

type Local = Arc<Mutex<HashMap<DeviceId, Arc<Listeners>>>>;

/// A [`Fanout`] over a NATS connection.
#[derive(Clone)]
pub struct NatsFanout {
    client: async_nats::Client,
    prefix: String,
    local: Local,
    /// Random per process: tells this node's messages from others'.
    node: [u8; 16],
    /// Callers waiting for a sync (see [`NatsFanout::sync`]).
    syncs: mpsc::UnboundedSender<oneshot::Sender<bool>>,
    timing: Timing,
    /// How many other nodes this one hears (heartbeats within `peer_lost_after`).
    heard: Arc<AtomicUsize>,
    /// Tells the background tasks to stop when the last clone is dropped.
    _stop: Arc<StopOnDrop>,
}

impl std::fmt::Debug for NatsFanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsFanout")
            .field("prefix", &self.prefix)
            .field("timing", &self.timing)
            .finish_non_exhaustive()
    }
}

/// Stops the background tasks when the fan-out is gone (a node that shuts down stops
/// saying it is alive; the others then make their devices re-read, harmlessly).
struct StopOnDrop(watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// NATS could not be reached at start-up.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to NATS at {url}: {reason}")]
pub struct ConnectError {
    url: String,
    reason: String,
}

/// `url` with any `user:password@` (or token) part replaced by `***@`, for messages.
pub fn without_credentials(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) if scheme.is_empty() => format!("***@{}", &rest[at + 1..]),
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

fn wake_all(local: &Local) {
    if let Ok(map) = local.lock() {
        for listeners in map.values() {
            listeners.wake.send_modify(|mark| {
                mark.raise(Wake::Reread);
            });
        }
    }
}

impl NatsFanout {
    /// Connects to `url` (e.g. `nats://127.0.0.1:4222`). Subjects start with `prefix`
    /// (letters, digits, `_` and `-`), so several deployments can share one NATS.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, ConnectError> {
        Self::connect_with(url, prefix, Timing::default()).await
    }

    /// [`NatsFanout::connect`] with other clocks (tests use short ones).
    pub async fn connect_with(
        url: &str,
        prefix: &str,
        timing: Timing,
    ) -> Result<Self, ConnectError> {
        let fail = |reason: String| ConnectError {
            url: without_credentials(url),
            reason,
        };
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(fail(format!(
                "the subject prefix {prefix:?} must be letters, digits, '_' or '-'"
            )));
        }
        // Counts connections: the first is the initial one, every later one a
        // reconnection after which devices catch up.
        let (connections, mut reconnected) = watch::channel(0u64);
        let connections = Arc::new(connections);
        let on_event = Arc::clone(&connections);
        let client = async_nats::ConnectOptions::new()
            .name("sotto-server")
            .event_callback(move |event| {
                let connections = Arc::clone(&on_event);
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            // Back after an outage: wake-ups may have been lost, so
                            // every connected device re-reads (once the client's
                            // re-subscriptions are confirmed).
                            tracing::info!("NATS connection established");
                            connections.send_modify(|n| *n += 1);
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!(
                                "NATS connection lost; retrying (devices catch up on reconnect)"
                            );
                        }
                        other => tracing::debug!(event = %other, "NATS event"),
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut node = [0u8; 16];
        getrandom::fill(&mut node).map_err(|e| fail(format!("no OS random source: {e}")))?;

        let sync_subject = format!("{prefix}.sync.{}", to_hex(&node));
        let echoes = client
            .subscribe(sync_subject.clone())
            .await
            .map_err(|e| fail(format!("cannot subscribe: {e}")))?;
        let beats = client
            .subscribe(format!("{prefix}.node.*"))
            .await
            .map_err(|e| fail(format!("cannot subscribe: {e}")))?;
        let (syncs, requests) = mpsc::unbounded_channel();
        let (stop_tx, stop) = watch::channel(false);
        let fanout = Self {
            client: client.clone(),
            prefix: prefix.to_owned(),
            local: Arc::default(),
            node,
            syncs,
            timing,
            heard: Arc::default(),
            _stop: Arc::new(StopOnDrop(stop_tx)),
        };
        tokio::spawn(run_syncs(
            client.clone(),
            sync_subject,
            echoes,
            requests,
            timing.confirm_within,
            stop.clone(),
        ));
        // Heard by every node before this one serves anything: a node that
        // acknowledged a message and died before its first heartbeat would otherwise
        // never be missed.
        let own = format!("{prefix}.node.{}", to_hex(&node));
        client
            .publish(own.clone(), Vec::new().into())
            .await
            .map_err(|e| fail(format!("cannot publish: {e}")))?;
        let mut heard = false;
        for _ in 0..5 {
            if fanout.sync().await {
                heard = true;
                break;
            }
        }
        if !heard {
            return Err(fail(format!(
                "NATS did not confirm this node's first heartbeat within {:?}",
                timing.confirm_within * 5
            )));
        }
        tokio::spawn(run_heartbeats(
            client,
            own,
            beats,
            Arc::clone(&fanout.local),
            Arc::clone(&fanout.heard),
            timing,
            stop.clone(),
        ));
        // Catch-up after every (re)connection, once the re-subscriptions are in place.
        let (local, syncs, mut stop) = (Arc::clone(&fanout.local), fanout.syncs.clone(), stop);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = reconnected.changed() => if changed.is_err() { break },
                    () = stopped(&mut stop) => break,
                }
                if *reconnected.borrow_and_update() > 1 {
                    sync_through(&syncs).await;
                    tracing::info!(
                        "NATS connection re-established; local devices re-read their mailboxes"
                    );
                    wake_all(&local);
                }
            }
        });
        Ok(fanout)
    }

    /// `<prefix>.<kind>.<device id in hex>`.
    fn subject(&self, kind: &str, device: DeviceId) -> String {
        format!("{}.{kind}.{}", self.prefix, to_hex(device.as_bytes()))
    }

    /// How many other nodes this one hears now (their heartbeats arrive). A node only
    /// misses peers it has heard: one that dies within a heartbeat of this node's start
    /// goes unnoticed here.
    pub fn peers_heard(&self) -> usize {
        self.heard.load(Ordering::Relaxed)
    }

    /// Waits until NATS has everything this node sent before the call; `false` if it
    /// did not answer within [`Timing::confirm_within`].
    pub async fn sync(&self) -> bool {
        sync_through(&self.syncs).await
    }

    /// Keeps one NATS subscription for `device` while anyone on this node listens.
    /// One, not one per subject: each subscription holds a channel whose first block
    /// of slots costs about 6 KB, the largest part of an idle connection's memory.
    fn watch_subject(&self, device: DeviceId, listeners: Arc<Listeners>) {
        let client = self.client.clone();
        let (both, wake_subject, conn_subject) = (
            self.subject("*", device),
            self.subject("wake", device),
            self.subject("conn", device),
        );
        let local = Arc::clone(&self.local);
        let node = self.node;
        let syncs = self.syncs.clone();
        let pause = self.timing.confirm_within;
        tokio::spawn(async move {
            let mut messages = match client.subscribe(both).await {
                Ok(sub) => sub,
                Err(e) => {
                    tracing::error!(error = %e, "NATS subscribe failed; this device gets no cross-node push until it reconnects");
                    listeners.live.send_replace(true);
                    forget(&local, device, &listeners);
                    return;
                }
            };
            // In place once a sync sent after it comes back. Until then the socket
            // waits (bounded); if the bound passed first, the socket has read the
            // mailbox already and must read again once wake-ups can reach it.
            let mut retried = sync_through(&syncs).await;
            listeners.live.send_replace(true);
            let mut retry = std::pin::pin!(async {
                while !sync_through(&syncs).await {
                    tokio::time::sleep(pause).await;
                }
                listeners.wake.send_modify(|mark| {
                    mark.raise(Wake::Reread);
                });
            });
            loop {
                tokio::select! {
                    () = &mut retry, if !retried => retried = true,
                    msg = messages.next() => match msg {
                        Some(m) if m.subject.as_str() == wake_subject => {
                            let wake = decode_wake(&m.payload);
                            listeners.wake.send_if_modified(|mark| mark.raise(wake));
                        }
                        // Another node's announcement: the connection here is older.
                        Some(m) if m.subject.as_str() == conn_subject && m.payload.as_ref() != node => {
                            listeners.superseded.send_modify(|v| *v = v.wrapping_add(1));
                        }
                        Some(_) => {}
                        None => break,
                    },
                    () = listeners.wake.closed() => {
                        // Every local listener is gone, unless one arrived just now.
                        if forget(&local, device, &listeners) {
                            break;
                        }
                    }
                }
            }
            let _ = messages.unsubscribe().await;
        });
    }
}

/// Resolves once the fan-out is dropped.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Asks the sync task for a round trip; `false` if unconfirmed (bound passed, or the
/// fan-out is shutting down).
async fn sync_through(syncs: &mpsc::UnboundedSender<oneshot::Sender<bool>>) -> bool {
    let (tx, rx) = oneshot::channel();
    if syncs.send(tx).is_err() {
        return false;
    }
    rx.await.unwrap_or(false)
}

/// Serves syncs: everyone waiting when a round trip starts shares it. A token
/// published on this node's own sync subject comes back once NATS has handled all
/// this connection sent before it.
async fn run_syncs(
    client: async_nats::Client,
    subject: String,
    mut echoes: async_nats::Subscriber,
    mut requests: mpsc::UnboundedReceiver<oneshot::Sender<bool>>,
    within: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut token = 0u64;
    let mut warned = false;
    loop {
        let first = tokio::select! {
            request = requests.recv() => match request {
                Some(request) => request,
                None => break,
            },
            () = stopped(&mut stop) => break,
        };
        let mut waiters = vec![first];
        while let Ok(more) = requests.try_recv() {
            waiters.push(more);
        }
        token += 1;
        let confirmed = client.connection_state() == async_nats::connection::State::Connected
            && client
                .publish(subject.clone(), token.to_be_bytes().to_vec().into())
                .await
                .is_ok()
            && tokio::time::timeout(within, async {
                while let Some(echo) = echoes.next().await {
                    let back = <[u8; 8]>::try_from(echo.payload.as_ref()).map(u64::from_be_bytes);
                    if back.is_ok_and(|back| back >= token) {
                        return true;
                    }
                }
                false
            })
            .await
            .unwrap_or(false);
        if !confirmed && !warned {
            tracing::warn!(
                "NATS did not confirm wake-ups in time; carrying on (other nodes re-read when this one falls silent)"
            );
        }
        warned = !confirmed;
        for waiter in waiters {
            let _ = waiter.send(confirmed);
        }
    }
}

/// A peer node as heard through its heartbeats.
struct Peer {
    last: Instant,
    lost: bool,
}

/// Says this node is alive, and wakes every local device when a peer falls silent or
/// comes back (see the crate documentation).
async fn run_heartbeats(
    client: async_nats::Client,
    own: String,
    mut beats: async_nats::Subscriber,
    local: Local,
    heard: Arc<AtomicUsize>,
    timing: Timing,
    mut stop: watch::Receiver<bool>,
) {
    let mut peers: HashMap<String, Peer> = HashMap::new();
    let mut tick = tokio::time::interval(timing.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Forget peers long gone (a restarted node has a new id).
    let forget_after = timing.peer_lost_after * 20;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let _ = client.publish(own.clone(), Vec::new().into()).await;
                let now = Instant::now();
                let mut changed = false;
                peers.retain(|_, peer| {
                    let silent = now.saturating_duration_since(peer.last);
                    if !peer.lost && silent >= timing.peer_lost_after {
                        peer.lost = true;
                        changed = true;
                    }
                    silent < forget_after
                });
                // Counted before the wake-ups, so whoever is woken sees the new count.
                heard.store(peers.values().filter(|p| !p.lost).count(), Ordering::Relaxed);
                if changed {
                    tracing::info!("a server node fell silent; local devices re-read their mailboxes");
                    wake_all(&local);
                }
            }
            beat = beats.next() => {
                let Some(beat) = beat else { break };
                let subject = beat.subject.as_str();
                if subject == own {
                    continue;
                }
                let now = Instant::now();
                let peer = peers.entry(subject.to_owned()).or_insert(Peer { last: now, lost: false });
                peer.last = now;
                let back = std::mem::replace(&mut peer.lost, false);
                heard.store(peers.values().filter(|p| !p.lost).count(), Ordering::Relaxed);
                if back {
                    tracing::info!("a server node is heard again; local devices re-read their mailboxes");
                    wake_all(&local);
                }
            }
            () = stopped(&mut stop) => break,
        }
    }
    let _ = beats.unsubscribe().await;
}

/// A wake-up on the wire: the seq, 8 bytes big-endian; empty for [`Wake::Reread`].
fn encode_wake(wake: Wake) -> Vec<u8> {
    match wake {
        Wake::UpTo(seq) => seq.to_be_bytes().to_vec(),
        Wake::Reread => Vec::new(),
    }
}

/// Reads a wake-up; anything but a seq (an older node's empty message, say) means
/// "re-read", which is always safe.
fn decode_wake(payload: &[u8]) -> Wake {
    payload
        .try_into()
        .map_or(Wake::Reread, |seq| Wake::UpTo(u64::from_be_bytes(seq)))
}

/// Removes `device`'s entry if nobody listens; returns whether it did.
fn forget(local: &Local, device: DeviceId, listeners: &Arc<Listeners>) -> bool {
    let Ok(mut map) = local.lock() else {
        return true;
    };
    if listeners.wake.receiver_count() > 0 {
        return false;
    }
    if map.get(&device).is_some_and(|t| Arc::ptr_eq(t, listeners)) {
        map.remove(&device);
    }
    true
}

#[async_trait]
impl Fanout for NatsFanout {
    async fn notify_many(&self, wakes: &[(DeviceId, Wake)]) {
        if wakes.is_empty() {
            return;
        }
        let mut published = false;
        for &(device, wake) in wakes {
            // A connection on this node is woken at once, not after the round trip
            // through NATS (whose echo then adds nothing), and still while NATS is
            // unreachable.
            let here = self
                .local
                .lock()
                .ok()
                .and_then(|map| map.get(&device).cloned());
            if let Some(listeners) = here {
                listeners.wake.send_if_modified(|mark| mark.raise(wake));
            }
            match self
                .client
                .publish(self.subject("wake", device), encode_wake(wake).into())
                .await
            {
                Ok(()) => published = true,
                // The device still gets the entry: from the store when it next reads.
                Err(e) => {
                    tracing::warn!(error = %e, "NATS publish failed; the device will catch up on its next read");
                }
            }
        }
        // Not before NATS has them: the caller answers the sender next, and this node
        // may die right after.
        if published {
            self.sync().await;
        }
    }

    async fn subscribe(&self, device: DeviceId) -> FanoutSubscription {
        let (subscription, mut live) = {
            let Ok(mut map) = self.local.lock() else {
                return FanoutSubscription::new(
                    watch::Sender::new(WakeMark::default()).subscribe(),
                );
            };
            if let Some(listeners) = map.get(&device) {
                (
                    FanoutSubscription::new(listeners.wake.subscribe())
                        .with_superseded(listeners.superseded.subscribe()),
                    listeners.live.subscribe(),
                )
            } else {
                let listeners = Arc::new(Listeners {
                    wake: watch::Sender::new(WakeMark::default()),
                    superseded: watch::Sender::new(0),
                    live: watch::Sender::new(false),
                });
                let subscription = FanoutSubscription::new(listeners.wake.subscribe())
                    .with_superseded(listeners.superseded.subscribe());
                let live = listeners.live.subscribe();
                map.insert(device, Arc::clone(&listeners));
                self.watch_subject(device, listeners);
                (subscription, live)
            }
        };
        // Bounded by the sync's own bound; the task always sets `live`.
        let _ = live.wait_for(|live| *live).await;
        subscription
    }

    async fn announce_connection(&self, device: DeviceId) {
        let payload = self.node.to_vec().into();
        if let Err(e) = self
            .client
            .publish(self.subject("conn", device), payload)
            .await
        {
            tracing::warn!(error = %e, "NATS publish failed; an older connection of this device on another node stays open");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Wake, decode_wake, encode_wake, without_credentials};

    #[test]
    fn wake_ups_round_trip_and_anything_else_rereads() {
        for wake in [
            Wake::UpTo(0),
            Wake::UpTo(42),
            Wake::UpTo(u64::MAX),
            Wake::Reread,
        ] {
            assert_eq!(decode_wake(&encode_wake(wake)), wake);
        }
        assert_eq!(decode_wake(&[1, 2, 3]), Wake::Reread);
        assert_eq!(decode_wake(&[0; 9]), Wake::Reread);
    }

    #[test]
    fn credentials_never_reach_messages() {
        assert_eq!(
            without_credentials("nats://user:s3cret@bus:4222"),
            "nats://***@bus:4222"
        );
        assert_eq!(without_credentials("nats://tok3n@bus"), "nats://***@bus");
        assert_eq!(without_credentials("nats://bus:4222"), "nats://bus:4222");
        assert_eq!(without_credentials("u:p@bus"), "***@bus");
    }
}
