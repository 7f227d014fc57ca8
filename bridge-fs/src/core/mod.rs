//! The bridge's file system logic, free of FUSE: what [`crate::fuse`] forwards every kernel call to.
//!
//! The mount root (inode 1) is synthesized from the registry: one directory per session. Every inode
//! below belongs to one session; each operation rebuilds its path from the inode table, then runs as a
//! tokio task that sends one request to that session's daemon (through a [`crate::link::Link`]) and
//! answers the kernel from there through a reply trait ([`reply`]). Request handlers therefore never
//! wait on the network, and a slow session never blocks another.
//!
//! Directory listings are fetched a page at a time (the page a listing continues in is kept until
//! read to its end), or taken from read-ahead during tree walks ([`crate::read_ahead`]);
//! `readdirplus` is negotiated so entries arrive with their attributes and inode numbers agree with
//! `stat`. A walk that reads the files it lists gets each directory's small files in one round trip
//! ([`crate::heads_ahead`]).
//!
//! - [`ops`]: one method per kernel call; [`request`]: how a call reaches a daemon and is answered;
//! - [`memory`]: what is answered from memory and how changes void it; [`invalidate`]: the
//!   invalidator thread;
//! - [`dirs`]: listings; [`files`]: opens, heads, direct data.

mod dirs;
mod files;
mod invalidate;
mod locks;
mod memory;
mod ops;
pub mod reply;
mod request;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, OpenFlags, RenameFlags,
};
use sessionfs_proto::{
    errno, Attr, BatchedChange, BatchedWrite, Caller, Change, DirEntry, EntryNow, ErrorReply,
    NodeId, NodeKind, Reply, Request, SetAttrs, Timestamp, WirePath, MAX_DIR_PAGE, S_IFBLK,
    S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK,
};
use tracing::{debug, warn};

use crate::session::Invalidation;

use self::locks::{Level, Ordered};

pub use self::reply::{
    AttrReply, Backing, CreateReply, DataReply, DirPlusReply, DirReply, EmptyReply, EntryReply,
    Fail, Notify, OpenReply, StatfsReply, WriteReply, XattrReply,
};
use crate::direct::{Direct, DIRECT_MIN};
use crate::heads_ahead::{Fetched, Found, HeadsAhead};
use crate::inodes::{InodeTable, NodeRef, Stale, ROOT_INO};
use crate::known::Known;
use crate::link::Conn;
use crate::made_dirs::MadeDirs;
use crate::negative::NegativeEntries;
use crate::read_ahead::{Claim, ReadAhead};
use crate::replied::Replied;
use crate::session::{Session, Sessions};
use crate::walk::Walk;
use crate::write_behind::{Deferred, Refused, Then};

/// An open file: its inode and session, and the daemon's handle for it.
struct OpenFile {
    /// The inode the file was opened on.
    ino: u64,
    session: Arc<Session>,
    /// The daemon's handle and the connection that holds it: set at the open, or, for a read-only
    /// open answered from the kernel's cache, by the first request that needs it (see
    /// [`Inner::remote_handle`]).
    remote: tokio::sync::OnceCell<RemoteHandle>,
    /// The open flags, for a deferred open.
    flags: i32,
    /// The file's first bytes, read with the open, until the kernel has read past them.
    head: Ordered<Option<Head>>,
    /// For a file this handle created: its attributes as the mount's changes left them, while
    /// nothing else changed it (see [`crate::known`]).
    known: Ordered<Option<Known>>,
    /// The kernel reads and writes it directly (see [`crate::direct`]): one of its inode's handles in
    /// the direct table.
    direct: bool,
}

/// Where a new handle's data goes.
// Built for one call and moved into the handle: its size costs nothing.
#[allow(clippy::large_enum_variant)]
enum Data {
    /// Through the bridge, with the file's first bytes if its open brought them, and what is known
    /// of a file the handle created.
    Bridge {
        head: Option<Head>,
        known: Option<Known>,
    },
    /// Directly (see [`crate::direct`]): the handle was counted in the direct table.
    Direct,
}

