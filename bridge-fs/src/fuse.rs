//! The FUSE adapter: `fuser::Filesystem` for the bridge, a thin layer that translates every kernel
//! call into a call of the [`Core`] and implements the core's reply traits for fuser's replies.
//! What to answer is the core's business; this module only knows the kernel's interface (the
//! capabilities asked for at `INIT`, the calls answered without the core).

use std::ffi::OsStr;
use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    IoctlFlags, KernelConfig, LockOwner, Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request as FuseRequest, TimeOrNow, WriteFlags,
};
use sessionfs_proto::{Caller, SetAttrs, SetTime, Timestamp, MAX_IO_CHUNK};
use std::time::UNIX_EPOCH;
use tracing::debug;

use crate::core::{
    AttrReply, Backing, Core, CreateReply, DataReply, DirPlusReply, DirReply, EmptyReply,
    EntryReply, Fail, Notify, OpenReply, StatfsReply, WriteReply, XattrReply,
};
use crate::session::Sessions;

/// The bridge file system as fuser sees it. Cheap to clone.
#[derive(Clone)]
pub struct BridgeFs {
    core: Core,
}

impl BridgeFs {
    /// A file system over `sessions`, running its requests on `rt`.
    pub fn new(
        rt: tokio::runtime::Handle,
        sessions: Arc<Sessions>,
        ttl: Duration,
        watched_ttl: Duration,
    ) -> Self {
        BridgeFs {
            core: Core::new(rt, sessions, ttl, watched_ttl),
        }
    }

    /// Starts the invalidator thread, which sends the kernel its invalidations through `notifier`.
    pub fn start_invalidator(&self, notifier: Notifier) -> std::io::Result<()> {
        self.core.start_invalidator(notifier)
    }
}

fn caller(req: &FuseRequest) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => {
            let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
                Err(e) => {
                    let d = e.duration();
                    // Round toward negative infinity, as timespec does.
                    if d.subsec_nanos() == 0 {
                        (-(d.as_secs() as i64), 0)
                    } else {
                        (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
                    }
                }
            };
            SetTime::At(Timestamp { secs, nanos })
        }
    }
}

impl fuser::Filesystem for BridgeFs {
    fn init(&mut self, _req: &FuseRequest, config: &mut KernelConfig) -> std::io::Result<()> {
        // Entries come with attributes (one listing round trip serves `ls -l` and `find`); lookups and
        // listings of one directory run in parallel; reads of one file are issued concurrently.
        // Not READDIRPLUS_AUTO: plain readdir would report the daemon's inode numbers, which differ
        // from the ones `stat` shows.
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_ASYNC_READ;
        if let Err(missing) = config.add_capabilities(wanted) {
            debug!("kernel lacks capabilities {missing:?}");
            let _ = config.add_capabilities(wanted - missing);
        }
        // Direct data for files opened to write, and large files read, of sessions on this host (see
        // `crate::direct`); backing files may sit on a stacked file system (overlayfs) themselves.
        let passthrough = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(2).is_ok();
        let no_opendir = config
            .capabilities()
            .contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        self.core.kernel_accepted(passthrough, no_opendir);
        // One kernel read or write must fit one protocol transfer, whatever the page size.
        if let Err(nearest) = config.set_max_write(MAX_IO_CHUNK) {
            config
                .set_max_write(nearest)
                .map_err(|_| std::io::Error::other("cannot set max_write"))?;
        }
        // The kernel offers at most its default window (128 KiB) here; `mount::raise_readahead`
        // widens it once INIT is done.
        if let Err(nearest) = config.set_max_readahead(MAX_IO_CHUNK) {
            config
                .set_max_readahead(nearest)
                .map_err(|_| std::io::Error::other("cannot set max_readahead"))?;
        }
        Ok(())
    }

    fn destroy(&mut self) {
        self.core.destroy();
    }

    fn lookup(&self, req: &FuseRequest, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.core.lookup(caller(req), parent, name, reply)
    }

    fn forget(&self, _req: &FuseRequest, ino: INodeNo, nlookup: u64) {
        self.core.forget(ino, nlookup)
    }

    fn getattr(&self, req: &FuseRequest, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.core.getattr(caller(req), ino, fh, reply)
    }

