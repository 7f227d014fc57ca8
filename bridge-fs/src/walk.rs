//! Walk detection for fetches made ahead of the kernel: which directory to fetch whole, once a walk
//! is seen to need more than one thing from it.
//!
//! A caller reports each request about one directory that had to go to the daemon
//! ([`Walk::touched`]). The second such request for a directory within [`WALK_WINDOW`] with no change
//! through the mount in between (a writer such as `tar`, whose every change voids what a fetch
//! brings, is no walk), or the first one while fetches started by this walk follow each other, starts
//! a fetch of the directory; later requests wait for it ([`Walk::waiter`]) and then look at what it
//! brought. While the walk's own fetches come within [`AHEAD_WINDOW`] of each other, directories it is
//! about to enter may be fetched ahead of it ([`Walk::ahead`]). A directory is fetched at most once
//! per window. Used for small files (`heads_ahead.rs`) and for listings that answer lookups (`core/memory.rs`).
//!
//! Memory is bounded: at most [`DIRS_MAX`] directories are remembered.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::read_ahead::DirKey;

/// Requests about one directory this close together are a walk through it; a fetch started this
/// recently keeps the walk going.
pub const WALK_WINDOW: Duration = Duration::from_secs(2);
/// At most this many directories are remembered.
pub const DIRS_MAX: usize = 4_096;
/// Directories are fetched ahead of the walk only while its own fetches came this recently: a walk
/// that stopped (`rg` done, `find` started) must not make the next one fetch what it does not need.
pub const AHEAD_WINDOW: Duration = Duration::from_millis(500);

/// What is known of a directory in this walk.
enum DirState<W> {
    /// A request about it went to the daemon at this instant and attribute epoch.
    Touched(Instant, u64),
    /// It is being fetched; `W` lets a request wait for the fetch.
    Fetching(W),
    /// It was fetched at this instant.
    Fetched(Instant),
}

/// The walk state for one kind of fetch; `W` is how a request waits for a fetch under way.
pub struct Walk<W> {
    dirs: HashMap<DirKey, DirState<W>>,
    /// When the last fetch started: while fetches follow each other, the walk goes on.
    last_fetch: Option<Instant>,
}

impl<W> Default for Walk<W> {
    fn default() -> Self {
        Walk {
            dirs: HashMap::new(),
            last_fetch: None,
        }
    }
}

impl<W: Clone> Walk<W> {
    /// What to wait on if `dir` is being fetched.
    pub fn waiter(&self, dir: &DirKey) -> Option<W> {
        match self.dirs.get(dir) {
            Some(DirState::Fetching(waiter)) => Some(waiter.clone()),
            _ => None,
        }
    }

    /// A request about `dir` goes to the daemon at attribute epoch `epoch` (moved by every change
    /// through the mount). Returns whether to fetch the directory now; if so, `waiter` lets later
    /// requests wait for the fetch, which must end with [`Self::fetched`].
    pub fn touched(&mut self, dir: &DirKey, epoch: u64, waiter: W, now: Instant) -> bool {
        let recent = |at: &Instant| now.duration_since(*at) < WALK_WINDOW;
        let fetch = match self.dirs.get(dir) {
            Some(DirState::Fetching(..)) => return false,
            Some(DirState::Fetched(at)) if recent(at) => return false,
            // The second request, nothing changed in between: a walk through the directory.
            Some(DirState::Touched(at, e)) if recent(at) && *e == epoch => true,
            _ => self.last_fetch.as_ref().is_some_and(recent),
        };
        if !self.room(now) {
            return false;
        }
        if !fetch {
            self.dirs.insert(dir.clone(), DirState::Touched(now, epoch));
            return false;
        }
        self.dirs.insert(dir.clone(), DirState::Fetching(waiter));
        self.last_fetch = Some(now);
        true
    }

