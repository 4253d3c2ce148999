//! A conversation is one MLS group whose leaves are devices.
//!
//! [`Conversation`] wraps OpenMLS's `MlsGroup` with Sotto's rules: every leaf must carry
//! a device certificate trusted for its username (checked on Add, Welcome, Update and
//! on the committer's own new leaf), only the operations Sotto produces are accepted,
//! and a refused commit leaves the group state exactly where it was. Nothing here does
//! I/O: bytes come in, bytes go out, and the caller talks to the server.

use std::collections::BTreeMap;

use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{
    GroupId as MlsGroupId, KeyPackage, KeyPackageIn, LeafNodeIndex, LeafNodeParameters, MlsGroup,
    MlsMessageBodyIn, MlsMessageIn, ProcessedMessageContent, Proposal, ProtocolMessage,
    ProtocolVersion, QueuedProposal, Sender, StagedCommit, StagedWelcome,
};
use openmls_traits::OpenMlsProvider;
use sotto_proto::framing::{self, WireFormat};
use sotto_proto::{ConversationId, DeviceId, DeviceList, Username};

use crate::config::ConversationConfig;
use crate::content::{ContentError, Envelope};
use crate::identity::LocalDevice;
use crate::trust::{
    self, Listing, Refusal, TrustError, TrustStore, TrustStoreError, VerifiedDevice, certificate_of,
};

/// What went wrong with a conversation operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConversationError {
    /// The configured cipher suite does not sign with Ed25519.
    #[error("cipher suite {0:?} is not supported: Sotto needs an Ed25519 signature suite")]
    UnsupportedCiphersuite(openmls::prelude::Ciphersuite),
    /// Bytes that are not an MLS message of the expected kind.
    #[error("not a valid MLS message: {0}")]
    Malformed(#[source] BoxError),
    /// The message names another group.
    #[error("the message belongs to another conversation")]
    WrongConversation,
    /// A message from an epoch this member has not reached: fetch and apply the
    /// commits before it, then retry.
    #[error(
        "the message is from epoch {message}, but this device is at epoch {current}: apply the missing commits first"
    )]
    FutureEpoch {
        /// The message's epoch.
        message: u64,
        /// This member's epoch.
        current: u64,
    },
    /// A commit for an epoch this member has left behind (a replay or a commit that
    /// lost the race at the server).
    #[error("the commit is for epoch {message}, but this device is already at epoch {current}")]
    StaleCommit {
        /// The commit's epoch.
        message: u64,
        /// This member's epoch.
        current: u64,
    },
    /// A member, key package or operation failed Sotto's trust checks. This is a
    /// security event: show it to the user.
    #[error("refused in conversation {conversation}: {refusal}")]
    Refused {
        /// Where it happened.
        conversation: ConversationId,
        /// What was wrong.
        refusal: Refusal,
    },
    /// A Welcome was refused before a conversation existed.
    #[error("refused an invitation: {0}")]
    RefusedWelcome(Refusal),
    /// A Welcome for a conversation this device is still an active member of.
    #[error("this device is already a member of that conversation")]
    AlreadyMember,
    /// The device or user named is not in the conversation.
    #[error("{0} is not a member of this conversation")]
    NotAMember(String),
    /// The user has no key package for one of their listed devices.
    #[error("no key package for {username}'s device {device}: they need to come online once")]
    MissingKeyPackage {
        /// The account.
        username: Username,
        /// The device.
        device: DeviceId,
    },
    /// A commit is waiting for the server's answer; confirm or discard it first.
    #[error("a commit is already waiting for the server's answer")]
    CommitPending,
    /// No commit is waiting.
    #[error("there is no pending commit to confirm or discard")]
    NoPendingCommit,
    /// OpenMLS refused the operation or message (bad signature, undecryptable, replay...).
    #[error("MLS rejected it: {0}")]
    Mls(#[source] BoxError),
    /// The message decrypted, but its content is not a Sotto envelope.
    #[error(transparent)]
    Content(#[from] ContentError),
    /// Randomness was unavailable.
    #[error(transparent)]
    Randomness(#[from] crate::identity::RandomnessError),
    /// The MLS state could not be read or written (its database).
    #[error("the conversation store failed: {0}")]
    Storage(#[source] BoxError),
    /// Checking the devices needs these users' device lists, which this client does not
    /// hold (or holds in a version that may be outdated): fetch them from the
    /// directory, accept them with [`crate::accept_device_list`], and try again. Nothing
    /// changed.
    #[error("the device lists of {} are needed first", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    DeviceListsNeeded(Vec<Username>),
    /// The trust store failed (its database); nothing was accepted.
    #[error(transparent)]
    TrustStore(#[from] TrustStoreError),
    /// The local state is inconsistent (a bug or a damaged store).
    #[error("the conversation state is damaged: {0}")]
    Corrupt(String),
}

impl ConversationError {
    /// The security event to show the user, if this error is one.
    pub fn security_event(&self) -> Option<SecurityEvent> {
        match self {
            Self::Refused {
                conversation,
                refusal,
            } => Some(SecurityEvent {
                conversation: Some(*conversation),
                refusal: refusal.clone(),
            }),
            Self::RefusedWelcome(refusal) => Some(SecurityEvent {
                conversation: None,
                refusal: refusal.clone(),
            }),
            _ => None,
        }
    }
}

/// A refused ghost member, key substitution or unsupported operation, for the UI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityEvent {
    /// The conversation, when known.
    pub conversation: Option<ConversationId>,
    /// What was refused and why.
    pub refusal: Refusal,
}

/// The cause of an MLS failure, kept as the error's source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An OpenMLS provider whose storage errors can cross threads, so that a failure keeps
/// its cause (an SQLite error, say) as the error's source. Every provider Sotto uses
/// qualifies; it is implemented for all that do.
pub trait MlsProvider:
    OpenMlsProvider<
    StorageProvider: openmls_traits::storage::StorageProvider<
        { openmls_traits::storage::CURRENT_VERSION },
        Error: Send + Sync + 'static,
    >,
>
{
}

impl<P> MlsProvider for P where
    P: OpenMlsProvider<
        StorageProvider: openmls_traits::storage::StorageProvider<
            { openmls_traits::storage::CURRENT_VERSION },
            Error: Send + Sync + 'static,
        >,
    >
{
}

fn storage(e: impl std::error::Error + Send + Sync + 'static) -> ConversationError {
    ConversationError::Storage(Box::new(e))
}

pub(crate) fn mls(e: impl Into<BoxError>) -> ConversationError {
    ConversationError::Mls(e.into())
}

/// A trust check's failure other than a refusal.
fn distrusted(e: TrustError) -> ConversationError {
    match e {
        TrustError::Store(e) => ConversationError::TrustStore(e),
        TrustError::NoDeviceList(user) => ConversationError::DeviceListsNeeded(vec![user]),
        TrustError::Refused(r) => ConversationError::RefusedWelcome(r),
    }
}

fn malformed(e: impl Into<BoxError>) -> ConversationError {
    ConversationError::Malformed(e.into())
}

/// One member device in the roster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RosterEntry {
    /// The account.
    pub username: Username,
    /// The device.
    pub device_id: DeviceId,
    /// Its MLS leaf index.
    pub leaf: u32,
    /// The device's name, from its certificate (untrusted text: escape it when shown).
    pub device_name: String,
}

impl RosterEntry {
    fn of(cert: &sotto_proto::DeviceCertificate, leaf: u32) -> Self {
        Self {
            username: cert.username().clone(),
            device_id: cert.device_id(),
            leaf,
            device_name: cert.name().to_owned(),
        }
    }
}

/// Who is in a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    entries: Vec<RosterEntry>,
}

impl Roster {
    /// Every member device, ordered by username then device id.
    pub fn devices(&self) -> &[RosterEntry] {
        &self.entries
    }
    /// Members grouped by account.
    pub fn users(&self) -> BTreeMap<Username, Vec<DeviceId>> {
        let mut users: BTreeMap<Username, Vec<DeviceId>> = BTreeMap::new();
        for e in &self.entries {
            users
                .entry(e.username.clone())
                .or_default()
                .push(e.device_id);
        }
        users
    }
    /// Whether `device` is a member.
    pub fn contains(&self, device: DeviceId) -> bool {
        self.entries.iter().any(|e| e.device_id == device)
    }
    /// Member device ids, sorted (what the delivery service fans out to).
    pub fn device_ids(&self) -> Vec<DeviceId> {
        let mut ids: Vec<DeviceId> = self.entries.iter().map(|e| e.device_id).collect();
        ids.sort();
        ids
    }
}

/// What the delivery service needs to know about a commit, in the clear: which epoch
/// it is for (to order commits) and which devices join or leave (to fan out and to
/// authorize). It never sees who is behind a device id or why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitMetadata {
    /// The conversation.
    pub conversation: ConversationId,
    /// The epoch the commit applies to (the group moves to `epoch + 1`).
    pub epoch: u64,
    /// Devices added.
    pub added: Vec<DeviceId>,
    /// Devices removed.
    pub removed: Vec<DeviceId>,
}

