//! Write-behind: changes of open files the bridge acknowledges to the kernel before the daemon has
//! them, and the ordering that keeps that invisible to every other request.
//!
//! A `write` on a handle that allows it (written, not `O_APPEND`, `O_SYNC`, `O_DSYNC` or `O_DIRECT`)
//! is answered at once and kept *pending* in its session; contiguous writes of a handle merge. So are
//! the attribute changes of a file the mount created and holds open (`core/` decides, from
//! [`crate::known`]) and the release of a closed handle. The pending changes leave as one
//! [`Request::Batch`](sessionfs_proto::Request::Batch): carried ahead of the session's next request
//! of any kind (the daemon applies them, then that request: no extra round trip), or pushed on their
//! own when they fill a batch, a few milliseconds after the first of them, or when the handle is
//! closed or synced.
//!
//! Invariants (enforced here; `session.rs` sends, `core/` decides what is deferred):
//! - **One batch on its way per session, and every request waits for it**: a request of the session
//!   is sent only when no batch is on its way, and carries whatever is pending. So every request sent
//!   after a change was acknowledged reaches the daemon after that change, as if it had been
//!   synchronous: a `stat`, a read through another handle, a rename, a release of the handle.
//! - **Pending changes fit one batch** ([`MAX_BATCH_BYTES`], [`MAX_BATCH_WRITES`]): a change that
//!   does not fit waits until the pending ones have left (so the next batch is filled while one is on
//!   its way). At most two batches' worth of data is acknowledged and not yet written.
//! - **No error is lost**: a change that failed (or whose batch got no answer) is recorded for its
//!   handle and returned by the handle's next `write`, `fsync` or `close` (`flush`), as an NFS client
//!   does; a batch abandoned by a timeout counts as failed, never as landed. A failure its handle can
//!   no longer report (it was released) is logged.
//! - **Nothing lands past a failed change**: the daemon skips a batch's later changes of a handle
//!   whose change failed (except its release, which always closes the daemon's handle), and changes
//!   still pending for a handle with a recorded failure are dropped.

use std::collections::HashMap;
use std::sync::Mutex;

use sessionfs_proto::{
    errno, BatchedChange, ErrorReply, FailedWrite, MAX_BATCH_BYTES, MAX_BATCH_WRITES,
};
use tracing::warn;

/// A change (a write, or an attribute change of a file the mount created and holds open)
/// acknowledged to the kernel and not yet sent.
pub struct Deferred {
    /// The bridge's handle the change came through.
    pub handle: u64,
    /// The connection holding the daemon's handle (`quinn::Connection::stable_id`).
    pub conn: usize,
    pub change: BatchedChange,
    /// Held until the write has landed or failed (the bridge's record of a change under way).
    pub guard: Box<dyn Send>,
}

/// What the caller of [`WriteBehind::defer`] should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Nothing: a push is already due.
    Nothing,
    /// Push within the write-behind delay: this write is the first one pending.
    PushLater,
    /// Push now: the pending writes fill a batch.
    PushNow,
}

/// Why [`WriteBehind::defer`] did not take a change.
pub enum Refused {
    /// The pending changes have no room for it: push, wait for room, then try again.
    NoRoom(Box<Deferred>),
    /// An earlier change of its handle failed: the write is answered with that failure (reported
    /// once), never acknowledged after it.
    Failed(ErrorReply),
}

/// Writes pending or on their way for one session.
#[derive(Default)]
pub struct WriteBehind {
    state: Mutex<State>,
    /// Woken when a batch lands or the pending writes are taken.
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    pending: Vec<Deferred>,
    pending_bytes: usize,
    /// The handles whose writes are in the batch on its way; `None` while none is.
    sending: Option<Vec<u64>>,
    /// Failed writes per handle, until the handle reports them.
    failed: HashMap<u64, ErrorReply>,
}

