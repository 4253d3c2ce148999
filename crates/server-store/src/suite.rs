//! The behaviour suite every [`Store`] implementation runs.
//!
//! Each `pub async fn` checks one behaviour of the contract on a fresh store and panics
//! (test-style) when the store gets it wrong. [`store_suite!`](crate::store_suite)
//! expands to one `#[tokio::test]` per behaviour, so an implementation's test file is
//! one line:
//!
//! ```ignore
//! sotto_server_store::store_suite!(sotto_server_store::MemoryStore::new());
//! // or, when a guard (a temp dir) must outlive the store:
//! sotto_server_store::store_suite!(with_guard fresh_store_and_dir());
//! // or, for a store behind a service that may be absent (`None` skips the test):
//! sotto_server_store::store_suite!(optional fresh_store_if_service_up().await);
//! ```
//!
//! The calling crate needs `tokio` (features `macros`, `rt-multi-thread`) as a
//! dev-dependency.

// This module is test code shipped as a library: failing loudly is its job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use sotto_proto::{ConversationId, DeviceId, IdentityPublicKey, MessageId, Username};

use crate::{
    CommitSubmission, EntryKind, MESSAGE_EPOCH_WINDOW, MessageSubmission, NewAccount, NewDevice,
    Store, StoreError,
};

/// A fixed start time for tests (2026-01-01T00:00:00Z).
pub const T0: u64 = 1_767_225_600;

/// Expands to one `#[tokio::test]` per suite behaviour for the given store expression
/// (evaluated afresh in each test). `with_guard EXPR` takes an expression yielding
/// `(store, guard)`; the guard (e.g. a temp dir) lives until the test ends.
/// `optional EXPR` takes an `Option<(store, guard)>`: `None` ends the test early (for
/// stores behind a service that is not running; the maker reports that loudly).
#[macro_export]
macro_rules! store_suite {
    (with_guard $make:expr) => {
        $crate::store_suite!(@all (Some($make)));
    };
    (optional $make:expr) => {
        $crate::store_suite!(@all $make);
    };
    ($make:expr) => {
        $crate::store_suite!(with_guard ($make, ()));
    };
    (@all $make:expr) => {
        $crate::store_suite!(@tests $make;
            username_taken,
            token_lookup,
            device_list_version_must_increase,
            removed_device_loses_token_and_mailbox,
            key_package_claims,
            concurrent_commits_one_per_epoch,
            commit_fan_out_and_welcome,
            a_device_added_twice_gets_one_welcome,
            non_member_cannot_commit_or_send,
            message_fan_out_excludes_sender_and_stores_once,
            message_epoch_window,
            seq_monotonic_across_acks,
            ack_deletes_and_releases_bodies,
            idempotent_resend,
            expire_removes_old_entries_and_bodies,
            link_slot_single_use_and_expiry,
            removed_member_gets_nothing_afterwards,
            directory_notices_reach_group_peers_and_own_devices,
            a_released_account_is_gone_and_its_name_free,
            a_rotated_token_replaces_the_old_one,
        );
    };
    (@tests $make:expr; $($name:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                // `None`: the backing service is absent and the maker said so loudly.
                let Some((store, _guard)) = $make else { return };
                $crate::suite::$name(store).await;
            }
        )*
    };
}

/// A device id from one byte.
pub fn dev(n: u8) -> DeviceId {
    DeviceId::from_bytes([n; 16])
}

/// A group id from one byte.
pub fn gid(n: u8) -> ConversationId {
    ConversationId::from_bytes([n; 16])
}

/// A username (panics on an invalid one).
pub fn user(name: &str) -> Username {
    Username::parse(name).expect("valid test username")
}

/// The token hash the suite uses for a device.
pub fn token(device: u8) -> [u8; 32] {
    [device; 32]
}

/// A message id from a counter.
pub fn msg_id(n: u64) -> MessageId {
    MessageId::new_v7(T0 * 1000 + n, &[n as u8; 10])
}

fn new_device(n: u8) -> NewDevice {
    NewDevice {
        device_id: dev(n),
        token_hash: token(n),
        certificate_bytes: vec![0xce, n],
    }
}

/// Registers `name` with device `n` (token [`token`]`(n)`) at `now`.
pub async fn register<S: Store>(store: &S, name: &str, n: u8, now: u64) -> Result<(), StoreError> {
    store
        .create_account(
            NewAccount {
                username: user(name),
                identity_key: IdentityPublicKey::from_bytes([n; 32]),
                device_list_bytes: vec![0x11, n],
                list_version: 1,
                first_device: new_device(n),
            },
            now,
        )
        .await
}

/// Registers one account per device number, named `user<n>`.
async fn register_all<S: Store>(store: &S, devices: &[u8]) {
    for n in devices {
        register(store, &format!("user{n}"), *n, T0).await.unwrap();
    }
}

