//! Request and reply messages, the handshake, and the attribute types they carry.

use serde::{Deserialize, Serialize};

use crate::WirePath;

/// `rename` flag: fail with `EEXIST` if the target exists (Linux `RENAME_NOREPLACE`).
pub const RENAME_NOREPLACE: u32 = 1;
/// `rename` flag: atomically swap source and target (Linux `RENAME_EXCHANGE`).
pub const RENAME_EXCHANGE: u32 = 2;

/// Linux errno values used on the wire. Errors carry the errno so the bridge can hand it to the kernel
/// unchanged.
pub mod errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const EBADF: i32 = 9;
    pub const EACCES: i32 = 13;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const EXDEV: i32 = 18;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const EINVAL: i32 = 22;
    pub const EMFILE: i32 = 24;
    pub const ERANGE: i32 = 34;
    pub const ENAMETOOLONG: i32 = 36;
    pub const ENOSYS: i32 = 38;
    pub const ENOTEMPTY: i32 = 39;
    pub const ELOOP: i32 = 40;
    pub const ENODATA: i32 = 61;
    pub const EPROTO: i32 = 71;
    pub const EOPNOTSUPP: i32 = 95;
    pub const ENOTCONN: i32 = 107;
    pub const ETIMEDOUT: i32 = 110;
    pub const ESTALE: i32 = 116;
}

/// The first message on a connection, sent by the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
}

impl Hello {
    /// The hello this build sends.
    pub fn current() -> Self {
        Hello {
            version: crate::PROTOCOL_VERSION,
        }
    }
}

/// The daemon's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    /// Accepted: the daemon's version and the session it serves.
    Welcome { version: u32, session_id: String },
    /// Refused: the versions the daemon speaks.
    VersionMismatch { supported: u32 },
}

/// Who asked: the credentials of the process that made the file system call on the host. The daemon uses
/// them as the owner of nodes it creates, when it is allowed to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// A request frame: the caller and the operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrame {
    pub caller: Caller,
    pub request: Request,
}

/// A timestamp to set: a given time or the daemon's current time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTime {
    Now,
    At(Timestamp),
}

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

/// Attribute changes of a `SetAttr`; `None` leaves a field unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttrs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// Node types that `Mknod` may create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    Regular,
    Fifo,
    Socket,
    /// A character device with the given device number (only a daemon allowed to create devices can).
    CharDevice {
        rdev: u64,
    },
    /// A block device with the given device number.
    BlockDevice {
        rdev: u64,
    },
}

