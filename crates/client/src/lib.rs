//! Sotto's client SDK: an async [`Client`] over the encryption engine (`sotto-core`),
//! the server's HTTP API and a local SQLite profile.
//!
//! A [`Client`] owns one profile directory (one account, one device). Every change to
//! MLS state is stored in the same SQLite transaction as the messages and the mailbox
//! cursor it produces ([`profile`]), so a crash never leaves the group state and the
//! history out of step. [`Client::sync`] fetches the device's mailbox, applies each
//! entry in order (Welcome, commit, application message), persists, then acks; an
//! entry that cannot be processed is recorded and acked so it cannot wedge the queue.

mod attachment;
mod client;
mod devices;
mod error;
mod link;
mod listen;
mod profile;
mod transport;

pub use client::{
    Client, ConversationSummary, Event, MemberDevice, Recipient, Registered, Sent, WhoAmI,
};
pub use devices::DeviceInfo;
pub use error::ClientError;
pub use link::LinkCode;
pub use profile::{StoredConversation, StoredMessage};
pub use sotto_api::ErrorCode;
pub use sotto_proto::{ConversationId, DeviceId, MessageId, Username};
