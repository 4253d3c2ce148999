//! A lying server: key substitution and ghost devices are refused and reported.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use sotto_client::{Client, ClientError, Event};
use sotto_core::storage::{MemoryStorage, SottoProvider};
use sotto_core::{
    AccountKey, ConversationConfig, IdentityKeyPair, LocalDevice, generate_key_packages,
};
use sotto_proto::{DeviceList, Username};
use sotto_server_store::{Account, DeviceRecord};
use sotto_testkit::TestServer;

/// Someone (the server operator, say) who holds another identity key and makes
/// devices that claim to be `username`'s.
struct Impostor {
    identity: IdentityKeyPair,
    account: AccountKey,
    device: LocalDevice,
    provider: SottoProvider<MemoryStorage>,
}

impl Impostor {
    fn new(username: &str) -> Self {
        let provider = SottoProvider::<MemoryStorage>::default();
        let identity =
            IdentityKeyPair::generate(sotto_core::openmls_traits::OpenMlsProvider::rand(&provider))
                .unwrap();
        let rand = sotto_core::openmls_traits::OpenMlsProvider::rand(&provider);
        let account = AccountKey::generate(
            rand,
            &identity,
            &Username::parse(username).unwrap(),
            1,
            1_700_000_000,
        )
        .unwrap();
        let device = LocalDevice::create(rand, &account, "impostor", 1_700_000_000).unwrap();
        Self {
            identity,
            account,
            device,
            provider,
        }
    }

    fn key_package(&self) -> Vec<u8> {
        generate_key_packages(
            &self.provider,
            &self.device,
            &ConversationConfig::default(),
            1,
        )
        .unwrap()
        .one_time
        .remove(0)
    }

    fn device_list(&self) -> DeviceList {
        self.account
            .sign_device_list(99, vec![self.device.certificate().clone()])
    }
}

async fn user(server: &TestServer, who: &str) -> (Client, tempfile::TempDir) {
    common::register(server.url(), who).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_substituted_identity_key_for_a_pinned_contact_is_refused_and_reported() {
    let (server, lying) = TestServer::start_lying().unwrap();
    let (alice, _a) = user(&server, "alice").await;
    let (_bob, _b) = user(&server, "bob").await;
    // alice pins bob's real identity key (e.g. while comparing safety numbers).
    let before = alice.safety_number(&name("bob")).await.unwrap();

    // The server now hands out another key for bob, with a matching device list and
    // KeyPackage, all correctly signed by that other key.
    let mallory = Impostor::new("bob");
    let bob = Username::parse("bob").unwrap();
    let list = mallory.device_list();
    lying.lie_about_account(
        &bob,
        Account {
            username: bob.clone(),
            identity_key: mallory.identity.public(),
            device_list_bytes: list.to_bytes(),
            list_version: 99,
            created_at: 1_700_000_000,
            last_seen_day: 0,
            devices: vec![DeviceRecord {
                device_id: mallory.device.device_id(),
                certificate_bytes: mallory.device.certificate().to_bytes(),
                created_at: 1_700_000_000,
            }],
        },
    );
    lying.lie_about_key_packages(
        &bob,
        vec![(mallory.device.device_id(), mallory.key_package())],
    );

    let err = alice
        .send_text(name("bob"), "for bob only")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ClientError::Engine(_) | ClientError::Refused(_)),
        "{text}"
    );
    assert!(text.contains("bob"), "{text}");
    let events = alice.security_events().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].1.contains("bob"), "{events:?}");
    // Nothing was created that could carry a message, and the pin is unchanged.
    assert!(alice.conversations().unwrap().is_empty());
    assert_eq!(
        alice.safety_number(&name("bob")).await.unwrap().digits(),
        before.digits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ghost_device_slipped_into_a_users_key_packages_is_refused_and_reported() {
    let (server, lying) = TestServer::start_lying().unwrap();
    let (alice, _a) = user(&server, "alice").await;
    let (_bob, _b) = user(&server, "bob").await;
    let bob = Username::parse("bob").unwrap();

    // bob's real KeyPackage plus one for a device certified by another key.
    let mut claimed = lying.inner().claim_key_packages(&bob).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let ghost = Impostor::new("bob");
    claimed.push((ghost.device.device_id(), ghost.key_package()));
    lying.lie_about_key_packages(&bob, claimed);

    let err = alice
        .create_group("club", &[name("bob")])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("bob"), "{err}");
    let events = alice.security_events().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        alice.conversations().unwrap().is_empty(),
        "no half-made group"
    );
}

