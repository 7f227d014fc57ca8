//! Kubernetes sessions end to end, without a cluster (none can run here): the real `sessionfs`
//! CLI and mount talk with the real `kube` client, through a kubeconfig, to a stateful fake API
//! server (`sessionfs_tests::kube::Api`: real HTTP, resource versions, conflicts, watches), and a
//! test node (`sessionfs_tests::kube::Node`) runs the pods it holds as real Docker containers of
//! the session image, with the pod's volumes, probes and status. The daemons, QUIC+TLS and the
//! FUSE mount are real. What is simulated is listed in docs/deployment-kubernetes.md.

#![forbid(unsafe_code)]

use std::fs;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use sessionfs_tests::kube::{request, write_kubeconfig, Api, Node, Served};
use sessionfs_tests::{assert_same, docker, docker_image, scenario, wait_until, Harness};

const NS: &str = "agents";

/// A fake API server and a node running its pods, and a harness whose kubeconfig points at it.
struct Cluster {
    h: Harness,
    node: Node,
    served: Served,
}

impl Cluster {
    fn new() -> Result<Cluster> {
        let served = Api::serve()?;
        let node = Node::start(&served.api, "node-1")?;
        let mut h = Harness::new()?;
        let kubeconfig = h.dir.path().join("kubeconfig");
        write_kubeconfig(&kubeconfig, served.addr, NS)?;
        h.env.push((
            "KUBECONFIG".into(),
            kubeconfig.to_str().context("utf-8")?.to_owned(),
        ));
        // The kubeconfig is the only cluster: no in-cluster configuration leaks in.
        h.env
            .push(("KUBERNETES_SERVICE_HOST".into(), String::new()));
        Ok(Cluster { h, node, served })
    }

    fn api(&self) -> &Api {
        &self.served.api
    }

    fn object(&self, resource: &str, name: &str) -> Option<Value> {
        self.api().get(&(resource.into(), NS.into(), name.into()))
    }

    /// `session create ID --backend kubernetes --image <test image> extra…`.
    fn create(&self, id: &str, extra: &[&str]) -> Result<String> {
        let image = docker_image()?;
        let mut args = vec![
            "session",
            "create",
            id,
            "--backend",
            "kubernetes",
            "--image",
            image,
        ];
        args.extend_from_slice(extra);
        self.h.ok(&args).with_context(|| self.node.problems())
    }

    /// The pod's IP as the API server reports it.
    fn pod_ip(&self, id: &str) -> Option<String> {
        self.object("pods", &format!("sessionfs-{id}"))?["status"]["podIP"]
            .as_str()
            .map(str::to_owned)
    }
}

/// A kubernetes session, a docker one and a local one under one mount pass the differential
/// scenario; the objects sent to the API server are labelled and wired as documented; a file
/// written through the mount is in the claim's volume on the node.
#[test]
fn pods_docker_and_local_sessions_agree_under_one_mount() -> Result<()> {
    let mut c = Cluster::new()?;
    let k = c.h.unique_id("kpod");
    let out = c.create(&k, &["--cpus", "0.5", "--memory", "256m", "--size", "2Gi"])?;
    ensure!(out.contains(&format!("claim {NS}/sessionfs-{k}")), "{out}");
    let d = c.h.unique_id("kdock");
    c.h.create_docker_session(&d, &[])?;
    let l = c.h.unique_id("kloc");
    c.h.create_session(&l)?;

    let name = format!("sessionfs-{k}");
    let pod = c.object("pods", &name).context("no pod")?;
    let secret = c.object("secrets", &name).context("no secret")?;
    let claim = c
        .object("persistentvolumeclaims", &name)
        .context("no claim")?;
    for object in [&pod, &secret, &claim] {
        ensure!(
            object["metadata"]["labels"]["sessionfs.io/session"] == k.as_str(),
            "{object}"
        );
        ensure!(
            object["metadata"]["labels"]["sessionfs.io/installation"].is_string(),
            "{object}"
        );
    }
    let keys: Vec<&String> = secret["data"]
        .as_object()
        .context("no data")?
        .keys()
        .collect();
    ensure!(keys == ["ca.pem", "session.key", "session.pem"], "{keys:?}");
    ensure!(
        claim["spec"]["resources"]["requests"]["storage"] == "2Gi",
        "{claim}"
    );
    let container = &pod["spec"]["containers"][0];
    ensure!(
        container["resources"]["limits"]["cpu"] == "500m",
        "{container}"
    );
    ensure!(
        container["readinessProbe"]["exec"]["command"][1] == "--health",
        "{container}"
    );
    ensure!(
        pod["spec"]["volumes"][0]["secret"]["defaultMode"] == 0o400,
        "{pod}"
    );
    let listed = c.h.session_json(&k)?;
    let ip = c.pod_ip(&k).context("no pod IP")?;
    ensure!(
        listed["backend"] == "kubernetes"
            && listed["state"] == "running"
            && listed["endpoint"] == format!("{ip}:7878"),
        "{listed}"
    );

    c.h.mount_args = vec!["--map-owner".into()];
    c.h.mount()?;
    let plain = c.h.dir.path().join("plain");
    fs::create_dir(&plain)?;
    let expected = scenario(&plain);
    for id in [&k, &d, &l] {
        let seen = scenario(&c.h.path(id, ""));
        assert_same(&expected, &seen, &format!("session {id}"));
    }
    // The bytes are on the claim's volume, in the pod's container.
    fs::write(c.h.path(&k, "on-the-claim"), b"persisted")?;
    let pod_container = c
        .node
        .container(NS, &name)
        .context("the node runs no container")?;
    let copied = docker(&[
        "cp",
        &format!("{pod_container}:/workspace/on-the-claim"),
        "-",
    ])?;
    ensure!(copied.contains("persisted"), "{copied}");
    c.h.unmount()?;
    Ok(())
}

