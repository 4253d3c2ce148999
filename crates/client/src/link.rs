//! Linking a new device to an account through the server's relay slots.
//!
//! The new device makes a one-time **link code**: 32 random bytes (base64url). Every
//! slot id and the key that seals the payloads are derived from it, so the server,
//! which sees only slot ids and sealed bytes, learns nothing it could use:
//!
//! 1. new device → `request` slot: its device id, MLS signature public key and the
//!    name the person gave it;
//! 2. approving (primary) device → `response` slot: the username, the new device's
//!    certificate chain and its server token (the approver published the new device
//!    list, which made the server issue that token). Never the account key or the
//!    root: a linked device can certify nothing (decision 0011);
//! 3. new device → `ready` slot: "my KeyPackages are uploaded", after which the
//!    approver adds it to every conversation.
//!
//! The code must travel out of band (shown on one screen, typed or scanned on the
//! other): whoever holds it can finish the link.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sotto_proto::b64;

use crate::error::ClientError;

/// A one-time link code, as the new device shows it and the approving device reads
/// it (`"…".parse::<LinkCode>()`). Whoever holds it can finish the link, so its
/// `Debug` form hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkCode {
    secret: [u8; 32],
}

impl std::fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkCode(..)")
    }
}

/// Step 1: the new device introduces itself.
#[derive(Serialize, Deserialize)]
pub(crate) struct Request {
    pub device_id: sotto_proto::DeviceId,
    #[serde(with = "b64::serde_bytes")]
    pub device_key: Vec<u8>,
    /// The device's name ("laptop"), as the person typed it on the new device.
    pub name: String,
}

/// Step 2: what the new device needs to act as one of the account's devices.
#[derive(Serialize, Deserialize)]
pub(crate) struct Response {
    pub username: sotto_proto::Username,
    /// Its certificate chain (account-key certificate and device certificate).
    #[serde(with = "b64::serde_bytes")]
    pub chain: Vec<u8>,
    pub token: String,
}

impl Drop for Response {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.token);
    }
}

/// Step 3: the new device can be added to conversations.
#[derive(Serialize, Deserialize)]
pub(crate) struct Ready {
    pub device_id: sotto_proto::DeviceId,
}

impl std::str::FromStr for LinkCode {
    type Err = ClientError;
    fn from_str(code: &str) -> Result<Self, Self::Err> {
        Self::parse(code)
    }
}

impl LinkCode {
    /// A code from 32 random bytes.
    pub(crate) fn new(secret: [u8; 32]) -> Self {
        Self { secret }
    }

    /// Parses what the user typed or scanned.
    pub fn parse(code: &str) -> Result<Self, ClientError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(code.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .ok_or(ClientError::InvalidLinkCode)?;
        Ok(Self { secret: bytes })
    }

    /// The code as shown to the user.
    pub fn text(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.secret)
    }

    fn derive(&self, label: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"sotto link v1 ");
        h.update(label.as_bytes());
        h.update(self.secret);
        h.finalize().into()
    }

    fn slot(&self, label: &str) -> String {
        sotto_proto::ids::to_hex(&self.derive(label)[..16])
    }

    /// The slot of step 1, 2 or 3.
    pub(crate) fn request_slot(&self) -> String {
        self.slot("request")
    }
    /// See [`LinkCode::request_slot`].
    pub(crate) fn response_slot(&self) -> String {
        self.slot("response")
    }
    /// See [`LinkCode::request_slot`].
    pub(crate) fn ready_slot(&self) -> String {
        self.slot("ready")
    }

    /// Seals a payload: a fresh random nonce, then AES-256-GCM under the derived key,
    /// with the step's label as associated data (a payload cannot be replayed into
    /// another step).
    pub(crate) fn seal<T: Serialize>(
        &self,
        step: &str,
        value: &T,
        nonce: [u8; 12],
    ) -> Result<Vec<u8>, ClientError> {
        let plain = zeroize::Zeroizing::new(
            serde_json::to_vec(value)
                .map_err(|e| ClientError::Link(format!("cannot encode: {e}")))?,
        );
        let cipher = Aes256Gcm::new(&self.derive("key").into());
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                aes_gcm::aead::Payload {
                    msg: &plain,
                    aad: step.as_bytes(),
                },
            )
            .map_err(|_| ClientError::Link("cannot seal the payload".into()))?;
        Ok([&nonce[..], &sealed].concat())
    }

    /// Opens a sealed payload of `step`.
    pub(crate) fn open<T: serde::de::DeserializeOwned>(
        &self,
        step: &str,
        sealed: &[u8],
    ) -> Result<T, ClientError> {
        let refused = || {
            ClientError::Link(
                "the linking data did not decrypt: the code is wrong or someone tampered with it"
                    .into(),
            )
        };
        if sealed.len() < 12 {
            return Err(refused());
        }
        let (nonce, body) = sealed.split_at(12);
        let cipher = Aes256Gcm::new(&self.derive("key").into());
        let plain = zeroize::Zeroizing::new(
            cipher
                .decrypt(
                    Nonce::from_slice(nonce),
                    aes_gcm::aead::Payload {
                        msg: body,
                        aad: step.as_bytes(),
                    },
                )
                .map_err(|_| refused())?,
        );
        serde_json::from_slice(&plain).map_err(|_| refused())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_payloads_bind_to_their_step() {
        let code = LinkCode::new([7; 32]);
        let parsed = LinkCode::parse(&code.text()).expect("parse");
        assert_eq!(parsed.request_slot(), code.request_slot());
        assert_ne!(code.request_slot(), code.response_slot());
        assert_eq!(code.request_slot().len(), 32);
        let ready = Ready {
            device_id: sotto_proto::DeviceId::from_bytes([1; 16]),
        };
        let sealed = code.seal("ready", &ready, [3; 12]).expect("seal");
        let back: Ready = parsed.open("ready", &sealed).expect("open");
        assert_eq!(back.device_id, ready.device_id);
        // Another step, another code, or a flipped bit: refused.
        assert!(parsed.open::<Ready>("request", &sealed).is_err());
        assert!(
            LinkCode::new([8; 32])
                .open::<Ready>("ready", &sealed)
                .is_err()
        );
        let mut bad = sealed.clone();
        bad[20] ^= 1;
        assert!(parsed.open::<Ready>("ready", &bad).is_err());
        assert!(LinkCode::parse("not a code").is_err());
    }
}
