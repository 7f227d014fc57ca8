//! Docker sessions end to end, against the real Docker engine (never skipped: without an engine
//! these tests fail). Three docker sessions and a local one mounted together pass the differential
//! scenario; `session stop` answers ENOTCONN and `session start` recovers on the published port it
//! gets; the volume's data survives stop/start and `rm` without `--purge`; `rm --purge` removes the
//! container and the volume but never a `--workspace` directory; image and create errors are clear
//! and leave nothing behind. While mounted the registry follows Docker: `docker restart` (new port) is
//! picked up without `session start`; `docker kill` fails operations within the bound until `session
//! start`; `docker rm -f` drops the session from the mount root (`gone`); data survives `session
//! recreate` at the same mount path. Every container and volume a test makes is removed by label when its
//! harness is dropped.

#![forbid(unsafe_code)]

use std::fs;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use sessionfs_tests::{assert_same, scenario};
use sessionfs_tests::{docker, docker_image, docker_succeeds, wait_readable, wait_until, Harness};

/// The recorded endpoint of a session (`session ls --json`).
fn endpoint(h: &Harness, id: &str) -> Result<Option<SocketAddr>> {
    let v = h.session_json(id)?;
    Ok(match v["endpoint"].as_str() {
        Some(e) => Some(e.parse()?),
        None => None,
    })
}

/// `docker inspect -f FORMAT NAME`, trimmed.
fn inspect(name: &str, format: &str) -> Result<String> {
    Ok(docker(&["inspect", "-f", format, name])?.trim().to_owned())
}

