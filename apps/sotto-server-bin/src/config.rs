//! The server's typed configuration, layered with `figment`: built-in defaults, then a
//! TOML file (`--config`), then `SOTTO_`-prefixed environment variables, then
//! command-line flags. Validated once at start-up with messages that say which setting
//! is wrong, where it was set and how to fix it. `sotto-server.example.toml` at the
//! repository root documents every field.

use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use figment::error::{Actual, Kind};
use figment::providers::{Format as _, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};
use sotto_server::ServerConfig;
use sotto_server_fanout_nats::without_credentials;
use sotto_server_store_postgres::PostgresOptions;

/// Where a setting came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// The TOML file.
    File(PathBuf),
    /// An environment variable.
    Env,
    /// A command-line flag.
    Flag,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("built-in default"),
            Self::File(path) => write!(f, "config file {}", path.display()),
            Self::Env => f.write_str("environment"),
            Self::Flag => f.write_str("command line"),
        }
    }
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
        /// The explanation (line, setting).
        reason: String,
    },
    /// One setting has a bad value.
    #[error("{name} = {value:?} ({origin}) is invalid: {expected}")]
    Invalid {
        /// The setting as the operator wrote it (`listen`, `SOTTO_LISTEN`, `--listen`).
        name: String,
        /// Where it came from.
        origin: Source,
        /// The value given (secrets hidden).
        value: String,
        /// What would be valid.
        expected: &'static str,
    },
    /// Settings that must come together or not at all.
    #[error("{0}")]
    Inconsistent(&'static str),
    /// The layers could not be combined: a bug here rather than an operator's mistake.
    #[error("cannot combine the configuration layers: {0}")]
    Layers(String),
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    Human,
    /// One JSON object per line.
    Json,
}

/// The `store` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StoreKind {
    Sqlite,
    Postgres,
}

/// The `fanout` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FanoutKind {
    Local,
    Nats,
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
                .field("url", &without_credentials(url))
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

const SECS_PER_DAY: u64 = 86_400;

/// Every setting, as the file names them and figment merges them. No `Debug`: the
/// database URL may hold a password.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    listen: String,
    data_dir: PathBuf,
    retention_days: u64,
    max_request_bytes: u64,
    max_attachment_bytes: u64,
    link_slot_ttl_secs: u64,
    log_format: LogFormat,
    log_filter: String,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    store: StoreKind,
    database_url: Option<String>,
    database_pool_size: u64,
    database_writers: u64,
    fanout: FanoutKind,
    nats_url: String,
    nats_prefix: String,
}

