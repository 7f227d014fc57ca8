//! The session registry: which sessions exist, where their daemons listen, and how to
//! authenticate them.
//!
//! This crate owns three things:
//! - [`SessionId`] (`id.rs`): the validated session name used in paths, DNS names and
//!   container names;
//! - [`SessionRecord`] (`record.rs`): what is known about one session;
//! - [`Registry`] (`store.rs`): the SQLite file shared by every sessionfs process (CLI,
//!   bridge, MCP server), plus [`Registry::watch`] to follow changes made by others.

#![forbid(unsafe_code)]

mod id;
mod record;
mod store;

pub use id::{InvalidSessionId, SessionId};
pub use record::{Backend, SessionRecord, SessionState, CERT_PIN_LABEL, OWNER_LABEL};
pub use store::{Registry, RegistryError, WatchHandle};
