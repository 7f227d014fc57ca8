//! The core's tests, without FUSE: the core answers recording replies, and its daemon is the real
//! daemon's request handling (`sessionfs_daemon::dispatch` on a temporary directory) reached
//! through an in-process [`Link`] instead of QUIC.
//!
//! What is simulated: the transport (no QUIC, no TLS) and the daemon's change stream, which the test
//! writes itself ([`Daemon::changes`]: what the daemon's inotify watcher reports for a change, sent
//! when the test chooses, so that a change event can be put between a request and its reply, or
//! after a reply, deterministically). The kernel is simulated by the recorded replies and
//! invalidations. Everything else (the core, its caches, the session layer with its write-behind, the
//! daemon's file system calls) is the real code.

mod basics;
mod hardening;
mod model;
mod races;

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo};
use sessionfs_daemon::{dispatch, Handles, Workspace};
use sessionfs_proto::{
    Caller, Change, EntryNow, ErrorReply, Reply, Request, RequestFrame, WatchFrame, WirePath,
};
use sessionfs_registry::{Backend, Registry, SessionId, SessionRecord, SessionState};

use super::reply::*;
use super::Core;
use crate::config::BridgeConfig;
use crate::link::{BoxFuture, ChangeStream, Conn, Dialer, Link};
use crate::session::{Session, Sessions};

/// How long a test waits for anything (a reply, a held request, the invalidator) before failing.
const BOUND: Duration = Duration::from_secs(10);

/// The id of the one session of a test bridge.
const SESSION: &str = "s";

/// The root user: the daemon checks nothing against it, as the kernel checks permissions itself.
const ROOT: Caller = Caller { uid: 0, gid: 0 };

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A request the daemon has handled but whose reply it holds until released (see [`Daemon::hold`]).
pub(super) struct Held {
    reached: std::sync::mpsc::Receiver<()>,
    release: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Held {
    /// Waits until the daemon has handled the request and holds its reply.
    pub(super) fn reached(&self) {
        self.reached
            .recv_timeout(BOUND)
            .expect("the held request never reached the daemon");
    }

    /// Lets the reply go.
    pub(super) fn release(mut self) {
        if let Some(tx) = self.release.take() {
            let _ = tx.send(());
        }
    }
}

type Matcher = Box<dyn Fn(&Request) -> bool + Send + Sync>;

struct Hold {
    matches: Matcher,
    reached: std::sync::mpsc::Sender<()>,
    release: tokio::sync::oneshot::Receiver<()>,
}

/// A session's daemon: the real request handling on a temporary workspace.
pub(super) struct Daemon {
    root: tempfile::TempDir,
    ws: Workspace,
    handles: Handles,
    hold: Mutex<Option<Hold>>,
    /// The live change stream's sender (one per connection).
    stream: Mutex<Option<tokio::sync::mpsc::UnboundedSender<WatchFrame>>>,
    /// Requests handled, by kind, for assertions on round trips.
    seen: Mutex<Vec<Request>>,
    /// What the next open reply names as its descriptor and the file's identity instead of the
    /// truth: a daemon that lies (see [`Daemon::open_as`]).
    open_as: Mutex<Option<(u32, sessionfs_proto::Attr)>>,
    connections: AtomicUsize,
}

impl Daemon {
    fn new() -> Arc<Self> {
        let root = tempfile::tempdir().expect("workspace dir");
        let ws = Workspace::open(root.path(), None).expect("workspace");
        Arc::new(Daemon {
            root,
            ws,
            handles: Handles::default(),
            hold: Mutex::new(None),
            stream: Mutex::new(None),
            seen: Mutex::new(Vec::new()),
            open_as: Mutex::new(None),
            connections: AtomicUsize::new(0),
        })
    }

    /// The workspace path of `rel`, for changes made behind the mount.
    pub(super) fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    /// Holds the reply to the next request that `matches` (the request itself is handled).
    pub(super) fn hold(&self, matches: impl Fn(&Request) -> bool + Send + Sync + 'static) -> Held {
        let (reached_tx, reached) = std::sync::mpsc::channel();
        let (release, release_rx) = tokio::sync::oneshot::channel();
        *lock(&self.hold) = Some(Hold {
            matches: Box::new(matches),
            reached: reached_tx,
            release: release_rx,
        });
        Held {
            reached,
            release: Some(release),
        }
    }

