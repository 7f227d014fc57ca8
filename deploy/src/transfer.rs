//! A workspace copied daemon to daemon over the sessionfs protocol, and its verification: what a
//! migration between hosts uses (neither side's files are reachable from the other's machine).
//!
//! [`copy_tree`] walks the source with `ReadDir` and recreates every node on the target:
//! directories (`Mkdir`, then their mode and times once filled), regular files (`Open`, `Read` in
//! 1 MiB chunks, `Create` exclusive, `Write`, then mode and times), symlinks (`Readlink`,
//! `Symlink`), FIFOs and sockets (`Mknod`). Owners are asked for as each node's caller, so a daemon
//! allowed to (as root) keeps them; set-user-id and set-group-id bits are dropped. Hard links are copied as separate files; device nodes are
//! refused. [`manifest`] reads a tree again for verification: every path's kind, permission bits,
//! size, SHA-256 and symlink target.

use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use sessionfs_pki::client::{call, connect_as};
use sessionfs_proto::{
    Attr, Caller, NodeKind, Reply, Request, RequestFrame, SetAttrs, SetTime, WirePath, S_IFDIR,
    S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK,
};
use sha2::{Digest, Sha256};

use crate::manifest::{hex, Manifest, Node};

/// The mode bits a copy keeps: permissions and the sticky bit, never set-user-id or set-group-id.
pub const COPIED_MODE: u32 = 0o1777;

/// Bytes per `Read`/`Write` of a copy.
const CHUNK: u32 = sessionfs_proto::MAX_IO_CHUNK;

/// One side of a transfer: a connection to a session's daemon.
pub struct Peer {
    conn: quinn::Connection,
    what: String,
    /// How long one request may take.
    bound: std::time::Duration,
    /// As a copy's target: the owner (uid, gid) that becomes another one here.
    owner_map: Option<((u32, u32), (u32, u32))>,
}

/// A failed transfer step, in words.
pub type TransferError = String;

/// A QUIC endpoint with this host's bridge identity (from `pki_dir`), for dialing daemons.
pub fn bridge_endpoint(pki_dir: &Path) -> Result<quinn::Endpoint, TransferError> {
    let identity = sessionfs_pki::Identity::load(pki_dir, sessionfs_pki::BRIDGE_FILES.stem)
        .map_err(|e| e.to_string())?;
    let roots = sessionfs_pki::load_ca_roots(&pki_dir.join(sessionfs_pki::CA_FILES.cert))
        .map_err(|e| e.to_string())?;
    let config =
        // The copy crosses the network: the congestion control for other machines' peers.
        sessionfs_pki::client_config(
            identity,
            roots,
            &sessionfs_pki::TransportTuning {
                wide_area: true,
                ..sessionfs_pki::TransportTuning::default()
            },
        )
        .map_err(|e| e.to_string())?;
    sessionfs_pki::client_endpoint(config).map_err(|e| format!("a QUIC endpoint: {e}"))
}

impl Peer {
    /// Dials session `id`'s daemon at `addr`, which must present the certificate named `name` and
    /// pinned `pin`.
    pub async fn dial(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        id: &str,
        name: &str,
        pin: Option<&str>,
        what: &str,
        bound: std::time::Duration,
    ) -> Result<Peer, TransferError> {
        let conn = tokio::time::timeout(bound, connect_as(endpoint, addr, id, name, pin))
            .await
            .map_err(|_| format!("{what}: no answer from {addr} within {bound:?}"))?
            .map_err(|e| format!("{what}: {e}"))?;
        Ok(Peer {
            conn,
            what: what.to_owned(),
            bound,
            owner_map: None,
        })
    }

    /// As a copy's target, nodes the source's `from` (uid, gid) owns are made as `to`'s: the
    /// workspace owner of a container becomes the migrating user on this host, as `--map-owner`
    /// shows it.
    pub fn map_owner(mut self, from: (u32, u32), to: (u32, u32)) -> Peer {
        self.owner_map = Some((from, to));
        self
    }

    /// The caller a node owned as in `attr` is made as, on this (target) side.
    fn caller(&self, attr: &Attr) -> Caller {
        let (mut uid, mut gid) = (attr.uid, attr.gid);
        if let Some(((from_uid, from_gid), (to_uid, to_gid))) = self.owner_map {
            if uid == from_uid {
                uid = to_uid;
            }
            if gid == from_gid {
                gid = to_gid;
            }
        }
        Caller { uid, gid }
    }

    async fn ask(
        &self,
        caller: Caller,
        request: Request,
        path: &WirePath,
    ) -> Result<Reply, TransferError> {
        let frame = RequestFrame { caller, request };
        match tokio::time::timeout(self.bound, call(&self.conn, &frame)).await {
            Ok(Ok(Ok(reply))) => Ok(reply),
            Ok(Ok(Err(e))) => Err(format!("{} {}: {e}", self.what, show(path))),
            Ok(Err(e)) => Err(format!("{} {}: {e}", self.what, show(path))),
            Err(_) => Err(format!(
                "{} {}: no answer within {:?}",
                self.what,
                show(path),
                self.bound
            )),
        }
    }

