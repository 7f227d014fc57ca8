//! Sessions whose containers sessionfs does not create itself (`deploy/docker-compose.yml`,
//! other orchestrators).
//!
//! - [`session_certs`] is `sessionfs session certs <id> --out DIR`: it issues the session's
//!   certificates from the installation CA into `sessions/<id>/certs/` (or reuses the ones
//!   there) and copies `ca.pem`, `session.pem` (0644) and `session.key` (0600) into `DIR`, for
//!   the orchestrator to mount at `/run/sessionfs`.
//! - The reconciler ([`crate::reconcile`]) adopts such a container once it runs: see
//!   [`LABEL_ADOPT`](crate::docker::LABEL_ADOPT) and `docs/deployment-docker.md`.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sessionfs_pki::SESSION_CERT_DIR;
use sessionfs_registry::{Backend, InvalidSessionId, RegistryError, SessionId, CERT_PIN_LABEL};
use tracing::info;

use crate::file_error::{io_error, FileError};
use crate::state::{private_dir, Home, StateError};

/// Errors of `session certs`.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// The session id is not valid.
    #[error(transparent)]
    InvalidId(#[from] InvalidSessionId),
    /// A session with this id exists and is not a docker session.
    #[error(
        "session `{id}` exists with the {backend} backend; certificates for containers started \
         outside sessionfs can only be written for a new id or a docker session"
    )]
    OtherBackend {
        /// The session.
        id: SessionId,
        /// Its backend.
        backend: Backend,
    },
    /// The state directory, the CA or the certificates.
    #[error(transparent)]
    State(#[from] StateError),
    /// The registry.
    #[error("session registry: {0}")]
    Registry(#[from] RegistryError),
    /// Writing the output directory.
    #[error(transparent)]
    Io(#[from] FileError),
    /// The session is served by another host, whose CA issues its certificates.
    #[error("session `{id}` runs on host `{host}`: issue its certificates there")]
    OtherHost { id: SessionId, host: String },
    /// The output directory is not a directory of the caller's (a symlink, or another user's).
    #[error(
        "{} must be a directory of yours (not a symlink, not another user's): the session's \
         private key is written there",
        .0.display()
    )]
    NotYours(PathBuf),
}

/// What `session certs` did.
#[derive(Debug, Clone)]
pub struct CertsWritten {
    /// The session.
    pub id: SessionId,
    /// The directory the files were written to.
    pub out: PathBuf,
    /// Whether the certificate was issued now (else the existing one was reused).
    pub issued: bool,
}

impl fmt::Display for CertsWritten {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} certificates of session {} in {} ({}, {}, {}); mount it read-only at \
             /run/sessionfs",
            if self.issued { "issued" } else { "reused" },
            self.id,
            self.out.display(),
            SESSION_CERT_DIR[0].0,
            SESSION_CERT_DIR[1].0,
            SESSION_CERT_DIR[2].0,
        )
    }
}

/// `session certs <id> --out DIR`: see the module documentation. Refuses an id registered
/// with another backend than docker.
pub fn session_certs(home: &Home, id: &str, out: &Path) -> Result<CertsWritten, CertsError> {
    let id: SessionId = id.parse()?;
    let registry = home.open_registry()?;
    let _lock = home.lock()?;
    if let Some(record) = registry.get(&id)? {
        if record.elsewhere(&sessionfs_registry::this_host()) {
            return Err(CertsError::OtherHost {
                host: record.host().unwrap_or_default().to_owned(),
                id,
            });
        }
        if record.backend != Backend::Docker {
            return Err(CertsError::OtherBackend {
                id,
                backend: record.backend,
            });
        }
    }
    let cert_dir = home.session_cert_dir(&id);
    let mut issued = false;
    let mut complete = true;
    for (name, _) in SESSION_CERT_DIR {
        complete &= is_file(&cert_dir.join(name))?;
    }
    if !complete {
        let ca = home.certificate_authority()?;
        home.issue_session_certs(&ca, &id)?;
        issued = true;
        // A registered session accepts only its current certificate.
        if registry.get(&id)?.is_some() {
            // The name follows the certificate (a host's sessions are named under its domain).
            let (pin, name) = (home.session_cert_pin(&id)?, home.session_cert_name(&id)?);
            registry.modify(&id, |r| {
                r.labels.insert(CERT_PIN_LABEL.to_owned(), pin.clone());
                r.cert_identity = name.clone();
            })?;
        }
    }
    private_dir(out)?;
    let meta = fs::symlink_metadata(out).map_err(io_error("inspect", out))?;
    if !meta.is_dir() || meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(CertsError::NotYours(out.to_path_buf()));
    }
    for (name, mode) in SESSION_CERT_DIR {
        let from = cert_dir.join(name);
        let to = out.join(name);
        let data = fs::read(&from).map_err(io_error("read", &from))?;
        write_file(&to, &data, mode)?;
    }
    // The revoked host certificates, when there are hosts: the daemon refuses them from its start.
    let revoked = cert_dir.join(sessionfs_pki::REVOKED_FILE);
    if is_file(&revoked)? {
        let data = fs::read(&revoked).map_err(io_error("read", &revoked))?;
        write_file(&out.join(sessionfs_pki::REVOKED_FILE), &data, 0o644)?;
    }
    info!(session = %id, out = %out.display(), issued, "wrote session certificates");
    Ok(CertsWritten {
        id,
        out: out.to_path_buf(),
        issued,
    })
}

/// Writes `path` with exactly `mode`, replacing what was there (a symlink planted there is
/// replaced, never followed): the data goes to a new file, created exclusively and never through
/// a symlink, which is then renamed over `path`.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), FileError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("remove", &tmp)(e)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(io_error("create", &tmp))?;
    // The umask may have taken bits away.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_error("chmod", &tmp))?;
    file.write_all(data).map_err(io_error("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io_error("rename", path))?;
    Ok(())
}

fn is_file(path: &Path) -> Result<bool, FileError> {
    match fs::metadata(path) {
        Ok(m) => Ok(m.is_file()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error("inspect", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use sessionfs_pki::SESSION_FILES;
    use sessionfs_registry::SessionRecord;

    use super::*;

    #[test]
    fn writes_and_reuses_certificates() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::new(tmp.path().join("state")).unwrap();
        let out = tmp.path().join("certs/web");
        let first = session_certs(&home, "web", &out).unwrap();
        assert!(first.issued);
        for (name, mode) in SESSION_CERT_DIR {
            let meta = fs::metadata(out.join(name)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
        }
        let key = fs::read(out.join(SESSION_FILES.key)).unwrap();
        let again = session_certs(&home, "web", &out).unwrap();
        assert!(!again.issued);
        assert_eq!(fs::read(out.join(SESSION_FILES.key)).unwrap(), key);
        assert!(home.session_cert_dir(&"web".parse().unwrap()).is_dir());
        assert!(again
            .to_string()
            .starts_with("reused certificates of session web"));
    }

    #[test]
    fn refuses_bad_ids_and_other_backends() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::new(tmp.path().join("state")).unwrap();
        let out = tmp.path().join("out");
        assert!(matches!(
            session_certs(&home, "Bad_Id", &out),
            Err(CertsError::InvalidId(_))
        ));
        let id: SessionId = "loc".parse().unwrap();
        home.open_registry()
            .unwrap()
            .register(&SessionRecord::new(id.clone(), Backend::Local, "x".into()))
            .unwrap();
        let err = session_certs(&home, "loc", &out).unwrap_err();
        assert!(matches!(err, CertsError::OtherBackend { .. }), "{err}");
        assert!(!out.exists());
    }
}
