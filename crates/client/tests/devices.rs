//! A second device linked through the relay, then removed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Server, name, pairs};
use sotto_client::{Client, ClientError, Event, LinkCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_device_reads_and_sends_then_stops_when_removed() {
    let server = Server::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let sent = alice
        .client
        .send_text(name("bob"), "before linking")
        .await
        .unwrap();
    let conv = sent.conversation;
    bob.texts().await;

    // alice's new device shows a code; her first device approves it.
    let home2 = tempfile::tempdir().unwrap();
    let alice2 = std::sync::Arc::new(Client::open(home2.path(), server.inner.url()).unwrap());
    let (code_tx, code_rx) = tokio::sync::oneshot::channel();
    let starter = {
        let alice2 = alice2.clone();
        tokio::spawn(async move {
            alice2
                .link_start("laptop", move |code| {
                    let _ = code_tx.send(code.to_owned());
                })
                .await
        })
    };
    let code: LinkCode = code_rx.await.unwrap().parse().unwrap();
    assert!(matches!(
        "definitely-not-a-code".parse::<LinkCode>(),
        Err(ClientError::InvalidLinkCode)
    ));
    let new_id = alice.client.link_approve(&code).await.unwrap();
    let me2 = starter.await.unwrap().unwrap();
    assert_eq!(me2.username.as_str(), "alice");
    assert_eq!(me2.device_id, new_id);
    // The code is single use.
    let again = alice.client.link_approve(&code).await.unwrap_err();
    assert!(matches!(again, ClientError::Link(_)), "{again}");

    let devices = alice.client.devices().await.unwrap();
    assert_eq!(devices.len(), 2);
    assert_eq!(devices.iter().filter(|d| d.this_device).count(), 1);

    // alice2 joined the existing conversation; bob is told alice added a device.
    let events = alice2.sync().await.unwrap();
    assert!(
        events.iter().any(|e| matches!(e, Event::Joined { .. })),
        "{events:?}"
    );
    let events = bob.client.sync().await.unwrap();
    assert!(
        events.iter().any(|e| matches!(e, Event::Members { added, linked, .. }
            if added.is_empty() && linked.iter().any(|c| c.user.as_str() == "alice" && c.device == new_id && c.name == "laptop"))),
        "{events:?}"
    );
    // The new device does not read what came before it.
    assert!(alice2.history(conv).unwrap().is_empty());

    // bob writes: both of alice's devices read it.
    bob.client
        .send_text(name("alice"), "to both of you")
        .await
        .unwrap();
    assert_eq!(alice.texts().await, pairs(&[("bob", "to both of you")]));
    let got: Vec<String> = alice2
        .sync()
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            Event::Message(m) => m.text,
            _ => None,
        })
        .collect();
    assert_eq!(got, ["to both of you"]);

    // alice2 writes: bob reads it, alice's first device shows it as sent by her.
    alice2.send_text(conv, "from my laptop").await.unwrap();
    assert_eq!(bob.texts().await, pairs(&[("alice", "from my laptop")]));
    let mine = alice.client.sync().await.unwrap();
    let Some(Event::Message(m)) = mine.into_iter().find(|e| matches!(e, Event::Message(_))) else {
        panic!("alice's first device did not get her own message");
    };
    assert!(m.outgoing, "sent by me");
    assert_eq!(m.sender_device, new_id);

    // Safety numbers are the same on a second device.
    assert_eq!(
        alice2.safety_number(&name("bob")).await.unwrap().digits(),
        alice
            .client
            .safety_number(&name("bob"))
            .await
            .unwrap()
            .digits()
    );

    // alice removes the laptop: it gets nothing more, and its token stops working.
    alice.client.remove_device(new_id).await.unwrap();
    bob.client
        .send_text(name("alice"), "laptop gone?")
        .await
        .unwrap();
    assert_eq!(alice.texts().await, pairs(&[("bob", "laptop gone?")]));
    let err = alice2.sync().await.unwrap_err();
    assert_eq!(
        err.server_code(),
        Some(sotto_client::ErrorCode::Unauthorized),
        "{err}"
    );
    let members = bob.client.members(conv).await.unwrap();
    let alice_devices = &members
        .iter()
        .find(|(u, _)| u.as_str() == "alice")
        .unwrap()
        .1;
    assert_eq!(
        alice_devices.len(),
        1,
        "bob's roster dropped the removed device"
    );
    assert_eq!(alice.client.devices().await.unwrap().len(), 1);
}
