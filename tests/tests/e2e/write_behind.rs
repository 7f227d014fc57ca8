//! Write-behind: writes through the mount are acknowledged before the daemon has them (see
//! `bridge-fs/src/write_behind.rs`). These tests check what makes that invisible: every later
//! request of the session reaches the daemon after them, they reach the session within a bound even
//! if nothing follows, and a write that fails after it was acknowledged is reported at `close` or
//! `fsync` (and by the handle's next write), never lost. The session directory here is a local
//! session's, read directly: what a process inside the session sees.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use sessionfs_tests::{wait_until, Harness};

/// Deterministic bytes that differ at every offset of interest.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn writes_acknowledged_early_land_before_any_later_request_and_within_a_bound() -> Result<()> {
    let mut h = Harness::new()?;
    let ws = h.create_session("wb")?;
    h.mount()?;
    let mount = h.path("wb", "");
    let mut expected = pattern(30 * 1024, 1);
    let mut file = fs::File::create(mount.join("f"))?;
    // Small writes as tar and cp make them, then one that rewrites the start.
    for chunk in expected.chunks(10 * 1024) {
        file.write_all(chunk)?;
    }
    file.write_all_at(b"REWRITTEN", 0)?;
    expected[..9].copy_from_slice(b"REWRITTEN");
    // Any later request of the session reaches the daemon after the writes: here a lookup of a
    // name never seen (a round trip), then the session's own view, read at once (the writes would
    // otherwise be pushed only a few milliseconds later).
    assert!(!mount.join("never-seen").exists());
    assert_eq!(
        fs::read(ws.join("f"))?,
        expected,
        "the session's file after a later request"
    );
    // With nothing after it and the file still open, a write still reaches the session.
    let tail = pattern(5000, 2);
    file.seek(SeekFrom::End(0))?;
    file.write_all(&tail)?;
    expected.extend_from_slice(&tail);
    wait_until(
        "a write with nothing after it to reach the session",
        Duration::from_secs(2),
        || fs::read(ws.join("f")).is_ok_and(|got| got == expected),
    )?;
    // Writes of two handles keep their order; close pushes what is left.
    let mut other = fs::OpenOptions::new().write(true).open(mount.join("f"))?;
    file.write_all_at(b"first", 100)?;
    other.write_all_at(b"second", 100)?;
    expected[100..106].copy_from_slice(b"second");
    file.write_all_at(b"x", 2000)?;
    expected[2000] = b'x';
    drop(file);
    other.flush()?;
    drop(other);
    assert_eq!(fs::read(ws.join("f"))?, expected, "after close");
    assert_eq!(fs::read(mount.join("f"))?, expected, "through the mount");
    // Writes that fill batch after batch (each waits until the pending one has left): in order.
    let big = pattern(8 << 20, 5);
    let mut file = fs::File::create(mount.join("big"))?;
    for chunk in big.chunks(1 << 20) {
        file.write_all(chunk)?;
    }
    assert_eq!(fs::metadata(mount.join("big"))?.len(), big.len() as u64);
    assert!(
        fs::read(ws.join("big"))? == big,
        "the session's copy of 8 MiB"
    );
    drop(file);
    h.unmount()
}

