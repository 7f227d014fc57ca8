//! Regressions found in review: directory listings read lazily across renames, directory cycles
//! reported by stale listings, xattr calls on the mount root, `isatty` on mounted files, working
//! directories detached by change notifications, and inode numbers that changed across remounts.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use anyhow::{Context, Result};
use sessionfs_tests::Harness;

#[test]
fn a_listing_read_after_a_rename_never_points_a_name_at_the_wrong_file() -> Result<()> {
    let mut h = Harness::new()?;
    h.create_session("lazy")?;
    h.mount()?;
    let d = h.path("lazy", "d");
    fs::create_dir(&d)?;
    fs::write(d.join("a"), b"old")?;
    fs::set_permissions(d.join("a"), fs::Permissions::from_mode(0o644))?;
    // A lazy reader (walkdir, an IDE, scandir): the directory is opened now and read later.
    let listing = fs::read_dir(&d)?;
    fs::rename(d.join("a"), d.join("b"))?;
    fs::write(d.join("a"), b"new")?;
    let mut names: Vec<String> = listing
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(fs::read(d.join("a"))?, b"new");
    assert_eq!(fs::read(d.join("b"))?, b"old");
    // A change made through an open handle of `b` lands on `b` only.
    let b = fs::File::open(d.join("b"))?;
    b.set_permissions(fs::Permissions::from_mode(0o600))?;
    assert_eq!(
        fs::metadata(d.join("b"))?.permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::metadata(d.join("a"))?.permissions().mode() & 0o777,
        0o644
    );
    drop(b);
    h.unmount()?;
    Ok(())
}

#[test]
fn a_stale_listing_cannot_make_a_directory_its_own_ancestor() -> Result<()> {
    let mut h = Harness::new()?;
    h.create_session("cycle")?;
    h.mount()?;
    let root = h.path("cycle", "");
    fs::create_dir_all(root.join("A/B"))?;
    for i in 0..50 {
        fs::write(root.join(format!("A/f{i:02}")), b"x")?;
    }
    // Start listing A (the first page is fetched), then move A below its own former child.
    let mut listing = fs::read_dir(root.join("A"))?;
    let first = listing.next().context("A is not empty")??;
    drop(first);
    fs::rename(root.join("A/B"), root.join("B"))?;
    fs::rename(root.join("A"), root.join("B/A"))?;
    let rest: Vec<_> = listing.collect();
    drop(rest);
    // Everything still resolves, promptly, to where it now is.
    assert!(fs::metadata(root.join("B/A/f00"))?.is_file());
    assert!(!root.join("A").exists());
    let mut top: Vec<String> = fs::read_dir(&root)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    top.sort();
    assert_eq!(top, ["B"]);
    assert_eq!(fs::read_dir(root.join("B/A"))?.count(), 50);
    h.unmount()?;
    Ok(())
}

#[test]
fn xattr_calls_on_the_mount_root_answer_cleanly() -> Result<()> {
    let mut h = Harness::new()?;
    h.mount()?;
    let p = CString::new(h.mountpoint.as_os_str().as_bytes())?;
    let name = CString::new("user.x")?;
    let mut buf = [0u8; 64];
    // SAFETY: valid pointers and lengths for the duration of each call.
    let (list, list_err, get_err) = unsafe {
        let list = libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len());
        let list_err = std::io::Error::last_os_error().raw_os_error();
        let get = libc::getxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        );
        (
            list,
            list_err,
            (get < 0)
                .then(|| std::io::Error::last_os_error().raw_os_error())
                .flatten(),
        )
    };
    assert_eq!(list, 0, "listxattr on the root failed: {list_err:?}");
    assert_eq!(get_err, Some(libc::ENODATA));
    h.unmount()?;
    Ok(())
}

