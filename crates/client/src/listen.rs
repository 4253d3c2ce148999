//! Real-time delivery: the device's WebSocket (`/v1/ws`), with reconnects.

use std::future::Future;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use sotto_proto::{ConversationId, b64};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::client::{Client, Event};
use crate::error::ClientError;
use crate::transport::Entry;

/// Close code: another connection of this device took over.
const CLOSE_REPLACED: u16 = 4000;
/// Close code: this device was removed from its account.
const CLOSE_DEVICE_REMOVED: u16 = 4001;
/// How often to poll when the server is reached over HTTPS (no `wss` support yet).
const POLL_EVERY: Duration = Duration::from_secs(2);

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Frame {
    Entry {
        seq: u64,
        kind: String,
        group: ConversationId,
        #[serde(with = "b64::serde_bytes")]
        body: Vec<u8>,
        received_at: u64,
    },
}

/// Why one connection ended.
enum Ended {
    /// Reconnect (after a pause).
    Retry,
    /// Do not reconnect.
    Fatal(ClientError),
}

impl Client {
    /// Receives in real time until `stop` resolves: catches up over HTTP, then holds the
    /// device's WebSocket, processing each entry as it arrives (in its own local
    /// transaction, then acked) and handing the resulting events to `on_events`.
    /// Reconnects with backoff when the connection drops; ends with an error if another
    /// connection of this device takes over or the device is removed.
    pub async fn listen(
        &self,
        mut on_events: impl FnMut(Vec<Event>),
        stop: impl Future<Output = ()>,
    ) -> Result<(), ClientError> {
        let mut stop = std::pin::pin!(stop);
        let mut backoff = Duration::from_millis(500);
        loop {
            let round = async {
                self.catch_up().await?;
                self.commit_pending_proposals().await?;
                let events = self.emit(self.take_events()?);
                if !events.is_empty() {
                    on_events(events);
                }
                if self.transport.base().starts_with("https://") {
                    tokio::time::sleep(POLL_EVERY).await;
                    return Ok(Ended::Retry);
                }
                Ok::<_, ClientError>(self.connection(&mut on_events).await)
            };
            let ended = tokio::select! {
                () = &mut stop => return Ok(()),
                ended = round => ended,
            };
            match ended {
                Ok(Ended::Fatal(e)) => return Err(e),
                Ok(Ended::Retry) | Err(ClientError::Network { .. }) => {}
                Err(e) => return Err(e),
            }
            tokio::select! {
                () = &mut stop => return Ok(()),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// One WebSocket connection, until it ends.
    async fn connection(&self, on_events: &mut impl FnMut(Vec<Event>)) -> Ended {
        let account = match self.account() {
            Ok(a) => a,
            Err(e) => return Ended::Fatal(e),
        };
        let cursor = match self.read(|tx| tx.counter("cursor")) {
            Ok(c) => c,
            Err(e) => return Ended::Fatal(e),
        };
        let url = format!(
            "{}/v1/ws?after={cursor}",
            self.transport.base().replacen("http://", "ws://", 1)
        );
        let mut request = match url.into_client_request() {
            Ok(r) => r,
            Err(e) => return Ended::Fatal(ClientError::Usage(format!("bad server URL: {e}"))),
        };
        let Ok(auth) = format!("Bearer {}", account.token).parse() else {
            return Ended::Fatal(ClientError::Local(
                "the stored token is not a valid header".into(),
            ));
        };
        request.headers_mut().insert("Authorization", auth);
        let mut socket = match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => socket,
            Err(_) => return Ended::Retry,
        };
        while let Some(message) = socket.next().await {
            let text = match message {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(frame)) => {
                    return match frame.map(|f| u16::from(f.code)) {
                        Some(CLOSE_REPLACED) => Ended::Fatal(ClientError::Usage(
                            "another connection of this device took over; only one may listen at a time".into(),
                        )),
                        Some(CLOSE_DEVICE_REMOVED) => Ended::Fatal(ClientError::Usage(
                            "this device was removed from its account".into(),
                        )),
                        _ => Ended::Retry,
                    };
                }
                Ok(_) => continue,
                Err(_) => return Ended::Retry,
            };
            let Ok(Frame::Entry {
                seq,
                kind,
                group,
                body,
                received_at,
            }) = serde_json::from_str::<Frame>(&text)
            else {
                continue;
            };
            let entry = Entry {
                seq,
                kind,
                group,
                body,
                received_at,
            };
            if let Err(e) = self.process_entry(&account, entry) {
                let _ = socket
                    .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                        code: CloseCode::Normal,
                        reason: "".into(),
                    }))
                    .await;
                return Ended::Fatal(e);
            }
            if let Err(e) = self.commit_pending_proposals().await {
                return match e {
                    ClientError::Network { .. } => Ended::Retry,
                    e => Ended::Fatal(e),
                };
            }
            match self.take_events() {
                Ok(events) if !events.is_empty() => on_events(self.emit(events)),
                Ok(_) => {}
                Err(e) => return Ended::Fatal(e),
            }
            let ack = serde_json::json!({"type": "ack", "up_to": seq}).to_string();
            if socket.send(Message::Text(ack.into())).await.is_err() {
                return Ended::Retry;
            }
        }
        Ended::Retry
    }
}
