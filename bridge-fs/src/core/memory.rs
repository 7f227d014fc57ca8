//! What the bridge answers from memory on the daemon's behalf (attributes, listings, negative
//! entries, page stamps), how a change through the mount voids it, and when a reply may be kept.

use super::*;

impl Inner {
    /// Remembers that `ino` (at `path`) has no [`CAPABILITY_XATTR`], learned by a request that
    /// started at invalidation generation `since`: recorded first, then dropped again if the session
    /// is not watched or a change that may concern the file crossed the request (one after the check
    /// finds the record).
    pub(super) fn no_capability_known(
        &self,
        ino: u64,
        session: &Session,
        since: u64,
        path: &WirePath,
    ) {
        {
            let known = &mut self.memory.lock().no_capability;
            if known.len() >= NO_CAPABILITY_MAX {
                known.clear();
            }
            known.insert(ino);
        }
        if !session.is_watched() || session.changed_since(since, path) {
            self.memory.lock().no_capability.remove(&ino);
        }
    }

    /// How long the kernel may cache entries and attributes of `session` fetched by a request that
    /// started at invalidation generation `since`: long while the session's changes are pushed and no
    /// invalidation crossed the request (else a stale reply could outlive the invalidation), the short
    /// TTL otherwise.
    pub(super) fn ttl_for(&self, session: &Session, since: u64) -> Duration {
        if session.current_since(since) {
            self.watched_ttl
        } else {
            self.ttl
        }
    }

    /// `attrs` (inode, attributes), read from the daemon, reach the kernel: an inode whose content
    /// they show in another version than its page stamp (the version whose pages the kernel keeps)
    /// loses the stamp, and the kernel is told to drop the pages, which it keeps across new
    /// attributes. A listing or lookup can be the first to show a change whose event found no inode
    /// (the file was renamed behind the mount, then written).
    pub(super) fn content_seen(&self, attrs: &[(u64, Attr)]) {
        let stale: Vec<u64> = {
            let stamps = &mut self.memory.lock().page_stamps;
            if stamps.is_empty() {
                return;
            }
            attrs
                .iter()
                .filter(|(ino, attr)| {
                    let stale = stamps
                        .get(ino)
                        .is_some_and(|stamp| *stamp != ContentStamp::of(attr));
                    stale && stamps.remove(ino).is_some()
                })
                .map(|(ino, _)| *ino)
                .collect()
        };
        for ino in stale {
            self.sessions.invalidate(Invalidation::Inode(ino));
        }
    }

    /// Close-to-open: whether an open may keep the kernel's cached pages of `ino`. Only when the
    /// session's changes are watched (so pages of a changed file are dropped when it changes) and the
    /// content is the version that was cached; otherwise the pages are dropped and this version
    /// becomes the cached one.
    ///
    /// The stamp is recorded first and kept only if no invalidation of the session crossed the open
    /// (started at generation `since`): an invalidation after the check finds it.
    pub(super) fn keep_cache(&self, ino: u64, session: &Session, attr: &Attr, since: u64) -> bool {
        let stamp = ContentStamp::of(attr);
        {
            let stamps = &mut self.memory.lock().page_stamps;
            if session.is_watched() && stamps.get(&ino) == Some(&stamp) {
                return true;
            }
            stamps.insert(ino, stamp);
        }
        if !session.current_since(since) {
            self.memory.lock().page_stamps.remove(&ino);
        }
        false
    }

    /// Whether the kernel's pages of `ino` are known current without asking the daemon: the session's
    /// changes are pushed, and none touched the file since its pages were cached (an invalidation of
    /// the inode drops its stamp).
    pub(super) fn cache_is_current(&self, ino: u64, session: &Session) -> bool {
        session.is_watched() && self.memory.lock().page_stamps.contains_key(&ino)
    }

    /// Starts binding `dir/name` (see [`Binding`]).
    pub(super) fn binding(&self, dir: u64, name: &[u8]) -> Binding {
        // Before the request: from now on the name may exist (see `crate::made_dirs`).
        self.memory.lock().made_dirs.may_exist(dir, name);
        Binding {
            sessions: self.sessions.clone(),
            dir,
            name: name.to_vec(),
            negative: self.memory.lock().negatives.take(dir, name),
        }
    }

