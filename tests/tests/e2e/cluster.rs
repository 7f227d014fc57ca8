//! Three hosts and etcd, each in a network namespace of its own on one LAN (`sessionfs_tests::netns`):
//! every host made with the real `host init` / `host add` / `host join`, every session served by a
//! real daemon on its host's LAN address, every mount a real FUSE mount whose bridge runs in its
//! host's namespace. Nothing here reaches the machine's own network.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use sessionfs_tests::netns::Lan;
use sessionfs_tests::{wait_until, Etcd, Harness};

/// The hosts, then etcd, then the LAN: dropped in that order (hosts stop their sessions through
/// etcd; the LAN's drop kills whatever is left in its namespaces).
struct Cluster {
    hosts: Vec<Harness>,
    etcd: Etcd,
    lan: Lan,
}

impl Cluster {
    /// etcd and hosts `a`, `b`, `c`: `a` makes the installation, adds `b` and `c`, which join.
    fn new() -> Result<Cluster> {
        let lan = Lan::new(&["etcd", "a", "b", "c"])?;
        let etcd = Etcd::start_on(lan.member("etcd")?)?;
        let mut hosts = Vec::new();
        for name in ["a", "b", "c"] {
            let mut h = Harness::new()?;
            h.netns = Some(lan.member(name)?.clone());
            hosts.push(h);
        }
        let ip = |name: &str| -> Result<String> { Ok(lan.member(name)?.ip.to_string()) };
        // Only the first host is told where etcd is; the others learn it from their bundle.
        hosts[0].registry = Some(etcd.url());
        hosts[0].ok(&["host", "init", "--name", "a", "--advertise", &ip("a")?])?;
        for (i, name) in [(1, "b"), (2, "c")] {
            let bundle = hosts[0].dir.path().join(format!("{name}.bundle"));
            let bundle = bundle.to_str().context("utf-8 path")?.to_owned();
            hosts[0].ok(&["host", "add", name, "--out", &bundle])?;
            hosts[i].ok(&["host", "join", &bundle, "--advertise", &ip(name)?])?;
        }
        Ok(Cluster { hosts, etcd, lan })
    }

    fn host(&mut self, name: &str) -> &mut Harness {
        let i = match name {
            "a" => 0,
            "b" => 1,
            _ => 2,
        };
        &mut self.hosts[i]
    }

    /// Creates session `id` on host `host`; its workspace directory.
    fn create(&mut self, host: &str, id: &str) -> Result<PathBuf> {
        self.host(host).create_session(id)
    }
}

/// The state `session ls` shows for `id` on host `on` (its table's STATE column).
fn shown_state(h: &Harness, id: &str) -> Result<String> {
    let table = h.ok(&["session", "ls"])?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let column = header
        .iter()
        .position(|c| *c == "STATE")
        .with_context(|| format!("no STATE column: {table}"))?;
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&id))
        .and_then(|cells| cells.get(column).map(|s| (*s).to_owned()))
        .with_context(|| format!("{id} not listed: {table}"))
}

/// Every host's mount shows every host's sessions; a session of host a is written from b and
/// read from c (and the bytes are in a's workspace); a session created on b while mounted appears
/// under a's and c's mounts from etcd's watch; `host ls` shows three live hosts.
#[test]
fn every_hosts_sessions_are_under_every_hosts_mount() -> Result<()> {
    let mut c = Cluster::new()?;
    let wa = c.create("a", "sa")?;
    c.create("b", "sb")?;
    c.create("c", "sc")?;
    for h in ["a", "b", "c"] {
        c.host(h).mount()?;
    }
    for h in ["a", "b", "c"] {
        let mut names = c.host(h).root_names();
        names.sort();
        ensure!(names == ["sa", "sb", "sc"], "host {h} shows {names:?}");
    }
    // Each session is dialed on its host's LAN address, under its host's name.
    let listed = c.host("c").session_json("sa")?;
    let a_ip = c.lan.member("a")?.ip;
    ensure!(
        listed["host"] == "a"
            && listed["reachable"] == true
            && listed["endpoint"]
                .as_str()
                .is_some_and(|e| e.starts_with(&format!("{a_ip}:"))),
        "{listed}"
    );
    let data: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i % 251) as u8).collect();
    fs::write(c.host("b").path("sa", "from-b"), &data)?;
    ensure!(fs::read(c.host("c").path("sa", "from-b"))? == data);
    ensure!(fs::read(wa.join("from-b"))? == data);
    // A session made while mounted reaches the other mounts through etcd's watch.
    let made = Instant::now();
    c.create("b", "later")?;
    for (h, i) in [("a", 0), ("c", 2)] {
        wait_until(
            "the new session on another host",
            Duration::from_secs(5),
            || c.hosts[i].root_names().contains(&"later".to_owned()),
        )?;
        eprintln!(
            "host {h} showed b's new session {:?} after its create began",
            made.elapsed()
        );
    }
    fs::write(c.host("a").path("later", "f"), b"written from a")?;
    ensure!(fs::read(c.host("c").path("later", "f"))? == b"written from a");
    let hosts: serde_json::Value =
        serde_json::from_str(&c.host("c").ok(&["host", "ls", "--json"])?)?;
    let states: Vec<(&str, &str)> = hosts
        .as_array()
        .context("host ls --json is an array")?
        .iter()
        .filter_map(|h| Some((h["name"].as_str()?, h["state"].as_str()?)))
        .collect();
    ensure!(
        states == [("a", "live"), ("b", "live"), ("c", "live")],
        "{hosts}"
    );
    // Another host's session is not this host's to stop.
    let out = c.host("c").run(&["session", "stop", "sa"])?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("runs on host `a`"),
        "{out:?}"
    );
    for h in ["a", "b", "c"] {
        c.host(h).unmount()?;
    }
    Ok(())
}

