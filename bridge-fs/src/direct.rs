//! Direct data (FUSE passthrough): the kernel reads and writes a file in the daemon's own descriptor,
//! bypassing the bridge, the transport and the daemon, for sessions whose daemon runs on this host.
//!
//! The daemon opens the file as for any open (beneath its root, checked against the node the kernel
//! resolved) and names the descriptor in its reply. The bridge opens the same file through
//! `/proc/<daemon pid>/fd/<n>` with the daemon's credentials, checks that it is the regular file the
//! daemon described and not on a FUSE file system ([`open_daemon_fd`]), and registers it with the
//! kernel as the inode's backing file.
//!
//! Only sessions whose daemon runs on this host qualify: local ones, and docker ones on this host's
//! engine (the registry holds the daemon's host pid; a container's main process is its daemon, and
//! the bridge acts as that process to open its descriptors). A stale or foreign pid opens nothing or
//! another file, which the device and inode check refuses.
//!
//! Every open to write qualifies, and read-only opens of files of at least [`DIRECT_MIN`] bytes (a
//! smaller file opened read-only comes whole with its open's head). A create does not start direct
//! data (a created file's attributes are predicted from its writes through the bridge, `known.rs`),
//! but joins the inode's when it has some. And only while the inode has no other kind of open
//! handle: the kernel allows one backing file per inode and refuses a cached open while a
//! passthrough one is live (and the reverse; see [`Direct`]). Registering a backing file needs
//! `CAP_SYS_ADMIN`; without it, or on a kernel without passthrough, every open goes through the bridge
//! as before.
//!
//! The bridge never sees direct writes, so it treats the start of an inode's writable direct data
//! (its first handle that may write) and its end (the inode's last direct handle released) as changes
//! through the mount of that inode (`Inner::direct_change`): what it remembered of the file is
//! voided, and no change under way keeps its own reply (a truncation answered just before the kernel
//! wrote directly would otherwise outlive those writes). In between, the file's attributes are
//! answered by the daemon alone, also where a directory's remembered listing names it.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;

use sessionfs_proto::Attr;

use crate::core::Backing;

/// The smallest file opened read-only with direct data (an open to write has no minimum).
pub const DIRECT_MIN: u64 = 1 << 20;

/// The inodes whose open handles use direct data, with their backing file and how many handles.
#[derive(Default)]
pub struct Direct {
    inodes: HashMap<u64, DirectInode>,
}

struct DirectInode {
    backing: Backing,
    handles: usize,
    /// Whether any of its handles could write (the bridge never sees those writes).
    written: bool,
    /// The daemon's identity of the file (device, inode number).
    node: (u64, u64),
}

impl Direct {
    /// Whether `ino` has handles with direct data: every open of it must then have it too.
    pub fn is_live(&self, ino: u64) -> bool {
        self.inodes.contains_key(&ino)
    }

    /// Whether any inode has direct handles of which one could write.
    pub fn any_written(&self) -> bool {
        self.inodes.values().any(|inode| inode.written)
    }

    /// Whether the daemon's file `(dev, ino)` has direct handles of which one could write: what the
    /// daemon said of it may be outdated by now.
    pub fn is_written(&self, dev: u64, ino: u64) -> bool {
        self.inodes
            .values()
            .any(|inode| inode.written && inode.node == (dev, ino))
    }

    /// The backing file of `ino` for one more handle (`writable`: it may write), if it has one, and
    /// whether the inode is written from now on (its first handle that may write).
    pub fn join(&mut self, ino: u64, writable: bool) -> Option<(Backing, bool)> {
        let inode = self.inodes.get_mut(&ino)?;
        inode.handles += 1;
        let now_written = writable && !inode.written;
        inode.written |= writable;
        Some((inode.backing.clone(), now_written))
    }

    /// Records `backing` as `ino`'s (the daemon's file `attr`), for one handle (`writable`: it may
    /// write).
    pub fn start(&mut self, ino: u64, attr: &Attr, backing: Backing, writable: bool) -> Backing {
        let inode = DirectInode {
            backing: backing.clone(),
            handles: 1,
            written: writable,
            node: (attr.dev, attr.ino),
        };
        self.inodes.insert(ino, inode);
        backing
    }

    /// One of `ino`'s direct handles was released. When it was the last (the backing file is
    /// closed), whether any of the inode's handles could write; `None` otherwise.
    pub fn leave(&mut self, ino: u64) -> Option<bool> {
        let inode = self.inodes.get_mut(&ino)?;
        inode.handles = inode.handles.saturating_sub(1);
        if inode.handles > 0 {
            return None;
        }
        self.inodes.remove(&ino).map(|inode| inode.written)
    }
}

