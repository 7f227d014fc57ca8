//! One registry interface over its stores: [`Registry`] is the SQLite file of one host
//! ([`SqliteRegistry`]) or etcd shared by several ([`EtcdRegistry`]), chosen by a [`Location`]
//! (`sqlite:PATH`, a plain path, `etcd://HOST:PORT[,HOST:PORT…]`, or
//! `etcds://HOST:PORT[,…]?ca=FILE[&cert=FILE&key=FILE]` for TLS to etcd, with a client certificate
//! when etcd asks for one).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::etcd::{EtcdRegistry, DEFAULT_PREFIX};
use crate::store::{RegistryError, SqliteRegistry, WatchHandle};
use crate::{SessionId, SessionRecord};

/// Where the registry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// The SQLite file at this path (one host).
    Sqlite(PathBuf),
    /// etcd, shared by several hosts.
    Etcd(EtcdLocation),
}

/// etcd's endpoints and how to reach them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdLocation {
    /// `host:port` of each member.
    pub endpoints: Vec<String>,
    /// TLS (`etcds://`); plain TCP when `None`.
    pub tls: Option<Box<EtcdTls>>,
}

/// The files of a TLS connection to etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA etcd's server certificate must chain to (PEM).
    pub ca: PathBuf,
    /// The client certificate and key (PEM), for an etcd that authenticates clients
    /// (`--client-cert-auth`).
    pub client: Option<(PathBuf, PathBuf)>,
}

/// A registry location that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid registry {given:?}: {reason}; give sqlite:PATH or etcd://HOST:PORT[,HOST:PORT…]")]
pub struct InvalidLocation {
    given: String,
    reason: &'static str,
}

impl FromStr for Location {
    type Err = InvalidLocation;

    fn from_str(s: &str) -> Result<Location, InvalidLocation> {
        let invalid = |reason| InvalidLocation {
            given: s.to_owned(),
            reason,
        };
        let (tls, rest) = match (s.strip_prefix("etcd://"), s.strip_prefix("etcds://")) {
            (Some(rest), _) => (false, Some(rest)),
            (_, Some(rest)) => (true, Some(rest)),
            _ => (false, None),
        };
        if let Some(rest) = rest {
            let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
            let endpoints: Vec<String> = hosts.split(',').map(str::to_owned).collect();
            for e in &endpoints {
                let (host, port) = e
                    .rsplit_once(':')
                    .ok_or_else(|| invalid("an endpoint has no port"))?;
                if host.is_empty() || port.parse::<u16>().is_err() {
                    return Err(invalid("an endpoint is not HOST:PORT"));
                }
            }
            let mut files: std::collections::BTreeMap<&str, PathBuf> = Default::default();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some((k @ ("ca" | "cert" | "key"), v)) if !v.is_empty() && tls => {
                        files.insert(k, PathBuf::from(v));
                    }
                    _ if !tls => return Err(invalid("options are for etcds:// (TLS) only")),
                    _ => return Err(invalid("the options are ca=FILE, cert=FILE and key=FILE")),
                }
            }
            let tls = if tls {
                let ca = files.remove("ca").ok_or_else(|| {
                    invalid("etcds:// needs ca=FILE (the CA of etcd's certificate)")
                })?;
                let client = match (files.remove("cert"), files.remove("key")) {
                    (Some(cert), Some(key)) => Some((cert, key)),
                    (None, None) => None,
                    _ => return Err(invalid("cert=FILE and key=FILE go together")),
                };
                Some(Box::new(EtcdTls { ca, client }))
            } else {
                None
            };
            return Ok(Location::Etcd(EtcdLocation { endpoints, tls }));
        }
        let path = s.strip_prefix("sqlite:").unwrap_or(s);
        if path.is_empty() {
            return Err(invalid("the path is empty"));
        }
        Ok(Location::Sqlite(PathBuf::from(path)))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            Location::Etcd(EtcdLocation {
                endpoints,
                tls: None,
            }) => write!(f, "etcd://{}", endpoints.join(",")),
            Location::Etcd(EtcdLocation {
                endpoints,
                tls: Some(tls),
            }) => {
                write!(f, "etcds://{}?ca={}", endpoints.join(","), tls.ca.display())?;
                if let Some((cert, key)) = &tls.client {
                    write!(f, "&cert={}&key={}", cert.display(), key.display())?;
                }
                Ok(())
            }
        }
    }
}

