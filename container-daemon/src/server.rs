//! The network side of the daemon: QUIC endpoint, peer authorization, handshake, request streams.
//!
//! Architecture invariants:
//! - **Every peer is authorized before any request is read**: the TLS layer accepts only certificates
//!   from the installation CA, and [`sessionfs_pki::authorize_peer`] then admits the bridge (all requests)
//!   or this session's own health probe (`Ping` only). A peer whose chain holds a revoked issuing
//!   certificate ([`crate::revocations`]) is refused, and its connection ends when that is revoked.
//! - **Network input never panics the daemon and never allocates without bound**: frames are read with
//!   a size limit and a time limit; a malformed frame gets an `EPROTO` reply and ends only its stream.
//! - **One stream per request**: requests of one connection run concurrently. Calls that move file
//!   data, list directories, sync, truncate or may free a file's blocks run on the blocking pool, so
//!   a large transfer or a slow disk never stalls the network tasks; single-node metadata calls (a few
//!   microseconds) run inline, where a thread hop would cost more than the call (`runs_inline`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sessionfs_pki::wire::{read_last_frame, write_frame, WireError};
use sessionfs_pki::{PeerRole, TransportTuning};
use sessionfs_proto::{
    errno, Attr, BatchedChange, ErrorReply, FailedWrite, Hello, HelloReply, Reply, Request,
    RequestFrame, ResponseFrame, WirePath, PROTOCOL_VERSION,
};
use tracing::{debug, info, warn};

use crate::handles::Handles;
use crate::idle::Activity;
use crate::refusals::{RefusalLog, Verdict, BURST, WINDOW};
use crate::revocations::Revocations;
use crate::watch::{Subscription, WorkspaceWatcher};
use crate::workspace::{Workspace, XattrValue};
use sessionfs_proto::WatchFrame;
use tokio::sync::broadcast;

/// How long a peer may take to complete the TLS and protocol handshakes.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a peer may take to send one request frame once it opened the stream.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The close code and reason of a connection refused or ended for a revoked certificate.
const REVOKED_CODE: u32 = 3;
const REVOKED_REASON: &[u8] = b"certificate revoked: this host was removed from the installation";
/// How long shutdown waits for connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Everything a daemon needs to start.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The workspace root to serve.
    pub root: PathBuf,
    /// The UDP address to listen on.
    pub listen: SocketAddr,
    /// The session this daemon serves; its certificate must name it.
    pub session_id: String,
    /// Directory with `ca.pem`, `session.pem` and `session.key`, and the revoked issuing
    /// certificates ([`sessionfs_pki::REVOKED_FILE`]) if any are.
    pub cert_dir: PathBuf,
    /// The fixed owner of new nodes; `None`: the caller on the host.
    pub owner: Option<crate::workspace::Owner>,
}

