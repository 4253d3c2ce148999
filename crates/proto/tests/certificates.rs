//! Certificate and device-list verification, including the attacks it must refuse.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;
use sotto_proto::{
    AccountKeyCertificate, AccountKeyFields, CertError, CertificateFields, DeviceCertificate,
    DeviceId, DeviceList, DeviceListFields, IdentityPublicKey, Username,
};

fn key(seed: u8) -> (SigningKey, IdentityPublicKey) {
    let sk = SigningKey::from_bytes(&[seed; 32]);
    let pk = IdentityPublicKey::from_bytes(sk.verifying_key().to_bytes());
    (sk, pk)
}

/// One account's keys: the root and one generation of its account key.
struct Keys {
    user: &'static str,
    root: (SigningKey, IdentityPublicKey),
    account: (SigningKey, IdentityPublicKey),
    generation: u64,
}

impl Keys {
    fn new(user: &'static str, root_seed: u8, account_seed: u8, generation: u64) -> Self {
        Self {
            user,
            root: key(root_seed),
            account: key(account_seed),
            generation,
        }
    }

    fn account_cert(&self) -> AccountKeyCertificate {
        let fields = AccountKeyFields {
            username: Username::parse(self.user).unwrap(),
            identity_key: self.root.1,
            account_key: self.account.1,
            generation: self.generation,
            created_at: 1_700_000_000,
        };
        let sig = self.root.0.sign(&fields.to_be_signed()).to_bytes();
        AccountKeyCertificate::from_parts(fields, sig)
    }

    fn cert(&self, dev: u8) -> DeviceCertificate {
        let fields = CertificateFields {
            username: Username::parse(self.user).unwrap(),
            device_id: DeviceId::from_bytes([dev; 16]),
            device_key: [dev.wrapping_add(100); 32],
            account_key: self.account.1,
            name: format!("device {dev}"),
            created_at: 1_700_000_000,
        };
        let sig = self.account.0.sign(&fields.to_be_signed()).to_bytes();
        DeviceCertificate::from_parts(fields, sig)
    }

    fn list(&self, version: u64, devices: Vec<DeviceCertificate>) -> DeviceList {
        self.list_signed_by(&self.account.0, version, devices)
    }

    fn list_signed_by(
        &self,
        signer: &SigningKey,
        version: u64,
        devices: Vec<DeviceCertificate>,
    ) -> DeviceList {
        let fields = DeviceListFields {
            username: Username::parse(self.user).unwrap(),
            identity_key: self.root.1,
            account: self.account_cert(),
            version,
            devices,
        };
        let sig = signer.sign(&fields.to_be_signed()).to_bytes();
        DeviceList::from_parts(fields, sig)
    }
}

#[test]
fn a_certificate_verifies_and_round_trips() {
    let alice = Keys::new("alice", 1, 11, 1);
    let c = alice.cert(1);
    c.verify().unwrap();
    assert_eq!(c.name(), "device 1");
    let back = DeviceCertificate::from_bytes(&c.to_bytes()).unwrap();
    assert_eq!(back, c);
    back.verify().unwrap();
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<DeviceCertificate>(&json).unwrap(), c);
    let a = alice.account_cert();
    a.verify().unwrap();
    assert_eq!(AccountKeyCertificate::from_bytes(&a.to_bytes()).unwrap(), a);
}

#[test]
fn a_certificate_claiming_another_account_key_fails() {
    // Signed by mallory's key but naming alice's account key: the signature fails.
    let alice = Keys::new("alice", 1, 11, 1);
    let mallory = Keys::new("alice", 2, 12, 1);
    let fields = CertificateFields {
        username: Username::parse("alice").unwrap(),
        device_id: DeviceId::from_bytes([1; 16]),
        device_key: [1; 32],
        account_key: alice.account.1,
        name: String::new(),
        created_at: 1,
    };
    let sig = mallory.account.0.sign(&fields.to_be_signed()).to_bytes();
    let forged = DeviceCertificate::from_parts(fields, sig);
    assert!(matches!(
        forged.verify(),
        Err(CertError::BadSignature { .. })
    ));
}

#[test]
fn every_single_bit_flip_breaks_a_certificate_and_a_list() {
    let alice = Keys::new("alice", 1, 11, 1);
    let bytes = alice.cert(1).to_bytes();
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            // Either it no longer decodes, or it no longer verifies.
            if let Ok(c) = DeviceCertificate::from_bytes(&b) {
                assert!(
                    c.verify().is_err(),
                    "flip at byte {i} bit {bit} still verifies"
                );
            }
        }
    }
    let bytes = alice.list(1, vec![alice.cert(1)]).to_bytes();
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x10;
        if let Ok(l) = DeviceList::from_bytes(&b) {
            assert!(l.verify().is_err(), "flip at byte {i} still verifies");
        }
    }
}

#[test]
fn a_non_canonical_username_or_overlong_name_is_refused() {
    let alice = Keys::new("alice", 1, 11, 1);
    let mut bytes = alice.cert(1).to_bytes();
    // Upper-case 'A' would case-fold to the same user: refuse it in the encoding.
    bytes[3] = b'A';
    assert!(DeviceCertificate::from_bytes(&bytes).is_err());
    let fields = CertificateFields {
        username: Username::parse("alice").unwrap(),
        device_id: DeviceId::from_bytes([1; 16]),
        device_key: [1; 32],
        account_key: alice.account.1,
        name: "x".repeat(sotto_proto::MAX_DEVICE_NAME + 1),
        created_at: 1,
    };
    let sig = alice.account.0.sign(&fields.to_be_signed()).to_bytes();
    let long = DeviceCertificate::from_parts(fields, sig);
    assert!(DeviceCertificate::from_bytes(&long.to_bytes()).is_err());
}

