//! Sessions as the bridge sees them: registry records plus one lazily dialed QUIC connection each.
//!
//! Architecture invariants:
//! - **Every request is bounded in time** by [`BridgeConfig::op_timeout`], dialing included; a dead
//!   session answers `ETIMEDOUT` or `ENOTCONN`, never hangs.
//! - **Sessions are independent**: each has its own connection and dial lock, so a slow or dead session
//!   never delays another.
//! - **The registry is the source of truth for endpoints**: a dial always re-reads the session's record,
//!   and a connection whose peer is no longer the recorded endpoint is dropped, so a daemon that comes
//!   back on another port is found without a remount.
//! - **A session's cached data is only trusted while its change stream is live**: each connection
//!   subscribes to the daemon's changes (`Request::Watch`); the start and the end of that stream, and
//!   any overflow, invalidate everything the kernel cached for the session.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use sessionfs_proto::{
    errno, BatchedChange, Caller, Change, ErrorReply, Reply, Request, RequestFrame, ResponseFrame,
    SetAttrs, WatchFrame, WirePath,
};
use sessionfs_registry::{
    Registry, SessionId, SessionRecord, SessionState, CERT_PIN_LABEL, OWNER_LABEL,
};
use tracing::{debug, info, warn};

use crate::config::BridgeConfig;
use crate::crossed::RecentChanges;
use crate::link::{Conn, Dialer, QuicDialer};
use crate::write_behind::{Carried, Turn, WriteBehind};

/// After a failed dial, further requests fail fast with the same error for this long.
const DIAL_BACKOFF: Duration = Duration::from_millis(500);

/// The connection state of one session.
pub struct Session {
    pub id: SessionId,
    record: Mutex<SessionRecord>,
    /// This host's name ([`sessionfs_registry::this_host`]): a session of another host gets no
    /// direct data.
    host: String,
    conn: Mutex<Option<Conn>>,
    dial_lock: tokio::sync::Mutex<Option<(Instant, ErrorReply)>>,
    /// Whether the daemon's change stream is live (every change from now on will be reported).
    watching: AtomicBool,
    /// Bumped by every invalidation of this session: a reply built from data fetched before an
    /// invalidation must not be cached for long (see `core/memory.rs`).
    generation: AtomicU64,
    /// What moved the generation lately (see [`crate::crossed`]).
    recent: Mutex<RecentChanges>,
    /// Change batches and resets handed to the invalidator, and those it has handled: what the
    /// bridge answers from its own records (not from a daemon reply) is current only when they are
    /// equal, since a batch received but not yet handled has not updated those records.
    queued: AtomicU64,
    handled: AtomicU64,
    /// Writes acknowledged to the kernel and not yet written (see [`crate::write_behind`]): every
    /// request to the session carries them or waits for them.
    pub write_behind: WriteBehind,
}

/// What the invalidator thread is asked to do (see `core/invalidate.rs`).
#[derive(Debug)]
pub enum Invalidation {
    /// Forget what the kernel cached for these changes in the session.
    Changes(SessionId, Arc<[Change]>),
    /// The changes again, a moment later: they touched entries a lookup had just answered, which
    /// the kernel may not have had yet the first time (see [`crate::replied`]).
    Late(SessionId, Arc<[Change]>),
    /// Forget everything the kernel cached for the session (overflow, reconnect, restart).
    Reset(SessionId),
    /// Forget the attributes, pages and cached listing of one inode (a directory listing the kernel
    /// may have cached from a reply that an invalidation overtook).
    Inode(u64),
    /// The set of sessions changed: forget the mount root's listing, and the entries of `removed`.
    Root { removed: Vec<SessionId> },
    /// A call that would have bound `dir/name` failed after the bridge stopped tracking the negative
    /// entry the kernel may hold for it: forget that entry unless the name is bound.
    Missing { dir: u64, name: Vec<u8> },
}

