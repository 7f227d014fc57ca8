//! A test node: plays the scheduler and the kubelet for the pods the fake API server
//! ([`Api`]) holds, running each as a real Docker container from the pod's image, command,
//! arguments, environment, volumes (secret files, PVCs as Docker volumes) and host ports, on a
//! Docker network of its own, and writing the pod's status back: phase, pod IP, container
//! statuses, and readiness from the pod's own exec probes (run with `docker exec`). A liveness
//! probe that fails its threshold, or a container that exits, restarts the container
//! (`restartCount`). Secret volumes are synced when their secret changes, as a kubelet does.
//!
//! Simulated, not real: one node, no CNI (the pod IP is the container's address on the node's
//! Docker network, reachable from this machine as a cluster's pod network is from its nodes),
//! no resource accounting beyond Docker's limits, one container per pod, `hostPort` and the node
//! ports of NodePort Services selecting the pod (kube-proxy's part) published on 127.0.0.1, as the
//! pod's container is made. [`Node::reschedule`] plays a pod sandbox made again after a node restart: the same
//! pod object, a new container and a new pod IP.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::api::{Api, Key};
use crate::{docker, docker_succeeds};

/// The Docker network pods run on, and its addresses.
pub const NETWORK: &str = "sessionfs-test-pods";
const SUBNET: &str = "10.213.0.0/24";
const LABEL: &str = "sessionfs.test-node";

/// A pod the node runs: its containers in start order (native sidecars first), the first holding
/// the pod's network.
struct Running {
    uid: String,
    containers: Vec<Ctr>,
    restarts: u32,
    /// The secrets' resource versions its files came from.
    secrets: BTreeMap<String, String>,
    ready: bool,
    readiness_failures: u32,
    liveness_failures: u32,
    next_probe: Instant,
    started: Instant,
}

/// One container of a pod: its name in the pod spec, and the Docker container running it.
#[derive(Clone)]
struct Ctr {
    name: String,
    docker: String,
}

impl Running {
    /// Removes every container.
    fn remove(&self) {
        remove_containers(&self.containers);
    }
}

/// Removes a pod's containers, those joined to the first one's network first.
fn remove_containers(containers: &[Ctr]) {
    for c in containers.iter().rev() {
        let _ = docker(&["rm", "-f", &c.docker]);
    }
}

struct Shared {
    /// How many pods the workload controllers made (their names' suffixes).
    made: u64,
    /// This node's label value on its containers and volumes: unique on the machine, so that a
    /// node dropped by another test never removes them.
    tag: String,
    running: BTreeMap<Key, Running>,
    next_ip: u8,
    /// Pods the tests asked to reschedule.
    reschedule: Vec<Key>,
    /// Why a pod could not start (for test failures that say why).
    problems: BTreeMap<Key, String>,
}