    /// Sends `frame` on the live change stream.
    pub(super) fn frame(&self, frame: WatchFrame) {
        let stream = lock(&self.stream);
        let tx = stream.as_ref().expect("no change stream is live");
        tx.send(frame)
            .expect("the bridge dropped the change stream");
    }

    /// Makes the next open's reply name descriptor `fd` (of the daemon process the registry names)
    /// and the file `attr` describes, as a daemon that lies would.
    pub(super) fn open_as(&self, fd: u32, attr: sessionfs_proto::Attr) {
        *lock(&self.open_as) = Some((fd, attr));
    }

    /// The requests handled so far (a batch counts with the request it carried).
    pub(super) fn seen(&self) -> Vec<Request> {
        lock(&self.seen).clone()
    }

    /// The change the watcher reports for the content of `rel` changing.
    pub(super) fn data_change(rel: &str) -> Change {
        Change::Data { path: wire(rel) }
    }

    /// The change the watcher reports for the name `rel` (appeared, went, or names another node).
    pub(super) fn entry_change(&self, rel: &str) -> Change {
        let path = wire(rel);
        let dir = path.parent().expect("a name below the root");
        let name = rel.rsplit('/').next().unwrap_or(rel).as_bytes().to_vec();
        let now = match self.ws.lookup(&path) {
            Ok(attr) => EntryNow::Node(sessionfs_proto::NodeId::of(&attr)),
            Err(_) => EntryNow::Missing,
        };
        Change::Entry { dir, name, now }
    }

    fn handle(&self, frame: &RequestFrame) -> Result<Reply, ErrorReply> {
        let request = match &frame.request {
            Request::Batch {
                then: Some(then), ..
            } => &**then,
            other => other,
        };
        lock(&self.seen).push(request.clone());
        let mut reply = dispatch(&self.ws, &self.handles, frame.caller, frame.request.clone());
        let opened = match &mut reply {
            Ok(Reply::Batch {
                then: Some(then), ..
            }) => then.0.as_mut().ok(),
            Ok(reply) => Some(reply),
            Err(_) => None,
        };
        if let Some(Reply::Opened { attr, fd, .. }) = opened {
            if let Some((lie, claimed)) = lock(&self.open_as).take() {
                (*fd, *attr) = (Some(lie), claimed);
            }
        }
        reply
    }

    fn held(&self, frame: &RequestFrame) -> Option<Hold> {
        let request = match &frame.request {
            Request::Batch {
                then: Some(then), ..
            } => &**then,
            other => other,
        };
        let mut hold = lock(&self.hold);
        if hold.as_ref().is_some_and(|h| (h.matches)(request)) {
            hold.take()
        } else {
            None
        }
    }
}

pub(super) fn wire(rel: &str) -> WirePath {
    WirePath::new(rel.as_bytes().to_vec()).expect("a valid path")
}

/// One connection to a [`Daemon`].
struct DaemonLink {
    daemon: Arc<Daemon>,
    id: usize,
}

impl Link for DaemonLink {
    fn call<'a>(
        &'a self,
        frame: &'a RequestFrame,
    ) -> BoxFuture<'a, Result<Result<Reply, ErrorReply>, String>> {
        Box::pin(async move {
            let reply = self.daemon.handle(frame);
            if let Some(hold) = self.daemon.held(frame) {
                let _ = hold.reached.send(());
                let _ = hold.release.await;
            }
            Ok(reply)
        })
    }

    fn watch(&self) -> BoxFuture<'_, Result<Box<dyn ChangeStream>, String>> {
        Box::pin(async move {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tx.send(WatchFrame::Ready).map_err(|e| e.to_string())?;
            *lock(&self.daemon.stream) = Some(tx);
            Ok(Box::new(Frames(rx)) as Box<dyn ChangeStream>)
        })
    }

    fn id(&self) -> usize {
        self.id
    }

    fn close_reason(&self) -> Option<String> {
        None
    }

    fn peer(&self) -> SocketAddr {
        ENDPOINT
    }

    fn close(&self, _why: &str) {
        lock(&self.daemon.stream).take();
    }
}

struct Frames(tokio::sync::mpsc::UnboundedReceiver<WatchFrame>);

