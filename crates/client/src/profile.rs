//! The local profile: one SQLite file holding this device's keys, its OpenMLS state,
//! the pinned identity keys of contacts, conversations and message history.
//!
//! Every operation that changes MLS state runs in one transaction ([`Profile::write`])
//! together with the history rows and the mailbox cursor it produces, so a crash leaves
//! the group state and the stored messages consistent: both advanced, or neither.
//! In-memory MLS objects never outlive a transaction; they are loaded from it.

use std::cell::RefCell;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use sotto_core::storage::{KvBackend, KvStorage, SottoProvider};
use sotto_core::{DeviceSigner, IdentityKeyPair, LocalDevice, TrustStore};
use sotto_proto::{ConversationId, DeviceCertificate, DeviceId, IdentityPublicKey, Username};

use crate::error::ClientError;

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
    list_version INTEGER,
    list_digest BLOB,
    pinned_at INTEGER NOT NULL
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
    /// The device, with its certificate and signing key.
    pub device: LocalDevice,
    /// The account identity key (present on every device of the account).
    pub identity: IdentityKeyPair,
    /// The bearer token for the server.
    pub token: String,
    /// The server URL the account lives on.
    pub server: String,
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
        std::fs::create_dir_all(home).map_err(|e| {
            ClientError::Local(format!(
                "cannot create the profile directory {}: {e}",
                home.display()
            ))
        })?;
        // The profile holds the account's private keys: only its owner may read it.
        restrict(home, 0o700)?;
        let path = home.join("profile.db");
        let conn = Connection::open(&path)?;
        restrict(&path, 0o600)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn })
    }

    /// Runs `work` in one write transaction: everything it does commits together or
    /// not at all.
    pub fn write<T>(
        &mut self,
        work: impl FnOnce(&Tx<'_>) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let value = {
            let view = Tx { tx: &tx };
            work(&view)?
        };
        tx.commit()?;
        Ok(value)
    }

    /// Runs `work` on a read snapshot.
    pub fn read<T>(
        &mut self,
        work: impl FnOnce(&Tx<'_>) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let tx = self.conn.transaction()?;
        let value = work(&Tx { tx: &tx })?;
        tx.commit()?;
        Ok(value)
    }
}

/// One profile transaction.
pub struct Tx<'t> {
    tx: &'t Transaction<'t>,
}

/// A stored message row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredMessage {
    /// The conversation.
    pub conversation: ConversationId,
    /// The sender's message id.
    pub id: String,
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
        .ok_or_else(|| ClientError::Local("a stored conversation id is corrupt".into()))
}

