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
        })
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
