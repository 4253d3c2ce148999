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
}

/// A subscription to one device's wake-ups. Any implementation can build one from a
/// `watch` channel whose value it bumps on each wake-up.
#[derive(Debug)]
pub struct FanoutSubscription {
    rx: watch::Receiver<u64>,
}

impl FanoutSubscription {
    /// Wraps a `watch` receiver; every change of the value is a wake-up.
    pub fn new(rx: watch::Receiver<u64>) -> Self {
        Self { rx }
    }

    /// Resolves at the next wake-up since the last one seen (or since subscribing).
    /// Never resolves if the sending side is gone.
    pub async fn woken(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
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
