//! A Sotto conversation survives saving its state to bytes and loading it again, and
//! state saved by an earlier version keeps loading (fixture in tests/data/conversation-v2;
//! v1 held certificates of the format before decision 0011, which no client accepts).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use openmls_traits::OpenMlsProvider;
use sotto_core::content::Text;
use sotto_core::storage::{MemoryBackend, MemoryStorage, SottoProvider};
use sotto_core::{
    AccountKey, ClaimedKeyPackage, Content, Conversation, ConversationConfig, DeviceSigner,
    Envelope, IdentityKeyPair, Incoming, LocalDevice, MemoryTrustStore, generate_key_packages,
};
use sotto_proto::{CertificateChain, ConversationId, MessageId, Username};

type Provider = SottoProvider<MemoryStorage>;

struct Device {
    provider: Provider,
    local: LocalDevice,
    trust: MemoryTrustStore,
}

impl Device {
    fn new(user: &str) -> Self {
        let provider = Provider::new(MemoryStorage::default());
        let identity = IdentityKeyPair::generate(provider.rand()).unwrap();
        let name = Username::parse(user).unwrap();
        let account = AccountKey::generate(provider.rand(), &identity, &name, 1, 1).unwrap();
        let local = LocalDevice::create(provider.rand(), &account, "phone", 1_700_000_000).unwrap();
        Self {
            provider,
            local,
            trust: MemoryTrustStore::default(),
        }
    }

    /// Everything a client persists for this device: MLS state and the device key.
    fn save(&self) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        (
            self.provider.storage().backend().snapshot(),
            self.local.signer().to_secret_bytes().to_vec(),
            self.local.chain().to_bytes(),
        )
    }

    fn restore(state: &[u8], secret: &[u8], cert: &[u8]) -> Self {
        let backend = MemoryBackend::from_snapshot(state).unwrap();
        let provider = Provider::new(MemoryStorage::new(backend));
        let signer = DeviceSigner::from_secret_bytes(secret.try_into().unwrap());
        let local = LocalDevice::new(CertificateChain::from_bytes(cert).unwrap(), signer).unwrap();
        Self {
            provider,
            local,
            trust: MemoryTrustStore::default(),
        }
    }
}

fn text(n: u64, body: &str) -> Envelope {
    Envelope {
        id: MessageId::new_v7(1_700_000_000_000 + n, &[n as u8; 10]),
        sent_at_ms: 1_700_000_000_000 + n,
        content: Content::Text(Text { body: body.into() }),
    }
}

const CONV: ConversationId = ConversationId::from_bytes([0x5a; 16]);

/// alice and bob talk, alice self-updates, and bob sends one message alice has not
/// processed yet.
fn scenario() -> (Device, Device, Vec<u8>) {
    let config = ConversationConfig::default();
    let mut alice = Device::new("alice");
    let mut bob = Device::new("bob");
    for chain in [alice.local.chain().clone(), bob.local.chain().clone()] {
        knows(&mut alice, &chain);
        knows(&mut bob, &chain);
    }
    let mut a = Conversation::create(&alice.provider, &alice.local, CONV, &config).unwrap();
    let kp = generate_key_packages(&bob.provider, &bob.local, &config, 1)
        .unwrap()
        .one_time
        .remove(0);
    let out = a
        .add_devices(
            &alice.provider,
            &alice.local,
            &mut alice.trust,
            &[ClaimedKeyPackage {
                username: bob.local.username().clone(),
                bytes: kp,
            }],
        )
        .unwrap();
    a.confirm_commit(&alice.provider).unwrap();
    let mut b = Conversation::join(
        &bob.provider,
        &mut bob.trust,
        out.welcome.as_ref().unwrap(),
        &config,
    )
    .unwrap()
    .conversation;
    let m = a
        .encrypt(&alice.provider, &alice.local, &text(1, "hello bob"))
        .unwrap();
    b.process(&bob.provider, &mut bob.trust, &m).unwrap();
    let up = a.self_update(&alice.provider, &alice.local).unwrap();
    a.confirm_commit(&alice.provider).unwrap();
    b.process(&bob.provider, &mut bob.trust, &up.commit)
        .unwrap();
    let pending = b
        .encrypt(&bob.provider, &bob.local, &text(2, "waiting for alice"))
        .unwrap();
    (alice, bob, pending)
}

