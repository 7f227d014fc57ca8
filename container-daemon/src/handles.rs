//! The open-file table of one connection: opaque handle numbers mapped to file descriptors.
//!
//! Handles are never file descriptor numbers, so a client cannot name a descriptor it did not open. The
//! table is bounded; it is dropped (closing every descriptor) when the connection ends.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use sessionfs_proto::{errno, ErrorReply};

/// Most files one connection may hold open at once.
pub const MAX_OPEN_FILES: usize = 16 * 1024;

/// Open files of one connection.
#[derive(Default)]
pub struct Handles {
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next: u64,
    files: HashMap<u64, Arc<OwnedFd>>,
}

impl Handles {
    /// Stores `fd` and returns its handle.
    pub fn insert(&self, fd: OwnedFd) -> Result<u64, ErrorReply> {
        let mut t = self.lock();
        if t.files.len() >= MAX_OPEN_FILES {
            return Err(ErrorReply::new(
                errno::EMFILE,
                "too many open files on this connection",
            ));
        }
        t.next += 1;
        let fh = t.next;
        t.files.insert(fh, Arc::new(fd));
        Ok(fh)
    }

    /// The descriptor behind `fh`.
    pub fn get(&self, fh: u64) -> Result<Arc<OwnedFd>, ErrorReply> {
        self.lock()
            .files
            .get(&fh)
            .cloned()
            .ok_or_else(|| ErrorReply::new(errno::EBADF, format!("unknown file handle {fh}")))
    }

    /// Forgets `fh`; the descriptor closes once no request uses it any more.
    pub fn remove(&self, fh: u64) -> Result<(), ErrorReply> {
        self.lock()
            .files
            .remove(&fh)
            .map(drop)
            .ok_or_else(|| ErrorReply::new(errno::EBADF, format!("unknown file handle {fh}")))
    }

    /// Number of open handles.
    pub(crate) fn len(&self) -> usize {
        self.lock().files.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // The table holds no invariant a panicking holder could break, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}
