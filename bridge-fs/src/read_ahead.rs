//! Directory read-ahead: listings fetched before the kernel asks for them, during a tree walk.
//!
//! `find`, `rg` and `git status` list every directory of a tree, one after the other, and each
//! listing is a round trip. When a directory is listed from its start and its parent was listed
//! moments before (a walk), or its own listing came from read-ahead, the bridge fetches the first
//! pages of its subdirectories, and once per parent those of its siblings, concurrently; the kernel's
//! reads of them are then answered from memory. A plain `ls` of one directory fetches nothing ahead.
//!
//! This module is the bookkeeping only (which directories to fetch, where fetched pages wait);
//! `core/dirs.rs` fetches and checks freshness. Invariants:
//! - **A waiting page is used at most once, and only at the session invalidation generation it was
//!   fetched at** (checked by `core/dirs.rs`): any change reported in the session voids it.
//! - **A change made through the mount voids everything** ([`ReadAhead::changed`]): waiting pages are
//!   dropped and fetches under way are discarded when they return (their epoch is old).
//! - **A listing is fetched once**: a kernel listing that finds its directory's fetch on its way
//!   waits for it (bounded by that request's own timeout) and takes its page; one that finds the fetch
//!   still queued for a slot takes it over ([`ReadAhead::claim`]) and the queued fetch is dropped.
//! - **Memory is bounded**: at most [`ENTRIES_MAX`] entries wait, [`LISTED_DIRS_MAX`] listed directories
//!   are remembered, and one listing starts at most [`BATCH_MAX`] fetches.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use sessionfs_proto::WirePath;
use sessionfs_registry::SessionId;

/// A directory of a session.
pub type DirKey = (SessionId, WirePath);

/// A directory listed within this long after its parent is taken for a step of a walk.
pub const WALK_WINDOW: Duration = Duration::from_secs(2);
/// At most this many directory entries wait in fetched pages.
pub const ENTRIES_MAX: usize = 65_536;
/// At most this many listed directories are remembered for walk detection.
pub const LISTED_DIRS_MAX: usize = 4_096;
/// At most this many directories are fetched ahead for one listing.
pub const BATCH_MAX: usize = 256;

/// A directory listed from its start: when, its subdirectories, and whether they were fetched ahead.
struct Listed {
    at: Instant,
    subdirs: Vec<WirePath>,
    expanded: bool,
}

/// A fetch of a directory's first page that has not ended.
enum InFlight {
    /// Waiting for a fetch slot.
    Queued,
    /// Sent; the receiver sees its sender dropped once the fetch has ended (page kept or not).
    Sent(watch::Receiver<()>),
}

/// What a kernel listing that found no waiting page is to do ([`ReadAhead::claim`]).
pub enum Claim {
    /// Fetch the page itself: none was on its way (a queued one is no longer).
    Fetch,
    /// Wait for the fetch on its way to end, then look for its page again.
    Wait(watch::Receiver<()>),
}

/// The read-ahead state of the mount; `P` is the page type (`core`'s directory page).
pub struct ReadAhead<P> {
    /// Fetched pages and their entry counts.
    pages: HashMap<DirKey, (P, usize)>,
    entries: usize,
    in_flight: HashMap<DirKey, InFlight>,
    listed: HashMap<DirKey, Listed>,
    /// Bumped by every change made through the mount.
    epoch: u64,
}

impl<P> Default for ReadAhead<P> {
    fn default() -> Self {
        ReadAhead {
            pages: HashMap::new(),
            entries: 0,
            in_flight: HashMap::new(),
            listed: HashMap::new(),
            epoch: 0,
        }
    }
}