#[test]
fn three_docker_sessions_and_a_local_one_agree_with_a_local_directory() -> Result<()> {
    let mut h = Harness::new()?;
    let ids: Vec<String> = (0..3).map(|i| h.unique_id(&format!("dk{i}"))).collect();
    let host_ws = h.dir.path().join("host-ws");
    fs::create_dir(&host_ws)?;
    let out = h.create_docker_session(
        &ids[0],
        &["--cpus", "1", "--memory", "512m", "--env", "TEAM=a=b"],
    )?;
    ensure!(
        out.contains(&format!(
            "serving volume sessionfs-{0} in container sessionfs-{0}",
            ids[0]
        )),
        "{out}"
    );
    h.create_docker_session(&ids[1], &[])?;
    h.create_docker_session(
        &ids[2],
        &["--workspace", host_ws.to_str().context("utf-8")?],
    )?;
    let local_id = h.unique_id("loc");
    h.create_session(&local_id)?;
    // Docker workspaces belong to their owner (1000:1000); shown as the mounting user, as a
    // developer would mount them, so that git accepts the repository as the user's own.
    h.mount_args = vec!["--map-owner".into()];
    h.mount()?;

    // What Docker holds for the first session.
    let c0 = format!("sessionfs-{}", ids[0]);
    ensure!(inspect(&c0, "{{index .Config.Labels \"sessionfs.session\"}}")? == ids[0]);
    ensure!(inspect(&c0, "{{index .Config.Labels \"sessionfs.managed\"}}")? == "1");
    ensure!(inspect(&c0, "{{.HostConfig.RestartPolicy.Name}}")? == "unless-stopped");
    ensure!(inspect(&c0, "{{.HostConfig.NanoCpus}}")? == "1000000000");
    ensure!(inspect(&c0, "{{.HostConfig.Memory}}")? == (512u64 << 20).to_string());
    ensure!(inspect(&c0, "{{json .Config.Env}}")?.contains("\"TEAM=a=b\""));
    // On the sessions' network, whose frames carry the transport's datagrams whole, and so does
    // the container's own interface.
    let networks = inspect(
        &c0,
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
    )?;
    ensure!(networks == "sessionfs", "networks: {networks}");
    let mtu = docker(&[
        "network",
        "inspect",
        "-f",
        "{{index .Options \"com.docker.network.driver.mtu\"}}",
        "sessionfs",
    ])?;
    ensure!(mtu.trim() == "9000", "network MTU: {mtu}");
    let pid = inspect(&c0, "{{.State.Pid}}")?;
    let link = std::process::Command::new("nsenter")
        .args(["-t", &pid, "-n", "ip", "-o", "link", "show", "eth0"])
        .output()
        .context("nsenter ip link")?;
    let link = String::from_utf8_lossy(&link.stdout);
    ensure!(link.contains(" mtu 9000 "), "the container's eth0: {link}");
    let health = inspect(&c0, "{{json .Config.Healthcheck}}")?;
    ensure!(
        health.contains(&format!(
            "\"Test\":[\"CMD\",\"/sessionfsd\",\"--health\",\"--session-id\",\"{}\",\
             \"--cert-dir\",\"/run/sessionfs\",\"--listen\",\"0.0.0.0:7878\"]",
            ids[0]
        )) && health.contains("\"Interval\":2000000000")
            && health.contains("\"Timeout\":2000000000")
            && health.contains("\"Retries\":3"),
        "{health}"
    );
    let binding = inspect(&c0, "{{json .NetworkSettings.Ports}}")?;
    let ep0 = endpoint(&h, &ids[0])?.context("no endpoint")?;
    ensure!(
        binding.contains(&format!(
            "\"7878/udp\":[{{\"HostIp\":\"127.0.0.1\",\"HostPort\":\"{}\"}}]",
            ep0.port()
        )),
        "{binding} vs {ep0}"
    );
    ensure!(ep0.ip().is_loopback());
    ensure!(inspect(&c0, "{{(index .Mounts 0).Name}}")? == c0);
    // Certificates were delivered into the container, the key private; the image has none.
    let listing = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("docker cp {c0}:/run/sessionfs - | tar tvf -"))
        .output()?;
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    ensure!(
        listing
            .lines()
            .any(|l| l.starts_with("-rw------- root/root")
                && l.ends_with(sessionfs_pki::SESSION_FILES.key)),
        "{listing}"
    );
    let image_id = inspect(docker_image()?, "{{.Id}}")?;
    ensure!(inspect(&c0, "{{.Image}}")? == image_id);
    let history = docker(&[
        "history",
        "--no-trunc",
        "--format",
        "{{.CreatedBy}}",
        &image_id,
    ])?;
    ensure!(
        !history.contains("sessionfs/") && !history.contains(".key"),
        "{history}"
    );

    // `session ls`: backend, endpoint, container and health for every session.
    for id in &ids {
        let v = h.session_json(id)?;
        ensure!(v["backend"] == "docker" && v["state"] == "running", "{v}");
        ensure!(v["container"] == format!("sessionfs-{id}"), "{v}");
        ensure!(v["alive"] == true, "{v}");
        ensure!(
            v["labels"]["docker.container"] == format!("sessionfs-{id}"),
            "{v}"
        );
    }
    ensure!(h.session_json(&ids[0])?["workspace"].is_null());
    ensure!(h.session_json(&ids[0])?["labels"]["docker.volume"] == c0);
    ensure!(
        h.session_json(&ids[2])?["workspace"] == host_ws.to_str().context("utf-8")?,
        "{}",
        h.session_json(&ids[2])?
    );
    let local = h.session_json(&local_id)?;
    ensure!(
        local["container"].is_null() && local["health"].is_null(),
        "{local}"
    );
    wait_until(
        "docker health checks to pass",
        Duration::from_secs(20),
        || {
            ids.iter()
                .all(|id| h.session_json(id).is_ok_and(|v| v["health"] == "healthy"))
        },
    )?;
    let table = h.ok(&["session", "ls"])?;
    let header = table.lines().next().context("empty table")?;
    ensure!(
        header.split_whitespace().collect::<Vec<_>>()
            == [
                "ID",
                "BACKEND",
                "STATE",
                "ENDPOINT",
                "CONTAINER",
                "HEALTH",
                "WORKSPACE"
            ],
        "{table}"
    );
    let row0 = table
        .lines()
        .find(|l| l.starts_with(&format!("{} ", ids[0])))
        .context("no row")?;
    ensure!(
        row0.split_whitespace().collect::<Vec<_>>()
            == [
                ids[0].as_str(),
                "docker",
                "running",
                &ep0.to_string(),
                &c0,
                "healthy",
                "volume",
                &c0
            ],
        "{table}"
    );
    let row_local = table
        .lines()
        .find(|l| l.starts_with(&format!("{local_id} ")))
        .context("no local row")?;
    let cells: Vec<&str> = row_local.split_whitespace().collect();
    ensure!(
        cells[1] == "local" && cells[4] == "-" && cells[5] == "-",
        "{table}"
    );

    // The differential scenario on every session, docker and local, mounted together.
    let plain = h.dir.path().join("plain");
    fs::create_dir(&plain)?;
    let expected = scenario(&plain);
    for id in ids.iter().chain([&local_id]) {
        let seen = scenario(&h.path(id, ""));
        assert_same(&expected, &seen, &format!("session {id}"));
    }
    // The bind-mounted session wrote into the host directory.
    ensure!(host_ws.join("repo/README").is_file());
    h.unmount()?;
    Ok(())
}

