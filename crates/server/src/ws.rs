//! The push channel: one WebSocket per device. The server sends the device's mailbox
//! entries in seq order, then waits on the fan-out and sends new ones as they arrive:
//! handed over by the request that stored them on this node when they continue what
//! was sent, read from the store otherwise (see [`crate::handoff`]). The device acks
//! what it processed.

use std::future::Future;
use std::pin::Pin;

use axum::extract::State;
use axum::extract::ws::{
    CloseFrame, Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::http::HeaderMap;
use axum::response::Response;
use sotto_proto::DeviceId;
use sotto_server_store::StoreError;

use sotto_api::{ClientFrame, ErrorBody, ServerFrame, WsQuery};

use crate::error::ApiError;
use crate::extract::{ApiQuery, authenticate, bearer_token};
use crate::handoff::{Ready, continue_from};
use crate::routes::mailbox::wire_kind;
use crate::{AppState, SocketGuard};

/// Close code: the server is going away.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: a frame type the server does not accept (binary).
pub const CLOSE_UNSUPPORTED: u16 = 1003;
/// Close code: a frame the server cannot understand.
pub const CLOSE_INVALID: u16 = 1007;
/// Close code: an internal error.
pub const CLOSE_INTERNAL: u16 = 1011;
/// Close code: a newer connection of the same device replaced this one.
pub const CLOSE_REPLACED: u16 = sotto_api::close::REPLACED;
/// Close code: the device was removed from its account.
pub const CLOSE_DEVICE_REMOVED: u16 = sotto_api::close::DEVICE_REMOVED;

/// How many entries one store read sends at most.
const PAGE: u32 = 100;
/// How often the server pings an idle socket; a peer that has sent nothing (not even a
/// pong) for a whole interval after a ping is considered gone.
/// Read and write buffer size of each WebSocket.
const WS_BUFFER: usize = 4 * 1024;
/// Largest frame or message a client may send (acks are a few dozen bytes).
const MAX_CLIENT_FRAME: usize = 64 * 1024;
const PING_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Authenticates (header, or `?token=` for browsers) and upgrades.
#[utoipa::path(
    get, path = sotto_api::paths::WEBSOCKET.template, tag = "mailbox", security(("bearer" = [])),
    params(
        ("after" = Option<u64>, Query, description = "Resume after this seq (the last acked)"),
        ("token" = Option<String>, Query, description = "The device token, for clients that cannot set headers")
    ),
    responses(
        (status = 101, description = "WebSocket: the server sends {type: entry, seq, kind, group, body, received_at}; the client sends {type: ack, up_to}"),
        (status = 400, description = "bad_request (not a WebSocket upgrade)", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody)
    )
)]
pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<WsQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let token = bearer_token(&headers)
        .or(q.token.as_deref())
        .ok_or(ApiError::Unauthorized)?;
    let caller = authenticate(&state, token).await?;
    let ws = ws.map_err(|_| ApiError::bad_request("this endpoint needs a WebSocket upgrade"))?;
    let device = caller.device;
    let after = q.after;
    // Clients only send small ack frames, and an idle connection should cost little:
    // the library defaults (128 KiB buffers allocated per connection, 64 MiB messages)
    // made each idle WebSocket hold ~136 KB of server memory.
    let ws = ws
        .read_buffer_size(WS_BUFFER)
        .write_buffer_size(WS_BUFFER)
        .max_frame_size(MAX_CLIENT_FRAME)
        .max_message_size(MAX_CLIENT_FRAME);
    Ok(ws.on_upgrade(move |socket| async move {
        let guard = state.register_socket(device);
        serve(state, socket, device, after, guard).await;
    }))
}

/// Why the connection loop ended, and the close frame to send (if any).
fn close(code: u16, reason: &str) -> Option<CloseFrame> {
    Some(CloseFrame {
        code,
        reason: reason.into(),
    })
}

