//! `KvStorage` driving real OpenMLS groups, and the snapshot format.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
// OpenMLS's virtual-clients draft removes `add_members` and `self_update`.
#![cfg(not(feature = "virtual-clients-draft"))]

use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use proptest::prelude::*;
use sotto_core::storage::{
    CborCodec, Codec, JsonCodec, KvBackend as _, KvStorage, MemoryBackend, SnapshotError,
    SottoProvider,
};

const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

type Provider<C> = SottoProvider<KvStorage<MemoryBackend, C>>;

/// One device: its provider (crypto + storage) and signing identity.
struct Device<C: Codec> {
    provider: Provider<C>,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
}

impl<C: Codec> Device<C> {
    fn new(name: &str) -> Self {
        let provider: Provider<C> = SottoProvider::new(KvStorage::default());
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).unwrap();
        signer.store(provider.storage()).unwrap();
        let credential = CredentialWithKey {
            credential: BasicCredential::new(name.as_bytes().to_vec()).into(),
            signature_key: signer.public().into(),
        };
        Self {
            provider,
            signer,
            credential,
        }
    }

    fn stored_entries(&self) -> usize {
        self.provider.storage().backend().len()
    }

    fn create_group(&self) -> MlsGroup {
        MlsGroup::builder()
            .ciphersuite(CIPHERSUITE)
            .use_ratchet_tree_extension(true)
            .build(&self.provider, &self.signer, self.credential.clone())
            .unwrap()
    }

    fn key_package(&self) -> KeyPackage {
        KeyPackage::builder()
            .build(
                CIPHERSUITE,
                &self.provider,
                &self.signer,
                self.credential.clone(),
            )
            .unwrap()
            .key_package()
            .clone()
    }

    fn join(&self, welcome: MlsMessageOut) -> MlsGroup {
        let MlsMessageBodyIn::Welcome(welcome) = transmit(welcome).extract() else {
            panic!("expected a Welcome");
        };
        let config = MlsGroupJoinConfig::builder()
            .use_ratchet_tree_extension(true)
            .build();
        StagedWelcome::new_from_welcome(&self.provider, &config, welcome, None)
            .unwrap()
            .into_group(&self.provider)
            .unwrap()
    }

    fn send(&self, group: &mut MlsGroup, text: &str) -> MlsMessageOut {
        group
            .create_message(&self.provider, &self.signer, text.as_bytes())
            .unwrap()
    }

    fn process(&self, group: &mut MlsGroup, message: MlsMessageOut) -> ProcessedMessageContent {
        let message = transmit(message).try_into_protocol_message().unwrap();
        group
            .process_message(&self.provider, message)
            .unwrap()
            .into_content()
    }

    fn read(&self, group: &mut MlsGroup, message: MlsMessageOut) -> String {
        match self.process(group, message) {
            ProcessedMessageContent::ApplicationMessage(message) => {
                String::from_utf8(message.into_bytes()).unwrap()
            }
            other => panic!("expected an application message, got {other:?}"),
        }
    }

    fn apply_commit(&self, group: &mut MlsGroup, commit: MlsMessageOut) {
        match self.process(group, commit) {
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                group.merge_staged_commit(&self.provider, *staged).unwrap()
            }
            other => panic!("expected a commit, got {other:?}"),
        }
    }

    fn queue_proposal(&self, group: &mut MlsGroup, proposal: MlsMessageOut) {
        match self.process(group, proposal) {
            ProcessedMessageContent::ProposalMessage(proposal) => group
                .store_pending_proposal(self.provider.storage(), *proposal)
                .unwrap(),
            other => panic!("expected a proposal, got {other:?}"),
        }
    }
}

/// Serializes a message to bytes and parses it back, as the network would.
fn transmit(message: MlsMessageOut) -> MlsMessageIn {
    MlsMessageIn::tls_deserialize_exact(message.to_bytes().unwrap()).unwrap()
}

