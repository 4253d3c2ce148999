//! Engine benchmarks: `cargo bench -p sotto-core --bench engine`.
//!
//! Each benchmark runs once per provider stack, so the figures compare directly:
//! - `stock`: `openmls_rust_crypto::OpenMlsRustCrypto` (RustCrypto + OpenMLS's JSON
//!   memory storage), the baseline;
//! - `rustcrypto-json`: RustCrypto with Sotto's `KvStorage` using the JSON codec;
//! - `rustcrypto-cbor`: RustCrypto with Sotto's `KvStorage` (CBOR, the default) in memory;
//! - `libcrux-cbor`: libcrux crypto with Sotto's `KvStorage` (CBOR) in memory.
//!
//! All use Sotto's own `DeviceSigner` (a signer that keeps its key).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sotto_core::content::Text;
use sotto_core::storage::{JsonCodec, KvStorage, MemoryBackend, MemoryStorage, SottoProvider};
use sotto_core::{
    AccountKey, ClaimedKeyPackage, Content, Conversation, ConversationConfig, Envelope,
    IdentityKeyPair, Incoming, LocalDevice, MemoryTrustStore, generate_key_packages,
};
use sotto_proto::{ConversationId, DeviceList, MessageId, Username};

/// One device (its account's only one) with its own provider and trust store.
struct Dev<P> {
    provider: P,
    local: LocalDevice,
    trust: MemoryTrustStore,
    /// Its account's signed device list, as the directory serves it.
    list: DeviceList,
}

fn device<P: sotto_core::MlsProvider>(make: fn() -> P, user: &str) -> Dev<P> {
    let provider = make();
    let identity = IdentityKeyPair::generate(provider.rand()).unwrap();
    let username = Username::parse(user).unwrap();
    let account = AccountKey::generate(provider.rand(), &identity, &username, 1, 1).unwrap();
    let local = LocalDevice::create(provider.rand(), &account, "phone", 1_700_000_000).unwrap();
    let list = account.sign_device_list(1, vec![local.certificate().clone()]);
    Dev {
        provider,
        local,
        trust: MemoryTrustStore::default(),
        list,
    }
}

/// What a client holds after asking the directory about these accounts.
fn know(trust: &mut MemoryTrustStore, lists: &[DeviceList]) {
    for list in lists {
        sotto_core::accept_device_list(trust, list).unwrap();
    }
}

fn key_package<P: sotto_core::MlsProvider>(d: &Dev<P>) -> ClaimedKeyPackage {
    let config = ConversationConfig::default();
    ClaimedKeyPackage {
        username: d.local.username().clone(),
        bytes: generate_key_packages(&d.provider, &d.local, &config, 1)
            .unwrap()
            .one_time
            .remove(0),
    }
}

/// Key packages of `n` extra devices (other users), each made with its own provider,
/// and their accounts' device lists.
fn extra_key_packages<P: sotto_core::MlsProvider>(
    make: fn() -> P,
    n: usize,
) -> (Vec<ClaimedKeyPackage>, Vec<DeviceList>) {
    (0..n)
        .map(|i| {
            let d = device(make, &format!("member{i:05}"));
            (key_package(&d), d.list)
        })
        .unzip()
}

fn envelope(n: u64, size: usize) -> Envelope {
    let mut rand = [0u8; 10];
    rand[..8].copy_from_slice(&n.to_be_bytes());
    Envelope {
        id: MessageId::new_v7(1_700_000_000_000 + n, &rand),
        sent_at_ms: 1_700_000_000_000 + n,
        content: Content::Text(Text {
            body: "x".repeat(size),
        }),
    }
}

/// alice and bob in a group with `extra` other devices (whose state is not kept).
struct Pair<P> {
    alice: Dev<P>,
    bob: Dev<P>,
    a: Conversation,
    b: Conversation,
}

fn pair<P: sotto_core::MlsProvider>(make: fn() -> P, extra: usize) -> Pair<P> {
    let config = ConversationConfig::default();
    let mut alice = device(make, "alice");
    let mut bob = device(make, "bob");
    let id = ConversationId::from_bytes([7; 16]);
    let mut a = Conversation::create(&alice.provider, &alice.local, id, &config).unwrap();
    let mut kps = vec![key_package(&bob)];
    let (extra_kps, mut lists) = extra_key_packages(make, extra);
    kps.extend(extra_kps);
    lists.extend([alice.list.clone(), bob.list.clone()]);
    know(&mut alice.trust, &lists);
    know(&mut bob.trust, &lists);
    let out = a
        .add_devices(&alice.provider, &alice.local, &mut alice.trust, &kps)
        .unwrap();
    a.confirm_commit(&alice.provider).unwrap();
    let b = Conversation::join(
        &bob.provider,
        &mut bob.trust,
        out.welcome.as_ref().unwrap(),
        &config,
    )
    .unwrap()
    .conversation;
    Pair { alice, bob, a, b }
}