    fn setattr(
        &self,
        req: &FuseRequest,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let attrs = SetAttrs {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
        };
        self.core.setattr(caller(req), ino, attrs, fh, reply)
    }

    fn readlink(&self, req: &FuseRequest, ino: INodeNo, reply: ReplyData) {
        self.core.readlink(caller(req), ino, reply)
    }

    fn mknod(
        &self,
        req: &FuseRequest,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.core
            .mknod(caller(req), parent, name, mode, rdev, reply)
    }

    fn mkdir(
        &self,
        req: &FuseRequest,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.core.mkdir(caller(req), parent, name, mode, reply)
    }

    fn unlink(&self, req: &FuseRequest, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.core.unlink(caller(req), parent, name, reply)
    }

    fn rmdir(&self, req: &FuseRequest, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.core.rmdir(caller(req), parent, name, reply)
    }

    fn symlink(
        &self,
        req: &FuseRequest,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        self.core
            .symlink(caller(req), parent, link_name, target, reply)
    }

    fn rename(
        &self,
        req: &FuseRequest,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.core
            .rename(caller(req), parent, name, newparent, newname, flags, reply)
    }

    fn link(
        &self,
        req: &FuseRequest,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.core.link(caller(req), ino, newparent, newname, reply)
    }

    fn open(&self, req: &FuseRequest, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.core.open(caller(req), ino, flags, reply)
    }

    fn create(
        &self,
        req: &FuseRequest,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.core
            .create(caller(req), parent, name, mode, flags, reply)
    }

    fn read(
        &self,
        req: &FuseRequest,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.core.read(caller(req), fh, offset, size, reply)
    }

    fn write(
        &self,
        req: &FuseRequest,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.core.write(caller(req), ino, fh, offset, data, reply)
    }

    fn flush(
        &self,
        _req: &FuseRequest,
        _ino: INodeNo,
        fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.core.flush(fh, reply)
    }

    fn release(
        &self,
        _req: &FuseRequest,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.core.release(fh, reply)
    }

    fn fsync(
        &self,
        req: &FuseRequest,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.core.fsync(caller(req), fh, datasync, reply)
    }

    fn opendir(&self, _req: &FuseRequest, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.core.opendir(ino, reply)
    }

    fn readdir(
        &self,
        req: &FuseRequest,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.core.readdir(caller(req), ino, offset, reply)
    }

    fn readdirplus(
        &self,
        req: &FuseRequest,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        self.core.readdirplus(caller(req), ino, offset, reply)
    }

    fn fsyncdir(
        &self,
        req: &FuseRequest,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.core.fsyncdir(caller(req), ino, datasync, reply)
    }

    fn statfs(&self, req: &FuseRequest, ino: INodeNo, reply: ReplyStatfs) {
        self.core.statfs(caller(req), ino, reply)
    }

    fn setxattr(
        &self,
        req: &FuseRequest,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.core
            .setxattr(caller(req), ino, name, value, flags, reply)
    }

    fn getxattr(
        &self,
        req: &FuseRequest,
        ino: INodeNo,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        self.core.getxattr(caller(req), ino, name, size, reply)
    }

    fn listxattr(&self, req: &FuseRequest, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.core.listxattr(caller(req), ino, size, reply)
    }

    fn removexattr(&self, req: &FuseRequest, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.core.removexattr(caller(req), ino, name, reply)
    }

