//! What the registry knows about one session: [`SessionRecord`], its [`Backend`] and its
//! lifecycle [`SessionState`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::id::SessionId;

/// A string that names no variant of [`Backend`] or [`SessionState`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?} (expected one of: {})", .expected.join(", "))]
pub struct UnknownVariant {
    /// "backend" or "session state".
    pub kind: &'static str,
    /// The refused input.
    pub value: String,
    /// The accepted spellings.
    pub expected: &'static [&'static str],
}

/// Implements `as_str`, `Display` and `FromStr` with the lowercase spellings used by serde.
macro_rules! string_enum {
    ($ty:ident, $kind:literal, { $($var:ident => $s:literal),+ $(,)? }) => {
        impl $ty {
            /// Every variant, in declaration order (for the round-trip tests).
            #[cfg(test)]
            const ALL: &'static [$ty] = &[$($ty::$var),+];

            /// The lowercase name, as stored and serialized.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$var => $s),+ }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownVariant;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($s => Ok($ty::$var),)+
                    _ => Err(UnknownVariant { kind: $kind, value: s.to_owned(), expected: &[$($s),+] }),
                }
            }
        }
    };
}

/// Where a session's daemon runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A daemon process on this machine serving a local directory.
    Local,
    /// A daemon inside a Docker container.
    Docker,
    /// A daemon inside a Kubernetes pod.
    Kubernetes,
}

string_enum!(Backend, "backend", { Local => "local", Docker => "docker", Kubernetes => "kubernetes" });

/// Lifecycle of a session as last observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Created, daemon not yet reachable.
    Starting,
    /// Daemon reachable.
    Running,
    /// Daemon was running but fails health checks.
    Unhealthy,
    /// Daemon stopped on purpose; may be restarted.
    Stopped,
    /// Backend resources are gone; the record is kept only until removed.
    Gone,
}

string_enum!(SessionState, "session state", {
    Starting => "starting",
    Running => "running",
    Unhealthy => "unhealthy",
    Stopped => "stopped",
    Gone => "gone",
});

/// Label holding the workspace owner (`UID:GID`) of a session whose daemon gives new nodes a fixed
/// owner; `sessionfs mount --map-owner` shows that owner as the mounting user.
pub const OWNER_LABEL: &str = "owner";

/// Label holding the name of the host whose daemon serves the session (see [`this_host`]). A host
/// manages (starts, stops, reconciles, reads directly) only its own sessions; others it reaches
/// over the network only.
pub const HOST_LABEL: &str = "host";

/// The name [`set_this_host`] gave this process's host.
static THIS_HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Names this process's host: a host of an installation of several is the name it joined as
/// (`host.json`), whatever the environment says. Only the first call counts.
pub fn set_this_host(name: &str) {
    let _ = THIS_HOST.set(name.to_owned());
}

/// This host's name: the one [`set_this_host`] gave, else `$SESSIONFS_HOST_NAME`, else the
/// kernel's host name.
pub fn this_host() -> String {
    if let Some(name) = THIS_HOST.get() {
        return name.clone();
    }
    std::env::var("SESSIONFS_HOST_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_owned())
}

impl SessionRecord {
    /// The host whose daemon serves the session ([`HOST_LABEL`]), if the record names one.
    pub fn host(&self) -> Option<&str> {
        self.labels.get(HOST_LABEL).map(String::as_str)
    }

    /// Whether the session is served by another host than this one (`host` is [`this_host`]). A
    /// record without a host label (made before hosts existed) is this host's.
    pub fn elsewhere(&self, host: &str) -> bool {
        self.host().is_some_and(|h| h != host)
    }
}

/// Label holding the pin of the session's current certificate (the SHA-256 of its DER, hex): the
/// bridge accepts no other, so the key of an earlier session of the same id stops working.
pub const CERT_PIN_LABEL: &str = "cert.sha256";

/// Everything the registry stores about one session.

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session's name.
    pub id: SessionId,
    /// Where the daemon runs.
    pub backend: Backend,
    /// Last observed lifecycle state.
    pub state: SessionState,
    /// Where the daemon listens (QUIC over UDP), once known.
    pub endpoint: Option<SocketAddr>,
    /// Creation time, unix seconds.
    pub created_at: u64,
    /// Free-form user labels.
    pub labels: BTreeMap<String, String>,
    /// DNS name expected in the daemon's certificate.
    pub cert_identity: String,
    /// Local backend: the directory served.
    pub workspace: Option<PathBuf>,
    /// The daemon's host process id, where it runs on this host: the process a local session
    /// started (which `session stop` signals), or a docker session's container's main process as
    /// the engine reports it (which only serves direct data: the bridge checks every descriptor it
    /// opens through it).
    pub pid: Option<u32>,
}

impl SessionRecord {
    /// A new record in state [`SessionState::Starting`], created now, with nothing else set.
    pub fn new(id: SessionId, backend: Backend, cert_identity: String) -> Self {
        let created_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            id,
            backend,
            state: SessionState::Starting,
            endpoint: None,
            created_at,
            labels: BTreeMap::new(),
            cert_identity,
            workspace: None,
            pid: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_as_lowercase() {
        for b in Backend::ALL {
            assert_eq!(b.as_str().parse::<Backend>().unwrap(), *b);
            assert_eq!(serde_json::to_string(b).unwrap(), format!("\"{b}\""));
        }
        for s in SessionState::ALL {
            assert_eq!(s.as_str().parse::<SessionState>().unwrap(), *s);
            assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{s}\""));
        }
        let err = "Docker".parse::<Backend>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown backend \"Docker\" (expected one of: local, docker, kubernetes)"
        );
    }

    #[test]
    fn new_record_defaults() {
        let rec = SessionRecord::new("s1".parse().unwrap(), Backend::Local, "s1.local".into());
        assert_eq!(rec.state, SessionState::Starting);
        assert!(rec.created_at > 1_600_000_000);
        assert!(rec.endpoint.is_none() && rec.labels.is_empty() && rec.pid.is_none());
        let json = serde_json::to_string(&rec).unwrap();
        assert_eq!(serde_json::from_str::<SessionRecord>(&json).unwrap(), rec);
    }
}