/// Why a daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("workspace: {0}")]
    Workspace(std::io::Error),
    #[error("certificates in {dir}: {source}")]
    Certificates {
        dir: PathBuf,
        source: sessionfs_pki::PkiError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A bound daemon, ready to serve.
pub struct Daemon {
    endpoint: quinn::Endpoint,
    /// The configuration for peers on another machine ([`sessionfs_pki::wide_area`]).
    wide_area: Arc<quinn::ServerConfig>,
    workspace: Arc<Workspace>,
    watcher: Arc<WorkspaceWatcher>,
    /// Requests and watched changes, for trimming memory once quiet (see [`crate::idle`]).
    activity: Arc<Activity>,
    session_id: Arc<str>,
    revocations: Revocations,
}

impl Daemon {
    /// Opens the workspace, loads the certificates and binds the endpoint. Must run inside a tokio
    /// runtime.
    pub fn bind(config: &DaemonConfig) -> Result<Self, DaemonError> {
        // Modes arrive with the caller's umask already applied by the host kernel; applying the
        // daemon's own umask on top would change them.
        rustix::process::umask(rustix::fs::Mode::empty());
        let workspace =
            Workspace::open(&config.root, config.owner).map_err(DaemonError::Workspace)?;
        let certs = |source| DaemonError::Certificates {
            dir: config.cert_dir.clone(),
            source,
        };
        let identity =
            sessionfs_pki::Identity::load(&config.cert_dir, sessionfs_pki::SESSION_FILES.stem)
                .map_err(certs)?;
        let roots =
            sessionfs_pki::load_ca_roots(&config.cert_dir.join(sessionfs_pki::CA_FILES.cert))
                .map_err(certs)?;
        let revocations =
            Revocations::load(config.cert_dir.join(sessionfs_pki::REVOKED_FILE)).map_err(certs)?;
        let wide_area = sessionfs_pki::server_config(
            identity.clone(),
            roots.clone(),
            &TransportTuning {
                wide_area: true,
                ..TransportTuning::default()
            },
        )
        .map_err(certs)?;
        let server_config =
            sessionfs_pki::server_config(identity, roots, &TransportTuning::default())
                .map_err(certs)?;
        let endpoint =
            sessionfs_pki::endpoint(config.listen, Some(server_config)).map_err(|source| {
                DaemonError::Bind {
                    addr: config.listen,
                    source,
                }
            })?;
        let workspace = Arc::new(workspace);
        let activity = Arc::new(Activity::default());
        let watcher =
            WorkspaceWatcher::start(&config.root, Some(workspace.clone()), activity.clone());
        Ok(Daemon {
            endpoint,
            wide_area: Arc::new(wide_area),
            workspace,
            watcher,
            activity,
            session_id: config.session_id.as_str().into(),
            revocations,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Serves until `shutdown` completes, then closes every connection and waits briefly for peers to
    /// acknowledge.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        info!(
            session = %self.session_id,
            root = %self.workspace.root_path().display(),
            addr = ?self.endpoint.local_addr().ok(),
            "serving"
        );
        tokio::pin!(shutdown);
        let trimmer = tokio::spawn(crate::idle::trim_when_quiet(self.activity.clone()));
        let refusals = Arc::new(RefusalLog::new(Instant::now()));
        let revoked = self.revocations.subscribe();
        let follower = tokio::spawn(self.revocations.follow());
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let ws = self.workspace.clone();
                    let watcher = self.watcher.clone();
                    let id = self.session_id.clone();
                    let activity = self.activity.clone();
                    let refusals = refusals.clone();
                    let wide = self.wide_area.clone();
                    let peer = Peer { session_id: id, refusals, revoked: revoked.clone() };
                    tokio::spawn(serve_connection(incoming, wide, ws, watcher, activity, peer));
                }
                () = &mut shutdown => break,
            }
        }
        info!("shutting down");
        trimmer.abort();
        follower.abort();
        self.endpoint.close(0u32.into(), b"daemon shutting down");
        if tokio::time::timeout(SHUTDOWN_GRACE, self.endpoint.wait_idle())
            .await
            .is_err()
        {
            debug!("peers did not acknowledge the close in time");
        }
    }
}

/// Logs a refused connection, unless refusals are flooding the log ([`RefusalLog`]).
fn refused(log: &RefusalLog, remote: SocketAddr, why: std::fmt::Arguments<'_>) {
    match log.admit(Instant::now()) {
        Verdict::Log { left_out: 0 } => warn!(%remote, "{why}"),
        Verdict::Log { left_out } => warn!(
            %remote,
            "{why} ({left_out} more refused connections were not logged, at most {BURST} are per {WINDOW:?})"
        ),
        Verdict::Quiet => {}
    }
}

/// What admitting a peer takes: whom this daemon serves, the refusal log, the revoked certificates.
struct Peer {
    session_id: Arc<str>,
    refusals: Arc<RefusalLog>,
    revoked: tokio::sync::watch::Receiver<Arc<sessionfs_pki::Revoked>>,
}

impl Peer {
    /// The revoked certificate in `conn`'s peer chain, if it holds one.
    fn revoked_in(&self, conn: &quinn::Connection) -> Option<String> {
        let chain = sessionfs_pki::peer_chain(conn)?;
        self.revoked.borrow().refused(&chain)
    }
}