/// The writes a request carries: they are on their way until [`Carried::landed`] (or the value is
/// dropped, which counts them as failed).
pub struct Carried<'a> {
    owner: &'a WriteBehind,
    pub changes: Vec<BatchedChange>,
    /// Per daemon handle, the bridge handle whose writes it carries.
    handles: HashMap<u64, u64>,
    guards: Vec<Box<dyn Send>>,
    /// The bridge handles whose release it carries.
    released: Vec<u64>,
    done: bool,
}

/// What a request may do once it is its turn.
pub enum Turn<'a> {
    /// Nothing pending and nothing on its way: send as is.
    Clear,
    /// Send with these writes ahead of it.
    Carry(Carried<'a>),
}

/// Logs the failure of a closed handle's write that its `close` could not report any more (it came
/// after, or the handle was closed without a flush).
fn report_unreported(handle: u64, failure: Option<ErrorReply>) {
    if let Some(e) = failure {
        warn!(
            handle,
            "a write acknowledged earlier failed after its file was closed: {}", e.message
        );
    }
}

/// Takes `handle`'s pending changes but its release out of `st` (to be dropped outside its lock).
fn drop_pending_of(st: &mut State, handle: u64) -> Vec<Deferred> {
    let (behind, kept): (Vec<Deferred>, Vec<Deferred>) = std::mem::take(&mut st.pending)
        .into_iter()
        .partition(|d| d.handle == handle && !matches!(d.change, BatchedChange::Release { .. }));
    st.pending = kept;
    st.pending_bytes = st.pending.iter().map(|d| d.change.data_len()).sum();
    behind
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // The state is a queue and a few records; a panicking holder leaves nothing half-updated that
    // matters more than the data it was handling.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl WriteBehind {
    /// Takes `d` as pending, or hands it back when the pending writes have no room for it (push, then
    /// try again). Writes of one handle that continue each other are merged. A write of a handle with
    /// a recorded failure is refused with it: a write that waited for room while an earlier one
    /// failed must not be acknowledged after the failure (it would add a batch to what is lost).
    pub fn defer(&self, d: Deferred) -> Result<Then, Refused> {
        let mut st = lock(&self.state);
        if matches!(d.change, BatchedChange::Write(_)) {
            if let Some(failure) = st.failed.remove(&d.handle) {
                let behind = drop_pending_of(&mut st, d.handle);
                drop(st);
                // Dropping their guards updates the bridge's caches: outside the lock.
                drop((d, behind));
                return Err(Refused::Failed(failure));
            }
        }
        let len = d.change.data_len();
        if st.pending_bytes + len > MAX_BATCH_BYTES as usize {
            return Err(Refused::NoRoom(Box::new(d)));
        }
        let first = st.pending.is_empty();
        let merge_into =
            st.pending
                .last_mut()
                .and_then(|last| match (&mut last.change, &d.change) {
                    (BatchedChange::Write(last_write), BatchedChange::Write(write))
                        if last.handle == d.handle
                            && last.conn == d.conn
                            && last_write.offset + last_write.data.len() as u64 == write.offset =>
                    {
                        Some(last_write)
                    }
                    _ => None,
                });
        let merged = if let Some(last_write) = merge_into {
            if let BatchedChange::Write(write) = &d.change {
                last_write.data.extend_from_slice(&write.data);
            }
            // The first write's guard is held for both; this one's is dropped below, outside the
            // lock (dropping a guard updates the bridge's caches).
            Some(d)
        } else {
            if st.pending.len() >= MAX_BATCH_WRITES {
                return Err(Refused::NoRoom(Box::new(d)));
            }
            st.pending.push(d);
            None
        };
        st.pending_bytes += len;
        let then = if st.pending_bytes >= MAX_BATCH_BYTES as usize
            || st.pending.len() >= MAX_BATCH_WRITES
        {
            Then::PushNow
        } else if first {
            Then::PushLater
        } else {
            Then::Nothing
        };
        drop(st);
        drop(merged);
        Ok(then)
    }

    /// Waits until no batch is on its way, then takes the pending writes for a request about to be
    /// sent on connection `conn`. Writes held for another connection (one that has since gone) cannot
    /// be sent: they are recorded as failed.
    pub async fn turn(&self, conn: usize) -> Turn<'_> {
        let turn = self
            .wait_for(|st| st.sending.is_none().then(|| self.take_pending(st, conn)))
            .await;
        if matches!(turn, Turn::Carry(_)) {
            self.changed.notify_waiters();
        }
        turn
    }

    /// Takes the pending writes (none on their way) for a request on connection `conn`.
    fn take_pending(&self, st: &mut State, conn: usize) -> Turn<'_> {
        if st.pending.is_empty() {
            return Turn::Clear;
        }
        let pending = std::mem::take(&mut st.pending);
        st.pending_bytes = 0;
        let mut carried = Carried {
            owner: self,
            changes: Vec::with_capacity(pending.len()),
            handles: HashMap::new(),
            guards: Vec::with_capacity(pending.len()),
            released: Vec::new(),
            done: false,
        };
        let mut sending = Vec::new();
        for d in pending {
            let release = matches!(d.change, BatchedChange::Release { .. });
            if release && d.conn != conn {
                // The daemon's handle went with its connection; the bridge's is closed.
                report_unreported(d.handle, st.failed.remove(&d.handle));
            } else if st.failed.contains_key(&d.handle) && !release {
                // Behind a write of its handle that failed: not applied, like the
                // later writes of a failed handle within a batch.
            } else if d.conn == conn {
                carried.handles.insert(d.change.fh(), d.handle);
                carried.changes.push(d.change);
                if release {
                    carried.released.push(d.handle);
                }
                if !sending.contains(&d.handle) {
                    sending.push(d.handle);
                }
            } else {
                st.failed.entry(d.handle).or_insert_with(|| {
                    ErrorReply::new(
                        errno::EIO,
                        "the connection holding this open file is gone; its last \
                         writes were not written",
                    )
                });
            }
            carried.guards.push(d.guard);
        }
        st.sending = Some(sending);
        Turn::Carry(carried)
    }

    /// Waits until `check`, run on the state under its lock, returns something (it is run again
    /// after every change of the state).
    async fn wait_for<T>(&self, mut check: impl FnMut(&mut State) -> Option<T>) -> T {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(done) = check(&mut lock(&self.state)) {
                return done;
            }
            changed.await;
        }
    }

    /// Waits until a write of `len` bytes fits among the pending ones (a push takes them when the
    /// batch on its way has landed). Callers bound it: it waits for other requests.
    pub async fn room(&self, len: usize) {
        self.wait_for(|st| {
            (st.pending_bytes + len <= MAX_BATCH_BYTES as usize
                && st.pending.len() < MAX_BATCH_WRITES)
                .then_some(())
        })
        .await
    }

    /// Whether `handle` has writes pending or on their way.
    pub fn holds(&self, handle: u64) -> bool {
        let st = lock(&self.state);
        st.pending.iter().any(|d| d.handle == handle)
            || st.sending.as_ref().is_some_and(|h| h.contains(&handle))
    }

    /// Whether any write is pending.
    pub fn has_pending(&self) -> bool {
        !lock(&self.state).pending.is_empty()
    }

    /// Waits until `handle`'s writes on their way (not the pending ones) have landed.
    pub async fn landed(&self, handle: u64) {
        self.wait_for(|st| {
            let sending = st.sending.as_ref().is_some_and(|h| h.contains(&handle));
            (!sending).then_some(())
        })
        .await
    }

    /// Whether a failure is recorded for `handle` (and not reported yet).
    pub fn has_failed(&self, handle: u64) -> bool {
        lock(&self.state).failed.contains_key(&handle)
    }

    /// `handle` was closed with nothing of it pending: a failure it did not report is logged.
    pub fn closed(&self, handle: u64) {
        report_unreported(handle, self.take_failure(handle));
    }

    /// The failure recorded for `handle`, once: the handle reports it. Its changes still pending
    /// (made before the failure was known, behind the change that failed) are dropped with it, so
    /// that none of them lands past the failed one once the failure no longer marks the handle.
    pub fn take_failure(&self, handle: u64) -> Option<ErrorReply> {
        let mut st = lock(&self.state);
        let failure = st.failed.remove(&handle)?;
        let behind = drop_pending_of(&mut st, handle);
        drop(st);
        // Dropping their guards updates the bridge's caches: outside the lock.
        drop(behind);
        Some(failure)
    }

    fn finish(&self, failed: impl IntoIterator<Item = (u64, ErrorReply)>, released: &[u64]) {
        let mut st = lock(&self.state);
        for (handle, error) in failed {
            st.failed.entry(handle).or_insert(error);
        }
        // Closed handles report nothing any more.
        for handle in released {
            report_unreported(*handle, st.failed.remove(handle));
        }
        st.sending = None;
        drop(st);
        self.changed.notify_waiters();
    }
}

