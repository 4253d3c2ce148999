//! Test helpers shared by the API and WebSocket tests: signed device lists and
//! hand-built MLS framing (the server only reads framing, never decrypts).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod harness;

use ed25519_dalek::{Signer, SigningKey};
use sotto_proto::{
    CertificateFields, ConversationId, DeviceCertificate, DeviceId, DeviceList, DeviceListFields,
    IdentityPublicKey, MessageId, Username,
};

/// An account identity key held by a test.
pub struct Identity {
    pub sk: SigningKey,
    pub pk: IdentityPublicKey,
    pub username: String,
}

impl Identity {
    pub fn new(username: &str, seed: u8) -> Self {
        let sk = SigningKey::from_bytes(&[seed; 32]);
        let pk = IdentityPublicKey::from_bytes(sk.verifying_key().to_bytes());
        Self {
            sk,
            pk,
            username: username.to_owned(),
        }
    }

    pub fn cert(&self, device: DeviceId) -> DeviceCertificate {
        let fields = CertificateFields {
            username: Username::parse(&self.username).unwrap(),
            device_id: device,
            device_key: [device.as_bytes()[0].wrapping_add(100); 32],
            identity_key: self.pk,
            created_at: 1_700_000_000,
        };
        let sig = self.sk.sign(&fields.to_be_signed()).to_bytes();
        DeviceCertificate::from_parts(fields, sig)
    }

    /// A list signed by this identity naming `devices`.
    pub fn list(&self, version: u64, devices: &[DeviceId]) -> DeviceList {
        self.list_signed_by(&self.sk, self.pk, version, devices)
    }

    /// A list whose certificates and signature are made with `sk` naming `pk`.
    pub fn list_signed_by(
        &self,
        sk: &SigningKey,
        pk: IdentityPublicKey,
        version: u64,
        devices: &[DeviceId],
    ) -> DeviceList {
        let certs = devices
            .iter()
            .map(|d| {
                let fields = CertificateFields {
                    username: Username::parse(&self.username).unwrap(),
                    device_id: *d,
                    device_key: [d.as_bytes()[0].wrapping_add(100); 32],
                    identity_key: pk,
                    created_at: 1_700_000_000,
                };
                let sig = sk.sign(&fields.to_be_signed()).to_bytes();
                DeviceCertificate::from_parts(fields, sig)
            })
            .collect();
        let fields = DeviceListFields {
            username: Username::parse(&self.username).unwrap(),
            identity_key: pk,
            version,
            devices: certs,
        };
        let sig = sk.sign(&fields.to_be_signed()).to_bytes();
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