/// Host a's link cut: b's operations on a's sessions fail within the op timeout while b's own
/// session is unaffected; `session ls` on b shows a's session `unreachable` within the lease TTL;
/// once the link is back, a is live again and b reaches its session without a remount.
#[test]
fn a_partitioned_host_fails_fast_and_comes_back_without_remount() -> Result<()> {
    let mut c = Cluster::new()?;
    c.create("a", "sa")?;
    c.create("b", "sb")?;
    c.host("a").mount()?;
    c.host("b").mount()?;
    fs::write(c.host("b").path("sa", "before"), b"1")?;
    ensure!(shown_state(c.host("b"), "sa")? == "running");

    c.lan.partition("a")?;
    let bound = Duration::from_secs(c.host("b").op_timeout_secs) + Duration::from_secs(2);
    let started = Instant::now();
    let err = fs::read(c.host("b").path("sa", "never-seen")).err();
    let took = started.elapsed();
    ensure!(err.is_some(), "a read on a cut-off host succeeded");
    ensure!(
        took < bound,
        "the read failed only after {took:?} (bound {bound:?})"
    );
    eprintln!("a read on the cut-off host failed in {took:?}: {err:?}");
    // b's own session is unaffected.
    fs::write(c.host("b").path("sb", "during"), b"b's own")?;
    ensure!(fs::read(c.host("b").path("sb", "during"))? == b"b's own");
    let cut = Instant::now();
    wait_until(
        "a's session to show unreachable on b",
        Duration::from_secs(25),
        || shown_state(&c.hosts[1], "sa").is_ok_and(|s| s == "unreachable"),
    )?;
    eprintln!(
        "a's session showed unreachable {:?} after the cut",
        cut.elapsed()
    );
    ensure!(shown_state(c.host("b"), "sb")? == "running");

    c.lan.heal("a")?;
    wait_until(
        "a's session to show running on b again",
        Duration::from_secs(25),
        || shown_state(&c.hosts[1], "sa").is_ok_and(|s| s == "running"),
    )?;
    let back = wait_until(
        "b to reach a's session again",
        Duration::from_secs(30),
        || fs::write(c.hosts[1].path("sa", "after"), b"2").is_ok(),
    )?;
    eprintln!("b wrote to a's session {back:?} after a was live again");
    ensure!(fs::read(c.host("a").path("sa", "after"))? == b"2");
    ensure!(fs::read(c.host("b").path("sa", "before"))? == b"1");
    c.host("a").unmount()?;
    c.host("b").unmount()?;
    Ok(())
}

