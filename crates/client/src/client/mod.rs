//! The SDK's entry point: [`Client`], one profile talking to one server.
//!
//! The client is split by the direction of its calls, with no cycle:
//!
//! ```text
//! messaging (texts, files, reactions, edits)  ->  conversations (resolve, create,
//!     membership)  ->  outbox (send an envelope, submit a commit)  ->  inbox (catch up:
//!     fetch, process, ack)  ->  apply (an entry's effects on the profile), account
//!     (KeyPackage top-up after a join)
//! ```
//!
//! `sync` (here) composes inbox and outbox; `listen` drives inbox and outbox from the
//! WebSocket.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use sotto_core::content::{
    AttachmentKey, AttachmentPointer, Delete, DisappearingTimer, Edit, GroupName, Reaction, Text,
};
use sotto_core::openmls_traits::OpenMlsProvider as _;
use sotto_core::openmls_traits::random::OpenMlsRand as _;
use sotto_core::{
    AccountKey, ClaimedKeyPackage, Content, Conversation, ConversationConfig, ConversationError,
    Envelope, IdentityKeyPair, Incoming, LocalDevice, OutgoingCommit, SafetyNumber, SecurityEvent,
    UserKeyPackages, generate_key_packages,
};
use sotto_proto::{ConversationId, DeviceId, DeviceList, MessageId, Username};
use tokio::sync::broadcast;

use crate::attachment;
use crate::error::ClientError;
use crate::profile::{Account, Profile, ProfileTx, StoredConversation, StoredMessage, now_ms};
use crate::transport::{Entry, EntryKind, Transport};
use sotto_api::ErrorCode;

mod account;
mod apply;
mod conversations;
mod inbox;
mod messaging;
mod outbox;

pub use account::Registered;
use apply::{apply_content, handle, members_event, queue, security_of};
pub(crate) use outbox::Adds;

/// One-time KeyPackages uploaded at registration and on top-up.
const KEY_PACKAGE_BATCH: usize = 50;
/// Top up when fewer than this many one-time KeyPackages remain on the server.
const KEY_PACKAGE_LOW_WATER: u32 = 10;
/// How many times a commit is rebuilt after losing an epoch race.
const COMMIT_RETRIES: usize = 8;

/// Something the user should see.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A new message (text or attachment), incoming or sent from another own device.
    Message(StoredMessage),
    /// A message was edited.
    Edited {
        /// The conversation.
        conversation: ConversationId,
        /// The message.
        id: MessageId,
        /// The new text.
        text: String,
    },
    /// A message was deleted for everyone.
    Deleted {
        /// The conversation.
        conversation: ConversationId,
        /// The message.
        id: MessageId,
    },
    /// A reaction was set or removed.
    Reaction {
        /// The conversation.
        conversation: ConversationId,
        /// The message reacted to.
        target: MessageId,
        /// Who reacted.
        sender: Username,
        /// The emoji, or `None` when taken back.
        emoji: Option<String>,
    },
    /// Messages were read by someone.
    Receipt {
        /// The conversation.
        conversation: ConversationId,
        /// Who read them.
        reader: Username,
        /// The messages.
        targets: Vec<MessageId>,
    },
    /// This device joined a conversation.
    Joined {
        /// The conversation.
        conversation: ConversationId,
        /// Who added this device.
        by: Username,
    },
    /// Members were added to or removed from a conversation.
    Members {
        /// The conversation.
        conversation: ConversationId,
        /// Who committed the change (this account, for its own commits).
        by: Username,
        /// Users who joined, with their devices.
        added: Vec<(Username, DeviceId)>,
        /// Users who left (all their devices), with their devices.
        removed: Vec<(Username, DeviceId)>,
        /// Devices added for members who were here already (a device they linked,
        /// or the device they recovered their account on).
        #[serde(default)]
        linked: Vec<MemberDevice>,
        /// Devices removed from members who stay (a device they unlinked).
        #[serde(default)]
        unlinked: Vec<MemberDevice>,
        /// True if this device was removed.
        removed_me: bool,
    },
    /// A group was named or renamed.
    GroupName {
        /// The conversation.
        conversation: ConversationId,
        /// Who named it.
        by: Username,
        /// The name.
        name: String,
    },
    /// The disappearing-messages timer changed.
    Timer {
        /// The conversation.
        conversation: ConversationId,
        /// Seconds, or `None` when turned off.
        seconds: Option<u32>,
    },
    /// News about a contact's account (recovered on a new device, released by the
    /// server's operator): informational, nothing was refused.
    Contact {
        /// The contact.
        user: Username,
        /// What happened, for the user.
        detail: String,
    },
    /// Something was refused for security (ghost device, key substitution, rollback).
    Security {
        /// The conversation, if any.
        conversation: Option<ConversationId>,
        /// What happened, for the user.
        detail: String,
    },
    /// An incoming entry could not be processed (recorded and acked).
    Failed {
        /// The mailbox sequence number.
        seq: u64,
        /// Why.
        reason: String,
    },
}

/// One device of a member: in a conversation, or linked or unlinked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberDevice {
    /// The member.
    pub user: Username,
    /// The device.
    pub device: DeviceId,
    /// Its name, as certified (peer text: escape it when shown).
    pub name: String,
}

impl MemberDevice {
    pub(crate) fn of(e: &sotto_core::RosterEntry) -> Self {
        Self {
            user: e.username.clone(),
            device: e.device_id,
            name: e.device_name.clone(),
        }
    }
}

