//! The SDK's error type: what went wrong, said so that a CLI can print it as one line
//! and a UI can act on the kind.

use sotto_api::ErrorCode;
use sotto_core::{ConversationError, Refusal, TrustError, TrustStoreError};
use sotto_proto::{ConversationId, DeviceId, MessageId, Username};

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// This profile has no account yet.
    #[error("this profile has no account: register one first")]
    NotRegistered,
    /// This profile already has an account.
    #[error("this profile already has an account ({0}); another account needs another profile")]
    AlreadyRegistered(String),
    /// The user does not exist on the server.
    #[error("no user named {0} exists on the server")]
    UnknownUser(String),
    /// The username is taken.
    #[error("the username {0} is already taken: pick another")]
    UsernameTaken(String),
    /// No conversation matches.
    #[error("no conversation {0} in this profile")]
    UnknownConversation(String),
    /// What the person typed names several conversations.
    #[error("{input:?} names {} conversations: {}; use more of the id", candidates.len(), candidates.join(", "))]
    Ambiguous {
        /// What was typed.
        input: String,
        /// Each candidate as `<id> (<name>)`.
        candidates: Vec<String>,
    },
    /// No stored message has this id in the conversation.
    #[error("no message {0} in this conversation")]
    UnknownMessage(MessageId),
    /// The message carries no attachment.
    #[error("message {0} has no attachment")]
    NoAttachment(MessageId),
    /// Only the sender may edit or delete a message.
    #[error("message {0} is someone else's: only your own messages can be edited or deleted")]
    NotOwnMessage(MessageId),
    /// This device left the conversation or was removed from it.
    #[error("you are no longer a member of conversation {0}")]
    NotAMember(ConversationId),
    /// The device is not one of this account's devices.
    #[error("{0} is not one of your devices")]
    UnknownDevice(DeviceId),
    /// A device cannot remove itself (another device of the account must).
    #[error("this is the device you are using: remove it from another of your devices")]
    RemovingThisDevice,
    /// What was given is not a link code.
    #[error("that is not a link code: copy the whole code the new device shows")]
    InvalidLinkCode,
    /// The server address cannot be used.
    #[error("the server address {url:?} cannot be used: {reason}")]
    InvalidServer {
        /// The address.
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// The extra CA certificate cannot be used.
    #[error("the CA certificate is not a usable PEM certificate: {0}")]
    CaCertificate(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The server refused the request.
    #[error("the server refused: {message} ({code})")]
    Server {
        /// HTTP status.
        status: u16,
        /// The server's stable error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The server could not be reached or answered something unreadable.
    #[error("cannot reach the server at {url}: {reason}")]
    Network {
        /// The server URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A contact's keys were refused (ghost device, key substitution, rollback).
    #[error("refused for security: {0}")]
    Refused(#[from] Refusal),
    /// The profile's trust store (pinned keys) could not be read or written.
    #[error("local storage: {0}")]
    TrustStore(#[from] TrustStoreError),
    /// Other members' commits kept winning the conversation's epoch while this
    /// operation retried (a busy group): nothing was changed; try again.
    #[error("the conversation kept changing while {operation}; nothing was changed, try again")]
    Contention {
        /// What was being done ("sending", "adding members", ...).
        operation: &'static str,
    },
    /// Another connection of this device took over its real-time delivery.
    #[error("another connection of this device took over; only one may listen at a time")]
    Replaced,
    /// This device was removed from its account (by another of the account's devices).
    #[error("this device was removed from its account; it can no longer send or receive")]
    DeviceRemoved,
    /// The MLS engine refused or failed.
    #[error("encryption engine: {0}")]
    Engine(#[from] ConversationError),
    /// An attachment's ciphertext did not match its digest.
    #[error("the attachment was tampered with or corrupted (digest mismatch); it was not saved")]
    AttachmentDigest,
    /// The profile database failed.
    #[error("local storage: {0}")]
    Storage(#[from] rusqlite::Error),
    /// A local file or directory could not be used.
    #[error("cannot {action} {}: {source}", path.display())]
    File {
        /// What was being done ("open", "create", "read", "write", ...).
        action: &'static str,
        /// The file or directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Something stored in the profile does not read back.
    #[error("the profile is damaged: {0} is corrupt")]
    Corrupt(String),
    /// A worker task of this process failed (it panicked or was cancelled).
    #[error("a worker task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Setting up TLS failed.
    #[error("TLS set-up failed: {0}")]
    Tls(#[source] rustls::Error),
    /// This process cannot go on (no random source, a poisoned lock).
    #[error("{0}")]
    Local(String),
    /// Linking a device failed.
    #[error("linking failed: {0}")]
    Link(String),
    /// The recovery key as typed does not decode.
    #[error("that is not a recovery key: {0}")]
    InvalidRecoveryKey(String),
    /// The recovery key is not the given account's.
    #[error("that recovery key is not {0}'s: check the key and the username")]
    WrongRecoveryKey(String),
    /// Linking and removing devices need the account key, which only the primary
    /// device holds.
    #[error(
        "only the account's primary device (the one it was registered or recovered on) can \
         link or remove devices"
    )]
    NotPrimary,
    /// The directory's device list for this account is not one this (primary) device
    /// signed: someone else holds the account key.
    #[error(
        "the server's device list for your account (version {version}) was not made by this \
         device: someone else holds your account key (a stolen copy of this device?). \
         Nothing was changed; recover the account with your recovery key"
    )]
    ForeignDeviceList {
        /// The version found.
        version: u64,
    },
    /// A contact's identity key changed (they registered again): nothing is sent to
    /// them until the person accepts the new key.
    #[error(
        "{0}'s safety number changed (a new identity key: a reinstall, or someone else): \
         nothing was sent to them. Compare the new safety number with {0}, then accept it"
    )]
    SafetyNumberChanged(Username),
    /// A send would reach none of a recipient's current devices.
    #[error("{user} cannot receive this: {reason}. Nothing was sent")]
    Unreachable {
        /// The recipient.
        user: Username,
        /// Why.
        reason: String,
    },
}

impl From<TrustError> for ClientError {
    fn from(e: TrustError) -> Self {
        match e {
            TrustError::Refused(r) => Self::Refused(r),
            TrustError::Store(e) => Self::TrustStore(e),
            other => Self::Engine(ConversationError::Corrupt(other.to_string())),
        }
    }
}

impl ClientError {
    /// A file of this device's own: a failure here is this device's, never the
    /// sender's, so an entry that meets it is retried rather than recorded as failed.
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            Self::Storage(_)
                | Self::TrustStore(_)
                | Self::Engine(ConversationError::TrustStore(_) | ConversationError::Storage(_))
                | Self::File { .. }
                | Self::Corrupt(_)
                | Self::Task(_)
                | Self::Tls(_)
                | Self::Local(_)
        )
    }

    /// A [`ClientError::File`].
    pub(crate) fn file(
        action: &'static str,
        path: &std::path::Path,
        source: std::io::Error,
    ) -> Self {
        Self::File {
            action,
            path: path.to_owned(),
            source,
        }
    }

    /// The server's error code, if the server refused.
    pub fn server_code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::ClientError;

    #[test]
    fn local_errors_keep_their_cause_and_say_where() {
        let e = ClientError::file(
            "open",
            std::path::Path::new("/nowhere/file"),
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        );
        assert_eq!(e.to_string(), "cannot open /nowhere/file: no such file");
        let cause = e.source().expect("the io error is kept");
        assert_eq!(cause.to_string(), "no such file");
        assert!(e.is_local());

        let e = ClientError::from(rusqlite::Error::InvalidQuery);
        assert!(e.source().is_some() && e.is_local());
        assert!(
            !ClientError::Contention {
                operation: "sending"
            }
            .is_local()
        );
    }

    #[test]
    fn sdk_messages_name_no_cli_commands_or_flags() {
        for e in [
            ClientError::NotRegistered,
            ClientError::AlreadyRegistered("alice".into()),
            ClientError::UnknownConversation("club".into()),
            ClientError::UnknownUser("bob".into()),
            ClientError::UsernameTaken("bob".into()),
            ClientError::Contention {
                operation: "sending",
            },
            ClientError::Replaced,
            ClientError::DeviceRemoved,
        ] {
            let text = e.to_string();
            assert!(!text.contains("sotto ") && !text.contains("--"), "{text}");
        }
    }
}
