//! Certificate files: their names (the one definition of the layout, used by
//! the daemon, the bridge, the command line and the tests), and private file
//! handling: directories created 0700, atomic writes (temp file + fsync +
//! rename) with explicit modes, and reads that map a missing file to
//! `PkiError::NotFound`.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::PkiError;

/// The files of one certificate and its private key: `<stem>.pem` (the
/// certificate, mode [`CERT_MODE`]) and `<stem>.key` (the key, mode
/// [`KEY_MODE`]), side by side in one directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertFiles {
    /// What [`crate::Identity::load`] and [`crate::IssuedCert::write`] take.
    pub stem: &'static str,
    /// The certificate's file name, `<stem>.pem`.
    pub cert: &'static str,
    /// The private key's file name, `<stem>.key`.
    pub key: &'static str,
}

macro_rules! cert_files {
    ($stem:literal) => {
        CertFiles {
            stem: $stem,
            cert: concat!($stem, ".pem"),
            key: concat!($stem, ".key"),
        }
    };
}

/// The installation CA, in the state directory's `pki/`. Its certificate
/// ([`CertFiles::cert`], `ca.pem`) is also copied into every daemon's
/// certificate directory, as the trust anchor of both sides.
pub const CA_FILES: CertFiles = cert_files!("ca");
/// The bridge's (and MCP server's) client certificate, beside the CA.
pub const BRIDGE_FILES: CertFiles = cert_files!("bridge");
/// A session daemon's certificate, in its certificate directory (`--cert-dir`).
pub const SESSION_FILES: CertFiles = cert_files!("session");

/// Mode of a certificate file.
pub const CERT_MODE: u32 = 0o644;
/// Mode of a private key file.
pub const KEY_MODE: u32 = 0o600;

/// Every file of a daemon's certificate directory (`sessionfsd --cert-dir`,
/// `/run/sessionfs` in a container) with the mode it is written with: the CA
/// certificate and the session's certificate and key.
pub const SESSION_CERT_DIR: [(&str, u32); 3] = [
    (CA_FILES.cert, CERT_MODE),
    (SESSION_FILES.cert, CERT_MODE),
    (SESSION_FILES.key, KEY_MODE),
];

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` (and parents) with mode 0700 if it does not exist yet.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), PkiError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))
}

/// Atomically replaces `path` with `contents`, the new file having `mode`.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()
    })();
    if let Err(source) = result {
        let _ = fs::remove_file(&tmp);
        return Err(PkiError::Io { path: tmp, source });
    }
    fs::rename(&tmp, path).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        PkiError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Reads a UTF-8 file; a missing file is `PkiError::NotFound(path)`.
pub(crate) fn read_text(path: &Path) -> Result<String, PkiError> {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes).map_err(|_| PkiError::BadPem {
            path_or_what: path.display().to_string(),
            reason: "file is not UTF-8".into(),
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(PkiError::NotFound(path.to_path_buf())),
        Err(source) => Err(PkiError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Whether `path` exists (a dangling symlink counts as present).
pub(crate) fn exists(path: &Path) -> Result<bool, PkiError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(source) => Err(PkiError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Paths of the `<stem>.pem` / `<stem>.key` pair in `dir` (see [`CertFiles`]).
pub(crate) fn pem_and_key(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    )
}

/// Logs a warning if a private key file is readable by group or others.
pub(crate) fn warn_if_exposed(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format_args!("{mode:o}"), "private key file is accessible by group/others");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names users see in the documentation, `deploy/docker-compose.yml` and
    /// their orchestrators' volume definitions: changing them breaks installations.
    #[test]
    fn layout_is_stable() {
        assert_eq!((CA_FILES.cert, CA_FILES.key), ("ca.pem", "ca.key"));
        assert_eq!(
            (BRIDGE_FILES.cert, BRIDGE_FILES.key),
            ("bridge.pem", "bridge.key")
        );
        assert_eq!(
            SESSION_CERT_DIR,
            [
                ("ca.pem", 0o644),
                ("session.pem", 0o644),
                ("session.key", 0o600)
            ]
        );
        for files in [CA_FILES, BRIDGE_FILES, SESSION_FILES] {
            let (cert, key) = pem_and_key(Path::new("/d"), files.stem);
            assert_eq!(cert, Path::new("/d").join(files.cert));
            assert_eq!(key, Path::new("/d").join(files.key));
        }
    }
}