/// The node; dropping it stops its loop and removes its containers.
pub struct Node {
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl Node {
    /// Starts node `name` on `api`'s pods.
    pub fn start(api: &Api, name: &str) -> Result<Node> {
        if !docker_succeeds(&["network", "inspect", NETWORK]) {
            let made = docker(&[
                "network", "create", "--subnet", SUBNET, "--label", LABEL, NETWORK,
            ]);
            // Another test process may have made it meanwhile.
            if made.is_err() && !docker_succeeds(&["network", "inspect", NETWORK]) {
                made?;
            }
        }
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let tag = format!(
            "{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let shared = Arc::new(Mutex::new(Shared {
            made: 0,
            tag,
            running: BTreeMap::new(),
            next_ip: first_free_ip()?,
            reschedule: Vec::new(),
            problems: BTreeMap::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (api, node, s, flag) = (api.clone(), name.to_owned(), shared.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("test-node-{name}"))
            .spawn(move || run(&api, &node, &s, &flag))?;
        Ok(Node {
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// Makes pod `name` in `namespace` again on this node: a new container, a new pod IP, the same
    /// pod object and volumes.
    pub fn reschedule(&self, namespace: &str, name: &str) {
        lock(&self.shared)
            .reschedule
            .push(("pods".into(), namespace.into(), name.into()));
    }

    /// The Docker container running pod `name`'s first container, if the node runs it.
    pub fn container(&self, namespace: &str, name: &str) -> Option<String> {
        lock(&self.shared)
            .running
            .get(&("pods".to_owned(), namespace.to_owned(), name.to_owned()))
            .and_then(|r| r.containers.first())
            .map(|c| c.docker.clone())
    }

    /// The Docker container running container `container` of pod `name`.
    pub fn container_of(&self, namespace: &str, name: &str, container: &str) -> Option<String> {
        lock(&self.shared)
            .running
            .get(&("pods".to_owned(), namespace.to_owned(), name.to_owned()))?
            .containers
            .iter()
            .find(|c| c.name == container)
            .map(|c| c.docker.clone())
    }

    /// Why pods could not start, if any could not.
    pub fn problems(&self) -> String {
        lock(&self.shared)
            .problems
            .iter()
            .map(|(k, why)| format!("{}/{}: {why}", k.1, k.2))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let running: Vec<Running> = std::mem::take(&mut lock(&self.shared).running)
            .into_values()
            .collect();
        for pod in running {
            pod.remove();
        }
        let filter = format!("label={LABEL}={}", lock(&self.shared).tag);
        if let Ok(volumes) = docker(&["volume", "ls", "-q", "--filter", &filter]) {
            for volume in volumes.lines().filter(|v| !v.is_empty()) {
                let _ = docker(&["volume", "rm", "-f", volume]);
            }
        }
    }
}

/// The first address of the node network no container holds (another test process may share it).
fn first_free_ip() -> Result<u8> {
    let used = docker(&[
        "network",
        "inspect",
        NETWORK,
        "--format",
        "{{range .Containers}}{{.IPv4Address}} {{end}}",
    ])?;
    let highest = used
        .split_whitespace()
        .filter_map(|a| a.split('/').next()?.rsplit('.').next()?.parse::<u8>().ok())
        .max()
        .unwrap_or(1);
    Ok(highest.saturating_add(1).max(2))
}

fn run(api: &Api, node: &str, shared: &Mutex<Shared>, stop: &AtomicBool) {
    let mut changes = api.subscribe();
    while !stop.load(Ordering::SeqCst) {
        // Taken first: a guard in the loop's head would live through the loop.
        let reschedule = std::mem::take(&mut lock(shared).reschedule);
        for key in reschedule {
            let removed = lock(shared).running.remove(&key);
            if let Some(running) = removed {
                running.remove();
                if let Some(pod) = api.get(&key) {
                    if let Err(e) = start_pod(api, shared, &key, &pod, running.restarts) {
                        lock(shared).problems.insert(key.clone(), format!("{e:#}"));
                    }
                }
            }
        }
        let mut made = lock(shared).made;
        super::controllers::reconcile(api, &mut made);
        lock(shared).made = made;
        reconcile(api, node, shared);
        probe(api, shared);
        // Wake on the next change, or in 200 ms for the probes.
        let deadline = Instant::now() + Duration::from_millis(200);
        while Instant::now() < deadline {
            match changes.try_recv() {
                Ok(event) => {
                    if event.resource == "persistentvolumeclaims" && event.kind == "DELETED" {
                        let claim = event.object["metadata"]["name"].as_str().unwrap_or("");
                        let _ =
                            docker(&["volume", "rm", "-f", &volume_name(&event.namespace, claim)]);
                    }
                    break;
                }
                Err(tokio::sync::broadcast::error::TryRecvError::Empty) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => break,
                Err(tokio::sync::broadcast::error::TryRecvError::Closed) => return,
            }
        }
    }
}

fn volume_name(namespace: &str, claim: &str) -> String {
    format!("sessionfs-pvc-{namespace}-{claim}")
}

fn reconcile(api: &Api, node: &str, shared: &Mutex<Shared>) {
    let pods = api.all("pods");
    for pod in &pods {
        let meta = &pod["metadata"];
        let key: Key = (
            "pods".into(),
            meta["namespace"].as_str().unwrap_or("").into(),
            meta["name"].as_str().unwrap_or("").into(),
        );
        let uid = meta["uid"].as_str().unwrap_or("").to_owned();
        if meta["deletionTimestamp"].is_string() {
            if pod["spec"]["nodeName"] == node {
                let removed = lock(shared).running.remove(&key);
                if let Some(running) = removed {
                    running.remove();
                }
                api.remove(&key);
            }
            continue;
        }
        let ours = lock(shared).running.get(&key).map(|r| r.uid == uid);
        match ours {
            Some(true) => {
                sync_secrets(api, shared, &key, pod);
                check_alive(api, shared, &key, pod);
            }
            Some(false) => {
                // The pod was made again under the same name.
                let removed = lock(shared).running.remove(&key);
                if let Some(old) = removed {
                    old.remove();
                }
            }
            None => {
                if pod["spec"]["nodeName"].is_null() {
                    api.update(&key, |p| p["spec"]["nodeName"] = json!(node));
                    continue;
                }
                if pod["spec"]["nodeName"] != node || pod["status"]["phase"] == "Failed" {
                    continue;
                }
                match start_pod(api, shared, &key, pod, 0) {
                    Ok(()) => {
                        lock(shared).problems.remove(&key);
                    }
                    Err(e) => {
                        let why = format!("{e:#}");
                        api.update(&key, |p| {
                            p["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "True"},
                                {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "message": why}]);
                        });
                        lock(shared).problems.insert(key.clone(), why);
                    }
                }
            }
        }
    }
    // Containers of pods removed outright (no graceful deletion).
    let gone: Vec<Key> = lock(shared)
        .running
        .keys()
        .filter(|k| api.get(k).is_none())
        .cloned()
        .collect();
    for key in gone {
        let removed = lock(shared).running.remove(&key);
        if let Some(running) = removed {
            running.remove();
        }
    }
}

/// A Kubernetes quantity of CPUs (`2`, `500m`) as Docker's `--cpus`.
fn cpus(q: &str) -> Option<String> {
    match q.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().ok().map(|m| format!("{}", m / 1000.0)),
        None => q.parse::<f64>().ok().map(|c| c.to_string()),
    }
}

/// A Kubernetes quantity of bytes (`512Mi`, `1G`, `1000`) as bytes.
fn bytes(q: &str) -> Option<u64> {
    let units: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().ok().map(|n| n * factor);
        }
    }
    q.parse().ok()
}

/// A file of a secret volume: its path under the mount, mode and bytes.
type SecretFile = (String, u32, Vec<u8>);

/// The files of secret volume `volume` of `pod` (path relative to the mount, mode, bytes), and the
/// secret's resource version.
fn secret_files(api: &Api, namespace: &str, volume: &Value) -> Result<(Vec<SecretFile>, String)> {
    let name = volume["secretName"]
        .as_str()
        .context("a secret volume without secretName")?;
    let secret = api
        .get(&("secrets".into(), namespace.into(), name.into()))
        .with_context(|| format!("secret \"{name}\" not found"))?;
    let mode = volume["defaultMode"].as_u64().unwrap_or(0o644) as u32;
    let mut files = Vec::new();
    let data = secret["data"].as_object().cloned().unwrap_or_default();
    let items = volume["items"].as_array().cloned();
    for (key, value) in &data {
        let text = value.as_str().unwrap_or("");
        let bytes = base64_decode(text)
            .with_context(|| format!("secret {name} key {key} is not base64"))?;
        match &items {
            Some(items) => {
                if let Some(item) = items.iter().find(|i| i["key"] == key.as_str()) {
                    let path = item["path"].as_str().unwrap_or(key).to_owned();
                    let m = item["mode"].as_u64().map_or(mode, |m| m as u32);
                    files.push((path, m, bytes));
                }
            }
            None => files.push((key.clone(), mode, bytes)),
        }
    }
    let version = secret["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    Ok((files, version))
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let clean: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let body = clean
        .strip_suffix(b"==")
        .or_else(|| clean.strip_suffix(b"="))
        .unwrap_or(&clean);
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    for chunk in body.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c)? << (18 - 6 * i);
        }
        let produced = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        for i in 0..produced {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

/// Copies `files` into `container` under `mount` (made with its parents).
fn copy_files(container: &str, mount: &str, files: &[SecretFile]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let staging = tempfile::tempdir()?;
    let dir = staging.path().join(mount.trim_start_matches('/'));
    std::fs::create_dir_all(&dir)?;
    for (path, mode, bytes) in files {
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, bytes)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(*mode))?;
    }
    let source = format!("{}/.", staging.path().display());
    docker(&["cp", &source, &format!("{container}:/")])?;
    Ok(())
}