async fn serve_connection(
    incoming: quinn::Incoming,
    wide_area: Arc<quinn::ServerConfig>,
    ws: Arc<Workspace>,
    watcher: Arc<WorkspaceWatcher>,
    activity: Arc<Activity>,
    mut peer: Peer,
) {
    let (session_id, refusals) = (peer.session_id.clone(), peer.refusals.clone());
    let remote = incoming.remote_address();
    let connecting = if sessionfs_pki::wide_area(&remote) {
        incoming.accept_with(wide_area)
    } else {
        incoming.accept()
    };
    let connecting = match connecting {
        Ok(connecting) => connecting,
        Err(e) => {
            refused(&refusals, remote, format_args!("refused connection: {e}"));
            return;
        }
    };
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            refused(
                &refusals,
                remote,
                format_args!("refused connection: TLS handshake failed: {e}"),
            );
            return;
        }
        Err(_) => {
            refused(
                &refusals,
                remote,
                format_args!("refused connection: TLS handshake timed out"),
            );
            return;
        }
    };
    let role = match sessionfs_pki::authorize_peer(&conn, &session_id) {
        Ok(role) => role,
        Err(e) => {
            refused(&refusals, remote, format_args!("refused connection: {e}"));
            conn.close(1u32.into(), b"unauthorized client certificate");
            return;
        }
    };
    if let Some(fingerprint) = peer.revoked_in(&conn) {
        refused(
            &refusals,
            remote,
            format_args!("refused connection: its chain holds revoked certificate {fingerprint}"),
        );
        conn.close(REVOKED_CODE.into(), REVOKED_REASON);
        return;
    }
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&conn, &session_id)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            refused(
                &refusals,
                remote,
                format_args!("refused connection: protocol handshake failed: {e}"),
            );
            conn.close(2u32.into(), b"handshake failed");
            return;
        }
        Err(_) => {
            refused(
                &refusals,
                remote,
                format_args!("refused connection: protocol handshake timed out"),
            );
            conn.close(2u32.into(), b"handshake timed out");
            return;
        }
    }
    debug!(%remote, ?role, "connection ready");
    let handles = Arc::new(Handles::default());
    // The list is followed while the daemon runs; `false` once it no longer is.
    let mut following = true;
    loop {
        let accepted = tokio::select! {
            accepted = conn.accept_bi() => accepted,
            changed = peer.revoked.changed(), if following => {
                following = changed.is_ok();
                if let Some(fingerprint) = peer.revoked_in(&conn) {
                    warn!(%remote, open_files = handles.len(),
                          "ending the connection: certificate {fingerprint} in its chain was revoked");
                    conn.close(REVOKED_CODE.into(), REVOKED_REASON);
                }
                continue;
            }
        };
        match accepted {
            Ok((send, recv)) => {
                activity.note();
                let (ws, handles, watcher) = (ws.clone(), handles.clone(), watcher.clone());
                tokio::spawn(serve_stream(send, recv, ws, handles, watcher, role));
            }
            Err(e) => {
                debug!(%remote, open_files = handles.len(), "connection ended: {e}");
                break;
            }
        }
    }
}

/// The protocol handshake on the first stream: versions must match.
async fn handshake(conn: &quinn::Connection, session_id: &str) -> Result<(), WireError> {
    let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| {
        WireError::Read(quinn::ReadExactError::ReadError(
            quinn::ReadError::ConnectionLost(e),
        ))
    })?;
    let hello: Hello = read_last_frame(&mut recv).await?;
    let reply = if hello.version == PROTOCOL_VERSION {
        HelloReply::Welcome {
            version: PROTOCOL_VERSION,
            session_id: session_id.to_owned(),
        }
    } else {
        HelloReply::VersionMismatch {
            supported: PROTOCOL_VERSION,
        }
    };
    write_frame(&mut send, &reply, true).await?;
    if hello.version != PROTOCOL_VERSION {
        return Err(WireError::Codec(sessionfs_proto::CodecError::Malformed(
            format!(
                "client speaks protocol version {}, this daemon {PROTOCOL_VERSION}",
                hello.version
            ),
        )));
    }
    Ok(())
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    ws: Arc<Workspace>,
    handles: Arc<Handles>,
    watcher: Arc<WorkspaceWatcher>,
    role: PeerRole,
) {
    let frame = match tokio::time::timeout(
        REQUEST_READ_TIMEOUT,
        read_last_frame::<RequestFrame>(&mut recv),
    )
    .await
    {
        Ok(Ok(frame)) => frame,
        Ok(Err(e @ (WireError::Codec(_) | WireError::TrailingData))) => {
            warn!("refused request: {e}");
            let _ = recv.stop(1u32.into());
            let reply = ResponseFrame(Err(ErrorReply::new(errno::EPROTO, e.to_string())));
            let _ = write_frame(&mut send, &reply, true).await;
            return;
        }
        Ok(Err(e)) => {
            debug!("request stream failed: {e}");
            return;
        }
        Err(_) => {
            warn!("request not received within {REQUEST_READ_TIMEOUT:?}");
            let _ = recv.stop(2u32.into());
            let reply = ResponseFrame(Err(ErrorReply::new(
                errno::ETIMEDOUT,
                "request frame timed out",
            )));
            let _ = write_frame(&mut send, &reply, true).await;
            return;
        }
    };
    let result = match (role, frame.request) {
        (_, Request::Ping) => Ok(Reply::Pong),
        (PeerRole::Bridge, Request::Watch) => {
            serve_watch(send, &watcher).await;
            return;
        }
        (PeerRole::HealthProbe, _) => Err(ErrorReply::new(
            errno::EPERM,
            "the health probe identity may only ping",
        )),
        (PeerRole::Bridge, request) if runs_inline(&request) => {
            dispatch(&ws, &handles, frame.caller, request)
        }
        (PeerRole::Bridge, request) => {
            let caller = frame.caller;
            tokio::task::spawn_blocking(move || dispatch(&ws, &handles, caller, request))
                .await
                .unwrap_or_else(|e| {
                    Err(ErrorReply::new(
                        errno::EIO,
                        format!("request task failed: {e}"),
                    ))
                })
        }
    };
    if let Err(e) = write_frame(&mut send, &ResponseFrame(result), true).await {
        debug!("could not send reply: {e}");
    }
}

