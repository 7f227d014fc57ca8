//! The state directory (`$SESSIONFS_HOME`, default `~/.local/state/sessionfs`): where it
//! is, its layout, and the certificate and registry files kept in it.
//!
//! Layout:
//! - `pki/ca.pem`, `pki/ca.key`: the installation CA (on a joined host, `ca.pem` only: the root
//!   key stays on the host that made the installation);
//! - `pki/host-ca.pem`, `pki/host-ca.key`: this host's issuing CA, once it is a host of an
//!   installation of several (`sessionfs host init` / `host join`);
//! - `host.json`: this host's membership ([`Membership`]): its name, advertised address and
//!   the registry the hosts share;
//! - `pki/bridge.pem`, `pki/bridge.key`: the bridge's client certificate (issued on first need);
//! - `registry.db`: the session registry;
//! - `sessions/<id>/certs/{ca.pem,session.pem,session.key}`: one daemon's certificate directory;
//! - `sessions/<id>/workspace/`: the default workspace of a local session;
//! - `sessions/<id>/daemon.log`: the local daemon's stderr (appended);
//! - `.lock`: serializes CA creation and session creation between `sessionfs` processes.

use crate::file_error::io_error;
use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;
use sessionfs_bridge::BridgeConfig;
use sessionfs_pki::{CertificateAuthority, PkiError, BRIDGE_FILES, CA_FILES, SESSION_FILES};
use sessionfs_registry::{Location, Registry, RegistryError, SessionId};
use tracing::{debug, info};

/// Environment variable naming the state directory.
pub const HOME_ENV: &str = "SESSIONFS_HOME";
/// The state directory below `$HOME` when [`HOME_ENV`] is not set.
pub const DEFAULT_RELATIVE: &str = ".local/state/sessionfs";

/// Errors locating or preparing the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Neither `--home`, `$SESSIONFS_HOME` nor `$HOME` is set.
    #[error(
        "cannot locate the state directory: neither --home, ${HOME_ENV} nor $HOME is set \
         (set {HOME_ENV} to a directory)"
    )]
    NoHome,
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] crate::file_error::FileError),
    /// Loading or creating the CA, or issuing a certificate, failed.
    #[error("certificates in {}: {source}", dir.display())]
    Pki {
        /// The directory the certificates live in.
        dir: PathBuf,
        /// The underlying error.
        #[source]
        source: PkiError,
    },
    /// Opening the registry failed.
    #[error("cannot open the registry {location}: {source}")]
    Registry {
        /// Where the registry is.
        location: Location,
        /// The underlying error.
        #[source]
        source: RegistryError,
    },
}

/// An exclusive advisory lock on the state directory; released when dropped.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// This state directory's membership of an installation of several hosts (`host.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Membership {
    /// This host's name.
    pub name: String,
    /// The address this host's sessions listen on.
    pub advertise: std::net::IpAddr,
    /// The registry the hosts share (`etcd://…`).
    pub registry: String,
}

/// A state directory and the paths inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
    /// Where the registry is, when not the state directory's SQLite file (`--registry`).
    registry: Option<Location>,
}

/// `path` with its longest existing ancestor canonicalized (symlinks, `..` and trailing slashes
/// resolved), so a directory not created yet gets the name it will have once it exists.
fn canonical(path: &Path) -> PathBuf {
    for ancestor in path.ancestors() {
        if let Ok(real) = std::fs::canonicalize(ancestor) {
            return match path.strip_prefix(ancestor) {
                // Joining an empty rest would add a trailing slash.
                Ok(rest) if rest.as_os_str().is_empty() => real,
                Ok(rest) => real.join(rest),
                Err(_) => path.to_path_buf(),
            };
        }
    }
    path.to_path_buf()
}

impl Home {
    /// A state directory at `root`, made absolute and, when it exists, canonical: the root is also
    /// the `sessionfs.home` label of Docker objects, so every spelling of one directory (a trailing
    /// slash, `..`, a symlink) must give the same string.
    pub fn new(root: impl Into<PathBuf>) -> Result<Home, StateError> {
        let root = root.into();
        let root = std::path::absolute(&root).map_err(io_error("resolve", &root))?;
        Ok(Home {
            root: canonical(&root),
            registry: None,
        })
    }

    /// The state directory: `explicit` (from `--home`) if given, else `$SESSIONFS_HOME`,
    /// else `$HOME/.local/state/sessionfs`.
    pub fn locate(explicit: Option<&Path>) -> Result<Home, StateError> {
        let root = resolve_root(
            explicit,
            std::env::var_os(HOME_ENV),
            std::env::var_os("HOME"),
        )?;
        Home::new(root)
    }

