//! The reference-model test: random sequences of operations through the core, and of changes made
//! behind it in the workspace whose events arrive late, against a model of the tree (a map from
//! path to content). A simulated kernel sits between them: it caches entries, attributes, file
//! pages and listings for as long as the core's replies allow and drops them when the core
//! invalidates them, as the kernel does. So what is checked is what a program on the mount sees.
//!
//! The promise checked: once every change made behind the mount has been reported (its event
//! handled), everything read through the mount is what the workspace holds, and from then on
//! every change made through the mount reads back at once. While events are still on their way,
//! reads may be stale (they run, unchecked, filling the caches that must then be dropped).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;

use super::*;

const NAMES: [&str; 4] = ["a", "b", "c", "d"];

#[derive(Debug, Clone)]
enum Op {
    /// Through the mount: create `dir/name` exclusively and write `data` through the bridge.
    Create {
        dir: usize,
        name: usize,
        data: Vec<u8>,
    },
    /// Through the mount: open a file to write with `O_TRUNC` (direct data) and write `data`.
    Rewrite {
        file: usize,
        data: Vec<u8>,
    },
    /// Through the mount: `truncate` a file to `size` bytes.
    Truncate {
        file: usize,
        size: u8,
    },
    Mkdir {
        dir: usize,
        name: usize,
    },
    Unlink {
        file: usize,
    },
    Rmdir {
        dir: usize,
    },
    Rename {
        file: usize,
        dir: usize,
        name: usize,
    },
    /// Read-only operations through the mount (checked unless events are on their way).
    Read {
        file: usize,
    },
    Stat {
        path: usize,
    },
    List {
        dir: usize,
    },
    LookupMissing {
        dir: usize,
        name: usize,
    },
    /// Behind the mount; their events wait until `Deliver`.
    BehindWrite {
        file: usize,
        data: Vec<u8>,
    },
    BehindCreate {
        dir: usize,
        name: usize,
        data: Vec<u8>,
    },
    BehindUnlink {
        file: usize,
    },
    BehindRename {
        file: usize,
        dir: usize,
        name: usize,
    },
    BehindMkdir {
        dir: usize,
        name: usize,
    },
    /// Every event on its way arrives, then everything is compared with the model.
    Deliver,
    /// The kernel drops everything it cached and forgets every inode (memory pressure).
    ForgetAll,
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(b'a'..=b'z', 0..12)
}

fn op() -> impl Strategy<Value = Op> {
    let i = || 0usize..16;
    let n = || 0usize..NAMES.len();
    prop_oneof![
        1 => (i(), n(), data()).prop_map(|(dir, name, data)| Op::Create { dir, name, data }),
        1 => (i(), data()).prop_map(|(file, data)| Op::Rewrite { file, data }),
        1 => (i(), any::<u8>()).prop_map(|(file, size)| Op::Truncate { file, size }),
        1 => (i(), n()).prop_map(|(dir, name)| Op::Mkdir { dir, name }),
        1 => i().prop_map(|file| Op::Unlink { file }),
        1 => i().prop_map(|dir| Op::Rmdir { dir }),
        1 => (i(), i(), n()).prop_map(|(file, dir, name)| Op::Rename { file, dir, name }),
        3 => i().prop_map(|file| Op::Read { file }),
        2 => i().prop_map(|path| Op::Stat { path }),
        2 => i().prop_map(|dir| Op::List { dir }),
        1 => (i(), n()).prop_map(|(dir, name)| Op::LookupMissing { dir, name }),
        1 => (i(), data()).prop_map(|(file, data)| Op::BehindWrite { file, data }),
        1 => (i(), n(), data()).prop_map(|(dir, name, data)| Op::BehindCreate { dir, name, data }),
        1 => i().prop_map(|file| Op::BehindUnlink { file }),
        1 => (i(), i(), n()).prop_map(|(file, dir, name)| Op::BehindRename { file, dir, name }),
        1 => (i(), n()).prop_map(|(dir, name)| Op::BehindMkdir { dir, name }),
        2 => Just(Op::Deliver),
        1 => Just(Op::ForgetAll),
    ]
}

/// The model: every path below the root ("" is the root) and what it is.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Dir,
    File(Vec<u8>),
}

