//! Each attack from the threat model, tried and shown to fail. The attacker is either
//! the server (it hands out key packages and device lists) or a compromised member
//! device that drives OpenMLS directly, bypassing Sotto's checks on its own side.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{World, name};
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::{
    BasicCredential, CredentialWithKey, GroupId, KeyPackage, LeafNodeParameters, MlsGroup,
};
use openmls_traits::OpenMlsProvider;
use proptest::prelude::*;
use sotto_core::trust::Refusal;
use sotto_core::{
    AccountKey, ClaimedKeyPackage, ConversationError, DeviceSigner, IdentityKeyPair, Incoming,
    LocalDevice, TrustStore, UserKeyPackages,
};
use sotto_proto::{CertError, ConversationId, DeviceId};

/// alice, bob and carol in one conversation.
fn trio() -> (World, ConversationId, DeviceId, DeviceId, DeviceId) {
    let mut w = World::new();
    let alice = w.register("alice", 1)[0];
    let bob = w.register("bob", 1)[0];
    let carol = w.register("carol", 1)[0];
    let conv = w.create(alice);
    w.add_users(alice, conv, &["bob", "carol"]);
    (w, conv, alice, bob, carol)
}

/// The raw OpenMLS group of a device: what a compromised client can drive directly.
fn raw_group(w: &World, dev: DeviceId, conv: ConversationId) -> MlsGroup {
    MlsGroup::load(
        w.devs[&dev].provider.storage(),
        &GroupId::from_slice(conv.as_bytes()),
    )
    .unwrap()
    .unwrap()
}

/// A key package built with OpenMLS directly, with any credential and any signer.
fn forged_key_package(w: &World, cwk: CredentialWithKey, signer: &DeviceSigner) -> KeyPackage {
    let provider = openmls_rust_crypto::OpenMlsRustCrypto::default();
    KeyPackage::builder()
        .build(w.config.ciphersuite, &provider, signer, cwk)
        .unwrap()
        .key_package()
        .clone()
}

/// Asserts `result` is a refusal matching `check`, surfaced as a security event.
fn assert_refused(result: Result<Incoming, ConversationError>, check: impl Fn(&Refusal) -> bool) {
    let err = result.expect_err("the attack must be refused");
    let event = err
        .security_event()
        .unwrap_or_else(|| panic!("not a security event: {err}"));
    assert!(
        check(&event.refusal),
        "unexpected refusal: {:?}",
        event.refusal
    );
}

/// Compromised alice adds `kp` through raw OpenMLS; bob and carol must refuse the commit
/// and stay in the old epoch, still able to talk to each other.
fn ghost_commit_is_refused(kp: KeyPackage, check: impl Fn(&Refusal) -> bool) {
    let (mut w, conv, alice, bob, carol) = trio();
    let epoch = w.devs[&bob].convs[&conv].epoch();
    let auth = w.devs[&bob].convs[&conv].epoch_authenticator();
    let mut group = raw_group(&w, alice, conv);
    let (commit, _welcome, _) = group
        .add_members(
            &w.devs[&alice].provider,
            w.devs[&alice].local.signer(),
            &[kp],
        )
        .unwrap();
    let commit = commit.to_bytes().unwrap();
    for victim in [bob, carol] {
        assert_refused(w.process(victim, conv, &commit), &check);
        let c = &w.devs[&victim].convs[&conv];
        assert_eq!(c.epoch(), epoch, "state advanced after a refused commit");
        assert_eq!(c.epoch_authenticator(), auth);
        assert_eq!(c.roster().unwrap().devices().len(), 3);
    }
    // The honest members are intact and still agree.
    w.send(bob, conv, "did you see that?");
    w.send(carol, conv, "yes, refused");
}

#[test]
fn an_uncertified_leaf_is_refused() {
    let w = World::new();
    let signer =
        DeviceSigner::generate(openmls_rust_crypto::OpenMlsRustCrypto::default().rand()).unwrap();
    let cwk = CredentialWithKey {
        credential: BasicCredential::new(b"ghost".to_vec()).into(),
        signature_key: signer.public_key().to_vec().into(),
    };
    ghost_commit_is_refused(forged_key_package(&w, cwk, &signer), |r| {
        matches!(r, Refusal::NotACertificate)
    });
}

