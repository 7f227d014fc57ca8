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
//! Opens of files of at least [`DIRECT_MIN`] bytes qualify (a smaller file opened read-only comes
//! whole with its open's head; smaller files opened to write go through the bridge too, see
//! `Inner::direct_backing`). Creates do not: a created file's attributes are
//! predicted from its writes through the bridge (`known.rs`). And only while the inode has no other
//! kind of open handle: the kernel allows one backing file per inode and refuses a cached open while a
//! passthrough one is live (and the reverse; see [`Direct`]). Registering a backing file needs
//! `CAP_SYS_ADMIN`; without it, or on a kernel without passthrough, every open goes through the bridge
//! as before.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use fuser::BackingId;
use sessionfs_proto::Attr;

/// The smallest file opened with direct data.
pub const DIRECT_MIN: u64 = 1 << 20;

/// The inodes whose open handles use direct data, with their backing file and how many handles.
#[derive(Default)]
pub struct Direct {
    inodes: HashMap<u64, DirectInode>,
}

struct DirectInode {
    backing: Arc<BackingId>,
    handles: usize,
    /// Whether any of its handles could write (the bridge never sees those writes).
    written: bool,
}

impl Direct {
    /// Whether `ino` has handles with direct data: every open of it must then have it too.
    pub fn is_live(&self, ino: u64) -> bool {
        self.inodes.contains_key(&ino)
    }

    /// The backing file of `ino` for one more handle (`writable`: it may write), if it has one.
    pub fn join(&mut self, ino: u64, writable: bool) -> Option<Arc<BackingId>> {
        let inode = self.inodes.get_mut(&ino)?;
        inode.handles += 1;
        inode.written |= writable;
        Some(inode.backing.clone())
    }

    /// Records `backing` as `ino`'s, for one handle (`writable`: it may write).
    pub fn start(&mut self, ino: u64, backing: BackingId, writable: bool) -> Arc<BackingId> {
        let backing = Arc::new(backing);
        let inode = DirectInode {
            backing: backing.clone(),
            handles: 1,
            written: writable,
        };
        self.inodes.insert(ino, inode);
        backing
    }

    /// One handle of `ino` was released. When it was the last (the backing file is closed), whether
    /// any of the inode's direct handles could write; `None` otherwise.
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