/// The session registry, in whichever store [`Location`] names. Every method blocks for at most
/// the store's bound (SQLite's busy timeout; etcd's call timeout).
#[derive(Debug)]
pub enum Registry {
    Sqlite(SqliteRegistry),
    Etcd(Box<EtcdRegistry>),
}

impl Registry {
    /// The SQLite registry at `path` (created if needed).
    pub fn open(path: &Path) -> Result<Registry, RegistryError> {
        SqliteRegistry::open(path).map(Registry::Sqlite)
    }

    /// The registry at `location`.
    pub fn connect(location: &Location) -> Result<Registry, RegistryError> {
        match location {
            Location::Sqlite(path) => Registry::open(path),
            Location::Etcd(etcd) => {
                EtcdRegistry::connect(etcd, DEFAULT_PREFIX).map(|r| Registry::Etcd(Box::new(r)))
            }
        }
    }

    /// The etcd registry, where hosts are kept; [`RegistryError::NeedsSharedRegistry`] for the
    /// SQLite file of one host.
    pub fn shared(&self) -> Result<&EtcdRegistry, RegistryError> {
        match self {
            Registry::Sqlite(_) => Err(RegistryError::NeedsSharedRegistry),
            Registry::Etcd(r) => Ok(r),
        }
    }

    /// Adds a new session; [`RegistryError::AlreadyExists`] if the id is taken.
    pub fn register(&self, rec: &SessionRecord) -> Result<(), RegistryError> {
        match self {
            Registry::Sqlite(r) => r.register(rec),
            Registry::Etcd(r) => r.register(rec),
        }
    }

    /// Replaces the stored record with `rec`; [`RegistryError::NotFound`] if absent.
    pub fn update(&self, rec: &SessionRecord) -> Result<(), RegistryError> {
        match self {
            Registry::Sqlite(r) => r.update(rec),
            Registry::Etcd(r) => r.update(rec),
        }
    }

    /// Read-modify-write of one record; returns the new record. `f` may run more than once (a
    /// store shared by several hosts retries when another writer wins); it must be quick and must
    /// not call back into the registry. The id cannot be changed.
    pub fn modify<F: FnMut(&mut SessionRecord)>(
        &self,
        id: &SessionId,
        f: F,
    ) -> Result<SessionRecord, RegistryError> {
        match self {
            Registry::Sqlite(r) => r.modify(id, f),
            Registry::Etcd(r) => r.modify(id, f),
        }
    }

    /// Deletes a session and returns its last record; [`RegistryError::NotFound`] if absent.
    pub fn remove(&self, id: &SessionId) -> Result<SessionRecord, RegistryError> {
        match self {
            Registry::Sqlite(r) => r.remove(id),
            Registry::Etcd(r) => r.remove(id),
        }
    }

    /// The record for `id`, if any.
    pub fn get(&self, id: &SessionId) -> Result<Option<SessionRecord>, RegistryError> {
        match self {
            Registry::Sqlite(r) => r.get(id),
            Registry::Etcd(r) => r.get(id),
        }
    }

    /// Every session, sorted by id.
    pub fn list(&self) -> Result<Vec<SessionRecord>, RegistryError> {
        match self {
            Registry::Sqlite(r) => r.list(),
            Registry::Etcd(r) => r.list(),
        }
    }

    /// A counter that changes whenever the registry changes.
    pub fn generation(&self) -> Result<u64, RegistryError> {
        match self {
            Registry::Sqlite(r) => r.generation(),
            Registry::Etcd(r) => r.generation(),
        }
    }