fn message(group: u8, sender: u8, epoch: u64, id: u64, body: &[u8]) -> MessageSubmission {
    MessageSubmission {
        group: gid(group),
        sender: dev(sender),
        epoch,
        client_message_id: msg_id(id),
        body: body.to_vec(),
    }
}

fn commit(group: u8, sender: u8, epoch: u64, added: &[u8], removed: &[u8]) -> CommitSubmission {
    CommitSubmission {
        group: gid(group),
        sender: dev(sender),
        epoch,
        added: added.iter().map(|n| dev(*n)).collect(),
        removed: removed.iter().map(|n| dev(*n)).collect(),
        commit: vec![0xc0, sender, epoch as u8],
        welcome: (!added.is_empty()).then(|| vec![0xe1, sender, epoch as u8]),
    }
}

async fn bodies<S: Store>(store: &S) -> u64 {
    store.stats().await.unwrap().bodies
}

async fn depth<S: Store>(store: &S, n: u8) -> u64 {
    store.device_status(dev(n)).await.unwrap().mailbox_depth
}

/// A second account with a taken name (in any case) is refused; so is a taken device id.
pub async fn username_taken<S: Store>(store: S) {
    register(&store, "alice", 1, T0).await.unwrap();
    assert_eq!(
        register(&store, "ALICE", 2, T0).await,
        Err(StoreError::UsernameTaken)
    );
    assert_eq!(
        register(&store, "bob", 1, T0).await,
        Err(StoreError::DeviceExists)
    );
    register(&store, "bob", 2, T0).await.unwrap();
    let alice = store.account(&user("alice")).await.unwrap().unwrap();
    assert_eq!(alice.devices.len(), 1);
    assert_eq!(alice.devices[0].device_id, dev(1));
    assert_eq!(alice.devices[0].certificate_bytes, vec![0xce, 1]);
    assert_eq!(alice.identity_key, IdentityPublicKey::from_bytes([1; 32]));
    assert_eq!(alice.list_version, 1);
    assert_eq!(alice.created_at, T0);
    assert!(store.account(&user("carol")).await.unwrap().is_none());
    assert_eq!(store.stats().await.unwrap().accounts, 2);
}

/// A token hash finds its device; an unknown one finds nothing; use moves last-seen day.
pub async fn token_lookup<S: Store>(store: S) {
    register(&store, "alice", 1, T0).await.unwrap();
    register(&store, "bob", 2, T0).await.unwrap();
    assert_eq!(
        store.device_by_token(&token(1), T0).await.unwrap(),
        Some((user("alice"), dev(1)))
    );
    assert_eq!(
        store.device_by_token(&token(2), T0).await.unwrap(),
        Some((user("bob"), dev(2)))
    );
    assert_eq!(store.device_by_token(&[9; 32], T0).await.unwrap(), None);
    let later = T0 + 3 * 86_400 + 5;
    store.device_by_token(&token(1), later).await.unwrap();
    let alice = store.account(&user("alice")).await.unwrap().unwrap();
    assert_eq!(alice.last_seen_day, later / 86_400);
    let bob = store.account(&user("bob")).await.unwrap().unwrap();
    assert_eq!(bob.last_seen_day, T0 / 86_400);
}

/// Device lists only move forward; linking registers the new device atomically.
pub async fn device_list_version_must_increase<S: Store>(store: S) {
    register(&store, "alice", 1, T0).await.unwrap();
    register(&store, "bob", 3, T0).await.unwrap();
    let alice = user("alice");
    assert_eq!(
        store
            .publish_device_list(&alice, vec![0x22], 1, None, T0)
            .await,
        Err(StoreError::VersionNotIncreasing { current: 1 })
    );
    // Linking a device id that exists fails and changes nothing.
    assert_eq!(
        store
            .publish_device_list(&alice, vec![0x22], 2, Some(new_device(3)), T0)
            .await,
        Err(StoreError::DeviceExists)
    );
    assert_eq!(
        store.account(&alice).await.unwrap().unwrap().list_version,
        1
    );
    store
        .publish_device_list(&alice, vec![0x22], 2, Some(new_device(2)), T0 + 10)
        .await
        .unwrap();
    let account = store.account(&alice).await.unwrap().unwrap();
    assert_eq!(account.list_version, 2);
    assert_eq!(account.device_list_bytes, vec![0x22]);
    let ids: Vec<DeviceId> = account.devices.iter().map(|d| d.device_id).collect();
    assert_eq!(ids, vec![dev(1), dev(2)]);
    assert_eq!(account.devices[1].created_at, T0 + 10);
    assert_eq!(
        store.device_by_token(&token(2), T0).await.unwrap(),
        Some((alice.clone(), dev(2)))
    );
    store
        .publish_device_list(&alice, vec![0x33], 7, None, T0)
        .await
        .unwrap();
    assert_eq!(
        store
            .publish_device_list(&alice, vec![0x44], 5, None, T0)
            .await,
        Err(StoreError::VersionNotIncreasing { current: 7 })
    );
    assert_eq!(
        store
            .publish_device_list(&user("nobody"), vec![0x44], 9, None, T0)
            .await,
        Err(StoreError::UnknownUser)
    );
}

