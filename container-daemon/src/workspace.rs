//! The confined file system of one workspace root.
//!
//! Architecture invariant: **nothing outside the root is ever opened, stat'ed or changed.** Every path
//! from the wire is a [`WirePath`] (no `.`, `..`, absolute or empty components). Its parent directory is
//! opened with `openat2(root, parent, O_PATH, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)`, so a symlink anywhere on the way — absolute, relative and leading out, or a
//! `/proc` magic link — is refused with `ELOOP`/`EXDEV` by the kernel. The final component is then used
//! with the `*at` calls relative to that parent and never followed (`AT_SYMLINK_NOFOLLOW`, or
//! `openat2` with the same resolve flags for opens). The few calls without an `*at` form that can refuse
//! to follow (`chmod`, xattrs) go through `/proc/self/fd/<fd>` of a descriptor opened this way, which
//! names exactly the node already resolved beneath the root.
//!
//! All methods are blocking system calls; the server runs those that may take long on the blocking
//! thread pool, and single-node metadata calls inline (see `server.rs`, `runs_inline`).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rustix::fs::{
    self as rfs, AtFlags, Mode, OFlags, RenameFlags, ResolveFlags, Statx, StatxFlags, Timespec,
    Timestamps, XattrFlags, CWD,
};
use rustix::io::Errno;
use sessionfs_proto::{
    errno, Attr, Caller, DirEntry, ErrorReply, FileHead, NodeId, NodeKind, SetAttrs, SetTime,
    StatFs, Timestamp, WirePath, MAX_DIR_PAGE, MAX_HEADS_FILES, MAX_IO_CHUNK, MAX_OPEN_HEAD,
};

use crate::handles::Handles;
use crate::replaced::Replaced;

type Result<T> = std::result::Result<T, ErrorReply>;

/// How every path is resolved: beneath the root, following no symlink of any kind.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Open flags a client may pass through to `open`/`create`; everything else is dropped.
const PASSTHROUGH_OPEN_FLAGS: OFlags = OFlags::ACCMODE
    .union(OFlags::APPEND)
    .union(OFlags::TRUNC)
    .union(OFlags::EXCL)
    .union(OFlags::SYNC)
    .union(OFlags::DSYNC)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOATIME);

/// The longest symlink target accepted.
const MAX_SYMLINK_LEN: usize = 4095;

/// The fixed owner of new nodes (`sessionfsd --owner UID:GID`): the workspace's user, for example the
/// container's unprivileged user, instead of whoever made the call on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl std::str::FromStr for Owner {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (uid, gid) = s
            .split_once(':')
            .ok_or_else(|| format!("owner `{s}` is not UID:GID"))?;
        let num = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| format!("owner `{s}`: `{v}` is not a number"))
        };
        Ok(Owner {
            uid: num(uid)?,
            gid: num(gid)?,
        })
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

/// What [`Workspace::open_file`] opened: as `Reply::Opened` says.
pub struct OpenedFile {
    /// The handle, unless the file ended within the head read with it (then closed again).
    pub fh: Option<u64>,
    pub attr: Attr,
    pub head: Vec<u8>,
    /// The descriptor number behind `fh`.
    pub fd: Option<u32>,
}

/// One workspace root and the operations confined to it.
pub struct Workspace {
    root: OwnedFd,
    root_path: PathBuf,
    /// Whether the daemon may give new nodes the caller's ownership (it runs as root).
    can_chown: bool,
    /// The fixed owner of new nodes, if any; otherwise they belong to the caller.
    owner: Option<Owner>,
    /// Regular files renames replaced, openable by identity for a moment.
    replaced: Replaced,
}

/// The error reply for a failed system call on `path`.
fn fail(op: &str, path: &WirePath, e: Errno) -> ErrorReply {
    ErrorReply::new(e.raw_os_error(), format!("{op} {path:?}: {e}"))
}

