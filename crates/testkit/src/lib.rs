//! A real Sotto server for end-to-end tests: the `sotto-server` library's `run()` on
//! 127.0.0.1 port 0, over SQLite and blobs in a temporary directory, on its own runtime
//! thread so that both async tests and plain `#[test]`s driving a CLI binary can use it.
//!
//! Without the `server` feature only [`framing`] and [`proxy`] are built, for crates that must
//! not depend on the HTTP server (the NATS fan-out's tests).

pub mod framing;
#[cfg(feature = "server")]
mod lying;
pub mod proxy;
#[cfg(feature = "server")]
mod server;

#[cfg(feature = "server")]
pub use lying::LyingStore;
#[cfg(feature = "server")]
pub use server::*;