impl ChangeStream for Frames {
    fn next(&mut self) -> BoxFuture<'_, Result<WatchFrame, String>> {
        Box::pin(async move {
            self.0
                .recv()
                .await
                .ok_or_else(|| "stream closed".to_string())
        })
    }
}

/// The endpoint recorded for the session: never dialed over a network.
const ENDPOINT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9);

struct TestDialer(Arc<Daemon>);

impl Dialer for TestDialer {
    fn dial<'a>(
        &'a self,
        _id: &'a SessionId,
        _addr: SocketAddr,
        _name: &'a str,
        _pin: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Conn, String>> {
        Box::pin(async move {
            let id = self.0.connections.fetch_add(1, Ordering::Relaxed) + 1;
            Ok(Arc::new(DaemonLink {
                daemon: self.0.clone(),
                id,
            }) as Conn)
        })
    }

    fn close_all(&self) {
        lock(&self.0.stream).take();
    }
}

/// What the core answered the kernel.
#[derive(Debug)]
pub(super) enum Answer {
    Entry {
        attr: FileAttr,
        ttl: Duration,
    },
    /// A negative entry, kept by the kernel for `ttl`.
    Missing {
        ttl: Duration,
    },
    Attr {
        attr: FileAttr,
        ttl: Duration,
    },
    Data(Vec<u8>),
    Ok,
    Opened {
        fh: u64,
        flags: FopenFlags,
        direct: Option<Arc<File>>,
    },
    Created {
        attr: FileAttr,
        fh: u64,
        direct: Option<Arc<File>>,
    },
    Written(u32),
    Statfs,
    XattrSize,
    Entries(Vec<Listed>),
    Err(Errno),
}

/// An entry of a listing the kernel received.
#[derive(Debug, Clone)]
pub(super) struct Listed {
    pub name: Vec<u8>,
    pub offset: u64,
    /// With `readdirplus`: the entry's attributes, and how long the kernel may keep them.
    pub attr: Option<(FileAttr, Duration)>,
}

impl Answer {
    pub(super) fn attr(&self) -> FileAttr {
        match self {
            Answer::Entry { attr, .. }
            | Answer::Attr { attr, .. }
            | Answer::Created { attr, .. } => *attr,
            other => panic!("no attributes in {other:?}"),
        }
    }

    pub(super) fn ino(&self) -> u64 {
        self.attr().ino.0
    }

    pub(super) fn fh(&self) -> u64 {
        match self {
            Answer::Opened { fh, .. } | Answer::Created { fh, .. } => *fh,
            other => panic!("no handle in {other:?}"),
        }
    }
}

/// A recording reply: what the core answers goes to the test (the kernel's side of the reply).
pub(super) struct Recorder {
    tx: std::sync::mpsc::Sender<Answer>,
    entries: Vec<Listed>,
    room: usize,
}

/// A reply that has not been answered yet.
pub(super) struct Pending(std::sync::mpsc::Receiver<Answer>);

impl Pending {
    /// The answer, waited for within the bound.
    pub(super) fn wait(self) -> Answer {
        self.0
            .recv_timeout(BOUND)
            .expect("the core did not answer within the bound")
    }
}

/// A reply and what it answers; a listing takes up to `room` entries, as a kernel buffer does.
pub(super) fn reply_with_room(room: usize) -> (Recorder, Pending) {
    let (tx, rx) = std::sync::mpsc::channel();
    let recorder = Recorder {
        tx,
        entries: Vec::new(),
        room,
    };
    (recorder, Pending(rx))
}

pub(super) fn reply() -> (Recorder, Pending) {
    reply_with_room(usize::MAX)
}

impl Recorder {
    fn send(self, answer: Answer) {
        let _ = self.tx.send(answer);
    }

    /// A listing entry, if it fits; `true` when it did not (as the kernel's buffer says).
    fn list(&mut self, name: &OsStr, offset: u64, attr: Option<(FileAttr, Duration)>) -> bool {
        if self.entries.len() >= self.room {
            return true;
        }
        let name = std::os::unix::ffi::OsStrExt::as_bytes(name).to_vec();
        self.entries.push(Listed { name, offset, attr });
        false
    }

    fn listed(self) {
        let entries = self.entries.clone();
        self.send(Answer::Entries(entries))
    }
}

