//! One registry interface over its stores: [`Registry`] is the SQLite file of one host
//! ([`SqliteRegistry`]) or etcd shared by several ([`EtcdRegistry`]), chosen by a [`Location`]
//! (`sqlite:PATH`, a plain path, or `etcd://HOST:PORT[,HOST:PORT…]`).

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
    /// etcd at these endpoints (`host:port`), shared by several hosts.
    Etcd(Vec<String>),
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
        if let Some(rest) = s.strip_prefix("etcd://") {
            let endpoints: Vec<String> = rest.split(',').map(str::to_owned).collect();
            for e in &endpoints {
                let (host, port) = e
                    .rsplit_once(':')
                    .ok_or_else(|| invalid("an endpoint has no port"))?;
                if host.is_empty() || port.parse::<u16>().is_err() {
                    return Err(invalid("an endpoint is not HOST:PORT"));
                }
            }
            return Ok(Location::Etcd(endpoints));
        }
        if s.starts_with("etcds://") {
            return Err(invalid("TLS to etcd is not supported yet"));
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
            Location::Etcd(endpoints) => write!(f, "etcd://{}", endpoints.join(",")),
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
            Location::Etcd(endpoints) => EtcdRegistry::connect(endpoints, DEFAULT_PREFIX)
                .map(|r| Registry::Etcd(Box::new(r))),
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
            Location::Etcd(endpoints) => {
                let registry = EtcdRegistry::connect(endpoints, DEFAULT_PREFIX)?;
                Ok(registry.keep_alive(host)?.keeping(registry))
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
            Location::Etcd(endpoints) => {
                let registry = EtcdRegistry::connect(endpoints, DEFAULT_PREFIX)?;
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
            Location::Etcd(vec!["127.0.0.1:2379".into(), "h2:2380".into()])
        );
        assert_eq!(etcd.to_string(), "etcd://127.0.0.1:2379,h2:2380");
        for bad in [
            "etcd://",
            "etcd://host",
            "etcd://:1",
            "etcd://h:x",
            "sqlite:",
            "",
            "etcds://h:1",
        ] {
            assert!(bad.parse::<Location>().is_err(), "{bad}");
        }
    }
}
