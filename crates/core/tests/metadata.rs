//! What the delivery service can see: for an application message or a commit, the MLS
//! framing (group id, epoch, content type) and nothing else; for a commit, the
//! `CommitMetadata` the client declares, which must match the framing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::World;
use sotto_proto::framing::{ContentType, WireFormat, parse_group_message};

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn application_messages_reveal_only_group_epoch_and_type() {
    let mut w = World::new();
    let alice = w.register("alice", 1)[0];
    let bob = w.register("bob", 1)[0];
    let conv = w.create(alice);
    w.add_users(alice, conv, &["bob"]);
    let sentinel = "SENTINEL-7f3a9c-plaintext-must-not-leak";
    let (_, bytes) = w.encrypt(alice, conv, sentinel);

    let f = parse_group_message(&bytes).unwrap();
    assert_eq!(f.wire_format, WireFormat::PrivateMessage);
    assert_eq!(f.group_id, conv.as_bytes());
    assert_eq!(f.epoch, w.devs[&alice].convs[&conv].epoch());
    assert_eq!(f.content_type, ContentType::Application);
    assert_eq!(
        f.authenticated_data_len, 0,
        "no cleartext authenticated data"
    );

    for secret in [
        sentinel.as_bytes(),
        b"alice",
        b"bob",
        alice.as_bytes(),
        bob.as_bytes(),
    ] {
        assert!(
            !contains(&bytes, secret),
            "{:?} visible in the ciphertext",
            String::from_utf8_lossy(secret)
        );
    }
}

#[test]
fn padding_hides_exact_lengths() {
    let mut w = World::new();
    let alice = w.register("alice", 1)[0];
    w.register("bob", 1);
    let conv = w.create(alice);
    w.add_users(alice, conv, &["bob"]);
    let (_, short) = w.encrypt(alice, conv, "a");
    let (_, longer) = w.encrypt(alice, conv, "abcdefghij");
    assert_eq!(
        short.len(),
        longer.len(),
        "texts of 1 and 10 bytes must pad to the same size"
    );
}

#[test]
fn commits_reveal_only_framing_and_the_declared_roster_change() {
    let mut w = World::new();
    let alice = w.register("alice", 1)[0];
    let bob = w.register("bob", 1)[0];
    let carol = w.register("carol", 1)[0];
    let conv = w.create(alice);
    w.add_users(alice, conv, &["bob"]);

    let kps = w.key_packages("carol");
    let dev = w.devs.get_mut(&alice).unwrap();
    let c = dev.convs.get_mut(&conv).unwrap();
    let out = c
        .add_users(&dev.provider, &dev.local, &mut dev.trust, &[kps])
        .unwrap();
    assert_eq!(out.metadata.conversation, conv);
    assert_eq!(out.metadata.epoch, 1);
    assert_eq!(out.metadata.added, vec![carol]);
    assert!(out.metadata.removed.is_empty());
    let f = parse_group_message(&out.commit).unwrap();
    assert_eq!(f.wire_format, WireFormat::PrivateMessage);
    assert_eq!(f.content_type, ContentType::Commit);
    assert_eq!(f.epoch, out.metadata.epoch);
    assert_eq!(f.group_id, conv.as_bytes());
    // Who is added is not readable from the commit itself.
    for secret in [&b"carol"[..], carol.as_bytes(), b"alice"] {
        assert!(!contains(&out.commit, secret));
    }
    w.deliver_commit(alice, conv, out);

    let dev = w.devs.get_mut(&alice).unwrap();
    let c = dev.convs.get_mut(&conv).unwrap();
    let out = c
        .remove_users(&dev.provider, &dev.local, &[common::name("bob")])
        .unwrap();
    assert_eq!(out.metadata.epoch, 2);
    assert_eq!(out.metadata.removed, vec![bob]);
    assert!(out.metadata.added.is_empty());
    assert!(out.welcome.is_none());
    assert_eq!(
        c.pending_commit_metadata().unwrap(),
        Some(out.metadata.clone())
    );
}