/// etcd killed under the mounts: every host keeps serving the sessions it knows, of every host;
/// commands fail clearly and fast; once etcd is back the watches resume (a session created then
/// appears everywhere) and no record is lost or doubled.
#[test]
fn mounts_outlive_etcd_and_follow_it_back() -> Result<()> {
    let mut c = Cluster::new()?;
    c.create("a", "sa")?;
    c.create("b", "sb")?;
    c.host("a").mount()?;
    c.host("c").mount()?;
    fs::write(c.host("c").path("sa", "f"), b"1")?;
    c.etcd.kill();
    fs::write(c.host("c").path("sa", "f"), b"2")?;
    // sb was never dialed from c: its last known endpoint is used.
    fs::write(c.host("c").path("sb", "g"), b"3")?;
    ensure!(fs::read(c.host("a").path("sb", "g"))? == b"3");
    // Commands fail fast; on a host whose mount runs, `session ls` shows what it last saw.
    let started = Instant::now();
    let out = c.host("b").run(&["session", "ls"])?;
    ensure!(
        !out.status.success() && started.elapsed() < Duration::from_secs(12),
        "{out:?} after {:?}",
        started.elapsed()
    );
    let out = c.host("c").run(&["session", "ls", "--json"])?;
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let ids: Vec<&str> = seen
        .as_array()
        .context("an array")?
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    ensure!(
        !out.status.success()
            && ids == ["sa", "sb"]
            && String::from_utf8_lossy(&out.stderr).contains("last saw"),
        "{out:?}"
    );
    c.etcd.restart()?;
    c.create("b", "after")?;
    for h in [0, 2] {
        wait_until("the watch to resume", Duration::from_secs(20), || {
            c.hosts[h].root_names().contains(&"after".to_owned())
        })?;
        let mut names = c.hosts[h].root_names();
        names.sort();
        ensure!(names == ["after", "sa", "sb"], "{names:?}");
    }
    c.host("a").unmount()?;
    c.host("c").unmount()?;
    Ok(())
}

/// Two hosts creating one id at once: exactly one wins, the other is told the id is taken, and
/// the loser leaves nothing behind (no daemon, no record of its own).
#[test]
fn two_hosts_creating_one_id_have_one_winner() -> Result<()> {
    let c = Cluster::new()?;
    let outcomes: Vec<std::process::Output> = std::thread::scope(|s| {
        let runs: Vec<_> = [&c.hosts[1], &c.hosts[2]]
            .into_iter()
            .map(|h| s.spawn(move || h.run(&["session", "create", "same"])))
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("create thread").expect("run"))
            .collect()
    });
    let won: Vec<bool> = outcomes.iter().map(|o| o.status.success()).collect();
    ensure!(won.iter().filter(|w| **w).count() == 1, "{outcomes:?}");
    let loser = &outcomes[if won[0] { 1 } else { 0 }];
    let err = String::from_utf8_lossy(&loser.stderr);
    ensure!(err.contains("session `same` already exists"), "{err}");
    let winner = if won[0] { "b" } else { "c" };
    let listed = c.hosts[0].session_json("same")?;
    ensure!(listed["host"] == winner, "{listed}");
    Ok(())
}

/// `host rm`: the removed host's sessions stay in the registry, shown `unreachable` everywhere,
/// and the host leaves `host ls`; a host cannot join twice, and a host other than the one keeping
/// the root key cannot add hosts.
#[test]
fn a_removed_hosts_sessions_stay_unreachable() -> Result<()> {
    let mut c = Cluster::new()?;
    c.create("c", "sc")?;
    c.host("c").mount()?;
    ensure!(shown_state(c.host("a"), "sc")? == "running");
    // b may not add hosts: it has no root key.
    let bundle = c.hosts[1].dir.path().join("d.bundle");
    let out = c.host("b").run(&[
        "host",
        "add",
        "d",
        "--out",
        bundle.to_str().context("utf-8")?,
    ])?;
    ensure!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr)
                .contains("only the host that made the installation"),
        "{out:?}"
    );
    ensure!(!bundle.exists());
    let out = c.host("a").ok(&["host", "rm", "c"])?;
    ensure!(out.contains("1 session(s) stay"), "{out}");
    ensure!(shown_state(c.host("a"), "sc")? == "unreachable");
    let hosts = c.host("b").ok(&["host", "ls"])?;
    ensure!(!hosts.lines().any(|l| l.starts_with("c ")), "{hosts}");
    c.host("c").unmount()?;
    // The old bundle cannot join again: its host is gone.
    let stale = c.hosts[0].dir.path().join("c.bundle");
    let mut fresh = Harness::new()?;
    fresh.netns = Some(c.lan.member("c")?.clone());
    let out = fresh.run(&[
        "host",
        "join",
        stale.to_str().context("utf-8")?,
        "--advertise",
        "10.77.0.4",
    ])?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("was removed"),
        "{out:?}"
    );
    Ok(())
}

/// The error of creating `name` under `id` through `h`'s mount; `None` if it was made.
fn create_error(h: &Harness, id: &str, name: &str) -> Option<std::io::Error> {
    fs::write(h.path(id, name), b"probe").err()
}