/// All sessions known to the bridge, kept in step with the registry.
pub struct Sessions {
    dialer: Arc<dyn Dialer>,
    registry: Arc<Registry>,
    table: RwLock<BTreeMap<SessionId, Arc<Session>>>,
    op_timeout: Duration,
    connect_timeout: Duration,
    /// The mounting user's uid and gid, when owners are mapped (`--map-owner`).
    map_owner_to: Option<(u32, u32)>,
    /// Whether other users may use the mount (`--allow-other`): then a session owner that is another
    /// host account gets that account owner's rights, which is said when the session appears.
    allow_other: bool,
    /// Where change notifications go (the invalidator thread), once the mount set it.
    invalidations: OnceLock<std::sync::mpsc::Sender<Invalidation>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Guarded values here are plain caches; a panicking holder cannot leave them inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn not_connected(msg: impl Into<String>) -> ErrorReply {
    ErrorReply::new(errno::ENOTCONN, msg)
}

impl Sessions {
    /// Sets up the QUIC client endpoints (`client` for this machine's daemons, `wide_area` for
    /// other machines'); sessions arrive through [`Sessions::update`].
    pub fn new(
        config: &BridgeConfig,
        client: quinn::ClientConfig,
        wide_area: quinn::ClientConfig,
    ) -> Result<Self, std::io::Error> {
        Self::with_dialer(config, Arc::new(QuicDialer::new(client, wide_area)?))
    }

    /// Sessions whose daemons `dialer` connects to (the core's tests dial in-process daemons).
    pub fn with_dialer(
        config: &BridgeConfig,
        dialer: Arc<dyn Dialer>,
    ) -> Result<Self, std::io::Error> {
        let registry =
            Arc::new(Registry::connect(&config.registry).map_err(std::io::Error::other)?);
        Ok(Sessions {
            dialer,
            registry,
            table: RwLock::new(BTreeMap::new()),
            op_timeout: config.op_timeout,
            connect_timeout: config.connect_timeout,
            map_owner_to: config.map_owner.then(|| {
                (
                    rustix::process::geteuid().as_raw(),
                    rustix::process::getegid().as_raw(),
                )
            }),
            allow_other: config.allow_other,
            invalidations: OnceLock::new(),
        })
    }

    /// Routes change notifications of every session's daemon to `tx`. Without it, no session is
    /// watched (and the kernel caches only briefly).
    pub fn set_invalidator(&self, tx: std::sync::mpsc::Sender<Invalidation>) {
        let _ = self.invalidations.set(tx);
    }

    /// Replaces the known sessions with `records` (a full registry listing).
    /// Records in state `gone` (their container was removed behind sessionfs's back) are left out:
    /// they disappear from the mount root as if removed.
    pub fn update(&self, records: Vec<SessionRecord>) {
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        let mut next = BTreeMap::new();
        let mut appeared = false;
        for record in records
            .into_iter()
            .filter(|r| r.state != SessionState::Gone)
        {
            let session = match table.remove(&record.id) {
                Some(s) => {
                    s.set_record(record);
                    s
                }
                None => {
                    info!(session = %record.id, backend = %record.backend, "session appeared");
                    self.warn_of_foreign_owner(&record);
                    appeared = true;
                    Arc::new(Session::new(record))
                }
            };
            next.insert(session.id.clone(), session);
        }
        let mut removed = Vec::new();
        for (id, gone) in std::mem::take(&mut *table) {
            info!(session = %id, "session removed");
            gone.drop_connection("session removed from the registry");
            removed.push(id);
        }
        *table = next;
        drop(table);
        if appeared || !removed.is_empty() {
            // The kernel caches the root listing (see `core/dirs.rs`, `opendir`).
            self.invalidate(Invalidation::Root { removed });
        }
    }

