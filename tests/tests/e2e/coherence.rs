//! Coherence: changes made behind the bridge's back — in a local session's directory, and in a Docker
//! session's bind-mounted workspace (seen by the container's own inotify) — reach the host through the
//! mount within the propagation bound, although the kernel caches entries and attributes: the daemon
//! streams its changes and the bridge invalidates the kernel's caches. Before each change the host
//! reads through the mount (stat, read, listing) so that the kernel holds the old state; after it, the
//! host must see the new state within [`BOUND`] and never the old one again. Latencies are printed
//! (p50/p99); the benchmark reports them too.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sessionfs_tests::Harness;

/// How long a change may take to become visible through the mount.
const BOUND: Duration = Duration::from_millis(500);

/// What the host observes of one file through the mount.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Missing,
    Content(Vec<u8>, u64),
    /// The open was answered from the kernel's cache, but the file was removed before its data was
    /// read: the read fails with `ESTALE`, as on NFS. Stale data is never returned. This is an answer
    /// only while the file is expected gone (see [`is`]).
    RemovedWhileOpening,
}

fn observe(path: &Path) -> Result<Seen> {
    match fs::metadata(path) {
        Ok(meta) => {
            // Read by the cached size, as any reader does: a stale size would cut the content.
            let content = match fs::read(path) {
                Ok(c) => c,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Seen::Missing),
                Err(e) if e.raw_os_error() == Some(libc::ESTALE) => {
                    return Ok(Seen::RemovedWhileOpening)
                }
                Err(e) => return Err(e.into()),
            };
            Ok(Seen::Content(content, meta.size()))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Seen::Missing),
        Err(e) => Err(e.into()),
    }
}

fn listed(dir: &Path, name: &str) -> Result<bool> {
    Ok(fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .any(|e| e.file_name() == name))
}

/// Polls `check` every millisecond until it holds; fails after [`BOUND`]. Returns the latency.
fn arrives(what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if check()? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > BOUND {
            bail!("{what}: still stale {BOUND:?} after the change landed");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `stat` alone, without opening: an open that drops the page cache refreshes attributes too, so only a
/// bare `stat` (what `ls -l`, `make` and editors polling for changes do) shows cached attributes.
fn stat_size(path: &Path) -> Result<Option<u64>> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta.size())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn expect_stat(mount: &Path, name: &str, want: Option<u64>) -> impl FnMut() -> Result<bool> {
    let path = mount.join(name);
    move || Ok(stat_size(&path)? == want)
}

/// Whether `path` shows `want` now. A file removed while it was being opened counts as missing, and
/// fails the test where the file should exist.
fn is(path: &Path, want: &Seen) -> Result<bool> {
    match (observe(path)?, want) {
        (Seen::RemovedWhileOpening, Seen::Missing) => Ok(true),
        (Seen::RemovedWhileOpening, _) => {
            bail!("{}: ESTALE while expecting {want:?}", path.display())
        }
        (seen, want) => Ok(seen == *want),
    }
}

fn expect(mount: &Path, name: &str, want: Seen) -> impl FnMut() -> Result<bool> {
    let path = mount.join(name);
    move || is(&path, &want)
}

/// Runs the change sequence with `backing` the workspace as the daemon sees it (changed directly) and
/// `mount` the same workspace through the bridge; returns the propagation latencies.
fn change_sequence(backing: &Path, mount: &Path) -> Result<Vec<Duration>> {
    let mut latencies = Vec::new();
    let content = |s: &str| Seen::Content(s.as_bytes().to_vec(), s.len() as u64);
    for round in 0..10 {
        let f = format!("f{round}");
        let g = format!("g{round}");
        // Warm the kernel's caches: a negative lookup, the listing. In odd rounds the listing comes
        // first, so the bridge answers the lookup from it without asking the daemon.
        if round % 2 == 1 {
            assert!(!listed(mount, &f)?);
        }
        assert_eq!(observe(&mount.join(&f))?, Seen::Missing);
        assert!(!listed(mount, &f)?);
        // Create.
        fs::write(backing.join(&f), b"one")?;
        latencies.push(arrives("create", expect(mount, &f, content("one")))?);
        latencies.push(arrives("create (listing)", || listed(mount, &f))?);
        // Rewrite longer: a stale size would cut the content.
        observe(&mount.join(&f))?;
        stat_size(&mount.join(&f))?;
        fs::write(backing.join(&f), b"one two three")?;
        latencies.push(arrives("rewrite (stat)", expect_stat(mount, &f, Some(13)))?);
        latencies.push(arrives(
            "rewrite",
            expect(mount, &f, content("one two three")),
        )?);
        // Truncate.
        let file = fs::OpenOptions::new().write(true).open(backing.join(&f))?;
        file.set_len(3)?;
        drop(file);
        latencies.push(arrives("truncate (stat)", expect_stat(mount, &f, Some(3)))?);
        latencies.push(arrives("truncate", expect(mount, &f, content("one")))?);
        // Append.
        fs::OpenOptions::new()
            .append(true)
            .open(backing.join(&f))?
            .write_all(b"+more")?;
        latencies.push(arrives("append (stat)", expect_stat(mount, &f, Some(8)))?);
        latencies.push(arrives("append", expect(mount, &f, content("one+more")))?);
        // Rename.
        observe(&mount.join(&g))?;
        stat_size(&mount.join(&f))?;
        fs::rename(backing.join(&f), backing.join(&g))?;
        latencies.push(arrives("rename (stat)", expect_stat(mount, &f, None))?);
        latencies.push(arrives(
            "rename (old name)",
            expect(mount, &f, Seen::Missing),
        )?);
        latencies.push(arrives(
            "rename (new name)",
            expect(mount, &g, content("one+more")),
        )?);
        // Delete.
        stat_size(&mount.join(&g))?;
        fs::remove_file(backing.join(&g))?;
        latencies.push(arrives("delete (stat)", expect_stat(mount, &g, None))?);
        latencies.push(arrives("delete", expect(mount, &g, Seen::Missing))?);
        latencies.push(arrives("delete (listing)", || Ok(!listed(mount, &g)?))?);
        // A directory created, filled and removed.
        let d = backing.join(format!("d{round}"));
        fs::create_dir(&d)?;
        fs::write(d.join("inner"), b"x")?;
        let inner = mount.join(format!("d{round}/inner"));
        latencies.push(arrives("new directory", || is(&inner, &content("x")))?);
        fs::remove_dir_all(&d)?;
        latencies.push(arrives("removed directory", || is(&inner, &Seen::Missing))?);
    }
    Ok(latencies)
}

fn report(what: &str, mut latencies: Vec<Duration>) {
    latencies.sort();
    let q = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "{what}: {} changes, propagation p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        q(0.5),
        q(0.99),
        latencies.last().copied().unwrap_or_default()
    );
}

