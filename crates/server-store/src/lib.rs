//! The storage contract of Sotto's delivery service.
//!
//! The server is a directory (accounts, devices, device lists, KeyPackages) and a
//! delivery service (per-group commit ordering, per-device mailboxes). Everything it
//! keeps goes through the [`Store`] trait defined here. The server never sees plaintext:
//! bodies are opaque MLS ciphertext (or opaque link payloads), stored once and indexed
//! per recipient device.
//!
//! This crate holds the trait, its record types, [`MemoryStore`] (the in-memory
//! reference implementation) and [`suite`], the behaviour suite every implementation
//! runs (`store_suite!`). There is no HTTP and no SQL here.
//!
//! Time is always passed in (`now`, Unix seconds), so tests inject a clock.

mod memory;
pub mod suite;

use async_trait::async_trait;
use sotto_proto::{ConversationId, DeviceId, IdentityPublicKey, MessageId, Username};

pub use memory::MemoryStore;

/// How many epochs behind the current one an application message may still be sent in
/// (MLS members keep that many past epochs' secrets; commits race with sends).
pub const MESSAGE_EPOCH_WINDOW: u64 = 3;

/// Why a store operation was refused or failed.
///
/// Messages never contain ciphertext, tokens or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An account with this username already exists.
    #[error("the username is already taken")]
    UsernameTaken,
    /// No account has this username.
    #[error("no account has this username")]
    UnknownUser,
    /// No device has this id (or it does not belong to the named account).
    #[error("no such device")]
    UnknownDevice,
    /// A device with this id is already registered.
    #[error("a device with this id already exists")]
    DeviceExists,
    /// The group is not at the epoch the request was made for.
    #[error("stale epoch: the group is at epoch {current}")]
    StaleEpoch {
        /// The group's current epoch, so the client can re-sync.
        current: u64,
    },
    /// The sending device is not a member of the group.
    #[error("the device is not a member of this group")]
    NotAMember,
    /// A group with this id already exists.
    #[error("a group with this id already exists")]
    GroupExists,
    /// No group has this id.
    #[error("no such group")]
    UnknownGroup,
    /// A device list must carry a higher version than the stored one.
    #[error("the device list version must be greater than {current}")]
    VersionNotIncreasing {
        /// The stored version.
        current: u64,
    },
    /// A link slot with this id is already in use.
    #[error("a link slot with this id already exists")]
    SlotExists,
    /// The storage backend failed (I/O, database, a broken invariant). Internal: the
    /// server logs it and answers with a generic error.
    #[error("storage backend error: {0}")]
    Backend(#[source] BackendError),
}

/// What failed in a storage backend, keeping the backend's own error (SQLite's,
/// PostgreSQL's, an I/O error) as its source. Cheap to clone: one failed group-commit
/// batch answers every request in it with the same error.
#[derive(Debug, Clone)]
pub struct BackendError {
    context: std::borrow::Cow<'static, str>,
    source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl BackendError {
    /// A failure described by `context` alone (a broken invariant, a stopped worker).
    pub fn new(context: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        Self {
            context: context.into(),
            source: None,
        }
    }

    /// A failure of `context` ("sqlite", "starting the writer thread", ...) caused by
    /// `source`.
    pub fn caused_by(
        context: impl Into<std::borrow::Cow<'static, str>>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            context: context.into(),
            source: Some(std::sync::Arc::new(source)),
        }
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.context),
            None => f.write_str(&self.context),
        }
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Two backend errors are equal when they read the same (the source's type aside).
impl PartialEq for BackendError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for BackendError {}

impl From<&'static str> for BackendError {
    fn from(context: &'static str) -> Self {
        Self::new(context)
    }
}

impl From<String> for BackendError {
    fn from(context: String) -> Self {
        Self::new(context)
    }
}

/// A device being registered, with the hash of its bearer token (the token itself is
/// never stored).
#[derive(Clone, PartialEq, Eq)]
pub struct NewDevice {
    /// The device id (globally unique).
    pub device_id: DeviceId,
    /// SHA-256 of the device's bearer token.
    pub token_hash: [u8; 32],
    /// The encoded [`sotto_proto::DeviceCertificate`], verified by the caller.
    pub certificate_bytes: Vec<u8>,
}

impl std::fmt::Debug for NewDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewDevice")
            .field("device_id", &self.device_id)
            .field("token_hash", &"***")
            .finish_non_exhaustive()
    }
}

/// An account being registered together with its first device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAccount {
    /// The account name.
    pub username: Username,
    /// The account's identity public key.
    pub identity_key: IdentityPublicKey,
    /// The encoded, signed [`sotto_proto::DeviceList`] (verified by the caller).
    pub device_list_bytes: Vec<u8>,
    /// The device list's version.
    pub list_version: u64,
    /// The first device.
    pub first_device: NewDevice,
}