/// A commit ready to send. Call [`Conversation::confirm_commit`] once the server
/// accepted it, or [`Conversation::discard_commit`] if it reports a stale epoch.
#[derive(Debug, Clone)]
pub struct OutgoingCommit {
    /// The MLS commit, for every current member.
    pub commit: Vec<u8>,
    /// The Welcome, for added devices only.
    pub welcome: Option<Vec<u8>>,
    /// What the server needs in the clear.
    pub metadata: CommitMetadata,
}

/// A key package claimed from the directory for a user.
#[derive(Debug, Clone)]
pub struct ClaimedKeyPackage {
    /// The user it was claimed for (it must certify this user).
    pub username: Username,
    /// The serialized `KeyPackage`.
    pub bytes: Vec<u8>,
}

/// Everything needed to add one user with all their devices.
#[derive(Debug, Clone)]
pub struct UserKeyPackages {
    /// The user's signed device list from the directory.
    pub device_list: DeviceList,
    /// One key package per listed device.
    pub key_packages: Vec<Vec<u8>>,
}

/// A member device as the sender of a message or commit.
pub type MemberDevice = VerifiedDevice;

/// How the roster changed with a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterChange {
    /// The new epoch.
    pub epoch: u64,
    /// Devices that joined.
    pub added: Vec<RosterEntry>,
    /// Devices that left.
    pub removed: Vec<RosterEntry>,
    /// True if this device was removed: the conversation is over for it.
    pub removed_me: bool,
}

