//! The audit's findings on a live mount (issue "Hardening"), each pinned by a test that failed
//! before its fix.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sessionfs_tests::Harness;

/// Finding 2: a session whose workspace lies inside a sessionfs mount made the bridge wait on its
/// own mount. `session create` refuses such a directory, with the mount named, and registers
/// nothing; the mount keeps answering.
#[test]
fn a_workspace_inside_a_sessionfs_mount_is_refused() -> Result<()> {
    let mut h = Harness::new()?;
    h.create_session("a")?;
    h.mount()?;
    let nested = h.path("a", "nested");
    fs::create_dir(&nested)?;
    let out = h.run(&[
        "session",
        "create",
        "b",
        "--dir",
        nested.to_str().context("utf-8")?,
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "created: {out:?}");
    assert!(
        stderr.contains("is inside the sessionfs mount at"),
        "{stderr}"
    );
    assert!(h.session_json("b").is_err(), "a session was registered");
    fs::write(h.path("a", "f"), b"still answering")?;
    assert_eq!(fs::read(h.path("a", "f"))?, b"still answering");
    Ok(())
}

/// The bind mount a test puts over a session's workspace, undone when dropped (before the
/// harness unmounts the bridge it points into).
struct Bind(PathBuf);

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Mounts the FUSE control file system where it belongs if it is not there, so that a hung
/// connection can be aborted.
fn ensure_fusectl() -> Result<()> {
    let table = fs::read_to_string("/proc/self/mountinfo")?;
    if !table
        .lines()
        .any(|l| l.split(' ').nth(4) == Some("/sys/fs/fuse/connections"))
    {
        let status = Command::new("mount")
            .args(["-t", "fusectl", "none", "/sys/fs/fuse/connections"])
            .status()?;
        assert!(status.success(), "cannot mount fusectl");
    }
    Ok(())
}

/// The device minor of the FUSE mount at `mountpoint` (read from the mount table, which never
/// waits on the mount), for aborting its connection.
fn fuse_minor(mountpoint: &Path) -> Result<String> {
    let table = fs::read_to_string("/proc/self/mountinfo")?;
    let point = mountpoint.to_str().context("utf-8")?;
    table
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.len() > 4 && f[4] == point)
        .and_then(|f| f[2].split_once(':').map(|(_, minor)| minor.to_string()))
        .context("the mount is not in the mount table")
}

/// Finding 2, the bridge's side: a workspace that became part of the mount after `session create`
/// checked it (here: a bind mount of a directory of the mount over it, and `session start`). An
/// append to an existing file opens it to write, which gets direct data: the bridge reopened the
/// daemon's descriptor on its only runtime thread, which made the kernel ask the bridge itself to
/// open it, and every session hung. The bridge now gives no direct data for files on a FUSE file
/// system (`direct::open_daemon_fd`), and the append goes through the bridge. Bounded: if the
/// append does not return, the test aborts the mount's FUSE connection and fails.
#[test]
fn a_workspace_that_became_part_of_the_mount_never_makes_it_wait_on_itself() -> Result<()> {
    ensure_fusectl()?;
    let mut h = Harness::new()?;
    h.create_session("a")?;
    let ws_b = h.create_session("b")?;
    h.mount()?;
    let nested = h.path("a", "nested");
    fs::create_dir(&nested)?;
    fs::write(nested.join("f"), b"before\n")?;
    h.ok(&["session", "stop", "b"])?;
    let status = Command::new("mount")
        .arg("--bind")
        .arg(&nested)
        .arg(&ws_b)
        .status()?;
    assert!(status.success(), "mount --bind failed");
    let _bind = Bind(ws_b.clone());
    h.ok(&["session", "start", "b"])?;
    let path = h.path("b", "f");
    assert_eq!(fs::read(&path)?, b"before\n");
    let (tx, rx) = mpsc::channel();
    let appender = path.clone();
    std::thread::spawn(move || {
        let append = || -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new().append(true).open(&appender)?;
            f.write_all(b"after\n")
        };
        let _ = tx.send(append());
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(appended) => appended?,
        Err(_) => {
            let minor = fuse_minor(&h.mountpoint)?;
            let _ = fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), b"1");
            bail!("the append never returned: the bridge waited on its own mount");
        }
    }
    assert_eq!(fs::read(&path)?, b"before\nafter\n");
    assert_eq!(fs::read(nested.join("f"))?, b"before\nafter\n");
    Ok(())
}

