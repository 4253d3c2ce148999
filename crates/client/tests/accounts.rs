//! Issue 12, items 2, 3, 6 and 7: removal revokes (a copied profile is useless), a
//! stolen primary is reported and recovery revokes it, a lost phone comes back with or
//! without the recovery key, conversations follow device lists, and expired messages
//! leave nothing in the profile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{link, name, register};
use sotto_client::{Client, ClientError, ConversationId, Event, LinkCode};
use sotto_core::openmls_traits::signatures::Signer as _;
use sotto_core::{DeviceSigner, openmls_traits::OpenMlsProvider as _};
use sotto_proto::{DeviceList, DeviceListFields};
use sotto_testkit::TestServer;
use tempfile::TempDir;

/// Copies a profile directory, as a thief with a moment's access to the disk would.
fn copy_profile(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

fn texts(client: &Client, conv: ConversationId) -> Vec<String> {
    client
        .history(conv)
        .unwrap()
        .into_iter()
        .filter_map(|m| m.text)
        .collect()
}

fn security(client: &Client) -> Vec<String> {
    client
        .security_events()
        .unwrap()
        .into_iter()
        .map(|(_, d)| d)
        .collect()
}

/// The member devices of `conv` as `client` sees them: (user, device name).
fn members(client: &Client, conv: ConversationId) -> Vec<(String, String)> {
    let mut m: Vec<(String, String)> = client
        .member_devices(conv)
        .unwrap()
        .into_iter()
        .map(|e| (e.user.to_string(), e.name))
        .collect();
    m.sort();
    m
}

/// alice and bob registered on `url`, with the one-to-one conversation alice started
/// and bob has read.
async fn talking(url: &str) -> (Client, TempDir, Client, TempDir, ConversationId) {
    let (alice, alice_home) = register(url, "alice").await;
    let (bob, bob_home) = register(url, "bob").await;
    let conv = alice
        .send_text(name("bob"), "hello")
        .await
        .unwrap()
        .conversation;
    bob.sync().await.unwrap();
    (alice, alice_home, bob, bob_home, conv)
}

/// Issue 12, second demonstration: a copy of a linked device's profile, taken before
/// the device was removed. After removal it cannot read new messages, cannot link a
/// device, and a device list it makes is refused by every client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_a_removed_linked_device_reads_links_and_publishes_nothing() {
    let (server, lying) = TestServer::start_lying().unwrap();
    let url = server.url();
    let (alice, _a, bob, _b, conv) = talking(url).await;
    let (laptop, laptop_home) = link(url, &alice, "laptop").await;
    laptop.sync().await.unwrap();
    assert!(!laptop.whoami().unwrap().primary);
    let stolen_home = tempfile::tempdir().unwrap();
    copy_profile(laptop_home.path(), stolen_home.path());
    let stolen = Client::open(stolen_home.path(), url).unwrap();

    let laptop_id = laptop.whoami().unwrap().device_id;
    alice.remove_device(laptop_id).await.unwrap();
    bob.sync().await.unwrap();
    bob.send_text(conv, "after the laptop was removed")
        .await
        .unwrap();

    // It reads nothing new: its token is revoked and it left every conversation.
    let err = stolen.sync().await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Server { code, .. } if *code == sotto_client::ErrorCode::Unauthorized),
        "{err}"
    );
    assert!(!texts(&stolen, conv).contains(&"after the laptop was removed".to_owned()));
    assert!(members(&bob, conv).iter().all(|(_, n)| n != "laptop"));

    // It cannot link a device: it never held the account key.
    let code: LinkCode = "A".repeat(43).parse().unwrap();
    assert!(matches!(
        stolen.link_approve(&code).await,
        Err(ClientError::NotPrimary)
    ));

    // The best list it can make: alice's real root and account-key certificate, a
    // ghost device, signed by a key it holds (not the account key). A server that
    // serves it gets it refused by every client.
    let list_now = lying
        .inner()
        .account(&name("alice"))
        .await
        .unwrap()
        .unwrap();
    let real = DeviceList::from_bytes(&list_now.device_list_bytes).unwrap();
    let provider =
        sotto_core::storage::SottoProvider::<sotto_core::storage::MemoryStorage>::default();
    let key = DeviceSigner::generate(provider.rand()).unwrap();
    let fields = DeviceListFields {
        username: name("alice"),
        identity_key: *real.identity_key(),
        account: real.account().clone(),
        version: real.version() + 1,
        devices: real.devices().to_vec(),
    };
    let signature: [u8; 64] = key
        .sign(&fields.to_be_signed())
        .unwrap()
        .try_into()
        .unwrap();
    let forged = DeviceList::from_parts(fields, signature);
    let mut served = list_now.clone();
    served.device_list_bytes = forged.to_bytes();
    served.list_version = forged.version();
    lying.lie_about_account(&name("alice"), served);
    let err = bob.trust(&name("alice")).await.unwrap_err();
    assert!(matches!(err, ClientError::Refused(_)), "{err}");
    // Nothing changed for bob: alice is still reachable on her phone.
    bob.send_text(conv, "still only alice's phone")
        .await
        .unwrap();
    alice.sync().await.unwrap();
    assert!(texts(&alice, conv).contains(&"still only alice's phone".to_owned()));
}