/// One operation. Paths are relative to the workspace root; `fh` is a handle from `Open`/`Create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Ping,
    /// Attributes of a path, without following a final symlink.
    Lookup {
        path: WirePath,
    },
    GetAttr {
        path: WirePath,
        fh: Option<u64>,
    },
    SetAttr {
        path: WirePath,
        fh: Option<u64>,
        attrs: SetAttrs,
    },
    /// Up to `limit` entries (at most [`crate::MAX_DIR_PAGE`]) after skipping `offset`, with attributes.
    ReadDir {
        path: WirePath,
        offset: u64,
        limit: u32,
    },
    /// Opens a regular file. With `head` > 0 (read-only opens; at most [`crate::MAX_OPEN_HEAD`]),
    /// the reply carries the first `head` bytes too, and a file that ends within them is closed
    /// again at once (no handle to release): most files are read whole right after they are opened.
    ///
    /// With `expect`, the file must be that node: if `path` names another file or none, the node is
    /// opened if a rename replaced it moments ago (the daemon keeps such files openable for
    /// [`crate::REPLACED_KEEP_MS`]), else the open fails with `ESTALE`. A node with no name left is
    /// opened with the root path and `expect`.
    Open {
        path: WirePath,
        flags: i32,
        head: u32,
        expect: Option<NodeId>,
    },
    Create {
        path: WirePath,
        mode: u32,
        flags: i32,
    },
    Read {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Write {
        fh: u64,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    Flush {
        fh: u64,
    },
    Fsync {
        fh: u64,
        datasync: bool,
    },
    Release {
        fh: u64,
    },
    /// Flushes a directory (`fsync` on a directory handle).
    FsyncDir {
        path: WirePath,
        datasync: bool,
    },
    Mkdir {
        path: WirePath,
        mode: u32,
    },
    Mknod {
        path: WirePath,
        kind: NodeKind,
        mode: u32,
    },
    Unlink {
        path: WirePath,
    },
    Rmdir {
        path: WirePath,
    },
    Rename {
        from: WirePath,
        to: WirePath,
        flags: u32,
    },
    /// Creates `path` as a symlink whose content is `target` (stored as given, never followed).
    Symlink {
        path: WirePath,
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
    },
    Readlink {
        path: WirePath,
    },
    /// Creates the hard link `to` for the existing node `from`.
    Link {
        from: WirePath,
        to: WirePath,
    },
    StatFs,
    /// `size == 0` asks for the value's length only.
    GetXattr {
        path: WirePath,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        size: u32,
    },
    SetXattr {
        path: WirePath,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        flags: i32,
    },
    ListXattr {
        path: WirePath,
        size: u32,
    },
    RemoveXattr {
        path: WirePath,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    /// Subscribes to changes in the workspace: the daemon answers on this stream with
    /// [`WatchFrame`]s, as long as the connection lives (one subscription per connection).
    Watch,
    /// The whole content of the small regular files in directory `path`: every file that ends
    /// within `max_each` bytes (at most [`crate::MAX_OPEN_HEAD`]), with its attributes, up to
    /// [`crate::MAX_HEADS_FILES`] files and [`crate::MAX_IO_CHUNK`] bytes in all. Larger files,
    /// other node types and files that cannot be opened are left out. One round trip for what a
    /// walk that reads every file (`rg`, `grep -r`) would otherwise open one by one.
    ReadHeads {
        path: WirePath,
        max_each: u32,
    },
    /// Changes of open files the bridge acknowledged before sending them (write-behind): writes,
    /// attribute changes of files the mount created and holds open, and releases of handles.
    /// Applied in order, then `then`, the request whose sending carried them, if any. A change that
    /// fails is reported in [`Reply::Batch`], and the later changes of the same handle in the batch
    /// are not applied (nothing lands past a failed change) except its release; `then` runs
    /// whatever the changes did. `then` may not
    /// be a batch or a watch. At most [`crate::MAX_BATCH_BYTES`] of data in at most
    /// [`crate::MAX_BATCH_WRITES`] changes.
    Batch {
        changes: Vec<BatchedChange>,
        then: Option<Box<Request>>,
    },
}

/// One change of a [`Request::Batch`], made through the daemon's open handle `fh`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchedChange {
    Write(BatchedWrite),
    /// As a [`Request::SetAttr`] through the handle; never a size (truncates are not deferred).
    SetAttr {
        fh: u64,
        attrs: SetAttrs,
    },
    /// As a [`Request::Release`]: the handle was closed.
    Release {
        fh: u64,
    },
}

impl BatchedChange {
    /// The daemon handle the change goes through.
    pub fn fh(&self) -> u64 {
        match self {
            BatchedChange::Write(w) => w.fh,
            BatchedChange::SetAttr { fh, .. } | BatchedChange::Release { fh } => *fh,
        }
    }

    /// The bytes of data it carries.
    pub fn data_len(&self) -> usize {
        match self {
            BatchedChange::Write(w) => w.data.len(),
            BatchedChange::SetAttr { .. } | BatchedChange::Release { .. } => 0,
        }
    }
}

/// One write of a [`Request::Batch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchedWrite {
    pub fh: u64,
    pub offset: u64,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// A change of a [`Request::Batch`] that failed, or was not applied because an earlier change of
/// its handle failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedWrite {
    pub fh: u64,
    pub error: ErrorReply,
}

/// Most changes in one [`WatchFrame::Changes`] batch.
pub const MAX_WATCH_BATCH: usize = 1024;

/// A change in the workspace that may invalidate what the bridge (and the host kernel) cached.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Change {
    /// The attributes (and maybe the content) of the node at `path` changed: anything cached about it
    /// may be stale, its extended attributes included. For a directory, `now` holds its attributes
    /// when the batch was sent (looked at beneath the root like `Lookup`), so that the echo of a
    /// change made through the mount, whose reply already told the bridge those attributes, costs
    /// nothing; `None` otherwise.
    Node { path: WirePath, now: Option<Attr> },
    /// The content of the file at `path` changed (written, truncated, or closed after writing), and
    /// with it its size and times, but nothing else: not its mode, owner or extended attributes
    /// (those changes come as [`Change::Node`]). A write cannot give a file a capability, so the
    /// bridge keeps knowing that it has none.
    Data { path: WirePath },
    /// The name `name` in directory `dir` appeared, disappeared or now names another node (create,
    /// unlink, rename, link); the directory's own listing and attributes changed too.
    Entry {
        dir: WirePath,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        /// What the name named when the daemon sent the change (it looks when it sends a batch; a
        /// later change of the name comes as another change).
        now: EntryNow,
    },
}

