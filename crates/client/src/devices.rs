//! This account's devices: linking a new one, listing, removing.

use std::time::Duration;

use sotto_core::{Conversation, DeviceSigner, IdentityKeyPair, LocalDevice};
use sotto_proto::{DeviceCertificate, DeviceId, Username};

use crate::client::{Client, WhoAmI, load, rng_bytes};
use crate::error::ClientError;
use crate::link::{LinkCode, Ready, Request, Response};
use crate::profile::Account;

/// How often a waiting side polls its relay slot.
const POLL: Duration = Duration::from_millis(300);
/// How long a side waits for the other (the server keeps slots 10 minutes).
const LINK_TIMEOUT: Duration = Duration::from_secs(600);
/// Commit retries when removing a device from a busy conversation.
const RETRIES: usize = 8;

/// One of this account's devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device id.
    pub device_id: DeviceId,
    /// When its certificate was made (Unix seconds).
    pub created_at: u64,
    /// Whether it is the device this profile is.
    pub this_device: bool,
}

impl Client {
    async fn wait_for_slot(&self, slot: &str, what: &str) -> Result<Vec<u8>, ClientError> {
        let deadline = tokio::time::Instant::now() + LINK_TIMEOUT;
        loop {
            if let Some(payload) = self.transport.take_link(slot).await? {
                return Ok(payload);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Link(format!("gave up waiting for {what}")));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// On a new device with an empty profile: makes a link code, hands it to
    /// `show_code` (print it or render a QR code), then waits until an existing
    /// device of the account approves it, and becomes that account's new device.
    #[tracing::instrument(name = "link_start", skip_all)]
    pub async fn link_start(&self, show_code: impl FnOnce(&str)) -> Result<WhoAmI, ClientError> {
        if let Some(a) = self.read(|tx| tx.account())? {
            return Err(ClientError::AlreadyRegistered(a.username.to_string()));
        }
        let (secret, device_id, signer_secret, nonce) = self.read(|tx| {
            Ok((
                rng_bytes::<32>(tx)?,
                DeviceId::from_bytes(rng_bytes::<16>(tx)?),
                zeroize::Zeroizing::new(rng_bytes::<32>(tx)?),
                rng_bytes::<12>(tx)?,
            ))
        })?;
        let signer = DeviceSigner::from_secret_bytes(&signer_secret);
        let code = LinkCode::new(secret);
        let request = Request {
            device_id,
            device_key: signer.public_key().to_vec(),
        };
        self.transport
            .put_link(&code.request_slot(), code.seal("request", &request, nonce)?)
            .await?;
        show_code(&code.text());

        let sealed = self
            .wait_for_slot(&code.response_slot(), "the approval")
            .await?;
        let response: Response = code.open("response", &sealed)?;
        let secret: [u8; 32] = response
            .identity_secret
            .as_slice()
            .try_into()
            .map_err(|_| ClientError::Link("the approval carried a malformed key".into()))?;
        let identity = IdentityKeyPair::from_secret_bytes(&secret);
        let certificate = DeviceCertificate::from_bytes(&response.certificate).map_err(|_| {
            ClientError::Link("the approval carried a malformed certificate".into())
        })?;
        // The certificate must be for this device and key, signed by that identity.
        if certificate.verify().is_err()
            || certificate.device_id() != device_id
            || certificate.username() != &response.username
            || certificate.identity_key() != &identity.public()
        {
            return Err(ClientError::Link(
                "the approval's certificate is not for this device".into(),
            ));
        }
        let device = LocalDevice::new(certificate, signer).map_err(|_| {
            ClientError::Link("the approval's certificate certifies another key".into())
        })?;
        let account = Account {
            username: response.username.clone(),
            device,
            identity,
            token: response.token.clone(),
            server: self.transport.base().to_owned(),
        };
        // The directory must now list this device under the same identity key.
        let info = self
            .transport
            .account(&account.token, &account.username)
            .await?;
        if info.device_list.identity_key() != &account.identity.public()
            || info.device_list.device(device_id).is_none()
        {
            return Err(ClientError::Link(
                "the server's device list does not include this device under the account's key"
                    .into(),
            ));
        }
        self.write(|tx| {
            tx.save_account(&account)?;
            Ok(sotto_core::accept_device_list(
                &mut tx.trust(),
                &info.device_list,
            )?)
        })?;
        self.top_up_key_packages(true).await?;
        let nonce = self.read(rng_bytes::<12>)?;
        self.transport
            .put_link(
                &code.ready_slot(),
                code.seal("ready", &Ready { device_id }, nonce)?,
            )
            .await?;
        self.whoami()
    }

    /// On an existing device: approves the new device that shows `code`: certifies
    /// it, publishes the new device list, hands it the account key through the relay,
    /// waits for it to be ready and adds it to every conversation. Answers its id.
    #[tracing::instrument(name = "link_approve", skip_all)]
    pub async fn link_approve(&self, code: &LinkCode) -> Result<DeviceId, ClientError> {
        let account = self.account()?;
        let sealed = self
            .transport
            .take_link(&code.request_slot())
            .await?
            .ok_or_else(|| {
                ClientError::Link(
                    "no device is waiting with this code (expired, already used, or mistyped)"
                        .into(),
                )
            })?;
        let request: Request = code.open("request", &sealed)?;
        let device_key: [u8; 32] = request
            .device_key
            .as_slice()
            .try_into()
            .map_err(|_| ClientError::Link("the new device sent a malformed key".into()))?;
        let info = self
            .transport
            .account(&account.token, &account.username)
            .await?;
        if info.device_list.device(request.device_id).is_some() {
            return Err(ClientError::Link("that device is already linked".into()));
        }
        let certificate = account.identity.certify_device(
            &account.username,
            request.device_id,
            device_key,
            self.now(),
        );
        let mut certs = info.device_list.devices().to_vec();
        certs.push(certificate.clone());
        let list = account.identity.sign_device_list(
            &account.username,
            info.device_list.version() + 1,
            certs,
        );
        let published = self
            .transport
            .publish_devices(&account.token, &list)
            .await?;
        let token = published.new_device_token.ok_or_else(|| {
            ClientError::Link("the server did not issue a token for the new device".into())
        })?;
        self.write(|tx| Ok(sotto_core::accept_device_list(&mut tx.trust(), &list)?))?;
        let response = Response {
            username: account.username.clone(),
            identity_secret: account.identity.to_secret_bytes().to_vec(),
            certificate: certificate.to_bytes(),
            token,
        };
        let nonce = self.read(rng_bytes::<12>)?;
        self.transport
            .put_link(
                &code.response_slot(),
                code.seal("response", &response, nonce)?,
            )
            .await?;
        drop(response);

        let ready: Ready = code.open(
            "ready",
            &self
                .wait_for_slot(&code.ready_slot(), "the new device")
                .await?,
        )?;
        if ready.device_id != request.device_id {
            return Err(ClientError::Link(
                "the new device answered with another id".into(),
            ));
        }
        // Add it to every conversation this device is in.
        let me = [account.username.clone()];
        for c in self.read(|tx| tx.conversations())? {
            if c.active {
                self.add_users(c.id, &me).await?;
            }
        }
        Ok(request.device_id)
    }

    /// This account's devices, from the signed device list.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>, ClientError> {
        let account = self.account()?;
        let info = self
            .transport
            .account(&account.token, &account.username)
            .await?;
        let me = account.device.device_id();
        Ok(info
            .device_list
            .devices()
            .iter()
            .map(|c| DeviceInfo {
                device_id: c.device_id(),
                created_at: c.created_at(),
                this_device: c.device_id() == me,
            })
            .collect())
    }

    /// Unlinks another device of this account: publishes a device list without it
    /// (the server revokes its token and drops its mailbox at once) and removes it
    /// from every conversation.
    pub async fn remove_device(&self, device: DeviceId) -> Result<(), ClientError> {
        let account = self.account()?;
        if device == account.device.device_id() {
            return Err(ClientError::RemovingThisDevice);
        }
        let info = self
            .transport
            .account(&account.token, &account.username)
            .await?;
        if info.device_list.device(device).is_none() {
            return Err(ClientError::UnknownDevice(device));
        }
        let certs: Vec<DeviceCertificate> = info
            .device_list
            .devices()
            .iter()
            .filter(|c| c.device_id() != device)
            .cloned()
            .collect();
        let list = account.identity.sign_device_list(
            &account.username,
            info.device_list.version() + 1,
            certs,
        );
        self.transport
            .publish_devices(&account.token, &list)
            .await?;
        self.write(|tx| Ok(sotto_core::accept_device_list(&mut tx.trust(), &list)?))?;
        self.catch_up().await?;
        for c in self.read(|tx| tx.conversations())? {
            if !c.active {
                continue;
            }
            for _ in 0..RETRIES {
                let out = self.write(|tx| {
                    let mut conv: Conversation = load(tx, c.id)?;
                    if !conv.roster()?.contains(device) {
                        return Ok(None);
                    }
                    Ok(Some(conv.remove_devices(
                        &tx.provider(),
                        &account.device,
                        &[device],
                    )?))
                })?;
                let Some(out) = out else { break };
                if self.submit_commit(&account, c.id, out).await? {
                    break;
                }
            }
        }
        Ok(())
    }

    /// The username of this profile, if registered.
    pub fn username(&self) -> Result<Option<Username>, ClientError> {
        Ok(self.read(|tx| tx.account())?.map(|a| a.username))
    }
}
