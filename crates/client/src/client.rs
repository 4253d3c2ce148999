//! The SDK's entry point: [`Client`], one profile talking to one server.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use sotto_core::content::{
    AttachmentKey, AttachmentPointer, Delete, DisappearingTimer, Edit, GroupName, Reaction, Text,
};
use sotto_core::openmls_traits::OpenMlsProvider as _;
use sotto_core::openmls_traits::random::OpenMlsRand as _;
use sotto_core::{
    ClaimedKeyPackage, Content, Conversation, ConversationConfig, ConversationError, Envelope,
    IdentityKeyPair, Incoming, LocalDevice, OutgoingCommit, SafetyNumber, SecurityEvent,
    UserKeyPackages, generate_key_packages,
};
use sotto_proto::{ConversationId, DeviceId, MessageId, Username};
use tokio::sync::broadcast;

use crate::attachment;
use crate::error::ClientError;
use crate::profile::{Account, Profile, StoredConversation, StoredMessage, Tx, now_ms};
use crate::transport::{Entry, EntryKind, Transport};
use sotto_api::ErrorCode;

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
        id: String,
        /// The new text.
        text: String,
    },
    /// A message was deleted for everyone.
    Deleted {
        /// The conversation.
        conversation: ConversationId,
        /// The message.
        id: String,
    },
    /// A reaction was set or removed.
    Reaction {
        /// The conversation.
        conversation: ConversationId,
        /// The message reacted to.
        target: String,
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
        targets: Vec<String>,
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
        /// Users with devices added (a user may appear when one device was linked).
        added: Vec<(Username, DeviceId)>,
        /// Devices removed.
        removed: Vec<(Username, DeviceId)>,
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

/// Who this profile is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhoAmI {
    /// The username.
    pub username: Username,
    /// This device.
    pub device_id: DeviceId,
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

/// The result of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The message id.
    pub id: MessageId,
    /// The conversation.
    pub conversation: ConversationId,
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

pub(crate) fn rng_bytes<const N: usize>(tx: &Tx<'_>) -> Result<[u8; N], ClientError> {
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
        work: impl FnOnce(&Tx<'_>) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.profile()?.write(work)
    }

    pub(crate) fn read<T>(
        &self,
        work: impl FnOnce(&Tx<'_>) -> Result<T, ClientError>,
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

    // ----- account -----

    /// Creates the account and this device on the server, and uploads KeyPackages.
    #[tracing::instrument(name = "register", skip_all)]
    pub async fn register(&self, username: &str) -> Result<WhoAmI, ClientError> {
        let username = Username::parse(username)
            .map_err(|e| ClientError::Usage(format!("invalid username: {e}")))?;
        if let Some(a) = self.read(|tx| tx.account())? {
            return Err(ClientError::AlreadyRegistered(a.username.to_string()));
        }
        let now = self.now();
        let (identity, device, list) = self.read(|tx| {
            let provider = tx.provider();
            let identity = IdentityKeyPair::generate(provider.rand())
                .map_err(|_| ClientError::Local("the system random generator failed".into()))?;
            let device = LocalDevice::create(provider.rand(), &identity, &username, now)
                .map_err(|_| ClientError::Local("the system random generator failed".into()))?;
            let list = identity.sign_device_list(&username, 1, vec![device.certificate().clone()]);
            Ok((identity, device, list))
        })?;
        let token = self.transport.register(&username, &list).await?;
        let account = Account {
            username: username.clone(),
            device,
            identity,
            token,
            server: self.transport.base().to_owned(),
        };
        self.write(|tx| {
            tx.save_account(&account)?;
            // Our own identity is pinned like any contact's.
            let mut trust = tx.trust();
            sotto_core::accept_device_list(&mut trust, &list)?;
            trust.finish()
        })?;
        self.top_up_key_packages(true).await?;
        self.whoami()
    }

    /// Who this profile is.
    pub fn whoami(&self) -> Result<WhoAmI, ClientError> {
        let a = self.account()?;
        Ok(WhoAmI {
            username: a.username,
            device_id: a.device.device_id(),
            fingerprint: sotto_core::safety::fingerprint_digits(&a.identity.public()),
            server: a.server,
        })
    }

    /// Uploads a fresh batch of KeyPackages when the server runs low (or `force`).
    pub async fn top_up_key_packages(&self, force: bool) -> Result<(), ClientError> {
        let account = self.account()?;
        if !force {
            let status = self.transport.key_package_status(&account.token).await?;
            if status.one_time_remaining >= KEY_PACKAGE_LOW_WATER && status.has_last_resort {
                return Ok(());
            }
        }
        // The private halves must be stored before the public halves are published.
        let batch = self.write(|tx| {
            Ok(generate_key_packages(
                &tx.provider(),
                &account.device,
                &self.config,
                KEY_PACKAGE_BATCH,
            )?)
        })?;
        self.transport
            .upload_key_packages(&account.token, &batch.one_time, Some(&batch.last_resort))
            .await
    }

    // ----- conversations -----

    /// Resolves a target: a conversation id (32 hex) or a username (its direct
    /// conversation, created on first use).
    async fn resolve(&self, target: &str) -> Result<ConversationId, ClientError> {
        if target.len() == 32
            && let Ok(id) = target.parse::<ConversationId>()
        {
            if self.read(|tx| tx.conversation(id))?.is_none() {
                // Perhaps a Welcome for it is still in the mailbox.
                self.catch_up().await?;
            }
            return match self.read(|tx| tx.conversation(id))? {
                Some(_) => Ok(id),
                None => Err(ClientError::UnknownConversation(target.to_owned())),
            };
        }
        let peer = Username::parse(target).map_err(|_| {
            ClientError::Usage(format!(
                "{target:?} is neither a username nor a conversation id"
            ))
        })?;
        if let Some(c) = self.read(|tx| tx.direct_with(&peer))? {
            return Ok(c.id);
        }
        self.start(
            StoredConversation {
                id: ConversationId::from_bytes(self.read(rng_bytes::<16>)?),
                kind: "direct".into(),
                name: None,
                peer: Some(peer.clone()),
                disappearing_secs: None,
                active: true,
            },
            &[peer],
        )
        .await
    }

    /// Creates a group conversation with these members (and all of their devices and
    /// this account's other devices).
    #[tracing::instrument(name = "create_group", skip_all)]
    pub async fn create_group(
        &self,
        name: &str,
        members: &[String],
    ) -> Result<ConversationId, ClientError> {
        let users = members
            .iter()
            .map(|m| {
                Username::parse(m)
                    .map_err(|e| ClientError::Usage(format!("invalid username {m:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let id = ConversationId::from_bytes(self.read(rng_bytes::<16>)?);
        self.start(
            StoredConversation {
                id,
                kind: "group".into(),
                name: Some(name.to_owned()),
                peer: None,
                disappearing_secs: None,
                active: true,
            },
            &users,
        )
        .await?;
        // Members learn the name from the group itself (the server never sees it).
        self.send_content(
            id,
            Content::GroupName(GroupName {
                name: name.to_owned(),
            }),
        )
        .await?;
        Ok(id)
    }

    /// Creates the MLS group and the server's group record, then adds `users` (and
    /// this account's other devices).
    async fn start(
        &self,
        row: StoredConversation,
        users: &[Username],
    ) -> Result<ConversationId, ClientError> {
        let account = self.account()?;
        let me = account.username.clone();
        // Look everyone up first: an unknown user fails before anything is created.
        let mut wanted: Vec<Username> = users.iter().filter(|u| **u != me).cloned().collect();
        wanted.sort();
        wanted.dedup();
        for u in &wanted {
            self.transport.account(&account.token, u).await?;
        }
        let id = row.id;
        let now = self.now();
        self.write(|tx| {
            Conversation::create(&tx.provider(), &account.device, id, &self.config)?;
            tx.put_conversation(&row, now)
        })?;
        let mut everyone = wanted;
        everyone.push(me);
        let added = match self.transport.create_group(&account.token, id).await {
            Ok(()) => self.add_users(id, &everyone).await,
            Err(e) => Err(e),
        };
        if let Err(e) = added {
            // Do not keep a conversation nobody else can read: the next send to this
            // user must try again from scratch, not post into an empty group.
            self.write(|tx| {
                if let Some(conv) = Conversation::load(&tx.provider(), id)? {
                    conv.delete(&tx.provider())?;
                }
                tx.delete_conversation(id)
            })?;
            return Err(e);
        }
        Ok(id)
    }

    /// Adds users (all their devices; for this account, its other devices) to a
    /// conversation, retrying on `stale_epoch`.
    #[tracing::instrument(name = "add_members", skip_all)]
    pub async fn add_members(
        &self,
        conversation: &str,
        users: &[String],
    ) -> Result<(), ClientError> {
        let id = self.resolve_existing(conversation).await?;
        let users = users
            .iter()
            .map(|m| {
                Username::parse(m)
                    .map_err(|e| ClientError::Usage(format!("invalid username {m:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.add_users(id, &users).await
    }

    async fn resolve_existing(&self, conversation: &str) -> Result<ConversationId, ClientError> {
        let id: ConversationId = conversation
            .parse()
            .map_err(|_| ClientError::UnknownConversation(conversation.to_owned()))?;
        if self.read(|tx| tx.conversation(id))?.is_none() {
            // Perhaps a Welcome for it is still in the mailbox.
            self.catch_up().await?;
        }
        match self.read(|tx| tx.conversation(id))? {
            Some(c) if c.active => Ok(id),
            Some(_) => Err(ClientError::Usage(format!(
                "you are no longer a member of conversation {conversation}"
            ))),
            None => Err(ClientError::UnknownConversation(conversation.to_owned())),
        }
    }

    pub(crate) async fn add_users(
        &self,
        id: ConversationId,
        users: &[Username],
    ) -> Result<(), ClientError> {
        let account = self.account()?;
        self.catch_up().await?;
        for _ in 0..COMMIT_RETRIES {
            // Which devices are missing? (Own devices other than this one, all of theirs.)
            let roster = self.read(|tx| Ok(load(tx, id)?.roster()?))?;
            let mut packages = Vec::new();
            for u in users {
                let info = self.transport.account(&account.token, u).await?;
                let missing: Vec<DeviceId> = info
                    .device_list
                    .devices()
                    .iter()
                    .map(|c| c.device_id())
                    .filter(|d| !roster.contains(*d))
                    .collect();
                if missing.is_empty() {
                    continue;
                }
                let claimed = self.transport.claim(&account.token, u).await?;
                // Everything claimed goes to the engine, which checks each KeyPackage
                // against the signed device list and the pinned identity key: a device
                // the server slipped in is refused and reported, never silently
                // dropped. Only devices already in the group are skipped.
                let key_packages = claimed
                    .into_iter()
                    .filter(|(d, _)| !roster.contains(*d))
                    .map(|(_, kp)| kp)
                    .collect::<Vec<_>>();
                if key_packages.is_empty() {
                    continue;
                }
                packages.push((u.clone(), info.device_list, key_packages));
            }
            if packages.is_empty() {
                return Ok(());
            }
            let outgoing = self.write(|tx| {
                let mut conv = load(tx, id)?;
                let mut trust = tx.trust();
                // Whole users go in one commit; a user already partly present (own
                // account, or a newly linked device) is added device by device.
                let (whole, partial): (Vec<_>, Vec<_>) =
                    packages.iter().partition(|(u, list, kps)| {
                        !roster.users().contains_key(u) && kps.len() == list.devices().len()
                    });
                let result = if partial.is_empty() {
                    let users: Vec<UserKeyPackages> = whole
                        .iter()
                        .map(|(_, list, kps)| UserKeyPackages {
                            device_list: list.clone(),
                            key_packages: kps.clone(),
                        })
                        .collect();
                    conv.add_users(&tx.provider(), &account.device, &mut trust, &users)
                } else {
                    let mut claimed = Vec::new();
                    for (u, list, kps) in &packages {
                        sotto_core::accept_device_list(&mut trust, list)?;
                        claimed.extend(kps.iter().map(|kp| ClaimedKeyPackage {
                            username: u.clone(),
                            bytes: kp.clone(),
                        }));
                    }
                    conv.add_devices(&tx.provider(), &account.device, &mut trust, &claimed)
                }
                .map(Some);
                trust.finish()?;
                Ok(result?)
            });
            let outgoing = match outgoing {
                Ok(Some(o)) => o,
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.record_security(Some(id), &e);
                    return Err(e);
                }
            };
            if self.submit_commit(&account, id, outgoing).await? {
                return Ok(());
            }
        }
        Err(ClientError::Contention {
            operation: "adding members",
        })
    }

    /// Sends a staged commit. `Ok(true)` when accepted and applied; `Ok(false)` when
    /// another commit won the epoch (the staged one is dropped and pending entries are
    /// applied, so the caller rebuilds and retries).
    #[tracing::instrument(name = "commit", skip_all, fields(conversation = %id))]
    pub(crate) async fn submit_commit(
        &self,
        account: &Account,
        id: ConversationId,
        out: OutgoingCommit,
    ) -> Result<bool, ClientError> {
        let result = self.transport.commit(&account.token, id, &out).await;
        match result {
            Ok(_) => {
                // The event is queued with the state change, like a received commit's.
                self.write(|tx| {
                    let mut conv = load(tx, id)?;
                    let change = conv.confirm_commit(&tx.provider())?;
                    if change.removed_me {
                        tx.deactivate(id)?;
                    }
                    queue(tx, &[members_event(id, &change)])
                })?;
                Ok(true)
            }
            Err(e) if e.server_code() == Some(ErrorCode::StaleEpoch) => {
                self.write(|tx| Ok(load(tx, id)?.discard_commit(&tx.provider())?))?;
                self.catch_up().await?;
                Ok(false)
            }
            Err(e) => {
                // Not applied anywhere: drop it so the group is usable again.
                let _ = self.write(|tx| Ok(load(tx, id)?.discard_commit(&tx.provider())?));
                Err(e)
            }
        }
    }

    /// Removes users (all their devices) from a conversation.
    #[tracing::instrument(name = "remove_members", skip_all)]
    pub async fn remove_members(
        &self,
        conversation: &str,
        users: &[String],
    ) -> Result<(), ClientError> {
        let id = self.resolve_existing(conversation).await?;
        let users = users
            .iter()
            .map(|m| {
                Username::parse(m)
                    .map_err(|e| ClientError::Usage(format!("invalid username {m:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let account = self.account()?;
        self.catch_up().await?;
        for _ in 0..COMMIT_RETRIES {
            let out = self.write(|tx| {
                Ok(load(tx, id)?.remove_users(&tx.provider(), &account.device, &users)?)
            })?;
            if self.submit_commit(&account, id, out).await? {
                return Ok(());
            }
        }
        Err(ClientError::Contention {
            operation: "removing members",
        })
    }

    /// Leaves a conversation: proposes the removal of every device of this account
    /// (MLS lets only another member commit it; their clients do so when they next
    /// sync) and stops showing the conversation here at once.
    pub async fn leave(&self, conversation: &str) -> Result<(), ClientError> {
        let account = self.account()?;
        let id: ConversationId = conversation
            .parse()
            .map_err(|_| ClientError::UnknownConversation(conversation.to_owned()))?;
        self.catch_up().await?;
        match self.read(|tx| tx.conversation(id))? {
            None => return Err(ClientError::UnknownConversation(conversation.to_owned())),
            Some(c) if !c.active => return Ok(()),
            Some(_) => {}
        }
        let proposals =
            self.write(|tx| Ok(load(tx, id)?.leave(&tx.provider(), &account.device)?))?;
        let now_ms = self.now_ms();
        for (i, proposal) in proposals.iter().enumerate() {
            let random = self.read(rng_bytes::<10>)?;
            let message_id = MessageId::new_v7(now_ms + i as u64, &random);
            self.transport
                .send(&account.token, id, message_id, proposal)
                .await?;
        }
        self.write(|tx| tx.deactivate(id))
    }

    /// Commits proposals other members queued (a member leaving), in every
    /// conversation that has some; retries after losing an epoch race.
    pub(crate) async fn commit_pending_proposals(&self) -> Result<(), ClientError> {
        let account = self.account()?;
        for id in self.read(|tx| tx.pending_proposals())? {
            for _ in 0..COMMIT_RETRIES {
                let out = self.write(|tx| {
                    let Some(mut conv) = Conversation::load(&tx.provider(), id)? else {
                        return Ok(None);
                    };
                    if !conv.is_active() {
                        return Ok(None);
                    }
                    Ok(conv.commit_pending_proposals(&tx.provider(), &account.device)?)
                })?;
                let Some(out) = out else { break };
                if self.submit_commit(&account, id, out).await? {
                    break;
                }
            }
            self.write(|tx| tx.clear_pending_proposals(id))?;
        }
        Ok(())
    }

    /// The members of a conversation: users and their devices (after catching up).
    pub async fn members(
        &self,
        conversation: &str,
    ) -> Result<Vec<(Username, Vec<DeviceId>)>, ClientError> {
        let id: ConversationId = conversation
            .parse()
            .map_err(|_| ClientError::UnknownConversation(conversation.to_owned()))?;
        self.catch_up().await?;
        let roster = self.read(|tx| Ok(load(tx, id)?.roster()?))?;
        Ok(roster.users().into_iter().collect())
    }

    /// Every conversation with members and unread counts.
    pub fn conversations(&self) -> Result<Vec<ConversationSummary>, ClientError> {
        self.read(|tx| {
            tx.conversations()?
                .into_iter()
                .map(|c| {
                    let members = match Conversation::load(&tx.provider(), c.id)? {
                        Some(conv) if c.active => conv.roster()?.users().into_keys().collect(),
                        _ => Vec::new(),
                    };
                    let unread = tx.unread(c.id)?;
                    Ok(ConversationSummary {
                        conversation: c,
                        members,
                        unread,
                    })
                })
                .collect()
        })
    }

    /// A conversation's stored messages, oldest first; marks them read.
    pub fn history(&self, conversation: &str) -> Result<Vec<StoredMessage>, ClientError> {
        let id: ConversationId = conversation
            .parse()
            .map_err(|_| ClientError::UnknownConversation(conversation.to_owned()))?;
        let now = self.now();
        self.write(|tx| {
            if tx.conversation(id)?.is_none() {
                return Err(ClientError::UnknownConversation(conversation.to_owned()));
            }
            tx.delete_expired(now)?;
            tx.mark_read(id)?;
            tx.history(id)
        })
    }

    // ----- sending -----

    /// Sends a text to a username (direct conversation) or a conversation id.
    pub async fn send_text(&self, target: &str, text: &str) -> Result<Sent, ClientError> {
        let id = self.resolve(target).await?;
        self.send_content(
            id,
            Content::Text(Text {
                body: text.to_owned(),
            }),
        )
        .await
    }

    /// Sends a file: encrypts it under a fresh key, uploads the ciphertext (streamed),
    /// then sends the pointer, key and digest inside an MLS message.
    pub async fn send_file(
        &self,
        target: &str,
        path: &Path,
        caption: Option<&str>,
    ) -> Result<Sent, ClientError> {
        let account = self.account()?;
        let id = self.resolve(target).await?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| ClientError::Usage(format!("{} is not a file", path.display())))?;
        if !path.is_file() {
            return Err(ClientError::Usage(format!(
                "{} is not a readable file",
                path.display()
            )));
        }
        let key: [u8; 32] = self.read(rng_bytes::<32>)?;
        let staging = self.home.join("outgoing");
        std::fs::create_dir_all(&staging)
            .map_err(|e| ClientError::Local(format!("cannot create {}: {e}", staging.display())))?;
        let sealed_path = staging.join(format!("{}.sealed", hex(&self.read(rng_bytes::<16>)?)));
        let result = async {
            let (input, output) = (path.to_path_buf(), sealed_path.clone());
            let sealed =
                tokio::task::spawn_blocking(move || attachment::seal_file(&key, &input, &output))
                    .await
                    .map_err(|e| ClientError::Local(format!("encryption task failed: {e}")))??;
            let blob_id = self
                .transport
                .upload_blob(&account.token, &sealed_path)
                .await?;
            let pointer = AttachmentPointer {
                blob_id,
                key: AttachmentKey::from_bytes(key),
                digest: sealed.digest,
                size: sealed.size,
                media_type: media_type(&name).to_owned(),
                file_name: Some(name),
                caption: caption.map(str::to_owned),
            };
            self.send_content(id, Content::Attachment(pointer)).await
        }
        .await;
        let _ = std::fs::remove_file(&sealed_path);
        result
    }

    /// Downloads, verifies and decrypts a received attachment into `dir` (default: the
    /// profile's `attachments` folder); answers the file's path. A digest or tag
    /// mismatch is [`ClientError::AttachmentDigest`] and leaves no file behind.
    pub async fn save_attachment(
        &self,
        conversation: ConversationId,
        message_id: &str,
        dir: Option<&Path>,
    ) -> Result<PathBuf, ClientError> {
        let account = self.account()?;
        let message = self
            .read(|tx| tx.message(conversation, message_id))?
            .ok_or_else(|| {
                ClientError::Usage(format!("no message {message_id} in this conversation"))
            })?;
        let meta: serde_json::Value = message
            .attachment
            .as_deref()
            .and_then(|a| serde_json::from_str(a).ok())
            .ok_or_else(|| ClientError::Usage(format!("message {message_id} has no attachment")))?;
        let field = |k: &str| meta[k].as_str().map(str::to_owned);
        let corrupt = || ClientError::Local("a stored attachment pointer is corrupt".into());
        let blob_id = field("blob_id").ok_or_else(corrupt)?;
        let key: [u8; 32] = field("key")
            .and_then(|k| sotto_proto::b64::decode(&k).ok())
            .and_then(|k| k.try_into().ok())
            .ok_or_else(corrupt)?;
        let digest: [u8; 32] = field("digest")
            .and_then(|k| sotto_proto::b64::decode(&k).ok())
            .and_then(|k| k.try_into().ok())
            .ok_or_else(corrupt)?;
        let size = meta["size"].as_u64().ok_or_else(corrupt)?;
        // Only the last path component of the sender's name, never a path.
        let name = field("name")
            .and_then(|n| {
                Path::new(&n)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
            })
            .filter(|n| !n.starts_with('.'))
            .unwrap_or_else(|| format!("attachment-{message_id}"));
        let dir = dir.map_or_else(|| self.home.join("attachments"), Path::to_path_buf);
        std::fs::create_dir_all(&dir)
            .map_err(|e| ClientError::Local(format!("cannot create {}: {e}", dir.display())))?;
        let target = unused_path(&dir, &name);
        let sealed = self.home.join("incoming");
        std::fs::create_dir_all(&sealed)
            .map_err(|e| ClientError::Local(format!("cannot create {}: {e}", sealed.display())))?;
        let sealed = sealed.join(format!("{blob_id}.sealed"));
        let result = async {
            self.transport
                .download_blob(&account.token, &blob_id, &sealed)
                .await?;
            let (input, output) = (sealed.clone(), target.clone());
            tokio::task::spawn_blocking(move || {
                if attachment::digest_file(&input)? != digest {
                    return Err(ClientError::AttachmentDigest);
                }
                attachment::open_file(&key, &input, &output, size)
            })
            .await
            .map_err(|e| ClientError::Local(format!("decryption task failed: {e}")))?
        }
        .await;
        let _ = std::fs::remove_file(&sealed);
        result?;
        let mut meta = meta;
        meta["path"] = serde_json::json!(target.to_string_lossy());
        let json = meta.to_string();
        self.write(|tx| tx.set_attachment(conversation, message_id, &json))?;
        Ok(target)
    }

    /// Reacts to a message (`remove` takes the reaction back).
    pub async fn react(
        &self,
        conversation: &str,
        target: &str,
        emoji: &str,
        remove: bool,
    ) -> Result<Sent, ClientError> {
        let id = self.resolve_existing(conversation).await?;
        let target = parse_message_id(target)?;
        self.send_content(
            id,
            Content::Reaction(Reaction {
                target,
                emoji: emoji.to_owned(),
                remove,
            }),
        )
        .await
    }

    /// Edits one of this account's messages.
    pub async fn edit(
        &self,
        conversation: &str,
        target: &str,
        text: &str,
    ) -> Result<Sent, ClientError> {
        let id = self.resolve_existing(conversation).await?;
        let target = parse_message_id(target)?;
        self.ensure_own(id, target)?;
        self.send_content(
            id,
            Content::Edit(Edit {
                target,
                body: text.to_owned(),
            }),
        )
        .await
    }

    /// Deletes one of this account's messages for everyone.
    pub async fn delete(&self, conversation: &str, target: &str) -> Result<Sent, ClientError> {
        let id = self.resolve_existing(conversation).await?;
        let target = parse_message_id(target)?;
        self.ensure_own(id, target)?;
        self.send_content(id, Content::Delete(Delete { target }))
            .await
    }

    /// Sets or clears a conversation's disappearing-messages timer.
    pub async fn set_disappearing(
        &self,
        conversation: &str,
        seconds: Option<u32>,
    ) -> Result<Sent, ClientError> {
        let id = self.resolve_existing(conversation).await?;
        self.send_content(
            id,
            Content::DisappearingTimer(DisappearingTimer { seconds }),
        )
        .await
    }

    fn ensure_own(&self, id: ConversationId, target: MessageId) -> Result<(), ClientError> {
        match self.read(|tx| tx.message(id, &target.to_string()))? {
            Some(m) if m.outgoing => Ok(()),
            Some(_) => Err(ClientError::Usage(
                "you can only edit or delete your own messages".into(),
            )),
            None => Err(ClientError::Usage(format!(
                "no message {target} in this conversation"
            ))),
        }
    }

    /// Encrypts and sends one envelope, storing its effect locally first. The send is
    /// retried with the same message id on a stale epoch (after catching up).
    #[tracing::instrument(name = "send", skip_all, fields(conversation = %id))]
    async fn send_content(
        &self,
        id: ConversationId,
        content: Content,
    ) -> Result<Sent, ClientError> {
        let account = self.account()?;
        // Catch up first: a message encrypted in an epoch that already ended would not
        // reach members added since.
        self.catch_up().await?;
        let now_ms = self.now_ms();
        let now = now_ms / 1000;
        let message_id = self.read(|tx| {
            let random = rng_bytes::<10>(tx)?;
            Ok(MessageId::new_v7(now_ms, &random))
        })?;
        let envelope = Envelope {
            id: message_id,
            sent_at_ms: now_ms,
            content,
        };
        for attempt in 0..COMMIT_RETRIES {
            let body = self.write(|tx| {
                let mut conv = load(tx, id)?;
                let body = conv.encrypt(&tx.provider(), &account.device, &envelope)?;
                if attempt == 0 {
                    apply_content(
                        tx,
                        id,
                        &account.username,
                        account.device.device_id(),
                        true,
                        &envelope,
                        now,
                    )?;
                }
                Ok(body)
            })?;
            match self
                .transport
                .send(&account.token, id, message_id, &body)
                .await
            {
                Ok(_) => {
                    return Ok(Sent {
                        id: message_id,
                        conversation: id,
                    });
                }
                Err(e) if e.server_code() == Some(ErrorCode::StaleEpoch) => {
                    self.catch_up().await?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Contention {
            operation: "sending",
        })
    }

    // ----- receiving -----

    /// Fetches and processes everything pending, acks it, and returns the events not
    /// yet reported (including those of entries processed while sending).
    #[tracing::instrument(name = "sync", skip_all)]
    pub async fn sync(&self) -> Result<Vec<Event>, ClientError> {
        self.catch_up().await?;
        self.commit_pending_proposals().await?;
        self.take_events()
    }

    /// Hands out (once) the events queued by processing.
    pub(crate) fn take_events(&self) -> Result<Vec<Event>, ClientError> {
        let events = self.write(|tx| {
            tx.take_queued_events()?
                .iter()
                .map(|json| {
                    serde_json::from_str(json)
                        .map_err(|e| ClientError::Local(format!("a queued event is corrupt: {e}")))
                })
                .collect::<Result<Vec<Event>, _>>()
        })?;
        Ok(self.emit(events))
    }

    /// Fetches and processes everything pending and acks it; the events stay queued
    /// for the next [`Client::sync`].
    #[tracing::instrument(name = "catch_up", skip_all)]
    pub(crate) async fn catch_up(&self) -> Result<(), ClientError> {
        let account = self.account()?;
        let mut joined = false;
        loop {
            let cursor = self.read(|tx| tx.counter("cursor"))?;
            let entries = self.transport.fetch(&account.token, cursor).await?;
            let Some(last) = entries.last().map(|e| e.seq) else {
                break;
            };
            for entry in entries {
                joined |= entry.kind == EntryKind::Welcome;
                self.process_entry(&account, entry)?;
            }
            self.transport.ack(&account.token, last).await?;
        }
        let now = self.now();
        self.write(|tx| tx.delete_expired(now))?;
        if joined {
            self.top_up_key_packages(false).await?;
        }
        Ok(())
    }

    /// Processes one mailbox entry in one transaction with the cursor move. An entry
    /// that fails is recorded (with the cursor moved past it) so it cannot wedge the
    /// queue; the failure is returned as an event.
    pub(crate) fn process_entry(&self, account: &Account, entry: Entry) -> Result<(), ClientError> {
        let seq = entry.seq;
        let now = self.now();
        if self.read(|tx| tx.counter("cursor"))? >= seq {
            return Ok(());
        }
        // The events are queued in the same transaction as the state change, so a
        // crash can neither lose them nor show them twice.
        let processed = self.write(|tx| {
            let events = handle(tx, &self.config, account, &entry, now)?;
            tx.set_counter("cursor", seq)?;
            queue(tx, &events)?;
            Ok(())
        });
        match processed {
            Ok(()) => Ok(()),
            Err(ClientError::Local(e)) => Err(ClientError::Local(e)),
            Err(e) => {
                let reason = e.to_string();
                let security = security_of(&e);
                self.write(|tx| {
                    tx.record_failure(seq, Some(entry.group), &reason, now)?;
                    let mut events = vec![Event::Failed {
                        seq,
                        reason: reason.clone(),
                    }];
                    if let Some(detail) = &security {
                        tx.record_event(Some(entry.group), "security", detail, now)?;
                        events.push(Event::Security {
                            conversation: Some(entry.group),
                            detail: detail.clone(),
                        });
                    }
                    queue(tx, &events)?;
                    tx.set_counter("cursor", seq)
                })
            }
        }
    }

    fn record_security(&self, conversation: Option<ConversationId>, e: &ClientError) {
        if let Some(detail) = security_of(e) {
            let now = self.now();
            let _ = self.write(|tx| tx.record_event(conversation, "security", &detail, now));
            self.emit(vec![Event::Security {
                conversation,
                detail,
            }]);
        }
    }

    /// Recorded failures: (seq, reason).
    pub fn failures(&self) -> Result<Vec<(u64, String)>, ClientError> {
        self.read(|tx| tx.failures())
    }

    /// Recorded security events: (conversation, detail).
    pub fn security_events(&self) -> Result<Vec<(Option<ConversationId>, String)>, ClientError> {
        self.read(|tx| tx.events("security"))
    }

    // ----- safety numbers -----

    /// The safety number with `username` (fetching and pinning their key on first use).
    pub async fn safety_number(&self, username: &str) -> Result<SafetyNumber, ClientError> {
        let account = self.account()?;
        let user = Username::parse(username)
            .map_err(|e| ClientError::Usage(format!("invalid username: {e}")))?;
        let pinned = match self.read(|tx| tx.contact(&user))? {
            Some((key, _)) => key,
            None => {
                let info = self.transport.account(&account.token, &user).await?;
                self.write(|tx| {
                    let mut trust = tx.trust();
                    sotto_core::accept_device_list(&mut trust, &info.device_list)?;
                    trust.finish()
                })?;
                info.identity_key
            }
        };
        Ok(SafetyNumber::new(&account.identity.public(), &pinned))
    }

    /// Marks `username` verified if `number` matches the safety number; `Ok(false)`
    /// (and nothing marked) if it does not.
    pub async fn verify(&self, username: &str, number: &str) -> Result<bool, ClientError> {
        let safety = self.safety_number(username).await?;
        let user = Username::parse(username)
            .map_err(|e| ClientError::Usage(format!("invalid username: {e}")))?;
        if !safety.matches_digits(number) {
            return Ok(false);
        }
        self.write(|tx| tx.set_verified(&user))?;
        Ok(true)
    }

    /// Whether `username` is verified.
    pub fn is_verified(&self, username: &str) -> Result<bool, ClientError> {
        let user = Username::parse(username)
            .map_err(|e| ClientError::Usage(format!("invalid username: {e}")))?;
        Ok(self.read(|tx| tx.contact(&user))?.is_some_and(|(_, v)| v))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `dir/name`, or `dir/name (2)` etc. if taken.
fn unused_path(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    (2..)
        .map(|i| dir.join(format!("{name} ({i})")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// A media type from the file extension (the receiver only uses it as a hint).
fn media_type(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "mp4" => "video/mp4",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        _ => "application/octet-stream",
    }
}

fn parse_message_id(s: &str) -> Result<MessageId, ClientError> {
    s.parse()
        .map_err(|_| ClientError::Usage(format!("{s:?} is not a message id")))
}

/// Queues events for the next [`Client::sync`], inside the caller's transaction.
fn queue(tx: &Tx<'_>, events: &[Event]) -> Result<(), ClientError> {
    for e in events {
        let json = serde_json::to_string(e)
            .map_err(|e| ClientError::Local(format!("cannot queue an event: {e}")))?;
        tx.queue_event(&json)?;
    }
    Ok(())
}

/// Loads a conversation that must exist.
pub(crate) fn load(tx: &Tx<'_>, id: ConversationId) -> Result<Conversation, ClientError> {
    Conversation::load(&tx.provider(), id)?
        .ok_or_else(|| ClientError::UnknownConversation(id.to_string()))
}

fn members_event(id: ConversationId, change: &sotto_core::RosterChange) -> Event {
    Event::Members {
        conversation: id,
        added: change
            .added
            .iter()
            .map(|e| (e.username.clone(), e.device_id))
            .collect(),
        removed: change
            .removed
            .iter()
            .map(|e| (e.username.clone(), e.device_id))
            .collect(),
        removed_me: change.removed_me,
    }
}

fn security_of(e: &ClientError) -> Option<String> {
    match e {
        ClientError::Engine(engine) => engine
            .security_event()
            .map(|s: SecurityEvent| s.refusal.to_string()),
        ClientError::Refused(r) => Some(r.to_string()),
        _ => None,
    }
}

/// Applies one mailbox entry inside the caller's transaction.
fn handle(
    tx: &Tx<'_>,
    config: &ConversationConfig,
    account: &Account,
    entry: &Entry,
    now: u64,
) -> Result<Vec<Event>, ClientError> {
    match entry.kind {
        EntryKind::Welcome => {
            let mut trust = tx.trust();
            let joined = Conversation::join(&tx.provider(), &mut trust, &entry.body.0, config);
            trust.finish()?;
            let joined = match joined {
                Ok(j) => j,
                // A Welcome for a group this device is already in (e.g. a retried
                // commit's Welcome): nothing to do.
                Err(ConversationError::AlreadyMember) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let conv = joined.conversation;
            let users = conv.roster()?.users();
            let others: Vec<&Username> = users.keys().filter(|u| **u != account.username).collect();
            let row = if others.len() == 1 {
                StoredConversation {
                    id: conv.id(),
                    kind: "direct".into(),
                    name: None,
                    peer: others.first().map(|u| (*u).clone()),
                    disappearing_secs: None,
                    active: true,
                }
            } else {
                StoredConversation {
                    id: conv.id(),
                    kind: "group".into(),
                    name: None,
                    peer: None,
                    disappearing_secs: None,
                    active: true,
                }
            };
            tx.put_conversation(&row, now)?;
            Ok(vec![Event::Joined {
                conversation: conv.id(),
                by: joined.added_by.username,
            }])
        }
        EntryKind::Commit | EntryKind::Message => {
            let Some(mut conv) = Conversation::load(&tx.provider(), entry.group)? else {
                return Err(ClientError::UnknownConversation(entry.group.to_string()));
            };
            let mut trust = tx.trust();
            let incoming = conv.process(&tx.provider(), &mut trust, &entry.body.0);
            trust.finish()?;
            match incoming? {
                Incoming::Message(_)
                    if !tx.conversation(entry.group)?.is_some_and(|c| c.active) =>
                {
                    // Left here already (waiting for the removal commit): not shown.
                    Ok(Vec::new())
                }
                Incoming::Message(m) => {
                    let outgoing = m.sender.username == account.username;
                    apply_content(
                        tx,
                        entry.group,
                        &m.sender.username,
                        m.sender.device_id,
                        outgoing,
                        &m.envelope,
                        now,
                    )
                }
                Incoming::Proposal { .. } => {
                    tx.mark_pending_proposals(entry.group)?;
                    Ok(Vec::new())
                }
                Incoming::Commit { change, .. } => {
                    tx.clear_pending_proposals(entry.group)?;
                    if change.removed_me {
                        tx.deactivate(entry.group)?;
                    }
                    Ok(vec![members_event(entry.group, &change)])
                }
                _ => Ok(Vec::new()),
            }
        }
    }
}

/// Stores the effect of a message (sent or received) and says what happened.
fn apply_content(
    tx: &Tx<'_>,
    id: ConversationId,
    sender: &Username,
    sender_device: DeviceId,
    outgoing: bool,
    envelope: &Envelope,
    now: u64,
) -> Result<Vec<Event>, ClientError> {
    let message_id = envelope.id.to_string();
    let sent_at = envelope.sent_at_ms / 1000;
    let timer = tx.conversation(id)?.and_then(|c| c.disappearing_secs);
    let stored = |kind: &str, text: Option<String>, attachment: Option<String>| StoredMessage {
        conversation: id,
        id: message_id.clone(),
        sender: sender.clone(),
        sender_device,
        outgoing,
        kind: kind.to_owned(),
        text,
        attachment,
        sent_at,
        received_at: now,
        edited_at: None,
        deleted: false,
        expires_at: timer.map(|t| now + u64::from(t)),
    };
    let event = match &envelope.content {
        Content::Text(t) => {
            let m = stored("text", Some(t.body.clone()), None);
            tx.insert_message(&m)?.then_some(Event::Message(m))
        }
        Content::Attachment(a) => {
            let meta = serde_json::json!({
                "blob_id": a.blob_id,
                "key": sotto_proto::b64::encode(a.key.as_bytes()),
                "digest": sotto_proto::b64::encode(&a.digest),
                "size": a.size,
                "media_type": a.media_type,
                "name": a.file_name,
            });
            let m = stored("attachment", a.caption.clone(), Some(meta.to_string()));
            tx.insert_message(&m)?.then_some(Event::Message(m))
        }
        Content::Edit(e) => tx
            .edit_message(id, &e.target.to_string(), sender, &e.body, now)?
            .then(|| Event::Edited {
                conversation: id,
                id: e.target.to_string(),
                text: e.body.clone(),
            }),
        Content::Delete(d) => tx
            .delete_message(id, &d.target.to_string(), sender)?
            .then(|| Event::Deleted {
                conversation: id,
                id: d.target.to_string(),
            }),
        Content::Reaction(r) => {
            let emoji = (!r.remove).then(|| r.emoji.clone());
            tx.set_reaction(id, &r.target.to_string(), sender, emoji.as_deref())?;
            Some(Event::Reaction {
                conversation: id,
                target: r.target.to_string(),
                sender: sender.clone(),
                emoji,
            })
        }
        Content::ReadReceipt(r) => Some(Event::Receipt {
            conversation: id,
            reader: sender.clone(),
            targets: r.targets.iter().map(ToString::to_string).collect(),
        }),
        Content::Typing(_) => None,
        Content::GroupName(g) => {
            tx.set_name(id, &g.name)?;
            Some(Event::GroupName {
                conversation: id,
                by: sender.clone(),
                name: g.name.clone(),
            })
        }
        Content::DisappearingTimer(t) => {
            tx.set_disappearing(id, t.seconds)?;
            Some(Event::Timer {
                conversation: id,
                seconds: t.seconds,
            })
        }
        Content::Unsupported { kind } => {
            let m = stored(kind, None, None);
            tx.insert_message(&m)?.then_some(Event::Message(m))
        }
        _ => None,
    };
    Ok(event.into_iter().collect())
}
