//! `session migrate` end to end, against the real Docker engine and a real mount (never skipped:
//! without an engine these tests fail). A tree with nested directories, a 3 MB file, a symlink and
//! an executable moves local → docker → local with equal digests (sizes, SHA-256, modes, link
//! targets), read through the same mount path without a remount. A migration made to fail after
//! each step (`SESSIONFS_MIGRATE_FAIL_AFTER=copy|verify|switch`, in both directions) leaves the
//! session on its original backend, serving the same data, and leaves no container, volume or
//! directory behind. Every container and volume a test makes is removed by label when its harness
//! is dropped.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use sessionfs_tests::{docker, docker_image, docker_succeeds, tree_digest, wait_until, Harness};

/// Nested directories, a 3 MB file, a symlink, an executable, an empty directory.
fn make_tree(root: &Path) -> Result<()> {
    fs::create_dir_all(root.join("src/deep/er"))?;
    fs::write(root.join("src/deep/er/notes.txt"), "nested\n")?;
    fs::write(root.join("src/main.rs"), "fn main() {}\n")?;
    let big: Vec<u8> = (0..3u32 * 1024 * 1024)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    fs::write(root.join("big.bin"), big)?;
    fs::write(root.join("run.sh"), "#!/bin/sh\necho hi\n")?;
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755))?;
    symlink("src/deep/er/notes.txt", root.join("notes-link"))?;
    fs::create_dir(root.join("empty"))?;
    Ok(())
}

/// Waits until the session's tree seen through the mount equals `expected`.
fn wait_mount_digest(h: &Harness, id: &str, expected: &BTreeMap<String, String>) -> Result<()> {
    let root = h.path(id, "");
    let mut last = Err(anyhow::anyhow!("not read yet"));
    let waited = wait_until(
        "the mount to show the same tree",
        Duration::from_secs(15),
        || {
            last = tree_digest(&root);
            last.as_ref().is_ok_and(|d| d == expected)
        },
    );
    waited
        .map(|_| ())
        .with_context(|| format!("last digest: {last:?}\nexpected: {expected:?}"))
}

/// `sessionfs session migrate args…`, with the failure injection variable if `fail` is given.
fn migrate(h: &Harness, args: &[&str], fail: Option<&str>) -> Result<Output> {
    let mut cmd = h.cli();
    cmd.args(["session", "migrate"]).args(args);
    if let Some(step) = fail {
        cmd.env("SESSIONFS_MIGRATE_FAIL_AFTER", step);
    }
    Ok(cmd.stdin(Stdio::null()).output()?)
}