    fn releasedir(
        &self,
        _req: &FuseRequest,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    /// No ioctl reaches the daemons. The common one, `TCGETS` from `isatty(3)` (many runtimes ask on
    /// every open), fails as on any regular file, quietly: `ENOTTY`.
    fn ioctl(
        &self,
        _req: &FuseRequest,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn access(
        &self,
        _req: &FuseRequest,
        _ino: INodeNo,
        _mask: fuser::AccessFlags,
        reply: ReplyEmpty,
    ) {
        // Permissions are checked by the kernel (`default_permissions`) against the daemon's modes.
        reply.ok();
    }
}

impl Notify for Notifier {
    fn inval_inode(&self, ino: INodeNo, offset: i64, len: i64) -> std::io::Result<()> {
        Notifier::inval_inode(self, ino, offset, len)
    }

    fn inval_entry(&self, parent: INodeNo, name: &OsStr) -> std::io::Result<()> {
        Notifier::inval_entry(self, parent, name)
    }
}

macro_rules! impl_fail {
    ($($t:ident),*) => {
        $(impl Fail for $t {
            fn error(self, e: Errno) {
                $t::error(self, e)
            }
        })*
    };
}

impl_fail!(
    ReplyAttr,
    ReplyData,
    ReplyEntry,
    ReplyEmpty,
    ReplyOpen,
    ReplyCreate,
    ReplyWrite,
    ReplyStatfs,
    ReplyXattr,
    ReplyDirectory,
    ReplyDirectoryPlus
);

impl EntryReply for ReplyEntry {
    fn entry(self, ttl: &Duration, attr: &FileAttr, generation: Generation) {
        ReplyEntry::entry(self, ttl, attr, generation)
    }

    fn entry_with_ttls(
        self,
        attr_ttl: &Duration,
        entry_ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
    ) {
        ReplyEntry::entry_with_ttls(self, attr_ttl, entry_ttl, attr, generation)
    }
}

impl AttrReply for ReplyAttr {
    fn attr(self, ttl: &Duration, attr: &FileAttr) {
        ReplyAttr::attr(self, ttl, attr)
    }
}

impl DataReply for ReplyData {
    fn data(self, data: &[u8]) {
        ReplyData::data(self, data)
    }
}

impl EmptyReply for ReplyEmpty {
    fn ok(self) {
        ReplyEmpty::ok(self)
    }
}

/// The kernel's id of a backing file the core keeps (every [`Backing`] comes from `open_backing`).
fn backing_id(backing: &Backing) -> Option<&BackingId> {
    backing.downcast_ref::<BackingId>()
}

impl OpenReply for ReplyOpen {
    fn opened(self, fh: FileHandle, flags: FopenFlags) {
        ReplyOpen::opened(self, fh, flags)
    }

    fn open_backing(&self, file: &File) -> std::io::Result<Backing> {
        let id = ReplyOpen::open_backing(self, file)?;
        Ok(Arc::new(id))
    }

    fn opened_passthrough(self, fh: FileHandle, flags: FopenFlags, backing: &Backing) {
        match backing_id(backing) {
            Some(id) => ReplyOpen::opened_passthrough(self, fh, flags, id),
            None => ReplyOpen::error(self, Errno::EIO),
        }
    }
}

impl CreateReply for ReplyCreate {
    fn created(
        self,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
        fh: FileHandle,
        flags: FopenFlags,
    ) {
        ReplyCreate::created(self, ttl, attr, generation, fh, flags)
    }

    fn created_passthrough(
        self,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
        fh: FileHandle,
        flags: FopenFlags,
        backing: &Backing,
    ) {
        match backing_id(backing) {
            Some(id) => {
                ReplyCreate::created_passthrough(self, ttl, attr, generation, fh, flags, id)
            }
            None => ReplyCreate::error(self, Errno::EIO),
        }
    }
}

impl WriteReply for ReplyWrite {
    fn written(self, size: u32) {
        ReplyWrite::written(self, size)
    }
}

impl StatfsReply for ReplyStatfs {
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
    ) {
        ReplyStatfs::statfs(
            self, blocks, bfree, bavail, files, ffree, bsize, namelen, frsize,
        )
    }
}

impl XattrReply for ReplyXattr {
    fn size(self, size: u32) {
        ReplyXattr::size(self, size)
    }

    fn data(self, data: &[u8]) {
        ReplyXattr::data(self, data)
    }
}

impl DirReply for ReplyDirectory {
    fn add(&mut self, ino: INodeNo, offset: u64, kind: FileType, name: &OsStr) -> bool {
        ReplyDirectory::add(self, ino, offset, kind, name)
    }

    fn ok(self) {
        ReplyDirectory::ok(self)
    }
}

impl DirPlusReply for ReplyDirectoryPlus {
    fn add(
        &mut self,
        ino: INodeNo,
        offset: u64,
        name: &OsStr,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
    ) -> bool {
        ReplyDirectoryPlus::add(self, ino, offset, name, ttl, attr, generation)
    }

    fn ok(self) {
        ReplyDirectoryPlus::ok(self)
    }
}
