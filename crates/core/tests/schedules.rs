//! Property test: random schedules of add user / remove user / add device / self-update
//! / send / concurrent commits, delivered through an ordered per-group log the way the
//! delivery service does, with devices that lag and catch up. Invariant: in the end every
//! member agrees on epoch, roster and epoch authenticator, and every message reached
//! each device that was a member when it was sent, exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use common::{World, name};
use proptest::prelude::*;
use sotto_core::{ClaimedKeyPackage, Conversation, Incoming, OutgoingCommit};
use sotto_proto::{ConversationId, DeviceId, MessageId};

const USERS: usize = 5;
const MAX_DEVICES: usize = 12;

#[derive(Debug, Clone)]
enum Op {
    AddUser(usize),
    RemoveUser(usize),
    AddDevice(usize),
    SelfUpdate(usize),
    Send(usize),
    CatchUp(usize),
    Race(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..USERS).prop_map(Op::AddUser),
        1 => (0..USERS).prop_map(Op::RemoveUser),
        2 => (0..USERS).prop_map(Op::AddDevice),
        2 => any::<usize>().prop_map(Op::SelfUpdate),
        5 => any::<usize>().prop_map(Op::Send),
        3 => any::<usize>().prop_map(Op::CatchUp),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Op::Race(a, b)),
    ]
}

enum Entry {
    Commit(OutgoingCommit),
    App(Vec<u8>),
}

struct Sim {
    w: World,
    conv: ConversationId,
    log: Vec<Entry>,
    cursor: BTreeMap<DeviceId, usize>,
    /// Members as of the last accepted commit (what the server knows).
    roster: Vec<DeviceId>,
    expected: BTreeMap<DeviceId, Vec<MessageId>>,
}

fn user(i: usize) -> String {
    format!("user{i}")
}

impl Sim {
    fn new(initial_devices: &[usize]) -> Self {
        let mut w = World::new();
        for (i, n) in initial_devices.iter().enumerate() {
            w.register(&user(i), *n);
        }
        let creator = w.users[&name(&user(0))].devices[0];
        let conv = w.create(creator);
        let mut cursor = BTreeMap::new();
        cursor.insert(creator, 0);
        Self {
            w,
            conv,
            log: vec![],
            cursor,
            roster: vec![creator],
            expected: BTreeMap::new(),
        }
    }

    fn members(&self) -> Vec<DeviceId> {
        self.roster.clone()
    }

    fn pick(&self, i: usize) -> DeviceId {
        let m = self.members();
        m[i % m.len()]
    }

    fn in_group(&self, u: usize) -> bool {
        let n = name(&user(u));
        self.w.users[&n]
            .devices
            .iter()
            .any(|d| self.roster.contains(d))
    }

