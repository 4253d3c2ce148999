//! The server's HTTP API as typed calls (see `docs/protocol.md`), over the wire types of
//! `sotto-api`.

use serde::Serialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use sotto_api::paths::{self, Endpoint};
use sotto_api::{
    AccountResponse, AckRequest, AckResponse, ClaimRequest, ClaimResponse, CommitRequest,
    CommitResponse, CreateGroupRequest, CreateGroupResponse, ErrorBody, ErrorCode, FetchResponse,
    MessageRequest, MessageResponse, PublishRequest, RegisterRequest, RegisterResponse,
    UploadAttachmentResponse, UploadKeyPackagesRequest,
};
use sotto_proto::{BlobId, ConversationId, DeviceId, DeviceList, MessageId, Username};

use crate::error::ClientError;

pub use sotto_api::{Entry, EntryKind, KeyPackageStatus, PublishResponse};

/// An HTTP client bound to one server.
#[derive(Clone, Debug)]
pub struct Transport {
    http: reqwest::Client,
    base: String,
    /// An extra trusted CA (PEM), for servers with a private or self-signed certificate.
    ca_pem: Option<std::sync::Arc<Vec<u8>>>,
}

/// A user's directory entry.
#[derive(Debug, Clone)]
pub struct AccountInfo {
    /// The current signed device list (checked to be the user's, and signed by the
    /// identity key the directory names; still to be accepted against the pin).
    pub device_list: DeviceList,
}

/// A request body, or none.
const NO_BODY: Option<&()> = None;

fn method(endpoint: Endpoint) -> reqwest::Method {
    match endpoint.method {
        paths::Method::Get => reqwest::Method::GET,
        paths::Method::Post => reqwest::Method::POST,
        paths::Method::Put => reqwest::Method::PUT,
    }
}

impl Transport {
    /// The same transport (same trusted CA) for another base URL.
    pub fn with_base(&self, base: &str) -> Result<Self, ClientError> {
        Self::with_ca(base, self.ca_pem.as_deref().cloned())
    }

