//! What the bridge knows of a file the mount created and holds open, while nothing else can have
//! changed it: the attributes the mount's own deferred changes give it. With that, the attribute
//! changes a `tar` or `cp -p` makes right after writing a file (times, owner, mode) are answered at
//! once and sent behind with its writes (see [`crate::write_behind`]), instead of a round trip each.
//!
//! The record is of one open handle (the one `create` returned), made when no change event about the
//! file arrived while the create ran (see [`crate::crossed`]). It holds while every change through the mount since the
//! create is one deferred through that handle (changes are numbered as they start, see `core`'s
//! `Mutation`); a change event that touches the file (its node, or a name bound to it) ends it, as
//! does any other change through the mount, and later changes go to the daemon as usual. What it predicts is exact except the change time (the bridge's clock when the change was
//! acknowledged; the daemon's when it lands) and the block count (estimated from the size); the
//! kernel is told to cache none of it, and the change event of each landed change replaces it.

use std::time::SystemTime;

use sessionfs_proto::{Attr, SetAttrs, SetTime, Timestamp, S_IFMT, S_IFREG};

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_IXGRP: u32 = 0o0010;

/// The attributes of a file the mount created and holds open, as its own changes left them.
#[derive(Debug, Clone)]
pub struct Known {
    attr: Attr,
    /// The number of the last change through the mount this accounts for.
    last: u64,
}

impl Known {
    /// What the reply of change `number` (a create) said.
    pub fn new(attr: Attr, number: u64) -> Self {
        Known { attr, last: number }
    }

    /// Whether change `number` directly follows the ones this accounts for.
    pub fn followed_by(&self, number: u64) -> bool {
        self.last + 1 == number
    }

    /// Whether this still holds now that `started` changes have started.
    pub fn holds(&self, started: u64) -> bool {
        self.last == started
    }

    pub fn attr(&self) -> &Attr {
        &self.attr
    }

    /// Accounts for change `number`, a write of `len` bytes at `offset` made at `now`.
    pub fn write(&mut self, number: u64, offset: u64, len: u64, now: SystemTime) {
        let a = &mut self.attr;
        a.size = a.size.max(offset.saturating_add(len));
        a.blocks = a.blocks.max(blocks_for(a.size, a.blksize));
        let now = timestamp(now);
        (a.mtime, a.ctime) = (now, now);
        self.last = number;
    }

    /// Accounts for change `number`, `attrs` (no size) set at `now`, as the daemon applies them:
    /// owner first (which clears a regular file's set-user-ID bit, and its set-group-ID bit if it
    /// is group-executable), then mode, then times.
    pub fn set(&mut self, number: u64, attrs: &SetAttrs, now: SystemTime) {
        let a = &mut self.attr;
        let now = timestamp(now);
        if attrs.uid.is_some() || attrs.gid.is_some() {
            a.uid = attrs.uid.unwrap_or(a.uid);
            a.gid = attrs.gid.unwrap_or(a.gid);
            if a.mode & S_IFMT == S_IFREG {
                a.mode &= !S_ISUID;
                if a.mode & S_IXGRP != 0 {
                    a.mode &= !S_ISGID;
                }
            }
        }
        if let Some(mode) = attrs.mode {
            a.mode = (a.mode & S_IFMT) | (mode & 0o7777);
        }
        let at = |t: &SetTime| match t {
            SetTime::Now => now,
            SetTime::At(t) => *t,
        };
        if let Some(t) = &attrs.atime {
            a.atime = at(t);
        }
        if let Some(t) = &attrs.mtime {
            a.mtime = at(t);
        }
        a.ctime = now;
        self.last = number;
    }
}

/// 512-byte blocks a file of `size` bytes takes in blocks of `blksize` (an estimate: holes and
/// preallocation are the file system's business).
fn blocks_for(size: u64, blksize: u32) -> u64 {
    let unit = u64::from(blksize.max(512));
    size.div_ceil(unit) * (unit / 512)
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        secs: d.as_secs() as i64,
        nanos: d.subsec_nanos(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn file(mode: u32) -> Attr {
        Attr {
            mode: S_IFREG | mode,
            blksize: 4096,
            uid: 1000,
            gid: 1000,
            ..Attr::default()
        }
    }

    #[test]
    fn a_chown_clears_set_id_bits_as_the_kernel_does_and_a_mode_given_with_it_wins() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(7);
        let mut k = Known::new(file(0o6755), 1);
        k.set(
            2,
            &SetAttrs {
                uid: Some(0),
                ..SetAttrs::default()
            },
            at,
        );
        assert_eq!((k.attr().uid, k.attr().gid), (0, 1000));
        assert_eq!(
            k.attr().mode & 0o7777,
            0o0755,
            "group-executable: both bits go"
        );
        let mut k = Known::new(file(0o6745), 1);
        k.set(
            2,
            &SetAttrs {
                gid: Some(5),
                mode: Some(0o4751),
                ..SetAttrs::default()
            },
            at,
        );
        assert_eq!(k.attr().mode, S_IFREG | 0o4751, "the mode given wins");
        assert_eq!(k.attr().ctime.secs, 7);
        let mut k = Known::new(file(0o2644), 1);
        k.set(
            2,
            &SetAttrs {
                uid: Some(3),
                ..SetAttrs::default()
            },
            at,
        );
        assert_eq!(k.attr().mode & 0o7777, 0o2644, "not group-executable: kept");
    }

    #[test]
    fn writes_grow_the_file_and_times_follow_the_changes() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(50);
        let mut k = Known::new(file(0o644), 4);
        assert!(k.followed_by(5) && !k.followed_by(6));
        k.write(5, 0, 10_000, at);
        k.write(6, 100, 10, at);
        assert_eq!((k.attr().size, k.attr().blocks), (10_000, 24));
        assert_eq!((k.attr().mtime.secs, k.attr().ctime.secs), (50, 50));
        let set = Timestamp { secs: 3, nanos: 4 };
        k.set(
            7,
            &SetAttrs {
                atime: Some(SetTime::At(set)),
                mtime: Some(SetTime::Now),
                ..SetAttrs::default()
            },
            at + Duration::from_secs(1),
        );
        assert_eq!(k.attr().atime, set);
        assert_eq!((k.attr().mtime.secs, k.attr().ctime.secs), (51, 51));
        assert!(k.holds(7) && !k.holds(8));
    }
}