/// The pod made again with a new IP (a node restart): the mount follows it without a remount or
/// `session start`, and the workspace is the claim's. A pod deleted outside sessionfs: the session
/// is `gone` and leaves the mount root; `session start` makes it again on the same claim.
#[test]
fn a_rescheduled_pod_is_followed_and_a_deleted_one_is_gone() -> Result<()> {
    let mut c = Cluster::new()?;
    let k = c.h.unique_id("kmove");
    let other = c.h.unique_id("kstay");
    c.create(&k, &[])?;
    c.create(&other, &[])?;
    c.h.mount()?;
    fs::write(c.h.path(&k, "before"), b"1")?;
    let old_ip = c.pod_ip(&k).context("no pod IP")?;

    c.node.reschedule(NS, &format!("sessionfs-{k}"));
    let moved = wait_until("a new pod IP", Duration::from_secs(20), || {
        c.pod_ip(&k).is_some_and(|ip| ip != old_ip)
    })?;
    let new_ip = c.pod_ip(&k).context("no pod IP")?;
    eprintln!("the pod moved from {old_ip} to {new_ip} in {moved:?}");
    let back = wait_until(
        "the mount to reach the moved pod",
        Duration::from_secs(30),
        || fs::write(c.h.path(&k, "after"), b"2").is_ok(),
    )
    .with_context(|| c.h.bridge_log())?;
    eprintln!("the mount wrote to the moved pod {back:?} after its IP changed");
    ensure!(fs::read(c.h.path(&k, "before"))? == b"1");
    let listed = c.h.session_json(&k)?;
    ensure!(listed["endpoint"] == format!("{new_ip}:7878"), "{listed}");

    let (code, body) = request(
        c.served.addr,
        "DELETE",
        &format!("/api/v1/namespaces/{NS}/pods/sessionfs-{k}"),
        None,
    )?;
    ensure!(code == 200, "{code} {body}");
    wait_until(
        "the deleted pod's session to leave the mount root",
        Duration::from_secs(20),
        || !c.h.root_names().contains(&k),
    )
    .with_context(|| c.h.bridge_log())?;
    ensure!(c.h.session_json(&k)?["state"] == "gone");
    ensure!(c.h.root_names().contains(&other));
    fs::write(c.h.path(&other, "f"), b"untouched")?;

    let out = c.h.ok(&["session", "start", &k])?;
    ensure!(out.contains("started session"), "{out}");
    wait_until("the session to come back", Duration::from_secs(20), || {
        c.h.root_names().contains(&k)
    })?;
    ensure!(
        fs::read(c.h.path(&k, "after"))? == b"2",
        "the claim's data is not back"
    );
    c.h.unmount()?;
    Ok(())
}