#[test]
fn changes_in_a_local_session_directory_reach_the_mount_within_the_bound() -> Result<()> {
    let mut h = Harness::new()?;
    let ws = h.create_session("coh")?;
    h.mount()?;
    let mount = h.path("coh", "");
    let latencies = change_sequence(&ws, &mount)?;
    report("local session", latencies);
    h.unmount()
}

#[test]
fn changes_in_a_docker_session_workspace_reach_the_mount_within_the_bound() -> Result<()> {
    let mut h = Harness::new()?;
    let id = h.unique_id("cohdk");
    let ws = h.dir.path().join("bound-ws");
    fs::create_dir(&ws)?;
    // The daemon runs as the workspace owner's peer in the container; let it write here too.
    fs::set_permissions(&ws, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
    h.create_docker_session(&id, &["--workspace", ws.to_str().context("utf-8")?])?;
    h.mount()?;
    let mount = h.path(&id, "");
    let latencies = change_sequence(&ws, &mount)?;
    report("docker session", latencies);
    h.unmount()
}

/// A missing name is cached by the kernel (a negative entry) while the session is watched. When the
/// change stream ends (here: the daemon is stopped), nothing more will be reported, so the bridge drops
/// the negative entries too: a file created while the daemon is down is found once it is back.
#[test]
fn a_name_missing_before_a_daemon_restart_is_found_after_it() -> Result<()> {
    let mut h = Harness::new()?;
    let ws = h.create_session("negr")?;
    h.mount()?;
    let mount = h.path("negr", "");
    fs::create_dir(ws.join("sub"))?;
    fs::write(ws.join("seen"), b"x")?;
    // The session is watched once a reply has come back over its connection and the stream started.
    arrives("first contact", || {
        Ok(stat_size(&mount.join("seen"))? == Some(1))
    })?;
    for name in ["late", "sub/late"] {
        assert_eq!(stat_size(&mount.join(name))?, None);
    }
    h.ok(&["session", "stop", "negr"])?;
    fs::write(ws.join("late"), b"here")?;
    fs::write(ws.join("sub/late"), b"here too")?;
    h.ok(&["session", "start", "negr"])?;
    arrives(
        "created while the daemon was down",
        expect_stat(&mount, "late", Some(4)),
    )?;
    arrives(
        "… in a subdirectory",
        expect_stat(&mount, "sub/late", Some(8)),
    )?;
    h.unmount()
}

/// A read-only open of a file whose pages the kernel holds, unchanged, is answered by the bridge alone;
/// the daemon's handle is opened only when a read misses the cache. Such a handle reads the current
/// content after a change, and fails with ESTALE (never stale data) when the file was removed before.
#[test]
fn read_only_handles_opened_from_the_cache_read_current_data_or_fail_estale() -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::FileExt;
    let mut h = Harness::new()?;
    let ws = h.create_session("lazy")?;
    h.mount()?;
    let path = h.path("lazy", "file");
    fs::write(ws.join("file"), b"version one")?;
    arrives("the file", || {
        Ok(fs::read(&path).ok().as_deref() == Some(&b"version one"[..]))
    })?;
    // Cached now: a later open is answered from the cache.
    assert_eq!(fs::read(&path)?, b"version one");

    let mut handle = fs::File::open(&path)?;
    fs::write(ws.join("file"), b"version two")?;
    arrives(
        "the change",
        expect(
            &h.path("lazy", ""),
            "file",
            Seen::Content(b"version two".to_vec(), 11),
        ),
    )?;
    let mut seen = Vec::new();
    handle.seek(SeekFrom::Start(0))?;
    handle.read_to_end(&mut seen)?;
    assert_eq!(seen, b"version two", "a handle opened before the change");
    drop(handle);

    assert_eq!(fs::read(&path)?, b"version two");
    let handle = fs::File::open(&path)?;
    fs::remove_file(ws.join("file"))?;
    arrives(
        "the removal",
        expect_stat(&h.path("lazy", ""), "file", None),
    )?;
    // A bare `stat` can show the removal (it asks the daemon once the attributes expired) a moment
    // before the pages are dropped; within the bound, the handle's reads must fail.
    let mut buf = [0u8; 64];
    arrives("the removal (through the open handle)", || {
        match handle.read_at(&mut buf, 0) {
            Ok(n) => {
                assert_eq!(&buf[..n], b"version two", "a handle of a removed file");
                Ok(false)
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "{e}");
                Ok(true)
            }
        }
    })?;
    h.unmount()
}