/// The one place the defaults are written, serialized as figment's first layer. The
/// service tunables and the pool sizes are the libraries' own defaults;
/// `sotto-server.example.toml` repeats all of them for people, and a test keeps the two
/// equal.
impl Default for Settings {
    fn default() -> Self {
        let server = ServerConfig::default();
        let postgres = PostgresOptions::new(String::new());
        Self {
            listen: DEFAULT_LISTEN.to_owned(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            retention_days: server.retention_secs / SECS_PER_DAY,
            max_request_bytes: u64::try_from(server.max_body_bytes).unwrap_or(u64::MAX),
            max_attachment_bytes: server.max_attachment_bytes,
            link_slot_ttl_secs: server.link_slot_ttl_secs,
            log_format: LogFormat::Human,
            log_filter: "info".to_owned(),
            tls_cert: None,
            tls_key: None,
            store: StoreKind::Sqlite,
            database_url: None,
            database_pool_size: u64::from(postgres.pool_size),
            database_writers: u64::try_from(postgres.writers).unwrap_or(u64::MAX),
            fanout: FanoutKind::Local,
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            nats_prefix: "sotto".to_owned(),
        }
    }
}

/// One setting's name in each layer, and what a valid value looks like.
struct Setting {
    /// The key in the file (and in the merged figment).
    key: &'static str,
    /// The environment variable.
    env: &'static str,
    /// The command-line flag, for the few settings that have one.
    flag: Option<&'static str>,
    /// Whole numbers only: the valid range. The environment's text is read as a number.
    range: Option<RangeInclusive<u64>>,
    /// What would be valid, in words.
    expected: &'static str,
}

static LISTEN: Setting = Setting::text(
    "listen",
    "SOTTO_LISTEN",
    "an IP address and port, like 127.0.0.1:7480 or [::]:7480",
)
.with_flag("--listen");
static DATA_DIR: Setting =
    Setting::text("data_dir", "SOTTO_DATA_DIR", "a directory path (UTF-8)").with_flag("--data-dir");
static RETENTION_DAYS: Setting = Setting::number(
    "retention_days",
    "SOTTO_RETENTION_DAYS",
    1..=3650,
    "a whole number of days from 1 to 3650",
);
static MAX_REQUEST_BYTES: Setting = Setting::number(
    "max_request_bytes",
    "SOTTO_MAX_REQUEST_BYTES",
    1024..=(64 << 20),
    "a size in bytes from 1024 to 67108864 (64 MiB)",
);
static MAX_ATTACHMENT_BYTES: Setting = Setting::number(
    "max_attachment_bytes",
    "SOTTO_MAX_ATTACHMENT_BYTES",
    1..=(16 << 30),
    "a size in bytes from 1 to 17179869184 (16 GiB)",
);
static LINK_SLOT_TTL_SECS: Setting = Setting::number(
    "link_slot_ttl_secs",
    "SOTTO_LINK_SLOT_TTL_SECS",
    30..=3600,
    "a number of seconds from 30 to 3600",
);
static LOG_FORMAT: Setting =
    Setting::text("log_format", "SOTTO_LOG_FORMAT", "\"human\" or \"json\"")
        .with_flag("--log-json");
static LOG_FILTER: Setting = Setting::text(
    "log_filter",
    "SOTTO_LOG",
    "a tracing filter directive, like \"info\" or \"sotto_server=debug,info\"",
);
static TLS_CERT: Setting = Setting::text(
    "tls_cert",
    "SOTTO_TLS_CERT",
    "the path of a PEM certificate file (UTF-8)",
)
.with_flag("--tls-cert");
static TLS_KEY: Setting = Setting::text(
    "tls_key",
    "SOTTO_TLS_KEY",
    "the path of a PEM private key file (UTF-8)",
)
.with_flag("--tls-key");
static STORE: Setting = Setting::text(
    "store",
    "SOTTO_STORE",
    "\"sqlite\" (the embedded default) or \"postgres\"",
);
static DATABASE_URL: Setting = Setting::text(
    "database_url",
    "SOTTO_DATABASE_URL",
    "a URL starting with postgres:// or postgresql://",
);
static DATABASE_POOL_SIZE: Setting = Setting::number(
    "database_pool_size",
    "SOTTO_DATABASE_POOL_SIZE",
    2..=1000,
    "a number of connections from 2 to 1000",
);
static DATABASE_WRITERS: Setting = Setting::number(
    "database_writers",
    "SOTTO_DATABASE_WRITERS",
    1..=64,
    "a number of writer tasks from 1 to 64",
);
static FANOUT: Setting =
    Setting::text("fanout", "SOTTO_FANOUT", "\"local\" (one node) or \"nats\"");
static NATS_URL: Setting = Setting::text(
    "nats_url",
    "SOTTO_NATS_URL",
    "a URL like nats://127.0.0.1:4222",
);
static NATS_PREFIX: Setting = Setting::text(
    "nats_prefix",
    "SOTTO_NATS_PREFIX",
    "letters, digits, '_' or '-'",
);

/// Every setting, for the environment layer and for naming a key in figment's errors.
static SETTINGS: [&Setting; 17] = [
    &LISTEN,
    &DATA_DIR,
    &RETENTION_DAYS,
    &MAX_REQUEST_BYTES,
    &MAX_ATTACHMENT_BYTES,
    &LINK_SLOT_TTL_SECS,
    &LOG_FORMAT,
    &LOG_FILTER,
    &TLS_CERT,
    &TLS_KEY,
    &STORE,
    &DATABASE_URL,
    &DATABASE_POOL_SIZE,
    &DATABASE_WRITERS,
    &FANOUT,
    &NATS_URL,
    &NATS_PREFIX,
];

impl Setting {
    const fn text(key: &'static str, env: &'static str, expected: &'static str) -> Self {
        Self {
            key,
            env,
            flag: None,
            range: None,
            expected,
        }
    }

