//! Several hosts, one registry (issue 16), first step: the registry in a real etcd instead of the
//! state directory's SQLite file, chosen by `SESSIONFS_REGISTRY` (`--registry`). One host here; the
//! hosts, their trust and the remote data path come with the rest of the issue.

use std::fs;
use std::time::Duration;

use anyhow::{ensure, Result};
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
    let out = h.run(&["session", "ls"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && err.contains(&etcd.url()), "{err}");
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