/// Alice and Bob talk, Alice's device restarts from a snapshot of her
/// storage, and the conversation goes on. Returns the snapshot size.
fn restart_from_snapshot<C: Codec>() -> usize {
    let alice = Device::<C>::new("alice");
    let bob = Device::<C>::new("bob");

    let mut alice_group = alice.create_group();
    let group_id = alice_group.group_id().clone();
    let (_commit, welcome, _) = alice_group
        .add_members(&alice.provider, &alice.signer, &[bob.key_package()])
        .unwrap();
    alice_group.merge_pending_commit(&alice.provider).unwrap();
    let mut bob_group = bob.join(welcome);

    let hi = alice.send(&mut alice_group, "hi bob");
    assert_eq!(bob.read(&mut bob_group, hi), "hi bob");
    let hello = bob.send(&mut bob_group, "hello alice");
    assert_eq!(alice.read(&mut alice_group, hello), "hello alice");

    let update = alice_group
        .self_update(
            &alice.provider,
            &alice.signer,
            LeafNodeParameters::default(),
        )
        .unwrap()
        .into_commit();
    alice_group.merge_pending_commit(&alice.provider).unwrap();
    bob.apply_commit(&mut bob_group, update);

    // In flight during the restart: a message from Bob, and a proposal
    // that sits in Alice's queue (OpenMLS refuses to send application
    // messages while proposals are pending, so the message goes first).
    let in_flight = bob.send(&mut bob_group, "still there?");
    let (proposal, _) = bob_group
        .propose_self_update(&bob.provider, &bob.signer, LeafNodeParameters::default())
        .unwrap();
    alice.queue_proposal(&mut alice_group, proposal);

    // Restart: only the snapshot bytes survive.
    let epoch = alice_group.epoch();
    let snapshot = alice.provider.storage().backend().snapshot();
    let Device {
        signer: alice_signer,
        credential: alice_credential,
        ..
    } = alice;
    drop(alice_group);
    let backend = MemoryBackend::from_snapshot(&snapshot).unwrap();
    let alice = Device {
        provider: SottoProvider::new(KvStorage::<_, C>::new(backend)),
        signer: alice_signer,
        credential: alice_credential,
    };
    let mut alice_group = MlsGroup::load(alice.provider.storage(), &group_id)
        .unwrap()
        .expect("the group is in the snapshot");
    assert_eq!(alice_group.epoch(), epoch);
    assert_eq!(alice_group.pending_proposals().count(), 1);

    assert_eq!(alice.read(&mut alice_group, in_flight), "still there?");

    // Committing the restored queue also needs Bob's stored key for his
    // proposed leaf.
    let (commit, _, _) = alice_group
        .commit_to_pending_proposals(&alice.provider, &alice.signer)
        .unwrap();
    alice_group.merge_pending_commit(&alice.provider).unwrap();
    bob.apply_commit(&mut bob_group, commit);
    assert_eq!(alice_group.epoch(), bob_group.epoch());

    let reply = alice.send(&mut alice_group, "yes");
    assert_eq!(bob.read(&mut bob_group, reply), "yes");
    let next = bob.send(&mut bob_group, "good");
    assert_eq!(alice.read(&mut alice_group, next), "good");

    snapshot.len()
}

#[test]
fn group_survives_snapshot_with_cbor() {
    restart_from_snapshot::<CborCodec>();
}

#[test]
fn group_survives_snapshot_with_json() {
    restart_from_snapshot::<JsonCodec>();
}

#[test]
fn cbor_snapshot_is_smaller_than_json() {
    let json = restart_from_snapshot::<JsonCodec>();
    let cbor = restart_from_snapshot::<CborCodec>();
    eprintln!(
        "snapshot after the scenario: JSON {json} bytes, CBOR {cbor} bytes ({:.0}%)",
        100.0 * cbor as f64 / json as f64
    );
    assert!(cbor < json);
}

/// `PastEpochDeletionPolicy` decodes through a `#[serde(untagged)]` enum,
/// which only self-describing formats support.
#[test]
fn join_config_round_trips_through_cbor() {
    let configs = [
        MlsGroupJoinConfig::default(),
        MlsGroupJoinConfig::builder()
            .max_past_epochs(5)
            .padding_size(64)
            .use_ratchet_tree_extension(true)
            .build(),
        MlsGroupJoinConfig::builder()
            .set_past_epoch_deletion_policy(PastEpochDeletionPolicy::KeepAll)
            .build(),
    ];
    for config in configs {
        let bytes = CborCodec::encode(&config).unwrap();
        let decoded: MlsGroupJoinConfig = CborCodec::decode(&bytes).unwrap();
        assert_eq!(decoded, config);
    }
}

