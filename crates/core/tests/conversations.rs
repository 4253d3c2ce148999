//! Round trips: 1:1 and a group of 5 users x 2 devices, membership changes, roster.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{World, name};
use sotto_core::Incoming;

#[test]
fn one_to_one_both_ways() {
    let mut w = World::new();
    let alice = w.register("alice", 1)[0];
    let bob = w.register("bob", 1)[0];
    let conv = w.create(alice);
    w.add_users(alice, conv, &["bob"]);
    w.assert_agree(conv);
    assert_eq!(w.members(bob, conv), {
        let mut v = vec![alice, bob];
        v.sort();
        v
    });
    for i in 0..5 {
        w.send(alice, conv, &format!("hi bob {i}"));
        w.send(bob, conv, &format!("hi alice {i}"));
    }
    assert_eq!(w.devs[&bob].received.len(), 5);
    assert_eq!(w.devs[&alice].received.len(), 5);
    let users = w.devs[&alice].convs[&conv].roster().unwrap().users();
    assert_eq!(
        users.keys().cloned().collect::<Vec<_>>(),
        vec![name("alice"), name("bob")]
    );
}

#[test]
fn group_of_five_users_with_two_devices_each() {
    let mut w = World::new();
    let names = ["ann", "ben", "cat", "dan", "eve"];
    let mut devices = Vec::new();
    for n in names {
        devices.extend(w.register(n, 2));
    }
    let conv = w.create(devices[0]);
    // The creator's own second device, then the others.
    let second = devices[1];
    let dev0 = devices[0];
    {
        let kp = w.key_packages("ann");
        w.directory(dev0, &[name("ann")]).unwrap();
        let dev = w.devs.get_mut(&dev0).unwrap();
        let claimed: Vec<_> = kp.key_packages[1..]
            .iter()
            .map(|b| sotto_core::ClaimedKeyPackage {
                username: name("ann"),
                bytes: b.clone(),
            })
            .collect();
        let out = dev
            .convs
            .get_mut(&conv)
            .unwrap()
            .add_devices(&dev.provider, &dev.local, &mut dev.trust, &claimed)
            .unwrap();
        assert_eq!(out.metadata.added, vec![second]);
        assert_eq!(out.metadata.epoch, 0);
        w.deliver_commit(dev0, conv, out);
    }
    w.add_users(devices[0], conv, &["ben", "cat", "dan", "eve"]);
    w.assert_agree(conv);
    assert_eq!(w.members(devices[9], conv).len(), 10);

    let mut sent = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        sent.push(w.send(*d, conv, &format!("message {i}")).id);
    }
    // Every device received the 9 messages of the others, each exactly once.
    for (i, d) in devices.iter().enumerate() {
        let got: Vec<_> = w.devs[d].received.iter().map(|m| m.envelope.id).collect();
        let expected: Vec<_> = sent
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, id)| *id)
            .collect();
        assert_eq!(got, expected, "device {i}");
    }
    let users = w.devs[&devices[3]].convs[&conv].roster().unwrap().users();
    assert_eq!(users.len(), 5);
    assert!(users.values().all(|d| d.len() == 2));
}

#[test]
fn removed_members_cannot_read_and_new_members_cannot_read_the_past() {
    let mut w = World::new();
    let alice = w.register("alice", 1)[0];
    let bob = w.register("bob", 1)[0];
    let carol = w.register("carol", 1)[0];
    let conv = w.create(alice);
    w.add_users(alice, conv, &["bob"]);
    let (_, before_carol) = w.encrypt(alice, conv, "before carol");
    w.process(bob, conv, &before_carol).unwrap();
    w.add_users(alice, conv, &["carol"]);
    // Carol cannot read a message from before she joined.
    assert!(w.process(carol, conv, &before_carol).is_err());
    w.send(bob, conv, "welcome carol");
    w.assert_agree(conv);

    w.remove_users(alice, conv, &["bob"]);
    assert!(
        !w.devs[&bob].convs.contains_key(&conv),
        "bob saw his own removal"
    );
    w.assert_agree(conv);
    let (_, after) = w.encrypt(alice, conv, "bob is gone");
    assert!(matches!(
        w.process(carol, conv, &after).unwrap(),
        Incoming::Message(_)
    ));
    // Bob kept his last state; it cannot decrypt what was sent after his removal.
    let dev = w.devs.get_mut(&bob).unwrap();
    let old = dev.left.get_mut(&conv).unwrap();
    assert!(old.process(&dev.provider, &mut dev.trust, &after).is_err());
    assert!(!w.members(alice, conv).contains(&bob));
}

