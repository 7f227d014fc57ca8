//! Entries the kernel was sent a moment ago, which an invalidation may have reached first.
//!
//! The kernel applies a lookup reply after the bridge has written it. An invalidation sent in
//! between for a node or name the kernel does not have yet (a new inode, a new negative entry) finds
//! nothing and is lost, and the reply's long TTL then keeps what it said, stale. The kernel guards
//! inodes it already has (an invalidation moves their attribute version, and a reply read before it
//! is not applied), not new ones. So the bridge remembers what its lookups answered in the last
//! [`LATE_WINDOW`], and the invalidator sends the changes that touched such an entry once more after
//! [`LATE_DELAY`], when the kernel has applied the reply.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long after a lookup's reply an invalidation of what it answered is sent again.
pub const LATE_WINDOW: Duration = Duration::from_millis(50);

/// How long the invalidator waits before sending such an invalidation again.
pub const LATE_DELAY: Duration = Duration::from_millis(50);

/// Most entries remembered; older ones are dropped first (at this size, far more than a window's
/// worth of lookups).
const MAX_REMEMBERED: usize = 4096;

/// What lookups answered in the last [`LATE_WINDOW`]: inodes (positive entries) and names
/// (negative entries), per directory inode.
#[derive(Default)]
pub struct Replied {
    inodes: HashMap<u64, Instant>,
    names: HashMap<(u64, Vec<u8>), Instant>,
}

impl Replied {
    /// A lookup answered with node `ino`.
    pub fn inode(&mut self, ino: u64, now: Instant) {
        self.prune(now);
        self.inodes.insert(ino, now);
    }

    /// A lookup answered that `dir/name` does not exist.
    pub fn missing(&mut self, dir: u64, name: &[u8], now: Instant) {
        self.prune(now);
        self.names.insert((dir, name.to_vec()), now);
    }

    /// Whether a lookup answered with `ino` within the window.
    pub fn inode_is_recent(&self, ino: u64, now: Instant) -> bool {
        self.inodes
            .get(&ino)
            .is_some_and(|at| now.saturating_duration_since(*at) <= LATE_WINDOW)
    }

    /// Whether a lookup answered that `dir/name` is missing within the window.
    pub fn missing_is_recent(&self, dir: u64, name: &[u8], now: Instant) -> bool {
        self.names
            .get(&(dir, name.to_vec()))
            .is_some_and(|at| now.saturating_duration_since(*at) <= LATE_WINDOW)
    }

    fn prune(&mut self, now: Instant) {
        if self.inodes.len() + self.names.len() < MAX_REMEMBERED {
            return;
        }
        let young = |at: &Instant| now.saturating_duration_since(*at) <= LATE_WINDOW;
        self.inodes.retain(|_, at| young(at));
        self.names.retain(|_, at| young(at));
        if self.inodes.len() + self.names.len() >= MAX_REMEMBERED {
            self.inodes.clear();
            self.names.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_recent_for_the_window_only() {
        let mut r = Replied::default();
        let t = Instant::now();
        r.inode(7, t);
        r.missing(1, b"gone", t);
        assert!(r.inode_is_recent(7, t + LATE_WINDOW));
        assert!(r.missing_is_recent(1, b"gone", t + LATE_WINDOW));
        assert!(!r.inode_is_recent(8, t));
        assert!(!r.missing_is_recent(1, b"other", t));
        let later = t + LATE_WINDOW + Duration::from_millis(1);
        assert!(!r.inode_is_recent(7, later));
        assert!(!r.missing_is_recent(1, b"gone", later));
    }

    #[test]
    fn memory_is_bounded() {
        let mut r = Replied::default();
        let t = Instant::now();
        for ino in 0..(3 * MAX_REMEMBERED as u64) {
            r.inode(ino, t + Duration::from_micros(ino));
        }
        assert!(r.inodes.len() <= MAX_REMEMBERED);
    }
}
