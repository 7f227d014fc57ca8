//! The Kubernetes objects of a session, built from its [`PodOptions`] without I/O: a Secret with
//! its certificates (mounted read-only, mode 0400), a PersistentVolumeClaim for its workspace, and
//! a Pod running `sessionfsd` on them with exec probes of `sessionfsd --health`. All carry the
//! labels `sessionfs.io/session=<id>` and `sessionfs.io/installation=<root CA fingerprint>`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PersistentVolumeClaim, Pod, Secret, Service, Volume};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sessionfs_registry::SessionId;

use super::KubeError;
use crate::docker::{CERT_DIR, DAEMON_PORT, WORKSPACE};

/// The label naming a session's objects.
pub const LABEL_SESSION: &str = "sessionfs.io/session";
/// The label naming the installation (the first 16 hex digits of its root CA's fingerprint).
pub const LABEL_INSTALLATION: &str = "sessionfs.io/installation";
/// The container's name in a session pod.
pub const CONTAINER: &str = "sessionfsd";

/// How a session's daemon is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reach {
    /// At the pod's IP: for a mount running in the cluster (or on a node).
    PodIp,
    /// At a port of the pod's node (`hostPort`): from outside the cluster, one port per session
    /// and node.
    HostPort(u16),
    /// At a node port of a UDP Service of the session's own (type NodePort), on the pod's node:
    /// from outside the cluster, one port per session across the cluster. 0 until the API server
    /// allocated it.
    NodePort(u16),
}

impl std::str::FromStr for Reach {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pod-ip" => Ok(Reach::PodIp),
            "node-port" => Ok(Reach::NodePort(0)),
            other => {
                let port = |prefix| other.strip_prefix(prefix).map(str::parse::<u16>);
                match (port("host-port:"), port("node-port:")) {
                    (Some(Ok(p)), _) if p > 0 => Ok(Reach::HostPort(p)),
                    (_, Some(Ok(p))) if p > 0 => Ok(Reach::NodePort(p)),
                    _ => Err(format!(
                        "reach `{s}` is not `pod-ip`, `host-port:PORT` (a port of the node) or \
                         `node-port[:PORT]` (a NodePort Service)"
                    )),
                }
            }
        }
    }
}

/// What `session create --backend kubernetes` was told; kept in the record (`k8s.spec`) so that
/// `session start` makes the same pod again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodOptions {
    pub namespace: String,
    /// The kubeconfig context; `None`: the current one (or the in-cluster config).
    pub context: Option<String>,
    pub image: String,
    /// Where `sessionfsd` is in the image (`/sessionfsd` in the images `sessionfs image build`
    /// makes from scratch).
    pub daemon_path: String,
    pub storage_class: Option<String>,
    /// The workspace claim's size, a Kubernetes quantity (`10Gi`).
    pub size: String,
    /// CPU limit, a Kubernetes quantity (`2`, `500m`).
    pub cpus: Option<String>,
    /// Memory limit, a Kubernetes quantity (`512Mi`).
    pub memory: Option<String>,
    pub node_selector: BTreeMap<String, String>,
    /// The workspace owner (`UID:GID`) the daemon gives new files.
    pub owner: String,
    pub reach: Reach,
    /// Set for a sidecar added to a workload's pods (`--attach`), instead of a pod of its own.
    #[serde(default)]
    pub attach: Option<Attachment>,
}

/// Where an attached session's sidecar is: the Deployment whose pod template carries it, and the
/// workload container's volume it serves (mounted at `path` in both).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub deployment: String,
    pub container: String,
    pub volume: String,
    pub path: String,
}

/// The name of an attached session's sidecar container and of its certificates' volume.
pub const SIDECAR: &str = "sessionfsd";
/// The certificates' volume in an attached workload's pod template.
pub const SIDECAR_CERTS: &str = "sessionfs-certs";

impl PodOptions {
    /// The options' defaults for namespace `namespace`.
    pub fn new(namespace: &str) -> PodOptions {
        PodOptions {
            namespace: namespace.to_owned(),
            context: None,
            image: crate::image::DEFAULT_TAG.to_owned(),
            daemon_path: crate::image::SCRATCH_DAEMON_PATH.to_owned(),
            storage_class: None,
            size: "10Gi".to_owned(),
            cpus: None,
            memory: None,
            node_selector: BTreeMap::new(),
            owner: crate::commands::DEFAULT_DOCKER_OWNER.to_owned(),
            reach: Reach::PodIp,
            attach: None,
        }
    }
}