/// Removing a device kills its token, KeyPackages and mailbox, releasing bodies.
pub async fn removed_device_loses_token_and_mailbox<S: Store>(store: S) {
    register_all(&store, &[1, 2]).await;
    store
        .publish_device_list(&user("user1"), vec![0x22], 2, Some(new_device(3)), T0)
        .await
        .unwrap();
    store
        .upload_key_packages(dev(3), vec![vec![1], vec![2]], Some(vec![3]))
        .await
        .unwrap();
    store
        .create_group(gid(1), dev(1), vec![dev(2), dev(3)])
        .await
        .unwrap();
    store
        .submit_message(message(1, 1, 0, 1, b"to two and three"), T0)
        .await
        .unwrap();
    store
        .submit_message(message(1, 2, 0, 2, b"to one and three"), T0)
        .await
        .unwrap();
    assert_eq!(depth(&store, 3).await, 2);
    assert_eq!(bodies(&store).await, 2);
    // Another account cannot remove it.
    assert_eq!(
        store.remove_device(&user("user2"), dev(3)).await,
        Err(StoreError::UnknownDevice)
    );
    store.remove_device(&user("user1"), dev(3)).await.unwrap();
    assert_eq!(store.device_by_token(&token(3), T0).await.unwrap(), None);
    assert_eq!(
        store.fetch(dev(3), 0, 10).await,
        Err(StoreError::UnknownDevice)
    );
    assert_eq!(
        store.device_status(dev(3)).await,
        Err(StoreError::UnknownDevice)
    );
    // Both bodies still have another reader; the mailbox entries of device 3 are gone.
    assert_eq!(bodies(&store).await, 2);
    assert_eq!(store.stats().await.unwrap().mailbox_entries, 2);
    let group = store.group(gid(1)).await.unwrap().unwrap();
    assert_eq!(group.members, vec![dev(1), dev(2)]);
    let account = store.account(&user("user1")).await.unwrap().unwrap();
    assert_eq!(account.devices.len(), 1);
    // Its KeyPackages are gone: claiming user1 yields nothing for device 3.
    let claimed = store.claim_key_packages(&user("user1")).await.unwrap();
    assert!(claimed.iter().all(|(d, _)| *d != dev(3)));
    // Once the last reader acks, the bodies go.
    store.ack(dev(2), u64::MAX).await.unwrap();
    assert_eq!(bodies(&store).await, 1);
    store.ack(dev(1), u64::MAX).await.unwrap();
    assert_eq!(bodies(&store).await, 0);
    // Removing the last member deletes the group.
    store.remove_device(&user("user2"), dev(2)).await.unwrap();
    store.remove_device(&user("user1"), dev(1)).await.unwrap();
    assert_eq!(store.group(gid(1)).await.unwrap(), None);
    assert_eq!(store.stats().await.unwrap().devices, 0);
}

/// A directory notice reaches every device sharing a group with the account and the
/// account's own devices, once each, never a device in `except`, and names the account.
pub async fn directory_notices_reach_group_peers_and_own_devices<S: Store>(store: S) {
    register_all(&store, &[1, 2, 4, 5]).await;
    store
        .publish_device_list(&user("user1"), vec![0x22], 2, Some(new_device(3)), T0)
        .await
        .unwrap();
    // user1's device 1 shares group 1 with 2 and group 2 with 2 and 4; 5 shares none.
    for (group, members) in [(1, vec![2]), (2, vec![2, 4])] {
        store
            .create_group(gid(group), dev(1), members.into_iter().map(dev).collect())
            .await
            .unwrap();
    }
    let notified = store
        .notify_directory(&user("user1"), &[dev(1)], T0)
        .await
        .unwrap();
    let mut told: Vec<DeviceId> = notified.iter().map(|(d, _)| *d).collect();
    told.sort();
    assert_eq!(told, vec![dev(2), dev(3), dev(4)]);
    for n in [2, 3, 4] {
        let entries = store.fetch(dev(n), 0, 10).await.unwrap();
        let last = entries.last().unwrap();
        assert_eq!(last.kind, EntryKind::Directory);
        assert_eq!(last.group, crate::DIRECTORY_GROUP);
        assert_eq!(last.body, b"user1");
    }
    assert_eq!(depth(&store, 5).await, 0);
    assert_eq!(depth(&store, 1).await, 0);
    // One body for all of them, released with the last ack.
    let before = bodies(&store).await;
    for n in [2, 3, 4] {
        store.ack(dev(n), u64::MAX).await.unwrap();
    }
    assert!(bodies(&store).await < before);
}