/// A file the mount created and holds open: its attribute changes as `tar` and `cp -p` make them
/// after writing it (times, then owner, then mode, through the descriptor) are answered from what the
/// bridge knows and sent behind its writes (see `bridge-fs/src/known.rs`). The mount shows each
/// change at once; after `fsync` or `close` the session has them all, and the mount then shows
/// exactly the session's attributes, change time included.
#[test]
fn attribute_changes_of_a_file_created_and_held_open_land_with_its_writes() -> Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut h = Harness::new()?;
    let ws = h.create_session("attrs")?;
    h.mount()?;
    let mount = h.path("attrs", "");
    let key = |m: &fs::Metadata| {
        (
            m.mode(),
            m.uid(),
            m.gid(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
        )
    };
    for round in 0..12u32 {
        let name = format!("f{round}");
        let data = pattern(10_000 + round as usize, round as u8);
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(mount.join(&name))?;
        (&file).write_all(&data)?;
        let fd = file.as_raw_fd();
        let times = [libc::timespec {
            tv_sec: 1_000_000 + i64::from(round),
            tv_nsec: 7,
        }; 2];
        // SAFETY: `fd` is open (`file` owns it) and `times` holds the two timespecs futimens
        // reads, alive for the call.
        let set = unsafe { libc::futimens(fd, times.as_ptr()) };
        ensure!(set == 0, "futimens");
        // Every other round the mode comes first: the owner change then clears set-user-ID.
        let (mode, expected_mode) = if round % 2 == 0 {
            (0o4710, 0o4710)
        } else {
            (0o4755, 0o0755)
        };
        if round % 2 == 1 {
            // SAFETY: fchmod takes no pointers; `fd` is open (`file` owns it).
            ensure!(unsafe { libc::fchmod(fd, mode) } == 0, "fchmod");
        }
        // SAFETY: fchown takes no pointers; `fd` is open (`file` owns it). Root may give the file
        // any group.
        let chowned = unsafe { libc::fchown(fd, u32::MAX, 100 + round) };
        ensure!(chowned == 0, "fchown");
        if round % 2 == 0 {
            // SAFETY: fchmod takes no pointers; `fd` is open (`file` owns it).
            ensure!(unsafe { libc::fchmod(fd, mode) } == 0, "fchmod");
        }
        let expected = (
            libc::S_IFREG | expected_mode,
            0,
            100 + round,
            data.len() as u64,
            1_000_000 + i64::from(round),
            7,
        );
        assert_eq!(
            key(&file.metadata()?),
            expected,
            "{name}: the mount at once"
        );
        if round % 3 == 0 {
            file.sync_all()?;
            assert_eq!(
                key(&fs::metadata(ws.join(&name))?),
                expected,
                "{name}: session after fsync"
            );
        }
        close(file)?;
        let (m, s) = (
            fs::metadata(mount.join(&name))?,
            fs::metadata(ws.join(&name))?,
        );
        assert_eq!(key(&s), expected, "{name}: the session after close");
        assert_eq!(
            (key(&m), m.ctime(), m.ctime_nsec()),
            (key(&s), s.ctime(), s.ctime_nsec()),
            "{name}: the mount and the session differ after close"
        );
        assert_eq!(fs::read(ws.join(&name))?, data, "{name}: content");
    }
    h.unmount()
}

/// A close is answered at once and the daemon's handle closed behind it (with the session's next
/// request, or within the write-behind delay when none follows): the daemon ends up with no more
/// open files than before, without any later request through the mount.
#[test]
fn files_closed_through_the_mount_are_closed_in_the_daemon_without_a_later_request() -> Result<()> {
    let mut h = Harness::new()?;
    h.create_session("rel")?;
    h.mount()?;
    let mount = h.path("rel", "");
    // Connected (the session's root is looked up), nothing open.
    fs::metadata(&mount)?;
    let pid = h.daemon_pid("rel")?;
    let open_fds = || {
        fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(usize::MAX)
    };
    let baseline = open_fds();
    let files: Vec<fs::File> = (0..40)
        .map(|i| fs::File::create(mount.join(format!("f{i}"))))
        .collect::<std::io::Result<_>>()?;
    for mut file in &files {
        file.write_all(b"data")?;
    }
    ensure!(
        open_fds() >= baseline + files.len(),
        "the daemon does not hold the files open: {} fds, {baseline} before",
        open_fds()
    );
    drop(files);
    wait_until(
        "the daemon to close the handles closed through the mount",
        Duration::from_secs(2),
        || open_fds() <= baseline,
    )?;
    h.unmount()
}

/// Closes `fd` and returns what `close` said (dropping a `File` ignores it).
fn close(file: fs::File) -> std::io::Result<()> {
    let fd = file.into_raw_fd();
    // SAFETY: `fd` was just taken out of an owning `File`, and is closed once.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A small tmpfs mounted for the test's lifetime.
struct SmallFs<'a>(&'a Path);