    /// Answers a lookup of a missing `dir/name` that started at generation `since`: a negative entry
    /// for the watched TTL when the session is watched and no invalidation crossed the lookup, a
    /// plain `ENOENT` (not cached) otherwise.
    pub(super) fn reply_missing(
        &self,
        session: &Session,
        since: u64,
        dir: u64,
        name: &[u8],
        reply: impl EntryReply,
    ) {
        // Record first, then check: an invalidation after the check finds the record.
        let cacheable = session.is_watched() && self.memory.lock().negatives.insert(dir, name);
        if cacheable && self.ttl_for(session, since) == self.watched_ttl {
            self.memory
                .lock()
                .replied
                .missing(dir, name, Instant::now());
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
    pub(super) fn reply_entry(
        &self,
        parent: u64,
        name: &[u8],
        attr: &Attr,
        ttl: Duration,
        reply: impl EntryReply,
        from: EntryFrom<'_>,
    ) -> Option<u64> {
        let (remember, made) = match from {
            EntryFrom::Lookup(session, since, epoch) => (Some((session, since, epoch)), None),
            EntryFrom::Made(session, since, path) => (None, Some((session, since, path))),
        };
        let ino = {
            // Recorded while the table is locked: an invalidation that finds the node learned
            // also finds it recent.
            let mut table = self.inodes.lock();
            let ino = table.learn(parent, name, attr);
            if let Some(ino) = ino {
                self.memory.lock().replied.inode(ino, Instant::now());
                // A directory this call made, with no change event about it while it ran: empty
                // (see `crate::made_dirs`). Before the reply, so every name bound in it is
                // recorded.
                let made = made.filter(|(session, since, path)| {
                    session.is_watched() && !session.changed_since(*since, path)
                });
                if made.is_some() && attr.file_type() == S_IFDIR {
                    self.memory.lock().made_dirs.made(ino);
                }
            }
            ino
        };
        if let Some(ino) = ino {
            self.content_seen(&[(ino, *attr)]);
        }
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

    /// Keeps the names of `dir` and their attributes from `page`, a complete listing.
    pub(super) fn remember_listing(&self, dir: u64, page: &DirPage) {
        self.remember_entries(dir, &page.entries, page.generation, page.attr_epoch);
    }

    /// Keeps `entries`, the complete listing of `dir` fetched at invalidation generation
    /// `generation` by a request that started at attribute epoch `epoch`.
    pub(super) fn remember_entries(
        &self,
        dir: u64,
        entries: &[DirEntry],
        generation: u64,
        epoch: u64,
    ) {
        let entries: HashMap<Vec<u8>, Attr> =
            entries.iter().map(|e| (e.name.clone(), e.attr)).collect();
        let mut memory = self.memory.lock();
        let Memory {
            listings,
            listed_names,
            ..
        } = &mut *memory;
        if *listed_names + entries.len() > LISTED_NAMES_MAX {
            listings.clear();
            *listed_names = 0;
        }
        *listed_names += entries.len();
        let listing = Listing {
            generation,
            epoch,
            entries,
        };
        if let Some(old) = listings.insert(dir, listing) {
            *listed_names -= old.entries.len();
        }
    }

    /// Starts a change through the mount (see [`Mutation`]).
    pub(super) fn mutation(self: &Arc<Self>) -> Mutation {
        self.start_mutation(None)
    }

    /// Starts a change through the mount of `ino`'s content or attributes alone (see [`Mutation`]).
    pub(super) fn mutation_of(self: &Arc<Self>, ino: u64) -> Mutation {
        self.start_mutation(Some(ino))
    }

    /// A change of `ino` through the mount that the bridge does not see: its direct data started
    /// with a handle that may write, or ended after one (see [`crate::direct`]). Voids what is
    /// remembered of the file (and listings, and files fetched ahead), and counts as a change
    /// started, so no change under way keeps its own reply (see [`Mutation::end`]).
    pub(super) fn direct_change(&self, ino: u64) {
        self.started.fetch_add(1, Ordering::AcqRel);
        self.void_answers(Some(ino));
        self.memory.lock().dir_pages.clear();
    }

    pub(super) fn start_mutation(self: &Arc<Self>, only_of: Option<u64>) -> Mutation {
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
    pub(super) fn keep_own_reply(
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
    pub(super) fn void_answers(&self, only_of: Option<u64>) -> u64 {
        let mut memory = self.memory.lock();
        memory.read_ahead.changed();
        memory.heads_ahead.changed();
        let epoch = match only_of {
            Some(ino) => memory.attrs.changed_one(ino),
            None => memory.attrs.changed(),
        };
        memory.listings.clear();
        memory.listed_names = 0;
        epoch
    }

    /// The attributes last answered for `ino`, if its session is watched and nothing voided them.
    pub(super) fn cached_attr(&self, ino: u64, session: &Session) -> Option<Attr> {
        if !session.is_watched() {
            return None;
        }
        self.memory.lock().attrs.get(ino)
    }

    /// Remembers `attrs` (inode, attributes) of `session`, read by requests that started at
    /// invalidation generation `since` and attribute epoch `epoch`: only if the session is watched
    /// and neither an invalidation nor a change through the mount crossed them. Recorded first, then
    /// checked, so an invalidation after the check finds the records.
    pub(super) fn keep_attrs(
        &self,
        session: &Session,
        since: u64,
        epoch: u64,
        attrs: &[(u64, Attr)],
    ) {
        if !session.is_watched() || attrs.is_empty() {
            return;
        }
        if !self.memory.lock().attrs.insert(epoch, attrs) {
            return;
        }
        if session.generation() != since {
            let cache = &mut self.memory.lock().attrs;
            for (ino, _) in attrs {
                cache.remove(*ino);
            }
        }
    }

    /// What `dir`'s last complete listing says of `name`, if it is still current: nothing changed
    /// in the session since it was fetched, nor through the mount since it was requested.
    pub(super) fn listed(&self, dir: u64, session: &Session, name: &[u8]) -> Option<Listed> {
        if self.mutating.load(Ordering::Acquire) > 0 {
            return None;
        }
        // Taken first (see `Inner::direct`): a file written directly right now may have another
        // size and times than its listing says, and the end of that cannot come between.
        let direct = self.direct.lock();
        let memory = self.memory.lock();
        let epoch = memory.attrs.epoch();
        let listing = memory.listings.get(&dir)?;
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
        drop(memory);
        if let Listed::Present { attr, .. } = &listed {
            if direct.is_written(attr.dev, attr.ino) {
                return None;
            }
        }
        Some(listed)
    }

    /// Answers a lookup of `dir/name` from what its directory's listing says.
    pub(super) fn reply_listed(
        &self,
        session: &Session,
        dir: u64,
        name: &[u8],
        listed: Listed,
        reply: impl EntryReply,
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
    pub(super) fn lookups_touched(
        self: &Arc<Self>,
        session: &Arc<Session>,
        dir_ino: u64,
        dir: &crate::read_ahead::DirKey,
    ) -> Option<FetchWaiter> {
        if !session.is_watched() {
            return None;
        }
        let (done, waiter) = tokio::sync::watch::channel(FetchEnd::Pending);
        let attr_epoch = self.memory.lock().attrs.epoch();
        let started = self.memory.lock().lookups_ahead.touched(
            dir,
            attr_epoch,
            waiter.clone(),
            Instant::now(),
        );
        if !started {
            return None;
        }
        let (inner, session, dir) = (self.clone(), session.clone(), dir.clone());
        self.rt.spawn(async move {
            let generation = session.generation();
            let attr_epoch = inner.memory.lock().attrs.epoch();
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
            inner
                .memory
                .lock()
                .lookups_ahead
                .fetched(&dir, Instant::now());
            let _ = done.send(end);
        });
        Some(waiter)
    }
}