    /// With `--allow-other` and without `--map-owner`, a session whose files belong to a uid that is
    /// another host account gives that account owner rights on them through the mount: said once,
    /// when the session appears, naming the account.
    fn warn_of_foreign_owner(&self, record: &SessionRecord) {
        if !self.allow_other || self.map_owner_to.is_some() {
            return;
        }
        let Some(uid) = record
            .labels
            .get(OWNER_LABEL)
            .and_then(|o| o.split_once(':'))
            .and_then(|(uid, _)| uid.parse::<u32>().ok())
        else {
            return;
        };
        if uid == rustix::process::geteuid().as_raw() {
            return;
        }
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        if let Some(account) = account_of(&passwd, uid) {
            warn!(
                session = %record.id,
                uid,
                account,
                "the session's files belong to uid {uid}, the host account {account:?}: with --allow-other that account may read and change them through the mount as their owner; mount with --map-owner, or give the session an owner with no host account (session create --owner)"
            );
        }
    }

    /// Queues `work` for the invalidator thread (nothing happens before the mount started it).
    pub fn invalidate(&self, work: Invalidation) {
        if let Some(tx) = self.invalidations.get() {
            let _ = tx.send(work);
        }
    }

    /// Reads the registry now and updates the known sessions from it.
    pub fn refresh(&self) -> Result<(), sessionfs_registry::RegistryError> {
        self.update(self.registry.list()?);
        Ok(())
    }

    /// The session `id`, if the registry has it.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        let id = SessionId::new(id).ok()?;
        table.get(&id).cloned()
    }