/// What each device's client holds of the other's account: its current device list.
/// (The fixture keeps no identity secrets, so these lists are not signed: a trust
/// store is the client's own, already checked record and is not verified again.)
fn knows(device: &mut Device, chain: &CertificateChain) {
    let list = sotto_proto::DeviceList::from_parts(
        sotto_proto::DeviceListFields {
            username: chain.device.username().clone(),
            identity_key: *chain.identity_key(),
            account: chain.account.clone(),
            version: 1,
            devices: vec![chain.device.clone()],
        },
        [0; 64],
    );
    let user = chain.device.username();
    sotto_core::TrustStore::pin_identity(&mut device.trust, user, *chain.identity_key()).unwrap();
    sotto_core::TrustStore::record_device_list(&mut device.trust, &list).unwrap();
}

/// After a restore: alice reads bob's pending message, and both keep talking.
fn continue_after_restore(mut alice: Device, mut bob: Device, pending: &[u8]) {
    for chain in [alice.local.chain().clone(), bob.local.chain().clone()] {
        knows(&mut alice, &chain);
        knows(&mut bob, &chain);
    }
    let mut a = Conversation::load(&alice.provider, CONV)
        .unwrap()
        .expect("alice's conversation");
    let mut b = Conversation::load(&bob.provider, CONV)
        .unwrap()
        .expect("bob's conversation");
    assert_eq!(a.epoch(), 2);
    assert_eq!(a.epoch_authenticator(), b.epoch_authenticator());
    assert_eq!(a.roster().unwrap(), b.roster().unwrap());
    match a
        .process(&alice.provider, &mut alice.trust, pending)
        .unwrap()
    {
        Incoming::Message(m) => assert_eq!(m.envelope, text(2, "waiting for alice")),
        other => panic!("{other:?}"),
    }
    let reply = a
        .encrypt(&alice.provider, &alice.local, &text(3, "got it"))
        .unwrap();
    match b.process(&bob.provider, &mut bob.trust, &reply).unwrap() {
        Incoming::Message(m) => assert_eq!(m.envelope, text(3, "got it")),
        other => panic!("{other:?}"),
    }
    let up = b.self_update(&bob.provider, &bob.local).unwrap();
    b.confirm_commit(&bob.provider).unwrap();
    a.process(&alice.provider, &mut alice.trust, &up.commit)
        .unwrap();
    assert_eq!(a.epoch_authenticator(), b.epoch_authenticator());
}

#[test]
fn a_conversation_survives_a_save_and_reload() {
    let (alice, bob, pending) = scenario();
    let (sa, ka, ca) = alice.save();
    let (sb, kb, cb) = bob.save();
    drop((alice, bob));
    continue_after_restore(
        Device::restore(&sa, &ka, &ca),
        Device::restore(&sb, &kb, &cb),
        &pending,
    );
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/conversation-v2")
}

const FILES: [&str; 7] = [
    "alice.state",
    "alice.key",
    "alice.chain",
    "bob.state",
    "bob.key",
    "bob.chain",
    "pending.msg",
];

#[test]
fn state_saved_by_an_earlier_version_still_loads() {
    let dir = fixture_dir();
    let read: Vec<Vec<u8>> = FILES
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect();
    let alice = Device::restore(&read[0], &read[1], &read[2]);
    let bob = Device::restore(&read[3], &read[4], &read[5]);
    continue_after_restore(alice, bob, &read[6]);
}

/// Writes the fixture. Run only when the saved format changes on purpose, with a new
/// directory name (never overwrite an old fixture):
/// `cargo test -p sotto-core --test persistence -- --ignored write_fixture`
#[test]
#[ignore]
fn write_fixture() {
    let (alice, bob, pending) = scenario();
    let (sa, ka, ca) = alice.save();
    let (sb, kb, cb) = bob.save();
    let dir = fixture_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (f, bytes) in FILES.iter().zip([sa, ka, ca, sb, kb, cb, pending]) {
        std::fs::write(dir.join(f), bytes).unwrap();
    }
}
