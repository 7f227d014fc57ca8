//! Files a rename replaced, kept openable by their identity for a moment.
//!
//! The host kernel resolves a name to a node, then opens the node. A rename over that name in between
//! (through the same mount, by another process) leaves the node without a name, and the bridge could
//! only open whatever the name names now, where a local file system opens the file that was resolved.
//! So a rename that replaces a regular file first takes an `O_PATH` descriptor of it, and an open that
//! names the node (`Request::Open`'s `expect`) reopens it through `/proc/self/fd`. The replaced file's
//! blocks stay allocated while it is kept: at most [`REPLACED_KEEP_MAX`] files, each for at most
//! [`REPLACED_KEEP_MS`].

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sessionfs_proto::{NodeId, REPLACED_KEEP_MAX, REPLACED_KEEP_MS};

const KEEP_FOR: Duration = Duration::from_millis(REPLACED_KEEP_MS);

/// The files kept; see the module docs.
#[derive(Default)]
pub struct Replaced {
    kept: Mutex<VecDeque<Kept>>,
}

struct Kept {
    id: NodeId,
    fd: OwnedFd,
    at: Instant,
}

impl Replaced {
    /// Keeps `fd`, the replaced file `id`, from `now`.
    pub fn keep(&self, id: NodeId, fd: OwnedFd, now: Instant) {
        let mut kept = self.lock();
        prune(&mut kept, now);
        if kept.len() >= REPLACED_KEEP_MAX {
            kept.pop_front();
        }
        kept.push_back(Kept { id, fd, at: now });
    }

    /// Runs `open` on the descriptor of the replaced file `id` if it is still kept at `now`.
    pub fn reopen<T>(
        &self,
        id: &NodeId,
        now: Instant,
        open: impl FnOnce(BorrowedFd<'_>) -> T,
    ) -> Option<T> {
        let mut kept = self.lock();
        prune(&mut kept, now);
        // The newest first: an inode number and birth time are never reused together.
        let found = kept.iter().rev().find(|k| k.id == *id)?;
        Some(open(found.fd.as_fd()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Kept>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Drops what was kept longer than [`KEEP_FOR`] (kept in order of time).
fn prune(kept: &mut VecDeque<Kept>, now: Instant) {
    while kept
        .front()
        .is_some_and(|k| now.saturating_duration_since(k.at) > KEEP_FOR)
    {
        kept.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ino: u64) -> NodeId {
        NodeId {
            dev: 1,
            ino,
            btime: None,
            file_type: sessionfs_proto::S_IFREG,
        }
    }

    fn fd() -> OwnedFd {
        std::fs::File::open("/dev/null").expect("/dev/null").into()
    }

    #[test]
    fn a_kept_file_reopens_by_its_identity_until_its_time_is_up() {
        let r = Replaced::default();
        let t0 = Instant::now();
        r.keep(id(7), fd(), t0);
        assert_eq!(r.reopen(&id(7), t0 + KEEP_FOR, |_| 1), Some(1));
        assert_eq!(r.reopen(&id(8), t0, |_| 1), None, "another identity");
        assert_eq!(
            r.reopen(&id(7), t0 + KEEP_FOR + Duration::from_millis(1), |_| 1),
            None
        );
        assert_eq!(r.len(), 0, "dropped once its time is up");
    }

    #[test]
    fn at_most_the_bound_is_kept_the_oldest_going_first() {
        let r = Replaced::default();
        let t0 = Instant::now();
        for ino in 0..REPLACED_KEEP_MAX as u64 + 3 {
            r.keep(id(ino), fd(), t0);
        }
        assert_eq!(r.len(), REPLACED_KEEP_MAX);
        assert_eq!(r.reopen(&id(2), t0, |_| ()), None);
        assert_eq!(r.reopen(&id(3), t0, |_| ()), Some(()));
    }
}