impl Fail for Recorder {
    fn error(self, e: Errno) {
        self.send(Answer::Err(e))
    }
}

impl EntryReply for Recorder {
    fn entry(self, ttl: &Duration, attr: &FileAttr, _: Generation) {
        self.send(Answer::Entry {
            attr: *attr,
            ttl: *ttl,
        })
    }

    fn entry_with_ttls(self, _: &Duration, entry_ttl: &Duration, _: &FileAttr, _: Generation) {
        self.send(Answer::Missing { ttl: *entry_ttl })
    }
}

impl AttrReply for Recorder {
    fn attr(self, ttl: &Duration, attr: &FileAttr) {
        self.send(Answer::Attr {
            attr: *attr,
            ttl: *ttl,
        })
    }
}

impl DataReply for Recorder {
    fn data(self, data: &[u8]) {
        self.send(Answer::Data(data.to_vec()))
    }
}

impl EmptyReply for Recorder {
    fn ok(self) {
        self.send(Answer::Ok)
    }
}

fn direct_file(backing: &Backing) -> Arc<File> {
    backing
        .clone()
        .downcast::<File>()
        .expect("every backing comes from open_backing")
}

impl OpenReply for Recorder {
    fn opened(self, fh: FileHandle, flags: FopenFlags) {
        self.send(Answer::Opened {
            fh: fh.0,
            flags,
            direct: None,
        })
    }

    /// The kernel would read and write this file directly: the test does, through a copy of it.
    fn open_backing(&self, file: &File) -> std::io::Result<Backing> {
        Ok(Arc::new(file.try_clone()?))
    }

    fn opened_passthrough(self, fh: FileHandle, flags: FopenFlags, backing: &Backing) {
        let direct = Some(direct_file(backing));
        self.send(Answer::Opened {
            fh: fh.0,
            flags,
            direct,
        })
    }
}

impl CreateReply for Recorder {
    fn created(self, _: &Duration, attr: &FileAttr, _: Generation, fh: FileHandle, _: FopenFlags) {
        self.send(Answer::Created {
            attr: *attr,
            fh: fh.0,
            direct: None,
        })
    }

    fn created_passthrough(
        self,
        _: &Duration,
        attr: &FileAttr,
        _: Generation,
        fh: FileHandle,
        _: FopenFlags,
        backing: &Backing,
    ) {
        let direct = Some(direct_file(backing));
        self.send(Answer::Created {
            attr: *attr,
            fh: fh.0,
            direct,
        })
    }
}

impl WriteReply for Recorder {
    fn written(self, size: u32) {
        self.send(Answer::Written(size))
    }
}

impl StatfsReply for Recorder {
    fn statfs(self, _: u64, _: u64, _: u64, _: u64, _: u64, _: u32, _: u32, _: u32) {
        self.send(Answer::Statfs)
    }
}

impl XattrReply for Recorder {
    fn size(self, _size: u32) {
        self.send(Answer::XattrSize)
    }

    fn data(self, data: &[u8]) {
        self.send(Answer::Data(data.to_vec()))
    }
}

impl DirReply for Recorder {
    fn add(&mut self, _: INodeNo, offset: u64, _: FileType, name: &OsStr) -> bool {
        self.list(name, offset, None)
    }

    fn ok(self) {
        self.listed()
    }
}

impl DirPlusReply for Recorder {
    fn add(
        &mut self,
        _: INodeNo,
        offset: u64,
        name: &OsStr,
        ttl: &Duration,
        attr: &FileAttr,
        _: Generation,
    ) -> bool {
        self.list(name, offset, Some((*attr, *ttl)))
    }

    fn ok(self) {
        self.listed()
    }
}

/// An invalidation the core sent the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Inval {
    Inode(u64),
    Entry(u64, Vec<u8>),
}

#[derive(Clone, Default)]
struct Notes(Arc<Mutex<VecDeque<Inval>>>);

impl Notify for Notes {
    fn inval_inode(&self, ino: INodeNo, _: i64, _: i64) -> std::io::Result<()> {
        lock(&self.0).push_back(Inval::Inode(ino.0));
        Ok(())
    }

    fn inval_entry(&self, parent: INodeNo, name: &OsStr) -> std::io::Result<()> {
        let name = std::os::unix::ffi::OsStrExt::as_bytes(name).to_vec();
        lock(&self.0).push_back(Inval::Entry(parent.0, name));
        Ok(())
    }
}

