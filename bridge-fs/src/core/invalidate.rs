//! The invalidator: turns a session's change batches and resets into kernel invalidations and voids
//! what the bridge remembered of what changed.

use super::*;

impl Inner {
    /// Tells the kernel to forget what it cached that `work` touches; runs on the invalidator thread.
    pub(super) fn invalidate(&self, notifier: &impl Notify, work: Invalidation) {
        // Collect under the lock, notify without it: the kernel may need FUSE answers meanwhile.
        // `missing`: negative entries the kernel may hold for names that now may exist.
        // Inodes whose content alone changed: what is known of their capability stays true.
        let mut content_only = std::collections::HashSet::new();
        let mut other_change = std::collections::HashSet::new();
        // Changes that touched what a lookup answered a moment ago: sent again (see `crate::replied`).
        let mut late = Vec::new();
        let (inodes, entries, missing) = {
            let table = self.inodes.lock();
            let mut memory = self.memory.lock();
            let Memory {
                listed_dirs,
                negatives,
                replied,
                made_dirs,
                attrs,
                ..
            } = &mut *memory;
            let at = Instant::now();
            let mut missing = Vec::new();
            match &work {
                Invalidation::Changes(id, changes) | Invalidation::Late(id, changes) => {
                    let again = matches!(work, Invalidation::Late(..));
                    let (mut inodes, mut entries) = (Vec::new(), Vec::new());
                    for change in changes.iter() {
                        let mut recent = false;
                        match change {
                            Change::Node { path, now } => {
                                if let Some(ino) = table.find(id.as_str(), path) {
                                    // A directory with the attributes the bridge last answered
                                    // for it: the echo of a change through the mount, whose reply
                                    // said them. (Its listing's changes come as entry changes.)
                                    if now.is_some_and(|now| {
                                        attrs.get(ino).is_some_and(|told| {
                                            Attr {
                                                atime: now.atime,
                                                ..told
                                            } == now
                                        })
                                    }) {
                                        continue;
                                    }
                                    inodes.push(ino);
                                    other_change.insert(ino);
                                    recent = replied.inode_is_recent(ino, at);
                                }
                            }
                            Change::Data { path } => {
                                if let Some(ino) = table.find(id.as_str(), path) {
                                    inodes.push(ino);
                                    content_only.insert(ino);
                                    recent = replied.inode_is_recent(ino, at);
                                }
                            }
                            Change::Entry { dir, name, now } => {
                                let Some(dir) = table.find(id.as_str(), dir) else {
                                    continue;
                                };
                                // Before the kernel's negative entry is dropped (below, after
                                // the locks): a lookup then is not answered from the record.
                                if !matches!(now, EntryNow::Missing) {
                                    made_dirs.may_exist(dir, name);
                                }
                                // The second time, the record was taken the first time.
                                let negative = negatives.take(dir, name) || again;
                                // Again only what the kernel may have applied after this: a node a
                                // lookup answered for the name, or the name's absence (once the
                                // name is bound, the kernel's entry for it is no longer negative).
                                if let Some(child) = table.child(dir, name) {
                                    // The daemon says what the name named when it sent the change:
                                    // the same node needs nothing (what a check by lookup would
                                    // find). Anything else is checked by lookup before the entry
                                    // is dropped (`changed_entries`): a name that names the
                                    // kernel's node again by then keeps its entry, which saves the
                                    // kernel a lookup and keeps a directory that is a working
                                    // directory attached. (Dropping such entries once made the MCP
                                    // suite's atomic rewrites read the previous version: the
                                    // kernel looked the name up again, kept the inode it held, and
                                    // its pages, as the new attributes had the same size. An
                                    // answer that shows another content version now drops them,
                                    // `Inner::content_seen`; races.rs pins it.)
                                    let same = matches!(now, EntryNow::Node(node)
                                        if table.still_names(dir, name, node));
                                    if same && listed_dirs.contains(&dir) {
                                        // The name appeared behind the mount and a lookup bound
                                        // it before this event: the kernel's entry is right, its
                                        // listing of the directory is not.
                                        inodes.push(dir);
                                        other_change.insert(dir);
                                    }
                                    if !same {
                                        // The name was moved or replaced: the node it named
                                        // changed too (its change time, its links; and a change
                                        // of its content under its new name, in this batch,
                                        // cannot find it by that name), and the directory's
                                        // listing.
                                        inodes.push(child);
                                        other_change.insert(child);
                                        entries.push((dir, name.clone()));
                                        inodes.push(dir);
                                        other_change.insert(dir);
                                    }
                                    recent = replied.inode_is_recent(child, at);
                                } else {
                                    if negative {
                                        missing.push((dir, name.clone()));
                                    }
                                    // A name the kernel was not told of: the directory's listing
                                    // (which the kernel may cache) changed.
                                    inodes.push(dir);
                                    other_change.insert(dir);
                                    recent = replied.missing_is_recent(dir, name, at);
                                }
                            }
                        }
                        if recent && !again {
                            late.push(change.clone());
                        }
                    }
                    content_only.retain(|ino| !other_change.contains(ino));
                    (inodes, entries, missing)
                }
                Invalidation::Inode(ino) => (vec![*ino], Vec::new(), missing),
                Invalidation::Missing { dir, name } => {
                    negatives.take(*dir, name);
                    if table.child(*dir, name).is_none() {
                        missing.push((*dir, name.clone()));
                    }
                    (Vec::new(), Vec::new(), missing)
                }
                Invalidation::Root { removed } => {
                    let entries = removed
                        .iter()
                        .map(|id| (ROOT_INO, id.as_str().as_bytes().to_vec()))
                        .collect();
                    (vec![ROOT_INO], entries, missing)
                }
                Invalidation::Reset(id) => {
                    let nodes = table.session_nodes(id.as_str());
                    let entries: Vec<(u64, Vec<u8>)> = nodes
                        .iter()
                        .flat_map(|(_, names)| names.iter().cloned())
                        .filter(|(parent, _)| *parent != ROOT_INO)
                        .collect();
                    let dirs = nodes.iter().map(|(ino, _)| *ino).collect();
                    // Changes may have been missed: nothing is known of any name.
                    made_dirs.forget_all(nodes.iter().map(|(ino, _)| *ino));
                    // Names bound since they were missing are among `entries` already.
                    missing = negatives
                        .take_in(&dirs)
                        .into_iter()
                        .filter(|(dir, name)| table.child(*dir, name).is_none())
                        .collect();
                    let inodes = nodes.into_iter().map(|(ino, _)| ino).collect();
                    (inodes, entries, missing)
                }
            }
        };
        {
            // What is known of a node a change event named from the mount's own changes ends
            // (see `crate::known`). Only handles that created their file know anything: found
            // through their index.
            let knowing: Vec<u64> = {
                let files = self.files.lock();
                inodes
                    .iter()
                    .filter_map(|ino| files.knowing.get(ino).copied())
                    .collect()
            };
            let files = self.files.lock();
            for file in knowing.iter().filter_map(|fh| files.open.get(fh)) {
                *file.known.lock() = None;
            }
        }
        {
            // A reset lists every inode of the session, so this covers it too.
            let mut memory = self.memory.lock();
            for ino in &inodes {
                memory.listed_dirs.remove(ino);
                memory.page_stamps.remove(ino);
                if !content_only.contains(ino) {
                    memory.no_capability.remove(ino);
                }
                memory.attrs.remove(*ino);
            }
        }
        let verify = match &work {
            Invalidation::Changes(..) | Invalidation::Late(..) | Invalidation::Inode(_) => true,
            // Sessions no longer listed: their names are gone, nothing to check.
            Invalidation::Root { .. } | Invalidation::Missing { .. } => false,
            // At the end of a connection the daemon may be gone: nothing can be checked.
            Invalidation::Reset(id) => self
                .sessions
                .get(id.as_str())
                .is_some_and(|s| s.is_connected()),
        };
        let entries = if verify {
            self.changed_entries(entries)
        } else {
            entries
        };
        // Content before names: once a name shows the change, what was read through it is gone too.
        for ino in inodes {
            // Attributes, and the whole page cache (offset 0, length 0 = to the end).
            let _ = notifier.inval_inode(INodeNo(ino), 0, 0);
        }
        for (parent, name) in entries.into_iter().chain(missing) {
            // ENOENT: the kernel has no such entry cached; nothing to do.
            let _ = notifier.inval_entry(INodeNo(parent), OsStr::from_bytes(&name));
        }
        if let Invalidation::Changes(id, _) | Invalidation::Reset(id) = &work {
            if let Some(session) = self.sessions.get(id.as_str()) {
                session.handled_one();
            }
        }
        if let (false, Invalidation::Changes(id, _)) = (late.is_empty(), &work) {
            let (sessions, id) = (self.sessions.clone(), id.clone());
            self.rt.spawn(async move {
                tokio::time::sleep(crate::replied::LATE_DELAY).await;
                sessions.invalidate(Invalidation::Late(id, late.into()));
            });
        }
    }

