//! The wire contract of Sotto's delivery service, written once: every HTTP request and
//! response body, every WebSocket frame in both directions, the error codes, the entry
//! kinds and the endpoint paths. The server (with the `openapi` feature, which adds the
//! utoipa schemas behind `/openapi.json`), the client SDK, `sotto-bench` and the test
//! harnesses all use these types, so the contract cannot drift between them.
//! `docs/protocol.md` describes the same contract in prose.
//!
//! Unknown fields are ignored in both directions (an older peer keeps working with a
//! newer one); the server refuses a body that is not a JSON object.

mod bytes;
mod error;
pub mod paths;
mod types;

pub use bytes::B64;
pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use types::*;
