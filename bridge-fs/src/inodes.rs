//! The inode table: FUSE inode numbers for the mount root, each session root, and every node the kernel
//! has looked up inside a session.
//!
//! A node inside a session is identified by its daemon-side `(dev, ino, birth time)`; two names for one
//! file (hard links) therefore share one FUSE inode with the daemon's link count. Each node keeps the
//! `(parent, name)` pairs it is known under (the most recent one is used), and request paths are
//! rebuilt from those links, so a rename of a directory moves everything below it at once, and
//! unlinking one name of a hard-linked file leaves it reachable under the others. Nodes live while the kernel holds a lookup count
//! on them ([`InodeTable::forget`]); session roots live as long as the mount.
//!
//! A node's inode number (what `stat` shows as `st_ino`, and FUSE's node id) comes from its daemon
//! identity, so it is the same whenever the node is learned again, in this mount or the next: the
//! session's tag for the node's device (24 bits from a hash of the session id and the device,
//! probed on past a tag another session or device holds) above the daemon's inode number (40 bits).
//! Git records `st_ino` in its index: numbers that changed after the kernel forgot a node (cold
//! caches) or after a remount made `git status` re-read every file. A node whose daemon inode number
//! does not fit, or whose number a live node of another identity still holds (a deleted file still
//! open, its inode number reused), gets one from a counter in the upper half instead, kept for it
//! while [`RETIRED_MAX`] other forgotten nodes are not newer. Session roots count up from 2.
//!
//! Architecture invariant: **the table lock is never held across an await or a network call**; handlers
//! take what they need and release it before talking to a daemon.

use std::collections::HashMap;
use std::sync::Arc;

use sessionfs_proto::{Attr, NodeId, WirePath, S_IFDIR};

use crate::session::Session;

/// The FUSE inode number of the mount root.
pub const ROOT_INO: u64 = 1;

/// What a FUSE inode stands for.
#[derive(Clone)]
pub enum NodeRef {
    /// The mount root, listing the sessions.
    Root,
    /// A node inside a session; the empty path is the session's workspace root.
    InSession {
        session: Arc<Session>,
        path: WirePath,
    },
}

/// A node's identity on the daemon side: its session (root inode) and its identity there.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct RemoteKey {
    session_ino: u64,
    node: NodeId,
}

impl RemoteKey {
    fn of(session_ino: u64, attr: &Attr) -> Self {
        RemoteKey {
            session_ino,
            node: NodeId::of(attr),
        }
    }
}

/// A name of a node: its parent inode and the name in it.
pub type Link = (u64, Vec<u8>);

struct Node {
    /// The session root inode this node belongs to (itself, for a session root).
    session_ino: u64,
    /// The names this node is known under; the last is used to build paths. Empty: detached.
    names: Vec<Link>,
    nlookup: u64,
    remote: Option<RemoteKey>,
}

/// The table; see the module docs.
pub struct InodeTable {
    nodes: HashMap<u64, Node>,
    by_remote: HashMap<RemoteKey, u64>,
    by_name: HashMap<Link, u64>,
    session_roots: HashMap<String, u64>,
    sessions: HashMap<u64, Arc<Session>>,
    /// Inode numbers of nodes the kernel forgot, by daemon identity, so that a node learned again
    /// (after a cache invalidation dropped its dentry) keeps its inode number; oldest dropped first.
    retired: HashMap<RemoteKey, u64>,
    retired_order: std::collections::VecDeque<(RemoteKey, u64)>,
    next_ino: u64,
    /// Device tags by (session root, daemon device), and who holds each tag.
    tags: HashMap<(u64, u64), u64>,
    tag_owners: HashMap<u64, (u64, u64)>,
    next_spare: u64,
}

/// How many forgotten nodes with spare inode numbers keep them.
const RETIRED_MAX: usize = 65_536;

/// Bits of the daemon's inode number in a node's inode number; the device tag sits above them.
const DAEMON_INO_BITS: u32 = 40;
/// Device tags are 1..2^23: inode numbers from them lie between 2^40 and 2^63.
const TAG_BITS: u32 = 23;
/// Spare inode numbers (see the module docs) count up from here.
const SPARE_BASE: u64 = 1 << 63;

