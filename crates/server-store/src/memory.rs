//! The in-memory reference store: plain maps behind one mutex. Not durable; used by
//! tests and as the executable meaning of the [`Store`] contract.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use sotto_proto::{ConversationId, DeviceId, IdentityPublicKey, MessageId, Username};

use crate::{
    Accepted, Account, CommitSubmission, DeviceRecord, DeviceStatus, EntryKind, ExpiredCounts,
    Group, MESSAGE_EPOCH_WINDOW, MailboxEntry, MessageSubmission, NewAccount, NewDevice, SlotId,
    Store, StoreError, StoreStats, day_of,
};

/// In-memory [`Store`].
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        // A poisoned lock means a bug panicked mid-update; refuse rather than serve
        // possibly half-updated state.
        self.state
            .lock()
            .map_err(|_| StoreError::Backend("memory store lock poisoned".into()))
    }
}

#[derive(Debug)]
struct AccountRow {
    identity_key: IdentityPublicKey,
    list_bytes: Vec<u8>,
    list_version: u64,
    created_at: u64,
    last_seen_day: u64,
    devices: BTreeSet<DeviceId>,
}

#[derive(Debug)]
struct DeviceRow {
    username: Username,
    token_hash: [u8; 32],
    certificate_bytes: Vec<u8>,
    created_at: u64,
    next_seq: u64,
    one_time: VecDeque<Vec<u8>>,
    last_resort: Option<Vec<u8>>,
    mailbox: BTreeMap<u64, EntryRow>,
}

#[derive(Debug, Clone, Copy)]
struct EntryRow {
    kind: EntryKind,
    group: ConversationId,
    body: u64,
    received_at: u64,
}

#[derive(Debug)]
struct GroupRow {
    epoch: u64,
    members: BTreeSet<DeviceId>,
}

#[derive(Debug)]
struct BodyRow {
    bytes: Vec<u8>,
    refs: u64,
}

#[derive(Debug, Default)]
struct State {
    accounts: HashMap<Username, AccountRow>,
    devices: HashMap<DeviceId, DeviceRow>,
    tokens: HashMap<[u8; 32], DeviceId>,
    groups: HashMap<ConversationId, GroupRow>,
    bodies: HashMap<u64, BodyRow>,
    next_body: u64,
    sent: HashMap<(DeviceId, MessageId), u64>,
    link_slots: HashMap<SlotId, (Vec<u8>, u64)>,
}

impl State {
    fn insert_device(&mut self, username: &Username, device: NewDevice, now: u64) {
        self.tokens.insert(device.token_hash, device.device_id);
        self.devices.insert(
            device.device_id,
            DeviceRow {
                username: username.clone(),
                token_hash: device.token_hash,
                certificate_bytes: device.certificate_bytes,
                created_at: now,
                next_seq: 1,
                one_time: VecDeque::new(),
                last_resort: None,
                mailbox: BTreeMap::new(),
            },
        );
    }

    fn device_mut(&mut self, device: DeviceId) -> Result<&mut DeviceRow, StoreError> {
        self.devices
            .get_mut(&device)
            .ok_or(StoreError::UnknownDevice)
    }

    /// Stores `bytes` once and gives one entry to each recipient.
    fn fan_out(
        &mut self,
        recipients: &[DeviceId],
        kind: EntryKind,
        group: ConversationId,
        bytes: Vec<u8>,
        now: u64,
    ) -> Vec<(DeviceId, u64)> {
        let mut delivered = Vec::with_capacity(recipients.len());
        if recipients.is_empty() {
            return delivered;
        }
        let body = self.next_body;
        self.next_body += 1;
        let mut refs = 0;
        for id in recipients {
            if let Some(device) = self.devices.get_mut(id) {
                let seq = device.next_seq;
                device.next_seq += 1;
                device.mailbox.insert(
                    seq,
                    EntryRow {
                        kind,
                        group,
                        body,
                        received_at: now,
                    },
                );
                refs += 1;
                delivered.push((*id, seq));
            }
        }
        if refs > 0 {
            self.bodies.insert(body, BodyRow { bytes, refs });
        }
        delivered
    }

    fn remove_device(&mut self, username: &Username, device: DeviceId) -> Result<(), StoreError> {
        match self.devices.get(&device) {
            Some(row) if &row.username == username => {}
            _ => return Err(StoreError::UnknownDevice),
        }
        let Some(row) = self.devices.remove(&device) else {
            return Err(StoreError::UnknownDevice);
        };
        self.tokens.remove(&row.token_hash);
        self.release(row.mailbox.values().map(|e| e.body));
        if let Some(account) = self.accounts.get_mut(username) {
            account.devices.remove(&device);
        }
        self.groups.retain(|_, g| {
            g.members.remove(&device);
            !g.members.is_empty()
        });
        Ok(())
    }

