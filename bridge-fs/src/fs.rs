//! `fuser::Filesystem` for the bridge.
//!
//! The mount root (inode 1) is synthesized from the registry: one directory per session. Every inode
//! below belongs to one session; each operation rebuilds its path from the inode table, then runs as a
//! tokio task that sends one request to that session's daemon and answers the kernel from there. FUSE
//! worker threads therefore never wait on the network, and a slow session never blocks another.
//!
//! Directory listings are fetched a page at a time (the page a listing continues in is kept until
//! read to its end), or taken from read-ahead during tree walks ([`crate::read_ahead`]);
//! `readdirplus` is negotiated so entries arrive with their attributes and inode numbers agree with
//! `stat`. A walk that reads the files it lists gets each directory's small files in one round trip
//! ([`crate::heads_ahead`]).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags,
    KernelConfig, LockOwner, Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request as FuseRequest, TimeOrNow, WriteFlags,
};
use sessionfs_proto::{
    errno, Attr, BatchedChange, BatchedWrite, Caller, Change, DirEntry, EntryNow, ErrorReply,
    NodeId, NodeKind, Reply, Request, SetAttrs, SetTime, Timestamp, WirePath, MAX_DIR_PAGE,
    MAX_IO_CHUNK, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK,
};
use tracing::{debug, warn};

use crate::session::Invalidation;

use crate::direct::{Direct, DIRECT_MIN};
use crate::heads_ahead::{Fetched, Found, HeadsAhead};
use crate::inodes::{InodeTable, NodeRef, Stale, ROOT_INO};
use crate::known::Known;
use crate::made_dirs::MadeDirs;
use crate::negative::NegativeEntries;
use crate::read_ahead::{Claim, ReadAhead};
use crate::replied::Replied;
use crate::session::{Session, Sessions};
use crate::walk::Walk;
use crate::write_behind::{Deferred, Then};

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
    head: Mutex<Option<Head>>,
    /// For a file this handle created: its attributes as the mount's changes left them, while
    /// nothing else changed it (see [`crate::known`]).
    known: Mutex<Option<Known>>,
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
        let mut known = lock(&self.known);
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
        let mut losing = lock(&self.inner.losing_names);
        if let Some(n) = losing.get_mut(&self.ino) {
            *n -= 1;
            if *n == 0 {
                losing.remove(&self.ino);
            }
        }
    }
}

/// The reply to an open through the daemon: an `ESTALE` failure (the kernel then walks the path
/// again) first drops what the bridge remembers that could answer that walk with the same file (see
/// [`Inner::open_went_stale`]).
struct OpenReply {
    reply: ReplyOpen,
    ino: u64,
    inner: Arc<Inner>,
}

impl Fail for OpenReply {
    fn fail(self, e: Errno) {
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
    conn: quinn::Connection,
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
pub struct BridgeFs {
    inner: Arc<Inner>,
}

struct Inner {
    rt: tokio::runtime::Handle,
    sessions: Arc<Sessions>,
    inodes: Mutex<InodeTable>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    /// Per directory inode: the last page of entries fetched, kept until the kernel has read to its
    /// end (a listing is read in several calls when it does not fit one reply).
    dir_pages: Mutex<HashMap<u64, Arc<DirPage>>>,
    /// The names the kernel caches as missing (see [`crate::negative`]).
    negatives: Mutex<NegativeEntries>,
    /// Per directory inode: its names, from its last complete listing (lookups of other names are
    /// answered as missing without a round trip while nothing changed: `.gitignore` and friends).
    listings: Mutex<(HashMap<u64, Listing>, usize)>,
    /// Listings fetched ahead during tree walks, and the walk bookkeeping.
    read_ahead: Mutex<ReadAhead<Arc<DirPage>>>,
    read_ahead_slots: Arc<tokio::sync::Semaphore>,
    /// Small files fetched ahead for walks that read them; an open waits on the receiver for a
    /// fetch under way.
    heads_ahead: Mutex<HeadsAhead<FetchWaiter>>,
    /// Directories whose listings are fetched for a walk that looks their names up (`git status`
    /// checking every file of its index); the listings land in `listings`.
    lookups_ahead: Mutex<Walk<FetchWaiter>>,
    /// What lookups answered a moment ago (see [`crate::replied`]).
    replied: Mutex<Replied>,
    /// Directories the mount made and the names that may exist in them (see [`crate::made_dirs`]).
    made_dirs: Mutex<MadeDirs>,
    /// Per file inode, the open handle that created it and may know its attributes (see
    /// [`crate::known`]); until that handle is released.
    knowing: Mutex<HashMap<u64, u64>>,
    /// Changes through the mount started so far, and those under way that are writes acknowledged
    /// early (see [`Mutation`]).
    started: AtomicU64,
    deferred: std::sync::atomic::AtomicUsize,
    /// Changes through the mount under way (see [`Mutation`]).
    mutating: std::sync::atomic::AtomicUsize,
    /// File inodes of watched sessions known to have no [`CAPABILITY_XATTR`]: the kernel's read of it
    /// before each write is answered without a round trip. A change of the inode drops it, except a
    /// change of its content alone ([`Change::Data`]: a write cannot add a capability).
    no_capability: Mutex<std::collections::HashSet<u64>>,
    /// See [`AttrCache`].
    attrs: Mutex<AttrCache>,
    next_fh: AtomicU64,
    /// The kernel lets OPENDIR be skipped (see `opendir`); set at `init`.
    no_opendir: AtomicBool,
    /// Cache lifetime of entries and attributes of sessions whose changes are not pushed.
    ttl: Duration,
    /// Cache lifetime while a session's changes are pushed (invalidation keeps it coherent).
    watched_ttl: Duration,
    /// Per file inode: its content version when the kernel last started caching its pages (at an open
    /// that dropped the cache). An open of an unchanged file keeps the cache (close-to-open).
    page_stamps: Mutex<HashMap<u64, ContentStamp>>,
    /// Files an unlink or rename through the mount is taking the name of, with how many such calls
    /// are in flight: they are not opened without a daemon handle meanwhile (see
    /// [`Inner::unopened_handles_of`]).
    losing_names: Mutex<HashMap<u64, usize>>,
    /// Inodes whose handles have direct data (see [`crate::direct`]); taken by every open that adds
    /// a handle and every release that removes one, before the file table, so that a handle of the
    /// other kind cannot come between; and by what answers a file's attributes from memory (a
    /// listing, a page of entries, a fetched file), so that a writable direct start or end
    /// ([`Inner::direct_change`]) cannot come between its check and its answer. Taken before
    /// `files`, `attrs`, `listings`, `read_ahead`, `heads_ahead`, `dir_pages` and `page_stamps`.
    direct: Mutex<Direct>,
    /// The kernel accepted passthrough at `INIT`.
    passthrough: AtomicBool,
    /// Owner and time shown for the mount root.
    root_uid: u32,
    root_gid: u32,
    mounted_at: SystemTime,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The tables hold no invariant that a panicking holder could half-update in a harmful way.
    m.lock().unwrap_or_else(|p| p.into_inner())
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

fn caller(req: &FuseRequest) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn unexpected(reply: &Reply) -> Errno {
    warn!("daemon sent an unexpected reply: {reply:?}");
    Errno::EIO
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
            inner: Arc::new(Inner {
                rt,
                sessions,
                inodes: Mutex::new(InodeTable::default()),
                files: Mutex::new(HashMap::new()),
                dir_pages: Mutex::new(HashMap::new()),
                negatives: Mutex::new(NegativeEntries::new(watched_ttl)),
                listings: Mutex::new((HashMap::new(), 0)),
                read_ahead: Mutex::new(ReadAhead::default()),
                read_ahead_slots: Arc::new(tokio::sync::Semaphore::new(READ_AHEAD_CONCURRENCY)),
                heads_ahead: Mutex::new(HeadsAhead::default()),
                lookups_ahead: Mutex::new(Walk::default()),
                replied: Mutex::new(Replied::default()),
                made_dirs: Mutex::new(MadeDirs::default()),
                knowing: Mutex::new(HashMap::new()),
                started: AtomicU64::new(0),
                deferred: std::sync::atomic::AtomicUsize::new(0),
                mutating: std::sync::atomic::AtomicUsize::new(0),
                no_capability: Mutex::new(std::collections::HashSet::new()),
                attrs: Mutex::new(AttrCache::default()),
                next_fh: AtomicU64::new(1),
                no_opendir: AtomicBool::new(false),
                ttl,
                watched_ttl,
                page_stamps: Mutex::new(HashMap::new()),
                losing_names: Mutex::new(HashMap::new()),
                direct: Mutex::new(Direct::default()),
                passthrough: AtomicBool::new(false),
                root_uid: rustix::process::geteuid().as_raw(),
                root_gid: rustix::process::getegid().as_raw(),
                mounted_at: SystemTime::now(),
            }),
        }
    }

    /// Starts the invalidator thread, which turns the daemons' change notifications into kernel cache
    /// invalidations through `notifier`, and routes the sessions' notifications to it. Notifications
    /// are sent from this dedicated thread, never from a request handler (the kernel may wait for
    /// FUSE answers while it processes them).
    pub fn start_invalidator(&self, notifier: Notifier) -> std::io::Result<()> {
        let (tx, rx) = std::sync::mpsc::channel::<Invalidation>();
        let inner = self.inner.clone();
        std::thread::Builder::new()
            .name("sessionfs-inval".into())
            .spawn(move || {
                for work in rx {
                    inner.invalidate(&notifier, work);
                }
            })?;
        self.inner.sessions.set_invalidator(tx);
        Ok(())
    }

    fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) {
        self.inner.rt.spawn(f);
    }