/// Not an attack: KeyPackages run low (claimed by others) and the client tops up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_packages_are_topped_up_when_few_remain() {
    let (server, lying) = TestServer::start_lying().unwrap();
    let (alice, _a) = user(&server, "alice").await;
    let (bob, _b) = user(&server, "bob").await;
    let bob_device = bob.whoami().unwrap().device_id;
    let bob_name = Username::parse("bob").unwrap();
    let start = lying.inner().device_status(bob_device).await.unwrap();
    assert!(start.one_time_key_packages >= 10, "{start:?}");
    // Others claim all but a few of bob's one-time KeyPackages.
    for _ in 0..start.one_time_key_packages - 3 {
        lying.inner().claim_key_packages(&bob_name).await.unwrap();
    }
    assert_eq!(
        lying
            .inner()
            .device_status(bob_device)
            .await
            .unwrap()
            .one_time_key_packages,
        3
    );
    // alice starts a conversation (claims one more); bob joins and notices.
    alice.send_text(name("bob"), "hi").await.unwrap();
    bob.sync().await.unwrap();
    let after = lying.inner().device_status(bob_device).await.unwrap();
    assert!(after.one_time_key_packages >= 50, "topped up: {after:?}");
    assert!(after.has_last_resort);
}

/// Garbage in the mailbox (a member's buggy or hostile client, or the server): the entry
/// is recorded as failed, shown, acked, and what follows is still delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_entry_is_recorded_and_does_not_wedge_the_queue() {
    let server = TestServer::start().unwrap();
    let (alice, _a) = user(&server, "alice").await;
    let (bob, _b) = user(&server, "bob").await;
    let sent = alice.send_text(name("bob"), "first").await.unwrap();
    bob.sync().await.unwrap();

    // A well-framed PrivateMessage for the right group and epoch whose ciphertext is
    // noise, stored as if alice's device had sent it.
    let epoch = 1;
    let body = sotto_testkit::framing::application(sent.conversation, epoch, &[0x5a; 120]);
    let accepted = server
        .state()
        .store()
        .submit_message(
            sotto_server_store::MessageSubmission {
                group: sent.conversation,
                sender: alice.whoami().unwrap().device_id,
                epoch,
                client_message_id: sotto_proto::MessageId::new_v7(1_900_000_000_000, &[9; 10]),
                body,
            },
            1_900_000_000,
        )
        .await
        .unwrap();
    assert_eq!(accepted.delivered.len(), 1);
    alice
        .send_text(name("bob"), "after the noise")
        .await
        .unwrap();

    let events = bob.sync().await.unwrap();
    let failed: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::Failed { .. }))
        .collect();
    assert_eq!(failed.len(), 1, "{events:?}");
    let texts: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => m.text.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["after the noise"]);
    assert_eq!(bob.failures().unwrap().len(), 1);
    // Acked: nothing comes back.
    assert!(bob.sync().await.unwrap().is_empty());
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_profile_holding_private_keys_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt as _;
    let server = TestServer::start().unwrap();
    let (_alice, home) = user(&server, "alice").await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(home.path()), 0o700);
    assert_eq!(mode(&home.path().join("profile.db")), 0o600);
}