#[test]
fn stop_answers_enotconn_and_start_recovers_with_the_data() -> Result<()> {
    let mut h = Harness::new()?;
    let id = h.unique_id("stop");
    h.create_docker_session(&id, &[])?;
    h.mount()?;
    let file = h.path(&id, "keep.txt");
    fs::write(&file, b"survives stop and start\n")?;
    let before = endpoint(&h, &id)?.context("no endpoint")?;

    let out = h.ok(&["session", "stop", &id])?;
    ensure!(
        out.trim() == format!("stopped session {id} (container sessionfs-{id})"),
        "{out}"
    );
    let v = h.session_json(&id)?;
    ensure!(
        v["state"] == "stopped" && v["endpoint"].is_null() && v["alive"] == false,
        "{v}"
    );
    ensure!(v["health"] == "exited", "{v}");
    ensure!(inspect(&format!("sessionfs-{id}"), "{{.State.Running}}")? == "false");
    let mut last = None;
    wait_until(
        "ENOTCONN from the stopped session",
        Duration::from_secs(2),
        || {
            let err = fs::metadata(&file).err().and_then(|e| e.raw_os_error());
            last = err;
            err == Some(libc::ENOTCONN)
        },
    )
    .with_context(|| format!("last errno {last:?}"))?;
    // Stopping again is harmless.
    let out = h.ok(&["session", "stop", &id])?;
    ensure!(
        out.trim() == format!("session {id} was already stopped"),
        "{out}"
    );

    let out = h.ok(&["session", "start", &id])?;
    ensure!(
        out.starts_with(&format!("started session {id} at 127.0.0.1:")),
        "{out}"
    );
    let after = endpoint(&h, &id)?.context("no endpoint after start")?;
    ensure!(after.ip().is_loopback());
    ensure!(
        inspect(
            &format!("sessionfs-{id}"),
            "{{(index (index .NetworkSettings.Ports \"7878/udp\") 0).HostPort}}"
        )? == after.port().to_string()
    );
    eprintln!("endpoint before stop {before}, after start {after}");
    let mut seen = String::new();
    wait_until(
        "the restarted session to answer",
        Duration::from_secs(10),
        || match fs::read_to_string(&file) {
            Ok(text) => {
                seen = text;
                true
            }
            Err(_) => false,
        },
    )?;
    ensure!(seen == "survives stop and start\n", "{seen:?}");
    fs::write(h.path(&id, "after.txt"), b"written after the restart")?;
    ensure!(fs::read(h.path(&id, "after.txt"))? == b"written after the restart");
    ensure!(h.session_json(&id)?["state"] == "running");
    // Starting a running session changes nothing.
    let out = h.ok(&["session", "start", &id])?;
    ensure!(
        out.trim() == format!("session {id} is already running at {after}"),
        "{out}"
    );
    h.unmount()?;
    Ok(())
}

