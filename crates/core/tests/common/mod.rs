//! A small in-memory world for engine tests: users with devices, a delivery step that
//! hands each message to every other member device, and helpers to look at state.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use sotto_core::content::Text;
use sotto_core::storage::{MemoryStorage, SottoProvider};
use sotto_core::{
    AccountKey, Content, Conversation, ConversationConfig, ConversationError, Envelope,
    IdentityKeyPair, Incoming, LocalDevice, MemoryTrustStore, OutgoingCommit, ReceivedMessage,
    Refusal, UserKeyPackages, generate_key_packages,
};
use sotto_proto::{ConversationId, DeviceId, DeviceList, MessageId, Username};

pub type Provider = SottoProvider<MemoryStorage>;

pub struct Dev {
    pub provider: Provider,
    pub local: LocalDevice,
    pub trust: MemoryTrustStore,
    pub convs: BTreeMap<ConversationId, Conversation>,
    /// Conversations this device was removed from, kept to show it cannot read on.
    pub left: BTreeMap<ConversationId, Conversation>,
    pub received: Vec<ReceivedMessage>,
}

pub struct User {
    pub name: Username,
    pub identity: IdentityKeyPair,
    pub account: AccountKey,
    pub devices: Vec<DeviceId>,
    pub list_version: u64,
}

#[derive(Default)]
pub struct World {
    pub config: ConversationConfig,
    pub users: BTreeMap<Username, User>,
    pub devs: BTreeMap<DeviceId, Dev>,
    counter: u64,
}

pub fn name(s: &str) -> Username {
    Username::parse(s).unwrap()
}

impl World {
    pub fn new() -> Self {
        Self::default()
    }

    fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// Registers a user with `n` devices; returns their device ids.
    pub fn register(&mut self, user: &str, n: usize) -> Vec<DeviceId> {
        let username = name(user);
        let provider = Provider::default();
        let identity = IdentityKeyPair::generate(provider_rand(&provider)).unwrap();
        let account =
            AccountKey::generate(provider_rand(&provider), &identity, &username, 1, 1).unwrap();
        self.users.insert(
            username.clone(),
            User {
                name: username.clone(),
                identity,
                account,
                devices: vec![],
                list_version: 0,
            },
        );
        (0..n).map(|_| self.add_device(user)).collect()
    }

    /// Creates and certifies one more device for an existing user.
    pub fn add_device(&mut self, user: &str) -> DeviceId {
        let username = name(user);
        let provider = Provider::default();
        let now = 1_700_000_000 + self.next();
        let u = self.users.get_mut(&username).unwrap();
        let local =
            LocalDevice::create(provider_rand(&provider), &u.account, "phone", now).unwrap();
        let id = local.device_id();
        u.devices.push(id);
        u.list_version += 1;
        let trust = MemoryTrustStore::default();
        self.devs.insert(
            id,
            Dev {
                provider,
                local,
                trust,
                convs: BTreeMap::new(),
                left: BTreeMap::new(),
                received: vec![],
            },
        );
        id
    }

    /// `user`'s account drops `device` from its list (a new, higher version).
    pub fn remove_device(&mut self, user: &str, device: DeviceId) {
        let u = self.users.get_mut(&name(user)).unwrap();
        u.devices.retain(|d| *d != device);
        u.list_version += 1;
    }

    pub fn device_list(&self, user: &str) -> DeviceList {
        let u = &self.users[&name(user)];
        let certs = u
            .devices
            .iter()
            .map(|d| self.devs[d].local.certificate().clone())
            .collect();
        u.account.sign_device_list(u.list_version, certs)
    }

    /// Claims one fresh key package per device of `user`.
    pub fn key_packages(&mut self, user: &str) -> UserKeyPackages {
        let devices = self.users[&name(user)].devices.clone();
        let config = self.config.clone();
        let key_packages = devices
            .iter()
            .map(|d| {
                let dev = &self.devs[d];
                generate_key_packages(&dev.provider, &dev.local, &config, 1)
                    .unwrap()
                    .one_time
                    .remove(0)
            })
            .collect();
        UserKeyPackages {
            device_list: self.device_list(user),
            key_packages,
        }
    }

    pub fn create(&mut self, by: DeviceId) -> ConversationId {
        let id =
            ConversationId::from_bytes(self.next().to_be_bytes().repeat(2).try_into().unwrap());
        let config = self.config.clone();
        let dev = self.devs.get_mut(&by).unwrap();
        let conv = Conversation::create(&dev.provider, &dev.local, id, &config).unwrap();
        dev.convs.insert(id, conv);
        id
    }

