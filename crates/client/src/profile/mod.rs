//! The local profile: one SQLite file holding this device's keys, its OpenMLS state,
//! the pinned identity keys of contacts, conversations and message history.
//!
//! Every operation that changes MLS state runs in one transaction ([`Profile::write`])
//! together with the history rows and the mailbox cursor it produces, so a crash leaves
//! the group state and the stored messages consistent: both advanced, or neither.
//! In-memory MLS objects never outlive a transaction; they are loaded from it.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use sotto_core::storage::{KvBackend, KvStorage, SottoProvider};
use sotto_core::{AccountKey, DeviceSigner, LocalDevice, TrustStore, TrustStoreError};
use sotto_proto::{
    AccountKeyCertificate, CertificateChain, ConversationId, DeviceId, DeviceList,
    IdentityPublicKey, MessageId, Username,
};

use crate::error::ClientError;

mod account;
mod conversations;
mod events;
mod kv;
mod messages;
mod trust;

pub use kv::SqlKv;
pub use trust::SqlTrust;

/// A `conversations` row as read: id, kind, name, peer, timer, active.
type ConversationRow = (
    Vec<u8>,
    String,
    Option<String>,
    Option<String>,
    Option<u32>,
    bool,
);

/// The OpenMLS provider over a profile transaction.
pub type Provider<'t> = SottoProvider<KvStorage<SqlKv<'t>>>;