/// Whether `request` runs on the runtime's worker thread rather than the blocking pool: a call on
/// one node's metadata, a few microseconds on a local file system, where handing it to another thread
/// and back would cost more than the call (about 50 µs of a 200 µs round trip here). Calls that move
/// file data, list a directory, sync or truncate go to the blocking pool, so a large transfer or a
/// slow disk never holds a worker.
fn runs_inline(request: &Request) -> bool {
    match request {
        Request::Read { .. }
        | Request::Write { .. }
        | Request::ReadDir { .. }
        | Request::ReadHeads { .. }
        | Request::Flush { .. }
        | Request::Fsync { .. }
        | Request::FsyncDir { .. }
        | Request::Release { .. }
        | Request::Unlink { .. }
        | Request::Rename { .. } => false,
        Request::Open { head, flags, .. } => *head == 0 && flags & libc::O_TRUNC == 0,
        Request::Create { flags, .. } => flags & libc::O_TRUNC == 0,
        Request::SetAttr { attrs, .. } => attrs.size.is_none(),
        // A few small writes into the page cache ahead of a metadata call: a tar's file.
        Request::Batch { changes, then } => {
            changes.iter().map(BatchedChange::data_len).sum::<usize>() <= INLINE_BATCH_BYTES
                && then.as_deref().is_none_or(runs_inline)
        }
        _ => true,
    }
}

/// The most write data a batch may carry and still run inline (see [`runs_inline`]).
const INLINE_BATCH_BYTES: usize = 64 * 1024;

