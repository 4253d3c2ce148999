//! The server's typed configuration: defaults, then a TOML file (`--config`), then
//! `SOTTO_`-prefixed environment variables, then command-line flags; validated once at
//! start-up with messages that say which setting is wrong and how to fix it.
//! `sotto-server.example.toml` at the repository root documents every field.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where a setting came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The TOML file.
    File,
    /// An environment variable.
    Env,
    /// A command-line flag.
    Flag,
}

/// A configuration problem, said so the operator can fix it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file {path} is invalid: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's explanation (line, field).
        reason: String,
    },
    /// One setting has a bad value.
    #[error("{name} ({origin:?}) = {value:?} is invalid: {expected}")]
    Invalid {
        /// The setting (`listen`, `SOTTO_LISTEN`, `--listen`).
        name: String,
        /// Where it came from.
        origin: Source,
        /// The value given.
        value: String,
        /// What would be valid.
        expected: &'static str,
    },
    /// Settings that must come together or not at all.
    #[error("{0}")]
    Inconsistent(&'static str),
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    Human,
    /// One JSON object per line.
    Json,
}

/// The values the file may set (all optional; defaults fill the rest).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    retention_days: Option<u64>,
    max_request_bytes: Option<u64>,
    max_attachment_bytes: Option<u64>,
    link_slot_ttl_secs: Option<u64>,
    log_format: Option<LogFormat>,
    log_filter: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    store: Option<String>,
    database_url: Option<String>,
    database_pool_size: Option<u64>,
    database_writers: Option<u64>,
    fanout: Option<String>,
    nats_url: Option<String>,
    nats_prefix: Option<String>,
}

/// Where the server keeps its state.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreBackend {
    /// The embedded default: a SQLite file in the data directory.
    Sqlite,
    /// A PostgreSQL database shared by every node.
    Postgres {
        /// `postgres://` URL (may hold a password: never printed).
        url: String,
        /// Connections per node.
        pool_size: u32,
        /// Group-committing writer tasks per node.
        writers: usize,
    },
}

impl fmt::Debug for StoreBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite => f.write_str("Sqlite"),
            Self::Postgres {
                pool_size, writers, ..
            } => f
                .debug_struct("Postgres")
                .field("url", &"<set>")
                .field("pool_size", pool_size)
                .field("writers", writers)
                .finish(),
        }
    }
}

/// How nodes wake each other's WebSockets.
#[derive(Clone, PartialEq, Eq)]
pub enum FanoutBackend {
    /// In-process: one node only.
    Local,
    /// NATS: any number of nodes.
    Nats {
        /// `nats://host:port`.
        url: String,
        /// Subject prefix.
        prefix: String,
    },
}

impl fmt::Debug for FanoutBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local => f.write_str("Local"),
            // The URL may carry credentials: show it without them.
            Self::Nats { url, prefix } => f
                .debug_struct("Nats")
                .field("url", &sotto_server_fanout_nats::without_credentials(url))
                .field("prefix", prefix)
                .finish(),
        }
    }
}

/// Command-line overrides (the binary's flags).
#[derive(Debug, Default, Clone)]
pub struct Flags {
    /// `--config`
    pub config: Option<PathBuf>,
    /// `--listen`
    pub listen: Option<String>,
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--log-json`
    pub log_json: bool,
    /// `--tls-cert`
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`
    pub tls_key: Option<PathBuf>,
}

