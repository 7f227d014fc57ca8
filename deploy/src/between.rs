//! `session migrate ID --to kubernetes|docker|local` for a session on either side of Kubernetes:
//! copied daemon to daemon over the protocol ([`crate::transfer`]), as between hosts, because a
//! pod's workspace is reachable only through its daemon.
//!
//! 1. **stop-source** — the record is marked `stopped` with [`MIGRATING_LABEL`] (the mount
//!    answers ENOTCONN meanwhile, and the Kubernetes follower leaves it alone); the source daemon
//!    keeps running for the copy. Stop writers inside the session first: only the mount is fenced.
//! 2. **copy** — a target daemon is started on an empty workspace (a local directory, a docker
//!    container on a new volume, or a pod on a new claim), with the session's certificate, and
//!    every node is copied to it.
//! 3. **verify** — both trees are read again through their daemons and compared (paths, kinds,
//!    modes, sizes, SHA-256, symlink targets).
//! 4. **switch** — the record is rewritten for the target; then the source is removed (its data
//!    kept unless `--purge-source`).
//!
//! Any failure up to the switch removes what the target made and restores the record, so the
//! session stays where it was, serving the same data.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sessionfs_registry::{Backend, SessionRecord, SessionState, CERT_PIN_LABEL, OWNER_LABEL};
use tracing::{info, warn};

use crate::docker::{self, ContainerSpec, Engine, Provisioned, WorkspaceSource};
use crate::k8s::{self, Cluster, PodOptions};
use crate::migrate::{MigrateError, MigrateOptions, Migrated, MIGRATED_DIR};
use crate::move_host::MIGRATING_LABEL;
use crate::state::Home;
use crate::transfer::{self, Peer};

/// How long one request of the copy may take.
const CALL_BOUND: Duration = Duration::from_secs(60);

/// A target made for the copy, to switch to or to remove again.
enum Target {
    Local {
        record: SessionRecord,
        dir: PathBuf,
        made_dir: bool,
    },
    Docker {
        engine: Engine,
        provisioned: Provisioned,
        spec: ContainerSpec,
    },
    Kubernetes {
        cluster: Cluster,
        made: k8s::Provisioned,
        opts: PodOptions,
        endpoint: SocketAddr,
    },
}

impl Target {
    fn endpoint(&self) -> Option<SocketAddr> {
        match self {
            Target::Local { record, .. } => record.endpoint,
            Target::Docker { provisioned, .. } => Some(provisioned.endpoint),
            Target::Kubernetes { endpoint, .. } => Some(*endpoint),
        }
    }

