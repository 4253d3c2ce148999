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
//! If NATS is unreachable for a while, wake-ups published in that time may be lost.
//! When the client reconnects (it retries on its own and re-subscribes), every local
//! subscription is woken once, so each connected device reads what it missed; devices
//! that connect meanwhile read their mailbox when they connect. Nothing is lost, only
//! delayed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::StreamExt;
use sotto_proto::DeviceId;
use sotto_server::{Fanout, FanoutSubscription, Wake, WakeMark};
use tokio::sync::watch;

/// Default subject prefix.
pub const DEFAULT_PREFIX: &str = "sotto";

/// This node's listeners of one device: wake-ups, and "connected on another node".
struct Listeners {
    wake: watch::Sender<WakeMark>,
    superseded: watch::Sender<u64>,
}

type Local = Arc<Mutex<HashMap<DeviceId, Arc<Listeners>>>>;

/// A [`Fanout`] over a NATS connection.
#[derive(Clone)]
pub struct NatsFanout {
    client: async_nats::Client,
    prefix: String,
    local: Local,
    /// Random per process: tells this node's connection announcements from others'.
    node: [u8; 16],
}

impl std::fmt::Debug for NatsFanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsFanout")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
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
        let local: Local = Arc::default();
        let on_event = Arc::clone(&local);
        let client = async_nats::ConnectOptions::new()
            .name("sotto-server")
            .event_callback(move |event| {
                let local = Arc::clone(&on_event);
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            // Back after an outage: wake-ups may have been lost, so
                            // every connected device re-reads its mailbox.
                            tracing::info!("NATS connection (re)established; waking local devices");
                            wake_all(&local);
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
        Ok(Self {
            client,
            prefix: prefix.to_owned(),
            local,
            node,
        })
    }

    /// `<prefix>.<kind>.<device id in hex>`.
    fn subject(&self, kind: &str, device: DeviceId) -> String {
        let hex: String = device
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{}.{kind}.{hex}", self.prefix)
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
        tokio::spawn(async move {
            let mut messages = match client.subscribe(both).await {
                Ok(sub) => sub,
                Err(e) => {
                    tracing::error!(error = %e, "NATS subscribe failed; this device gets no cross-node push until it reconnects");
                    forget(&local, device, &listeners);
                    return;
                }
            };
            // The subscription may have started after a wake-up was published: wake
            // once so the connection re-reads.
            listeners.wake.send_modify(|mark| {
                mark.raise(Wake::Reread);
            });
            loop {
                tokio::select! {
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
    async fn notify(&self, device: DeviceId, wake: Wake) {
        // A connection on this node is woken at once, not after the round trip through
        // NATS (whose echo then adds nothing), and still while NATS is unreachable.
        let here = self
            .local
            .lock()
            .ok()
            .and_then(|map| map.get(&device).cloned());
        if let Some(listeners) = here {
            listeners.wake.send_if_modified(|mark| mark.raise(wake));
        }
        if let Err(e) = self
            .client
            .publish(self.subject("wake", device), encode_wake(wake).into())
            .await
        {
            // The device still gets the entry: from the store when it next reads.
            tracing::warn!(error = %e, "NATS publish failed; the device will catch up on its next read");
        }
    }

    fn subscribe(&self, device: DeviceId) -> FanoutSubscription {
        let Ok(mut map) = self.local.lock() else {
            return FanoutSubscription::new(watch::Sender::new(WakeMark::default()).subscribe());
        };
        if let Some(listeners) = map.get(&device) {
            return FanoutSubscription::new(listeners.wake.subscribe())
                .with_superseded(listeners.superseded.subscribe());
        }
        let listeners = Arc::new(Listeners {
            wake: watch::Sender::new(WakeMark::default()),
            superseded: watch::Sender::new(0),
        });
        let subscription = FanoutSubscription::new(listeners.wake.subscribe())
            .with_superseded(listeners.superseded.subscribe());
        map.insert(device, Arc::clone(&listeners));
        drop(map);
        self.watch_subject(device, listeners);
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