impl<'a> SmallFs<'a> {
    fn mount(dir: &'a Path, size: &str) -> Result<Self> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .context("mount(8)")?;
        ensure!(
            out.status.success(),
            "mounting a tmpfs at {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(SmallFs(dir))
    }
}

impl Drop for SmallFs<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

#[test]
fn a_write_that_fails_after_it_was_acknowledged_is_reported_not_lost() -> Result<()> {
    let mut h = Harness::new()?;
    let ws = h.dir.path().join("small");
    fs::create_dir(&ws)?;
    let _small = SmallFs::mount(&ws, "1m")?;
    h.ok(&[
        "session",
        "create",
        "full",
        "--dir",
        ws.to_str().context("utf-8")?,
    ])?;
    h.mount()?;
    let mount = h.path("full", "");

    // 2 MiB into a 1 MiB file system, in 64 KiB writes: the space runs out behind the writes'
    // backs; the error must come out of a later write or the close.
    let data = pattern(2 << 20, 3);
    let mut file = fs::File::create(mount.join("big"))?;
    let mut write_error = None;
    for chunk in data.chunks(64 * 1024) {
        if let Err(e) = file.write_all(chunk) {
            write_error = Some(e);
            break;
        }
    }
    let close_result = close(file);
    let reported = match (&write_error, &close_result) {
        (Some(e), _) | (None, Err(e)) => e.raw_os_error(),
        (None, Ok(())) => bail!("2 MiB went into a 1 MiB file system and nothing failed"),
    };
    assert_eq!(
        reported,
        Some(libc::ENOSPC),
        "write: {write_error:?}, close: {close_result:?}"
    );
    // What landed is the data's start, nothing else.
    let landed = fs::read(ws.join("big"))?;
    assert!(!landed.is_empty() && landed.len() < data.len());
    assert!(
        landed[..] == data[..landed.len()],
        "the session's file is not a prefix of what was written"
    );

    // fsync reports it too.
    let mut more = fs::File::create(mount.join("more"))?;
    more.write_all(&pattern(64 * 1024, 4))?;
    let synced = more.sync_all();
    assert_eq!(
        synced.as_ref().err().and_then(|e| e.raw_os_error()),
        Some(libc::ENOSPC),
        "fsync: {synced:?}"
    );
    close(more)?;
    h.unmount()
}

/// The bound on what a daemon killed mid-write can lose (hardening findings 13 and faults), and
/// that it never loses what was synced: 8 MiB are written and `fsync`ed, the daemon is stopped, a
/// writer goes on until a write fails (the one that found no room fails after `--op-timeout`: no
/// guessing when it blocked), then the daemon is killed. Everything synced is in the session; of
/// what was acknowledged after, at most two batches (2 MiB) are missing; the session's file is a
/// prefix of what was written; and the loss is reported by the handle's `fsync`.
#[test]
fn a_daemon_killed_mid_write_keeps_what_was_synced_and_loses_at_most_two_batches() -> Result<()> {
    const MIB: usize = 1 << 20;
    let mut h = Harness::new()?;
    let ws = h.create_session("killed")?;
    h.mount()?;
    let data = pattern(64 * MIB, 7);
    let mut file = fs::File::create(h.path("killed", "f"))?;
    file.write_all(&data[..8 * MIB])?;
    file.sync_all()?;
    let pid = h.daemon_pid("killed")?;
    sessionfs_tests::rustix_kill(pid, libc::SIGSTOP);
    let mut acked = 8 * MIB;
    let failed = loop {
        ensure!(
            acked < data.len(),
            "64 MiB were acknowledged by a stopped daemon"
        );
        match file.write(&data[acked..acked + MIB]) {
            Ok(n) => acked += n,
            Err(e) => break e,
        }
    };
    sessionfs_tests::rustix_kill(pid, libc::SIGKILL);
    let on_disk = fs::read(ws.join("f"))?;
    ensure!(
        on_disk.len() >= 8 * MIB,
        "synced data was lost: {} bytes on disk",
        on_disk.len()
    );
    ensure!(
        on_disk[..] == data[..on_disk.len()],
        "the session's file is not a prefix of what was written"
    );
    let lost = acked.saturating_sub(on_disk.len());
    ensure!(
        lost <= 2 * MIB,
        "{lost} acknowledged bytes were lost (write failed with: {failed})"
    );
    ensure!(
        file.sync_all().is_err(),
        "fsync after the loss reported success"
    );
    Ok(())
}
