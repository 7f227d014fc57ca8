//! `/proc/self/mountinfo`: which file systems are mounted where. The command line checks mount points
//! with it, the MCP server checks that the bridge is mounted where it looks, and the bridge mounts
//! with [`FS_NAME`].
//!
//! A crate of its own, with no dependencies, so that the MCP server reads the mount table without
//! linking the bridge (FUSE, QUIC).

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// The mount table of this process's mount namespace.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// The name the bridge mounts with: the mount source, and the subtype (`fuse.sessionfs`) where the
/// kernel records one (mounted by root without `fusermount3`, the type is plain `fuse`).
pub const FS_NAME: &str = "sessionfs";

/// One line of `/proc/self/mountinfo`, the fields sessionfs needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted (field 5), unescaped.
    pub mount_point: PathBuf,
    /// File system type, e.g. `fuse.sessionfs`.
    pub fs_type: String,
    /// Mount source, e.g. `sessionfs`, unescaped.
    pub source: String,
    /// The device of the mounted file system (field 3, `major:minor`), as `stat` shows it in
    /// `st_dev`'s parts.
    pub dev: (u32, u32),
}

impl MountEntry {
    /// Whether this is a mount of the sessionfs bridge.
    pub fn is_sessionfs(&self) -> bool {
        self.source == FS_NAME
            && (self.fs_type == "fuse" || self.fs_type.strip_prefix("fuse.") == Some(FS_NAME))
    }
}

/// Parses the text of a `mountinfo` file; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_mountinfo_line).collect()
}

fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    // id parent major:minor root mount_point options [optional...] - fs_type source super_options
    let mut fields = line.split(' ');
    let (major, minor) = fields.nth(2)?.split_once(':')?;
    let dev = (major.parse().ok()?, minor.parse().ok()?);
    let mount_point = fields.nth(1)?;
    let mut rest = fields.skip(1).skip_while(|f| *f != "-");
    rest.next()?;
    let fs_type = rest.next()?;
    let source = rest.next().unwrap_or("");
    Some(MountEntry {
        mount_point: PathBuf::from(OsString::from_vec(unescape(mount_point))),
        fs_type: String::from_utf8_lossy(&unescape(fs_type)).into_owned(),
        source: String::from_utf8_lossy(&unescape(source)).into_owned(),
        dev,
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
pub fn mounts() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(MOUNTINFO)?))
}

/// The entry mounted last at `canonical` (an absolute path without symlinks): the one visible there.
pub fn mounted_at<'a>(entries: &'a [MountEntry], canonical: &Path) -> Option<&'a MountEntry> {
    entries.iter().rev().find(|e| e.mount_point == canonical)
}

/// The mount `canonical` (an absolute path without symlinks) lies on: the deepest mount point
/// above it, the last one mounted where several are stacked.
pub fn mount_of<'a>(entries: &'a [MountEntry], canonical: &Path) -> Option<&'a MountEntry> {
    entries
        .iter()
        .enumerate()
        .filter(|(_, e)| canonical.starts_with(&e.mount_point))
        .max_by_key(|(i, e)| (e.mount_point.components().count(), *i))
        .map(|(_, e)| e)
}

/// Whether a FUSE file system (`fuse`, `fuse.<subtype>`, `fuseblk`) is mounted in `entries` with
/// device `dev` (`major:minor`): opening one of its files is answered by a user-space process,
/// possibly the caller's own.
pub fn is_fuse_dev(entries: &[MountEntry], dev: (u32, u32)) -> bool {
    entries.iter().any(|e| {
        e.dev == dev
            && (e.fs_type.starts_with("fuse.") || e.fs_type == "fuse" || e.fs_type == "fuseblk")
    })
}

/// Whether `canonical` (an absolute path without symlinks) is a mount point in `entries`.
pub fn is_mount_point_in(entries: &[MountEntry], canonical: &Path) -> bool {
    entries.iter().any(|e| e.mount_point == canonical)
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
        assert!(entries[2].is_sessionfs());
        assert!(!entries[3].is_sessionfs());
        assert_eq!(entries[3].source, "my src");
        assert!(is_mount_point_in(&entries, Path::new("/mnt/my dir")));
        assert!(is_mount_point_in(&entries, Path::new("/sessions")));
        assert!(!is_mount_point_in(&entries, Path::new("/mnt/my\\040dir")));
        assert!(!is_mount_point_in(&entries, Path::new("/mnt")));
        assert_eq!(entries[0].dev, (8, 1));
        assert_eq!(entries[2].dev, (0, 45));
        assert!(is_fuse_dev(&entries, (0, 45)));
        assert!(!is_fuse_dev(&entries, (0, 46)));
        let on = |p: &str| mount_of(&entries, Path::new(p)).map(|e| e.mount_point.clone());
        assert_eq!(on("/sessions/a/nested"), Some("/sessions".into()));
        assert_eq!(on("/sessions"), Some("/sessions".into()));
        assert_eq!(on("/sessionsx"), Some("/".into()));
        assert_eq!(on("/mnt/my dir/x"), Some("/mnt/my dir".into()));
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
}