/// The validated configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory for the database and attachment blobs (created if missing).
    pub data_dir: PathBuf,
    /// How long undelivered mailbox entries and blobs are kept, in seconds.
    pub retention_secs: u64,
    /// Largest JSON request body.
    pub max_request_bytes: usize,
    /// Largest attachment blob.
    pub max_attachment_bytes: u64,
    /// Lifetime of a device-link relay slot, in seconds.
    pub link_slot_ttl_secs: u64,
    /// Log format.
    pub log_format: LogFormat,
    /// `tracing` filter directive, e.g. `info` or `sotto_server=debug`.
    pub log_filter: String,
    /// TLS certificate and key (PEM), when serving TLS directly.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The store.
    pub store: StoreBackend,
    /// The fan-out.
    pub fanout: FanoutBackend,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Paths and numbers only; the TLS key path is shown, its content never read here.
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("retention_secs", &self.retention_secs)
            .field("max_request_bytes", &self.max_request_bytes)
            .field("max_attachment_bytes", &self.max_attachment_bytes)
            .field("link_slot_ttl_secs", &self.link_slot_ttl_secs)
            .field("log_format", &self.log_format)
            .field("log_filter", &self.log_filter)
            .field(
                "tls",
                &self.tls.as_ref().map(|(c, _)| (c, "<key path set>")),
            )
            .field("store", &self.store)
            .field("fanout", &self.fanout)
            .finish()
    }
}

/// Default listen address: loopback only, so a fresh install is not exposed.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7480";
/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "sotto-data";

impl Config {
    /// Builds the configuration from the file named in `flags` (if any), the given
    /// environment (`SOTTO_*` variables), and the flags.
    pub fn load(flags: &Flags, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let mut b = Builder::default();
        let store = store_backend(&file, &env)?;
        let fanout = fanout_backend(&file, &env)?;

        b.listen(DEFAULT_LISTEN, Source::File, "listen")?;
        if let Some(v) = &file.listen {
            b.listen(v, Source::File, "listen")?;
        }
        if let Some(v) = env("SOTTO_LISTEN") {
            b.listen(&v, Source::Env, "SOTTO_LISTEN")?;
        }
        if let Some(v) = &flags.listen {
            b.listen(v, Source::Flag, "--listen")?;
        }

        let data_dir = flags
            .data_dir
            .clone()
            .or_else(|| env("SOTTO_DATA_DIR").map(PathBuf::from))
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));

        let retention_days = number(
            file.retention_days,
            env("SOTTO_RETENTION_DAYS"),
            "retention_days",
            "SOTTO_RETENTION_DAYS",
            30,
            1..=3650,
            "a whole number of days from 1 to 3650",
        )?;
        let max_request_bytes = number(
            file.max_request_bytes,
            env("SOTTO_MAX_REQUEST_BYTES"),
            "max_request_bytes",
            "SOTTO_MAX_REQUEST_BYTES",
            1 << 20,
            1024..=(64 << 20),
            "a size in bytes from 1024 to 67108864 (64 MiB)",
        )?;
        let max_attachment_bytes = number(
            file.max_attachment_bytes,
            env("SOTTO_MAX_ATTACHMENT_BYTES"),
            "max_attachment_bytes",
            "SOTTO_MAX_ATTACHMENT_BYTES",
            100 << 20,
            1..=(16 << 30),
            "a size in bytes from 1 to 17179869184 (16 GiB)",
        )?;
        let link_slot_ttl_secs = number(
            file.link_slot_ttl_secs,
            env("SOTTO_LINK_SLOT_TTL_SECS"),
            "link_slot_ttl_secs",
            "SOTTO_LINK_SLOT_TTL_SECS",
            600,
            30..=3600,
            "a number of seconds from 30 to 3600",
        )?;

        let mut log_format = file.log_format.unwrap_or(LogFormat::Human);
        if let Some(v) = env("SOTTO_LOG_FORMAT") {
            log_format = match v.as_str() {
                "human" => LogFormat::Human,
                "json" => LogFormat::Json,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "SOTTO_LOG_FORMAT".into(),
                        origin: Source::Env,
                        value: v,
                        expected: "\"human\" or \"json\"",
                    });
                }
            };
        }
        if flags.log_json {
            log_format = LogFormat::Json;
        }
        let log_filter = env("SOTTO_LOG")
            .or(file.log_filter)
            .unwrap_or_else(|| "info".to_owned());

        let cert = flags
            .tls_cert
            .clone()
            .or_else(|| env("SOTTO_TLS_CERT").map(PathBuf::from))
            .or(file.tls_cert);
        let key = flags
            .tls_key
            .clone()
            .or_else(|| env("SOTTO_TLS_KEY").map(PathBuf::from))
            .or(file.tls_key);
        let tls = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Inconsistent(
                    "TLS needs both a certificate and a key: set tls_cert and tls_key (or --tls-cert and --tls-key) together",
                ));
            }
        };

        Ok(Config {
            listen: b
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7480))),
            data_dir,
            retention_secs: retention_days * 86_400,
            max_request_bytes: usize::try_from(max_request_bytes).unwrap_or(usize::MAX),
            max_attachment_bytes,
            link_slot_ttl_secs,
            log_format,
            log_filter,
            tls,
            store,
            fanout,
        })
    }
}