impl OpenFile {
    /// Accounts change `number` (through this handle) with `change` in what the handle knows of its
    /// file, and returns the attributes after it; if anything else came between, the record ends.
    fn account(&self, number: u64, change: impl FnOnce(&mut Known)) -> Option<Attr> {
        let mut known = self.known.lock();
        match known.as_mut() {
            Some(k) if k.followed_by(number) => {
                change(k);
                Some(*k.attr())
            }
            _ => {
                *known = None;
                None
            }
        }
    }
}

/// An unlink or rename through the mount taking a name of inode `ino`, from before its request is
/// sent until the inode table has its result (see [`Inner::unopened_handles_of`]).
struct LosingName {
    inner: Arc<Inner>,
    ino: u64,
}

impl Drop for LosingName {
    fn drop(&mut self) {
        let mut files = self.inner.files.lock();
        if let Some(n) = files.losing.get_mut(&self.ino) {
            *n -= 1;
            if *n == 0 {
                files.losing.remove(&self.ino);
            }
        }
    }
}

/// The reply to an open through the daemon: an `ESTALE` failure (the kernel then walks the path
/// again) first drops what the bridge remembers that could answer that walk with the same file (see
/// [`Inner::open_went_stale`]).
struct StaleOnFail<R> {
    reply: R,
    ino: u64,
    inner: Arc<Inner>,
}

impl<R: OpenReply> Fail for StaleOnFail<R> {
    fn error(self, e: Errno) {
        if e == Errno::ESTALE {
            self.inner.open_went_stale(self.ino);
        }
        self.reply.error(e)
    }
}

/// The first bytes of a file, read with its open (see [`Request::Open`]). They are served only while
/// the file's page stamp is still `stamp`: an invalidation of the file drops the stamp, and the
/// handle then reads through the daemon (opening its handle by the current path if the open left none).
struct Head {
    data: Vec<u8>,
    /// The file ends with `data` (the daemon closed it: reads past `data` are at its end).
    whole: bool,
    /// The version the bytes are of.
    stamp: ContentStamp,
    /// The attribute epoch when the open began: a change through the mount since (a write through
    /// another handle, a truncate) voids the bytes.
    epoch: u64,
}

/// How many bytes a read-only open asks to have read with it: most source files fit.
const OPEN_HEAD: u32 = 128 * 1024;

/// How long a write acknowledged before it was written may wait for a request to carry it before it
/// is pushed on its own (see [`crate::write_behind`]): a host write shows in the session within this
/// and a round trip, closed or not.
const WRITE_BEHIND_DELAY: Duration = Duration::from_millis(5);

/// Whether an open with `flags` may change the file: opened to write, or truncating.
fn may_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

/// Whether writes through a handle opened with `flags` may be acknowledged before they are written:
/// not for appends (the daemon places them), nor for synchronous or direct I/O (the caller asked to
/// wait).
/// Opens of daemons' descriptors that may be under way at once (see `Inner::prepare_direct`).
const MAX_PREPARING: usize = 16;

fn deferrable(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY
        && flags & (libc::O_APPEND | libc::O_SYNC | libc::O_DSYNC | libc::O_DIRECT) == 0
}

/// How a fetch made for a walk ended, as the requests waiting for it see it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum FetchEnd {
    Pending,
    Done,
    /// The daemon did not answer within the operation timeout: the requests that waited fail the
    /// same way instead of waiting as long again.
    TimedOut,
}

impl FetchEnd {
    fn of<T>(reply: &Result<T, ErrorReply>) -> Self {
        match reply {
            Err(e) if e.errno == errno::ETIMEDOUT => FetchEnd::TimedOut,
            _ => FetchEnd::Done,
        }
    }
}

/// What a request waits on for a fetch under way (see [`crate::walk`]).
type FetchWaiter = tokio::sync::watch::Receiver<FetchEnd>;

/// Waits for a fetch to end (bounded: the fetch is one request, bounded like every request);
/// `ETIMEDOUT` if the daemon did not answer it in time.
async fn fetch_ended(mut waiter: FetchWaiter) -> Result<(), Errno> {
    match waiter.wait_for(|end| *end != FetchEnd::Pending).await {
        Ok(end) if *end == FetchEnd::TimedOut => Err(Errno::ETIMEDOUT),
        _ => Ok(()),
    }
}