/// Waits until `h`'s mount can no longer create files in session `id` (its host refuses `h`);
/// how long that took. Every probe that succeeded before is a file in the session.
pub(crate) fn wait_refused(h: &Harness, id: &str, limit: Duration) -> Result<Duration> {
    let mut n = 0;
    wait_until(&format!("{id} to refuse the removed host"), limit, || {
        n += 1;
        create_error(h, id, &format!("probe-{n}")).is_some()
    })
}

/// `host rm c`: every daemon of the other hosts refuses c's certificates from then on. c reached
/// a's session before; within a couple of seconds of the removal c can neither write to it nor
/// read what a writes, its connection ended by a's daemon; b, not removed, still can; and a
/// session made on a after the removal never lets c in.
#[test]
fn a_removed_host_loses_access_to_every_session() -> Result<()> {
    let mut c = Cluster::new()?;
    let ws = c.create("a", "sa")?;
    for h in ["a", "b", "c"] {
        c.host(h).mount()?;
    }
    fs::write(c.host("c").path("sa", "from-c"), b"c was here")?;
    ensure!(fs::read(c.host("a").path("sa", "from-c"))? == b"c was here");

    let removed = Instant::now();
    let out = c.host("b").ok(&["host", "rm", "c"])?;
    ensure!(out.contains("revoked its certificate"), "{out}");
    let took = wait_refused(&c.hosts[2], "sa", Duration::from_secs(15))?;
    eprintln!(
        "c was refused {took:?} after `host rm` ({:?} in all)",
        removed.elapsed()
    );
    fs::write(c.host("a").path("sa", "after-rm"), b"not for c")?;
    ensure!(
        fs::read(c.host("c").path("sa", "after-rm")).is_err(),
        "c read what a wrote after c was removed"
    );
    ensure!(
        create_error(c.host("c"), "sa", "late").is_some(),
        "c could write again"
    );
    ensure!(
        !ws.join("late").exists(),
        "c's refused write reached the workspace"
    );
    fs::write(c.host("b").path("sa", "from-b"), b"b stays")?;
    ensure!(fs::read(c.host("b").path("sa", "after-rm"))? == b"not for c");
    // a's daemon says why.
    let log = fs::read_to_string(c.hosts[0].home.join("sessions/sa/daemon.log"))?;
    ensure!(
        log.contains("was revoked") && log.contains("refused connection: its chain holds revoked"),
        "{log}"
    );

    // A session made after the removal is issued with the list: c never gets in.
    c.create("a", "sa2")?;
    wait_until("c's mount to list sa2", Duration::from_secs(10), || {
        fs::read_dir(&c.hosts[2].mountpoint)
            .is_ok_and(|entries| entries.flatten().any(|e| e.file_name() == "sa2"))
    })?;
    let refused = fs::write(c.hosts[2].path("sa2", "x"), b"x");
    ensure!(
        refused.is_err(),
        "c wrote into a session made after its removal"
    );
    let bridge = fs::read_to_string(c.hosts[2].dir.path().join("bridge.log"))?;
    ensure!(
        bridge.contains("refused this client: certificate revoked"),
        "c's bridge does not say why: {refused:?}"
    );
    fs::write(c.host("b").path("sa2", "x"), b"b")?;
    for h in ["a", "b", "c"] {
        c.host(h).unmount()?;
    }
    Ok(())
}

/// A tree with what a migration must keep: nested directories, a read-only directory, an
/// executable, a 3 MiB file, an empty file, a symlink.
fn fill(ws: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(ws.join("src/deep/er"))?;
    fs::write(ws.join("src/main.rs"), b"fn main() {}\n")?;
    fs::write(ws.join("src/deep/er/leaf.txt"), b"leaf")?;
    let big: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 253) as u8).collect();
    fs::write(ws.join("big.bin"), big)?;
    fs::write(ws.join("empty"), b"")?;
    fs::write(ws.join("run.sh"), b"#!/bin/sh\necho hi\n")?;
    fs::set_permissions(ws.join("run.sh"), fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::symlink("src/main.rs", ws.join("link"))?;
    fs::create_dir(ws.join("sealed"))?;
    fs::write(ws.join("sealed/inside"), b"x")?;
    fs::set_permissions(ws.join("sealed"), fs::Permissions::from_mode(0o555))?;
    Ok(())
}