/// `stop` deletes the pod and keeps Secret and claim; `start` brings the data back; `rm` deletes
/// pod and Secret and keeps the claim, which a session made again under the id takes up;
/// `rm --purge` deletes the claim too. A pod of the same name that is not the session's is
/// refused at create, which leaves nothing behind.
#[test]
fn stop_start_and_rm_keep_the_claim_unless_purged() -> Result<()> {
    let mut c = Cluster::new()?;
    let k = c.h.unique_id("klife");
    let name = format!("sessionfs-{k}");
    c.create(&k, &[])?;
    c.h.mount()?;
    fs::write(c.h.path(&k, "kept"), b"across stop")?;

    let out = c.h.ok(&["session", "stop", &k])?;
    ensure!(out.contains("stopped"), "{out}");
    ensure!(c.object("pods", &name).is_none(), "the pod is still there");
    ensure!(
        c.object("secrets", &name).is_some() && c.object("persistentvolumeclaims", &name).is_some()
    );
    ensure!(c.h.session_json(&k)?["state"] == "stopped");
    ensure!(
        fs::read(c.h.path(&k, "kept")).is_err(),
        "a stopped session answered"
    );

    c.h.ok(&["session", "start", &k])?;
    let back = wait_until(
        "the started session's data",
        Duration::from_secs(20),
        || fs::read(c.h.path(&k, "kept")).is_ok_and(|b| b == b"across stop"),
    )?;
    eprintln!("data readable {back:?} after start");

    let out = c.h.ok(&["session", "rm", &k])?;
    ensure!(
        out.contains(&format!("removed pod {NS}/{name}"))
            && out.contains(&format!("kept claim {NS}/{name}")),
        "{out}"
    );
    ensure!(c.object("pods", &name).is_none() && c.object("secrets", &name).is_none());
    ensure!(c.object("persistentvolumeclaims", &name).is_some());

    c.create(&k, &[])?;
    wait_until("the session made again", Duration::from_secs(20), || {
        fs::read(c.h.path(&k, "kept")).is_ok_and(|b| b == b"across stop")
    })
    .context("the kept claim was not taken up")?;
    let out = c.h.ok(&["session", "rm", &k, "--purge"])?;
    ensure!(out.contains(&format!("deleted claim {NS}/{name}")), "{out}");
    ensure!(c.object("persistentvolumeclaims", &name).is_none());

    // A pod of that name that is someone else's.
    let squatter = c.h.unique_id("ksquat");
    let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("sessionfs-{squatter}"), "labels": {"app": "other"}},
        "spec": {"nodeName": "elsewhere", "containers": [{"name": "c", "image": "x"}]}});
    let (code, body) = request(
        c.served.addr,
        "POST",
        &format!("/api/v1/namespaces/{NS}/pods"),
        Some(&pod),
    )?;
    ensure!(code == 201, "{code} {body}");
    let image = docker_image()?;
    let out = c.h.run(&[
        "session",
        "create",
        &squatter,
        "--backend",
        "kubernetes",
        "--image",
        image,
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("already exists and is not session"),
        "{out:?}"
    );
    ensure!(c
        .object("secrets", &format!("sessionfs-{squatter}"))
        .is_none());
    ensure!(c
        .object("persistentvolumeclaims", &format!("sessionfs-{squatter}"))
        .is_none());
    ensure!(c.h.session_json(&squatter).is_err(), "a record was left");
    c.h.unmount()?;
    Ok(())
}

/// `kubernetes-validate` from the tools' virtualenv (scripts/install-deps.sh installs it).
fn validator() -> Result<std::path::PathBuf> {
    let tools = match std::env::var_os("SESSIONFS_TOOLS") {
        Some(t) => std::path::PathBuf::from(t),
        None => std::path::PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
            .join(".cache/sessionfs-tools"),
    };
    let path = tools.join("venv/bin/kubernetes-validate");
    ensure!(
        path.is_file(),
        "{} is missing: run scripts/install-deps.sh",
        path.display()
    );
    Ok(path)
}

/// Runs the validator (strict: unknown fields are errors) on `files`; its output, or why it failed.
fn validate(files: &[std::path::PathBuf]) -> Result<std::result::Result<String, String>> {
    let out = std::process::Command::new(validator()?)
        .arg("--strict")
        .args(files)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    })
}