/// `isatty(3)` on a file in the mount (Python does it on every `open`) is an ioctl the bridge answers
/// with ENOTTY, as any regular file does, instead of ENOSYS and a warning per call in the bridge log.
#[test]
fn isatty_on_a_mounted_file_is_enotty_and_quiet() -> Result<()> {
    use std::os::fd::AsRawFd;
    let mut h = Harness::new()?;
    h.create_session("tty")?;
    h.mount()?;
    let path = h.path("tty", "f");
    fs::write(&path, b"x")?;
    let f = fs::File::open(&path)?;
    for _ in 0..3 {
        // SAFETY: isatty only inspects the open descriptor.
        let tty = unsafe { libc::isatty(f.as_raw_fd()) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        anyhow::ensure!(
            tty == 0 && errno == Some(libc::ENOTTY),
            "isatty={tty} errno={errno:?}"
        );
    }
    drop(f);
    h.unmount()?;
    let log = h.bridge_log();
    anyhow::ensure!(!log.contains("ioctl"), "the bridge logged ioctls: {log}");
    Ok(())
}

/// A directory made through the mount stays usable as a working directory: the daemon's change event
/// for the `mkdir` must not make the bridge invalidate the new directory's dentry (the kernel would
/// unhash it and `getcwd` would fail with ENOENT, as `git init` did).
#[test]
fn the_echo_of_a_mkdir_does_not_detach_a_working_directory() -> Result<()> {
    let mut h = Harness::new()?;
    h.create_session("cwd")?;
    h.mount()?;
    for i in 0..20 {
        let dir = h.path("cwd", &format!("repo{i}"));
        fs::create_dir(&dir)?;
        let out = std::process::Command::new("git")
            .args(["init", "-q"])
            .current_dir(&dir)
            .output()
            .context("running git")?;
        anyhow::ensure!(
            out.status.success(),
            "git init in a new directory ({i}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    h.unmount()
}

/// A read-only open brings the file's first 128 KiB with it (the whole file when it ends there, and
/// the daemon's handle is then closed at once); reads are answered from those bytes until the kernel
/// has read past them. Sizes around that boundary, and reads at offsets, must come back exactly.
#[test]
fn reads_around_the_open_head_size_are_exact() -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::FileExt;
    let mut h = Harness::new()?;
    let ws = h.create_session("head")?;
    h.mount()?;
    const HEAD: usize = 128 * 1024;
    let sizes = [0, 1, 4095, 4096, HEAD - 1, HEAD, HEAD + 1, 3 * HEAD + 17];
    let content = |n: usize| -> Vec<u8> { (0..n).map(|i| (i * 7 % 251) as u8).collect() };
    for n in sizes {
        // Written behind the bridge, so the first open through the mount is not answered from a cache.
        fs::write(ws.join(format!("f{n}")), content(n))?;
    }
    for n in sizes {
        let path = h.path("head", &format!("f{n}"));
        let want = content(n);
        sessionfs_tests::wait_until("file visible", std::time::Duration::from_secs(5), || {
            path.exists()
        })?;
        assert_eq!(fs::read(&path)?, want, "whole read of {n} bytes");
        // A fresh handle whose first read is at an offset, then one across the head's end.
        fs::write(ws.join(format!("f{n}")), content(n))?;
        let f = fs::File::open(&path)?;
        let mut buf = vec![0u8; 5000];
        let at = (n / 2) as u64;
        let got = f.read_at(&mut buf, at)?;
        let end = (n / 2 + 5000).min(n);
        assert_eq!(&buf[..got], &want[n / 2..end], "read at {at} of {n} bytes");
        let mut f = f;
        f.seek(SeekFrom::Start(HEAD.saturating_sub(10) as u64))?;
        let mut rest = Vec::new();
        f.read_to_end(&mut rest)?;
        assert_eq!(
            rest,
            want[HEAD.saturating_sub(10).min(n)..],
            "tail of {n} bytes"
        );
    }
    h.unmount()
}

/// Bytes a read-only open brought along are not served once the file was changed through the mount:
/// a handle opened before a write (in place, or an append) through another handle reads the new
/// content, as on a local file system.
#[test]
fn a_handle_opened_before_a_write_through_the_mount_reads_the_write() -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let mut h = Harness::new()?;
    let ws = h.create_session("rw")?;
    h.mount()?;
    let original: Vec<u8> = (0..1000).map(|i| b'a' + (i % 26) as u8).collect();
    for round in 0..10 {
        let name = format!("f{round}");
        // Written behind the bridge: the first open through the mount asks the daemon and brings
        // the whole file along.
        fs::write(ws.join(&name), &original)?;
        let path = h.path("rw", &name);
        sessionfs_tests::wait_until("file visible", std::time::Duration::from_secs(5), || {
            path.exists()
        })?;
        let reader = fs::File::open(&path)?;
        let mut expected = original.clone();
        let writer = fs::OpenOptions::new().write(true).open(&path)?;
        writer.write_all_at(b"0123456789", 0)?;
        expected[..10].copy_from_slice(b"0123456789");
        drop(writer);
        let mut buf = vec![0u8; 4096];
        let n = reader.read_at(&mut buf, 0)?;
        assert_eq!(&buf[..n], &expected[..], "after a write in place ({round})");

        let reader = fs::File::open(&path)?;
        let mut appender = fs::OpenOptions::new().append(true).open(&path)?;
        appender.write_all(b"tail")?;
        expected.extend_from_slice(b"tail");
        drop(appender);
        let n = reader.read_at(&mut buf, 0)?;
        assert_eq!(&buf[..n], &expected[..], "after an append ({round})");
    }
    h.unmount()
}

/// The kernel caps read-ahead at 128 KiB in `INIT`; the bridge widens its mount's window afterwards so
/// sequential reads keep several 1 MiB `READ`s in flight, and a large file still reads back exactly.
#[test]
fn the_mount_reads_ahead_four_mib_and_sequential_reads_stay_exact() -> Result<()> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    /// `READ_AHEAD_KIB` in `bridge-fs/src/mount.rs`.
    const READ_AHEAD_KIB: u64 = 4096;
    let mut h = Harness::new()?;
    let ws = h.create_session("ra")?;
    h.mount()?;
    let dev = fs::metadata(h.path("ra", ""))?.dev();
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    let window = || {
        fs::read_to_string(&knob)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    sessionfs_tests::wait_until(
        "read-ahead raised",
        std::time::Duration::from_secs(5),
        || window() == Some(READ_AHEAD_KIB),
    )
    .with_context(|| format!("{knob} stayed at {:?} KiB", window()))?;
    let content: Vec<u8> = (0..9u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(ws.join("big"), &content)?;
    let path = h.path("ra", "big");
    sessionfs_tests::wait_until("file visible", std::time::Duration::from_secs(5), || {
        fs::metadata(&path).is_ok_and(|m| m.len() == content.len() as u64)
    })?;
    let mut got = Vec::new();
    fs::File::open(&path)?.read_to_end(&mut got)?;
    assert!(got == content, "sequential read of 9 MiB differs");
    h.unmount()
}

/// Inode numbers come from the daemon's identity of each file: after a remount, looked up in another
/// order, every file shows the same `st_ino` (git keeps them in its index; new numbers made the first
/// `git status` after a remount, or after the kernel forgot the nodes, re-read every file).
#[test]
fn inode_numbers_survive_a_remount() -> Result<()> {
    let mut h = Harness::new()?;
    let ws = h.create_session("inos")?;
    fs::create_dir(ws.join("d"))?;
    fs::write(ws.join("d/f"), b"f")?;
    fs::write(ws.join("g"), b"g")?;
    let names = ["d", "d/f", "g"];
    let ino = |h: &Harness, name: &str| -> Result<u64> {
        Ok(fs::symlink_metadata(h.path("inos", name))?.ino())
    };
    h.mount()?;
    let before: Vec<u64> = names.iter().map(|n| ino(&h, n)).collect::<Result<_>>()?;
    h.unmount()?;
    h.mount()?;
    let mut after: Vec<u64> = names
        .iter()
        .rev()
        .map(|n| ino(&h, n))
        .collect::<Result<_>>()?;
    after.reverse();
    assert_eq!(
        before, after,
        "st_ino of {names:?} before and after a remount"
    );
    let mut distinct = after.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), names.len(), "{after:?}");
    h.unmount()
}

