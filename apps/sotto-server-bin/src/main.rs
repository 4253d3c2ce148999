//! `sotto-server`: the Sotto delivery service. Parses flags, loads the configuration,
//! opens the store (embedded SQLite, or PostgreSQL) and the fan-out (in-process, or
//! NATS between nodes) and serves the library's router until SIGINT/SIGTERM.
//! Everything else lives in the `sotto-server` library crate.

mod config;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use config::{Config, FanoutBackend, Flags, LogFormat, StoreBackend};
use sotto_server::{AppState, Fanout, InProcessFanout, ServerConfig, SystemClock};
use sotto_server_fanout_nats::NatsFanout;
use sotto_server_store::Store;
use sotto_server_store_postgres::{PostgresOptions, PostgresStore};
use sotto_server_store_sqlite::SqliteStore;

/// Exit codes: 0 clean shutdown, 1 runtime failure, 2 bad configuration.
#[derive(Parser, Debug)]
#[command(
    name = "sotto-server",
    version,
    about = "Sotto delivery service: stores and forwards end-to-end encrypted messages",
    after_help = "Configuration: defaults < --config FILE < SOTTO_* environment variables < flags.\n\
                  See sotto-server.example.toml for every setting.\n\
                  Exit codes: 0 clean shutdown, 1 runtime failure, 2 bad configuration."
)]
struct Args {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7480].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Data directory for the database and blobs [default: ./sotto-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Write logs as JSON lines.
    #[arg(long)]
    log_json: bool,
    /// TLS certificate (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); needs --tls-cert.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Without a command the server runs.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Operator actions on the server's data (the same configuration as the server).
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(clap::Subcommand, Debug)]
enum AdminCommand {
    /// Deletes an account and all its devices so that the name can be registered
    /// again (a person who lost their phone and their recovery key). Their contacts'
    /// clients are told; they see a safety-number change when the person registers
    /// again. Logged.
    ReleaseUsername {
        /// The account to release.
        username: String,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let command = args.command;
    let flags = Flags {
        config: args.config,
        listen: args.listen,
        data_dir: args.data_dir,
        log_json: args.log_json,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
    };
    let config = match Config::load(&flags, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sotto-server: {e}");
            return ExitCode::from(2);
        }
    };
    // The TLS files are part of the configuration: unreadable or mismatched is exit 2.
    let tls = match &config.tls {
        Some((cert, key)) => match sotto_server::tls::server_config(cert, key) {
            Ok(tls) => Some(tls),
            Err(e) => {
                eprintln!("sotto-server: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    init_logging(&config);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sotto-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match command {
        None => runtime.block_on(serve(config, tls)),
        Some(Command::Admin(admin)) => runtime.block_on(run_admin(&config, admin)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("sotto-server: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr (stdout carries only the start-up line), coloured only when a
    // person is watching.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(config: Config, tls: Option<Arc<rustls::ServerConfig>>) -> Result<(), String> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        format!(
            "cannot create data directory {}: {e}",
            config.data_dir.display()
        )
    })?;
    // Only the server's user reads the database and blobs.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| {
                format!(
                    "cannot restrict access to {}: {e}",
                    config.data_dir.display()
                )
            })?;
    }
    let store = open_store(&config).await?;
    let fanout = open_fanout(&config).await?;
    let state = AppState::new(
        store,
        fanout,
        Arc::new(SystemClock),
        ServerConfig {
            retention_secs: config.retention_secs,
            max_body_bytes: config.max_request_bytes,
            link_slot_ttl_secs: config.link_slot_ttl_secs,
            blob_dir: Some(config.data_dir.join("blobs")),
            max_attachment_bytes: config.max_attachment_bytes,
            ..ServerConfig::default()
        },
    );
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let data = match &config.store {
        StoreBackend::Sqlite => format!("data in {}", config.data_dir.display()),
        StoreBackend::Postgres { .. } => format!(
            "state in PostgreSQL and blobs in {}",
            config.data_dir.display()
        ),
    };
    let fanout = match &config.fanout {
        FanoutBackend::Local => "",
        FanoutBackend::Nats { .. } => ", fan-out over NATS",
    };
    let shutdown = shutdown_signal()?;
    println!("sotto-server listening on {scheme}://{addr} with {data}{fanout}");
    tokio::spawn(sotto_server::expire_loop(
        state.clone(),
        Duration::from_secs(300),
    ));
    let served = match tls {
        Some(tls) => {
            let listener = sotto_server::tls::TlsListener::new(listener, tls)
                .map_err(|e| format!("cannot start TLS on {addr}: {e}"))?;
            sotto_server::run(listener, state, shutdown).await
        }
        None => sotto_server::run(listener, state, shutdown).await,
    };
    served.map_err(|e| format!("server error: {e}"))
}

