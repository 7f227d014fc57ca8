//! A session container's specification and the Engine API request made from it.
//!
//! - [`parse_memory`], [`parse_cpus`] and [`check_volume_name`] check the `--memory`, `--cpus`
//!   and `--volume` options.
//! - [`ContainerSpec`] (image, limits, workspace, environment) and its round trip through the
//!   registry record's labels.
//! - The container's create request: labels, the daemon's command line, the health check,
//!   the workspace mount, the published port, limits and restart policy.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, HealthConfig, HostConfig, Mount, MountType, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use sessionfs_registry::{SessionId, SessionRecord};

use super::{
    DockerError, CERT_DIR, DAEMON_PORT, HEALTH_INTERVAL, HEALTH_RETRIES, LABEL_HOME, LABEL_MANAGED,
    LABEL_SESSION, PORT_KEY, RECORD_ENV, RECORD_IMAGE, RECORD_MEMORY, RECORD_NANO_CPUS,
    RECORD_VOLUME, RECORD_WORKSPACE, WORKSPACE,
};
#[cfg(doc)]
use super::{Engine, Provisioned};
use crate::state::Home;

/// Parses `--memory`: a number of bytes with an optional suffix `b`, `k`, `m`, `g` or `t`
/// (powers of 1024, case-insensitive, optionally followed by `b` or `ib`).
pub fn parse_memory(s: &str) -> Result<i64, DockerError> {
    let bad = || {
        DockerError::InvalidOption(format!(
            "invalid memory size {s:?}: expected bytes or a number with suffix k, m, g or t \
             (e.g. 512m, 2g)"
        ))
    };
    let lower = s.trim().to_ascii_lowercase();
    let unit_start = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (digits, unit) = lower.split_at(unit_start);
    let number: i64 = digits.parse().map_err(|_| bad())?;
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b').filter(|u| !u.is_empty()))
        .unwrap_or(unit);
    let shift = match unit {
        "" | "b" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(bad()),
    };
    let bytes = number.checked_mul(1i64 << shift).ok_or_else(bad)?;
    if bytes <= 0 {
        return Err(DockerError::InvalidOption(format!(
            "invalid memory size {s:?}: must be more than zero"
        )));
    }
    Ok(bytes)
}

/// Parses `--cpus` into Docker's `NanoCpus` (billionths of a CPU).
pub fn parse_cpus(s: &str) -> Result<i64, DockerError> {
    let bad = |why: &str| DockerError::InvalidOption(format!("invalid --cpus {s:?}: {why}"));
    let cpus: f64 = s
        .trim()
        .parse()
        .map_err(|_| bad("expected a number such as 1 or 0.5"))?;
    if !cpus.is_finite() || cpus <= 0.0 || cpus > 1024.0 {
        return Err(bad("must be more than 0 and at most 1024"));
    }
    // In range by the check above, so the cast cannot saturate.
    Ok((cpus * 1e9).round() as i64)
}

/// Checks a `--volume` name against Docker's alphabet (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`).
pub fn check_volume_name(name: &str) -> Result<(), DockerError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok && name.len() >= 2 {
        Ok(())
    } else {
        Err(DockerError::InvalidOption(format!(
            "invalid volume name {name:?}: use at least two of a-z, A-Z, 0-9, '_', '.', '-', \
             starting with a letter or digit"
        )))
    }
}

/// Where a docker session's `/workspace` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkspaceSource {
    /// A named volume (created if missing).
    Volume(String),
    /// A host directory, bind-mounted (never deleted by sessionfs).
    HostDir(PathBuf),
}

/// What [`Engine::provision`] needs besides the session.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// The session image.
    pub image: String,
    /// `NanoCpus`, if limited.
    pub nano_cpus: Option<i64>,
    /// Memory limit in bytes, if limited.
    pub memory: Option<i64>,
    /// The workspace.
    pub workspace: WorkspaceSource,
    /// Extra environment variables `(KEY, VALUE)`.
    pub env: Vec<(String, String)>,
}

