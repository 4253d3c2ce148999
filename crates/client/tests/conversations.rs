//! End to end through the real server: 1:1, groups, membership changes, offline
//! delivery and de-duplication.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Server, name, pairs};
use sotto_client::ClientError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_both_ways() {
    let server = Server::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;

    let sent = alice
        .client
        .send_text(name("bob"), "hello bob")
        .await
        .unwrap();
    assert_eq!(bob.texts().await, pairs(&[("alice", "hello bob")]));
    let conv = sent.conversation;
    // bob answers in the same conversation, by username or by id.
    bob.client
        .send_text(name("alice"), "hi alice")
        .await
        .unwrap();
    bob.client.send_text(conv, "how are you?").await.unwrap();
    assert_eq!(
        alice.texts().await,
        pairs(&[
            ("alice", "hi alice"),
            ("bob", "hi alice"),
            ("bob", "how are you?")
        ])[1..]
            .to_vec()
    );
    // Same conversation on both sides, same history.
    let a: Vec<_> = alice
        .history(conv)
        .into_iter()
        .map(|m| (m.id, m.text, m.outgoing))
        .collect();
    let b: Vec<_> = bob
        .history(conv)
        .into_iter()
        .map(|m| (m.id, m.text, !m.outgoing))
        .collect();
    assert_eq!(a.len(), 3);
    assert_eq!(a, b);
    // Nothing more arrives: no duplicates.
    assert!(alice.texts().await.is_empty());
    assert!(bob.texts().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_to_an_unknown_user_is_a_clear_error() {
    let server = Server::start().await;
    let alice = server.user("alice").await;
    let err = alice
        .client
        .send_text(name("nobody"), "hi")
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::UnknownUser(ref u) if u == "nobody"),
        "{err}"
    );
    assert!(
        alice.client.conversations().unwrap().is_empty(),
        "nothing half-created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_of_four_with_members_added_and_removed() {
    let server = Server::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let dave = server.user("dave").await;
    let erin = server.user("erin").await;

    let g = alice
        .client
        .create_group("club", &[name("bob"), name("carol"), name("dave")])
        .await
        .unwrap();
    alice.client.send_text(g, "welcome all").await.unwrap();
    for u in [&bob, &carol, &dave] {
        assert_eq!(u.texts().await, pairs(&[("alice", "welcome all")]));
    }
    bob.client.send_text(g, "thanks").await.unwrap();
    for u in [&alice, &carol, &dave] {
        assert_eq!(u.texts().await, pairs(&[("bob", "thanks")]));
    }
    let members: Vec<String> = carol
        .client
        .members(g)
        .await
        .unwrap()
        .into_iter()
        .map(|(u, _)| u.to_string())
        .collect();
    assert_eq!(members, ["alice", "bob", "carol", "dave"]);

    // dave is removed: he does not read what follows.
    carol
        .client
        .remove_members(g, &[name("dave")])
        .await
        .unwrap();
    alice.client.send_text(g, "after dave left").await.unwrap();
    assert!(dave.texts().await.is_empty());
    for u in [&bob, &carol] {
        assert_eq!(u.texts().await, pairs(&[("alice", "after dave left")]));
    }
    let dave_view = dave.client.conversations().unwrap();
    assert!(!dave_view[0].conversation.active, "dave sees he is out");

    // erin is added: she reads what follows, not what came before.
    bob.client.add_members(g, &[name("erin")]).await.unwrap();
    alice.client.send_text(g, "hello erin").await.unwrap();
    assert_eq!(erin.texts().await, pairs(&[("alice", "hello erin")]));
    let erin_history: Vec<_> = erin.history(g).into_iter().filter_map(|m| m.text).collect();
    assert_eq!(erin_history, ["hello erin"]);
    let members: Vec<String> = alice
        .client
        .members(g)
        .await
        .unwrap()
        .into_iter()
        .map(|(u, _)| u.to_string())
        .collect();
    assert_eq!(members, ["alice", "bob", "carol", "erin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_recipient_gets_everything_in_order() {
    let server = Server::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    alice.client.send_text(name("bob"), "first").await.unwrap();
    assert_eq!(bob.texts().await.len(), 1);
    // bob is offline for a while.
    let texts: Vec<String> = (0..20).map(|i| format!("message {i}")).collect();
    for t in &texts {
        alice.client.send_text(name("bob"), t).await.unwrap();
    }
    let got: Vec<String> = bob.texts().await.into_iter().map(|(_, t)| t).collect();
    assert_eq!(got, texts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_group_changes_converge_after_retries() {
    let server = Server::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let _carol = server.user("carol").await;
    let _dave = server.user("dave").await;
    let g = alice
        .client
        .create_group("race", &[name("bob")])
        .await
        .unwrap();
    bob.client.sync().await.unwrap();

    // Both commit for the same epoch at the same time; one loses and retries.
    let (carol, dave) = (vec![name("carol")], vec![name("dave")]);
    let (a, b) = tokio::join!(
        alice.client.add_members(g, &carol),
        bob.client.add_members(g, &dave),
    );
    a.unwrap();
    b.unwrap();
    alice.client.sync().await.unwrap();
    bob.client.sync().await.unwrap();
    let ma = alice.client.members(g).await.unwrap();
    let mb = bob.client.members(g).await.unwrap();
    assert_eq!(ma, mb);
    let names: Vec<String> = ma.into_iter().map(|(u, _)| u.to_string()).collect();
    assert_eq!(names, ["alice", "bob", "carol", "dave"]);
    // And they can still talk.
    alice.client.send_text(g, "we agree").await.unwrap();
    assert_eq!(bob.texts().await, pairs(&[("alice", "we agree")]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safety_numbers_match_and_verify_checks_the_number() {
    let server = Server::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let a = alice.client.safety_number(&name("bob")).await.unwrap();
    let b = bob.client.safety_number(&name("alice")).await.unwrap();
    assert_eq!(a.digits(), b.digits());
    assert_eq!(a.digits().len(), 60);
    let mut wrong = a.digits();
    wrong.replace_range(0..1, if wrong.starts_with('0') { "1" } else { "0" });
    assert!(!alice.client.verify(&name("bob"), &wrong).await.unwrap());
    assert!(!alice.client.is_verified(&name("bob")).unwrap());
    assert!(
        alice
            .client
            .verify(&name("bob"), &a.grouped())
            .await
            .unwrap()
    );
    assert!(alice.client.is_verified(&name("bob")).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disappearing_messages_are_deleted_locally_when_their_time_is_up() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let server = Server::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let now = Arc::new(AtomicU64::new(1_900_000_000_000));
    for u in [&mut alice, &mut bob] {
        let clock = now.clone();
        u.client
            .set_clock(Arc::new(move || clock.load(Ordering::SeqCst)));
    }
    let sent = alice
        .client
        .send_text(name("bob"), "before the timer")
        .await
        .unwrap();
    let conv = sent.conversation;
    alice.client.set_disappearing(conv, Some(60)).await.unwrap();
    alice
        .client
        .send_text(conv, "gone in a minute")
        .await
        .unwrap();
    let events = bob.client.sync().await.unwrap();
    assert!(
        events.iter().any(|e| matches!(
            e,
            sotto_client::Event::Timer {
                seconds: Some(60),
                ..
            }
        )),
        "{events:?}"
    );
    let texts = |u: &common::User| -> Vec<String> {
        u.history(conv).into_iter().filter_map(|m| m.text).collect()
    };
    assert_eq!(texts(&bob), ["before the timer", "gone in a minute"]);

    now.fetch_add(59_000, Ordering::SeqCst);
    assert_eq!(texts(&bob).len(), 2, "not yet");
    now.fetch_add(2_000, Ordering::SeqCst);
    assert_eq!(texts(&bob), ["before the timer"]);
    assert_eq!(texts(&alice), ["before the timer"]);

    // Turned off: new messages stay.
    bob.client.set_disappearing(conv, None).await.unwrap();
    bob.client.send_text(conv, "kept").await.unwrap();
    alice.client.sync().await.unwrap();
    now.fetch_add(3_600_000, Ordering::SeqCst);
    assert_eq!(texts(&alice), ["before the timer", "kept"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_delivers_over_the_websocket_as_messages_arrive() {
    let server = Server::start().await;
    let alice = server.user("alice").await;
    let bob = std::sync::Arc::new(server.user("bob").await);
    alice
        .client
        .send_text(name("bob"), "before listening")
        .await
        .unwrap();

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let listener = {
        let bob = bob.clone();
        tokio::spawn(async move {
            bob.client
                .listen(
                    move |events| {
                        for e in events {
                            if let sotto_client::Event::Message(m) = e {
                                let _ = tx.send(m.text.unwrap_or_default());
                            }
                        }
                    },
                    async {
                        let _ = stop_rx.await;
                    },
                )
                .await
        })
    };
    async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
        tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv())
            .await
            .expect("no message within 30 s")
            .unwrap()
    }
    // The backlog first, then each message as it is sent.
    assert_eq!(next(&mut rx).await, "before listening");
    for i in 0..3 {
        alice
            .client
            .send_text(name("bob"), &format!("live {i}"))
            .await
            .unwrap();
        assert_eq!(next(&mut rx).await, format!("live {i}"));
    }
    assert_eq!(
        server.inner.state().live_sockets(),
        1,
        "bob holds a WebSocket"
    );
    stop_tx.send(()).unwrap();
    listener.await.unwrap().unwrap();
    // Everything was acked: a later sync finds nothing new.
    assert!(bob.texts().await.is_empty());
    assert_eq!(
        bob.history(alice.client.conversations().unwrap()[0].conversation.id)
            .len(),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_leaves_and_the_others_commit_the_removal() {
    let server = Server::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let g = alice
        .client
        .create_group("trio", &[name("bob"), name("carol")])
        .await
        .unwrap();
    bob.client.sync().await.unwrap();
    carol.client.sync().await.unwrap();

    carol.client.leave(g).await.unwrap();
    assert!(!carol.client.conversations().unwrap()[0].conversation.active);
    // bob's client commits carol's proposal when it syncs; alice applies that commit.
    let events = bob.client.sync().await.unwrap();
    assert!(
        events.iter().any(|e| matches!(e, sotto_client::Event::Members { removed, .. } if removed.iter().any(|(u, _)| u.as_str() == "carol"))),
        "{events:?}"
    );
    let names = |m: Vec<(sotto_client::Username, Vec<sotto_client::DeviceId>)>| -> Vec<String> {
        m.into_iter().map(|(u, _)| u.to_string()).collect()
    };
    assert_eq!(
        names(alice.client.members(g).await.unwrap()),
        ["alice", "bob"]
    );
    assert_eq!(
        names(bob.client.members(g).await.unwrap()),
        ["alice", "bob"]
    );

    alice.client.send_text(g, "just us").await.unwrap();
    assert_eq!(bob.texts().await, pairs(&[("alice", "just us")]));
    assert!(
        carol.texts().await.is_empty(),
        "carol left: she reads nothing more"
    );
}

/// A conversation is found the way a person names it: a contact, a group's name, or
/// the start of its id; a name two groups share is refused with both listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_are_found_by_contact_group_name_or_id_prefix() {
    let server = Server::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let _carol = server.user("carol").await;

    let direct = alice
        .client
        .send_text(name("bob"), "hi")
        .await
        .unwrap()
        .conversation;
    let hikers = alice
        .client
        .create_group("Hikers", &[name("bob")])
        .await
        .unwrap();
    let club1 = alice
        .client
        .create_group("club", &[name("bob")])
        .await
        .unwrap();
    let club2 = alice
        .client
        .create_group("club", &[name("carol")])
        .await
        .unwrap();

    let find = |what: &'static str| alice.client.find_conversation(what);
    assert_eq!(find("bob").await.unwrap(), direct);
    assert_eq!(find("hikers").await.unwrap(), hikers, "letter case aside");
    let prefix = &hikers.to_string()[..8];
    assert_eq!(
        alice.client.find_conversation(prefix).await.unwrap(),
        hikers
    );
    let err = find("club").await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, ClientError::Ambiguous { candidates, .. } if candidates.len() == 2),
        "{text}"
    );
    assert!(
        text.contains(&club1.to_string()) && text.contains(&club2.to_string()),
        "{text}"
    );
    assert!(matches!(
        find("nobody-here").await.unwrap_err(),
        ClientError::UnknownConversation(_)
    ));

    // Sending by group name reaches the group; a user's name is a user.
    let to = alice.client.find_recipient("Hikers").await.unwrap();
    assert_eq!(to, sotto_client::Recipient::Conversation(hikers));
    assert_eq!(
        alice.client.find_recipient("dave").await.unwrap(),
        sotto_client::Recipient::User(name("dave"))
    );
    alice.client.send_text(to, "trail at nine").await.unwrap();
    let events = bob.client.sync().await.unwrap();
    let texts: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            sotto_client::Event::Message(m) => m.text.clone(),
            _ => None,
        })
        .collect();
    assert!(texts.contains(&"trail at nine".to_owned()), "{texts:?}");
    // Bob, in a one-to-one conversation with alice and two groups of two with her,
    // sees the groups as groups under their names (not as more one-to-one chats).
    let bobs = bob.client.conversations().unwrap();
    let kinds: Vec<(String, Option<String>)> = bobs
        .iter()
        .map(|c| (c.conversation.kind.clone(), c.conversation.name.clone()))
        .collect();
    assert_eq!(bobs.len(), 3, "{kinds:?}");
    assert!(
        kinds.contains(&("group".into(), Some("Hikers".into()))),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("group".into(), Some("club".into()))),
        "{kinds:?}"
    );
    assert_eq!(bob.client.find_conversation("alice").await.unwrap(), direct);
}

/// Every membership event names the member who committed it, on every side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_events_name_who_committed_them() {
    let server = Server::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let g = alice
        .client
        .create_group("trio", &[name("bob"), name("carol")])
        .await
        .unwrap();
    bob.client.sync().await.unwrap();
    carol.client.sync().await.unwrap();
    alice.client.sync().await.unwrap();

    bob.client
        .remove_members(g, &[name("carol")])
        .await
        .unwrap();
    let by_of = |events: Vec<sotto_client::Event>| -> Vec<(String, bool)> {
        events
            .into_iter()
            .filter_map(|e| match e {
                sotto_client::Event::Members { by, removed_me, .. } => {
                    Some((by.to_string(), removed_me))
                }
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        by_of(bob.client.sync().await.unwrap()),
        [("bob".to_owned(), false)]
    );
    assert_eq!(
        by_of(alice.client.sync().await.unwrap()),
        [("bob".to_owned(), false)]
    );
    assert_eq!(
        by_of(carol.client.sync().await.unwrap()),
        [("bob".to_owned(), true)]
    );
}