    /// Keeps host `host` live in the etcd registry at `location` while the handle is kept
    /// ([`EtcdRegistry::keep_alive`]), on a connection of its own.
    pub fn keep_alive(location: &Location, host: &str) -> Result<crate::Liveness, RegistryError> {
        match location {
            Location::Sqlite(_) => Err(RegistryError::NeedsSharedRegistry),
            Location::Etcd(etcd) => {
                let registry = EtcdRegistry::connect(etcd, DEFAULT_PREFIX)?;
                Ok(registry.keep_alive(host)?.keeping(registry))
            }
        }
    }

    /// Follows the revoked host certificates in the etcd registry at `location`
    /// ([`EtcdRegistry::watch_revocations`]), on a connection of its own.
    pub fn watch_revocations<F>(
        location: &Location,
        on_change: F,
    ) -> Result<WatchHandle, RegistryError>
    where
        F: FnMut(Vec<crate::Revocation>) + Send + 'static,
    {
        match location {
            Location::Sqlite(_) => Err(RegistryError::NeedsSharedRegistry),
            Location::Etcd(etcd) => {
                let registry = EtcdRegistry::connect(etcd, DEFAULT_PREFIX)?;
                let handle = registry.watch_revocations(on_change)?;
                Ok(handle.keeping(Box::new(registry)))
            }
        }
    }

    /// Follows the registry at `location` from a background thread: `on_change` gets the full
    /// list at once and after every change (SQLite: polled every `poll_interval`; etcd: from its
    /// watch). Dropping the handle stops it.
    pub fn watch<F>(
        location: &Location,
        poll_interval: Duration,
        on_change: F,
    ) -> Result<WatchHandle, RegistryError>
    where
        F: FnMut(Vec<SessionRecord>) + Send + 'static,
    {
        match location {
            Location::Sqlite(path) => SqliteRegistry::watch(path, poll_interval, on_change),
            Location::Etcd(etcd) => {
                let registry = EtcdRegistry::connect(etcd, DEFAULT_PREFIX)?;
                let handle = registry.watch(on_change)?;
                Ok(handle.keeping(Box::new(registry)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_print() {
        assert_eq!(
            "sqlite:/x/registry.db".parse::<Location>().unwrap(),
            Location::Sqlite("/x/registry.db".into())
        );
        assert_eq!(
            "/x/r.db".parse::<Location>().unwrap(),
            Location::Sqlite("/x/r.db".into())
        );
        let etcd: Location = "etcd://127.0.0.1:2379,h2:2380".parse().unwrap();
        assert_eq!(
            etcd,
            Location::Etcd(EtcdLocation {
                endpoints: vec!["127.0.0.1:2379".into(), "h2:2380".into()],
                tls: None
            })
        );
        assert_eq!(etcd.to_string(), "etcd://127.0.0.1:2379,h2:2380");
        let tls: Location = "etcds://h:2379?ca=/c.pem&cert=/x.pem&key=/x.key"
            .parse()
            .unwrap();
        assert_eq!(
            tls,
            Location::Etcd(EtcdLocation {
                endpoints: vec!["h:2379".into()],
                tls: Some(Box::new(EtcdTls {
                    ca: "/c.pem".into(),
                    client: Some(("/x.pem".into(), "/x.key".into()))
                }))
            })
        );
        assert_eq!(tls.to_string().parse::<Location>().unwrap(), tls);
        for bad in [
            "etcd://",
            "etcd://host",
            "etcd://:1",
            "etcd://h:x",
            "sqlite:",
            "",
            "etcds://h:1",
            "etcds://h:1?cert=/x",
            "etcds://h:1?ca=/c&cert=/x",
            "etcds://h:1?ca=/c&color=red",
            "etcd://h:1?ca=/c",
        ] {
            assert!(bad.parse::<Location>().is_err(), "{bad}");
        }
    }
}