    /// Ids of all known sessions, sorted.
    pub fn ids(&self) -> Vec<SessionId> {
        self.table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// How long one request may take.
    pub fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    /// Sends `request` to `session`, dialing if needed; bounded by the operation timeout.
    ///
    /// An `Open` or `Create` that times out may still succeed on the daemon; it is left to finish in
    /// the background and its handle is released, so the daemon does not keep it open.
    pub async fn call(
        self: &Arc<Self>,
        session: &Arc<Session>,
        caller: Caller,
        request: Request,
    ) -> Result<(Reply, Conn), ErrorReply> {
        let opens = matches!(request, Request::Open { .. } | Request::Create { .. });
        let map = self.owner_map(session);
        let frame = outbound(map, caller, request);
        if !opens {
            let result = self.bounded(session, self.attempt(session, &frame)).await;
            return result.map(|(reply, conn)| (inbound(map, reply), conn));
        }
        let (this, s) = (self.clone(), session.clone());
        let mut task = tokio::spawn(async move { this.attempt(&s, &frame).await });
        match tokio::time::timeout(self.op_timeout, &mut task).await {
            Ok(Ok(Ok((reply, conn)))) => Ok((inbound(map, reply), conn)),
            Ok(joined) => joined.unwrap_or_else(|e| {
                Err(ErrorReply::new(
                    errno::EIO,
                    format!("request task failed: {e}"),
                ))
            }),
            Err(_) => {
                let (this, s) = (self.clone(), session.clone());
                tokio::spawn(async move {
                    if let Ok(Ok((
                        Reply::Opened { fh: Some(fh), .. } | Reply::Created { fh, .. },
                        conn,
                    ))) = task.await
                    {
                        let release = Request::Release { fh };
                        if let Err(e) = this.call_on(&s, &conn, caller, release).await {
                            debug!(session = %s.id, "releasing a timed-out open: {e}");
                        }
                    }
                });
                Err(self.timed_out(session))
            }
        }
    }

    /// One request on the session's connection, dialing first if needed. Unbounded: callers bound it.
    async fn attempt(
        &self,
        session: &Arc<Session>,
        frame: &RequestFrame,
    ) -> Result<(Reply, Conn), ErrorReply> {
        let conn = self.connection(session).await?;
        let reply = exchange(session, &conn, frame, self.owner_map(session)).await?;
        Ok((reply, conn))
    }

    /// Sends the writes pending in `session` now (with nothing after them) and waits until they have
    /// landed or failed; bounded by the operation timeout. Writes whose connection is gone are
    /// recorded as failed.
    pub async fn push(&self, session: &Session) {
        if !session.write_behind.has_pending() {
            return;
        }
        let conn = session.live_connection();
        let id = conn.as_ref().map_or(usize::MAX, |c| c.id());
        let work = async {
            let Turn::Carry(carried) = session.write_behind.turn(id).await else {
                return Ok(());
            };
            let Some(conn) = conn.filter(|_| !carried.changes.is_empty()) else {
                carried.landed(Vec::new());
                return Ok(());
            };
            let map = self.owner_map(session);
            send_batch(session, &conn, carried, map, Caller::default(), None)
                .await
                .map(|_| ())
        };
        if let Err(e) = self.bounded(session, work).await {
            warn!(session = %session.id, "writes acknowledged earlier failed: {}", e.message);
        }
    }

    /// Sends `request` on a given connection (one that holds an open file handle), bounded in time.
    pub async fn call_on(
        &self,
        session: &Session,
        conn: &Conn,
        caller: Caller,
        request: Request,
    ) -> Result<Reply, ErrorReply> {
        if let Some(reason) = conn.close_reason() {
            return Err(ErrorReply::new(
                errno::EIO,
                format!("session {}: the connection holding this open file is gone ({reason}); reopen the file", session.id),
            ));
        }
        let map = self.owner_map(session);
        let frame = outbound(map, caller, request);
        let reply = self
            .bounded(session, exchange(session, conn, &frame, map))
            .await;
        reply.map(|r| inbound(map, r))
    }

    /// The owner mapping for `session`, when `--map-owner` is on and the session has an owner.
    fn owner_map(&self, session: &Session) -> Option<OwnerMap> {
        let local = self.map_owner_to?;
        let record = session.record();
        let (uid, gid) = record.labels.get(OWNER_LABEL)?.split_once(':')?;
        Some(OwnerMap {
            remote: (uid.parse().ok()?, gid.parse().ok()?),
            local,
        })
    }

    /// Runs `work` for `session`, failing with `ETIMEDOUT` after the operation timeout.
    async fn bounded<T>(
        &self,
        session: &Session,
        work: impl std::future::Future<Output = Result<T, ErrorReply>>,
    ) -> Result<T, ErrorReply> {
        tokio::time::timeout(self.op_timeout, work)
            .await
            .unwrap_or_else(|_| Err(self.timed_out(session)))
    }

    fn timed_out(&self, session: &Session) -> ErrorReply {
        ErrorReply::new(
            errno::ETIMEDOUT,
            format!(
                "session {}: no answer within {:?}",
                session.id, self.op_timeout
            ),
        )
    }

    /// The live connection of `session`, dialing through the registry when there is none.
    async fn connection(&self, session: &Arc<Session>) -> Result<Conn, ErrorReply> {
        if let Some(conn) = session.live_connection() {
            return Ok(conn);
        }
        let mut last_failure = session.dial_lock.lock().await;
        if let Some(conn) = session.live_connection() {
            return Ok(conn);
        }
        if let Some((at, err)) = &*last_failure {
            if at.elapsed() < DIAL_BACKOFF {
                return Err(err.clone());
            }
        }
        let result = self.dial(session).await;
        match &result {
            Ok(conn) => {
                info!(session = %session.id, peer = %conn.peer(), "connected");
                *lock(&session.conn) = Some(conn.clone());
                *last_failure = None;
                if let Some(tx) = self.invalidations.get() {
                    let map = self.owner_map(session);
                    tokio::spawn(watch(session.clone(), conn.clone(), tx.clone(), map));
                }
            }
            Err(e) => {
                warn!(session = %session.id, "cannot reach the daemon: {}", e.message);
                *last_failure = Some((Instant::now(), e.clone()));
            }
        }
        result
    }

    async fn dial(&self, session: &Session) -> Result<Conn, ErrorReply> {
        // SQLite may wait on a writer's lock: keep that off the runtime's worker threads.
        let (registry, id) = (self.registry.clone(), session.id.clone());
        let lookup = tokio::task::spawn_blocking(move || registry.get(&id))
            .await
            .map_err(|e| ErrorReply::new(errno::EIO, format!("registry lookup failed: {e}")))?;
        let record = match lookup {
            Ok(Some(record)) => record,
            Ok(None) => {
                return Err(ErrorReply::new(
                    errno::ENOENT,
                    format!("session {} no longer exists", session.id),
                ))
            }
            // A registry that cannot be reached (etcd down, a partition) does not take the sessions
            // the mount knows with it: the last record it had still says where the daemon is.
            Err(e) => {
                warn!(session = %session.id, "registry unreachable, dialing the last known endpoint: {e}");
                session.record()
            }
        };
        session.set_record(record.clone());
        let endpoint = usable_endpoint(&record)?;
        let pin = record.labels.get(CERT_PIN_LABEL).map(String::as_str);
        let connect = self
            .dialer
            .dial(&session.id, endpoint, &record.cert_identity, pin);
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(not_connected(format!("session {}: {e}", session.id))),
            Err(_) => Err(ErrorReply::new(
                errno::ETIMEDOUT,
                format!(
                    "session {}: daemon at {endpoint} did not answer within {:?}",
                    session.id, self.connect_timeout
                ),
            )),
        }
    }

