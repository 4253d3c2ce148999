//! The `Fanout` contract: wake-ups for connected devices, beside the `Store` contract
//! (`sotto-server-store`), so that fan-out implementations (`sotto-server-fanout-nats`)
//! depend on this and the protocol types only, not on the HTTP server.
//!
//! A fan-out carries no payloads: it says whose
//! mailbox changed and up to which seq, and the woken WebSocket reads what it has not
//! sent from the store (or takes it from the request on the same node that stored it,
//! see `sotto_server::AppState::hand_off`). A lost or duplicated wake-up costs at most one extra
//! read, never a message.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use sotto_proto::DeviceId;
use tokio::sync::watch;

/// What a wake-up says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Mailbox entries up to this seq exist: a connection that has sent them has
    /// nothing to read.
    UpTo(u64),
    /// Something changed that seqs do not describe (a fan-out that may have lost
    /// wake-ups, a removed device): read the mailbox.
    Reread,
}

/// The state behind a device's wake-ups, kept in a `watch` channel by each fan-out:
/// the highest seq announced, and how many wake-ups said [`Wake::Reread`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WakeMark {
    up_to: u64,
    rereads: u64,
}

impl WakeMark {
    /// Records `wake`; returns whether listeners need waking (an `UpTo` at or below
    /// what was already announced adds nothing).
    pub fn raise(&mut self, wake: Wake) -> bool {
        match wake {
            Wake::UpTo(seq) if seq > self.up_to => {
                self.up_to = seq;
                true
            }
            Wake::UpTo(_) => false,
            Wake::Reread => {
                self.rereads = self.rereads.wrapping_add(1);
                true
            }
        }
    }
}

/// Tells a device's open connections that its mailbox changed.
///
/// The delivery property the server keeps (docs/ARCHITECTURE.md, "Delivery
/// guarantees"): an entry acknowledged to its sender reaches every recipient device
/// connected to a surviving node, even when the acknowledging node dies right after the
/// acknowledgement. Hence both halves wait for the bus: [`Fanout::notify_many`] returns
/// only once the wake-ups can no longer die with this node, and [`Fanout::subscribe`]
/// only once wake-ups published from anywhere will reach the subscription.
#[async_trait]
pub trait Fanout: Send + Sync + 'static {
    /// Wakes every subscription of each listed device (on every node, for a
    /// distributed fan-out). Returns once a crash of this node can no longer lose these
    /// wake-ups (a distributed fan-out: once its bus has them, or after a bound during
    /// a bus outage, when other nodes are told to re-read instead). Callers answer the
    /// sender after this, never before.
    async fn notify_many(&self, wakes: &[(DeviceId, Wake)]);
    /// [`Fanout::notify_many`] for one device.
    async fn notify(&self, device: DeviceId, wake: Wake) {
        self.notify_many(&[(device, wake)]).await;
    }
    /// Subscribes to `device`'s wake-ups. Returns once the subscription is in place
    /// everywhere (or after a bound, in which case it is woken with
    /// [`Wake::Reread`] when it is): read the mailbox after this, so that nothing
    /// stored between the read and the first wake-up is missed.
    async fn subscribe(&self, device: DeviceId) -> FanoutSubscription;
    /// Says that `device` just opened a connection on this node, so other nodes close
    /// theirs (a device has one live connection). Single-node fan-outs have nothing to
    /// do: the node replaces its own older connection itself.
    async fn announce_connection(&self, _device: DeviceId) {}
}

/// A subscription to one device's wake-ups. Any implementation can build one from a
/// `watch` channel of [`WakeMark`]s that it raises on each wake-up.
#[derive(Debug)]
pub struct FanoutSubscription {
    rx: watch::Receiver<WakeMark>,
    rereads_seen: u64,
    superseded: Option<watch::Receiver<u64>>,
}

impl FanoutSubscription {
    /// Wraps a `watch` receiver; every change of the mark after this call is a
    /// wake-up.
    pub fn new(mut rx: watch::Receiver<WakeMark>) -> Self {
        let rereads_seen = rx.borrow_and_update().rereads;
        Self {
            rx,
            rereads_seen,
            superseded: None,
        }
    }

    /// Also watches `superseded`: a change means the device connected on another node.
    #[must_use]
    pub fn with_superseded(mut self, superseded: watch::Receiver<u64>) -> Self {
        self.superseded = Some(superseded);
        self
    }