#[test]
fn rm_keeps_the_volume_unless_purged_and_never_deletes_a_host_workspace() -> Result<()> {
    let mut h = Harness::new()?;
    let id = h.unique_id("rm");
    let container = format!("sessionfs-{id}");
    h.create_docker_session(&id, &[])?;
    h.mount()?;
    fs::write(h.path(&id, "data.txt"), b"in the volume")?;

    let out = h.ok(&["session", "rm", &id])?;
    ensure!(
        out.starts_with(&format!(
            "removed session {id} (removed container {container})"
        )),
        "{out}"
    );
    ensure!(
        out.contains(&format!(
            "kept volume {container} (use --purge to delete it)"
        )),
        "{out}"
    );
    ensure!(!docker_succeeds(&["container", "inspect", &container]));
    ensure!(docker_succeeds(&["volume", "inspect", &container]));
    ensure!(!h.home.join("sessions").join(&id).exists());
    wait_until(
        "the removed session to leave the mount",
        Duration::from_secs(2),
        || !h.path(&id, "").exists(),
    )?;

    // The same id again reuses the kept volume: the data is still there.
    h.create_docker_session(&id, &[])?;
    let seen = wait_readable(
        "the new container to serve the old volume",
        &h.path(&id, "data.txt"),
        Duration::from_secs(10),
    )?;
    ensure!(seen == b"in the volume");

    let out = h.ok(&["session", "rm", &id, "--purge"])?;
    ensure!(
        out.contains(&format!("deleted volume {container}")),
        "{out}"
    );
    ensure!(!docker_succeeds(&["container", "inspect", &container]));
    ensure!(!docker_succeeds(&["volume", "inspect", &container]));
    ensure!(h.session_json(&id).is_err());

    // A bind-mounted host directory survives --purge.
    let host_ws = h.dir.path().join("host");
    fs::create_dir(&host_ws)?;
    let hid = h.unique_id("host");
    h.create_docker_session(&hid, &["--workspace", host_ws.to_str().context("utf-8")?])?;
    wait_until(
        "the host-dir session to appear",
        Duration::from_secs(2),
        || h.path(&hid, "").exists(),
    )?;
    fs::write(h.path(&hid, "f.txt"), b"on the host")?;
    ensure!(fs::read(host_ws.join("f.txt"))? == b"on the host");
    let out = h.ok(&["session", "rm", &hid, "--purge"])?;
    ensure!(
        out.contains(&format!(
            "kept workspace {} (a --workspace directory is never deleted)",
            host_ws.display()
        )),
        "{out}"
    );
    ensure!(fs::read(host_ws.join("f.txt"))? == b"on the host");
    ensure!(h.docker_objects(false)?.is_empty() && h.docker_objects(true)?.is_empty());
    h.unmount()?;
    Ok(())
}

/// Removes an image tag when dropped.
struct TagGuard(String);

impl Drop for TagGuard {
    fn drop(&mut self) {
        let _ = docker(&["rmi", &self.0]);
    }
}