#[test]
fn local_to_docker_and_back_keeps_every_byte_at_the_same_mount_path() -> Result<()> {
    let mut h = Harness::new()?;
    let image = docker_image()?;
    h.uses_docker();
    let id = h.unique_id("mig");
    let ws = h.create_session(&id)?;
    make_tree(&ws)?;
    let mut expected = tree_digest(&ws)?;
    ensure!(expected.len() == 9, "{expected:?}");
    h.mount()?;
    wait_mount_digest(&h, &id, &expected)?;

    let out = h.ok(&[
        "session", "migrate", &id, "--to", "docker", "--image", image,
    ])?;
    let container = format!("sessionfs-{id}");
    ensure!(
        out.contains(&format!(
            "migrated session {id} from local to docker at 127.0.0.1:"
        )) && out.contains(&format!("serving volume {container} (9 paths verified)"))
            && out.contains(&format!(
                "kept the source directory {} (use --purge-source to delete it)",
                ws.display()
            )),
        "{out}"
    );
    let v = h.session_json(&id)?;
    ensure!(v["backend"] == "docker" && v["state"] == "running", "{v}");
    ensure!(
        v["container"] == container && v["workspace"].is_null(),
        "{v}"
    );
    ensure!(v["labels"]["docker.volume"] == container, "{v}");
    ensure!(v["labels"]["docker.image"] == image, "{v}");
    // The workspace owner moves along: recorded, and in the container's environment.
    let owner = v["labels"]["owner"]
        .as_str()
        .context("no owner label")?
        .to_owned();
    let env = docker(&[
        "inspect",
        "-f",
        "{{range .Config.Env}}{{println .}}{{end}}",
        &container,
    ])?;
    ensure!(
        env.lines()
            .any(|l| l == format!("SESSIONFSD_OWNER={owner}")),
        "{env}"
    );
    ensure!(
        v["labels"]["docker.env"]
            .as_str()
            // `ls` shows environment names only (values may be secrets); the value is checked
            // on the container above.
            .is_some_and(|e| e.contains("SESSIONFSD_OWNER=") && !e.contains(&owner)),
        "{v}"
    );
    // The source directory is kept as it was.
    ensure!(tree_digest(&ws)? == expected);
    // The same mount path now reads the container's volume.
    wait_mount_digest(&h, &id, &expected)?;
    fs::write(h.path(&id, "from-docker.txt"), "written in the container\n")?;
    expected.insert(
        "from-docker.txt".into(),
        tree_digest(&h.path(&id, ""))?
            .remove("from-docker.txt")
            .context("new file not listed")?,
    );
    ensure!(!ws.join("from-docker.txt").exists());

    let out = h.ok(&["session", "migrate", &id, "--to", "local"])?;
    let migrated = h.home.join("sessions").join(&id).join("workspace-migrated");
    ensure!(
        out.contains(&format!(
            "migrated session {id} from docker to local at 127.0.0.1:"
        )) && out.contains(&format!(
            "serving {} (10 paths verified)",
            migrated.display()
        )) && out.contains(&format!("kept the source volume {container}")),
        "{out}"
    );
    let v = h.session_json(&id)?;
    ensure!(v["backend"] == "local" && v["state"] == "running", "{v}");
    ensure!(v["alive"] == true && v["container"].is_null(), "{v}");
    ensure!(v["workspace"] == migrated.to_str().context("utf-8")?, "{v}");
    ensure!(
        v["labels"]
            .as_object()
            .is_some_and(|l| l.keys().all(|k| !k.starts_with("docker."))),
        "{v}"
    );
    ensure!(tree_digest(&migrated)? == expected);
    wait_mount_digest(&h, &id, &expected)?;
    // The container is gone, its volume kept.
    ensure!(!docker_succeeds(&["container", "inspect", &container]));
    ensure!(docker_succeeds(&["volume", "inspect", &container]));

    // Refusals change nothing.
    let out = migrate(&h, &[&id, "--to", "local"], None)?;
    ensure!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("it already uses the local backend"), "{err}");
    let out = migrate(&h, &[&id, "--to", "docker", "--image", image], None)?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains(&format!("the volume {container} exists already")),
        "{err}"
    );
    ensure!(h.session_json(&id)?["backend"] == "local");
    wait_mount_digest(&h, &id, &expected)?;

    // With the old volume gone, --purge-source deletes the migrated-from directory.
    docker(&["volume", "rm", &container])?;
    let out = h.ok(&[
        "session",
        "migrate",
        &id,
        "--to",
        "docker",
        "--image",
        image,
        "--purge-source",
    ])?;
    ensure!(
        out.contains(&format!(
            "deleted the source directory {}",
            migrated.display()
        )),
        "{out}"
    );
    ensure!(!migrated.exists());
    wait_mount_digest(&h, &id, &expected)?;
    h.unmount()
}