async fn serve(
    state: AppState,
    mut socket: WebSocket,
    device: DeviceId,
    after: u64,
    mut guard: SocketGuard,
) {
    // Subscribe before the first read so no wake-up between read and wait is lost: the
    // subscription is in place everywhere when `subscribe` returns.
    let mut wake = state.fanout().subscribe(device).await;
    let mut superseded = wake.take_superseded();
    // Other nodes holding an older connection of this device close it.
    state.fanout().announce_connection(device).await;
    let mut shutdown = state.shutdown_signal();
    let Some(mut kicked) = guard.kicked.take() else {
        return;
    };
    let mut cursor = after;
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    let mut awaiting_pong = false;
    // The store holds entries this socket has not sent (at first: whatever is there).
    let mut read_store = true;
    let mut acks = Acks {
        state: state.clone(),
        device,
        writing: None,
        next: None,
    };
    let frame = 'conn: loop {
        if *shutdown.borrow() {
            break close(CLOSE_GOING_AWAY, "server shutting down");
        }
        // Send everything after the cursor.
        while read_store {
            state.metrics().websocket_store_read();
            let entries = match state.store().fetch(device, cursor, PAGE).await {
                Ok(entries) => entries,
                Err(StoreError::UnknownDevice) => {
                    break 'conn close(CLOSE_DEVICE_REMOVED, "device removed");
                }
                Err(e) => {
                    tracing::error!(error = %e, "mailbox read failed on a WebSocket");
                    break 'conn close(CLOSE_INTERNAL, "internal error");
                }
            };
            let Some(last) = entries.last().map(|e| e.seq) else {
                read_store = false;
                guard.handoff.sent_up_to(cursor);
                break;
            };
            for entry in entries {
                let body = sotto_proto::b64::encode(&entry.body);
                let frame = ServerFrame::Entry {
                    seq: entry.seq,
                    kind: wire_kind(entry.kind),
                    group: entry.group,
                    body: std::borrow::Cow::Borrowed(&body),
                    received_at: entry.received_at,
                };
                if send_entry(&mut socket, &state, &frame).await.is_err() {
                    break 'conn None;
                }
            }
            cursor = last;
        }
        tokio::select! {
            woke = wake.woken() => {
                let (handed, dropped) = guard.handoff.take();
                let (run, read) = continue_from(cursor, handed, dropped, woke);
                for ready in &run {
                    if send_entry(&mut socket, &state, &entry_frame(ready)).await.is_err() {
                        break 'conn None;
                    }
                    cursor = ready.seq;
                }
                read_store = read;
            }
            _ = &mut kicked => break close(CLOSE_REPLACED, "replaced by a newer connection"),
            () = superseded.announced() => break close(CLOSE_REPLACED, "replaced by a newer connection on another server"),
            () = shut_down(&mut shutdown) => break close(CLOSE_GOING_AWAY, "server shutting down"),
            _ = keepalive.tick() => {
                if awaiting_pong {
                    break close(CLOSE_GOING_AWAY, "keepalive timeout");
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    break None;
                }
                awaiting_pong = true;
            }
            written = acks.written() => match written {
                Ok(deleted) => state.metrics().acked(deleted),
                Err(StoreError::UnknownDevice) => {
                    break close(CLOSE_DEVICE_REMOVED, "device removed");
                }
                Err(e) => {
                    tracing::error!(error = %e, "ack failed on a WebSocket");
                    break close(CLOSE_INTERNAL, "internal error");
                }
            },
            incoming = socket.recv() => match incoming {
                None | Some(Ok(Message::Close(_))) => break None,
                Some(Ok(Message::Text(text))) => {
                    awaiting_pong = false;
                    match serde_json::from_str::<ClientFrame>(text.as_str()) {
                        Ok(ClientFrame::Ack { up_to }) => acks.receive(up_to),
                        Err(_) => break close(CLOSE_INVALID, "malformed frame: expected {\"type\":\"ack\",\"up_to\":N}"),
                    }
                }
                Some(Ok(Message::Binary(_))) => break close(CLOSE_UNSUPPORTED, "binary frames are not accepted"),
                // Any sign of life answers the keepalive.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => awaiting_pong = false,
                Some(Err(_)) => break close(CLOSE_INVALID, "invalid frame"),
            },
        }
    };
    // Acks the device sent before the connection ended still count.
    if let Err(e) = acks.flush().await {
        tracing::debug!(error = %e, "a closing WebSocket's last ack was not applied");
    }
    if let Some(frame) = frame {
        tracing::debug!(code = frame.code, "closing a WebSocket");
        let _ = socket.send(Message::Close(Some(frame))).await;
    }
    drop(guard);
}

/// A store write in progress.
type Write<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// A socket's acks: one store write at a time, and acks that arrive meanwhile merge
/// into the next write (they are cumulative), so a slow write never holds up sending
/// and a busy socket writes fewer acks.
struct Acks {
    state: AppState,
    device: DeviceId,
    writing: Option<Write<u64>>,
    next: Option<u64>,
}

impl Acks {
    fn receive(&mut self, up_to: u64) {
        if self.writing.is_some() {
            self.next = Some(self.next.map_or(up_to, |n| n.max(up_to)));
        } else {
            self.start(up_to);
        }
    }

    fn start(&mut self, up_to: u64) {
        let (state, device) = (self.state.clone(), self.device);
        self.writing = Some(Box::pin(
            async move { state.store().ack(device, up_to).await },
        ));
    }

    /// Resolves when the write in progress is done (how many entries it deleted), then
    /// starts the next; never resolves when nothing is being written. Cancel-safe: the
    /// write lives in `self`, not in this future.
    async fn written(&mut self) -> Result<u64, StoreError> {
        let Some(write) = self.writing.as_mut() else {
            return std::future::pending().await;
        };
        let result = write.await;
        self.writing = None;
        if let Some(up_to) = self.next.take() {
            self.start(up_to);
        }
        result
    }

    /// Finishes every ack received.
    async fn flush(&mut self) -> Result<(), StoreError> {
        while self.writing.is_some() {
            let deleted = self.written().await?;
            self.state.metrics().acked(deleted);
        }
        Ok(())
    }
}

/// Resolves once the server shuts down (holding no lock guard across awaits).
async fn shut_down(rx: &mut tokio::sync::watch::Receiver<bool>) {
    if rx.wait_for(|down| *down).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The frame for an entry handed over by the request that stored it.
fn entry_frame(e: &Ready) -> ServerFrame<'_> {
    ServerFrame::Entry {
        seq: e.seq,
        kind: wire_kind(e.kind),
        group: e.group,
        body: std::borrow::Cow::Borrowed(&e.body_b64),
        received_at: e.received_at,
    }
}

/// Sends one entry frame.
async fn send_entry(
    socket: &mut WebSocket,
    state: &AppState,
    frame: &ServerFrame<'_>,
) -> Result<(), ()> {
    // Serialising these fields cannot fail; if it ever did, the socket closes and the
    // device reads the entry on its next connection.
    let text = serde_json::to_string(frame).map_err(|_| ())?;
    socket
        .send(Message::Text(text.into()))
        .await
        .map_err(|_| ())?;
    state.metrics().pushed(1);
    Ok(())
}