/// An open on its way to the daemon, or answered from a file fetched ahead.
struct RemoteOpen {
    caller: Caller,
    ino: u64,
    flags: i32,
    read_only: bool,
    /// Held until the reply is handled when the open changes the file (`O_TRUNC`).
    mutation: Option<Mutation>,
    /// The attribute epoch when the open began.
    epoch: u64,
    /// The node the kernel opens, as the daemon knows it (see [`Request::Open`]).
    expect: Option<NodeId>,
}

impl RemoteOpen {
    /// The flags of the open's reply; `keep`: the kernel keeps its pages of the file.
    fn fopen_flags(&self, keep: bool) -> FopenFlags {
        // A read-only handle needs no FLUSH at close (nothing to push, locks are the host's).
        let base = if self.read_only {
            FopenFlags::FOPEN_NOFLUSH
        } else {
            FopenFlags::empty()
        };
        if keep {
            base | FopenFlags::FOPEN_KEEP_CACHE
        } else {
            base
        }
    }
}

/// A daemon file handle on one connection.
#[derive(Clone)]
struct RemoteHandle {
    conn: Conn,
    fh: u64,
}

/// The names of a directory and their attributes, from a listing fetched whole at invalidation
/// generation `generation`. While the session's generation is unchanged and nothing changed through
/// the mount, a name not among them does not exist and a name among them has those attributes.
struct Listing {
    generation: u64,
    /// The attribute epoch when the listing was requested: a change through the mount since voids it.
    epoch: u64,
    entries: HashMap<Vec<u8>, Attr>,
}

/// At most this many names are kept in [`Listing`]s; beyond it they are all dropped.
const LISTED_NAMES_MAX: usize = 65_536;

/// What a current complete listing says of a name (see [`Inner::listed`]).
enum Listed {
    Missing { since: u64 },
    Present { since: u64, epoch: u64, attr: Attr },
}

/// A directory being listed: its inode, session and current path.
struct DirRef {
    ino: u64,
    session: Arc<Session>,
    path: WirePath,
}

/// A page of entries and where it came from.
struct DirPage {
    /// The daemon offset the page was fetched at.
    start: u64,
    entries: Vec<DirEntry>,
    /// Whether the directory continues after the page.
    more: bool,
    fetched: Instant,
    /// The session's invalidation generation when the page was requested.
    generation: u64,
    /// Fetched ahead of the kernel's read (see [`crate::read_ahead`]).
    ahead: bool,
    /// The attribute epoch when the page was requested (see [`AttrCache`]).
    attr_epoch: u64,
}

impl DirPage {
    /// The entries after daemon offset `offset`, if this page can answer for it.
    fn after(&self, offset: u64) -> Option<&[DirEntry]> {
        if offset < self.start {
            return None;
        }
        let i = self.entries.partition_point(|e| e.next_offset <= offset);
        if i == self.entries.len() && self.more {
            return None;
        }
        Some(&self.entries[i..])
    }
}

/// What identifies a version of a file's content: its size and its modification and change times.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct ContentStamp {
    size: u64,
    mtime: Timestamp,
    ctime: Timestamp,
}

impl ContentStamp {
    fn of(a: &Attr) -> Self {
        ContentStamp {
            size: a.size,
            mtime: a.mtime,
            ctime: a.ctime,
        }
    }
}

/// Attributes last answered per inode of a watched session, so that a `getattr` the kernel sends only
/// because it invalidated the atime itself (after every read and listing it got from the bridge) is
/// answered without a round trip. An invalidation of the inode drops its entry; the epoch moves at
/// every change made through the mount (when it starts and when it ends, see [`Mutation`]). A change
/// that may touch any node (a create, a rename …) empties the cache, and attributes read by a request
/// that started before it are not kept; a change of one inode's content or attributes (a write, a
/// setattr) does that for that inode alone: the directory a `tar` is filling keeps its attributes
/// while the files in it are written.
#[derive(Default)]
struct AttrCache {
    attrs: HashMap<u64, Attr>,
    epoch: u64,
    /// The epoch of the last change that may have touched any node.
    all_changed_at: u64,
    /// Per inode, the epoch of the last change of it alone, since `all_changed_at`.
    changed_at: HashMap<u64, u64>,
}