/// A text setting: the environment overrides the file.
fn text(
    file: &Option<String>,
    env: &impl Fn(&str) -> Option<String>,
    env_name: &str,
) -> Option<(String, Source)> {
    env(env_name)
        .map(|v| (v, Source::Env))
        .or_else(|| file.clone().map(|v| (v, Source::File)))
}

fn store_backend(
    file: &FileConfig,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<StoreBackend, ConfigError> {
    match text(&file.store, env, "SOTTO_STORE") {
        None => Ok(StoreBackend::Sqlite),
        Some((kind, _)) if kind == "sqlite" => Ok(StoreBackend::Sqlite),
        Some((kind, _)) if kind == "postgres" => {
            let Some((url, origin)) = text(&file.database_url, env, "SOTTO_DATABASE_URL") else {
                return Err(ConfigError::Inconsistent(
                    "store = \"postgres\" needs database_url (or SOTTO_DATABASE_URL), like postgres://sotto@db.example:5432/sotto",
                ));
            };
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(ConfigError::Invalid {
                    name: "database_url".into(),
                    origin,
                    value: "<hidden: it may hold a password>".into(),
                    expected: "a URL starting with postgres:// or postgresql://",
                });
            }
            let pool_size = number(
                file.database_pool_size,
                env("SOTTO_DATABASE_POOL_SIZE"),
                "database_pool_size",
                "SOTTO_DATABASE_POOL_SIZE",
                16,
                2..=1000,
                "a number of connections from 2 to 1000",
            )?;
            let writers = number(
                file.database_writers,
                env("SOTTO_DATABASE_WRITERS"),
                "database_writers",
                "SOTTO_DATABASE_WRITERS",
                2,
                1..=64,
                "a number of writer tasks from 1 to 64",
            )?;
            if writers >= pool_size {
                return Err(ConfigError::Inconsistent(
                    "database_writers must be smaller than database_pool_size, so reads still get connections",
                ));
            }
            Ok(StoreBackend::Postgres {
                url,
                pool_size: u32::try_from(pool_size).unwrap_or(u32::MAX),
                writers: usize::try_from(writers).unwrap_or(1),
            })
        }
        Some((kind, origin)) => Err(ConfigError::Invalid {
            name: if origin == Source::Env {
                "SOTTO_STORE"
            } else {
                "store"
            }
            .into(),
            origin,
            value: kind,
            expected: "\"sqlite\" (the embedded default) or \"postgres\"",
        }),
    }
}

