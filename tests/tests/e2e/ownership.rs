//! Ownership: a session whose daemon gives new nodes a fixed workspace owner (`--owner`), seen through a
//! plain mount and through `--map-owner`, and files written across the boundary both ways.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use sessionfs_tests::Harness;

const OWNER: u32 = 1234;

/// Runs `sh -c script` as the workspace owner (standing in for the container's own tools).
fn as_owner(script: &str) -> Result<()> {
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            &OWNER.to_string(),
            "--regid",
            &OWNER.to_string(),
            "--clear-groups",
        ])
        .args(["sh", "-c", script])
        .output()
        .context("running setpriv (util-linux)")?;
    ensure!(
        out.status.success(),
        "as uid {OWNER}: {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn owner_and_map_owner() -> Result<()> {
    let mut h = Harness::new()?;
    // The workspace's user must be able to reach the workspace inside the test's private directory.
    fs::set_permissions(
        h.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let ws = h.dir.path().join("ws-owned");
    fs::create_dir(&ws)?;
    let owner = format!("{OWNER}:{OWNER}");
    h.ok(&[
        "session",
        "create",
        "owned",
        "--dir",
        ws.to_str().context("utf-8")?,
        "--owner",
        &owner,
    ])?;
    // The (root-owned, fresh) workspace root was given to the owner.
    ensure!(
        fs::metadata(&ws)?.uid() == OWNER,
        "workspace root not given to the owner"
    );

    // A plain mount shows the owner as it is.
    h.mount()?;
    fs::write(h.path("owned", "from-host.txt"), b"host\n")?;
    fs::create_dir(h.path("owned", "dir"))?;
    for name in ["from-host.txt", "dir"] {
        let on_disk = fs::metadata(ws.join(name))?;
        ensure!(
            (on_disk.uid(), on_disk.gid()) == (OWNER, OWNER),
            "{name} is not the owner's on disk"
        );
        ensure!(
            fs::metadata(h.path("owned", name))?.uid() == OWNER,
            "{name} not shown as the owner"
        );
    }
    // The workspace's own user can change what the host created, and create its own files.
    as_owner(&format!(
        "echo inside >> {0}/from-host.txt && echo own > {0}/dir/from-inside.txt",
        ws.display()
    ))?;
    h.unmount()?;

    // --map-owner: the owner shows up as the mounting user, and back.
    h.mount_args = vec!["--map-owner".into()];
    h.mount()?;
    let me = rustix_ids();
    for name in ["from-host.txt", "dir/from-inside.txt"] {
        let m = fs::metadata(h.path("owned", name))?;
        ensure!(
            (m.uid(), m.gid()) == me,
            "{name}: {:?} is not shown as the mounting user {me:?}",
            (m.uid(), m.gid())
        );
    }
    ensure!(fs::read(h.path("owned", "from-host.txt"))? == b"host\ninside\n");
    // Attributes learned at an open (the bridge answers later `stat`s from them) are mapped too.
    let m = fs::metadata(h.path("owned", "from-host.txt"))?;
    ensure!(
        (m.uid(), m.gid()) == me,
        "after an open and a read: {:?} is not shown as the mounting user {me:?}",
        (m.uid(), m.gid())
    );
    fs::write(
        h.path("owned", "dir/from-inside.txt"),
        b"rewritten by the host\n",
    )?;
    // A chown to the mounting user lands as the owner inside.
    fs::write(ws.join("rooted.txt"), b"x")?;
    std::os::unix::fs::chown(h.path("owned", "rooted.txt"), Some(me.0), Some(me.1))?;
    ensure!(
        fs::metadata(ws.join("rooted.txt"))?.uid() == OWNER,
        "chown was not mapped to the owner"
    );
    as_owner(&format!(
        "cat {0}/dir/from-inside.txt >/dev/null && echo again >> {0}/rooted.txt",
        ws.display()
    ))?;
    h.unmount()?;
    Ok(())
}

fn rustix_ids() -> (u32, u32) {
    // SAFETY: geteuid and getegid take no arguments, cannot fail and have no preconditions.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

#[test]
fn docker_sessions_default_to_an_unprivileged_owner() -> Result<()> {
    let mut h = Harness::new()?;
    let id = h.unique_id("owned");
    h.create_docker_session(&id, &[])?;
    h.mount_args = vec!["--map-owner".into()];
    h.mount()?;
    fs::write(h.path(&id, "made-on-host.txt"), b"host\n")?;
    fs::create_dir(h.path(&id, "made-dir"))?;
    // Inside the container the files belong to the workspace owner, not root: read it from the volume.
    let volume = format!("sessionfs-{id}");
    let data =
        sessionfs_tests::docker(&["volume", "inspect", "--format", "{{.Mountpoint}}", &volume])?;
    let data = std::path::PathBuf::from(data.trim());
    for name in ["made-on-host.txt", "made-dir", ""] {
        let m = fs::metadata(data.join(name))?;
        ensure!(
            (m.uid(), m.gid()) == (1000, 1000),
            "`{name}` in the volume is {}:{}",
            m.uid(),
            m.gid()
        );
    }
    // Through --map-owner they are the mounting user's.
    let m = fs::metadata(h.path(&id, "made-on-host.txt"))?;
    ensure!(
        (m.uid(), m.gid()) == rustix_ids(),
        "shown as {}:{}",
        m.uid(),
        m.gid()
    );
    h.unmount()?;
    Ok(())
}