/// Tokens can be rotated: a copy of a device's profile taken before the rotation can
/// no longer act as the device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_locks_out_an_earlier_copy_of_the_profile() {
    let server = TestServer::start().unwrap();
    let (alice, alice_home) = register(server.url(), "alice").await;
    let copy_home = tempfile::tempdir().unwrap();
    copy_profile(alice_home.path(), copy_home.path());
    let copy = Client::open(copy_home.path(), server.url()).unwrap();
    copy.sync().await.unwrap();
    alice.rotate_token().await.unwrap();
    alice.sync().await.unwrap();
    let err = copy.sync().await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Server { code, .. } if *code == sotto_client::ErrorCode::Unauthorized),
        "{err}"
    );
}

/// A thief with a copy of the primary's profile holds the account key and links a
/// ghost device. The real primary is told (the list was not made by it); the owner
/// recovers with the recovery key, which revokes the old account key, the thief's copy
/// and the ghost; bob's conversation drops them and gets alice's new device, and
/// bob's verification of alice stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_primary_is_reported_and_recovery_revokes_it_and_its_ghost() {
    let server = TestServer::start().unwrap();
    let url = server.url();
    let home = tempfile::tempdir().unwrap();
    let alice = Client::open(home.path(), url).unwrap();
    let registered = alice.register(&name("alice"), "phone").await.unwrap();
    let recovery = registered.recovery_key.clone().unwrap();
    assert!(
        !format!("{registered:?}").contains(recovery.as_str()),
        "the recovery key never shows in Debug output"
    );
    let (bob, _b) = register(url, "bob").await;
    let conv = alice
        .send_text(name("bob"), "hello bob")
        .await
        .unwrap()
        .conversation;
    bob.sync().await.unwrap();
    let number = bob.safety_number(&name("alice")).await.unwrap();
    assert!(bob.verify(&name("alice"), &number.digits()).await.unwrap());

    let thief_home = tempfile::tempdir().unwrap();
    copy_profile(home.path(), thief_home.path());
    let thief = Client::open(thief_home.path(), url).unwrap();
    let (ghost, _g) = link(url, &thief, "ghost").await;
    ghost.sync().await.unwrap();

    // The real phone hears of a list it did not sign.
    let _ = alice.sync().await;
    assert!(
        security(&alice)
            .iter()
            .any(|d| d.contains("was not made by this device")),
        "{:?}",
        security(&alice)
    );

    // alice recovers on a new phone.
    let new_home = tempfile::tempdir().unwrap();
    let alice2 = Client::open(new_home.path(), url).unwrap();
    let wrong = alice2
        .recover(&name("alice"), "AAAAA-AAAAA", "new phone")
        .await
        .unwrap_err();
    assert!(
        matches!(wrong, ClientError::InvalidRecoveryKey(_)),
        "{wrong}"
    );
    alice2
        .recover(&name("alice"), &recovery, "new phone")
        .await
        .unwrap();
    assert!(alice2.whoami().unwrap().primary);

    // bob is told, informationally; his conversation follows alice's new list.
    let events = bob.sync().await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Contact { user, detail }
            if user.as_str() == "alice" && detail.contains("re-established"))),
        "{events:?}"
    );
    assert_eq!(
        members(&bob, conv),
        vec![
            ("alice".to_owned(), "new phone".to_owned()),
            ("bob".to_owned(), "phone".to_owned())
        ]
    );
    assert!(
        bob.is_verified(&name("alice")).unwrap(),
        "same root: still verified"
    );
    bob.send_text(conv, "welcome back").await.unwrap();
    alice2.sync().await.unwrap();
    assert_eq!(texts(&alice2, conv), ["welcome back"]);
    // The ghost and the thief are cut off.
    assert!(ghost.sync().await.is_err());
    assert!(!texts(&ghost, conv).contains(&"welcome back".to_owned()));
    let (_, _) = (thief.sync().await, ());
    let code: LinkCode = "A".repeat(43).parse().unwrap();
    assert!(thief.link_approve(&code).await.is_err());
}