impl Default for InodeTable {
    fn default() -> Self {
        InodeTable {
            nodes: HashMap::new(),
            by_remote: HashMap::new(),
            by_name: HashMap::new(),
            session_roots: HashMap::new(),
            sessions: HashMap::new(),
            retired: HashMap::new(),
            retired_order: std::collections::VecDeque::new(),
            next_ino: ROOT_INO + 1,
            tags: HashMap::new(),
            tag_owners: HashMap::new(),
            next_spare: SPARE_BASE,
        }
    }
}

/// Why an inode cannot be resolved to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// The kernel named an inode this table does not know (or no longer knows).
    UnknownInode,
    /// The node was unlinked or replaced; it can still be used through an open file handle only.
    /// Answered `ESTALE`: the kernel then walks a path call's path again (`LOOKUP_REVAL`), so an
    /// `open` or `stat` that raced a rename over its file reaches the file that has the name now.
    Detached,
    /// The rebuilt path would exceed the protocol's path limit.
    TooLong,
}

impl InodeTable {
    /// The inode of session `session`'s root, allocating one on first sight. Stable for the mount's
    /// lifetime, so a session that stops and starts keeps its inode.
    pub fn session_root(&mut self, session: &Arc<Session>) -> u64 {
        let id = session.id.as_str();
        if let Some(&ino) = self.session_roots.get(id) {
            self.sessions.insert(ino, session.clone());
            return ino;
        }
        let ino = self.alloc();
        self.nodes.insert(
            ino,
            Node {
                session_ino: ino,
                names: vec![(ROOT_INO, id.as_bytes().to_vec())],
                nlookup: 0,
                remote: None,
            },
        );
        self.session_roots.insert(id.to_owned(), ino);
        self.sessions.insert(ino, session.clone());
        ino
    }

    /// What `ino` stands for, with the path to send to its daemon.
    pub fn resolve(&self, ino: u64) -> Result<NodeRef, Stale> {
        if ino == ROOT_INO {
            return Ok(NodeRef::Root);
        }
        let node = self.nodes.get(&ino).ok_or(Stale::UnknownInode)?;
        let session = self
            .sessions
            .get(&node.session_ino)
            .ok_or(Stale::UnknownInode)?
            .clone();
        let mut names: Vec<&[u8]> = Vec::new();
        let mut len = 0;
        let mut cur = node;
        let mut cur_ino = ino;
        while cur_ino != node.session_ino {
            let (parent, name) = cur.names.last().ok_or(Stale::Detached)?;
            names.push(name);
            // Bounds the walk too: a parent cycle (which `link` refuses to create) could not loop.
            len += name.len() + 1;
            if len > sessionfs_proto::path::MAX_PATH_LEN + 1 {
                return Err(Stale::TooLong);
            }
            cur_ino = *parent;
            cur = self.nodes.get(&cur_ino).ok_or(Stale::Detached)?;
        }
        let mut bytes = Vec::new();
        for (i, name) in names.iter().rev().enumerate() {
            if i > 0 {
                bytes.push(b'/');
            }
            bytes.extend_from_slice(name);
        }
        let path = WirePath::new(bytes).map_err(|_| Stale::Detached)?;
        Ok(NodeRef::InSession { session, path })
    }

