//! The core's locks and the one order they are taken in ([`Level`]).
//!
//! Debug builds (every test, the end-to-end suites' mounts included) check the order at each
//! acquisition: taking a lock while holding it or a later one panics with both levels named, so an
//! order that could deadlock fails a test instead of hanging a mount. Release builds check nothing.
//! No lock is held across an `.await` (clippy's `await_holding_lock`).

use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, MutexGuard};

/// The core's locks, in the order a thread may take them: while it holds one, it may take only
/// later ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Level {
    /// Which inodes have direct handles (see [`crate::direct`]): taken by every open that adds a
    /// handle and every release that removes one, and by what answers a file's attributes from
    /// memory, so that a direct start or end cannot come between a check and its answer.
    Direct,
    /// The open files, which handle created its file, which files are losing a name
    /// ([`super::Files`]).
    Files,
    /// One open file's head or predicted attributes.
    File,
    /// The inode table.
    Inodes,
    /// What the bridge answers from memory on the daemons' behalf ([`super::Memory`]).
    Memory,
}

/// A mutex at a [`Level`].
pub(super) struct Ordered<T> {
    // Checked by debug builds only.
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    level: Level,
    mutex: Mutex<T>,
}

impl<T> Ordered<T> {
    pub(super) const fn new(level: Level, value: T) -> Self {
        Ordered {
            level,
            mutex: Mutex::new(value),
        }
    }

    /// Locks it. A panicking holder cannot leave the guarded tables in a state that is harmful to
    /// read (they are caches and bookkeeping), so poisoning is ignored.
    pub(super) fn lock(&self) -> Guard<'_, T> {
        #[cfg(debug_assertions)]
        held::take(self.level);
        let guard = self.mutex.lock().unwrap_or_else(|p| p.into_inner());
        Guard {
            guard,
            #[cfg(debug_assertions)]
            level: self.level,
        }
    }
}

/// A held [`Ordered`] lock.
pub(super) struct Guard<'a, T> {
    guard: MutexGuard<'a, T>,
    #[cfg(debug_assertions)]
    level: Level,
}

impl<T> Deref for Guard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

#[cfg(debug_assertions)]
impl<T> Drop for Guard<'_, T> {
    fn drop(&mut self) {
        held::release(self.level);
    }
}

#[cfg(debug_assertions)]
mod held {
    use std::cell::Cell;

    use super::Level;

    thread_local! {
        /// The levels this thread holds, one bit each.
        static HELD: Cell<u8> = const { Cell::new(0) };
    }

    fn bit(level: Level) -> u8 {
        1 << level as u8
    }

    pub(super) fn take(level: Level) {
        HELD.with(|held| {
            let now = held.get();
            // Held at this level or a later one: taking this lock now breaks the order.
            let later = now & !(bit(level) - 1);
            assert!(
                later == 0,
                "lock order: taking {level:?} while holding {:?}",
                (0..8u8)
                    .filter(|b| later & (1 << b) != 0)
                    .collect::<Vec<_>>()
            );
            held.set(now | bit(level));
        });
    }

    pub(super) fn release(level: Level) {
        HELD.with(|held| held.set(held.get() & !bit(level)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_taken_in_order_are_fine_and_released_ones_can_be_taken_again() {
        let (direct, memory) = (
            Ordered::new(Level::Direct, 1),
            Ordered::new(Level::Memory, 2),
        );
        {
            let d = direct.lock();
            let m = memory.lock();
            assert_eq!(*d + *m, 3);
        }
        let _m = memory.lock();
    }

    #[test]
    #[should_panic(expected = "lock order: taking Inodes")]
    fn a_lock_taken_after_a_later_one_panics() {
        let (inodes, memory) = (
            Ordered::new(Level::Inodes, ()),
            Ordered::new(Level::Memory, ()),
        );
        let _m = memory.lock();
        let _i = inodes.lock();
    }

    #[test]
    #[should_panic(expected = "lock order: taking Memory")]
    fn a_lock_taken_twice_by_one_thread_panics() {
        let memory = Ordered::new(Level::Memory, ());
        let _a = memory.lock();
        let _b = memory.lock();
    }
}