/// The store the configuration names.
async fn open_store(config: &Config) -> Result<Arc<dyn Store>, String> {
    Ok(match &config.store {
        StoreBackend::Sqlite => {
            let db = config.data_dir.join("sotto.db");
            Arc::new(
                SqliteStore::open(&db)
                    .map_err(|e| format!("cannot open the database {}: {e}", db.display()))?,
            )
        }
        StoreBackend::Postgres {
            url,
            pool_size,
            writers,
        } => {
            let mut options = PostgresOptions::new(url.clone());
            options.pool_size = *pool_size;
            options.writers = *writers;
            Arc::new(PostgresStore::connect(&options).await.map_err(|e| {
                format!("cannot use the PostgreSQL database (check database_url and that the server is up): {e}")
            })?)
        }
    })
}

/// The fan-out the configuration names.
async fn open_fanout(config: &Config) -> Result<Arc<dyn Fanout>, String> {
    Ok(match &config.fanout {
        FanoutBackend::Local => Arc::new(InProcessFanout::default()),
        FanoutBackend::Nats { url, prefix } => Arc::new(
            NatsFanout::connect(url, prefix)
                .await
                .map_err(|e| format!("{e} (check nats_url and that nats-server is up)"))?,
        ),
    })
}

/// Runs an operator command against the configured store (a server may be running
/// on it: SQLite and PostgreSQL both allow that). With NATS, the nodes' sockets are
/// woken for the notices; with the in-process fan-out the clients read them at their
/// next fetch.
async fn run_admin(config: &Config, command: AdminCommand) -> Result<(), String> {
    match command {
        AdminCommand::ReleaseUsername { username } => {
            let name = sotto_proto::Username::parse(&username)
                .map_err(|e| format!("{username:?} is not a username: {e}"))?;
            let store = open_store(config).await?;
            let now = sotto_server::Clock::now(&SystemClock);
            let notified = store
                .release_account(&name, now)
                .await
                .map_err(|e| match e {
                    sotto_server_store::StoreError::UnknownUser => {
                        format!("no account named {name} exists")
                    }
                    other => format!("cannot release {name}: {other}"),
                })?;
            if let FanoutBackend::Nats { .. } = config.fanout {
                let fanout = open_fanout(config).await?;
                let wakes: Vec<_> = notified
                    .iter()
                    .map(|(id, seq)| (*id, sotto_server::Wake::UpTo(*seq)))
                    .collect();
                fanout.notify_many(&wakes).await;
            }
            tracing::warn!(
                username = %name,
                contacts_told = notified.len(),
                "admin: username released (account and devices deleted)"
            );
            println!(
                "released {name}: the account and its devices are deleted, {} contact device(s) told; \
                 the name can be registered again",
                notified.len()
            );
            Ok(())
        }
    }
}

/// Installs the SIGINT (Ctrl-C) and SIGTERM handlers at once, and answers a future
/// that resolves when one arrives. Installed before the server says it is listening:
/// a handler installed lazily, when the server first polled it, left a window in
/// which a SIGTERM still had its default effect and killed the process outright.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    #[cfg(unix)]
    let (mut terminate, mut interrupt) = {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| format!("cannot handle {name}: {e}"))
        };
        (
            install(SignalKind::terminate(), "SIGTERM")?,
            install(SignalKind::interrupt(), "SIGINT")?,
        )
    };
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal received; finishing in-flight requests");
    })
}
