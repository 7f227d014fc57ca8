//! Session lifecycle for sessionfs and the logic behind the `sessionfs` command line.
//!
//! - [`state`] owns the state directory (`$SESSIONFS_HOME`): its layout, the CA, the
//!   bridge and session certificates, and the registry file.
//! - [`local`] owns the local backend: starting a session's `sessionfsd` as a detached
//!   process, checking that it is alive, and stopping it safely.
//! - [`docker`] owns the Docker backend: a session's `sessionfsd` in its own container
//!   (volume, certificates delivered at start, published port, health check, limits), driven
//!   through the Docker Engine API.
//! - [`image`] owns `sessionfs image build`: the static daemon, the in-memory build context,
//!   and the session image built from it without pulling anything.
//! - [`mounts`] owns everything about the mount point: `/proc/self/mountinfo` parsing, the
//!   checks made before mounting, and unmounting.
//! - [`reconcile`] owns Docker reconciliation: the registry follows what Docker reports
//!   about docker sessions' containers (states, new ports, removed containers), once and
//!   then from the event stream while `sessionfs mount` runs.
//! - [`compose`] owns `session certs`: certificates for session containers started outside
//!   sessionfs (compose, other orchestrators), which the reconciler then adopts.
//! - [`migrate`] owns `session migrate`: moving a session between the local and docker
//!   backends (copy, verify, switch, stop the source; rollback on any failure).
//! - [`mcp`] owns `sessionfs mcp`: the MCP server of `sessionfs_mcp` with `session_list` backed by
//!   the registry and backends.
//! - [`file_error`] owns the one error for a failed file operation that every module wraps.
//! - [`commands`] owns the `sessionfs` commands (`session create|ls|stop|start|rm|recreate`,
//!   `image build`, `mount`, `umount`) as functions returning printable reports, so tests can call them.

pub mod commands;
pub mod compose;
pub mod docker;
pub mod file_error;
pub mod image;
pub mod local;
pub mod mcp;
pub mod migrate;
pub mod mounts;
pub mod reconcile;
pub mod state;
