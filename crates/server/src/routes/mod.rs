//! One module per endpoint family.

pub mod accounts;
pub mod groups;
pub mod key_packages;
pub mod link;
pub mod mailbox;