/// Listings fetched ahead during a tree walk never hide a change. Each round walks the tree (the root,
/// then a subdirectory: read-ahead then fetches the other subdirectories' listings), then changes a
/// directory that was fetched ahead but not yet listed: behind the mount (shown within the bound,
/// like any change) and through it (shown at once: the kernel's own change voids what was fetched).
#[test]
fn listings_fetched_ahead_never_hide_a_change() -> Result<()> {
    let mut h = Harness::new()?;
    let ws = h.create_session("walk")?;
    for d in 0..4 {
        for e in 0..4 {
            fs::create_dir_all(ws.join(format!("d{d}/e{e}")))?;
            fs::write(ws.join(format!("d{d}/e{e}/f")), b"x")?;
        }
    }
    h.mount()?;
    let mount = h.path("walk", "");
    arrives("the tree", || Ok(mount.join("d3/e3/f").exists()))?;
    // Four listings after the step into d0: the read-ahead that step started has mostly landed.
    let walk = || -> Result<()> {
        for dir in ["", "d0", "d0/e0", "d0/e1", "d0/e2", "d0/e3"] {
            fs::read_dir(mount.join(dir))?.for_each(drop);
        }
        Ok(())
    };
    for round in 0..20 {
        walk()?;
        let behind = format!("behind{round}");
        fs::write(ws.join("d2").join(&behind), b"b")?;
        arrives("a file made behind the mount", || {
            listed(&mount.join("d2"), &behind)
        })?;
        fs::remove_file(ws.join("d1/e1/f"))?;
        arrives("a file removed behind the mount", || {
            Ok(!listed(&mount.join("d1/e1"), "f")?)
        })?;
        fs::write(ws.join("d1/e1/f"), b"x")?;
        arrives("… and made again", || listed(&mount.join("d1/e1"), "f"))?;

        walk()?;
        let through = format!("through{round}");
        fs::write(mount.join("d3").join(&through), b"t")?;
        assert!(
            listed(&mount.join("d3"), &through)?,
            "a file made through the mount is missing from its directory's listing"
        );
        fs::rename(mount.join("d3/e2/f"), mount.join("d3/e2/g"))?;
        assert!(listed(&mount.join("d3/e2"), "g")? && !listed(&mount.join("d3/e2"), "f")?);
        fs::rename(mount.join("d3/e2/g"), mount.join("d3/e2/f"))?;
    }
    h.unmount()
}