/// `session migrate sa --to-host c`, run on c: the tree arrives whole (bytes, modes, links), every
/// mount follows the session to its new host at the same path, host a stops its old daemon and
/// keeps its data; run on another host than the target, it is refused.
#[test]
fn a_session_moves_to_another_host_whole() -> Result<()> {
    let mut c = Cluster::new()?;
    let wa = c.create("a", "sa")?;
    fill(&wa)?;
    let before = sessionfs_tests::tree_digest(&wa)?;
    c.host("a").mount()?;
    c.host("b").mount()?;
    ensure!(fs::read(c.host("b").path("sa", "src/main.rs"))? == b"fn main() {}\n");
    let old_pid = c.host("a").daemon_pid("sa")?;

    let out = c
        .host("b")
        .run(&["session", "migrate", "sa", "--to-host", "c"])?;
    ensure!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr)
                .contains("run `sessionfs session migrate sa --to-host c` on host `c`"),
        "{out:?}"
    );
    let said = c
        .host("c")
        .ok(&["session", "migrate", "sa", "--to-host", "c"])?;
    ensure!(said.contains("from host `a` to host `c`"), "{said}");
    let listed = c.host("b").session_json("sa")?;
    let c_ip = c.lan.member("c")?.ip;
    ensure!(
        listed["host"] == "c"
            && listed["state"] == "running"
            && listed["endpoint"]
                .as_str()
                .is_some_and(|e| e.starts_with(&format!("{c_ip}:"))),
        "{listed}"
    );
    // The copy on c's disk is the tree a had.
    let wc = c.hosts[2].home.join("sessions/sa/workspace");
    ensure!(sessionfs_tests::tree_digest(&wc)? == before);
    // b's mount follows at the same path, reading c's daemon.
    wait_until(
        "b's mount to read the moved session",
        Duration::from_secs(10),
        || fs::write(c.hosts[1].path("sa", "after-move"), b"on c").is_ok(),
    )?;
    ensure!(fs::read(wc.join("after-move"))? == b"on c");
    ensure!(!wa.join("after-move").exists());
    // a stops the daemon it left, and keeps its data.
    wait_until(
        "host a to stop its old daemon",
        Duration::from_secs(15),
        || !std::path::Path::new(&format!("/proc/{old_pid}")).exists(),
    )?;
    ensure!(sessionfs_tests::tree_digest(&wa)? == before);
    let listed = c.host("a").session_json("sa")?;
    ensure!(listed["labels"].get("moved.from").is_none(), "{listed}");
    c.host("a").unmount()?;
    c.host("b").unmount()?;
    Ok(())
}

/// Two hosts migrating one session to themselves at once: exactly one switches; the other is
/// told, and leaves nothing of its attempt (no workspace, no daemon); the session serves from the
/// winner with the data it had.
#[test]
fn two_concurrent_migrations_have_one_winner() -> Result<()> {
    let mut c = Cluster::new()?;
    let wa = c.create("a", "sa")?;
    fill(&wa)?;
    let before = sessionfs_tests::tree_digest(&wa)?;
    let outcomes: Vec<std::process::Output> = std::thread::scope(|s| {
        let runs: Vec<_> = [(&c.hosts[1], "b"), (&c.hosts[2], "c")]
            .into_iter()
            .map(|(h, name)| {
                s.spawn(move || h.run(&["session", "migrate", "sa", "--to-host", name]))
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("migrate thread").expect("run"))
            .collect()
    });
    let won: Vec<bool> = outcomes.iter().map(|o| o.status.success()).collect();
    ensure!(won.iter().filter(|w| **w).count() == 1, "{outcomes:?}");
    let (winner, loser) = if won[0] { (1, 2) } else { (2, 1) };
    let err = String::from_utf8_lossy(&outcomes[if won[0] { 1 } else { 0 }].stderr).into_owned();
    // Lost at the fence (the other began first), or at the switch.
    ensure!(
        err.contains("cannot migrate session `sa`")
            && (err.contains("the record changed")
                || err.contains("under way")
                || err.contains("stays on host `a`")),
        "{err}"
    );
    ensure!(!c.hosts[loser].home.join("sessions/sa/workspace").exists());
    let listed = c.hosts[0].session_json("sa")?;
    let winner_name = ["a", "b", "c"][winner];
    ensure!(
        listed["host"] == winner_name && listed["state"] == "running",
        "{listed}"
    );
    let moved = c.hosts[winner].home.join("sessions/sa/workspace");
    ensure!(sessionfs_tests::tree_digest(&moved)? == before);
    c.host("b").mount()?;
    ensure!(fs::read(c.host("b").path("sa", "src/deep/er/leaf.txt"))? == b"leaf");
    c.host("b").unmount()?;
    Ok(())
}
