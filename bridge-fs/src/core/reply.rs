//! What the core answers the kernel through: one trait per kind of reply, with the methods of
//! fuser's reply types of the same name, so the core runs against fuser in the mount
//! ([`crate::fuse`]) and against recording replies in its tests.
//!
//! A reply is consumed by its answer; dropping one unanswered is a bug the kernel sees as `EIO`
//! (fuser answers so on drop).

use std::any::Any;
use std::ffi::OsStr;
use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use fuser::{Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo};

/// A backing file the kernel registered for direct data (FUSE passthrough); opaque to the core,
/// which only keeps it alive while the inode's direct handles are open.
pub type Backing = Arc<dyn Any + Send + Sync>;

/// Every reply can fail with an errno.
pub trait Fail: Send + 'static {
    fn error(self, e: Errno);
}

/// The answer to `lookup` and to every call that makes a node.
pub trait EntryReply: Fail {
    fn entry(self, ttl: &Duration, attr: &FileAttr, generation: Generation);
    /// A negative entry (node id 0) cached for `entry_ttl`.
    fn entry_with_ttls(
        self,
        attr_ttl: &Duration,
        entry_ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
    );
}

pub trait AttrReply: Fail {
    fn attr(self, ttl: &Duration, attr: &FileAttr);
}

pub trait DataReply: Fail {
    fn data(self, data: &[u8]);
}

pub trait EmptyReply: Fail {
    fn ok(self);
}

pub trait OpenReply: Fail {
    fn opened(self, fh: FileHandle, flags: FopenFlags);
    /// Registers `file` with the kernel as a backing file (needs `CAP_SYS_ADMIN`).
    fn open_backing(&self, file: &File) -> std::io::Result<Backing>;
    fn opened_passthrough(self, fh: FileHandle, flags: FopenFlags, backing: &Backing);
}

pub trait CreateReply: Fail {
    fn created(
        self,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
        fh: FileHandle,
        flags: FopenFlags,
    );
    fn created_passthrough(
        self,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
        fh: FileHandle,
        flags: FopenFlags,
        backing: &Backing,
    );
}

pub trait WriteReply: Fail {
    fn written(self, size: u32);
}

pub trait StatfsReply: Fail {
    #[allow(clippy::too_many_arguments)]
    fn statfs(
        self,
        blocks: u64,
        bfree: u64,
        bavail: u64,
        files: u64,
        ffree: u64,
        bsize: u32,
        namelen: u32,
        frsize: u32,
    );
}

pub trait XattrReply: Fail {
    fn size(self, size: u32);
    fn data(self, data: &[u8]);
}

/// A plain `readdir`: `add` returns true when the entry did not fit (the kernel never saw it).
pub trait DirReply: Fail {
    fn add(&mut self, ino: INodeNo, offset: u64, kind: FileType, name: &OsStr) -> bool;
    fn ok(self);
}

/// A `readdirplus`: `add` returns true when the entry did not fit (the kernel never saw it, so it
/// holds no lookup count for it).
pub trait DirPlusReply: Fail {
    fn add(
        &mut self,
        ino: INodeNo,
        offset: u64,
        name: &OsStr,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
    ) -> bool;
    fn ok(self);
}

/// Invalidations the core sends the kernel, from its invalidator thread only (never from a request
/// handler: the kernel may wait for FUSE answers while it processes them).
pub trait Notify: Send + 'static {
    /// Forgets `ino`'s attributes and its cached pages from `offset` for `len` bytes (0: to the end).
    fn inval_inode(&self, ino: INodeNo, offset: i64, len: i64) -> std::io::Result<()>;
    /// Forgets the entry `parent/name`.
    fn inval_entry(&self, parent: INodeNo, name: &OsStr) -> std::io::Result<()>;
}