/// At most this many inodes' attributes are remembered.
const ATTR_CACHE_MAX: usize = 1 << 18;

impl AttrCache {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Keeps those of `attrs` that no change crossed since epoch `epoch` (when they were read);
    /// `false` if a change of any node did.
    fn insert(&mut self, epoch: u64, attrs: &[(u64, Attr)]) -> bool {
        if epoch < self.all_changed_at {
            return false;
        }
        if self.attrs.len() + attrs.len() > ATTR_CACHE_MAX {
            self.attrs.clear();
        }
        let changed_at = &self.changed_at;
        let unchanged = attrs
            .iter()
            .filter(|(ino, _)| changed_at.get(ino).is_none_or(|&at| at <= epoch));
        self.attrs.extend(unchanged.copied());
        true
    }

    fn get(&self, ino: u64) -> Option<Attr> {
        self.attrs.get(&ino).copied()
    }

    fn remove(&mut self, ino: u64) {
        self.attrs.remove(&ino);
    }

    /// A change through the mount starts or ends; returns the new epoch.
    fn changed(&mut self) -> u64 {
        self.epoch += 1;
        self.all_changed_at = self.epoch;
        self.attrs.clear();
        self.changed_at.clear();
        self.epoch
    }

    /// A change through the mount of `ino`'s content or attributes alone starts or ends; returns
    /// the new epoch.
    fn changed_one(&mut self, ino: u64) -> u64 {
        if self.changed_at.len() >= ATTR_CACHE_MAX {
            return self.changed();
        }
        self.epoch += 1;
        self.attrs.remove(&ino);
        self.changed_at.insert(ino, self.epoch);
        self.epoch
    }
}

/// The session a call goes to and its request, or why it cannot be sent.
type Target = Result<(Arc<Session>, Request), Errno>;

/// An entry to check: directory inode, name, and the session and path to look it up with (if any).
type EntryCheck = (u64, Vec<u8>, Option<(Arc<Session>, WirePath)>);

/// Lookups in flight while checking which dentries a change invalidated.
const VERIFY_CONCURRENCY: usize = 32;

/// Directory listings fetched ahead at once, for the whole mount (the daemons have few cores).
const READ_AHEAD_CONCURRENCY: usize = 4;

/// The extended attribute the kernel reads before every write to a file (to drop the file's
/// capabilities, as a write must), which no ordinary file has.
const CAPABILITY_XATTR: &[u8] = b"security.capability";
/// At most this many inodes are remembered as having no [`CAPABILITY_XATTR`].
const NO_CAPABILITY_MAX: usize = 1 << 20;

/// Kernel directory offsets: 1 and 2 follow `.` and `..`; an entry's is 2 + its daemon offset.
const DOT_ENTRIES: u64 = 2;

/// The bridge file system. Cheap to clone into tasks.
#[derive(Clone)]
pub struct Core {
    inner: Arc<Inner>,
}