/// The shipped manifests, `sessionfs k8s manifests` for another namespace and image, and every
/// object sessionfs sent for a session with every option (as the API server holds them) pass the
/// official schemas offline, strictly; a pod with an unknown field does not (the check can fail).
/// Sessions reached at a port of their node (`--reach host-port:PORT`) and through a NodePort
/// Service (`--reach node-port`) are mounted there; the node port survives stop and start, and
/// `rm` deletes the Service.
#[test]
fn manifests_and_the_objects_sent_validate_against_the_schemas() -> Result<()> {
    let mut c = Cluster::new()?;
    let k = c.h.unique_id("kval");
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let reach = format!("host-port:{port}");
    c.create(
        &k,
        &[
            "--reach",
            &reach,
            "--storage-class",
            "fast",
            "--node-selector",
            "disk=ssd",
            "--cpus",
            "1",
            "--memory",
            "1g",
            "--owner",
            "1000:1000",
            "--label",
            "team=a",
        ],
    )?;
    let listed = c.h.session_json(&k)?;
    ensure!(
        listed["endpoint"] == format!("127.0.0.1:{port}"),
        "{listed}"
    );
    // And one behind a NodePort Service, its port allocated by the API server.
    let n = c.h.unique_id("knp");
    c.create(&n, &["--reach", "node-port"])?;
    let service = c
        .object("services", &format!("sessionfs-{n}"))
        .context("no service")?;
    let node_port = service["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .context("no node port")?;
    ensure!(
        service["spec"]["ports"][0]["protocol"] == "UDP",
        "{service}"
    );
    let listed = c.h.session_json(&n)?;
    ensure!(
        listed["endpoint"] == format!("127.0.0.1:{node_port}"),
        "{listed}"
    );
    c.h.mount()?;
    for (id, what) in [(&k, "through-the-host-port"), (&n, "through-the-node-port")] {
        fs::write(c.h.path(id, what), b"ok")?;
        ensure!(fs::read(c.h.path(id, what))? == b"ok");
    }
    c.h.unmount()?;
    // The node port stays the session's across stop and start.
    c.h.ok(&["session", "stop", &n])?;
    c.h.ok(&["session", "start", &n])?;
    ensure!(c.h.session_json(&n)?["endpoint"] == format!("127.0.0.1:{node_port}"));

    let dir = c.h.dir.path().join("objects");
    fs::create_dir(&dir)?;
    let mut files = Vec::new();
    for (resource, id) in [
        ("pods", &k),
        ("secrets", &k),
        ("persistentvolumeclaims", &k),
        ("services", &n),
    ] {
        let object = c
            .object(resource, &format!("sessionfs-{id}"))
            .context(resource)?;
        let path = dir.join(format!("{resource}.json"));
        fs::write(&path, object.to_string())?;
        files.push(path);
    }
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubernetes/sessionfs.yaml");
    files.push(shipped);
    let printed = c.h.ok(&[
        "k8s",
        "manifests",
        "--namespace",
        "team-a",
        "--image",
        "registry.example/sessionfs:1",
    ])?;
    ensure!(
        printed.contains("namespace: team-a")
            && printed.contains("image: registry.example/sessionfs:1")
    );
    let printed_path = dir.join("printed.yaml");
    fs::write(&printed_path, printed)?;
    files.push(printed_path);
    let report = validate(&files)?.map_err(|e| anyhow::anyhow!("schema validation failed: {e}"))?;
    ensure!(report.matches("passed").count() >= 4 + 2 * 6, "{report}");

    let mut bad = c.object("pods", &format!("sessionfs-{k}")).context("pod")?;
    bad["spec"]["containers"][0]["bogus"] = serde_json::json!(1);
    let bad_path = dir.join("bad.json");
    fs::write(&bad_path, bad.to_string())?;
    let refused = validate(&[bad_path])?;
    ensure!(
        matches!(&refused, Err(e) if e.contains("bogus")),
        "an unknown field passed: {refused:?}"
    );
    c.h.ok(&["session", "rm", &n])?;
    ensure!(
        c.object("services", &format!("sessionfs-{n}")).is_none(),
        "rm left the service"
    );
    Ok(())
}

/// A tree with what a migration must keep: nested directories, an executable, a 3 MiB file, an
/// empty file, a symlink.
fn fill(ws: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(ws.join("src/deep/er"))?;
    fs::write(ws.join("src/main.rs"), b"fn main() {}\n")?;
    fs::write(ws.join("run.sh"), b"#!/bin/sh\necho hi\n")?;
    fs::set_permissions(ws.join("run.sh"), fs::Permissions::from_mode(0o755))?;
    let big: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(ws.join("src/deep/er/big.bin"), &big)?;
    fs::write(ws.join("empty"), b"")?;
    std::os::unix::fs::symlink("src/main.rs", ws.join("link"))?;
    Ok(())
}

/// What the mount shows of the tree [`fill`] made.
fn check_tree(h: &Harness, id: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    ensure!(fs::read(h.path(id, "src/main.rs"))? == b"fn main() {}\n");
    ensure!(fs::metadata(h.path(id, "run.sh"))?.permissions().mode() & 0o777 == 0o755);
    let big = fs::read(h.path(id, "src/deep/er/big.bin"))?;
    ensure!(
        big.len() == 3 << 20
            && big
                .iter()
                .enumerate()
                .all(|(i, b)| *b == (i as u32 * 7 % 251) as u8)
    );
    ensure!(fs::read(h.path(id, "empty"))?.is_empty());
    ensure!(fs::read_link(h.path(id, "link"))? == std::path::Path::new("src/main.rs"));
    Ok(())
}

/// `session migrate --to kubernetes`, then `--to docker`, then `--to local`: each copied daemon to
/// daemon and verified, followed by the mount at the same path, the source removed and its data
/// kept. A failure injected after the verification leaves the session where it was, serving,
/// and nothing of the target behind.
#[test]
fn a_session_migrates_to_a_pod_and_on_verified() -> Result<()> {
    let mut c = Cluster::new()?;
    let id = c.h.unique_id("kmig");
    let name = format!("sessionfs-{id}");
    let ws = c.h.create_session(&id)?;
    fill(&ws)?;
    c.h.mount_args = vec!["--map-owner".into()];
    c.h.mount()?;
    check_tree(&c.h, &id)?;

    // A failure after the verification: everything of the target goes, the session stays local.
    let mut failing = c.h.cli();
    failing
        .args([
            "session",
            "migrate",
            &id,
            "--to",
            "kubernetes",
            "--image",
            docker_image()?,
        ])
        .env("SESSIONFS_MIGRATE_FAIL_AFTER", "verify");
    let out = failing.output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && stderr.contains("to kubernetes failed at step verify")
            && stderr.contains("still a local session"),
        "{stderr}"
    );
    ensure!(c.object("pods", &name).is_none() && c.object("secrets", &name).is_none());
    ensure!(c.object("persistentvolumeclaims", &name).is_none());
    let listed = c.h.session_json(&id)?;
    ensure!(
        listed["backend"] == "local" && listed["state"] == "running",
        "{listed}"
    );
    check_tree(&c.h, &id)?;

    let out = c.h.ok(&[
        "session",
        "migrate",
        &id,
        "--to",
        "kubernetes",
        "--image",
        docker_image()?,
    ])?;
    ensure!(
        out.contains("from local to kubernetes") && out.contains("paths verified"),
        "{out}"
    );
    let listed = c.h.session_json(&id)?;
    ensure!(
        listed["backend"] == "kubernetes" && listed["state"] == "running",
        "{listed}"
    );
    check_tree(&c.h, &id)?;
    ensure!(
        ws.join("src/main.rs").is_file(),
        "the source directory was not kept"
    );
    fs::write(c.h.path(&id, "in-the-pod"), b"k")?;

    let out = c.h.ok(&[
        "session",
        "migrate",
        &id,
        "--to",
        "docker",
        "--image",
        docker_image()?,
    ])?;
    ensure!(
        out.contains("from kubernetes to docker")
            && out.contains(&format!("kept the source claim {NS}/{name}")),
        "{out}"
    );
    ensure!(c.object("pods", &name).is_none() && c.object("secrets", &name).is_none());
    ensure!(c.object("persistentvolumeclaims", &name).is_some());
    check_tree(&c.h, &id)?;
    ensure!(fs::read(c.h.path(&id, "in-the-pod"))? == b"k");

    let out =
        c.h.ok(&["session", "migrate", &id, "--to", "local", "--purge-source"])?;
    ensure!(
        out.contains("from docker to local") && out.contains("deleted the source volume"),
        "{out}"
    );
    check_tree(&c.h, &id)?;
    ensure!(fs::read(c.h.path(&id, "in-the-pod"))? == b"k");
    c.h.unmount()?;
    Ok(())
}