impl<P> ReadAhead<P> {
    /// Directory `dir` of `session` was listed from its start and has the subdirectories `subdirs`;
    /// `ahead`: its listing came from read-ahead. Returns the directories to fetch now (they are
    /// marked in flight) and the epoch to hand back with their pages to [`Self::fetched`].
    pub fn listed(
        &mut self,
        session: &SessionId,
        dir: &WirePath,
        subdirs: Vec<WirePath>,
        ahead: bool,
        now: Instant,
    ) -> (Vec<WirePath>, u64) {
        if self.listed.len() >= LISTED_DIRS_MAX {
            self.listed
                .retain(|_, l| now.duration_since(l.at) < WALK_WINDOW);
            if self.listed.len() >= LISTED_DIRS_MAX {
                self.listed.clear();
            }
        }
        let parent = dir.parent().map(|p| (session.clone(), p));
        let recent = |l: &Listed| now.duration_since(l.at) < WALK_WINDOW;
        let walking = ahead
            || parent
                .as_ref()
                .and_then(|p| self.listed.get(p))
                .is_some_and(recent);
        let mut wanted = Vec::new();
        if walking {
            wanted.extend(subdirs.iter().cloned());
            // The first step into a directory: its other subdirectories will be walked too.
            if let Some(siblings) = parent.and_then(|p| self.listed.get_mut(&p)) {
                if !siblings.expanded {
                    siblings.expanded = true;
                    wanted.extend(siblings.subdirs.iter().filter(|s| *s != dir).cloned());
                }
            }
        }
        let key = (session.clone(), dir.clone());
        self.listed.insert(
            key,
            Listed {
                at: now,
                subdirs,
                expanded: walking,
            },
        );
        let mut start = Vec::new();
        for path in wanted {
            if start.len() >= BATCH_MAX {
                break;
            }
            let key = (session.clone(), path);
            if !self.pages.contains_key(&key) && !self.in_flight.contains_key(&key) {
                self.in_flight.insert(key.clone(), InFlight::Queued);
                start.push(key.1);
            }
        }
        (start, self.epoch)
    }

    /// The queued fetch of `key` got a slot and is about to be sent; `done` sees the fetch's end.
    /// False if a kernel listing took it over meanwhile: then it is not sent.
    pub fn sending(&mut self, key: &DirKey, done: watch::Receiver<()>) -> bool {
        match self.in_flight.get_mut(key) {
            Some(state @ InFlight::Queued) => {
                *state = InFlight::Sent(done);
                true
            }
            _ => false,
        }
    }

    /// A kernel listing of `key` from its start found no waiting page: it waits for a fetch on
    /// its way, and takes over one still queued (which is then not sent).
    pub fn claim(&mut self, key: &DirKey) -> Claim {
        match self.in_flight.get(key) {
            Some(InFlight::Sent(done)) => Claim::Wait(done.clone()),
            Some(InFlight::Queued) => {
                self.in_flight.remove(key);
                Claim::Fetch
            }
            None => Claim::Fetch,
        }
    }

    /// A fetch started at `epoch` ended with `page` (and its entry count), or failed (`None`).
    /// Returns whether the page was kept.
    pub fn fetched(&mut self, key: DirKey, epoch: u64, page: Option<(P, usize)>) -> bool {
        self.in_flight.remove(&key);
        let Some((page, len)) = page else {
            return false;
        };
        if epoch != self.epoch || len > ENTRIES_MAX {
            return false;
        }
        if self.entries + len > ENTRIES_MAX {
            // Nobody read what waits (or the walk moved on): start over.
            self.pages.clear();
            self.entries = 0;
        }
        self.entries += len;
        if let Some((_, old)) = self.pages.insert(key, (page, len)) {
            self.entries -= old;
        }
        true
    }

    /// Takes the waiting page of `key`, if any.
    pub fn take(&mut self, key: &DirKey) -> Option<P> {
        let (page, len) = self.pages.remove(key)?;
        self.entries -= len;
        Some(page)
    }

