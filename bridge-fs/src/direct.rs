//! Direct data (FUSE passthrough): the kernel reads and writes a file in the daemon's own descriptor,
//! bypassing the bridge, the transport and the daemon, for sessions whose daemon runs on this host.
//!
//! The daemon opens the file as for any open (beneath its root, checked against the node the kernel
//! resolved) and names the descriptor in its reply. The bridge opens the same file through
//! `/proc/<daemon pid>/fd/<n>`, checks that it is the node the daemon described, and registers it with
//! the kernel as the inode's backing file.
//!
//! Only sessions whose daemon runs on this host qualify: local ones, and docker ones on this host's
//! engine (the registry holds the daemon's host pid; a container's main process is its daemon, and
//! root here opens its descriptors as any other process's). A stale or foreign pid opens nothing or
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
/// `attr` describes (device and inode number).
pub fn open_daemon_fd(pid: u32, fd: u32, attr: &Attr) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/fd/{fd}"))?;
    let meta = file.metadata()?;
    if meta.dev() != attr.dev || meta.ino() != attr.ino || !meta.is_file() {
        return Err(std::io::Error::other(format!(
            "/proc/{pid}/fd/{fd} is not the file the daemon opened"
        )));
    }
    Ok(file)
}