/// Streams workspace changes on a `Watch` stream until the peer or the connection goes away.
async fn serve_watch(mut send: quinn::SendStream, watcher: &WorkspaceWatcher) {
    let mut frames = match watcher.subscribe() {
        Subscription::Live(frames) => frames,
        Subscription::Unavailable(reason) => {
            let _ = write_frame(&mut send, &WatchFrame::Unavailable { reason }, true).await;
            return;
        }
    };
    if write_frame(&mut send, &WatchFrame::Ready, false)
        .await
        .is_err()
    {
        return;
    }
    loop {
        let frame = match frames.recv().await {
            Ok(frame) => frame,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                debug!(missed = n, "watch subscriber fell behind");
                Arc::new(WatchFrame::Overflow)
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        // The last frame of a watcher that can no longer be trusted ends the stream.
        let last = matches!(*frame, WatchFrame::Unavailable { .. });
        if let Err(e) = write_frame(&mut send, &*frame, last).await {
            debug!("watch stream ended: {e}");
            return;
        }
        if last {
            return;
        }
    }
}

/// Runs one request against the workspace. Blocking.
pub fn dispatch(
    ws: &Workspace,
    handles: &Handles,
    caller: sessionfs_proto::Caller,
    request: Request,
) -> Result<Reply, ErrorReply> {
    let xattr = |v: XattrValue| match v {
        XattrValue::Data(d) => Reply::Data(d),
        XattrValue::Size(n) => Reply::XattrSize(n),
    };
    Ok(match request {
        Request::Ping => Reply::Pong,
        Request::Lookup { path } => Reply::Attr(ws.lookup(&path)?),
        Request::GetAttr { path, fh } => Reply::Attr(ws.getattr(&path, fh, handles)?),
        Request::SetAttr { path, fh, attrs } => {
            Reply::Attr(ws.setattr(&path, fh, &attrs, handles)?)
        }
        Request::ReadDir {
            path,
            offset,
            limit,
        } => {
            let (entries, next) = ws.readdir(&path, offset, limit)?;
            Reply::Entries { entries, next }
        }
        Request::Open {
            path,
            flags,
            head,
            expect,
        } => {
            let opened = ws.open_file(&path, flags, head, expect.as_ref(), handles)?;
            Reply::Opened {
                fh: opened.fh,
                attr: opened.attr,
                head: opened.head,
                fd: opened.fd,
            }
        }
        Request::Create { path, mode, flags } => {
            let (fh, attr, parent) = ws.create(&path, mode, flags, caller, handles)?;
            Reply::Created { fh, attr, parent }
        }
        Request::Read { fh, offset, size } => Reply::Data(ws.read(fh, offset, size, handles)?),
        Request::Write { fh, offset, data } => {
            Reply::Written(ws.write(fh, offset, &data, handles)?)
        }
        Request::Flush { fh } => {
            handles.get(fh)?;
            Reply::Empty
        }
        Request::Fsync { fh, datasync } => {
            ws.fsync(fh, datasync, handles)?;
            Reply::Empty
        }
        Request::FsyncDir { path, datasync } => {
            ws.fsyncdir(&path, datasync)?;
            Reply::Empty
        }
        Request::Release { fh } => {
            handles.remove(fh)?;
            Reply::Empty
        }
        Request::Mkdir { path, mode } => made(ws.mkdir(&path, mode, caller)?),
        Request::Mknod { path, kind, mode } => made(ws.mknod(&path, kind, mode, caller)?),
        Request::Unlink { path } => {
            ws.unlink(&path)?;
            Reply::Empty
        }
        Request::Rmdir { path } => {
            ws.rmdir(&path)?;
            Reply::Empty
        }
        Request::Rename { from, to, flags } => {
            ws.rename(&from, &to, flags)?;
            Reply::Empty
        }
        Request::Symlink { path, target } => made(ws.symlink(&path, &target, caller)?),
        Request::Readlink { path } => Reply::Data(ws.readlink(&path)?),
        Request::ReadHeads { path, max_each } => Reply::Heads(ws.read_heads(&path, max_each)?),
        Request::Link { from, to } => made(ws.link(&from, &to)?),
        Request::StatFs => Reply::StatFs(ws.statfs()?),
        Request::GetXattr { path, name, size } => xattr(ws.getxattr(&path, &name, size)?),
        Request::ListXattr { path, size } => xattr(ws.listxattr(&path, size)?),
        Request::SetXattr {
            path,
            name,
            value,
            flags,
        } => {
            ws.setxattr(&path, &name, &value, flags)?;
            Reply::Empty
        }
        Request::RemoveXattr { path, name } => {
            ws.removexattr(&path, &name)?;
            Reply::Empty
        }
        Request::Batch { changes, then } => dispatch_batch(ws, handles, caller, changes, then),
        // Served on its own stream by `serve_watch`, never dispatched.
        Request::Watch => {
            return Err(ErrorReply::new(
                errno::EINVAL,
                "Watch is served on its own stream",
            ))
        }
    })
}

/// The reply to a call that made a node: its attributes and its directory's.
fn made((attr, parent): (Attr, Attr)) -> Reply {
    Reply::Made { attr, parent }
}

/// Applies a batch's changes in order, skipping the later changes of a handle whose change failed
/// (but never its release), then runs its `then` request whatever they did.
fn dispatch_batch(
    ws: &Workspace,
    handles: &Handles,
    caller: sessionfs_proto::Caller,
    changes: Vec<BatchedChange>,
    then: Option<Box<Request>>,
) -> Reply {
    let mut failed: Vec<FailedWrite> = Vec::new();
    for change in changes {
        let fh = change.fh();
        let release = matches!(change, BatchedChange::Release { .. });
        if !release && failed.iter().any(|f| f.fh == fh) {
            continue;
        }
        let applied = match change {
            BatchedChange::Write(w) => ws.write_all(w.fh, w.offset, &w.data, handles),
            BatchedChange::SetAttr { attrs, .. } if attrs.size.is_some() => Err(ErrorReply::new(
                errno::EPROTO,
                "a batch may not change a file's size",
            )),
            BatchedChange::SetAttr { fh, attrs } => ws
                .setattr(&WirePath::default(), Some(fh), &attrs, handles)
                .map(|_| ()),
            BatchedChange::Release { fh } => handles.remove(fh),
        };
        if let Err(error) = applied {
            debug!("batched change failed: {error}");
            failed.push(FailedWrite { fh, error });
        }
    }
    let then = then.map(|request| {
        Box::new(ResponseFrame(match *request {
            Request::Batch { .. } | Request::Watch => Err(ErrorReply::new(
                errno::EPROTO,
                "a batch may not carry a batch or a watch",
            )),
            request => dispatch(ws, handles, caller, request),
        }))
    });
    Reply::Batch { failed, then }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessionfs_proto::{BatchedWrite, Caller, SetAttrs};

    fn wp(s: &str) -> WirePath {
        WirePath::new(s.as_bytes().to_vec()).expect("valid path")
    }

    fn write(fh: u64, offset: u64, data: &[u8]) -> BatchedChange {
        BatchedChange::Write(BatchedWrite {
            fh,
            offset,
            data: data.to_vec(),
        })
    }

    #[test]
    fn a_batch_applies_its_changes_in_order_stops_a_failed_handle_and_runs_its_request() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ws = Workspace::open(dir.path(), None).expect("workspace");
        let handles = Handles::default();
        let rw = libc::O_RDWR;
        let (a, _, _) = ws
            .create(&wp("a"), 0o644, rw, Caller::default(), &handles)
            .expect("create a");
        let (b, _, _) = ws
            .create(&wp("b"), 0o644, rw, Caller::default(), &handles)
            .expect("create b");
        let missing = 999;
        let mode = |mode| SetAttrs {
            mode: Some(mode),
            ..SetAttrs::default()
        };
        let changes = vec![
            write(a, 0, b"first"),
            write(missing, 0, b"lost"),
            write(b, 0, b"bee"),
            BatchedChange::SetAttr {
                fh: b,
                attrs: mode(0o600),
            },
            write(a, 0, b"FI"),
            write(missing, 9, b"skipped"),
            write(a, 5, b"+tail"),
            // A size is never deferred: refused, and b's later change is not applied.
            BatchedChange::SetAttr {
                fh: b,
                attrs: SetAttrs {
                    size: Some(0),
                    ..SetAttrs::default()
                },
            },
            BatchedChange::SetAttr {
                fh: b,
                attrs: mode(0o640),
            },
            // A release is applied after a failed change of its handle all the same.
            BatchedChange::Release { fh: b },
        ];
        let then = Some(Box::new(Request::GetAttr {
            path: wp("a"),
            fh: None,
        }));
        let reply = dispatch(
            &ws,
            &handles,
            Caller::default(),
            Request::Batch { changes, then },
        )
        .expect("batch");
        let Reply::Batch { failed, then } = reply else {
            panic!("not a batch reply: {reply:?}");
        };
        // The unknown handle fails once; its later write is not applied, the others are, in order.
        assert_eq!(failed.len(), 2, "{failed:?}");
        assert_eq!(
            (failed[0].fh, failed[0].error.errno),
            (missing, errno::EBADF)
        );
        assert_eq!((failed[1].fh, failed[1].error.errno), (b, errno::EPROTO));
        use std::os::unix::fs::PermissionsExt;
        let b_meta = std::fs::metadata(dir.path().join("b")).expect("b");
        assert_eq!(b_meta.permissions().mode() & 0o7777, 0o600);
        assert!(handles.get(b).is_err(), "b was released");
        assert!(handles.get(a).is_ok(), "a is still open");
        assert_eq!(
            std::fs::read(dir.path().join("a")).expect("a"),
            b"FIrst+tail"
        );
        assert_eq!(std::fs::read(dir.path().join("b")).expect("b"), b"bee");
        // The request ran after the writes: it sees their size.
        match then.map(|t| t.0) {
            Some(Ok(Reply::Attr(attr))) => assert_eq!(attr.size, 10),
            other => panic!("then: {other:?}"),
        }
        // A batch may not carry a batch.
        let nested = Request::Batch {
            changes: vec![],
            then: Some(Box::new(Request::Batch {
                changes: vec![],
                then: None,
            })),
        };
        match dispatch(&ws, &handles, Caller::default(), nested) {
            Ok(Reply::Batch { then: Some(t), .. }) => {
                assert_eq!(t.0.expect_err("nested batch").errno, errno::EPROTO)
            }
            other => panic!("nested: {other:?}"),
        }
    }
}