/// Finding 4: `session migrate --to local` unpacked a container's set-user-ID file as a host
/// set-user-ID file owned by the user who unpacked it (root). Files leave a container with their
/// permission bits only and directories without their set-id bits; the verification expects
/// exactly that. (Device nodes never leave a container: refused as before.)
#[test]
fn migrating_out_of_a_container_clears_set_id_bits() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut h = Harness::new()?;
    let image = sessionfs_tests::docker_image()?;
    h.uses_docker();
    let id = h.unique_id("migsuid");
    let ws = h.create_session(&id)?;
    fs::write(ws.join("tool"), b"#!/bin/sh\necho hi\n")?;
    fs::set_permissions(ws.join("tool"), fs::Permissions::from_mode(0o4755))?;
    fs::create_dir(ws.join("shared"))?;
    fs::set_permissions(ws.join("shared"), fs::Permissions::from_mode(0o3775))?;
    h.ok(&[
        "session", "migrate", &id, "--to", "docker", "--image", image,
    ])?;
    // A file made in the container belongs to its workspace owner there (1000).
    h.mount()?;
    fs::write(h.path(&id, "made-inside"), b"x")?;
    h.unmount()?;
    let target = h.dir.path().join("moved");
    let out = h.ok(&[
        "session",
        "migrate",
        &id,
        "--to",
        "local",
        "--dir",
        target.to_str().context("utf-8")?,
    ])?;
    assert!(out.contains("from docker to local"), "{out}");
    let mode = |p: &str| -> Result<u32> {
        Ok(fs::metadata(target.join(p))?.permissions().mode() & 0o7777)
    };
    assert_eq!(
        mode("tool")?,
        0o755,
        "the set-user-ID bit came out of the container"
    );
    assert_eq!(
        mode("shared")?,
        0o1775,
        "the set-group-ID bit came out of the container"
    );
    assert_eq!(fs::read(target.join("tool"))?, b"#!/bin/sh\necho hi\n");
    // Owners are mapped as `--map-owner` maps them: what the container's owner made is the
    // migrating user's on the host, not uid 1000's (an unrelated host account, perhaps).
    use std::os::unix::fs::MetadataExt;
    let me = fs::metadata(h.dir.path())?.uid();
    assert_eq!(
        fs::metadata(target.join("made-inside"))?.uid(),
        me,
        "a file came out of the container with its owner there"
    );
    Ok(())
}

/// Finding 8: dangerous workspaces were accepted: `--dir /` for a local session, and a docker
/// `--workspace` containing the state directory let the container read the CA key. A workspace
/// may not be, contain or lie inside the state directory; nothing is registered.
#[test]
fn workspaces_that_would_expose_the_state_directory_are_refused() -> Result<()> {
    let h = Harness::new()?;
    h.create_session("ok")?;
    let state = h.home.clone();
    let parent = state.parent().context("a parent")?.to_path_buf();
    let inside = state.join("sessions");
    for (i, dir) in [PathBuf::from("/"), parent, state, inside]
        .iter()
        .enumerate()
    {
        let id = format!("bad{i}");
        let out = h.run(&[
            "session",
            "create",
            &id,
            "--dir",
            dir.to_str().context("utf-8")?,
        ])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} accepted: {out:?}", dir.display());
        assert!(
            stderr.contains("the state directory"),
            "{}: {stderr}",
            dir.display()
        );
        assert!(h.session_json(&id).is_err(), "{id} was registered");
    }
    Ok(())
}

/// Finding 12: an existing state directory open to others (it holds the CA key) was left so. It
/// is tightened to 0700 by the next command.
#[test]
fn an_open_state_directory_is_tightened() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let h = Harness::new()?;
    h.create_session("a")?;
    fs::set_permissions(&h.home, fs::Permissions::from_mode(0o755))?;
    h.ok(&["session", "ls"])?;
    let mode = fs::metadata(&h.home)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the state directory stayed {mode:o}");
    let registry = fs::metadata(h.home.join("registry.db"))?
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(registry, 0o600, "the registry is {registry:o}");
    Ok(())
}