#[test]
fn device_lists_verify_and_detect_rollback_and_equivocation() {
    let alice = Keys::new("alice", 1, 11, 1);
    let v1 = alice.list(1, vec![alice.cert(1)]);
    let v2 = alice.list(2, vec![alice.cert(1), alice.cert(2)]);
    v1.verify().unwrap();
    v2.verify().unwrap();
    assert_eq!(DeviceList::from_bytes(&v2.to_bytes()).unwrap(), v2);

    v2.check_not_rollback(Some(&v1)).unwrap();
    v2.check_not_rollback(Some(&v2)).unwrap();
    assert!(matches!(
        v1.check_not_rollback(Some(&v2)),
        Err(CertError::Rollback {
            seen: 2,
            offered: 1,
            ..
        })
    ));
    // A different list under an already seen version.
    let v2_other = alice.list(2, vec![alice.cert(3)]);
    assert!(matches!(
        v2_other.check_not_rollback(Some(&v2)),
        Err(CertError::Equivocation { version: 2, .. })
    ));
}

#[test]
fn a_list_under_a_revoked_account_key_is_refused() {
    // Generation 2 (a recovery) replaced generation 1's account key.
    let old = Keys::new("alice", 1, 11, 1);
    let new = Keys::new("alice", 1, 21, 2);
    let recovered = new.list(5, vec![new.cert(9)]);
    recovered.verify().unwrap();
    recovered
        .check_not_rollback(Some(&old.list(4, vec![old.cert(1)])))
        .unwrap();
    // Whoever kept the old account key signs a list with a higher version: refused.
    let stale = old.list(6, vec![old.cert(1), old.cert(7)]);
    stale.verify().unwrap();
    assert!(matches!(
        stale.check_not_rollback(Some(&recovered)),
        Err(CertError::RevokedAccountKey {
            seen: 2,
            offered: 1,
            ..
        })
    ));
    // A stolen account key pushed the version to the top: a recovery still wins.
    let pushed = old.list(u64::MAX, vec![old.cert(1), old.cert(7)]);
    recovered.check_not_rollback(Some(&pushed)).unwrap();
    assert!(pushed.check_not_rollback(Some(&recovered)).is_err());
    // Another root is another identity: never a continuation of this history.
    let stranger = Keys::new("alice", 9, 19, 3);
    assert!(matches!(
        stranger
            .list(6, vec![stranger.cert(1)])
            .check_not_rollback(Some(&recovered)),
        Err(CertError::Equivocation { .. })
    ));
    // A second account key claiming the same generation: refused as equivocation.
    let twin = Keys::new("alice", 1, 31, 2);
    assert!(matches!(
        twin.list(6, vec![twin.cert(8)])
            .check_not_rollback(Some(&recovered)),
        Err(CertError::Equivocation { .. })
    ));
}

#[test]
fn device_list_attacks_fail() {
    let alice = Keys::new("alice", 1, 11, 1);
    let bob = Keys::new("bob", 2, 12, 1);
    // A certificate of bob's inside alice's list.
    let mixed = alice.list(3, vec![bob.cert(9)]);
    assert!(matches!(
        mixed.verify(),
        Err(CertError::ForeignCertificate { .. })
    ));
    // A list signed by someone else's account key, or by the root directly.
    let forged = alice.list_signed_by(&bob.account.0, 3, vec![alice.cert(1)]);
    assert!(matches!(
        forged.verify(),
        Err(CertError::BadSignature { .. })
    ));
    let by_root = alice.list_signed_by(&alice.root.0, 3, vec![alice.cert(1)]);
    assert!(matches!(
        by_root.verify(),
        Err(CertError::BadSignature { .. })
    ));
    // An account key certified by another root than the list names.
    let impostor = Keys {
        user: "alice",
        root: key(2),
        account: key(11),
        generation: 1,
    };
    let fields = DeviceListFields {
        username: Username::parse("alice").unwrap(),
        identity_key: alice.root.1,
        account: impostor.account_cert(),
        version: 3,
        devices: vec![alice.cert(1)],
    };
    let sig = alice.account.0.sign(&fields.to_be_signed()).to_bytes();
    assert!(DeviceList::from_parts(fields, sig).verify().is_err());
    // A device certified by an older account key, in a list of the newer one.
    let newer = Keys::new("alice", 1, 21, 2);
    let mixed_keys = newer.list(4, vec![newer.cert(2), alice.cert(1)]);
    assert!(matches!(
        mixed_keys.verify(),
        Err(CertError::ForeignCertificate { .. })
    ));
    // The same device twice.
    let dup = alice.list(3, vec![alice.cert(1), alice.cert(1)]);
    assert!(matches!(dup.verify(), Err(CertError::DuplicateDevice(_))));
    // An invalid key is an error, not a panic.
    let junk = IdentityPublicKey::from_bytes([0xff; 32]);
    assert!(junk.verify(b"x", &[0; 64]).is_err() || !junk.verify(b"x", &[0; 64]).unwrap());
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = DeviceCertificate::from_bytes(&bytes);
        let _ = AccountKeyCertificate::from_bytes(&bytes);
        let _ = DeviceList::from_bytes(&bytes);
        let _ = sotto_proto::framing::parse_group_message(&bytes);
    }
}