    /// This state directory with its registry at `location` (etcd shared by several hosts, say)
    /// instead of its own SQLite file.
    pub fn with_registry(mut self, location: Option<Location>) -> Home {
        self.registry = location;
        self
    }

    /// Where the registry is: `--registry`, else the shared registry of the installation this
    /// host joined, else the state directory's `registry.db`.
    pub fn registry_location(&self) -> Location {
        self.registry
            .clone()
            .or_else(|| {
                self.membership()
                    .ok()
                    .flatten()
                    .and_then(|m| m.registry.parse().ok())
            })
            .unwrap_or_else(|| Location::Sqlite(self.registry_path()))
    }

    /// `host.json`: this host's membership of an installation of several hosts.
    pub fn membership_path(&self) -> PathBuf {
        self.root.join("host.json")
    }

    /// This host's membership, if it is a host of an installation of several
    /// (`sessionfs host init` / `host join`).
    pub fn membership(&self) -> Result<Option<Membership>, StateError> {
        let path = self.membership_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                io_error("parse", &path)(std::io::Error::new(ErrorKind::InvalidData, e)).into()
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("read", &path)(e).into()),
        }
    }

    /// Writes `host.json` (0600, atomically).
    pub fn write_membership(&self, membership: &Membership) -> Result<(), StateError> {
        self.ensure_root()?;
        let path = self.membership_path();
        let text = serde_json::to_vec_pretty(membership)
            .map_err(|e| io_error("encode", &path)(std::io::Error::other(e)))?;
        let tmp = self.root.join(".host.json.tmp");
        fs::write(&tmp, text).map_err(io_error("write", &tmp))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
            .map_err(io_error("set the mode of", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_error("rename", &path))?;
        Ok(())
    }

    /// The state directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `pki/`: the CA and the bridge certificate.
    pub fn pki_dir(&self) -> PathBuf {
        self.root.join("pki")
    }

    /// `registry.db`.
    pub fn registry_path(&self) -> PathBuf {
        self.root.join("registry.db")
    }

    /// `sessions/`.
    pub fn sessions_dir(&self) -> PathBuf {
        self.root.join("sessions")
    }

    /// `sessions/<id>/`.
    pub fn session_dir(&self, id: &SessionId) -> PathBuf {
        self.sessions_dir().join(id.as_str())
    }

    /// `sessions/<id>/certs/`: the daemon's `--cert-dir`.
    pub fn session_cert_dir(&self, id: &SessionId) -> PathBuf {
        self.session_dir(id).join("certs")
    }

    /// `sessions/<id>/workspace/`: the default workspace of a local session.
    pub fn default_workspace(&self, id: &SessionId) -> PathBuf {
        self.session_dir(id).join("workspace")
    }

    /// `sessions/<id>/daemon.log`: the local daemon's stderr.
    pub fn daemon_log(&self, id: &SessionId) -> PathBuf {
        self.session_dir(id).join("daemon.log")
    }

    /// Bridge settings for this state directory (registry and `pki/` certificates).
    pub fn bridge_config(&self) -> BridgeConfig {
        BridgeConfig::new(self.registry_location(), self.pki_dir())
    }

    /// Creates the state directory (mode 0700) if it does not exist, and takes group and other
    /// access away from it if it is this user's: it holds the CA key.
    pub fn ensure_root(&self) -> Result<(), StateError> {
        private_dir(&self.root)?;
        let meta = fs::metadata(&self.root).map_err(io_error("inspect", &self.root))?;
        let mine = meta.uid() == rustix::process::geteuid().as_raw();
        if mine && meta.mode() & 0o077 != 0 {
            fs::set_permissions(&self.root, fs::Permissions::from_mode(meta.mode() & 0o700))
                .map_err(io_error("set the mode of", &self.root))?;
        }
        Ok(())
    }

    /// Takes the state directory's lock (`.lock`), waiting for other holders.
    pub fn lock(&self) -> Result<StateLock, StateError> {
        self.lock_with(FlockOperation::LockExclusive, || false)
            // Invariant: a blocking flock either succeeds or fails; it never gives up.
            .map(|lock| lock.expect("a blocking lock is always taken"))
    }

    /// Like [`Home::lock`], but gives up (returns `None`) as soon as `stop` says so while another
    /// process holds the lock: for background threads that must end promptly (the reconciler).
    pub fn lock_unless(&self, stop: impl Fn() -> bool) -> Result<Option<StateLock>, StateError> {
        self.lock_with(FlockOperation::NonBlockingLockExclusive, stop)
    }

    fn lock_with(
        &self,
        operation: FlockOperation,
        stop: impl Fn() -> bool,
    ) -> Result<Option<StateLock>, StateError> {
        self.ensure_root()?;
        let path = self.root.join(".lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_error("open", &path))?;
        loop {
            match rustix::fs::flock(&file, operation) {
                Ok(()) => return Ok(Some(StateLock { _file: file })),
                Err(rustix::io::Errno::WOULDBLOCK) if !stop() => {
                    // Held by a command; look again shortly.
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
                Err(e) => return Err(io_error("lock", &path)(e.into()).into()),
            }
        }
    }

    /// Opens (creating if needed) the registry.
    pub fn open_registry(&self) -> Result<Registry, StateError> {
        self.ensure_root()?;
        let location = self.registry_location();
        Registry::connect(&location).map_err(|source| StateError::Registry { location, source })
    }

    /// Loads the CA, creating it on first use. Callers creating it concurrently must hold
    /// [`Home::lock`].
    /// On a host of several, that is this host's CA ([`CertificateAuthority::load_host`]).
    pub fn certificate_authority(&self) -> Result<CertificateAuthority, StateError> {
        self.ensure_root()?;
        let dir = self.pki_dir();
        let loaded = match self.membership()? {
            Some(m) => CertificateAuthority::load_host(&dir, &m.name),
            None => CertificateAuthority::load_or_create(&dir),
        };
        loaded.map_err(|source| StateError::Pki { dir, source })
    }

    /// The installation's root CA, kept in `pki/` by the host that made the installation.
    pub fn root_authority(&self) -> Result<CertificateAuthority, StateError> {
        let dir = self.pki_dir();
        CertificateAuthority::load(&dir).map_err(|source| StateError::Pki { dir, source })
    }

    /// Makes sure the CA and the bridge's client certificate exist (issuing what is
    /// missing), so that [`Home::bridge_config`] can be used.
    pub fn ensure_bridge_cert(&self) -> Result<(), StateError> {
        let _lock = self.lock()?;
        let ca = self.certificate_authority()?;
        let dir = self.pki_dir();
        let pem = dir.join(BRIDGE_FILES.cert);
        let key = dir.join(BRIDGE_FILES.key);
        if exists(&pem)? && exists(&key)? {
            let current = fs::read_to_string(&pem).map_err(io_error("read", &pem))?;
            if !ca.due_for_renewal(&current) {
                return Ok(());
            }
            info!("the bridge certificate expires within 30 days (or is not this CA's): issuing it again");
        }
        let pki = |source| StateError::Pki {
            dir: dir.clone(),
            source,
        };
        ca.issue_bridge()
            .map_err(pki)?
            .write(&dir, BRIDGE_FILES.stem)
            .map_err(pki)?;
        info!(dir = %dir.display(), "issued the bridge certificate");
        Ok(())
    }

    /// Issues session `id`'s certificate again if it is due ([`CertificateAuthority::due_for_renewal`]:
    /// expired, expiring within 30 days, or not this CA's); returns whether it did. Call it only
    /// while the session's daemon is not running: a running daemon keeps the certificate it loaded,
    /// and the registry must pin that one.
    pub fn renew_session_certs_if_due(&self, id: &SessionId) -> Result<bool, StateError> {
        let pem = self.session_cert_dir(id).join(SESSION_FILES.cert);
        if !exists(&pem)? {
            return Ok(false);
        }
        let current = fs::read_to_string(&pem).map_err(io_error("read", &pem))?;
        let ca = self.certificate_authority()?;
        if !ca.due_for_renewal(&current) {
            return Ok(false);
        }
        self.issue_session_certs(&ca, id)?;
        info!(session = %id, "issued the session's certificate again: it expired or expires within 30 days");
        Ok(true)
    }

    /// The DNS name in session `id`'s certificate (what a bridge dials it as).
    pub fn session_cert_name(&self, id: &SessionId) -> Result<String, StateError> {
        let pem = self.session_cert_dir(id).join(SESSION_FILES.cert);
        let text = fs::read_to_string(&pem).map_err(io_error("read", &pem))?;
        sessionfs_pki::pem_dns_name(&text).map_err(|source| StateError::Pki {
            dir: self.session_cert_dir(id),
            source,
        })
    }

    /// The pin ([`sessionfs_pki::fingerprint`]) of session `id`'s certificate in
    /// `sessions/<id>/certs/`.
    pub fn session_cert_pin(&self, id: &SessionId) -> Result<String, StateError> {
        let pem = self.session_cert_dir(id).join(SESSION_FILES.cert);
        let text = fs::read_to_string(&pem).map_err(io_error("read", &pem))?;
        sessionfs_pki::pem_fingerprint(&text).map_err(|source| StateError::Pki {
            dir: self.session_cert_dir(id),
            source,
        })
    }

    /// Issues the daemon certificate of session `id` into `sessions/<id>/certs/`
    /// (`ca.pem`, `session.pem`, `session.key`) and returns that directory.
    pub fn issue_session_certs(
        &self,
        ca: &CertificateAuthority,
        id: &SessionId,
    ) -> Result<PathBuf, StateError> {
        let dir = self.session_cert_dir(id);
        private_dir(&self.session_dir(id))?;
        let pki = |source| StateError::Pki {
            dir: dir.clone(),
            source,
        };
        ca.issue_session(id.as_str())
            .map_err(pki)?
            .write(&dir, SESSION_FILES.stem)
            .map_err(pki)?;
        let ca_copy = dir.join(CA_FILES.cert);
        fs::write(&ca_copy, ca.cert_pem()).map_err(io_error("write", &ca_copy))?;
        // Before its daemon first starts: it must never serve a removed host, even for a moment.
        if let Some(revoked) = self.revocations()? {
            write_revoked(&dir, &revoked)?;
        }
        debug!(session = %id, dir = %dir.display(), "issued session certificate");
        Ok(dir)
    }

    /// The installation's revoked issuing certificates, from the etcd registry; `None` with the
    /// SQLite registry of one host, which has no hosts to remove.
    pub fn revocations(&self) -> Result<Option<Vec<sessionfs_registry::Revocation>>, StateError> {
        let location = self.registry_location();
        if !matches!(location, Location::Etcd(_)) {
            return Ok(None);
        }
        let registry = self.open_registry()?;
        let etcd = registry.shared().map_err(|source| StateError::Registry {
            location: location.clone(),
            source,
        })?;
        etcd.revocations()
            .map(Some)
            .map_err(|source| StateError::Registry { location, source })
    }
}

/// The text of a daemon's [`sessionfs_pki::REVOKED_FILE`] listing `revoked`.
pub fn revoked_text(revoked: &[sessionfs_registry::Revocation]) -> String {
    sessionfs_pki::Revoked::render(
        revoked
            .iter()
            .map(|r| (r.fingerprint.as_str(), r.host.as_str())),
    )
}

/// Writes the revocation list into a session's certificate directory `dir` (0644, replaced at
/// once: its daemon reads it whenever it changes).
pub fn write_revoked(
    dir: &Path,
    revoked: &[sessionfs_registry::Revocation],
) -> Result<(), StateError> {
    let path = dir.join(sessionfs_pki::REVOKED_FILE);
    // One temporary file per process: a mount and a `host serve` may both write.
    let temporary = dir.join(format!(
        ".{}.{}.new",
        sessionfs_pki::REVOKED_FILE,
        std::process::id()
    ));
    fs::write(&temporary, revoked_text(revoked)).map_err(io_error("write", &temporary))?;
    fs::set_permissions(&temporary, fs::Permissions::from_mode(0o644))
        .map_err(io_error("set the mode of", &temporary))?;
    fs::rename(&temporary, &path).map_err(io_error("replace", &path))?;
    Ok(())
}

/// Picks the state directory from `--home`, `$SESSIONFS_HOME` and `$HOME`, in that order;
/// empty variables count as unset.
pub fn resolve_root(
    explicit: Option<&Path>,
    sessionfs_home: Option<OsString>,
    home: Option<OsString>,
) -> Result<PathBuf, StateError> {
    if let Some(dir) = explicit {
        return Ok(dir.to_path_buf());
    }
    if let Some(dir) = sessionfs_home.filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    match home.filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(DEFAULT_RELATIVE)),
        None => Err(StateError::NoHome),
    }
}