/// Older OpenMLS stored the policy as an externally tagged enum under the
/// field name `max_past_epochs`; that shape must still decode from CBOR.
#[test]
fn legacy_join_config_decodes_from_cbor() {
    use ciborium::Value;

    let current = MlsGroupJoinConfig::builder().max_past_epochs(7).build();
    let mut value: Value = CborCodec::decode(&CborCodec::encode(&current).unwrap()).unwrap();
    let Value::Map(fields) = &mut value else {
        panic!("a struct encodes as a map");
    };
    let field = fields
        .iter_mut()
        .find(|(name, _)| name.as_text() == Some("past_epoch_deletion_policy"))
        .expect("policy field");
    *field = (
        Value::Text("max_past_epochs".into()),
        Value::Map(vec![(
            Value::Text("MaxEpochs".into()),
            Value::Integer(7.into()),
        )]),
    );
    let legacy = CborCodec::encode(&value).unwrap();
    let decoded: MlsGroupJoinConfig = CborCodec::decode(&legacy).unwrap();
    assert_eq!(decoded, current);
}

/// After `MlsGroup::delete`, no entry keyed by the group is left. Alice is
/// back to just her signature key; Bob keeps the HPKE key of his
/// never-committed update proposal, which OpenMLS keys by public key and
/// does not delete with the group.
#[test]
fn deleting_a_group_leaves_no_group_entries() {
    let alice = Device::<CborCodec>::new("alice");
    let bob = Device::<CborCodec>::new("bob");
    assert_eq!(alice.stored_entries(), 1, "just the signature key");
    assert_eq!(bob.stored_entries(), 1, "just the signature key");

    let mut alice_group = alice.create_group();
    let group_id = CborCodec::encode(alice_group.group_id()).unwrap();
    let (_commit, welcome, _) = alice_group
        .add_members(&alice.provider, &alice.signer, &[bob.key_package()])
        .unwrap();
    alice_group.merge_pending_commit(&alice.provider).unwrap();
    let mut bob_group = bob.join(welcome);
    let hi = alice.send(&mut alice_group, "hi");
    bob.read(&mut bob_group, hi);
    let update = bob_group
        .self_update(&bob.provider, &bob.signer, LeafNodeParameters::default())
        .unwrap()
        .into_commit();
    bob_group.merge_pending_commit(&bob.provider).unwrap();
    alice.apply_commit(&mut alice_group, update);
    let (proposal, _) = bob_group
        .propose_self_update(&bob.provider, &bob.signer, LeafNodeParameters::default())
        .unwrap();
    alice.queue_proposal(&mut alice_group, proposal);
    assert!(alice.stored_entries() > 5);

    let mentions_group = |key: &Vec<u8>| key.windows(group_id.len()).any(|w| w == group_id);
    for (device, group) in [(&alice, &mut alice_group), (&bob, &mut bob_group)] {
        let keys = device.provider.storage().backend().keys();
        assert!(keys.iter().filter(|key| mentions_group(key)).count() > 5);
        group.delete(device.provider.storage()).unwrap();
        let keys = device.provider.storage().backend().keys();
        assert!(
            !keys.iter().any(mentions_group),
            "group entries left behind"
        );
    }

    assert_eq!(alice.stored_entries(), 1);
    let mut labels: Vec<String> = bob
        .provider
        .storage()
        .backend()
        .keys()
        .iter()
        .map(|key| String::from_utf8_lossy(&key[1..=usize::from(key[0])]).into_owned())
        .collect();
    labels.sort();
    assert_eq!(labels, ["encryption_key", "signature_key"]);
}

/// A snapshot committed to the repository pins the stored format: labels,
/// key layout, codec and OpenMLS's own serde shapes. If this test fails, a
/// change would make existing Sotto installations unable to load their
/// groups; add a migration instead of regenerating the file.
const GOLDEN_SNAPSHOT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/storage-v1-cbor.snapshot"
);
const GOLDEN_GROUP_ID: &[u8] = b"sotto golden group";