/// A bridge core with one watched session, whose daemon is [`Daemon`].
pub(super) struct Bridge {
    pub core: Core,
    pub daemon: Arc<Daemon>,
    sessions: Arc<Sessions>,
    notes: Notes,
    /// The session root's inode.
    pub root: u64,
    /// The long TTL of watched sessions and the short one of others.
    pub watched_ttl: Duration,
    pub ttl: Duration,
    registry: PathBuf,
    _registry: tempfile::TempDir,
    // Dropped last: the core's tasks run on it.
    _rt: tokio::runtime::Runtime,
}

impl Bridge {
    /// A bridge whose session is connected and watched, its change stream live.
    pub(super) fn new() -> Bridge {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let registry_dir = tempfile::tempdir().expect("registry dir");
        let registry_path = registry_dir.path().join("registry.db");
        let registry = Registry::open(&registry_path).expect("registry");
        let id = SessionId::new(SESSION).expect("id");
        let mut record = SessionRecord::new(id, Backend::Local, SESSION.into());
        record.state = SessionState::Running;
        record.endpoint = Some(ENDPOINT);
        // The daemon runs in this process: direct data opens its descriptors here.
        record.pid = Some(std::process::id());
        registry.register(&record).expect("register");
        let mut config = BridgeConfig::new(
            sessionfs_registry::Location::Sqlite(registry_path),
            registry_dir.path().into(),
        );
        config.op_timeout = Duration::from_secs(5);
        let daemon = Daemon::new();
        let dialer = Arc::new(TestDialer(daemon.clone()));
        let sessions = Arc::new(Sessions::with_dialer(&config, dialer).expect("sessions"));
        sessions.refresh().expect("registry");
        let (ttl, watched_ttl) = (Duration::from_secs(1), Duration::from_secs(3600));
        let core = Core::new(rt.handle().clone(), sessions.clone(), ttl, watched_ttl);
        let notes = Notes::default();
        core.start_invalidator(notes.clone()).expect("invalidator");
        core.kernel_accepted(true, false);
        let mut bridge = Bridge {
            core,
            daemon,
            sessions,
            notes,
            root: 0,
            watched_ttl,
            ttl,
            registry: registry_dir.path().join("registry.db"),
            _registry: registry_dir,
            _rt: rt,
        };
        bridge.root = bridge.lookup(crate::inodes::ROOT_INO, SESSION).ino();
        bridge.until("the session is watched", |b| b.session().is_watched());
        bridge.caught_up();
        bridge
    }

    /// Records `pid` as the session daemon's process (direct data opens its descriptors).
    pub(super) fn set_daemon_pid(&self, pid: u32) {
        let registry = Registry::open(&self.registry).expect("registry");
        let id = SessionId::new(SESSION).expect("id");
        registry.modify(&id, |r| r.pid = Some(pid)).expect("modify");
        self.sessions.refresh().expect("refresh");
        assert_eq!(self.session().pid(), Some(pid));
    }

    pub(super) fn session(&self) -> Arc<Session> {
        self.sessions.get(SESSION).expect("the session")
    }