    /// The session and path of `ino`; `Err` for the mount root or an unknown inode.
    fn node(&self, ino: INodeNo) -> Result<(Arc<Session>, WirePath), Errno> {
        match lock(&self.inner.inodes).resolve(ino.0) {
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
        lock(&self.inner.files)
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    /// The handle to use for an attribute call on `ino`: the one the kernel gave, or else, for a node
    /// that no longer has a name (unlinked while open: `fstat`, `fchmod`), any open handle of it.
    fn handle_for(&self, ino: INodeNo, fh: Option<FileHandle>) -> Option<FileHandle> {
        let has_remote = |fh: &FileHandle| {
            lock(&self.inner.files)
                .get(&fh.0)
                .is_some_and(|f| f.remote.initialized())
        };
        if let Some(fh) = fh.filter(has_remote) {
            return Some(fh);
        }
        // Lock order: never hold the file table while taking the inode table.
        if !matches!(
            lock(&self.inner.inodes).resolve(ino.0),
            Err(Stale::Detached)
        ) {
            return None;
        }
        let files = lock(&self.inner.files);
        files
            .iter()
            .find(|(_, f)| f.ino == ino.0 && f.remote.initialized())
            .map(|(&fh, _)| FileHandle(fh))
            // The kernel's handle, opened from its cache or a head: it gets its daemon handle by the
            // file's identity (see `Inner::remote_handle`).
            .or(fh.filter(|fh| files.contains_key(&fh.0)))
    }

    /// Acknowledges `deferred` through `answer` once it is pending in `session` (see
    /// [`crate::write_behind`]). Without room it is answered once the pending changes have left (a
    /// push is due: they fill a batch), so the next batch fills while one is on its way; bounded by
    /// the operation timeout.
    fn defer(
        &self,
        session: &Arc<Session>,
        deferred: Deferred,
        answer: impl FnOnce(Result<(), Errno>) + Send + 'static,
    ) {
        let deferred = match session.write_behind.defer(deferred) {
            Ok(then) => {
                answer(Ok(()));
                return self.inner.push_after(session, then);
            }
            Err(deferred) => *deferred,
        };
        let (inner, session) = (self.inner.clone(), session.clone());
        self.spawn(async move {
            // Bounded: each batch on its way is, and a push follows each.
            let deadline = tokio::time::Instant::now() + inner.sessions.op_timeout();
            let len = deferred.change.data_len();
            let mut deferred = deferred;
            loop {
                inner.push_after(&session, Then::PushNow);
                let room = session.write_behind.room(len);
                if tokio::time::timeout_at(deadline, room).await.is_err() {
                    return answer(Err(Errno::ETIMEDOUT));
                }
                match session.write_behind.defer(deferred) {
                    Ok(then) => {
                        answer(Ok(()));
                        return inner.push_after(&session, then);
                    }
                    Err(back) => deferred = *back,
                }
            }
        });
    }

    /// An open handle of `ino` that knows the file's attributes (see [`crate::known`]), with its
    /// daemon handle on a live connection.
    fn knowing_handle(&self, ino: INodeNo) -> Option<(u64, Arc<OpenFile>, RemoteHandle)> {
        let fh = *lock(&self.inner.knowing).get(&ino.0)?;
        let file = lock(&self.inner.files).get(&fh).cloned()?;
        let remote = file
            .remote
            .get()
            .filter(|r| r.conn.close_reason().is_none())?
            .clone();
        let knows = file.ino == ino.0 && lock(&file.known).is_some();
        knows.then_some((fh, file, remote))
    }

    /// The attributes of `ino` as the changes through an open handle that created it will leave
    /// them, while some of those changes have not landed yet and nothing else changed the file
    /// (see [`crate::known`]). Once they have landed, the daemon's answer is exact (the change time
    /// is the daemon's).
    fn known_attr(&self, ino: INodeNo) -> Option<Attr> {
        let (fh, file, _) = self.knowing_handle(ino)?;
        let writes = &file.session.write_behind;
        if !writes.holds(fh) || writes.has_failed(fh) {
            return None;
        }
        let started = self.inner.started.load(Ordering::Acquire);
        let known = lock(&file.known);
        known
            .as_ref()
            .filter(|k| k.holds(started))
            .map(|k| *k.attr())
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

    /// Sends `request` to the session a target resolved to and hands a successful reply to `done`;
    /// every error goes straight back to the kernel.
    fn remote<R: Fail>(
        &self,
        caller: Caller,
        target: Result<(Arc<Session>, Request), Errno>,
        reply: R,
        done: impl FnOnce(&Inner, Answered, Reply, R) + Send + 'static,
    ) {
        let (session, request) = match target {
            Ok(v) => v,
            Err(e) => return reply.fail(e),
        };
        let inner = self.inner.clone();
        self.spawn(inner.call_then(caller, session, request, reply, done));
    }

    /// Sends the request `make` builds for the path of `ino`.
    fn on_node<R: Fail>(
        &self,
        req: &FuseRequest,
        ino: INodeNo,
        reply: R,
        make: impl FnOnce(WirePath) -> Request,
        done: impl FnOnce(&Inner, Reply, R) + Send + 'static,
    ) {
        let target = self.node(ino).map(|(s, path)| (s, make(path)));
        self.remote(caller(req), target, reply, |inner, _, r, reply| {
            done(inner, r, reply)
        });
    }

    /// Sends the request for `parent/name` that `make` builds and answers with the entry it returns
    /// (lookup and every call that creates a node).
    fn entry_request(
        &self,
        req: &FuseRequest,
        parent: INodeNo,
        name: &OsStr,
        make: impl FnOnce(WirePath) -> Request,
        reply: ReplyEntry,
    ) {
        let mutation = self.inner.mutation();
        let target = self.child(parent, name);
        let path = target.as_ref().map(|(_, p)| p.clone()).unwrap_or_default();
        let target = target.map(|(s, path)| (s, make(path)));
        let binding = self.inner.binding(parent.0, name.as_bytes());
        self.remote(
            caller(req),
            target,
            reply,
            move |inner, answered, r, reply| match (r, mutation) {
                (
                    Reply::Made {
                        attr,
                        parent: dir_attr,
                    },
                    mutation,
                ) => {
                    // The kernel asks for the directory's attributes next (it dropped them); kept
                    // before it has the reply, so that no change it makes next can come between.
                    let session = &answered.session;
                    inner.keep_own_reply(mutation, session, answered.since, parent.0, dir_attr);
                    let (name, ttl) = (&binding.name, answered.ttl);
                    let from = EntryFrom::Made(session, answered.since, &path);
                    let entry = inner.reply_entry(parent.0, name, &attr, ttl, reply, from);
                    if entry.is_some() {
                        binding.bound();
                    }
                }
                (other, _mutation) => reply.fail(unexpected(&other)),
            },
        );
    }

    /// Looks `parent/name` up. A missing name of a watched session is answered with a negative entry
    /// the kernel keeps for the long TTL (see [`crate::negative`] for how it is invalidated).
    fn lookup_in_session(
        &self,
        req: &FuseRequest,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEntry,
    ) {
        let (session, path) = match self.child(parent, name) {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        let name = name.as_bytes().to_vec();
        // In a directory the mount made, a name it never bound nor heard of is missing: once every
        // change batch received has been handled (one not yet handled may name it), and unless one
        // arrives before the reply is recorded (`reply_missing` checks the generation read first).
        let since = session.generation();
        if session.is_watched()
            && session.caught_up()
            && lock(&self.inner.made_dirs).is_missing(parent.0, &name)
        {
            return self
                .inner
                .reply_missing(&session, since, parent.0, &name, reply);
        }
        if let Some(listed) = self.inner.listed(parent.0, &session, &name) {
            return self
                .inner
                .reply_listed(&session, parent.0, &name, listed, reply);
        }
        // A walk looking names up in this directory: its listing answers them (see `crate::walk`).
        let dir = path.parent().map(|dir| (session.id.clone(), dir));
        let waiter = dir.and_then(|dir| {
            let waiter = lock(&self.inner.lookups_ahead).waiter(&dir);
            waiter.or_else(|| self.inner.lookups_touched(&session, parent.0, &dir))
        });
        let (inner, caller) = (self.inner.clone(), caller(req));
        self.spawn(async move {
            if let Some(waiter) = waiter {
                if let Err(e) = fetch_ended(waiter).await {
                    return reply.error(e);
                }
                if let Some(listed) = inner.listed(parent.0, &session, &name) {
                    return inner.reply_listed(&session, parent.0, &name, listed, reply);
                }
            }
            let epoch = lock(&inner.attrs).epoch();
            let since = session.generation();
            match inner
                .sessions
                .call(&session, caller, Request::Lookup { path })
                .await
            {
                Ok((Reply::Attr(attr), _)) => {
                    let ttl = inner.ttl_for(&session, since);
                    let from = EntryFrom::Lookup(&session, since, epoch);
                    inner.reply_entry(parent.0, &name, &attr, ttl, reply, from);
                }
                Ok((other, _)) => reply.fail(unexpected(&other)),
                Err(e) if e.errno == errno::ENOENT => {
                    inner.reply_missing(&session, since, parent.0, &name, reply)
                }
                Err(e) => reply.fail(errno_of(&e)),
            }
        });
    }

    /// Sends a request that changes something and whose success carries no data, then runs `then` on
    /// the inode table; `mutation` is held until the reply has been sent.
    /// `victims`: handles of a file the request unlinks or replaces that have no daemon handle yet;
    /// each gets one first (see [`Inner::unopened_handles_of`]).
    fn empty_request(
        &self,
        req: &FuseRequest,
        target: Result<(Arc<Session>, Request), Errno>,
        (victims, losing): (Vec<Arc<OpenFile>>, Option<LosingName>),
        reply: ReplyEmpty,
        mutation: Mutation,
        then: impl FnOnce(&mut InodeTable) + Send + 'static,
    ) {
        let done = move |inner: &Inner, _: Answered, _: Reply, reply: ReplyEmpty| {
            then(&mut lock(&inner.inodes));
            drop(losing);
            reply.ok();
            drop(mutation);
        };
        if victims.is_empty() {
            return self.remote(caller(req), target, reply, done);
        }
        let (session, request) = match target {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        let (inner, caller) = (self.inner.clone(), caller(req));
        self.spawn(async move {
            for file in &victims {
                // Best effort: one that cannot be opened reads as before (`ESTALE` on a miss).
                if let Err(e) = inner.remote_handle(file, caller).await {
                    debug!("opening a handle before its file goes: {e}");
                }
            }
            inner.call_then(caller, session, request, reply, done).await
        });
    }

    /// Sends the request `make` builds on the connection that holds open file `fh`; `done` also gets
    /// how long the kernel may cache what the reply says (see [`Inner::ttl_for`]).
    fn on_file<R: Fail>(
        &self,
        req: &FuseRequest,
        fh: FileHandle,
        reply: R,
        make: impl FnOnce(u64) -> Request + Send + 'static,
        done: impl FnOnce(Reply, Duration, R) + Send + 'static,
    ) {
        let file = match self.open_file(fh) {
            Ok(f) => f,
            Err(e) => return reply.fail(e),
        };
        let inner = self.inner.clone();
        let caller = caller(req);
        self.spawn(async move {
            let since = file.session.generation();
            let remote = match inner.remote_handle(&file, caller).await {
                Ok(remote) => remote,
                Err(e) => return reply.fail(errno_of(&e)),
            };
            match inner
                .sessions
                .call_on(&file.session, &remote.conn, caller, make(remote.fh))
                .await
            {
                Ok(r) => done(r, inner.ttl_for(&file.session, since), reply),
                Err(e) => reply.fail(errno_of(&e)),
            }
        });
    }

    /// Sends an attribute request (`make` gets the path and the daemon's handle, if any) and answers
    /// with the attributes; uses an open handle when there is one (see [`Self::handle_for`]).
    /// `mutation`: the request changes the node (setattr), held until the reply is handled;
    /// without one the attributes are remembered (see [`Inner::keep_attrs`]).
    fn attr_request(
        &self,
        req: &FuseRequest,
        ino: INodeNo,
        fh: Option<FileHandle>,
        reply: ReplyAttr,
        mutation: Option<Mutation>,
        make: impl FnOnce(WirePath, Option<u64>) -> Request + Send + 'static,
    ) {
        let epoch = lock(&self.inner.attrs).epoch();
        match self.handle_for(ino, fh) {
            Some(fh) => {
                // A node without a name is reached through the handle; the path is then unused.
                let node = self.node(ino).ok();
                let since = node.as_ref().map(|(s, _)| (s.clone(), s.generation()));
                let path = node.map(|(_, p)| p).unwrap_or_default();
                let inner = self.inner.clone();
                self.on_file(
                    req,
                    fh,
                    reply,
                    |remote| make(path, Some(remote)),
                    // `mutation` is moved in and ended once the reply is sent.
                    move |r, ttl, reply| match (r, mutation) {
                        (Reply::Attr(a), mutation) => {
                            if let (None, Some((session, since))) = (&mutation, &since) {
                                inner.keep_attrs(session, *since, epoch, &[(ino.0, a)]);
                            }
                            reply.attr(&ttl, &file_attr(ino.0, &a));
                            if let (Some(mutation), Some((session, since))) = (mutation, &since) {
                                inner.keep_own_reply(mutation, session, *since, ino.0, a);
                            }
                        }
                        (other, _mutation) => reply.fail(unexpected(&other)),
                    },
                );
            }
            None => {
                // By path, also for a handle opened from the cache (no daemon handle yet): one
                // round trip instead of two. Its file gone means the handle is stale, as its reads.
                let (session, path) = match self.node(ino) {
                    Ok(v) => v,
                    Err(e) => return reply.error(e),
                };
                let (inner, caller, request) = (self.inner.clone(), caller(req), make(path, None));
                let via_handle = fh.is_some();
                self.spawn(async move {
                    let since = session.generation();
                    let result = inner.sessions.call(&session, caller, request).await;
                    if let (None, Ok((Reply::Attr(a), _))) = (&mutation, &result) {
                        inner.keep_attrs(&session, since, epoch, &[(ino.0, *a)]);
                    }
                    // `mutation` lives in this task until the reply below is sent.
                    match result {
                        Ok((Reply::Attr(a), _)) => {
                            let ttl = inner.ttl_for(&session, since);
                            reply.attr(&ttl, &file_attr(ino.0, &a));
                            if let Some(mutation) = mutation {
                                inner.keep_own_reply(mutation, &session, since, ino.0, a);
                            }
                        }
                        Ok((other, _)) => reply.fail(unexpected(&other)),
                        Err(e) if via_handle && e.errno == errno::ENOENT => {
                            reply.error(Errno::ESTALE)
                        }
                        Err(e) => reply.fail(errno_of(&e)),
                    }
                });
            }
        }
    }
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
    conn: quinn::Connection,
    /// How long the kernel may cache what the reply says (see [`Inner::ttl_for`]).
    ttl: Duration,
    /// The session's invalidation generation when the request started.
    since: u64,
}

impl Inner {
    /// Sends `request` to `session` and hands its reply to `done`; a failure goes to the kernel.
    async fn call_then<R: Fail>(
        self: Arc<Self>,
        caller: Caller,
        session: Arc<Session>,
        request: Request,
        reply: R,
        done: impl FnOnce(&Inner, Answered, Reply, R),
    ) {
        let since = session.generation();
        match self.sessions.call(&session, caller, request).await {
            Ok((r, conn)) => {
                let ttl = self.ttl_for(&session, since);
                let answered = Answered {
                    session,
                    conn,
                    ttl,
                    since,
                };
                done(&self, answered, r, reply)
            }
            Err(e) => reply.fail(errno_of(&e)),
        }
    }

    /// Remembers that `ino` (at `path`) has no [`CAPABILITY_XATTR`], learned by a request that
    /// started at invalidation generation `since`: recorded first, then dropped again if the session
    /// is not watched or a change that may concern the file crossed the request (one after the check
    /// finds the record).
    fn no_capability_known(&self, ino: u64, session: &Session, since: u64, path: &WirePath) {
        {
            let mut known = lock(&self.no_capability);
            if known.len() >= NO_CAPABILITY_MAX {
                known.clear();
            }
            known.insert(ino);
        }
        if !session.is_watched() || session.changed_since(since, path) {
            lock(&self.no_capability).remove(&ino);
        }
    }

    /// How long the kernel may cache entries and attributes of `session` fetched by a request that
    /// started at invalidation generation `since`: long while the session's changes are pushed and no
    /// invalidation crossed the request (else a stale reply could outlive the invalidation), the short
    /// TTL otherwise.
    fn ttl_for(&self, session: &Session, since: u64) -> Duration {
        if session.current_since(since) {
            self.watched_ttl
        } else {
            self.ttl
        }
    }

    /// Close-to-open: whether an open may keep the kernel's cached pages of `ino`. Only when the
    /// session's changes are watched (so pages of a changed file are dropped when it changes) and the
    /// content is the version that was cached; otherwise the pages are dropped and this version
    /// becomes the cached one.
    ///
    /// The stamp is recorded first and kept only if no invalidation of the session crossed the open
    /// (started at generation `since`): an invalidation after the check finds it.
    fn keep_cache(&self, ino: u64, session: &Session, attr: &Attr, since: u64) -> bool {
        let stamp = ContentStamp::of(attr);
        {
            let mut stamps = lock(&self.page_stamps);
            if session.is_watched() && stamps.get(&ino) == Some(&stamp) {
                return true;
            }
            stamps.insert(ino, stamp);
        }
        if !session.current_since(since) {
            lock(&self.page_stamps).remove(&ino);
        }
        false
    }

    /// Whether the kernel's pages of `ino` are known current without asking the daemon: the session's
    /// changes are pushed, and none touched the file since its pages were cached (an invalidation of
    /// the inode drops its stamp).
    fn cache_is_current(&self, ino: u64, session: &Session) -> bool {
        session.is_watched() && lock(&self.page_stamps).contains_key(&ino)
    }

    /// Tells the kernel to forget what it cached that `work` touches; runs on the invalidator thread.
    fn invalidate(&self, notifier: &Notifier, work: Invalidation) {
        // Collect under the lock, notify without it: the kernel may need FUSE answers meanwhile.
        // `missing`: negative entries the kernel may hold for names that now may exist.
        // Inodes whose content alone changed: what is known of their capability stays true.
        let mut content_only = std::collections::HashSet::new();
        let mut other_change = std::collections::HashSet::new();
        // Changes that touched what a lookup answered a moment ago: sent again (see `crate::replied`).
        let mut late = Vec::new();
        // Nodes a change event named (besides `inodes`): what is known of them from the mount's
        // own changes ends (see `crate::known`).
        let mut touched = Vec::new();
        let (inodes, entries, missing) = {
            let table = lock(&self.inodes);
            let mut negatives = lock(&self.negatives);
            let replied = lock(&self.replied);
            let mut made_dirs = lock(&self.made_dirs);
            let at = Instant::now();
            let mut missing = Vec::new();
            match &work {
                Invalidation::Changes(id, changes) | Invalidation::Late(id, changes) => {
                    let again = matches!(work, Invalidation::Late(..));
                    let (mut inodes, mut entries) = (Vec::new(), Vec::new());
                    for change in changes.iter() {
                        let mut recent = false;
                        match change {
                            Change::Node { path, now } => {
                                if let Some(ino) = table.find(id.as_str(), path) {
                                    // A directory with the attributes the bridge last answered
                                    // for it: the echo of a change through the mount, whose reply
                                    // said them. (Its listing's changes come as entry changes.)
                                    if now.is_some_and(|now| {
                                        lock(&self.attrs).get(ino).is_some_and(|told| {
                                            Attr {
                                                atime: now.atime,
                                                ..told
                                            } == now
                                        })
                                    }) {
                                        continue;
                                    }
                                    inodes.push(ino);
                                    other_change.insert(ino);
                                    recent = replied.inode_is_recent(ino, at);
                                }
                            }
                            Change::Data { path } => {
                                if let Some(ino) = table.find(id.as_str(), path) {
                                    inodes.push(ino);
                                    content_only.insert(ino);
                                    recent = replied.inode_is_recent(ino, at);
                                }
                            }
                            Change::Entry { dir, name, now } => {
                                let Some(dir) = table.find(id.as_str(), dir) else {
                                    continue;
                                };
                                // Before the kernel's negative entry is dropped (below, after
                                // the locks): a lookup then is not answered from the record.
                                if !matches!(now, EntryNow::Missing) {
                                    made_dirs.may_exist(dir, name);
                                }
                                // The second time, the record was taken the first time.
                                let negative = negatives.take(dir, name) || again;
                                // Again only what the kernel may have applied after this: a node a
                                // lookup answered for the name, or the name's absence (once the
                                // name is bound, the kernel's entry for it is no longer negative).
                                if let Some(child) = table.child(dir, name) {
                                    // The daemon says what the name named when it sent the change:
                                    // the same node needs nothing (what a check by lookup would
                                    // find). Anything else is still checked by lookup: dropping
                                    // the entries of names that, by then, named the node again
                                    // made reads of them stale (the MCP suite's atomic rewrites
                                    // under a reader; not understood yet).
                                    let same = matches!(now, EntryNow::Node(node)
                                        if table.still_names(dir, name, node));
                                    if !same {
                                        // The name was moved or replaced: the node it named
                                        // changed too (its change time, its links), and the
                                        // directory's listing.
                                        touched.push(child);
                                        entries.push((dir, name.clone()));
                                        inodes.push(dir);
                                        other_change.insert(dir);
                                    }
                                    recent = replied.inode_is_recent(child, at);
                                } else {
                                    if negative {
                                        missing.push((dir, name.clone()));
                                    }
                                    // A name the kernel was not told of: the directory's listing
                                    // (which the kernel may cache) changed.
                                    inodes.push(dir);
                                    other_change.insert(dir);
                                    recent = replied.missing_is_recent(dir, name, at);
                                }
                            }
                        }
                        if recent && !again {
                            late.push(change.clone());
                        }
                    }
                    content_only.retain(|ino| !other_change.contains(ino));
                    (inodes, entries, missing)
                }
                Invalidation::Inode(ino) => (vec![*ino], Vec::new(), missing),
                Invalidation::Missing { dir, name } => {
                    negatives.take(*dir, name);
                    if table.child(*dir, name).is_none() {
                        missing.push((*dir, name.clone()));
                    }
                    (Vec::new(), Vec::new(), missing)
                }
                Invalidation::Root { removed } => {
                    let entries = removed
                        .iter()
                        .map(|id| (ROOT_INO, id.as_str().as_bytes().to_vec()))
                        .collect();
                    (vec![ROOT_INO], entries, missing)
                }
                Invalidation::Reset(id) => {
                    let nodes = table.session_nodes(id.as_str());
                    let entries: Vec<(u64, Vec<u8>)> = nodes
                        .iter()
                        .flat_map(|(_, names)| names.iter().cloned())
                        .filter(|(parent, _)| *parent != ROOT_INO)
                        .collect();
                    let dirs = nodes.iter().map(|(ino, _)| *ino).collect();
                    // Changes may have been missed: nothing is known of any name.
                    made_dirs.forget_all(nodes.iter().map(|(ino, _)| *ino));
                    // Names bound since they were missing are among `entries` already.
                    missing = negatives
                        .take_in(&dirs)
                        .into_iter()
                        .filter(|(dir, name)| table.child(*dir, name).is_none())
                        .collect();
                    let inodes = nodes.into_iter().map(|(ino, _)| ino).collect();
                    (inodes, entries, missing)
                }
            }
        };
        {
            // Only handles that created their file know anything: found through their index.
            let knowing: Vec<u64> = {
                let knowing = lock(&self.knowing);
                let touched = inodes.iter().chain(&touched);
                touched
                    .filter_map(|ino| knowing.get(ino).copied())
                    .collect()
            };
            let files = lock(&self.files);
            for file in knowing.iter().filter_map(|fh| files.get(fh)) {
                *lock(&file.known) = None;
            }
        }
        {
            // A reset lists every inode of the session, so this covers it too.
            let mut stamps = lock(&self.page_stamps);
            let mut no_capability = lock(&self.no_capability);
            let mut attrs = lock(&self.attrs);
            for ino in &inodes {
                stamps.remove(ino);
                if !content_only.contains(ino) {
                    no_capability.remove(ino);
                }
                attrs.remove(*ino);
            }
        }
        let verify = match &work {
            Invalidation::Changes(..) | Invalidation::Late(..) | Invalidation::Inode(_) => true,
            // Sessions no longer listed: their names are gone, nothing to check.
            Invalidation::Root { .. } | Invalidation::Missing { .. } => false,
            // At the end of a connection the daemon may be gone: nothing can be checked.
            Invalidation::Reset(id) => self
                .sessions
                .get(id.as_str())
                .is_some_and(|s| s.is_connected()),
        };
        let entries = if verify {
            self.changed_entries(entries)
        } else {
            entries
        };
        // Content before names: once a name shows the change, what was read through it is gone too.
        for ino in inodes {
            // Attributes, and the whole page cache (offset 0, length 0 = to the end).
            let _ = notifier.inval_inode(INodeNo(ino), 0, 0);
        }
        for (parent, name) in entries.into_iter().chain(missing) {
            // ENOENT: the kernel has no such entry cached; nothing to do.
            let _ = notifier.inval_entry(INodeNo(parent), OsStr::from_bytes(&name));
        }
        if let Invalidation::Changes(id, _) | Invalidation::Reset(id) = &work {
            if let Some(session) = self.sessions.get(id.as_str()) {
                session.handled_one();
            }
        }
        if let (false, Invalidation::Changes(id, _)) = (late.is_empty(), &work) {
            let (sessions, id) = (self.sessions.clone(), id.clone());
            self.rt.spawn(async move {
                tokio::time::sleep(crate::replied::LATE_DELAY).await;
                sessions.invalidate(Invalidation::Late(id, late.into()));
            });
        }
    }

    /// The entries among `entries` whose kernel dentry may be wrong: bound in the table to a node that
    /// the name no longer names (or that cannot be checked). A name still naming the same node keeps
    /// its dentry: invalidating it would detach a directory that is some process's working directory
    /// (the kernel unhashes it), which is what the echo of a `mkdir` through the mount would do.
    /// Names the kernel was not told of have no positive dentry to drop.
    fn changed_entries(&self, entries: Vec<(u64, Vec<u8>)>) -> Vec<(u64, Vec<u8>)> {
        let checks: Vec<EntryCheck> = {
            let table = lock(&self.inodes);
            entries
                .into_iter()
                .filter(|(dir, name)| table.child(*dir, name).is_some())
                .map(|(dir, name)| {
                    let target = match table.resolve(dir) {
                        Ok(NodeRef::InSession { session, path }) => {
                            path.join(&name).ok().map(|p| (session, p))
                        }
                        _ => None,
                    };
                    (dir, name, target)
                })
                .collect()
        };
        if checks.is_empty() {
            return Vec::new();
        }
        let sessions = self.sessions.clone();
        let looked_up = self.rt.block_on(async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(VERIFY_CONCURRENCY));
            let mut set = tokio::task::JoinSet::new();
            for (dir, name, target) in checks {
                let (sessions, slots) = (sessions.clone(), slots.clone());
                set.spawn(async move {
                    let Some((session, path)) = target else {
                        return (dir, name, None);
                    };
                    let _slot = slots.acquire_owned().await;
                    let lookup = Request::Lookup { path };
                    let attr = match sessions.call(&session, Caller::default(), lookup).await {
                        Ok((Reply::Attr(attr), _)) => Some(attr),
                        _ => None,
                    };
                    (dir, name, attr)
                });
            }
            let mut out = Vec::new();
            while let Some(done) = set.join_next().await {
                if let Ok(v) = done {
                    out.push(v);
                }
            }
            out
        });
        let table = lock(&self.inodes);
        looked_up
            .into_iter()
            .filter(|(dir, name, attr)| match attr {
                Some(attr) => table.conflicts(*dir, name, attr),
                None => true,
            })
            .map(|(dir, name, _)| (dir, name))
            .collect()
    }

    /// Starts binding `dir/name` (see [`Binding`]).
    fn binding(&self, dir: u64, name: &[u8]) -> Binding {
        // Before the request: from now on the name may exist (see `crate::made_dirs`).
        lock(&self.made_dirs).may_exist(dir, name);
        Binding {
            sessions: self.sessions.clone(),
            dir,
            name: name.to_vec(),
            negative: lock(&self.negatives).take(dir, name),
        }
    }

    /// Answers a lookup of a missing `dir/name` that started at generation `since`: a negative entry
    /// for the watched TTL when the session is watched and no invalidation crossed the lookup, a
    /// plain `ENOENT` (not cached) otherwise.
    fn reply_missing(
        &self,
        session: &Session,
        since: u64,
        dir: u64,
        name: &[u8],
        reply: ReplyEntry,
    ) {
        // Record first, then check: an invalidation after the check finds the record.
        let cacheable = session.is_watched() && lock(&self.negatives).insert(dir, name);
        if cacheable && self.ttl_for(session, since) == self.watched_ttl {
            lock(&self.replied).missing(dir, name, Instant::now());
            // Node id 0: "no such entry", kept for the entry TTL.
            reply.entry_with_ttls(
                &Duration::ZERO,
                &self.watched_ttl,
                &negative_attr(),
                Generation(0),
            );
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    /// Answers with the entry of `parent/name` that `from` gave; its inode, `None` if it could not
    /// be bound (ESTALE).
    fn reply_entry(
        &self,
        parent: u64,
        name: &[u8],
        attr: &Attr,
        ttl: Duration,
        reply: ReplyEntry,
        from: EntryFrom<'_>,
    ) -> Option<u64> {
        let (remember, made) = match from {
            EntryFrom::Lookup(session, since, epoch) => (Some((session, since, epoch)), None),
            EntryFrom::Made(session, since, path) => (None, Some((session, since, path))),
        };
        let ino = {
            // Recorded while the table is locked: an invalidation that finds the node learned
            // also finds it recent.
            let mut table = lock(&self.inodes);
            let ino = table.learn(parent, name, attr);
            if let Some(ino) = ino {
                lock(&self.replied).inode(ino, Instant::now());
                // A directory this call made, with no change event about it while it ran: empty
                // (see `crate::made_dirs`). Before the reply, so every name bound in it is
                // recorded.
                let made = made.filter(|(session, since, path)| {
                    session.is_watched() && !session.changed_since(*since, path)
                });
                if made.is_some() && attr.file_type() == S_IFDIR {
                    lock(&self.made_dirs).made(ino);
                }
            }
            ino
        };
        if let (Some(ino), Some((session, since, epoch))) = (ino, remember) {
            self.keep_attrs(session, since, epoch, &[(ino, *attr)]);
        }
        match ino {
            Some(ino) => {
                reply.entry(&ttl, &file_attr(ino, attr), Generation(0));
                // An invalidation that came after the TTL was chosen may have looked for the node
                // before it was learned here, and found nothing to invalidate: invalidate it again
                // now that the kernel has the reply, as for a listing page an invalidation overtook.
                if let Some((session, since, _)) = remember {
                    if session.generation() != since {
                        self.sessions.invalidate(Invalidation::Inode(ino));
                    }
                }
            }
            None => reply.error(Errno::ESTALE),
        }
        ino
    }

    /// Registers an open file; `remote`: the daemon's handle, `None` to open it when first needed.
    /// Called holding the direct table's lock (see [`Inner::direct`]).
    fn add_file(
        &self,
        ino: u64,
        session: Arc<Session>,
        flags: i32,
        remote: Option<RemoteHandle>,
        data: Data,
    ) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let (head, known, direct) = match data {
            Data::Bridge { head, known } => (head, known, false),
            Data::Direct => (None, None, true),
        };
        if known.is_some() {
            lock(&self.knowing).insert(ino, fh);
        }
        let file = OpenFile {
            ino,
            session,
            remote: tokio::sync::OnceCell::new_with(remote),
            flags,
            head: Mutex::new(head),
            known: Mutex::new(known),
            direct,
        };
        lock(&self.files).insert(fh, Arc::new(file));
        fh
    }

    /// Keeps the names of `dir` and their attributes from `page`, a complete listing.
    fn remember_listing(&self, dir: u64, page: &DirPage) {
        self.remember_entries(dir, &page.entries, page.generation, page.attr_epoch);
    }

    /// Keeps `entries`, the complete listing of `dir` fetched at invalidation generation
    /// `generation` by a request that started at attribute epoch `epoch`.
    fn remember_entries(&self, dir: u64, entries: &[DirEntry], generation: u64, epoch: u64) {
        let entries: HashMap<Vec<u8>, Attr> =
            entries.iter().map(|e| (e.name.clone(), e.attr)).collect();
        let mut guard = lock(&self.listings);
        let (listings, count) = &mut *guard;
        if *count + entries.len() > LISTED_NAMES_MAX {
            listings.clear();
            *count = 0;
        }
        *count += entries.len();
        let listing = Listing {
            generation,
            epoch,
            entries,
        };
        if let Some(old) = listings.insert(dir, listing) {
            *count -= old.entries.len();
        }
    }

    /// Starts a change through the mount (see [`Mutation`]).
    fn mutation(self: &Arc<Self>) -> Mutation {
        self.start_mutation(None)
    }

    /// Starts a change through the mount of `ino`'s content or attributes alone (see [`Mutation`]).
    fn mutation_of(self: &Arc<Self>, ino: u64) -> Mutation {
        self.start_mutation(Some(ino))
    }

    /// A change of `ino` through the mount that the bridge does not see: its direct data started
    /// with a handle that may write, or ended after one (see [`crate::direct`]). Voids what is
    /// remembered of the file (and listings, and files fetched ahead), and counts as a change
    /// started, so no change under way keeps its own reply (see [`Mutation::end`]).
    fn direct_change(&self, ino: u64) {
        self.started.fetch_add(1, Ordering::AcqRel);
        self.void_answers(Some(ino));
        lock(&self.dir_pages).clear();
    }

    fn start_mutation(self: &Arc<Self>, only_of: Option<u64>) -> Mutation {
        let before = self.mutating.fetch_add(1, Ordering::AcqRel);
        // Read after the count: a write deferred in between is counted in both (and is pending
        // when this change's request is sent, so it is carried ahead of it).
        let deferred = self.deferred.load(Ordering::Acquire);
        let number = self.started.fetch_add(1, Ordering::AcqRel) + 1;
        self.void_answers(only_of);
        Mutation {
            inner: self.clone(),
            number,
            only_writes_before: before <= deferred,
            only_of,
            ended: false,
        }
    }

    /// Ends `mutation`, whose reply said `attr` of `ino` (read in `session` from generation `since`),
    /// and remembers that reply when nothing can have come between it and the daemon's answer (see
    /// [`Mutation::end`]): the kernel asks for the attributes again before a `chown`, and for a
    /// directory's after a create in it, although it has just been told them.
    fn keep_own_reply(
        &self,
        mut mutation: Mutation,
        session: &Session,
        since: u64,
        ino: u64,
        attr: Attr,
    ) {
        if let Some(epoch) = mutation.end() {
            self.keep_attrs(session, since, epoch, &[(ino, attr)]);
        }
    }

    /// Voids what the bridge answers from memory on the daemon's behalf: listings fetched ahead,
    /// small files fetched ahead, remembered attributes (only those of `only_of`, for a change of
    /// that inode alone), and complete listings (which also carry the attribute epoch, so one
    /// remembered after this from an older fetch is not used either). Returns the new attribute
    /// epoch.
    fn void_answers(&self, only_of: Option<u64>) -> u64 {
        lock(&self.read_ahead).changed();
        lock(&self.heads_ahead).changed();
        let epoch = match only_of {
            Some(ino) => lock(&self.attrs).changed_one(ino),
            None => lock(&self.attrs).changed(),
        };
        let mut listings = lock(&self.listings);
        listings.0.clear();
        listings.1 = 0;
        epoch
    }

    /// The attributes last answered for `ino`, if its session is watched and nothing voided them.
    fn cached_attr(&self, ino: u64, session: &Session) -> Option<Attr> {
        if !session.is_watched() {
            return None;
        }
        lock(&self.attrs).get(ino)
    }

    /// Remembers `attrs` (inode, attributes) of `session`, read by requests that started at
    /// invalidation generation `since` and attribute epoch `epoch`: only if the session is watched
    /// and neither an invalidation nor a change through the mount crossed them. Recorded first, then
    /// checked, so an invalidation after the check finds the records.
    fn keep_attrs(&self, session: &Session, since: u64, epoch: u64, attrs: &[(u64, Attr)]) {
        if !session.is_watched() || attrs.is_empty() {
            return;
        }
        if !lock(&self.attrs).insert(epoch, attrs) {
            return;
        }
        if session.generation() != since {
            let mut cache = lock(&self.attrs);
            for (ino, _) in attrs {
                cache.remove(*ino);
            }
        }
    }

    /// Drops what is known of `dir`'s names.
    fn forget_listing(&self, dir: u64) {
        let mut guard = lock(&self.listings);
        let (listings, count) = &mut *guard;
        if let Some(old) = listings.remove(&dir) {
            *count -= old.entries.len();
        }
    }

    /// What `dir`'s last complete listing says of `name`, if it is still current: nothing changed
    /// in the session since it was fetched, nor through the mount since it was requested.
    fn listed(&self, dir: u64, session: &Session, name: &[u8]) -> Option<Listed> {
        if self.mutating.load(Ordering::Acquire) > 0 {
            return None;
        }
        // Taken first (see `Inner::direct`): a file written directly right now may have another
        // size and times than its listing says, and the end of that cannot come between.
        let direct = lock(&self.direct);
        let epoch = lock(&self.attrs).epoch();
        let guard = lock(&self.listings);
        let listing = guard.0.get(&dir)?;
        if !session.current_since(listing.generation) || listing.epoch != epoch {
            return None;
        }
        let since = listing.generation;
        let listed = match listing.entries.get(name) {
            None => Listed::Missing { since },
            Some(attr) => Listed::Present {
                since,
                epoch,
                attr: *attr,
            },
        };
        drop(guard);
        if let Listed::Present { attr, .. } = &listed {
            if direct.is_written(attr.dev, attr.ino) {
                return None;
            }
        }
        Some(listed)
    }

    /// Answers a lookup of `dir/name` from what its directory's listing says.
    fn reply_listed(
        &self,
        session: &Session,
        dir: u64,
        name: &[u8],
        listed: Listed,
        reply: ReplyEntry,
    ) {
        match listed {
            Listed::Missing { since } => self.reply_missing(session, since, dir, name, reply),
            Listed::Present { since, epoch, attr } => {
                let ttl = self.ttl_for(session, since);
                let from = EntryFrom::Lookup(session, since, epoch);
                self.reply_entry(dir, name, &attr, ttl, reply, from);
            }
        }
    }

    /// A lookup in `dir` (inode `dir_ino`) goes to the daemon: fetches the directory's listing if
    /// a walk looks names up in it (see [`crate::walk`]). Returns what waits for the fetch if one
    /// started.
    fn lookups_touched(
        self: &Arc<Self>,
        session: &Arc<Session>,
        dir_ino: u64,
        dir: &crate::read_ahead::DirKey,
    ) -> Option<FetchWaiter> {
        if !session.is_watched() {
            return None;
        }
        let (done, waiter) = tokio::sync::watch::channel(FetchEnd::Pending);
        let attr_epoch = lock(&self.attrs).epoch();
        let started =
            lock(&self.lookups_ahead).touched(dir, attr_epoch, waiter.clone(), Instant::now());
        if !started {
            return None;
        }
        let (inner, session, dir) = (self.clone(), session.clone(), dir.clone());
        self.rt.spawn(async move {
            let generation = session.generation();
            let attr_epoch = lock(&inner.attrs).epoch();
            let request = Request::ReadDir {
                path: dir.1.clone(),
                offset: 0,
                limit: MAX_DIR_PAGE,
            };
            // As root: the kernel checks the caller's search permission on the directory.
            let reply = inner
                .sessions
                .call(&session, Caller::default(), request)
                .await;
            let end = FetchEnd::of(&reply);
            if let Ok((
                Reply::Entries {
                    entries,
                    next: None,
                },
                _,
            )) = reply
            {
                inner.remember_entries(dir_ino, &entries, generation, attr_epoch);
            }
            lock(&inner.lookups_ahead).fetched(&dir, Instant::now());
            let _ = done.send(end);
        });
        Some(waiter)
    }

    /// The bytes `offset..offset + size` of open file `fh` if the head read with its open holds
    /// them (all of them, or up to the end of a file that ends within the head). The head is dropped
    /// once a read reaches its end: the kernel has the pages then.
    fn read_head(&self, fh: FileHandle, offset: u64, size: u32) -> Option<Vec<u8>> {
        let file = lock(&self.files).get(&fh.0).cloned()?;
        let mut slot = lock(&file.head);
        let head = slot.as_ref()?;
        let stamped = lock(&self.page_stamps).get(&file.ino) == Some(&head.stamp);
        if !stamped || lock(&self.attrs).epoch() != head.epoch {
            // The file changed since (or its pages were dropped): the head may be stale.
            *slot = None;
            return None;
        }
        let (len, end) = (
            head.data.len() as u64,
            offset.saturating_add(u64::from(size)),
        );
        if end > len && !head.whole {
            return None;
        }
        let data = head.data[offset.min(len) as usize..end.min(len) as usize].to_vec();
        if end >= len {
            *slot = None;
        }
        Some(data)
    }

    /// The daemon's handle of `file`, opening it now if the open was answered from the kernel's
    /// cache. The file is then found by its current path: one removed in the meantime fails with
    /// `ESTALE`, as a file removed on an NFS server does.
    async fn remote_handle<'f>(
        &self,
        file: &'f OpenFile,
        caller: Caller,
    ) -> Result<&'f RemoteHandle, ErrorReply> {
        file.remote
            .get_or_try_init(|| async {
                let (path, expect) = match lock(&self.inodes).to_open(file.ino) {
                    Ok((_, path, expect)) => (path, expect),
                    Err(_) => {
                        return Err(ErrorReply::new(
                            errno::ESTALE,
                            "the file was removed before its data was read",
                        ))
                    }
                };
                let open = Request::Open {
                    path,
                    flags: file.flags,
                    head: 0,
                    expect,
                };
                match self.sessions.call(&file.session, caller, open).await {
                    Ok((Reply::Opened { fh: Some(fh), .. }, conn)) => Ok(RemoteHandle { conn, fh }),
                    Ok((other, _)) => Err(ErrorReply::new(
                        errno::EIO,
                        format!("unexpected open reply {other:?}"),
                    )),
                    Err(e) if e.errno == errno::ENOENT => Err(ErrorReply::new(
                        errno::ESTALE,
                        "the file was removed before its data was read",
                    )),
                    Err(e) => Err(e),
                }
            })
            .await
    }

    /// The entries of `dir` after daemon offset `offset`: from its cached page when that covers the
    /// offset and is younger than the attribute TTL, else from a new page fetched from the daemon.
    ///
    /// A listing read from its start is fetched anew (the kernel reads from offset 0 only when it
    /// holds no valid listing of its own), unless read-ahead fetched it at the session's current
    /// invalidation generation; a page read to its end is dropped.
    async fn dir_page(
        self: &Arc<Self>,
        dir: &DirRef,
        caller: Caller,
        offset: u64,
        use_cache: bool,
    ) -> Result<(Arc<DirPage>, usize), ErrorReply> {
        if use_cache {
            if let Some(ready) = self.dir_page_ready(dir, offset) {
                return Ok(ready);
            }
        }
        let ahead = if offset == 0 && use_cache {
            self.read_ahead_page(dir).await
        } else {
            None
        };
        let page = match ahead {
            Some(page) => page,
            None => self.fetch_dir_page(dir, caller, offset).await?,
        };
        Ok((self.took_page(dir, offset, page), 0))
    }

    /// [`Self::dir_page`]'s answer when it is at hand without a round trip or a wait: the cached
    /// page covers `offset`, or read-ahead has the first page waiting. The kernel's listing is then
    /// answered on the FUSE thread that received it (most of a tree walk's listings, and the empty
    /// read that ends each one), without a hand-over to the runtime and back.
    fn dir_page_ready(
        self: &Arc<Self>,
        dir: &DirRef,
        offset: u64,
    ) -> Option<(Arc<DirPage>, usize)> {
        if offset == 0 {
            let page = self.take_read_ahead(dir)?;
            return Some((self.took_page(dir, 0, page), 0));
        }
        let page = lock(&self.dir_pages).get(&dir.ino).cloned()?;
        if page.fetched.elapsed() > self.ttl || self.lists_written(&page) {
            return None;
        }
        let (skip, end) = {
            let rest = page.after(offset)?;
            (
                page.entries.len() - rest.len(),
                rest.is_empty() && !page.more,
            )
        };
        if end {
            // The end of the listing: the kernel will not read this page again.
            lock(&self.dir_pages).remove(&dir.ino);
        }
        Some((page, skip))
    }

    /// `page` of `dir`, from `offset`, was just fetched or taken from read-ahead: a complete listing
    /// answers lookups, a listing from the start continues a walk's read-ahead, and the page is kept
    /// for the kernel's next reads of the listing.
    fn took_page(self: &Arc<Self>, dir: &DirRef, offset: u64, page: Arc<DirPage>) -> Arc<DirPage> {
        if offset == 0 {
            if !page.more {
                self.remember_listing(dir.ino, &page);
            }
            self.read_ahead_after(dir, &page);
        }
        let mut pages = lock(&self.dir_pages);
        if page.entries.is_empty() && !page.more {
            pages.remove(&dir.ino);
        } else {
            pages.insert(dir.ino, page.clone());
        }
        page
    }

    /// Whether `page`, after `skip` entries, disagrees with what lookups of directory `ino` learned
    /// since: then it is out of date, and the kernel must not be told an old name for a node (it
    /// would act on the wrong file).
    fn page_conflicts(&self, ino: u64, page: &DirPage, skip: usize) -> bool {
        let inodes = lock(&self.inodes);
        page.entries[skip..]
            .iter()
            .any(|e| inodes.conflicts(ino, &e.name, &e.attr))
    }

    /// Answers a `READDIRPLUS` of directory `ino` with `page`'s entries after `skip`.
    fn reply_entries(
        &self,
        ino: INodeNo,
        dir: &DirRef,
        page: &DirPage,
        skip: usize,
        mut reply: ReplyDirectoryPlus,
    ) {
        let ttl = self.ttl_for(&dir.session, page.generation);
        if dir.session.generation() != page.generation {
            // An invalidation overtook this page: the kernel may cache it in its readdir cache;
            // have it dropped once the reply is in.
            self.sessions.invalidate(Invalidation::Inode(ino.0));
        }
        let mut inodes = lock(&self.inodes);
        let mut known = Vec::new();
        for e in &page.entries[skip..] {
            let Some(child) = inodes.learn(ino.0, &e.name, &e.attr) else {
                drop(inodes);
                return reply.error(Errno::ESTALE);
            };
            known.push((child, e.attr));
            let attr = file_attr(child, &e.attr);
            let name = OsStr::from_bytes(&e.name);
            if reply.add(
                INodeNo(child),
                DOT_ENTRIES + e.next_offset,
                name,
                &ttl,
                &attr,
                Generation(0),
            ) {
                // Did not fit: the kernel never saw it, so it holds no lookup count.
                inodes.forget(child, 1);
                known.pop();
                break;
            }
        }
        drop(inodes);
        self.keep_attrs(&dir.session, page.generation, page.attr_epoch, &known);
        reply.ok();
    }

    /// Fetches the page of `dir`'s entries that starts at daemon offset `offset`.
    async fn fetch_dir_page(
        &self,
        dir: &DirRef,
        caller: Caller,
        offset: u64,
    ) -> Result<Arc<DirPage>, ErrorReply> {
        let request = Request::ReadDir {
            path: dir.path.clone(),
            offset,
            limit: MAX_DIR_PAGE,
        };
        let generation = dir.session.generation();
        let attr_epoch = lock(&self.attrs).epoch();
        match self.sessions.call(&dir.session, caller, request).await? {
            (Reply::Entries { entries, next }, _) => Ok(Arc::new(DirPage {
                start: offset,
                entries,
                more: next.is_some(),
                fetched: Instant::now(),
                generation,
                ahead: false,
                attr_epoch,
            })),
            (other, _) => Err(ErrorReply::new(
                errno::EIO,
                format!("unexpected readdir reply {other:?}"),
            )),
        }
    }

    /// The node `dir/name` names is about to lose that name through the mount (an unlink, or a rename
    /// over it): returns its open handles that have no daemon handle (opened from the kernel's
    /// cache, or from a head that held the whole file). Once the name is gone the file can no longer
    /// be opened by its path, and a read that missed the kernel's pages would fail; given a daemon
    /// handle first, they read on as on a local file system. Until [`LosingName`] is dropped (after
    /// the inode table has the change), no handle of it is opened without one.
    fn unopened_handles_of(
        self: &Arc<Self>,
        dir: u64,
        name: &[u8],
    ) -> (Vec<Arc<OpenFile>>, Option<LosingName>) {
        let Some(ino) = lock(&self.inodes).child(dir, name) else {
            return (Vec::new(), None);
        };
        let mut losing = lock(&self.losing_names);
        *losing.entry(ino).or_default() += 1;
        let unopened = lock(&self.files)
            .values()
            .filter(|f| f.ino == ino && !f.remote.initialized())
            .cloned()
            .collect();
        let guard = LosingName {
            inner: self.clone(),
            ino,
        };
        (unopened, Some(guard))
    }

    /// A read-only open of `ino`, whose pages the kernel has, without a daemon handle; `None` while
    /// the file is losing a name through the mount or has none left, or has direct handles, or its
    /// page stamp went since the caller looked (a last direct handle was released meanwhile): it is
    /// then opened through the daemon.
    fn open_unopened(&self, ino: u64, session: &Arc<Session>, flags: i32) -> Option<u64> {
        let direct = lock(&self.direct);
        let losing = lock(&self.losing_names);
        if direct.is_live(ino)
            || !self.cache_is_current(ino, session)
            || losing.contains_key(&ino)
            || lock(&self.inodes).resolve(ino).is_err()
        {
            return None;
        }
        let data = Data::Bridge {
            head: None,
            known: None,
        };
        let fh = self.add_file(ino, session.clone(), flags, None, data);
        drop((losing, direct));
        Some(fh)
    }

    /// The backing file for `open` (the file's `attr`, the daemon's descriptor `fd`) with direct data:
    /// the inode's, if it has handles with direct data (every open of it must have them then); else a
    /// new one, for an open to write, or of a file of at least [`DIRECT_MIN`] bytes, of a session
    /// whose daemon runs on this host (the registry has its pid), with no other open handle here. A
    /// smaller file opened read-only is better served by the head its open brings. The inode's first
    /// direct handle that may write is a change of it (see [`Inner::direct_change`]). `direct` is the
    /// locked [`Inner::direct`].
    fn direct_backing(
        &self,
        direct: &mut Direct,
        open: &RemoteOpen,
        session: &Session,
        attr: &Attr,
        fd: Option<u32>,
        reply: &ReplyOpen,
    ) -> Option<Arc<fuser::BackingId>> {
        let ino = open.ino;
        let writing = !open.read_only;
        if let Some(backing) = self.join_direct(direct, ino, writing) {
            return Some(backing);
        }
        if !self.passthrough.load(Ordering::Relaxed) || (open.read_only && attr.size < DIRECT_MIN) {
            return None;
        }
        let pid = session.pid()?;
        if lock(&self.files).values().any(|f| f.ino == ino) {
            return None;
        }
        let file = match crate::direct::open_daemon_fd(pid, fd?, attr) {
            Ok(file) => file,
            Err(e) => {
                debug!(ino, "no direct data: {e}");
                return None;
            }
        };
        match reply.open_backing(&file) {
            Ok(backing) => {
                // The kernel's pages of the file are not read while it has direct handles, nor
                // written: none is kept by a later open.
                lock(&self.page_stamps).remove(&ino);
                if writing {
                    self.direct_change(ino);
                }
                Some(direct.start(ino, attr, backing, writing))
            }
            Err(e) => {
                // Not permitted (no CAP_SYS_ADMIN) or not supported: not tried again.
                warn!(
                    "the kernel refused a backing file, so file data goes through the bridge: {e}"
                );
                self.passthrough.store(false, Ordering::Relaxed);
                None
            }
        }
    }

    /// The backing file of `ino` for one more handle (`writing`: it may write), if the inode has
    /// direct handles; the inode's first that may write is a change of it ([`Inner::direct_change`]).
    fn join_direct(
        &self,
        direct: &mut Direct,
        ino: u64,
        writing: bool,
    ) -> Option<Arc<fuser::BackingId>> {
        let (backing, now_written) = direct.join(ino, writing)?;
        if now_written {
            self.direct_change(ino);
        }
        Some(backing)
    }

    /// An open of `ino` failed with `ESTALE`: its name names another file now (changed behind the
    /// mount, the event not here yet), and the file is gone. What the bridge remembers of listings
    /// and of the file's pages is dropped, so that the kernel's lookup when it walks the path again
    /// asks the daemon what the name names now.
    fn open_went_stale(&self, ino: u64) {
        debug!(ino, "the file opened is no longer there: stale");
        lock(&self.attrs).changed();
        lock(&self.page_stamps).remove(&ino);
    }

    /// Opens a file through the daemon (a read-only open asks for its head with it).
    async fn open_remote(
        self: Arc<Self>,
        session: Arc<Session>,
        path: WirePath,
        open: RemoteOpen,
        reply: ReplyOpen,
    ) {
        let request = Request::Open {
            path,
            flags: open.flags,
            // The kernel drops its pages at this open and reads the file anew.
            head: if open.read_only { OPEN_HEAD } else { 0 },
            expect: open.expect,
        };
        let (caller, ino) = (open.caller, open.ino);
        let reply = OpenReply {
            reply,
            ino,
            inner: self.clone(),
        };
        self.call_then(
            caller,
            session,
            request,
            reply,
            move |inner, answered, r, OpenReply { reply, .. }| {
                let Reply::Opened { fh, attr, head, fd } = r else {
                    return reply.fail(unexpected(&r));
                };
                let (since, epoch) = (answered.since, open.epoch);
                let whole = fh.is_none();
                let remote = fh.map(|fh| RemoteHandle {
                    conn: answered.conn,
                    fh,
                });
                // Held until the handle is added (see `Inner::direct`).
                let mut direct = lock(&inner.direct);
                let session = &answered.session;
                if let Some(backing) =
                    inner.direct_backing(&mut direct, &open, session, &attr, fd, &reply)
                {
                    let fh = inner.add_file(ino, session.clone(), open.flags, remote, Data::Direct);
                    drop(direct);
                    // The page stamp went when the inode's direct data started, and no open keeps
                    // the kernel's pages while this one is live.
                    return reply.opened_passthrough(
                        FileHandle(fh),
                        open.fopen_flags(false),
                        &backing,
                    );
                }
                if open.mutation.is_none() {
                    inner.keep_attrs(&answered.session, since, epoch, &[(ino, attr)]);
                }
                let keep = inner.keep_cache(ino, &answered.session, &attr, since);
                // Kept pages: the kernel reads nothing, the head is of no use. The head is served only
                // while its stamp stands and nothing changed through the mount since the open began
                // (see `read_head`).
                let head = (!keep && (whole || !head.is_empty())).then(|| Head {
                    data: head,
                    whole,
                    stamp: ContentStamp::of(&attr),
                    epoch,
                });
                let data = Data::Bridge { head, known: None };
                let fh = inner.add_file(ino, answered.session, open.flags, remote, data);
                drop(direct);
                reply.opened(FileHandle(fh), open.fopen_flags(keep));
            },
        )
        .await
    }

    /// Pushes `session`'s pending writes as [`Then`] says, from a task of its own.
    fn push_after(self: &Arc<Self>, session: &Arc<Session>, then: Then) {
        let delay = match then {
            Then::Nothing => return,
            Then::PushLater => WRITE_BEHIND_DELAY,
            Then::PushNow => Duration::ZERO,
        };
        let (sessions, session) = (self.sessions.clone(), session.clone());
        self.rt.spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            sessions.push(&session).await;
        });
    }