impl ContainerSpec {
    /// The registry labels that let [`ContainerSpec::from_record`] rebuild this spec
    /// (limits and environment; image and workspace are in [`Provisioned::record_labels`]).
    pub fn record_labels(&self) -> Vec<(String, String)> {
        let mut labels = Vec::new();
        if let Some(n) = self.nano_cpus {
            labels.push((RECORD_NANO_CPUS.to_owned(), n.to_string()));
        }
        if let Some(m) = self.memory {
            labels.push((RECORD_MEMORY.to_owned(), m.to_string()));
        }
        if !self.env.is_empty() {
            let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let json = serde_json::Value::from(env).to_string();
            labels.push((RECORD_ENV.to_owned(), json));
        }
        labels
    }

    /// The spec a docker session's container was created with, from its record's labels;
    /// `image` replaces the recorded image if given.
    pub fn from_record(
        record: &SessionRecord,
        image: Option<&str>,
    ) -> Result<ContainerSpec, DockerError> {
        let bad = |reason: String| DockerError::BadRecord {
            id: record.id.clone(),
            reason,
        };
        let label = |key: &str| record.labels.get(key).map(String::as_str);
        let image = match image.or_else(|| label(RECORD_IMAGE)) {
            Some(i) => i.to_owned(),
            None => return Err(bad(format!("no label {RECORD_IMAGE}; pass --image"))),
        };
        let workspace = match (label(RECORD_VOLUME), label(RECORD_WORKSPACE)) {
            (Some(v), _) => WorkspaceSource::Volume(v.to_owned()),
            (None, Some(d)) => WorkspaceSource::HostDir(PathBuf::from(d)),
            (None, None) => {
                return Err(bad(format!(
                    "neither {RECORD_VOLUME} nor {RECORD_WORKSPACE} is recorded"
                )))
            }
        };
        let number = |key: &str| -> Result<Option<i64>, DockerError> {
            label(key)
                .map(|v| {
                    v.parse::<i64>()
                        .map_err(|_| bad(format!("label {key}={v:?} is not a number")))
                })
                .transpose()
        };
        let env = match label(RECORD_ENV) {
            None => Vec::new(),
            Some(json) => {
                let items: Vec<String> = serde_json::from_str(json)
                    .map_err(|e| bad(format!("label {RECORD_ENV} is not a JSON list: {e}")))?;
                items
                    .into_iter()
                    .map(|item| match item.split_once('=') {
                        Some((k, v)) => Ok((k.to_owned(), v.to_owned())),
                        None => Err(bad(format!("label {RECORD_ENV} holds {item:?}"))),
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        Ok(ContainerSpec {
            image,
            nano_cpus: number(RECORD_NANO_CPUS)?,
            memory: number(RECORD_MEMORY)?,
            workspace,
            env,
        })
    }
}

/// The labels of every container and volume made for session `id`.
pub(crate) fn object_labels(home: &Home, id: &SessionId) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_SESSION.to_owned(), id.to_string()),
        (LABEL_MANAGED.to_owned(), "1".to_owned()),
        (LABEL_HOME.to_owned(), home.root().display().to_string()),
    ])
}

