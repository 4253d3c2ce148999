//! Test helpers shared by the API and WebSocket tests: signed device lists and
//! hand-built MLS framing (the server only reads framing, never decrypts).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod harness;

use ed25519_dalek::{Signer, SigningKey};
use sotto_proto::{
    AccountKeyCertificate, AccountKeyFields, CertificateFields, ConversationId, DeviceCertificate,
    DeviceId, DeviceList, DeviceListFields, IdentityPublicKey, MessageId, Username,
};

fn key(seed: u8) -> (SigningKey, IdentityPublicKey) {
    let sk = SigningKey::from_bytes(&[seed; 32]);
    let pk = IdentityPublicKey::from_bytes(sk.verifying_key().to_bytes());
    (sk, pk)
}

/// An account's keys held by a test: its root (identity) key and one generation of
/// its account key.
pub struct Identity {
    pub sk: SigningKey,
    pub pk: IdentityPublicKey,
    pub account_sk: SigningKey,
    pub account_pk: IdentityPublicKey,
    pub generation: u64,
    pub username: String,
}

impl Identity {
    pub fn new(username: &str, seed: u8) -> Self {
        let (sk, pk) = key(seed);
        let (account_sk, account_pk) = key(seed.wrapping_add(128));
        Self {
            sk,
            pk,
            account_sk,
            account_pk,
            generation: 1,
            username: username.to_owned(),
        }
    }

    /// The same root with a new account key of `generation` (a recovery).
    pub fn recovered(&self, seed: u8, generation: u64) -> Self {
        let (account_sk, account_pk) = key(seed);
        Self {
            sk: self.sk.clone(),
            pk: self.pk,
            account_sk,
            account_pk,
            generation,
            username: self.username.clone(),
        }
    }

    fn name(&self) -> Username {
        Username::parse(&self.username).unwrap()
    }

    pub fn cert(&self, device: DeviceId) -> DeviceCertificate {
        let fields = CertificateFields {
            username: self.name(),
            device_id: device,
            device_key: [device.as_bytes()[0].wrapping_add(100); 32],
            account_key: self.account_pk,
            name: "test".into(),
            created_at: 1_700_000_000,
        };
        let sig = self.account_sk.sign(&fields.to_be_signed()).to_bytes();
        DeviceCertificate::from_parts(fields, sig)
    }

    /// A list under this identity's keys naming `devices`.
    pub fn list(&self, version: u64, devices: &[DeviceId]) -> DeviceList {
        self.list_signed_by(&self.sk, self.pk, version, devices)
    }

    /// A list whose account-key certificate is signed by `sk` while naming the root
    /// `pk` (a forgery unless `sk` is `pk`'s secret).
    pub fn list_signed_by(
        &self,
        sk: &SigningKey,
        pk: IdentityPublicKey,
        version: u64,
        devices: &[DeviceId],
    ) -> DeviceList {
        let account_fields = AccountKeyFields {
            username: self.name(),
            identity_key: pk,
            account_key: self.account_pk,
            generation: self.generation,
            created_at: 1_700_000_000,
        };
        let account_sig = sk.sign(&account_fields.to_be_signed()).to_bytes();
        let fields = DeviceListFields {
            username: self.name(),
            identity_key: pk,
            account: AccountKeyCertificate::from_parts(account_fields, account_sig),
            version,
            devices: devices.iter().map(|d| self.cert(*d)).collect(),
        };
        let sig = self.account_sk.sign(&fields.to_be_signed()).to_bytes();
        DeviceList::from_parts(fields, sig)
    }
}

pub fn dev(n: u8) -> DeviceId {
    DeviceId::from_bytes([n; 16])
}

pub fn group(n: u8) -> ConversationId {
    ConversationId::from_bytes([n; 16])
}

pub fn commit_bytes(group: ConversationId, epoch: u64) -> Vec<u8> {
    sotto_testkit::framing::commit(group, epoch, b"commit-ciphertext")
}

pub fn app_bytes(group: ConversationId, epoch: u64, tail: &[u8]) -> Vec<u8> {
    sotto_testkit::framing::application(group, epoch, tail)
}

pub fn welcome_bytes() -> Vec<u8> {
    sotto_testkit::framing::welcome(b"welcome-ciphertext")
}

pub fn b64(bytes: &[u8]) -> String {
    sotto_proto::b64::encode(bytes)
}

/// A UUIDv7 message id, distinct per `n`.
pub fn message_id(n: u8) -> MessageId {
    MessageId::new_v7(1_700_000_000_000 + u64::from(n), &[n; 10])
}