    /// Answers a read-only open from a file fetched whole ahead of it, if nothing changed in its
    /// session nor through the mount since its fetch began, and the bridge answered no other version
    /// of the file's attributes meanwhile. Returns the handle (which needs no daemon
    /// handle) and whether the kernel keeps its pages.
    fn open_fetched(
        &self,
        session: &Arc<Session>,
        open: &RemoteOpen,
        fetched: Fetched,
    ) -> Option<(u64, bool)> {
        // Taken first: a writable direct start or end (which moves the epoch) cannot come between
        // the checks and the handle.
        let direct = lock(&self.direct);
        let changing = self.mutating.load(Ordering::Acquire) > 0;
        if changing
            || direct.is_live(open.ino)
            || !session.current_since(fetched.since)
            || lock(&self.attrs).epoch() != fetched.epoch
        {
            return None;
        }
        let (ino, attr) = (open.ino, fetched.attr);
        // The bridge answered another version of the file since (a lookup that raced the change's
        // event): the fetched bytes may be older than what `stat` shows.
        let known = self.cached_attr(ino, session);
        if known.is_some_and(|known| ContentStamp::of(&known) != ContentStamp::of(&attr)) {
            return None;
        }
        self.keep_attrs(session, fetched.since, fetched.epoch, &[(ino, attr)]);
        let keep = self.keep_cache(ino, session, &attr, fetched.since);
        let head = (!keep).then(|| Head {
            data: fetched.data,
            whole: true,
            stamp: ContentStamp::of(&attr),
            epoch: fetched.epoch,
        });
        let data = Data::Bridge { head, known: None };
        let fh = self.add_file(ino, session.clone(), open.flags, None, data);
        drop(direct);
        Some((fh, keep))
    }

