//! How an operation reaches a session's daemon: the request for an inode or a name, the open
//! handle it goes through, and the continuation that answers the kernel from the reply.

use super::*;

impl Core {
    /// The handle to use for an attribute call on `ino`: the one the kernel gave, or else, for a node
    /// that no longer has a name (unlinked while open: `fstat`, `fchmod`), any open handle of it.
    pub(super) fn handle_for(&self, ino: INodeNo, fh: Option<FileHandle>) -> Option<FileHandle> {
        let has_remote = |fh: &FileHandle| {
            self.inner
                .files
                .lock()
                .open
                .get(&fh.0)
                .is_some_and(|f| f.remote.initialized())
        };
        if let Some(fh) = fh.filter(has_remote) {
            return Some(fh);
        }
        // Lock order: never hold the file table while taking the inode table.
        if !matches!(
            self.inner.inodes.lock().resolve(ino.0),
            Err(Stale::Detached)
        ) {
            return None;
        }
        let files = &self.inner.files.lock().open;
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
    pub(super) fn defer(
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
            Err(Refused::Failed(e)) => return answer(Err(errno_of(&e))),
            Err(Refused::NoRoom(deferred)) => *deferred,
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
                    Err(Refused::Failed(e)) => return answer(Err(errno_of(&e))),
                    Err(Refused::NoRoom(back)) => deferred = *back,
                }
            }
        });
    }

    /// An open handle of `ino` that knows the file's attributes (see [`crate::known`]), with its
    /// daemon handle on a live connection.
    pub(super) fn knowing_handle(
        &self,
        ino: INodeNo,
    ) -> Option<(u64, Arc<OpenFile>, RemoteHandle)> {
        let fh = *self.inner.files.lock().knowing.get(&ino.0)?;
        let file = self.inner.files.lock().open.get(&fh).cloned()?;
        let remote = file
            .remote
            .get()
            .filter(|r| r.conn.close_reason().is_none())?
            .clone();
        let knows = file.ino == ino.0 && file.known.lock().is_some();
        knows.then_some((fh, file, remote))
    }

    /// The attributes of `ino` as the changes through an open handle that created it will leave
    /// them, while some of those changes have not landed yet and nothing else changed the file
    /// (see [`crate::known`]). Once they have landed, the daemon's answer is exact (the change time
    /// is the daemon's).
    pub(super) fn known_attr(&self, ino: INodeNo) -> Option<Attr> {
        let (fh, file, _) = self.knowing_handle(ino)?;
        let writes = &file.session.write_behind;
        if !writes.holds(fh) || writes.has_failed(fh) {
            return None;
        }
        let started = self.inner.started.load(Ordering::Acquire);
        let known = file.known.lock();
        known
            .as_ref()
            .filter(|k| k.holds(started))
            .map(|k| *k.attr())
    }

    /// Sends `request` to the session a target resolved to and hands a successful reply to `done`;
    /// every error goes straight back to the kernel.
    pub(super) fn remote<R: Fail>(
        &self,
        caller: Caller,
        target: Target,
        reply: R,
        done: impl FnOnce(&Inner, Answered, Reply, R) + Send + 'static,
    ) {
        let (session, request) = match target {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        let inner = self.inner.clone();
        self.spawn(inner.call_then(caller, session, request, reply, done));
    }

    /// Sends the request `make` builds for the path of `ino`.
    pub(super) fn on_node<R: Fail>(
        &self,
        caller: Caller,
        ino: INodeNo,
        reply: R,
        make: impl FnOnce(WirePath) -> Request,
        done: impl FnOnce(&Inner, Reply, R) + Send + 'static,
    ) {
        let target = self.node(ino).map(|(s, path)| (s, make(path)));
        self.remote(caller, target, reply, |inner, _, r, reply| {
            done(inner, r, reply)
        });
    }

    /// Starts a call that makes `parent/name` with the request `make` builds: the change through
    /// the mount it is (started first), the new node's path, the request with its session, and the
    /// name's binding (see [`Binding`]).
    pub(super) fn making(
        &self,
        parent: INodeNo,
        name: &OsStr,
        make: impl FnOnce(WirePath) -> Request,
    ) -> (Mutation, WirePath, Target, Binding) {
        let mutation = self.inner.mutation();
        let target = self.child(parent, name);
        let path = target.as_ref().map(|(_, p)| p.clone()).unwrap_or_default();
        let target = target.map(|(s, path)| (s, make(path)));
        let binding = self.inner.binding(parent.0, name.as_bytes());
        (mutation, path, target, binding)
    }

    /// Sends the request for `parent/name` that `make` builds and answers with the entry it returns
    /// (lookup and every call that creates a node).
    pub(super) fn entry_request(
        &self,
        caller: Caller,
        parent: INodeNo,
        name: &OsStr,
        make: impl FnOnce(WirePath) -> Request,
        reply: impl EntryReply,
    ) {
        let (mutation, path, target, binding) = self.making(parent, name, make);
        self.remote(
            caller,
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
                (other, _mutation) => reply.error(unexpected(&other)),
            },
        );
    }

    /// Looks `parent/name` up. A missing name of a watched session is answered with a negative entry
    /// the kernel keeps for the long TTL (see [`crate::negative`] for how it is invalidated).
    pub(super) fn lookup_in_session(
        &self,
        caller: Caller,
        parent: INodeNo,
        name: &OsStr,
        reply: impl EntryReply,
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
            && self
                .inner
                .memory
                .lock()
                .made_dirs
                .is_missing(parent.0, &name)
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
            let waiter = self.inner.memory.lock().lookups_ahead.waiter(&dir);
            waiter.or_else(|| self.inner.lookups_touched(&session, parent.0, &dir))
        });
        let (inner, caller) = (self.inner.clone(), caller);
        self.spawn(async move {
            if let Some(waiter) = waiter {
                if let Err(e) = fetch_ended(waiter).await {
                    return reply.error(e);
                }
                if let Some(listed) = inner.listed(parent.0, &session, &name) {
                    return inner.reply_listed(&session, parent.0, &name, listed, reply);
                }
            }
            let epoch = inner.memory.lock().attrs.epoch();
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
                Ok((other, _)) => reply.error(unexpected(&other)),
                Err(e) if e.errno == errno::ENOENT => {
                    inner.reply_missing(&session, since, parent.0, &name, reply)
                }
                Err(e) => reply.error(errno_of(&e)),
            }
        });
    }

    /// Sends a request that changes something and whose success carries no data, then runs `then` on
    /// the inode table; `mutation` is held until the reply has been sent.
    /// `victims`: handles of a file the request unlinks or replaces that have no daemon handle yet;
    /// each gets one first (see [`Inner::unopened_handles_of`]).
    pub(super) fn empty_request<R: EmptyReply>(
        &self,
        caller: Caller,
        target: Target,
        (victims, losing): (Vec<Arc<OpenFile>>, Option<LosingName>),
        reply: R,
        mutation: Mutation,
        then: impl FnOnce(&mut InodeTable) + Send + 'static,
    ) {
        let done = move |inner: &Inner, _: Answered, _: Reply, reply: R| {
            then(&mut inner.inodes.lock());
            drop(losing);
            reply.ok();
            drop(mutation);
        };
        if victims.is_empty() {
            return self.remote(caller, target, reply, done);
        }
        let (session, request) = match target {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        let (inner, caller) = (self.inner.clone(), caller);
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
    pub(super) fn on_file<R: Fail>(
        &self,
        caller: Caller,
        fh: FileHandle,
        reply: R,
        make: impl FnOnce(u64) -> Request + Send + 'static,
        done: impl FnOnce(Reply, Duration, R) + Send + 'static,
    ) {
        let file = match self.open_file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let inner = self.inner.clone();
        self.spawn(async move {
            let since = file.session.generation();
            let remote = match inner.remote_handle(&file, caller).await {
                Ok(remote) => remote,
                Err(e) => return reply.error(errno_of(&e)),
            };
            match inner
                .sessions
                .call_on(&file.session, &remote.conn, caller, make(remote.fh))
                .await
            {
                Ok(r) => done(r, inner.ttl_for(&file.session, since), reply),
                Err(e) => reply.error(errno_of(&e)),
            }
        });
    }

    /// Sends an attribute request (`make` gets the path and the daemon's handle, if any) and answers
    /// with the attributes; uses an open handle when there is one (see [`Self::handle_for`]).
    /// `mutation`: the request changes the node (setattr), held until the reply is handled;
    /// without one the attributes are remembered (see [`Inner::keep_attrs`]).
    pub(super) fn attr_request(
        &self,
        caller: Caller,
        ino: INodeNo,
        fh: Option<FileHandle>,
        reply: impl AttrReply,
        mutation: Option<Mutation>,
        make: impl FnOnce(WirePath, Option<u64>) -> Request + Send + 'static,
    ) {
        let epoch = self.inner.memory.lock().attrs.epoch();
        match self.handle_for(ino, fh) {
            Some(fh) => {
                // A node without a name is reached through the handle; the path is then unused.
                let node = self.node(ino).ok();
                let since = node.as_ref().map(|(s, _)| (s.clone(), s.generation()));
                let path = node.map(|(_, p)| p).unwrap_or_default();
                let inner = self.inner.clone();
                self.on_file(
                    caller,
                    fh,
                    reply,
                    |remote| make(path, Some(remote)),
                    // `mutation` is moved in and ended once the reply is sent.
                    move |r, ttl, reply| match (r, mutation) {
                        (Reply::Attr(a), mutation) => {
                            inner.content_seen(&[(ino.0, a)]);
                            if let (None, Some((session, since))) = (&mutation, &since) {
                                inner.keep_attrs(session, *since, epoch, &[(ino.0, a)]);
                            }
                            reply.attr(&ttl, &file_attr(ino.0, &a));
                            if let (Some(mutation), Some((session, since))) = (mutation, &since) {
                                inner.keep_own_reply(mutation, session, *since, ino.0, a);
                            }
                        }
                        (other, _mutation) => reply.error(unexpected(&other)),
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
                let (inner, caller, request) = (self.inner.clone(), caller, make(path, None));
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
                            inner.content_seen(&[(ino.0, a)]);
                            let ttl = inner.ttl_for(&session, since);
                            reply.attr(&ttl, &file_attr(ino.0, &a));
                            if let Some(mutation) = mutation {
                                inner.keep_own_reply(mutation, &session, since, ino.0, a);
                            }
                        }
                        Ok((other, _)) => reply.error(unexpected(&other)),
                        Err(e) if via_handle && e.errno == errno::ENOENT => {
                            reply.error(Errno::ESTALE)
                        }
                        Err(e) => reply.error(errno_of(&e)),
                    }
                });
            }
        }
    }
}

impl Inner {
    /// Sends `request` to `session` and hands its reply to `done`; a failure goes to the kernel.
    pub(super) async fn call_then<R: Fail>(
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
            Err(e) => reply.error(errno_of(&e)),
        }
    }
}
