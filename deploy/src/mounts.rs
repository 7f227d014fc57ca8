//! The bridge's mount point: parsing `/proc/self/mountinfo`, the checks made before
//! mounting (FUSE device, mount point, `fusermount3`), and unmounting.

use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sessionfs_mountinfo::{self as mountinfo, is_mount_point_in, MountEntry, MOUNTINFO};
use tracing::debug;

use crate::local::search_path;

/// Where `sessionfs mount` and `sessionfs umount` act when no mount point is given.
pub const DEFAULT_MOUNTPOINT: &str = "/sessions";
/// The FUSE device.
pub const FUSE_DEVICE: &str = "/dev/fuse";
/// The setuid helper that mounts and unmounts FUSE file systems for unprivileged users.
pub const FUSERMOUNT: &str = "fusermount3";

/// Why a mount point cannot be mounted or unmounted.
#[derive(Debug, thiserror::Error)]
pub enum MountPointError {
    /// `/dev/fuse` cannot be opened.
    #[error(
        "cannot open {FUSE_DEVICE}: {0}; load the fuse kernel module, or run the container \
         with --device /dev/fuse --cap-add SYS_ADMIN"
    )]
    FuseDevice(#[source] std::io::Error),
    /// The mount point does not exist.
    #[error("mountpoint {} does not exist; create it with: mkdir -p {}", .0.display(), shell_quote(.0))]
    Missing(PathBuf),
    /// The mount point is not a directory.
    #[error("mountpoint {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// The mount point cannot be inspected.
    #[error("cannot access mountpoint {}: {source}", path.display())]
    Access {
        /// The mount point.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Something is mounted there already.
    #[error(
        "{} is already a mount point (busy); unmount it first with: sessionfs umount {}",
        .0.display(), shell_quote(.0)
    )]
    Busy(PathBuf),
    /// Not root and no `fusermount3`.
    #[error("{FUSERMOUNT} not found; install the fuse3 package")]
    NoFusermount,
    /// `umount` of a path where nothing is mounted.
    #[error("{} is not mounted", .0.display())]
    NotMounted(PathBuf),
    /// `umount` of a path where another file system than sessionfs is mounted.
    #[error("{} is a {fs_type} mount, not sessionfs; sessionfs umount unmounts only its own", .path.display())]
    NotSessionfs {
        /// The mount point.
        path: PathBuf,
        /// What is mounted there.
        fs_type: String,
    },
    /// `/proc/self/mountinfo` cannot be read.
    #[error("cannot read {MOUNTINFO}: {0}")]
    MountInfo(#[source] std::io::Error),
    /// The unmount helper cannot be run.
    #[error("cannot run {program}: {source}")]
    Run {
        /// `fusermount3` or `umount`.
        program: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The unmount helper failed.
    #[error("unmounting {} failed: {output}", path.display())]
    UnmountFailed {
        /// The mount point.
        path: PathBuf,
        /// What the helper printed (or its exit status).
        output: String,
    },
}

/// The mounts of this process's mount namespace.
pub fn mounts() -> Result<Vec<MountEntry>, MountPointError> {
    mountinfo::mounts().map_err(MountPointError::MountInfo)
}

/// `path` made absolute and free of symlinks. If the path itself cannot be resolved for a
/// reason other than not existing (e.g. a FUSE mount whose server died answers
/// `ENOTCONN`), its parent is resolved instead.
fn canonical_target(path: &Path) -> Result<PathBuf, MountPointError> {
    let err = match fs::canonicalize(path) {
        Ok(p) => return Ok(p),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(MountPointError::Missing(path.to_path_buf()))
        }
        Err(e) => e,
    };
    let access = |source| MountPointError::Access {
        path: path.to_path_buf(),
        source,
    };
    let absolute = std::path::absolute(path).map_err(access)?;
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => match fs::canonicalize(parent) {
            Ok(parent) => Ok(parent.join(name)),
            Err(_) => Err(access(err)),
        },
        _ => Err(access(err)),
    }
}

/// Checks that `/dev/fuse` can be opened.
pub fn check_fuse_device() -> Result<(), MountPointError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(FUSE_DEVICE)
        .map(drop)
        .map_err(MountPointError::FuseDevice)
}