#[test]
fn self_updates_keep_everyone_in_step() {
    let mut w = World::new();
    let a = w.register("alice", 2);
    w.register("bob", 1);
    let conv = w.create(a[0]);
    w.add_users(a[0], conv, &["bob"]);
    let bob = w.users[&name("bob")].devices[0];
    for _ in 0..3 {
        w.self_update(bob, conv);
        w.self_update(a[0], conv);
        w.send(bob, conv, "still here");
    }
    w.assert_agree(conv);
    assert_eq!(w.devs[&bob].convs[&conv].epoch(), 7);
}

#[test]
fn a_message_from_the_previous_epoch_still_decrypts_after_a_commit() {
    let mut w = World::new();
    let alice = w.register("alice", 1)[0];
    let bob = w.register("bob", 1)[0];
    let conv = w.create(alice);
    w.add_users(alice, conv, &["bob"]);
    let (env, late) = w.encrypt(bob, conv, "sent before the commit");
    w.self_update(alice, conv);
    match w.process(alice, conv, &late).unwrap() {
        Incoming::Message(m) => assert_eq!(m.envelope, env),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_removed_user_can_be_added_again() {
    let mut w = World::new();
    let alice = w.register("alice", 1)[0];
    let bob = w.register("bob", 1)[0];
    let conv = w.create(alice);
    w.add_users(alice, conv, &["bob"]);
    w.remove_users(alice, conv, &["bob"]);
    w.add_users(alice, conv, &["bob"]);
    w.assert_agree(conv);
    w.send(bob, conv, "back again");
}

#[test]
fn a_welcome_for_a_conversation_the_device_is_in_is_refused() {
    let mut w = World::new();
    let alice = w.register("alice", 1)[0];
    let bob = w.register("bob", 1)[0];
    let conv = w.create(alice);
    let kps = w.key_packages("bob");
    let dev = w.devs.get_mut(&alice).unwrap();
    let out = dev
        .convs
        .get_mut(&conv)
        .unwrap()
        .add_users(&dev.provider, &dev.local, &mut dev.trust, &[kps])
        .unwrap();
    let welcome = out.welcome.clone().unwrap();
    w.deliver_commit(alice, conv, out);
    // The server replays the Welcome: bob's live state must not be replaced.
    let config = w.config.clone();
    let dev = w.devs.get_mut(&bob).unwrap();
    let err = sotto_core::Conversation::join(&dev.provider, &mut dev.trust, &welcome, &config)
        .unwrap_err();
    assert!(
        matches!(
            err,
            sotto_core::ConversationError::AlreadyMember | sotto_core::ConversationError::Mls(_)
        ),
        "{err}"
    );
    w.send(alice, conv, "still fine");
}

#[test]
fn safety_numbers_agree_on_both_sides_and_on_every_device() {
    use sotto_core::{SafetyNumber, TrustStore};
    let mut w = World::new();
    let a = w.register("alice", 2);
    let bob = w.register("bob", 1)[0];
    let conv = w.create(a[0]);
    // alice's first device adds bob and her own second device; bob and the second
    // device learn (and pin) the others' identity keys from the Welcome.
    w.add_users(a[0], conv, &["bob"]);
    let kp = w.key_packages("alice").key_packages[1].clone();
    let dev = w.devs.get_mut(&a[0]).unwrap();
    let out = dev
        .convs
        .get_mut(&conv)
        .unwrap()
        .add_devices(
            &dev.provider,
            &dev.local,
            &mut dev.trust,
            &[sotto_core::ClaimedKeyPackage {
                username: name("alice"),
                bytes: kp,
            }],
        )
        .unwrap();
    w.deliver_commit(a[0], conv, out);

    let number = |dev: sotto_proto::DeviceId, me: &str, them: &str| {
        let t = &w.devs[&dev].trust;
        SafetyNumber::new(
            &t.pinned_identity(&name(me)).unwrap().unwrap(),
            &t.pinned_identity(&name(them)).unwrap().unwrap(),
        )
    };
    let from_alice_1 = number(a[0], "alice", "bob");
    let from_alice_2 = number(a[1], "alice", "bob");
    let from_bob = number(bob, "bob", "alice");
    assert_eq!(from_alice_1, from_alice_2);
    assert_eq!(from_alice_1, from_bob);
    assert!(from_bob.matches_digits(&from_alice_2.grouped()));
    assert!(from_bob.matches_scanned(&from_alice_1.scannable()));
}

#[test]
fn key_package_batches_hold_one_time_and_last_resort_packages() {
    use openmls::prelude::tls_codec::Deserialize as _;
    use openmls::prelude::{KeyPackageIn, ProtocolVersion};
    use openmls_traits::OpenMlsProvider;
    let mut w = World::new();
    let d = w.register("alice", 1)[0];
    let dev = &w.devs[&d];
    let batch = sotto_core::generate_key_packages(&dev.provider, &dev.local, &w.config, 5).unwrap();
    assert_eq!(batch.one_time.len(), 5);
    let mut all = batch.one_time.clone();
    all.push(batch.last_resort.clone());
    for (i, bytes) in all.iter().enumerate() {
        let kp = KeyPackageIn::tls_deserialize_exact(bytes.as_slice())
            .unwrap()
            .validate(dev.provider.crypto(), ProtocolVersion::Mls10)
            .unwrap();
        assert_eq!(kp.last_resort(), i == 5, "package {i}");
        let cert = sotto_proto::CertificateChain::from_bytes(
            openmls::prelude::BasicCredential::try_from(kp.leaf_node().credential().clone())
                .unwrap()
                .identity(),
        )
        .unwrap()
        .device;
        assert_eq!(cert.device_id(), d);
        assert_eq!(kp.leaf_node().signature_key().as_slice(), cert.device_key());
    }
    assert_eq!(
        all.iter().collect::<std::collections::BTreeSet<_>>().len(),
        6,
        "all distinct"
    );
}

#[test]
fn an_unsupported_cipher_suite_is_refused_clearly() {
    let mut w = World::new();
    let d = w.register("alice", 1)[0];
    let config = sotto_core::ConversationConfig {
        ciphersuite: openmls::prelude::Ciphersuite::MLS_128_DHKEMP256_AES128GCM_SHA256_P256,
        ..Default::default()
    };
    let dev = &w.devs[&d];
    let err = sotto_core::Conversation::create(
        &dev.provider,
        &dev.local,
        sotto_proto::ConversationId::from_bytes([1; 16]),
        &config,
    )
    .unwrap_err();
    assert!(err.to_string().contains("Ed25519"), "{err}");
}

#[test]
fn the_chacha_suite_works_too() {
    let mut w = World::new();
    w.config.ciphersuite =
        openmls::prelude::Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519;
    let alice = w.register("alice", 1)[0];
    let bob = w.register("bob", 1)[0];
    let conv = w.create(alice);
    w.add_users(alice, conv, &["bob"]);
    w.send(alice, conv, "chacha");
    w.send(bob, conv, "poly");
    w.assert_agree(conv);
}
