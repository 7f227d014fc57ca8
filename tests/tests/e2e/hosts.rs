//! Several hosts, one registry, on this machine's own network: the registry in a real etcd instead
//! of the state directory's SQLite file (`SESSIONFS_REGISTRY`, `--registry`), and hosts that need
//! Docker, which cannot run inside the test namespaces of `cluster.rs`: they advertise loopback
//! addresses of their own (127.0.0.2, 127.0.0.3).

use std::fs;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use sessionfs_tests::{wait_until, Etcd, Harness};

#[test]
fn sessions_registered_in_etcd_are_mounted_and_followed() -> Result<()> {
    // Declared first, so it outlives the harness (which stops its sessions through the registry).
    let etcd = Etcd::start()?;
    let mut h = Harness::new()?;
    h.registry = Some(etcd.url());
    let ws = h.create_session("inetcd")?;
    ensure!(
        !h.home.join("registry.db").exists(),
        "the state directory's registry file was used"
    );
    h.mount()?;
    fs::write(h.path("inetcd", "f"), b"through a registry in etcd")?;
    ensure!(fs::read(ws.join("f"))? == b"through a registry in etcd");
    // A session created while mounted appears from etcd's watch; one removed goes.
    h.create_session("later")?;
    wait_until(
        "the new session under the mount",
        Duration::from_secs(5),
        || h.root_names().contains(&"later".to_owned()),
    )?;
    h.ok(&["session", "rm", "later"])?;
    wait_until(
        "the removed session to leave",
        Duration::from_secs(5),
        || !h.root_names().contains(&"later".to_owned()),
    )?;
    let listed = h.session_json("inetcd")?;
    ensure!(listed["state"] == "running", "{listed}");
    // A registry that cannot be reached is a clear error, not a wait.
    let out = h
        .cli()
        .env("SESSIONFS_REGISTRY", "etcd://127.0.0.1:1")
        .args(["session", "ls"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("etcd://127.0.0.1:1"),
        "{err}"
    );
    h.unmount()?;
    Ok(())
}

/// etcd killed and restarted under a mount: the mount keeps serving the sessions it knows, a session
/// first used while etcd is down is dialed at its last known endpoint, commands fail clearly, and
/// once etcd is back the mount's watch resumes: a session created then appears, and none is lost or
/// doubled.
#[test]
fn a_mount_keeps_serving_while_etcd_is_down_and_follows_it_back() -> Result<()> {
    let mut etcd = Etcd::start()?;
    let mut h = Harness::new()?;
    h.registry = Some(etcd.url());
    h.create_session("used")?;
    let unused = h.create_session("unused")?;
    fs::write(unused.join("f"), b"known before etcd went")?;
    h.mount()?;
    fs::write(h.path("used", "f"), b"1")?;
    etcd.kill();
    // Known sessions keep working; one not dialed before is dialed at its last known endpoint.
    fs::write(h.path("used", "f"), b"2")?;
    ensure!(fs::read(h.path("unused", "f"))? == b"known before etcd went");
    // `session ls` fails, naming etcd, and shows what the mount last saw, saying so.
    let out = h.run(&["session", "ls"])?;
    let (err, listed) = (
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
    );
    ensure!(
        !out.status.success() && err.contains(&etcd.url()) && err.contains("last saw"),
        "{err}"
    );
    ensure!(
        listed.lines().any(|l| l.starts_with("used "))
            && listed.lines().any(|l| l.starts_with("unused ")),
        "{listed}"
    );
    etcd.restart()?;
    h.create_session("after")?;
    wait_until(
        "the mount's watch to resume",
        Duration::from_secs(20),
        || h.root_names().contains(&"after".to_owned()),
    )?;
    let mut names = h.root_names();
    names.sort();
    ensure!(names == ["after", "unused", "used"], "{names:?}");
    h.unmount()?;
    Ok(())
}

/// A session of another host (its name in the record; `SESSIONFS_HOST_NAME` plays two hosts on one
/// machine, sharing one installation CA) is reached over the network only: no direct data from a
/// process id that names nothing here, no liveness judged from it in `session ls`; a session of
/// this host still gets direct data.
#[test]
fn another_hosts_sessions_are_reached_over_the_network_only() -> Result<()> {
    let etcd = Etcd::start()?;
    let mut h = Harness::new()?;
    h.registry = Some(etcd.url());
    let data = vec![7u8; 2 << 20];
    h.env = vec![("SESSIONFS_HOST_NAME".into(), "host-a".into())];
    let remote = h.create_session("remote")?;
    fs::write(remote.join("big"), &data)?;
    h.env = vec![("SESSIONFS_HOST_NAME".into(), "host-b".into())];
    let here = h.create_session("here")?;
    fs::write(here.join("big"), &data)?;
    let listed = h.session_json("remote")?;
    ensure!(
        listed["host"] == "host-a" && listed["alive"].is_null(),
        "{listed}"
    );
    ensure!(h.session_json("here")?["host"] == "host-b");
    h.mount()?;
    ensure!(fs::read(h.path("remote", "big"))? == data);
    ensure!(fs::read(h.path("here", "big"))? == data);
    // The log's fields are coloured: compare its text without the escape sequences.
    let mut log = String::new();
    let mut escaped = false;
    for c in h.bridge_log().chars() {
        match (escaped, c) {
            (false, '\u{1b}') => escaped = true,
            (true, 'm') => escaped = false,
            (true, _) => {}
            (false, c) => log.push(c),
        }
    }
    let direct = |id: &str| {
        log.lines()
            .any(|l| l.contains("descriptor is open") && l.contains(&format!("session={id}")))
    };
    ensure!(
        direct("here"),
        "this host's session got no direct data:\n{log}"
    );
    ensure!(
        !direct("remote"),
        "another host's session got direct data:\n{log}"
    );
    // Its lifecycle and its certificates are its host's: refused here, clearly.
    let out_dir = h.dir.path().join("remote-certs");
    let certs = [
        "session",
        "certs",
        "remote",
        "--out",
        out_dir.to_str().unwrap_or(""),
    ];
    for args in [
        &["session", "stop", "remote"][..],
        &["session", "rm", "remote"][..],
        &certs[..],
    ] {
        let out = h.run(args)?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && err.contains("runs on host `host-a`"),
            "{args:?}: {err}"
        );
    }
    h.unmount()?;
    // Host a stops its own session (the harness stops this host's when it ends).
    h.env = vec![("SESSIONFS_HOST_NAME".into(), "host-a".into())];
    h.ok(&["session", "stop", "remote"])?;
    h.env = vec![("SESSIONFS_HOST_NAME".into(), "host-b".into())];
    Ok(())
}

