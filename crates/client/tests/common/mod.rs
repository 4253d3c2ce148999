//! A real server (`sotto_server::run` on 127.0.0.1:0 over SQLite, in this process) and
//! clients with their own profile directories.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use sotto_client::{Client, StoredMessage};
use sotto_server::{AppState, InProcessFanout, ServerConfig, SystemClock};
use sotto_store_sqlite::SqliteStore;
use tempfile::TempDir;

pub struct Server {
    pub url: String,
    pub state: AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: TempDir,
}

impl Server {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("server.db")).unwrap();
        let state = AppState::new(
            Arc::new(store),
            Arc::new(InProcessFanout::new()),
            Arc::new(SystemClock),
            ServerConfig {
                blob_dir: Some(dir.path().join("blobs")),
                ..ServerConfig::default()
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(sotto_server::run(listener, state.clone(), async {
            let _ = stopped.await;
        }));
        Self {
            url,
            state,
            stop: Some(stop),
            _dir: dir,
        }
    }

    /// A client with a fresh profile, registered as `username`.
    pub async fn user(&self, username: &str) -> User {
        let home = tempfile::tempdir().unwrap();
        let client = Client::open(home.path(), &self.url).unwrap();
        client.register(username).await.unwrap();
        User {
            client,
            _home: home,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub struct User {
    pub client: Client,
    pub _home: TempDir,
}

impl User {
    /// Syncs and returns the texts of new messages: (sender, text).
    pub async fn texts(&self) -> Vec<(String, String)> {
        self.client
            .sync()
            .await
            .unwrap()
            .into_iter()
            .filter_map(|e| match e {
                sotto_client::Event::Message(m) => {
                    Some((m.sender.to_string(), m.text.unwrap_or_default()))
                }
                _ => None,
            })
            .collect()
    }

    pub fn history(&self, conversation: &str) -> Vec<StoredMessage> {
        self.client.history(conversation).unwrap()
    }
}

pub fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}