/// The daemon's arguments after its entrypoint.
fn daemon_args(id: &SessionId) -> Vec<String> {
    let listen = format!("0.0.0.0:{DAEMON_PORT}");
    [
        "--session-id",
        id.as_str(),
        "--cert-dir",
        CERT_DIR,
        "--root",
        WORKSPACE,
        "--listen",
        &listen,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The health check command (exec form) for a daemon at `daemon` in the image.
fn health_test(daemon: &str, id: &SessionId) -> Vec<String> {
    let listen = format!("0.0.0.0:{DAEMON_PORT}");
    [
        "CMD",
        daemon,
        "--health",
        "--session-id",
        id.as_str(),
        "--cert-dir",
        CERT_DIR,
        "--listen",
        &listen,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The capabilities a session container keeps (all others are dropped): what serving every file of the
/// workspace as its owner needs (`setfsuid`/`setfsgid`, `chown`, permission overrides) and signalling
/// the session's own processes. Gone, among Docker's defaults: `MKNOD` (no device nodes), `NET_RAW`,
/// `SYS_CHROOT`, `SETFCAP`, `SETPCAP`, `NET_BIND_SERVICE`, `AUDIT_WRITE`.
pub const KEPT_CAPABILITIES: [&str; 7] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "SETUID",
    "SETGID",
    "KILL",
];

/// The most processes (and threads) a session container may run.
pub const PIDS_LIMIT: i64 = 4096;

/// The create request of session `id`'s container: confined (capabilities reduced to
/// [`KEPT_CAPABILITIES`], no new privileges through set-id files, at most [`PIDS_LIMIT`] processes).
pub(super) fn container_body(
    id: &SessionId,
    spec: &ContainerSpec,
    daemon: &str,
    labels: HashMap<String, String>,
    network: &str,
) -> ContainerCreateBody {
    let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    let mut env = vec!["NO_COLOR=1".to_owned()];
    env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
    let mount = match &spec.workspace {
        WorkspaceSource::Volume(volume) => Mount {
            typ: Some(MountType::VOLUME),
            source: Some(volume.clone()),
            target: Some(WORKSPACE.to_owned()),
            ..Default::default()
        },
        WorkspaceSource::HostDir(dir) => Mount {
            typ: Some(MountType::BIND),
            source: Some(dir.display().to_string()),
            target: Some(WORKSPACE.to_owned()),
            ..Default::default()
        },
    };
    let port_bindings = HashMap::from([(
        PORT_KEY.to_owned(),
        Some(vec![PortBinding {
            host_ip: Some(super::publish_ip().to_string()),
            // Empty: Docker picks a free host port.
            host_port: Some(String::new()),
        }]),
    )]);
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: Some(daemon_args(id)),
        env: Some(env),
        labels: Some(labels),
        exposed_ports: Some(vec![PORT_KEY.to_owned()]),
        healthcheck: Some(HealthConfig {
            test: Some(health_test(daemon, id)),
            interval: Some(nanos(HEALTH_INTERVAL)),
            timeout: Some(nanos(HEALTH_INTERVAL)),
            retries: Some(HEALTH_RETRIES),
            ..Default::default()
        }),
        host_config: Some(HostConfig {
            mounts: Some(vec![mount]),
            port_bindings: Some(port_bindings),
            network_mode: Some(network.to_owned()),
            nano_cpus: spec.nano_cpus,
            memory: spec.memory,
            cap_drop: Some(vec!["ALL".to_owned()]),
            cap_add: Some(KEPT_CAPABILITIES.map(str::to_owned).to_vec()),
            security_opt: Some(vec!["no-new-privileges:true".to_owned()]),
            pids_limit: Some(PIDS_LIMIT),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::Provisioned;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_memory("512m").unwrap(), 512 << 20);
        assert_eq!(parse_memory("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_memory("2G").unwrap(), 2 << 30);
        assert_eq!(parse_memory("2gb").unwrap(), 2 << 30);
        assert_eq!(parse_memory("64k").unwrap(), 64 << 10);
        assert_eq!(parse_memory("100b").unwrap(), 100);
        for bad in ["", "m", "1.5g", "-1", "0", "12x", "9999999999999t"] {
            let err = parse_memory(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid memory size"), "{bad}: {err}");
        }
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("1").unwrap(), 1_000_000_000);
        assert_eq!(parse_cpus("0.5").unwrap(), 500_000_000);
        assert_eq!(parse_cpus("1.25").unwrap(), 1_250_000_000);
        for bad in ["0", "-1", "nan", "inf", "x", "4096"] {
            assert!(parse_cpus(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn volume_names() {
        for ok in ["sessionfs-web", "data_1", "a.b"] {
            check_volume_name(ok).unwrap();
        }
        for bad in ["", "a", "-x", "a/b", "../x", "a b"] {
            assert!(check_volume_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn container_request() {
        let home = Home::new("/state").unwrap();
        let id: SessionId = "web".parse().unwrap();
        let spec = ContainerSpec {
            image: "img:1".into(),
            nano_cpus: Some(500_000_000),
            memory: Some(256 << 20),
            workspace: WorkspaceSource::Volume("sessionfs-web".into()),
            env: vec![("A".into(), "b=c".into())],
        };
        let body = container_body(&id, &spec, "/sessionfsd", object_labels(&home, &id), "net1");
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["HostConfig"]["NetworkMode"], "net1");
        assert_eq!(
            json["Cmd"],
            serde_json::json!([
                "--session-id",
                "web",
                "--cert-dir",
                "/run/sessionfs",
                "--root",
                "/workspace",
                "--listen",
                "0.0.0.0:7878"
            ])
        );
        assert_eq!(
            json["Healthcheck"]["Test"],
            serde_json::json!([
                "CMD",
                "/sessionfsd",
                "--health",
                "--session-id",
                "web",
                "--cert-dir",
                "/run/sessionfs",
                "--listen",
                "0.0.0.0:7878"
            ])
        );
        assert_eq!(json["Healthcheck"]["Interval"], 2_000_000_000i64);
        assert_eq!(json["Healthcheck"]["Timeout"], 2_000_000_000i64);
        assert_eq!(json["Healthcheck"]["Retries"], 3);
        assert_eq!(json["ExposedPorts"], serde_json::json!({"7878/udp": {}}));
        assert_eq!(json["Env"], serde_json::json!(["NO_COLOR=1", "A=b=c"]));
        assert_eq!(json["Labels"]["sessionfs.session"], "web");
        assert_eq!(json["Labels"]["sessionfs.managed"], "1");
        assert_eq!(json["Labels"]["sessionfs.home"], "/state");
        let host = &json["HostConfig"];
        assert_eq!(host["NanoCpus"], 500_000_000i64);
        assert_eq!(host["Memory"], 256i64 << 20);
        assert_eq!(host["RestartPolicy"]["Name"], "unless-stopped");
        assert_eq!(host["CapDrop"], serde_json::json!(["ALL"]));
        assert_eq!(host["CapAdd"], serde_json::json!(KEPT_CAPABILITIES));
        assert_eq!(
            host["SecurityOpt"],
            serde_json::json!(["no-new-privileges:true"])
        );
        assert_eq!(host["PidsLimit"], PIDS_LIMIT);
        assert_eq!(
            host["PortBindings"]["7878/udp"],
            serde_json::json!([{"HostIp": "127.0.0.1", "HostPort": ""}])
        );
        assert_eq!(
            host["Mounts"],
            serde_json::json!([{"Target": "/workspace", "Source": "sessionfs-web", "Type": "volume"}])
        );
    }

    #[test]
    fn spec_survives_the_record() {
        let spec = ContainerSpec {
            image: "img:1".into(),
            nano_cpus: Some(1_500_000_000),
            memory: Some(2 << 30),
            workspace: WorkspaceSource::Volume("vol".into()),
            env: vec![("A".into(), "b=c".into()), ("EMPTY".into(), String::new())],
        };
        let provisioned = Provisioned {
            container: "sessionfs-web".into(),
            container_id: "abc".into(),
            image: spec.image.clone(),
            workspace: spec.workspace.clone(),
            volume_created: true,
            endpoint: "127.0.0.1:4000".parse().unwrap(),
            pid: Some(4321),
        };
        let mut record = SessionRecord::new(
            "web".parse().unwrap(),
            sessionfs_registry::Backend::Docker,
            "x".into(),
        );
        record.labels.extend(provisioned.record_labels());
        record.labels.extend(spec.record_labels());
        let back = ContainerSpec::from_record(&record, None).unwrap();
        assert_eq!(back.image, "img:1");
        assert_eq!(back.nano_cpus, spec.nano_cpus);
        assert_eq!(back.memory, spec.memory);
        assert_eq!(back.workspace, spec.workspace);
        assert_eq!(back.env, spec.env);
        assert_eq!(
            ContainerSpec::from_record(&record, Some("img:2"))
                .unwrap()
                .image,
            "img:2"
        );
        // Without limits or environment nothing is recorded, and nothing comes back.
        record
            .labels
            .retain(|k, _| ![RECORD_NANO_CPUS, RECORD_MEMORY, RECORD_ENV].contains(&k.as_str()));
        let plain = ContainerSpec::from_record(&record, None).unwrap();
        assert_eq!(
            (plain.nano_cpus, plain.memory, plain.env.len()),
            (None, None, 0)
        );
        record.labels.insert(RECORD_MEMORY.into(), "lots".into());
        assert!(ContainerSpec::from_record(&record, None).is_err());
        record.labels.clear();
        assert!(ContainerSpec::from_record(&record, None).is_err());
    }
}