#[test]
fn image_and_create_errors_are_clear_and_leave_nothing_behind() -> Result<()> {
    let mut h = Harness::new()?;
    h.uses_docker();
    let image = docker_image()?;

    // A base image that is not there is refused before building.
    let out = h.run(&[
        "image",
        "build",
        "--base",
        "sessionfs-no-such-image:1",
        "--tag",
        "x:1",
    ])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "{err}");
    ensure!(
        err.contains("base image `sessionfs-no-such-image:1` does not exist locally"),
        "{err}"
    );
    // A dynamically linked daemon is refused.
    let dynamic = sessionfs_tests::bin_dir()?.join("sessionfsd");
    let out = h
        .cli()
        .args(["image", "build", "--tag", "x:1"])
        .env("SESSIONFS_STATIC_DAEMON", &dynamic)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "{err}");
    ensure!(
        err.contains("is dynamically linked") && err.contains("crt-static"),
        "{err}"
    );

    // Create failures: a missing image, and a limit the engine refuses after the volume was
    // made. Neither leaves a registration, a session directory, a container or a volume.
    let id = h.unique_id("bad");
    let out = h.run(&[
        "session",
        "create",
        &id,
        "--backend",
        "docker",
        "--image",
        "sessionfs-no-such-image:2",
    ])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && err.contains("image `sessionfs-no-such-image:2` does not exist locally"),
        "{err}"
    );
    let out = h.run(&[
        "session",
        "create",
        &id,
        "--backend",
        "docker",
        "--image",
        image,
        "--cpus",
        "1000",
    ])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("cannot create container"),
        "{err}"
    );
    ensure!(h.session_json(&id).is_err());
    ensure!(!h.home.join("sessions").join(&id).exists());
    ensure!(h.docker_objects(false)?.is_empty(), "containers left");
    ensure!(h.docker_objects(true)?.is_empty(), "volumes left");
    // Options of the other backend are refused.
    let out = h.run(&["session", "create", &id, "--image", image])?;
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("--image applies only to --backend docker")
    );

    // --base: the daemon goes into an existing image at /usr/local/bin/sessionfsd.
    let based = format!("sessionfs-test-based:{}", std::process::id());
    let _guard = TagGuard(based.clone());
    let out = h.ok(&["image", "build", "--base", image, "--tag", &based])?;
    ensure!(
        out.contains(&format!("built image {based}"))
            && out.contains("daemon at /usr/local/bin/sessionfsd"),
        "{out}"
    );
    ensure!(inspect(&based, "{{json .Config.Entrypoint}}")? == "[\"/usr/local/bin/sessionfsd\"]");
    ensure!(inspect(&based, "{{index .Config.Labels \"sessionfs.image\"}}")? == "1");
    let bid = h.unique_id("based");
    h.ok(&[
        "session",
        "create",
        &bid,
        "--backend",
        "docker",
        "--image",
        &based,
    ])?;
    wait_until(
        "the based session's health check",
        Duration::from_secs(20),
        || h.session_json(&bid).is_ok_and(|v| v["health"] == "healthy"),
    )?;
    h.mount()?;
    fs::write(h.path(&bid, "hello"), b"from a based image")?;
    ensure!(fs::read(h.path(&bid, "hello"))? == b"from a based image");
    match fs::read(h.path(&bid, "missing")) {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        other => anyhow::bail!("expected ENOENT, got {other:?}"),
    }
    h.unmount()?;
    h.ok(&["session", "rm", &bid, "--purge"])?;
    Ok(())
}

#[test]
fn a_daemon_that_dies_at_start_is_reported_and_rolled_back() -> Result<()> {
    let mut h = Harness::new()?;
    h.uses_docker();
    // A static stand-in for the daemon that says why it fails and exits.
    let src = h.dir.path().join("dies.c");
    fs::write(
        &src,
        "#include <stdio.h>\nint main(void) { fputs(\"boom: no workspace today\\n\", stderr); return 3; }\n",
    )?;
    let bin = h.dir.path().join("dies");
    let cc = std::process::Command::new("cc")
        .arg("-static")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
        .context("cc (scripts/install-deps.sh installs gcc)")?;
    ensure!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let tag = format!("sessionfs-test-dies:{}", std::process::id());
    let _guard = TagGuard(tag.clone());
    let out = h
        .cli()
        .args(["image", "build", "--tag", &tag])
        .env("SESSIONFS_STATIC_DAEMON", &bin)
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let id = h.unique_id("dies");
    let out = h.run(&[
        "session",
        "create",
        &id,
        "--backend",
        "docker",
        "--image",
        &tag,
    ])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "{err}");
    ensure!(
        err.contains(&format!(
            "container sessionfs-{id} of session `{id}` did not become ready"
        )) && err.contains("exit code 3")
            && err.contains("boom: no workspace today"),
        "{err}"
    );
    ensure!(h.session_json(&id).is_err());
    ensure!(!h.home.join("sessions").join(&id).exists());
    let containers = h.docker_objects(false)?;
    ensure!(
        containers.is_empty(),
        "containers left: {containers:?} (states: {:?}); the create printed:\n{err}",
        containers
            .iter()
            .map(|c| inspect(c, "{{.State.Status}} restarting={{.State.Restarting}}"))
            .collect::<Vec<_>>()
    );
    let volumes = h.docker_objects(true)?;
    ensure!(
        volumes.is_empty(),
        "volumes left: {volumes:?}; the create printed:\n{err}"
    );
    Ok(())
}