/// A conversation whose epoch keeps moving under the sender (here: a server that
/// refuses every message as stale) ends in a distinct, retryable error, not in "bad
/// usage"; once the conversation settles, sending works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_that_keeps_changing_is_contention_not_bad_usage() {
    let (server, lying) = TestServer::start_lying().unwrap();
    let (alice, _a) = user(&server, "alice").await;
    let (_bob, _b) = user(&server, "bob").await;
    alice.send_text(name("bob"), "first").await.unwrap();
    lying.refuse_messages_as_stale(true);
    let err = alice.send_text(name("bob"), "second").await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Contention {
                operation: "sending"
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("try again"), "{err}");
    lying.refuse_messages_as_stale(false);
    alice.send_text(name("bob"), "third").await.unwrap();
}

/// A username written in a test.
fn name(text: &str) -> sotto_client::Username {
    text.parse().unwrap()
}

/// Links a second device to `client`'s account; answers the new client.
async fn link(server: &TestServer, client: &Client) -> (Client, tempfile::TempDir) {
    common::link(server.url(), client, "laptop").await
}

/// Issue 12, first demonstration: bob removed his laptop from his account. A server
/// that kept one of the laptop's KeyPackages returns it beside bob's current one when
/// erin starts a conversation with bob. Refused and reported; nothing is created and
/// the laptop receives nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_devices_key_package_from_a_lying_server_is_refused_and_reported() {
    let (server, lying) = TestServer::start_lying().unwrap();
    let (erin, _e) = user(&server, "erin").await;
    let (bob, _b) = user(&server, "bob").await;
    let (laptop, _l) = link(&server, &bob).await;
    let laptop_id = laptop.whoami().unwrap().device_id;
    let bob_name = name("bob");
    // The server keeps a KeyPackage of the laptop...
    let before = lying.inner().claim_key_packages(&bob_name).await.unwrap();
    let laptop_kp = before
        .into_iter()
        .find(|(d, _)| *d == laptop_id)
        .expect("the laptop has KeyPackages");
    // ...bob removes the laptop...
    bob.remove_device(laptop_id).await.unwrap();
    // ...and the server hands the kept KeyPackage out with bob's current one.
    let mut claimed = lying.inner().claim_key_packages(&bob_name).await.unwrap();
    assert_eq!(claimed.len(), 1, "bob has one device left");
    claimed.push(laptop_kp);
    lying.lie_about_key_packages(&bob_name, claimed);

    let err = erin
        .send_text(name("bob"), "for bob only")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Engine(e) if e.to_string().contains("not in their current device list")),
        "{err}"
    );
    let events = erin.security_events().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].1.contains(&laptop_id.to_string()), "{events:?}");
    assert!(
        erin.conversations().unwrap().is_empty(),
        "no half-made group"
    );
    // Nothing reached the laptop: its token was revoked, and no Welcome names it.
    assert!(
        lying
            .inner()
            .fetch(laptop_id, 0, 100)
            .await
            .map(|entries| entries.is_empty())
            .unwrap_or(true)
    );
}

/// A conversation whose members cannot be checked (the directory now answers another
/// key for bob, who just linked a device) is reported, and the sync goes on: it does
/// not wedge every later `receive`. Sending there stays refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_check_refused_for_one_conversation_does_not_stop_the_sync() {
    let (server, lying) = TestServer::start_lying().unwrap();
    let (alice, _a) = user(&server, "alice").await;
    let (bob, _b) = user(&server, "bob").await;
    let conv = alice
        .send_text(name("bob"), "hi")
        .await
        .unwrap()
        .conversation;
    bob.sync().await.unwrap();
    // bob links a laptop, which joins the conversation by bob's commit...
    let (_laptop, _l) = link(&server, &bob).await;
    // ...and the directory now hands out another key for bob.
    let mallory = Impostor::new("bob");
    let bob_name = name("bob");
    lying.lie_about_account(
        &bob_name,
        Account {
            username: bob_name.clone(),
            identity_key: mallory.identity.public(),
            device_list_bytes: mallory.device_list().to_bytes(),
            list_version: 99,
            created_at: 1_700_000_000,
            last_seen_day: 0,
            devices: vec![],
        },
    );
    let events = alice.sync().await.expect("the sync goes on");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Security { conversation: Some(c), .. } if *c == conv)),
        "{events:?}"
    );
    assert!(alice.send_text(conv, "still there?").await.is_err());
}