#[test]
fn a_real_certificate_on_another_key_is_refused() {
    // The ghost reuses bob's genuine (public) certificate with its own key.
    let (w, _, _, bob, _) = trio();
    let signer =
        DeviceSigner::generate(openmls_rust_crypto::OpenMlsRustCrypto::default().rand()).unwrap();
    let cwk = CredentialWithKey {
        credential: BasicCredential::new(w.devs[&bob].local.chain().to_bytes()).into(),
        signature_key: signer.public_key().to_vec().into(),
    };
    ghost_commit_is_refused(forged_key_package(&w, cwk, &signer), |r| {
        matches!(r, Refusal::UncertifiedKey { .. })
    });
}

#[test]
fn a_certificate_signed_by_another_account_is_refused() {
    // Mallory certifies a device "of bob" with her own root and account key.
    let w = World::new();
    let p = openmls_rust_crypto::OpenMlsRustCrypto::default();
    let mallory = IdentityKeyPair::generate(p.rand()).unwrap();
    let account = AccountKey::generate(p.rand(), &mallory, &name("bob"), 1, 1).unwrap();
    let ghost = LocalDevice::create(p.rand(), &account, "ghost", 1).unwrap();
    let kp = forged_key_package(&w, ghost.credential_with_key(), ghost.signer());
    ghost_commit_is_refused(
        kp,
        |r| matches!(r, Refusal::IdentityKeyChanged { username, .. } if username.as_str() == "bob"),
    );
}

#[test]
fn a_certificate_naming_the_right_key_but_signed_by_another_is_refused() {
    let (w, _, _, bob, _) = trio();
    let p = openmls_rust_crypto::OpenMlsRustCrypto::default();
    let mallory = IdentityKeyPair::generate(p.rand()).unwrap();
    let mallory_account = AccountKey::generate(p.rand(), &mallory, &name("bob"), 1, 1).unwrap();
    let signer = DeviceSigner::generate(p.rand()).unwrap();
    // The chain shows bob's real account-key certificate, but the device certificate
    // naming bob's account key is signed by mallory's.
    let bob_chain = w.devs[&bob].local.chain().clone();
    let forged_by_mallory =
        mallory_account.certify_device(DeviceId::from_bytes([7; 16]), signer.public_key(), "", 1);
    let mut bytes = forged_by_mallory.to_bytes();
    // Swap in bob's account key (offset: version 1 + len 2 + "bob" 3 + id 16 + key 32).
    bytes[54..86].copy_from_slice(bob_chain.account.account_key().as_bytes());
    let chain = sotto_proto::CertificateChain {
        account: bob_chain.account,
        device: sotto_proto::DeviceCertificate::from_bytes(&bytes).unwrap(),
    };
    let cwk = CredentialWithKey {
        credential: BasicCredential::new(chain.to_bytes()).into(),
        signature_key: signer.public_key().to_vec().into(),
    };
    ghost_commit_is_refused(forged_key_package(&w, cwk, &signer), |r| {
        matches!(r, Refusal::BadCertificate(CertError::BadSignature { .. }))
    });
}

#[test]
fn a_welcome_into_a_group_with_a_ghost_is_refused() {
    let (mut w, conv, alice, _, _) = trio();
    let dave = w.register("dave", 1)[0];
    let p = openmls_rust_crypto::OpenMlsRustCrypto::default();
    let signer = DeviceSigner::generate(p.rand()).unwrap();
    let ghost = forged_key_package(
        &w,
        CredentialWithKey {
            credential: BasicCredential::new(b"ghost".to_vec()).into(),
            signature_key: signer.public_key().to_vec().into(),
        },
        &signer,
    );
    let dave_kp = w.key_packages("dave").key_packages.remove(0);
    let dave_kp = <openmls::prelude::KeyPackageIn as openmls::prelude::tls_codec::Deserialize>::tls_deserialize_exact(&dave_kp)
        .unwrap()
        .validate(w.devs[&dave].provider.crypto(), openmls::prelude::ProtocolVersion::Mls10)
        .unwrap();
    let mut group = raw_group(&w, alice, conv);
    let (_, welcome, _) = group
        .add_members(
            &w.devs[&alice].provider,
            w.devs[&alice].local.signer(),
            &[ghost, dave_kp],
        )
        .unwrap();
    let welcome = welcome.tls_serialize_detached().unwrap();
    let config = w.config.clone();
    let dev = w.devs.get_mut(&dave).unwrap();
    let err = sotto_core::Conversation::join(&dev.provider, &mut dev.trust, &welcome, &config)
        .expect_err("a Welcome with a ghost must be refused");
    let event = err.security_event().unwrap();
    assert_eq!(event.conversation, None);
    assert_eq!(event.refusal, Refusal::NotACertificate);
    // Nothing was pinned from the refused Welcome.
    assert_eq!(dev.trust.pinned_identity(&name("alice")).unwrap(), None);
}