/// Listings fetched to answer a walk's lookups (`git status` checking every file of its index) never
/// hide a change. Each round looks up the first names of a directory (the second lookup fetches its
/// listing, the third waits for it), then changes names the listing holds: behind the mount (once
/// the change's event was handled, the next `stat` shows it) and through it (at once).
#[test]
fn listings_that_answer_lookups_never_hide_a_change() -> Result<()> {
    let mut h = Harness::new()?;
    let rounds = 10;
    let (ws, mount) = rounds_of_directories(&mut h, "looks", rounds)?;
    let stat_first_three = |dir: &Path| -> Result<()> {
        for i in 0..3 {
            assert_eq!(stat_size(&dir.join(format!("f{i}")))?, Some(5));
        }
        Ok(())
    };
    for round in 0..rounds {
        let dir = format!("behind{round}");
        stat_first_three(&mount.join(&dir))?;
        // Events arrive in order: once the marker's shows (the directory's mtime moved), the
        // earlier changes were handled too.
        let before = fs::metadata(mount.join(&dir))?.modified()?;
        fs::write(ws.join(&dir).join("f4"), b"changed behind the mount")?;
        fs::remove_file(ws.join(&dir).join("f5"))?;
        fs::write(ws.join(&dir).join("marker"), b"")?;
        arrives("the marker's event", || {
            Ok(fs::metadata(mount.join(&dir))?.modified()? != before)
        })?;
        assert_eq!(
            stat_size(&mount.join(&dir).join("f4"))?,
            Some(24),
            "a listing fetched before a change behind the mount answered a lookup stale"
        );
        assert_eq!(stat_size(&mount.join(&dir).join("f5"))?, None);

        let dir = format!("through{round}");
        stat_first_three(&mount.join(&dir))?;
        fs::rename(mount.join(&dir).join("f3"), mount.join(&dir).join("moved"))?;
        assert_eq!(
            stat_size(&mount.join(&dir).join("f3"))?,
            None,
            "a listing fetched before a rename through the mount answered a lookup stale"
        );
        fs::remove_file(mount.join(&dir).join("f4"))?;
        assert_eq!(stat_size(&mount.join(&dir).join("f4"))?, None);
        assert_eq!(stat_size(&mount.join(&dir).join("moved"))?, Some(5));
    }
    h.unmount()
}

/// A directory made through the mount answers lookups of names never bound in it as missing without
/// asking the daemon (`bridge-fs/src/made_dirs.rs`): a name made behind the mount must still show
/// within the bound, whether the kernel had it cached as missing or never asked, and a name removed
/// behind the mount must go.
#[test]
fn a_directory_made_through_the_mount_never_hides_a_name_made_behind_it() -> Result<()> {
    let mut h = Harness::new()?;
    let ws = h.create_session("made")?;
    h.mount()?;
    let mount = h.path("made", "");
    for round in 0..10 {
        let dir = mount.join(format!("d{round}"));
        let behind = ws.join(format!("d{round}"));
        fs::create_dir(&dir)?;
        fs::write(dir.join("mine"), b"through")?;
        fs::create_dir(dir.join("sub"))?;
        // Missing, and cached as missing by the kernel from here on.
        assert_eq!(stat_size(&dir.join("theirs"))?, None);
        assert_eq!(stat_size(&dir.join("sub").join("deep"))?, None);
        fs::write(behind.join("theirs"), b"behind")?;
        fs::write(behind.join("sub").join("deep"), b"deeper")?;
        // Never looked up through the mount before it was made.
        fs::write(behind.join("unseen"), b"x")?;
        arrives(
            "a name made behind the mount, cached as missing",
            expect_stat(&dir, "theirs", Some(6)),
        )?;
        arrives(
            "a name made behind the mount in a subdirectory made through it",
            expect_stat(&dir.join("sub"), "deep", Some(6)),
        )?;
        arrives(
            "a name made behind the mount, never looked up",
            expect_stat(&dir, "unseen", Some(1)),
        )?;
        assert_eq!(stat_size(&dir.join("mine"))?, Some(7));
        fs::remove_file(behind.join("mine"))?;
        arrives(
            "a name removed behind the mount",
            expect_stat(&dir, "mine", None),
        )?;
    }
    h.unmount()
}

