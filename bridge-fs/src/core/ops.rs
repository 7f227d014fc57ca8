//! The file system's operations, one method per FUSE call: what [`crate::fuse`] forwards.

use super::*;

impl Core {
    pub fn lookup(&self, caller: Caller, parent: INodeNo, name: &OsStr, reply: impl EntryReply) {
        if parent.0 != ROOT_INO {
            return self.lookup_in_session(caller, parent, name, reply);
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
        self.remote(caller, target, reply, |inner, answered, r, reply| match r {
            Reply::Attr(attr) => {
                let ino = {
                    let mut inodes = inner.inodes.lock();
                    let ino = inodes.session_root(&answered.session);
                    inodes.count_lookup(ino);
                    ino
                };
                reply.entry(&answered.ttl, &file_attr(ino, &attr), Generation(0));
            }
            other => reply.error(unexpected(&other)),
        });
    }

    pub fn forget(&self, ino: INodeNo, nlookup: u64) {
        let forgotten = {
            let mut inodes = self.inner.inodes.lock();
            inodes.forget(ino.0, nlookup);
            inodes.resolve(ino.0).is_err()
        };
        if forgotten {
            self.inner.memory.lock().forget(ino.0);
        }
    }

    pub fn getattr(
        &self,
        caller: Caller,
        ino: INodeNo,
        fh: Option<FileHandle>,
        reply: impl AttrReply,
    ) {
        if ino.0 == ROOT_INO {
            return reply.attr(&self.inner.ttl, &self.root_attr());
        }
        // A file the kernel writes directly: only the daemon knows its size and times.
        if !self.inner.direct.lock().is_live(ino.0) {
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
        self.attr_request(caller, ino, fh, reply, None, |path, fh| Request::GetAttr {
            path,
            fh,
        });
    }

    pub fn setattr(
        &self,
        caller: Caller,
        ino: INodeNo,
        attrs: SetAttrs,
        fh: Option<FileHandle>,
        reply: impl AttrReply,
    ) {
        if ino.0 == ROOT_INO {
            return reply.error(Errno::EPERM);
        }
        let size = attrs.size;
        let mutation = self.inner.mutation_of(ino.0);
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
                    conn: remote.conn.id(),
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
        self.attr_request(caller, ino, fh, reply, Some(mutation), |path, fh| {
            Request::SetAttr { path, fh, attrs }
        });
    }

    pub fn readlink(&self, caller: Caller, ino: INodeNo, reply: impl DataReply) {
        self.on_node(
            caller,
            ino,
            reply,
            |path| Request::Readlink { path },
            |_, r, reply| match r {
                Reply::Data(d) => reply.data(&d),
                other => reply.error(unexpected(&other)),
            },
        );
    }

    pub fn mknod(
        &self,
        caller: Caller,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        reply: impl EntryReply,
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
            caller,
            parent,
            name,
            |path| Request::Mknod { path, kind, mode },
            reply,
        );
    }

    pub fn mkdir(
        &self,
        caller: Caller,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        reply: impl EntryReply,
    ) {
        self.entry_request(
            caller,
            parent,
            name,
            |path| Request::Mkdir { path, mode },
            reply,
        );
    }

    pub fn unlink(&self, caller: Caller, parent: INodeNo, name: &OsStr, reply: impl EmptyReply) {
        let mutation = self.inner.mutation();
        let target = self
            .child(parent, name)
            .map(|(s, path)| (s, Request::Unlink { path }));
        let victims = self.inner.unopened_handles_of(parent.0, name.as_bytes());
        let name = name.as_bytes().to_vec();
        self.empty_request(caller, target, victims, reply, mutation, move |inodes| {
            inodes.unlink(parent.0, &name)
        });
    }

    pub fn rmdir(&self, caller: Caller, parent: INodeNo, name: &OsStr, reply: impl EmptyReply) {
        let mutation = self.inner.mutation();
        let target = self
            .child(parent, name)
            .map(|(s, path)| (s, Request::Rmdir { path }));
        let name = name.as_bytes().to_vec();
        self.empty_request(
            caller,
            target,
            (Vec::new(), None),
            reply,
            mutation,
            move |inodes| inodes.unlink(parent.0, &name),
        );
    }

    pub fn symlink(
        &self,
        caller: Caller,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: impl EntryReply,
    ) {
        let target = target.as_os_str().as_bytes().to_vec();
        self.entry_request(
            caller,
            parent,
            link_name,
            |path| Request::Symlink { path, target },
            reply,
        );
    }

    #[allow(clippy::too_many_arguments)] // the kernel's call
    pub fn rename(
        &self,
        caller: Caller,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: impl EmptyReply,
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
        self.empty_request(caller, target, victims, reply, mutation, move |inodes| {
            inodes.rename(parent.0, &name, newparent.0, &binding.name, exchange);
            binding.bound();
        });
    }

    pub fn link(
        &self,
        caller: Caller,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: impl EntryReply,
    ) {
        let from = match (self.node(ino), self.node(newparent)) {
            (Ok((s, from)), Ok((t, _))) if Arc::ptr_eq(&s, &t) => from,
            (Ok(_), Ok(_)) => return reply.error(Errno::EXDEV),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        self.entry_request(
            caller,
            newparent,
            newname,
            |to| Request::Link { from, to },
            reply,
        );
    }

    pub fn open(&self, caller: Caller, ino: INodeNo, flags: OpenFlags, reply: impl OpenReply) {
        let read_only = !may_write(flags.0);
        // A node with no name left is opened by its identity alone (a rename through the mount
        // replaced it a moment ago, after the kernel resolved the name: see `Request::Open`).
        let (session, path, expect) = match self.inner.inodes.lock().to_open(ino.0) {
            Ok(v) => v,
            Err(e) => return reply.error(stale_errno(e)),
        };
        let open = RemoteOpen {
            caller,
            ino: ino.0,
            flags: flags.0,
            read_only,
            // O_TRUNC changes the file.
            mutation: (flags.0 & libc::O_TRUNC != 0).then(|| self.inner.mutation()),
            epoch: self.inner.memory.lock().attrs.epoch(),
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
        let found = self
            .inner
            .memory
            .lock()
            .heads_ahead
            .find(&file_key, &dir_key, Instant::now());
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
                let found =
                    inner
                        .memory
                        .lock()
                        .heads_ahead
                        .find(&file_key, &dir_key, Instant::now());
                if let Found::File(fetched) = found {
                    if let Some((fh, keep)) = inner.open_fetched(&session, &open, fetched) {
                        return reply.opened(FileHandle(fh), open.fopen_flags(keep));
                    }
                }
            }
            inner.open_remote(session, path, open, reply).await
        });
    }

