//! Real-time delivery: the device's WebSocket (`/v1/ws`), with reconnects.

use std::future::Future;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use sotto_api::close::{DEVICE_REMOVED as CLOSE_DEVICE_REMOVED, REPLACED as CLOSE_REPLACED};
use sotto_api::{ClientFrame, ServerFrame, paths};
use sotto_proto::b64;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::error::{Error as WsError, TlsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::client::{Client, Event};
use crate::error::ClientError;
use crate::transport::Entry;

/// The device's WebSocket, over TCP or TLS.
type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why one connection ended.
enum Ended {
    /// Reconnect (after a pause).
    Retry,
    /// Do not reconnect.
    Fatal(ClientError),
}

/// How often a listening client deletes expired messages and self-updates where due.
const HOUSEKEEPING: Duration = Duration::from_secs(60);

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

    /// Opens the WebSocket: TCP (without Nagle's delay), for `wss://` TLS trusting the
    /// public web roots plus the profile's extra CA, then the handshake.
    async fn open_socket(
        &self,
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<Socket, Ended> {
        let connector = if request.uri().scheme_str() == Some("wss") {
            let config = self.transport.tls_config().map_err(Ended::Fatal)?;
            Some(Connector::Rustls(config))
        } else {
            None
        };
        match tokio_tungstenite::connect_async_tls_with_config(request, None, true, connector).await
        {
            Ok((socket, _)) => Ok(socket),
            // A certificate the client does not trust will not fix itself (rustls errors
            // reach here as `InvalidData`); a refused or dropped connection may.
            Err(WsError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                Err(Ended::Fatal(ClientError::Network {
                    url: self.transport.base().to_owned(),
                    reason: format!("TLS: {e}"),
                }))
            }
            Err(WsError::Tls(TlsError::InvalidDnsName)) => {
                Err(Ended::Fatal(ClientError::InvalidServer {
                    url: self.transport.base().to_owned(),
                    reason: "the host is not a valid TLS server name",
                }))
            }
            Err(_) => Err(Ended::Retry),
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
        let base = self.transport.base();
        let url = match base.split_once("://") {
            Some(("https", rest)) => {
                format!("wss://{rest}{}?after={cursor}", paths::WEBSOCKET.template)
            }
            Some(("http", rest)) => {
                format!("ws://{rest}{}?after={cursor}", paths::WEBSOCKET.template)
            }
            _ => {
                return Ended::Fatal(ClientError::InvalidServer {
                    url: base.to_owned(),
                    reason: "it must start with http:// or https://",
                });
            }
        };
        let mut request = match url.into_client_request() {
            Ok(r) => r,
            Err(_) => {
                return Ended::Fatal(ClientError::InvalidServer {
                    url: base.to_owned(),
                    reason: "it is not a URL",
                });
            }
        };
        let Ok(auth) = format!("Bearer {}", account.token).parse() else {
            return Ended::Fatal(ClientError::Local(
                "the stored token is not a valid header".into(),
            ));
        };
        request.headers_mut().insert("Authorization", auth);
        let mut socket = match self.open_socket(request).await {
            Ok(socket) => socket,
            Err(ended) => return ended,
        };
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.tick().await;
        loop {
            let message = tokio::select! {
                message = socket.next() => message,
                _ = housekeeping.tick() => {
                    match self.housekeeping().await {
                        Ok(()) => {}
                        Err(ClientError::Network { .. } | ClientError::Server { .. }) => {}
                        Err(e) => return Ended::Fatal(e),
                    }
                    match self.take_events() {
                        Ok(events) if !events.is_empty() => on_events(self.emit(events)),
                        Ok(_) => {}
                        Err(e) => return Ended::Fatal(e),
                    }
                    continue;
                }
            };
            let Some(message) = message else { break };
            let text = match message {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(frame)) => {
                    return match frame.map(|f| u16::from(f.code)) {
                        Some(CLOSE_REPLACED) => Ended::Fatal(ClientError::Replaced),
                        Some(CLOSE_DEVICE_REMOVED) => Ended::Fatal(ClientError::DeviceRemoved),
                        _ => Ended::Retry,
                    };
                }
                Ok(_) => continue,
                Err(_) => return Ended::Retry,
            };
            let Ok(ServerFrame::Entry {
                seq,
                kind,
                group,
                body,
                received_at,
            }) = serde_json::from_str::<ServerFrame<'_>>(&text)
            else {
                continue;
            };
            let Ok(body) = b64::decode(&body) else {
                continue;
            };
            let entry = Entry {
                seq,
                kind,
                group,
                body: body.into(),
                received_at,
            };
            if let Err(e) = self.process_entry(&account, entry).await {
                let _ = socket
                    .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                        code: CloseCode::Normal,
                        reason: "".into(),
                    }))
                    .await;
                return match e {
                    // The directory could not be asked: reconnect and try again.
                    ClientError::Network { .. } | ClientError::Server { .. } => Ended::Retry,
                    e => Ended::Fatal(e),
                };
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
            let Ok(ack) = serde_json::to_string(&ClientFrame::Ack { up_to: seq }) else {
                return Ended::Retry;
            };
            if socket.send(Message::Text(ack.into())).await.is_err() {
                return Ended::Retry;
            }
        }
        Ended::Retry
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    /// The reconnect loop must stop on a certificate it does not trust (waiting will
    /// not fix it) and keep trying a server that is merely not up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_untrusted_certificate_is_fatal_and_a_refused_connection_is_retried() {
        let (server, _ca) = sotto_testkit::TestServer::start_tls().unwrap();
        let home = tempfile::tempdir().unwrap();
        let client = Client::open(home.path(), server.url()).unwrap();
        let wss = server.url().replacen("https://", "wss://", 1) + paths::WEBSOCKET.template;
        match client.open_socket(wss.into_client_request().unwrap()).await {
            Err(Ended::Fatal(ClientError::Network { reason, .. })) => {
                assert!(reason.starts_with("TLS:"), "{reason}");
            }
            Err(Ended::Fatal(e)) => panic!("fatal for the wrong reason: {e}"),
            Err(Ended::Retry) => panic!("an untrusted certificate was retried"),
            Ok(_) => panic!("an untrusted certificate was accepted"),
        }

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let ws = format!("ws://127.0.0.1:{port}{}", paths::WEBSOCKET.template);
        assert!(matches!(
            client.open_socket(ws.into_client_request().unwrap()).await,
            Err(Ended::Retry)
        ));
    }
}