/// The echo of a change made through the mount to a directory costs nothing when the directory's
/// attributes are still those the bridge answered (`Change::Node.now`); a change made behind the
/// mount must still show within the bound: a directory's mode and times, and a name in its listing
/// (the kernel caches listings).
#[test]
fn directory_changes_behind_the_mount_show_although_echoes_cost_nothing() -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let mut h = Harness::new()?;
    let ws = h.create_session("dirs")?;
    h.mount()?;
    let mount = h.path("dirs", "");
    for round in 0..10u32 {
        let (dir, behind) = (
            mount.join(format!("d{round}")),
            ws.join(format!("d{round}")),
        );
        fs::create_dir(&dir)?;
        fs::write(dir.join("mine"), b"through")?;
        // The directory's attributes and listing, as the kernel caches them.
        fs::metadata(&dir)?;
        assert!(listed(&dir, "mine")?);
        let mode = 0o700 | (round % 8);
        fs::set_permissions(&behind, fs::Permissions::from_mode(mode))?;
        arrives("a directory's mode changed behind the mount", || {
            Ok(fs::metadata(&dir)?.mode() & 0o7777 == mode)
        })?;
        let when = 1_000_000 + i64::from(round);
        let times = [libc::timespec {
            tv_sec: when,
            tv_nsec: 0,
        }; 2];
        let path = std::ffi::CString::new(behind.as_os_str().as_bytes())?;
        // SAFETY: a valid C string and two timespecs.
        let set = unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) };
        assert_eq!(set, 0, "utimensat");
        arrives("a directory's times changed behind the mount", || {
            Ok(fs::metadata(&dir)?.mtime() == when)
        })?;
        fs::write(behind.join("theirs"), b"behind")?;
        arrives("a name made behind the mount, in the listing", || {
            listed(&dir, "theirs")
        })?;
    }
    h.unmount()
}

/// `truncate(2)`: changes the size by path, without opening the file.
fn truncate(path: &Path, len: i64) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::truncate(c.as_ptr(), len) } != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("truncate {path:?}"));
    }
    Ok(())
}

/// Session `id` with directories `behind<r>` and `through<r>` for each of `rounds` rounds, each
/// holding `f0` … `f5` (`old <i>`), mounted and visible; returns the workspace and the session's
/// directory in the mount.
fn rounds_of_directories(
    h: &mut Harness,
    id: &str,
    rounds: usize,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let ws = h.create_session(id)?;
    for round in 0..rounds {
        for dir in ["behind", "through"] {
            let dir = ws.join(format!("{dir}{round}"));
            fs::create_dir_all(&dir)?;
            for i in 0..6 {
                fs::write(dir.join(format!("f{i}")), format!("old {i}"))?;
            }
        }
    }
    h.mount()?;
    let mount = h.path(id, "");
    let last = format!("through{}/f5", rounds - 1);
    arrives("the tree", || Ok(mount.join(&last).exists()))?;
    Ok((ws, mount))
}