#[test]
fn golden_snapshot_still_loads() {
    let bytes = std::fs::read(GOLDEN_SNAPSHOT).unwrap();
    let storage = KvStorage::<_, CborCodec>::new(MemoryBackend::from_snapshot(&bytes).unwrap());
    let provider = SottoProvider::new(storage);
    let mut group = MlsGroup::load(provider.storage(), &GroupId::from_slice(GOLDEN_GROUP_ID))
        .unwrap()
        .expect("the golden group is in the snapshot");
    assert_eq!(group.epoch(), GroupEpoch::from(2));
    assert_eq!(group.members().count(), 2);

    let public_key = group
        .own_leaf_node()
        .unwrap()
        .signature_key()
        .as_slice()
        .to_vec();
    let signer = SignatureKeyPair::read(
        provider.storage(),
        &public_key,
        CIPHERSUITE.signature_algorithm(),
    )
    .expect("the signature key is in the snapshot");
    group
        .create_message(&provider, &signer, b"still works")
        .unwrap();
}

/// Regenerates the golden snapshot; run only on purpose, with
/// `cargo test -p sotto-core --test storage -- --ignored write_golden_snapshot`.
#[test]
#[ignore = "rewrites tests/data; run on purpose only"]
fn write_golden_snapshot() {
    let alice = Device::<CborCodec>::new("alice");
    let bob = Device::<CborCodec>::new("bob");
    let mut group = MlsGroup::builder()
        .ciphersuite(CIPHERSUITE)
        .with_group_id(GroupId::from_slice(GOLDEN_GROUP_ID))
        .build(&alice.provider, &alice.signer, alice.credential.clone())
        .unwrap();
    group
        .add_members(&alice.provider, &alice.signer, &[bob.key_package()])
        .unwrap();
    group.merge_pending_commit(&alice.provider).unwrap();
    group
        .self_update(
            &alice.provider,
            &alice.signer,
            LeafNodeParameters::default(),
        )
        .unwrap();
    group.merge_pending_commit(&alice.provider).unwrap();
    let snapshot = alice.provider.storage().backend().snapshot();
    std::fs::create_dir_all(std::path::Path::new(GOLDEN_SNAPSHOT).parent().unwrap()).unwrap();
    std::fs::write(GOLDEN_SNAPSHOT, snapshot).unwrap();
}

#[test]
fn malformed_snapshots_are_errors() {
    let alice = Device::<CborCodec>::new("alice");
    let _group = alice.create_group();
    let snapshot = alice.provider.storage().backend().snapshot();
    assert!(MemoryBackend::from_snapshot(&snapshot).is_ok());

    for cut in [0, 3, 8, 15, 16, 40, snapshot.len() / 2, snapshot.len() - 1] {
        assert!(
            MemoryBackend::from_snapshot(&snapshot[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    let mut wrong_magic = snapshot.clone();
    wrong_magic[..7].copy_from_slice(b"SOTTOKW");
    assert_eq!(
        MemoryBackend::from_snapshot(&wrong_magic).unwrap_err(),
        SnapshotError::BadMagic
    );
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = MemoryBackend::from_snapshot(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_the_header_never_panic(
        tail in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = b"SOTTOKV\x01".to_vec();
        bytes.extend_from_slice(&tail);
        let _ = MemoryBackend::from_snapshot(&bytes);
    }

    #[test]
    fn corrupted_snapshots_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let backend = MemoryBackend::new();
        backend.put(b"key one", b"value one").unwrap();
        backend.put(b"key two", &[0u8; 40]).unwrap();
        let mut bytes = backend.snapshot();
        for (index, byte) in flips {
            let i = index.index(bytes.len());
            bytes[i] ^= byte;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        if let Ok(restored) = MemoryBackend::from_snapshot(&bytes) {
            // Whatever loads snapshots again to something that loads the same.
            let again = restored.snapshot();
            prop_assert_eq!(MemoryBackend::from_snapshot(&again).unwrap().snapshot(), again);
        }
    }
}