#[test]
fn a_migration_failing_at_any_step_leaves_the_session_where_it_was() -> Result<()> {
    let mut h = Harness::new()?;
    let image = docker_image()?;
    h.uses_docker();
    let id = h.unique_id("migfail");
    let ws = h.create_session(&id)?;
    make_tree(&ws)?;
    let expected = tree_digest(&ws)?;
    h.mount()?;
    wait_mount_digest(&h, &id, &expected)?;

    for step in ["copy", "verify", "switch"] {
        let out = migrate(&h, &[&id, "--to", "docker", "--image", image], Some(step))?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{step}: migration succeeded");
        ensure!(
            err.contains(&format!("to docker failed at step {step}"))
                && err.contains(&format!("SESSIONFS_MIGRATE_FAIL_AFTER={step}"))
                && err.contains("rolled back, the session is still a local session"),
            "{step}: {err}"
        );
        let v = h.session_json(&id)?;
        ensure!(
            v["backend"] == "local" && v["state"] == "running" && v["alive"] == true,
            "{step}: {v}"
        );
        // The source daemon served the copy and serves on.
        ensure!(
            v["pid"].is_number() && v["workspace"] == ws.to_str().context("utf-8")?,
            "{step}: {v}"
        );
        wait_mount_digest(&h, &id, &expected).with_context(|| format!("after {step}"))?;
        ensure!(
            h.docker_objects(false)?.is_empty(),
            "{step}: containers left"
        );
        ensure!(h.docker_objects(true)?.is_empty(), "{step}: volumes left");
        ensure!(tree_digest(&ws)? == expected);
    }

    // Now for real, then fail the way back.
    h.ok(&[
        "session", "migrate", &id, "--to", "docker", "--image", image,
    ])?;
    wait_mount_digest(&h, &id, &expected)?;
    let container = format!("sessionfs-{id}");
    let before = h.session_json(&id)?;
    let default_dir = h.home.join("sessions").join(&id).join("workspace-migrated");
    let empty_dir = h.dir.path().join("empty-target");
    fs::create_dir(&empty_dir)?;
    for step in ["copy", "verify", "switch"] {
        let mut args = vec![id.as_str(), "--to", "local"];
        if step == "verify" {
            args.extend(["--dir", empty_dir.to_str().context("utf-8")?]);
        }
        let out = migrate(&h, &args, Some(step))?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{step}: migration succeeded");
        ensure!(
            err.contains(&format!("to local failed at step {step}"))
                && err.contains("rolled back, the session is still a docker session"),
            "{step}: {err}"
        );
        let v = h.session_json(&id)?;
        ensure!(
            v["backend"] == "docker" && v["state"] == "running" && v["alive"] == true,
            "{step}: {v}"
        );
        ensure!(v["labels"] == before["labels"], "{step}: {v} vs {before}");
        ensure!(docker(&["inspect", "-f", "{{.State.Running}}", &container])?.trim() == "true");
        wait_mount_digest(&h, &id, &expected).with_context(|| format!("after {step}"))?;
        ensure!(
            !default_dir.exists(),
            "{step}: {} left",
            default_dir.display()
        );
        ensure!(
            fs::read_dir(&empty_dir)?.next().is_none(),
            "{step}: --dir not emptied"
        );
        let objects = (h.docker_objects(false)?, h.docker_objects(true)?);
        ensure!(
            objects == (vec![container.clone()], vec![container.clone()]),
            "{step}: {objects:?}"
        );
    }
    h.unmount()
}

#[test]
fn a_stopped_docker_session_migrates_to_local_with_its_files() -> Result<()> {
    let mut h = Harness::new()?;
    let image = docker_image()?;
    h.uses_docker();
    let id = h.unique_id("migstop");
    let ws = h.create_session(&id)?;
    make_tree(&ws)?;
    let expected = tree_digest(&ws)?;
    h.ok(&[
        "session", "migrate", &id, "--to", "docker", "--image", image,
    ])?;
    let container = format!("sessionfs-{id}");
    h.ok(&["session", "stop", &id])?;
    let v = h.session_json(&id)?;
    ensure!(v["backend"] == "docker" && v["state"] == "stopped", "{v}");
    ensure!(docker(&["inspect", "-f", "{{.State.Running}}", &container])?.trim() == "false");

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
    ensure!(
        out.contains(&format!("migrated session {id} from docker to local"))
            && out.contains("(9 paths verified)"),
        "{out}"
    );
    ensure!(
        tree_digest(&target)? == expected,
        "the migrated files differ"
    );
    let v = h.session_json(&id)?;
    ensure!(
        v["backend"] == "local" && v["state"] == "running" && v["alive"] == true,
        "{v}"
    );
    ensure!(!docker_succeeds(&["container", "inspect", &container]));
    ensure!(docker_succeeds(&["volume", "inspect", &container]));
    h.mount()?;
    wait_mount_digest(&h, &id, &expected)?;
    h.unmount()
}