/// A lost phone without the recovery key: the operator releases the name, bob
/// registers again, alice's sends to him fail loudly until she accepts his new key,
/// and then the same conversation carries his new device and drops the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_phone_without_the_recovery_key_comes_back_through_trust() {
    let (server, lying) = TestServer::start_lying().unwrap();
    let url = server.url();
    let (alice, _a, bob, _b, conv) = talking(url).await;
    let old_number = alice.safety_number(&name("bob")).await.unwrap();
    drop(bob);

    // The operator releases "bob" (`sotto-server admin release-username bob`).
    lying
        .inner()
        .release_account(&name("bob"), 1_900_000_000)
        .await
        .unwrap();
    alice.sync().await.unwrap();
    let err = alice.send_text(conv, "are you there?").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Unreachable { user, .. } if user.as_str() == "bob"),
        "{err}"
    );

    // bob registers again: a new identity.
    let (bob2, _b2) = register(url, "bob").await;
    let err = alice.send_text(conv, "is it you?").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::SafetyNumberChanged(user) if user.as_str() == "bob"),
        "{err}"
    );
    assert!(
        security(&alice)
            .iter()
            .any(|d| d.contains("safety number changed")),
        "{:?}",
        security(&alice)
    );
    let pending = alice.pending_safety_number(&name("bob")).unwrap().unwrap();
    assert_ne!(pending.digits(), old_number.digits());
    assert_eq!(
        alice.safety_number(&name("bob")).await.unwrap().digits(),
        old_number.digits(),
        "the pinned key stays until alice accepts the new one"
    );

    assert!(alice.trust(&name("bob")).await.unwrap());
    assert_eq!(
        alice.safety_number(&name("bob")).await.unwrap().digits(),
        pending.digits()
    );
    assert!(!alice.is_verified(&name("bob")).unwrap());
    alice.send_text(conv, "welcome back, bob").await.unwrap();
    let events = bob2.sync().await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Joined { conversation, .. } if *conversation == conv)),
        "{events:?}"
    );
    assert_eq!(texts(&bob2, conv), ["welcome back, bob"]);
    assert_eq!(members(&alice, conv).len(), 2, "the old device is gone");
}

/// Issue 12, item 7: a disappearing message and the attachment saved from it leave
/// no copy in the profile directory (database, WAL, attachments) after expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_message_and_its_attachment_leave_nothing_in_the_profile() {
    let server = TestServer::start().unwrap();
    let url = server.url();
    let (alice, _a) = register(url, "alice").await;
    let bob_home = tempfile::tempdir().unwrap();
    let mut bob = Client::open(bob_home.path(), url).unwrap();
    bob.register(&name("bob"), "phone").await.unwrap();
    let now = Arc::new(AtomicU64::new(1_900_000_000_000));
    let clock = now.clone();
    bob.set_clock(Arc::new(move || clock.load(Ordering::SeqCst)));

    let conv = alice
        .send_text(name("bob"), "hello")
        .await
        .unwrap()
        .conversation;
    alice.set_disappearing(conv, Some(60)).await.unwrap();
    let secret = "the-launch-code-is-7713-9904-2210";
    alice.send_text(conv, secret).await.unwrap();
    let file_dir = tempfile::tempdir().unwrap();
    let file = file_dir.path().join("plans.txt");
    let file_secret = "attachment-secret-4471-0016-5523";
    std::fs::write(&file, file_secret.repeat(20)).unwrap();
    alice
        .send_file(conv, &file, Some("caption-6612"))
        .await
        .unwrap();

    let events = bob.sync().await.unwrap();
    for e in &events {
        if let Event::Message(m) = e
            && m.attachment.is_some()
        {
            bob.save_attachment(conv, m.id, None).await.unwrap();
        }
    }
    let found = |needle: &str| grep_dir(bob_home.path(), needle.as_bytes());
    assert!(found(secret), "the message is stored before it expires");
    assert!(
        found(file_secret),
        "the attachment is saved before it expires"
    );

    now.fetch_add(61_000, Ordering::SeqCst);
    bob.sync().await.unwrap();
    assert_eq!(texts(&bob, conv), ["hello"]);
    for needle in [secret, file_secret, "caption-6612"] {
        assert!(
            !found(needle),
            "{needle} is still in bob's profile directory"
        );
    }
}

/// Whether any file under `dir` contains `needle`.
fn grep_dir(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        if path.is_dir() {
            grep_dir(&path, needle)
        } else {
            std::fs::read(&path)
                .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        }
    })
}