    /// Closes every connection (at unmount).
    pub fn close_all(&self) {
        self.dialer.close_all();
    }
}

/// `--map-owner` for one session: its workspace owner inside ↔ the mounting user outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct OwnerMap {
    remote: (u32, u32),
    local: (u32, u32),
}

impl OwnerMap {
    /// Attributes as the host sees them: the workspace owner becomes the mounting user.
    fn attr_in(&self, a: &mut sessionfs_proto::Attr) {
        a.uid = swap(a.uid, self.remote.0, self.local.0);
        a.gid = swap(a.gid, self.remote.1, self.local.1);
    }

    /// An attribute change as the session sees it: the mounting user becomes the workspace owner.
    fn attrs_out(&self, attrs: &mut SetAttrs) {
        attrs.uid = attrs.uid.map(|u| swap(u, self.local.0, self.remote.0));
        attrs.gid = attrs.gid.map(|g| swap(g, self.local.1, self.remote.1));
    }
}

fn swap(id: u32, from: u32, to: u32) -> u32 {
    if id == from {
        to
    } else {
        id
    }
}

/// The frame to send: the mounting user becomes the workspace owner.
fn outbound(map: Option<OwnerMap>, mut caller: Caller, mut request: Request) -> RequestFrame {
    if let Some(m) = map {
        caller.uid = swap(caller.uid, m.local.0, m.remote.0);
        caller.gid = swap(caller.gid, m.local.1, m.remote.1);
        if let Request::SetAttr { attrs, .. } = &mut request {
            m.attrs_out(attrs);
        }
    }
    RequestFrame { caller, request }
}

/// The reply as the host sees it: the workspace owner becomes the mounting user.
fn inbound(map: Option<OwnerMap>, mut reply: Reply) -> Reply {
    let Some(m) = map else { return reply };
    let fix = |a: &mut sessionfs_proto::Attr| m.attr_in(a);
    match &mut reply {
        Reply::Attr(a) | Reply::Opened { attr: a, .. } => fix(a),
        Reply::Created { attr, parent, .. } | Reply::Made { attr, parent } => {
            fix(attr);
            fix(parent);
        }
        Reply::Entries { entries, .. } => entries.iter_mut().for_each(|e| fix(&mut e.attr)),
        Reply::Heads(files) => files.iter_mut().for_each(|f| fix(&mut f.attr)),
        _ => {}
    }
    reply
}

/// The endpoint to dial, or why the session cannot be dialed.
fn usable_endpoint(record: &SessionRecord) -> Result<SocketAddr, ErrorReply> {
    match record.state {
        SessionState::Stopped | SessionState::Gone => {
            return Err(not_connected(format!(
                "session {} is {}",
                record.id, record.state
            )));
        }
        SessionState::Starting | SessionState::Running | SessionState::Unhealthy => {}
    }
    record
        .endpoint
        .ok_or_else(|| not_connected(format!("session {} has no endpoint yet", record.id)))
}

