//! Directory listings: pages fetched from the daemon or ahead of the kernel (tree walks), kept until
//! read, and answered as `readdir` / `readdirplus`.

use super::*;

impl Core {
    /// Where the kernel supports it, answered `ENOSYS` once: the kernel then stops sending
    /// OPENDIR and RELEASEDIR (two requests per directory listed) and keeps every listing in its
    /// readdir cache. That cache is dropped by an invalidation of the directory (watched sessions) and
    /// revalidated against the directory's mtime at each listing once its attributes expire (the
    /// short TTL of unwatched sessions). Listings are fetched by inode (see [`Inner::dir_page`]).
    pub fn opendir(&self, ino: INodeNo, reply: impl OpenReply) {
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

    pub fn readdir(&self, caller: Caller, ino: INodeNo, offset: u64, mut reply: impl DirReply) {
        if ino.0 == ROOT_INO {
            let ids = self.inner.sessions.ids();
            let mut names: Vec<(u64, FileType, String)> = vec![
                (ROOT_INO, FileType::Directory, ".".into()),
                (ROOT_INO, FileType::Directory, "..".into()),
            ];
            {
                let mut inodes = self.inner.inodes.lock();
                for id in ids {
                    if let Some(s) = self.inner.sessions.get(id.as_str()) {
                        names.push((inodes.session_root(&s), FileType::Directory, id.to_string()));
                    }
                }
            }
            for (i, (ino, kind, name)) in names.iter().enumerate().skip(offset as usize) {
                if reply.add(INodeNo(*ino), i as u64 + 1, *kind, OsStr::new(name)) {
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
            if reply.add(ino, i as u64 + 1, FileType::Directory, OsStr::new(name)) {
                return reply.ok();
            }
        }
        let inner = self.inner.clone();
        let from = offset.saturating_sub(DOT_ENTRIES);
        self.spawn(async move {
            let (page, skip) = match inner.dir_page(&dir, caller, from, true).await {
                Ok(v) => v,
                Err(e) => return reply.error(errno_of(&e)),
            };
            inner.memory.lock().listed_dirs.insert(ino.0);
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

    pub fn readdirplus(
        &self,
        caller: Caller,
        ino: INodeNo,
        offset: u64,
        mut reply: impl DirPlusReply,
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
                OsStr::new(name),
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

    /// Lists the sessions without contacting any daemon: their entries carry placeholder directory
    /// attributes with a zero TTL, so the kernel asks the daemon (`getattr`) before showing any.
    pub(super) fn root_readdirplus(&self, offset: u64, mut reply: impl DirPlusReply) {
        let root = self.root_attr();
        let sessions: Vec<Arc<Session>> = self
            .inner
            .sessions
            .ids()
            .iter()
            .filter_map(|id| self.inner.sessions.get(id.as_str()))
            .collect();
        let mut inodes = self.inner.inodes.lock();
        let dots = [(".", root), ("..", root)];
        for (i, (name, attr)) in dots.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(ROOT_INO),
                i as u64 + 1,
                OsStr::new(name),
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
                OsStr::new(session.id.as_str()),
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
}

impl Inner {
    /// The entries of `dir` after daemon offset `offset`: from its cached page when that covers the
    /// offset and is younger than the attribute TTL, else from a new page fetched from the daemon.
    ///
    /// A listing read from its start is fetched anew (the kernel reads from offset 0 only when it
    /// holds no valid listing of its own), unless read-ahead fetched it at the session's current
    /// invalidation generation; a page read to its end is dropped.
    pub(super) async fn dir_page(
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
    pub(super) fn dir_page_ready(
        self: &Arc<Self>,
        dir: &DirRef,
        offset: u64,
    ) -> Option<(Arc<DirPage>, usize)> {
        if offset == 0 {
            let page = self.take_read_ahead(dir)?;
            return Some((self.took_page(dir, 0, page), 0));
        }
        let page = self.memory.lock().dir_pages.get(&dir.ino).cloned()?;
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
            self.memory.lock().dir_pages.remove(&dir.ino);
        }
        Some((page, skip))
    }

    /// `page` of `dir`, from `offset`, was just fetched or taken from read-ahead: a complete listing
    /// answers lookups, a listing from the start continues a walk's read-ahead, and the page is kept
    /// for the kernel's next reads of the listing.
    pub(super) fn took_page(
        self: &Arc<Self>,
        dir: &DirRef,
        offset: u64,
        page: Arc<DirPage>,
    ) -> Arc<DirPage> {
        if offset == 0 {
            if !page.more {
                self.remember_listing(dir.ino, &page);
            }
            self.read_ahead_after(dir, &page);
        }
        let pages = &mut self.memory.lock().dir_pages;
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
    pub(super) fn page_conflicts(&self, ino: u64, page: &DirPage, skip: usize) -> bool {
        let inodes = self.inodes.lock();
        page.entries[skip..]
            .iter()
            .any(|e| inodes.conflicts(ino, &e.name, &e.attr))
    }

    /// Answers a `READDIRPLUS` of directory `ino` with `page`'s entries after `skip`.
    pub(super) fn reply_entries(
        &self,
        ino: INodeNo,
        dir: &DirRef,
        page: &DirPage,
        skip: usize,
        mut reply: impl DirPlusReply,
    ) {
        let ttl = self.ttl_for(&dir.session, page.generation);
        self.memory.lock().listed_dirs.insert(ino.0);
        if dir.session.generation() != page.generation {
            // An invalidation overtook this page: the kernel may cache it in its readdir cache;
            // have it dropped once the reply is in.
            self.sessions.invalidate(Invalidation::Inode(ino.0));
        }
        let mut inodes = self.inodes.lock();
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
        self.content_seen(&known);
        self.keep_attrs(&dir.session, page.generation, page.attr_epoch, &known);
        reply.ok();
    }

    /// Fetches the page of `dir`'s entries that starts at daemon offset `offset`.
    pub(super) async fn fetch_dir_page(
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
        let attr_epoch = self.memory.lock().attrs.epoch();
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

    /// The first page of `dir` from read-ahead: one waiting, or the one on its way (waited for,
    /// within that request's timeout). `None`: the caller fetches it (see [`ReadAhead::claim`]).
    pub(super) async fn read_ahead_page(&self, dir: &DirRef) -> Option<Arc<DirPage>> {
        if let Some(page) = self.take_read_ahead(dir) {
            return Some(page);
        }
        let key = (dir.session.id.clone(), dir.path.clone());
        let claim = self.memory.lock().read_ahead.claim(&key);
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
    pub(super) fn take_read_ahead(&self, dir: &DirRef) -> Option<Arc<DirPage>> {
        let key = (dir.session.id.clone(), dir.path.clone());
        let page = self.memory.lock().read_ahead.take(&key)?;
        let current = dir.session.current_since(page.generation)
            && page.fetched.elapsed() <= self.watched_ttl;
        current.then_some(page).filter(|p| !self.lists_written(p))
    }

    /// Whether `page` lists a file written directly right now, whose size and times there may be
    /// old (see [`crate::direct`]); such a page is fetched again instead. A writable direct end
    /// drops every page kept ([`Inner::direct_change`]).
    pub(super) fn lists_written(&self, page: &DirPage) -> bool {
        let direct = self.direct.lock();
        direct.any_written()
            && page
                .entries
                .iter()
                .any(|e| direct.is_written(e.attr.dev, e.attr.ino))
    }

    /// `dir` was listed from its start (`page`): fetches its subdirectories' listings ahead if this
    /// is a step of a tree walk (see [`crate::read_ahead`]). Only for watched sessions, whose
    /// changes void what was fetched.
    pub(super) fn read_ahead_after(self: &Arc<Self>, dir: &DirRef, page: &DirPage) {
        if !dir.session.is_watched() {
            return;
        }
        let subdirs = page
            .entries
            .iter()
            .filter(|e| crate::inodes::is_dir(&e.attr))
            .filter_map(|e| dir.path.join(&e.name).ok())
            .collect();
        let (start, epoch) = self.memory.lock().read_ahead.listed(
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
                if !inner.memory.lock().read_ahead.sending(&key, waiter) {
                    return; // a kernel listing fetched it itself
                }
                let path = key.1.clone();
                let generation = session.generation();
                let attr_epoch = inner.memory.lock().attrs.epoch();
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
                let kept = inner
                    .memory
                    .lock()
                    .read_ahead
                    .fetched(key.clone(), epoch, counted);
                // A complete listing also answers lookups of its names (see `listed`).
                if let Some(page) = page.filter(|p| kept && !p.more) {
                    let ino = inner.inodes.lock().find(key.0.as_str(), &key.1);
                    if let Some(ino) = ino {
                        inner.remember_listing(ino, &page);
                    }
                }
            });
        }
    }
}