/// A received application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// Who sent it (authenticated by MLS).
    pub sender: RosterEntry,
    /// The epoch it was sent in.
    pub epoch: u64,
    /// The decoded envelope.
    pub envelope: Envelope,
}

/// The result of processing one incoming message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Incoming {
    /// An application message.
    Message(ReceivedMessage),
    /// A commit was checked and applied.
    Commit {
        /// Who committed.
        committer: RosterEntry,
        /// What changed.
        change: RosterChange,
    },
    /// A proposal was checked and queued for the next commit.
    Proposal {
        /// Who proposed.
        proposer: RosterEntry,
    },
    /// This device's own message came back from the server; nothing to do.
    Own,
}

/// The result of joining from a Welcome.
#[derive(Debug)]
pub struct Joined {
    /// The conversation.
    pub conversation: Conversation,
    /// Who added this device.
    pub added_by: RosterEntry,
}

/// One conversation's MLS state.
#[derive(Debug)]
pub struct Conversation {
    id: ConversationId,
    group: MlsGroup,
}

fn check_suite(config: &ConversationConfig) -> Result<(), ConversationError> {
    if config.is_supported() {
        Ok(())
    } else {
        Err(ConversationError::UnsupportedCiphersuite(
            config.ciphersuite,
        ))
    }
}

/// Reads the roster entry of a leaf (leaves were verified when they entered).
fn entry_of(
    leaf: LeafNodeIndex,
    credential: &openmls::prelude::Credential,
) -> Result<RosterEntry, ConversationError> {
    let cert = certificate_of(credential).map_err(|_| {
        ConversationError::Corrupt(format!("leaf {} has no certificate", leaf.u32()))
    })?;
    Ok(RosterEntry::of(&cert, leaf.u32()))
}

impl Conversation {
    /// Starts a conversation with this device as its only member.
    pub fn create<P: MlsProvider>(
        provider: &P,
        me: &LocalDevice,
        id: ConversationId,
        config: &ConversationConfig,
    ) -> Result<Self, ConversationError> {
        check_suite(config)?;
        let group = MlsGroup::new_with_group_id(
            provider,
            me.signer(),
            &config.create_config(),
            MlsGroupId::from_slice(id.as_bytes()),
            me.credential_with_key(),
        )
        .map_err(mls)?;
        Ok(Self { id, group })
    }

    /// Loads a conversation from the provider's storage.
    pub fn load<P: MlsProvider>(
        provider: &P,
        id: ConversationId,
    ) -> Result<Option<Self>, ConversationError> {
        let group = MlsGroup::load(provider.storage(), &MlsGroupId::from_slice(id.as_bytes()))
            .map_err(storage)?;
        Ok(group.map(|group| Self { id, group }))
    }

    /// Deletes this conversation's MLS state from storage.
    pub fn delete<P: MlsProvider>(mut self, provider: &P) -> Result<(), ConversationError> {
        self.group.delete(provider.storage()).map_err(storage)
    }

    /// Joins from a Welcome, after checking every member's certificate against the
    /// trust store. A refused Welcome creates nothing.
    pub fn join<P: MlsProvider>(
        provider: &P,
        trust: &mut dyn TrustStore,
        welcome: &[u8],
        config: &ConversationConfig,
    ) -> Result<Joined, ConversationError> {
        check_suite(config)?;
        let message = MlsMessageIn::tls_deserialize_exact(welcome).map_err(malformed)?;
        let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
            return Err(malformed("expected a Welcome"));
        };
        let builder = StagedWelcome::build_from_welcome(provider, &config.join_config(), welcome)
            .map_err(mls)?;
        // A device removed earlier keeps the old, inactive group state; a new Welcome
        // into the same conversation replaces it. Joining a group this device is still
        // an active member of would fork its state: refuse.
        let group_id = builder
            .processed_welcome()
            .unverified_group_info()
            .group_id()
            .clone();
        let existing = MlsGroup::load(provider.storage(), &group_id).map_err(storage)?;
        let builder = match existing {
            Some(old) if old.is_active() => return Err(ConversationError::AlreadyMember),
            Some(_) => builder.replace_old_group(),
            None => builder,
        };
        let staged = builder.build().map_err(mls)?;
        let id = ConversationId::from_slice(staged.group_context().group_id().as_slice())
            .ok_or_else(|| malformed("group id is not a conversation id"))?;