/// Checks that `path` exists, is a directory and is not a mount point yet; returns its
/// canonical form.
pub fn check_mountpoint(path: &Path) -> Result<PathBuf, MountPointError> {
    let canonical = canonical_target(path)?;
    if is_mount_point_in(&mounts()?, &canonical) {
        return Err(MountPointError::Busy(path.to_path_buf()));
    }
    let meta = fs::metadata(&canonical).map_err(|source| MountPointError::Access {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(MountPointError::NotADirectory(path.to_path_buf()));
    }
    Ok(canonical)
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn fusermount() -> Option<PathBuf> {
    search_path(FUSERMOUNT, std::env::var_os("PATH").as_deref())
}

/// Checks that an unprivileged user has `fusermount3`.
pub fn check_fusermount() -> Result<(), MountPointError> {
    if is_root() || fusermount().is_some() {
        Ok(())
    } else {
        Err(MountPointError::NoFusermount)
    }
}

/// Every check made before mounting at `path`, in order: the FUSE device, the mount
/// point, `fusermount3`. Returns the canonical mount point.
pub fn preflight(path: &Path) -> Result<PathBuf, MountPointError> {
    check_fuse_device()?;
    let canonical = check_mountpoint(path)?;
    check_fusermount()?;
    Ok(canonical)
}

/// Unmounts whatever is mounted at `path` with `fusermount3 -u` (or `umount` when
/// `fusermount3` is missing and we are root). Returns the canonical mount point.
pub fn unmount(path: &Path) -> Result<PathBuf, MountPointError> {
    let canonical = match canonical_target(path) {
        Ok(c) => c,
        Err(MountPointError::Missing(_)) => {
            return Err(MountPointError::NotMounted(path.to_path_buf()))
        }
        Err(e) => return Err(e),
    };
    let table = mounts()?;
    let Some(mounted) = sessionfs_mountinfo::mounted_at(&table, &canonical) else {
        return Err(MountPointError::NotMounted(path.to_path_buf()));
    };
    if !mounted.is_sessionfs() {
        return Err(MountPointError::NotSessionfs {
            path: path.to_path_buf(),
            fs_type: mounted.fs_type.clone(),
        });
    }
    let (program, mut command) = match fusermount() {
        Some(helper) => {
            let mut c = Command::new(helper);
            c.arg("-u");
            (FUSERMOUNT, c)
        }
        None if is_root() => ("umount", Command::new("umount")),
        None => return Err(MountPointError::NoFusermount),
    };
    debug!(program, mountpoint = %canonical.display(), "unmounting");
    let output = command
        .arg(&canonical)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| MountPointError::Run { program, source })?;
    if output.status.success() {
        return Ok(canonical);
    }
    let mut text = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !stdout.trim().is_empty() {
        if !text.is_empty() {
            text.push_str("; ");
        }
        text.push_str(stdout.trim());
    }
    if text.is_empty() {
        text = format!("{program} {}", output.status);
    }
    Err(MountPointError::UnmountFailed {
        path: path.to_path_buf(),
        output: text,
    })
}

/// `path` as one shell word: unchanged when it only has safe characters, else quoted.
pub fn shell_quote(path: &Path) -> String {
    let s = path.to_string_lossy();
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:,@%=".contains(c));
    if safe {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountpoint_checks() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("my dir");
        let err = check_mountpoint(&dir).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "mountpoint {} does not exist; create it with: mkdir -p '{}'",
                dir.display(),
                dir.display()
            )
        );
        fs::create_dir(&dir).unwrap();
        assert_eq!(check_mountpoint(&dir).unwrap(), dir.canonicalize().unwrap());
        let file = tmp.path().join("file");
        fs::write(&file, "").unwrap();
        assert!(matches!(
            check_mountpoint(&file),
            Err(MountPointError::NotADirectory(_))
        ));
        // "/" is always a mount point.
        let err = check_mountpoint(Path::new("/")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/ is already a mount point (busy); unmount it first with: sessionfs umount /"
        );
        let err = unmount(&dir).unwrap_err();
        assert_eq!(err.to_string(), format!("{} is not mounted", dir.display()));
        let err = unmount(&tmp.path().join("missing")).unwrap_err();
        assert!(matches!(err, MountPointError::NotMounted(_)), "{err}");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote(Path::new("/sessions")), "/sessions");
        assert_eq!(shell_quote(Path::new("/a b")), "'/a b'");
        assert_eq!(shell_quote(Path::new("/it's")), r"'/it'\''s'");
    }
}
