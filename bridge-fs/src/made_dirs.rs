//! Directories the mount made, and the names that may exist in them: a lookup of any other name is
//! answered "missing" without a round trip. Extracting an archive or checking out a tree looks up
//! every name before it creates it; in a directory made a moment ago through the mount the answer is
//! known.
//!
//! A record starts empty when a `mkdir` through the mount succeeds with no change event about the
//! new directory (or anything below it, see [`crate::crossed`]) arriving while it ran: such a change
//! could not be matched to the directory before the bridge knew its inode. From then on every name the mount may bind in it (create, mkdir,
//! symlink, mknod, link, the target of a rename) is added before the request is sent, success or
//! not, and every name a change event reports in it is added unless the event says the name is
//! missing: the set only ever grows, so it never hides a name that exists (names removed stay in it
//! and are looked up). The bridge adds an event's name before it invalidates the kernel's negative
//! entry for it, so a lookup in between is not answered from the record. A reset of the session
//! (reconnect, event overflow) ends all records; so does the kernel forgetting the directory.

use std::collections::{HashMap, HashSet};

/// At most this many directories are followed; more and the oldest records are all dropped.
const MAX_DIRS: usize = 16 * 1024;
/// At most this many names per directory; more and that directory's record ends.
const MAX_NAMES: usize = 64 * 1024;

/// The names that may exist in each directory the mount made (see the module docs).
#[derive(Default)]
pub struct MadeDirs {
    dirs: HashMap<u64, HashSet<Vec<u8>>>,
}

impl MadeDirs {
    /// Directory `dir` was just made through the mount: it is empty.
    pub fn made(&mut self, dir: u64) {
        if self.dirs.len() >= MAX_DIRS {
            self.dirs.clear();
        }
        self.dirs.insert(dir, HashSet::new());
    }

    /// `name` may exist in `dir` from now on.
    pub fn may_exist(&mut self, dir: u64, name: &[u8]) {
        let Some(names) = self.dirs.get_mut(&dir) else {
            return;
        };
        if names.len() >= MAX_NAMES {
            self.dirs.remove(&dir);
        } else if !names.contains(name) {
            names.insert(name.to_vec());
        }
    }

    /// Whether `name` is known missing from `dir`.
    pub fn is_missing(&self, dir: u64, name: &[u8]) -> bool {
        self.dirs
            .get(&dir)
            .is_some_and(|names| !names.contains(name))
    }

    /// The kernel forgot `dir`: its record ends.
    pub fn forget(&mut self, dir: u64) {
        self.dirs.remove(&dir);
    }

    /// Ends the records of `dirs` (a reset of their session).
    pub fn forget_all(&mut self, dirs: impl IntoIterator<Item = u64>) {
        for dir in dirs {
            self.dirs.remove(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_never_bound_nor_reported_are_missing() {
        let mut m = MadeDirs::default();
        assert!(
            !m.is_missing(1, b"a"),
            "a directory not made here knows nothing"
        );
        m.made(1);
        assert!(m.is_missing(1, b"a"));
        m.may_exist(1, b"a");
        m.may_exist(2, b"x");
        assert!(!m.is_missing(1, b"a") && m.is_missing(1, b"b"));
        assert!(!m.is_missing(2, b"x") && !m.is_missing(2, b"y"));
        m.forget(1);
        assert!(!m.is_missing(1, b"b"));
        m.made(3);
        m.forget_all([3]);
        assert!(!m.is_missing(3, b"z"));
    }

    #[test]
    fn a_directory_with_too_many_names_stops_answering() {
        let mut m = MadeDirs::default();
        m.made(1);
        for i in 0..MAX_NAMES {
            m.may_exist(1, format!("n{i}").as_bytes());
        }
        assert!(m.is_missing(1, b"other"));
        m.may_exist(1, b"one-more");
        assert!(!m.is_missing(1, b"other"));
    }
}