/// Releasing an account tells its group peers, deletes its devices (tokens, mailboxes,
/// memberships) and the account, and frees the name for a new registration.
pub async fn a_released_account_is_gone_and_its_name_free<S: Store>(store: S) {
    register_all(&store, &[1, 2]).await;
    store
        .create_group(gid(1), dev(1), vec![dev(2)])
        .await
        .unwrap();
    let notified = store.release_account(&user("user1"), T0).await.unwrap();
    assert_eq!(
        notified.iter().map(|(d, _)| *d).collect::<Vec<_>>(),
        vec![dev(2)]
    );
    let entry = store.fetch(dev(2), 0, 10).await.unwrap().pop().unwrap();
    assert_eq!(
        (entry.kind, entry.body),
        (EntryKind::Directory, b"user1".to_vec())
    );
    assert_eq!(store.account(&user("user1")).await.unwrap(), None);
    assert_eq!(store.device_by_token(&token(1), T0).await.unwrap(), None);
    assert_eq!(
        store.group(gid(1)).await.unwrap().unwrap().members,
        vec![dev(2)]
    );
    assert_eq!(
        store.release_account(&user("user1"), T0).await,
        Err(StoreError::UnknownUser)
    );
    // The name is free again, with a new key and device.
    register(&store, "user1", 7, T0 + 1).await.unwrap();
}

/// A rotated token works at once and the old one no longer does.
pub async fn a_rotated_token_replaces_the_old_one<S: Store>(store: S) {
    register_all(&store, &[1, 2]).await;
    store.rotate_token(dev(1), [0x99; 32]).await.unwrap();
    assert_eq!(store.device_by_token(&token(1), T0).await.unwrap(), None);
    assert_eq!(
        store.device_by_token(&[0x99; 32], T0).await.unwrap(),
        Some((user("user1"), dev(1)))
    );
    // Another device's token cannot be taken over.
    assert_eq!(
        store.rotate_token(dev(1), token(2)).await,
        Err(StoreError::DeviceExists)
    );
    assert_eq!(
        store.rotate_token(dev(9), [0x98; 32]).await,
        Err(StoreError::UnknownDevice)
    );
}

/// One-time packages are handed out once, oldest first; the last resort is kept.
pub async fn key_package_claims<S: Store>(store: S) {
    register(&store, "alice", 1, T0).await.unwrap();
    store
        .publish_device_list(&user("alice"), vec![], 2, Some(new_device(2)), T0)
        .await
        .unwrap();
    store
        .publish_device_list(&user("alice"), vec![], 3, Some(new_device(3)), T0)
        .await
        .unwrap();
    store
        .upload_key_packages(dev(1), vec![vec![1, 1], vec![1, 2]], Some(vec![1, 0xff]))
        .await
        .unwrap();
    store
        .upload_key_packages(dev(2), vec![vec![2, 1]], None)
        .await
        .unwrap();
    let status = store.device_status(dev(1)).await.unwrap();
    assert_eq!(status.one_time_key_packages, 2);
    assert!(status.has_last_resort);
    assert_eq!(
        store
            .device_status(dev(3))
            .await
            .unwrap()
            .one_time_key_packages,
        0
    );

    let alice = user("alice");
    let first = store.claim_key_packages(&alice).await.unwrap();
    // Device 3 has nothing and is left out.
    assert_eq!(first, vec![(dev(1), vec![1, 1]), (dev(2), vec![2, 1])]);
    assert_eq!(
        store
            .device_status(dev(1))
            .await
            .unwrap()
            .one_time_key_packages,
        1
    );
    assert_eq!(
        store
            .device_status(dev(2))
            .await
            .unwrap()
            .one_time_key_packages,
        0
    );
    let second = store.claim_key_packages(&alice).await.unwrap();
    assert_eq!(second, vec![(dev(1), vec![1, 2])]);
    // Only the last resort is left: returned, and returned again.
    for _ in 0..2 {
        let again = store.claim_key_packages(&alice).await.unwrap();
        assert_eq!(again, vec![(dev(1), vec![1, 0xff])]);
    }
    // A new last resort replaces the old one; new one-time packages come first.
    store
        .upload_key_packages(dev(1), vec![vec![1, 3]], Some(vec![1, 0xfe]))
        .await
        .unwrap();
    assert_eq!(
        store.claim_key_packages(&alice).await.unwrap(),
        vec![(dev(1), vec![1, 3])]
    );
    assert_eq!(
        store.claim_key_packages(&alice).await.unwrap(),
        vec![(dev(1), vec![1, 0xfe])]
    );
    assert_eq!(
        store.claim_key_packages(&user("nobody")).await,
        Err(StoreError::UnknownUser)
    );
    assert_eq!(
        store.upload_key_packages(dev(9), vec![vec![9]], None).await,
        Err(StoreError::UnknownDevice)
    );
}

