//! The host-side bridge: one FUSE file system that shows every session under its root.
//!
//! - `fuse` is the FUSE adapter: each `fuser::Filesystem` call becomes one call of the core,
//!   and fuser's replies answer for it.
//! - `core` is the file system, free of FUSE: the mount root lists the sessions, and every
//!   operation below `/<id>/` becomes requests to that session's daemon, answered from a tokio
//!   task or from what the bridge remembers; change events invalidate what the kernel cached.
//! - `link` is the connection to a daemon as a trait (QUIC in the mount, in-process in tests);
//!   `session` owns the sessions: the registry's records, one connection each, bounded requests.
//! - `config` owns the tunables (timeouts, kernel cache TTLs, threads).
//! - `inodes` owns the inode table: stable FUSE inode numbers, lookup counts, and the
//!   `(parent, name)` links from which request paths are rebuilt.
//! - `crossed` keeps a session's recent change batches, so a request that crossed some can tell
//!   whether they concern its path.
//! - `negative` records the names the kernel was told are missing, so they can be invalidated;
//!   `made_dirs` knows which names are missing from directories the mount made.
//! - `read_ahead`, `heads_ahead` and `walk` decide what to fetch before the kernel asks
//!   during tree walks (listings, small files) and keep it until used.
//! - `write_behind` keeps writes acknowledged before the daemon has them, and makes every other
//!   request of their session wait for (or carry) them; `known` predicts the attributes of a file
//!   the mount created and holds open, so its attribute changes can be sent behind too.
//! - `direct` lets the kernel read and write files of a session whose daemon runs on this host
//!   in the daemon's own descriptor (FUSE passthrough).
//! - `replied` remembers what lookups answered a moment ago, so that an invalidation that reached
//!   the kernel before their reply is sent again.
//! - `mount` mounts, waits for a signal or an external unmount, and unmounts cleanly.

#![forbid(unsafe_code)]

mod config;
mod core;
mod crossed;
mod direct;
mod fuse;
mod heads_ahead;
mod inodes;
mod known;
mod link;
mod made_dirs;
mod mount;
mod negative;
mod read_ahead;
mod replied;
mod session;
mod walk;
mod write_behind;

pub use config::BridgeConfig;
pub use mount::{mount, MountError};