    fn notify_directory(
        &mut self,
        username: &Username,
        except: &[DeviceId],
        now: u64,
    ) -> Vec<(DeviceId, u64)> {
        let own: BTreeSet<DeviceId> = self
            .accounts
            .get(username)
            .map(|a| a.devices.clone())
            .unwrap_or_default();
        let mut recipients = own.clone();
        for group in self.groups.values() {
            if !group.members.is_disjoint(&own) {
                recipients.extend(group.members.iter().copied());
            }
        }
        let recipients: Vec<DeviceId> = recipients
            .into_iter()
            .filter(|d| !except.contains(d))
            .collect();
        self.fan_out(
            &recipients,
            EntryKind::Directory,
            crate::DIRECTORY_GROUP,
            username.as_str().as_bytes().to_vec(),
            now,
        )
    }

    /// Drops one reference to each body; returns how many bodies were freed.
    fn release(&mut self, bodies: impl IntoIterator<Item = u64>) -> u64 {
        let mut freed = 0;
        for id in bodies {
            if let Some(row) = self.bodies.get_mut(&id) {
                row.refs = row.refs.saturating_sub(1);
                if row.refs == 0 {
                    self.bodies.remove(&id);
                    freed += 1;
                }
            }
        }
        freed
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_account(&self, account: NewAccount, now: u64) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        if s.accounts.contains_key(&account.username) {
            return Err(StoreError::UsernameTaken);
        }
        if s.devices.contains_key(&account.first_device.device_id)
            || s.tokens.contains_key(&account.first_device.token_hash)
        {
            return Err(StoreError::DeviceExists);
        }
        let mut devices = BTreeSet::new();
        devices.insert(account.first_device.device_id);
        s.insert_device(&account.username, account.first_device, now);
        s.accounts.insert(
            account.username,
            AccountRow {
                identity_key: account.identity_key,
                list_bytes: account.device_list_bytes,
                list_version: account.list_version,
                created_at: now,
                last_seen_day: day_of(now),
                devices,
            },
        );
        Ok(())
    }

    async fn account(&self, username: &Username) -> Result<Option<Account>, StoreError> {
        let s = self.lock()?;
        Ok(s.accounts.get(username).map(|a| Account {
            username: username.clone(),
            identity_key: a.identity_key,
            device_list_bytes: a.list_bytes.clone(),
            list_version: a.list_version,
            created_at: a.created_at,
            last_seen_day: a.last_seen_day,
            devices: a
                .devices
                .iter()
                .filter_map(|id| {
                    s.devices.get(id).map(|d| DeviceRecord {
                        device_id: *id,
                        certificate_bytes: d.certificate_bytes.clone(),
                        created_at: d.created_at,
                    })
                })
                .collect(),
        }))
    }

    async fn device_by_token(
        &self,
        token_hash: &[u8; 32],
        now: u64,
    ) -> Result<Option<(Username, DeviceId)>, StoreError> {
        let mut s = self.lock()?;
        let Some(id) = s.tokens.get(token_hash).copied() else {
            return Ok(None);
        };
        let Some(username) = s.devices.get(&id).map(|d| d.username.clone()) else {
            return Ok(None);
        };
        if let Some(account) = s.accounts.get_mut(&username) {
            account.last_seen_day = account.last_seen_day.max(day_of(now));
        }
        Ok(Some((username, id)))
    }