/// Issue 12, item 5: each device refreshes its own keys (a self-update commit) in a
/// conversation with traffic at least once a day, never in a quiet one, and at once
/// after a device of its account was removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_self_update_daily_where_active_and_at_once_after_a_removal() {
    let (server, store) = TestServer::start_lying().unwrap();
    let url = server.url();
    let now = Arc::new(AtomicU64::new(1_900_000_000_000));
    let with_clock = |mut client: Client| {
        let clock = now.clone();
        client.set_clock(Arc::new(move || clock.load(Ordering::SeqCst)));
        client
    };
    let alice_home = tempfile::tempdir().unwrap();
    let alice = with_clock(Client::open(alice_home.path(), url).unwrap());
    alice.register(&name("alice"), "phone").await.unwrap();
    let bob_home = tempfile::tempdir().unwrap();
    let bob = with_clock(Client::open(bob_home.path(), url).unwrap());
    bob.register(&name("bob"), "phone").await.unwrap();
    let conv = alice
        .send_text(name("bob"), "hello")
        .await
        .unwrap()
        .conversation;
    bob.sync().await.unwrap();
    let epoch = || async { store.inner().group(conv).await.unwrap().unwrap().epoch };
    let start = epoch().await;
    alice.sync().await.unwrap();
    assert_eq!(epoch().await, start, "not due yet");

    const DAY_MS: u64 = 86_400_000;
    now.fetch_add(DAY_MS / 2, Ordering::SeqCst);
    bob.send_text(conv, "midday").await.unwrap();
    now.fetch_add(DAY_MS / 2 + 60_000, Ordering::SeqCst);
    alice.sync().await.unwrap();
    assert_eq!(epoch().await, start + 1, "alice refreshed her keys");
    bob.sync().await.unwrap();
    assert_eq!(epoch().await, start + 2, "and so did bob");
    assert_eq!(
        texts(&bob, conv),
        ["hello", "midday"],
        "and nothing else shows"
    );

    // A quiet day: nobody updates.
    now.fetch_add(DAY_MS + 60_000, Ordering::SeqCst);
    alice.sync().await.unwrap();
    bob.sync().await.unwrap();
    assert_eq!(epoch().await, start + 2);

    // bob unlinks a laptop: he commits its removal, then refreshes his own keys.
    let (laptop, _l) = link(url, &bob, "laptop").await;
    laptop.sync().await.unwrap();
    let linked = epoch().await;
    bob.remove_device(laptop.whoami().unwrap().device_id)
        .await
        .unwrap();
    assert_eq!(epoch().await, linked + 2, "removal, then a self-update");
}

/// Issue 12, third demonstration: `devices remove` left the device in groups whose
/// local roster did not show it. Here alice's phone has not even seen the group carol
/// made with her laptop in it; carol's client learns of alice's new list from the
/// server's notice and removes the laptop before anything more is said there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_reaches_a_group_the_removers_roster_does_not_show() {
    let server = TestServer::start().unwrap();
    let url = server.url();
    let (alice, _a) = register(url, "alice").await;
    let (carol, _c) = register(url, "carol").await;
    let (laptop, _l) = link(url, &alice, "laptop").await;
    let club = carol.create_group("club", &[name("alice")]).await.unwrap();
    laptop.sync().await.unwrap();
    assert!(members(&carol, club).contains(&("alice".to_owned(), "laptop".to_owned())));

    // alice's phone never gets the Welcome (its mailbox is emptied behind its back):
    // it has no roster of "club" at all.
    discard_mailbox(url, _a.path()).await;
    alice
        .remove_device(laptop.whoami().unwrap().device_id)
        .await
        .unwrap();
    assert!(matches!(
        alice.member_devices(club),
        Err(ClientError::UnknownConversation(_))
    ));
    let events = carol.sync().await.unwrap();
    assert!(
        !members(&carol, club).iter().any(|(_, n)| n == "laptop"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Members { by, unlinked, .. }
            if by.as_str() == "carol" && unlinked.iter().any(|d| d.name == "laptop"))),
        "carol's client made the removal: {events:?}"
    );
    carol
        .send_text(club, "laptop must not read this")
        .await
        .unwrap();
    assert!(laptop.sync().await.is_err());
    assert!(!texts(&laptop, club).contains(&"laptop must not read this".to_owned()));
}

/// Acks everything in the mailbox of the device whose profile is in `home`, without
/// processing it (a device that lost those entries).
async fn discard_mailbox(url: &str, home: &Path) {
    let db = rusqlite::Connection::open(home.join("profile.db")).unwrap();
    let token: Vec<u8> = db
        .query_row("SELECT value FROM meta WHERE key = 'token'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let token = String::from_utf8(token).unwrap();
    let http = reqwest::Client::new();
    http.post(format!("{url}/v1/mailbox/ack"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"up_to": u64::MAX >> 1}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
}