/// The containers of `pod` in start order: native sidecars (init containers that restart
/// always), then the containers. Run-to-completion init containers are not run here.
fn containers(pod: &Value) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for c in pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if c["restartPolicy"] != "Always" {
            bail!(
                "the test node runs no run-to-completion init containers ({})",
                c["name"]
            );
        }
        out.push(c.clone());
    }
    out.extend(
        pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .cloned(),
    );
    if out.is_empty() {
        bail!("no containers");
    }
    Ok(out)
}

/// What making a pod's containers needs to know of the pod.
struct PodCtx<'a> {
    api: &'a Api,
    namespace: &'a str,
    pod_name: &'a str,
    /// The end of the pod's uid, in its Docker objects' names.
    short: &'a str,
    /// The node's label value.
    tag: &'a str,
    volumes: &'a BTreeMap<&'a str, &'a Value>,
}

/// The `docker create` arguments for pod container `c`'s environment, limits, capabilities and
/// volumes (secret files returned to be copied in before it starts).
fn container_args(
    ctx: &PodCtx<'_>,
    c: &Value,
    args: &mut Vec<String>,
    secrets: &mut BTreeMap<String, String>,
) -> Result<Vec<(String, Vec<SecretFile>)>> {
    let PodCtx {
        api,
        namespace,
        pod_name,
        short,
        tag,
        volumes,
    } = *ctx;
    for env in c["env"].as_array().into_iter().flatten() {
        let name = env["name"].as_str().context("env without a name")?;
        let value = env["value"]
            .as_str()
            .context("the test node takes env values only (no valueFrom)")?;
        args.extend(["--env".into(), format!("{name}={value}")]);
    }
    if let Some(q) = c["resources"]["limits"]["cpu"].as_str() {
        args.extend(["--cpus".into(), cpus(q).context("a bad cpu quantity")?]);
    }
    if let Some(q) = c["resources"]["limits"]["memory"].as_str() {
        args.extend([
            "--memory".into(),
            bytes(q).context("a bad memory quantity")?.to_string(),
        ]);
    }
    let capabilities = &c["securityContext"]["capabilities"];
    for (flag, list) in [("--cap-drop", "drop"), ("--cap-add", "add")] {
        for cap in capabilities[list]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            args.extend([flag.into(), cap.to_owned()]);
        }
    }
    if c["securityContext"]["allowPrivilegeEscalation"] == false {
        args.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    let mut staged = Vec::new();
    for mount in c["volumeMounts"].as_array().into_iter().flatten() {
        let name = mount["name"]
            .as_str()
            .context("a volume mount without a name")?;
        let path = mount["mountPath"]
            .as_str()
            .context("a volume mount without a path")?;
        let volume = volumes
            .get(name)
            .with_context(|| format!("no volume {name}"))?;
        let ro = if mount["readOnly"] == true { ":ro" } else { "" };
        let docker_volume = if let Some(claim) =
            volume["persistentVolumeClaim"]["claimName"].as_str()
        {
            let pvc = api
                .get(&(
                    "persistentvolumeclaims".into(),
                    namespace.into(),
                    claim.into(),
                ))
                .with_context(|| format!("persistentvolumeclaim \"{claim}\" not found"))?;
            if pvc["status"]["phase"] != "Bound" {
                bail!("persistentvolumeclaim {claim} is not bound");
            }
            volume_name(namespace, claim)
        } else if volume.get("emptyDir").is_some() {
            // Shared by the pod's containers, gone with the pod.
            format!("sessionfs-ed-{namespace}-{pod_name}-{short}-{name}")
        } else if volume.get("secret").is_some() {
            let (files, version) = secret_files(api, namespace, &volume["secret"])?;
            secrets.insert(
                volume["secret"]["secretName"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                version,
            );
            staged.push((path.to_owned(), files));
            continue;
        } else {
            bail!("volume {name}: the test node takes secret, persistentVolumeClaim and emptyDir volumes");
        };
        if !docker_succeeds(&["volume", "inspect", &docker_volume]) {
            docker(&[
                "volume",
                "create",
                "--label",
                &format!("{LABEL}={tag}"),
                &docker_volume,
            ])?;
        }
        args.extend(["--volume".into(), format!("{docker_volume}:{path}{ro}")]);
    }
    let command: Vec<&str> = c["command"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let image = c["image"].as_str().context("no image")?.to_owned();
    if let Some((entry, rest)) = command.split_first() {
        args.extend(["--entrypoint".into(), (*entry).to_owned(), image]);
        args.extend(rest.iter().map(|s| (*s).to_owned()));
    } else {
        args.push(image);
    }
    args.extend(
        c["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned),
    );
    Ok(staged)
}

/// The ports a pod publishes on the node: its containers' host ports, and (kube-proxy's part) the
/// node ports of the NodePort Services selecting it.
fn published(api: &Api, namespace: &str, pod: &Value, specs: &[Value]) -> Vec<String> {
    let mut publish = Vec::new();
    for c in specs {
        for port in c["ports"].as_array().into_iter().flatten() {
            if let Some(host_port) = port["hostPort"].as_u64() {
                let proto = port["protocol"].as_str().unwrap_or("TCP").to_lowercase();
                publish.push(format!(
                    "127.0.0.1:{host_port}:{}/{proto}",
                    port["containerPort"]
                ));
            }
        }
    }
    for service in api.list("services", namespace) {
        let selector = service["spec"]["selector"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let labels = &pod["metadata"]["labels"];
        let selected =
            !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v));
        if service["spec"]["type"] != "NodePort" || !selected {
            continue;
        }
        for port in service["spec"]["ports"].as_array().into_iter().flatten() {
            let (Some(node_port), Some(target)) =
                (port["nodePort"].as_u64(), port["targetPort"].as_u64())
            else {
                continue;
            };
            let proto = port["protocol"].as_str().unwrap_or("TCP").to_lowercase();
            publish.push(format!("127.0.0.1:{node_port}:{target}/{proto}"));
        }
    }
    publish
}

fn start_pod(
    api: &Api,
    shared: &Mutex<Shared>,
    key: &Key,
    pod: &Value,
    restarts: u32,
) -> Result<()> {
    let namespace = key.1.as_str();
    let spec = &pod["spec"];
    let specs = containers(pod)?;
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_owned();
    let short = uid[uid.len().saturating_sub(6)..].to_owned();
    let tag = lock(shared).tag.clone();
    let next_ip = || {
        let mut s = lock(shared);
        let ip = format!("10.213.0.{}", s.next_ip);
        s.next_ip = s.next_ip.checked_add(1).filter(|n| *n < 255).unwrap_or(2);
        ip
    };
    let volumes: BTreeMap<&str, &Value> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v["name"].as_str()?, v)))
        .collect();
    let publish = published(api, namespace, pod, &specs);
    let mut made: Vec<Ctr> = Vec::new();
    let mut secrets = BTreeMap::new();
    let mut ip = next_ip();
    let result = (|| -> Result<()> {
        for (i, c) in specs.iter().enumerate() {
            let cname = c["name"].as_str().context("a container without a name")?;
            let container = format!("k8s-{namespace}-{}-{short}-{cname}", key.2);
            let mut args: Vec<String> = vec![
                "create".into(),
                "--name".into(),
                container.clone(),
                "--label".into(),
                format!("{LABEL}={tag}"),
            ];
            // The first container holds the pod's network, its address and its ports.
            match made.first() {
                None => {
                    args.extend([
                        "--network".into(),
                        NETWORK.into(),
                        "--ip".into(),
                        ip.clone(),
                    ]);
                    for p in &publish {
                        args.extend(["--publish".into(), p.clone()]);
                    }
                }
                Some(first) => {
                    args.extend(["--network".into(), format!("container:{}", first.docker)])
                }
            }
            let ctx = PodCtx {
                api,
                namespace,
                pod_name: &key.2,
                short: &short,
                tag: &tag,
                volumes: &volumes,
            };
            let staged = container_args(&ctx, c, &mut args, &mut secrets)?;
            // Nodes of other test processes share the network: an address one took (Docker says
            // so at create or at start) is skipped.
            let mut attempts = 0;
            loop {
                if i == 0 {
                    if let Some(at) = args.iter().position(|a| a == "--ip") {
                        args[at + 1] = ip.clone();
                    }
                }
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                let started = docker(&refs).and_then(|_| {
                    for (path, files) in &staged {
                        copy_files(&container, path, files)?;
                    }
                    docker(&["start", &container])
                });
                match started {
                    Ok(_) => break,
                    Err(e) => {
                        let _ = docker(&["rm", "-f", &container]);
                        if i != 0 || !format!("{e:#}").contains("already in use") || attempts >= 250
                        {
                            return Err(e);
                        }
                        attempts += 1;
                        ip = next_ip();
                    }
                }
            }
            made.push(Ctr {
                name: cname.to_owned(),
                docker: container,
            });
        }
        Ok(())
    })();
    if let Err(e) = result {
        remove_containers(&made);
        return Err(e);
    }
    let statuses: Vec<Value> = specs
        .iter()
        .map(|c| {
            json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": false,
                   "restartCount": restarts, "started": true, "state": {"running": {}}})
        })
        .collect();
    let sidecars = spec["initContainers"].as_array().map_or(0, Vec::len);
    api.update(key, |p| {
        p["status"] = json!({
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": p["metadata"]["creationTimestamp"].clone(),
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": "False"},
                {"type": "Ready", "status": "False"},
            ],
            "containerStatuses": statuses[sidecars..].to_vec(),
        });
        if sidecars > 0 {
            p["status"]["initContainerStatuses"] = json!(statuses[..sidecars].to_vec());
        }
    });
    let delay = specs
        .iter()
        .filter_map(|c| c["readinessProbe"]["initialDelaySeconds"].as_u64())
        .max()
        .unwrap_or(0);
    lock(shared).running.insert(
        key.clone(),
        Running {
            uid,
            containers: made,
            restarts,
            secrets,
            ready: false,
            readiness_failures: 0,
            liveness_failures: 0,
            next_probe: Instant::now() + Duration::from_secs(delay),
            started: Instant::now(),
        },
    );
    Ok(())
}