    /// A change is being made through the mount: nothing fetched before it may be used.
    pub fn changed(&mut self) {
        self.epoch += 1;
        self.pages.clear();
        self.entries = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> WirePath {
        WirePath::new(s.as_bytes().to_vec()).unwrap()
    }

    fn id() -> SessionId {
        SessionId::new("s").unwrap()
    }

    #[test]
    fn a_single_listing_fetches_nothing() {
        let mut ra = ReadAhead::<()>::default();
        let (start, _) = ra.listed(&id(), &p(""), vec![p("a"), p("b")], false, Instant::now());
        assert!(start.is_empty());
    }

    #[test]
    fn a_step_into_a_listed_directory_fetches_its_subdirectories_and_siblings_once() {
        let mut ra = ReadAhead::<()>::default();
        let now = Instant::now();
        ra.listed(&id(), &p(""), vec![p("a"), p("b"), p("c")], false, now);
        let (start, _) = ra.listed(&id(), &p("a"), vec![p("a/x")], false, now);
        assert_eq!(start, vec![p("a/x"), p("b"), p("c")]);
        // Siblings are fetched once per parent; what is in flight is not fetched again.
        let (start, _) = ra.listed(&id(), &p("b"), vec![p("a/x"), p("b/y")], false, now);
        assert_eq!(start, vec![p("b/y")]);
    }

    #[test]
    fn a_listing_long_after_its_parents_is_not_a_walk() {
        let mut ra = ReadAhead::<()>::default();
        let then = Instant::now();
        ra.listed(&id(), &p(""), vec![p("a")], false, then);
        let later = then + WALK_WINDOW + Duration::from_millis(1);
        let (start, _) = ra.listed(&id(), &p("a"), vec![p("a/x")], false, later);
        assert!(start.is_empty());
        // A listing that came from read-ahead continues the walk by itself.
        let (start, _) = ra.listed(&id(), &p("a/x"), vec![p("a/x/y")], true, later);
        assert_eq!(start, vec![p("a/x/y")]);
    }

    #[test]
    fn pages_are_taken_once_and_changes_void_them() {
        let mut ra = ReadAhead::<u32>::default();
        let now = Instant::now();
        ra.listed(&id(), &p(""), vec![p("a"), p("b")], false, now);
        let (start, epoch) = ra.listed(&id(), &p("a"), vec![], false, now);
        assert_eq!(start, vec![p("b")]);
        assert!(ra.fetched((id(), p("b")), epoch, Some((7, 3))));
        assert_eq!(ra.take(&(id(), p("b"))), Some(7));
        assert_eq!(ra.take(&(id(), p("b"))), None);

        let (start, epoch) = ra.listed(&id(), &p("a"), vec![p("a/x")], true, now);
        assert_eq!(start, vec![p("a/x")]);
        ra.changed();
        assert!(!ra.fetched((id(), p("a/x")), epoch, Some((8, 1))));
        assert_eq!(ra.take(&(id(), p("a/x"))), None);
    }

    #[test]
    fn a_listing_waits_for_a_fetch_on_its_way_and_takes_over_a_queued_one() {
        let mut ra = ReadAhead::<u32>::default();
        let now = Instant::now();
        ra.listed(&id(), &p(""), vec![p("a"), p("b")], false, now);
        let (start, epoch) = ra.listed(&id(), &p("a"), vec![], false, now);
        assert_eq!(start, vec![p("b")]);
        let key = (id(), p("b"));
        // Queued: the kernel's listing fetches it itself, and the queued fetch is not sent.
        assert!(matches!(ra.claim(&key), Claim::Fetch));
        let (done, rx) = watch::channel(());
        assert!(!ra.sending(&key, rx));
        drop(done);
        // On its way: the listing waits for its end, then finds the page.
        let (start, _) = ra.listed(&id(), &p("b"), vec![p("b/y")], true, now);
        assert_eq!(start, vec![p("b/y")]);
        let key = (id(), p("b/y"));
        let (done, rx) = watch::channel(());
        assert!(ra.sending(&key, rx));
        let Claim::Wait(waiter) = ra.claim(&key) else {
            panic!("a fetch on its way is waited for");
        };
        assert!(ra.fetched(key.clone(), epoch, Some((9, 1))));
        drop(done);
        assert!(
            waiter.has_changed().is_err(),
            "the waiter sees the fetch's end"
        );
        assert_eq!(ra.take(&key), Some(9));
        assert!(matches!(ra.claim(&key), Claim::Fetch));
    }

    #[test]
    fn waiting_entries_are_bounded() {
        let mut ra = ReadAhead::<u32>::default();
        let epoch = 0;
        assert!(ra.fetched((id(), p("a")), epoch, Some((1, ENTRIES_MAX - 1))));
        assert!(ra.fetched((id(), p("b")), epoch, Some((2, 2))));
        assert_eq!(ra.take(&(id(), p("a"))), None, "dropped to make room");
        assert_eq!(ra.take(&(id(), p("b"))), Some(2));
        assert!(!ra.fetched((id(), p("c")), epoch, Some((3, ENTRIES_MAX + 1))));
    }
}