fn messages<P: sotto_core::MlsProvider>(c: &mut Criterion, stack: &str, make: fn() -> P) {
    for members in [2usize, 1000] {
        let mut p = pair(make, members - 2);
        for size in [100usize, 10 * 1024] {
            let mut group = c.benchmark_group(format!("message/{stack}/{members}"));
            group.throughput(Throughput::Bytes(size as u64));
            let mut n = 0u64;
            group.bench_function(BenchmarkId::new("encrypt", size), |b| {
                b.iter(|| {
                    n += 1;
                    let env = envelope(n, size);
                    black_box(
                        p.a.encrypt(&p.alice.provider, &p.alice.local, &env)
                            .unwrap(),
                    )
                });
                // Keep bob in step with the ratchet: deliver nothing; encryptions above
                // only advance alice's own sending chain, which bob never needs.
            });
            group.bench_function(BenchmarkId::new("decrypt", size), |b| {
                b.iter_batched(
                    || {
                        n += 1;
                        // bob sends, alice receives: alice's sending chain above is
                        // unrelated to bob's.
                        p.b.encrypt(&p.bob.provider, &p.bob.local, &envelope(n, size))
                            .unwrap()
                    },
                    |bytes| match p
                        .a
                        .process(&p.alice.provider, &mut p.alice.trust, &bytes)
                        .unwrap()
                    {
                        Incoming::Message(m) => black_box(m),
                        other => panic!("{other:?}"),
                    },
                    BatchSize::SmallInput,
                )
            });
            group.finish();
        }
    }
}

fn adds<P: sotto_core::MlsProvider>(c: &mut Criterion, stack: &str, make: fn() -> P) {
    let config = ConversationConfig::default();
    let mut group = c.benchmark_group(format!("add/{stack}"));
    group.sample_size(10);
    for n in [1usize, 10, 100] {
        let (kps, lists) = extra_key_packages(make, n);
        let mut creator = device(make, "alice");
        know(&mut creator.trust, &lists);
        let mut counter = 0u64;
        group.bench_function(BenchmarkId::new("devices", n), |b| {
            b.iter_batched(
                || {
                    counter += 1;
                    let mut id = [0u8; 16];
                    id[..8].copy_from_slice(&counter.to_be_bytes());
                    Conversation::create(
                        &creator.provider,
                        &creator.local,
                        ConversationId::from_bytes(id),
                        &config,
                    )
                    .unwrap()
                },
                |mut conv| {
                    let out = conv
                        .add_devices(&creator.provider, &creator.local, &mut creator.trust, &kps)
                        .unwrap();
                    conv.confirm_commit(&creator.provider).unwrap();
                    black_box(out)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn updates<P: sotto_core::MlsProvider>(c: &mut Criterion, stack: &str, make: fn() -> P) {
    let mut p = pair(make, 998);
    // Fill in the tree first: right after a bulk add the first update is O(N).
    for _ in 0..2 {
        let out = p.a.self_update(&p.alice.provider, &p.alice.local).unwrap();
        p.a.confirm_commit(&p.alice.provider).unwrap();
        p.b.process(&p.bob.provider, &mut p.bob.trust, &out.commit)
            .unwrap();
        let out = p.b.self_update(&p.bob.provider, &p.bob.local).unwrap();
        p.b.confirm_commit(&p.bob.provider).unwrap();
        p.a.process(&p.alice.provider, &mut p.alice.trust, &out.commit)
            .unwrap();
    }
    // The size of one self-update commit, for the daily-update traffic estimate in
    // docs/PERFORMANCE.md (every member sends one a day; each goes to every member).
    let sample = p.a.self_update(&p.alice.provider, &p.alice.local).unwrap();
    p.a.discard_commit(&p.alice.provider).unwrap();
    eprintln!(
        "self-update/{stack}/1000: one commit is {} bytes",
        sample.commit.len()
    );
    let mut group = c.benchmark_group(format!("self-update/{stack}/1000"));
    group.sample_size(20);
    group.bench_function("create", |b| {
        b.iter(|| {
            let out = p.a.self_update(&p.alice.provider, &p.alice.local).unwrap();
            p.a.discard_commit(&p.alice.provider).unwrap();
            black_box(out)
        })
    });
    group.bench_function("process", |b| {
        b.iter_batched(
            || {
                let out = p.a.self_update(&p.alice.provider, &p.alice.local).unwrap();
                p.a.confirm_commit(&p.alice.provider).unwrap();
                out.commit
            },
            |commit| {
                black_box(
                    p.b.process(&p.bob.provider, &mut p.bob.trust, &commit)
                        .unwrap(),
                )
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn stock() -> openmls_rust_crypto::OpenMlsRustCrypto {
    openmls_rust_crypto::OpenMlsRustCrypto::default()
}

fn rustcrypto_cbor() -> SottoProvider<MemoryStorage> {
    SottoProvider::new(MemoryStorage::default())
}

fn rustcrypto_json() -> SottoProvider<KvStorage<MemoryBackend, JsonCodec>> {
    SottoProvider::new(KvStorage::default())
}

fn libcrux_cbor() -> SottoProvider<MemoryStorage, openmls_libcrux_crypto::CryptoProvider> {
    SottoProvider::with_crypto(
        openmls_libcrux_crypto::CryptoProvider::new().unwrap(),
        MemoryStorage::default(),
    )
}

fn all(c: &mut Criterion) {
    messages(c, "stock", stock);
    messages(c, "rustcrypto-cbor", rustcrypto_cbor);
    messages(c, "rustcrypto-json", rustcrypto_json);
    messages(c, "libcrux-cbor", libcrux_cbor);
    adds(c, "stock", stock);
    adds(c, "rustcrypto-cbor", rustcrypto_cbor);
    adds(c, "libcrux-cbor", libcrux_cbor);
    updates(c, "stock", stock);
    updates(c, "rustcrypto-cbor", rustcrypto_cbor);
    updates(c, "rustcrypto-json", rustcrypto_json);
    updates(c, "libcrux-cbor", libcrux_cbor);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = all
}
criterion_main!(benches);