/// What the mount shows right after a change through it (a create, a `chmod`, a `chown`, a
/// truncate, `utimes`, a `mkdir`, `symlink` or `link`) is what the session holds: the bridge answers
/// the kernel's next `stat` of the file, and of the directory a create, mkdir, symlink or link
/// changed, from the change's own reply, never from before it.
#[test]
fn stat_right_after_a_change_through_the_mount_shows_the_session_state() -> Result<()> {
    let mut h = Harness::new()?;
    let ws = h.create_session("own")?;
    h.mount()?;
    let same = |rel: &str| -> Result<()> {
        let (m, b) = (
            fs::symlink_metadata(h.path("own", rel))?,
            fs::symlink_metadata(ws.join(rel))?,
        );
        let key = |x: &fs::Metadata| {
            (
                x.mode(),
                x.uid(),
                x.gid(),
                x.size(),
                x.nlink(),
                x.mtime(),
                x.mtime_nsec(),
                x.ctime(),
                x.ctime_nsec(),
            )
        };
        assert_eq!(key(&m), key(&b), "{rel}: the mount and the session differ");
        Ok(())
    };
    fs::create_dir(h.path("own", "d"))?;
    same("d")?;
    for i in 0..20 {
        let name = format!("d/f{i}");
        // Created, closed and opened again: a handle that created its file sends the file's
        // attribute changes behind its writes (tests/e2e/write_behind.rs); this one sends them at once.
        drop(fs::File::create(h.path("own", &name))?);
        same("d")?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(h.path("own", &name))?;
        std::io::Write::write_all(&mut f, &vec![b'x'; 1000 + i])?;
        fs::set_permissions(
            h.path("own", &name),
            fs::Permissions::from_mode(0o600 + i as u32 % 8),
        )?;
        same(&name)?;
        let path = CString::new(h.path("own", &name).as_os_str().as_bytes())?;
        // SAFETY: a valid C string; chown to the current owner and group 1 (root may).
        assert_eq!(unsafe { libc::chown(path.as_ptr(), u32::MAX, 1) }, 0);
        same(&name)?;
        f.set_len(i as u64)?;
        same(&name)?;
        drop(f);
        let times = [libc::timespec {
            tv_sec: 1_000_000 + i as i64,
            tv_nsec: 5,
        }; 2];
        // SAFETY: `path` is a NUL-terminated C string and `times` two timespecs, both alive for
        // the call, which only reads them.
        let set = unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) };
        assert_eq!(set, 0);
        same(&name)?;
        same("d")?;
        // A directory, a symlink and a hard link made in it: their replies carry the directory's
        // attributes, which the kernel asks for next.
        fs::create_dir(h.path("own", &format!("d/sub{i}")))?;
        same("d")?;
        same(&format!("d/sub{i}"))?;
        std::os::unix::fs::symlink("target", h.path("own", &format!("d/link{i}")))?;
        same("d")?;
        fs::hard_link(h.path("own", &name), h.path("own", &format!("d/hard{i}")))?;
        same("d")?;
        same(&name)?;
    }
    h.unmount()
}

