//! The server's HTTP API as typed calls (see `docs/protocol.md`).

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sotto_proto::{
    ConversationId, DeviceId, DeviceList, IdentityPublicKey, MessageId, Username, b64,
};

use crate::error::ClientError;

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
    /// The account identity key.
    pub identity_key: IdentityPublicKey,
    /// The current signed device list.
    pub device_list: DeviceList,
}

/// One mailbox entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Entry {
    /// The per-device sequence number.
    pub seq: u64,
    /// `welcome`, `commit` or `message`.
    pub kind: String,
    /// The conversation.
    pub group: ConversationId,
    /// The MLS bytes.
    #[serde(with = "b64::serde_bytes")]
    pub body: Vec<u8>,
    /// When the server accepted it.
    pub received_at: u64,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

#[derive(Deserialize)]
struct RegisterAnswer {
    token: String,
}

#[derive(Deserialize)]
struct AccountAnswer {
    identity_key: IdentityPublicKey,
    #[serde(with = "b64::serde_bytes")]
    device_list: Vec<u8>,
}

#[derive(Deserialize)]
struct Claimed {
    device_id: DeviceId,
    #[serde(with = "b64::serde_bytes")]
    key_package: Vec<u8>,
}

#[derive(Deserialize)]
struct ClaimAnswer {
    key_packages: Vec<Claimed>,
}

/// Remaining KeyPackages on the server.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct KeyPackageStatus {
    /// One-time KeyPackages left.
    pub one_time_remaining: u32,
    /// Whether a last-resort KeyPackage is stored.
    pub has_last_resort: bool,
}

#[derive(Deserialize)]
struct EpochAnswer {
    epoch: u64,
}

#[derive(Deserialize)]
struct MessageAnswer {
    duplicate: bool,
}

#[derive(Deserialize)]
struct FetchAnswer {
    entries: Vec<Entry>,
}

/// The answer to publishing a device list.
#[derive(Debug, Clone, Deserialize)]
pub struct PublishAnswer {
    /// The new version.
    pub version: u64,
    /// The token of the device added by this list, if one was.
    pub new_device_token: Option<String>,
}

#[derive(Deserialize)]
struct UploadAnswer {
    id: String,
}

impl Transport {
    /// A transport for the server at `base` (e.g. `http://127.0.0.1:7480`).
    pub fn new(base: &str) -> Result<Self, ClientError> {
        Self::with_ca(base, None)
    }

    /// The same transport (same trusted CA) for another base URL.
    pub fn with_base(&self, base: &str) -> Result<Self, ClientError> {
        Self::with_ca(base, self.ca_pem.as_deref().cloned())
    }