/// True when `peer` is `recorded` (an IPv4 peer may show up IPv4-mapped on a dual-stack socket).
fn same_endpoint(peer: SocketAddr, recorded: Option<SocketAddr>) -> bool {
    recorded.is_some_and(|r| {
        r.port() == peer.port() && r.ip().to_canonical() == peer.ip().to_canonical()
    })
}

/// Follows the daemon's change stream on `conn` for as long as it lives, forwarding changes to the
/// invalidator. The session's kernel caches are reset when the stream starts (changes before it were
/// not seen) and when it ends (changes after it will not be).
async fn watch(
    session: Arc<Session>,
    conn: Conn,
    tx: std::sync::mpsc::Sender<Invalidation>,
    map: Option<OwnerMap>,
) {
    let id = session.id.clone();
    let reset = |why: &str| {
        debug!(session = %id, "invalidating the session's cached data: {why}");
        session.handed_over(None);
        let _ = tx.send(Invalidation::Reset(id.clone()));
    };
    reset("new connection");
    let ended = async {
        let mut changes = conn.watch().await?;
        loop {
            match changes.next().await? {
                WatchFrame::Ready => {
                    session.watching.store(true, Ordering::Release);
                    // A reply read before the daemon subscribed may predate a change it will never
                    // report: requests under way now must not count as fresh.
                    session.moved(None);
                    debug!(session = %id, "watching the session's changes");
                }
                WatchFrame::Changes(mut changes) => {
                    if let Some(m) = map {
                        for change in &mut changes {
                            if let Change::Node { now: Some(a), .. } = change {
                                m.attr_in(a);
                            }
                        }
                    }
                    let changes: Arc<[Change]> = changes.into();
                    session.handed_over(Some(changes.clone()));
                    let _ = tx.send(Invalidation::Changes(id.clone(), changes));
                }
                WatchFrame::Overflow => reset("the daemon's change queue overflowed"),
                WatchFrame::Unavailable { reason } => {
                    warn!(session = %id, "the daemon cannot watch its workspace ({reason}): changes made inside the session show after the short cache lifetime, not at once");
                    return Err(format!("the daemon cannot watch: {reason}"));
                }
            }
        }
    };
    let why: Result<(), String> = ended.await;
    session.watching.store(false, Ordering::Release);
    if let Err(why) = why {
        debug!(session = %id, "change stream ended: {why}");
    }
    reset("change stream ended");
}

/// Sends `frame` on `conn` once no batch of the session's writes is on its way, carrying the writes
/// pending (see [`crate::write_behind`]); the reply is the frame's own.
async fn exchange(
    session: &Session,
    conn: &Conn,
    frame: &RequestFrame,
    map: Option<OwnerMap>,
) -> Result<Reply, ErrorReply> {
    let carried = match session.write_behind.turn(conn.id()).await {
        Turn::Clear => return call_once(&session.id, conn, frame).await,
        Turn::Carry(carried) if carried.changes.is_empty() => {
            carried.landed(Vec::new());
            return call_once(&session.id, conn, frame).await;
        }
        Turn::Carry(carried) => carried,
    };
    let then = Some(frame.request.clone());
    match send_batch(session, conn, carried, map, frame.caller, then).await? {
        Some(then) => then.0,
        // Not reached: `send_batch` refuses a reply without it.
        None => Err(ErrorReply::new(
            errno::EIO,
            "a batch reply without its request's",
        )),
    }
}