/// The errno of reading `path`, `None` if the read succeeds.
fn read_errno(path: &std::path::Path) -> Option<i32> {
    fs::read(path).err().map(|e| e.raw_os_error().unwrap_or(-1))
}

/// The host port Docker published for the daemon of container `name`.
fn published_port(name: &str) -> Result<u16> {
    let port = inspect(
        name,
        "{{(index (index .NetworkSettings.Ports \"7878/udp\") 0).HostPort}}",
    )?;
    Ok(port.parse()?)
}

#[test]
fn docker_restart_is_picked_up_from_the_events_without_session_start() -> Result<()> {
    let mut h = Harness::new()?;
    let id = h.unique_id("rst");
    let container = format!("sessionfs-{id}");
    h.create_docker_session(&id, &[])?;
    h.mount()?;
    let file = h.path(&id, "kept.txt");
    fs::write(&file, b"across docker restart\n")?;
    let before = endpoint(&h, &id)?.context("no endpoint")?;

    docker(&["restart", "-t", "1", &container])?;
    let port = published_port(&container)?;
    eprintln!("port before restart {}, after {port}", before.port());
    // The reconciler records the new port from the events; nobody runs `session start`.
    wait_until(
        "the registry to follow the restarted container",
        Duration::from_secs(10),
        || {
            endpoint(&h, &id).is_ok_and(|e| e.map(|e| e.port()) == Some(port))
                && h.session_json(&id).is_ok_and(|v| v["state"] == "running")
        },
    )
    .with_context(|| h.bridge_log())?;
    let seen = wait_readable(
        "the file to be readable through the new port",
        &file,
        Duration::from_secs(10),
    )
    .with_context(|| h.bridge_log())?;
    ensure!(seen == b"across docker restart\n", "{seen:?}");
    ensure!(
        h.bridge_log().contains("reconciled docker session"),
        "{}",
        h.bridge_log()
    );
    h.unmount()?;
    Ok(())
}

