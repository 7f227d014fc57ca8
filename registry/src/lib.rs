//! The session registry: which sessions exist, where their daemons listen, and how to
//! authenticate them.
//!
//! This crate owns three things:
//! - [`SessionId`] (`id.rs`): the validated session name used in paths, DNS names and
//!   container names;
//! - [`SessionRecord`] (`record.rs`): what is known about one session;
//! - [`Registry`] (`location.rs`): the registry every sessionfs process (CLI, bridge, MCP
//!   server) uses, in the store a [`Location`] names, plus [`Registry::watch`] to follow
//!   changes made by others;
//! - [`SqliteRegistry`] (`store.rs`): the SQLite file of one host;
//! - [`EtcdRegistry`] (`etcd.rs`): the same operations in etcd, for several hosts;
//! - [`HostRecord`], [`Installation`] and [`Liveness`] (`hosts.rs`): the hosts sharing an etcd
//!   registry, the root certificate they trust, and which of them are live.

#![forbid(unsafe_code)]

mod etcd;
mod hosts;
mod id;
mod location;
mod record;
mod store;

pub use etcd::{EtcdRegistry, CALL_TIMEOUT as ETCD_CALL_TIMEOUT, DEFAULT_PREFIX as ETCD_PREFIX};
pub use hosts::{check_host_name, HostRecord, Installation, Liveness, Revocation, LIVENESS_TTL};
pub use id::{InvalidSessionId, SessionId};
pub use location::{EtcdLocation, EtcdTls, InvalidLocation, Location, Registry};
pub use record::{
    set_this_host, this_host, Backend, SessionRecord, SessionState, CERT_PIN_LABEL, HOST_LABEL,
    OWNER_LABEL,
};
pub use store::{RegistryError, SqliteRegistry, WatchHandle};
