//! The real server on its own runtime thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sotto_server_store::Store;

use crate::LyingStore;

use sotto_server::{AppState, InProcessFanout, ServerConfig, SystemClock};
use sotto_server_store_sqlite::SqliteStore;

/// A running server; stopped (gracefully) when dropped.
pub struct TestServer {
    url: String,
    state: AppState,
    dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Why the test server could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the test server could not start: {}", self.0)
    }
}

impl std::error::Error for StartError {}

impl TestServer {
    /// Starts a server with default settings (attachments on).
    pub fn start() -> Result<Self, StartError> {
        Self::start_with(|store| store)
    }

    /// Starts a server whose store lies when told to (see [`LyingStore`]).
    pub fn start_lying() -> Result<(Self, Arc<LyingStore>), StartError> {
        let mut lying = None;
        let server = Self::start_with(|store| {
            let l = Arc::new(LyingStore::new(store));
            lying = Some(Arc::clone(&l));
            l
        })?;
        let lying = lying.ok_or_else(|| StartError("the store was not wrapped".into()))?;
        Ok((server, lying))
    }

    /// Starts a server that speaks only HTTPS (a fresh self-signed certificate for
    /// `localhost`); answers it and the certificate (PEM) clients must trust.
    pub fn start_tls() -> Result<(Self, Vec<u8>), StartError> {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .map_err(|e| StartError(e.to_string()))?;
        let cert_pem = certified.cert.pem().into_bytes();
        let key_pem = certified.signing_key.serialize_pem().into_bytes();
        let server = Self::start_inner(|store| store, Some((cert_pem.clone(), key_pem)))?;
        Ok((server, cert_pem))
    }

    /// Starts a server over the SQLite store as `wrap` returns it.
    pub fn start_with(
        wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
    ) -> Result<Self, StartError> {
        Self::start_inner(wrap, None)
    }

    fn start_inner(
        wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
        tls: Option<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Self, StartError> {
        let dir = tempfile::tempdir().map_err(|e| StartError(e.to_string()))?;
        let tls = match tls {
            Some((cert, key)) => {
                let (cert_path, key_path) =
                    (dir.path().join("tls.crt"), dir.path().join("tls.key"));
                std::fs::write(&cert_path, cert).map_err(|e| StartError(e.to_string()))?;
                std::fs::write(&key_path, key).map_err(|e| StartError(e.to_string()))?;
                Some(
                    sotto_server::tls::server_config(&cert_path, &key_path)
                        .map_err(|e| StartError(e.to_string()))?,
                )
            }
            None => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let store = SqliteStore::open(dir.path().join("server.db"))
            .map_err(|e| StartError(e.to_string()))?;
        let state = AppState::new(
            wrap(Arc::new(store)),
            Arc::new(InProcessFanout::new()),
            Arc::new(SystemClock),
            ServerConfig {
                blob_dir: Some(dir.path().join("blobs")),
                ..ServerConfig::default()
            },
        );
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("sotto-test-server".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let addr = listener.local_addr().map_err(|e| e.to_string());
                    let _ = ready_tx.send(addr);
                    let stop = async {
                        let _ = stopped.await;
                    };
                    let _ = match tls {
                        Some(config) => match sotto_server::tls::TlsListener::new(listener, config)
                        {
                            Ok(listener) => sotto_server::run(listener, run_state, stop).await,
                            Err(e) => Err(e),
                        },
                        None => sotto_server::run(listener, run_state, stop).await,
                    };
                });
            })
            .map_err(|e| StartError(e.to_string()))?;
        let addr = ready_rx
            .recv()
            .map_err(|e| StartError(e.to_string()))?
            .map_err(StartError)?;
        let url = match tls_host(scheme) {
            Some(host) => format!("{scheme}://{host}:{}", addr.port()),
            None => format!("{scheme}://{addr}"),
        };
        Ok(Self {
            url,
            state,
            dir,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's state (store, fan-out), for tests that play a malicious server.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// What `sotto-server admin release-username` does, for tests that drive the
    /// server in process: deletes the account and its devices and tells its contacts.
    pub fn release_username(&self, username: &str) -> Result<(), String> {
        let name = sotto_proto::Username::parse(username).map_err(|e| e.to_string())?;
        let store = Arc::clone(self.state.store());
        let now = sotto_server::Clock::now(&SystemClock);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime
            .block_on(store.release_account(&name, now))
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A fresh temporary directory under the server's, e.g. for a client profile.
    pub fn profile_dir(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join("profiles").join(name);
        let _ = std::fs::create_dir_all(&dir);
        dir
    }
}

/// TLS servers are reached by the name on their certificate.
fn tls_host(scheme: &str) -> Option<&'static str> {
    (scheme == "https").then_some("localhost")
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
