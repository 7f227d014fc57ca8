//! A bound on the log lines refused connections make: anyone who can reach the daemon's port can start
//! handshakes that fail, and each used to log a warning. At most [`BURST`] refusals are logged per
//! [`WINDOW`]; the first line of the next window says how many were left out.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The length of one window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Refusals logged per window.
pub const BURST: u32 = 10;

/// Whether to log a refusal.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it, saying that `left_out` refusals before it were not logged.
    Log { left_out: u64 },
    /// Leave it out (it is counted).
    Quiet,
}

/// The refusal log's state: the current window.
#[derive(Debug)]
pub struct RefusalLog {
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    logged: u32,
    left_out: u64,
}

impl RefusalLog {
    /// A log whose first window starts at `now`.
    pub fn new(now: Instant) -> RefusalLog {
        RefusalLog {
            window: Mutex::new(Window {
                started: now,
                logged: 0,
                left_out: 0,
            }),
        }
    }

    /// Whether the refusal at `now` is logged.
    pub fn admit(&self, now: Instant) -> Verdict {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if now.saturating_duration_since(w.started) >= WINDOW {
            w.started = now;
            w.logged = 0;
        }
        if w.logged < BURST {
            w.logged += 1;
            Verdict::Log {
                left_out: std::mem::take(&mut w.left_out),
            }
        } else {
            w.left_out += 1;
            Verdict::Quiet
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_a_burst_per_window_and_then_the_count() {
        let t0 = Instant::now();
        let log = RefusalLog::new(t0);
        let verdicts: Vec<Verdict> = (0..1000).map(|_| log.admit(t0)).collect();
        let logged = verdicts.iter().filter(|v| **v != Verdict::Quiet).count();
        assert_eq!(logged, BURST as usize);
        assert!(verdicts[..BURST as usize]
            .iter()
            .all(|v| *v == Verdict::Log { left_out: 0 }));
        // Still within the window: quiet.
        assert_eq!(log.admit(t0 + WINDOW / 2), Verdict::Quiet);
        // The next window's first line reports what was left out.
        assert_eq!(
            log.admit(t0 + WINDOW),
            Verdict::Log {
                left_out: 1000 - BURST as u64 + 1
            }
        );
        assert_eq!(log.admit(t0 + WINDOW), Verdict::Log { left_out: 0 });
    }
}