impl Carried<'_> {
    /// The batch's reply came: records the writes that failed (daemon handles as the reply names
    /// them) and lets the session's next request go.
    pub fn landed(mut self, failed: Vec<FailedWrite>) {
        self.done = true;
        let handles = std::mem::take(&mut self.handles);
        let failed = failed.into_iter().filter_map(|f| {
            let handle = handles.get(&f.fh).copied();
            handle.map(|h| (h, f.error))
        });
        self.owner.finish(failed, &self.released);
    }

    /// The batch got no usable answer: every write in it counts as failed with `error`.
    pub fn failed(mut self, error: &ErrorReply) {
        self.fail_all(error);
    }

    fn fail_all(&mut self, error: &ErrorReply) {
        self.done = true;
        let handles: Vec<u64> = self.handles.values().copied().collect();
        self.owner.finish(
            handles.into_iter().map(|h| (h, error.clone())),
            &self.released,
        );
    }
}

impl Drop for Carried<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Abandoned (the request timed out or its task ended): whether the writes landed is
            // unknown, so they count as failed.
            self.fail_all(&ErrorReply::new(
                errno::EIO,
                "writes acknowledged earlier got no answer from the daemon",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessionfs_proto::{BatchedWrite, SetAttrs};

    fn d(handle: u64, conn: usize, offset: u64, data: &[u8]) -> Deferred {
        Deferred {
            handle,
            conn,
            change: BatchedChange::Write(BatchedWrite {
                fh: handle + 100,
                offset,
                data: data.to_vec(),
            }),
            guard: Box::new(()),
        }
    }

    fn carried(turn: Turn<'_>) -> Carried<'_> {
        match turn {
            Turn::Carry(c) => c,
            Turn::Clear => panic!("nothing carried"),
        }
    }

    #[tokio::test]
    async fn contiguous_writes_merge_and_a_request_carries_them_in_order() {
        let wb = WriteBehind::default();
        assert_eq!(wb.defer(d(1, 7, 0, b"ab")).ok(), Some(Then::PushLater));
        assert_eq!(wb.defer(d(1, 7, 2, b"cd")).ok(), Some(Then::Nothing));
        assert_eq!(wb.defer(d(2, 7, 0, b"x")).ok(), Some(Then::Nothing));
        // Not contiguous: a write of its own, after the others.
        assert_eq!(wb.defer(d(1, 7, 0, b"Z")).ok(), Some(Then::Nothing));
        assert!(wb.holds(1) && wb.holds(2) && !wb.holds(3));
        let c = carried(wb.turn(7).await);
        let got: Vec<(u64, u64, &[u8])> = c
            .changes
            .iter()
            .filter_map(|c| match c {
                BatchedChange::Write(w) => Some((w.fh, w.offset, &w.data[..])),
                _ => None,
            })
            .collect();
        assert_eq!(
            got,
            vec![(101, 0, &b"abcd"[..]), (102, 0, b"x"), (101, 0, b"Z")]
        );
        assert!(wb.holds(1), "on its way");
        c.landed(vec![]);
        assert!(!wb.holds(1));
        assert!(matches!(wb.turn(7).await, Turn::Clear));
    }

    #[tokio::test]
    async fn an_attribute_change_keeps_its_place_between_writes() {
        let wb = WriteBehind::default();
        wb.defer(d(1, 7, 0, b"ab")).ok();
        let chmod = Deferred {
            handle: 1,
            conn: 7,
            change: BatchedChange::SetAttr {
                fh: 101,
                attrs: SetAttrs {
                    mode: Some(0o600),
                    ..SetAttrs::default()
                },
            },
            guard: Box::new(()),
        };
        assert_eq!(wb.defer(chmod).ok(), Some(Then::Nothing));
        // Contiguous with the first write, but after the change: not merged across it.
        wb.defer(d(1, 7, 2, b"cd")).ok();
        let c = carried(wb.turn(7).await);
        let kinds: Vec<&str> = c
            .changes
            .iter()
            .map(|c| match c {
                BatchedChange::Write(_) => "write",
                BatchedChange::SetAttr { .. } => "setattr",
                BatchedChange::Release { .. } => "release",
            })
            .collect();
        assert_eq!(kinds, ["write", "setattr", "write"]);
        c.landed(vec![]);
    }

    #[tokio::test]
    async fn a_release_goes_out_after_a_failure_and_closes_its_record() {
        let wb = WriteBehind::default();
        let release = |handle: u64, conn| Deferred {
            handle,
            conn,
            change: BatchedChange::Release { fh: handle + 100 },
            guard: Box::new(()),
        };
        wb.defer(d(1, 7, 0, b"ab")).ok();
        let c = carried(wb.turn(7).await);
        c.landed(vec![FailedWrite {
            fh: 101,
            error: ErrorReply::new(28, "no space"),
        }]);
        // Handle 1 failed and was closed without reporting it: its release still goes out, behind
        // its dropped write, and the failure goes with it (logged).
        wb.defer(d(1, 7, 2, b"cd")).ok();
        wb.defer(release(1, 7)).ok();
        // A release for a connection that is gone has nothing to close.
        wb.defer(release(2, 6)).ok();
        let c = carried(wb.turn(7).await);
        assert_eq!(c.changes, vec![BatchedChange::Release { fh: 101 }]);
        c.landed(vec![]);
        assert!(!wb.has_failed(1) && !wb.has_failed(2));
        assert!(matches!(wb.turn(7).await, Turn::Clear));
    }

    #[tokio::test]
    async fn a_request_waits_for_the_batch_on_its_way() {
        let wb = std::sync::Arc::new(WriteBehind::default());
        wb.defer(d(1, 7, 0, b"ab")).ok();
        let c = carried(wb.turn(7).await);
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let waiter = {
            let wb = wb.clone();
            tokio::spawn(async move {
                let clear = matches!(wb.turn(7).await, Turn::Clear);
                let _ = tx.send(clear);
            })
        };
        tokio::task::yield_now().await;
        assert!(rx.try_recv().is_err(), "sent while a batch was on its way");
        c.landed(vec![]);
        waiter.await.expect("waiter");
        assert_eq!(rx.await.ok(), Some(true));
    }

    #[tokio::test]
    async fn failures_are_reported_once_per_handle_and_abandoned_batches_fail() {
        let wb = WriteBehind::default();
        wb.defer(d(1, 7, 0, b"ab")).ok();
        wb.defer(d(2, 7, 0, b"cd")).ok();
        let c = carried(wb.turn(7).await);
        // A write of handle 2 made while its batch is on its way...
        wb.defer(d(2, 7, 2, b"late")).ok();
        c.landed(vec![FailedWrite {
            fh: 102,
            error: ErrorReply::new(28, "no space"),
        }]);
        assert_eq!(wb.take_failure(1), None);
        // ...is dropped when the batch failed, not sent past the failure.
        let c = carried(wb.turn(7).await);
        assert!(c.changes.is_empty());
        c.landed(vec![]);
        // A write made after the failure is refused with it, reported once.
        assert!(matches!(wb.defer(d(2, 7, 6, b"after")), Err(Refused::Failed(e)) if e.errno == 28));
        assert_eq!(wb.take_failure(2), None, "reported once");
        // A batch dropped without an answer fails its writes, and the session goes on.
        wb.defer(d(3, 7, 0, b"ef")).ok();
        drop(carried(wb.turn(7).await));
        assert_eq!(wb.take_failure(3).map(|e| e.errno), Some(errno::EIO));
        assert!(matches!(wb.turn(7).await, Turn::Clear));
        // Writes held for a connection that is gone fail instead of going out on another one.
        wb.defer(d(4, 6, 0, b"gh")).ok();
        let c = carried(wb.turn(7).await);
        assert!(c.changes.is_empty());
        c.landed(vec![]);
        assert_eq!(wb.take_failure(4).map(|e| e.errno), Some(errno::EIO));
    }

    #[tokio::test]
    async fn a_write_without_room_waits_until_the_pending_writes_are_taken() {
        let wb = std::sync::Arc::new(WriteBehind::default());
        let chunk = vec![0u8; MAX_BATCH_BYTES as usize];
        assert_eq!(wb.defer(d(1, 7, 0, &chunk)).ok(), Some(Then::PushNow));
        let waiter = {
            let wb = wb.clone();
            tokio::spawn(async move { wb.room(10).await })
        };
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "room while the pending writes fill a batch"
        );
        let c = carried(wb.turn(7).await);
        waiter.await.expect("room once they were taken");
        c.landed(vec![]);
    }

    #[test]
    fn a_write_of_a_handle_whose_change_failed_is_refused_with_that_failure() {
        let wb = WriteBehind::default();
        wb.finish([(1, ErrorReply::new(errno::EIO, "lost"))], &[]);
        let Err(Refused::Failed(e)) = wb.defer(d(1, 7, 0, b"ab")) else {
            panic!("a write was acknowledged after its handle's failure");
        };
        assert_eq!(e.errno, errno::EIO);
        // Reported once; other handles are not concerned; a release always goes.
        assert!(!wb.has_failed(1));
        assert!(wb.defer(d(2, 8, 0, b"x")).is_ok());
        wb.finish([(1, ErrorReply::new(errno::EIO, "lost"))], &[]);
        let release = Deferred {
            handle: 1,
            conn: 7,
            change: BatchedChange::Release { fh: 101 },
            guard: Box::new(()),
        };
        assert!(wb.defer(release).is_ok());
    }

    /// A failure reported by a later write of its handle takes the handle's writes still pending
    /// with it: they were made behind the change that failed, and nothing lands past that one.
    #[tokio::test]
    async fn writes_pending_behind_a_reported_failure_never_go_out() {
        let wb = WriteBehind::default();
        wb.defer(d(1, 7, 0, b"ab")).ok();
        let c = carried(wb.turn(7).await);
        // Made while its batch is on its way, before the failure is known.
        wb.defer(d(1, 7, 2, b"cd")).ok();
        c.landed(vec![FailedWrite {
            fh: 101,
            error: ErrorReply::new(28, "no space"),
        }]);
        // The handle's next write reports the failure...
        assert_eq!(wb.take_failure(1).map(|e| e.errno), Some(28));
        // ...and the write behind it is gone, not sent.
        assert!(!wb.holds(1));
        assert!(matches!(wb.turn(7).await, Turn::Clear));
    }

    #[test]
    fn pending_writes_never_exceed_one_batch() {
        let wb = WriteBehind::default();
        let chunk = vec![0u8; MAX_BATCH_BYTES as usize / 2];
        assert_eq!(wb.defer(d(1, 7, 0, &chunk)).ok(), Some(Then::PushLater));
        let len = chunk.len() as u64;
        assert_eq!(wb.defer(d(1, 7, len, &chunk)).ok(), Some(Then::PushNow));
        assert!(wb.defer(d(1, 7, 2 * len, b"x")).is_err());
        let many = WriteBehind::default();
        for i in 0..MAX_BATCH_WRITES as u64 {
            // Every other byte: nothing merges.
            let then = many.defer(d(1, 7, 2 * i, b"x"));
            assert!(then.is_ok(), "write {i}");
        }
        assert!(many.defer(d(1, 7, 1, b"x")).is_err());
        assert!(many.has_pending());
    }
}
