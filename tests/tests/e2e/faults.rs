//! Faults on a live mount: a daemon killed mid-use answers with an error within the bound while other
//! sessions carry on; `session start` (on another port) brings it back without a remount; a stopped
//! session fails at once.

#![forbid(unsafe_code)]

use std::fs;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sessionfs_tests::{rustix_kill, wait_until, Harness};

/// The errnos a dead session may answer with.
const DEAD: [i32; 3] = [libc::EIO, libc::ENOTCONN, libc::ETIMEDOUT];

#[test]
fn killed_daemon_errors_within_bound_then_recovers_on_a_new_port() -> Result<()> {
    let mut h = Harness::new()?;
    h.op_timeout_secs = 3;
    let bound = Duration::from_secs(h.op_timeout_secs + 2);
    let victim_dir = h.create_session("victim")?;
    h.create_session("bystander")?;
    h.mount()?;
    // Larger than the head a read-only open brings along (128 KiB), so reading its end needs the
    // daemon's handle; written behind the mount, so the host kernel has none of its pages.
    let survives: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    fs::write(victim_dir.join("data.txt"), &survives)?;
    fs::write(h.path("bystander", "b.txt"), b"unaffected")?;
    // Keep a file open across the kill: its handle dies with the daemon.
    let open = fs::File::open(h.path("victim", "data.txt"))?;

    let old_endpoint = h.session_json("victim")?["endpoint"]
        .as_str()
        .context("endpoint")?
        .to_owned();
    let pid = h.daemon_pid("victim")?;
    rustix_kill(pid, libc::SIGKILL);
    wait_until("the daemon to die", Duration::from_secs(5), || {
        fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
    })?;

    // An operation on the dead session fails within the bound; meanwhile the bystander answers.
    let in_flight = Arc::new(AtomicBool::new(true));
    let victim_path = h.path("victim", "fresh-name.txt");
    let flag = in_flight.clone();
    let dead_op = std::thread::spawn(move || {
        let start = Instant::now();
        let r = fs::write(&victim_path, b"x");
        flag.store(false, Ordering::SeqCst);
        (r, start.elapsed())
    });
    assert_eq!(fs::read(h.path("bystander", "b.txt"))?, b"unaffected");
    let bystander_done_while_victim_pending = in_flight.load(Ordering::SeqCst);
    let (r, took) = dead_op
        .join()
        .map_err(|_| anyhow::anyhow!("thread panicked"))?;
    let errno = r
        .err()
        .and_then(|e| e.raw_os_error())
        .context("write to a dead session succeeded")?;
    assert!(DEAD.contains(&errno), "unexpected errno {errno}");
    eprintln!("dead session answered errno {errno} after {took:?} (bound {bound:?})");
    assert!(
        took <= bound,
        "dead session answered after {took:?}, bound {bound:?}"
    );
    assert!(
        bystander_done_while_victim_pending,
        "the bystander waited for the dead session"
    );

    // A file opened before the kill cannot be read through the dead daemon: an error, not data.
    // (Bytes its open already brought along may still be served, as from a page cache.)
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 8];
    let e = open
        .read_at(&mut buf, 250 * 1024)
        .err()
        .context("a handle of the dead daemon still read")?;
    assert!(e.raw_os_error().is_some_and(|n| DEAD.contains(&n)), "{e}");

    // The mount is still up and the root still lists both sessions.
    let mut names: Vec<_> = fs::read_dir(&h.mountpoint)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    assert_eq!(names, ["bystander", "victim"]);

    // Restart the daemon while its old port is taken, so it must come back elsewhere.
    let _squatter = UdpSocket::bind(&old_endpoint).context("occupying the old port")?;
    h.ok(&["session", "start", "victim"])?;
    let new_endpoint = h.session_json("victim")?["endpoint"]
        .as_str()
        .context("endpoint")?
        .to_owned();
    assert_ne!(new_endpoint, old_endpoint);
    let took = wait_until("the session to come back", bound, || {
        fs::read(h.path("victim", "data.txt")).is_ok_and(|d| d == survives)
    })?;
    eprintln!("recovered {took:?} after restart on {new_endpoint}");
    fs::write(h.path("victim", "after.txt"), b"new daemon")?;
    assert_eq!(fs::read(h.path("victim", "after.txt"))?, b"new daemon");

    // A stopped session fails at once with ENOTCONN, then works after start.
    h.ok(&["session", "stop", "victim"])?;
    let took = wait_until("the bridge to see the stop", bound, || {
        fs::read_dir(h.path("victim", ""))
            .err()
            .and_then(|e| e.raw_os_error())
            == Some(libc::ENOTCONN)
    })?;
    eprintln!("stop visible after {took:?}");
    h.ok(&["session", "start", "victim"])?;
    wait_until("the session to come back after stop", bound, || {
        fs::read(h.path("victim", "after.txt")).is_ok()
    })?;
    drop(open);
    h.unmount()?;
    Ok(())
}

