//! Sotto's delivery service as a library: the HTTP + WebSocket API over the
//! [`Store`](sotto_server_store::Store) and [`Fanout`] traits.
//!
//! The server is a directory (accounts, device lists, KeyPackages) and a delivery
//! service (one commit per group epoch, per-device mailboxes, push). It stores and
//! orders MLS ciphertext and never sees plaintext or keys. The binary
//! (`apps/sotto-server-bin`) builds an [`AppState`], calls [`run`] and spawns
//! [`expire_loop`]; tests call [`app`] directly or [`run`] on port 0.
//!
//! The wire protocol is described in `docs/protocol.md`.

mod attachments;
mod error;
mod extract;
mod handoff;
mod metrics;
mod routes;
pub mod tls;
mod ws;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use sotto_proto::DeviceId;
use sotto_server_store::Store;
use tokio::sync::{oneshot, watch};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::handoff::{Handoff, Ready};

pub use error::ApiError;
pub use metrics::Metrics;
pub use sotto_server_fanout::{
    Fanout, FanoutSubscription, InProcessFanout, Superseded, Wake, WakeMark,
};

/// Tunables of the delivery service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// How long undelivered mailbox entries are kept (seconds; default 30 days).
    pub retention_secs: u64,
    /// Largest JSON request body (bytes; default 1 MiB).
    pub max_body_bytes: usize,
    /// How long a device-link slot lives (seconds; default 600).
    pub link_slot_ttl_secs: u64,
    /// Largest device-link payload (bytes; default 64 KiB).
    pub max_link_payload: usize,
    /// Where attachment blobs are kept; `None` turns attachments off (503
    /// `attachments_disabled`).
    pub blob_dir: Option<PathBuf>,
    /// Largest attachment blob (bytes; default 100 MiB).
    pub max_attachment_bytes: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            retention_secs: 30 * 86_400,
            max_body_bytes: 1024 * 1024,
            link_slot_ttl_secs: 600,
            max_link_payload: 64 * 1024,
            blob_dir: None,
            max_attachment_bytes: 100 * 1024 * 1024,
        }
    }
}

/// The time source (Unix seconds), injected so tests control it.
pub trait Clock: Send + Sync + 'static {
    /// Now, in Unix seconds.
    fn now(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock reading `now`.
    pub fn new(now: u64) -> Self {
        Self(AtomicU64::new(now))
    }
    /// Sets the time.
    pub fn set(&self, now: u64) {
        self.0.store(now, Ordering::SeqCst);
    }
    /// Moves the time forward.
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    fanout: Arc<dyn Fanout>,
    clock: Arc<dyn Clock>,
    config: ServerConfig,
    /// The live WebSocket of each device on this node.
    sockets: Mutex<HashMap<DeviceId, LiveSocket>>,
    next_socket: AtomicU64,
    /// Becomes `true` when the server shuts down; WebSockets then close with 1001.
    shutdown: watch::Sender<bool>,
    /// How many WebSocket tasks are running.
    live_sockets: watch::Sender<usize>,
    metrics: Metrics,
    started: Instant,
}

impl AppState {
    /// Builds the state from its providers.
    pub fn new(
        store: Arc<dyn Store>,
        fanout: Arc<dyn Fanout>,
        clock: Arc<dyn Clock>,
        config: ServerConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                fanout,
                clock,
                config,
                sockets: Mutex::new(HashMap::new()),
                next_socket: AtomicU64::new(1),
                shutdown: watch::Sender::new(false),
                live_sockets: watch::Sender::new(0),
                metrics: Metrics::default(),
                started: Instant::now(),
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }
    /// The fan-out.
    pub fn fanout(&self) -> &Arc<dyn Fanout> {
        &self.inner.fanout
    }
    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }
    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// The counters behind `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// WebSocket connections open on this node.
    pub fn live_sockets(&self) -> usize {
        *self.inner.live_sockets.borrow()
    }

    /// Time since this state was built.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// Tells background tasks and WebSockets that the server is shutting down.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    /// Waits (at most `limit`) until every WebSocket task has ended.
    async fn sockets_closed(&self, limit: Duration) {
        let mut rx = self.inner.live_sockets.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|n| *n == 0)).await;
    }

    /// Registers a WebSocket for `device`, kicking out the previous one on this node.
    fn register_socket(&self, device: DeviceId) -> SocketGuard {
        let id = self.inner.next_socket.fetch_add(1, Ordering::Relaxed);
        let (kick, kicked) = oneshot::channel();
        let handoff = Arc::new(Handoff::default());
        let live = LiveSocket {
            id,
            kick,
            handoff: Arc::clone(&handoff),
        };
        if let Ok(mut sockets) = self.inner.sockets.lock()
            && let Some(old) = sockets.insert(device, live)
        {
            let _ = old.kick.send(());
        }
        self.inner.live_sockets.send_modify(|n| *n += 1);
        self.inner.metrics.websocket_opened();
        SocketGuard {
            state: self.clone(),
            device,
            id,
            kicked: Some(kicked),
            handoff,
        }
    }

    /// Hands stored entries to the recipients' WebSockets on this node (those without
    /// one here get nothing: they read the store when they connect or are woken).
    fn hand_off(&self, entries: impl IntoIterator<Item = (DeviceId, Ready)>) {
        let Ok(sockets) = self.inner.sockets.lock() else {
            return;
        };
        for (device, ready) in entries {
            if let Some(live) = sockets.get(&device) {
                live.handoff.push(ready);
            }
        }
    }
}

/// A device's WebSocket on this node.
struct LiveSocket {
    /// Connection number (a newer connection of the device gets a higher one).
    id: u64,
    /// Closes the connection when a newer one replaces it.
    kick: oneshot::Sender<()>,
    /// Entries stored by requests on this node, for the socket to send.
    handoff: Arc<Handoff>,
}