/// Sends `carried` as one `Batch` ahead of `then` (if any, already mapped with `map` like `caller`),
/// and settles the changes: the ones the daemon reports are recorded as failed, and all of them if
/// no usable reply came. Returns the reply to `then` (present exactly when `then` was: any other
/// reply is unexpected).
async fn send_batch(
    session: &Session,
    conn: &Conn,
    mut carried: Carried<'_>,
    map: Option<OwnerMap>,
    caller: Caller,
    then: Option<Request>,
) -> Result<Option<Box<ResponseFrame>>, ErrorReply> {
    let asked = then.is_some();
    let mut changes = std::mem::take(&mut carried.changes);
    if let Some(m) = map {
        for change in &mut changes {
            if let BatchedChange::SetAttr { attrs, .. } = change {
                m.attrs_out(attrs);
            }
        }
    }
    let frame = RequestFrame {
        caller,
        request: Request::Batch {
            changes,
            then: then.map(Box::new),
        },
    };
    match call_once(&session.id, conn, &frame).await {
        Ok(Reply::Batch { failed, then }) if then.is_some() == asked => {
            carried.landed(failed);
            Ok(then)
        }
        Ok(other) => {
            let e = ErrorReply::new(errno::EIO, format!("unexpected batch reply {other:?}"));
            carried.failed(&e);
            Err(e)
        }
        Err(e) => {
            carried.failed(&e);
            Err(e)
        }
    }
}

async fn call_once(id: &SessionId, conn: &Conn, frame: &RequestFrame) -> Result<Reply, ErrorReply> {
    match conn.call(frame).await {
        Ok(result) => result,
        Err(e) => Err(ErrorReply::new(errno::EIO, format!("session {id}: {e}"))),
    }
}

/// Where each new [`Session`]'s invalidation generations start: 2^40 apart, so a session removed and
/// made again under the same id (its root keeps its inode, and what was cached for the old one is
/// keyed by inode or path) never counts up to a generation something was cached at before.
static GENERATION_BASES: AtomicU64 = AtomicU64::new(0);

impl Session {
    pub(crate) fn new(record: SessionRecord) -> Self {
        let base = GENERATION_BASES.fetch_add(1, Ordering::Relaxed) << 40;
        Session {
            id: record.id.clone(),
            record: Mutex::new(record),
            host: sessionfs_registry::this_host(),
            conn: Mutex::new(None),
            dial_lock: tokio::sync::Mutex::new(None),
            watching: AtomicBool::new(false),
            generation: AtomicU64::new(base),
            recent: Mutex::new(RecentChanges::default()),
            queued: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            write_behind: WriteBehind::default(),
        }
    }

    /// Whether the session has a live connection.
    pub fn is_connected(&self) -> bool {
        self.live_connection().is_some()
    }

    /// Whether the daemon's change stream is live, so that cached data is invalidated on change.
    pub fn is_watched(&self) -> bool {
        self.watching.load(Ordering::Acquire)
    }

    /// The invalidation generation: compare before and after a request to know whether an
    /// invalidation may have crossed it.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether every change batch and reset received has been handled by the invalidator.
    pub fn caught_up(&self) -> bool {
        self.handled.load(Ordering::Acquire) == self.queued.load(Ordering::Acquire)
    }

    /// The invalidator has handled one more change batch or reset of this session.
    pub(crate) fn handled_one(&self) {
        self.handled.fetch_add(1, Ordering::AcqRel);
    }

    /// `changes` (`None`: a reset) are about to be handed to the invalidator: counted as queued
    /// before the generation moves, so a check of [`Self::caught_up`] after the move sees them.
    fn handed_over(&self, changes: Option<Arc<[Change]>>) {
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.moved(changes);
    }

    /// Moves the invalidation generation because of `changes` (`None`: anything may have changed).
    fn moved(&self, changes: Option<Arc<[Change]>>) {
        let mut recent = lock(&self.recent);
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        recent.record(generation, changes);
    }

    /// Whether a change that arrived since invalidation generation `since` may concern the node at
    /// `path` (see [`crate::crossed`]).
    pub fn changed_since(&self, since: u64, path: &WirePath) -> bool {
        let recent = lock(&self.recent);
        recent.concern(since, self.generation(), path)
    }

    /// Whether what a request that started at invalidation generation `since` learned is still known
    /// current: the session's changes are pushed and no invalidation arrived since.
    pub fn current_since(&self, since: u64) -> bool {
        self.is_watched() && self.generation() == since
    }

    /// The latest registry record seen for this session.
    pub fn record(&self) -> SessionRecord {
        lock(&self.record).clone()
    }