impl<'t> Tx<'t> {
    /// The OpenMLS provider over this transaction.
    pub fn provider(&self) -> Provider<'t> {
        SottoProvider::new(KvStorage::new(SqlKv { conn: self.tx }))
    }

    /// The trust store over this transaction. Call [`SqlTrust::finish`] after use.
    pub fn trust(&self) -> SqlTrust<'t> {
        SqlTrust {
            conn: self.tx,
            failure: RefCell::new(None),
            now: now_ms() / 1000,
        }
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, ClientError> {
        Ok(self
            .tx
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), ClientError> {
        self.tx.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    fn meta_text(&self, key: &str) -> Result<Option<String>, ClientError> {
        self.meta(key)?
            .map(|v| {
                String::from_utf8(v)
                    .map_err(|_| ClientError::Local(format!("profile setting {key} is corrupt")))
            })
            .transpose()
    }

    /// Stores the account (registration or linking).
    pub fn save_account(&self, account: &Account) -> Result<(), ClientError> {
        self.set_meta("username", account.username.as_str().as_bytes())?;
        self.set_meta("certificate", &account.device.certificate().to_bytes())?;
        self.set_meta(
            "device_secret",
            account.device.signer().to_secret_bytes().as_slice(),
        )?;
        self.set_meta(
            "identity_secret",
            account.identity.to_secret_bytes().as_slice(),
        )?;
        self.set_meta("token", account.token.as_bytes())?;
        self.set_meta("server", account.server.as_bytes())?;
        Ok(())
    }

    /// The account, if this profile has one.
    pub fn account(&self) -> Result<Option<Account>, ClientError> {
        let Some(username) = self.meta_text("username")? else {
            return Ok(None);
        };
        let corrupt = |what: &str| ClientError::Local(format!("the profile's {what} is corrupt"));
        let username = Username::parse(&username).map_err(|_| corrupt("username"))?;
        let cert = self
            .meta("certificate")?
            .ok_or_else(|| corrupt("certificate"))?;
        let cert = DeviceCertificate::from_bytes(&cert).map_err(|_| corrupt("certificate"))?;
        let secret = |key: &str| -> Result<zeroize::Zeroizing<[u8; 32]>, ClientError> {
            let bytes = zeroize::Zeroizing::new(self.meta(key)?.ok_or_else(|| corrupt(key))?);
            let array: [u8; 32] = bytes.as_slice().try_into().map_err(|_| corrupt(key))?;
            Ok(zeroize::Zeroizing::new(array))
        };
        let signer = DeviceSigner::from_secret_bytes(&*secret("device_secret")?);
        let identity = IdentityKeyPair::from_secret_bytes(&*secret("identity_secret")?);
        let device = LocalDevice::new(cert, signer).map_err(|_| corrupt("device key"))?;
        Ok(Some(Account {
            username,
            device,
            identity,
            token: self.meta_text("token")?.ok_or_else(|| corrupt("token"))?,
            server: self.meta_text("server")?.ok_or_else(|| corrupt("server"))?,
        }))
    }

    /// Replaces the device token.
    pub fn set_token(&self, token: &str) -> Result<(), ClientError> {
        self.set_meta("token", token.as_bytes())
    }

    /// A small integer setting.
    pub fn counter(&self, key: &str) -> Result<u64, ClientError> {
        Ok(self
            .meta(key)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Sets a small integer setting.
    pub fn set_counter(&self, key: &str, value: u64) -> Result<(), ClientError> {
        self.set_meta(key, &value.to_be_bytes())
    }

    /// Adds a conversation row (or re-activates it after a re-join).
    pub fn put_conversation(&self, c: &StoredConversation, now: u64) -> Result<(), ClientError> {
        self.tx.execute(
            "INSERT INTO conversations (id, kind, name, peer, disappearing_secs, active, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (id) DO UPDATE SET active = excluded.active,
                 kind = excluded.kind, name = coalesce(excluded.name, name),
                 peer = coalesce(excluded.peer, peer)",
            params![
                &c.id.as_bytes()[..],
                c.kind,
                c.name,
                c.peer.as_ref().map(Username::as_str),
                c.disappearing_secs,
                c.active,
                i(now)
            ],
        )?;
        Ok(())
    }

    /// Forgets a conversation and its messages.
    pub fn delete_conversation(&self, id: ConversationId) -> Result<(), ClientError> {
        let key = &id.as_bytes()[..];
        self.tx
            .execute("DELETE FROM messages WHERE conversation = ?1", [key])?;
        self.tx
            .execute("DELETE FROM reactions WHERE conversation = ?1", [key])?;
        self.tx
            .execute("DELETE FROM conversations WHERE id = ?1", [key])?;
        Ok(())
    }

    /// Marks a conversation inactive (left or removed).
    pub fn deactivate(&self, id: ConversationId) -> Result<(), ClientError> {
        self.tx.execute(
            "UPDATE conversations SET active = 0 WHERE id = ?1",
            [&id.as_bytes()[..]],
        )?;
        Ok(())
    }

    /// Sets a group's name.
    pub fn set_name(&self, id: ConversationId, name: &str) -> Result<(), ClientError> {
        self.tx.execute(
            "UPDATE conversations SET name = ?2 WHERE id = ?1 AND kind = 'group'",
            params![&id.as_bytes()[..], name],
        )?;
        Ok(())
    }

    /// Sets a conversation's disappearing timer.
    pub fn set_disappearing(
        &self,
        id: ConversationId,
        secs: Option<u32>,
    ) -> Result<(), ClientError> {
        self.tx.execute(
            "UPDATE conversations SET disappearing_secs = ?2 WHERE id = ?1",
            params![&id.as_bytes()[..], secs],
        )?;
        Ok(())
    }

    fn conversation_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ConversationRow> {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ))
    }

    fn to_conversation(row: ConversationRow) -> Result<StoredConversation, ClientError> {
        let (id, kind, name, peer, disappearing_secs, active) = row;
        Ok(StoredConversation {
            id: conv_id(&id)?,
            kind,
            name,
            peer: peer.and_then(|p| Username::parse(&p).ok()),
            disappearing_secs,
            active,
        })
    }

    /// One conversation.
    pub fn conversation(
        &self,
        id: ConversationId,
    ) -> Result<Option<StoredConversation>, ClientError> {
        self.tx
            .query_row(
                "SELECT id, kind, name, peer, disappearing_secs, active FROM conversations WHERE id = ?1",
                [&id.as_bytes()[..]],
                Self::conversation_row,
            )
            .optional()?
            .map(Self::to_conversation)
            .transpose()
    }

    /// The active direct conversation with `peer`, if any.
    pub fn direct_with(&self, peer: &Username) -> Result<Option<StoredConversation>, ClientError> {
        self.tx
            .query_row(
                "SELECT id, kind, name, peer, disappearing_secs, active FROM conversations
                 WHERE kind = 'direct' AND active = 1 AND peer = ?1",
                [peer.as_str()],
                Self::conversation_row,
            )
            .optional()?
            .map(Self::to_conversation)
            .transpose()
    }

    /// Every conversation, newest first.
    pub fn conversations(&self) -> Result<Vec<StoredConversation>, ClientError> {
        let mut stmt = self.tx.prepare(
            "SELECT id, kind, name, peer, disappearing_secs, active FROM conversations
             ORDER BY created_at DESC, id",
        )?;
        let rows = stmt.query_map([], Self::conversation_row)?;
        rows.map(|r| Self::to_conversation(r?)).collect()
    }

    /// Unread incoming messages of a conversation.
    pub fn unread(&self, id: ConversationId) -> Result<u64, ClientError> {
        let n: i64 = self.tx.query_row(
            "SELECT count(*) FROM messages WHERE conversation = ?1 AND outgoing = 0
             AND read = 0 AND deleted = 0",
            [&id.as_bytes()[..]],
            |r| r.get(0),
        )?;
        Ok(u(n))
    }

    /// Marks every message of a conversation read.
    pub fn mark_read(&self, id: ConversationId) -> Result<(), ClientError> {
        self.tx.execute(
            "UPDATE messages SET read = 1 WHERE conversation = ?1",
            [&id.as_bytes()[..]],
        )?;
        Ok(())
    }

    /// Stores a message; `false` if one with this id is already stored (a duplicate).
    pub fn insert_message(&self, m: &StoredMessage) -> Result<bool, ClientError> {
        let n = self.tx.execute(
            "INSERT OR IGNORE INTO messages (conversation, id, sender, sender_device, outgoing,
                 kind, text, attachment, sent_at, received_at, read, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                &m.conversation.as_bytes()[..],
                m.id,
                m.sender.as_str(),
                &m.sender_device.as_bytes()[..],
                m.outgoing,
                m.kind,
                m.text,
                m.attachment,
                i(m.sent_at),
                i(m.received_at),
                m.outgoing,
                m.expires_at.map(i),
            ],
        )?;
        Ok(n == 1)
    }

    /// The message `id` of `conversation`.
    pub fn message(
        &self,
        conversation: ConversationId,
        id: &str,
    ) -> Result<Option<StoredMessage>, ClientError> {
        let mut list = self.messages_where(
            "conversation = ?1 AND id = ?2",
            params![&conversation.as_bytes()[..], id],
        )?;
        Ok(list.pop())
    }

    /// A conversation's messages in the order this device stored them.
    pub fn history(&self, conversation: ConversationId) -> Result<Vec<StoredMessage>, ClientError> {
        self.messages_where("conversation = ?1", params![&conversation.as_bytes()[..]])
    }

    fn messages_where(
        &self,
        filter: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<StoredMessage>, ClientError> {
        let sql = format!(
            "SELECT conversation, id, sender, sender_device, outgoing, kind, text, attachment,
                    sent_at, received_at, edited_at, deleted, expires_at
             FROM messages WHERE {filter} ORDER BY rowid"
        );
        let mut stmt = self.tx.prepare(&sql)?;
        let rows = stmt.query_map(args, |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, bool>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, i64>(8)?,
                r.get::<_, i64>(9)?,
                r.get::<_, Option<i64>>(10)?,
                r.get::<_, bool>(11)?,
                r.get::<_, Option<i64>>(12)?,
            ))
        })?;
        let corrupt = || ClientError::Local("a stored message is corrupt".into());
        rows.map(|row| {
            let (
                c,
                id,
                sender,
                dev,
                outgoing,
                kind,
                text,
                attachment,
                sent,
                recv,
                edited,
                deleted,
                expires,
            ) = row?;
            Ok(StoredMessage {
                conversation: conv_id(&c)?,
                id,
                sender: Username::parse(&sender).map_err(|_| corrupt())?,
                sender_device: DeviceId::from_slice(&dev).ok_or_else(corrupt)?,
                outgoing,
                kind,
                text,
                attachment,
                sent_at: u(sent),
                received_at: u(recv),
                edited_at: edited.map(u),
                deleted,
                expires_at: expires.map(u),
            })
        })
        .collect()
    }

    /// Replaces a message's attachment JSON (e.g. to record where it was saved).
    pub fn set_attachment(
        &self,
        conversation: ConversationId,
        id: &str,
        json: &str,
    ) -> Result<(), ClientError> {
        self.tx.execute(
            "UPDATE messages SET attachment = ?3 WHERE conversation = ?1 AND id = ?2",
            params![&conversation.as_bytes()[..], id, json],
        )?;
        Ok(())
    }

    /// Replaces a message's text if `sender` sent it; `false` otherwise.
    pub fn edit_message(
        &self,
        conversation: ConversationId,
        id: &str,
        sender: &Username,
        text: &str,
        at: u64,
    ) -> Result<bool, ClientError> {
        let n = self.tx.execute(
            "UPDATE messages SET text = ?4, edited_at = ?5
             WHERE conversation = ?1 AND id = ?2 AND sender = ?3 AND deleted = 0",
            params![
                &conversation.as_bytes()[..],
                id,
                sender.as_str(),
                text,
                i(at)
            ],
        )?;
        Ok(n == 1)
    }

    /// Deletes a message's content for everyone if `sender` sent it; `false` otherwise.
    pub fn delete_message(
        &self,
        conversation: ConversationId,
        id: &str,
        sender: &Username,
    ) -> Result<bool, ClientError> {
        let n = self.tx.execute(
            "UPDATE messages SET text = NULL, attachment = NULL, deleted = 1
             WHERE conversation = ?1 AND id = ?2 AND sender = ?3",
            params![&conversation.as_bytes()[..], id, sender.as_str()],
        )?;
        self.tx.execute(
            "DELETE FROM reactions WHERE conversation = ?1 AND target = ?2",
            params![&conversation.as_bytes()[..], id],
        )?;
        Ok(n == 1)
    }

    /// Sets (or with `None` removes) `sender`'s reaction to a message.
    pub fn set_reaction(
        &self,
        conversation: ConversationId,
        target: &str,
        sender: &Username,
        emoji: Option<&str>,
    ) -> Result<(), ClientError> {
        match emoji {
            Some(e) => self.tx.execute(
                "INSERT INTO reactions (conversation, target, sender, emoji) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO UPDATE SET emoji = excluded.emoji",
                params![&conversation.as_bytes()[..], target, sender.as_str(), e],
            )?,
            None => self.tx.execute(
                "DELETE FROM reactions WHERE conversation = ?1 AND target = ?2 AND sender = ?3",
                params![&conversation.as_bytes()[..], target, sender.as_str()],
            )?,
        };
        Ok(())
    }

    /// The reactions to a message: (sender, emoji).
    pub fn reactions(
        &self,
        conversation: ConversationId,
        target: &str,
    ) -> Result<Vec<(String, String)>, ClientError> {
        let mut stmt = self.tx.prepare(
            "SELECT sender, emoji FROM reactions WHERE conversation = ?1 AND target = ?2 ORDER BY sender",
        )?;
        let rows = stmt.query_map(params![&conversation.as_bytes()[..], target], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes messages whose disappearing time has passed; returns how many.
    pub fn delete_expired(&self, now: u64) -> Result<u64, ClientError> {
        let n = self.tx.execute(
            "DELETE FROM messages WHERE expires_at IS NOT NULL AND expires_at <= ?1",
            [i(now)],
        )?;
        Ok(n as u64)
    }

    /// Notes that a conversation has proposals waiting for a commit.
    pub fn mark_pending_proposals(&self, id: ConversationId) -> Result<(), ClientError> {
        self.tx.execute(
            "INSERT OR IGNORE INTO pending_proposals (conversation) VALUES (?1)",
            [&id.as_bytes()[..]],
        )?;
        Ok(())
    }

    /// Forgets that marker.
    pub fn clear_pending_proposals(&self, id: ConversationId) -> Result<(), ClientError> {
        self.tx.execute(
            "DELETE FROM pending_proposals WHERE conversation = ?1",
            [&id.as_bytes()[..]],
        )?;
        Ok(())
    }

    /// Conversations with proposals waiting for a commit.
    pub fn pending_proposals(&self) -> Result<Vec<ConversationId>, ClientError> {
        let mut stmt = self
            .tx
            .prepare("SELECT conversation FROM pending_proposals")?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|r| conv_id(&r?)).collect()
    }

    /// Queues an event (JSON) for the next report to the user.
    pub fn queue_event(&self, json: &str) -> Result<(), ClientError> {
        self.tx
            .prepare_cached("INSERT INTO queued_events (json) VALUES (?1)")?
            .execute([json])?;
        Ok(())
    }

    /// Takes every queued event, oldest first.
    pub fn take_queued_events(&self) -> Result<Vec<String>, ClientError> {
        let mut stmt = self
            .tx
            .prepare("SELECT json FROM queued_events ORDER BY id")?;
        let events = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        self.tx.execute("DELETE FROM queued_events", [])?;
        Ok(events)
    }

    /// Records a mailbox entry that could not be processed.
    pub fn record_failure(
        &self,
        seq: u64,
        conversation: Option<ConversationId>,
        reason: &str,
        at: u64,
    ) -> Result<(), ClientError> {
        self.tx.execute(
            "INSERT INTO failures (seq, conversation, reason, at) VALUES (?1, ?2, ?3, ?4)",
            params![
                i(seq),
                conversation.map(|c| c.as_bytes().to_vec()),
                reason,
                i(at)
            ],
        )?;
        Ok(())
    }

    /// Recorded processing failures: (seq, reason).
    pub fn failures(&self) -> Result<Vec<(u64, String)>, ClientError> {
        let mut stmt = self
            .tx
            .prepare("SELECT seq, reason FROM failures ORDER BY rowid")?;
        let rows = stmt.query_map([], |r| Ok((u(r.get(0)?), r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records a security or membership event for the user to see.
    pub fn record_event(
        &self,
        conversation: Option<ConversationId>,
        kind: &str,
        detail: &str,
        at: u64,
    ) -> Result<(), ClientError> {
        self.tx.execute(
            "INSERT INTO events (conversation, kind, detail, at) VALUES (?1, ?2, ?3, ?4)",
            params![
                conversation.map(|c| c.as_bytes().to_vec()),
                kind,
                detail,
                i(at)
            ],
        )?;
        Ok(())
    }

    /// Recorded events of one kind: (conversation, detail).
    pub fn events(&self, kind: &str) -> Result<Vec<(Option<ConversationId>, String)>, ClientError> {
        let mut stmt = self
            .tx
            .prepare("SELECT conversation, detail FROM events WHERE kind = ?1 ORDER BY id")?;
        let rows = stmt.query_map([kind], |r| {
            Ok((r.get::<_, Option<Vec<u8>>>(0)?, r.get::<_, String>(1)?))
        })?;
        rows.map(|r| {
            let (c, d) = r?;
            Ok((c.as_deref().map(conv_id).transpose()?, d))
        })
        .collect()
    }

    /// The pinned identity key of a contact and whether it was verified.
    pub fn contact(
        &self,
        username: &Username,
    ) -> Result<Option<(IdentityPublicKey, bool)>, ClientError> {
        let row: Option<(Vec<u8>, bool)> = self
            .tx
            .query_row(
                "SELECT identity_key, verified FROM contacts WHERE username = ?1",
                [username.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(k, v)| {
            let key: [u8; 32] = k
                .as_slice()
                .try_into()
                .map_err(|_| ClientError::Local("a pinned identity key is corrupt".into()))?;
            Ok((IdentityPublicKey::from_bytes(key), v))
        })
        .transpose()
    }

    /// Marks a contact verified.
    pub fn set_verified(&self, username: &Username) -> Result<(), ClientError> {
        self.tx.execute(
            "UPDATE contacts SET verified = 1 WHERE username = ?1",
            [username.as_str()],
        )?;
        Ok(())
    }
}

/// Sets Unix permission bits (no-op elsewhere).
fn restrict(path: &Path, mode: u32) -> Result<(), ClientError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
            ClientError::Local(format!("cannot restrict access to {}: {e}", path.display()))
        })?;
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

/// OpenMLS key-value storage in the profile's `mls_kv` table, inside the current
/// transaction.
pub struct SqlKv<'t> {
    conn: &'t Connection,
}

impl KvBackend for SqlKv<'_> {
    type Error = rusqlite::Error;

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Self::Error> {
        self.conn
            .prepare_cached("SELECT value FROM mls_kv WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), Self::Error> {
        self.conn
            .prepare_cached(
                "INSERT INTO mls_kv (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![key, value])
            .map(drop)
    }

    fn delete(&self, key: &[u8]) -> Result<(), Self::Error> {
        self.conn
            .prepare_cached("DELETE FROM mls_kv WHERE key = ?1")?
            .execute([key])
            .map(drop)
    }
}

/// The trust store (pinned identity keys, newest device lists) in the profile's
/// `contacts` table, inside the current transaction.
///
/// `TrustStore`'s methods cannot fail, so a database error is remembered and returned
/// by [`SqlTrust::finish`]; the caller then rolls the whole transaction back, so a
/// failed read can never leave a wrong pin behind.
pub struct SqlTrust<'t> {
    conn: &'t Connection,
    failure: RefCell<Option<rusqlite::Error>>,
    now: u64,
}

impl SqlTrust<'_> {
    fn note<T: Default>(&self, r: rusqlite::Result<T>) -> T {
        r.unwrap_or_else(|e| {
            self.failure.borrow_mut().get_or_insert(e);
            T::default()
        })
    }

    /// Any database error met while the trust store was in use.
    pub fn finish(self) -> Result<(), ClientError> {
        match self.failure.into_inner() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

impl TrustStore for SqlTrust<'_> {
    fn pinned_identity(&self, username: &Username) -> Option<IdentityPublicKey> {
        let key: Option<Vec<u8>> = self.note(
            self.conn
                .query_row(
                    "SELECT identity_key FROM contacts WHERE username = ?1",
                    [username.as_str()],
                    |r| r.get(0),
                )
                .optional(),
        );
        key.and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok())
            .map(IdentityPublicKey::from_bytes)
    }

    fn pin_identity(&mut self, username: &Username, key: IdentityPublicKey) {
        // A new pin (or an accepted change) is unverified until the user verifies it.
        let r = self.conn.execute(
            "INSERT INTO contacts (username, identity_key, verified, pinned_at) VALUES (?1, ?2, 0, ?3)
             ON CONFLICT (username) DO UPDATE SET identity_key = excluded.identity_key,
                 verified = CASE WHEN identity_key = excluded.identity_key THEN verified ELSE 0 END,
                 list_version = CASE WHEN identity_key = excluded.identity_key THEN list_version ELSE NULL END,
                 list_digest = CASE WHEN identity_key = excluded.identity_key THEN list_digest ELSE NULL END",
            params![username.as_str(), &key.as_bytes()[..], i(self.now)],
        );
        self.note(r.map(drop));
    }

    fn seen_device_list(&self, username: &Username) -> Option<(u64, [u8; 32])> {
        let row: Option<(Option<i64>, Option<Vec<u8>>)> = self.note(
            self.conn
                .query_row(
                    "SELECT list_version, list_digest FROM contacts WHERE username = ?1",
                    [username.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional(),
        );
        let (Some(version), Some(digest)) = row? else {
            return None;
        };
        Some((u(version), <[u8; 32]>::try_from(digest.as_slice()).ok()?))
    }

    fn record_device_list(&mut self, username: &Username, version: u64, digest: [u8; 32]) {
        let r = self.conn.execute(
            "UPDATE contacts SET list_version = ?2, list_digest = ?3 WHERE username = ?1",
            params![username.as_str(), i(version), &digest[..]],
        );
        self.note(r.map(drop));
    }
}