/// A file replaced by a rename through the mount reads on as the old file through a handle open
/// before, for as long as the handle lives, as on a local file system: here a handle the kernel
/// opened from its cache (no daemon handle yet), read past its cached pages well after the daemon
/// stopped keeping the replaced file (`REPLACED_KEEP_MS`).
#[test]
fn a_handle_open_when_its_file_is_replaced_through_the_mount_reads_the_old_file() -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut h = Harness::new()?;
    let ws = h.create_session("repl")?;
    // Written behind the mount, so the kernel caches only what it reads.
    let old: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(ws.join("f"), &old)?;
    h.mount()?;
    let f = h.path("repl", "f");
    let mut first = [0u8; 4096];
    fs::File::open(&f)?.read_exact(&mut first)?;
    assert_eq!(first[..], old[..4096]);
    // Opened again unchanged: from the kernel's pages (its first 4 MiB at most).
    let mut held = fs::File::open(&f)?;
    fs::write(h.path("repl", "tmp"), b"new")?;
    fs::rename(h.path("repl", "tmp"), &f)?;
    assert_eq!(fs::read(&f)?, b"new");
    std::thread::sleep(std::time::Duration::from_millis(
        sessionfs_proto::REPLACED_KEEP_MS + 500,
    ));
    let at = 12usize << 20;
    held.seek(SeekFrom::Start(at as u64))?;
    let mut rest = vec![0u8; 1 << 20];
    held.read_exact(&mut rest)
        .context("reading the replaced file past the pages the kernel had")?;
    assert!(
        rest == old[at..at + (1 << 20)],
        "the handle read another file's bytes"
    );
    drop(held);
    h.unmount()?;
    Ok(())
}