    /// Members of `conv` as `by` sees them.
    pub fn members(&self, by: DeviceId, conv: ConversationId) -> Vec<DeviceId> {
        self.devs[&by].convs[&conv].roster().unwrap().device_ids()
    }

    /// Confirms an outgoing commit at its author, hands it to every other old member and
    /// the Welcome to every added device. Panics if anyone fails.
    pub fn deliver_commit(&mut self, by: DeviceId, conv: ConversationId, out: OutgoingCommit) {
        let old_members = self.members(by, conv);
        // Everyone fetches the device lists of whoever the commit leaves in the group
        // (a client fetches them when the engine asks; reading a commit twice would
        // reuse its key, which only a client's database transaction can undo).
        let users: Vec<Username> = self.devs[&by].convs[&conv]
            .roster()
            .unwrap()
            .users()
            .into_keys()
            .chain(out.metadata.added.iter().map(|d| self.owner(*d)))
            .collect();
        for m in old_members.iter().chain(&out.metadata.added) {
            self.directory(*m, &users).unwrap();
        }
        {
            let dev = self.devs.get_mut(&by).unwrap();
            dev.convs
                .get_mut(&conv)
                .unwrap()
                .confirm_commit(&dev.provider)
                .unwrap();
        }
        for m in old_members.into_iter().filter(|m| *m != by) {
            match self.process(m, conv, &out.commit).unwrap() {
                Incoming::Commit { change, .. } => {
                    if change.removed_me {
                        let dev = self.devs.get_mut(&m).unwrap();
                        assert!(!dev.convs[&conv].is_active());
                        if let Some(old) = dev.convs.remove(&conv) {
                            dev.left.insert(conv, old);
                        }
                    }
                }
                other => panic!("expected a commit, got {other:?}"),
            }
        }
        for added in &out.metadata.added {
            let joined = self.join(*added, out.welcome.as_ref().unwrap()).unwrap();
            assert_eq!(joined, conv);
        }
    }

    /// Joins from a Welcome at `at`. (A client that lacks a member's device list gets
    /// `DeviceListsNeeded`, fetches and joins again inside one database transaction,
    /// since reading a Welcome consumes its KeyPackage; this in-memory world hands the
    /// lists out beforehand instead, see `deliver_commit`.)
    pub fn join(
        &mut self,
        at: DeviceId,
        welcome: &[u8],
    ) -> Result<ConversationId, ConversationError> {
        let config = self.config.clone();
        let dev = self.devs.get_mut(&at).unwrap();
        let joined = Conversation::join(&dev.provider, &mut dev.trust, welcome, &config)?;
        let id = joined.conversation.id();
        dev.convs.insert(id, joined.conversation);
        Ok(id)
    }

    /// The user a device belongs to.
    pub fn owner(&self, device: DeviceId) -> Username {
        self.devs[&device].local.certificate().username().clone()
    }

    /// The directory's part: `at` fetches and accepts these users' current device
    /// lists (pinning their keys on first use).
    pub fn directory(&mut self, at: DeviceId, users: &[Username]) -> Result<(), Refusal> {
        for u in users {
            let list = self.device_list(u.as_str());
            let dev = self.devs.get_mut(&at).unwrap();
            match sotto_core::accept_device_list(&mut dev.trust, &list) {
                Ok(_) => {}
                Err(sotto_core::TrustError::Refused(r)) => return Err(r),
                Err(e) => panic!("trust store: {e}"),
            }
        }
        Ok(())
    }

    pub fn add_users(&mut self, by: DeviceId, conv: ConversationId, users: &[&str]) {
        let kps: Vec<UserKeyPackages> = users.iter().map(|u| self.key_packages(u)).collect();
        let dev = self.devs.get_mut(&by).unwrap();
        let out = dev
            .convs
            .get_mut(&conv)
            .unwrap()
            .add_users(&dev.provider, &dev.local, &mut dev.trust, &kps)
            .unwrap();
        self.deliver_commit(by, conv, out);
    }