/// What the bridge answers from memory on the daemons' behalf, and the bookkeeping that decides
/// when it may: voided together by changes, so one owner with one lock ([`Level::Memory`], the last
/// in the order).
struct Memory {
    /// See [`AttrCache`].
    attrs: AttrCache,
    /// Per directory inode: its names, from its last complete listing (lookups of other names are
    /// answered as missing without a round trip while nothing changed: `.gitignore` and friends),
    /// and how many names they hold together.
    listings: HashMap<u64, Listing>,
    listed_names: usize,
    /// Per directory inode: the last page of entries fetched, kept until the kernel has read to its
    /// end (a listing is read in several calls when it does not fit one reply).
    dir_pages: HashMap<u64, Arc<DirPage>>,
    /// Listings fetched ahead during tree walks, and the walk bookkeeping.
    read_ahead: ReadAhead<Arc<DirPage>>,
    /// Small files fetched ahead for walks that read them; an open waits on the receiver for a
    /// fetch under way.
    heads_ahead: HeadsAhead<FetchWaiter>,
    /// Directories whose listings are fetched for a walk that looks their names up (`git status`
    /// checking every file of its index); the listings land in `listings`.
    lookups_ahead: Walk<FetchWaiter>,
    /// Per file inode: its content version when the kernel last started caching its pages (at an
    /// open that dropped the cache). An open of an unchanged file keeps the cache (close-to-open).
    page_stamps: HashMap<u64, ContentStamp>,
    /// File inodes of watched sessions known to have no [`CAPABILITY_XATTR`]: the kernel's read of
    /// it before each write is answered without a round trip. A change of the inode drops it,
    /// except a change of its content alone ([`Change::Data`]: a write cannot add a capability).
    no_capability: std::collections::HashSet<u64>,
    /// The names the kernel caches as missing (see [`crate::negative`]).
    negatives: NegativeEntries,
    /// What lookups answered a moment ago (see [`crate::replied`]).
    replied: Replied,
    /// Directories the mount made and the names that may exist in them (see [`crate::made_dirs`]).
    made_dirs: MadeDirs,
    /// Directories whose listing the kernel may keep in its readdir cache: answered since their
    /// last invalidation. A name that appears behind the mount and is bound by a lookup before its
    /// change event needs no entry invalidation, but such a listing lacks it.
    listed_dirs: std::collections::HashSet<u64>,
}

impl Memory {
    /// The kernel forgot inode `ino`: what is remembered of it, and of the entries below it, goes
    /// (changes reported while the kernel does not know the inode cannot find it).
    fn forget(&mut self, ino: u64) {
        self.negatives.forget_dir(ino);
        self.dir_pages.remove(&ino);
        if let Some(old) = self.listings.remove(&ino) {
            self.listed_names -= old.entries.len();
        }
        self.attrs.remove(ino);
        self.made_dirs.forget(ino);
        self.no_capability.remove(&ino);
        self.page_stamps.remove(&ino);
        self.listed_dirs.remove(&ino);
    }
}

/// The open files ([`Level::Files`]).
#[derive(Default)]
struct Files {
    open: HashMap<u64, Arc<OpenFile>>,
    /// Per file inode, the open handle that created it and may know its attributes (see
    /// [`crate::known`]); until that handle is released.
    knowing: HashMap<u64, u64>,
    /// Files an unlink or rename through the mount is taking the name of, with how many such calls
    /// are in flight: they are not opened without a daemon handle meanwhile (see
    /// [`Inner::unopened_handles_of`]).
    losing: HashMap<u64, usize>,
}

/// The file system's state. Its four locks are taken in one order, checked in debug builds
/// ([`locks::Level`]): `direct`, `files` (then an open file's own), `inodes`, `memory`.
struct Inner {
    rt: tokio::runtime::Handle,
    sessions: Arc<Sessions>,
    /// Inodes whose handles have direct data (see [`crate::direct`]): taken by every open that adds
    /// a handle and every release that removes one, before the file table, so that a handle of the
    /// other kind cannot come between; and by what answers a file's attributes from memory (a
    /// listing, a page of entries, a fetched file), so that a writable direct start or end
    /// ([`Inner::direct_change`]) cannot come between its check and its answer.
    direct: Ordered<Direct>,
    files: Ordered<Files>,
    inodes: Ordered<InodeTable>,
    memory: Ordered<Memory>,
    read_ahead_slots: Arc<tokio::sync::Semaphore>,
    /// Changes through the mount started so far, and those under way that are writes acknowledged
    /// early (see [`Mutation`]).
    started: AtomicU64,
    deferred: std::sync::atomic::AtomicUsize,
    /// Changes through the mount under way (see [`Mutation`]).
    mutating: std::sync::atomic::AtomicUsize,
    next_fh: AtomicU64,
    /// The kernel lets OPENDIR be skipped (see `opendir`); set at `init`.
    no_opendir: AtomicBool,
    /// Cache lifetime of entries and attributes of sessions whose changes are not pushed.
    ttl: Duration,
    /// Cache lifetime while a session's changes are pushed (invalidation keeps it coherent).
    watched_ttl: Duration,
    /// The kernel accepted passthrough at `INIT`.
    passthrough: AtomicBool,
    /// Opens of daemons' descriptors under way (see `Inner::prepare_direct`): a file system that
    /// hangs can hold at most this many blocking threads; past it, data goes through the bridge.
    preparing: Arc<tokio::sync::Semaphore>,
    /// Owner and time shown for the mount root.
    root_uid: u32,
    root_gid: u32,
    mounted_at: SystemTime,
}