/// A registered device as the directory keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The device id.
    pub device_id: DeviceId,
    /// The encoded device certificate.
    pub certificate_bytes: Vec<u8>,
    /// When it was registered (Unix seconds).
    pub created_at: u64,
}

/// An account as the directory keeps it (exactly what DESIGN §6 allows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The account name.
    pub username: Username,
    /// The identity public key.
    pub identity_key: IdentityPublicKey,
    /// The latest signed device list.
    pub device_list_bytes: Vec<u8>,
    /// Its version.
    pub list_version: u64,
    /// Account creation time (Unix seconds).
    pub created_at: u64,
    /// The last day (Unix seconds / 86400) any of its devices authenticated.
    pub last_seen_day: u64,
    /// Its registered devices, ordered by id.
    pub devices: Vec<DeviceRecord>,
}

/// Per-device counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceStatus {
    /// One-time KeyPackages left (the client tops up when low).
    pub one_time_key_packages: u32,
    /// Whether a last-resort KeyPackage is stored.
    pub has_last_resort: bool,
    /// Mailbox entries not yet acknowledged.
    pub mailbox_depth: u64,
}

/// A group as the delivery service sees it: no names, no content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The current epoch (0 at creation; each accepted commit adds one).
    pub epoch: u64,
    /// Member devices, ordered by id.
    pub members: Vec<DeviceId>,
}

/// A commit to be ordered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitSubmission {
    /// The group.
    pub group: ConversationId,
    /// The committing device (must be a member).
    pub sender: DeviceId,
    /// The epoch the commit was built on (must be the group's current epoch).
    pub epoch: u64,
    /// Devices the commit adds (they receive the Welcome).
    pub added: Vec<DeviceId>,
    /// Devices the commit removes (they still receive the commit).
    pub removed: Vec<DeviceId>,
    /// The MLS commit (ciphertext or public message), opaque.
    pub commit: Vec<u8>,
    /// The MLS Welcome for the added devices, opaque.
    pub welcome: Option<Vec<u8>>,
}

impl CommitSubmission {
    /// The added devices, each once (a device listed twice gets one Welcome), in order.
    pub fn added_once(&self) -> Vec<DeviceId> {
        let once: std::collections::BTreeSet<DeviceId> = self.added.iter().copied().collect();
        once.into_iter().collect()
    }
}

/// An application message to be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageSubmission {
    /// The group.
    pub group: ConversationId,
    /// The sending device (must be a member).
    pub sender: DeviceId,
    /// The epoch the message was encrypted in (current or up to
    /// [`MESSAGE_EPOCH_WINDOW`] back).
    pub epoch: u64,
    /// The client's id for the message: a resend with the same id is accepted once.
    pub client_message_id: MessageId,
    /// The MLS ciphertext, opaque.
    pub body: Vec<u8>,
}

/// The store accepted a commit or message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The group's epoch after the operation (the new epoch for a commit).
    pub epoch: u64,
    /// Mailbox entries created: (device, seq), for pushing to connected devices.
    /// Empty for a duplicate resend.
    pub delivered: Vec<(DeviceId, u64)>,
    /// The message had already been accepted under this (sender, client id).
    pub duplicate: bool,
}

/// What a mailbox entry carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EntryKind {
    /// An MLS commit.
    Commit,
    /// An MLS Welcome.
    Welcome,
    /// An MLS application message.
    Message,
    /// A directory notice: the account named in the body (UTF-8) published a new
    /// device list or was released. The group is [`DIRECTORY_GROUP`].
    Directory,
}

/// The group id of [`EntryKind::Directory`] entries, which belong to no group.
pub const DIRECTORY_GROUP: ConversationId = ConversationId::from_bytes([0; 16]);

impl EntryKind {
    /// A stable small integer for storage.
    pub const fn code(self) -> u8 {
        match self {
            Self::Commit => 1,
            Self::Welcome => 2,
            Self::Message => 3,
            Self::Directory => 4,
        }
    }

    /// The kind for a stored code.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Commit),
            2 => Some(Self::Welcome),
            3 => Some(Self::Message),
            4 => Some(Self::Directory),
            _ => None,
        }
    }
}

/// One entry of a device's mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxEntry {
    /// The device's sequence number for it (increasing, never reused).
    pub seq: u64,
    /// What it is.
    pub kind: EntryKind,
    /// The group it belongs to.
    pub group: ConversationId,
    /// The opaque body.
    pub body: Vec<u8>,
    /// When the server accepted it (Unix seconds).
    pub received_at: u64,
}

