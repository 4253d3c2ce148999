//! The shared behaviour suite against the in-memory reference store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

sotto_server_store::store_suite!(sotto_server_store::MemoryStore::new());
