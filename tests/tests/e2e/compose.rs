//! `deploy/docker-compose.yml` end to end, against the real Docker engine (never skipped).
//!
//! Docker compose itself is usually not installed here (Debian's docker.io has no compose plugin),
//! so the test checks the compose file's services (labels, command, mounts, port, health check) and
//! starts the equivalent container of one service with the docker CLI, outside sessionfs, after
//! `sessionfs session certs`: the running mount adopts it within 5 s and serves its files, and it
//! leaves the mount root after `docker rm -f`. Containers of unknown sessions and of other
//! installations are not adopted. When `docker-compose` is installed, `docker-compose config` must
//! accept the file too. Every container and volume the test makes carries a label unique to the
//! run and is removed by it, even after a failure.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use sessionfs_tests::{docker, docker_image, wait_until, Harness};

/// The label every Docker object of this test run carries.
const RUN_LABEL: &str = "sessionfs-test.compose";

/// Removes every container and volume carrying a label (by default [`RUN_LABEL`]`=<tag>`)
/// when dropped.
struct Cleanup {
    tag: String,
    label: String,
}

impl Cleanup {
    fn new() -> Cleanup {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tag = format!("{}-{nanos}", std::process::id());
        Cleanup {
            label: format!("{RUN_LABEL}={tag}"),
            tag,
        }
    }

    fn label(&self) -> String {
        self.label.clone()
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label={}", self.label());
        for (list, remove) in [
            (vec!["ps", "-aq", "--filter", &filter], vec!["rm", "-f"]),
            (
                vec!["volume", "ls", "-q", "--filter", &filter],
                vec!["volume", "rm", "-f"],
            ),
        ] {
            match docker(&list) {
                Ok(out) => {
                    let names: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
                    if !names.is_empty() {
                        let mut args = remove.clone();
                        args.extend(names);
                        if let Err(e) = docker(&args) {
                            eprintln!("cleaning up {filter}: {e:#}");
                        }
                    }
                }
                Err(e) => eprintln!("listing {filter}: {e:#}"),
            }
        }
    }
}

/// One service of the compose file, as far as the test needs it.
#[derive(Debug, Default, Clone)]
struct Service {
    image: String,
    labels: BTreeMap<String, String>,
    command: Vec<String>,
    volumes: Vec<String>,
    ports: Vec<String>,
    health: Vec<String>,
}

fn compose_file() -> PathBuf {
    sessionfs_tests::tests_dir().join("../deploy/docker-compose.yml")
}

fn unquote(s: &str) -> String {
    s.trim().trim_matches('"').to_owned()
}

/// A minimal reader of the compose file's `services:` (the layout the file uses: two-space
/// indentation, flow sequences of quoted strings for `command` and `test`, which are JSON).
fn parse_services(text: &str) -> Result<BTreeMap<String, Service>> {
    let mut services = BTreeMap::new();
    let mut in_services = false;
    let mut current: Option<String> = None;
    let mut key = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if indent == 0 {
            in_services = trimmed == "services:";
            current = None;
            continue;
        }
        if !in_services {
            continue;
        }
        if indent == 2 {
            let name = trimmed
                .strip_suffix(':')
                .context("service line")?
                .to_owned();
            services.insert(name.clone(), Service::default());
            current = Some(name);
            continue;
        }
        let service = services
            .get_mut(current.as_deref().context("no service")?)
            .context("service")?;
        if indent == 4 {
            let (k, v) = trimmed.split_once(':').context("key: value")?;
            key = k.to_owned();
            let v = v.trim();
            match k {
                "image" => service.image = v.to_owned(),
                "command" => service.command = serde_json::from_str(v)?,
                _ => {}
            }
        } else if let Some(item) = trimmed.strip_prefix("- ") {
            match key.as_str() {
                "volumes" => service.volumes.push(unquote(item)),
                "ports" => service.ports.push(unquote(item)),
                _ => {}
            }
        } else if let Some((k, v)) = trimmed.split_once(": ") {
            match (key.as_str(), k) {
                ("labels", _) => {
                    service.labels.insert(k.to_owned(), unquote(v));
                }
                ("healthcheck", "test") => service.health = serde_json::from_str(v)?,
                _ => {}
            }
        }
    }
    Ok(services)
}

