//! Every endpoint: its method and path template (axum and OpenAPI share the `{name}`
//! syntax), in one place. The server registers its routes under these templates, and
//! a test in the server checks that `/openapi.json` lists exactly [`ALL`].

use std::fmt::Display;

use sotto_proto::{ConversationId, Username};

/// An HTTP method the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// GET.
    Get,
    /// POST.
    Post,
    /// PUT.
    Put,
}

impl Method {
    /// The method's name, upper case.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
        }
    }
}

/// One endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Its method.
    pub method: Method,
    /// Its path template, e.g. `/v1/groups/{id}/commits`.
    pub template: &'static str,
}

/// `template` with its one `{name}` placeholder replaced by `value`.
fn fill(template: &str, value: &dyn Display) -> String {
    match (template.find('{'), template.find('}')) {
        (Some(open), Some(close)) if open < close => {
            format!("{}{value}{}", &template[..open], &template[close + 1..])
        }
        _ => template.to_owned(),
    }
}

/// `GET /v1/accounts/{username}`.
pub fn account(username: &Username) -> String {
    fill(ACCOUNT.template, username)
}

/// `POST /v1/accounts/{username}/recover`.
pub fn recover(username: &Username) -> String {
    fill(RECOVER.template, username)
}

/// `POST /v1/accounts/{username}/recovery-lookup`.
pub fn recovery_lookup(username: &Username) -> String {
    fill(RECOVERY_LOOKUP.template, username)
}

/// `GET /v1/groups/{id}`.
pub fn group(id: ConversationId) -> String {
    fill(GROUP.template, &id)
}

/// `POST /v1/groups/{id}/commits`.
pub fn commits(id: ConversationId) -> String {
    fill(COMMIT.template, &id)
}

/// `POST /v1/groups/{id}/messages`.
pub fn messages(id: ConversationId) -> String {
    fill(MESSAGE.template, &id)
}

/// `PUT` and `GET /v1/link/{slot}`.
pub fn link(slot: &str) -> String {
    fill(PUT_LINK.template, &slot)
}

/// `GET /v1/attachments/{id}`.
pub fn attachment(id: &str) -> String {
    fill(DOWNLOAD_ATTACHMENT.template, &id)
}

const fn at(method: Method, template: &'static str) -> Endpoint {
    Endpoint { method, template }
}

/// Liveness probe.
pub const HEALTH: Endpoint = at(Method::Get, "/healthz");
/// Prometheus metrics.
pub const METRICS: Endpoint = at(Method::Get, "/metrics");
/// The OpenAPI document.
pub const OPENAPI: Endpoint = at(Method::Get, "/openapi.json");
/// Register an account with its first device.
pub const REGISTER: Endpoint = at(Method::Post, "/v1/accounts");
/// An account's identity key and device list.
pub const ACCOUNT: Endpoint = at(Method::Get, "/v1/accounts/{username}");
/// Restore an account on a new device with its recovery key: a device list under a
/// new account-key generation, certified by the account's root.
pub const RECOVER: Endpoint = at(Method::Post, "/v1/accounts/{username}/recover");
/// Read an account's directory entry with a signature of its root (before a
/// recovery, when the device has no token).
pub const RECOVERY_LOOKUP: Endpoint = at(Method::Post, "/v1/accounts/{username}/recovery-lookup");
/// Replace the caller's bearer token.
pub const ROTATE_TOKEN: Endpoint = at(Method::Post, "/v1/devices/token");
/// Publish the caller's account's new device list.
pub const PUBLISH_DEVICES: Endpoint = at(Method::Put, "/v1/devices");
/// Upload KeyPackages.
pub const UPLOAD_KEY_PACKAGES: Endpoint = at(Method::Post, "/v1/key-packages");
/// The caller's KeyPackage counters.
pub const KEY_PACKAGE_STATUS: Endpoint = at(Method::Get, "/v1/key-packages");
/// Claim one KeyPackage per device of a user.
pub const CLAIM_KEY_PACKAGES: Endpoint = at(Method::Post, "/v1/key-packages/claim");
/// Create a group.
pub const CREATE_GROUP: Endpoint = at(Method::Post, "/v1/groups");
/// A group's epoch and members.
pub const GROUP: Endpoint = at(Method::Get, "/v1/groups/{id}");
/// Submit a commit.
pub const COMMIT: Endpoint = at(Method::Post, "/v1/groups/{id}/commits");
/// Send an application message (or proposal).
pub const MESSAGE: Endpoint = at(Method::Post, "/v1/groups/{id}/messages");
/// Read the caller's mailbox.
pub const FETCH: Endpoint = at(Method::Get, "/v1/mailbox");
/// Delete processed mailbox entries.
pub const ACK: Endpoint = at(Method::Post, "/v1/mailbox/ack");
/// Put a device-linking payload in a slot.
pub const PUT_LINK: Endpoint = at(Method::Put, "/v1/link/{slot}");
/// Take a device-linking payload from a slot.
pub const TAKE_LINK: Endpoint = at(Method::Get, "/v1/link/{slot}");
/// Upload an encrypted attachment.
pub const UPLOAD_ATTACHMENT: Endpoint = at(Method::Post, "/v1/attachments");
/// Download an encrypted attachment.
pub const DOWNLOAD_ATTACHMENT: Endpoint = at(Method::Get, "/v1/attachments/{id}");
/// The WebSocket (an upgraded GET).
pub const WEBSOCKET: Endpoint = at(Method::Get, "/v1/ws");

/// Every endpoint.
pub const ALL: &[Endpoint] = &[
    HEALTH,
    METRICS,
    OPENAPI,
    REGISTER,
    ACCOUNT,
    RECOVERY_LOOKUP,
    RECOVER,
    ROTATE_TOKEN,
    PUBLISH_DEVICES,
    UPLOAD_KEY_PACKAGES,
    KEY_PACKAGE_STATUS,
    CLAIM_KEY_PACKAGES,
    CREATE_GROUP,
    GROUP,
    COMMIT,
    MESSAGE,
    FETCH,
    ACK,
    PUT_LINK,
    TAKE_LINK,
    UPLOAD_ATTACHMENT,
    DOWNLOAD_ATTACHMENT,
    WEBSOCKET,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fill_their_templates() {
        let id = ConversationId::from_bytes([0xab; 16]);
        assert_eq!(commits(id), format!("/v1/groups/{id}/commits"));
        assert_eq!(group(id), format!("/v1/groups/{id}"));
        let alice = Username::parse("alice").unwrap();
        assert_eq!(account(&alice), "/v1/accounts/alice");
        assert_eq!(link("00ff"), "/v1/link/00ff");
        assert_eq!(attachment("beef"), "/v1/attachments/beef");
        // Every template has at most one placeholder, which the functions above fill.
        for e in ALL {
            assert!(e.template.matches('{').count() <= 1, "{}", e.template);
        }
    }
}