    /// A read-only open in `dir` goes to the daemon (`ahead` false), or read-ahead fetched the
    /// listing of `dir` (`ahead` true): fetches the directory's small files if a walk reads them
    /// (see [`crate::heads_ahead`]); returns what waits for the fetch if one started.
    fn fetch_heads(
        self: &Arc<Self>,
        session: &Arc<Session>,
        dir: &crate::read_ahead::DirKey,
        ahead: bool,
    ) -> Option<FetchWaiter> {
        let (done, waiter) = tokio::sync::watch::channel(FetchEnd::Pending);
        let (attr_epoch, now) = (lock(&self.attrs).epoch(), Instant::now());
        let started = if ahead {
            lock(&self.heads_ahead).ahead(dir, waiter.clone(), now)
        } else {
            lock(&self.heads_ahead).opened(dir, attr_epoch, waiter.clone(), now)
        };
        let epoch = started?;
        let (inner, session, dir) = (self.clone(), session.clone(), dir.clone());
        self.rt.spawn(async move {
            let since = session.generation();
            let attr_epoch = lock(&inner.attrs).epoch();
            let request = Request::ReadHeads {
                path: dir.1.clone(),
                max_each: OPEN_HEAD,
            };
            // As root: the kernel checks the reader's permissions before each open.
            let reply = inner
                .sessions
                .call(&session, Caller::default(), request)
                .await;
            let now = Instant::now();
            let end = FetchEnd::of(&reply);
            let files = match reply {
                Ok((Reply::Heads(files), _)) => files
                    .into_iter()
                    .filter_map(|f| {
                        let path = dir.1.join(&f.name).ok()?;
                        Some((path, Fetched::new(f.attr, f.data, since, attr_epoch, now)))
                    })
                    .collect(),
                _ => Vec::new(),
            };
            lock(&inner.heads_ahead).fetched(&dir, epoch, files, now);
            let _ = done.send(end);
        });
        Some(waiter)
    }