    async fn publish_device_list(
        &self,
        username: &Username,
        list_bytes: Vec<u8>,
        version: u64,
        new_device: Option<NewDevice>,
        now: u64,
    ) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        let current = s
            .accounts
            .get(username)
            .ok_or(StoreError::UnknownUser)?
            .list_version;
        if version <= current {
            return Err(StoreError::VersionNotIncreasing { current });
        }
        if let Some(device) = &new_device
            && (s.devices.contains_key(&device.device_id)
                || s.tokens.contains_key(&device.token_hash))
        {
            return Err(StoreError::DeviceExists);
        }
        let new_id = new_device.as_ref().map(|d| d.device_id);
        if let Some(device) = new_device {
            s.insert_device(username, device, now);
        }
        let account = s
            .accounts
            .get_mut(username)
            .ok_or(StoreError::UnknownUser)?;
        account.list_bytes = list_bytes;
        account.list_version = version;
        if let Some(id) = new_id {
            account.devices.insert(id);
        }
        Ok(())
    }

    async fn remove_device(&self, username: &Username, device: DeviceId) -> Result<(), StoreError> {
        self.lock()?.remove_device(username, device)
    }

    async fn notify_directory(
        &self,
        username: &Username,
        except: &[DeviceId],
        now: u64,
    ) -> Result<Vec<(DeviceId, u64)>, StoreError> {
        Ok(self.lock()?.notify_directory(username, except, now))
    }

    async fn release_account(
        &self,
        username: &Username,
        now: u64,
    ) -> Result<Vec<(DeviceId, u64)>, StoreError> {
        let mut s = self.lock()?;
        let devices: Vec<DeviceId> = s
            .accounts
            .get(username)
            .ok_or(StoreError::UnknownUser)?
            .devices
            .iter()
            .copied()
            .collect();
        let notified = s.notify_directory(username, &devices, now);
        for device in devices {
            s.remove_device(username, device)?;
        }
        s.accounts.remove(username);
        Ok(notified)
    }

    async fn rotate_token(&self, device: DeviceId, token_hash: [u8; 32]) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        if s.tokens.contains_key(&token_hash) {
            return Err(StoreError::DeviceExists);
        }
        let row = s.device_mut(device)?;
        let old = std::mem::replace(&mut row.token_hash, token_hash);
        s.tokens.remove(&old);
        s.tokens.insert(token_hash, device);
        Ok(())
    }

    async fn upload_key_packages(
        &self,
        device: DeviceId,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        let row = s.device_mut(device)?;
        row.one_time.extend(one_time);
        if last_resort.is_some() {
            row.last_resort = last_resort;
        }
        Ok(())
    }

    async fn claim_key_packages(
        &self,
        username: &Username,
    ) -> Result<Vec<(DeviceId, Vec<u8>)>, StoreError> {
        let mut s = self.lock()?;
        let ids: Vec<DeviceId> = s
            .accounts
            .get(username)
            .ok_or(StoreError::UnknownUser)?
            .devices
            .iter()
            .copied()
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let row = s.device_mut(id)?;
            if let Some(kp) = row.one_time.pop_front() {
                out.push((id, kp));
            } else if let Some(kp) = &row.last_resort {
                out.push((id, kp.clone()));
            }
        }
        Ok(out)
    }

    async fn device_status(&self, device: DeviceId) -> Result<DeviceStatus, StoreError> {
        let s = self.lock()?;
        let row = s.devices.get(&device).ok_or(StoreError::UnknownDevice)?;
        Ok(DeviceStatus {
            one_time_key_packages: u32::try_from(row.one_time.len()).unwrap_or(u32::MAX),
            has_last_resort: row.last_resort.is_some(),
            mailbox_depth: row.mailbox.len() as u64,
        })
    }

    async fn create_group(
        &self,
        group: ConversationId,
        creator: DeviceId,
        members: Vec<DeviceId>,
    ) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        if s.groups.contains_key(&group) {
            return Err(StoreError::GroupExists);
        }
        let mut set = BTreeSet::new();
        for id in std::iter::once(creator).chain(members) {
            if !s.devices.contains_key(&id) {
                return Err(StoreError::UnknownDevice);
            }
            set.insert(id);
        }
        s.groups.insert(
            group,
            GroupRow {
                epoch: 0,
                members: set,
            },
        );
        Ok(())
    }

    async fn group(&self, group: ConversationId) -> Result<Option<Group>, StoreError> {
        let s = self.lock()?;
        Ok(s.groups.get(&group).map(|g| Group {
            epoch: g.epoch,
            members: g.members.iter().copied().collect(),
        }))
    }

    async fn submit_commit(
        &self,
        commit: CommitSubmission,
        now: u64,
    ) -> Result<Accepted, StoreError> {
        let mut s = self.lock()?;
        let g = s
            .groups
            .get(&commit.group)
            .ok_or(StoreError::UnknownGroup)?;
        if !g.members.contains(&commit.sender) {
            return Err(StoreError::NotAMember);
        }
        if g.epoch != commit.epoch {
            return Err(StoreError::StaleEpoch { current: g.epoch });
        }
        if commit.added.iter().any(|id| !s.devices.contains_key(id)) {
            return Err(StoreError::UnknownDevice);
        }
        let recipients: Vec<DeviceId> = g
            .members
            .iter()
            .copied()
            .filter(|id| *id != commit.sender)
            .collect();
        let added = commit.added_once();
        let mut delivered = s.fan_out(
            &recipients,
            EntryKind::Commit,
            commit.group,
            commit.commit,
            now,
        );
        if let Some(welcome) = commit.welcome {
            delivered.extend(s.fan_out(&added, EntryKind::Welcome, commit.group, welcome, now));
        }
        let emptied = {
            let g = s
                .groups
                .get_mut(&commit.group)
                .ok_or(StoreError::UnknownGroup)?;
            for id in &commit.removed {
                g.members.remove(id);
            }
            g.members.extend(commit.added.iter().copied());
            g.epoch += 1;
            g.members.is_empty()
        };
        let epoch = commit.epoch + 1;
        if emptied {
            s.groups.remove(&commit.group);
        }
        Ok(Accepted {
            epoch,
            delivered,
            duplicate: false,
        })
    }

    async fn submit_message(
        &self,
        message: MessageSubmission,
        now: u64,
    ) -> Result<Accepted, StoreError> {
        let mut s = self.lock()?;
        let g = s
            .groups
            .get(&message.group)
            .ok_or(StoreError::UnknownGroup)?;
        if !g.members.contains(&message.sender) {
            return Err(StoreError::NotAMember);
        }
        let current = g.epoch;
        if s.sent
            .contains_key(&(message.sender, message.client_message_id))
        {
            return Ok(Accepted {
                epoch: current,
                delivered: Vec::new(),
                duplicate: true,
            });
        }
        if message.epoch > current || current - message.epoch > MESSAGE_EPOCH_WINDOW {
            return Err(StoreError::StaleEpoch { current });
        }
        let recipients: Vec<DeviceId> = g
            .members
            .iter()
            .copied()
            .filter(|id| *id != message.sender)
            .collect();
        let delivered = s.fan_out(
            &recipients,
            EntryKind::Message,
            message.group,
            message.body,
            now,
        );
        s.sent
            .insert((message.sender, message.client_message_id), now);
        Ok(Accepted {
            epoch: current,
            delivered,
            duplicate: false,
        })
    }

    async fn fetch(
        &self,
        device: DeviceId,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<MailboxEntry>, StoreError> {
        let s = self.lock()?;
        let row = s.devices.get(&device).ok_or(StoreError::UnknownDevice)?;
        let mut out = Vec::new();
        let start = after_seq.saturating_add(1);
        for (seq, e) in row.mailbox.range(start..).take(limit as usize) {
            let body = s
                .bodies
                .get(&e.body)
                .ok_or_else(|| StoreError::Backend("mailbox entry without a body".into()))?;
            out.push(MailboxEntry {
                seq: *seq,
                kind: e.kind,
                group: e.group,
                body: body.bytes.clone(),
                received_at: e.received_at,
            });
        }
        Ok(out)
    }

    async fn ack(&self, device: DeviceId, up_to_seq: u64) -> Result<u64, StoreError> {
        let mut s = self.lock()?;
        let row = s.device_mut(device)?;
        let keep = row.mailbox.split_off(&up_to_seq.saturating_add(1));
        let acked = std::mem::replace(&mut row.mailbox, keep);
        let n = acked.len() as u64;
        s.release(acked.values().map(|e| e.body));
        Ok(n)
    }

    async fn expire(&self, now: u64, retention_secs: u64) -> Result<ExpiredCounts, StoreError> {
        let mut s = self.lock()?;
        let cutoff = now.saturating_sub(retention_secs);
        let mut counts = ExpiredCounts::default();
        let mut released = Vec::new();
        for device in s.devices.values_mut() {
            device.mailbox.retain(|_, e| {
                let keep = e.received_at >= cutoff;
                if !keep {
                    released.push(e.body);
                }
                keep
            });
        }
        counts.entries = released.len() as u64;
        counts.bodies = s.release(released);
        let before = s.sent.len();
        s.sent.retain(|_, at| *at >= cutoff);
        counts.idempotency_records = (before - s.sent.len()) as u64;
        let before = s.link_slots.len();
        s.link_slots.retain(|_, (_, expires_at)| *expires_at > now);
        counts.link_slots = (before - s.link_slots.len()) as u64;
        Ok(counts)
    }

    async fn put_link_slot(
        &self,
        slot: SlotId,
        payload: Vec<u8>,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        if s.link_slots.contains_key(&slot) {
            return Err(StoreError::SlotExists);
        }
        s.link_slots.insert(slot, (payload, expires_at));
        Ok(())
    }

    async fn take_link_slot(&self, slot: SlotId, now: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let mut s = self.lock()?;
        Ok(s.link_slots
            .remove(&slot)
            .filter(|(_, expires_at)| *expires_at > now)
            .map(|(payload, _)| payload))
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let s = self.lock()?;
        Ok(StoreStats {
            accounts: s.accounts.len() as u64,
            devices: s.devices.len() as u64,
            groups: s.groups.len() as u64,
            bodies: s.bodies.len() as u64,
            mailbox_entries: s.devices.values().map(|d| d.mailbox.len() as u64).sum(),
        })
    }
}