    pub fn create(
        &self,
        caller: Caller,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        flags: i32,
        reply: impl CreateReply,
    ) {
        let (mutation, path, target, binding) =
            self.making(parent, name, |path| Request::Create { path, mode, flags });
        self.remote(
            caller,
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
                    let learned = inner.inodes.lock().learn(parent.0, &binding.name, &attr);
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
                    let mut direct = inner.direct.lock();
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
                    let fh = inner.add_file(
                        &mut inner.files.lock(),
                        ino,
                        answered.session,
                        flags,
                        Some(remote),
                        data,
                    );
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
                (other, _mutation) => reply.error(unexpected(&other)),
            },
        );
    }

    pub fn read(
        &self,
        caller: Caller,
        fh: FileHandle,
        offset: u64,
        size: u32,
        reply: impl DataReply,
    ) {
        if let Some(data) = self.inner.read_head(fh, offset, size) {
            return reply.data(&data);
        }
        // The kernel never asks for more than max_pages (at most 1 MiB = MAX_IO_CHUNK) at once.
        self.on_file(
            caller,
            fh,
            reply,
            move |remote| Request::Read {
                fh: remote,
                offset,
                size,
            },
            |r, _, reply| match r {
                Reply::Data(d) => reply.data(&d),
                other => reply.error(unexpected(&other)),
            },
        );
    }

    pub fn write(
        &self,
        caller: Caller,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        reply: impl WriteReply,
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
                conn: remote.conn.id(),
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
            caller,
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
                    other => reply.error(unexpected(&other)),
                }
            },
        );
    }

    /// Sent at every `close`: pushes the handle's writes that were acknowledged before they were
    /// written and reports the first that failed (see [`crate::write_behind`]). Without such writes,
    /// answered here without a round trip (locks are the host kernel's). A handle whose connection is
    /// known to be gone fails with `EIO`.
    pub fn flush(&self, fh: FileHandle, reply: impl EmptyReply) {
        let file = match self.open_file(fh) {
            Ok(file) => file,
            Err(e) => return reply.error(e),
        };
        // Closed: what it knew of its file is the daemon's to say from now on.
        *file.known.lock() = None;
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

    pub fn release(&self, fh: FileHandle, reply: impl EmptyReply) {
        // While an inode has direct handles, all its handles are (see `Inner::direct`). The lock is
        // taken before the file table's, as by the opens, and held until what follows is done, so
        // that no open finds the handle gone but its inode's direct data not (it would start its
        // own, and the release would count it out).
        let mut direct = self.inner.direct.lock();
        let Some(file) = self.inner.files.lock().open.remove(&fh.0) else {
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
            self.inner.memory.lock().page_stamps.remove(&file.ino);
            if written {
                // Written directly, where the bridge never saw it: nothing remembered of the file
                // from before or meanwhile is answered from now on (small files fetched ahead and
                // fetches under way, listings, attributes, a change's own reply kept late).
                self.inner.direct_change(file.ino);
            } else {
                self.inner.memory.lock().attrs.remove(file.ino);
            }
        }
        drop(direct);
        {
            let knowing = &mut self.inner.files.lock().knowing;
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
            conn: remote.conn.id(),
            change: BatchedChange::Release { fh: remote.fh },
            guard: Box::new(()),
        };
        self.defer(&file.session, deferred, |_| {});
    }

    pub fn fsync(&self, caller: Caller, fh: FileHandle, datasync: bool, reply: impl EmptyReply) {
        let session = self.open_file(fh).map(|f| f.session.clone());
        self.on_file(
            caller,
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

    pub fn fsyncdir(&self, caller: Caller, ino: INodeNo, datasync: bool, reply: impl EmptyReply) {
        if ino.0 == ROOT_INO {
            return reply.ok();
        }
        // Durable renames (write, rename, fsync the directory) need the daemon's directory synced.
        let target = self
            .node(ino)
            .map(|(s, path)| (s, Request::FsyncDir { path, datasync }));
        self.remote(caller, target, reply, |_, _, _, reply| reply.ok());
    }

    pub fn statfs(&self, caller: Caller, ino: INodeNo, reply: impl StatfsReply) {
        if ino.0 == ROOT_INO {
            return reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096);
        }
        self.on_node(
            caller,
            ino,
            reply,
            |_| Request::StatFs,
            |_, r, reply| match r {
                Reply::StatFs(s) => reply.statfs(
                    s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
                ),
                other => reply.error(unexpected(&other)),
            },
        );
    }

    pub fn setxattr(
        &self,
        caller: Caller,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        reply: impl EmptyReply,
    ) {
        self.inner.memory.lock().no_capability.remove(&ino.0);
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
        self.empty_request(caller, target, (Vec::new(), None), reply, mutation, |_| {});
    }

    pub fn getxattr(
        &self,
        caller: Caller,
        ino: INodeNo,
        name: &OsStr,
        size: u32,
        reply: impl XattrReply,
    ) {
        if ino.0 == ROOT_INO {
            return reply.error(Errno::ENODATA);
        }
        if name.as_bytes() == CAPABILITY_XATTR {
            return self.capability_xattr(caller, ino, size, reply);
        }
        let name = name.as_bytes().to_vec();
        self.on_node(
            caller,
            ino,
            reply,
            |path| Request::GetXattr { path, name, size },
            xattr_answer,
        );
    }

    pub fn listxattr(&self, caller: Caller, ino: INodeNo, size: u32, reply: impl XattrReply) {
        if ino.0 == ROOT_INO {
            return if size == 0 {
                reply.size(0)
            } else {
                reply.data(&[])
            };
        }
        self.on_node(
            caller,
            ino,
            reply,
            |path| Request::ListXattr { path, size },
            xattr_answer,
        );
    }

    pub fn removexattr(&self, caller: Caller, ino: INodeNo, name: &OsStr, reply: impl EmptyReply) {
        self.inner.memory.lock().no_capability.remove(&ino.0);
        let mutation = self.inner.mutation();
        let name = name.as_bytes().to_vec();
        let target = self
            .node(ino)
            .map(|(s, path)| (s, Request::RemoveXattr { path, name }));
        self.empty_request(caller, target, (Vec::new(), None), reply, mutation, |_| {});
    }

    /// Reads [`CAPABILITY_XATTR`] of `ino`: answered `ENODATA` from memory when the file is known to
    /// have none and its session is watched; an `ENODATA` from the daemon is remembered only if
    /// neither an invalidation of the session nor a change through the mount (a `setxattr`, which
    /// holds a [`Mutation`]) crossed the call (recorded first, then checked, as negative entries are:
    /// an invalidation after the check finds the record and drops it).
    pub(super) fn capability_xattr(
        &self,
        caller: Caller,
        ino: INodeNo,
        size: u32,
        reply: impl XattrReply,
    ) {
        let (session, path) = match self.node(ino) {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        if session.is_watched() && self.inner.memory.lock().no_capability.contains(&ino.0) {
            return reply.error(Errno::ENODATA);
        }
        let (inner, caller) = (self.inner.clone(), caller);
        let epoch = self.inner.memory.lock().attrs.epoch();
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
                    if inner.memory.lock().attrs.epoch() != epoch {
                        inner.memory.lock().no_capability.remove(&ino.0);
                    }
                    reply.error(Errno::ENODATA)
                }
                Err(e) => reply.error(errno_of(&e)),
            }
        });
    }
}