/// What [`Store::expire`] deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExpiredCounts {
    /// Mailbox entries past retention.
    pub entries: u64,
    /// Bodies no longer referenced.
    pub bodies: u64,
    /// Expired device-link slots.
    pub link_slots: u64,
    /// Message idempotency records past retention.
    pub idempotency_records: u64,
}

/// Store-wide counts, for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Accounts.
    pub accounts: u64,
    /// Registered devices.
    pub devices: u64,
    /// Groups.
    pub groups: u64,
    /// Stored bodies (each stored once however many mailboxes reference it).
    pub bodies: u64,
    /// Mailbox entries across all devices.
    pub mailbox_entries: u64,
}

/// Upper bounds (inclusive) of the batch-size histogram buckets of [`BatchStats`].
pub const BATCH_BUCKET_BOUNDS: [u64; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];

/// What a request in a group-commit batch is answered: its own result if the batch
/// committed, the batch's error otherwise.
pub fn batched_result<T>(
    own: Option<Result<T, StoreError>>,
    committed: Result<(), StoreError>,
) -> Result<T, StoreError> {
    committed.and_then(|()| {
        own.unwrap_or_else(|| {
            Err(StoreError::Backend(
                "write request was not run in its batch".into(),
            ))
        })
    })
}

/// Counters of a store's group-commit batches, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchStats {
    /// Transactions committed or attempted.
    pub batches: u64,
    /// Write requests processed.
    pub writes: u64,
    /// The largest batch seen.
    pub largest: u64,
    /// Batches whose size was at most the matching [`BATCH_BUCKET_BOUNDS`] entry (and
    /// above the previous one); the last bucket also holds anything larger.
    pub size_buckets: [u64; 10],
    /// Batches whose COMMIT failed (every request in them got an error).
    pub failed_commits: u64,
}

impl BatchStats {
    /// Records one batch of `size` requests.
    pub fn record(&mut self, size: usize, committed: bool) {
        let size = size as u64;
        self.batches += 1;
        self.writes += size;
        self.largest = self.largest.max(size);
        let bucket = BATCH_BUCKET_BOUNDS
            .iter()
            .position(|bound| size <= *bound)
            .unwrap_or(BATCH_BUCKET_BOUNDS.len() - 1);
        if let Some(count) = self.size_buckets.get_mut(bucket) {
            *count += 1;
        }
        if !committed {
            self.failed_commits += 1;
        }
    }
}

/// A device-link slot id: 128 random bits chosen by the linking devices.
pub type SlotId = [u8; 16];