/// Checks a Kubernetes quantity (`10Gi`, `500m`, `2`): digits, an optional fraction, an optional
/// suffix of the ones Kubernetes knows.
pub fn check_quantity(flag: &str, q: &str) -> Result<(), KubeError> {
    let digits_end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(digits_end);
    let known = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    if number.is_empty() || number.parse::<f64>().is_err() || !known.contains(&suffix) {
        return Err(KubeError::InvalidOption(format!(
            "{flag} {q:?} is not a Kubernetes quantity (e.g. 10Gi, 512Mi, 500m, 2)"
        )));
    }
    Ok(())
}

/// The name of session `id`'s objects (pod, secret, claim).
pub fn object_name(id: &SessionId) -> String {
    format!("sessionfs-{id}")
}

/// The labels of session `id`'s objects.
pub fn labels(id: &SessionId, installation: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_SESSION.to_owned(), id.to_string()),
        (LABEL_INSTALLATION.to_owned(), installation.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "sessionfs".to_owned(),
        ),
    ])
}

fn from_json<T: serde::de::DeserializeOwned>(
    what: &str,
    value: serde_json::Value,
) -> Result<T, KubeError> {
    serde_json::from_value(value)
        .map_err(|e| KubeError::InvalidOption(format!("the session's {what} is not valid: {e}")))
}

/// The Secret holding the session's certificate directory (`files`: name → bytes).
pub fn secret(
    id: &SessionId,
    installation: &str,
    opts: &PodOptions,
    files: &BTreeMap<String, Vec<u8>>,
) -> Result<Secret, KubeError> {
    let mut secret: Secret = from_json(
        "secret",
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": object_name(id),
                "namespace": opts.namespace,
                "labels": labels(id, installation),
            },
            "type": "Opaque",
        }),
    )?;
    secret.data = Some(
        files
            .iter()
            .map(|(k, v)| (k.clone(), k8s_openapi::ByteString(v.clone())))
            .collect(),
    );
    Ok(secret)
}

/// The claim for the session's workspace.
pub fn claim(
    id: &SessionId,
    installation: &str,
    opts: &PodOptions,
) -> Result<PersistentVolumeClaim, KubeError> {
    from_json(
        "claim",
        json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": object_name(id),
                "namespace": opts.namespace,
                "labels": labels(id, installation),
            },
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": opts.storage_class,
                "resources": {"requests": {"storage": opts.size}},
            },
        }),
    )
}

/// The UDP Service of type NodePort selecting the session's pod (`--reach node-port`), with the
/// node port asked for if `port` is not 0.
pub fn service(
    id: &SessionId,
    installation: &str,
    opts: &PodOptions,
    port: u16,
) -> Result<Service, KubeError> {
    let mut spec_port = json!({"name": "sessionfs", "protocol": "UDP", "port": DAEMON_PORT,
                               "targetPort": DAEMON_PORT});
    if port != 0 {
        spec_port["nodePort"] = json!(port);
    }
    from_json(
        "service",
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": object_name(id),
                "namespace": opts.namespace,
                "labels": labels(id, installation),
            },
            "spec": {
                "type": "NodePort",
                "selector": {LABEL_SESSION: id.as_str(), LABEL_INSTALLATION: installation},
                "ports": [spec_port],
            },
        }),
    )
}

/// The daemon's container serving `root`, with the certificates' volume `certs` and the workspace
/// volume `workspace` (mounted at `root`).
fn daemon_container(
    id: &SessionId,
    opts: &PodOptions,
    root: &str,
    certs: &str,
    workspace: &str,
) -> serde_json::Value {
    let health = json!({
        "exec": {"command": [
            opts.daemon_path, "--health", "--session-id", id.as_str(), "--cert-dir", CERT_DIR,
            "--listen", format!("0.0.0.0:{DAEMON_PORT}"), "--timeout", "4",
        ]},
        "periodSeconds": 2,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    });
    let mut liveness = health.clone();
    liveness["periodSeconds"] = json!(10);
    liveness["initialDelaySeconds"] = json!(10);
    let mut port = json!({"name": "sessionfs", "containerPort": DAEMON_PORT, "protocol": "UDP"});
    if let Reach::HostPort(host_port) = opts.reach {
        port["hostPort"] = json!(host_port);
    }
    let mut limits = serde_json::Map::new();
    if let Some(cpus) = &opts.cpus {
        limits.insert("cpu".into(), json!(cpus));
    }
    if let Some(memory) = &opts.memory {
        limits.insert("memory".into(), json!(memory));
    }
    json!({
        "name": CONTAINER,
        "image": opts.image,
        "imagePullPolicy": "IfNotPresent",
        "command": [opts.daemon_path],
        "args": [
            "--session-id", id.as_str(),
            "--cert-dir", CERT_DIR,
            "--root", root,
            "--listen", format!("0.0.0.0:{DAEMON_PORT}"),
        ],
        "env": [
            {"name": crate::commands::OWNER_ENV, "value": opts.owner},
            {"name": "NO_COLOR", "value": "1"},
        ],
        "ports": [port],
        "readinessProbe": health,
        "livenessProbe": liveness,
        "resources": {"limits": limits},
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {
                "drop": ["ALL"],
                "add": crate::docker::KEPT_CAPABILITIES,
            },
        },
        "volumeMounts": [
            {"name": certs, "mountPath": CERT_DIR, "readOnly": true},
            {"name": workspace, "mountPath": root},
        ],
    })
}