    /// Waits (bounded) until `done` holds, checking after each change of the invalidator's state.
    pub(super) fn until(&self, what: &str, done: impl Fn(&Bridge) -> bool) {
        let deadline = std::time::Instant::now() + BOUND;
        while !done(self) {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting until {what}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits until the invalidator has handled every change batch and reset received.
    pub(super) fn caught_up(&self) {
        self.until("the invalidator caught up", |b| b.session().caught_up());
    }

    /// Sends `changes` and waits until the invalidator handled them.
    pub(super) fn changes(&self, changes: Vec<Change>) {
        self.frame(WatchFrame::Changes(changes));
    }

    /// Sends `frame` on the change stream and waits until the invalidator handled it (the session's
    /// generation moves when the frame is received, and the invalidator catches up after).
    pub(super) fn frame(&self, frame: WatchFrame) {
        let before = self.session().generation();
        self.daemon.frame(frame);
        self.until("the frame was received", |b| {
            b.session().generation() > before
        });
        self.caught_up();
    }

    /// The invalidations sent since the last call.
    pub(super) fn invalidations(&self) -> Vec<Inval> {
        lock(&self.notes.0).drain(..).collect()
    }

    pub(super) fn lookup(&self, parent: u64, name: &str) -> Answer {
        let (r, p) = reply();
        self.core.lookup(ROOT, INodeNo(parent), OsStr::new(name), r);
        p.wait()
    }

    pub(super) fn getattr(&self, ino: u64) -> Answer {
        let (r, p) = reply();
        self.core.getattr(ROOT, INodeNo(ino), None, r);
        p.wait()
    }

    pub(super) fn create(&self, parent: u64, name: &str, flags: i32) -> Answer {
        let (r, p) = reply();
        let flags = flags | libc::O_CREAT;
        self.core
            .create(ROOT, INodeNo(parent), OsStr::new(name), 0o644, flags, r);
        p.wait()
    }

    pub(super) fn mkdir(&self, parent: u64, name: &str) -> Answer {
        let (r, p) = reply();
        self.core
            .mkdir(ROOT, INodeNo(parent), OsStr::new(name), 0o755, r);
        p.wait()
    }

    pub(super) fn open(&self, ino: u64, flags: i32) -> Answer {
        let (r, p) = reply();
        self.core
            .open(ROOT, INodeNo(ino), fuser::OpenFlags(flags), r);
        p.wait()
    }

    pub(super) fn read(&self, fh: u64, offset: u64, size: u32) -> Answer {
        let (r, p) = reply();
        self.core.read(ROOT, FileHandle(fh), offset, size, r);
        p.wait()
    }

    pub(super) fn write(&self, ino: u64, fh: u64, offset: u64, data: &[u8]) -> Answer {
        let (r, p) = reply();
        self.core
            .write(ROOT, INodeNo(ino), FileHandle(fh), offset, data, r);
        p.wait()
    }

    /// `flush` then `release`, as a `close` does.
    pub(super) fn close(&self, fh: u64) {
        let (r, p) = reply();
        self.core.flush(FileHandle(fh), r);
        assert!(matches!(p.wait(), Answer::Ok), "flush failed");
        let (r, p) = reply();
        self.core.release(FileHandle(fh), r);
        assert!(matches!(p.wait(), Answer::Ok), "release failed");
    }

    pub(super) fn unlink(&self, parent: u64, name: &str) -> Answer {
        let (r, p) = reply();
        self.core.unlink(ROOT, INodeNo(parent), OsStr::new(name), r);
        p.wait()
    }

    pub(super) fn rmdir(&self, parent: u64, name: &str) -> Answer {
        let (r, p) = reply();
        self.core.rmdir(ROOT, INodeNo(parent), OsStr::new(name), r);
        p.wait()
    }

    pub(super) fn rename(&self, parent: u64, name: &str, newparent: u64, newname: &str) -> Answer {
        let (r, p) = reply();
        let flags = fuser::RenameFlags::empty();
        self.core.rename(
            ROOT,
            INodeNo(parent),
            OsStr::new(name),
            INodeNo(newparent),
            OsStr::new(newname),
            flags,
            r,
        );
        p.wait()
    }

    pub(super) fn truncate(&self, ino: u64, size: u64) -> Pending {
        let (r, p) = reply();
        let attrs = sessionfs_proto::SetAttrs {
            size: Some(size),
            ..Default::default()
        };
        self.core.setattr(ROOT, INodeNo(ino), attrs, None, r);
        p
    }

    /// A whole `readdirplus` listing of `dir`, from offset 0 until the empty read that ends it.
    pub(super) fn list(&self, dir: u64) -> Vec<Listed> {
        let mut all = Vec::new();
        let mut offset = 0;
        loop {
            let (r, p) = reply();
            self.core.readdirplus(ROOT, INodeNo(dir), offset, r);
            let Answer::Entries(entries) = p.wait() else {
                panic!("listing {dir} failed");
            };
            let Some(last) = entries.last() else {
                return all;
            };
            offset = last.offset;
            all.extend(
                entries
                    .into_iter()
                    .filter(|e| e.name != b"." && e.name != b".."),
            );
        }
    }

    /// Forgets what the kernel learned of `ino` (`n` lookups).
    pub(super) fn forget(&self, ino: u64, n: u64) {
        self.core.forget(INodeNo(ino), n);
    }
}
