//! The change batches a session received lately, so that a request that crossed some (its session's
//! invalidation generation moved while it ran) can tell whether they may concern the path it is
//! about. During a `tar` through the mount, the echoes of its own earlier files arrive every
//! millisecond or two: most requests cross one, and treating every crossed batch as a change of
//! everything would make what the bridge learns from a create (no capability yet, see `core/memory.rs`; its
//! attributes, see [`crate::known`]; a directory's names, see [`crate::made_dirs`]) useless.

use std::collections::VecDeque;
use std::sync::Arc;

use sessionfs_proto::{Change, EntryNow, WirePath};

/// How many batches are kept; a request that crossed more counts them all as concerning its path.
const KEPT: usize = 64;

/// The last `KEPT` generations a session moved to, each with the batch that moved it (`None`: a
/// reset or the stream starting, which may hide any change).
#[derive(Default)]
pub struct RecentChanges {
    batches: VecDeque<(u64, Option<Arc<[Change]>>)>,
}

impl RecentChanges {
    /// The session moved to `generation` because of `changes`.
    pub fn record(&mut self, generation: u64, changes: Option<Arc<[Change]>>) {
        if self.batches.len() == KEPT {
            self.batches.pop_front();
        }
        self.batches.push_back((generation, changes));
    }

    /// Whether a change between generations `since` and `now` may concern `path`: a change of the
    /// node at `path` or below it, of the entry naming it, or of an entry naming one of its
    /// directories that no longer names a node (a rename of a directory moves what is below it:
    /// later events name it by another path; the directory's own echo, a name still naming a node,
    /// moves nothing). Unknown generations (too old, a reset) may concern anything.
    pub fn concern(&self, since: u64, now: u64, path: &WirePath) -> bool {
        let mut covered = since;
        for (generation, changes) in self.batches.iter().filter(|(g, _)| *g > since) {
            if *generation != covered + 1 {
                return true;
            }
            covered = *generation;
            match changes {
                None => return true,
                Some(changes) if changes.iter().any(|c| touches(c, path.as_bytes())) => {
                    return true
                }
                Some(_) => {}
            }
        }
        covered != now
    }
}

/// Whether `change` may concern the node at `path`.
fn touches(change: &Change, path: &[u8]) -> bool {
    match change {
        Change::Node { path: p, .. } | Change::Data { path: p } => within(p.as_bytes(), path),
        Change::Entry { dir, name, now } => match dir.join(name) {
            Ok(full) if within(full.as_bytes(), path) => true,
            Ok(full) => within(path, full.as_bytes()) && !matches!(now, EntryNow::Node(_)),
            Err(_) => true,
        },
    }
}

/// Whether `p` is `dir` or lies below it.
fn within(p: &[u8], dir: &[u8]) -> bool {
    dir.is_empty() || p == dir || (p.starts_with(dir) && p.get(dir.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessionfs_proto::{Attr, NodeId};

    fn wp(s: &str) -> WirePath {
        WirePath::new(s.as_bytes().to_vec()).expect("path")
    }

    fn entry(dir: &str, name: &str) -> Change {
        Change::Entry {
            dir: wp(dir),
            name: name.as_bytes().to_vec(),
            now: EntryNow::Unchecked,
        }
    }

    #[test]
    fn only_changes_of_the_path_its_tree_or_its_names_concern_it() {
        let mut r = RecentChanges::default();
        r.record(
            11,
            Some(Arc::from(vec![entry("a/b", "other"), entry("a", "bc")])),
        );
        r.record(
            12,
            Some(Arc::from(vec![Change::Data { path: wp("a/b/c2") }])),
        );
        // A node's attributes (a/b's) do not concern what is inside it.
        r.record(
            13,
            Some(Arc::from(vec![Change::Node {
                path: wp("a/b"),
                now: None,
            }])),
        );
        let path = wp("a/b/c");
        assert!(!r.concern(10, 13, &path));
        assert!(!r.concern(13, 13, &path));
        r.record(14, Some(Arc::from(vec![entry("a/b", "c")])));
        assert!(r.concern(10, 14, &path), "its own entry");
        assert!(!r.concern(14, 14, &path));
        let echo = Change::Entry {
            dir: wp("a"),
            name: b"b".to_vec(),
            now: EntryNow::Node(NodeId::of(&Attr::default())),
        };
        r.record(15, Some(Arc::from(vec![echo])));
        assert!(
            !r.concern(14, 15, &path),
            "a directory on its path is still there"
        );
        r.record(16, Some(Arc::from(vec![entry("a", "b")])));
        assert!(
            r.concern(15, 16, &path),
            "a directory on its path may have moved"
        );
        r.record(
            17,
            Some(Arc::from(vec![Change::Node {
                path: wp("a/b/c/d"),
                now: None,
            }])),
        );
        assert!(r.concern(16, 17, &path), "below it");
        assert!(!r.concern(16, 17, &wp("a/b/cd")));
        r.record(18, None);
        assert!(r.concern(17, 18, &wp("x")), "a reset concerns everything");
        assert!(r.concern(18, 19, &wp("x")), "a generation not recorded");
    }

    #[test]
    fn a_request_that_crossed_more_than_is_kept_counts_them_all() {
        let mut r = RecentChanges::default();
        for g in 1..=(KEPT as u64 + 5) {
            r.record(
                g,
                Some(Arc::from(vec![Change::Data {
                    path: wp("elsewhere"),
                }])),
            );
        }
        assert!(r.concern(0, KEPT as u64 + 5, &wp("mine")));
        assert!(!r.concern(10, KEPT as u64 + 5, &wp("mine")));
    }
}
