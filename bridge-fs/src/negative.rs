//! Negative entries: the names the kernel was told do not exist, with a lifetime.
//!
//! A lookup of a missing name in a watched session is answered with a negative entry the kernel keeps
//! (`git status` and `rg` look for `.gitignore`, `.ignore`, … in every directory; each miss would
//! otherwise be a round trip). The kernel can only be made to forget a negative entry by name
//! (`inval_entry`), and the bridge's inode table holds only names bound to nodes, so the names are
//! recorded here: a change that creates one, or a reset of its session, invalidates it.
//!
//! Invariant: **a name is recorded before the kernel is told it is missing**, and the caller checks the
//! session's invalidation generation after recording it (see `core/memory.rs`): an invalidation either crossed
//! the lookup (the answer is not cached) or comes after the record and finds it.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// At most this many negative entries are recorded; beyond it misses are not cached.
pub const NEGATIVE_MAX: usize = 65_536;

/// The recorded negative entries, by directory inode.
pub struct NegativeEntries {
    by_dir: HashMap<u64, HashMap<Vec<u8>, Instant>>,
    len: usize,
    /// How long the kernel keeps a negative entry; older records can be dropped when full.
    ttl: Duration,
}

impl NegativeEntries {
    pub fn new(ttl: Duration) -> Self {
        NegativeEntries {
            by_dir: HashMap::new(),
            len: 0,
            ttl,
        }
    }

    /// Records that the kernel is about to be told `dir/name` does not exist. `false`: the table is
    /// full of live records, so the miss must not be cached.
    pub fn insert(&mut self, dir: u64, name: &[u8]) -> bool {
        if self.len >= NEGATIVE_MAX {
            self.expire(Instant::now());
            if self.len >= NEGATIVE_MAX {
                return false;
            }
        }
        let names = self.by_dir.entry(dir).or_default();
        if names.insert(name.to_vec(), Instant::now()).is_none() {
            self.len += 1;
        }
        true
    }

    /// Removes the record of `dir/name`; `true` if the kernel may hold a negative entry for it.
    pub fn take(&mut self, dir: u64, name: &[u8]) -> bool {
        let Some(names) = self.by_dir.get_mut(&dir) else {
            return false;
        };
        let found = names.remove(name).is_some();
        if found {
            self.len -= 1;
            if names.is_empty() {
                self.by_dir.remove(&dir);
            }
        }
        found
    }

    /// Removes and returns every record in the directories `dirs`.
    pub fn take_in(&mut self, dirs: &HashSet<u64>) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        for dir in dirs {
            if let Some(names) = self.by_dir.remove(dir) {
                self.len -= names.len();
                out.extend(names.into_keys().map(|name| (*dir, name)));
            }
        }
        out
    }

    /// The kernel forgot directory `dir`, and with it every entry below it.
    pub fn forget_dir(&mut self, dir: u64) {
        if let Some(names) = self.by_dir.remove(&dir) {
            self.len -= names.len();
        }
    }

    /// Names recorded.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops records the kernel has certainly expired by `now`.
    fn expire(&mut self, now: Instant) {
        let ttl = self.ttl;
        let mut len = 0;
        self.by_dir.retain(|_, names| {
            names.retain(|_, at| now.duration_since(*at) < ttl);
            len += names.len();
            !names.is_empty()
        });
        self.len = len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_taken_once() {
        let mut n = NegativeEntries::new(Duration::from_secs(60));
        assert!(n.insert(5, b".gitignore"));
        assert!(n.insert(5, b".gitignore"));
        assert_eq!(n.len(), 1);
        assert!(n.take(5, b".gitignore"));
        assert!(!n.take(5, b".gitignore"));
        assert!(n.is_empty());
    }

    #[test]
    fn take_in_returns_only_the_given_directories() {
        let mut n = NegativeEntries::new(Duration::from_secs(60));
        n.insert(5, b"a");
        n.insert(5, b"b");
        n.insert(6, b"c");
        let mut got = n.take_in(&HashSet::from([5]));
        got.sort();
        assert_eq!(got, vec![(5, b"a".to_vec()), (5, b"b".to_vec())]);
        assert_eq!(n.len(), 1);
        n.forget_dir(6);
        assert!(n.is_empty());
    }

    #[test]
    fn a_full_table_refuses_until_records_expire() {
        let mut n = NegativeEntries::new(Duration::ZERO);
        for i in 0..NEGATIVE_MAX {
            assert!(n.insert(1, format!("f{i}").as_bytes()));
        }
        // Every record is older than a zero lifetime: they are dropped to make room.
        assert!(n.insert(2, b"x"));
        assert_eq!(n.len(), 1);

        let mut live = NegativeEntries::new(Duration::from_secs(3600));
        for i in 0..NEGATIVE_MAX {
            live.insert(1, format!("f{i}").as_bytes());
        }
        assert!(!live.insert(2, b"x"));
        assert_eq!(live.len(), NEGATIVE_MAX);
    }
}
