//! The host-side bridge: one FUSE file system that shows every session under its root.
//!
//! - [`config`] owns the tunables (timeouts, kernel cache TTLs, threads) and the certificate files.
//! - [`crossed`] keeps a session's recent change batches, so a request that crossed some can tell
//!   whether they concern its path.
//! - [`session`] owns the per-session connection: resolving the endpoint through the registry, dialing
//!   with mutual TLS, reusing one QUIC connection, and bounding every request in time.
//! - [`inodes`] owns the inode table: stable FUSE inode numbers, lookup counts, and the
//!   `(parent, name)` links from which request paths are rebuilt.
//! - [`negative`] records the names the kernel was told are missing, so they can be invalidated;
//!   [`made_dirs`] knows which names are missing from directories the mount made.
//! - [`read_ahead`] decides which directory listings to fetch before the kernel reads them (tree
//!   walks) and keeps them until read.
//! - [`write_behind`] keeps writes acknowledged before the daemon has them, and makes every other
//!   request of their session wait for (or carry) them; [`known`] predicts the attributes of a file
//!   the mount created and holds open, so its attribute changes can be sent behind too.
//! - [`direct`] lets the kernel read and write large files of a session whose daemon runs on this
//!   host in the daemon's own descriptor (FUSE passthrough).
//! - [`replied`] remembers what lookups answered a moment ago, so that an invalidation that reached
//!   the kernel before their reply is sent again.
//! - [`fs`] implements `fuser::Filesystem`: the mount root lists the sessions, and every operation below
//!   `/<id>/` becomes one request to that session's daemon, answered from a tokio task.
//! - [`mount`](mod@mount) mounts, waits for a signal or an external unmount, and unmounts cleanly.

#![forbid(unsafe_code)]

pub mod config;
pub mod crossed;
pub mod direct;
pub mod fs;
pub mod heads_ahead;
pub mod inodes;
pub mod known;
pub mod made_dirs;
pub mod mount;
pub mod negative;
pub mod read_ahead;
pub mod replied;
pub mod session;
pub mod walk;
pub mod write_behind;

pub use config::BridgeConfig;
pub use mount::{mount, MountError};