    const fn number(
        key: &'static str,
        env: &'static str,
        range: RangeInclusive<u64>,
        expected: &'static str,
    ) -> Self {
        Self {
            range: Some(range),
            ..Self::text(key, env, expected)
        }
    }

    const fn with_flag(self, flag: &'static str) -> Self {
        Self {
            flag: Some(flag),
            ..self
        }
    }

    /// The name the operator used, given where the value came from.
    fn name(&self, origin: &Source) -> &'static str {
        match origin {
            Source::Env => self.env,
            Source::Flag => self.flag.unwrap_or(self.key),
            Source::Default | Source::File(_) => self.key,
        }
    }

    /// `value` as an error message may show it: the database URL may hold a password and
    /// the NATS URL credentials.
    fn shown(&self, value: &str) -> String {
        if self.key == DATABASE_URL.key {
            "<hidden: it may hold a password>".to_owned()
        } else if self.key == NATS_URL.key {
            without_credentials(value)
        } else {
            value.to_owned()
        }
    }

    fn invalid(&self, origin: Source, value: &str) -> ConfigError {
        ConfigError::Invalid {
            name: self.name(&origin).to_owned(),
            value: self.shown(value),
            origin,
            expected: self.expected,
        }
    }

    /// What figment found instead of a valid value, for a message.
    fn found(&self, kind: &Kind) -> String {
        match kind {
            Kind::InvalidType(Actual::Str(text), _)
            | Kind::InvalidValue(Actual::Str(text), _)
            | Kind::UnknownVariant(text, _) => format!("string {:?}", self.shown(text)),
            Kind::InvalidType(actual, _) | Kind::InvalidValue(actual, _) => actual.to_string(),
            other => other.to_string(),
        }
    }
}

/// figment metadata names of the layers below, to tell where a value came from.
const ENVIRONMENT: &str = "environment";
const COMMAND_LINE: &str = "command line";
const TOML_FILE: &str = "TOML file";

/// The file layer: read here, so an unreadable file is its own error, and parsed by
/// figment, which keeps the path for messages.
struct FileLayer {
    path: PathBuf,
    text: String,
}

impl FileLayer {
    fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            path: path.to_owned(),
            text,
        })
    }
}

impl Provider for FileLayer {
    fn metadata(&self) -> Metadata {
        Metadata::from(TOML_FILE, self.path.as_path())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Toml::string(&self.text).data()
    }
}

/// Settings given outside the file, as one layer: the environment or the flags.
struct Layer {
    name: &'static str,
    values: Dict,
}

impl Layer {
    /// The `SOTTO_*` variables that name a setting, read through `env` (the process
    /// environment, or a map in tests). Other `SOTTO_*` variables (the CLI's, the
    /// tests') are not settings and are not looked at.
    fn environment(env: &impl Fn(&str) -> Option<String>) -> Self {
        let values = SETTINGS
            .iter()
            .filter_map(|setting| {
                let text = env(setting.env)?;
                // Text that does not parse as a number stays text, which figment then
                // reports as the wrong type for this variable.
                let value = match text.trim().parse::<u64>() {
                    Ok(number) if setting.range.is_some() => Value::from(number),
                    _ => Value::from(text),
                };
                Some((setting.key.to_owned(), value))
            })
            .collect();
        Self {
            name: ENVIRONMENT,
            values,
        }
    }

    fn flags(flags: &Flags) -> Result<Self, ConfigError> {
        let mut values = Dict::new();
        if let Some(listen) = &flags.listen {
            values.insert(LISTEN.key.to_owned(), Value::from(listen.as_str()));
        }
        for (setting, path) in [
            (&DATA_DIR, &flags.data_dir),
            (&TLS_CERT, &flags.tls_cert),
            (&TLS_KEY, &flags.tls_key),
        ] {
            if let Some(path) = path {
                let text = path
                    .to_str()
                    .ok_or_else(|| setting.invalid(Source::Flag, &path.to_string_lossy()))?;
                values.insert(setting.key.to_owned(), Value::from(text));
            }
        }
        if flags.log_json {
            values.insert(LOG_FORMAT.key.to_owned(), Value::from("json"));
        }
        Ok(Self {
            name: COMMAND_LINE,
            values,
        })
    }
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.values.clone()))
    }
}