/// Opens the daemon's descriptor `fd` of process `pid` for reading and writing, if it is the file
/// `attr` describes (device and inode number), a regular file, and one the daemon itself may open
/// for reading and writing: the bridge (root) must never give the kernel a backing file that
/// gives anyone more than the daemon's own rights.
///
/// - The descriptor is first opened `O_PATH` (which opens nothing: a device or FIFO is never
///   opened) and its type and identity are checked without asking the file system to refresh them
///   (`AT_STATX_DONT_SYNC`). A file on a FUSE file system is refused: its reopen would be answered
///   by a user-space process, maybe this bridge, whose runtime thread would be the one waiting.
/// - It is then reopened `O_RDWR | O_NOCTTY | O_NONBLOCK` through that `O_PATH` descriptor with
///   this thread's credentials switched to the daemon's (its file-system uid and gid and its
///   supplementary groups, read from `/proc/<pid>/status`), so the kernel checks the daemon's
///   rights: an `O_PATH` descriptor the daemon holds of a file it may not write (which `O_PATH`
///   allows) stays what it was. The credentials are switched back before this returns.
pub fn open_daemon_fd(pid: u32, fd: u32, attr: &Attr) -> std::io::Result<File> {
    use rustix::fs::{AtFlags, Mode, OFlags, StatxFlags};

    let not_it = |what: &str| std::io::Error::other(format!("/proc/{pid}/fd/{fd} is not {what}"));
    let path = rustix::fs::open(
        format!("/proc/{pid}/fd/{fd}"),
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mask = StatxFlags::TYPE | StatxFlags::INO;
    let flags = AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC;
    let stat = rustix::fs::statx(&path, "", flags, mask)?;
    let dev = rustix::fs::makedev(stat.stx_dev_major, stat.stx_dev_minor);
    if u32::from(stat.stx_mode) & libc::S_IFMT != libc::S_IFREG {
        return Err(not_it("a regular file"));
    }
    if dev != attr.dev || stat.stx_ino != attr.ino {
        return Err(not_it("the file the daemon opened"));
    }
    // A FUSE file system answers opens from a user-space process: possibly this bridge, whose
    // runtime thread is the one that would wait (a workspace inside a sessionfs mount).
    // FUSE devices are anonymous (major 0), so other files need no look at the mount table.
    if stat.stx_dev_major == 0 {
        let mounts = sessionfs_mountinfo::mounts()?;
        if sessionfs_mountinfo::is_fuse_dev(&mounts, (0, stat.stx_dev_minor)) {
            return Err(not_it("a file outside FUSE file systems"));
        }
    }
    let creds = Credentials::of(pid)?;
    let file = {
        let _as_daemon = creds.assume()?;
        rustix::fs::open(
            format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&path)),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )?
    };
    let file = File::from(file);
    let meta = file.metadata()?;
    if meta.dev() != attr.dev || meta.ino() != attr.ino || !meta.is_file() {
        return Err(not_it("the file the daemon opened"));
    }
    Ok(file)
}

/// A process's file-system credentials.
struct Credentials {
    uid: rustix::process::Uid,
    gid: rustix::process::Gid,
    groups: Vec<rustix::process::Gid>,
}

impl Credentials {
    /// The credentials of process `pid`: its file-system uid and gid and its supplementary groups
    /// (`/proc/<pid>/status`).
    fn of(pid: u32) -> std::io::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        Self::parse(&status)
            .ok_or_else(|| std::io::Error::other(format!("/proc/{pid}/status has no credentials")))
    }

    fn parse(status: &str) -> Option<Self> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|rest| rest.split_whitespace().collect::<Vec<_>>())
        };
        // `Uid:` and `Gid:` list the real, effective, saved and file-system ids.
        let fs_id = |name| field(name)?.get(3)?.parse::<u32>().ok();
        let groups = field("Groups:")?
            .iter()
            .map(|g| g.parse().ok().map(rustix::process::Gid::from_raw))
            .collect::<Option<Vec<_>>>()?;
        Some(Credentials {
            uid: rustix::process::Uid::from_raw(fs_id("Uid:")?),
            gid: rustix::process::Gid::from_raw(fs_id("Gid:")?),
            groups,
        })
    }

    /// Makes this thread act with these credentials until the guard is dropped. The thread keeps
    /// root as its real and saved uid, so it can switch back; while it acts as another user its
    /// effective capabilities are cleared by the kernel (and restored on the way back).
    fn assume(&self) -> std::io::Result<Restore> {
        let restore = Restore {
            uid: rustix::process::geteuid(),
            gid: rustix::process::getegid(),
            groups: rustix::process::getgroups()?,
        };
        rustix::thread::set_thread_groups(&self.groups)?;
        rustix::thread::set_thread_res_gid(None, self.gid, None)?;
        rustix::thread::set_thread_res_uid(None, self.uid, None)?;
        Ok(restore)
    }
}

/// Switches a thread back to its own credentials (see [`Credentials::assume`]).
struct Restore {
    uid: rustix::process::Uid,
    gid: rustix::process::Gid,
    groups: Vec<rustix::process::Gid>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        // The uid first: only as root may the thread set its gid and groups back. A failure
        // would leave the runtime thread acting as the daemon, which no later request may do.
        let back = rustix::thread::set_thread_res_uid(None, self.uid, None)
            .and_then(|()| rustix::thread::set_thread_res_gid(None, self.gid, None))
            .and_then(|()| rustix::thread::set_thread_groups(&self.groups));
        if let Err(e) = back {
            panic!("cannot switch the thread back to the bridge's credentials: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_the_file_system_ids_and_groups_of_a_status() {
        let status = "Name:\tsessionfsd\nUid:\t1000\t1001\t1002\t1003\nGid:\t20\t21\t22\t23\nGroups:\t4 24 27 \n";
        let c = Credentials::parse(status).unwrap();
        assert_eq!((c.uid.as_raw(), c.gid.as_raw()), (1003, 23));
        assert_eq!(
            c.groups.iter().map(|g| g.as_raw()).collect::<Vec<_>>(),
            vec![4, 24, 27]
        );
        assert!(Credentials::parse("Uid:\t1\t1\t1\t1\nGid:\t1\t1\t1\t1\n").is_none());
        let none = Credentials::parse("Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n").unwrap();
        assert!(none.groups.is_empty());
    }
}
