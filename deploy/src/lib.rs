//! Session lifecycle for sessionfs and the logic behind the `sessionfs` command line.
//!
//! - `state.rs` owns the state directory (`$SESSIONFS_HOME`): its layout, the CA, the
//!   bridge and session certificates, and the registry file.
//! - `local.rs` owns the local backend: starting a session's `sessionfsd` as a detached
//!   process, checking that it is alive, and stopping it safely.
//! - `docker/` owns the Docker backend: a session's `sessionfsd` in its own container
//!   (volume, certificates delivered at start, published port, health check, limits), driven
//!   through the Docker Engine API (`mod.rs`; the container spec in `spec.rs`, inspect answers
//!   in `inspect.rs`, the certificate archive in `archive.rs`).
//! - `k8s/` owns the Kubernetes backend: a session's `sessionfsd` in a pod with its certificates in
//!   a Secret and its workspace on a claim (`spec.rs` builds them), driven through the `kube`
//!   client (`mod.rs`), and followed while mounted (`follow.rs`).
//! - `image.rs` owns `sessionfs image build`: the static daemon, the in-memory build context,
//!   and the session image built from it without pulling anything.
//! - `mounts.rs` owns everything about the mount point: `/proc/self/mountinfo` parsing, the
//!   checks made before mounting, and unmounting.
//! - `reconcile.rs` owns Docker reconciliation: the registry follows what Docker reports
//!   about docker sessions' containers (states, new ports, removed containers), once and
//!   then from the event stream while `sessionfs mount` runs.
//! - `compose.rs` owns `session certs`: certificates for session containers started outside
//!   sessionfs (compose, other orchestrators), which the reconciler then adopts.
//! - `migrate.rs` owns `session migrate`: moving a session between backends, daemon to daemon over
//!   the protocol (`transfer.rs`; fence, copy, verify, switch, remove the source; rollback on any
//!   failure), compared with `manifest.rs`.
//! - `mcp.rs` owns `sessionfs mcp`: the MCP server of `sessionfs_mcp` with `session_list` backed by
//!   the registry and backends.
//! - `revocation.rs` hands removed hosts' revoked certificates to this host's sessions' daemons.
//! - `file_error.rs` owns the one error for a failed file operation that every module wraps.
//! - `commands.rs` owns the `sessionfs` commands (`session create|ls|stop|start|rm|recreate`,
//!   `image build`, `mount`, `umount`) as functions returning printable reports, so tests can call them.

mod commands;
mod compose;
mod docker;
mod file_error;
mod hosts;
mod image;
mod k8s;
mod local;
mod manifest;
mod mcp;
mod migrate;
mod mounts;
mod move_host;
mod reconcile;
mod revocation;
mod state;
mod transfer;

pub use commands::{
    age_secs, create, forget, image_build, list, mount, parse_backend, parse_env, parse_label,
    parse_owner, recreate, registry_unreachable, remove, render_json, render_seen, render_table,
    start, stop, umount, CreateOptions, DockerOptions, KubeOptions, MountOptions,
};
pub use compose::session_certs;
pub use docker::{parse_cpus, parse_memory, set_publish_ip};
pub use hosts::{
    add as host_add, init as host_init, join as host_join, list as host_list,
    remove as host_remove, render_hosts, seen_sessions, start_duties, HostError, HostStatus,
    SeenSessions,
};
pub use image::{BuildOptions, Built, DEFAULT_TAG};
pub use k8s::{manifests as k8s_manifests, Reach};
pub use mcp::{parse_http_addr, serve as serve_mcp, McpOptions};
pub use migrate::{migrate, MigrateOptions};
pub use mounts::DEFAULT_MOUNTPOINT;
pub use move_host::{migrate_to_host, MoveOptions};
pub use state::{Home, Membership};