/// The layer a figment value or error came from.
fn origin(metadata: Option<&Metadata>) -> Source {
    let Some(metadata) = metadata else {
        return Source::Default;
    };
    if let Some(path) = metadata
        .source
        .as_ref()
        .and_then(figment::Source::file_path)
    {
        return Source::File(path.to_owned());
    }
    match metadata.name.as_ref() {
        ENVIRONMENT => Source::Env,
        COMMAND_LINE => Source::Flag,
        _ => Source::Default,
    }
}

/// figment's error, which knows the layer and the key, in the operator's terms.
fn explain(error: &figment::Error, env: &impl Fn(&str) -> Option<String>) -> ConfigError {
    let setting = error
        .path
        .first()
        .and_then(|key| SETTINGS.iter().find(|s| s.key == key));
    match (origin(error.metadata.as_ref()), setting) {
        (Source::File(path), setting) => {
            let reason = match (&error.kind, setting) {
                (Kind::UnknownField(key, _), _) => format!(
                    "unknown setting `{key}` (sotto-server.example.toml lists every setting)"
                ),
                (kind, Some(s)) => {
                    format!(
                        "{}: found {}, expected {}",
                        s.key,
                        s.found(kind),
                        s.expected
                    )
                }
                // TOML syntax: the parser's message says the line and column.
                (kind, None) => kind.to_string(),
            };
            ConfigError::Parse { path, reason }
        }
        (Source::Env, Some(s)) => s.invalid(Source::Env, &env(s.env).unwrap_or_default()),
        (origin, Some(s)) => s.invalid(origin, &s.found(&error.kind)),
        (_, None) => ConfigError::Layers(error.to_string()),
    }
}

impl Config {
    /// Builds the configuration from the defaults, the file named in `flags` (if any),
    /// the given environment (`SOTTO_*` variables) and the flags, later layers winning.
    pub fn load(flags: &Flags, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = &flags.config {
            figment = figment.merge(FileLayer::read(path)?);
        }
        let figment = figment
            .merge(Layer::environment(&env))
            .merge(Layer::flags(flags)?);
        let settings: Settings = figment.extract().map_err(|e| explain(&e, &env))?;
        settings.validate(&figment)
    }
}