#[test]
fn docker_kill_fails_within_the_bound_and_session_start_recovers() -> Result<()> {
    let mut h = Harness::new()?;
    let id = h.unique_id("kill");
    let container = format!("sessionfs-{id}");
    h.create_docker_session(&id, &[])?;
    h.mount()?;
    let file = h.path(&id, "kept.txt");
    fs::write(&file, b"across docker kill\n")?;

    docker(&["kill", &container])?;
    // Every read fails, each within the op timeout, with one of the documented errnos.
    let bound = Duration::from_secs(h.op_timeout_secs + 1);
    let mut errnos = Vec::new();
    let limit = std::time::Instant::now() + Duration::from_secs(5);
    let mut failed_reads = 0;
    while std::time::Instant::now() < limit && failed_reads < 3 {
        let started = std::time::Instant::now();
        let errno = read_errno(&file);
        let took = started.elapsed();
        ensure!(took <= bound, "a read took {took:?} (errno {errno:?})");
        if let Some(errno) = errno {
            ensure!(
                [libc::EIO, libc::ENOTCONN, libc::ETIMEDOUT].contains(&errno),
                "unexpected errno {errno}"
            );
            errnos.push(errno);
            failed_reads += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(failed_reads >= 3, "reads kept succeeding after docker kill");
    eprintln!("errnos after docker kill: {errnos:?}");
    // The reconciler saw the container exit.
    wait_until(
        "the killed session to be recorded stopped",
        Duration::from_secs(5),
        || h.session_json(&id).is_ok_and(|v| v["state"] == "stopped"),
    )?;

    let out = h.ok(&["session", "start", &id])?;
    ensure!(out.starts_with(&format!("started session {id}")), "{out}");
    let seen = wait_readable(
        "the started session to answer",
        &file,
        Duration::from_secs(10),
    )?;
    ensure!(seen == b"across docker kill\n", "{seen:?}");
    h.unmount()?;
    Ok(())
}

#[test]
fn docker_rm_outside_sessionfs_drops_the_session_from_the_mount() -> Result<()> {
    let mut h = Harness::new()?;
    let id = h.unique_id("gone");
    let other = h.unique_id("stay");
    h.create_docker_session(&id, &[])?;
    h.create_docker_session(&other, &[])?;
    h.mount()?;
    ensure!(h.root_names().contains(&id), "{:?}", h.root_names());

    docker(&["rm", "-f", &format!("sessionfs-{id}")])?;
    wait_until(
        "the removed container's session to leave the mount root",
        Duration::from_secs(5),
        || !h.root_names().contains(&id),
    )
    .with_context(|| h.bridge_log())?;
    ensure!(h.root_names().contains(&other), "{:?}", h.root_names());
    let v = h.session_json(&id)?;
    ensure!(
        v["state"] == "gone" && v["endpoint"].is_null() && v["health"] == "gone",
        "{v}"
    );
    let table = h.ok(&["session", "ls"])?;
    let row = table
        .lines()
        .find(|l| l.starts_with(&format!("{id} ")))
        .context("no row")?;
    ensure!(row.split_whitespace().nth(2) == Some("gone"), "{table}");
    // The other session is untouched.
    fs::write(h.path(&other, "f"), b"still here")?;
    ensure!(fs::read(h.path(&other, "f"))? == b"still here");

    // `recreate` brings the gone session back on its kept volume.
    let out = h.ok(&["session", "recreate", &id])?;
    ensure!(
        out.contains("(the old container was already gone)"),
        "{out}"
    );
    wait_until(
        "the recreated session to reappear",
        Duration::from_secs(5),
        || h.root_names().contains(&id),
    )?;
    h.unmount()?;
    Ok(())
}

#[test]
fn data_survives_docker_session_recreate_and_the_mount_keeps_working() -> Result<()> {
    let mut h = Harness::new()?;
    let id = h.unique_id("recr");
    let container = format!("sessionfs-{id}");
    h.create_docker_session(&id, &["--cpus", "1", "--memory", "256m", "--env", "K=v=1"])?;
    h.mount()?;
    let file = h.path(&id, "data.txt");
    fs::write(&file, b"in the volume\n")?;
    let old_id = inspect(&container, "{{.Id}}")?;

    let out = h.ok(&["session", "recreate", &id])?;
    ensure!(
        out.starts_with(&format!("recreated session {id} at 127.0.0.1:"))
            && out.contains(&format!(
                "in container {container} from image {}",
                docker_image()?
            )),
        "{out}"
    );
    let new_id = inspect(&container, "{{.Id}}")?;
    ensure!(new_id != old_id, "the container was not replaced");
    // Same options, same volume.
    ensure!(inspect(&container, "{{.HostConfig.NanoCpus}}")? == "1000000000");
    ensure!(inspect(&container, "{{.HostConfig.Memory}}")? == (256u64 << 20).to_string());
    ensure!(inspect(&container, "{{json .Config.Env}}")?.contains("\"K=v=1\""));
    ensure!(inspect(&container, "{{(index .Mounts 0).Name}}")? == container);
    let v = h.session_json(&id)?;
    ensure!(
        v["state"] == "running" && v["labels"]["docker.container-id"] == new_id,
        "{v}"
    );
    ensure!(
        endpoint(&h, &id)?.map(|e| e.port()) == Some(published_port(&container)?),
        "{v}"
    );

    // The same path, without a remount.
    let seen = wait_readable(
        "the recreated session to serve the data",
        &file,
        Duration::from_secs(10),
    )
    .with_context(|| h.bridge_log())?;
    ensure!(seen == b"in the volume\n", "{seen:?}");
    fs::write(h.path(&id, "after.txt"), b"after recreate")?;
    ensure!(fs::read(h.path(&id, "after.txt"))? == b"after recreate");

    // Local sessions cannot be recreated.
    let local = h.unique_id("loc");
    h.create_session(&local)?;
    let out = h.run(&["session", "recreate", &local])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("applies to docker sessions only"),
        "{err}"
    );
    h.unmount()?;
    Ok(())
}