/// What a name of a [`Change::Entry`] names when the change is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryNow {
    /// Not looked at (the receiver must look itself).
    Unchecked,
    Missing,
    Node(NodeId),
}

/// What identifies a node on the daemon's side: a reused inode number has another birth time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    pub dev: u64,
    pub ino: u64,
    pub btime: Option<Timestamp>,
    pub file_type: u32,
}

impl NodeId {
    pub fn of(attr: &Attr) -> Self {
        NodeId {
            dev: attr.dev,
            ino: attr.ino,
            btime: attr.btime,
            file_type: attr.file_type(),
        }
    }
}

/// What the daemon sends on a [`Request::Watch`] stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchFrame {
    /// The subscription is live: every change from now on will be reported.
    Ready,
    /// Changes, in the order they were seen (at most [`MAX_WATCH_BATCH`]).
    Changes(Vec<Change>),
    /// Changes were lost (the event queue overflowed): anything cached may be stale.
    Overflow,
    /// The daemon cannot watch the workspace (e.g. out of inotify watches); no further frames follow.
    Unavailable { reason: String },
}

/// File type bits of [`Attr::mode`] (`S_IFMT`).
pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFIFO: u32 = 0o010000;
pub const S_IFSOCK: u32 = 0o140000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFBLK: u32 = 0o060000;

/// Attributes of a node as the daemon sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attr {
    /// Device and inode number on the daemon's side: together they identify the node.
    pub dev: u64,
    pub ino: u64,
    /// Full `st_mode`: type and permission bits.
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub blocks: u64,
    pub blksize: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    /// Birth time where the file system records it; distinguishes a reused inode number.
    pub btime: Option<Timestamp>,
}

impl Attr {
    /// The file type bits.
    pub fn file_type(&self) -> u32 {
        self.mode & S_IFMT
    }

    /// Owner and group.
    pub fn uid_gid(&self) -> (u32, u32) {
        (self.uid, self.gid)
    }
}

/// One directory entry with its attributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    pub attr: Attr,
    /// The `ReadDir` offset that continues the listing right after this entry.
    pub next_offset: u64,
}

/// File system statistics (`statvfs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// A successful reply. Each request kind has one reply kind; see the daemon's dispatcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Pong,
    Empty,
    Attr(Attr),
    /// A page of entries; `next` is the offset to ask for the next page, `None` at the end.
    Entries {
        entries: Vec<DirEntry>,
        next: Option<u64>,
    },
    /// An open file: its handle, `None` when the whole file is in `head` (then it was closed again);
    /// its attributes at open (for close-to-open cache revalidation); and its first bytes, if asked.
    Opened {
        fh: Option<u64>,
        attr: Attr,
        #[serde(with = "serde_bytes")]
        head: Vec<u8>,
        /// The daemon's descriptor number behind `fh`: a bridge on the same host may open the same
        /// file through `/proc/<daemon pid>/fd/<fd>` and hand its data to the kernel directly.
        fd: Option<u32>,
    },
    /// The node a `Mkdir`, `Mknod`, `Symlink` or `Link` made, and its directory's attributes after it
    /// (the kernel asks for them next).
    Made {
        attr: Attr,
        parent: Attr,
    },
    /// A created (or, without `O_EXCL`, opened) file: its handle and attributes, and its directory's
    /// attributes after the create (the kernel asks for them next).
    Created {
        fh: u64,
        attr: Attr,
        parent: Attr,
    },
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    Written(u32),
    StatFs(StatFs),
    /// The size of an xattr value or list, when the request gave size 0.
    XattrSize(u32),
    /// Small files of a directory, whole ([`Request::ReadHeads`]).
    Heads(Vec<FileHead>),
    /// The outcome of a [`Request::Batch`]: the handles whose writes failed (each at most once,
    /// with the first error), and the reply to its `then` request, if it had one.
    Batch {
        failed: Vec<FailedWrite>,
        then: Option<Box<ResponseFrame>>,
    },
}

/// One small file of a [`Reply::Heads`]: its name in the directory, its attributes (taken after its
/// content was read), and its whole content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHead {
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    pub attr: Attr,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// An error reply: the errno to hand to the kernel, and a message for logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} (errno {errno})")]
pub struct ErrorReply {
    pub errno: i32,
    pub message: String,
}

impl ErrorReply {
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        ErrorReply {
            errno,
            message: message.into(),
        }
    }
}

/// A response frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseFrame(pub Result<Reply, ErrorReply>);