/// Twenty commits race for each epoch: exactly one wins, the others see `StaleEpoch`
/// with the new epoch, and epochs advance one by one.
pub async fn concurrent_commits_one_per_epoch<S: Store>(store: S) {
    let store = Arc::new(store);
    let members: Vec<u8> = (1..=20).collect();
    register_all(&*store, &members).await;
    store
        .create_group(gid(1), dev(1), members.iter().map(|n| dev(*n)).collect())
        .await
        .unwrap();
    for epoch in 0..3u64 {
        let mut tasks = Vec::new();
        for n in members.clone() {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                let result = store.submit_commit(commit(1, n, epoch, &[], &[]), T0).await;
                (n, result)
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            let (n, result) = task.await.unwrap();
            match result {
                Ok(accepted) => {
                    assert_eq!(accepted.epoch, epoch + 1);
                    winners.push(n);
                }
                Err(StoreError::StaleEpoch { current }) => assert_eq!(current, epoch + 1),
                Err(other) => panic!("unexpected error from a racing commit: {other}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "exactly one commit per epoch: {winners:?}"
        );
        assert_eq!(store.group(gid(1)).await.unwrap().unwrap().epoch, epoch + 1);
        // Everyone but the winner holds exactly one commit for this epoch.
        let winner = winners[0];
        for n in &members {
            let entries = store.fetch(dev(*n), 0, 100).await.unwrap();
            let commits = entries
                .iter()
                .filter(|e| {
                    e.kind == EntryKind::Commit && e.body == vec![0xc0, winner, epoch as u8]
                })
                .count();
            assert_eq!(commits, usize::from(*n != winner));
        }
    }
    // Three epochs, each with one body.
    assert_eq!(bodies(&*store).await, 3);
}

/// A commit that lists a device twice adds it once and sends it one Welcome.
pub async fn a_device_added_twice_gets_one_welcome<S: Store>(store: S) {
    register_all(&store, &[1, 2, 3]).await;
    store
        .create_group(gid(1), dev(1), vec![dev(2)])
        .await
        .unwrap();
    let accepted = store
        .submit_commit(commit(1, 1, 0, &[3, 3], &[]), T0)
        .await
        .unwrap();
    assert_eq!(accepted.delivered.len(), 2); // the commit to 2, one Welcome to 3
    let entries = store.fetch(dev(3), 0, 10).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].kind, EntryKind::Welcome);
    let group = store.group(gid(1)).await.unwrap().unwrap();
    assert_eq!(group.members, vec![dev(1), dev(2), dev(3)]);
}

/// A commit reaches every member but its sender, removed ones included; the Welcome
/// reaches the added devices only; membership and epoch change.
pub async fn commit_fan_out_and_welcome<S: Store>(store: S) {
    register_all(&store, &[1, 2, 3, 4, 5]).await;
    store
        .create_group(gid(1), dev(1), vec![dev(2), dev(3)])
        .await
        .unwrap();
    assert_eq!(
        store.create_group(gid(1), dev(4), vec![]).await,
        Err(StoreError::GroupExists)
    );
    assert_eq!(
        store.create_group(gid(2), dev(1), vec![dev(9)]).await,
        Err(StoreError::UnknownDevice)
    );
    let accepted = store
        .submit_commit(commit(1, 1, 0, &[4, 5], &[3]), T0)
        .await
        .unwrap();
    assert_eq!(accepted.epoch, 1);
    assert_eq!(accepted.delivered.len(), 4); // commit to 2 and 3, welcome to 4 and 5
    let group = store.group(gid(1)).await.unwrap().unwrap();
    assert_eq!(group.epoch, 1);
    assert_eq!(group.members, vec![dev(1), dev(2), dev(4), dev(5)]);
    assert!(store.fetch(dev(1), 0, 10).await.unwrap().is_empty());
    for n in [2, 3] {
        let entries = store.fetch(dev(n), 0, 10).await.unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].kind, EntryKind::Commit);
        assert_eq!(entries[0].group, gid(1));
        assert_eq!(entries[0].body, vec![0xc0, 1, 0]);
        assert_eq!(entries[0].received_at, T0);
    }
    for n in [4, 5] {
        let entries = store.fetch(dev(n), 0, 10).await.unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].kind, EntryKind::Welcome);
        assert_eq!(entries[0].body, vec![0xe1, 1, 0]);
    }
    // One commit body and one Welcome body.
    assert_eq!(bodies(&store).await, 2);
    assert_eq!(
        store.submit_commit(commit(1, 2, 0, &[], &[]), T0).await,
        Err(StoreError::StaleEpoch { current: 1 })
    );
    assert_eq!(
        store.submit_commit(commit(1, 2, 1, &[9], &[]), T0).await,
        Err(StoreError::UnknownDevice)
    );
    assert_eq!(
        store.submit_commit(commit(7, 2, 1, &[], &[]), T0).await,
        Err(StoreError::UnknownGroup)
    );
    // Nothing of the refused commits was stored.
    assert_eq!(bodies(&store).await, 2);
    assert_eq!(store.group(gid(1)).await.unwrap().unwrap().epoch, 1);
}

