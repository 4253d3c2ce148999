//! This account's devices: linking a new one, listing, removing. Only the primary
//! device holds the account key, so only it approves links and removes devices
//! (decision 0011); it builds each new list from the list it verified itself, never
//! from what the server returns.

use std::time::Duration;

use sotto_core::{DeviceSigner, LocalDevice};
use sotto_proto::{CertificateChain, DeviceCertificate, DeviceId, DeviceList, Username};

use crate::client::{Adds, Client, WhoAmI, rng_bytes};
use crate::error::ClientError;
use crate::link::{LinkCode, Ready, Request, Response};
use crate::profile::Account;

/// How often a waiting side polls its relay slot.
const POLL: Duration = Duration::from_millis(300);
/// How long a side waits for the other (the server keeps slots 10 minutes).
const LINK_TIMEOUT: Duration = Duration::from_secs(600);

/// One of this account's devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device id.
    pub device_id: DeviceId,
    /// Its name, as certified (peer text: escape it when shown).
    pub name: String,
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
    /// `show_code` (print it or render a QR code), then waits until the account's
    /// primary device approves it, and becomes a device of that account, called
    /// `device_name`. It receives only its own certificate and token: no account key.
    #[tracing::instrument(name = "link_start", skip_all)]
    pub async fn link_start(
        &self,
        device_name: &str,
        show_code: impl FnOnce(&str),
    ) -> Result<WhoAmI, ClientError> {
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
            name: sotto_core::device_name(device_name),
        };
        self.transport
            .put_link(&code.request_slot(), code.seal("request", &request, nonce)?)
            .await?;
        show_code(&code.text());

        let sealed = self
            .wait_for_slot(&code.response_slot(), "the approval")
            .await?;
        let response: Response = code.open("response", &sealed)?;
        let chain = CertificateChain::from_bytes(&response.chain).map_err(|_| {
            ClientError::Link("the approval carried a malformed certificate".into())
        })?;
        // The chain must verify and be for this device and account.
        if chain.verify().is_err()
            || chain.device.device_id() != device_id
            || chain.device.username() != &response.username
        {
            return Err(ClientError::Link(
                "the approval's certificate is not for this device".into(),
            ));
        }
        let device = LocalDevice::new(chain, signer).map_err(|_| {
            ClientError::Link("the approval's certificate certifies another key".into())
        })?;
        let account = Account {
            username: response.username.clone(),
            device,
            account_key: None,
            token: response.token.clone(),
            server: self.transport.base().to_owned(),
        };
        // The directory must now list this very certificate, under the same root.
        let info = self
            .transport
            .account(&account.token, &account.username)
            .await?;
        if info.device_list.identity_key() != &account.identity_key()
            || info.device_list.device(device_id) != Some(account.device.certificate())
        {
            return Err(ClientError::Link(
                "the server's device list does not include this device under the account's key"
                    .into(),
            ));
        }
        self.write(|tx| {
            tx.save_account(&account)?;
            sotto_core::accept_device_list(&mut tx.trust(), &info.device_list)?;
            Ok(())
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

    /// On the primary device: approves the new device that shows `code`: certifies
    /// it under the name it gave, publishes the new device list, hands it its
    /// certificate and token through the relay, waits for it to be ready and adds it
    /// to every conversation. Answers its id.
    #[tracing::instrument(name = "link_approve", skip_all)]
    pub async fn link_approve(&self, code: &LinkCode) -> Result<DeviceId, ClientError> {
        let account = self.account()?;
        let Some(account_key) = &account.account_key else {
            return Err(ClientError::NotPrimary);
        };
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
        let current = self.own_list(&account).await?;
        if current.device(request.device_id).is_some() {
            return Err(ClientError::Link("that device is already linked".into()));
        }
        let certificate =
            account_key.certify_device(request.device_id, device_key, &request.name, self.now());
        let mut certs = current.devices().to_vec();
        certs.push(certificate.clone());
        let list = account_key.sign_device_list(current.version() + 1, certs);
        self.write(|tx| tx.set_own_list_pending(&list.digest()))?;
        let published = self
            .transport
            .publish_devices(&account.token, &list)
            .await?;
        let token = published.new_device_token.ok_or_else(|| {
            ClientError::Link("the server did not issue a token for the new device".into())
        })?;
        self.write(|tx| {
            sotto_core::accept_device_list(&mut tx.trust(), &list)?;
            Ok(())
        })?;
        let response = Response {
            username: account.username.clone(),
            chain: CertificateChain {
                account: account_key.certificate().clone(),
                device: certificate,
            }
            .to_bytes(),
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
        // Accepting the new list marked every conversation: add it everywhere now.
        self.catch_up().await?;
        self.reconcile_every(&account, Adds::Any).await?;
        Ok(request.device_id)
    }

    /// This account's list as the directory serves it, if it is the last one this
    /// (primary) device signed. Anything else means someone else holds the account
    /// key: refused every time, until a recovery, and reported.
    async fn own_list(&self, account: &Account) -> Result<DeviceList, ClientError> {
        let served = self
            .transport
            .account(&account.token, &account.username)
            .await?
            .device_list;
        let signed_here = self.read(|tx| tx.is_own_list_pending(&served.digest()))?;
        // Verified and held either way (a publication whose answer was lost is
        // accepted here; a foreign one is reported as a security event).
        let verified = self.refresh_device_list(account, &account.username).await;
        if !signed_here {
            return Err(ClientError::ForeignDeviceList {
                version: served.version(),
            });
        }
        let verified = verified?;
        if verified != served {
            // The directory changed between the two look-ups: try again.
            return Err(ClientError::Contention {
                operation: "reading this account's device list",
            });
        }
        Ok(verified)
    }

    /// This account's devices, from the signed device list.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>, ClientError> {
        let account = self.account()?;
        let list = self
            .refresh_device_list(&account, &account.username)
            .await?;
        let me = account.device.device_id();
        Ok(list
            .devices()
            .iter()
            .map(|c| DeviceInfo {
                device_id: c.device_id(),
                name: c.name().to_owned(),
                created_at: c.created_at(),
                this_device: c.device_id() == me,
            })
            .collect())
    }

    /// Unlinks another device of this account (on the primary): publishes a device
    /// list without it (the server revokes its token and drops its mailbox at once,
    /// and tells the members of its conversations), then removes it from every
    /// conversation this device is in; members remove it from the others.
    pub async fn remove_device(&self, device: DeviceId) -> Result<(), ClientError> {
        let account = self.account()?;
        if device == account.device.device_id() {
            return Err(ClientError::RemovingThisDevice);
        }
        let Some(account_key) = &account.account_key else {
            return Err(ClientError::NotPrimary);
        };
        let current = self.own_list(&account).await?;
        if current.device(device).is_none() {
            return Err(ClientError::UnknownDevice(device));
        }
        let certs: Vec<DeviceCertificate> = current
            .devices()
            .iter()
            .filter(|c| c.device_id() != device)
            .cloned()
            .collect();
        let list = account_key.sign_device_list(current.version() + 1, certs);
        self.write(|tx| tx.set_own_list_pending(&list.digest()))?;
        self.transport
            .publish_devices(&account.token, &list)
            .await?;
        self.write(|tx| {
            sotto_core::accept_device_list(&mut tx.trust(), &list)?;
            tx.make_self_updates_due()
        })?;
        self.catch_up().await?;
        let checked = self.reconcile_every(&account, Adds::Designated).await;
        self.self_update_due().await?;
        checked
    }

    /// The username of this profile, if registered.
    pub fn username(&self) -> Result<Option<Username>, ClientError> {
        Ok(self.read(|tx| tx.account())?.map(|a| a.username))
    }

    /// Whether this profile is an account's primary device, for callers that show
    /// device commands only where they work.
    pub fn is_primary(&self) -> Result<bool, ClientError> {
        Ok(self.account()?.is_primary())
    }
}