/// Who this profile is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhoAmI {
    /// The username.
    pub username: Username,
    /// This device.
    pub device_id: DeviceId,
    /// This device's name, as certified.
    pub device_name: String,
    /// Whether this is the account's primary device (it links and removes devices).
    pub primary: bool,
    /// The fingerprint of the account identity key (the own half of safety numbers).
    pub fingerprint: String,
    /// The server.
    pub server: String,
}

/// A conversation as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    /// The stored row.
    pub conversation: StoredConversation,
    /// The member users (from the MLS roster).
    pub members: Vec<Username>,
    /// Unread incoming messages.
    pub unread: u64,
}

/// Whom a message goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    /// An existing conversation (a group, or a one-to-one conversation).
    Conversation(ConversationId),
    /// A user: the one-to-one conversation with them, created on first use.
    User(Username),
}

impl From<ConversationId> for Recipient {
    fn from(id: ConversationId) -> Self {
        Self::Conversation(id)
    }
}

impl From<Username> for Recipient {
    fn from(user: Username) -> Self {
        Self::User(user)
    }
}

impl From<&Username> for Recipient {
    fn from(user: &Username) -> Self {
        Self::User(user.clone())
    }
}

/// The result of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The message id.
    pub id: MessageId,
    /// The conversation.
    pub conversation: ConversationId,
    /// Members of a group this message cannot reach, and why (in a one-to-one
    /// conversation an unreachable peer fails the send instead).
    pub unreachable: Vec<(Username, String)>,
}

/// An async client for one profile.
pub struct Client {
    pub(crate) home: PathBuf,
    profile: Mutex<Profile>,
    pub(crate) transport: Transport,
    pub(crate) config: ConversationConfig,
    clock: Arc<dyn Fn() -> u64 + Send + Sync>,
    events: broadcast::Sender<Event>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("home", &self.home)
            .field("server", &self.transport.base())
            .finish_non_exhaustive()
    }
}

pub(crate) fn rng_bytes<const N: usize>(tx: &ProfileTx<'_>) -> Result<[u8; N], ClientError> {
    tx.provider()
        .rand()
        .random_array()
        .map_err(|_| ClientError::Local("the system random generator failed".into()))
}

impl Client {
    /// Opens the profile in `home`. `server` is used for a new profile; a registered
    /// profile keeps talking to the server it registered with unless `server` is given.
    pub fn open(home: &Path, server: &str) -> Result<Self, ClientError> {
        Self::open_with_ca(home, server, None)
    }

    /// Like [`Client::open`], also trusting the CA certificate(s) in `ca_pem` (PEM) for
    /// a server with a private or self-signed certificate.
    pub fn open_with_ca(
        home: &Path,
        server: &str,
        ca_pem: Option<Vec<u8>>,
    ) -> Result<Self, ClientError> {
        let mut profile = Profile::open(home)?;
        let stored = profile.read(|tx| Ok(tx.account()?.map(|a| a.server)))?;
        let base = stored.unwrap_or_else(|| server.to_owned());
        let (events, _) = broadcast::channel(1024);
        Ok(Self {
            home: home.to_path_buf(),
            profile: Mutex::new(profile),
            transport: Transport::with_ca(&base, ca_pem)?,
            config: ConversationConfig::default(),
            clock: Arc::new(now_ms),
            events,
        })
    }

    /// Talks to `server` from now on, in this session: another node of the same
    /// deployment (when the one in use is down), or the same service at a new address.
    /// The server the profile registered with stays recorded.
    pub fn set_server(&mut self, server: &str) -> Result<(), ClientError> {
        self.transport = self.transport.with_base(server)?;
        Ok(())
    }

    /// Replaces the clock (Unix milliseconds), for tests of disappearing messages.
    pub fn set_clock(&mut self, clock: Arc<dyn Fn() -> u64 + Send + Sync>) {
        self.clock = clock;
    }

    /// The profile directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Events as they happen (a UI subscribes once and renders them).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Unix seconds.
    pub(crate) fn now(&self) -> u64 {
        self.now_ms() / 1000
    }

    pub(crate) fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    fn profile(&self) -> Result<MutexGuard<'_, Profile>, ClientError> {
        self.profile
            .lock()
            .map_err(|_| ClientError::Local("the profile lock is poisoned".into()))
    }

    pub(crate) fn write<T>(
        &self,
        work: impl FnOnce(&ProfileTx<'_>) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.profile()?.write(work)
    }

    pub(crate) fn read<T>(
        &self,
        work: impl FnOnce(&ProfileTx<'_>) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.profile()?.read(work)
    }

    pub(crate) fn account(&self) -> Result<Account, ClientError> {
        self.read(|tx| tx.account())?
            .ok_or(ClientError::NotRegistered)
    }

    pub(crate) fn emit(&self, events: Vec<Event>) -> Vec<Event> {
        for e in &events {
            let _ = self.events.send(e.clone());
        }
        events
    }

    /// Fetches and processes everything pending, acks it, and returns the events not
    /// yet reported (including those of entries processed while sending).
    #[tracing::instrument(name = "sync", skip_all)]
    pub async fn sync(&self) -> Result<Vec<Event>, ClientError> {
        self.catch_up().await?;
        self.commit_pending_proposals().await?;
        self.self_update_due().await?;
        self.check_own_list().await?;
        self.take_events()
    }
}

/// Loads a conversation that must exist.
pub(crate) fn load(tx: &ProfileTx<'_>, id: ConversationId) -> Result<Conversation, ClientError> {
    Conversation::load(&tx.provider(), id)?
        .ok_or_else(|| ClientError::UnknownConversation(id.to_string()))
}