#[derive(Default)]
struct Model {
    tree: BTreeMap<String, Node>,
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

impl Model {
    fn dirs(&self) -> Vec<String> {
        let mut dirs = vec![String::new()];
        dirs.extend(
            self.tree
                .iter()
                .filter(|(_, n)| **n == Node::Dir)
                .map(|(p, _)| p.clone()),
        );
        dirs
    }

    fn files(&self) -> Vec<String> {
        let files = self.tree.iter().filter(|(_, n)| matches!(n, Node::File(_)));
        files.map(|(p, _)| p.clone()).collect()
    }

    fn pick(list: &[String], i: usize) -> Option<String> {
        (!list.is_empty()).then(|| list[i % list.len()].clone())
    }

    fn children(&self, dir: &str) -> BTreeSet<String> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        self.tree
            .keys()
            .filter_map(|p| p.strip_prefix(&prefix))
            .filter(|rest| !rest.is_empty() && !rest.contains('/'))
            .map(str::to_string)
            .collect()
    }

    /// Whether `to` may be the target of a rename of file `from`: missing, or a file.
    fn file_target(&self, from: &str, to: &str) -> bool {
        from != to && !matches!(self.tree.get(to), Some(Node::Dir))
    }
}

/// The kernel's caches, as the core's replies and invalidations allow them.
struct Kernel<'b> {
    b: &'b Bridge,
    /// (parent, name) → inode, or `None` for a negative entry.
    dentries: HashMap<(u64, Vec<u8>), Option<u64>>,
    attrs: HashMap<u64, FileAttr>,
    pages: HashMap<u64, Vec<u8>>,
    listings: HashMap<u64, BTreeSet<Vec<u8>>>,
    /// The lookups the kernel holds per inode (every entry it received), for `forget`.
    lookups: HashMap<u64, u64>,
}

type Res<T> = Result<T, Errno>;

impl<'b> Kernel<'b> {
    fn new(b: &'b Bridge) -> Self {
        Kernel {
            b,
            dentries: HashMap::new(),
            attrs: HashMap::new(),
            pages: HashMap::new(),
            listings: HashMap::new(),
            lookups: HashMap::new(),
        }
    }

    /// The kernel received an entry of `ino`: one more lookup it holds.
    fn counted(&mut self, ino: u64) {
        *self.lookups.entry(ino).or_default() += 1;
    }

    /// Drops every cache and forgets every inode but the session root (which the bridge's own
    /// lookup of it holds).
    fn forget_all(&mut self) {
        self.absorb();
        self.dentries.clear();
        self.attrs.clear();
        self.pages.clear();
        self.listings.clear();
        for (ino, n) in self.lookups.drain() {
            self.b.forget(ino, n);
        }
    }

    /// Applies the invalidations the core sent.
    fn absorb(&mut self) {
        for inval in self.b.invalidations() {
            match inval {
                Inval::Inode(ino) => {
                    self.attrs.remove(&ino);
                    self.pages.remove(&ino);
                    self.listings.remove(&ino);
                }
                Inval::Entry(parent, name) => {
                    self.dentries.remove(&(parent, name));
                }
            }
        }
    }

    fn keeps(&self, ttl: Duration) -> bool {
        ttl == self.b.watched_ttl
    }

    fn lookup(&mut self, parent: u64, name: &str) -> Res<u64> {
        self.absorb();
        let key = (parent, name.as_bytes().to_vec());
        if let Some(cached) = self.dentries.get(&key) {
            return cached.ok_or(Errno::ENOENT);
        }
        match self.b.lookup(parent, name) {
            Answer::Entry { attr, ttl } => {
                self.counted(attr.ino.0);
                if self.keeps(ttl) {
                    self.dentries.insert(key, Some(attr.ino.0));
                    self.attrs.insert(attr.ino.0, attr);
                }
                Ok(attr.ino.0)
            }
            Answer::Missing { ttl } => {
                if self.keeps(ttl) {
                    self.dentries.insert(key, None);
                }
                Err(Errno::ENOENT)
            }
            Answer::Err(e) => Err(e),
            other => panic!("lookup answered {other:?}"),
        }
    }

    fn resolve(&mut self, path: &str) -> Res<u64> {
        let mut ino = self.b.root;
        for name in path.split('/').filter(|n| !n.is_empty()) {
            ino = self.lookup(ino, name)?;
        }
        Ok(ino)
    }