    pub fn remove_users(&mut self, by: DeviceId, conv: ConversationId, users: &[&str]) {
        let users: Vec<Username> = users.iter().map(|u| name(u)).collect();
        let dev = self.devs.get_mut(&by).unwrap();
        let out = dev
            .convs
            .get_mut(&conv)
            .unwrap()
            .remove_users(&dev.provider, &dev.local, &users)
            .unwrap();
        self.deliver_commit(by, conv, out);
    }

    pub fn self_update(&mut self, by: DeviceId, conv: ConversationId) {
        let dev = self.devs.get_mut(&by).unwrap();
        let out = dev
            .convs
            .get_mut(&conv)
            .unwrap()
            .self_update(&dev.provider, &dev.local)
            .unwrap();
        self.deliver_commit(by, conv, out);
    }

    pub fn envelope(&mut self, text: &str) -> Envelope {
        let n = self.next();
        let mut rand = [0u8; 10];
        rand[..8].copy_from_slice(&n.to_be_bytes());
        Envelope {
            id: MessageId::new_v7(1_700_000_000_000 + n, &rand),
            sent_at_ms: 1_700_000_000_000 + n,
            content: Content::Text(Text { body: text.into() }),
        }
    }

    /// Encrypts at `by`.
    pub fn encrypt(
        &mut self,
        by: DeviceId,
        conv: ConversationId,
        text: &str,
    ) -> (Envelope, Vec<u8>) {
        let env = self.envelope(text);
        let dev = self.devs.get_mut(&by).unwrap();
        let bytes = dev
            .convs
            .get_mut(&conv)
            .unwrap()
            .encrypt(&dev.provider, &dev.local, &env)
            .unwrap();
        (env, bytes)
    }

    /// Processes bytes at `at`.
    pub fn process(
        &mut self,
        at: DeviceId,
        conv: ConversationId,
        bytes: &[u8],
    ) -> Result<Incoming, ConversationError> {
        let dev = self.devs.get_mut(&at).unwrap();
        let c = dev.convs.get_mut(&conv).unwrap();
        let result = c.process(&dev.provider, &mut dev.trust, bytes);
        let dev = self.devs.get_mut(&at).unwrap();
        if let Ok(Incoming::Message(m)) = &result {
            dev.received.push(m.clone());
        }
        result
    }

    /// Sends text from `by` to every other member and checks each decrypts it.
    pub fn send(&mut self, by: DeviceId, conv: ConversationId, text: &str) -> Envelope {
        let (env, bytes) = self.encrypt(by, conv, text);
        for m in self.members(by, conv).into_iter().filter(|m| *m != by) {
            match self.process(m, conv, &bytes).unwrap() {
                Incoming::Message(msg) => {
                    assert_eq!(msg.envelope, env);
                    assert_eq!(msg.sender.device_id, by);
                }
                other => panic!("expected a message, got {other:?}"),
            }
        }
        env
    }

    /// Asserts every member of `conv` agrees on epoch, roster and epoch authenticator.
    pub fn assert_agree(&self, conv: ConversationId) {
        let holders: Vec<(&DeviceId, &Conversation)> = self
            .devs
            .iter()
            .filter_map(|(id, d)| d.convs.get(&conv).map(|c| (id, c)))
            .collect();
        let (first_id, first) = holders[0];
        let roster = first.roster().unwrap();
        for (id, c) in &holders {
            assert_eq!(c.epoch(), first.epoch(), "epoch of {id} vs {first_id}");
            assert_eq!(c.roster().unwrap(), roster, "roster of {id} vs {first_id}");
            assert_eq!(c.epoch_authenticator(), first.epoch_authenticator());
        }
        // Exactly the holders are members.
        let mut holder_ids: Vec<DeviceId> = holders.iter().map(|(id, _)| **id).collect();
        holder_ids.sort();
        assert_eq!(roster.device_ids(), holder_ids);
    }
}

/// The users whose device lists the engine needs before it can decide.
pub fn lists_wanted(e: &ConversationError) -> Vec<Username> {
    match e {
        ConversationError::DeviceListsNeeded(users) => users.clone(),
        ConversationError::Refused {
            refusal: Refusal::NotInDeviceList { username, .. },
            ..
        }
        | ConversationError::RefusedWelcome(Refusal::NotInDeviceList { username, .. }) => {
            vec![username.clone()]
        }
        _ => Vec::new(),
    }
}

fn provider_rand(p: &Provider) -> &impl openmls_traits::random::OpenMlsRand {
    openmls_traits::OpenMlsProvider::rand(p)
}