fn fanout_backend(
    file: &FileConfig,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<FanoutBackend, ConfigError> {
    match text(&file.fanout, env, "SOTTO_FANOUT") {
        None => Ok(FanoutBackend::Local),
        Some((kind, _)) if kind == "local" => Ok(FanoutBackend::Local),
        Some((kind, _)) if kind == "nats" => {
            let (url, origin) = text(&file.nats_url, env, "SOTTO_NATS_URL")
                .unwrap_or_else(|| ("nats://127.0.0.1:4222".into(), Source::File));
            if !url.starts_with("nats://") && !url.starts_with("tls://") {
                return Err(ConfigError::Invalid {
                    name: if origin == Source::Env {
                        "SOTTO_NATS_URL"
                    } else {
                        "nats_url"
                    }
                    .into(),
                    origin,
                    value: sotto_server_fanout_nats::without_credentials(&url),
                    expected: "a URL like nats://127.0.0.1:4222",
                });
            }
            let (prefix, origin) = text(&file.nats_prefix, env, "SOTTO_NATS_PREFIX")
                .unwrap_or_else(|| ("sotto".into(), Source::File));
            if prefix.is_empty()
                || !prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(ConfigError::Invalid {
                    name: if origin == Source::Env {
                        "SOTTO_NATS_PREFIX"
                    } else {
                        "nats_prefix"
                    }
                    .into(),
                    origin,
                    value: prefix,
                    expected: "letters, digits, '_' or '-'",
                });
            }
            Ok(FanoutBackend::Nats { url, prefix })
        }
        Some((kind, origin)) => Err(ConfigError::Invalid {
            name: if origin == Source::Env {
                "SOTTO_FANOUT"
            } else {
                "fanout"
            }
            .into(),
            origin,
            value: kind,
            expected: "\"local\" (one node) or \"nats\"",
        }),
    }
}

#[derive(Default)]
struct Builder {
    listen: Option<SocketAddr>,
}