#[test]
fn a_leaf_update_that_changes_the_device_is_refused() {
    let mut w = World::new();
    let a = w.register("alice", 2);
    let bob = w.register("bob", 1)[0];
    let conv = w.create(a[0]);
    w.add_users(a[0], conv, &["bob"]);
    // alice's first device updates its leaf to carry her second device's certificate
    // and key: certified, but a different device taking over the leaf.
    let second_cwk = w.devs[&a[1]].local.credential_with_key();
    let second_signer =
        DeviceSigner::from_secret_bytes(&w.devs[&a[1]].local.signer().to_secret_bytes());
    let mut group = raw_group(&w, a[0], conv);
    let new_signer = openmls::prelude::NewSignerBundle {
        signer: &second_signer,
        credential_with_key: second_cwk,
    };
    let bundle = group
        .self_update_with_new_signer(
            &w.devs[&a[0]].provider,
            w.devs[&a[0]].local.signer(),
            new_signer,
            LeafNodeParameters::default(),
        )
        .unwrap();
    let commit = bundle.into_commit().to_bytes().unwrap();
    let epoch = w.devs[&bob].convs[&conv].epoch();
    assert_refused(w.process(bob, conv, &commit), |r| {
        matches!(r, Refusal::IdentityChangedInUpdate { .. })
    });
    assert_eq!(w.devs[&bob].convs[&conv].epoch(), epoch);
}

#[test]
fn key_substitution_by_the_server_is_refused() {
    let mut w = World::new();
    let alice = w.register("alice", 1)[0];
    w.register("bob", 1);
    let first = w.create(alice);
    w.add_users(alice, first, &["bob"]); // alice pins bob's identity key here
    // The server re-registers "bob" with a key of its own and serves that account.
    w.users.remove(&name("bob"));
    w.register("bob", 1);
    let substituted = w.key_packages("bob");
    let second = w.create(alice);
    let dev = w.devs.get_mut(&alice).unwrap();
    let pinned = dev.trust.pinned_identity(&name("bob")).unwrap();
    let err = dev
        .convs
        .get_mut(&second)
        .unwrap()
        .add_users(
            &dev.provider,
            &dev.local,
            &mut dev.trust,
            std::slice::from_ref(&substituted),
        )
        .unwrap_err();
    assert!(
        matches!(
            err.security_event().unwrap().refusal,
            Refusal::IdentityKeyChanged { .. }
        ),
        "{err}"
    );
    // Claimed key packages without the device list: refused the same way.
    let claimed = ClaimedKeyPackage {
        username: name("bob"),
        bytes: substituted.key_packages[0].clone(),
    };
    let err = dev
        .convs
        .get_mut(&second)
        .unwrap()
        .add_devices(&dev.provider, &dev.local, &mut dev.trust, &[claimed])
        .unwrap_err();
    assert!(matches!(
        err.security_event().unwrap().refusal,
        Refusal::IdentityKeyChanged { .. }
    ));
    assert_eq!(
        dev.trust.pinned_identity(&name("bob")).unwrap(),
        pinned,
        "the pin must not move"
    );
    assert_eq!(dev.convs[&second].epoch(), 0);
}

#[test]
fn a_key_package_for_someone_else_is_refused() {
    let mut w = World::new();
    let alice = w.register("alice", 1)[0];
    w.register("bob", 1);
    w.register("carol", 1);
    let conv = w.create(alice);
    // The server answers a claim for bob with carol's key package.
    let carol_kp = w.key_packages("carol").key_packages.remove(0);
    let dev = w.devs.get_mut(&alice).unwrap();
    let err = dev
        .convs
        .get_mut(&conv)
        .unwrap()
        .add_devices(
            &dev.provider,
            &dev.local,
            &mut dev.trust,
            &[ClaimedKeyPackage {
                username: name("bob"),
                bytes: carol_kp,
            }],
        )
        .unwrap_err();
    assert!(matches!(
        err.security_event().unwrap().refusal,
        Refusal::WrongAccount { .. }
    ));
}

