//! `sessionfsd`: the per-session file daemon.
//!
//! It serves exactly one workspace root over QUIC with mutual TLS and can never reach outside it.
//! - [`workspace`] owns the file system side: every path is resolved beneath the root with `openat2`
//!   (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), and every operation on a final component uses the `*at`
//!   system calls relative to that safely opened parent, never following a symlink.
//! - [`handles`] owns the table of open files of one connection.
//! - [`server`] owns the network side: accepting connections, authorizing peers, the handshake, one task
//!   per request stream, bounded reads of frames, and clean shutdown.
//! - [`watch`] owns the workspace watcher: inotify changes batched and streamed to the bridge so it can
//!   invalidate what the host kernel cached.
//! - [`replaced`] keeps the regular files a rename replaced openable by their identity for a moment.
//! - [`idle`] hands freed memory back to the system once the daemon goes quiet after a burst.

pub mod handles;
pub mod idle;
pub mod replaced;
pub mod server;
pub mod watch;
pub mod workspace;
