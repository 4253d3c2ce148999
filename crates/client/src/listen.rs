//! Real-time delivery: the device's WebSocket (`/v1/ws`), with reconnects.

use std::future::Future;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use sotto_api::close::{DEVICE_REMOVED as CLOSE_DEVICE_REMOVED, REPLACED as CLOSE_REPLACED};
use sotto_api::{ClientFrame, ServerFrame, paths};
use sotto_proto::b64;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::client::{Client, Event};
use crate::error::ClientError;
use crate::transport::Entry;

/// A byte stream the WebSocket runs on: TCP, or TLS over TCP for `wss://`.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}
type WsStream = Box<dyn Io>;

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

    /// Opens the TCP (and for `wss://` the TLS) connection for the WebSocket request,
    /// trusting the public web roots plus the profile's extra CA.
    async fn ws_stream(
        &self,
        request: &tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<WsStream, Ended> {
        let uri = request.uri();
        let tls = uri.scheme_str() == Some("wss");
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|_| Ended::Retry)?;
        let _ = tcp.set_nodelay(true);
        if !tls {
            return Ok(Box::new(tcp));
        }
        let config = self.transport.tls_config().map_err(Ended::Fatal)?;
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|_| {
            Ended::Fatal(ClientError::InvalidServer {
                url: self.transport.base().to_owned(),
                reason: "the host is not a valid TLS server name",
            })
        })?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| match e.kind() {
                // A certificate the client does not trust will not fix itself.
                std::io::ErrorKind::InvalidData => Ended::Fatal(ClientError::Network {
                    url: self.transport.base().to_owned(),
                    reason: format!("TLS: {e}"),
                }),
                _ => Ended::Retry,
            })?;
        Ok(Box::new(stream))
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
        let stream = match self.ws_stream(&request).await {
            Ok(stream) => stream,
            Err(Ended::Fatal(e)) => return Ended::Fatal(e),
            Err(Ended::Retry) => return Ended::Retry,
        };
        let mut socket = match tokio_tungstenite::client_async(request, stream).await {
            Ok((socket, _)) => socket,
            Err(_) => return Ended::Retry,
        };
        while let Some(message) = socket.next().await {
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