#[test]
fn sessions_appear_and_disappear_without_remount() -> Result<()> {
    let mut h = Harness::new()?;
    h.mount()?;
    assert!(h.root_names().is_empty());
    h.create_session("late")?;
    let took = wait_until("the new session to appear", Duration::from_secs(1), || {
        h.root_names() == ["late"]
    })?;
    eprintln!("appeared after {took:?}");
    fs::write(h.path("late", "hello"), b"hi")?;
    h.ok(&["session", "rm", "late"])?;
    let took = wait_until(
        "the removed session to disappear",
        Duration::from_secs(1),
        || h.root_names().is_empty(),
    )?;
    eprintln!("disappeared after {took:?}");
    h.unmount()?;
    Ok(())
}

#[test]
fn cli_refuses_bad_input_clearly() -> Result<()> {
    let h = Harness::new()?;
    let out = h.run(&["session", "create", "Bad_Id"])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid session id"),
        "{out:?}"
    );
    h.create_session("dup")?;
    let out = h.run(&["session", "create", "dup"])?;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "{out:?}"
    );
    let out = h.run(&["session", "stop", "nosuch"])?;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no session"),
        "{out:?}"
    );
    let missing = h.dir.path().join("no-such-dir");
    let out = h.run(&["mount", missing.to_str().context("utf-8")?])?;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{out:?}"
    );
    Ok(())
}

#[test]
fn busy_mountpoint_is_refused() -> Result<()> {
    let mut h = Harness::new()?;
    h.mount()?;
    let out = h.run(&["mount", h.mountpoint.to_str().context("utf-8")?])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("busy"),
        "{out:?}"
    );
    // The first mount is unharmed.
    assert!(sessionfs_tests::is_mounted(&h.mountpoint));
    // SIGTERM while a file is open still ends the bridge and frees the mountpoint.
    h.create_session("held")?;
    wait_until("the session to appear", Duration::from_secs(5), || {
        h.path("held", "").is_dir()
    })?;
    let held = fs::File::create(h.path("held", "open.txt"))?;
    h.unmount()?;
    drop(held);
    Ok(())
}

