//! A store that lies: it wraps the real one and, when told to, answers directory
//! look-ups and KeyPackage claims with what a compromised or compelled server would
//! hand out (another identity key, an extra "ghost" device). Clients must refuse.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sotto_proto::{ConversationId, DeviceId, Username};
use sotto_server_store::{
    Accepted, Account, BatchStats, CommitSubmission, DeviceStatus, ExpiredCounts, Group,
    MailboxEntry, MessageSubmission, NewAccount, NewDevice, SlotId, Store, StoreError, StoreStats,
};

/// Claimed KeyPackages: (device, KeyPackage bytes).
type Claimed = Vec<(DeviceId, Vec<u8>)>;

/// The real store plus the lies to tell.
pub struct LyingStore {
    inner: Arc<dyn Store>,
    accounts: Mutex<HashMap<Username, Account>>,
    key_packages: Mutex<HashMap<Username, Claimed>>,
    stale_messages: std::sync::atomic::AtomicBool,
}

impl LyingStore {
    /// Wraps `inner`; tells no lies until asked to.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            accounts: Mutex::new(HashMap::new()),
            key_packages: Mutex::new(HashMap::new()),
            stale_messages: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// From now on, look-ups of `username` answer `account` instead of the truth.
    pub fn lie_about_account(&self, username: &Username, account: Account) {
        if let Ok(mut lies) = self.accounts.lock() {
            lies.insert(username.clone(), account);
        }
    }

    /// From now on, claims of `username`'s KeyPackages answer `key_packages`.
    pub fn lie_about_key_packages(
        &self,
        username: &Username,
        key_packages: Vec<(DeviceId, Vec<u8>)>,
    ) {
        if let Ok(mut lies) = self.key_packages.lock() {
            lies.insert(username.clone(), key_packages);
        }
    }

    /// From now on (while `on`), every application message is refused as sent in a
    /// stale epoch, as in a group whose other members keep committing.
    pub fn refuse_messages_as_stale(&self, on: bool) {
        self.stale_messages
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// The real store.
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }
}

#[async_trait]
impl Store for LyingStore {
    async fn create_account(&self, account: NewAccount, now: u64) -> Result<(), StoreError> {
        self.inner.create_account(account, now).await
    }
    async fn account(&self, username: &Username) -> Result<Option<Account>, StoreError> {
        let lie = self
            .accounts
            .lock()
            .ok()
            .and_then(|l| l.get(username).cloned());
        match lie {
            Some(a) => Ok(Some(a)),
            None => self.inner.account(username).await,
        }
    }
    async fn device_by_token(
        &self,
        token_hash: &[u8; 32],
        now: u64,
    ) -> Result<Option<(Username, DeviceId)>, StoreError> {
        self.inner.device_by_token(token_hash, now).await
    }
    async fn publish_device_list(
        &self,
        username: &Username,
        list_bytes: Vec<u8>,
        version: u64,
        new_device: Option<NewDevice>,
        now: u64,
    ) -> Result<(), StoreError> {
        self.inner
            .publish_device_list(username, list_bytes, version, new_device, now)
            .await
    }
    async fn remove_device(&self, username: &Username, device: DeviceId) -> Result<(), StoreError> {
        self.inner.remove_device(username, device).await
    }
    async fn notify_directory(
        &self,
        username: &Username,
        except: &[DeviceId],
        now: u64,
    ) -> Result<Vec<(DeviceId, u64)>, StoreError> {
        self.inner.notify_directory(username, except, now).await
    }
    async fn release_account(
        &self,
        username: &Username,
        now: u64,
    ) -> Result<Vec<(DeviceId, u64)>, StoreError> {
        self.inner.release_account(username, now).await
    }
    async fn rotate_token(&self, device: DeviceId, token_hash: [u8; 32]) -> Result<(), StoreError> {
        self.inner.rotate_token(device, token_hash).await
    }
    async fn upload_key_packages(
        &self,
        device: DeviceId,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        self.inner
            .upload_key_packages(device, one_time, last_resort)
            .await
    }
    async fn claim_key_packages(
        &self,
        username: &Username,
    ) -> Result<Vec<(DeviceId, Vec<u8>)>, StoreError> {
        let lie = self
            .key_packages
            .lock()
            .ok()
            .and_then(|l| l.get(username).cloned());
        match lie {
            Some(k) => Ok(k),
            None => self.inner.claim_key_packages(username).await,
        }
    }
    async fn device_status(&self, device: DeviceId) -> Result<DeviceStatus, StoreError> {
        self.inner.device_status(device).await
    }
    async fn create_group(
        &self,
        group: ConversationId,
        creator: DeviceId,
        members: Vec<DeviceId>,
    ) -> Result<(), StoreError> {
        self.inner.create_group(group, creator, members).await
    }
    async fn group(&self, group: ConversationId) -> Result<Option<Group>, StoreError> {
        self.inner.group(group).await
    }
    async fn submit_commit(
        &self,
        commit: CommitSubmission,
        now: u64,
    ) -> Result<Accepted, StoreError> {
        self.inner.submit_commit(commit, now).await
    }
    async fn submit_message(
        &self,
        message: MessageSubmission,
        now: u64,
    ) -> Result<Accepted, StoreError> {
        if self
            .stale_messages
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(StoreError::StaleEpoch {
                current: message.epoch + 1,
            });
        }
        self.inner.submit_message(message, now).await
    }
    async fn fetch(
        &self,
        device: DeviceId,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<MailboxEntry>, StoreError> {
        self.inner.fetch(device, after_seq, limit).await
    }
    async fn ack(&self, device: DeviceId, up_to_seq: u64) -> Result<u64, StoreError> {
        self.inner.ack(device, up_to_seq).await
    }
    async fn expire(&self, now: u64, retention_secs: u64) -> Result<ExpiredCounts, StoreError> {
        self.inner.expire(now, retention_secs).await
    }
    async fn put_link_slot(
        &self,
        slot: SlotId,
        payload: Vec<u8>,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        self.inner.put_link_slot(slot, payload, expires_at).await
    }
    async fn take_link_slot(&self, slot: SlotId, now: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.take_link_slot(slot, now).await
    }
    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.inner.stats().await
    }
    fn batch_stats(&self) -> Option<BatchStats> {
        self.inner.batch_stats()
    }
}