fn os(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

/// The relative path handed to the kernel: the root itself is `.`.
fn rel(bytes: &[u8]) -> &OsStr {
    if bytes.is_empty() {
        OsStr::new(".")
    } else {
        os(bytes)
    }
}

fn ts(t: rfs::StatxTimestamp) -> Timestamp {
    Timestamp {
        secs: t.tv_sec,
        nanos: t.tv_nsec,
    }
}

/// Converts `statx` output to the wire attributes.
pub fn attr_from_statx(st: &Statx) -> Attr {
    let btime = (st.stx_mask & StatxFlags::BTIME.bits() != 0).then(|| ts(st.stx_btime));
    Attr {
        dev: rfs::makedev(st.stx_dev_major, st.stx_dev_minor),
        ino: st.stx_ino,
        mode: u32::from(st.stx_mode),
        nlink: st.stx_nlink,
        uid: st.stx_uid,
        gid: st.stx_gid,
        rdev: rfs::makedev(st.stx_rdev_major, st.stx_rdev_minor),
        size: st.stx_size,
        blocks: st.stx_blocks,
        blksize: st.stx_blksize,
        atime: ts(st.stx_atime),
        mtime: ts(st.stx_mtime),
        ctime: ts(st.stx_ctime),
        btime,
    }
}

fn statx_at(dir: BorrowedFd<'_>, name: &OsStr) -> std::result::Result<Attr, Errno> {
    let st = rfs::statx(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS | StatxFlags::BTIME,
    )?;
    Ok(attr_from_statx(&st))
}

/// Writes `data` at `offset` until all of it is written, a call writes nothing, or a call fails
/// (retried on `EINTR`). Returns how many bytes were written and the error that stopped it, if any.
fn pwrite_all(fd: BorrowedFd<'_>, offset: u64, data: &[u8]) -> (usize, Option<Errno>) {
    let mut done = 0;
    while done < data.len() {
        match rustix::io::pwrite(fd, &data[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(Errno::INTR) => continue,
            Err(e) => return (done, Some(e)),
        }
    }
    (done, None)
}

/// Up to `size` bytes of `fd` from `offset`; fewer only at the end of the file.
fn read_at(fd: BorrowedFd<'_>, offset: u64, size: u32) -> std::result::Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; size as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::io::pread(fd, &mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// The attributes of `dir/name`, just made, and of `dir` after it.
fn made(dir: BorrowedFd<'_>, name: &OsStr) -> std::result::Result<(Attr, Attr), Errno> {
    Ok((statx_at(dir, name)?, statx_fd(dir)?))
}

fn statx_fd(fd: BorrowedFd<'_>) -> std::result::Result<Attr, Errno> {
    let st = rfs::statx(
        fd,
        "",
        AtFlags::EMPTY_PATH,
        StatxFlags::BASIC_STATS | StatxFlags::BTIME,
    )?;
    Ok(attr_from_statx(&st))
}

fn to_timespec(t: Option<SetTime>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: rfs::UTIME_OMIT,
        },
        Some(SetTime::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: rfs::UTIME_NOW,
        },
        Some(SetTime::At(t)) => Timespec {
            tv_sec: t.secs,
            tv_nsec: i64::from(t.nanos) as _,
        },
    }
}

/// An `O_PATH` descriptor of `dir/name` and its identity, if that is a regular file.
fn regular_at(dir: BorrowedFd<'_>, name: &OsStr) -> Option<(NodeId, OwnedFd)> {
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rfs::openat(dir, name, flags, Mode::empty()).ok()?;
    let attr = statx_fd(fd.as_fd()).ok()?;
    (attr.file_type() == sessionfs_proto::S_IFREG).then(|| (NodeId::of(&attr), fd))
}

/// Opens the node `fd` (an `O_PATH` descriptor) names with `flags`: through its own `/proc` link,
/// which names exactly that node.
fn reopen(fd: BorrowedFd<'_>, flags: OFlags) -> std::result::Result<OwnedFd, Errno> {
    rfs::open(
        proc_fd_path(fd, None),
        flags | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
}

/// Runs `make`, which creates a node with `mode`, so that the node belongs to `owner` from the start
/// when it can: made with the thread's file-system ids switched to the owner's, instead of by root and
/// given to the owner by a `chown` after (one call, and one change event the bridge would receive,
/// fewer per file or directory). Made by the daemon as before (and given away by the caller) when
/// there is no owner to switch to, when `mode` has set-ID bits (the kernel strips them for a
/// non-member of the group; the `chown` path restores them), or when the owner may not create
/// there (`EACCES`, `EPERM`: the daemon may).
fn made_as<T>(
    owner: Option<(rfs::Uid, rfs::Gid)>,
    mode: u32,
    make: impl Fn() -> std::result::Result<T, Errno>,
) -> std::result::Result<T, Errno> {
    let Some((uid, gid)) =
        owner.filter(|(u, g)| mode & 0o6000 == 0 && !(u.is_root() && g.is_root()))
    else {
        return make();
    };
    let made = FsIds::switch(uid.as_raw(), gid.as_raw()).map(|ids| {
        let made = make();
        drop(ids);
        made
    });
    match made {
        Some(Err(Errno::ACCESS | Errno::PERM)) | None => make(),
        Some(made) => made,
    }
}

/// The calling thread's file-system user and group switched to other ids; switched back on drop.
struct FsIds {
    uid: u32,
    gid: u32,
}

impl FsIds {
    /// `None` if the thread's ids could not be switched (nothing is changed then).
    fn switch(uid: u32, gid: u32) -> Option<FsIds> {
        // SAFETY: setfsgid and setfsuid take and return plain integers and change only the calling
        // thread's file-system ids (glibc does not pass them on to other threads); an invalid id
        // (u32::MAX) changes nothing and returns the current one, which is how success is checked.
        // The ids are switched back before anything else runs on this thread (`Drop`).
        unsafe {
            let old_gid = libc::setfsgid(gid) as u32;
            if libc::setfsgid(u32::MAX) as u32 != gid {
                libc::setfsgid(old_gid);
                return None;
            }
            let old_uid = libc::setfsuid(uid) as u32;
            if libc::setfsuid(u32::MAX) as u32 != uid {
                libc::setfsuid(old_uid);
                libc::setfsgid(old_gid);
                return None;
            }
            Some(FsIds {
                uid: old_uid,
                gid: old_gid,
            })
        }
    }
}

impl Drop for FsIds {
    fn drop(&mut self) {
        // SAFETY: as in `switch`; the daemon keeps CAP_SETUID and CAP_SETGID whatever its
        // file-system ids, so switching back succeeds.
        unsafe {
            libc::setfsuid(self.uid);
            libc::setfsgid(self.gid);
        }
    }
}

fn proc_fd_path(fd: BorrowedFd<'_>, name: Option<&OsStr>) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    if let Some(name) = name {
        p.push(name);
    }
    p
}

impl Workspace {
    /// Opens `root` as the workspace root.
    /// Opens `root` as the workspace root. With an `owner`, new nodes belong to that user, and a root
    /// directory still owned by uid 0 (a fresh container volume) is given to it.
    pub fn open(root: &Path, owner: Option<Owner>) -> io::Result<Self> {
        let fd = rfs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("opening workspace root {}: {e}", root.display()),
            )
        })?;
        let can_chown = rustix::process::geteuid().is_root();
        if let Some(o) = owner.filter(|o| can_chown && o.uid != 0) {
            let st = statx_fd(fd.as_fd()).map_err(io::Error::from)?;
            if st.uid == 0 {
                rfs::fchown(
                    &fd,
                    Some(rfs::Uid::from_raw(o.uid)),
                    Some(rfs::Gid::from_raw(o.gid)),
                )
                .map_err(io::Error::from)?;
                tracing::info!(owner = %o, root = %root.display(), "gave the workspace root to its owner");
            }
        }
        Ok(Workspace {
            root: fd,
            root_path: root.to_path_buf(),
            can_chown,
            owner,
            replaced: Replaced::default(),
        })
    }

    /// The root directory this workspace serves.
    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    /// Opens `rel` beneath the root with the confining resolve flags.
    fn open_beneath(
        &self,
        rel_bytes: &[u8],
        flags: OFlags,
        mode: Mode,
    ) -> std::result::Result<OwnedFd, Errno> {
        rfs::openat2(
            &self.root,
            rel(rel_bytes),
            flags | OFlags::CLOEXEC,
            mode,
            RESOLVE,
        )
    }

    /// Opens directory `path` beneath the root for reading (listing, syncing).
    fn open_dir(&self, path: &WirePath) -> std::result::Result<OwnedFd, Errno> {
        self.open_beneath(
            path.as_bytes(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
    }

    /// The parent directory of `path` (opened `O_PATH` beneath the root) and its last component. The
    /// root itself is `(root, ".")`.
    fn parent<'p>(&self, op: &str, path: &'p WirePath) -> Result<(OwnedFd, &'p OsStr)> {
        let (dir, name) = path.split_last().unwrap_or((&[], b"."));
        let fd = self
            .open_beneath(dir, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
            .map_err(|e| fail(op, path, e))?;
        Ok((fd, os(name)))
    }

    /// Gives a node just created at `dir/name` the caller's ownership, when the daemon may; returns
    /// its attributes and its directory's after it.
    fn made_owned(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        caller: Caller,
    ) -> std::result::Result<(Attr, Attr), Errno> {
        let attr = statx_at(dir, name)?;
        let attr = match self.owner_for(dir, caller)? {
            // Not again when it has that owner already: a chown is a change event of its own.
            Some((uid, gid)) if attr.uid_gid() != (uid.as_raw(), gid.as_raw()) => {
                rfs::chownat(dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)?;
                statx_at(dir, name)?
            }
            _ => attr,
        };
        Ok((attr, statx_fd(dir)?))
    }

    /// The owner a node created by `caller` in `dir` gets, when the daemon may give it one.
    fn owner_for(
        &self,
        dir: BorrowedFd<'_>,
        caller: Caller,
    ) -> std::result::Result<Option<(rfs::Uid, rfs::Gid)>, Errno> {
        if !self.can_chown {
            return Ok(None);
        }
        let parent = statx_fd(dir)?;
        let (uid, gid) = self
            .owner
            .map_or((caller.uid, caller.gid), |o| (o.uid, o.gid));
        // A set-group-ID directory gives new nodes its own group (POSIX); keep that.
        let gid = if parent.mode & 0o2000 != 0 {
            parent.gid
        } else {
            gid
        };
        Ok(Some((rfs::Uid::from_raw(uid), rfs::Gid::from_raw(gid))))
    }

    /// Opens the regular file `rel` beneath the root with `flags`. The node is first opened `O_PATH`
    /// and checked, so a FIFO or device node swapped in by someone else is never opened for real
    /// (that could block a worker or reach a device).
    /// Opens the regular file `rel` with `flags`; with `expect`, only if it is that node (else
    /// `ESTALE`, before the flags, `O_TRUNC` included, touch it).
    fn open_regular(
        &self,
        rel: &[u8],
        flags: OFlags,
        expect: Option<&NodeId>,
    ) -> std::result::Result<OwnedFd, Errno> {
        let target = self.open_beneath(rel, OFlags::PATH, Mode::empty())?;
        let attr = statx_fd(target.as_fd())?;
        match attr.file_type() {
            sessionfs_proto::S_IFREG => {}
            sessionfs_proto::S_IFDIR => return Err(Errno::ISDIR),
            _ => return Err(Errno::NXIO),
        }
        if expect.is_some_and(|id| *id != NodeId::of(&attr)) {
            return Err(Errno::STALE);
        }
        reopen(target.as_fd(), flags)
    }

    /// Opens what `Request::Open` asks for: the regular file `path`, or with `expect`, that node,
    /// found at `path` or among the files renames replaced a moment ago (see [`Replaced`]).
    fn open_expected(
        &self,
        path: &WirePath,
        flags: OFlags,
        expect: Option<&NodeId>,
    ) -> Result<OwnedFd> {
        let f = |e| fail("open", path, e);
        let err = match self.open_regular(path.as_bytes(), flags, expect) {
            Ok(fd) => return Ok(fd),
            Err(e) => e,
        };
        // With `expect`: the name names another node, or none.
        let named_another = matches!(
            err,
            Errno::STALE | Errno::NOENT | Errno::NOTDIR | Errno::ISDIR | Errno::NXIO
        );
        let Some(id) = expect.filter(|_| named_another) else {
            return Err(f(err));
        };
        match self
            .replaced
            .reopen(id, Instant::now(), |fd| reopen(fd, flags))
        {
            Some(opened) => opened.map_err(f),
            None => Err(ErrorReply::new(
                errno::ESTALE,
                format!("open {path:?}: the file the name named is gone"),
            )),
        }
    }

    pub fn lookup(&self, path: &WirePath) -> Result<Attr> {
        let (dir, name) = self.parent("lookup", path)?;
        statx_at(dir.as_fd(), name).map_err(|e| fail("lookup", path, e))
    }

    pub fn getattr(&self, path: &WirePath, fh: Option<u64>, handles: &Handles) -> Result<Attr> {
        match fh {
            Some(fh) => statx_fd(handles.get(fh)?.as_fd()).map_err(|e| fail("getattr", path, e)),
            None => self.lookup(path),
        }
    }

    pub fn setattr(
        &self,
        path: &WirePath,
        fh: Option<u64>,
        attrs: &SetAttrs,
        handles: &Handles,
    ) -> Result<Attr> {
        let f = |e| fail("setattr", path, e);
        let file = fh.map(|fh| handles.get(fh)).transpose()?;
        // With an open handle everything goes through it: the path may no longer name the file.
        let (dir, name) = match &file {
            Some(_) => (None, OsStr::new(".")),
            None => {
                let (dir, name) = self.parent("setattr", path)?;
                (Some(dir), name)
            }
        };
        let dir = || dir.as_ref().map(AsFd::as_fd).ok_or(Errno::BADF);
        // Ownership first: chown clears set-user-ID bits, a mode given in the same call must win.
        if attrs.uid.is_some() || attrs.gid.is_some() {
            let uid = attrs.uid.map(rfs::Uid::from_raw);
            let gid = attrs.gid.map(rfs::Gid::from_raw);
            match &file {
                Some(fd) => rfs::fchown(fd.as_fd(), uid, gid),
                None => {
                    dir().and_then(|d| rfs::chownat(d, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW))
                }
            }
            .map_err(f)?;
        }
        if let Some(mode) = attrs.mode {
            let mode = Mode::from_raw_mode(mode & 0o7777);
            match &file {
                Some(fd) => rfs::fchmod(fd.as_fd(), mode),
                None => {
                    let target = self
                        .open_beneath(path.as_bytes(), OFlags::PATH, Mode::empty())
                        .map_err(f)?;
                    rfs::chmodat(
                        CWD,
                        proc_fd_path(target.as_fd(), None),
                        mode,
                        AtFlags::empty(),
                    )
                }
            }
            .map_err(f)?;
        }
        if let Some(size) = attrs.size {
            match &file {
                Some(fd) => rfs::ftruncate(fd.as_fd(), size),
                None => self
                    .open_regular(path.as_bytes(), OFlags::WRONLY, None)
                    .and_then(|fd| rfs::ftruncate(&fd, size)),
            }
            .map_err(f)?;
        }
        if attrs.atime.is_some() || attrs.mtime.is_some() {
            let times = Timestamps {
                last_access: to_timespec(attrs.atime),
                last_modification: to_timespec(attrs.mtime),
            };
            match &file {
                Some(fd) => rfs::futimens(fd.as_fd(), &times),
                None => {
                    dir().and_then(|d| rfs::utimensat(d, name, &times, AtFlags::SYMLINK_NOFOLLOW))
                }
            }
            .map_err(f)?;
        }
        match &file {
            Some(fd) => statx_fd(fd.as_fd()),
            None => dir().and_then(|d| statx_at(d, name)),
        }
        .map_err(f)
    }

    /// Up to `limit` entries of directory `path` after skipping `offset`, with attributes, and
    /// the offset of the next page if there is one. Entries
    /// that vanish between listing and stat are left out.
    pub fn readdir(
        &self,
        path: &WirePath,
        offset: u64,
        limit: u32,
    ) -> Result<(Vec<DirEntry>, Option<u64>)> {
        let f = |e| fail("readdir", path, e);
        let dir = self.open_dir(path).map_err(f)?;
        let limit = limit.clamp(1, MAX_DIR_PAGE) as usize;
        let mut entries = Vec::new();
        let mut index = 0u64;
        let mut next = None;
        for entry in rfs::Dir::read_from(&dir).map_err(f)? {
            let entry = entry.map_err(f)?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            index += 1;
            if index <= offset {
                continue;
            }
            if entries.len() == limit {
                next = Some(index - 1);
                break;
            }
            match statx_at(dir.as_fd(), os(name)) {
                Ok(attr) => entries.push(DirEntry {
                    name: name.to_vec(),
                    attr,
                    next_offset: index,
                }),
                Err(Errno::NOENT) => {}
                Err(e) => return Err(f(e)),
            }
        }
        Ok((entries, next))
    }

    /// Opens the regular file `path`; returns its handle and its attributes as of the open (the
    /// bridge keeps the kernel's cached pages only if they are unchanged since they were cached). With `head` > 0 and a read-only open, also reads its first `head` bytes (capped
    /// at [`MAX_OPEN_HEAD`]), and closes it again if it ends within them (handle `None`).
    pub fn open_file(
        &self,
        path: &WirePath,
        flags: i32,
        head: u32,
        expect: Option<&NodeId>,
        handles: &Handles,
    ) -> Result<OpenedFile> {
        let flags = OFlags::from_bits_retain(flags as u32) & PASSTHROUGH_OPEN_FLAGS;
        let fd = self.open_expected(path, flags - OFlags::EXCL, expect)?;
        let read_only = flags & OFlags::ACCMODE == OFlags::RDONLY;
        let want = if read_only {
            head.min(MAX_OPEN_HEAD)
        } else {
            0
        };
        let data = if want > 0 {
            read_at(fd.as_fd(), 0, want).map_err(|e| fail("open", path, e))?
        } else {
            Vec::new()
        };
        let attr = statx_fd(fd.as_fd()).map_err(|e| fail("open", path, e))?;
        // Asked-for bytes missing: the file ended within them, and its handle is of no further use.
        if want > 0 && data.len() < want as usize {
            return Ok(OpenedFile {
                fh: None,
                attr,
                head: data,
                fd: None,
            });
        }
        let raw = u32::try_from(fd.as_raw_fd()).ok();
        Ok(OpenedFile {
            fh: Some(handles.insert(fd)?),
            attr,
            head: data,
            fd: raw,
        })
    }

    /// The small regular files of directory `path`, whole: every file smaller than `max_each` bytes
    /// (capped at [`MAX_OPEN_HEAD`]) that still fits, among the first [`MAX_DIR_PAGE`] entries, until
    /// [`MAX_HEADS_FILES`] files or [`MAX_IO_CHUNK`] bytes, each read into a buffer of its size. Each
    /// file is opened like `open_file` opens one (beneath the root, never through a symlink, never a
    /// device or FIFO), and its attributes are taken after its content was read. A file that vanishes
    /// or cannot be read is left out.
    pub fn read_heads(&self, path: &WirePath, max_each: u32) -> Result<Vec<FileHead>> {
        let f = |e| fail("readheads", path, e);
        let dir = self.open_dir(path).map_err(f)?;
        let max_each = max_each.min(MAX_OPEN_HEAD);
        let mut heads = Vec::new();
        if max_each == 0 {
            return Ok(heads);
        }
        let mut total = 0usize;
        let mut rel = path.as_bytes().to_vec();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        let prefix = rel.len();
        for entry in rfs::Dir::read_from(&dir)
            .map_err(f)?
            .take(MAX_DIR_PAGE as usize + 2)
        {
            let entry = entry.map_err(f)?;
            if !matches!(
                entry.file_type(),
                rfs::FileType::RegularFile | rfs::FileType::Unknown
            ) {
                continue;
            }
            let name = entry.file_name().to_bytes();
            rel.truncate(prefix);
            rel.extend_from_slice(name);
            let Ok(fd) = self.open_regular(&rel, OFlags::RDONLY | OFlags::NONBLOCK, None) else {
                continue;
            };
            let room = (MAX_IO_CHUNK as usize - total).min(max_each as usize - 1);
            let size = match statx_fd(fd.as_fd()) {
                Ok(a) if a.size <= room as u64 => a.size as u32,
                _ => continue,
            };
            // One byte more than the size: the file ends within what was read, or it grew.
            let Ok(data) = read_at(fd.as_fd(), 0, size + 1) else {
                continue;
            };
            if data.len() > size as usize {
                continue;
            }
            let Ok(attr) = statx_fd(fd.as_fd()) else {
                continue;
            };
            total += data.len();
            heads.push(FileHead {
                name: name.to_vec(),
                attr,
                data,
            });
            if heads.len() == MAX_HEADS_FILES as usize || total == MAX_IO_CHUNK as usize {
                break;
            }
        }
        Ok(heads)
    }

    pub fn create(
        &self,
        path: &WirePath,
        mode: u32,
        flags: i32,
        caller: Caller,
        handles: &Handles,
    ) -> Result<(u64, Attr, Attr)> {
        let f = |e| fail("create", path, e);
        let (dir, name) = self.parent("create", path)?;
        let flags = OFlags::from_bits_retain(flags as u32) & PASSTHROUGH_OPEN_FLAGS;
        let exclusive = flags.contains(OFlags::EXCL);
        let owner = self.owner_for(dir.as_fd(), caller).map_err(f)?;
        let create = || {
            rfs::openat2(
                &dir,
                name,
                flags | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                Mode::from_raw_mode(mode & 0o7777),
                RESOLVE,
            )
        };
        let created = made_as(owner, mode, create);
        let (fd, attr) = match created {
            Ok(fd) => {
                let attr = statx_fd(fd.as_fd()).map_err(f)?;
                // Only a file this call created gets the caller's ownership, through its descriptor;
                // not again when it has it already (a chown is a change event of its own, which
                // would end what the bridge knows of the new file).
                let attr = match owner {
                    Some((uid, gid)) if attr.uid_gid() != (uid.as_raw(), gid.as_raw()) => {
                        rfs::fchown(&fd, Some(uid), Some(gid)).map_err(f)?;
                        // chown clears set-user-ID and set-group-ID bits; the caller asked for them.
                        if mode & 0o6000 != 0 {
                            rfs::fchmod(&fd, Mode::from_raw_mode(mode & 0o7777)).map_err(f)?;
                        }
                        statx_fd(fd.as_fd()).map_err(f)?
                    }
                    _ => attr,
                };
                (fd, attr)
            }
            // Someone created it since the kernel looked: a plain open, as O_CREAT without O_EXCL means.
            Err(Errno::EXIST) if !exclusive => {
                let fd = self.open_regular(path.as_bytes(), flags, None).map_err(f)?;
                let attr = statx_fd(fd.as_fd()).map_err(f)?;
                (fd, attr)
            }
            Err(e) => return Err(f(e)),
        };
        let parent = statx_fd(dir.as_fd()).map_err(f)?;
        Ok((handles.insert(fd)?, attr, parent))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32, handles: &Handles) -> Result<Vec<u8>> {
        let fd = handles.get(fh)?;
        read_at(fd.as_fd(), offset, size.min(MAX_IO_CHUNK))
            .map_err(|e| ErrorReply::new(e.raw_os_error(), format!("read handle {fh}: {e}")))
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8], handles: &Handles) -> Result<u32> {
        let (done, stopped) = pwrite_all(handles.get(fh)?.as_fd(), offset, data);
        match stopped {
            Some(e) if done == 0 => Err(ErrorReply::new(
                e.raw_os_error(),
                format!("write handle {fh}: {e}"),
            )),
            stopped => {
                if let Some(e) = stopped {
                    tracing::debug!("short write on handle {fh} after {done} bytes: {e}");
                }
                // `done` is at most MAX_IO_CHUNK, enforced by the frame limit.
                Ok(u32::try_from(done).unwrap_or(u32::MAX))
            }
        }
    }

    /// Writes all of `data` at `offset`, or fails with the error that stopped it (a write the bridge
    /// acknowledged early: a short write would lose data without a word).
    pub fn write_all(&self, fh: u64, offset: u64, data: &[u8], handles: &Handles) -> Result<()> {
        match pwrite_all(handles.get(fh)?.as_fd(), offset, data) {
            (done, None) if done == data.len() => Ok(()),
            (done, None) => Err(ErrorReply::new(
                errno::EIO,
                format!("write handle {fh}: no progress after {done} bytes"),
            )),
            (done, Some(e)) => Err(ErrorReply::new(
                e.raw_os_error(),
                format!("write handle {fh} after {done} bytes: {e}"),
            )),
        }
    }

    pub fn fsync(&self, fh: u64, datasync: bool, handles: &Handles) -> Result<()> {
        let fd = handles.get(fh)?;
        if datasync {
            rfs::fdatasync(fd.as_fd())
        } else {
            rfs::fsync(fd.as_fd())
        }
        .map_err(|e| ErrorReply::new(e.raw_os_error(), format!("fsync handle {fh}: {e}")))
    }

    /// Flushes directory `path` (after renames into it, for durability).
    pub fn fsyncdir(&self, path: &WirePath, datasync: bool) -> Result<()> {
        let f = |e| fail("fsyncdir", path, e);
        let dir = self.open_dir(path).map_err(f)?;
        if datasync {
            rfs::fdatasync(&dir)
        } else {
            rfs::fsync(&dir)
        }
        .map_err(f)
    }

    /// Makes a directory; returns its attributes and its parent's after it.
    pub fn mkdir(&self, path: &WirePath, mode: u32, caller: Caller) -> Result<(Attr, Attr)> {
        let f = |e| fail("mkdir", path, e);
        let (dir, name) = self.parent("mkdir", path)?;
        let owner = self.owner_for(dir.as_fd(), caller).map_err(f)?;
        made_as(owner, mode, || {
            rfs::mkdirat(&dir, name, Mode::from_raw_mode(mode & 0o7777))
        })
        .map_err(f)?;
        self.made_owned(dir.as_fd(), name, caller).map_err(f)
    }

    pub fn mknod(
        &self,
        path: &WirePath,
        kind: NodeKind,
        mode: u32,
        caller: Caller,
    ) -> Result<(Attr, Attr)> {
        let f = |e| fail("mknod", path, e);
        let (dir, name) = self.parent("mknod", path)?;
        let (file_type, rdev) = match kind {
            NodeKind::Regular => (rfs::FileType::RegularFile, 0),
            NodeKind::Fifo => (rfs::FileType::Fifo, 0),
            NodeKind::Socket => (rfs::FileType::Socket, 0),
            NodeKind::CharDevice { rdev } => (rfs::FileType::CharacterDevice, rdev),
            NodeKind::BlockDevice { rdev } => (rfs::FileType::BlockDevice, rdev),
        };
        let owner = self.owner_for(dir.as_fd(), caller).map_err(f)?;
        // A device node needs CAP_MKNOD, which switched ids do not have: made by root (`EPERM`).
        made_as(owner, mode, || {
            rfs::mknodat(
                &dir,
                name,
                file_type,
                Mode::from_raw_mode(mode & 0o7777),
                rdev,
            )
        })
        .map_err(f)?;
        self.made_owned(dir.as_fd(), name, caller).map_err(f)
    }

    pub fn unlink(&self, path: &WirePath) -> Result<()> {
        let (dir, name) = self.parent("unlink", path)?;
        rfs::unlinkat(&dir, name, AtFlags::empty()).map_err(|e| fail("unlink", path, e))
    }

    pub fn rmdir(&self, path: &WirePath) -> Result<()> {
        let (dir, name) = self.parent("rmdir", path)?;
        rfs::unlinkat(&dir, name, AtFlags::REMOVEDIR).map_err(|e| fail("rmdir", path, e))
    }

    pub fn rename(&self, from: &WirePath, to: &WirePath, flags: u32) -> Result<()> {
        let flags = RenameFlags::from_bits(flags)
            .filter(|f| !f.contains(RenameFlags::WHITEOUT))
            .ok_or_else(|| {
                ErrorReply::new(
                    errno::EINVAL,
                    format!("rename {from:?}: unsupported flags {flags:#x}"),
                )
            })?;
        let (from_dir, from_name) = self.parent("rename", from)?;
        let (to_dir, to_name) = self.parent("rename", to)?;
        // The regular file this rename may replace, kept openable (see `Replaced`).
        let replacing = if flags.intersects(RenameFlags::EXCHANGE | RenameFlags::NOREPLACE) {
            None
        } else {
            regular_at(to_dir.as_fd(), to_name)
        };
        rfs::renameat_with(&from_dir, from_name, &to_dir, to_name, flags)
            .map_err(|e| fail("rename", from, e))?;
        if let Some((id, fd)) = replacing {
            self.replaced.keep(id, fd, Instant::now());
        }
        Ok(())
    }

    pub fn symlink(&self, path: &WirePath, target: &[u8], caller: Caller) -> Result<(Attr, Attr)> {
        let f = |e| fail("symlink", path, e);
        if target.is_empty() || target.len() > MAX_SYMLINK_LEN || target.contains(&0) {
            return Err(ErrorReply::new(
                errno::EINVAL,
                format!("symlink {path:?}: invalid target"),
            ));
        }
        let (dir, name) = self.parent("symlink", path)?;
        // The target is stored as given; the daemon never follows it.
        let owner = self.owner_for(dir.as_fd(), caller).map_err(f)?;
        made_as(owner, 0, || rfs::symlinkat(os(target), &dir, name)).map_err(f)?;
        self.made_owned(dir.as_fd(), name, caller).map_err(f)
    }

    pub fn readlink(&self, path: &WirePath) -> Result<Vec<u8>> {
        let (dir, name) = self.parent("readlink", path)?;
        rfs::readlinkat(&dir, name, Vec::new())
            .map(|t| t.into_bytes())
            .map_err(|e| fail("readlink", path, e))
    }

    pub fn link(&self, from: &WirePath, to: &WirePath) -> Result<(Attr, Attr)> {
        let f = |e| fail("link", from, e);
        let (from_dir, from_name) = self.parent("link", from)?;
        let (to_dir, to_name) = self.parent("link", to)?;
        // No AT_SYMLINK_FOLLOW: a symlink is linked as itself, never its target.
        rfs::linkat(&from_dir, from_name, &to_dir, to_name, AtFlags::empty()).map_err(f)?;
        made(to_dir.as_fd(), to_name).map_err(f)
    }

    pub fn statfs(&self) -> Result<StatFs> {
        let s = rfs::fstatvfs(&self.root)
            .map_err(|e| ErrorReply::new(e.raw_os_error(), format!("statfs: {e}")))?;
        Ok(StatFs {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: s.f_bsize as u32,
            namelen: s.f_namemax as u32,
            frsize: s.f_frsize as u32,
        })
    }

    /// The `/proc/self/fd/<parent>/<name>` path of `path`'s node, for the calls with no `*at` form.
    /// The l-variants of those calls do not follow the final component.
    fn xattr_target(&self, op: &str, path: &WirePath) -> Result<(OwnedFd, PathBuf)> {
        let (dir, name) = self.parent(op, path)?;
        let p = proc_fd_path(dir.as_fd(), Some(name));
        Ok((dir, p))
    }

    pub fn getxattr(&self, path: &WirePath, name: &[u8], size: u32) -> Result<XattrValue> {
        let (_dir, p) = self.xattr_target("getxattr", path)?;
        let f = |e| fail("getxattr", path, e);
        if size == 0 {
            return rfs::lgetxattr_query(&p, os(name))
                .map(|n| XattrValue::Size(n as u32))
                .map_err(f);
        }
        let mut buf = vec![0u8; size.min(MAX_IO_CHUNK) as usize];
        let n = rfs::lgetxattr(&p, os(name), &mut buf[..]).map_err(f)?;
        buf.truncate(n);
        Ok(XattrValue::Data(buf))
    }

    pub fn listxattr(&self, path: &WirePath, size: u32) -> Result<XattrValue> {
        let (_dir, p) = self.xattr_target("listxattr", path)?;
        let f = |e| fail("listxattr", path, e);
        if size == 0 {
            return rfs::llistxattr_query(&p)
                .map(|n| XattrValue::Size(n as u32))
                .map_err(f);
        }
        let mut buf = vec![0u8; size.min(MAX_IO_CHUNK) as usize];
        let n = rfs::llistxattr(&p, &mut buf[..]).map_err(f)?;
        buf.truncate(n);
        Ok(XattrValue::Data(buf))
    }

    pub fn setxattr(&self, path: &WirePath, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        let (_dir, p) = self.xattr_target("setxattr", path)?;
        let flags = XattrFlags::from_bits(flags as u32).ok_or_else(|| {
            ErrorReply::new(
                errno::EINVAL,
                format!("setxattr {path:?}: bad flags {flags:#x}"),
            )
        })?;
        rfs::lsetxattr(&p, os(name), value, flags).map_err(|e| fail("setxattr", path, e))
    }

    pub fn removexattr(&self, path: &WirePath, name: &[u8]) -> Result<()> {
        let (_dir, p) = self.xattr_target("removexattr", path)?;
        rfs::lremovexattr(&p, os(name)).map_err(|e| fail("removexattr", path, e))
    }
}