/// `--session-id ID … --listen 0.0.0.0:7878` as the daemon is started in the compose file.
fn daemon_command(id: &str) -> Vec<String> {
    [
        "--session-id",
        id,
        "--cert-dir",
        "/run/sessionfs",
        "--root",
        "/workspace",
        "--listen",
        "0.0.0.0:7878",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn health_command(id: &str) -> Vec<String> {
    [
        "CMD",
        "/sessionfsd",
        "--health",
        "--session-id",
        id,
        "--cert-dir",
        "/run/sessionfs",
        "--listen",
        "0.0.0.0:7878",
    ]
    .map(str::to_owned)
    .to_vec()
}

#[test]
fn the_compose_file_describes_adoptable_sessions() -> Result<()> {
    let text = fs::read_to_string(compose_file())?;
    let services = parse_services(&text)?;
    ensure!(
        (2..=3).contains(&services.len()),
        "services: {:?}",
        services.keys()
    );
    for (id, s) in &services {
        ensure!(s.image == "sessionfs-session:latest", "{id}: {s:?}");
        ensure!(
            s.labels
                == BTreeMap::from([
                    ("sessionfs.session".to_owned(), id.clone()),
                    ("sessionfs.adopt".to_owned(), "1".to_owned()),
                ]),
            "{id}: {s:?}"
        );
        ensure!(s.command == daemon_command(id), "{id}: {s:?}");
        ensure!(s.health == health_command(id), "{id}: {s:?}");
        ensure!(s.ports == ["127.0.0.1::7878/udp"], "{id}: {s:?}");
        ensure!(
            s.volumes
                .contains(&format!("./certs/{id}:/run/sessionfs:ro")),
            "{id}: {s:?}"
        );
        ensure!(
            s.volumes
                .iter()
                .any(|v| v.ends_with(":/workspace") && !v.starts_with('.')),
            "{id}: a named volume at /workspace: {s:?}"
        );
        ensure!(
            text.contains(&format!(
                "sessionfs session certs {id} --out deploy/certs/{id}"
            )),
            "the file documents generating the certificates of {id}"
        );
    }
    // The real thing, when it is installed.
    if let Ok(status) = Command::new("docker-compose")
        .arg("-f")
        .arg(compose_file())
        .args(["config", "-q"])
        .stdin(Stdio::null())
        .status()
    {
        ensure!(status.success(), "docker-compose config rejects the file");
    }
    Ok(())
}

/// `docker run -d` of compose service `service` for session `id`, as compose would start it
/// (the exec-form health check cannot be given to `docker run`; it is run with `docker exec`
/// instead). Extra labels go on the container too.
fn run_like_compose(
    service: &Service,
    template_id: &str,
    id: &str,
    image: &str,
    certs: &Path,
    cleanup: &Cleanup,
    extra_labels: &[String],
) -> Result<String> {
    run_named(
        &format!("sfs-compose-{id}"),
        service,
        template_id,
        id,
        image,
        certs,
        cleanup,
        extra_labels,
    )
}

/// [`run_like_compose`] with the container named `name`.
#[allow(clippy::too_many_arguments)]
fn run_named(
    name: &str,
    service: &Service,
    template_id: &str,
    id: &str,
    image: &str,
    certs: &Path,
    cleanup: &Cleanup,
    extra_labels: &[String],
) -> Result<String> {
    let name = name.to_owned();
    let volume = format!("sfs-compose-{id}");
    docker(&["volume", "create", "--label", &cleanup.label(), &volume])?;
    let mut args: Vec<String> = ["run", "-d", "--name", &name, "--label", &cleanup.label()]
        .map(str::to_owned)
        .to_vec();
    for (k, v) in &service.labels {
        let v = if v == template_id { id } else { v.as_str() };
        args.extend(["--label".to_owned(), format!("{k}={v}")]);
    }
    for l in extra_labels {
        args.extend(["--label".to_owned(), l.clone()]);
    }
    for v in &service.volumes {
        let mount = if let Some(rest) = v.strip_prefix(&format!("./certs/{template_id}:")) {
            format!("{}:{rest}", certs.display())
        } else if let Some((_, target)) = v.split_once(':') {
            format!("{volume}:{target}")
        } else {
            bail!("volume {v}");
        };
        args.extend(["-v".to_owned(), mount]);
    }
    for p in &service.ports {
        args.extend(["-p".to_owned(), p.clone()]);
    }
    args.push(image.to_owned());
    args.extend(service.command.iter().map(|a| {
        if a == template_id {
            id.to_owned()
        } else {
            a.clone()
        }
    }));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docker(&args)?;
    Ok(name)
}

#[test]
fn a_compose_started_container_is_adopted_and_leaves_after_docker_rm() -> Result<()> {
    let mut h = Harness::new()?;
    h.uses_docker();
    let cleanup = Cleanup::new();
    let image = docker_image()?;
    let services = parse_services(&fs::read_to_string(compose_file())?)?;
    let (template_id, service) = services.iter().next().context("no service")?;

    // Certificates for three sessions: one adopted, one of another installation's home, one
    // whose certificates another installation issued.
    let id = h.unique_id("cmp");
    let foreign_home = h.unique_id("cmph");
    let unknown = h.unique_id("cmpu");
    let certs = h.dir.path().join("certs");
    let out = h.ok(&[
        "session",
        "certs",
        &id,
        "--out",
        certs.join(&id).to_str().context("utf-8")?,
    ])?;
    ensure!(
        out.starts_with(&format!("issued certificates of session {id} in ")),
        "{out}"
    );
    for (file, mode) in sessionfs_pki::SESSION_CERT_DIR {
        let meta = fs::metadata(certs.join(&id).join(file))?;
        ensure!(meta.permissions().mode() & 0o777 == mode, "{file}");
    }
    // Not registered by `session certs` alone.
    let listed = h.ok(&["session", "ls", "--json"])?;
    ensure!(!listed.contains(&id), "{listed}");
    h.ok(&[
        "session",
        "certs",
        &foreign_home,
        "--out",
        certs.join(&foreign_home).to_str().context("utf-8")?,
    ])?;
    let other_home = h.dir.path().join("other-home");
    let out = h
        .cli()
        .env("SESSIONFS_HOME", &other_home)
        .args(["session", "certs", &unknown, "--out"])
        .arg(certs.join(&unknown))
        .stdin(Stdio::null())
        .output()?;
    ensure!(out.status.success(), "{out:?}");
    // A local session's id is refused.
    let local = h.unique_id("cmpl");
    h.create_session(&local)?;
    let refused = h.run(&["session", "certs", &local, "--out", "/nonexistent/x"])?;
    ensure!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("local backend"),
        "{refused:?}"
    );

    h.mount()?;
    let run = |sid: &str, extra: &[String]| {
        run_like_compose(
            service,
            template_id,
            sid,
            image,
            &certs.join(sid),
            &cleanup,
            extra,
        )
    };
    run(
        &foreign_home,
        &[format!("sessionfs.home={}", other_home.display())],
    )?;
    run(&unknown, &[])?;
    let container = run(&id, &[])?;

    wait_until(
        "the compose container's session to appear under the mount root",
        Duration::from_secs(5),
        || h.root_names().contains(&id),
    )
    .with_context(|| h.bridge_log())?;
    let file = h.path(&id, "hello.txt");
    fs::write(&file, b"from the host\n")?;
    ensure!(fs::read(&file)? == b"from the host\n");
    fs::create_dir(h.path(&id, "dir"))?;
    ensure!(fs::read_dir(h.path(&id, ""))?.count() == 2);

    let v = h.session_json(&id)?;
    ensure!(v["backend"] == "docker" && v["state"] == "running", "{v}");
    ensure!(v["container"] == container.as_str(), "{v}");
    ensure!(v["labels"]["docker.adopted"] == "1", "{v}");
    ensure!(v["labels"]["docker.container"] == container.as_str(), "{v}");
    ensure!(
        v["endpoint"]
            .as_str()
            .is_some_and(|e| e.starts_with("127.0.0.1:")),
        "{v}"
    );
    // The compose file's health check works against the bind-mounted certificates.
    let health = health_command(&id);
    let mut args = vec!["exec", container.as_str()];
    args.extend(health[1..].iter().map(String::as_str));
    docker(&args).context("the compose health check")?;

    // Neither the other installation's container nor the one without our certificates.
    let all = h.ok(&["session", "ls", "--json"])?;
    ensure!(
        !all.contains(&foreign_home) && !all.contains(&unknown),
        "{all}"
    );
    ensure!(
        !h.root_names().contains(&unknown) && !h.root_names().contains(&foreign_home),
        "{:?}",
        h.root_names()
    );
    let log = h.bridge_log();
    ensure!(
        log.contains("issued no certificates") && log.contains(&unknown),
        "{log}"
    );

    docker(&["rm", "-f", &container])?;
    wait_until(
        "the removed container's session to leave the mount root",
        Duration::from_secs(5),
        || !h.root_names().contains(&id),
    )
    .with_context(|| h.bridge_log())?;
    let v = h.session_json(&id)?;
    ensure!(v["state"] == "gone" && v["endpoint"].is_null(), "{v}");
    h.unmount()?;
    Ok(())
}

/// Hardening finding 11, adoption squatting: an adoptable container labelled with a session's id was
/// adopted without proving anything, and held the id even after it was gone. Now a container whose
/// daemon holds another installation's certificate of the id, or that publishes the daemon's port
/// beyond loopback, is refused with a warning; the rightful one is adopted; and when an adopted
/// container is removed, the next one of its id is adopted in its place.
#[test]
fn squatting_containers_are_refused_and_cannot_hold_the_id() -> Result<()> {
    let mut h = Harness::new()?;
    h.uses_docker();
    let cleanup = Cleanup::new();
    let image = docker_image()?;
    let services = parse_services(&fs::read_to_string(compose_file())?)?;
    let (template_id, service) = services.iter().next().context("no service")?;
    let id = h.unique_id("squat");
    let ours = h.dir.path().join("ours");
    let theirs = h.dir.path().join("theirs");
    h.ok(&[
        "session",
        "certs",
        &id,
        "--out",
        ours.to_str().context("utf-8")?,
    ])?;
    let out = h
        .cli()
        .env("SESSIONFS_HOME", h.dir.path().join("other-home"))
        .args(["session", "certs", &id, "--out"])
        .arg(&theirs)
        .stdin(Stdio::null())
        .output()?;
    ensure!(out.status.success(), "{out:?}");
    h.mount()?;
    let run = |service: &Service, certs: &Path| {
        run_like_compose(service, template_id, &id, image, certs, &cleanup, &[])
    };
    let running_in = |container: &str| {
        h.session_json(&id)
            .is_ok_and(|v| v["state"] == "running" && v["container"] == container)
    };
    let refused = |what: &str, needle: &str| {
        wait_until(what, Duration::from_secs(15), || {
            h.bridge_log().contains(needle)
        })
        .with_context(|| h.bridge_log())
    };

    // Another installation's certificate of the id: its daemon cannot answer as our session.
    let squatter = run(service, &theirs)?;
    refused(
        "the squatter to be refused",
        "does not answer as the session",
    )?;
    ensure!(!h.root_names().contains(&id), "{:?}", h.root_names());
    docker(&["rm", "-f", &squatter])?;

    // Our certificate, but the daemon's port published on every address.
    let mut wide = service.clone();
    wide.ports = vec!["7878/udp".to_owned()];
    let exposed = run(&wide, &ours)?;
    refused("the exposed container to be refused", "beyond loopback")?;
    ensure!(!h.root_names().contains(&id), "{:?}", h.root_names());
    docker(&["rm", "-f", &exposed])?;

    // The rightful container is adopted; once removed, its successor (another container, under
    // another name: one of the same name is followed by name anyway) is adopted in its place.
    for round in 0..2 {
        let name = format!("sfs-squat-{round}-{id}");
        let container = run_named(
            &name,
            service,
            template_id,
            &id,
            image,
            &ours,
            &cleanup,
            &[],
        )?;
        wait_until(
            "the rightful container to be adopted",
            Duration::from_secs(15),
            // Running in the registry, and seen by the mount since (it left the root when gone).
            || running_in(&container) && h.root_names().contains(&id),
        )
        .with_context(|| format!("round {round}: {}", h.bridge_log()))?;
        fs::write(h.path(&id, "f"), format!("round {round}"))
            .with_context(|| format!("round {round}: {}", h.bridge_log()))?;
        ensure!(fs::read_to_string(h.path(&id, "f"))? == format!("round {round}"));
        docker(&["rm", "-f", &container])?;
        wait_until(
            "the removed container to leave",
            Duration::from_secs(15),
            || !h.root_names().contains(&id),
        )
        .with_context(|| h.bridge_log())?;
    }
    h.unmount()?;
    Ok(())
}

/// The compose file itself under `docker-compose` (installed by scripts/install-deps.sh): its
/// services, with unique session ids and the test image, come up, are adopted and serve files; one
/// removed with `docker rm -f` leaves the mount root.
#[test]
fn docker_compose_up_starts_sessions_the_mount_adopts() -> Result<()> {
    let mut h = Harness::new()?;
    h.uses_docker();
    let image = docker_image()?;
    let run = Cleanup::new();
    let project = format!("sfscompose{}", run.tag.replace('-', ""));
    let cleanup = Cleanup {
        tag: run.tag.clone(),
        label: format!("com.docker.compose.project={project}"),
    };
    let mut text = fs::read_to_string(compose_file())?.replace("sessionfs-session:latest", image);
    let services: Vec<String> = parse_services(&text)?.into_keys().collect();
    let mut ids = Vec::new();
    for name in &services {
        let id = h.unique_id(&format!("dc{}", &name[..1]));
        text = text.replace(name.as_str(), &id);
        ids.push(id);
    }
    let dir = h.dir.path().join("compose");
    fs::create_dir(&dir)?;
    fs::write(dir.join("docker-compose.yml"), &text)?;
    for id in &ids {
        let out = dir.join("certs").join(id);
        h.ok(&[
            "session",
            "certs",
            id,
            "--out",
            out.to_str().context("utf-8")?,
        ])?;
    }
    h.mount()?;
    let compose = |args: &[&str]| -> Result<()> {
        let out = Command::new("docker-compose")
            .args(["-p", &project, "-f"])
            .arg(dir.join("docker-compose.yml"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("cannot run docker-compose (scripts/install-deps.sh installs it)")?;
        ensure!(
            out.status.success(),
            "docker-compose {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let result = (|| -> Result<()> {
        compose(&["up", "-d"])?;
        wait_until(
            "every compose service to appear under the mount root",
            Duration::from_secs(5),
            || ids.iter().all(|id| h.root_names().contains(id)),
        )
        .with_context(|| h.bridge_log())?;
        for id in &ids {
            let file = h.path(id, "note.txt");
            fs::write(&file, id.as_bytes())?;
            ensure!(fs::read(&file)? == id.as_bytes());
            let v = h.session_json(id)?;
            ensure!(
                v["backend"] == "docker" && v["labels"]["docker.adopted"] == "1",
                "{v}"
            );
        }
        let gone = &ids[0];
        let container = h.session_json(gone)?["container"]
            .as_str()
            .context("no container")?
            .to_owned();
        docker(&["rm", "-f", &container])?;
        wait_until(
            "the removed service's session to leave the mount root",
            Duration::from_secs(5),
            || !h.root_names().contains(gone),
        )
        .with_context(|| h.bridge_log())?;
        ensure!(ids[1..].iter().all(|id| h.root_names().contains(id)));
        Ok(())
    })();
    let down = compose(&["down", "-v"]);
    drop(cleanup);
    result?;
    down?;
    h.unmount()?;
    Ok(())
}
