//! Private file handling: directories created 0700, atomic writes
//! (temp file + fsync + rename) with explicit modes, and reads that map a
//! missing file to `PkiError::NotFound`.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::PkiError;

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

/// Paths of the `<stem>.pem` / `<stem>.key` pair in `dir`.
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
