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
//! The bridge never sees direct writes, so a handle that may write holds a change of its inode in
//! progress, as a write through the bridge does, from its open until the inode's last direct handle
//! is released: meanwhile nothing about the file is answered from memory and no change's own reply
//! is remembered (a truncation answered just before the kernel writes directly would otherwise
//! outlive those writes), and its end voids what was remembered before.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use fuser::BackingId;
use sessionfs_proto::Attr;

/// The smallest file opened with direct data.
pub const DIRECT_MIN: u64 = 1 << 20;

/// The inodes whose open handles use direct data, with their backing file and how many handles.
///
/// `C` is a change in progress of the inode (the bridge's `Mutation`): one is held from the first
/// handle that may write until the inode's last handle is released, because the bridge never sees
/// those writes. While it is held the bridge answers nothing about the file from memory and keeps
/// no change's own reply; dropping it voids what was remembered meanwhile.
pub struct Direct<C> {
    inodes: HashMap<u64, DirectInode<C>>,
}

impl<C> Default for Direct<C> {
    fn default() -> Self {
        Direct {
            inodes: HashMap::new(),
        }
    }
}

struct DirectInode<C> {
    backing: Arc<BackingId>,
    handles: usize,
    /// Held since a handle that may write joined.
    change: Option<C>,
}

impl<C> Direct<C> {
    /// Whether `ino` has handles with direct data: every open of it must then have it too.
    pub fn is_live(&self, ino: u64) -> bool {
        self.inodes.contains_key(&ino)
    }

    /// The backing file of `ino` for one more handle, if it has one. `writing` starts the change a
    /// handle that may write holds, called only if the inode holds none yet.
    pub fn join(
        &mut self,
        ino: u64,
        writing: Option<impl FnOnce() -> C>,
    ) -> Option<Arc<BackingId>> {
        let inode = self.inodes.get_mut(&ino)?;
        inode.handles += 1;
        if let (None, Some(start)) = (&inode.change, writing) {
            inode.change = Some(start());
        }
        Some(inode.backing.clone())
    }

    /// Records `backing` as `ino`'s, for one handle (`change`: held if it may write).
    pub fn start(&mut self, ino: u64, backing: BackingId, change: Option<C>) -> Arc<BackingId> {
        let backing = Arc::new(backing);
        let inode = DirectInode {
            backing: backing.clone(),
            handles: 1,
            change,
        };
        self.inodes.insert(ino, inode);
        backing
    }

    /// One of `ino`'s direct handles was released. When it was the last (the backing file is
    /// closed): `Some`, with the change its handles held if one could write, for the caller to end.
    pub fn leave(&mut self, ino: u64) -> Option<Option<C>> {
        let inode = self.inodes.get_mut(&ino)?;
        inode.handles = inode.handles.saturating_sub(1);
        if inode.handles > 0 {
            return None;
        }
        self.inodes.remove(&ino).map(|inode| inode.change)
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