    /// The walk is about to enter `dir` (its listing was fetched ahead of it): fetch it now if the
    /// walk's own last fetch started within [`AHEAD_WINDOW`] and `dir` was not fetched in this window. Such a fetch does not
    /// keep the walk going: only requests the walk itself makes do.
    pub fn ahead(&mut self, dir: &DirKey, waiter: W, now: Instant) -> bool {
        let recent = |at: &Instant| now.duration_since(*at) < WALK_WINDOW;
        let going_on = |at: &Instant| now.duration_since(*at) < AHEAD_WINDOW;
        if !self.last_fetch.as_ref().is_some_and(going_on) {
            return false;
        }
        match self.dirs.get(dir) {
            Some(DirState::Fetching(..)) => return false,
            Some(DirState::Fetched(at)) if recent(at) => return false,
            _ => {}
        }
        if !self.room(now) {
            return false;
        }
        self.dirs.insert(dir.clone(), DirState::Fetching(waiter));
        true
    }

    /// Whether another directory may be remembered, after dropping those of past walks.
    fn room(&mut self, now: Instant) -> bool {
        if self.dirs.len() >= DIRS_MAX {
            let recent = |at: &Instant| now.duration_since(*at) < WALK_WINDOW;
            self.dirs.retain(|_, state| match state {
                DirState::Fetching(..) => true,
                DirState::Touched(at, _) | DirState::Fetched(at) => recent(at),
            });
        }
        self.dirs.len() < DIRS_MAX
    }

    /// The fetch of `dir` ended (whatever it brought).
    pub fn fetched(&mut self, dir: &DirKey, now: Instant) {
        self.dirs.insert(dir.clone(), DirState::Fetched(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessionfs_proto::WirePath;
    use sessionfs_registry::SessionId;

    fn dir(s: &str) -> DirKey {
        let id = SessionId::new("s1").expect("valid id");
        (
            id,
            WirePath::new(s.as_bytes().to_vec()).expect("valid path"),
        )
    }

    #[test]
    fn the_second_request_fetches_and_fetches_in_a_row_keep_the_walk_going() {
        let mut w: Walk<u8> = Walk::default();
        let t = Instant::now();
        assert!(!w.touched(&dir("a"), 0, 1, t), "one request is no walk");
        assert!(w.touched(&dir("a"), 0, 1, t), "the second one fetches");
        assert_eq!(w.waiter(&dir("a")), Some(1));
        assert!(!w.touched(&dir("a"), 0, 1, t), "never twice at once");
        w.fetched(&dir("a"), t);
        assert_eq!(w.waiter(&dir("a")), None);
        assert!(!w.touched(&dir("a"), 0, 1, t), "once per window");
        assert!(
            w.touched(&dir("b"), 0, 2, t),
            "the walk goes on: first request fetches"
        );
        let later = t + WALK_WINDOW;
        assert!(!w.touched(&dir("c"), 0, 3, later), "a walk ends");
        assert!(
            w.touched(&dir("c"), 0, 3, later + WALK_WINDOW / 2),
            "a new walk starts with a second request"
        );
    }

    #[test]
    fn a_walk_fetches_ahead_only_while_it_goes_on_and_that_does_not_prolong_it() {
        let mut w: Walk<u8> = Walk::default();
        let t = Instant::now();
        assert!(!w.ahead(&dir("x"), 1, t), "no walk yet");
        w.touched(&dir("a"), 0, 1, t);
        assert!(w.touched(&dir("a"), 0, 1, t));
        assert!(w.ahead(&dir("x"), 1, t));
        assert!(!w.ahead(&dir("x"), 1, t), "under way");
        w.fetched(&dir("x"), t);
        assert!(!w.ahead(&dir("x"), 1, t), "fetched in this window");
        let later = t + AHEAD_WINDOW;
        assert!(
            !w.ahead(&dir("y"), 1, later),
            "fetches ahead kept nothing going"
        );
    }

    #[test]
    fn a_change_through_the_mount_between_two_requests_is_no_walk() {
        let mut w: Walk<u8> = Walk::default();
        let t = Instant::now();
        assert!(!w.touched(&dir("d"), 0, 1, t));
        assert!(!w.touched(&dir("d"), 1, 1, t), "a writer, not a walk");
        assert!(w.touched(&dir("d"), 1, 1, t));
    }
}
