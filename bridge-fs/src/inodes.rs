//! The inode table: FUSE inode numbers for the mount root, each session root, and every node the kernel
//! has looked up inside a session.
//!
//! A node inside a session is identified by its daemon-side `(dev, ino, birth time)`; two names for one
//! file (hard links) therefore share one FUSE inode with the daemon's link count. Each node keeps the
//! `(parent, name)` it was last seen under, and request paths are rebuilt from those links, so a rename
//! of a directory moves everything below it at once. Nodes live while the kernel holds a lookup count
//! on them ([`InodeTable::forget`]); session roots live as long as the mount.
//!
//! Architecture invariant: **the table lock is never held across an await or a network call**; handlers
//! take what they need and release it before talking to a daemon.

use std::collections::HashMap;
use std::sync::Arc;

use sessionfs_proto::{Attr, WirePath, S_IFDIR};

use crate::session::Session;

/// The FUSE inode number of the mount root.
pub const ROOT_INO: u64 = 1;

/// What a FUSE inode stands for.
#[derive(Clone)]
pub enum NodeRef {
    /// The mount root, listing the sessions.
    Root,
    /// A node inside a session; the empty path is the session's workspace root.
    InSession { session: Arc<Session>, path: WirePath },
}

/// A node's identity on the daemon side.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct RemoteKey {
    session_ino: u64,
    dev: u64,
    ino: u64,
    btime: Option<(i64, u32)>,
    file_type: u32,
}

struct Node {
    /// The session root inode this node belongs to (itself, for a session root).
    session_ino: u64,
    parent: u64,
    name: Vec<u8>,
    nlookup: u64,
    remote: Option<RemoteKey>,
}

/// The table; see the module docs.
pub struct InodeTable {
    nodes: HashMap<u64, Node>,
    by_remote: HashMap<RemoteKey, u64>,
    by_name: HashMap<(u64, Vec<u8>), u64>,
    session_roots: HashMap<String, u64>,
    sessions: HashMap<u64, Arc<Session>>,
    next_ino: u64,
}

impl Default for InodeTable {
    fn default() -> Self {
        InodeTable {
            nodes: HashMap::new(),
            by_remote: HashMap::new(),
            by_name: HashMap::new(),
            session_roots: HashMap::new(),
            sessions: HashMap::new(),
            next_ino: ROOT_INO + 1,
        }
    }
}

/// Why an inode cannot be resolved to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// The kernel named an inode this table does not know (or no longer knows).
    UnknownInode,
    /// The node was unlinked or replaced; it can still be used through an open file handle only.
    Detached,
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
        self.nodes.insert(ino, Node { session_ino: ino, parent: ROOT_INO, name: id.as_bytes().to_vec(), nlookup: 0, remote: None });
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
        let session = self.sessions.get(&node.session_ino).ok_or(Stale::UnknownInode)?.clone();
        let mut names: Vec<&[u8]> = Vec::new();
        let mut cur = node;
        let mut cur_ino = ino;
        while cur_ino != node.session_ino {
            if cur.parent == 0 {
                return Err(Stale::Detached);
            }
            names.push(&cur.name);
            cur_ino = cur.parent;
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
        let key = RemoteKey {
            session_ino,
            dev: attr.dev,
            ino: attr.ino,
            btime: attr.btime.map(|t| (t.secs, t.nanos)),
            file_type: attr.file_type(),
        };
        let ino = match self.by_remote.get(&key) {
            Some(&ino) => ino,
            None => {
                let ino = self.alloc();
                self.nodes.insert(ino, Node { session_ino, parent: 0, name: Vec::new(), nlookup: 0, remote: Some(key) });
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

    /// The inode number to show for a session root's attributes.
    pub fn is_session_root(&self, ino: u64) -> bool {
        self.nodes.get(&ino).is_some_and(|n| n.session_ino == ino)
    }

    /// Counts a lookup of a session root (from the mount root).
    pub fn count_lookup(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.nlookup += 1;
        }
    }

    /// The kernel dropped `n` lookups of `ino`; forgets the node when none remain.
    pub fn forget(&mut self, ino: u64, n: u64) {
        let Some(node) = self.nodes.get_mut(&ino) else { return };
        node.nlookup = node.nlookup.saturating_sub(n);
        if node.nlookup > 0 || node.session_ino == ino {
            return;
        }
        if let Some(node) = self.nodes.remove(&ino) {
            if let Some(key) = node.remote {
                self.by_remote.remove(&key);
            }
            if node.parent != 0 && self.by_name.get(&(node.parent, node.name.clone())) == Some(&ino) {
                self.by_name.remove(&(node.parent, node.name));
            }
        }
    }

    /// `parent/name` was removed (unlink, rmdir, or replaced by a rename): detach whatever node it named.
    pub fn unlink(&mut self, parent: u64, name: &[u8]) {
        if let Some(ino) = self.by_name.remove(&(parent, name.to_vec())) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.parent = 0;
            }
        }
    }

    /// `parent/name` was renamed to `new_parent/new_name` (replacing what was there), or exchanged
    /// with it when `exchange` is set.
    pub fn rename(&mut self, parent: u64, name: &[u8], new_parent: u64, new_name: &[u8], exchange: bool) {
        let moved = self.by_name.remove(&(parent, name.to_vec()));
        let displaced = self.by_name.remove(&(new_parent, new_name.to_vec()));
        if let Some(ino) = displaced {
            if exchange {
                self.link(ino, parent, name);
            } else if let Some(node) = self.nodes.get_mut(&ino) {
                node.parent = 0;
            }
        }
        if let Some(ino) = moved {
            self.link(ino, new_parent, new_name);
        }
    }

    fn link(&mut self, ino: u64, parent: u64, name: &[u8]) {
        let Some(node) = self.nodes.get_mut(&ino) else { return };
        if node.parent != 0 && (node.parent, node.name.as_slice()) != (parent, name) {
            let old = (node.parent, std::mem::take(&mut node.name));
            if self.by_name.get(&old) == Some(&ino) {
                self.by_name.remove(&old);
            }
        }
        let node = match self.nodes.get_mut(&ino) {
            Some(n) => n,
            None => return,
        };
        node.parent = parent;
        node.name = name.to_vec();
        if let Some(other) = self.by_name.insert((parent, name.to_vec()), ino) {
            // The name now leads to another node (replaced behind our back): the old one is detached.
            if other != ino {
                if let Some(old) = self.nodes.get_mut(&other) {
                    old.parent = 0;
                }
            }
        }
    }

    fn alloc(&mut self) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    /// Number of nodes (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when only session roots or nothing are known.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// Whether `attr` describes a directory.
pub fn is_dir(attr: &Attr) -> bool {
    attr.file_type() == S_IFDIR
}