/// The delivery service's storage.
///
/// Implementations must make each method atomic; in particular `submit_commit` must
/// accept exactly one commit per group epoch however many race. Every write is durable
/// when the method returns `Ok`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // ----- accounts and devices -----

    /// Registers an account with its first device. `UsernameTaken` if the name exists,
    /// `DeviceExists` if the device id is registered anywhere.
    async fn create_account(&self, account: NewAccount, now: u64) -> Result<(), StoreError>;

    /// The account with this name, with its devices.
    async fn account(&self, username: &Username) -> Result<Option<Account>, StoreError>;

    /// The device a bearer token (by hash) belongs to. Also records the account's
    /// last-seen day (`now / 86400`), writing at most once per day.
    async fn device_by_token(
        &self,
        token_hash: &[u8; 32],
        now: u64,
    ) -> Result<Option<(Username, DeviceId)>, StoreError>;

    /// Replaces the account's device list if `version` is greater than the stored one
    /// (else `VersionNotIncreasing`), registering `new_device` in the same step (linking).
    async fn publish_device_list(
        &self,
        username: &Username,
        list_bytes: Vec<u8>,
        version: u64,
        new_device: Option<NewDevice>,
        now: u64,
    ) -> Result<(), StoreError>;

    /// Deletes a device of the account with its token, KeyPackages, mailbox (releasing
    /// bodies nobody else needs) and group memberships. Groups left empty are deleted.
    async fn remove_device(&self, username: &Username, device: DeviceId) -> Result<(), StoreError>;

    /// Tells every device that shares a group with one of `username`'s devices, and
    /// `username`'s own devices, that the account's directory entry changed: one
    /// [`EntryKind::Directory`] entry each, whose body is the username. Devices in
    /// `except` are not told (the publisher, devices about to be removed). Answers the
    /// entries made, for wake-ups.
    async fn notify_directory(
        &self,
        username: &Username,
        except: &[DeviceId],
        now: u64,
    ) -> Result<Vec<(DeviceId, u64)>, StoreError>;

    /// Deletes the account and all its devices (as [`Store::remove_device`] does), so
    /// that the username can be registered again (an operator's `release-username`),
    /// after telling the devices that shared a group with it, in the same step.
    /// Answers those notices, for wake-ups. `UnknownUser` if there is no such account.
    async fn release_account(
        &self,
        username: &Username,
        now: u64,
    ) -> Result<Vec<(DeviceId, u64)>, StoreError>;

    /// Replaces a device's token (by hash); the old one stops working at once.
    async fn rotate_token(&self, device: DeviceId, token_hash: [u8; 32]) -> Result<(), StoreError>;

    // ----- KeyPackages -----

    /// Adds one-time KeyPackages; a given last-resort KeyPackage replaces the old one.
    async fn upload_key_packages(
        &self,
        device: DeviceId,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<(), StoreError>;

    /// One KeyPackage per device of the user, ordered by device id: the oldest one-time
    /// package (deleted as it is claimed), else the last-resort one (kept). Devices
    /// with neither are left out. `UnknownUser` if there is no such account.
    async fn claim_key_packages(
        &self,
        username: &Username,
    ) -> Result<Vec<(DeviceId, Vec<u8>)>, StoreError>;

    /// KeyPackage and mailbox counters of one device.
    async fn device_status(&self, device: DeviceId) -> Result<DeviceStatus, StoreError>;

    // ----- groups (ordering and fan-out) -----

    /// Creates a group at epoch 0 whose members are `creator` plus `members`.
    async fn create_group(
        &self,
        group: ConversationId,
        creator: DeviceId,
        members: Vec<DeviceId>,
    ) -> Result<(), StoreError>;

    /// The group's epoch and members.
    async fn group(&self, group: ConversationId) -> Result<Option<Group>, StoreError>;

    /// Orders a commit, atomically: only if the group is at `epoch` (else `StaleEpoch`)
    /// and the sender is a member (else `NotAMember`). The commit (stored once) goes to
    /// every member at `epoch` except the sender, removed ones included; the Welcome
    /// (stored once) to each added device; membership changes; the epoch advances by
    /// one. Added devices must exist (`UnknownDevice`).
    async fn submit_commit(
        &self,
        commit: CommitSubmission,
        now: u64,
    ) -> Result<Accepted, StoreError>;

    /// Delivers an application message (stored once) to every member but the sender.
    /// The epoch may be up to [`MESSAGE_EPOCH_WINDOW`] behind. A resend with the same
    /// (sender, client message id) within the retention is accepted without new entries.
    async fn submit_message(
        &self,
        message: MessageSubmission,
        now: u64,
    ) -> Result<Accepted, StoreError>;

    // ----- mailboxes -----

    /// Up to `limit` entries with `seq > after_seq`, in seq order.
    async fn fetch(
        &self,
        device: DeviceId,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<MailboxEntry>, StoreError>;

    /// Deletes the device's entries with `seq <= up_to_seq` (and bodies left
    /// unreferenced). Returns how many entries were deleted.
    async fn ack(&self, device: DeviceId, up_to_seq: u64) -> Result<u64, StoreError>;

    /// Deletes mailbox entries received before `now - retention_secs`, unreferenced
    /// bodies, idempotency records of that age, and link slots expired at `now`.
    async fn expire(&self, now: u64, retention_secs: u64) -> Result<ExpiredCounts, StoreError>;

    // ----- device-link relay -----

    /// Stores an opaque link payload until `expires_at` (`SlotExists` if taken).
    async fn put_link_slot(
        &self,
        slot: SlotId,
        payload: Vec<u8>,
        expires_at: u64,
    ) -> Result<(), StoreError>;

    /// Takes (and deletes) a link payload; `None` if absent or expired.
    async fn take_link_slot(&self, slot: SlotId, now: u64) -> Result<Option<Vec<u8>>, StoreError>;

    // ----- observability -----

    /// Store-wide counts (bodies, entries, ...), for tests and metrics.
    async fn stats(&self) -> Result<StoreStats, StoreError>;

    /// Group-commit counters, for stores that batch writes (`None` otherwise).
    fn batch_stats(&self) -> Option<BatchStats> {
        None
    }
}

// The server holds the store as `Arc<dyn Store>`; keep the trait dyn-compatible.
const _: Option<&dyn Store> = None;

/// The last-seen day for a Unix time.
pub const fn day_of(now: u64) -> u64 {
    now / 86_400
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batched_request_gets_its_own_result_only_if_the_batch_committed() {
        assert_eq!(batched_result(Some(Ok(7)), Ok(())), Ok(7));
        assert_eq!(
            batched_result::<u8>(Some(Err(StoreError::NotAMember)), Ok(())),
            Err(StoreError::NotAMember)
        );
        let failed = StoreError::Backend("disk full".into());
        assert_eq!(
            batched_result(Some(Ok(7)), Err(failed.clone())),
            Err(failed)
        );
        assert!(matches!(
            batched_result::<u8>(None, Ok(())),
            Err(StoreError::Backend(_))
        ));
    }
}
