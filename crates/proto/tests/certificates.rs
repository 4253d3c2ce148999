//! Certificate and device-list verification, including the attacks it must refuse.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;
use sotto_proto::{
    CertError, CertificateFields, DeviceCertificate, DeviceId, DeviceList, DeviceListFields,
    IdentityPublicKey, Username,
};

fn identity(seed: u8) -> (SigningKey, IdentityPublicKey) {
    let sk = SigningKey::from_bytes(&[seed; 32]);
    let pk = IdentityPublicKey::from_bytes(sk.verifying_key().to_bytes());
    (sk, pk)
}

fn cert(sk: &SigningKey, pk: IdentityPublicKey, user: &str, dev: u8) -> DeviceCertificate {
    let fields = CertificateFields {
        username: Username::parse(user).unwrap(),
        device_id: DeviceId::from_bytes([dev; 16]),
        device_key: [dev.wrapping_add(100); 32],
        identity_key: pk,
        created_at: 1_700_000_000,
    };
    let sig = sk.sign(&fields.to_be_signed()).to_bytes();
    DeviceCertificate::from_parts(fields, sig)
}

fn list(
    sk: &SigningKey,
    pk: IdentityPublicKey,
    user: &str,
    version: u64,
    devices: Vec<DeviceCertificate>,
) -> DeviceList {
    let fields = DeviceListFields {
        username: Username::parse(user).unwrap(),
        identity_key: pk,
        version,
        devices,
    };
    let sig = sk.sign(&fields.to_be_signed()).to_bytes();
    DeviceList::from_parts(fields, sig)
}

#[test]
fn a_certificate_verifies_and_round_trips() {
    let (sk, pk) = identity(1);
    let c = cert(&sk, pk, "alice", 1);
    c.verify().unwrap();
    let back = DeviceCertificate::from_bytes(&c.to_bytes()).unwrap();
    assert_eq!(back, c);
    back.verify().unwrap();
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<DeviceCertificate>(&json).unwrap(), c);
}

#[test]
fn a_certificate_claiming_another_identity_key_fails() {
    // Signed by mallory's key but naming alice's key: the signature check fails.
    let (_, alice_pk) = identity(1);
    let (mallory_sk, _) = identity(2);
    let forged = cert(&mallory_sk, alice_pk, "alice", 1);
    assert!(matches!(
        forged.verify(),
        Err(CertError::BadSignature { .. })
    ));
}

#[test]
fn every_single_bit_flip_breaks_a_certificate() {
    let (sk, pk) = identity(1);
    let bytes = cert(&sk, pk, "alice", 1).to_bytes();
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
}

#[test]
fn a_non_canonical_username_is_refused() {
    let (sk, pk) = identity(1);
    let mut bytes = cert(&sk, pk, "alice", 1).to_bytes();
    // Upper-case 'A' would case-fold to the same user: refuse it in the encoding.
    bytes[3] = b'A';
    assert!(DeviceCertificate::from_bytes(&bytes).is_err());
}

#[test]
fn device_lists_verify_and_detect_rollback_and_equivocation() {
    let (sk, pk) = identity(1);
    let v1 = list(&sk, pk, "alice", 1, vec![cert(&sk, pk, "alice", 1)]);
    let v2 = list(
        &sk,
        pk,
        "alice",
        2,
        vec![cert(&sk, pk, "alice", 1), cert(&sk, pk, "alice", 2)],
    );
    v1.verify().unwrap();
    v2.verify().unwrap();
    assert_eq!(DeviceList::from_bytes(&v2.to_bytes()).unwrap(), v2);

    v2.check_not_rollback(Some((v1.version(), v1.digest())))
        .unwrap();
    v2.check_not_rollback(Some((v2.version(), v2.digest())))
        .unwrap();
    assert!(matches!(
        v1.check_not_rollback(Some((v2.version(), v2.digest()))),
        Err(CertError::Rollback {
            seen: 2,
            offered: 1,
            ..
        })
    ));
    // A different list under an already seen version.
    let v2_other = list(&sk, pk, "alice", 2, vec![cert(&sk, pk, "alice", 3)]);
    assert!(matches!(
        v2_other.check_not_rollback(Some((v2.version(), v2.digest()))),
        Err(CertError::Equivocation { version: 2, .. })
    ));
}

#[test]
fn device_list_attacks_fail() {
    let (sk, pk) = identity(1);
    let (bob_sk, bob_pk) = identity(2);
    // A certificate of bob's inside alice's list.
    let mixed = list(&sk, pk, "alice", 3, vec![cert(&bob_sk, bob_pk, "bob", 9)]);
    assert!(matches!(
        mixed.verify(),
        Err(CertError::ForeignCertificate { .. })
    ));
    // A list signed by someone else.
    let forged = list(&bob_sk, pk, "alice", 3, vec![cert(&sk, pk, "alice", 1)]);
    assert!(matches!(
        forged.verify(),
        Err(CertError::BadSignature { .. })
    ));
    // The same device twice.
    let dup = list(
        &sk,
        pk,
        "alice",
        3,
        vec![cert(&sk, pk, "alice", 1), cert(&sk, pk, "alice", 1)],
    );
    assert!(matches!(dup.verify(), Err(CertError::DuplicateDevice(_))));
    // An invalid identity key is an error, not a panic.
    let junk = IdentityPublicKey::from_bytes([0xff; 32]);
    assert!(junk.verify(b"x", &[0; 64]).is_err() || !junk.verify(b"x", &[0; 64]).unwrap());
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = DeviceCertificate::from_bytes(&bytes);
        let _ = DeviceList::from_bytes(&bytes);
        let _ = sotto_proto::framing::parse_group_message(&bytes);
    }
}