    /// A transport that also trusts the CA certificate(s) in `ca_pem` (for a server
    /// with a private or self-signed certificate), besides the public web roots.
    pub fn with_ca(base: &str, ca_pem: Option<Vec<u8>>) -> Result<Self, ClientError> {
        let invalid = |reason| ClientError::InvalidServer {
            url: base.to_owned(),
            reason,
        };
        let url = reqwest::Url::parse(base).map_err(|_| invalid("it is not a URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("it must start with http:// or https://"));
        }
        if url.host_str().is_none() {
            return Err(invalid("it names no host"));
        }
        // rustls needs a process-wide crypto provider; installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            // A server that stops answering mid-request is an error, not a hang
            // (large transfers keep going as long as bytes keep flowing).
            .read_timeout(std::time::Duration::from_secs(60));
        if let Some(pem) = &ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| ClientError::CaCertificate(Box::new(e)))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| ClientError::Network {
            url: base.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            ca_pem: ca_pem.map(std::sync::Arc::new),
        })
    }

    /// The TLS client configuration for `wss://`: the public web roots plus the extra CA.
    pub(crate) fn tls_config(&self) -> Result<std::sync::Arc<rustls::ClientConfig>, ClientError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = &self.ca_pem {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| ClientError::CaCertificate(Box::new(e)))?;
                roots
                    .add(cert)
                    .map_err(|e| ClientError::CaCertificate(Box::new(e)))?;
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(ClientError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(std::sync::Arc::new(config))
    }

    /// The server URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn network(&self, e: &reqwest::Error) -> ClientError {
        ClientError::Network {
            url: self.base.clone(),
            reason: e.to_string(),
        }
    }

    async fn answer<T: DeserializeOwned>(&self, resp: reqwest::Response) -> Result<T, ClientError> {
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.network(&e))?;
        if status.is_success() {
            let bytes = if bytes.is_empty() {
                &b"null"[..]
            } else {
                &bytes[..]
            };
            return serde_json::from_slice(bytes).map_err(|e| ClientError::Network {
                url: self.base.clone(),
                reason: format!("unreadable answer: {e}"),
            });
        }
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => ClientError::Server {
                status: status.as_u16(),
                code: body.error.code,
                message: body.error.message,
            },
            Err(_) => ClientError::Server {
                status: status.as_u16(),
                code: ErrorCode::Unknown,
                message: format!("HTTP {status}"),
            },
        })
    }

    /// Calls `endpoint` at `path` (its template filled in) with an optional JSON body.
    async fn call<T: DeserializeOwned, B: Serialize>(
        &self,
        endpoint: Endpoint,
        path: &str,
        token: Option<&str>,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let mut req = self
            .http
            .request(method(endpoint), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.network(&e))?;
        self.answer(resp).await
    }

    /// `POST /v1/accounts`: registers; answers the device token.
    pub async fn register(
        &self,
        username: &Username,
        list: &DeviceList,
    ) -> Result<String, ClientError> {
        let body = RegisterRequest {
            username: username.clone(),
            device_list: list.clone(),
        };
        let answer: RegisterResponse = self
            .call(paths::REGISTER, paths::REGISTER.template, None, Some(&body))
            .await
            .map_err(|e| match e.server_code() {
                Some(ErrorCode::UsernameTaken) => ClientError::UsernameTaken(username.to_string()),
                _ => e,
            })?;
        Ok(answer.token)
    }

    /// `GET /v1/accounts/{username}`.
    pub async fn account(
        &self,
        token: &str,
        username: &Username,
    ) -> Result<AccountInfo, ClientError> {
        let answer: AccountResponse = self
            .call(
                paths::ACCOUNT,
                &paths::account(username),
                Some(token),
                NO_BODY,
            )
            .await
            .map_err(|e| match e.server_code() {
                Some(ErrorCode::UnknownUser) => ClientError::UnknownUser(username.to_string()),
                _ => e,
            })?;
        self.directory_answer(username, &answer)
    }

    /// `POST /v1/accounts/{username}/recovery-lookup`: the directory entry, for the
    /// holder of the account's root (`signature` over
    /// [`sotto_proto::recovery_lookup_message`] at `at`).
    pub async fn recovery_lookup(
        &self,
        username: &Username,
        at: u64,
        signature: [u8; 64],
    ) -> Result<AccountInfo, ClientError> {
        let body = sotto_api::RecoveryLookupRequest {
            at,
            signature: sotto_api::B64(signature.to_vec()),
        };
        let answer: AccountResponse = self
            .call(
                paths::RECOVERY_LOOKUP,
                &paths::recovery_lookup(username),
                None,
                Some(&body),
            )
            .await
            .map_err(|e| match e.server_code() {
                Some(ErrorCode::UnknownUser) => ClientError::UnknownUser(username.to_string()),
                // Forbidden is a wrong key, unless the server says the time is off.
                Some(ErrorCode::Forbidden) if !e.to_string().contains("clock") => {
                    ClientError::WrongRecoveryKey(username.to_string())
                }
                _ => e,
            })?;
        self.directory_answer(username, &answer)
    }

    /// `POST /v1/accounts/{username}/recover`: answers the new device's token.
    pub async fn recover(
        &self,
        username: &Username,
        list: &DeviceList,
    ) -> Result<String, ClientError> {
        let body = sotto_api::RecoverRequest {
            device_list: list.clone(),
        };
        let answer: RegisterResponse = self
            .call(paths::RECOVER, &paths::recover(username), None, Some(&body))
            .await?;
        Ok(answer.token)
    }

    /// `POST /v1/devices/token`: a new token for this device; the old one is dead.
    pub async fn rotate_token(&self, token: &str) -> Result<String, ClientError> {
        let answer: sotto_api::TokenResponse = self
            .call(
                paths::ROTATE_TOKEN,
                paths::ROTATE_TOKEN.template,
                Some(token),
                NO_BODY,
            )
            .await?;
        Ok(answer.token)
    }

    /// Decodes a directory answer and checks that it agrees with itself.
    fn directory_answer(
        &self,
        username: &Username,
        answer: &AccountResponse,
    ) -> Result<AccountInfo, ClientError> {
        let device_list =
            DeviceList::from_bytes(&answer.device_list.0).map_err(|e| ClientError::Network {
                url: self.base.clone(),
                reason: format!("the server sent an unreadable device list: {e}"),
            })?;
        // The identity key field itself proves nothing: only the key that signed the
        // list counts, and the list must be the one of the user asked about.
        if device_list.username() != username || device_list.identity_key() != &answer.identity_key
        {
            return Err(ClientError::Refused(
                sotto_core::Refusal::InconsistentDirectory {
                    username: username.clone(),
                },
            ));
        }
        Ok(AccountInfo { device_list })
    }

    /// `PUT /v1/devices`.
    pub async fn publish_devices(
        &self,
        token: &str,
        list: &DeviceList,
    ) -> Result<PublishResponse, ClientError> {
        let body = PublishRequest {
            device_list: list.clone(),
        };
        self.call(
            paths::PUBLISH_DEVICES,
            paths::PUBLISH_DEVICES.template,
            Some(token),
            Some(&body),
        )
        .await
    }

    /// `POST /v1/key-packages`.
    pub async fn upload_key_packages(
        &self,
        token: &str,
        one_time: &[Vec<u8>],
        last_resort: Option<&[u8]>,
    ) -> Result<(), ClientError> {
        let body = UploadKeyPackagesRequest {
            one_time: one_time.iter().map(|k| k.as_slice().into()).collect(),
            last_resort: last_resort.map(Into::into),
        };
        let _: KeyPackageStatus = self
            .call(
                paths::UPLOAD_KEY_PACKAGES,
                paths::UPLOAD_KEY_PACKAGES.template,
                Some(token),
                Some(&body),
            )
            .await?;
        Ok(())
    }

    /// `GET /v1/key-packages`.
    pub async fn key_package_status(&self, token: &str) -> Result<KeyPackageStatus, ClientError> {
        self.call(
            paths::KEY_PACKAGE_STATUS,
            paths::KEY_PACKAGE_STATUS.template,
            Some(token),
            NO_BODY,
        )
        .await
    }

    /// `POST /v1/key-packages/claim`: one KeyPackage per device of `username`.
    pub async fn claim(
        &self,
        token: &str,
        username: &Username,
    ) -> Result<Vec<(DeviceId, Vec<u8>)>, ClientError> {
        let body = ClaimRequest {
            username: username.clone(),
        };
        let answer: ClaimResponse = self
            .call(
                paths::CLAIM_KEY_PACKAGES,
                paths::CLAIM_KEY_PACKAGES.template,
                Some(token),
                Some(&body),
            )
            .await
            .map_err(|e| match e.server_code() {
                Some(ErrorCode::UnknownUser) => ClientError::UnknownUser(username.to_string()),
                _ => e,
            })?;
        Ok(answer
            .key_packages
            .into_iter()
            .map(|c| (c.device_id, c.key_package.0))
            .collect())
    }

    /// `POST /v1/groups`.
    pub async fn create_group(&self, token: &str, id: ConversationId) -> Result<(), ClientError> {
        let _: CreateGroupResponse = self
            .call(
                paths::CREATE_GROUP,
                paths::CREATE_GROUP.template,
                Some(token),
                Some(&CreateGroupRequest { group_id: id }),
            )
            .await?;
        Ok(())
    }

    /// `POST /v1/groups/{id}/commits`: answers the new epoch.
    pub async fn commit(
        &self,
        token: &str,
        id: ConversationId,
        out: &sotto_core::OutgoingCommit,
    ) -> Result<u64, ClientError> {
        let m = &out.metadata;
        let body = CommitRequest {
            epoch: m.epoch,
            added: m.added.clone(),
            removed: m.removed.clone(),
            commit: out.commit.as_slice().into(),
            welcome: out.welcome.as_deref().map(Into::into),
        };
        let answer: CommitResponse = self
            .call(paths::COMMIT, &paths::commits(id), Some(token), Some(&body))
            .await?;
        Ok(answer.epoch)
    }

    /// `POST /v1/groups/{id}/messages`: answers whether it was a duplicate.
    pub async fn send(
        &self,
        token: &str,
        id: ConversationId,
        message_id: MessageId,
        body: &[u8],
    ) -> Result<bool, ClientError> {
        let request = MessageRequest {
            message_id,
            body: body.into(),
        };
        let answer: MessageResponse = self
            .call(
                paths::MESSAGE,
                &paths::messages(id),
                Some(token),
                Some(&request),
            )
            .await?;
        Ok(answer.duplicate)
    }

    /// `GET /v1/mailbox?after=`.
    pub async fn fetch(&self, token: &str, after: u64) -> Result<Vec<Entry>, ClientError> {
        let answer: FetchResponse = self
            .call(
                paths::FETCH,
                &format!("{}?after={after}&limit=500", paths::FETCH.template),
                Some(token),
                NO_BODY,
            )
            .await?;
        Ok(answer.entries)
    }

    /// `POST /v1/mailbox/ack`.
    pub async fn ack(&self, token: &str, up_to: u64) -> Result<(), ClientError> {
        let _: AckResponse = self
            .call(
                paths::ACK,
                paths::ACK.template,
                Some(token),
                Some(&AckRequest { up_to }),
            )
            .await?;
        Ok(())
    }

    /// `PUT /v1/link/{slot}`.
    pub async fn put_link(&self, slot: &str, payload: Vec<u8>) -> Result<(), ClientError> {
        let resp = self
            .http
            .put(format!("{}{}", self.base, paths::link(slot)))
            .body(payload)
            .send()
            .await
            .map_err(|e| self.network(&e))?;
        let _: IgnoredAny = self.answer(resp).await?;
        Ok(())
    }

    /// `GET /v1/link/{slot}`: the payload, or `None` while the slot is empty.
    pub async fn take_link(&self, slot: &str) -> Result<Option<Vec<u8>>, ClientError> {
        let resp = self
            .http
            .get(format!("{}{}", self.base, paths::link(slot)))
            .send()
            .await
            .map_err(|e| self.network(&e))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            let _: IgnoredAny = self.answer(resp).await?;
            return Ok(None);
        }
        let bytes = resp.bytes().await.map_err(|e| self.network(&e))?;
        Ok(Some(bytes.to_vec()))
    }

    /// `POST /v1/attachments`: streams the ciphertext file up; answers the blob id.
    pub async fn upload_blob(
        &self,
        token: &str,
        path: &std::path::Path,
    ) -> Result<BlobId, ClientError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| ClientError::file("open", path, e))?;
        let len = file
            .metadata()
            .await
            .map_err(|e| ClientError::file("read", path, e))?
            .len();
        let resp = self
            .http
            .post(format!(
                "{}{}",
                self.base,
                paths::UPLOAD_ATTACHMENT.template
            ))
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::from(file))
            .send()
            .await
            .map_err(|e| self.network(&e))?;
        let answer: UploadAttachmentResponse = self.answer(resp).await?;
        BlobId::parse(&answer.id).map_err(|_| ClientError::Network {
            url: self.base.clone(),
            reason: "the server answered an upload with an invalid blob id".into(),
        })
    }

    /// `GET /v1/attachments/{id}`: streams the blob into `path`.
    pub async fn download_blob(
        &self,
        token: &str,
        id: BlobId,
        path: &std::path::Path,
    ) -> Result<(), ClientError> {
        use tokio::io::AsyncWriteExt as _;
        let mut resp = self
            .http
            .get(format!(
                "{}{}",
                self.base,
                paths::attachment(&id.to_string())
            ))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| self.network(&e))?;
        if !resp.status().is_success() {
            return match self.answer::<IgnoredAny>(resp).await {
                Err(e) => Err(e),
                Ok(_) => Err(ClientError::Local(
                    "the server answered a download with no body".into(),
                )),
            };
        }
        let local = |e: std::io::Error| ClientError::file("write", path, e);
        let mut file = tokio::fs::File::create(path).await.map_err(local)?;
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.network(&e))? {
            file.write_all(&chunk).await.map_err(local)?;
        }
        file.sync_all().await.map_err(local)
    }
}