/// Finding 14, its `umount` part: `sessionfs umount` unmounted any file system. It unmounts only
/// sessionfs; another mount is left alone with a clear error.
#[test]
fn sessionfs_umount_leaves_other_file_systems_alone() -> Result<()> {
    let h = Harness::new()?;
    let dir = h.dir.path().join("tmpfs");
    fs::create_dir(&dir)?;
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "none"])
        .arg(&dir)
        .status()?;
    assert!(status.success(), "mount -t tmpfs failed");
    let _mounted = Bind(dir.clone());
    fs::write(dir.join("kept"), b"x")?;
    let out = h.run(&["umount", dir.to_str().context("utf-8")?])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "unmounted a tmpfs: {out:?}");
    assert!(
        stderr.contains("is a tmpfs mount, not sessionfs"),
        "{stderr}"
    );
    assert!(dir.join("kept").exists(), "the tmpfs was unmounted");
    Ok(())
}

/// Finding 9: `session certs --out DIR` followed a symlink planted in DIR and wrote the session's
/// private key into a file another user owns. The files are written as new files and renamed over
/// what is there (a symlink is replaced, never followed), and DIR must be the caller's own
/// directory.
#[test]
fn session_certs_never_write_through_a_planted_symlink() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let h = Harness::new()?;
    let out = h.dir.path().join("certs");
    fs::create_dir(&out)?;
    let victim = h.dir.path().join("victim");
    fs::write(&victim, b"someone else's file")?;
    std::os::unix::fs::chown(&victim, Some(65534), Some(65534))?;
    std::os::unix::fs::symlink(&victim, out.join("session.key"))?;
    h.ok(&[
        "session",
        "certs",
        "planted",
        "--out",
        out.to_str().context("utf-8")?,
    ])?;
    assert_eq!(
        fs::read(&victim)?,
        b"someone else's file",
        "the key went through the symlink"
    );
    let key = fs::symlink_metadata(out.join("session.key"))?;
    assert!(key.is_file(), "session.key is not a regular file");
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    // A directory of another user's is refused.
    let theirs = h.dir.path().join("theirs");
    fs::create_dir(&theirs)?;
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534))?;
    let refused = h.run(&[
        "session",
        "certs",
        "planted",
        "--out",
        theirs.to_str().context("utf-8")?,
    ])?;
    assert!(!refused.status.success(), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("must be a directory of yours"));
    assert!(
        fs::read_dir(&theirs)?.next().is_none(),
        "files were written there"
    );
    Ok(())
}

/// Finding 14 (containers): session containers ran with Docker's default capabilities, without
/// `no-new-privileges`, without a pids limit, on a network where they could reach each other. Now
/// a root process in the container cannot make a device node (no `CAP_MKNOD`), which before made a
/// block device appear in the workspace through the mount.
#[test]
fn session_containers_are_confined() -> Result<()> {
    let mut h = Harness::new()?;
    let id = h.unique_id("confined");
    h.create_docker_session(&id, &[])?;
    let container = format!("sessionfs-{id}");
    h.mount()?;
    let host = sessionfs_tests::docker(&[
        "inspect",
        "--format",
        "{{json .HostConfig.CapDrop}} {{json .HostConfig.SecurityOpt}} {{.HostConfig.PidsLimit}} {{.HostConfig.NetworkMode}}",
        &container,
    ])?;
    let fields: Vec<&str> = host.split_whitespace().collect();
    assert_eq!(
        fields[..3],
        [r#"["ALL"]"#, r#"["no-new-privileges:true"]"#, "4096"],
        "{host}"
    );
    let icc = sessionfs_tests::docker(&[
        "network",
        "inspect",
        "--format",
        r#"{{index .Options "com.docker.network.bridge.enable_icc"}}"#,
        fields[3],
    ])?;
    assert_eq!(icc.trim(), "false", "inter-container traffic is on");
    // The daemon (root in the container) serves mknod: a block device is refused there.
    let mknod = |name: &str, kind: &[&str]| -> Result<std::process::Output> {
        Ok(Command::new("mknod")
            .arg(h.path(&id, name))
            .args(kind)
            .output()?)
    };
    let out = mknod("disk", &["b", "8", "0"])?;
    assert!(!out.status.success(), "a block device was made");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Operation not permitted"), "{err}");
    // A FIFO needs no capability and still works.
    let out = mknod("pipe", &["p"])?;
    assert!(out.status.success(), "{out:?}");
    h.unmount()?;
    Ok(())
}

/// `cat PATH` as uid and gid 65534 (nobody), with no supplementary groups.
fn cat_as_nobody(path: &Path) -> Result<std::process::Output> {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(path)
        .output()
        .context("setpriv (util-linux)")
}

/// Finding 6: the mount showed more than the disk. Mounted by root, it let every local user in
/// (`allow_other` was the default for root), so another user read a file of a workspace that lies in
/// a private directory on disk. Now only the mounting user may use the mount unless `--allow-other`
/// is asked for; then each file's mode decides, as documented.
#[test]
fn only_the_mounting_user_may_use_the_mount_unless_others_are_allowed() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut h = Harness::new()?;
    // The way to the mount point is open to everyone; the workspace lies in a private directory.
    fs::set_permissions(h.dir.path(), fs::Permissions::from_mode(0o755))?;
    let private = h.dir.path().join("private");
    fs::create_dir(&private)?;
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700))?;
    let ws = private.join("ws");
    fs::create_dir(&ws)?;
    h.ok(&[
        "session",
        "create",
        "mine",
        "--dir",
        ws.to_str().context("utf-8")?,
    ])?;
    fs::write(ws.join("notes"), b"private notes")?;
    fs::set_permissions(ws.join("notes"), fs::Permissions::from_mode(0o644))?;
    assert!(
        !cat_as_nobody(&ws.join("notes"))?.status.success(),
        "the disk lets another user in"
    );
    h.mount()?;
    let out = cat_as_nobody(&h.path("mine", "notes"))?;
    assert!(
        !out.status.success(),
        "another user read a private workspace through the mount"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    h.unmount()?;
    h.mount_args.push("--allow-other".into());
    h.mount()?;
    let out = cat_as_nobody(&h.path("mine", "notes"))?;
    assert_eq!(
        (out.status.success(), out.stdout.as_slice()),
        (true, &b"private notes"[..]),
        "with --allow-other the file's mode decides: {out:?}"
    );
    h.unmount()?;
    Ok(())
}

