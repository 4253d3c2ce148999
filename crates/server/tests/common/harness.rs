//! A harness that drives the HTTP API through `app()` (no process, no socket) with a
//! manual clock, and the requests most tests need.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sotto_proto::{ConversationId, DeviceId};
use sotto_server::{AppState, InProcessFanout, ManualClock, ServerConfig, app};
use sotto_server_store::{MemoryStore, Store};
use sotto_server_store_sqlite::SqliteStore;
use tower::ServiceExt;

use super::{Identity, app_bytes, b64, commit_bytes, dev, message_id, welcome_bytes};

pub const T0: u64 = 1_750_000_000;

pub struct Harness {
    pub app: Router,
    pub state: AppState,
    pub clock: Arc<ManualClock>,
    _dir: Option<tempfile::TempDir>,
}

pub struct Client {
    pub identity: Identity,
    pub device: DeviceId,
    pub token: String,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_store(Arc::new(MemoryStore::new()), None)
    }

    /// The same API over the SQLite store in a temporary directory.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("server.db")).unwrap();
        Self::with_store(Arc::new(store), Some(dir))
    }

    pub fn with_store(store: Arc<dyn Store>, dir: Option<tempfile::TempDir>) -> Self {
        Self::with_config(store, ServerConfig::default(), dir)
    }

    /// The API over `store` with `config`; `dir` is kept alive as long as the harness.
    pub fn with_config(
        store: Arc<dyn Store>,
        config: ServerConfig,
        dir: Option<tempfile::TempDir>,
    ) -> Self {
        let clock = Arc::new(ManualClock::new(T0));
        let state = AppState::new(
            store,
            Arc::new(InProcessFanout::new()),
            clock.clone(),
            config,
        );
        Self {
            app: app(state.clone()),
            state,
            clock,
            _dir: dir,
        }
    }

    pub async fn send(&self, req: Request<Body>) -> (StatusCode, Vec<u8>) {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, bytes)
    }

    /// Sends raw body bytes as JSON; answers the status and the parsed JSON body.
    pub async fn raw(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let (status, bytes) = self.send(req.body(Body::from(body)).unwrap()).await;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!(
                    "non-JSON answer ({status}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        (status, value)
    }

    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        self.raw(method, uri, token, bytes).await
    }

    pub async fn register(&self, username: &str, seed: u8, device: u8) -> Client {
        let identity = Identity::new(username, seed);
        let device = dev(device);
        let list = identity.list(1, &[device]);
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/accounts",
                None,
                Some(json!({"username": username, "device_list": list})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["device_id"], device.to_string());
        Client {
            identity,
            device,
            token: body["token"].as_str().unwrap().to_owned(),
        }
    }

    pub async fn create_group(&self, c: &Client, g: ConversationId) {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/groups",
                Some(&c.token),
                Some(json!({"group_id": g})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    pub async fn commit(
        &self,
        c: &Client,
        g: ConversationId,
        epoch: u64,
        added: &[DeviceId],
    ) -> (StatusCode, Value) {
        let mut body = json!({
            "epoch": epoch,
            "added": added,
            "removed": [],
            "commit": b64(&commit_bytes(g, epoch)),
        });
        if !added.is_empty() {
            body["welcome"] = json!(b64(&welcome_bytes()));
        }
        self.call(
            Method::POST,
            &format!("/v1/groups/{g}/commits"),
            Some(&c.token),
            Some(body),
        )
        .await
    }

    pub async fn send_message(
        &self,
        c: &Client,
        g: ConversationId,
        epoch: u64,
        id: u8,
    ) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("/v1/groups/{g}/messages"),
            Some(&c.token),
            Some(json!({
                "message_id": message_id(id).to_string(),
                "body": b64(&app_bytes(g, epoch, &[id; 8])),
            })),
        )
        .await
    }

    pub async fn mailbox(&self, c: &Client) -> Vec<Value> {
        let (status, body) = self
            .call(Method::GET, "/v1/mailbox?after=0", Some(&c.token), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["entries"].as_array().unwrap().clone()
    }

    /// alice creates a group and adds bob: both members at epoch 1.
    pub async fn alice_and_bob_in_group(&self, g: ConversationId) -> (Client, Client) {
        let alice = self.register("alice", 1, 1).await;
        let bob = self.register("bob", 2, 2).await;
        self.create_group(&alice, g).await;
        let (status, body) = self.commit(&alice, g, 0, &[bob.device]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["epoch"], 1);
        (alice, bob)
    }
}

pub fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}