#[test]
fn a_device_list_rollback_is_refused() {
    let mut w = World::new();
    let alice = w.register("alice", 1)[0];
    w.register("bob", 1);
    let old: UserKeyPackages = w.key_packages("bob"); // list version 1
    w.add_device("bob"); // version 2
    let new = w.key_packages("bob");
    let conv = w.create(alice);
    let dev = w.devs.get_mut(&alice).unwrap();
    sotto_core::accept_device_list(&mut dev.trust, &new.device_list).unwrap();
    let err = dev
        .convs
        .get_mut(&conv)
        .unwrap()
        .add_users(&dev.provider, &dev.local, &mut dev.trust, &[old])
        .unwrap_err();
    assert!(matches!(
        err.security_event().unwrap().refusal,
        Refusal::BadCertificate(CertError::Rollback {
            seen: 2,
            offered: 1,
            ..
        })
    ));
}

#[test]
fn a_key_package_for_a_device_missing_from_the_list_is_refused() {
    let mut w = World::new();
    let alice = w.register("alice", 1)[0];
    w.register("bob", 1);
    let listed = w.key_packages("bob");
    w.add_device("bob");
    let mut with_extra = w.key_packages("bob");
    // The server serves the old list with a key package of a device not on it.
    with_extra.device_list = listed.device_list;
    let conv = w.create(alice);
    let dev = w.devs.get_mut(&alice).unwrap();
    let err = dev
        .convs
        .get_mut(&conv)
        .unwrap()
        .add_users(&dev.provider, &dev.local, &mut dev.trust, &[with_extra])
        .unwrap_err();
    assert!(matches!(
        err.security_event().unwrap().refusal,
        Refusal::NotInDeviceList { .. }
    ));
}

#[test]
fn a_replayed_application_message_is_refused() {
    let (mut w, conv, alice, bob, _) = trio();
    let (_, bytes) = w.encrypt(alice, conv, "once");
    assert!(matches!(
        w.process(bob, conv, &bytes).unwrap(),
        Incoming::Message(_)
    ));
    assert!(
        w.process(bob, conv, &bytes).is_err(),
        "a replay must not decrypt again"
    );
    assert_eq!(w.devs[&bob].received.len(), 1);
}

#[test]
fn replayed_and_stale_commits_are_refused() {
    let (mut w, conv, alice, bob, carol) = trio();
    // Bob and carol both commit for the same epoch; the server orders bob's first.
    let dev = w.devs.get_mut(&carol).unwrap();
    let losing = dev
        .convs
        .get_mut(&conv)
        .unwrap()
        .self_update(&dev.provider, &dev.local)
        .unwrap();
    let dev = w.devs.get_mut(&bob).unwrap();
    let winning = dev
        .convs
        .get_mut(&conv)
        .unwrap()
        .self_update(&dev.provider, &dev.local)
        .unwrap();
    assert_eq!(losing.metadata.epoch, winning.metadata.epoch);
    // Deliver the winner to alice; carol discards hers and applies the winner.
    dev.convs
        .get_mut(&conv)
        .unwrap()
        .confirm_commit(&dev.provider)
        .unwrap();
    w.process(alice, conv, &winning.commit).unwrap();
    let dev = w.devs.get_mut(&carol).unwrap();
    let c = dev.convs.get_mut(&conv).unwrap();
    c.discard_commit(&dev.provider).unwrap();
    c.process(&dev.provider, &mut dev.trust, &winning.commit)
        .unwrap();
    w.assert_agree(conv);
    let epoch = w.devs[&alice].convs[&conv].epoch();

    // The losing commit reaches alice late: stale.
    assert!(matches!(
        w.process(alice, conv, &losing.commit),
        Err(ConversationError::StaleCommit { .. })
    ));
    // The winning commit replayed: stale too.
    assert!(matches!(
        w.process(alice, conv, &winning.commit),
        Err(ConversationError::StaleCommit { .. })
    ));
    assert_eq!(w.devs[&alice].convs[&conv].epoch(), epoch);
    w.send(carol, conv, "all in step");
}