    async fn entries(&self, dir: &WirePath) -> Result<Vec<(Vec<u8>, Attr)>, TransferError> {
        let mut all = Vec::new();
        let mut offset = 0;
        loop {
            let request = Request::ReadDir {
                path: dir.clone(),
                offset,
                limit: sessionfs_proto::MAX_DIR_PAGE,
            };
            match self.ask(Caller::default(), request, dir).await? {
                Reply::Entries { entries, next } => {
                    all.extend(
                        entries
                            .into_iter()
                            .filter(|e| e.name != b"." && e.name != b"..")
                            .map(|e| (e.name, e.attr)),
                    );
                    match next {
                        Some(n) => offset = n,
                        None => return Ok(all),
                    }
                }
                other => return Err(unexpected(&self.what, dir, &other)),
            }
        }
    }

    async fn open(&self, path: &WirePath) -> Result<u64, TransferError> {
        let request = Request::Open {
            path: path.clone(),
            flags: libc::O_RDONLY,
            head: 0,
            expect: None,
        };
        match self.ask(Caller::default(), request, path).await? {
            Reply::Opened { fh: Some(fh), .. } => Ok(fh),
            other => Err(unexpected(&self.what, path, &other)),
        }
    }

    async fn read(&self, fh: u64, offset: u64, path: &WirePath) -> Result<Vec<u8>, TransferError> {
        let request = Request::Read {
            fh,
            offset,
            size: CHUNK,
        };
        match self.ask(Caller::default(), request, path).await? {
            Reply::Data(data) => Ok(data),
            other => Err(unexpected(&self.what, path, &other)),
        }
    }

    async fn release(&self, fh: u64, path: &WirePath) -> Result<(), TransferError> {
        self.ask(Caller::default(), Request::Release { fh }, path)
            .await
            .map(drop)
    }

    async fn readlink(&self, path: &WirePath) -> Result<Vec<u8>, TransferError> {
        match self
            .ask(
                Caller::default(),
                Request::Readlink { path: path.clone() },
                path,
            )
            .await?
        {
            Reply::Data(target) => Ok(target),
            other => Err(unexpected(&self.what, path, &other)),
        }
    }

    /// Sets `attr`'s permission bits and modification time on `path`.
    async fn finish(&self, path: &WirePath, attr: &Attr) -> Result<(), TransferError> {
        // Set-user-id and set-group-id bits are not carried over: a source daemon is not trusted
        // to make such files on this host.
        let attrs = SetAttrs {
            mode: Some(attr.mode & COPIED_MODE),
            mtime: Some(SetTime::At(attr.mtime)),
            ..SetAttrs::default()
        };
        let request = Request::SetAttr {
            path: path.clone(),
            fh: None,
            attrs,
        };
        self.ask(self.caller(attr), request, path).await.map(drop)
    }
}

fn show(path: &WirePath) -> String {
    format!("/{}", String::from_utf8_lossy(path.as_bytes()))
}

fn unexpected(what: &str, path: &WirePath, reply: &Reply) -> TransferError {
    let kind = format!("{reply:?}");
    let kind = kind.split([' ', '(', '{']).next().unwrap_or("").to_owned();
    format!("{what} {}: unexpected reply {kind}", show(path))
}

/// Copies the whole tree of `from` into the empty workspace of `to`; the number of nodes copied.
pub async fn copy_tree(from: &Peer, to: &Peer) -> Result<usize, TransferError> {
    let mut copied = 0;
    // Directories to fill, and directories to finish (mode, times) once filled, deepest first.
    let mut pending = vec![WirePath::root()];
    let mut filled: Vec<(WirePath, Attr)> = Vec::new();
    while let Some(dir) = pending.pop() {
        for (name, attr) in from.entries(&dir).await? {
            let path = dir
                .join(&name)
                .map_err(|e| format!("{}: {e}", show(&dir)))?;
            match attr.mode & S_IFMT {
                S_IFDIR => {
                    // Writable by its owner while it is filled; its own mode comes after.
                    let request = Request::Mkdir {
                        path: path.clone(),
                        mode: 0o700,
                    };
                    to.ask(to.caller(&attr), request, &path).await?;
                    pending.push(path.clone());
                    filled.push((path, attr));
                }
                S_IFREG => {
                    copy_file(from, to, &path, &attr).await?;
                    to.finish(&path, &attr).await?;
                }
                S_IFLNK => {
                    let target = from.readlink(&path).await?;
                    let request = Request::Symlink {
                        path: path.clone(),
                        target,
                    };
                    to.ask(to.caller(&attr), request, &path).await?;
                }
                kind @ (S_IFIFO | S_IFSOCK) => {
                    let request = Request::Mknod {
                        path: path.clone(),
                        kind: if kind == S_IFIFO {
                            NodeKind::Fifo
                        } else {
                            NodeKind::Socket
                        },
                        mode: attr.mode & COPIED_MODE,
                    };
                    to.ask(to.caller(&attr), request, &path).await?;
                }
                _ => {
                    return Err(format!(
                        "{} is a device node: sessions do not move devices",
                        show(&path)
                    ))
                }
            }
            copied += 1;
        }
    }
    // Deepest first, so a directory's time is set after everything inside it was made.
    filled.sort_by_key(|(p, _)| std::cmp::Reverse(p.as_bytes().len()));
    for (path, attr) in &filled {
        to.finish(path, attr).await?;
    }
    let root = match from
        .ask(
            Caller::default(),
            Request::Lookup {
                path: WirePath::root(),
            },
            &WirePath::root(),
        )
        .await?
    {
        Reply::Attr(attr) => attr,
        other => return Err(unexpected(&from.what, &WirePath::root(), &other)),
    };
    to.finish(&WirePath::root(), &root).await?;
    Ok(copied)
}

