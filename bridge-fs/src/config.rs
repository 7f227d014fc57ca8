//! Bridge settings and the files it reads them from.

use std::path::PathBuf;
use std::time::Duration;

use sessionfs_registry::Location;

/// Everything the bridge needs to mount.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// The registry: the SQLite file of one host, or etcd shared by several.
    pub registry: Location,
    /// Directory with the CA certificate and the bridge's certificate and key
    /// ([`sessionfs_pki::CA_FILES`], [`sessionfs_pki::BRIDGE_FILES`]).
    pub cert_dir: PathBuf,
    /// Upper bound for one file system operation, connecting included. A dead session answers with
    /// `ETIMEDOUT` or `ENOTCONN` within this time, never later.
    pub op_timeout: Duration,
    /// Upper bound for dialing a daemon (part of `op_timeout`).
    pub connect_timeout: Duration,
    /// How long the kernel may cache attributes and names of a session whose changes are not pushed
    /// (its change stream is not live).
    pub attr_ttl: Duration,
    /// How long the kernel may cache attributes and names of a session whose daemon pushes its
    /// changes: the bridge invalidates them on change, so this only bounds the cost of a lost event.
    pub watched_ttl: Duration,
    /// How often the registry is checked for new and removed sessions.
    pub registry_poll: Duration,
    /// FUSE worker threads.
    pub fuse_threads: usize,
    /// Let other users (and root) use the mount (`allow_other`; needs root or `user_allow_other`).
    /// Off by default, even for root: the mount would show workspaces that the disk's directory
    /// permissions hide (a 0700 state directory, Docker's 0701 volumes) to every local user whom
    /// the per-file modes admit.
    pub allow_other: bool,
    /// Mount with `nosymfollow`: no path through the mount follows a symlink (`readlink` still
    /// answers), so a symlink planted in a session never leads a host process out of it. Needs root
    /// (it is set by a bind remount).
    pub nosymfollow: bool,
    /// Show each session's workspace owner (its `owner` label) as the mounting user, and map the
    /// mounting user back to that owner in requests, like sshfs's `idmap=user`.
    pub map_owner: bool,
}

impl BridgeConfig {
    /// Defaults for a state directory laid out by the `sessionfs` CLI.
    pub fn new(registry: Location, cert_dir: PathBuf) -> Self {
        BridgeConfig {
            registry,
            cert_dir,
            op_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            attr_ttl: Duration::from_secs(1),
            watched_ttl: Duration::from_secs(60),
            registry_poll: Duration::from_millis(200),
            fuse_threads: 4,
            allow_other: false,
            nosymfollow: false,
            map_owner: false,
        }
    }
}