#[test]
fn tampered_ciphertext_is_refused_and_harms_nothing() {
    let (mut w, conv, alice, bob, _) = trio();
    let (env, bytes) = w.encrypt(alice, conv, "do not change me");
    for i in [bytes.len() - 1, bytes.len() / 2, 30] {
        let mut tampered = bytes.clone();
        tampered[i] ^= 0x01;
        assert!(
            w.process(bob, conv, &tampered).is_err(),
            "tamper at {i} accepted"
        );
    }
    match w.process(bob, conv, &bytes).unwrap() {
        Incoming::Message(m) => assert_eq!(m.envelope, env),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_message_for_a_future_epoch_is_reported_as_such() {
    let (mut w, conv, alice, bob, carol) = trio();
    // Carol misses bob's commit, then gets alice's message of the new epoch.
    let dev = w.devs.get_mut(&bob).unwrap();
    let out = dev
        .convs
        .get_mut(&conv)
        .unwrap()
        .self_update(&dev.provider, &dev.local)
        .unwrap();
    dev.convs
        .get_mut(&conv)
        .unwrap()
        .confirm_commit(&dev.provider)
        .unwrap();
    w.process(alice, conv, &out.commit).unwrap();
    let (_, msg) = w.encrypt(alice, conv, "new epoch");
    assert!(matches!(
        w.process(carol, conv, &msg),
        Err(ConversationError::FutureEpoch { .. })
    ));
    // After the commit, it decrypts.
    w.process(carol, conv, &out.commit).unwrap();
    assert!(matches!(
        w.process(carol, conv, &msg).unwrap(),
        Incoming::Message(_)
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn garbage_and_truncations_are_errors_not_panics(
        junk in proptest::collection::vec(any::<u8>(), 0..400),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let (mut w, conv, alice, bob, _) = trio();
        let (_, bytes) = w.encrypt(alice, conv, "hello");
        prop_assert!(w.process(bob, conv, &junk).is_err());
        let n = cut.index(bytes.len());
        prop_assert!(w.process(bob, conv, &bytes[..n]).is_err());
        let mut flipped = bytes.clone();
        flipped[flip.index(bytes.len())] ^= 0x80;
        prop_assert!(w.process(bob, conv, &flipped).is_err());
        let config = w.config.clone();
        let dev = w.devs.get_mut(&bob).unwrap();
        prop_assert!(sotto_core::Conversation::join(&dev.provider, &mut dev.trust, &junk, &config).is_err());
        // Bob is unharmed.
        prop_assert!(matches!(w.process(bob, conv, &bytes), Ok(Incoming::Message(_))));
    }
}

/// A member proposes removing another user (other clients commit queued proposals on
/// their own, so this would be a silent removal): refused. Proposing the removal of its
/// own devices (leaving) is accepted.
#[test]
fn a_proposal_to_remove_another_user_is_refused_but_leaving_is_accepted() {
    let (mut w, conv, alice, bob, carol) = trio();
    let carol_leaf = w.devs[&alice].convs[&conv]
        .roster()
        .unwrap()
        .devices()
        .iter()
        .find(|e| e.device_id == carol)
        .unwrap()
        .leaf;
    let mut group = raw_group(&w, bob, conv);
    let (proposal, _) = group
        .propose_remove_member(
            &w.devs[&bob].provider,
            w.devs[&bob].local.signer(),
            openmls::prelude::LeafNodeIndex::new(carol_leaf),
        )
        .unwrap();
    let bytes = proposal.tls_serialize_detached().unwrap();
    assert_refused(
        w.process(alice, conv, &bytes),
        |r| matches!(r, Refusal::UnsupportedOperation(what) if what.contains("remove another user")),
    );

    // carol leaves: her proposal is queued at alice, who commits it.
    let dev = w.devs.get_mut(&carol).unwrap();
    let proposals = dev
        .convs
        .get_mut(&conv)
        .unwrap()
        .leave(&dev.provider, &dev.local)
        .unwrap();
    assert_eq!(proposals.len(), 1);
    assert!(matches!(
        w.process(alice, conv, &proposals[0]).unwrap(),
        Incoming::Proposal { .. }
    ));
    let dev = w.devs.get_mut(&alice).unwrap();
    let out = dev
        .convs
        .get_mut(&conv)
        .unwrap()
        .commit_pending_proposals(&dev.provider, &dev.local)
        .unwrap()
        .expect("a commit for carol's leave");
    assert_eq!(out.metadata.removed, vec![carol]);
}

/// Issue 12, first demonstration: bob removed a device from his account; the server
/// kept one of its KeyPackages and hands it out beside bob's current ones. alice adds
/// bob device by device (the path taken when bob is partly present, or when the count
/// of KeyPackages differs from the list): the removed device is refused, and nothing
/// is committed.
#[test]
fn a_removed_devices_key_package_is_refused_on_every_add_path() {
    let mut w = World::new();
    let alice = w.register("alice", 1)[0];
    let bob = w.register("bob", 2);
    let stale = w.key_packages("bob");
    // bob removes his second device: a new list without it.
    w.remove_device("bob", bob[1]);
    let current = w.key_packages("bob");
    let conv = w.create(alice);
    w.directory(alice, &[name("bob")]).unwrap();
    let claimed: Vec<ClaimedKeyPackage> = current
        .key_packages
        .iter()
        .chain(&stale.key_packages[1..])
        .map(|kp| ClaimedKeyPackage {
            username: name("bob"),
            bytes: kp.clone(),
        })
        .collect();
    let epoch = w.devs[&alice].convs[&conv].epoch();
    let dev = w.devs.get_mut(&alice).unwrap();
    let conversation = dev.convs.get_mut(&conv).unwrap();
    let err = conversation
        .add_devices(&dev.provider, &dev.local, &mut dev.trust, &claimed)
        .unwrap_err();
    assert!(
        matches!(
            err.security_event().map(|e| e.refusal),
            Some(Refusal::NotInDeviceList { device, .. }) if device == bob[1]
        ),
        "{err}"
    );
    // The whole-user path refuses it too.
    let err = conversation
        .add_users(
            &dev.provider,
            &dev.local,
            &mut dev.trust,
            &[UserKeyPackages {
                device_list: current.device_list.clone(),
                key_packages: claimed.iter().map(|c| c.bytes.clone()).collect(),
            }],
        )
        .unwrap_err();
    assert!(
        matches!(
            err.security_event().map(|e| e.refusal),
            Some(Refusal::NotInDeviceList { .. })
        ),
        "{err}"
    );
    assert_eq!(conversation.epoch(), epoch, "nothing was committed");
    // bob's current device alone is added.
    w.add_users(alice, conv, &["bob"]);
    assert_eq!(w.members(alice, conv), {
        let mut m = vec![alice, bob[0]];
        m.sort();
        m
    });
}

/// A group member's device removed from its account stays a member until someone
/// commits its removal: every client sees it as unlisted (and removes it before
/// sending, see the client's reconciliation).
#[test]
fn a_device_removed_from_its_account_is_reported_as_unlisted() {
    let mut w = World::new();
    let alice = w.register("alice", 1)[0];
    let bob = w.register("bob", 2);
    let conv = w.create(alice);
    w.add_users(alice, conv, &["bob"]);
    let conversation = &w.devs[&alice].convs[&conv];
    assert!(
        conversation
            .unlisted(&w.devs[&alice].trust)
            .unwrap()
            .is_empty()
    );
    w.remove_device("bob", bob[1]);
    // Until alice holds bob's new list, nothing looks wrong; with it, bob's second
    // device is unlisted.
    w.directory(alice, &[name("bob")]).unwrap();
    let conversation = &w.devs[&alice].convs[&conv];
    let unlisted = conversation.unlisted(&w.devs[&alice].trust).unwrap();
    assert_eq!(
        unlisted.iter().map(|e| e.device_id).collect::<Vec<_>>(),
        vec![bob[1]]
    );
    // A device that holds no list for a member asks for it first.
    let fresh = w.add_device("alice");
    let copy = sotto_core::Conversation::load(&w.devs[&alice].provider, conv)
        .unwrap()
        .unwrap();
    w.devs.get_mut(&fresh).unwrap().convs.insert(conv, copy);
    assert!(matches!(
        w.devs[&fresh].convs[&conv].unlisted(&w.devs[&fresh].trust),
        Err(ConversationError::DeviceListsNeeded(_))
    ));
}

/// Sotto adds and updates members only by commit: a standalone Add proposal from a
/// member (which whoever commits next would carry out) is refused, even for a
/// properly certified and listed device.
#[test]
fn a_standalone_add_proposal_is_refused() {
    let (mut w, conv, alice, bob, _) = trio();
    let dave = w.register("dave", 1)[0];
    let kp = {
        let d = &w.devs[&dave];
        let bytes = sotto_core::generate_key_packages(&d.provider, &d.local, &w.config, 1)
            .unwrap()
            .one_time
            .remove(0);
        <openmls::prelude::KeyPackageIn as openmls::prelude::tls_codec::Deserialize>::tls_deserialize_exact(bytes.as_slice())
            .unwrap()
            .validate(d.provider.crypto(), openmls::prelude::ProtocolVersion::Mls10)
            .unwrap()
    };
    let mut group = raw_group(&w, bob, conv);
    let (proposal, _) = group
        .propose_add_member(&w.devs[&bob].provider, w.devs[&bob].local.signer(), &kp)
        .unwrap();
    let bytes = proposal.tls_serialize_detached().unwrap();
    w.directory(alice, &[name("dave")]).unwrap();
    assert_refused(
        w.process(alice, conv, &bytes),
        |r| matches!(r, Refusal::UnsupportedOperation(what) if what.contains("standalone add")),
    );
}

/// Review of decision 0011: a leaf that borrows a listed device's id but carries a
/// certificate the list does not hold (made with a revoked account key) must not
/// count as that device. `missing` still asks for the real device, `unlisted` names
/// the impostor, and one commit replaces it although both share the id.
#[test]
fn a_leaf_borrowing_a_listed_devices_id_does_not_stand_in_for_it() {
    let mut w = World::new();
    let alice = w.register("alice", 1)[0];
    let bob = w.register("bob", 1)[0];
    let conv = w.create(alice);
    w.add_users(alice, conv, &["bob"]);
    // bob recovers: a generation-2 account key certifies a new key under the id of
    // the device already in the conversation (as a thief with the old key could
    // also do the other way round).
    let p = openmls_rust_crypto::OpenMlsRustCrypto::default();
    let bob_name = name("bob");
    let account2 =
        AccountKey::generate(p.rand(), &w.users[&bob_name].identity, &bob_name, 2, 5).unwrap();
    let signer = DeviceSigner::generate(p.rand()).unwrap();
    let cert = account2.certify_device(bob, signer.public_key(), "new phone", 5);
    let list = account2.sign_device_list(w.users[&bob_name].list_version + 1, vec![cert.clone()]);
    let chain = sotto_proto::CertificateChain {
        account: account2.certificate().clone(),
        device: cert,
    };
    let new_phone = LocalDevice::new(chain, signer).unwrap();
    let dev = w.devs.get_mut(&alice).unwrap();
    assert_eq!(
        sotto_core::accept_device_list(&mut dev.trust, &list).unwrap(),
        sotto_core::Accepted::AccountKeyRotated { generation: 2 }
    );
    let conversation = &dev.convs[&conv];
    assert_eq!(
        conversation.missing(&dev.trust).unwrap(),
        vec![(bob_name.clone(), bob)],
        "the same id with another certificate is still missing"
    );
    assert_eq!(
        conversation
            .unlisted(&dev.trust)
            .unwrap()
            .iter()
            .map(|e| e.device_id)
            .collect::<Vec<_>>(),
        vec![bob]
    );
    let provider =
        sotto_core::storage::SottoProvider::<sotto_core::storage::MemoryStorage>::default();
    let kp = sotto_core::generate_key_packages(&provider, &new_phone, &w.config, 1)
        .unwrap()
        .one_time
        .remove(0);
    let dev = w.devs.get_mut(&alice).unwrap();
    let conversation = dev.convs.get_mut(&conv).unwrap();
    conversation
        .replace_devices(
            &dev.provider,
            &dev.local,
            &mut dev.trust,
            &[ClaimedKeyPackage {
                username: bob_name,
                bytes: kp,
            }],
            &[bob],
        )
        .unwrap();
    conversation.confirm_commit(&dev.provider).unwrap();
    assert!(conversation.missing(&dev.trust).unwrap().is_empty());
    assert!(conversation.unlisted(&dev.trust).unwrap().is_empty());
}