/// Devices outside the group can neither commit nor send.
pub async fn non_member_cannot_commit_or_send<S: Store>(store: S) {
    register_all(&store, &[1, 2, 3]).await;
    store
        .create_group(gid(1), dev(1), vec![dev(2)])
        .await
        .unwrap();
    assert_eq!(
        store.submit_commit(commit(1, 3, 0, &[3], &[]), T0).await,
        Err(StoreError::NotAMember)
    );
    assert_eq!(
        store.submit_message(message(1, 3, 0, 1, b"hi"), T0).await,
        Err(StoreError::NotAMember)
    );
    // Unknown devices are not members either.
    assert_eq!(
        store.submit_message(message(1, 9, 0, 2, b"hi"), T0).await,
        Err(StoreError::NotAMember)
    );
    assert_eq!(store.group(gid(1)).await.unwrap().unwrap().epoch, 0);
    assert_eq!(bodies(&store).await, 0);
    assert_eq!(store.stats().await.unwrap().mailbox_entries, 0);
    // A member still can.
    store
        .submit_message(message(1, 2, 0, 3, b"hi"), T0)
        .await
        .unwrap();
    assert_eq!(depth(&store, 1).await, 1);
}

/// A message goes to every member but the sender and is stored once.
pub async fn message_fan_out_excludes_sender_and_stores_once<S: Store>(store: S) {
    register_all(&store, &[1, 2, 3, 4]).await;
    store
        .create_group(gid(1), dev(1), vec![dev(2), dev(3), dev(4)])
        .await
        .unwrap();
    let accepted = store
        .submit_message(message(1, 2, 0, 1, b"ciphertext"), T0 + 5)
        .await
        .unwrap();
    assert!(!accepted.duplicate);
    let mut to: Vec<DeviceId> = accepted.delivered.iter().map(|(d, _)| *d).collect();
    to.sort();
    assert_eq!(to, vec![dev(1), dev(3), dev(4)]);
    assert_eq!(depth(&store, 2).await, 0);
    for n in [1, 3, 4] {
        let entries = store.fetch(dev(n), 0, 10).await.unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].kind, EntryKind::Message);
        assert_eq!(entries[0].body, b"ciphertext".to_vec());
        assert_eq!(entries[0].received_at, T0 + 5);
        assert_eq!(
            Some(entries[0].seq),
            accepted
                .delivered
                .iter()
                .find(|(d, _)| *d == dev(n))
                .map(|(_, s)| *s)
        );
    }
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.bodies, 1);
    assert_eq!(stats.mailbox_entries, 3);
}

/// Messages may lag the group by up to the window, never lead it.
pub async fn message_epoch_window<S: Store>(store: S) {
    register_all(&store, &[1, 2]).await;
    store
        .create_group(gid(1), dev(1), vec![dev(2)])
        .await
        .unwrap();
    for epoch in 0..5 {
        store
            .submit_commit(commit(1, 1, epoch, &[], &[]), T0)
            .await
            .unwrap();
    }
    let current = 5;
    assert_eq!(
        store
            .submit_message(message(1, 2, current + 1, 1, b"x"), T0)
            .await,
        Err(StoreError::StaleEpoch { current })
    );
    assert_eq!(
        store
            .submit_message(
                message(1, 2, current - MESSAGE_EPOCH_WINDOW - 1, 2, b"x"),
                T0
            )
            .await,
        Err(StoreError::StaleEpoch { current })
    );
    for (i, epoch) in ((current - MESSAGE_EPOCH_WINDOW)..=current).enumerate() {
        let accepted = store
            .submit_message(message(1, 2, epoch, 10 + i as u64, b"x"), T0)
            .await
            .unwrap();
        assert_eq!(accepted.epoch, current);
    }
}

/// Sequence numbers only grow per device, and are never reused after acks.
pub async fn seq_monotonic_across_acks<S: Store>(store: S) {
    register_all(&store, &[1, 2]).await;
    store
        .create_group(gid(1), dev(1), vec![dev(2)])
        .await
        .unwrap();
    let mut last = 0;
    for round in 0..3u64 {
        for i in 0..4u64 {
            store
                .submit_message(message(1, 1, 0, round * 10 + i, b"m"), T0)
                .await
                .unwrap();
        }
        let entries = store.fetch(dev(2), 0, 100).await.unwrap();
        assert_eq!(entries.len(), 4);
        for e in &entries {
            assert!(e.seq > last, "seq {} after {last}", e.seq);
            last = e.seq;
        }
        // Fetch after a seq and with a limit.
        let tail = store.fetch(dev(2), entries[1].seq, 1).await.unwrap();
        assert_eq!(tail.len(), 1);
        assert_eq!(tail[0].seq, entries[2].seq);
        assert_eq!(store.ack(dev(2), last).await.unwrap(), 4);
    }
    // Acking everything, then a new message: still a fresh seq.
    store
        .submit_message(message(1, 1, 0, 99, b"m"), T0)
        .await
        .unwrap();
    let entries = store.fetch(dev(2), 0, 100).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert!(entries[0].seq > last);
}