    /// Records that the kernel learned `parent/name` with attributes `attr` (one lookup count) and
    /// returns its inode. `parent` must be a session root or a node inside a session.
    pub fn learn(&mut self, parent: u64, name: &[u8], attr: &Attr) -> Option<u64> {
        let session_ino = self.nodes.get(&parent)?.session_ino;
        let key = RemoteKey::of(session_ino, attr);
        let ino = match self.by_remote.get(&key) {
            Some(&ino) => ino,
            None => {
                let ino = match self.stable_ino(&key) {
                    Some(ino) => ino,
                    None => match self.retired.remove(&key) {
                        Some(ino) => ino,
                        None => self.alloc_spare(),
                    },
                };
                self.nodes.insert(
                    ino,
                    Node {
                        session_ino,
                        names: Vec::new(),
                        nlookup: 0,
                        remote: Some(key),
                    },
                );
                self.by_remote.insert(key, ino);
                ino
            }
        };
        self.link(ino, parent, name);
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.nlookup += 1;
        }
        Some(ino)
    }

    /// What to open for `ino`: its session, its path (the workspace root for a node with no name
    /// left) and its daemon identity, which the daemon checks (see `Request::Open`'s `expect`).
    pub fn to_open(&self, ino: u64) -> Result<(Arc<Session>, WirePath, Option<NodeId>), Stale> {
        let node = self.nodes.get(&ino).ok_or(Stale::UnknownInode)?;
        let expect = node.remote.map(|key| key.node);
        match self.resolve(ino) {
            Ok(NodeRef::InSession { session, path }) => Ok((session, path, expect)),
            Ok(NodeRef::Root) => Err(Stale::UnknownInode),
            Err(Stale::Detached) if expect.is_some() => {
                let session = self
                    .sessions
                    .get(&node.session_ino)
                    .ok_or(Stale::UnknownInode)?;
                Ok((session.clone(), WirePath::root(), expect))
            }
            Err(e) => Err(e),
        }
    }

    /// True when the table binds `parent/name` to a different node than the one `attr` describes:
    /// one of the two reports is out of date.
    pub fn conflicts(&self, parent: u64, name: &[u8], attr: &Attr) -> bool {
        self.bound_is(parent, name, &NodeId::of(attr)) == Some(false)
    }

    /// Whether `parent/name` is bound to the node `id` identifies (as [`Self::conflicts`] would find
    /// with that node's attributes, without them).
    pub fn still_names(&self, parent: u64, name: &[u8], id: &NodeId) -> bool {
        self.bound_is(parent, name, id) == Some(true)
    }

    /// Whether the node `parent/name` is bound to is `id`; `None` if the name is not bound (or its
    /// directory unknown).
    fn bound_is(&self, parent: u64, name: &[u8], id: &NodeId) -> Option<bool> {
        let bound = *self.by_name.get(&(parent, name.to_vec()))?;
        let session_ino = self.nodes.get(&parent)?.session_ino;
        let key = RemoteKey {
            session_ino,
            node: *id,
        };
        Some(self.nodes.get(&bound).and_then(|n| n.remote) == Some(key))
    }

    /// The inode the kernel knows for `path` in session `id`, following known names from the session
    /// root; `None` if the session or any component is unknown (then the kernel caches nothing there).
    pub fn find(&self, id: &str, path: &WirePath) -> Option<u64> {
        let mut ino = *self.session_roots.get(id)?;
        if path.is_root() {
            return Some(ino);
        }
        for name in path.as_bytes().split(|&b| b == b'/') {
            ino = *self.by_name.get(&(ino, name.to_vec()))?;
        }
        Some(ino)
    }

    /// The node `parent/name` is bound to, if the kernel was told of it.
    pub fn child(&self, parent: u64, name: &[u8]) -> Option<u64> {
        self.by_name.get(&(parent, name.to_vec())).copied()
    }

    /// Every inode of session `id` (its root included) with the names it is known under: what the
    /// kernel may have cached for the session.
    pub fn session_nodes(&self, id: &str) -> Vec<(u64, Vec<Link>)> {
        let Some(&root) = self.session_roots.get(id) else {
            return Vec::new();
        };
        self.nodes
            .iter()
            .filter(|(_, n)| n.session_ino == root)
            .map(|(&ino, n)| (ino, n.names.clone()))
            .collect()
    }

    /// Counts a lookup of a session root (from the mount root).
    pub fn count_lookup(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.nlookup += 1;
        }
    }

    /// The kernel dropped `n` lookups of `ino`; forgets the node when none remain.
    pub fn forget(&mut self, ino: u64, n: u64) {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.nlookup = node.nlookup.saturating_sub(n);
        if node.nlookup > 0 || node.session_ino == ino {
            return;
        }
        if let Some(node) = self.nodes.remove(&ino) {
            if let Some(key) = node.remote {
                // Only if it still maps here: a node of the same identity may have been learned since
                // (without birth times, a new file can have the identity of a forgotten one).
                if self.by_remote.get(&key) == Some(&ino) {
                    self.by_remote.remove(&key);
                }
                if !node.names.is_empty() && ino >= SPARE_BASE {
                    self.retire(key, ino);
                }
            }
            for link in node.names {
                if self.by_name.get(&link) == Some(&ino) {
                    self.by_name.remove(&link);
                }
            }
        }
    }

    /// `parent/name` was removed (unlink, rmdir, or replaced by a rename): the node it named loses
    /// that name, and is detached once it has none.
    pub fn unlink(&mut self, parent: u64, name: &[u8]) {
        let link = (parent, name.to_vec());
        if let Some(ino) = self.by_name.remove(&link) {
            self.drop_name(ino, &link);
        }
    }

    /// `parent/name` was renamed to `new_parent/new_name` (replacing what was there), or exchanged
    /// with it when `exchange` is set.
    pub fn rename(
        &mut self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        exchange: bool,
    ) {
        let from = (parent, name.to_vec());
        let to = (new_parent, new_name.to_vec());
        let moved = self.by_name.remove(&from);
        let displaced = self.by_name.remove(&to);
        if let Some(ino) = displaced {
            self.drop_name(ino, &to);
            if exchange {
                self.link(ino, parent, name);
            }
        }
        if let Some(ino) = moved {
            self.drop_name(ino, &from);
            self.link(ino, new_parent, new_name);
        }
    }

    fn drop_name(&mut self, ino: u64, link: &Link) {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.names.retain(|l| l != link);
        // Without a birth time, a daemon inode number is reused as soon as the file is gone; a node
        // with no name left must not be found again under that number.
        if node.names.is_empty() {
            if let Some(key) = node.remote.filter(|k| k.node.btime.is_none()) {
                if self.by_remote.get(&key) == Some(&ino) {
                    self.by_remote.remove(&key);
                }
            }
        }
    }

    /// True when `ancestor` is `ino` or one of the directories above it.
    fn is_ancestor(&self, ancestor: u64, mut ino: u64) -> bool {
        // A path has at most MAX_PATH_LEN / 2 components, which bounds the walk.
        for _ in 0..=sessionfs_proto::path::MAX_PATH_LEN / 2 {
            if ino == ancestor {
                return true;
            }
            match self.nodes.get(&ino).and_then(|n| n.names.last()) {
                Some((parent, _)) if *parent != ino => ino = *parent,
                _ => return false,
            }
        }
        true
    }

    /// Makes `parent/name` a name of `ino` (the one used for its paths from now on). A directory has
    /// exactly one name, and never one below itself.
    fn link(&mut self, ino: u64, parent: u64, name: &[u8]) {
        let is_dir = self
            .nodes
            .get(&ino)
            .and_then(|n| n.remote)
            .is_some_and(|k| k.node.file_type == S_IFDIR);
        if is_dir && self.is_ancestor(ino, parent) {
            return;
        }
        let link = (parent, name.to_vec());
        if let Some(other) = self.by_name.insert(link.clone(), ino) {
            // The name led to another node (replaced behind our back): that node loses it.
            if other != ino {
                self.drop_name(other, &link);
            }
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        let stale: Vec<Link> = if is_dir {
            node.names.drain(..).filter(|l| *l != link).collect()
        } else {
            node.names.retain(|l| *l != link);
            Vec::new()
        };
        node.names.push(link);
        for old in stale {
            if self.by_name.get(&old) == Some(&ino) {
                self.by_name.remove(&old);
            }
        }
    }

    fn retire(&mut self, key: RemoteKey, ino: u64) {
        self.retired.insert(key, ino);
        self.retired_order.push_back((key, ino));
        while self.retired_order.len() > RETIRED_MAX {
            if let Some((old, old_ino)) = self.retired_order.pop_front() {
                if self.retired.get(&old) == Some(&old_ino) {
                    self.retired.remove(&old);
                }
            }
        }
    }

    fn alloc(&mut self) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    fn alloc_spare(&mut self) -> u64 {
        let ino = self.next_spare;
        self.next_spare += 1;
        ino
    }

    /// The inode number `key`'s identity gives (see the module docs), unless the daemon's inode
    /// number does not fit or a live node holds that number.
    fn stable_ino(&mut self, key: &RemoteKey) -> Option<u64> {
        if key.node.ino == 0 || key.node.ino >= 1 << DAEMON_INO_BITS {
            return None;
        }
        let tag = self.device_tag(key.session_ino, key.node.dev)?;
        let ino = (tag << DAEMON_INO_BITS) | key.node.ino;
        (!self.nodes.contains_key(&ino)).then_some(ino)
    }

    /// The tag of daemon device `dev` in the session rooted at `session_ino`: from a hash of the
    /// session id and the device, the next free one if another (session, device) holds it.
    fn device_tag(&mut self, session_ino: u64, dev: u64) -> Option<u64> {
        if let Some(&tag) = self.tags.get(&(session_ino, dev)) {
            return Some(tag);
        }
        let id = self.sessions.get(&session_ino)?.id.as_str().to_owned();
        let span = (1u64 << TAG_BITS) - 1;
        let start = fnv1a(id.as_bytes(), dev) % span;
        let tag = (0..span)
            .map(|i| 1 + (start + i) % span)
            .find(|tag| !self.tag_owners.contains_key(tag))?;
        self.tags.insert((session_ino, dev), tag);
        self.tag_owners.insert(tag, (session_ino, dev));
        Some(tag)
    }

    /// Number of nodes.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
}