    /// The entries among `entries` whose kernel dentry may be wrong: bound in the table to a node that
    /// the name no longer names (or that cannot be checked). A name still naming the same node keeps
    /// its dentry: invalidating it would detach a directory that is some process's working directory
    /// (the kernel unhashes it), which is what the echo of a `mkdir` through the mount would do.
    /// Names the kernel was not told of have no positive dentry to drop.
    pub(super) fn changed_entries(&self, entries: Vec<(u64, Vec<u8>)>) -> Vec<(u64, Vec<u8>)> {
        let checks: Vec<EntryCheck> = {
            let table = self.inodes.lock();
            entries
                .into_iter()
                .filter(|(dir, name)| table.child(*dir, name).is_some())
                .map(|(dir, name)| {
                    let target = match table.resolve(dir) {
                        Ok(NodeRef::InSession { session, path }) => {
                            path.join(&name).ok().map(|p| (session, p))
                        }
                        _ => None,
                    };
                    (dir, name, target)
                })
                .collect()
        };
        if checks.is_empty() {
            return Vec::new();
        }
        let sessions = self.sessions.clone();
        let looked_up = self.rt.block_on(async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(VERIFY_CONCURRENCY));
            let mut set = tokio::task::JoinSet::new();
            for (dir, name, target) in checks {
                let (sessions, slots) = (sessions.clone(), slots.clone());
                set.spawn(async move {
                    let Some((session, path)) = target else {
                        return (dir, name, None);
                    };
                    let _slot = slots.acquire_owned().await;
                    let lookup = Request::Lookup { path };
                    let attr = match sessions.call(&session, Caller::default(), lookup).await {
                        Ok((Reply::Attr(attr), _)) => Some(attr),
                        _ => None,
                    };
                    (dir, name, attr)
                });
            }
            let mut out = Vec::new();
            while let Some(done) = set.join_next().await {
                if let Ok(v) = done {
                    out.push(v);
                }
            }
            out
        });
        let table = self.inodes.lock();
        looked_up
            .into_iter()
            .filter(|(dir, name, attr)| match attr {
                Some(attr) => table.conflicts(*dir, name, attr),
                None => true,
            })
            .map(|(dir, name, _)| (dir, name))
            .collect()
    }
}