    /// The parent's inode and the name of `path`.
    fn parent(&mut self, path: &str) -> Res<(u64, String)> {
        let (dir, name) = split(path);
        Ok((self.resolve(dir)?, name.to_string()))
    }

    fn stat(&mut self, ino: u64) -> Res<FileAttr> {
        self.absorb();
        if let Some(attr) = self.attrs.get(&ino) {
            return Ok(*attr);
        }
        match self.b.getattr(ino) {
            Answer::Attr { attr, ttl } => {
                if self.keeps(ttl) {
                    self.attrs.insert(ino, attr);
                }
                Ok(attr)
            }
            Answer::Err(e) => Err(e),
            other => panic!("getattr answered {other:?}"),
        }
    }

    fn read(&mut self, ino: u64) -> Res<Vec<u8>> {
        self.absorb();
        let (fh, flags, direct) = match self.b.open(ino, libc::O_RDONLY) {
            Answer::Opened { fh, flags, direct } => (fh, flags, direct),
            Answer::Err(e) => return Err(e),
            other => panic!("open answered {other:?}"),
        };
        let keep = flags.contains(FopenFlags::FOPEN_KEEP_CACHE);
        let cached = if keep {
            self.pages.get(&ino).cloned()
        } else {
            None
        };
        let data = match (cached, direct) {
            (_, Some(file)) => {
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut &*file, &mut data).map_err(|_| Errno::EIO)?;
                data
            }
            (Some(pages), None) => pages,
            (None, None) => {
                let mut data = Vec::new();
                loop {
                    match self.b.read(fh, data.len() as u64, 4096) {
                        Answer::Data(d) if d.is_empty() => break,
                        Answer::Data(d) => data.extend(d),
                        Answer::Err(e) => {
                            self.b.close(fh);
                            return Err(e);
                        }
                        other => panic!("read answered {other:?}"),
                    }
                }
                self.pages.insert(ino, data.clone());
                data
            }
        };
        self.b.close(fh);
        Ok(data)
    }

    fn list(&mut self, dir: u64) -> Res<BTreeSet<Vec<u8>>> {
        self.absorb();
        let (r, p) = reply();
        self.b.core.opendir(INodeNo(dir), r);
        let cache = match p.wait() {
            Answer::Opened { flags, .. } => flags.contains(FopenFlags::FOPEN_CACHE_DIR),
            Answer::Err(e) => return Err(e),
            other => panic!("opendir answered {other:?}"),
        };
        if let Some(names) = self.listings.get(&dir).filter(|_| cache) {
            return Ok(names.clone());
        }
        let mut names = BTreeSet::new();
        let mut offset = 0;
        loop {
            let (r, p) = reply_with_room(3);
            self.b.core.readdirplus(ROOT, INodeNo(dir), offset, r);
            let entries = match p.wait() {
                Answer::Entries(entries) => entries,
                Answer::Err(e) => return Err(e),
                other => panic!("readdirplus answered {other:?}"),
            };
            let Some(last) = entries.last() else { break };
            offset = last.offset;
            for e in entries {
                if e.name == b"." || e.name == b".." {
                    continue;
                }
                if let Some((attr, ttl)) = e.attr {
                    self.counted(attr.ino.0);
                    if self.keeps(ttl) {
                        self.dentries
                            .insert((dir, e.name.clone()), Some(attr.ino.0));
                        self.attrs.insert(attr.ino.0, attr);
                    }
                }
                names.insert(e.name);
            }
        }
        if cache {
            self.listings.insert(dir, names.clone());
        }
        Ok(names)
    }

    /// What the kernel drops itself when a call through it changes `dir`'s names.
    fn dir_changed(&mut self, dir: u64) {
        self.attrs.remove(&dir);
        self.listings.remove(&dir);
    }

    fn create(&mut self, path: &str, data: &[u8]) -> Res<()> {
        let (dir, name) = self.parent(path)?;
        match self.lookup(dir, &name) {
            Ok(_) => return Err(Errno::EEXIST),
            Err(e) if e != Errno::ENOENT => return Err(e),
            Err(_) => {}
        }
        let created = self.b.create(dir, &name, libc::O_RDWR | libc::O_EXCL);
        let (ino, fh) = match created {
            Answer::Created { attr, fh, .. } => (attr.ino.0, fh),
            Answer::Err(e) => return Err(e),
            other => panic!("create answered {other:?}"),
        };
        self.counted(ino);
        self.dentries.insert((dir, name.into_bytes()), Some(ino));
        self.dir_changed(dir);
        if !data.is_empty() {
            let written = self.b.write(ino, fh, 0, data);
            assert!(
                matches!(written, Answer::Written(n) if n as usize == data.len()),
                "{written:?}"
            );
        }
        self.b.close(fh);
        self.attrs.remove(&ino);
        self.pages.remove(&ino);
        Ok(())
    }

    fn rewrite(&mut self, path: &str, data: &[u8]) -> Res<()> {
        let ino = self.resolve(path)?;
        let (fh, direct) = match self.b.open(ino, libc::O_RDWR | libc::O_TRUNC) {
            Answer::Opened { fh, direct, .. } => (fh, direct),
            Answer::Err(e) => return Err(e),
            other => panic!("open answered {other:?}"),
        };
        match direct {
            Some(file) => {
                use std::os::unix::fs::FileExt;
                file.write_all_at(data, 0).map_err(|_| Errno::EIO)?;
            }
            None if !data.is_empty() => {
                let written = self.b.write(ino, fh, 0, data);
                assert!(matches!(written, Answer::Written(_)), "{written:?}");
            }
            None => {}
        }
        self.b.close(fh);
        self.attrs.remove(&ino);
        self.pages.remove(&ino);
        Ok(())
    }

    fn truncate(&mut self, path: &str, size: u64) -> Res<()> {
        let ino = self.resolve(path)?;
        match self.b.truncate(ino, size).wait() {
            Answer::Attr { attr, ttl } => {
                self.pages.remove(&ino);
                self.attrs.remove(&ino);
                if self.keeps(ttl) {
                    self.attrs.insert(ino, attr);
                }
                Ok(())
            }
            Answer::Err(e) => Err(e),
            other => panic!("setattr answered {other:?}"),
        }
    }

    fn mkdir(&mut self, path: &str) -> Res<()> {
        let (dir, name) = self.parent(path)?;
        match self.b.mkdir(dir, &name) {
            Answer::Entry { attr, .. } => {
                self.dentries
                    .insert((dir, name.into_bytes()), Some(attr.ino.0));
                self.dir_changed(dir);
                Ok(())
            }
            Answer::Err(e) => Err(e),
            other => panic!("mkdir answered {other:?}"),
        }
    }

    fn remove(&mut self, path: &str, dir_too: bool) -> Res<()> {
        let (dir, name) = self.parent(path)?;
        let ino = self.lookup(dir, &name)?;
        let answer = if dir_too {
            self.b.rmdir(dir, &name)
        } else {
            self.b.unlink(dir, &name)
        };
        match answer {
            Answer::Ok => {
                self.dentries.remove(&(dir, name.into_bytes()));
                self.dir_changed(dir);
                self.attrs.remove(&ino);
                Ok(())
            }
            Answer::Err(e) => Err(e),
            other => panic!("unlink answered {other:?}"),
        }
    }

    fn rename(&mut self, from: &str, to: &str) -> Res<()> {
        let (dir, name) = self.parent(from)?;
        let ino = self.lookup(dir, &name)?;
        let (to_dir, to_name) = self.parent(to)?;
        let replaced = self.lookup(to_dir, &to_name).ok();
        match self.b.rename(dir, &name, to_dir, &to_name) {
            Answer::Ok => {
                self.dentries.remove(&(dir, name.into_bytes()));
                self.dentries
                    .insert((to_dir, to_name.into_bytes()), Some(ino));
                self.dir_changed(dir);
                self.dir_changed(to_dir);
                self.attrs.remove(&ino);
                if let Some(old) = replaced {
                    self.attrs.remove(&old);
                }
                Ok(())
            }
            Answer::Err(e) => Err(e),
            other => panic!("rename answered {other:?}"),
        }
    }
}

