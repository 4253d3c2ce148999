//! Wake-ups for connected devices. A fan-out carries no payloads: a woken WebSocket
//! always reads its mailbox from the store, so a lost or duplicated wake-up costs at
//! most one extra fetch, never a lost message.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use sotto_proto::DeviceId;
use tokio::sync::watch;

/// Tells a device's open connections that its mailbox changed.
#[async_trait]
pub trait Fanout: Send + Sync + 'static {
    /// Wakes every subscription of `device` (on every node, for a distributed fan-out).
    async fn notify(&self, device: DeviceId);
    /// Subscribes to `device`'s wake-ups.
    fn subscribe(&self, device: DeviceId) -> FanoutSubscription;
    /// Says that `device` just opened a connection on this node, so other nodes close
    /// theirs (a device has one live connection). Single-node fan-outs have nothing to
    /// do: the node replaces its own older connection itself.
    async fn announce_connection(&self, _device: DeviceId) {}
}

/// A subscription to one device's wake-ups. Any implementation can build one from a
/// `watch` channel whose value it bumps on each wake-up.
#[derive(Debug)]
pub struct FanoutSubscription {
    rx: watch::Receiver<u64>,
    superseded: Option<watch::Receiver<u64>>,
}

impl FanoutSubscription {
    /// Wraps a `watch` receiver; every change of the value is a wake-up.
    pub fn new(rx: watch::Receiver<u64>) -> Self {
        Self {
            rx,
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

    /// Resolves at the next wake-up since the last one seen (or since subscribing).
    /// Never resolves if the sending side is gone.
    pub async fn woken(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
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
    devices: Mutex<HashMap<DeviceId, watch::Sender<u64>>>,
}

impl InProcessFanout {
    /// An empty fan-out.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Fanout for InProcessFanout {
    async fn notify(&self, device: DeviceId) {
        if let Ok(mut devices) = self.devices.lock()
            && let Some(tx) = devices.get(&device)
        {
            if tx.receiver_count() == 0 {
                devices.remove(&device);
            } else {
                tx.send_modify(|v| *v = v.wrapping_add(1));
            }
        }
    }

    fn subscribe(&self, device: DeviceId) -> FanoutSubscription {
        match self.devices.lock() {
            Ok(mut devices) => {
                let tx = devices
                    .entry(device)
                    .or_insert_with(|| watch::Sender::new(0));
                FanoutSubscription::new(tx.subscribe())
            }
            // A poisoned map (a bug panicked while holding it): hand out a subscription
            // that never wakes; the connection still works, only without push.
            Err(_) => FanoutSubscription::new(watch::Sender::new(0).subscribe()),
        }
    }
}