const SCHEMA: &str = r"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS mls_kv (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS contacts (
    username TEXT PRIMARY KEY,
    identity_key BLOB NOT NULL,
    verified INTEGER NOT NULL DEFAULT 0,
    device_list BLOB,
    pinned_at INTEGER NOT NULL,
    changed_key BLOB,
    gone INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS conversations (
    id BLOB PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    name TEXT,
    peer TEXT,
    disappearing_secs INTEGER,
    active INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS conversations_peer ON conversations (peer)
    WHERE kind = 'direct' AND active = 1;
CREATE TABLE IF NOT EXISTS messages (
    conversation BLOB NOT NULL,
    id TEXT NOT NULL,
    sender TEXT NOT NULL,
    sender_device BLOB NOT NULL,
    outgoing INTEGER NOT NULL,
    kind TEXT NOT NULL,
    text TEXT,
    attachment TEXT,
    sent_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    edited_at INTEGER,
    deleted INTEGER NOT NULL DEFAULT 0,
    read INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER,
    UNIQUE (conversation, id)
);
CREATE TABLE IF NOT EXISTS reactions (
    conversation BLOB NOT NULL,
    target TEXT NOT NULL,
    sender TEXT NOT NULL,
    emoji TEXT NOT NULL,
    PRIMARY KEY (conversation, target, sender)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS failures (
    seq INTEGER NOT NULL,
    conversation BLOB,
    reason TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pending_proposals (conversation BLOB PRIMARY KEY);
CREATE TABLE IF NOT EXISTS rosters_to_check (conversation BLOB PRIMARY KEY);
CREATE TABLE IF NOT EXISTS self_updates (conversation BLOB PRIMARY KEY, at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS queued_events (id INTEGER PRIMARY KEY AUTOINCREMENT, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation BLOB,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    at INTEGER NOT NULL
);
";

/// The account and device this profile belongs to.
pub struct Account {
    /// The username.
    pub username: Username,
    /// The device, with its certificate chain and signing key.
    pub device: LocalDevice,
    /// The account key, which certifies devices and signs the device list: on the
    /// primary device only (decision 0011). The root (recovery) key is never stored.
    pub account_key: Option<AccountKey>,
    /// The bearer token for the server.
    pub token: String,
    /// The server URL the account lives on.
    pub server: String,
}

impl Account {
    /// The account's root (identity) key: what contacts pin.
    pub fn identity_key(&self) -> IdentityPublicKey {
        *self.device.chain().identity_key()
    }

    /// Whether this is the primary device (it holds the account key).
    pub fn is_primary(&self) -> bool {
        self.account_key.is_some()
    }
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("username", &self.username)
            .field("device", &self.device.device_id())
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// A profile database.
pub struct Profile {
    conn: Connection,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile").finish_non_exhaustive()
    }
}

impl Profile {
    /// Opens (creating if needed) the profile database in `home`.
    pub fn open(home: &Path) -> Result<Self, ClientError> {
        std::fs::create_dir_all(home)
            .map_err(|e| ClientError::file("create the profile directory", home, e))?;
        // The profile holds the account's private keys: only its owner may read it.
        restrict(home, 0o700)?;
        let path = home.join("profile.db");
        let conn = Connection::open(&path)?;
        restrict(&path, 0o600)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Deleted rows (expired disappearing messages) are overwritten, not left in
        // free pages.
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        Ok(Self { conn })
    }

    /// Runs `work` in one write transaction: everything it does commits together or
    /// not at all.
    pub fn write<T>(
        &mut self,
        work: impl FnOnce(&ProfileTx<'_>) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let value = {
            let view = ProfileTx { tx: &tx };
            work(&view)?
        };
        tx.commit()?;
        Ok(value)
    }

    /// Copies the WAL into the database and empties it, so that deleted rows leave
    /// no copy in the WAL file. Best effort: a reader holding a snapshot can keep the
    /// WAL from being emptied until the next call.
    pub fn checkpoint(&mut self) -> Result<(), ClientError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Runs `work` on a read snapshot.
    pub fn read<T>(
        &mut self,
        work: impl FnOnce(&ProfileTx<'_>) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let tx = self.conn.transaction()?;
        let value = work(&ProfileTx { tx: &tx })?;
        tx.commit()?;
        Ok(value)
    }
}

/// One profile transaction.
pub struct ProfileTx<'t> {
    tx: &'t Transaction<'t>,
}

/// A stored message row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredMessage {
    /// The conversation.
    pub conversation: ConversationId,
    /// The sender's message id.
    pub id: MessageId,
    /// The sender's username.
    pub sender: Username,
    /// The sending device.
    pub sender_device: DeviceId,
    /// Sent by this account (from this or another own device).
    pub outgoing: bool,
    /// `text`, `attachment`, or an unsupported kind's name.
    pub kind: String,
    /// The text (or caption), unless deleted.
    pub text: Option<String>,
    /// The attachment, as JSON (name, size, media type, path once downloaded).
    pub attachment: Option<String>,
    /// When the sender says it was sent (Unix seconds).
    pub sent_at: u64,
    /// When this device stored it.
    pub received_at: u64,
    /// When it was last edited.
    pub edited_at: Option<u64>,
    /// Deleted for everyone.
    pub deleted: bool,
    /// When it disappears, if a timer applies.
    pub expires_at: Option<u64>,
}

/// A stored conversation row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredConversation {
    /// The id.
    pub id: ConversationId,
    /// `direct` or `group`.
    pub kind: String,
    /// The group name (groups) or the peer's username (direct).
    pub name: Option<String>,
    /// The other user of a direct conversation.
    pub peer: Option<Username>,
    /// The disappearing-messages timer.
    pub disappearing_secs: Option<u32>,
    /// False once this device left or was removed.
    pub active: bool,
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn conv_id(bytes: &[u8]) -> Result<ConversationId, ClientError> {
    ConversationId::from_slice(bytes)
        .ok_or_else(|| ClientError::Corrupt("a stored conversation id".into()))
}

impl<'t> ProfileTx<'t> {
    /// The OpenMLS provider over this transaction.
    pub fn provider(&self) -> Provider<'t> {
        SottoProvider::new(KvStorage::new(SqlKv { conn: self.tx }))
    }

    /// The trust store over this transaction.
    pub fn trust(&self) -> SqlTrust<'t> {
        SqlTrust {
            conn: self.tx,
            now: now_ms() / 1000,
        }
    }
}

/// Brings a profile made by an earlier version up to date.
fn migrate(conn: &Connection) -> Result<(), ClientError> {
    // Contacts keep their whole newest device list (it decides which of their devices
    // may take part), not only its version and digest.
    let has_list: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('contacts') WHERE name = 'device_list'",
        [],
        |r| r.get(0),
    )?;
    if !has_list {
        conn.execute_batch("ALTER TABLE contacts ADD COLUMN device_list BLOB")?;
    }
    // A contact's new identity key not accepted yet, and an account the server no
    // longer has (decision 0011).
    let has_changed: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('contacts') WHERE name = 'changed_key'",
        [],
        |r| r.get(0),
    )?;
    if !has_changed {
        conn.execute_batch(
            "ALTER TABLE contacts ADD COLUMN changed_key BLOB;
             ALTER TABLE contacts ADD COLUMN gone INTEGER NOT NULL DEFAULT 0;",
        )?;
    }
    Ok(())
}

/// Sets Unix permission bits (no-op elsewhere).
pub(crate) fn restrict(path: &Path, mode: u32) -> Result<(), ClientError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| ClientError::file("restrict access to", path, e))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// Milliseconds since the Unix epoch by the system clock.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
