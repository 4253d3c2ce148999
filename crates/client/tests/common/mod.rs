//! The test kit's real server and clients with their own profile directories.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sotto_client::{Client, ConversationId, StoredMessage, Username};
use sotto_testkit::TestServer;
use tempfile::TempDir;

pub struct Server {
    pub inner: TestServer,
}

impl Server {
    pub async fn start() -> Self {
        Self {
            inner: TestServer::start().unwrap(),
        }
    }

    /// A client with a fresh profile, registered as `username`.
    pub async fn user(&self, username: &str) -> User {
        let home = tempfile::tempdir().unwrap();
        let client = Client::open(home.path(), self.inner.url()).unwrap();
        client.register(&name(username)).await.unwrap();
        User {
            client,
            _home: home,
        }
    }
}

pub struct User {
    pub client: Client,
    pub _home: TempDir,
}

impl User {
    /// Syncs and returns the texts of new messages: (sender, text).
    pub async fn texts(&self) -> Vec<(String, String)> {
        self.client
            .sync()
            .await
            .unwrap()
            .into_iter()
            .filter_map(|e| match e {
                sotto_client::Event::Message(m) => {
                    Some((m.sender.to_string(), m.text.unwrap_or_default()))
                }
                _ => None,
            })
            .collect()
    }

    pub fn history(&self, conversation: ConversationId) -> Vec<StoredMessage> {
        self.client.history(conversation).unwrap()
    }
}

pub fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// A username written in a test.
pub fn name(text: &str) -> Username {
    text.parse().unwrap()
}