    /// The daemon's host pid in the latest record, where it runs on this host.
    pub fn pid(&self) -> Option<u32> {
        let record = lock(&self.record);
        // Another host's process id names nothing here: no direct data for its sessions.
        if record.elsewhere(&self.host) {
            return None;
        }
        record.pid
    }

    fn set_record(&self, record: SessionRecord) {
        let stale = {
            let conn = lock(&self.conn);
            conn.as_ref()
                .is_some_and(|c| !same_endpoint(c.peer(), record.endpoint))
                || matches!(record.state, SessionState::Stopped | SessionState::Gone)
        };
        *lock(&self.record) = record;
        if stale {
            self.drop_connection("the session's endpoint changed");
        }
    }

    fn live_connection(&self) -> Option<Conn> {
        let mut conn = lock(&self.conn);
        if conn.as_ref().is_some_and(|c| c.close_reason().is_some()) {
            *conn = None;
        }
        conn.clone()
    }

    fn drop_connection(&self, why: &str) {
        if let Some(conn) = lock(&self.conn).take() {
            info!(session = %self.id, "closing connection: {why}");
            conn.close(why);
        }
    }
}

/// The name of the account with `uid` in `passwd` (the text of `/etc/passwd`).
fn account_of(passwd: &str, uid: u32) -> Option<&str> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        (fields.next()?.parse::<u32>().ok()? == uid).then_some(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_are_found_by_uid() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n# comment\nalice:x:1000:1000::/home/alice:/bin/sh\nbroken\n";
        assert_eq!(account_of(passwd, 1000), Some("alice"));
        assert_eq!(account_of(passwd, 0), Some("root"));
        assert_eq!(account_of(passwd, 1001), None);
    }
    use sessionfs_proto::{Attr, SetAttrs, WirePath};
    use sessionfs_registry::Backend;

    #[test]
    fn a_session_made_again_never_reaches_a_generation_of_the_one_before() {
        let record =
            || SessionRecord::new(SessionId::new("s").unwrap(), Backend::Local, "s".into());
        let old = Session::new(record());
        let cached_at = old.generation.fetch_add(1000, Ordering::AcqRel) + 1000;
        let new = Session::new(record());
        for _ in 0..2000 {
            let now = new.generation.fetch_add(1, Ordering::AcqRel) + 1;
            assert_ne!(
                now, cached_at,
                "the new session reached the old one's generation"
            );
        }
    }

    #[test]
    fn owner_mapping_is_symmetric_and_leaves_others_alone() {
        let m = Some(OwnerMap {
            remote: (1000, 1000),
            local: (501, 20),
        });
        let frame = outbound(
            m,
            Caller { uid: 501, gid: 20 },
            Request::SetAttr {
                path: WirePath::root(),
                fh: None,
                attrs: SetAttrs {
                    uid: Some(501),
                    gid: Some(7),
                    ..Default::default()
                },
            },
        );
        assert_eq!(
            frame.caller,
            Caller {
                uid: 1000,
                gid: 1000
            }
        );
        let Request::SetAttr { attrs, .. } = frame.request else {
            panic!("not a setattr")
        };
        assert_eq!((attrs.uid, attrs.gid), (Some(1000), Some(7)));
        let reply = inbound(
            m,
            Reply::Attr(Attr {
                uid: 1000,
                gid: 1000,
                ..Attr::default()
            }),
        );
        assert_eq!(
            reply,
            Reply::Attr(Attr {
                uid: 501,
                gid: 20,
                ..Attr::default()
            })
        );
        let other = inbound(
            m,
            Reply::Attr(Attr {
                uid: 0,
                gid: 0,
                ..Attr::default()
            }),
        );
        assert_eq!(other, Reply::Attr(Attr::default()));
        // Without a mapping nothing changes.
        assert_eq!(
            outbound(None, Caller { uid: 501, gid: 20 }, Request::Ping)
                .caller
                .uid,
            501
        );
    }
}