    /// A transport that also trusts the CA certificate(s) in `ca_pem` (for a server
    /// with a private or self-signed certificate), besides the public web roots.
    pub fn with_ca(base: &str, ca_pem: Option<Vec<u8>>) -> Result<Self, ClientError> {
        // rustls needs a process-wide crypto provider; installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            // A server that stops answering mid-request is an error, not a hang
            // (large transfers keep going as long as bytes keep flowing).
            .read_timeout(std::time::Duration::from_secs(60));
        if let Some(pem) = &ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem).map_err(|_| {
                ClientError::Usage("the CA certificate file is not a PEM certificate".into())
            })? {
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
                let cert = cert.map_err(|_| {
                    ClientError::Usage("the CA certificate file is not a PEM certificate".into())
                })?;
                roots.add(cert).map_err(|e| {
                    ClientError::Usage(format!("the CA certificate is not usable: {e}"))
                })?;
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Local(format!("TLS set-up failed: {e}")))?
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
                code: "unknown".into(),
                message: format!("HTTP {status}"),
            },
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<T, ClientError> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
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
        let answer: RegisterAnswer = self
            .call(
                reqwest::Method::POST,
                "/v1/accounts",
                None,
                Some(json!({"username": username, "device_list": list})),
            )
            .await
            .map_err(|e| match e.server_code() {
                Some("username_taken") => ClientError::UsernameTaken(username.to_string()),
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
        let answer: AccountAnswer = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/accounts/{username}"),
                Some(token),
                None,
            )
            .await
            .map_err(|e| match e.server_code() {
                Some("unknown_user") => ClientError::UnknownUser(username.to_string()),
                _ => e,
            })?;
        let device_list =
            DeviceList::from_bytes(&answer.device_list).map_err(|e| ClientError::Network {
                url: self.base.clone(),
                reason: format!("the server sent an unreadable device list: {e}"),
            })?;
        Ok(AccountInfo {
            identity_key: answer.identity_key,
            device_list,
        })
    }

    /// `PUT /v1/devices`.
    pub async fn publish_devices(
        &self,
        token: &str,
        list: &DeviceList,
    ) -> Result<PublishAnswer, ClientError> {
        self.call(
            reqwest::Method::PUT,
            "/v1/devices",
            Some(token),
            Some(json!({"device_list": list})),
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
        let one_time: Vec<String> = one_time.iter().map(|k| b64::encode(k)).collect();
        let mut body = json!({ "one_time": one_time });
        if let Some(lr) = last_resort {
            body["last_resort"] = json!(b64::encode(lr));
        }
        let _: Value = self
            .call(
                reqwest::Method::POST,
                "/v1/key-packages",
                Some(token),
                Some(body),
            )
            .await?;
        Ok(())
    }

    /// `GET /v1/key-packages`.
    pub async fn key_package_status(&self, token: &str) -> Result<KeyPackageStatus, ClientError> {
        self.call(reqwest::Method::GET, "/v1/key-packages", Some(token), None)
            .await
    }

    /// `POST /v1/key-packages/claim`: one KeyPackage per device of `username`.
    pub async fn claim(
        &self,
        token: &str,
        username: &Username,
    ) -> Result<Vec<(DeviceId, Vec<u8>)>, ClientError> {
        let answer: ClaimAnswer = self
            .call(
                reqwest::Method::POST,
                "/v1/key-packages/claim",
                Some(token),
                Some(json!({"username": username})),
            )
            .await
            .map_err(|e| match e.server_code() {
                Some("unknown_user") => ClientError::UnknownUser(username.to_string()),
                _ => e,
            })?;
        Ok(answer
            .key_packages
            .into_iter()
            .map(|c| (c.device_id, c.key_package))
            .collect())
    }

    /// `POST /v1/groups`.
    pub async fn create_group(&self, token: &str, id: ConversationId) -> Result<(), ClientError> {
        let _: Value = self
            .call(
                reqwest::Method::POST,
                "/v1/groups",
                Some(token),
                Some(json!({"group_id": id})),
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
        let (epoch, added, removed, commit, welcome) = (
            m.epoch,
            &m.added,
            &m.removed,
            &out.commit,
            out.welcome.as_deref(),
        );
        let mut body = json!({
            "epoch": epoch,
            "added": added,
            "removed": removed,
            "commit": b64::encode(commit),
        });
        if let Some(w) = welcome {
            body["welcome"] = json!(b64::encode(w));
        }
        let answer: EpochAnswer = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/groups/{id}/commits"),
                Some(token),
                Some(body),
            )
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
        let answer: MessageAnswer = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/groups/{id}/messages"),
                Some(token),
                Some(json!({"message_id": message_id, "body": b64::encode(body)})),
            )
            .await?;
        Ok(answer.duplicate)
    }

    /// `GET /v1/mailbox?after=`.
    pub async fn fetch(&self, token: &str, after: u64) -> Result<Vec<Entry>, ClientError> {
        let answer: FetchAnswer = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/mailbox?after={after}&limit=500"),
                Some(token),
                None,
            )
            .await?;
        Ok(answer.entries)
    }

    /// `POST /v1/mailbox/ack`.
    pub async fn ack(&self, token: &str, up_to: u64) -> Result<(), ClientError> {
        let _: Value = self
            .call(
                reqwest::Method::POST,
                "/v1/mailbox/ack",
                Some(token),
                Some(json!({"up_to": up_to})),
            )
            .await?;
        Ok(())
    }

    /// `PUT /v1/link/{slot}`.
    pub async fn put_link(&self, slot: &str, payload: Vec<u8>) -> Result<(), ClientError> {
        let resp = self
            .http
            .put(format!("{}/v1/link/{slot}", self.base))
            .body(payload)
            .send()
            .await
            .map_err(|e| self.network(&e))?;
        let _: Value = self.answer(resp).await?;
        Ok(())
    }

    /// `GET /v1/link/{slot}`: the payload, or `None` while the slot is empty.
    pub async fn take_link(&self, slot: &str) -> Result<Option<Vec<u8>>, ClientError> {
        let resp = self
            .http
            .get(format!("{}/v1/link/{slot}", self.base))
            .send()
            .await
            .map_err(|e| self.network(&e))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            let _: Value = self.answer(resp).await?;
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
    ) -> Result<String, ClientError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| ClientError::Local(format!("cannot open {}: {e}", path.display())))?;
        let len = file
            .metadata()
            .await
            .map_err(|e| ClientError::Local(format!("cannot read {}: {e}", path.display())))?
            .len();
        let resp = self
            .http
            .post(format!("{}/v1/attachments", self.base))
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::from(file))
            .send()
            .await
            .map_err(|e| self.network(&e))?;
        let answer: UploadAnswer = self.answer(resp).await?;
        Ok(answer.id)
    }

    /// `GET /v1/attachments/{id}`: streams the blob into `path`.
    pub async fn download_blob(
        &self,
        token: &str,
        id: &str,
        path: &std::path::Path,
    ) -> Result<(), ClientError> {
        use tokio::io::AsyncWriteExt as _;
        let mut resp = self
            .http
            .get(format!("{}/v1/attachments/{id}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| self.network(&e))?;
        if !resp.status().is_success() {
            return match self.answer::<Value>(resp).await {
                Err(e) => Err(e),
                Ok(_) => Err(ClientError::Local(
                    "the server answered a download with no body".into(),
                )),
            };
        }
        let local =
            |e: std::io::Error| ClientError::Local(format!("cannot write {}: {e}", path.display()));
        let mut file = tokio::fs::File::create(path).await.map_err(local)?;
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.network(&e))? {
            file.write_all(&chunk).await.map_err(local)?;
        }
        file.sync_all().await.map_err(local)
    }
}