/// A host of several publishes its docker sessions' daemons on its advertised address (here
/// 127.0.0.2, a loopback address other than the default), records that endpoint, and its mount
/// reaches the container there.
#[test]
fn a_hosts_docker_sessions_listen_on_its_advertised_address() -> Result<()> {
    let etcd = Etcd::start()?;
    let mut h = Harness::new()?;
    h.registry = Some(etcd.url());
    h.ok(&["host", "init", "--name", "dock", "--advertise", "127.0.0.2"])?;
    let id = h.unique_id("adv");
    h.create_docker_session(&id, &[])?;
    let listed = h.session_json(&id)?;
    ensure!(
        listed["host"] == "dock"
            && listed["endpoint"]
                .as_str()
                .is_some_and(|e| e.starts_with("127.0.0.2:")),
        "{listed}"
    );
    let ports = sessionfs_tests::docker(&["port", &format!("sessionfs-{id}")])?;
    ensure!(ports.contains("127.0.0.2:"), "{ports}");
    h.mount()?;
    fs::write(h.path(&id, "f"), b"through the advertised address")?;
    ensure!(fs::read(h.path(&id, "f"))? == b"through the advertised address");
    h.unmount()?;
    h.ok(&["session", "rm", &id, "--purge"])?;
    Ok(())
}

/// `host rm` reaches a docker session too: its host uploads the revocation list into the
/// container, whose daemon then refuses the removed host (here `peer`, on 127.0.0.3), which had
/// been writing to it.
#[test]
fn a_removed_host_is_refused_by_a_docker_sessions_daemon() -> Result<()> {
    let etcd = Etcd::start()?;
    let mut dock = Harness::new()?;
    dock.registry = Some(etcd.url());
    dock.ok(&["host", "init", "--name", "dock", "--advertise", "127.0.0.2"])?;
    let mut peer = Harness::new()?;
    let bundle = dock.dir.path().join("peer.bundle");
    let bundle = bundle.to_str().context("utf-8 path")?.to_owned();
    dock.ok(&["host", "add", "peer", "--out", &bundle])?;
    peer.ok(&["host", "join", &bundle, "--advertise", "127.0.0.3"])?;
    let id = dock.unique_id("rev");
    dock.create_docker_session(&id, &[])?;
    dock.mount()?;
    peer.mount()?;
    fs::write(peer.path(&id, "from-peer"), b"before")?;
    ensure!(fs::read(dock.path(&id, "from-peer"))? == b"before");

    let out = dock.ok(&["host", "rm", "peer"])?;
    ensure!(out.contains("revoked its certificate"), "{out}");
    let took = crate::cluster::wait_refused(&peer, &id, Duration::from_secs(15))?;
    eprintln!("the docker session refused the removed host {took:?} after `host rm`");
    fs::write(dock.path(&id, "after"), b"dock's own")?;
    ensure!(
        fs::read(peer.path(&id, "after")).is_err(),
        "peer read after removal"
    );
    peer.unmount()?;
    dock.unmount()?;
    dock.ok(&["session", "rm", &id, "--purge"])?;
    Ok(())
}