/// The pod running the session's daemon: confined like a docker session's container (capabilities
/// reduced to [`crate::docker::KEPT_CAPABILITIES`], no privilege escalation, no service account
/// token), probed with `sessionfsd --health`.
pub fn pod(id: &SessionId, installation: &str, opts: &PodOptions) -> Result<Pod, KubeError> {
    from_json(
        "pod",
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": object_name(id),
                "namespace": opts.namespace,
                "labels": labels(id, installation),
            },
            "spec": {
                "restartPolicy": "Always",
                "automountServiceAccountToken": false,
                "enableServiceLinks": false,
                "nodeSelector": opts.node_selector,
                "containers": [daemon_container(id, opts, WORKSPACE, "certs", "workspace")],
                "volumes": [
                    {"name": "certs", "secret": {"secretName": object_name(id), "defaultMode": 0o400}},
                    {"name": "workspace", "persistentVolumeClaim": {"claimName": object_name(id)}},
                ],
            },
        }),
    )
}

/// The native sidecar (an init container that restarts always) serving `attach`'s volume in a
/// workload's pods, and the certificates' volume it needs.
pub fn sidecar(
    id: &SessionId,
    opts: &PodOptions,
    attach: &Attachment,
) -> Result<(Container, Volume), KubeError> {
    let mut container = daemon_container(id, opts, &attach.path, SIDECAR_CERTS, &attach.volume);
    container["restartPolicy"] = json!("Always");
    let volume = json!({"name": SIDECAR_CERTS,
                        "secret": {"secretName": object_name(id), "defaultMode": 0o400}});
    Ok((
        from_json("sidecar", container)?,
        from_json("volume", volume)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> SessionId {
        "s1".parse().unwrap()
    }

    #[test]
    fn the_pod_serves_the_claim_with_the_secret_and_probes_the_daemon() {
        let mut opts = PodOptions::new("agents");
        opts.cpus = Some("500m".into());
        opts.reach = Reach::HostPort(31000);
        let pod = serde_json::to_value(pod(&id(), "abcd", &opts).unwrap()).unwrap();
        let c = &pod["spec"]["containers"][0];
        assert_eq!(pod["metadata"]["labels"][LABEL_SESSION], "s1");
        assert_eq!(c["command"][0], "/sessionfsd");
        assert_eq!(c["readinessProbe"]["exec"]["command"][1], "--health");
        assert_eq!(c["ports"][0]["hostPort"], 31000);
        assert_eq!(c["resources"]["limits"]["cpu"], "500m");
        assert_eq!(pod["spec"]["volumes"][0]["secret"]["defaultMode"], 0o400);
        assert_eq!(
            pod["spec"]["volumes"][1]["persistentVolumeClaim"]["claimName"],
            "sessionfs-s1"
        );
        assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    }

    #[test]
    fn options_are_checked() {
        assert_eq!("pod-ip".parse(), Ok(Reach::PodIp));
        assert_eq!("host-port:31000".parse(), Ok(Reach::HostPort(31000)));
        assert!("host-port:0".parse::<Reach>().is_err());
        assert_eq!("node-port".parse(), Ok(Reach::NodePort(0)));
        assert_eq!("node-port:30100".parse(), Ok(Reach::NodePort(30100)));
        assert!("node".parse::<Reach>().is_err());
        for good in ["10Gi", "500m", "2", "1.5", "512Mi"] {
            check_quantity("--size", good).unwrap();
        }
        for bad in ["", "Gi", "10GB", "ten", "-1"] {
            assert!(check_quantity("--size", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_secret_carries_the_files() {
        let files = BTreeMap::from([("ca.pem".to_owned(), b"pem".to_vec())]);
        let secret = secret(&id(), "abcd", &PodOptions::new("ns"), &files).unwrap();
        let data = secret.data.unwrap();
        assert_eq!(data["ca.pem"].0, b"pem");
    }
}