        // Every member's device list first, all at once: the caller fetches them.
        let mut needed: Vec<Username> = Vec::new();
        for member in staged.members() {
            let cert =
                certificate_of(&member.credential).map_err(ConversationError::RefusedWelcome)?;
            if !needed.contains(cert.username()) && trust.device_list(cert.username())?.is_none() {
                needed.push(cert.username().clone());
            }
        }
        if !needed.is_empty() {
            return Err(ConversationError::DeviceListsNeeded(needed));
        }
        let mut seen = Vec::new();
        for member in staged.members() {
            let device = trust::verify_leaf(
                &member.credential,
                &member.signature_key,
                trust,
                Listing::Reported,
            )
            .map_err(|e| match e {
                TrustError::Refused(r) => ConversationError::RefusedWelcome(r),
                other => distrusted(other),
            })?;
            if seen.contains(&device.device_id) {
                return Err(ConversationError::RefusedWelcome(
                    Refusal::DuplicateDevice {
                        username: device.username,
                        device: device.device_id,
                    },
                ));
            }
            seen.push(device.device_id);
        }
        let sender = staged.welcome_sender().map_err(mls)?;
        let added_by = entry_of(staged.welcome_sender_index(), sender.credential())?;
        let group = staged.into_group(provider).map_err(mls)?;
        Ok(Joined {
            conversation: Self { id, group },
            added_by,
        })
    }

    /// The conversation id (= MLS group id).
    pub fn id(&self) -> ConversationId {
        self.id
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.group.epoch().as_u64()
    }

    /// False once this device was removed.
    pub fn is_active(&self) -> bool {
        self.group.is_active()
    }

    /// A value all members share in an epoch and nobody else knows; members can
    /// compare it to be sure they are in the same group state.
    pub fn epoch_authenticator(&self) -> Vec<u8> {
        self.group.epoch_authenticator().as_slice().to_vec()
    }

    /// Members whose device is not in their account's newest device list held in
    /// `trust` (a device removed from its account, or one a member added that was never
    /// listed): the client commits their removal before it sends anything here. Asks
    /// for the lists it lacks with [`ConversationError::DeviceListsNeeded`].
    pub fn unlisted(&self, trust: &dyn TrustStore) -> Result<Vec<RosterEntry>, ConversationError> {
        let mut needed = Vec::new();
        let mut unlisted = Vec::new();
        for member in self.group.members() {
            let cert = certificate_of(&member.credential).map_err(|r| self.refused(r))?;
            match trust.device_list(cert.username())? {
                None => {
                    if !needed.contains(cert.username()) {
                        needed.push(cert.username().clone());
                    }
                }
                Some(list) if !trust::is_listed(&list, &cert) => {
                    unlisted.push(RosterEntry::of(&cert, member.index.u32()));
                }
                Some(_) => {}
            }
        }
        if !needed.is_empty() {
            return Err(ConversationError::DeviceListsNeeded(needed));
        }
        Ok(unlisted)
    }

    /// Devices that the newest device lists held in `trust` name for users of this
    /// conversation but that are not members (a device linked, or an account
    /// recovered, since): the client adds them. Users whose list is not held are
    /// skipped (see [`Conversation::unlisted`], which asks for them).
    pub fn missing(
        &self,
        trust: &dyn TrustStore,
    ) -> Result<Vec<(Username, DeviceId)>, ConversationError> {
        // Compared by whole certificate: a leaf that only borrows a listed device's id
        // (certified by a revoked account key) does not make that device present.
        let present: Vec<sotto_proto::DeviceCertificate> = self
            .group
            .members()
            .filter_map(|m| certificate_of(&m.credential).ok())
            .collect();
        let roster = self.roster()?;
        let mut missing = Vec::new();
        for user in roster.users().keys() {
            let Some(list) = trust.device_list(user)? else {
                continue;
            };
            missing.extend(
                list.devices()
                    .iter()
                    .filter(|c| !present.contains(c))
                    .map(|c| (user.clone(), c.device_id())),
            );
        }
        Ok(missing)
    }

    /// The member devices.
    pub fn roster(&self) -> Result<Roster, ConversationError> {
        let mut entries = self
            .group
            .members()
            .map(|m| entry_of(m.index, &m.credential))
            .collect::<Result<Vec<_>, _>>()?;
        entries.sort();
        Ok(Roster { entries })
    }

    fn refused(&self, refusal: Refusal) -> ConversationError {
        ConversationError::Refused {
            conversation: self.id,
            refusal,
        }
    }

    /// A trust check that did not accept: a refusal in this conversation, or a store
    /// failure.
    fn distrusted(&self, e: TrustError) -> ConversationError {
        match e {
            TrustError::Refused(r) => self.refused(r),
            other => distrusted(other),
        }
    }

    fn ensure_no_pending_commit(&self) -> Result<(), ConversationError> {
        if self.group.pending_commit().is_some() {
            Err(ConversationError::CommitPending)
        } else {
            Ok(())
        }
    }

    /// Checks claimed key packages: each must be valid MLS, certify the user it was
    /// claimed for under the trusted identity key, and name a device not yet present
    /// (devices in `leaving` are removed by the same commit: an impostor holding a
    /// device's id can be replaced by the real device at once).
    fn checked_key_packages<P: MlsProvider>(
        &self,
        provider: &P,
        trust: &dyn TrustStore,
        claimed: &[ClaimedKeyPackage],
        leaving: &[DeviceId],
    ) -> Result<Vec<(VerifiedDevice, KeyPackage)>, ConversationError> {
        let roster = self.roster()?;
        let mut out: Vec<(VerifiedDevice, KeyPackage)> = Vec::with_capacity(claimed.len());
        for c in claimed {
            let kp = KeyPackageIn::tls_deserialize_exact(c.bytes.as_slice())
                .map_err(malformed)?
                .validate(provider.crypto(), ProtocolVersion::Mls10)
                .map_err(mls)?;
            if kp.ciphersuite() != self.group.ciphersuite() {
                return Err(mls("key package uses another cipher suite"));
            }
            let leaf = kp.leaf_node();
            let offered = certificate_of(leaf.credential()).map_err(|r| self.refused(r))?;
            if offered.username() != &c.username {
                return Err(self.refused(Refusal::WrongAccount {
                    expected: c.username.clone(),
                    found: offered.username().clone(),
                }));
            }
            let device = trust::verify_leaf(
                leaf.credential(),
                leaf.signature_key().as_slice(),
                trust,
                Listing::Required,
            )
            .map_err(|e| self.distrusted(e))?;
            if (roster.contains(device.device_id) && !leaving.contains(&device.device_id))
                || out.iter().any(|(d, _)| d.device_id == device.device_id)
            {
                return Err(self.refused(Refusal::DuplicateDevice {
                    username: device.username,
                    device: device.device_id,
                }));
            }
            out.push((device, kp));
        }
        Ok(out)
    }

    /// Adds devices from claimed key packages (one commit, one Welcome). Used for
    /// adding a single linked device, and by [`Conversation::add_users`].
    pub fn add_devices<P: MlsProvider>(
        &mut self,
        provider: &P,
        me: &LocalDevice,
        trust: &mut dyn TrustStore,
        claimed: &[ClaimedKeyPackage],
    ) -> Result<OutgoingCommit, ConversationError> {
        self.ensure_no_pending_commit()?;
        if claimed.is_empty() {
            return Err(ConversationError::NotAMember("nobody to add".into()));
        }
        let checked = self.checked_key_packages(provider, trust, claimed, &[])?;
        let kps: Vec<KeyPackage> = checked.into_iter().map(|(_, kp)| kp).collect();
        let (commit, welcome, _) = self
            .group
            .add_members(provider, me.signer(), &kps)
            .map_err(mls)?;
        self.outgoing(commit, Some(welcome))
    }

    /// Adds users with all their devices: each user's device list is verified (and
    /// checked against rollback) and every listed device must come with a key package.
    pub fn add_users<P: MlsProvider>(
        &mut self,
        provider: &P,
        me: &LocalDevice,
        trust: &mut dyn TrustStore,
        users: &[UserKeyPackages],
    ) -> Result<OutgoingCommit, ConversationError> {
        self.ensure_no_pending_commit()?;
        let mut claimed = Vec::new();
        for user in users {
            let list = &user.device_list;
            trust::accept_device_list(trust, list).map_err(|e| self.distrusted(e))?;
            let mut covered = Vec::new();
            for bytes in &user.key_packages {
                let kp =
                    KeyPackageIn::tls_deserialize_exact(bytes.as_slice()).map_err(malformed)?;
                let cert = certificate_of(&kp.unverified_credential().credential)
                    .map_err(|r| self.refused(r))?;
                match list.device(cert.device_id()) {
                    Some(listed) if listed == &cert => covered.push(cert.device_id()),
                    _ => {
                        return Err(self.refused(Refusal::NotInDeviceList {
                            username: cert.username().clone(),
                            device: cert.device_id(),
                        }));
                    }
                }
            }
            if let Some(missing) = list
                .devices()
                .iter()
                .find(|c| !covered.contains(&c.device_id()))
            {
                return Err(ConversationError::MissingKeyPackage {
                    username: list.username().clone(),
                    device: missing.device_id(),
                });
            }
            claimed.extend(user.key_packages.iter().map(|b| ClaimedKeyPackage {
                username: list.username().clone(),
                bytes: b.clone(),
            }));
        }
        self.add_devices(provider, me, trust, &claimed)
    }

    /// Removes every device of these users.
    pub fn remove_users<P: MlsProvider>(
        &mut self,
        provider: &P,
        me: &LocalDevice,
        users: &[Username],
    ) -> Result<OutgoingCommit, ConversationError> {
        let roster = self.roster()?;
        for u in users {
            if !roster.entries.iter().any(|e| &e.username == u) {
                return Err(ConversationError::NotAMember(u.to_string()));
            }
        }
        let devices: Vec<DeviceId> = roster
            .entries
            .iter()
            .filter(|e| users.contains(&e.username))
            .map(|e| e.device_id)
            .collect();
        self.remove_devices(provider, me, &devices)
    }

    /// Removes single devices (unlinking).
    pub fn remove_devices<P: MlsProvider>(
        &mut self,
        provider: &P,
        me: &LocalDevice,
        devices: &[DeviceId],
    ) -> Result<OutgoingCommit, ConversationError> {
        self.ensure_no_pending_commit()?;
        let leaves = self.leaves_of(devices)?;
        if leaves.is_empty() {
            return Err(ConversationError::NotAMember("nobody to remove".into()));
        }
        let (commit, welcome, _) = self
            .group
            .remove_members(provider, me.signer(), &leaves)
            .map_err(mls)?;
        self.outgoing(commit, welcome)
    }

    /// Adds devices from claimed key packages and removes `remove` in one commit:
    /// how a conversation follows a member's device list when devices came and went
    /// at once (a recovered account, a contact's new identity accepted). One commit
    /// keeps the removed leaves out of the Welcome's tree, so the new devices never
    /// see (and never have to judge) the devices they replace.
    pub fn replace_devices<P: MlsProvider>(
        &mut self,
        provider: &P,
        me: &LocalDevice,
        trust: &mut dyn TrustStore,
        claimed: &[ClaimedKeyPackage],
        remove: &[DeviceId],
    ) -> Result<OutgoingCommit, ConversationError> {
        self.ensure_no_pending_commit()?;
        if claimed.is_empty() && remove.is_empty() {
            return Err(ConversationError::NotAMember("nothing to change".into()));
        }
        let kps: Vec<KeyPackage> = self
            .checked_key_packages(provider, trust, claimed, remove)?
            .into_iter()
            .map(|(_, kp)| kp)
            .collect();
        let leaves = self.leaves_of(remove)?;
        let bundle = self
            .group
            .commit_builder()
            .propose_adds(kps)
            .propose_removals(leaves)
            .load_psks(provider.storage())
            .map_err(mls)?
            .build(provider.rand(), provider.crypto(), me.signer(), |_| true)
            .map_err(mls)?
            .stage_commit(provider)
            .map_err(mls)?;
        let (commit, welcome, _) = bundle.into_messages();
        self.outgoing(commit, welcome)
    }

    /// The leaves of member devices; an unknown device is an error.
    fn leaves_of(&self, devices: &[DeviceId]) -> Result<Vec<LeafNodeIndex>, ConversationError> {
        let roster = self.roster()?;
        devices
            .iter()
            .map(|d| {
                roster
                    .entries
                    .iter()
                    .find(|e| e.device_id == *d)
                    .map(|e| LeafNodeIndex::new(e.leaf))
                    .ok_or_else(|| ConversationError::NotAMember(format!("device {d}")))
            })
            .collect()
    }

    /// Leaves: Remove proposals for every device of this account in the group (MLS
    /// does not let a member commit its own removal; another member commits them, see
    /// [`Conversation::commit_pending_proposals`]). Answers the proposal messages to
    /// send, as PrivateMessages.
    pub fn leave<P: MlsProvider>(
        &mut self,
        provider: &P,
        me: &LocalDevice,
    ) -> Result<Vec<Vec<u8>>, ConversationError> {
        self.ensure_no_pending_commit()?;
        let roster = self.roster()?;
        let mine: Vec<u32> = roster
            .entries
            .iter()
            .filter(|e| &e.username == me.username())
            .map(|e| e.leaf)
            .collect();
        let mut out = Vec::with_capacity(mine.len());
        for leaf in mine {
            let (message, _) = self
                .group
                .propose_remove_member(provider, me.signer(), LeafNodeIndex::new(leaf))
                .map_err(mls)?;
            out.push(message.to_bytes().map_err(mls)?);
        }
        Ok(out)
    }

    /// Commits the queued proposals (for example another member's leave), unless
    /// there are none or one of them removes this device (it cannot commit its own
    /// removal; another member will).
    pub fn commit_pending_proposals<P: MlsProvider>(
        &mut self,
        provider: &P,
        me: &LocalDevice,
    ) -> Result<Option<OutgoingCommit>, ConversationError> {
        self.ensure_no_pending_commit()?;
        let own = self.group.own_leaf_index();
        let mut any = false;
        for queued in self.group.pending_proposals() {
            any = true;
            if let Proposal::Remove(r) = queued.proposal()
                && r.removed() == own
            {
                return Ok(None);
            }
        }
        if !any {
            return Ok(None);
        }
        let (commit, welcome, _) = self
            .group
            .commit_to_pending_proposals(provider, me.signer())
            .map_err(mls)?;
        self.outgoing(commit, welcome).map(Some)
    }

    /// Refreshes this device's keys (post-compromise security).
    pub fn self_update<P: MlsProvider>(
        &mut self,
        provider: &P,
        me: &LocalDevice,
    ) -> Result<OutgoingCommit, ConversationError> {
        self.ensure_no_pending_commit()?;
        let bundle = self
            .group
            .self_update(provider, me.signer(), LeafNodeParameters::default())
            .map_err(mls)?;
        let (commit, welcome, _) = bundle.into_messages();
        self.outgoing(commit, welcome)
    }

    fn outgoing(
        &self,
        commit: openmls::prelude::MlsMessageOut,
        welcome: Option<openmls::prelude::MlsMessageOut>,
    ) -> Result<OutgoingCommit, ConversationError> {
        let metadata = self
            .pending_commit_metadata()?
            .ok_or(ConversationError::NoPendingCommit)?;
        Ok(OutgoingCommit {
            commit: commit.to_bytes().map_err(mls)?,
            welcome: welcome.map(|w| w.to_bytes()).transpose().map_err(mls)?,
            metadata,
        })
    }

    /// The server-visible metadata of the pending commit, if there is one.
    pub fn pending_commit_metadata(&self) -> Result<Option<CommitMetadata>, ConversationError> {
        let Some(staged) = self.group.pending_commit() else {
            return Ok(None);
        };
        let (added, removed) = self.device_changes(staged)?;
        Ok(Some(CommitMetadata {
            conversation: self.id,
            epoch: self.epoch(),
            added: added.into_iter().map(|e| e.device_id).collect(),
            removed: removed.into_iter().map(|e| e.device_id).collect(),
        }))
    }

    /// Devices added and removed by a staged commit (added entries carry their
    /// future leaf index as unknown: 0 is never relied upon).
    fn device_changes(
        &self,
        staged: &StagedCommit,
    ) -> Result<(Vec<RosterEntry>, Vec<RosterEntry>), ConversationError> {
        let mut added = Vec::new();
        for add in staged.add_proposals() {
            let leaf = add.add_proposal().key_package().leaf_node();
            let cert = certificate_of(leaf.credential()).map_err(|r| self.refused(r))?;
            added.push(RosterEntry::of(&cert, u32::MAX));
        }
        let mut removed = Vec::new();
        for remove in staged.remove_proposals() {
            let index = remove.remove_proposal().removed();
            let member = self
                .group
                .member_at(index)
                .ok_or_else(|| ConversationError::Corrupt("removal of an empty leaf".into()))?;
            removed.push(entry_of(index, &member.credential)?);
        }
        Ok((added, removed))
    }

    /// Applies this device's pending commit after the server accepted it.
    pub fn confirm_commit<P: MlsProvider>(
        &mut self,
        provider: &P,
    ) -> Result<RosterChange, ConversationError> {
        let staged = self
            .group
            .pending_commit()
            .ok_or(ConversationError::NoPendingCommit)?;
        let (added, removed) = self.device_changes(staged)?;
        self.group.merge_pending_commit(provider).map_err(mls)?;
        Ok(self.change_after_merge(added, removed, false))
    }

    /// Drops this device's pending commit (the server refused it: another commit won
    /// the epoch). Apply the winning commit, then build a new one.
    pub fn discard_commit<P: MlsProvider>(
        &mut self,
        provider: &P,
    ) -> Result<(), ConversationError> {
        if self.group.pending_commit().is_none() {
            return Err(ConversationError::NoPendingCommit);
        }
        self.group
            .clear_pending_commit(provider.storage())
            .map_err(storage)
    }

    /// Resolves added devices' leaf indices after a merge.
    fn change_after_merge(
        &self,
        added: Vec<RosterEntry>,
        removed: Vec<RosterEntry>,
        removed_me: bool,
    ) -> RosterChange {
        let roster = self.roster().ok();
        let added = added
            .into_iter()
            .map(|mut e| {
                if let Some(r) = roster
                    .as_ref()
                    .and_then(|r| r.entries.iter().find(|x| x.device_id == e.device_id))
                {
                    e.leaf = r.leaf;
                }
                e
            })
            .collect();
        RosterChange {
            epoch: self.epoch(),
            added,
            removed,
            removed_me,
        }
    }

    /// Encrypts an envelope for every other member device.
    pub fn encrypt<P: MlsProvider>(
        &mut self,
        provider: &P,
        me: &LocalDevice,
        envelope: &Envelope,
    ) -> Result<Vec<u8>, ConversationError> {
        self.ensure_no_pending_commit()?;
        let plaintext = zeroize::Zeroizing::new(envelope.encode()?);
        self.group
            .create_message(provider, me.signer(), &plaintext)
            .map_err(mls)?
            .to_bytes()
            .map_err(mls)
    }

    /// Processes one incoming group message: decrypts application messages, checks
    /// and applies commits, checks and queues proposals. A refused commit or proposal
    /// leaves the group state unchanged.
    pub fn process<P: MlsProvider>(
        &mut self,
        provider: &P,
        trust: &mut dyn TrustStore,
        bytes: &[u8],
    ) -> Result<Incoming, ConversationError> {
        let framing = framing::parse_group_message(bytes).map_err(malformed)?;
        if framing.group_id != self.id.as_bytes() {
            return Err(ConversationError::WrongConversation);
        }
        let current = self.epoch();
        if framing.epoch > current {
            return Err(ConversationError::FutureEpoch {
                message: framing.epoch,
                current,
            });
        }
        if framing.epoch < current && framing.content_type != framing::ContentType::Application {
            return Err(ConversationError::StaleCommit {
                message: framing.epoch,
                current,
            });
        }
        if framing.wire_format != WireFormat::PrivateMessage {
            // Sotto sends every group message encrypted; a public one is not ours.
            return Err(self.refused(Refusal::UnsupportedOperation("unencrypted group message")));
        }
        let message = MlsMessageIn::tls_deserialize_exact(bytes).map_err(malformed)?;
        let protocol: ProtocolMessage = message.try_into_protocol_message().map_err(malformed)?;
        let processed = self
            .group
            .process_message(provider, protocol)
            .map_err(mls)?;
        let sender = match processed.sender() {
            Sender::Member(index) => *index,
            _ => return Err(self.refused(Refusal::UnsupportedOperation("non-member sender"))),
        };
        let sender_entry = entry_of(sender, processed.credential())?;
        let epoch = processed.epoch().as_u64();
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                let plaintext = zeroize::Zeroizing::new(app.into_bytes());
                Ok(Incoming::Message(ReceivedMessage {
                    sender: sender_entry,
                    epoch,
                    envelope: Envelope::decode(&plaintext)?,
                }))
            }
            ProcessedMessageContent::ProposalMessage(proposal) => {
                self.check_standalone_proposal(&proposal, sender)?;
                self.check_proposal(&proposal, sender, trust)?;
                self.group
                    .store_pending_proposal(provider.storage(), *proposal)
                    .map_err(storage)?;
                Ok(Incoming::Proposal {
                    proposer: sender_entry,
                })
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                self.check_commit(&staged, sender, trust)?;
                let (added, removed) = self.device_changes(&staged)?;
                let removed_me = staged.self_removed();
                self.group
                    .merge_staged_commit(provider, *staged)
                    .map_err(mls)?;
                Ok(Incoming::Commit {
                    committer: sender_entry,
                    change: self.change_after_merge(added, removed, removed_me),
                })
            }
            ProcessedMessageContent::ExternalJoinProposalMessage(_) => {
                Err(self.refused(Refusal::UnsupportedOperation("external join proposal")))
            }
            _ => Ok(Incoming::Own),
        }
    }

    /// Sotto's rules for one proposal, from `sender`.
    fn check_proposal(
        &self,
        queued: &QueuedProposal,
        sender: LeafNodeIndex,
        trust: &dyn TrustStore,
    ) -> Result<(), ConversationError> {
        match queued.proposal() {
            Proposal::Add(add) => {
                let leaf = add.key_package().leaf_node();
                trust::verify_leaf(
                    leaf.credential(),
                    leaf.signature_key().as_slice(),
                    trust,
                    Listing::Reported,
                )
                .map_err(|e| self.distrusted(e))?;
            }
            Proposal::Update(update) => {
                let leaf = update.leaf_node();
                self.check_leaf_replacement(sender, leaf, trust)?;
            }
            Proposal::Remove(_) | Proposal::SelfRemove => {}
            Proposal::PreSharedKey(_) => return Err(self.unsupported("pre-shared key proposal")),
            Proposal::ReInit(_) => return Err(self.unsupported("re-init proposal")),
            Proposal::ExternalInit(_) => return Err(self.unsupported("external init proposal")),
            Proposal::GroupContextExtensions(_) => {
                return Err(self.unsupported("group context extensions proposal"));
            }
            _ => return Err(self.unsupported("custom proposal")),
        }
        Ok(())
    }

    /// A standalone proposal may only remove the proposer's own account's devices
    /// (leaving), since other members' clients commit queued proposals on their own;
    /// adding, updating or removing someone else takes a commit, whose author everyone
    /// sees.
    fn check_standalone_proposal(
        &self,
        queued: &QueuedProposal,
        sender: LeafNodeIndex,
    ) -> Result<(), ConversationError> {
        let remove = match queued.proposal() {
            Proposal::Remove(remove) => remove,
            // Sotto adds and updates only by commit, whose author every member sees; a
            // standalone proposal would let any member slip a device in through
            // whoever commits next.
            Proposal::Add(_) => return Err(self.unsupported("a standalone add proposal")),
            Proposal::Update(_) => return Err(self.unsupported("a standalone update proposal")),
            _ => return Ok(()),
        };
        let user_at = |leaf: LeafNodeIndex| -> Result<Username, ConversationError> {
            let member = self
                .group
                .member_at(leaf)
                .ok_or_else(|| ConversationError::Corrupt("an empty leaf in a proposal".into()))?;
            Ok(entry_of(leaf, &member.credential)?.username)
        };
        if user_at(sender)? != user_at(remove.removed())? {
            return Err(self.unsupported("a proposal to remove another user"));
        }
        Ok(())
    }

    fn unsupported(&self, what: &'static str) -> ConversationError {
        self.refused(Refusal::UnsupportedOperation(what))
    }

    /// A leaf that replaces `index`'s leaf must be certified and stay the same device.
    fn check_leaf_replacement(
        &self,
        index: LeafNodeIndex,
        leaf: &openmls::prelude::LeafNode,
        trust: &dyn TrustStore,
    ) -> Result<(), ConversationError> {
        let new = trust::verify_leaf(
            leaf.credential(),
            leaf.signature_key().as_slice(),
            trust,
            Listing::Reported,
        )
        .map_err(|e| self.distrusted(e))?;
        let old = self
            .group
            .member_at(index)
            .ok_or_else(|| ConversationError::Corrupt("update of an empty leaf".into()))?;
        let old = entry_of(index, &old.credential)?;
        if old.username != new.username || old.device_id != new.device_id {
            return Err(self.refused(Refusal::IdentityChangedInUpdate {
                from_user: old.username,
                to_user: new.username,
                to_device: new.device_id,
            }));
        }
        Ok(())
    }

    /// Sotto's rules for a commit from `committer`: only Add / Remove / Update
    /// proposals, every new or replaced leaf certified and trusted, no device twice.
    fn check_commit(
        &self,
        staged: &StagedCommit,
        committer: LeafNodeIndex,
        trust: &dyn TrustStore,
    ) -> Result<(), ConversationError> {
        for queued in staged.queued_proposals() {
            let proposer = match queued.sender() {
                Sender::Member(i) => *i,
                _ => return Err(self.unsupported("proposal from outside the group")),
            };
            self.check_proposal(queued, proposer, trust)?;
        }
        if let Some(leaf) = staged.update_path_leaf_node() {
            self.check_leaf_replacement(committer, leaf, trust)?;
        }
        // No device may end up in the group twice.
        let removed: Vec<u32> = staged
            .remove_proposals()
            .map(|r| r.remove_proposal().removed().u32())
            .collect();
        let mut present: Vec<DeviceId> = self
            .roster()?
            .entries
            .into_iter()
            .filter(|e| !removed.contains(&e.leaf))
            .map(|e| e.device_id)
            .collect();
        for add in staged.add_proposals() {
            let cert = certificate_of(add.add_proposal().key_package().leaf_node().credential())
                .map_err(|r| self.refused(r))?;
            if present.contains(&cert.device_id()) {
                return Err(self.refused(Refusal::DuplicateDevice {
                    username: cert.username().clone(),
                    device: cert.device_id(),
                }));
            }
            present.push(cert.device_id());
        }
        Ok(())
    }
}