/// Creates `dir` and its parents, the new directories with mode 0700.
pub(crate) fn private_dir(dir: &Path) -> Result<(), StateError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error("create directory", dir))?;
    Ok(())
}

fn exists(path: &Path) -> Result<bool, StateError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error("inspect", path)(e).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_precedence() {
        let explicit = Path::new("/x");
        assert_eq!(
            resolve_root(Some(explicit), Some("/a".into()), Some("/h".into())).unwrap(),
            PathBuf::from("/x")
        );
        assert_eq!(
            resolve_root(None, Some("/a".into()), Some("/h".into())).unwrap(),
            PathBuf::from("/a")
        );
        assert_eq!(
            resolve_root(None, Some("".into()), Some("/h".into())).unwrap(),
            PathBuf::from("/h/.local/state/sessionfs")
        );
        let err = resolve_root(None, None, Some("".into())).unwrap_err();
        assert!(matches!(err, StateError::NoHome));
        assert!(err.to_string().contains("$HOME is set"), "{err}");
    }

    #[test]
    fn layout() {
        let home = Home::new("/state").unwrap();
        let id: SessionId = "s-1".parse().unwrap();
        assert_eq!(home.pki_dir(), Path::new("/state/pki"));
        assert_eq!(home.registry_path(), Path::new("/state/registry.db"));
        assert_eq!(home.session_dir(&id), Path::new("/state/sessions/s-1"));
        assert_eq!(
            home.session_cert_dir(&id),
            Path::new("/state/sessions/s-1/certs")
        );
        assert_eq!(
            home.default_workspace(&id),
            Path::new("/state/sessions/s-1/workspace")
        );
        assert_eq!(
            home.daemon_log(&id),
            Path::new("/state/sessions/s-1/daemon.log")
        );
        let config = home.bridge_config();
        assert_eq!(
            config.registry,
            Location::Sqlite("/state/registry.db".into())
        );
        assert_eq!(config.cert_dir, Path::new("/state/pki"));
    }

    #[test]
    fn lock_unless_gives_up_when_asked_while_the_lock_is_held() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::new(tmp.path().join("state")).unwrap();
        let held = home.lock().unwrap();
        assert!(home.lock_unless(|| true).unwrap().is_none());
        drop(held);
        assert!(home.lock_unless(|| true).unwrap().is_some());
    }

    #[test]
    fn relative_home_becomes_absolute() {
        let home = Home::new("rel/state").unwrap();
        assert!(home.root().is_absolute());
        assert!(home.root().ends_with("rel/state"));
    }

    #[test]
    fn every_spelling_of_a_home_gives_one_root() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, tmp.path().join("link")).unwrap();
        let want = Home::new(real.join("state")).unwrap();
        for spelling in [
            tmp.path().join("link/state"),
            tmp.path().join("real/../real/state/"),
        ] {
            assert_eq!(
                Home::new(&spelling).unwrap().root(),
                want.root(),
                "{}",
                spelling.display()
            );
        }
        // Once the directory exists, it keeps the same name.
        fs::create_dir(real.join("state")).unwrap();
        assert_eq!(
            Home::new(tmp.path().join("link/state")).unwrap().root(),
            want.root()
        );
        let existing = Home::new(real.join("state")).unwrap();
        assert_eq!(existing.root(), want.root());
        assert!(
            !existing.root().to_string_lossy().ends_with('/'),
            "{}",
            existing.root().display()
        );
    }

    #[test]
    fn certificates_are_laid_out() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::new(tmp.path().join("state")).unwrap();
        home.ensure_bridge_cert().unwrap();
        for f in [
            CA_FILES.cert,
            CA_FILES.key,
            BRIDGE_FILES.cert,
            BRIDGE_FILES.key,
        ] {
            assert!(home.pki_dir().join(f).is_file(), "{f}");
        }
        let bridge = fs::read(home.pki_dir().join(BRIDGE_FILES.cert)).unwrap();
        home.ensure_bridge_cert().unwrap();
        assert_eq!(
            fs::read(home.pki_dir().join(BRIDGE_FILES.cert)).unwrap(),
            bridge
        );

        let ca = home.certificate_authority().unwrap();
        let id: SessionId = "s1".parse().unwrap();
        let dir = home.issue_session_certs(&ca, &id).unwrap();
        assert_eq!(dir, home.session_cert_dir(&id));
        for (f, _) in sessionfs_pki::SESSION_CERT_DIR {
            assert!(dir.join(f).is_file(), "{f}");
        }
        assert_eq!(
            fs::read_to_string(dir.join(CA_FILES.cert)).unwrap(),
            fs::read_to_string(home.pki_dir().join(CA_FILES.cert)).unwrap()
        );
    }
}