impl Settings {
    /// Checks ranges and combinations, naming the layer each bad value came from.
    fn validate(self, figment: &Figment) -> Result<Config, ConfigError> {
        let invalid = |setting: &Setting, value: &str| {
            setting.invalid(origin(figment.find_metadata(setting.key)), value)
        };
        let within = |setting: &Setting, value: u64| {
            if setting.range.as_ref().is_some_and(|r| r.contains(&value)) {
                Ok(value)
            } else {
                Err(invalid(setting, &value.to_string()))
            }
        };

        let listen = self
            .listen
            .parse::<SocketAddr>()
            .map_err(|_| invalid(&LISTEN, &self.listen))?;
        let retention_days = within(&RETENTION_DAYS, self.retention_days)?;
        let max_request_bytes = within(&MAX_REQUEST_BYTES, self.max_request_bytes)?;
        let max_attachment_bytes = within(&MAX_ATTACHMENT_BYTES, self.max_attachment_bytes)?;
        let link_slot_ttl_secs = within(&LINK_SLOT_TTL_SECS, self.link_slot_ttl_secs)?;

        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Inconsistent(
                    "TLS needs both a certificate and a key: set tls_cert and tls_key (or --tls-cert and --tls-key) together",
                ));
            }
        };

        let store = match self.store {
            StoreKind::Sqlite => StoreBackend::Sqlite,
            StoreKind::Postgres => {
                let Some(url) = self.database_url else {
                    return Err(ConfigError::Inconsistent(
                        "store = \"postgres\" needs database_url (or SOTTO_DATABASE_URL), like postgres://sotto@db.example:5432/sotto",
                    ));
                };
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(invalid(&DATABASE_URL, &url));
                }
                let pool_size = within(&DATABASE_POOL_SIZE, self.database_pool_size)?;
                let writers = within(&DATABASE_WRITERS, self.database_writers)?;
                if writers >= pool_size {
                    return Err(ConfigError::Inconsistent(
                        "database_writers must be smaller than database_pool_size, so reads still get connections",
                    ));
                }
                StoreBackend::Postgres {
                    url,
                    pool_size: u32::try_from(pool_size).unwrap_or(u32::MAX),
                    writers: usize::try_from(writers).unwrap_or(1),
                }
            }
        };

        let fanout = match self.fanout {
            FanoutKind::Local => FanoutBackend::Local,
            FanoutKind::Nats => {
                let url = self.nats_url;
                if !url.starts_with("nats://") && !url.starts_with("tls://") {
                    return Err(invalid(&NATS_URL, &url));
                }
                let prefix = self.nats_prefix;
                if prefix.is_empty()
                    || !prefix
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(invalid(&NATS_PREFIX, &prefix));
                }
                FanoutBackend::Nats { url, prefix }
            }
        };

        Ok(Config {
            listen,
            data_dir: self.data_dir,
            retention_secs: retention_days * SECS_PER_DAY,
            max_request_bytes: usize::try_from(max_request_bytes).unwrap_or(usize::MAX),
            max_attachment_bytes,
            link_slot_ttl_secs,
            log_format: self.log_format,
            log_filter: self.log_filter,
            tls,
            store,
            fanout,
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
    fn errors_name_the_layer_the_bad_value_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sotto.toml");
        let flags = Flags {
            config: Some(path.clone()),
            ..Flags::default()
        };
        let file = path.display().to_string();

        std::fs::write(&path, "retention_days = 0\n").unwrap();
        let err = Config::load(&flags, env(&[])).unwrap_err();
        assert_eq!(
            err,
            ConfigError::Invalid {
                name: "retention_days".into(),
                origin: Source::File(path.clone()),
                value: "0".into(),
                expected: "a whole number of days from 1 to 3650",
            }
        );
        assert!(err.to_string().contains(&file), "{err}");

        std::fs::write(&path, "listne = \"127.0.0.1:1\"\n").unwrap();
        let err = Config::load(&flags, env(&[])).unwrap_err().to_string();
        assert!(err.contains("listne") && err.contains(&file), "{err}");

        std::fs::write(&path, "retention_days = \"long\"\n").unwrap();
        let err = Config::load(&flags, env(&[])).unwrap_err().to_string();
        assert!(
            err.contains("retention_days") && err.contains(&file) && err.contains("1 to 3650"),
            "{err}"
        );

        std::fs::write(&path, "listen = \n").unwrap();
        assert!(matches!(
            Config::load(&flags, env(&[])),
            Err(ConfigError::Parse { .. })
        ));

        // The same setting from the environment wins over the file, and is named so.
        std::fs::write(&path, "retention_days = 0\n").unwrap();
        let err = Config::load(&flags, env(&[("SOTTO_RETENTION_DAYS", " 4000 ")])).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { name, origin: Source::Env, .. } if name == "SOTTO_RETENTION_DAYS"),
            "{err}"
        );
        let err = Config::load(&flags, env(&[("SOTTO_LOG_FORMAT", "xml")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SOTTO_LOG_FORMAT") && err.contains("\"json\""),
            "{err}"
        );

        let flags = Flags {
            listen: Some("localhost".into()),
            ..Flags::default()
        };
        let err = Config::load(&flags, env(&[("SOTTO_LISTEN", "127.0.0.1:1")])).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { name, origin: Source::Flag, .. } if name == "--listen"),
            "{err}"
        );
    }

    #[test]
    fn other_sotto_variables_and_bare_numbers_are_fine() {
        // The CLI's and the tests' variables share the prefix but are not settings.
        let e = env(&[
            ("SOTTO_HOME", "/home/x"),
            ("SOTTO_REQUIRE_SERVICES", "1"),
            ("SOTTO_NATS_PREFIX", "42"),
            ("SOTTO_FANOUT", "nats"),
            ("SOTTO_LOG", "sotto_server=debug,info"),
        ]);
        let c = Config::load(&Flags::default(), e).unwrap();
        assert_eq!(
            c.fanout,
            FanoutBackend::Nats {
                url: "nats://127.0.0.1:4222".into(),
                prefix: "42".into()
            }
        );
        assert_eq!(c.log_filter, "sotto_server=debug,info");
    }

    #[test]
    fn every_setting_has_an_environment_variable() {
        let defaults = Value::serialize(Settings::default()).unwrap();
        let keys: Vec<&str> = defaults
            .as_dict()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut named: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
        named.sort_unstable();
        assert_eq!(keys, named);
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