async fn copy_file(
    from: &Peer,
    to: &Peer,
    path: &WirePath,
    attr: &Attr,
) -> Result<(), TransferError> {
    let src = from.open(path).await?;
    let request = Request::Create {
        path: path.clone(),
        mode: 0o600,
        flags: libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
    };
    let dst = match to.ask(to.caller(attr), request, path).await? {
        Reply::Created { fh, .. } => fh,
        other => {
            let _ = from.release(src, path).await;
            return Err(unexpected(&to.what, path, &other));
        }
    };
    let copied = async {
        let mut offset = 0u64;
        loop {
            let data = from.read(src, offset, path).await?;
            if data.is_empty() {
                return Ok(());
            }
            let len = data.len() as u64;
            match to
                .ask(
                    Caller::default(),
                    Request::Write {
                        fh: dst,
                        offset,
                        data,
                    },
                    path,
                )
                .await?
            {
                Reply::Written(n) if u64::from(n) == len => {}
                other => return Err(unexpected(&to.what, path, &other)),
            }
            offset += len;
        }
    }
    .await;
    let released = (from.release(src, path).await, to.release(dst, path).await);
    copied?;
    released.0?;
    released.1
}

/// Every path of the tree (the root's mode included, as `.`), read again in full, as the
/// migration between backends records a tree ([`Manifest`]; compared with
/// [`crate::manifest::compare`]). Modes are recorded as copied ([`COPIED_MODE`]).
pub async fn manifest(peer: &Peer) -> Result<Manifest, TransferError> {
    let mut out = Manifest::new();
    let root = WirePath::root();
    match peer
        .ask(
            Caller::default(),
            Request::Lookup { path: root.clone() },
            &root,
        )
        .await?
    {
        Reply::Attr(attr) => {
            out.insert(
                PathBuf::from("."),
                Node::Dir {
                    mode: attr.mode & COPIED_MODE,
                },
            );
        }
        other => return Err(unexpected(&peer.what, &root, &other)),
    }
    let mut pending = vec![WirePath::root()];
    while let Some(dir) = pending.pop() {
        for (name, attr) in peer.entries(&dir).await? {
            let path = dir
                .join(&name)
                .map_err(|e| format!("{}: {e}", show(&dir)))?;
            let mode = attr.mode & COPIED_MODE;
            let node = match attr.mode & S_IFMT {
                S_IFDIR => {
                    pending.push(path.clone());
                    Node::Dir { mode }
                }
                S_IFREG => {
                    let fh = peer.open(&path).await?;
                    let mut hash = Sha256::new();
                    let mut size = 0u64;
                    let read = async {
                        loop {
                            let data = peer.read(fh, size, &path).await?;
                            if data.is_empty() {
                                return Ok::<(), TransferError>(());
                            }
                            size += data.len() as u64;
                            hash.update(&data);
                        }
                    }
                    .await;
                    peer.release(fh, &path).await?;
                    read?;
                    Node::File {
                        mode,
                        size,
                        sha256: hex(&hash.finalize()),
                    }
                }
                S_IFLNK => Node::Symlink {
                    target: PathBuf::from(OsString::from_vec(peer.readlink(&path).await?)),
                },
                S_IFIFO => Node::Other { kind: "FIFO", mode },
                S_IFSOCK => Node::Other {
                    kind: "socket",
                    mode,
                },
                _ => Node::Other {
                    kind: "special file",
                    mode,
                },
            };
            out.insert(PathBuf::from(OsStr::from_bytes(path.as_bytes())), node);
        }
    }
    Ok(out)
}
