//! The bridge's mount point: parsing `/proc/self/mountinfo`, the checks made before
//! mounting (FUSE device, mount point, `fusermount3`), and unmounting.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tracing::debug;

use crate::local::search_path;

/// Where `sessionfs mount` and `sessionfs umount` act when no mount point is given.
pub const DEFAULT_MOUNTPOINT: &str = "/sessions";
/// The FUSE device.
pub const FUSE_DEVICE: &str = "/dev/fuse";
/// The setuid helper that mounts and unmounts FUSE file systems for unprivileged users.
pub const FUSERMOUNT: &str = "fusermount3";
const MOUNTINFO: &str = "/proc/self/mountinfo";

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

/// One line of `/proc/self/mountinfo`, the fields sessionfs needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted (field 5), unescaped.
    pub mount_point: PathBuf,
    /// File system type, e.g. `fuse.sessionfs`.
    pub fs_type: String,
    /// Mount source, e.g. `sessionfs`, unescaped.
    pub source: String,
}

/// Parses the text of a `mountinfo` file; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_mountinfo_line).collect()
}

fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    // id parent major:minor root mount_point options [optional...] - fs_type source super_options
    let mut fields = line.split(' ');
    let mount_point = fields.nth(4)?;
    let mut rest = fields.skip(1).skip_while(|f| *f != "-");
    rest.next()?;
    let fs_type = rest.next()?;
    let source = rest.next().unwrap_or("");
    Some(MountEntry {
        mount_point: PathBuf::from(OsString::from_vec(unescape(mount_point))),
        fs_type: String::from_utf8_lossy(&unescape(fs_type)).into_owned(),
        source: String::from_utf8_lossy(&unescape(source)).into_owned(),
    })
}

/// Undoes the kernel's octal escaping (`\040` space, `\011` tab, `\012` newline,
/// `\134` backslash) in a mountinfo field.
pub fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let octal = bytes.get(i + 1..i + 4).and_then(|d| {
                d.iter()
                    .all(|c| (b'0'..=b'7').contains(c))
                    .then(|| d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0')))
            });
            if let Some(value) = octal.and_then(|v| u8::try_from(v).ok()) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// The mounts of this process's mount namespace.
pub fn mounts() -> Result<Vec<MountEntry>, MountPointError> {
    let text = fs::read_to_string(MOUNTINFO).map_err(MountPointError::MountInfo)?;
    Ok(parse_mountinfo(&text))
}

/// Whether `canonical` (an absolute path without symlinks) is a mount point in `entries`.
pub fn is_mount_point_in(entries: &[MountEntry], canonical: &Path) -> bool {
    entries.iter().any(|e| e.mount_point == canonical)
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
    if !is_mount_point_in(&mounts()?, &canonical) {
        return Err(MountPointError::NotMounted(path.to_path_buf()));
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

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
35 22 0:31 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
36 22 0:45 / /sessions rw,nosuid,nodev,relatime shared:20 master:3 - fuse.sessionfs sessionfs rw,user_id=0,group_id=0
37 22 0:46 / /mnt/my\\040dir rw,relatime - tmpfs my\\040src rw
38 22 0:47 /sub /mnt/tab\\011and\\134slash\\012nl rw - tmpfs none rw
garbage line
39 22 0:48 / /no-separator rw shared:1 tmpfs none rw
";

    #[test]
    fn parses_mountinfo() {
        let entries = parse_mountinfo(SAMPLE);
        let points: Vec<&Path> = entries.iter().map(|e| e.mount_point.as_path()).collect();
        assert_eq!(
            points,
            [
                Path::new("/"),
                Path::new("/proc"),
                Path::new("/sessions"),
                Path::new("/mnt/my dir"),
                Path::new("/mnt/tab\tand\\slash\nnl"),
            ]
        );
        assert_eq!(entries[2].fs_type, "fuse.sessionfs");
        assert_eq!(entries[2].source, "sessionfs");
        assert_eq!(entries[3].source, "my src");
        assert!(is_mount_point_in(&entries, Path::new("/mnt/my dir")));
        assert!(is_mount_point_in(&entries, Path::new("/sessions")));
        assert!(!is_mount_point_in(&entries, Path::new("/mnt/my\\040dir")));
        assert!(!is_mount_point_in(&entries, Path::new("/mnt")));
    }

    #[test]
    fn unescapes_only_octal_triplets() {
        assert_eq!(unescape(r"a\040b"), b"a b");
        assert_eq!(unescape(r"\134"), b"\\");
        assert_eq!(unescape(r"a\04"), br"a\04");
        assert_eq!(unescape(r"a\x41"), br"a\x41");
        assert_eq!(unescape(r"\777"), br"\777");
        assert_eq!(unescape("plain"), b"plain");
    }

    #[test]
    fn real_mountinfo_has_root() {
        let entries = mounts().unwrap();
        assert!(!entries.is_empty());
        assert!(entries.iter().any(|e| e.mount_point == Path::new("/")));
    }

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