/// Acks delete at once, only up to the given seq, and free bodies nobody needs.
pub async fn ack_deletes_and_releases_bodies<S: Store>(store: S) {
    register_all(&store, &[1, 2, 3]).await;
    store
        .create_group(gid(1), dev(1), vec![dev(2), dev(3)])
        .await
        .unwrap();
    for i in 0..3 {
        store
            .submit_message(message(1, 1, 0, i, &[i as u8]), T0)
            .await
            .unwrap();
    }
    assert_eq!(bodies(&store).await, 3);
    let entries = store.fetch(dev(2), 0, 10).await.unwrap();
    assert_eq!(store.ack(dev(2), entries[1].seq).await.unwrap(), 2);
    assert_eq!(depth(&store, 2).await, 1);
    let left = store.fetch(dev(2), 0, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].body, vec![2]);
    // Device 3 still needs all three.
    assert_eq!(bodies(&store).await, 3);
    store.ack(dev(3), u64::MAX).await.unwrap();
    assert_eq!(bodies(&store).await, 1);
    assert_eq!(depth(&store, 3).await, 0);
    // Acking again is harmless.
    assert_eq!(store.ack(dev(3), u64::MAX).await.unwrap(), 0);
    store.ack(dev(2), u64::MAX).await.unwrap();
    assert_eq!(bodies(&store).await, 0);
    assert_eq!(store.ack(dev(9), 1).await, Err(StoreError::UnknownDevice));
}

/// The same (sender, client id) twice is one delivery; another sender's same id is not.
pub async fn idempotent_resend<S: Store>(store: S) {
    register_all(&store, &[1, 2, 3]).await;
    store
        .create_group(gid(1), dev(1), vec![dev(2), dev(3)])
        .await
        .unwrap();
    let first = store
        .submit_message(message(1, 1, 0, 42, b"once"), T0)
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.delivered.len(), 2);
    let again = store
        .submit_message(message(1, 1, 0, 42, b"once"), T0 + 1)
        .await
        .unwrap();
    assert!(again.duplicate);
    assert!(again.delivered.is_empty());
    assert_eq!(depth(&store, 2).await, 1);
    assert_eq!(bodies(&store).await, 1);
    // Still a duplicate after the recipients acked.
    store.ack(dev(2), u64::MAX).await.unwrap();
    store.ack(dev(3), u64::MAX).await.unwrap();
    let later = store
        .submit_message(message(1, 1, 0, 42, b"once"), T0 + 2)
        .await
        .unwrap();
    assert!(later.duplicate);
    assert_eq!(depth(&store, 2).await, 0);
    // The same id from another sender is a different message.
    let other = store
        .submit_message(message(1, 2, 0, 42, b"other"), T0)
        .await
        .unwrap();
    assert!(!other.duplicate);
    assert_eq!(depth(&store, 1).await, 1);
}

/// Expiry removes entries older than the retention, their bodies, idempotency records
/// and expired link slots, and nothing newer.
pub async fn expire_removes_old_entries_and_bodies<S: Store>(store: S) {
    let day = 86_400;
    let retention = 30 * day;
    register_all(&store, &[1, 2, 3]).await;
    store
        .create_group(gid(1), dev(1), vec![dev(2), dev(3)])
        .await
        .unwrap();
    store
        .submit_message(message(1, 1, 0, 1, b"old"), T0)
        .await
        .unwrap();
    store
        .submit_message(message(1, 1, 0, 2, b"new"), T0 + 20 * day)
        .await
        .unwrap();
    store
        .put_link_slot([1; 16], vec![1], T0 + 600)
        .await
        .unwrap();
    store
        .put_link_slot([2; 16], vec![2], T0 + 40 * day)
        .await
        .unwrap();
    // Nothing is old enough yet.
    let none = store.expire(T0 + 29 * day, retention).await.unwrap();
    assert_eq!(none.entries, 0);
    assert_eq!(none.bodies, 0);
    assert_eq!(none.idempotency_records, 0);
    assert_eq!(none.link_slots, 1);

    let counts = store.expire(T0 + 31 * day, retention).await.unwrap();
    assert_eq!(counts.entries, 2);
    assert_eq!(counts.bodies, 1);
    assert_eq!(counts.idempotency_records, 1);
    assert_eq!(counts.link_slots, 0);
    assert_eq!(bodies(&store).await, 1);
    for n in [2, 3] {
        let entries = store.fetch(dev(n), 0, 10).await.unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].body, b"new".to_vec());
    }
    // The expired idempotency record no longer blocks the id; the newer one does.
    let resent = store
        .submit_message(message(1, 1, 0, 1, b"old"), T0 + 31 * day)
        .await
        .unwrap();
    assert!(!resent.duplicate);
    let dup = store
        .submit_message(message(1, 1, 0, 2, b"new"), T0 + 31 * day)
        .await
        .unwrap();
    assert!(dup.duplicate);
    // The long-lived slot survived.
    assert_eq!(
        store.take_link_slot([2; 16], T0 + 31 * day).await.unwrap(),
        Some(vec![2])
    );
}