    /// Removes what was made (before the switch).
    fn discard(self, id: &sessionfs_registry::SessionId) {
        match self {
            Target::Local {
                record,
                dir,
                made_dir,
            } => {
                if let Err(e) = crate::local::stop(&record) {
                    warn!(session = %id, error = %e, "cannot stop the migration's daemon");
                }
                if made_dir {
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
            Target::Docker {
                engine,
                provisioned,
                ..
            } => engine.discard(&provisioned),
            Target::Kubernetes { cluster, made, .. } => cluster.discard(id, &made),
        }
    }
}

/// The migration of `record` to `opts.to`, one side of which is Kubernetes.
pub(crate) fn migrate(
    home: &Home,
    registry: &sessionfs_registry::Registry,
    record: &SessionRecord,
    opts: &MigrateOptions,
) -> Result<Migrated, MigrateError> {
    let id = &record.id;
    let refuse = |reason: String| MigrateError::Refused {
        id: id.clone(),
        reason,
    };
    let source_addr = match (record.state, record.endpoint) {
        (SessionState::Running, Some(addr)) => addr,
        _ => {
            return Err(refuse(format!(
                "it is {}: the copy reads its running daemon, start it first (`sessionfs session start {id}`)",
                record.state
            )))
        }
    };
    // Reach the target's backend before anything changes.
    enum Plan {
        Local(PathBuf),
        Docker(Engine, String),
        Kubernetes(Box<(Cluster, PodOptions)>),
    }
    let owner = record
        .labels
        .get(OWNER_LABEL)
        .cloned()
        .unwrap_or_else(|| crate::commands::DEFAULT_DOCKER_OWNER.to_owned());
    let plan = match opts.to {
        Backend::Local => {
            let dir = opts
                .dir
                .clone()
                .unwrap_or_else(|| home.session_dir(id).join(MIGRATED_DIR));
            let busy = std::fs::read_dir(&dir).map(|mut d| d.next().is_some());
            if matches!(busy, Ok(true)) {
                return Err(refuse(format!(
                    "{} exists and is not empty: give another with --dir DIR",
                    dir.display()
                )));
            }
            Plan::Local(dir)
        }
        Backend::Docker => {
            let image = opts
                .image
                .clone()
                .unwrap_or_else(|| crate::image::DEFAULT_TAG.to_owned());
            crate::image::check_reference(&image)?;
            let engine = Engine::connect().map_err(|e| refuse(e.to_string()))?;
            engine
                .session_image_daemon(&image)
                .map_err(|e| refuse(e.to_string()))?;
            let volume = docker::volume_name(id);
            if engine
                .volume_exists(&volume)
                .map_err(|e| refuse(e.to_string()))?
            {
                return Err(refuse(format!(
                    "the volume {volume} exists already (remove it first)"
                )));
            }
            Plan::Docker(engine, image)
        }
        Backend::Kubernetes => {
            let cluster = Cluster::connect(opts.context.as_deref(), opts.namespace.as_deref())
                .map_err(|e| refuse(e.to_string()))?;
            let mut pod = PodOptions::new(cluster.namespace());
            pod.context = opts.context.clone();
            if let Some(image) = &opts.image {
                crate::image::check_reference(image)?;
                pod.image = image.clone();
            }
            pod.owner = owner.clone();
            if cluster.has_claim(id).map_err(|e| refuse(e.to_string()))? {
                return Err(refuse(format!(
                    "the claim {}/{} exists already (a copy needs an empty one: delete it first)",
                    cluster.namespace(),
                    k8s::object_name(id)
                )));
            }
            Plan::Kubernetes(Box::new((cluster, pod)))
        }
    };

    // 1. stop-source: the mount is fenced off; the source daemon keeps serving the copy.
    let fence = |r: &mut SessionRecord| {
        r.state = SessionState::Stopped;
        r.endpoint = None;
        r.labels
            .insert(MIGRATING_LABEL.to_owned(), opts.to.to_string());
    };
    registry
        .modify(id, fence)
        .map_err(|e| refuse(format!("cannot fence the record: {e}")))?;
    let restore = || {
        if let Err(e) = registry.modify(id, |r| *r = record.clone()) {
            warn!(session = %id, error = %e, "cannot restore the session's record");
        }
    };
    let step = std::cell::Cell::new("copy");
    let mut target: Option<Target> = None;
    let result = (|| -> Result<usize, String> {
        // 2. copy: a target daemon on an empty workspace.
        target = Some(match plan {
            Plan::Local(dir) => {
                let made_dir = !dir.exists();
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("create {}: {e}", dir.display()))?;
                let mut new = record.clone();
                new.backend = Backend::Local;
                new.workspace = Some(dir.clone());
                new.labels
                    .retain(|k, _| !k.starts_with("docker.") && !k.starts_with("k8s."));
                let started = crate::local::start(home, &new).map_err(|e| e.to_string())?;
                Target::Local {
                    record: started,
                    dir,
                    made_dir,
                }
            }
            Plan::Docker(engine, image) => {
                let spec = ContainerSpec {
                    image,
                    nano_cpus: None,
                    memory: None,
                    workspace: WorkspaceSource::Volume(docker::volume_name(id)),
                    env: vec![(crate::commands::OWNER_ENV.to_owned(), owner.clone())],
                };
                let provisioned = engine
                    .provision(home, id, &spec)
                    .map_err(|e| e.to_string())?;
                let ready = engine.wait_ready(
                    home,
                    id,
                    &provisioned.container,
                    provisioned.endpoint,
                    docker::READY_TIMEOUT,
                );
                if let Err(e) = ready {
                    engine.discard(&provisioned);
                    return Err(e.to_string());
                }
                Target::Docker {
                    engine,
                    provisioned,
                    spec,
                }
            }
            Plan::Kubernetes(planned) => {
                let (cluster, pod) = *planned;
                let installation = k8s::installation(home).map_err(|e| e.to_string())?;
                let made = cluster
                    .provision(home, id, &installation, &pod)
                    .map_err(|e| e.to_string())?;
                match cluster.wait_ready(id, pod.reach, k8s::READY_TIMEOUT) {
                    Ok(endpoint) => Target::Kubernetes {
                        cluster,
                        made,
                        opts: pod,
                        endpoint,
                    },
                    Err(e) => {
                        cluster.discard(id, &made);
                        return Err(e.to_string());
                    }
                }
            }
        });
        let target_addr = target
            .as_ref()
            .and_then(Target::endpoint)
            .ok_or("the new daemon reported no endpoint")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let pin = record.labels.get(CERT_PIN_LABEL).map(String::as_str);
        let verified = runtime.block_on(async {
            let endpoint = transfer::bridge_endpoint(&home.pki_dir())?;
            let source = Peer::dial(
                &endpoint,
                source_addr,
                id.as_str(),
                &record.cert_identity,
                pin,
                &format!("source ({})", record.backend),
                CALL_BOUND,
            )
            .await?;
            let copy = Peer::dial(
                &endpoint,
                target_addr,
                id.as_str(),
                &record.cert_identity,
                pin,
                &format!("copy ({})", opts.to),
                CALL_BOUND,
            )
            .await?;
            let copied = transfer::copy_tree(&source, &copy).await?;
            info!(session = %id, nodes = copied, "copied");
            crate::migrate::injected(crate::migrate::Step::Copy)?;
            // 3. verify
            step.set("verify");
            let (a, b) = (
                transfer::manifest(&source).await?,
                transfer::manifest(&copy).await?,
            );
            crate::migrate::compare(
                &a,
                &b,
                &format!("the {} session", record.backend),
                "the copy",
            )
            .map_err(|e| format!("{e}"))?;
            endpoint.close(0u32.into(), b"migration done");
            Ok::<usize, String>(a.len())
        })?;
        crate::migrate::injected(crate::migrate::Step::Verify)?;
        // 4. switch
        step.set("switch");
        let made = target.as_ref().ok_or("no target")?;
        registry
            .modify(id, |r| {
                r.labels.remove(MIGRATING_LABEL);
                r.labels
                    .retain(|k, _| !k.starts_with("docker.") && !k.starts_with("k8s."));
                r.backend = opts.to;
                r.state = SessionState::Running;
                r.endpoint = made.endpoint();
                r.pid = None;
                r.workspace = None;
                match made {
                    Target::Local {
                        record: started,
                        dir,
                        ..
                    } => {
                        r.workspace = Some(dir.clone());
                        r.pid = started.pid;
                    }
                    Target::Docker {
                        provisioned, spec, ..
                    } => {
                        r.pid = provisioned.pid;
                        r.labels.extend(provisioned.record_labels());
                        r.labels.extend(spec.record_labels());
                    }
                    Target::Kubernetes { opts: pod, .. } => {
                        if let Ok(spec) = serde_json::to_string(pod) {
                            r.labels.insert(k8s::RECORD_SPEC.to_owned(), spec);
                        }
                        r.labels
                            .insert(k8s::RECORD_NAMESPACE.to_owned(), pod.namespace.clone());
                        r.labels
                            .insert(k8s::RECORD_POD.to_owned(), k8s::object_name(id));
                    }
                }
                r.labels.insert(OWNER_LABEL.to_owned(), owner.clone());
            })
            .map_err(|e| e.to_string())?;
        Ok(verified)
    })();
    let verified = match result {
        Ok(verified) => verified,
        Err(reason) => {
            if let Some(target) = target {
                target.discard(id);
            }
            restore();
            return Err(refuse(format!(
                "{} failed: {reason}; it stays on the {} backend",
                step.get(),
                record.backend
            )));
        }
    };
    // After the switch: the source goes, its data kept unless purged.
    let (source, leftover, purged) = remove_source(home, record, opts.purge_source);
    let record = registry
        .get(id)
        .ok()
        .flatten()
        .unwrap_or_else(|| record.clone());
    info!(session = %id, from = %record.backend, to = %opts.to, "migrated");
    Ok(Migrated {
        record,
        from: source.0,
        verified,
        source: source.1,
        purged,
        leftover,
    })
}

/// Stops and removes the source after the switch; (its backend and data in words), what could
/// not be cleaned up, whether the data was deleted.
fn remove_source(
    home: &Home,
    record: &SessionRecord,
    purge: bool,
) -> ((Backend, String), Option<String>, bool) {
    let id = &record.id;
    match record.backend {
        Backend::Local => {
            let dir = record.workspace.clone().unwrap_or_default();
            let leftover = crate::local::stop(record)
                .err()
                .map(|e| format!("the old daemon: {e}"));
            let mut purged = false;
            if purge {
                match crate::commands::check_purge(home, &dir) {
                    Ok(()) => purged = std::fs::remove_dir_all(&dir).is_ok(),
                    Err(e) => warn!(error = %e, "not deleting the source"),
                }
            }
            (
                (Backend::Local, format!("directory {}", dir.display())),
                leftover,
                purged,
            )
        }
        Backend::Docker => {
            let container = docker::record_container(record);
            let volume = record
                .labels
                .get(docker::RECORD_VOLUME)
                .cloned()
                .unwrap_or_default();
            match Engine::connect().and_then(|engine| engine.remove(record, purge)) {
                Ok(removal) => (
                    (Backend::Docker, format!("volume {volume}")),
                    None,
                    removal.volume.is_some_and(|(_, deleted)| deleted),
                ),
                Err(e) => (
                    (Backend::Docker, format!("volume {volume}")),
                    Some(format!("container {container}: {e}")),
                    false,
                ),
            }
        }
        Backend::Kubernetes => {
            let name = k8s::object_name(id);
            match Cluster::for_record(record).and_then(|(cluster, opts)| {
                cluster
                    .remove(id, purge)
                    .map(|removed| (removed, opts.namespace))
            }) {
                Ok((removed, namespace)) => (
                    (Backend::Kubernetes, format!("claim {namespace}/{name}")),
                    None,
                    removed.claim,
                ),
                Err(e) => (
                    (Backend::Kubernetes, format!("claim {name}")),
                    Some(format!("pod {name}: {e}")),
                    false,
                ),
            }
        }
    }
}
