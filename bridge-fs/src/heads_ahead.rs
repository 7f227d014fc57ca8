//! Small files fetched ahead: a walk that reads the files it finds (`rg`, `grep -r`) gets each
//! directory's small files whole in one round trip, not one `OPEN` round trip per file.
//!
//! When a read-only open goes to the daemon for the second file of a directory within
//! [`WALK_WINDOW`], or for the first file of a directory while such fetches are under way (the walk
//! reads), the bridge asks the daemon for the directory's small files (`Request::ReadHeads`). Later
//! read-only opens of those files are answered from them without a round trip, exactly as if the
//! open had brought the file back with its head; an open that finds its directory's fetch under way
//! waits for it. While such fetches follow each other, a directory whose listing read-ahead fetched
//! (`read_ahead.rs`) gets its small files fetched right after, before the walk gets there. A walk
//! that opens one file per directory (`git status` reading `.gitignore`s) fetches nothing ahead.
//!
//! This module is the bookkeeping only (which directories to fetch, where fetched files wait);
//! `core/files.rs` fetches and checks freshness. Invariants:
//! - **A waiting file is used at most once, only at the session invalidation generation it was
//!   fetched at, and only if nothing changed through the mount since its fetch began** (both checked
//!   by `core/files.rs`): a change reported in the session or made through the mount voids it.
//! - **A change made through the mount drops every waiting file** ([`HeadsAhead::changed`]).
//! - **A directory is fetched at most once per walk**: it is remembered for [`WALK_WINDOW`] after.
//! - **Memory is bounded**: at most [`BYTES_MAX`] bytes wait, and files wait at most
//!   [`WALK_WINDOW`]. Which directories to fetch is [`crate::walk`]'s business.

use std::collections::HashMap;
use std::time::Instant;

use sessionfs_proto::{Attr, WirePath};
use sessionfs_registry::SessionId;

use crate::read_ahead::DirKey;
use crate::walk::Walk;
pub use crate::walk::WALK_WINDOW;

/// A file of a session.
pub type FileKey = (SessionId, WirePath);

/// At most this many bytes of fetched files wait for their opens.
pub const BYTES_MAX: usize = 16 * 1024 * 1024;

/// A file fetched whole, waiting for its open.
pub struct Fetched {
    pub attr: Attr,
    pub data: Vec<u8>,
    /// The session's invalidation generation when the fetch was sent.
    pub since: u64,
    /// The attribute epoch (changes through the mount) when the fetch was sent.
    pub epoch: u64,
    at: Instant,
}

/// What a read-only open finds (see [`HeadsAhead::find`]).
pub enum Found<W> {
    /// The file, fetched whole.
    File(Fetched),
    /// Its directory's fetch is under way: wait on `W`, then look again.
    Wait(W),
    Nothing,
}

/// The small-file read-ahead state of the mount; `W` is how an open waits for a fetch under way.
pub struct HeadsAhead<W> {
    walk: Walk<W>,
    files: HashMap<FileKey, Fetched>,
    bytes: usize,
    /// Bumped by every change made through the mount.
    epoch: u64,
}

impl<W> Default for HeadsAhead<W> {
    fn default() -> Self {
        HeadsAhead {
            walk: Walk::default(),
            files: HashMap::new(),
            bytes: 0,
            epoch: 0,
        }
    }
}

impl<W: Clone> HeadsAhead<W> {
    /// A read-only open of `file` in `dir` that the kernel could not answer from its own cache:
    /// the fetched file if one waits (taken), or the fetch to wait for.
    pub fn find(&mut self, file: &FileKey, dir: &DirKey, now: Instant) -> Found<W> {
        if let Some(fetched) = self.files.remove(file) {
            self.bytes -= fetched.data.len();
            if now.duration_since(fetched.at) < WALK_WINDOW {
                return Found::File(fetched);
            }
        }
        match self.walk.waiter(dir) {
            Some(waiter) => Found::Wait(waiter),
            None => Found::Nothing,
        }
    }

