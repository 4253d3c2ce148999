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
        client.register(&name(username), "phone").await.unwrap();
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

/// A client with a fresh profile registered as `username` on the server at `url`.
pub async fn register(url: &str, username: &str) -> (Client, TempDir) {
    let home = tempfile::tempdir().unwrap();
    let client = Client::open(home.path(), url).unwrap();
    client.register(&name(username), "phone").await.unwrap();
    (client, home)
}

/// Links a new device called `device_name` to `primary`'s account; answers it.
pub async fn link(url: &str, primary: &Client, device_name: &str) -> (Client, TempDir) {
    let home = tempfile::tempdir().unwrap();
    let second = std::sync::Arc::new(Client::open(home.path(), url).unwrap());
    let (code_tx, code_rx) = tokio::sync::oneshot::channel::<String>();
    let starter = {
        let second = second.clone();
        let device_name = device_name.to_owned();
        tokio::spawn(async move {
            second
                .link_start(&device_name, move |code| {
                    let _ = code_tx.send(code.to_owned());
                })
                .await
        })
    };
    let code: sotto_client::LinkCode = code_rx.await.unwrap().parse().unwrap();
    primary.link_approve(&code).await.unwrap();
    starter.await.unwrap().unwrap();
    (std::sync::Arc::into_inner(second).unwrap(), home)
}