    /// The first page of `dir` from read-ahead: one waiting, or the one on its way (waited for,
    /// within that request's timeout). `None`: the caller fetches it (see [`ReadAhead::claim`]).
    async fn read_ahead_page(&self, dir: &DirRef) -> Option<Arc<DirPage>> {
        if let Some(page) = self.take_read_ahead(dir) {
            return Some(page);
        }
        let key = (dir.session.id.clone(), dir.path.clone());
        let claim = lock(&self.read_ahead).claim(&key);
        match claim {
            Claim::Fetch => None,
            Claim::Wait(mut done) => {
                // Ends with an error once the fetch's task has dropped its sender.
                let _ = done.changed().await;
                self.take_read_ahead(dir)
            }
        }
    }

    /// The first page of `dir` if read-ahead fetched it and nothing changed in the session since.
    fn take_read_ahead(&self, dir: &DirRef) -> Option<Arc<DirPage>> {
        let key = (dir.session.id.clone(), dir.path.clone());
        let page = lock(&self.read_ahead).take(&key)?;
        let current = dir.session.current_since(page.generation)
            && page.fetched.elapsed() <= self.watched_ttl;
        current.then_some(page).filter(|p| !self.lists_written(p))
    }

    /// Whether `page` lists a file written directly right now, whose size and times there may be
    /// old (see [`crate::direct`]); such a page is fetched again instead. A writable direct end
    /// drops every page kept ([`Inner::direct_change`]).
    fn lists_written(&self, page: &DirPage) -> bool {
        let direct = lock(&self.direct);
        direct.any_written()
            && page
                .entries
                .iter()
                .any(|e| direct.is_written(e.attr.dev, e.attr.ino))
    }