fn errno_of(e: &ErrorReply) -> Errno {
    match e.errno {
        errno::ENOENT | errno::EEXIST | errno::ENOTEMPTY | errno::ENODATA => {
            debug!("{e}");
        }
        errno::ENOTCONN | errno::ETIMEDOUT | errno::EIO | errno::EPROTO => warn!("{e}"),
        _ => debug!("{e}"),
    }
    Errno::from_i32(e.errno)
}

fn stale_errno(s: Stale) -> Errno {
    match s {
        Stale::UnknownInode => Errno::ESTALE,
        Stale::Detached => Errno::ESTALE,
        Stale::TooLong => Errno::ENAMETOOLONG,
    }
}

fn system_time(t: Timestamp) -> SystemTime {
    if t.secs >= 0 {
        UNIX_EPOCH + Duration::new(t.secs as u64, t.nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs())
            + Duration::from_nanos(u64::from(t.nanos))
    }
}

fn file_type(mode: u32) -> FileType {
    match mode & S_IFMT {
        S_IFDIR => FileType::Directory,
        S_IFLNK => FileType::Symlink,
        S_IFIFO => FileType::NamedPipe,
        S_IFSOCK => FileType::Socket,
        S_IFCHR => FileType::CharDevice,
        S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// The kernel's view of daemon attributes `a` for inode `ino`.
fn file_attr(ino: u64, a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: a.size,
        blocks: a.blocks,
        atime: system_time(a.atime),
        mtime: system_time(a.mtime),
        ctime: system_time(a.ctime),
        crtime: a.btime.map_or(UNIX_EPOCH, system_time),
        kind: file_type(a.mode),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev as u32,
        blksize: a.blksize,
        flags: 0,
    }
}

/// The attributes sent with a negative entry (the kernel reads none of them).
fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn unexpected(reply: &Reply) -> Errno {
    warn!("daemon sent an unexpected reply: {reply:?}");
    Errno::EIO
}

/// A change made through the mount, from its start until its reply (or failure) has been handled:
/// what the bridge answers from memory on the daemon's behalf (listings fetched ahead, remembered
/// attributes) is voided when it starts and again when it ends, so nothing read while it ran, which
/// may predate it, is kept. While any runs, listings and fetched files answer nothing (the kernel
/// may already have the change's reply before it ends).
///
/// A change's own reply may be remembered (see [`Mutation::end`]) when no other change through the
/// mount can have come between it and the daemon's answer.
struct Mutation {
    inner: Arc<Inner>,
    /// Its number among all changes started (see `Inner::started`).
    number: u64,
    /// Every change under way when it started was a write acknowledged early: those are applied
    /// before any request sent after them (see [`crate::write_behind`]), this one's included.
    only_writes_before: bool,
    /// The inode whose content or attributes alone it changes (a write, a setattr), if so.
    only_of: Option<u64>,
    ended: bool,
}

impl Mutation {
    /// Ends the change. Returns the attribute epoch after it if what its reply said is still what
    /// the daemon holds as far as the mount knows: no other change started since it did, and every
    /// change under way when it started reached the daemon before it. Changes made elsewhere are the
    /// session generation's business (see [`Inner::keep_attrs`]).
    fn end(&mut self) -> Option<u64> {
        if std::mem::replace(&mut self.ended, true) {
            return None;
        }
        let epoch = self.inner.void_answers(self.only_of);
        self.inner.mutating.fetch_sub(1, Ordering::AcqRel);
        let alone =
            self.only_writes_before && self.inner.started.load(Ordering::Acquire) == self.number;
        alone.then_some(epoch)
    }
}

impl Drop for Mutation {
    fn drop(&mut self) {
        self.end();
    }
}

/// The [`Mutation`] of a write acknowledged before it was written, held until it lands.
struct DeferredWrite(Mutation);

impl DeferredWrite {
    fn new(mutation: Mutation) -> Self {
        mutation.inner.deferred.fetch_add(1, Ordering::AcqRel);
        DeferredWrite(mutation)
    }
}

impl Drop for DeferredWrite {
    fn drop(&mut self) {
        self.0.inner.deferred.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A name a call is about to bind (mkdir, create, link, symlink, mknod, the target of a rename).
/// When the call succeeds the kernel turns its negative entry for the name, if it holds one, into the
/// new node; so the record is dropped before the call is sent, or a change event overtaking the reply
/// would invalidate the new entry (and detach a working directory made by `mkdir`). If the call fails
/// the kernel keeps the negative entry, which may be stale by now: a binding dropped without
/// [`Binding::bound`] queues its invalidation.
struct Binding {
    sessions: Arc<Sessions>,
    dir: u64,
    name: Vec<u8>,
    negative: bool,
}

impl Binding {
    /// The name is bound: the kernel replaced its negative entry.
    fn bound(mut self) {
        self.negative = false;
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        if self.negative {
            self.sessions.invalidate(Invalidation::Missing {
                dir: self.dir,
                name: std::mem::take(&mut self.name),
            });
        }
    }
}

/// Where an entry [`Inner::reply_entry`] answers came from.
enum EntryFrom<'a> {
    /// A lookup that started at this generation and attribute epoch of the session: the attributes
    /// are remembered (before the kernel can forget the inode again, see [`Inner::keep_attrs`]).
    Lookup(&'a Session, u64, u64),
    /// A call that made the node at this path, started at this generation of the session: a
    /// directory's names are then followed (see [`crate::made_dirs`]).
    Made(&'a Session, u64, &'a WirePath),
}

/// What a successful remote call hands to its continuation.
struct Answered {
    session: Arc<Session>,
    conn: Conn,
    /// How long the kernel may cache what the reply says (see [`Inner::ttl_for`]).
    ttl: Duration,
    /// The session's invalidation generation when the request started.
    since: u64,
}

impl Core {
    /// A file system over `sessions`, running its requests on `rt`.
    pub fn new(
        rt: tokio::runtime::Handle,
        sessions: Arc<Sessions>,
        ttl: Duration,
        watched_ttl: Duration,
    ) -> Self {
        Core {
            inner: Arc::new(Inner {
                rt,
                sessions,
                direct: Ordered::new(Level::Direct, Direct::default()),
                files: Ordered::new(Level::Files, Files::default()),
                inodes: Ordered::new(Level::Inodes, InodeTable::default()),
                memory: Ordered::new(
                    Level::Memory,
                    Memory {
                        attrs: AttrCache::default(),
                        listings: HashMap::new(),
                        listed_names: 0,
                        dir_pages: HashMap::new(),
                        read_ahead: ReadAhead::default(),
                        heads_ahead: HeadsAhead::default(),
                        lookups_ahead: Walk::default(),
                        page_stamps: HashMap::new(),
                        no_capability: std::collections::HashSet::new(),
                        negatives: NegativeEntries::new(watched_ttl),
                        replied: Replied::default(),
                        made_dirs: MadeDirs::default(),
                        listed_dirs: std::collections::HashSet::new(),
                    },
                ),
                read_ahead_slots: Arc::new(tokio::sync::Semaphore::new(READ_AHEAD_CONCURRENCY)),
                started: AtomicU64::new(0),
                deferred: std::sync::atomic::AtomicUsize::new(0),
                mutating: std::sync::atomic::AtomicUsize::new(0),
                next_fh: AtomicU64::new(1),
                no_opendir: AtomicBool::new(false),
                ttl,
                watched_ttl,
                passthrough: AtomicBool::new(false),
                preparing: Arc::new(tokio::sync::Semaphore::new(MAX_PREPARING)),
                root_uid: rustix::process::geteuid().as_raw(),
                root_gid: rustix::process::getegid().as_raw(),
                mounted_at: SystemTime::now(),
            }),
        }
    }

    /// Starts the invalidator thread, which turns the daemons' change notifications into kernel cache
    /// invalidations through `notifier`, and routes the sessions' notifications to it. Notifications
    /// are sent from this dedicated thread, never from a request handler (the kernel may wait for
    /// FUSE answers while it processes them). The thread ends with the file system (it holds it
    /// weakly: the sessions it serves hold its queue).
    pub fn start_invalidator(&self, notifier: impl Notify) -> std::io::Result<()> {
        let (tx, rx) = std::sync::mpsc::channel::<Invalidation>();
        let inner = Arc::downgrade(&self.inner);
        std::thread::Builder::new()
            .name("sessionfs-inval".into())
            .spawn(move || {
                for work in rx {
                    let Some(inner) = inner.upgrade() else { return };
                    inner.invalidate(&notifier, work);
                }
            })?;
        self.inner.sessions.set_invalidator(tx);
        Ok(())
    }

    /// What the kernel accepted at `INIT`: direct data (passthrough), and skipping OPENDIR (see
    /// `opendir`).
    pub fn kernel_accepted(&self, passthrough: bool, no_opendir: bool) {
        self.inner.passthrough.store(passthrough, Ordering::Relaxed);
        self.inner.no_opendir.store(no_opendir, Ordering::Relaxed);
    }

    /// At unmount: writes acknowledged to files still open are sent before the connections close.
    pub fn destroy(&self) {
        if tokio::runtime::Handle::try_current().is_err() {
            let sessions = self.inner.sessions.clone();
            self.inner.rt.block_on(async {
                for id in sessions.ids() {
                    if let Some(session) = sessions.get(id.as_str()) {
                        sessions.push(&session).await;
                    }
                }
            });
        }
        self.inner.sessions.close_all();
    }

    fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) {
        self.inner.rt.spawn(f);
    }

    /// The session and path of `ino`; `Err` for the mount root or an unknown inode.
    fn node(&self, ino: INodeNo) -> Result<(Arc<Session>, WirePath), Errno> {
        match self.inner.inodes.lock().resolve(ino.0) {
            Ok(NodeRef::InSession { session, path }) => Ok((session, path)),
            Ok(NodeRef::Root) => Err(Errno::EPERM),
            Err(s) => Err(stale_errno(s)),
        }
    }

    /// The session and path of `parent/name`, checking the name.
    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<(Arc<Session>, WirePath), Errno> {
        let (session, dir) = self.node(parent)?;
        let path = dir
            .join(name.as_bytes())
            .map_err(|e| Errno::from_i32(e.errno()))?;
        Ok((session, path))
    }

    fn open_file(&self, fh: FileHandle) -> Result<Arc<OpenFile>, Errno> {
        self.inner
            .files
            .lock()
            .open
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    /// Directory `ino` with its session and current path, for listing it.
    fn dir_ref(&self, ino: INodeNo) -> Result<DirRef, Errno> {
        let (session, path) = self.node(ino)?;
        Ok(DirRef {
            ino: ino.0,
            session,
            path,
        })
    }

    fn root_attr(&self) -> FileAttr {
        let t = self.inner.mounted_at;
        FileAttr {
            ino: INodeNo(ROOT_INO),
            size: 0,
            blocks: 0,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: FileType::Directory,
            perm: 0o755,
            nlink: 2,
            uid: self.inner.root_uid,
            gid: self.inner.root_gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

fn xattr_answer(_: &Inner, r: Reply, reply: impl XattrReply) {
    match r {
        Reply::XattrSize(n) => reply.size(n),
        Reply::Data(d) => reply.data(&d),
        other => reply.error(unexpected(&other)),
    }
}