/// Keeps a WebSocket registered; unregisters it when dropped.
struct SocketGuard {
    state: AppState,
    device: DeviceId,
    id: u64,
    kicked: Option<oneshot::Receiver<()>>,
    handoff: Arc<Handoff>,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if let Ok(mut sockets) = self.state.inner.sockets.lock()
            && sockets
                .get(&self.device)
                .is_some_and(|live| live.id == self.id)
        {
            sockets.remove(&self.device);
        }
        self.state
            .inner
            .live_sockets
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The OpenAPI description's fixed parts; the paths come from the handlers.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Sotto delivery service",
        description = "Stores and orders MLS ciphertext for end-to-end encrypted conversations; never sees plaintext or keys. See docs/protocol.md for the order of operations and the WebSocket frames.",
        license(name = "MIT OR Apache-2.0")
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "accounts", description = "Registration, directory, device lists"),
        (name = "key-packages", description = "The KeyPackage directory"),
        (name = "groups", description = "Ordering commits and fanning out messages"),
        (name = "mailbox", description = "Per-device delivery queues and the push socket"),
        (name = "link", description = "The device-linking relay"),
        (name = "attachments", description = "Encrypted blobs"),
        (name = "operations", description = "Health and metrics")
    )
)]
struct ApiDoc;

/// Declares the `bearer` security scheme the handlers refer to.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A device token: 32 random bytes, base64url without padding",
                    ))
                    .build(),
            ),
        );
    }
}

/// Liveness.
#[utoipa::path(get, path = sotto_api::paths::HEALTH.template, tag = "operations",
    responses((status = 200, description = "The server is up", content_type = "text/plain", body = String)))]
async fn health() -> &'static str {
    "ok"
}

/// Every documented endpoint: registering a handler here is what documents it, so
/// the router and `/openapi.json` cannot drift apart.
fn api(link_limit: usize) -> OpenApiRouter<AppState> {
    use routes::{accounts, groups, key_packages, link, mailbox};
    OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(health))
        .routes(routes!(metrics::export))
        .routes(routes!(accounts::register))
        .routes(routes!(accounts::lookup))
        .routes(routes!(accounts::publish_devices))
        .routes(routes!(accounts::recovery_lookup))
        .routes(routes!(accounts::recover))
        .routes(routes!(accounts::rotate_token))
        .routes(routes!(key_packages::upload, key_packages::status))
        .routes(routes!(key_packages::claim))
        .routes(routes!(groups::create))
        .routes(routes!(groups::show))
        .routes(routes!(groups::commit))
        .routes(routes!(groups::message))
        .routes(routes!(mailbox::fetch))
        .routes(routes!(mailbox::ack))
        .merge(
            OpenApiRouter::default()
                .routes(routes!(link::put_slot, link::take_slot))
                .layer(DefaultBodyLimit::max(link_limit)),
        )
        .merge(
            // Streamed to disk with its own limit (`max_attachment_bytes`).
            OpenApiRouter::default()
                .routes(routes!(attachments::upload))
                .layer(DefaultBodyLimit::disable()),
        )
        .routes(routes!(attachments::download))
        .routes(routes!(ws::upgrade))
}

/// The OpenAPI 3 document of the HTTP API (what `GET /openapi.json` serves).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api(ServerConfig::default().max_link_payload)
        .split_for_parts()
        .1
}

/// The HTTP API as a router (no listener): tests drive it with `oneshot`.
pub fn app(state: AppState) -> Router {
    let body_limit = state.config().max_body_bytes;
    let (router, doc) = api(state.config().max_link_payload).split_for_parts();
    let doc: Arc<str> = match doc.to_json() {
        Ok(json) => json.into(),
        Err(e) => {
            tracing::error!(error = %e, "cannot render the OpenAPI document");
            r#"{"error":{"code":"internal","message":"the API description is unavailable"}}"#.into()
        }
    };
    router
        .route(
            "/openapi.json",
            get(move || {
                let doc = Arc::clone(&doc);
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        doc.to_string(),
                    )
                }
            }),
        )
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes, then stops accepting,
/// finishes in-flight requests and closes WebSockets with code 1001.
///
/// `listener` is a [`tokio::net::TcpListener`] for plain HTTP or a
/// [`tls::TlsListener`] for HTTPS.
pub async fn run<L>(
    listener: L,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let signal_state = state.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections, closing WebSockets");
        signal_state.begin_shutdown();
    };
    axum::serve(listener, app(state.clone()))
        .with_graceful_shutdown(signal)
        .await?;
    state.sockets_closed(Duration::from_secs(5)).await;
    Ok(())
}

/// Deletes expired mailbox entries, bodies, idempotency records, link slots and
/// attachment blobs every
/// `every`, until the server shuts down.
pub async fn expire_loop(state: AppState, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = state.shutdown_signal();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.wait_for(|down| *down) => return,
        }
        let now = state.clock().now();
        match state
            .store()
            .expire(now, state.config().retention_secs)
            .await
        {
            Ok(counts) => tracing::debug!(
                entries = counts.entries,
                bodies = counts.bodies,
                link_slots = counts.link_slots,
                idempotency_records = counts.idempotency_records,
                "expired old data"
            ),
            Err(e) => tracing::error!(error = %e, "expiry failed"),
        }
        if let Some(dir) = state.config().blob_dir.clone() {
            match attachments::expire(dir, now, state.config().retention_secs).await {
                Ok(n) => tracing::debug!(blobs = n, "expired old attachments"),
                Err(e) => tracing::error!(error = %e, "attachment expiry failed"),
            }
        }
    }
}