    /// A read-only open in `dir` went to the daemon at attribute epoch `attr_epoch`. Returns whether
    /// to fetch the directory's small files now; if so, `waiter` lets later opens wait for the fetch,
    /// and the epoch to hand back to [`Self::fetched`] is returned with it.
    pub fn opened(
        &mut self,
        dir: &DirKey,
        attr_epoch: u64,
        waiter: W,
        now: Instant,
    ) -> Option<u64> {
        self.expire(now);
        if self.bytes >= BYTES_MAX || !self.walk.touched(dir, attr_epoch, waiter, now) {
            return None;
        }
        Some(self.epoch)
    }

    /// The listing of `dir` was fetched ahead of a walk: whether to fetch its small files too (the
    /// walk reads what it lists), with the epoch to hand back to [`Self::fetched`].
    pub fn ahead(&mut self, dir: &DirKey, waiter: W, now: Instant) -> Option<u64> {
        self.expire(now);
        if self.bytes >= BYTES_MAX || !self.walk.ahead(dir, waiter, now) {
            return None;
        }
        Some(self.epoch)
    }

    /// The fetch of `dir` that [`Self::opened`] or [`Self::ahead`] started at `epoch` returned `files` (empty if it
    /// failed). They are kept unless a change through the mount came in between, or they would
    /// exceed [`BYTES_MAX`].
    pub fn fetched(
        &mut self,
        dir: &DirKey,
        epoch: u64,
        files: Vec<(WirePath, Fetched)>,
        now: Instant,
    ) {
        self.walk.fetched(dir, now);
        if epoch != self.epoch {
            return;
        }
        self.expire(now);
        for (path, mut fetched) in files {
            if self.bytes + fetched.data.len() > BYTES_MAX {
                break;
            }
            fetched.at = now;
            self.bytes += fetched.data.len();
            if let Some(old) = self.files.insert((dir.0.clone(), path), fetched) {
                self.bytes -= old.data.len();
            }
        }
    }

    /// Drops the files that waited too long for their opens.
    fn expire(&mut self, now: Instant) {
        if self.files.is_empty() {
            return;
        }
        self.files
            .retain(|_, f| now.duration_since(f.at) < WALK_WINDOW);
        self.bytes = self.files.values().map(|f| f.data.len()).sum();
    }

    /// A change made through the mount: every waiting file is dropped, and fetches under way are
    /// discarded when they return.
    pub fn changed(&mut self) {
        self.epoch += 1;
        self.files.clear();
        self.bytes = 0;
    }

    /// Bytes of fetched files waiting for their opens.
    #[cfg(test)]
    pub fn waiting_bytes(&self) -> usize {
        self.bytes
    }
}