/// Whether the mount at `mountpoint` has the per-mount option `option` (`/proc/self/mountinfo`).
fn has_mount_option(mountpoint: &Path, option: &str) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let Some(at) = mountpoint.to_str() else {
        return false;
    };
    info.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        fields.get(4) == Some(&at)
            && fields
                .get(5)
                .is_some_and(|opts| opts.split(',').any(|o| o == option))
    })
}

/// Finding 5: the host follows symlinks planted in a session (`head link-to-/etc/shadow` as root,
/// or a write through such a link). `sessionfs mount --nosymfollow` stops every path through the
/// mount at a symlink (`ELOOP`) while `readlink` still shows it.
#[test]
fn a_nosymfollow_mount_never_leads_out_through_a_planted_symlink() -> Result<()> {
    let mut h = Harness::new()?;
    let ws = h.create_session("planted")?;
    let outside = h.dir.path().join("host-secret");
    fs::write(&outside, b"host secret")?;
    std::os::unix::fs::symlink(&outside, ws.join("link"))?;
    fs::write(ws.join("inside"), b"ok")?;
    std::os::unix::fs::symlink("inside", ws.join("rel"))?;
    h.mount()?;
    // By default the host follows it: what the option is for.
    assert_eq!(fs::read(h.path("planted", "link"))?, b"host secret");
    h.unmount()?;
    h.mount_args.push("--nosymfollow".into());
    h.mount()?;
    let mountpoint = h.mountpoint.canonicalize()?;
    sessionfs_tests::wait_until("nosymfollow on the mount", Duration::from_secs(10), || {
        has_mount_option(&mountpoint, "nosymfollow")
    })?;
    let loops =
        |r: std::io::Result<()>| r.err().and_then(|e| e.raw_os_error()) == Some(libc::ELOOP);
    assert!(loops(fs::read(h.path("planted", "link")).map(drop)));
    assert!(loops(fs::write(h.path("planted", "link"), b"overwritten")));
    assert_eq!(fs::read(&outside)?, b"host secret");
    assert_eq!(fs::read_link(h.path("planted", "link"))?, outside);
    // One that stays inside is not followed either; the file itself is there.
    assert!(loops(fs::read(h.path("planted", "rel")).map(drop)));
    assert_eq!(fs::read(h.path("planted", "inside"))?, b"ok");
    // The mount's other protections are kept.
    assert!(has_mount_option(&mountpoint, "nosuid") && has_mount_option(&mountpoint, "nodev"));
    h.unmount()?;
    Ok(())
}