    /// Processes the log at `dev` up to the end, in order.
    fn catch_up(&mut self, dev: DeviceId) {
        let Some(mut at) = self.cursor.get(&dev).copied() else {
            return;
        };
        // The client fetches the lists of users it has not seen when the engine asks;
        // here every device holds every user's current list before it catches up.
        let everyone: Vec<_> = self.w.users.keys().cloned().collect();
        self.w.directory(dev, &everyone).unwrap();
        while at < self.log.len() {
            let bytes = match &self.log[at] {
                Entry::Commit(c) => c.commit.clone(),
                Entry::App(b) => b.clone(),
            };
            at += 1;
            match self.w.process(dev, self.conv, &bytes).unwrap() {
                Incoming::Commit { change, .. } if change.removed_me => {
                    self.cursor.remove(&dev);
                    let d = self.w.devs.get_mut(&dev).unwrap();
                    let c = d.convs.remove(&self.conv).unwrap();
                    d.left.insert(self.conv, c);
                    return;
                }
                Incoming::Commit { .. } | Incoming::Message(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        self.cursor.insert(dev, at);
    }

    /// The server accepted `out` from `by`: log it, confirm it, welcome the added.
    fn accept(&mut self, by: DeviceId, out: OutgoingCommit) {
        let added = out.metadata.added.clone();
        let removed = out.metadata.removed.clone();
        let welcome = out.welcome.clone();
        // A re-added device that still lags processes its earlier removal first, as
        // its mailbox would make it (the Welcome comes after the removal commit).
        for a in &added {
            self.catch_up(*a);
        }
        self.log.push(Entry::Commit(out));
        let d = self.w.devs.get_mut(&by).unwrap();
        let change = d
            .convs
            .get_mut(&self.conv)
            .unwrap()
            .confirm_commit(&d.provider)
            .unwrap();
        assert_eq!(
            change
                .removed
                .iter()
                .map(|e| e.device_id)
                .collect::<Vec<_>>(),
            removed
        );
        self.cursor.insert(by, self.log.len());
        self.roster.retain(|d| !removed.contains(d));
        self.roster.extend(added.iter().copied());
        let config = self.w.config.clone();
        let users: Vec<_> = self.roster.iter().map(|d| self.w.owner(*d)).collect();
        for a in added {
            self.w.directory(a, &users).unwrap();
            let d = self.w.devs.get_mut(&a).unwrap();
            let joined = Conversation::join(
                &d.provider,
                &mut d.trust,
                welcome.as_ref().unwrap(),
                &config,
            )
            .unwrap();
            d.convs.insert(self.conv, joined.conversation);
            self.cursor.insert(a, self.log.len());
        }
    }

    fn with_conv<T>(
        &mut self,
        dev: DeviceId,
        f: impl FnOnce(&mut common::Dev, &mut Conversation) -> T,
    ) -> T {
        let d = self.w.devs.get_mut(&dev).unwrap();
        let mut c = d.convs.remove(&self.conv).unwrap();
        let out = f(d, &mut c);
        d.convs.insert(self.conv, c);
        out
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::AddUser(u) => {
                if self.in_group(u) {
                    return;
                }
                let actor = self.pick(u);
                self.catch_up(actor);
                let kps = self.w.key_packages(&user(u));
                let out = self.with_conv(actor, |d, c| {
                    c.add_users(&d.provider, &d.local, &mut d.trust, &[kps])
                        .unwrap()
                });
                self.accept(actor, out);
            }
            Op::RemoveUser(u) => {
                if !self.in_group(u) {
                    return;
                }
                let target = name(&user(u));
                let Some(actor) = self
                    .members()
                    .into_iter()
                    .find(|d| self.w.devs[d].local.username() != &target)
                else {
                    return;
                };
                self.catch_up(actor);
                let out = self.with_conv(actor, |d, c| {
                    c.remove_users(&d.provider, &d.local, &[target]).unwrap()
                });
                self.accept(actor, out);
            }
            Op::AddDevice(u) => {
                if self.w.devs.len() >= MAX_DEVICES {
                    return;
                }
                let new = self.w.add_device(&user(u));
                if !self.in_group(u) {
                    return;
                }
                // One of the user's own devices links the new one into the group.
                let n = name(&user(u));
                let actor = *self.w.users[&n]
                    .devices
                    .iter()
                    .find(|d| self.roster.contains(d))
                    .unwrap();
                self.catch_up(actor);
                let config = self.w.config.clone();
                let kp = {
                    let d = &self.w.devs[&new];
                    sotto_core::generate_key_packages(&d.provider, &d.local, &config, 1)
                        .unwrap()
                        .one_time
                        .remove(0)
                };
                let claimed = ClaimedKeyPackage {
                    username: n,
                    bytes: kp,
                };
                let out = self.with_conv(actor, |d, c| {
                    c.add_devices(&d.provider, &d.local, &mut d.trust, &[claimed])
                        .unwrap()
                });
                assert_eq!(out.metadata.added, vec![new]);
                self.accept(actor, out);
            }
            Op::SelfUpdate(i) => {
                let actor = self.pick(i);
                self.catch_up(actor);
                let out =
                    self.with_conv(actor, |d, c| c.self_update(&d.provider, &d.local).unwrap());
                self.accept(actor, out);
            }
            Op::Send(i) => {
                let actor = self.pick(i);
                self.catch_up(actor);
                let (env, bytes) = self.w.encrypt(actor, self.conv, "hello");
                for m in self.members().into_iter().filter(|m| *m != actor) {
                    self.expected.entry(m).or_default().push(env.id);
                }
                self.log.push(Entry::App(bytes));
                self.cursor.insert(actor, self.log.len());
            }
            Op::CatchUp(i) => {
                let dev = self.pick(i);
                self.catch_up(dev);
            }
            Op::Race(a, b) => {
                let (a, b) = (self.pick(a), self.pick(b));
                if a == b {
                    return;
                }
                self.catch_up(a);
                self.catch_up(b);
                let first = self.with_conv(a, |d, c| c.self_update(&d.provider, &d.local).unwrap());
                let second =
                    self.with_conv(b, |d, c| c.self_update(&d.provider, &d.local).unwrap());
                assert_eq!(first.metadata.epoch, second.metadata.epoch);
                // The server orders a's first; b's is stale: b discards, catches up, retries.
                self.accept(a, first);
                self.with_conv(b, |d, c| c.discard_commit(&d.provider).unwrap());
                self.catch_up(b);
                let retry = self.with_conv(b, |d, c| c.self_update(&d.provider, &d.local).unwrap());
                self.accept(b, retry);
            }
        }
    }

    fn finish(mut self) {
        let lagging: Vec<DeviceId> = self.cursor.keys().copied().collect();
        for d in lagging {
            self.catch_up(d);
        }
        self.w.assert_agree(self.conv);
        let epoch = self.w.devs[&self.members()[0]].convs[&self.conv].epoch();
        let commits = self
            .log
            .iter()
            .filter(|e| matches!(e, Entry::Commit(_)))
            .count() as u64;
        assert_eq!(
            epoch, commits,
            "every accepted commit advanced the epoch by exactly one"
        );
        for (dev, d) in &self.w.devs {
            let got: Vec<MessageId> = d.received.iter().map(|m| m.envelope.id).collect();
            let want = self.expected.get(dev).cloned().unwrap_or_default();
            assert_eq!(got, want, "messages at device {dev}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]
    #[test]
    fn random_schedules_keep_members_in_agreement(
        initial in proptest::collection::vec(1usize..=2, USERS),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let mut sim = Sim::new(&initial);
        for op in ops {
            sim.apply(op);
        }
        sim.finish();
    }
}