/// Copies the files of secrets that changed since the containers got them.
fn sync_secrets(api: &Api, shared: &Mutex<Shared>, key: &Key, pod: &Value) {
    let Some(ctrs) = lock(shared).running.get(key).map(|r| r.containers.clone()) else {
        return;
    };
    let volumes: Vec<Value> = pod["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let Ok(specs) = containers(pod) else { return };
    let mut synced = BTreeMap::new();
    for (c, ctr) in specs.iter().zip(&ctrs) {
        for mount in c["volumeMounts"].as_array().into_iter().flatten() {
            let Some(volume) = volumes.iter().find(|v| v["name"] == mount["name"]) else {
                continue;
            };
            if volume.get("secret").is_none() {
                continue;
            }
            let Ok((files, version)) = secret_files(api, &key.1, &volume["secret"]) else {
                continue;
            };
            let secret = volume["secret"]["secretName"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            let had = lock(shared)
                .running
                .get(key)
                .and_then(|r| r.secrets.get(&secret).cloned());
            if had.as_deref() != Some(version.as_str()) {
                let path = mount["mountPath"].as_str().unwrap_or("/");
                if copy_files(&ctr.docker, path, &files).is_ok() {
                    synced.insert(secret, version);
                }
            }
        }
    }
    if let Some(r) = lock(shared).running.get_mut(key) {
        r.secrets.extend(synced);
    }
}

/// Restarts containers that exited (restart policy `Always`, the default).
fn check_alive(api: &Api, shared: &Mutex<Shared>, key: &Key, pod: &Value) {
    let Some(ctrs) = lock(shared).running.get(key).map(|r| r.containers.clone()) else {
        return;
    };
    for ctr in ctrs {
        let running = docker(&["inspect", "--format", "{{.State.Running}}", &ctr.docker]);
        if running.as_deref().is_ok_and(|r| r.trim() == "true") {
            continue;
        }
        if pod["spec"]["restartPolicy"] == "Never" {
            api.update(key, |p| p["status"]["phase"] = json!("Failed"));
            return;
        }
        if docker(&["start", &ctr.docker]).is_ok() {
            restarted(api, shared, key);
        }
    }
}

fn restarted(api: &Api, shared: &Mutex<Shared>, key: &Key) {
    let restarts = {
        let mut s = lock(shared);
        let Some(r) = s.running.get_mut(key) else {
            return;
        };
        r.restarts += 1;
        r.ready = false;
        r.readiness_failures = 0;
        r.liveness_failures = 0;
        r.restarts
    };
    api.update(key, |p| {
        for list in ["containerStatuses", "initContainerStatuses"] {
            if let Some(statuses) = p["status"][list].as_array_mut() {
                for s in statuses {
                    s["restartCount"] = json!(restarts);
                }
            }
        }
        set_ready(p, false);
    });
}

fn set_ready(pod: &mut Value, ready: bool) {
    let value = if ready { "True" } else { "False" };
    if let Some(conditions) = pod["status"]["conditions"].as_array_mut() {
        for c in conditions {
            if c["type"] == "Ready" || c["type"] == "ContainersReady" {
                c["status"] = json!(value);
            }
        }
    }
    for list in ["containerStatuses", "initContainerStatuses"] {
        if let Some(statuses) = pod["status"][list].as_array_mut() {
            for s in statuses {
                s["ready"] = json!(ready);
            }
        }
    }
}

/// Runs `probe`'s exec command in `container`; whether it passed.
fn passes(container: &str, probe: &Value) -> bool {
    let command: Vec<&str> = probe["exec"]["command"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if command.is_empty() {
        return true;
    }
    let mut args = vec!["exec", container];
    args.extend(command);
    docker_succeeds(&args)
}

/// Runs the readiness and liveness probes that are due; a pod is ready when every container's
/// readiness probe passes.
fn probe(api: &Api, shared: &Mutex<Shared>) {
    let due: Vec<(Key, Vec<Ctr>, Instant)> = lock(shared)
        .running
        .iter()
        .filter(|(_, r)| r.next_probe <= Instant::now())
        .map(|(k, r)| (k.clone(), r.containers.clone(), r.started))
        .collect();
    for (key, ctrs, started) in due {
        let Some(pod) = api.get(&key) else { continue };
        let Ok(specs) = containers(&pod) else {
            continue;
        };
        let mut ready_now = true;
        let (mut period, mut threshold) = (10, 3);
        for (c, ctr) in specs.iter().zip(&ctrs) {
            let readiness = &c["readinessProbe"];
            if readiness.is_null() {
                continue;
            }
            period = readiness["periodSeconds"]
                .as_u64()
                .unwrap_or(10)
                .min(period);
            threshold = readiness["failureThreshold"].as_u64().unwrap_or(3) as u32;
            ready_now &= passes(&ctr.docker, readiness);
        }
        let change = {
            let mut s = lock(shared);
            let Some(r) = s.running.get_mut(&key) else {
                continue;
            };
            r.next_probe = Instant::now() + Duration::from_secs(period);
            if ready_now {
                r.readiness_failures = 0;
            } else {
                r.readiness_failures += 1;
            }
            let want = if ready_now {
                true
            } else if r.readiness_failures >= threshold {
                false
            } else {
                r.ready
            };
            let changed = want != r.ready;
            r.ready = want;
            changed.then_some(want)
        };
        if let Some(ready) = change {
            api.update(&key, |p| set_ready(p, ready));
        }
        for (c, ctr) in specs.iter().zip(&ctrs) {
            let liveness = &c["livenessProbe"];
            let delay = liveness["initialDelaySeconds"].as_u64().unwrap_or(0);
            if liveness.is_null() || started.elapsed() < Duration::from_secs(delay) {
                continue;
            }
            let alive = passes(&ctr.docker, liveness);
            let restart = {
                let mut s = lock(shared);
                let Some(r) = s.running.get_mut(&key) else {
                    break;
                };
                r.liveness_failures = if alive { 0 } else { r.liveness_failures + 1 };
                r.liveness_failures >= liveness["failureThreshold"].as_u64().unwrap_or(3) as u32
            };
            if restart && docker(&["restart", &ctr.docker]).is_ok() {
                restarted(api, shared, &key);
            }
        }
    }
}