/// `--attach POD/CONTAINER`: a team's agent already runs in a Deployment's pod, working in /work on
/// a claim. The session's daemon joins the Deployment's pods as a native sidecar serving that
/// volume: what the agent wrote is read through the mount and what the mount writes is in the
/// agent's /work. `stop` is refused (the sidecar runs with its workload); `rm` takes the sidecar
/// out again, and the agent's files stay. A bare pod cannot be attached to.
#[test]
fn a_session_attaches_to_a_deployments_pods_as_a_sidecar() -> Result<()> {
    let mut c = Cluster::new()?;
    let image = docker_image()?;
    let post = |path: &str, body: Value| -> Result<()> {
        let (code, text) = request(c.served.addr, "POST", path, Some(&body))?;
        ensure!(code == 201, "POST {path}: {code} {text}");
        Ok(())
    };
    // The agent's own process: a daemon of another id on /work (the session image has nothing
    // else that keeps running), with certificates of its own.
    let agent_certs = c.h.dir.path().join("agent-certs");
    c.h.ok(&[
        "session",
        "certs",
        "agent-proc",
        "--out",
        agent_certs.to_str().context("utf-8")?,
    ])?;
    let mut strings = serde_json::Map::new();
    for name in ["ca.pem", "session.pem", "session.key"] {
        strings.insert(
            name.into(),
            Value::String(fs::read_to_string(agent_certs.join(name))?),
        );
    }
    post(
        &format!("/api/v1/namespaces/{NS}/secrets"),
        serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "agent-certs"},
        "stringData": strings}),
    )?;
    post(
        &format!("/api/v1/namespaces/{NS}/persistentvolumeclaims"),
        serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "work"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
    )?;
    post(
        &format!("/apis/apps/v1/namespaces/{NS}/deployments"),
        serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "agent"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "agent"}},
          "template": {"metadata": {"labels": {"app": "agent"}},
            "spec": {"containers": [{"name": "agent", "image": image, "command": ["/sessionfsd"],
              "args": ["--session-id", "agent-proc", "--cert-dir", "/run/agent", "--root", "/work",
                       "--listen", "0.0.0.0:7879"],
              "workingDir": "/work",
              "volumeMounts": [{"name": "work", "mountPath": "/work"},
                               {"name": "certs", "mountPath": "/run/agent", "readOnly": true}]}],
              "volumes": [{"name": "work", "persistentVolumeClaim": {"claimName": "work"}},
                          {"name": "certs", "secret": {"secretName": "agent-certs", "defaultMode": 0o400}}]}}}}),
    )?;
    let agent_pod = |api: &Api| -> Option<(String, Value)> {
        api.list("pods", NS)
            .into_iter()
            .filter(|p| {
                p["metadata"]["labels"]["app"] == "agent"
                    && p["metadata"]["deletionTimestamp"].is_null()
            })
            .find(|p| p["status"]["phase"] == "Running")
            .map(|p| (p["metadata"]["name"].as_str().unwrap_or("").to_owned(), p))
    };
    wait_until("the agent's pod to run", Duration::from_secs(30), || {
        agent_pod(c.api()).is_some()
    })
    .with_context(|| c.node.problems())?;
    let (pod_name, _) = agent_pod(c.api()).context("no agent pod")?;
    let agent = c
        .node
        .container_of(NS, &pod_name, "agent")
        .context("no agent container")?;
    let note = c.h.dir.path().join("note");
    fs::write(&note, b"written by the agent")?;
    docker(&[
        "cp",
        note.to_str().context("utf-8")?,
        &format!("{agent}:/work/from-agent"),
    ])?;

    let k = c.h.unique_id("katt");
    let out = c.create(&k, &["--attach", &format!("{pod_name}/agent")])?;
    ensure!(out.contains("created session"), "{out}");
    let deployment = c.object("deployments", "agent").context("no deployment")?;
    let template = &deployment["spec"]["template"];
    ensure!(
        template["spec"]["initContainers"][0]["name"] == "sessionfsd"
            && template["spec"]["initContainers"][0]["restartPolicy"] == "Always",
        "{template}"
    );
    ensure!(
        template["metadata"]["labels"]["sessionfs.io/session"] == k.as_str(),
        "{template}"
    );
    ensure!(
        c.object("pods", &format!("sessionfs-{k}")).is_none(),
        "a pod of its own was made"
    );
    // The patched Deployment passes the official schema (a native sidecar included).
    let patched = c.h.dir.path().join("deployment.json");
    fs::write(&patched, deployment.to_string())?;
    validate(&[patched])?.map_err(|e| anyhow::anyhow!("the patched deployment: {e}"))?;

    c.h.mount()?;
    ensure!(fs::read(c.h.path(&k, "from-agent"))? == b"written by the agent");
    fs::write(c.h.path(&k, "from-the-mount"), b"for the agent")?;
    let (new_pod, _) = agent_pod(c.api()).context("no agent pod after the rollout")?;
    ensure!(new_pod != pod_name, "the Deployment did not roll out");
    let agent = c
        .node
        .container_of(NS, &new_pod, "agent")
        .context("no agent container")?;
    let seen = docker(&["cp", &format!("{agent}:/work/from-the-mount"), "-"])?;
    ensure!(seen.contains("for the agent"), "{seen}");

    let out = c.h.run(&["session", "stop", &k])?;
    ensure!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("is a sidecar of deployment agent"),
        "{out:?}"
    );
    // One session per workload: a second attach is refused, and leaves the first one serving.
    let (current, _) = agent_pod(c.api()).context("no agent pod")?;
    let second = c.h.unique_id("katt3");
    let out = c.h.run(&[
        "session",
        "create",
        &second,
        "--backend",
        "kubernetes",
        "--image",
        image,
        "--attach",
        &format!("{current}/agent"),
    ])?;
    ensure!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("carries the sidecar of session"),
        "{out:?}"
    );
    ensure!(c
        .object("secrets", &format!("sessionfs-{second}"))
        .is_none());
    ensure!(fs::read(c.h.path(&k, "from-agent"))? == b"written by the agent");
    c.h.unmount()?;
    c.h.ok(&["session", "rm", &k])?;
    let deployment = c.object("deployments", "agent").context("no deployment")?;
    ensure!(
        deployment["spec"]["template"]["spec"]["initContainers"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "the sidecar stayed: {deployment}"
    );
    ensure!(c.object("secrets", &format!("sessionfs-{k}")).is_none());
    wait_until(
        "the rollout without the sidecar",
        Duration::from_secs(30),
        || {
            agent_pod(c.api()).is_some_and(|(_, p)| {
                p["spec"]["initContainers"]
                    .as_array()
                    .is_none_or(Vec::is_empty)
            })
        },
    )?;
    let (last_pod, _) = agent_pod(c.api()).context("no agent pod")?;
    let agent = c
        .node
        .container_of(NS, &last_pod, "agent")
        .context("no agent container")?;
    ensure!(
        docker(&["cp", &format!("{agent}:/work/from-the-mount"), "-"])?.contains("for the agent")
    );

    // A pod of no Deployment.
    let bare = c.h.unique_id("kbare");
    c.create(&bare, &[])?;
    let out = c.h.run(&[
        "session",
        "create",
        &c.h.unique_id("katt2"),
        "--backend",
        "kubernetes",
        "--image",
        image,
        "--attach",
        &format!("sessionfs-{bare}"),
    ])?;
    ensure!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("is not a Deployment's"),
        "{out:?}"
    );
    Ok(())
}