/// The run: the bridge, its simulated kernel, the model, and the events on their way.
struct Run<'b> {
    k: Kernel<'b>,
    model: Model,
    /// Changes whose events have not arrived: (what changed, whether it was made behind the mount).
    on_the_way: Vec<(Event, bool)>,
}

/// What the daemon's watcher reports, turned into a [`Change`] when it is sent (as the daemon
/// looks up an entry's name when it sends the batch).
#[derive(Debug, Clone)]
enum Event {
    Data(String),
    Entry(String),
}

impl Run<'_> {
    fn quiet(&self) -> bool {
        self.on_the_way.iter().all(|(_, behind)| !behind)
    }

    fn echo(&mut self, events: impl IntoIterator<Item = Event>, behind: bool) {
        self.on_the_way
            .extend(events.into_iter().map(|e| (e, behind)));
    }

    fn deliver(&mut self) {
        if self.on_the_way.is_empty() {
            return;
        }
        let daemon = &self.k.b.daemon;
        let changes = self
            .on_the_way
            .drain(..)
            .map(|(event, _)| match event {
                Event::Data(path) => Daemon::data_change(&path),
                Event::Entry(path) => daemon.entry_change(&path),
            })
            .collect();
        self.k.b.changes(changes);
    }

    /// Everything read through the mount is what the model holds.
    fn sweep(&mut self) {
        for dir in self.model.dirs() {
            let ino = self
                .k
                .resolve(&dir)
                .unwrap_or_else(|e| panic!("{dir:?}: {e:?}"));
            let names = self
                .k
                .list(ino)
                .unwrap_or_else(|e| panic!("listing {dir:?}: {e:?}"));
            let names: BTreeSet<String> = names
                .into_iter()
                .map(|n| String::from_utf8(n).unwrap())
                .collect();
            assert_eq!(names, self.model.children(&dir), "the listing of {dir:?}");
            for name in NAMES {
                let path = join(&dir, name);
                if !self.model.tree.contains_key(&path) {
                    assert_eq!(
                        self.k.resolve(&path),
                        Err(Errno::ENOENT),
                        "{path:?} is missing"
                    );
                }
            }
        }
        for (path, node) in self.model.tree.clone() {
            self.check(&path, &node);
        }
    }

    fn check(&mut self, path: &str, node: &Node) {
        let ino = self
            .k
            .resolve(path)
            .unwrap_or_else(|e| panic!("{path:?}: {e:?}"));
        let attr = self
            .k
            .stat(ino)
            .unwrap_or_else(|e| panic!("stat {path:?}: {e:?}"));
        match node {
            Node::Dir => assert_eq!(attr.kind, FileType::Directory, "{path:?}"),
            Node::File(data) => {
                assert_eq!(attr.kind, FileType::RegularFile, "{path:?}");
                assert_eq!(attr.size, data.len() as u64, "the size of {path:?}");
                let read = self
                    .k
                    .read(ino)
                    .unwrap_or_else(|e| panic!("read {path:?}: {e:?}"));
                assert_eq!(&read, data, "the content of {path:?}");
            }
        }
    }

    fn step(&mut self, op: &Op) {
        let (dirs, files) = (self.model.dirs(), self.model.files());
        let all: Vec<String> = self.model.tree.keys().cloned().collect();
        let quiet = self.quiet();
        let dir_of = |i: usize| Model::pick(&dirs, i).unwrap_or_default();
        match op.clone() {
            Op::Create { dir, name, data } if quiet => {
                let path = join(&dir_of(dir), NAMES[name]);
                let exists = self.model.tree.contains_key(&path);
                match self.k.create(&path, &data) {
                    Ok(()) => {
                        assert!(!exists, "created {path:?}, which exists");
                        self.model.tree.insert(path.clone(), Node::File(data));
                        self.echo([Event::Entry(path.clone()), Event::Data(path)], false);
                    }
                    Err(e) => assert!(exists && e == Errno::EEXIST, "create {path:?}: {e:?}"),
                }
            }
            Op::Rewrite { file, data } if quiet => {
                let Some(path) = Model::pick(&files, file) else {
                    return;
                };
                self.k
                    .rewrite(&path, &data)
                    .unwrap_or_else(|e| panic!("rewrite {path:?}: {e:?}"));
                self.model.tree.insert(path.clone(), Node::File(data));
                self.echo([Event::Data(path)], false);
            }
            Op::Truncate { file, size } if quiet => {
                let Some(path) = Model::pick(&files, file) else {
                    return;
                };
                let size = usize::from(size);
                self.k
                    .truncate(&path, size as u64)
                    .unwrap_or_else(|e| panic!("truncate {path:?}: {e:?}"));
                if let Some(Node::File(data)) = self.model.tree.get_mut(&path) {
                    data.resize(size, 0);
                }
                self.echo([Event::Data(path)], false);
            }
            Op::Mkdir { dir, name } if quiet => {
                let path = join(&dir_of(dir), NAMES[name]);
                let exists = self.model.tree.contains_key(&path);
                match self.k.mkdir(&path) {
                    Ok(()) => {
                        assert!(!exists, "made {path:?}, which exists");
                        self.model.tree.insert(path.clone(), Node::Dir);
                        self.echo([Event::Entry(path)], false);
                    }
                    Err(e) => assert!(exists && e == Errno::EEXIST, "mkdir {path:?}: {e:?}"),
                }
            }
            Op::Unlink { file } if quiet => {
                let Some(path) = Model::pick(&files, file) else {
                    return;
                };
                self.k
                    .remove(&path, false)
                    .unwrap_or_else(|e| panic!("unlink {path:?}: {e:?}"));
                self.model.tree.remove(&path);
                self.echo([Event::Entry(path)], false);
            }
            Op::Rmdir { dir } if quiet => {
                let Some(path) = Model::pick(&dirs[1..], dir) else {
                    return;
                };
                let empty = self.model.children(&path).is_empty();
                match self.k.remove(&path, true) {
                    Ok(()) => {
                        assert!(empty, "removed {path:?}, which is not empty");
                        self.model.tree.remove(&path);
                        self.echo([Event::Entry(path)], false);
                    }
                    Err(e) => assert!(!empty && e == Errno::ENOTEMPTY, "rmdir {path:?}: {e:?}"),
                }
            }
            Op::Rename { file, dir, name } if quiet => {
                let Some(from) = Model::pick(&files, file) else {
                    return;
                };
                let to = join(&dir_of(dir), NAMES[name]);
                if !self.model.file_target(&from, &to) {
                    return;
                }
                self.k
                    .rename(&from, &to)
                    .unwrap_or_else(|e| panic!("rename {from:?}: {e:?}"));
                let node = self.model.tree.remove(&from).expect("in the model");
                self.model.tree.insert(to.clone(), node);
                self.echo([Event::Entry(from), Event::Entry(to)], false);
            }
            Op::Read { file } => {
                let Some(path) = Model::pick(&files, file) else {
                    return;
                };
                let read = self.k.resolve(&path).and_then(|ino| self.k.read(ino));
                if quiet {
                    let Some(Node::File(data)) = self.model.tree.get(&path) else {
                        unreachable!()
                    };
                    assert_eq!(read.as_ref(), Ok(data), "reading {path:?}");
                }
            }
            Op::Stat { path } => {
                let Some(path) = Model::pick(&all, path) else {
                    return;
                };
                if quiet {
                    let node = self.model.tree[&path].clone();
                    self.check(&path, &node);
                } else {
                    let _ = self.k.resolve(&path).and_then(|ino| self.k.stat(ino));
                }
            }
            Op::List { dir } => {
                let path = dir_of(dir);
                let names = self.k.resolve(&path).and_then(|ino| self.k.list(ino));
                if quiet {
                    let names: BTreeSet<String> = names
                        .unwrap_or_else(|e| panic!("listing {path:?}: {e:?}"))
                        .into_iter()
                        .map(|n| String::from_utf8(n).unwrap())
                        .collect();
                    assert_eq!(names, self.model.children(&path), "the listing of {path:?}");
                }
            }
            Op::LookupMissing { dir, name } => {
                let path = join(&dir_of(dir), NAMES[name]);
                let found = self.k.resolve(&path);
                if quiet && !self.model.tree.contains_key(&path) {
                    assert_eq!(found, Err(Errno::ENOENT), "{path:?} is missing");
                }
            }
            Op::BehindWrite { file, data } => {
                let Some(path) = Model::pick(&files, file) else {
                    return;
                };
                std::fs::write(self.k.b.daemon.path(&path), &data).unwrap();
                self.model.tree.insert(path.clone(), Node::File(data));
                self.echo([Event::Data(path)], true);
            }
            Op::BehindCreate { dir, name, data } => {
                let path = join(&dir_of(dir), NAMES[name]);
                if self.model.tree.contains_key(&path) {
                    return;
                }
                std::fs::write(self.k.b.daemon.path(&path), &data).unwrap();
                self.model.tree.insert(path.clone(), Node::File(data));
                self.echo([Event::Entry(path.clone()), Event::Data(path)], true);
            }
            Op::BehindUnlink { file } => {
                let Some(path) = Model::pick(&files, file) else {
                    return;
                };
                std::fs::remove_file(self.k.b.daemon.path(&path)).unwrap();
                self.model.tree.remove(&path);
                self.echo([Event::Entry(path)], true);
            }
            Op::BehindRename { file, dir, name } => {
                let Some(from) = Model::pick(&files, file) else {
                    return;
                };
                let to = join(&dir_of(dir), NAMES[name]);
                if !self.model.file_target(&from, &to) {
                    return;
                }
                let daemon = &self.k.b.daemon;
                std::fs::rename(daemon.path(&from), daemon.path(&to)).unwrap();
                let node = self.model.tree.remove(&from).expect("in the model");
                self.model.tree.insert(to.clone(), node);
                self.echo([Event::Entry(from), Event::Entry(to)], true);
            }
            Op::BehindMkdir { dir, name } => {
                let path = join(&dir_of(dir), NAMES[name]);
                if self.model.tree.contains_key(&path) {
                    return;
                }
                std::fs::create_dir(self.k.b.daemon.path(&path)).unwrap();
                self.model.tree.insert(path.clone(), Node::Dir);
                self.echo([Event::Entry(path)], true);
            }
            Op::Deliver => {
                self.deliver();
                self.sweep();
            }
            Op::ForgetAll => self.k.forget_all(),
            // A change through the mount while events of changes behind it are on their way: the
            // mount may still hold the names or files those changes replaced (checked once they
            // arrive), so which node it changes is not the model's to say.
            _ => {}
        }
    }
}

