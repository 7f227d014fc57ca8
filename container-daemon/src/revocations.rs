//! The revoked issuing certificates this daemon refuses ([`sessionfs_pki::Revoked`]), followed in
//! its certificate directory: the session's host rewrites [`sessionfs_pki::REVOKED_FILE`] there
//! when a host is removed, and every connection learns of it through a `watch` channel.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sessionfs_pki::Revoked;
use tokio::sync::watch;
use tracing::{info, warn};

/// How often the file is looked at: a revocation ends a removed host's connections within this
/// after its host wrote the file. One `statx` a second.
pub const REVOCATION_POLL: Duration = Duration::from_secs(1);

/// What identifies a version of the file: inode, size and modification time (a rename over it
/// or a rewrite changes one of them).
type Version = Option<(u64, u64, i64, i64)>;

fn version(path: &std::path::Path) -> Version {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// The list at start, and the file it came from; a list that cannot be read fails the start
/// (a daemon must not begin serving peers it was told to refuse).
pub struct Revocations {
    path: PathBuf,
    seen: Version,
    tx: watch::Sender<Arc<Revoked>>,
}

impl Revocations {
    /// Reads the list in `path` (none if there is no file).
    pub fn load(path: PathBuf) -> Result<Self, sessionfs_pki::PkiError> {
        let seen = version(&path);
        let revoked = Revoked::load(&path)?;
        if !revoked.is_empty() {
            info!(
                revoked = revoked.len(),
                "refusing revoked issuing certificates"
            );
        }
        let (tx, _) = watch::channel(Arc::new(revoked));
        Ok(Revocations { path, seen, tx })
    }

    /// A receiver of the current list and of every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Revoked>> {
        self.tx.subscribe()
    }

    /// Follows the file until dropped: a changed list goes to every subscriber; a list that
    /// cannot be read is logged (once per version of the file) and the previous one stays.
    pub async fn follow(mut self) {
        let mut ticks = tokio::time::interval(REVOCATION_POLL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let now = version(&self.path);
            if now == self.seen {
                continue;
            }
            self.seen = now;
            let path = self.path.clone();
            let loaded = tokio::task::spawn_blocking(move || Revoked::load(&path)).await;
            match loaded {
                Ok(Ok(revoked)) => {
                    let changed = self.tx.send_if_modified(|current| {
                        let differs = **current != revoked;
                        if differs {
                            *current = Arc::new(revoked.clone());
                        }
                        differs
                    });
                    if changed {
                        info!(
                            revoked = revoked.len(),
                            "the revocation list changed; ending revoked peers' connections"
                        );
                    }
                }
                Ok(Err(e)) => warn!("keeping the previous revocation list: {e}"),
                Err(e) => warn!("keeping the previous revocation list: reading it failed: {e}"),
            }
        }
    }
}
