//! Issue 12, item 3: conversations follow device lists. Random schedules of linking and
//! removing devices and adding a member, against a real server; once every client has
//! synced, every conversation's members are exactly the devices its users' current
//! device lists name, on every device that is still in it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use common::{link, name, register};
use proptest::prelude::*;
use sotto_client::{Client, ConversationId, DeviceId};
use sotto_proto::DeviceList;
use sotto_testkit::TestServer;
use tempfile::TempDir;

#[derive(Debug, Clone)]
enum Step {
    /// alice links another device.
    LinkAlice,
    /// bob links another device.
    LinkBob,
    /// alice's primary removes one of her linked devices (the n-th, wrapping).
    RemoveAlice(usize),
    /// bob's primary removes one of his linked devices.
    RemoveBob(usize),
    /// alice adds carol to the group.
    AddCarol,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        Just(Step::LinkAlice),
        Just(Step::LinkBob),
        (0usize..4).prop_map(Step::RemoveAlice),
        (0usize..4).prop_map(Step::RemoveBob),
        Just(Step::AddCarol),
    ]
}

struct Account {
    primary: (Client, TempDir),
    linked: Vec<(Client, TempDir)>,
}

impl Account {
    fn clients(&self) -> impl Iterator<Item = &Client> {
        std::iter::once(&self.primary.0).chain(self.linked.iter().map(|(c, _)| c))
    }

    async fn remove(&mut self, n: usize) {
        if self.linked.is_empty() {
            return;
        }
        let (gone, _home) = self.linked.remove(n % self.linked.len());
        let id = gone.whoami().unwrap().device_id;
        self.primary.0.remove_device(id).await.unwrap();
    }
}

/// The devices the server's current list names for `user`.
async fn listed(server: &sotto_testkit::LyingStore, user: &str) -> BTreeSet<DeviceId> {
    let account = server.inner().account(&name(user)).await.unwrap().unwrap();
    DeviceList::from_bytes(&account.device_list_bytes)
        .unwrap()
        .devices()
        .iter()
        .map(|c| c.device_id())
        .collect()
}

async fn run(steps: Vec<Step>) {
    let (server, store) = TestServer::start_lying().unwrap();
    let url = server.url();
    let mut alice = Account {
        primary: register(url, "alice").await,
        linked: Vec::new(),
    };
    let mut bob = Account {
        primary: register(url, "bob").await,
        linked: Vec::new(),
    };
    let carol = register(url, "carol").await;
    let direct = alice
        .primary
        .0
        .send_text(name("bob"), "hello")
        .await
        .unwrap()
        .conversation;
    let group = alice
        .primary
        .0
        .create_group("club", &[name("bob")])
        .await
        .unwrap();
    let mut carol_in = false;
    for step in &steps {
        match step {
            Step::LinkAlice => {
                let device = link(url, &alice.primary.0, "linked").await;
                alice.linked.push(device);
            }
            Step::LinkBob => {
                bob.primary.0.sync().await.unwrap();
                let device = link(url, &bob.primary.0, "linked").await;
                bob.linked.push(device);
            }
            Step::RemoveAlice(n) => alice.remove(*n).await,
            Step::RemoveBob(n) => {
                bob.primary.0.sync().await.unwrap();
                bob.remove(*n).await;
            }
            Step::AddCarol if !carol_in => {
                alice.primary.0.sync().await.unwrap();
                alice
                    .primary
                    .0
                    .add_members(group, &[name("carol")])
                    .await
                    .unwrap();
                carol_in = true;
            }
            Step::AddCarol => {}
        }
    }
    // Everyone syncs until nothing changes any more (a few rounds: an add made by one
    // member is read by the others in the next round).
    let everyone: Vec<&Client> = alice
        .clients()
        .chain(bob.clients())
        .chain(std::iter::once(&carol.0))
        .collect();
    for _ in 0..4 {
        for client in &everyone {
            client.sync().await.unwrap();
        }
    }
    let conversations: Vec<(ConversationId, Vec<&str>)> = vec![
        (direct, vec!["alice", "bob"]),
        (
            group,
            if carol_in {
                vec!["alice", "bob", "carol"]
            } else {
                vec!["alice", "bob"]
            },
        ),
    ];
    for (conv, users) in conversations {
        let mut expected = BTreeSet::new();
        for user in &users {
            expected.extend(listed(&store, user).await);
        }
        for client in &everyone {
            let Ok(devices) = client.member_devices(conv) else {
                // Carol is not in the one-to-one conversation.
                continue;
            };
            let roster: BTreeSet<DeviceId> = devices.iter().map(|d| d.device).collect();
            assert_eq!(
                roster,
                expected,
                "{steps:?}: {} sees the wrong members in {conv}",
                client.whoami().unwrap().device_id
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4, ..ProptestConfig::default() })]
    #[test]
    fn rosters_equal_device_lists_after_any_schedule(steps in proptest::collection::vec(step(), 1..5)) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(steps));
    }
}