/// Small files fetched ahead for a walk that reads a directory's files never hide a change. Each round
/// reads the first files of a directory (the second open fetches the rest whole, the third waits for
/// that fetch), then changes a file that was fetched but not yet opened: behind the mount (once `stat`
/// shows the change, the very next read must show it too) and through it (at once).
#[test]
fn small_files_fetched_ahead_never_hide_a_change() -> Result<()> {
    let mut h = Harness::new()?;
    let rounds = 10;
    let (ws, mount) = rounds_of_directories(&mut h, "heads", rounds)?;
    let read_first_three = |dir: &Path| -> Result<()> {
        for i in 0..3 {
            assert_eq!(
                fs::read(dir.join(format!("f{i}")))?,
                format!("old {i}").as_bytes()
            );
        }
        Ok(())
    };
    for round in 0..rounds {
        let dir = format!("behind{round}");
        read_first_three(&mount.join(&dir))?;
        let changed = b"changed behind the mount";
        fs::write(ws.join(&dir).join("f4"), changed)?;
        arrives(
            "the change's size",
            expect_stat(&mount.join(&dir), "f4", Some(changed.len() as u64)),
        )?;
        assert_eq!(
            fs::read(mount.join(&dir).join("f4"))?,
            changed,
            "a file fetched ahead before a change behind the mount was read stale"
        );
        assert_eq!(fs::read(mount.join(&dir).join("f5"))?, b"old 5");

        // Through the mount: a file made behind it before the fetch is renamed over a fetched one,
        // and a fetched file is cut to one byte and extended again by path (no open of the file).
        let dir = format!("through{round}");
        // Once the directory's cached mtime moved, the creation's event was handled: the fetch below
        // starts after it, so only what happens through the mount can make it stale.
        let before = fs::metadata(mount.join(&dir))?.modified()?;
        fs::write(ws.join(&dir).join("new"), b"renamed over f5")?;
        arrives("the new file's event", || {
            Ok(fs::metadata(mount.join(&dir))?.modified()? != before)
        })?;
        read_first_three(&mount.join(&dir))?;
        assert_eq!(fs::read(mount.join(&dir).join("f3"))?, b"old 3");
        fs::rename(mount.join(&dir).join("new"), mount.join(&dir).join("f5"))?;
        assert_eq!(
            fs::read(mount.join(&dir).join("f5"))?,
            b"renamed over f5",
            "a file fetched ahead before a rename over it through the mount was read stale"
        );
        truncate(&mount.join(&dir).join("f4"), 1)?;
        truncate(&mount.join(&dir).join("f4"), 5)?;
        assert_eq!(
            fs::read(mount.join(&dir).join("f4"))?,
            b"o\0\0\0\0",
            "a file fetched ahead before a truncate through the mount was read stale"
        );
    }
    h.unmount()
}

/// What `getxattr` of `security.capability` on `path` returns (`None`: the file has none).
fn capability(path: &Path) -> Result<Option<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut buf = [0u8; 64];
    // SAFETY: both strings are NUL-terminated and `buf` is writable for its length.
    let n = unsafe {
        libc::getxattr(
            c_path.as_ptr(),
            c"security.capability".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) => Ok(None),
            _ => Err(e).context("getxattr security.capability"),
        };
    }
    Ok(Some(buf[..n as usize].to_vec()))
}

/// The bridge answers the kernel's capability check before each write from memory once it knows a
/// file has none, and keeps knowing it across changes of the content alone (writes, here from the
/// session side as well). A capability set inside the session is an attribute change: it reaches the
/// mount within the bound all the same.
#[test]
fn a_capability_set_in_the_session_after_writes_reaches_the_mount() -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let mut h = Harness::new()?;
    let ws = h.create_session("cap")?;
    h.mount()?;
    let path = h.path("cap", "tool");
    {
        let mut f = fs::File::create_new(&path)?;
        for _ in 0..4 {
            f.write_all(&[7u8; 4096])?;
        }
    }
    assert_eq!(capability(&path)?, None, "a new file has no capability");
    // Content changes on the session side: the bridge keeps its record through their echoes.
    fs::OpenOptions::new()
        .append(true)
        .open(ws.join("tool"))?
        .write_all(b"more")?;
    arrives(
        "appended size",
        expect_stat(&h.path("cap", ""), "tool", Some(4 * 4096 + 4)),
    )?;
    assert_eq!(capability(&path)?, None);
    // VFS_CAP_REVISION_2, permitted = CAP_NET_BIND_SERVICE, nothing inheritable.
    let blob: [u8; 20] = [0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let c_path = std::ffi::CString::new(ws.join("tool").as_os_str().as_bytes())?;
    // SAFETY: NUL-terminated strings and a readable buffer of the given length.
    let set = unsafe {
        libc::setxattr(
            c_path.as_ptr(),
            c"security.capability".as_ptr(),
            blob.as_ptr().cast(),
            blob.len(),
            0,
        )
    };
    if set != 0 {
        return Err(std::io::Error::last_os_error())
            .context("setxattr security.capability in the session");
    }
    arrives("capability set in the session", || {
        Ok(capability(&path)?.as_deref() == Some(&blob[..]))
    })?;
    h.unmount()
}