/// Whether `attr` describes a directory.
pub fn is_dir(attr: &Attr) -> bool {
    attr.file_type() == S_IFDIR
}

/// FNV-1a over `bytes` and then `dev`: fixed across builds and platforms, unlike std's hasher.
fn fnv1a(bytes: &[u8], dev: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes.iter().chain(dev.to_le_bytes().iter()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessionfs_registry::{Backend, SessionId, SessionRecord};

    fn attr(ino: u64, mode: u32) -> Attr {
        Attr {
            dev: 1,
            ino,
            mode,
            ..Attr::default()
        }
    }

    fn path(t: &InodeTable, ino: u64) -> Result<String, Stale> {
        match t.resolve(ino)? {
            NodeRef::InSession { path, .. } => {
                Ok(String::from_utf8_lossy(path.as_bytes()).into_owned())
            }
            NodeRef::Root => Ok("<root>".into()),
        }
    }

    fn table() -> (InodeTable, u64) {
        table_of("s")
    }

    fn table_of(name: &str) -> (InodeTable, u64) {
        let mut t = InodeTable::default();
        let id = SessionId::new(name).unwrap();
        let session = Arc::new(Session::new(SessionRecord::new(
            id,
            Backend::Local,
            "s".into(),
        )));
        let root = t.session_root(&session);
        (t, root)
    }

    #[test]
    fn a_forgotten_node_learned_again_keeps_its_inode_number() {
        let (mut t, root) = table();
        let f = t.learn(root, b"f", &attr(11, 0o100644)).unwrap();
        t.forget(f, 1);
        assert_eq!(t.len(), 1, "only the session root is left");
        assert_eq!(t.learn(root, b"f", &attr(11, 0o100644)), Some(f));
        let g = t.learn(root, b"g", &attr(12, 0o100644)).unwrap();
        assert_ne!(g, f);
    }

    fn add_session(t: &mut InodeTable, name: &str) -> u64 {
        let id = SessionId::new(name).unwrap();
        let session = Session::new(SessionRecord::new(id, Backend::Local, name.into()));
        t.session_root(&Arc::new(session))
    }

    #[test]
    fn inode_numbers_come_from_the_daemon_identity_in_every_mount() {
        let (mut one, root1) = table();
        let (mut two, root2) = table();
        add_session(&mut two, "first");
        let a1 = one.learn(root1, b"a", &attr(11, 0o100644)).unwrap();
        let b2 = two.learn(root2, b"b", &attr(12, 0o100644)).unwrap();
        let a2 = two.learn(root2, b"a", &attr(11, 0o100644)).unwrap();
        assert_eq!(a1, a2, "another mount, another order: the same number");
        assert_eq!(a1 & ((1 << DAEMON_INO_BITS) - 1), 11);
        assert_ne!(a2, b2);
        // Forgotten, then more forgotten nodes than are remembered: still the same number.
        one.forget(a1, 1);
        for i in 0..RETIRED_MAX as u64 + 10 {
            let n = one.learn(root1, b"x", &attr(1000 + i, 0o100644)).unwrap();
            one.unlink(root1, b"x");
            one.forget(n, 1);
        }
        assert_eq!(one.learn(root1, b"a", &attr(11, 0o100644)), Some(a1));
    }

    #[test]
    fn sessions_and_devices_never_share_inode_numbers() {
        let (mut t, s) = table();
        let other = add_session(&mut t, "other");
        let in_s = t.learn(s, b"f", &attr(11, 0o100644)).unwrap();
        let in_other = t.learn(other, b"f", &attr(11, 0o100644)).unwrap();
        let other_dev = Attr {
            dev: 2,
            ..attr(11, 0o100644)
        };
        let on_dev2 = t.learn(s, b"g", &other_dev).unwrap();
        assert_ne!(in_s, in_other);
        assert_ne!(in_s, on_dev2);
        assert_ne!(in_other, on_dev2);
        // A tag a session would hash to but another holds: the next one is taken.
        let third = add_session(&mut t, "third");
        let span = (1u64 << TAG_BITS) - 1;
        let hashed = 1 + fnv1a(b"third", 1) % span;
        t.tag_owners.insert(hashed, (0, 0));
        let f = t.learn(third, b"f", &attr(11, 0o100644)).unwrap();
        assert_ne!(f >> DAEMON_INO_BITS, hashed);
        assert!(![in_s, in_other, on_dev2].contains(&f));
    }

    #[test]
    fn an_identity_whose_number_is_held_or_too_large_gets_a_spare_one() {
        let (mut t, root) = table();
        let huge = t.learn(root, b"h", &attr(1 << 45, 0o100644)).unwrap();
        assert!(huge >= SPARE_BASE);
        t.forget(huge, 1);
        assert_eq!(t.learn(root, b"h", &attr(1 << 45, 0o100644)), Some(huge));
        // Inode 7 reused by a new file while the deleted one is still known (open).
        let old = t.learn(root, b"f", &attr(7, 0o100644)).unwrap();
        t.unlink(root, b"f");
        let new_file = Attr {
            btime: Some(sessionfs_proto::Timestamp { secs: 5, nanos: 0 }),
            ..attr(7, 0o100644)
        };
        let new = t.learn(root, b"f", &new_file).unwrap();
        assert_ne!(old, new);
        assert!(new >= SPARE_BASE);
    }

    #[test]
    fn paths_resolve_to_known_inodes() {
        let (mut t, root) = table();
        let d = t.learn(root, b"d", &attr(10, S_IFDIR | 0o755)).unwrap();
        let f = t.learn(d, b"f", &attr(11, 0o100644)).unwrap();
        let p = |s: &str| WirePath::new(s.as_bytes().to_vec()).unwrap();
        assert_eq!(t.find("s", &WirePath::root()), Some(root));
        assert_eq!(t.find("s", &p("d")), Some(d));
        assert_eq!(t.find("s", &p("d/f")), Some(f));
        assert_eq!(t.find("s", &p("d/g")), None);
        assert_eq!(t.find("other", &p("d")), None);
        let mut nodes: Vec<u64> = t.session_nodes("s").into_iter().map(|(i, _)| i).collect();
        nodes.sort();
        assert_eq!(nodes, vec![root, d, f]);
    }

    #[test]
    fn hard_links_share_an_inode_and_survive_unlinking_one_name() {
        let (mut t, root) = table();
        let d = t.learn(root, b"d", &attr(10, S_IFDIR)).unwrap();
        let a = t.learn(d, b"a", &attr(11, 0o100000)).unwrap();
        let b = t.learn(root, b"b", &attr(11, 0o100000)).unwrap();
        assert_eq!(a, b);
        assert_eq!(path(&t, a).unwrap(), "b");
        t.unlink(root, b"b");
        assert_eq!(path(&t, a).unwrap(), "d/a");
        t.unlink(d, b"a");
        assert_eq!(path(&t, a), Err(Stale::Detached));
    }

    #[test]
    fn renaming_a_directory_moves_its_subtree() {
        let (mut t, root) = table();
        let d = t.learn(root, b"d", &attr(10, S_IFDIR)).unwrap();
        let f = t.learn(d, b"f", &attr(11, 0o100000)).unwrap();
        let e = t.learn(root, b"e", &attr(12, S_IFDIR)).unwrap();
        t.rename(root, b"d", e, b"moved", false);
        assert_eq!(path(&t, f).unwrap(), "e/moved/f");
        // Replacing: the displaced node is detached.
        let g = t.learn(root, b"g", &attr(13, 0o100000)).unwrap();
        let h = t.learn(root, b"h", &attr(14, 0o100000)).unwrap();
        t.rename(root, b"g", root, b"h", false);
        assert_eq!(path(&t, g).unwrap(), "h");
        assert_eq!(path(&t, h), Err(Stale::Detached));
    }

    #[test]
    fn directories_have_one_name_and_never_become_their_own_ancestor() {
        let (mut t, root) = table();
        let a = t.learn(root, b"a", &attr(40, S_IFDIR)).unwrap();
        let b = t.learn(a, b"b", &attr(41, S_IFDIR)).unwrap();
        // A stale report of `a` under `b` (a listing taken before `mv a b/a`) cannot make a cycle.
        t.learn(b, b"a", &attr(40, S_IFDIR)).unwrap();
        assert_eq!(path(&t, b).unwrap(), "a/b");
        // A real move of `b` to the top replaces its old name instead of adding one.
        t.rename(a, b"b", root, b"b", false);
        t.learn(b, b"a", &attr(40, S_IFDIR)).unwrap();
        assert_eq!(path(&t, a).unwrap(), "b/a");
        assert_eq!(path(&t, b).unwrap(), "b");
    }

    #[test]
    fn exchange_swaps_names() {
        let (mut t, root) = table();
        let x = t.learn(root, b"x", &attr(20, 0o100000)).unwrap();
        let y = t.learn(root, b"y", &attr(21, 0o100000)).unwrap();
        t.rename(root, b"x", root, b"y", true);
        assert_eq!(path(&t, x).unwrap(), "y");
        assert_eq!(path(&t, y).unwrap(), "x");
    }

    #[test]
    fn forget_drops_nodes_and_reused_inode_numbers_are_new_nodes() {
        let (mut t, root) = table();
        let a = t.learn(root, b"a", &attr(30, 0o100000)).unwrap();
        t.learn(root, b"a", &attr(30, 0o100000)).unwrap();
        t.forget(a, 1);
        assert!(t.resolve(a).is_ok(), "one lookup is still held");
        t.forget(a, 1);
        assert_eq!(t.resolve(a).err(), Some(Stale::UnknownInode));
        // Same daemon inode number, another type: another node.
        let f = t.learn(root, b"n", &attr(31, 0o100000)).unwrap();
        let d = t.learn(root, b"n", &attr(31, S_IFDIR)).unwrap();
        assert_ne!(f, d);
        assert_eq!(path(&t, f), Err(Stale::Detached));
        // Session roots are never forgotten.
        t.forget(root, 100);
        assert!(t.resolve(root).is_ok());
    }
}