fn cases() -> u32 {
    std::env::var("SESSIONFS_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

fn run(ops: &[Op]) {
    let b = Bridge::new();
    let mut run = Run {
        k: Kernel::new(&b),
        model: Model::default(),
        on_the_way: Vec::new(),
    };
    for op in ops {
        run.step(op);
    }
    run.deliver();
    run.sweep();
}

// Sequences the model found, kept as regression cases.

/// A listing is the first to show a file's new content (it was renamed behind the mount, then
/// written, and the listing bound its new name before the events came): the file's page stamp
/// goes, or the next open keeps the kernel's old pages (`Inner::content_seen`).
#[test]
fn a_listing_that_shows_new_content_drops_the_kept_pages() {
    use Op::*;
    run(&[
        Create {
            dir: 0,
            name: 0,
            data: vec![],
        },
        Rename {
            file: 0,
            dir: 0,
            name: 1,
        },
        Read { file: 0 },
        BehindRename {
            file: 0,
            dir: 0,
            name: 0,
        },
        BehindWrite {
            file: 0,
            data: b"a".to_vec(),
        },
        BehindMkdir { dir: 0, name: 1 },
        BehindRename {
            file: 0,
            dir: 0,
            name: 2,
        },
        List { dir: 6 },
    ]);
}

/// A directory made behind the mount and looked up before its event came: the kernel's entry is
/// right, but its cached listing of the parent lacks the name and is invalidated
/// (`Inner::listed_dirs`).
#[test]
fn a_name_bound_by_a_lookup_before_its_event_still_reaches_the_parents_listing() {
    use Op::*;
    run(&[
        Create {
            dir: 0,
            name: 0,
            data: vec![],
        },
        Deliver,
        Mkdir { dir: 0, name: 2 },
        Rmdir { dir: 0 },
        List { dir: 0 },
        Rewrite {
            file: 0,
            data: vec![],
        },
        BehindMkdir { dir: 0, name: 2 },
        List { dir: 5 },
    ]);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_mount_agrees_with_the_model_once_every_event_arrived(
        ops in prop::collection::vec(op(), 1..60)
    ) {
        let b = Bridge::new();
        let mut run = Run { k: Kernel::new(&b), model: Model::default(), on_the_way: Vec::new() };
        for op in &ops {
            run.step(op);
        }
        run.deliver();
        run.sweep();
    }
}