/// The daemon in a pod killed: the mount's operations fail within the op timeout while it is down,
/// the node restarts the container (restart policy `Always`) and the mount reaches it again
/// without `session start` or a remount. `session recreate` with another image makes a new pod on
/// the same claim: the data is there.
#[test]
fn a_killed_daemon_comes_back_with_its_pod_and_recreate_keeps_the_data() -> Result<()> {
    let mut c = Cluster::new()?;
    let k = c.h.unique_id("kkill");
    let name = format!("sessionfs-{k}");
    c.create(&k, &[])?;
    c.h.mount()?;
    fs::write(c.h.path(&k, "kept.txt"), b"across a kill\n")?;
    let container = c.node.container(NS, &name).context("no container")?;

    docker(&["kill", &container])?;
    let bound = Duration::from_secs(c.h.op_timeout_secs + 1);
    let started = std::time::Instant::now();
    let failed = fs::write(c.h.path(&k, "during"), b"x").err();
    let took = started.elapsed();
    ensure!(failed.is_some(), "a write to a killed daemon succeeded");
    ensure!(took <= bound, "the write failed only after {took:?}");
    let back = wait_until("the restarted daemon", Duration::from_secs(30), || {
        fs::read(c.h.path(&k, "kept.txt")).is_ok_and(|b| b == b"across a kill\n")
    })
    .with_context(|| c.h.bridge_log())?;
    eprintln!("the killed daemon failed a write in {took:?} and answered again {back:?} later");
    let pod = c.object("pods", &name).context("no pod")?;
    ensure!(
        pod["status"]["containerStatuses"][0]["restartCount"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{pod}"
    );

    let uid = pod["metadata"]["uid"].clone();
    let out =
        c.h.ok(&["session", "recreate", &k, "--image", docker_image()?])?;
    ensure!(out.contains(&k), "{out}");
    let pod = c.object("pods", &name).context("no pod")?;
    ensure!(pod["metadata"]["uid"] != uid, "the pod was not made again");
    let seen = sessionfs_tests::wait_readable(
        "the recreated session",
        &c.h.path(&k, "kept.txt"),
        Duration::from_secs(20),
    )?;
    ensure!(seen == b"across a kill\n");
    c.h.unmount()?;
    Ok(())
}

/// `host rm` reaches a pod through its Secret: the session's host patches the revocation list into
/// it, the node syncs the mounted file (as a kubelet does), and the daemon refuses the removed host
/// (here `peer`, on 127.0.0.3), which had been writing to the pod's session.
#[test]
fn a_removed_host_is_refused_by_a_pods_daemon() -> Result<()> {
    let etcd = sessionfs_tests::Etcd::start()?;
    let mut c = Cluster::new()?;
    c.h.registry = Some(etcd.url());
    c.h.ok(&["host", "init", "--name", "kube", "--advertise", "127.0.0.2"])?;
    let mut peer = Harness::new()?;
    let bundle = c.h.dir.path().join("peer.bundle");
    let bundle = bundle.to_str().context("utf-8 path")?.to_owned();
    c.h.ok(&["host", "add", "peer", "--out", &bundle])?;
    peer.ok(&["host", "join", &bundle, "--advertise", "127.0.0.3"])?;
    let k = c.h.unique_id("krev");
    c.create(&k, &[])?;
    c.h.mount()?;
    peer.mount()?;
    fs::write(peer.path(&k, "from-peer"), b"before")?;
    ensure!(fs::read(c.h.path(&k, "from-peer"))? == b"before");

    let out = c.h.ok(&["host", "rm", "peer"])?;
    ensure!(out.contains("revoked its certificate"), "{out}");
    let took = crate::cluster::wait_refused(&peer, &k, Duration::from_secs(30))?;
    eprintln!("the pod's daemon refused the removed host {took:?} after `host rm`");
    let secret = c
        .object("secrets", &format!("sessionfs-{k}"))
        .context("no secret")?;
    ensure!(secret["data"]["revoked"].is_string(), "{secret}");
    fs::write(c.h.path(&k, "after"), b"kube's own")?;
    ensure!(fs::read(c.h.path(&k, "after"))? == b"kube's own");
    peer.unmount()?;
    c.h.unmount()?;
    Ok(())
}

/// A session whose cluster is gone: `session rm` fails naming the API server and changes nothing;
/// `session rm --forget` drops the registration and the session's files, naming what it left.
#[test]
fn a_session_of_a_cluster_that_is_gone_can_be_forgotten() -> Result<()> {
    let c = Cluster::new()?;
    let k = c.h.unique_id("kgone");
    c.create(&k, &[])?;
    // The cluster goes away: its API server and its node.
    let Cluster { h, node, served } = c;
    drop(node);
    drop(served);
    let out = h.run(&["session", "rm", &k])?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Kubernetes API"),
        "{out:?}"
    );
    ensure!(
        h.session_json(&k)?["state"] == "running",
        "rm changed the record"
    );
    let out = h.ok(&["session", "rm", &k, "--forget"])?;
    ensure!(
        out.contains("forgot session") && out.contains(&format!("sessionfs-{k}")),
        "{out}"
    );
    ensure!(h.session_json(&k).is_err(), "the record is still there");
    ensure!(!h.home.join("sessions").join(&k).exists());
    Ok(())
}