impl Fetched {
    /// A file fetched by a request sent at invalidation generation `since` and attribute epoch
    /// `epoch`.
    pub fn new(attr: Attr, data: Vec<u8>, since: u64, epoch: u64, now: Instant) -> Self {
        Fetched {
            attr,
            data,
            since,
            epoch,
            at: now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid() -> SessionId {
        SessionId::new("s1").expect("valid id")
    }

    fn wp(s: &str) -> WirePath {
        WirePath::new(s.as_bytes().to_vec()).expect("valid path")
    }

    fn file(data: &[u8], now: Instant) -> Fetched {
        Fetched::new(Attr::default(), data.to_vec(), 0, 0, now)
    }

    #[test]
    fn a_second_open_in_a_directory_fetches_it_and_later_opens_take_its_files_once() {
        let mut h: HeadsAhead<u8> = HeadsAhead::default();
        let (dir, t) = ((sid(), wp("src")), Instant::now());
        assert_eq!(h.opened(&dir, 0, 7, t), None, "one open is no walk");
        let epoch = h.opened(&dir, 0, 7, t).expect("the second open fetches");
        assert!(matches!(
            h.find(&(sid(), wp("src/c")), &dir, t),
            Found::Wait(7)
        ));
        h.fetched(&dir, epoch, vec![(wp("src/c"), file(b"cc", t))], t);
        let Found::File(f) = h.find(&(sid(), wp("src/c")), &dir, t) else {
            panic!("the fetched file waits for its open");
        };
        assert_eq!(f.data, b"cc");
        assert!(matches!(
            h.find(&(sid(), wp("src/c")), &dir, t),
            Found::Nothing
        ));
        assert_eq!(
            h.opened(&dir, 0, 7, t),
            None,
            "a directory is fetched once per walk"
        );
        assert_eq!(h.waiting_bytes(), 0);
    }

    #[test]
    fn while_fetches_follow_each_other_the_first_open_of_a_directory_fetches_it() {
        let mut h: HeadsAhead<u8> = HeadsAhead::default();
        let t = Instant::now();
        let a = (sid(), wp("a"));
        h.opened(&a, 0, 0, t);
        assert!(h.opened(&a, 0, 0, t).is_some());
        assert!(h.opened(&(sid(), wp("b")), 0, 0, t).is_some());
        let later = t + WALK_WINDOW;
        assert!(
            h.opened(&(sid(), wp("c")), 0, 0, later).is_none(),
            "a walk ends when no fetch started for a while"
        );
    }

    #[test]
    fn a_change_through_the_mount_voids_waiting_files_and_fetches_under_way() {
        let mut h: HeadsAhead<u8> = HeadsAhead::default();
        let (dir, t) = ((sid(), wp("d")), Instant::now());
        h.opened(&dir, 0, 0, t);
        let epoch = h.opened(&dir, 0, 0, t).expect("fetch");
        h.changed();
        h.fetched(&dir, epoch, vec![(wp("d/x"), file(b"x", t))], t);
        assert!(matches!(
            h.find(&(sid(), wp("d/x")), &dir, t),
            Found::Nothing
        ));
        let other = (sid(), wp("e"));
        let epoch = h
            .opened(&other, 0, 0, t)
            .expect("the walk reads: fetched at the first open");
        h.fetched(&other, epoch, vec![(wp("e/y"), file(b"y", t))], t);
        h.changed();
        assert!(matches!(
            h.find(&(sid(), wp("e/y")), &other, t),
            Found::Nothing
        ));
    }

    #[test]
    fn waiting_files_expire_and_their_bytes_are_bounded() {
        let mut h: HeadsAhead<u8> = HeadsAhead::default();
        let (dir, t) = ((sid(), wp("big")), Instant::now());
        h.opened(&dir, 0, 0, t);
        let epoch = h.opened(&dir, 0, 0, t).expect("fetch");
        let chunk = vec![0u8; BYTES_MAX / 2 + 1];
        let files = (0..3)
            .map(|i| (wp(&format!("big/{i}")), file(&chunk, t)))
            .collect();
        h.fetched(&dir, epoch, files, t);
        assert!(h.waiting_bytes() <= BYTES_MAX);
        assert!(matches!(
            h.find(&(sid(), wp("big/0")), &dir, t),
            Found::File(_)
        ));
        assert!(
            matches!(h.find(&(sid(), wp("big/1")), &dir, t), Found::Nothing),
            "what exceeds the bound is not kept"
        );
        let next = (sid(), wp("next"));
        let epoch = h
            .opened(&next, 0, 0, t)
            .expect("the walk reads: fetched at the first open");
        h.fetched(&next, epoch, vec![(wp("next/a"), file(b"a", t))], t);
        let late = t + WALK_WINDOW;
        assert!(
            h.opened(&(sid(), wp("other")), 0, 0, late).is_none(),
            "a new walk starts with a second open"
        );
        assert_eq!(h.waiting_bytes(), 0, "the next open drops what expired");
        assert!(matches!(
            h.find(&(sid(), wp("next/a")), &next, late),
            Found::Nothing
        ));
        assert_eq!(h.waiting_bytes(), 0);
    }
}