    /// Takes the "connected on another node" signal, to wait on it beside the
    /// wake-ups.
    pub fn take_superseded(&mut self) -> Superseded {
        Superseded(self.superseded.take())
    }

    /// Resolves at the next wake-up since the last one seen (or since subscribing),
    /// with what the wake-ups since then say together. Never resolves if the sending
    /// side is gone.
    pub async fn woken(&mut self) -> Wake {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        let mark = *self.rx.borrow_and_update();
        if mark.rereads == self.rereads_seen {
            Wake::UpTo(mark.up_to)
        } else {
            self.rereads_seen = mark.rereads;
            Wake::Reread
        }
    }
}

/// Resolves when another node announces a newer connection of the device (changes
/// after the subscription was taken only). Never resolves for single-node fan-outs.
#[derive(Debug)]
pub struct Superseded(Option<watch::Receiver<u64>>);

impl Superseded {
    /// Waits for another node's announcement.
    pub async fn announced(&mut self) {
        match self.0.as_mut() {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

/// The in-process fan-out: one `watch` channel per device with subscribers.
#[derive(Debug, Default)]
pub struct InProcessFanout {
    devices: Mutex<HashMap<DeviceId, watch::Sender<WakeMark>>>,
}

impl InProcessFanout {
    /// An empty fan-out.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Fanout for InProcessFanout {
    async fn notify_many(&self, wakes: &[(DeviceId, Wake)]) {
        let Ok(mut devices) = self.devices.lock() else {
            return;
        };
        for &(device, wake) in wakes {
            if let Some(tx) = devices.get(&device) {
                if tx.receiver_count() == 0 {
                    devices.remove(&device);
                } else {
                    tx.send_if_modified(|mark| mark.raise(wake));
                }
            }
        }
    }

    async fn subscribe(&self, device: DeviceId) -> FanoutSubscription {
        match self.devices.lock() {
            Ok(mut devices) => {
                let tx = devices
                    .entry(device)
                    .or_insert_with(|| watch::Sender::new(WakeMark::default()));
                FanoutSubscription::new(tx.subscribe())
            }
            // A poisoned map (a bug panicked while holding it): hand out a subscription
            // that never wakes; the connection still works, only without push.
            Err(_) => FanoutSubscription::new(watch::Sender::new(WakeMark::default()).subscribe()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(n: u8) -> DeviceId {
        DeviceId::from_bytes([n; 16])
    }

    /// The next wake-up, or `None` if none is pending.
    async fn pending(sub: &mut FanoutSubscription) -> Option<Wake> {
        tokio::time::timeout(std::time::Duration::from_millis(20), sub.woken())
            .await
            .ok()
    }

    #[tokio::test]
    async fn wake_ups_merge_to_the_highest_seq_and_rereads_win() {
        let fanout = InProcessFanout::new();
        let mut sub = fanout.subscribe(device(1)).await;
        assert_eq!(pending(&mut sub).await, None);
        fanout.notify(device(1), Wake::UpTo(5)).await;
        fanout.notify(device(1), Wake::UpTo(3)).await;
        fanout.notify(device(1), Wake::UpTo(7)).await;
        assert_eq!(pending(&mut sub).await, Some(Wake::UpTo(7)));
        // A seq at or below what was announced wakes nobody.
        fanout.notify(device(1), Wake::UpTo(6)).await;
        assert_eq!(pending(&mut sub).await, None);
        // A reread is never lost in a merge with seqs.
        fanout.notify(device(1), Wake::UpTo(8)).await;
        fanout.notify(device(1), Wake::Reread).await;
        fanout.notify(device(1), Wake::UpTo(9)).await;
        assert_eq!(pending(&mut sub).await, Some(Wake::Reread));
        assert_eq!(pending(&mut sub).await, None);
        // Other devices' wake-ups are not ours.
        fanout.notify(device(2), Wake::Reread).await;
        assert_eq!(pending(&mut sub).await, None);
    }

    #[tokio::test]
    async fn a_new_subscription_starts_after_earlier_wake_ups() {
        let fanout = InProcessFanout::new();
        let first = fanout.subscribe(device(1)).await;
        fanout.notify(device(1), Wake::UpTo(4)).await;
        fanout.notify(device(1), Wake::Reread).await;
        let mut second = fanout.subscribe(device(1)).await;
        drop(first);
        assert_eq!(pending(&mut second).await, None);
        fanout.notify(device(1), Wake::UpTo(5)).await;
        assert_eq!(pending(&mut second).await, Some(Wake::UpTo(5)));
    }
}