/// Two installations share a namespace: a session id the other one uses is refused here, since
/// its objects carry the other installation's label, and the other one's session is left as it
/// was (its Secret still holds its certificates, its pod still serves).
#[test]
fn another_installations_session_of_the_same_id_is_left_alone() -> Result<()> {
    let mut c = Cluster::new()?;
    let k = c.h.unique_id("kshared");
    c.create(&k, &[])?;
    let name = format!("sessionfs-{k}");
    let secret = c.object("secrets", &name).context("no secret")?;
    let pod = c.object("pods", &name).context("no pod")?;
    let mut other = Harness::new()?;
    other.env = c.h.env.clone();
    let image = docker_image()?;
    let out = other.run(&[
        "session",
        "create",
        &k,
        "--backend",
        "kubernetes",
        "--image",
        image,
    ])?;
    ensure!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("already exists and is not session"),
        "{out:?}"
    );
    ensure!(
        other.session_json(&k).is_err(),
        "the other installation kept a record"
    );
    let after = c.object("secrets", &name).context("the secret went")?;
    ensure!(after["data"] == secret["data"], "the secret was replaced");
    let pod_after = c.object("pods", &name).context("the pod went")?;
    ensure!(pod_after["metadata"]["uid"] == pod["metadata"]["uid"]);
    c.h.mount()?;
    fs::write(c.h.path(&k, "still-mine"), b"yes")?;
    ensure!(fs::read(c.h.path(&k, "still-mine"))? == b"yes");
    c.h.unmount()?;
    Ok(())
}
