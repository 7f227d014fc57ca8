//! Open files: opens through the daemon, from the kernel's cache or from files fetched ahead, heads,
//! direct data (FUSE passthrough), and the daemon handle a deferred open gets when first needed.

use super::*;

impl Inner {
    /// The bytes `offset..offset + size` of open file `fh` if the head read with its open holds
    /// them (all of them, or up to the end of a file that ends within the head). The head is dropped
    /// once a read reaches its end: the kernel has the pages then.
    pub(super) fn read_head(&self, fh: FileHandle, offset: u64, size: u32) -> Option<Vec<u8>> {
        let file = self.files.lock().open.get(&fh.0).cloned()?;
        let mut slot = file.head.lock();
        let head = slot.as_ref()?;
        let stamped = self.memory.lock().page_stamps.get(&file.ino) == Some(&head.stamp);
        if !stamped || self.memory.lock().attrs.epoch() != head.epoch {
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
    pub(super) async fn remote_handle<'f>(
        &self,
        file: &'f OpenFile,
        caller: Caller,
    ) -> Result<&'f RemoteHandle, ErrorReply> {
        file.remote
            .get_or_try_init(|| async {
                let (path, expect) = match self.inodes.lock().to_open(file.ino) {
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

    /// Registers an open file in `files`; `remote`: the daemon's handle, `None` to open it when
    /// first needed. Called holding the direct table's lock (see [`Inner::direct`]).
    pub(super) fn add_file(
        &self,
        files: &mut Files,
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
            files.knowing.insert(ino, fh);
        }
        let file = OpenFile {
            ino,
            session,
            remote: tokio::sync::OnceCell::new_with(remote),
            flags,
            head: Ordered::new(Level::File, head),
            known: Ordered::new(Level::File, known),
            direct,
        };
        files.open.insert(fh, Arc::new(file));
        fh
    }

    /// The node `dir/name` names is about to lose that name through the mount (an unlink, or a rename
    /// over it): returns its open handles that have no daemon handle (opened from the kernel's
    /// cache, or from a head that held the whole file). Once the name is gone the file can no longer
    /// be opened by its path, and a read that missed the kernel's pages would fail; given a daemon
    /// handle first, they read on as on a local file system. Until [`LosingName`] is dropped (after
    /// the inode table has the change), no handle of it is opened without one.
    pub(super) fn unopened_handles_of(
        self: &Arc<Self>,
        dir: u64,
        name: &[u8],
    ) -> (Vec<Arc<OpenFile>>, Option<LosingName>) {
        let Some(ino) = self.inodes.lock().child(dir, name) else {
            return (Vec::new(), None);
        };
        let mut files = self.files.lock();
        *files.losing.entry(ino).or_default() += 1;
        let unopened = files
            .open
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
    pub(super) fn open_unopened(
        &self,
        ino: u64,
        session: &Arc<Session>,
        flags: i32,
    ) -> Option<u64> {
        let direct = self.direct.lock();
        let mut files = self.files.lock();
        if direct.is_live(ino)
            || files.losing.contains_key(&ino)
            || self.inodes.lock().resolve(ino).is_err()
            || !self.cache_is_current(ino, session)
        {
            return None;
        }
        let data = Data::Bridge {
            head: None,
            known: None,
        };
        let fh = self.add_file(&mut files, ino, session.clone(), flags, None, data);
        drop((files, direct));
        Some(fh)
    }

    /// The backing file for `open` (the file's `attr`) with direct data: the inode's, if it has
    /// handles with direct data (every open of it must have them then); else a new one from
    /// `prepared`, the daemon's descriptor [`Inner::prepare_direct`] opened (for an open to write, or
    /// of a file of at least [`DIRECT_MIN`] bytes, of a session whose daemon runs on this host), if
    /// no other handle of the inode is open here. A smaller file opened read-only is better served by
    /// the head its open brings. The inode's first
    /// direct handle that may write is a change of it (see [`Inner::direct_change`]). `direct` is the
    /// locked [`Inner::direct`].
    pub(super) fn direct_backing(
        &self,
        direct: &mut Direct,
        open: &RemoteOpen,
        attr: &Attr,
        prepared: Option<std::fs::File>,
        reply: &impl OpenReply,
    ) -> Option<Backing> {
        let ino = open.ino;
        let writing = !open.read_only;
        if let Some(backing) = self.join_direct(direct, ino, writing) {
            return Some(backing);
        }
        if self.files.lock().open.values().any(|f| f.ino == ino) {
            return None;
        }
        let file = prepared?;
        match reply.open_backing(&file) {
            Ok(backing) => {
                // The kernel's pages of the file are not read while it has direct handles, nor
                // written: none is kept by a later open.
                self.memory.lock().page_stamps.remove(&ino);
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

    /// The daemon's descriptor of the file an open answered, opened for direct data if the open
    /// may get it ([`Inner::direct_backing`] decides, under the direct table's lock). Opened here,
    /// on the blocking pool and with no lock held: the open can wait on the file's file system (a
    /// hard NFS mount whose server went away), and the runtime's thread and the direct table must
    /// not wait with it. Bounded by the operation timeout; past it the file's data goes through
    /// the bridge.
    pub(super) async fn prepare_direct(
        &self,
        session: &Session,
        open: &RemoteOpen,
        r: &Reply,
    ) -> Option<std::fs::File> {
        let Reply::Opened {
            attr, fd: Some(fd), ..
        } = r
        else {
            return None;
        };
        if !self.passthrough.load(Ordering::Relaxed) || (open.read_only && attr.size < DIRECT_MIN) {
            return None;
        }
        let (pid, fd, attr, ino) = (session.pid()?, *fd, *attr, open.ino);
        // Held by the blocking open until it ends, even after the timeout gave up on it.
        let Ok(slot) = self.preparing.clone().try_acquire_owned() else {
            debug!(
                ino,
                "no direct data: too many opens of daemons' descriptors under way"
            );
            return None;
        };
        let opening = tokio::task::spawn_blocking(move || {
            let opened = crate::direct::open_daemon_fd(pid, fd, &attr);
            drop(slot);
            opened
        });
        match tokio::time::timeout(self.sessions.op_timeout(), opening).await {
            Ok(Ok(Ok(file))) => {
                debug!(session = %session.id, ino, "direct data: the daemon's descriptor is open");
                Some(file)
            }
            Ok(Ok(Err(e))) => {
                debug!(ino, "no direct data: {e}");
                None
            }
            Ok(Err(e)) => {
                warn!(ino, "opening the daemon's descriptor failed: {e}");
                None
            }
            Err(_) => {
                warn!(
                    ino,
                    "opening the daemon's descriptor did not finish within the operation timeout (a slow file system?): the file's data goes through the bridge"
                );
                None
            }
        }
    }

    /// The backing file of `ino` for one more handle (`writing`: it may write), if the inode has
    /// direct handles; the inode's first that may write is a change of it ([`Inner::direct_change`]).
    pub(super) fn join_direct(
        &self,
        direct: &mut Direct,
        ino: u64,
        writing: bool,
    ) -> Option<Backing> {
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
    pub(super) fn open_went_stale(&self, ino: u64) {
        debug!(ino, "the file opened is no longer there: stale");
        self.memory.lock().attrs.changed();
        self.memory.lock().page_stamps.remove(&ino);
    }

    /// Opens a file through the daemon (a read-only open asks for its head with it).
    pub(super) async fn open_remote(
        self: Arc<Self>,
        session: Arc<Session>,
        path: WirePath,
        open: RemoteOpen,
        reply: impl OpenReply,
    ) {
        let request = Request::Open {
            path,
            flags: open.flags,
            // The kernel drops its pages at this open and reads the file anew.
            head: if open.read_only { OPEN_HEAD } else { 0 },
            expect: open.expect,
        };
        let (caller, ino) = (open.caller, open.ino);
        let reply = StaleOnFail {
            reply,
            ino,
            inner: self.clone(),
        };
        let since = session.generation();
        let (r, conn) = match self.sessions.call(&session, caller, request).await {
            Ok(answer) => answer,
            Err(e) => return reply.error(errno_of(&e)),
        };
        let prepared = self.prepare_direct(&session, &open, &r).await;
        let ttl = self.ttl_for(&session, since);
        let answered = Answered {
            session,
            conn,
            ttl,
            since,
        };
        let inner = &self;
        let StaleOnFail { reply, .. } = reply;
        let Reply::Opened { fh, attr, head, .. } = r else {
            return reply.error(unexpected(&r));
        };
        let (since, epoch) = (answered.since, open.epoch);
        let whole = fh.is_none();
        let remote = fh.map(|fh| RemoteHandle {
            conn: answered.conn,
            fh,
        });
        // Held until the handle is added (see `Inner::direct`).
        let mut direct = inner.direct.lock();
        let session = &answered.session;
        if let Some(backing) = inner.direct_backing(&mut direct, &open, &attr, prepared, &reply) {
            let fh = inner.add_file(
                &mut inner.files.lock(),
                ino,
                session.clone(),
                open.flags,
                remote,
                Data::Direct,
            );
            drop(direct);
            // The page stamp went when the inode's direct data started, and no open keeps
            // the kernel's pages while this one is live.
            return reply.opened_passthrough(FileHandle(fh), open.fopen_flags(false), &backing);
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
        let fh = inner.add_file(
            &mut inner.files.lock(),
            ino,
            answered.session,
            open.flags,
            remote,
            data,
        );
        drop(direct);
        reply.opened(FileHandle(fh), open.fopen_flags(keep));
    }

    /// Pushes `session`'s pending writes as [`Then`] says, from a task of its own.
    pub(super) fn push_after(self: &Arc<Self>, session: &Arc<Session>, then: Then) {
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
    pub(super) fn open_fetched(
        &self,
        session: &Arc<Session>,
        open: &RemoteOpen,
        fetched: Fetched,
    ) -> Option<(u64, bool)> {
        // Taken first: a writable direct start or end (which moves the epoch) cannot come between
        // the checks and the handle.
        let direct = self.direct.lock();
        let changing = self.mutating.load(Ordering::Acquire) > 0;
        if changing
            || direct.is_live(open.ino)
            || !session.current_since(fetched.since)
            || self.memory.lock().attrs.epoch() != fetched.epoch
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
        let fh = self.add_file(
            &mut self.files.lock(),
            ino,
            session.clone(),
            open.flags,
            None,
            data,
        );
        drop(direct);
        Some((fh, keep))
    }

    /// A read-only open in `dir` goes to the daemon (`ahead` false), or read-ahead fetched the
    /// listing of `dir` (`ahead` true): fetches the directory's small files if a walk reads them
    /// (see [`crate::heads_ahead`]); returns what waits for the fetch if one started.
    pub(super) fn fetch_heads(
        self: &Arc<Self>,
        session: &Arc<Session>,
        dir: &crate::read_ahead::DirKey,
        ahead: bool,
    ) -> Option<FetchWaiter> {
        let (done, waiter) = tokio::sync::watch::channel(FetchEnd::Pending);
        let (attr_epoch, now) = (self.memory.lock().attrs.epoch(), Instant::now());
        let started = if ahead {
            self.memory
                .lock()
                .heads_ahead
                .ahead(dir, waiter.clone(), now)
        } else {
            self.memory
                .lock()
                .heads_ahead
                .opened(dir, attr_epoch, waiter.clone(), now)
        };
        let epoch = started?;
        let (inner, session, dir) = (self.clone(), session.clone(), dir.clone());
        self.rt.spawn(async move {
            let since = session.generation();
            let attr_epoch = inner.memory.lock().attrs.epoch();
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
            inner
                .memory
                .lock()
                .heads_ahead
                .fetched(&dir, epoch, files, now);
            let _ = done.send(end);
        });
        Some(waiter)
    }
}