    /// `dir` was listed from its start (`page`): fetches its subdirectories' listings ahead if this
    /// is a step of a tree walk (see [`crate::read_ahead`]). Only for watched sessions, whose
    /// changes void what was fetched.
    fn read_ahead_after(self: &Arc<Self>, dir: &DirRef, page: &DirPage) {
        if !dir.session.is_watched() {
            return;
        }
        let subdirs = page
            .entries
            .iter()
            .filter(|e| crate::inodes::is_dir(&e.attr))
            .filter_map(|e| dir.path.join(&e.name).ok())
            .collect();
        let (start, epoch) = lock(&self.read_ahead).listed(
            &dir.session.id,
            &dir.path,
            subdirs,
            page.ahead,
            Instant::now(),
        );
        for path in start {
            let (inner, session) = (self.clone(), dir.session.clone());
            self.rt.spawn(async move {
                let Ok(_slot) = inner.read_ahead_slots.clone().acquire_owned().await else {
                    return;
                };
                let key = (session.id.clone(), path);
                // Dropped when the fetch has ended: a kernel listing waiting for it looks again.
                let (_done, waiter) = tokio::sync::watch::channel(());
                if !lock(&inner.read_ahead).sending(&key, waiter) {
                    return; // a kernel listing fetched it itself
                }
                let path = key.1.clone();
                let generation = session.generation();
                let attr_epoch = lock(&inner.attrs).epoch();
                let request = Request::ReadDir {
                    path: path.clone(),
                    offset: 0,
                    limit: MAX_DIR_PAGE,
                };
                // As root: the kernel checks the reader's permissions before it reads a listing.
                let page = match inner
                    .sessions
                    .call(&session, Caller::default(), request)
                    .await
                {
                    Ok((Reply::Entries { entries, next }, _)) => Some(Arc::new(DirPage {
                        start: 0,
                        entries,
                        more: next.is_some(),
                        fetched: Instant::now(),
                        generation,
                        ahead: true,
                        attr_epoch,
                    })),
                    _ => None,
                };
                let counted = page.clone().map(|p| {
                    let n = p.entries.len();
                    (p, n)
                });
                if page.is_some() {
                    // A walk that reads what it lists gets the files with the listing.
                    inner.fetch_heads(&session, &key, true);
                }
                let kept = lock(&inner.read_ahead).fetched(key.clone(), epoch, counted);
                // A complete listing also answers lookups of its names (see `listed`).
                if let Some(page) = page.filter(|p| kept && !p.more) {
                    let ino = lock(&inner.inodes).find(key.0.as_str(), &key.1);
                    if let Some(ino) = ino {
                        inner.remember_listing(ino, &page);
                    }
                }
            });
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
        if config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(2).is_ok()
        {
            self.inner.passthrough.store(true, Ordering::Relaxed);
        }
        let no_opendir = config
            .capabilities()
            .contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        self.inner.no_opendir.store(no_opendir, Ordering::Relaxed);
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
        // Writes acknowledged to files still open at unmount: sent before the connections close.
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

    fn lookup(&self, req: &FuseRequest, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 != ROOT_INO {
            return self.lookup_in_session(req, parent, name, reply);
        }
        let Some(session) = name.to_str().and_then(|n| self.inner.sessions.get(n)) else {
            return reply.error(Errno::ENOENT);
        };
        let target = Ok((
            session,
            Request::Lookup {
                path: WirePath::root(),
            },
        ));
        self.remote(
            caller(req),
            target,
            reply,
            |inner, answered, r, reply| match r {
                Reply::Attr(attr) => {
                    let ino = {
                        let mut inodes = lock(&inner.inodes);
                        let ino = inodes.session_root(&answered.session);
                        inodes.count_lookup(ino);
                        ino
                    };
                    reply.entry(&answered.ttl, &file_attr(ino, &attr), Generation(0));
                }
                other => reply.fail(unexpected(&other)),
            },
        );
    }

    fn forget(&self, _req: &FuseRequest, ino: INodeNo, nlookup: u64) {
        let forgotten = {
            let mut inodes = lock(&self.inner.inodes);
            inodes.forget(ino.0, nlookup);
            inodes.resolve(ino.0).is_err()
        };
        if forgotten {
            // The kernel dropped the inode, so also every entry below it.
            lock(&self.inner.negatives).forget_dir(ino.0);
            lock(&self.inner.dir_pages).remove(&ino.0);
            self.inner.forget_listing(ino.0);
            // Changes reported while the kernel does not know the inode cannot find it.
            lock(&self.inner.attrs).remove(ino.0);
            lock(&self.inner.made_dirs).forget(ino.0);
            lock(&self.inner.no_capability).remove(&ino.0);
            lock(&self.inner.page_stamps).remove(&ino.0);
        }
    }

    fn getattr(&self, req: &FuseRequest, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino.0 == ROOT_INO {
            return reply.attr(&self.inner.ttl, &self.root_attr());
        }
        // A file the kernel writes directly: only the daemon knows its size and times.
        if !lock(&self.inner.direct).is_live(ino.0) {
            // A file created through the mount, with changes pending: as they will leave it (the
            // kernel asks before every `chown`). Not cached: the change time is the bridge's guess.
            if let Some(attr) = self.known_attr(ino) {
                return reply.attr(&Duration::ZERO, &file_attr(ino.0, &attr));
            }
            // The kernel asks again after it invalidated the atime itself (after every read and
            // listing it got from here), though nothing changed: answered from memory while that
            // is known.
            if let Ok((session, _)) = self.node(ino) {
                if let Some(attr) = self.inner.cached_attr(ino.0, &session) {
                    return reply.attr(&self.inner.watched_ttl, &file_attr(ino.0, &attr));
                }
            }
        }
        self.attr_request(req, ino, fh, reply, None, |path, fh| Request::GetAttr {
            path,
            fh,
        });
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
        if ino.0 == ROOT_INO {
            return reply.error(Errno::EPERM);
        }
        let mutation = self.inner.mutation_of(ino.0);
        let attrs = SetAttrs {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
        };
        // A file this mount created and holds open, changed by nothing else since: answered from
        // what it knows and sent behind the file's writes (a truncate never is).
        if let Some((handle, file, remote)) = self.knowing_handle(ino).filter(|_| size.is_none()) {
            let number = mutation.number;
            let predicted = if file.session.write_behind.has_failed(handle) {
                None
            } else {
                file.account(number, |k| k.set(number, &attrs, SystemTime::now()))
            };
            if let Some(attr) = predicted {
                let deferred = Deferred {
                    handle,
                    conn: remote.conn.stable_id(),
                    change: BatchedChange::SetAttr {
                        fh: remote.fh,
                        attrs,
                    },
                    guard: Box::new(DeferredWrite::new(mutation)),
                };
                // Not cached by the kernel: the change time is the bridge's guess until the
                // change's event.
                return self.defer(&file.session, deferred, move |r| match r {
                    Ok(()) => reply.attr(&Duration::ZERO, &file_attr(ino.0, &attr)),
                    Err(e) => reply.error(e),
                });
            }
        }
        self.attr_request(req, ino, fh, reply, Some(mutation), |path, fh| {
            Request::SetAttr { path, fh, attrs }
        });
    }

    fn readlink(&self, req: &FuseRequest, ino: INodeNo, reply: ReplyData) {
        self.on_node(
            req,
            ino,
            reply,
            |path| Request::Readlink { path },
            |_, r, reply| match r {
                Reply::Data(d) => reply.data(&d),
                other => reply.fail(unexpected(&other)),
            },
        );
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
        // Device nodes reach here only from callers the kernel allowed to create them (CAP_MKNOD);
        // the mount is `nodev`, so they can never be opened through it.
        let kind = match mode & S_IFMT {
            S_IFREG | 0 => NodeKind::Regular,
            S_IFIFO => NodeKind::Fifo,
            S_IFSOCK => NodeKind::Socket,
            S_IFCHR => NodeKind::CharDevice {
                rdev: u64::from(rdev),
            },
            S_IFBLK => NodeKind::BlockDevice {
                rdev: u64::from(rdev),
            },
            _ => return reply.error(Errno::EINVAL),
        };
        let mode = mode & 0o7777;
        self.entry_request(
            req,
            parent,
            name,
            |path| Request::Mknod { path, kind, mode },
            reply,
        );
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
        self.entry_request(
            req,
            parent,
            name,
            |path| Request::Mkdir { path, mode },
            reply,
        );
    }

    fn unlink(&self, req: &FuseRequest, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mutation = self.inner.mutation();
        let target = self
            .child(parent, name)
            .map(|(s, path)| (s, Request::Unlink { path }));
        let victims = self.inner.unopened_handles_of(parent.0, name.as_bytes());
        let name = name.as_bytes().to_vec();
        self.empty_request(req, target, victims, reply, mutation, move |inodes| {
            inodes.unlink(parent.0, &name)
        });
    }

    fn rmdir(&self, req: &FuseRequest, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mutation = self.inner.mutation();
        let target = self
            .child(parent, name)
            .map(|(s, path)| (s, Request::Rmdir { path }));
        let name = name.as_bytes().to_vec();
        self.empty_request(
            req,
            target,
            (Vec::new(), None),
            reply,
            mutation,
            move |inodes| inodes.unlink(parent.0, &name),
        );
    }

    fn symlink(
        &self,
        req: &FuseRequest,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let target = target.as_os_str().as_bytes().to_vec();
        self.entry_request(
            req,
            parent,
            link_name,
            |path| Request::Symlink { path, target },
            reply,
        );
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
        let mutation = self.inner.mutation();
        let target = self.child(parent, name).and_then(|(session, from)| {
            let (to_session, to) = self.child(newparent, newname)?;
            // Different sessions are different file systems.
            if !Arc::ptr_eq(&session, &to_session) {
                return Err(Errno::EXDEV);
            }
            Ok((
                session,
                Request::Rename {
                    from,
                    to,
                    flags: flags.bits(),
                },
            ))
        });
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        // The file a rename replaces (an exchange keeps both).
        let victims = if exchange {
            (Vec::new(), None)
        } else {
            self.inner
                .unopened_handles_of(newparent.0, newname.as_bytes())
        };
        let binding = self.inner.binding(newparent.0, newname.as_bytes());
        let name = name.as_bytes().to_vec();
        self.empty_request(req, target, victims, reply, mutation, move |inodes| {
            inodes.rename(parent.0, &name, newparent.0, &binding.name, exchange);
            binding.bound();
        });
    }

    fn link(
        &self,
        req: &FuseRequest,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let from = match (self.node(ino), self.node(newparent)) {
            (Ok((s, from)), Ok((t, _))) if Arc::ptr_eq(&s, &t) => from,
            (Ok(_), Ok(_)) => return reply.error(Errno::EXDEV),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        self.entry_request(
            req,
            newparent,
            newname,
            |to| Request::Link { from, to },
            reply,
        );
    }

    fn open(&self, req: &FuseRequest, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let read_only = !may_write(flags.0);
        // A node with no name left is opened by its identity alone (a rename through the mount
        // replaced it a moment ago, after the kernel resolved the name: see `Request::Open`).
        let (session, path, expect) = match lock(&self.inner.inodes).to_open(ino.0) {
            Ok(v) => v,
            Err(e) => return reply.error(stale_errno(e)),
        };
        let open = RemoteOpen {
            caller: caller(req),
            ino: ino.0,
            flags: flags.0,
            read_only,
            // O_TRUNC changes the file.
            mutation: (flags.0 & libc::O_TRUNC != 0).then(|| self.inner.mutation()),
            epoch: lock(&self.inner.attrs).epoch(),
            expect,
        };
        if !read_only || !session.is_watched() {
            return self.spawn(self.inner.clone().open_remote(session, path, open, reply));
        }
        // Reading a file whose pages the kernel has and that did not change since: no round trip;
        // the daemon's handle is opened only if a read misses the cache.
        if self.inner.cache_is_current(ino.0, &session) {
            return match self.inner.open_unopened(ino.0, &session, flags.0) {
                Some(fh) => reply.opened(FileHandle(fh), open.fopen_flags(true)),
                None => self.spawn(self.inner.clone().open_remote(session, path, open, reply)),
            };
        }
        // Fetched ahead with its directory's small files (see `crate::heads_ahead`), or being fetched.
        let Some(dir) = path.parent() else {
            return self.spawn(self.inner.clone().open_remote(session, path, open, reply));
        };
        let file_key = (session.id.clone(), path.clone());
        let dir_key = (session.id.clone(), dir);
        let found = lock(&self.inner.heads_ahead).find(&file_key, &dir_key, Instant::now());
        let mut waiter = match found {
            Found::File(fetched) => {
                if let Some(answer) = self.inner.open_fetched(&session, &open, fetched) {
                    return reply.opened(FileHandle(answer.0), open.fopen_flags(answer.1));
                }
                None
            }
            Found::Wait(waiter) => Some(waiter),
            Found::Nothing => None,
        };
        if waiter.is_none() {
            let started = self.inner.fetch_heads(&session, &dir_key, false);
            // A small file comes with the fetch just started: wait for that rather than open it.
            let small = self
                .inner
                .cached_attr(ino.0, &session)
                .is_some_and(|a| a.size < u64::from(OPEN_HEAD));
            waiter = started.filter(|_| small);
        }
        let inner = self.inner.clone();
        self.spawn(async move {
            if let Some(waiter) = waiter {
                if let Err(e) = fetch_ended(waiter).await {
                    return reply.error(e);
                }
                let found = lock(&inner.heads_ahead).find(&file_key, &dir_key, Instant::now());
                if let Found::File(fetched) = found {
                    if let Some((fh, keep)) = inner.open_fetched(&session, &open, fetched) {
                        return reply.opened(FileHandle(fh), open.fopen_flags(keep));
                    }
                }
            }
            inner.open_remote(session, path, open, reply).await
        });
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
        let mutation = self.inner.mutation();
        let target = self.child(parent, name);
        let path = target.as_ref().map(|(_, p)| p.clone()).unwrap_or_default();
        let target = target.map(|(s, path)| (s, Request::Create { path, mode, flags }));
        let binding = self.inner.binding(parent.0, name.as_bytes());
        self.remote(
            caller(req),
            target,
            reply,
            move |inner, answered, r, reply| match (r, mutation) {
                (
                    Reply::Created {
                        fh,
                        attr,
                        parent: dir_attr,
                    },
                    mutation,
                ) => {
                    let learned = lock(&inner.inodes).learn(parent.0, &binding.name, &attr);
                    let Some(ino) = learned else {
                        return reply.error(Errno::ESTALE);
                    };
                    binding.bound();
                    if flags & libc::O_EXCL != 0 {
                        // This call made the file: it has no extended attributes, so no capability.
                        inner.no_capability_known(ino, &answered.session, answered.since, &path);
                    }
                    let remote = RemoteHandle {
                        conn: answered.conn,
                        fh,
                    };
                    let (session, since) = (answered.session.clone(), answered.since);
                    // An existing file (no O_EXCL) whose other handles have direct data: this one
                    // has it too (see `Inner::direct`).
                    let mut direct = lock(&inner.direct);
                    let backing = inner.join_direct(&mut direct, ino, may_write(flags));
                    // Its later attribute changes may be sent behind its writes while nothing
                    // else changes it; from here only if nothing could come between (as for
                    // keeping a change's own reply, see `Mutation::end`), no change event about
                    // the file included (one could not be matched to it yet).
                    let known = (backing.is_none()
                        && deferrable(flags)
                        && mutation.only_writes_before
                        && session.is_watched()
                        && !session.changed_since(since, &path))
                    .then(|| Known::new(attr, mutation.number));
                    let data = match backing {
                        Some(_) => Data::Direct,
                        None => Data::Bridge { head: None, known },
                    };
                    let fh = inner.add_file(ino, answered.session, flags, Some(remote), data);
                    drop(direct);
                    // The kernel asks for the directory's attributes next (it dropped them); kept
                    // before it has the reply, so that no change it makes next (a write to the
                    // file) can come between.
                    inner.keep_own_reply(mutation, &session, since, parent.0, dir_attr);
                    let (attr, fh) = (file_attr(ino, &attr), FileHandle(fh));
                    let flags = FopenFlags::empty();
                    match backing {
                        Some(backing) => reply.created_passthrough(
                            &answered.ttl,
                            &attr,
                            Generation(0),
                            fh,
                            flags,
                            &backing,
                        ),
                        None => reply.created(&answered.ttl, &attr, Generation(0), fh, flags),
                    }
                }
                (other, _mutation) => reply.fail(unexpected(&other)),
            },
        );
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
        if let Some(data) = self.inner.read_head(fh, offset, size) {
            return reply.data(&data);
        }
        // The kernel never asks for more than max_pages (at most 1 MiB = MAX_IO_CHUNK) at once.
        self.on_file(
            req,
            fh,
            reply,
            move |remote| Request::Read {
                fh: remote,
                offset,
                size,
            },
            |r, _, reply| match r {
                Reply::Data(d) => reply.data(&d),
                other => reply.fail(unexpected(&other)),
            },
        );
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
        let mutation = self.inner.mutation_of(ino.0);
        let file = match self.open_file(fh) {
            Ok(file) => file,
            Err(e) => return reply.error(e),
        };
        // An earlier write acknowledged before it was written failed: this handle reports it.
        if let Some(e) = file.session.write_behind.take_failure(fh.0) {
            return reply.error(errno_of(&e));
        }
        let remote = file
            .remote
            .get()
            .filter(|r| r.conn.close_reason().is_none());
        if let Some(remote) = remote.filter(|_| deferrable(file.flags)) {
            let (number, len) = (mutation.number, data.len());
            file.account(number, |k| {
                k.write(number, offset, len as u64, SystemTime::now())
            });
            let deferred = Deferred {
                handle: fh.0,
                conn: remote.conn.stable_id(),
                change: BatchedChange::Write(BatchedWrite {
                    fh: remote.fh,
                    offset,
                    data: data.to_vec(),
                }),
                guard: Box::new(DeferredWrite::new(mutation)),
            };
            return self.defer(&file.session, deferred, move |r| match r {
                Ok(()) => reply.written(len as u32),
                Err(e) => reply.error(e),
            });
        }
        // Written before it is answered, carrying the pending writes ahead of it.
        let data = data.to_vec();
        self.on_file(
            req,
            fh,
            reply,
            move |remote| Request::Write {
                fh: remote,
                offset,
                data,
            },
            move |r, _, reply| {
                let _mutation = mutation;
                match r {
                    Reply::Written(n) => reply.written(n),
                    other => reply.fail(unexpected(&other)),
                }
            },
        );
    }

    /// Sent at every `close`: pushes the handle's writes that were acknowledged before they were
    /// written and reports the first that failed (see [`crate::write_behind`]). Without such writes,
    /// answered here without a round trip (locks are the host kernel's). A handle whose connection is
    /// known to be gone fails with `EIO`.
    fn flush(
        &self,
        _req: &FuseRequest,
        _ino: INodeNo,
        fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        let file = match self.open_file(fh) {
            Ok(file) => file,
            Err(e) => return reply.error(e),
        };
        // Closed: what it knew of its file is the daemon's to say from now on.
        *lock(&file.known) = None;
        if !file.session.write_behind.holds(fh.0) {
            return match (
                file.session.write_behind.take_failure(fh.0),
                file.remote.get(),
            ) {
                (Some(e), _) => reply.error(errno_of(&e)),
                (None, Some(remote)) if remote.conn.close_reason().is_some() => {
                    reply.error(Errno::EIO)
                }
                (None, _) => reply.ok(),
            };
        }
        let inner = self.inner.clone();
        self.spawn(async move {
            let writes = &file.session.write_behind;
            inner.sessions.push(&file.session).await;
            // Another request may be carrying them (each batch is bounded in time).
            writes.landed(fh.0).await;
            match writes.take_failure(fh.0) {
                Some(e) => reply.error(errno_of(&e)),
                None => reply.ok(),
            }
        });
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
        // While an inode has direct handles, all its handles are (see `Inner::direct`). The lock is
        // taken before the file table's, as by the opens, and held until what follows is done, so
        // that no open finds the handle gone but its inode's direct data not (it would start its
        // own, and the release would count it out).
        let mut direct = lock(&self.inner.direct);
        let Some(file) = lock(&self.inner.files).remove(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let last = if file.direct {
            direct.leave(file.ino)
        } else {
            None
        };
        if let Some(written) = last {
            // The kernel's pages of the file (it read the backing file's) and its remembered
            // attributes (its atime moved) are not to be trusted.
            lock(&self.inner.page_stamps).remove(&file.ino);
            if written {
                // Written directly, where the bridge never saw it: nothing remembered of the file
                // from before or meanwhile is answered from now on (small files fetched ahead and
                // fetches under way, listings, attributes, a change's own reply kept late).
                self.inner.direct_change(file.ino);
            } else {
                lock(&self.inner.attrs).remove(file.ino);
            }
        }
        drop(direct);
        {
            let mut knowing = lock(&self.inner.knowing);
            if knowing.get(&file.ino) == Some(&fh.0) {
                knowing.remove(&file.ino);
            }
        }
        // The kernel does not wait on release: answered at once, and the daemon's handle is closed
        // with the session's next request or within the write-behind delay (after the handle's
        // pending changes).
        reply.ok();
        let Some(remote) = file
            .remote
            .get()
            .filter(|r| r.conn.close_reason().is_none())
        else {
            return file.session.write_behind.closed(fh.0);
        };
        let deferred = Deferred {
            handle: fh.0,
            conn: remote.conn.stable_id(),
            change: BatchedChange::Release { fh: remote.fh },
            guard: Box::new(()),
        };
        self.defer(&file.session, deferred, |_| {});
    }

    fn fsync(
        &self,
        req: &FuseRequest,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let session = self.open_file(fh).map(|f| f.session.clone());
        self.on_file(
            req,
            fh,
            reply,
            move |remote| Request::Fsync {
                fh: remote,
                datasync,
            },
            // The sync carried the handle's pending writes; one of them may have failed.
            move |_, _, reply| match session.ok().and_then(|s| s.write_behind.take_failure(fh.0)) {
                Some(e) => reply.error(errno_of(&e)),
                None => reply.ok(),
            },
        );
    }

    /// Where the kernel supports it, answered `ENOSYS` once: the kernel then stops sending
    /// OPENDIR and RELEASEDIR (two requests per directory listed) and keeps every listing in its
    /// readdir cache. That cache is dropped by an invalidation of the directory (watched sessions) and
    /// revalidated against the directory's mtime at each listing once its attributes expire (the
    /// short TTL of unwatched sessions). Listings are fetched by inode (see [`Inner::dir_page`]).
    fn opendir(&self, _req: &FuseRequest, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.inner.no_opendir.load(Ordering::Relaxed) {
            return reply.error(Errno::ENOSYS);
        }
        if ino.0 == ROOT_INO {
            return reply.opened(FileHandle(0), FopenFlags::empty());
        }
        let session = match self.node(ino) {
            Ok((session, _)) => session,
            Err(e) => return reply.error(e),
        };
        // While the session's changes are pushed, the kernel keeps listings in its readdir cache
        // across opens; a change in the directory drops it (inval_inode), as does any change made
        // through the mount (the kernel's own bookkeeping).
        let flags = if session.is_watched() {
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        reply.opened(FileHandle(0), flags);
    }

    fn readdir(
        &self,
        req: &FuseRequest,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino.0 == ROOT_INO {
            let ids = self.inner.sessions.ids();
            let mut names: Vec<(u64, FileType, String)> = vec![
                (ROOT_INO, FileType::Directory, ".".into()),
                (ROOT_INO, FileType::Directory, "..".into()),
            ];
            {
                let mut inodes = lock(&self.inner.inodes);
                for id in ids {
                    if let Some(s) = self.inner.sessions.get(id.as_str()) {
                        names.push((inodes.session_root(&s), FileType::Directory, id.to_string()));
                    }
                }
            }
            for (i, (ino, kind, name)) in names.iter().enumerate().skip(offset as usize) {
                if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                    break;
                }
            }
            return reply.ok();
        }
        let dir = match self.dir_ref(ino) {
            Ok(dir) => dir,
            Err(e) => return reply.error(e),
        };
        // Plain readdir (when the kernel does not use readdirplus): the daemon's inode numbers stand in
        // for d_ino.
        for (i, name) in [".", ".."].iter().enumerate().skip(offset as usize) {
            if reply.add(ino, i as u64 + 1, FileType::Directory, name) {
                return reply.ok();
            }
        }
        let inner = self.inner.clone();
        let caller = caller(req);
        let from = offset.saturating_sub(DOT_ENTRIES);
        self.spawn(async move {
            let (page, skip) = match inner.dir_page(&dir, caller, from, true).await {
                Ok(v) => v,
                Err(e) => return reply.error(errno_of(&e)),
            };
            if dir.session.generation() != page.generation {
                inner.sessions.invalidate(Invalidation::Inode(ino.0));
            }
            for e in &page.entries[skip..] {
                let kind = file_type(e.attr.mode);
                if reply.add(
                    INodeNo(e.attr.ino),
                    DOT_ENTRIES + e.next_offset,
                    kind,
                    OsStr::from_bytes(&e.name),
                ) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn readdirplus(
        &self,
        req: &FuseRequest,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        if ino.0 == ROOT_INO {
            return self.root_readdirplus(offset, reply);
        }
        let dir = match self.dir_ref(ino) {
            Ok(dir) => dir,
            Err(e) => return reply.error(e),
        };
        // "." and ".." carry no lookup count in readdirplus; the kernel ignores their attributes.
        let dot_attr = FileAttr {
            ino,
            ..self.root_attr()
        };
        for (i, name) in [".", ".."].iter().enumerate().skip(offset as usize) {
            if reply.add(
                ino,
                i as u64 + 1,
                name,
                &Duration::ZERO,
                &dot_attr,
                Generation(0),
            ) {
                return reply.ok();
            }
        }
        let from = offset.saturating_sub(DOT_ENTRIES);
        // At hand (a walk's read-ahead, the rest of a page): answered here, on the FUSE thread.
        let mut use_cache = true;
        if let Some((page, skip)) = self.inner.dir_page_ready(&dir, from) {
            if !self.inner.page_conflicts(ino.0, &page, skip) {
                return self.inner.reply_entries(ino, &dir, &page, skip, reply);
            }
            use_cache = false;
        }
        let inner = self.inner.clone();
        let caller = caller(req);
        self.spawn(async move {
            let (mut page, mut skip) = match inner.dir_page(&dir, caller, from, use_cache).await {
                Ok(v) => v,
                Err(e) => return reply.error(errno_of(&e)),
            };
            if use_cache && inner.page_conflicts(ino.0, &page, skip) {
                (page, skip) = match inner.dir_page(&dir, caller, from, false).await {
                    Ok(v) => v,
                    Err(e) => return reply.error(errno_of(&e)),
                };
            }
            inner.reply_entries(ino, &dir, &page, skip, reply);
        });
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

    fn fsyncdir(
        &self,
        req: &FuseRequest,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        if ino.0 == ROOT_INO {
            return reply.ok();
        }
        // Durable renames (write, rename, fsync the directory) need the daemon's directory synced.
        let target = self
            .node(ino)
            .map(|(s, path)| (s, Request::FsyncDir { path, datasync }));
        self.remote(caller(req), target, reply, |_, _, _, reply| reply.ok());
    }

    fn statfs(&self, req: &FuseRequest, ino: INodeNo, reply: ReplyStatfs) {
        if ino.0 == ROOT_INO {
            return reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096);
        }
        self.on_node(
            req,
            ino,
            reply,
            |_| Request::StatFs,
            |_, r, reply| match r {
                Reply::StatFs(s) => reply.statfs(
                    s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
                ),
                other => reply.fail(unexpected(&other)),
            },
        );
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
        lock(&self.inner.no_capability).remove(&ino.0);
        let mutation = self.inner.mutation();
        let (name, value) = (name.as_bytes().to_vec(), value.to_vec());
        let target = self.node(ino).map(|(s, path)| {
            (
                s,
                Request::SetXattr {
                    path,
                    name,
                    value,
                    flags,
                },
            )
        });
        self.empty_request(req, target, (Vec::new(), None), reply, mutation, |_| {});
    }

    fn getxattr(
        &self,
        req: &FuseRequest,
        ino: INodeNo,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        if ino.0 == ROOT_INO {
            return reply.error(Errno::ENODATA);
        }
        if name.as_bytes() == CAPABILITY_XATTR {
            return self.capability_xattr(req, ino, size, reply);
        }
        let name = name.as_bytes().to_vec();
        self.on_node(
            req,
            ino,
            reply,
            |path| Request::GetXattr { path, name, size },
            xattr_answer,
        );
    }

    fn listxattr(&self, req: &FuseRequest, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if ino.0 == ROOT_INO {
            return if size == 0 {
                reply.size(0)
            } else {
                reply.data(&[])
            };
        }
        self.on_node(
            req,
            ino,
            reply,
            |path| Request::ListXattr { path, size },
            xattr_answer,
        );
    }

    fn removexattr(&self, req: &FuseRequest, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        lock(&self.inner.no_capability).remove(&ino.0);
        let mutation = self.inner.mutation();
        let name = name.as_bytes().to_vec();
        let target = self
            .node(ino)
            .map(|(s, path)| (s, Request::RemoveXattr { path, name }));
        self.empty_request(req, target, (Vec::new(), None), reply, mutation, |_| {});
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

impl BridgeFs {
    /// Lists the sessions without contacting any daemon: their entries carry placeholder directory
    /// attributes with a zero TTL, so the kernel asks the daemon (`getattr`) before showing any.
    fn root_readdirplus(&self, offset: u64, mut reply: ReplyDirectoryPlus) {
        let root = self.root_attr();
        let sessions: Vec<Arc<Session>> = self
            .inner
            .sessions
            .ids()
            .iter()
            .filter_map(|id| self.inner.sessions.get(id.as_str()))
            .collect();
        let mut inodes = lock(&self.inner.inodes);
        let dots = [(".", root), ("..", root)];
        for (i, (name, attr)) in dots.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(ROOT_INO),
                i as u64 + 1,
                name,
                &Duration::ZERO,
                attr,
                Generation(0),
            ) {
                return reply.ok();
            }
        }
        for (i, session) in sessions
            .iter()
            .enumerate()
            .skip((offset as usize).saturating_sub(2))
        {
            let ino = inodes.session_root(session);
            let attr = FileAttr {
                ino: INodeNo(ino),
                nlink: 2,
                ..root
            };
            if reply.add(
                INodeNo(ino),
                i as u64 + 3,
                session.id.as_str(),
                &Duration::ZERO,
                &attr,
                Generation(0),
            ) {
                break;
            }
            // The kernel takes a lookup reference for every entry it receives.
            inodes.count_lookup(ino);
        }
        drop(inodes);
        reply.ok();
    }

    /// Reads [`CAPABILITY_XATTR`] of `ino`: answered `ENODATA` from memory when the file is known to
    /// have none and its session is watched; an `ENODATA` from the daemon is remembered only if
    /// neither an invalidation of the session nor a change through the mount (a `setxattr`, which
    /// holds a [`Mutation`]) crossed the call (recorded first, then checked, as negative entries are:
    /// an invalidation after the check finds the record and drops it).
    fn capability_xattr(&self, req: &FuseRequest, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let (session, path) = match self.node(ino) {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        if session.is_watched() && lock(&self.inner.no_capability).contains(&ino.0) {
            return reply.error(Errno::ENODATA);
        }
        let (inner, caller) = (self.inner.clone(), caller(req));
        let epoch = lock(&self.inner.attrs).epoch();
        self.spawn(async move {
            let since = session.generation();
            let request = Request::GetXattr {
                path: path.clone(),
                name: CAPABILITY_XATTR.to_vec(),
                size,
            };
            match inner.sessions.call(&session, caller, request).await {
                Ok((r, _)) => xattr_answer(&inner, r, reply),
                Err(e) if e.errno == errno::ENODATA => {
                    inner.no_capability_known(ino.0, &session, since, &path);
                    if lock(&inner.attrs).epoch() != epoch {
                        lock(&inner.no_capability).remove(&ino.0);
                    }
                    reply.error(Errno::ENODATA)
                }
                Err(e) => reply.fail(errno_of(&e)),
            }
        });
    }
}

fn xattr_answer(_: &Inner, r: Reply, reply: ReplyXattr) {
    match r {
        Reply::XattrSize(n) => reply.size(n),
        Reply::Data(d) => reply.data(&d),
        other => reply.fail(unexpected(&other)),
    }
}

/// The fuser reply types, which all answer an error the same way.
trait Fail: Send + 'static {
    fn fail(self, e: Errno);
}

macro_rules! impl_fail {
    ($($t:ty),*) => {
        $(impl Fail for $t {
            fn fail(self, e: Errno) {
                self.error(e)
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
    ReplyXattr
);
