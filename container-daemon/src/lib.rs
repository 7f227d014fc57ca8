//! `sessionfsd`: the per-session file daemon.
//!
//! It serves exactly one workspace root over QUIC with mutual TLS and can never reach outside it.
//! - `workspace.rs` owns the file system side: every path is resolved beneath the root with `openat2`
//!   (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), and every operation on a final component uses the `*at`
//!   system calls relative to that safely opened parent, never following a symlink.
//! - `handles.rs` owns the table of open files of one connection.
//! - `server.rs` owns the network side: accepting connections, authorizing peers, the handshake, one task
//!   per request stream, bounded reads of frames, and clean shutdown.
//! - `watch.rs` owns the workspace watcher: inotify changes batched and streamed to the bridge so it can
//!   invalidate what the host kernel cached.
//! - `replaced.rs` keeps the regular files a rename replaced openable by their identity for a moment.
//! - `refusals.rs` bounds the log lines that refused connections make.
//! - `revocations.rs` follows the revoked issuing certificates in the certificate directory.
//! - `idle.rs` hands freed memory back to the system once the daemon goes quiet after a burst.
//!
//! `sessionfsd` runs a [`Daemon`]. A [`Workspace`], its open files ([`Handles`]) and [`dispatch`], which
//! answers one request on them, are the request handling without the network, for running it
//! in-process.

mod handles;
mod idle;
mod refusals;
mod replaced;
mod revocations;
mod server;
mod watch;
mod workspace;

pub use handles::Handles;
pub use server::{dispatch, Daemon, DaemonConfig};
pub use workspace::{Owner, Workspace};