/// Hardening (faults): the registry file replaced while mounted (a backup restored by renaming it
/// into place) used to be read no more: the mount kept the old file until remounted. Now the mount
/// follows the new file: a session only the backup has comes back under the root, and one only
/// the old file had goes.
#[test]
fn a_registry_file_replaced_while_mounted_is_followed() -> Result<()> {
    let mut h = Harness::new()?;
    h.create_session("kept")?;
    h.create_session("restored")?;
    let registry = h.home.join("registry.db");
    let backup = h.home.join("registry.backup");
    fs::copy(&registry, &backup)?;
    h.ok(&["session", "rm", "restored"])?;
    h.create_session("dropped")?;
    // The restored registry forgets this daemon, so the harness would not stop it.
    struct Stop(i32);
    impl Drop for Stop {
        fn drop(&mut self) {
            rustix_kill(self.0, libc::SIGTERM);
        }
    }
    let _dropped = Stop(h.daemon_pid("dropped")?);
    h.mount()?;
    wait_until(
        "the mount to list its sessions",
        Duration::from_secs(5),
        || {
            let names = h.root_names();
            names.contains(&"dropped".to_owned()) && !names.contains(&"restored".to_owned())
        },
    )?;
    fs::rename(&backup, &registry)?;
    wait_until(
        "the mount to follow the restored registry",
        Duration::from_secs(5),
        || {
            let names = h.root_names();
            names.contains(&"restored".to_owned()) && !names.contains(&"dropped".to_owned())
        },
    )
    .with_context(|| h.bridge_log())?;
    // The kept session, in both files, still serves its files.
    fs::write(h.path("kept", "f"), b"after the restore")?;
    assert_eq!(fs::read(h.path("kept", "f"))?, b"after the restore");
    assert!(h.bridge_log().contains("the registry file was replaced"));
    h.unmount()?;
    Ok(())
}

/// Hardening (faults): a daemon that runs out of inotify watches (a directory made after the limit
/// goes unwatched) used to keep its change stream "live", so the mount cached that directory's files
/// for a minute and served them stale. Now the daemon ends the stream as unavailable, the bridge says
/// so and caches the session briefly: a change behind the mount shows within the short lifetime.
/// The daemon runs in a user namespace whose inotify limit is 3 watches (`unshare`), so the machine's
/// limit is untouched.
#[test]
fn a_daemon_out_of_inotify_watches_degrades_to_short_cache_lifetimes_and_says_so() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut h = Harness::new()?;
    let daemon = sessionfs_tests::bin_dir()?.join("sessionfsd");
    let wrapper = h.dir.path().join("sessionfsd-with-few-watches");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec unshare --user --map-root-user sh -c \
             'echo 3 > /proc/sys/user/max_inotify_watches && exec \"$0\" \"$@\"' {} \"$@\"\n",
            daemon.display()
        ),
    )?;
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))?;
    let ws = h.dir.path().join("ws");
    fs::create_dir(&ws)?;
    let out = h
        .cli()
        .env("SESSIONFS_DAEMON", &wrapper)
        .args(["session", "create", "few", "--dir"])
        .arg(&ws)
        .output()?;
    anyhow::ensure!(out.status.success(), "{out:?}");
    h.mount()?;
    fs::write(ws.join("top"), b"watched")?;
    wait_until(
        "a change behind the mount to show",
        Duration::from_secs(5),
        || fs::read(h.path("few", "top")).is_ok_and(|d| d == b"watched"),
    )?;
    for i in 0..4 {
        fs::create_dir(ws.join(format!("d{i}")))?;
    }
    wait_until(
        "the bridge to say the daemon cannot watch",
        Duration::from_secs(10),
        || h.bridge_log().contains("cannot watch its workspace"),
    )
    .with_context(|| h.bridge_log())?;
    // Attributes are what the kernel caches for the lifetime (an open revalidates anyway): a
    // `stat` of a file in the unwatched directory shows a change within the short lifetime, where a
    // "live" stream would have let the kernel keep the old size for a minute.
    let inner = ws.join("d3/f");
    fs::write(&inner, b"old")?;
    wait_until("the file to show", Duration::from_secs(5), || {
        fs::metadata(h.path("few", "d3/f")).is_ok_and(|m| m.len() == 3)
    })?;
    fs::write(&inner, b"new, and longer")?;
    let took = wait_until(
        "the change to show within the short lifetime",
        Duration::from_secs(5),
        || fs::metadata(h.path("few", "d3/f")).is_ok_and(|m| m.len() == 15),
    )
    .with_context(|| h.bridge_log())?;
    println!("the change showed after {took:?}");
    h.unmount()?;
    Ok(())
}
