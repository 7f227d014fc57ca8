//! Hands freed memory back to the system once the daemon goes quiet after a burst.
//!
//! A build, an extraction or a large read grows the heap (1 MiB frames, per-thread malloc arenas of
//! the blocking pool) and glibc keeps what was freed. Requests and workspace changes count as
//! activity; after a period with some activity, the first whole period without any releases the
//! pooled frame buffers and trims the heap.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long the daemon must be quiet before it trims.
pub const QUIET_PERIOD: Duration = Duration::from_secs(1);

/// Activity seen by the daemon: requests served and change batches watched.
#[derive(Default)]
pub struct Activity(AtomicU64);

impl Activity {
    /// Counts one piece of work.
    pub fn note(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Whether a period that ended with activity count `now` calls for a trim, given the count at the
/// end of the period before (`seen`) and whether there was work since the last trim (`dirty`);
/// updates both.
fn quiet_after_work(now: u64, seen: &mut u64, dirty: &mut bool) -> bool {
    if now != *seen {
        *seen = now;
        *dirty = true;
        return false;
    }
    std::mem::take(dirty)
}

/// Runs for the daemon's life: trims after each burst once a [`QUIET_PERIOD`] passes without work.
pub async fn trim_when_quiet(activity: Arc<Activity>) {
    let (mut seen, mut dirty) = (activity.count(), false);
    loop {
        tokio::time::sleep(QUIET_PERIOD).await;
        if quiet_after_work(activity.count(), &mut seen, &mut dirty) {
            sessionfs_pki::wire::release_pooled_buffers();
            trim_heap();
        }
    }
}

/// Returns freed heap memory to the system (glibc keeps it otherwise).
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_after_work_when_a_whole_period_was_quiet() {
        let (mut seen, mut dirty) = (0, false);
        assert!(
            !quiet_after_work(0, &mut seen, &mut dirty),
            "nothing happened yet"
        );
        assert!(!quiet_after_work(5, &mut seen, &mut dirty), "busy period");
        assert!(!quiet_after_work(9, &mut seen, &mut dirty), "still busy");
        assert!(
            quiet_after_work(9, &mut seen, &mut dirty),
            "quiet after work"
        );
        assert!(
            !quiet_after_work(9, &mut seen, &mut dirty),
            "once per burst"
        );
    }
}