/// An xattr value or list, or only its size when the caller asked for the size.
pub enum XattrValue {
    Data(Vec<u8>),
    Size(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wp(s: &str) -> WirePath {
        WirePath::new(s.as_bytes().to_vec()).expect("valid path")
    }

    #[test]
    fn read_heads_returns_small_regular_files_whole_and_nothing_else() {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path().join("d");
        std::fs::create_dir(&d).expect("mkdir");
        std::fs::write(d.join("a"), b"alpha").expect("write");
        std::fs::write(d.join("empty"), b"").expect("write");
        std::fs::write(d.join("big"), vec![7u8; 100]).expect("write");
        std::fs::write(dir.path().join("outside"), b"secret").expect("write");
        std::os::unix::fs::symlink("../outside", d.join("link")).expect("symlink");
        std::os::unix::fs::symlink("a", d.join("link_in")).expect("symlink");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            d.join("fifo"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .expect("mkfifo");
        std::fs::create_dir(d.join("sub")).expect("mkdir");
        let ws = Workspace::open(dir.path(), None).expect("workspace");
        let mut heads = ws.read_heads(&wp("d"), 100).expect("read_heads");
        heads.sort_by(|x, y| x.name.cmp(&y.name));
        let got: Vec<(&[u8], &[u8], u64)> = heads
            .iter()
            .map(|h| (&h.name[..], &h.data[..], h.attr.size))
            .collect();
        assert_eq!(
            got,
            vec![(&b"a"[..], &b"alpha"[..], 5), (&b"empty"[..], &b""[..], 0)],
            "a file of max_each bytes, symlinks, a FIFO and a directory are left out"
        );
        assert!(ws.read_heads(&wp("d"), 0).expect("read_heads").is_empty());
    }

    #[test]
    fn new_nodes_belong_to_the_owner_also_where_only_the_daemon_may_make_them() {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test needs root: the daemon gives new nodes to the workspace's owner"
        );
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().expect("temp dir");
        let owner = Owner {
            uid: 4242,
            gid: 4343,
        };
        let ws = Workspace::open(dir.path(), Some(owner)).expect("workspace");
        let (handles, caller) = (Handles::default(), Caller { uid: 0, gid: 0 });
        // Attribute changes in the root, to tell a node made as its owner from one given to it by a
        // chown (each chown is a change event the bridge would receive).
        let (tx, events) = std::sync::mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
            let _ = tx.send(e);
        })
        .expect("watcher");
        notify::Watcher::watch(
            &mut watcher,
            dir.path(),
            notify::RecursiveMode::NonRecursive,
        )
        .expect("watch");
        let ids = |rel: &str| {
            let m = std::fs::symlink_metadata(dir.path().join(rel)).expect("stat");
            (m.uid(), m.gid(), m.mode() & 0o7777)
        };
        let wronly = libc::O_WRONLY;
        // Made as the owner (no chown after).
        ws.create(&wp("f"), 0o640, wronly, caller, &handles)
            .expect("create");
        ws.mkdir(&wp("d"), 0o750, caller).expect("mkdir");
        assert_eq!(ids("f"), (4242, 4343, 0o640));
        assert_eq!(ids("d"), (4242, 4343, 0o750));
        // Every event before the marker's creation is in (inotify keeps one watch's order).
        std::fs::write(dir.path().join("marker"), b"").expect("write");
        let mut chowned = Vec::new();
        loop {
            let event = events
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("the marker's event within 10 s")
                .expect("event");
            if event.paths.iter().any(|p| p.ends_with("marker")) {
                break;
            }
            if let notify::EventKind::Modify(notify::event::ModifyKind::Metadata(_)) = event.kind {
                chowned.extend(event.paths);
            }
        }
        assert!(
            chowned.is_empty(),
            "attributes changed after the create: {chowned:?}"
        );
        drop(watcher);
        // A directory of root's that the owner may not write to: made by the daemon, then given.
        std::fs::create_dir(dir.path().join("locked")).expect("mkdir");
        std::fs::set_permissions(dir.path().join("locked"), PermissionsExt::from_mode(0o755))
            .expect("chmod");
        ws.create(&wp("locked/g"), 0o600, wronly, caller, &handles)
            .expect("create");
        ws.mkdir(&wp("locked/e"), 0o700, caller).expect("mkdir");
        assert_eq!(ids("locked/g"), (4242, 4343, 0o600));
        assert_eq!(ids("locked/e"), (4242, 4343, 0o700));
        // Set-ID bits asked for are kept.
        ws.create(&wp("s"), 0o4755, wronly, caller, &handles)
            .expect("create");
        assert_eq!(ids("s"), (4242, 4343, 0o4755));
        // The thread's own file-system ids are back: what it makes itself is root's.
        std::fs::write(dir.path().join("plain"), b"x").expect("write");
        assert_eq!(ids("plain").0, 0);
        assert_eq!(ids("plain").1, 0);
    }

    #[test]
    fn read_heads_stops_at_its_byte_budget() {
        let dir = tempfile::tempdir().expect("temp dir");
        let each = 100 * 1024;
        for i in 0..20 {
            std::fs::write(dir.path().join(format!("f{i:02}")), vec![i as u8; each])
                .expect("write");
        }
        let ws = Workspace::open(dir.path(), None).expect("workspace");
        let heads = ws
            .read_heads(&WirePath::root(), MAX_OPEN_HEAD)
            .expect("read_heads");
        let total: usize = heads.iter().map(|h| h.data.len()).sum();
        assert!(total <= MAX_IO_CHUNK as usize, "{total} bytes");
        assert_eq!(heads.len(), MAX_IO_CHUNK as usize / each);
        for h in &heads {
            assert_eq!(h.data.len(), each);
            assert!(h.data.capacity() <= each + 1, "a buffer sized to its file");
        }
    }
}