impl Builder {
    fn listen(&mut self, value: &str, origin: Source, name: &str) -> Result<(), ConfigError> {
        let addr = value
            .parse::<SocketAddr>()
            .map_err(|_| ConfigError::Invalid {
                name: name.to_owned(),
                origin,
                value: value.to_owned(),
                expected: "an IP address and port, like 127.0.0.1:7480 or [::]:7480",
            })?;
        self.listen = Some(addr);
        Ok(())
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// A number from the file, overridden by the environment, checked against `range`.
fn number(
    file: Option<u64>,
    env: Option<String>,
    file_name: &str,
    env_name: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
    expected: &'static str,
) -> Result<u64, ConfigError> {
    let (value, name, source) = match env {
        Some(text) => {
            let parsed = text
                .trim()
                .parse::<u64>()
                .map_err(|_| ConfigError::Invalid {
                    name: env_name.to_owned(),
                    origin: Source::Env,
                    value: text.clone(),
                    expected,
                })?;
            (parsed, env_name, Source::Env)
        }
        None => (file.unwrap_or(default), file_name, Source::File),
    };
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::Invalid {
            name: name.to_owned(),
            origin: source,
            value: value.to_string(),
            expected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_need_nothing() {
        let c = Config::load(&Flags::default(), env(&[])).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.retention_secs, 30 * 86_400);
        assert_eq!(c.max_attachment_bytes, 100 << 20);
        assert_eq!(c.log_format, LogFormat::Human);
        assert!(c.tls.is_none());
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sotto.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nretention_days = 7\ndata_dir = \"/file\"\n",
        )
        .unwrap();
        let mut flags = Flags {
            config: Some(path),
            ..Flags::default()
        };
        let c = Config::load(&flags, env(&[])).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.retention_secs, 7 * 86_400);
        assert_eq!(c.data_dir, PathBuf::from("/file"));

        let e = env(&[
            ("SOTTO_LISTEN", "127.0.0.1:9001"),
            ("SOTTO_RETENTION_DAYS", "3"),
            ("SOTTO_DATA_DIR", "/env"),
        ]);
        let c = Config::load(&flags, &e).unwrap();
        assert_eq!(c.listen.port(), 9001);
        assert_eq!(c.retention_secs, 3 * 86_400);
        assert_eq!(c.data_dir, PathBuf::from("/env"));

        flags.listen = Some("127.0.0.1:9002".into());
        flags.data_dir = Some("/flag".into());
        flags.log_json = true;
        let c = Config::load(&flags, &e).unwrap();
        assert_eq!(c.listen.port(), 9002);
        assert_eq!(c.data_dir, PathBuf::from("/flag"));
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let err = Config::load(&Flags::default(), env(&[("SOTTO_LISTEN", "localhost")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SOTTO_LISTEN") && err.contains("127.0.0.1:7480"),
            "{err}"
        );

        let err = Config::load(&Flags::default(), env(&[("SOTTO_RETENTION_DAYS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 to 3650"), "{err}");

        let err =
            Config::load(&Flags::default(), env(&[("SOTTO_RETENTION_DAYS", "ten")])).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                origin: Source::Env,
                ..
            }
        ));

        let flags = Flags {
            tls_cert: Some("cert.pem".into()),
            ..Flags::default()
        };
        assert!(matches!(
            Config::load(&flags, env(&[])),
            Err(ConfigError::Inconsistent(_))
        ));
    }

    #[test]
    fn postgres_and_nats_are_selected_and_checked() {
        let c = Config::load(&Flags::default(), env(&[])).unwrap();
        assert_eq!(
            (c.store, c.fanout),
            (StoreBackend::Sqlite, FanoutBackend::Local)
        );

        let e = env(&[
            ("SOTTO_STORE", "postgres"),
            (
                "SOTTO_DATABASE_URL",
                "postgres://sotto:secret@db:5432/sotto",
            ),
            ("SOTTO_DATABASE_POOL_SIZE", "32"),
            ("SOTTO_FANOUT", "nats"),
            ("SOTTO_NATS_URL", "nats://bus:4222"),
        ]);
        let c = Config::load(&Flags::default(), e).unwrap();
        assert_eq!(
            c.store,
            StoreBackend::Postgres {
                url: "postgres://sotto:secret@db:5432/sotto".into(),
                pool_size: 32,
                writers: 2
            }
        );
        assert_eq!(
            c.fanout,
            FanoutBackend::Nats {
                url: "nats://bus:4222".into(),
                prefix: "sotto".into()
            }
        );
        // The password never shows in debug output.
        assert!(!format!("{c:?}").contains("secret"));
        let e = env(&[
            ("SOTTO_FANOUT", "nats"),
            ("SOTTO_NATS_URL", "nats://bus:n4tspw@bus:4222"),
        ]);
        let c = Config::load(&Flags::default(), e).unwrap();
        assert!(!format!("{c:?}").contains("n4tspw"));
        let err = Config::load(
            &Flags::default(),
            env(&[
                ("SOTTO_FANOUT", "nats"),
                ("SOTTO_NATS_URL", "http://u:n4tspw@bus"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("nats://") && !err.contains("n4tspw"), "{err}");

        let err = Config::load(&Flags::default(), env(&[("SOTTO_STORE", "postgres")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("database_url"), "{err}");
        let err = Config::load(&Flags::default(), env(&[("SOTTO_STORE", "mysql")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("postgres") && err.contains("SOTTO_STORE"),
            "{err}"
        );
        let err = Config::load(
            &Flags::default(),
            env(&[
                ("SOTTO_STORE", "postgres"),
                ("SOTTO_DATABASE_URL", "mysql://x:pw@y/z"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("postgres://") && !err.contains("pw"), "{err}");
        let err = Config::load(&Flags::default(), env(&[("SOTTO_FANOUT", "redis")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nats"), "{err}");
    }

    #[test]
    fn unknown_or_mistyped_file_fields_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sotto.toml");
        std::fs::write(&path, "listne = \"127.0.0.1:1\"\n").unwrap();
        let flags = Flags {
            config: Some(path.clone()),
            ..Flags::default()
        };
        let err = Config::load(&flags, env(&[])).unwrap_err().to_string();
        assert!(err.contains("listne"), "{err}");
        std::fs::write(&path, "retention_days = \"long\"\n").unwrap();
        assert!(matches!(
            Config::load(&flags, env(&[])),
            Err(ConfigError::Parse { .. })
        ));
        let missing = Flags {
            config: Some(dir.path().join("nope.toml")),
            ..Flags::default()
        };
        assert!(matches!(
            Config::load(&missing, env(&[])),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn the_example_config_is_valid_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sotto-server.example.toml");
        let flags = Flags {
            config: Some(path),
            ..Flags::default()
        };
        let from_example = Config::load(&flags, env(&[])).unwrap();
        let defaults = Config::load(&Flags::default(), env(&[])).unwrap();
        assert_eq!(from_example, defaults);
    }
}