/// A link slot is taken once; an expired one is gone; ids cannot be reused while live.
pub async fn link_slot_single_use_and_expiry<S: Store>(store: S) {
    store
        .put_link_slot([7; 16], b"sealed".to_vec(), T0 + 300)
        .await
        .unwrap();
    assert_eq!(
        store
            .put_link_slot([7; 16], b"other".to_vec(), T0 + 300)
            .await,
        Err(StoreError::SlotExists)
    );
    assert_eq!(
        store.take_link_slot([7; 16], T0 + 10).await.unwrap(),
        Some(b"sealed".to_vec())
    );
    assert_eq!(store.take_link_slot([7; 16], T0 + 11).await.unwrap(), None);
    store
        .put_link_slot([8; 16], b"late".to_vec(), T0 + 300)
        .await
        .unwrap();
    assert_eq!(store.take_link_slot([8; 16], T0 + 300).await.unwrap(), None);
    assert_eq!(store.take_link_slot([8; 16], T0).await.unwrap(), None);
    assert_eq!(store.take_link_slot([9; 16], T0).await.unwrap(), None);
}

/// A device removed from a group by a commit gets that commit and nothing afterwards.
pub async fn removed_member_gets_nothing_afterwards<S: Store>(store: S) {
    register_all(&store, &[1, 2, 3]).await;
    store
        .create_group(gid(1), dev(1), vec![dev(2), dev(3)])
        .await
        .unwrap();
    store
        .submit_commit(commit(1, 1, 0, &[], &[3]), T0)
        .await
        .unwrap();
    store
        .submit_message(message(1, 1, 1, 1, b"after"), T0)
        .await
        .unwrap();
    store
        .submit_commit(commit(1, 2, 1, &[], &[]), T0)
        .await
        .unwrap();
    let entries = store.fetch(dev(3), 0, 10).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].kind, EntryKind::Commit);
    assert_eq!(entries[0].body, vec![0xc0, 1, 0]);
    assert_eq!(depth(&store, 2).await, 2);
    // And it can no longer post.
    assert_eq!(
        store.submit_message(message(1, 3, 1, 2, b"x"), T0).await,
        Err(StoreError::NotAMember)
    );
    assert_eq!(
        store.submit_commit(commit(1, 3, 2, &[], &[]), T0).await,
        Err(StoreError::NotAMember)
    );
}

/// For stores that group-commit (they report [`Store::batch_stats`]; not part of
/// `store_suite!`, which the non-batching `MemoryStore` also runs): 300 concurrent
/// sends share transactions, and a refused request inside a batch (a non-member's
/// send, every third one) rolls back only itself.
pub async fn concurrent_writes_are_group_committed<S: Store>(store: S) {
    let store = Arc::new(store);
    register(&*store, "alice", 1, T0).await.unwrap();
    register(&*store, "bob", 2, T0).await.unwrap();
    register(&*store, "eve", 3, T0).await.unwrap();
    store
        .create_group(gid(1), dev(1), vec![dev(2)])
        .await
        .unwrap();
    let before = store.batch_stats().expect("a group-committing store");
    let mut tasks = Vec::new();
    for i in 0..300u64 {
        let store = Arc::clone(&store);
        let sender = if i % 3 == 0 { 3 } else { 1 };
        tasks.push(tokio::spawn(async move {
            (
                sender,
                store
                    .submit_message(message(1, sender, 0, 100 + i, b"m"), T0)
                    .await,
            )
        }));
    }
    for task in tasks {
        match task.await.unwrap() {
            (1, result) => assert!(!result.unwrap().duplicate),
            (_, result) => assert_eq!(result, Err(StoreError::NotAMember)),
        }
    }
    let after = store.batch_stats().unwrap();
    assert_eq!(after.writes - before.writes, 300);
    assert!(
        after.batches - before.batches < 300,
        "expected batching, got {after:?}"
    );
    assert!(after.largest > 1);
    assert_eq!(after.failed_commits, 0);
    assert_eq!(after.size_buckets.iter().sum::<u64>(), after.batches);
    assert_eq!(
        store.device_status(dev(2)).await.unwrap().mailbox_depth,
        200
    );
    assert_eq!(store.stats().await.unwrap().bodies, 200);
    let entries = store.fetch(dev(2), 0, 500).await.unwrap();
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
}

/// For tests of implementations behind a service (PostgreSQL, NATS): reports that
/// `service` is unreachable. With `SOTTO_REQUIRE_SERVICES=1` (as in CI) that is a test
/// failure; otherwise the caller skips the test after this loud message.
pub fn service_missing(service: &str, why: &dyn std::fmt::Display) {
    let required = std::env::var("SOTTO_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
    if required {
        panic!("{service} is required (SOTTO_REQUIRE_SERVICES=1) but unreachable: {why}");
    }
    eprintln!(
        "\n!!! SKIPPED: {service} is unreachable ({why}); this test did not run. \
         Start it, or set SOTTO_REQUIRE_SERVICES=1 to make this a failure. !!!\n"
    );
}
