//! The SDK's error type: what went wrong, said so that a CLI can print it as one line
//! and a UI can act on the kind.

use sotto_api::ErrorCode;
use sotto_core::{ConversationError, Refusal};

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
    /// The user typed something that cannot be right.
    #[error("{0}")]
    Usage(String),
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
}

impl ClientError {
    /// A file of this device's own: a failure here is this device's, never the
    /// sender's, so an entry that meets it is retried rather than recorded as failed.
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            Self::Storage(_)
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
