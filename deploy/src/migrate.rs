//! `sessionfs session migrate <id> --to local|docker|kubernetes`: moves a session between backends
//! on this host, every pair the same way: copied daemon to daemon over the protocol
//! ([`crate::transfer`], as between hosts), verified, switched.
//!
//! The steps, each named in errors:
//! 1. **stop-source** — the record is fenced: `stopped`, label `migrating.to` (the mount answers
//!    ENOTCONN meanwhile, and the Kubernetes follower leaves it alone); the source daemon keeps
//!    serving the copy (a stopped session's daemon is started for it). Only the mount is fenced:
//!    stop writers inside the session first.
//! 2. **copy** — a target daemon is started on an empty workspace (a local directory, default
//!    `<state>/sessions/<id>/workspace-migrated`; a container on a new volume `sessionfs-<id>`; a
//!    pod on a new claim) with the session's certificate, and every node is copied to it.
//! 3. **verify** — both trees are read again through their daemons and compared (paths, kinds,
//!    permission bits, sizes, SHA-256, symlink targets).
//! 4. **switch** — the record is rewritten for the target (backend, endpoint, labels, workspace).
//!
//! A failure up to and including the switch removes what the migration made (the target daemon,
//! container, pod, volume, claim, directory contents) and restores the record; a source started
//! for the copy is stopped again. The session stays where it was, serving the same data. After the
//! switch the source runtime is removed (a leftover is reported, not undone) and its data kept
//! unless `--purge-source`. The state directory's lock is held throughout, so no other `sessionfs`
//! command changes the session meanwhile.
//!
//! For tests only, [`FAIL_ENV`] (`SESSIONFS_MIGRATE_FAIL_AFTER=copy|verify|switch`) makes the
//! migration fail right after that step, to exercise the rollback.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sessionfs_registry::{
    Backend, InvalidSessionId, Registry, SessionId, SessionRecord, SessionState, CERT_PIN_LABEL,
    OWNER_LABEL,
};
use tracing::{info, warn};

use crate::docker::{self, ContainerSpec, Engine, Provisioned, WorkspaceSource};
use crate::image::ImageError;
use crate::k8s::{self, Cluster, PodOptions};
use crate::move_host::MIGRATING_LABEL;
use crate::state::{Home, StateError};
use crate::transfer::{self, Peer};

/// Test-only failure injection: `copy`, `verify` or `switch` makes the migration fail right
/// after that step (and roll back). Not for production use.
pub const FAIL_ENV: &str = "SESSIONFS_MIGRATE_FAIL_AFTER";

/// The name of the default target directory of a migration to local, in `sessions/<id>/`.
pub const MIGRATED_DIR: &str = "workspace-migrated";

/// How long one request of the copy may take.
const CALL_BOUND: Duration = Duration::from_secs(60);

/// A step of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Fencing the record (and starting a stopped source for the copy).
    StopSource,
    /// Starting the target and copying the workspace to it.
    Copy,
    /// Comparing the copy with the source.
    Verify,
    /// Rewriting the registry entry.
    Switch,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Copy => "copy",
            Step::Verify => "verify",
            Step::Switch => "switch",
            Step::StopSource => "stop-source",
        })
    }
}

/// Errors of `session migrate`.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The session id is not valid.
    #[error(transparent)]
    InvalidId(#[from] InvalidSessionId),
    /// No such session.
    #[error("no session `{0}`")]
    NotFound(SessionId),
    /// The migration cannot start; nothing was changed.
    #[error("cannot migrate session `{id}`: {reason}")]
    Refused {
        /// The session.
        id: SessionId,
        /// Why.
        reason: String,
    },
    /// The state directory.
    #[error(transparent)]
    State(#[from] StateError),
    /// The image reference.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A step failed; everything the migration created was removed again.
    #[error(
        "migration of session `{id}` to {to} failed at step {step}: {reason}; rolled back, the \
         session is still a {from} session serving its data"
    )]
    Failed {
        /// The session.
        id: SessionId,
        /// Its (unchanged) backend.
        from: Backend,
        /// The target backend.
        to: Backend,
        /// The step that failed.
        step: Step,
        /// What went wrong.
        reason: String,
    },
}

/// Arguments of `session migrate`.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// The session.
    pub id: String,
    /// The target backend.
    pub to: Backend,
    /// `--to docker|kubernetes`: the session image (default [`crate::image::DEFAULT_TAG`]).
    pub image: Option<String>,
    /// `--to local`: the new workspace directory (must not exist, or be empty).
    pub dir: Option<PathBuf>,
    /// Delete the source data (directory, volume or claim) after a successful migration.
    pub purge_source: bool,
    /// `--to kubernetes`: the namespace (default: the kubeconfig context's).
    pub namespace: Option<String>,
    /// `--to kubernetes`: the kubeconfig context (default: the current one).
    pub context: Option<String>,
}

/// What `session migrate` did.
#[derive(Debug, Clone)]
pub struct Migrated {
    /// The session's new record.
    pub record: SessionRecord,
    /// The backend it left.
    pub from: Backend,
    /// How many paths were verified.
    pub verified: usize,
    /// The source data, in words (`directory /x`, `volume v`, `claim ns/name`).
    pub source: String,
    /// Whether the source data was deleted (`--purge-source`).
    pub purged: bool,
    /// Source runtime the migration could not clean up after the switch (the migration
    /// succeeded; this is left for the user), in words.
    pub leftover: Option<String>,
}

impl fmt::Display for Migrated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.record;
        let endpoint = r.endpoint.map_or_else(|| "-".to_owned(), |e| e.to_string());
        let workspace = crate::commands::workspace_text(r);
        write!(
            f,
            "migrated session {} from {} to {} at {endpoint} serving {workspace} ({} paths verified)",
            r.id, self.from, r.backend, self.verified
        )?;
        if let Some(leftover) = &self.leftover {
            write!(f, "\nnot cleaned up: {leftover}")?;
        }
        if self.purged {
            write!(f, "\ndeleted the source {}", self.source)
        } else {
            write!(
                f,
                "\nkept the source {} (use --purge-source to delete it)",
                self.source
            )
        }
    }
}

/// [`FAIL_ENV`]: an error right after `step` if asked for.
fn injected(step: Step) -> Result<(), String> {
    match std::env::var(FAIL_ENV) {
        Ok(v) if v == step.to_string() => Err(format!("failure injected by {FAIL_ENV}={v}")),
        _ => Ok(()),
    }
}

/// `session migrate`: see the module documentation.
pub fn migrate(home: &Home, opts: &MigrateOptions) -> Result<Migrated, MigrateError> {
    let id = SessionId::from_str(&opts.id)?;
    let refuse = |reason: String| MigrateError::Refused {
        id: id.clone(),
        reason,
    };
    if let Ok(v) = std::env::var(FAIL_ENV) {
        if !v.is_empty() && !["copy", "verify", "switch"].contains(&v.as_str()) {
            return Err(refuse(format!(
                "{FAIL_ENV}={v:?} is not copy, verify or switch"
            )));
        }
    }
    if opts.to != Backend::Local && opts.dir.is_some() {
        return Err(refuse("--dir applies only to --to local".into()));
    }
    if opts.to == Backend::Local && opts.image.is_some() {
        return Err(refuse(
            "--image applies only to --to docker or --to kubernetes".into(),
        ));
    }
    if opts.to != Backend::Kubernetes && (opts.namespace.is_some() || opts.context.is_some()) {
        return Err(refuse(
            "--namespace and --context apply only to --to kubernetes".into(),
        ));
    }
    // The copy dials both daemons as this host's bridge (made under the lock, before it is held).
    home.ensure_bridge_cert()?;
    let registry = home.open_registry()?;
    let _lock = home.lock()?;
    let record = registry
        .get(&id)
        .map_err(|e| refuse(format!("session registry: {e}")))?
        .ok_or_else(|| MigrateError::NotFound(id.clone()))?;
    if record.elsewhere(&sessionfs_registry::this_host()) {
        return Err(refuse(format!(
            "it runs on host `{}`, not here: migrate it there",
            record.host().unwrap_or_default()
        )));
    }
    if record.backend == opts.to {
        return Err(refuse(format!("it already uses the {} backend", opts.to)));
    }
    if let Ok(pod) = k8s::record_options(&record) {
        if let Some(attach) = pod.attach {
            return Err(refuse(format!(
                "it is a sidecar of deployment {}, serving the workload's own volume: copy what \
                 you need into a new session instead",
                attach.deployment
            )));
        }
    }
    Migration {
        home,
        registry: &registry,
        record: &record,
        opts,
    }
    .run()
}

/// Where the copy goes, checked before anything changes.
enum Plan {
    Local(PathBuf),
    Docker(Engine, String),
    Kubernetes(Box<(Cluster, PodOptions)>),
}

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

    /// Removes what was made.
    fn discard(self, id: &SessionId) {
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
                } else if let Err(e) = empty_dir(&dir) {
                    warn!(session = %id, dir = %dir.display(), error = %e, "cannot empty the target directory");
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

    /// `r` rewritten for this target, its files owned by `owner`.
    fn switch(&self, r: &mut SessionRecord, id: &SessionId, owner: &str) {
        r.labels.remove(MIGRATING_LABEL);
        r.labels.insert(OWNER_LABEL.to_owned(), owner.to_owned());
        if let Target::Local {
            record: started, ..
        } = self
        {
            // As its daemon was started: files belong to whoever makes them.
            r.labels.remove(OWNER_LABEL);
            if let Some(owner) = started.labels.get(OWNER_LABEL) {
                r.labels.insert(OWNER_LABEL.to_owned(), owner.clone());
            }
        }
        r.labels
            .retain(|k, _| !k.starts_with("docker.") && !k.starts_with("k8s."));
        r.state = SessionState::Running;
        r.endpoint = self.endpoint();
        r.pid = None;
        r.workspace = None;
        match self {
            Target::Local {
                record: started,
                dir,
                ..
            } => {
                r.backend = Backend::Local;
                r.workspace = Some(dir.clone());
                r.pid = started.pid;
            }
            Target::Docker {
                provisioned, spec, ..
            } => {
                r.backend = Backend::Docker;
                r.pid = provisioned.pid;
                r.labels.extend(provisioned.record_labels());
                r.labels.extend(spec.record_labels());
            }
            Target::Kubernetes { opts: pod, .. } => {
                r.backend = Backend::Kubernetes;
                if let Ok(spec) = k8s::spec_label(pod) {
                    r.labels.insert(k8s::RECORD_SPEC.to_owned(), spec);
                }
                r.labels
                    .insert(k8s::RECORD_NAMESPACE.to_owned(), pod.namespace.clone());
                r.labels
                    .insert(k8s::RECORD_POD.to_owned(), k8s::object_name(id));
            }
        }
    }
}

/// Empties `dir` (it was empty before the copy).
fn empty_dir(dir: &std::path::Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// A source daemon the migration started for the copy (the session was stopped): stopped again
/// on a rollback, and the one removed after the switch.
enum Started {
    Local(SessionRecord),
    Docker,
    Kubernetes,
}

struct Migration<'a> {
    home: &'a Home,
    registry: &'a Registry,
    record: &'a SessionRecord,
    opts: &'a MigrateOptions,
}

impl Migration<'_> {
    fn refuse(&self, reason: impl fmt::Display) -> MigrateError {
        MigrateError::Refused {
            id: self.record.id.clone(),
            reason: reason.to_string(),
        }
    }

    /// The target's backend reached and its names checked, before anything changes.
    fn plan(&self, owner: &str) -> Result<Plan, MigrateError> {
        let (id, opts) = (&self.record.id, self.opts);
        Ok(match opts.to {
            Backend::Local => {
                let dir = opts
                    .dir
                    .clone()
                    .unwrap_or_else(|| self.home.session_dir(id).join(MIGRATED_DIR));
                if let Some(parent) = dir.parent() {
                    if !parent.is_dir() && opts.dir.is_some() {
                        return Err(self.refuse(format!("{} does not exist", parent.display())));
                    }
                }
                if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
                    return Err(self.refuse(format!(
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
                let engine = Engine::connect().map_err(|e| self.refuse(e))?;
                engine
                    .session_image_daemon(&image)
                    .map_err(|e| self.refuse(e))?;
                let volume = docker::volume_name(id);
                if engine.volume_exists(&volume).map_err(|e| self.refuse(e))? {
                    return Err(self.refuse(format!(
                        "the volume {volume} exists already (remove it first)"
                    )));
                }
                let container = docker::container_name(id);
                if engine
                    .inspect_container(&container)
                    .map_err(|e| self.refuse(e))?
                    .is_some()
                {
                    return Err(self.refuse(format!(
                        "the container {container} exists already (remove it first)"
                    )));
                }
                Plan::Docker(engine, image)
            }
            Backend::Kubernetes => {
                let installation = k8s::installation(self.home)?;
                let cluster = Cluster::connect(opts.context.as_deref(), opts.namespace.as_deref())
                    .map_err(|e| self.refuse(e))?
                    .owned_by(&installation);
                let mut pod = PodOptions::new(cluster.namespace());
                pod.context = opts.context.clone();
                if let Some(image) = &opts.image {
                    crate::image::check_reference(image)?;
                    pod.image = image.clone();
                }
                pod.owner = owner.to_owned();
                if cluster.has_claim(id).map_err(|e| self.refuse(e))? {
                    return Err(self.refuse(format!(
                        "the claim {}/{} exists already (a copy needs an empty one: delete it first)",
                        cluster.namespace(),
                        k8s::object_name(id)
                    )));
                }
                Plan::Kubernetes(Box::new((cluster, pod)))
            }
        })
    }

    /// The source daemon's address, starting it if the session is not running.
    fn source(&self) -> Result<(SocketAddr, Option<Started>), String> {
        let record = self.record;
        if let (SessionState::Running, Some(addr)) = (record.state, record.endpoint) {
            return Ok((addr, None));
        }
        match record.backend {
            Backend::Local => {
                let started = crate::local::start(self.home, record).map_err(|e| e.to_string())?;
                let addr = started
                    .endpoint
                    .ok_or("the source daemon reported no endpoint")?;
                Ok((addr, Some(Started::Local(started))))
            }
            Backend::Docker => {
                let engine = Engine::connect().map_err(|e| e.to_string())?;
                let (published, was_running) = engine
                    .start_with(self.home, record, None)
                    .map_err(|e| e.to_string())?;
                // Stopped again on a rollback only if this started it.
                Ok((
                    published.endpoint,
                    (!was_running).then_some(Started::Docker),
                ))
            }
            Backend::Kubernetes => {
                let (cluster, pod) =
                    Cluster::for_record(self.home, record).map_err(|e| e.to_string())?;
                let installation = k8s::installation(self.home).map_err(|e| e.to_string())?;
                let made = cluster
                    .live_pod(&record.id)
                    .map_err(|e| e.to_string())?
                    .is_none();
                if made {
                    cluster
                        .create_pod(&record.id, &installation, &pod)
                        .map_err(|e| e.to_string())?;
                }
                let addr = cluster
                    .wait_ready(&record.id, pod.reach, k8s::READY_TIMEOUT)
                    .map_err(|e| e.to_string())?;
                // Deleted again on a rollback only if this made it.
                Ok((addr, made.then_some(Started::Kubernetes)))
            }
        }
    }

    /// Stops a source daemon started for the copy again (rollback).
    fn stop_started(&self, started: Started) {
        let record = self.record;
        let stopped = match started {
            Started::Local(running) => crate::local::stop(&running)
                .map(drop)
                .map_err(|e| e.to_string()),
            Started::Docker => Engine::connect()
                .and_then(|engine| engine.stop(record))
                .map(drop)
                .map_err(|e| e.to_string()),
            Started::Kubernetes => Cluster::for_record(self.home, record)
                .and_then(|(cluster, _)| cluster.delete_pod(&record.id))
                .map(drop)
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = stopped {
            warn!(session = %record.id, error = %e, "rollback: cannot stop the source daemon started for the copy");
        }
    }

    /// A target daemon on an empty workspace.
    fn make_target(&self, plan: Plan, owner: &str) -> Result<Target, String> {
        let (home, id) = (self.home, &self.record.id);
        Ok(match plan {
            Plan::Local(dir) => {
                let made_dir = !dir.exists();
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("create {}: {e}", dir.display()))?;
                let mut new = self.record.clone();
                new.backend = Backend::Local;
                new.workspace = Some(dir.clone());
                new.labels
                    .retain(|k, _| !k.starts_with("docker.") && !k.starts_with("k8s."));
                // Out of a container the workspace owner is the migrating user (the copy makes its
                // files theirs): the local daemon gives files to whoever makes them, as a local
                // session made without `--owner` does.
                if self.record.backend != Backend::Local {
                    new.labels.remove(OWNER_LABEL);
                }
                match crate::local::start(home, &new) {
                    Ok(started) => Target::Local {
                        record: started,
                        dir,
                        made_dir,
                    },
                    Err(e) => {
                        if made_dir {
                            let _ = std::fs::remove_dir_all(&dir);
                        }
                        return Err(e.to_string());
                    }
                }
            }
            Plan::Docker(engine, image) => {
                let spec = ContainerSpec {
                    image,
                    nano_cpus: None,
                    memory: None,
                    workspace: WorkspaceSource::Volume(docker::volume_name(id)),
                    env: vec![(crate::commands::OWNER_ENV.to_owned(), owner.to_owned())],
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
                let (cluster, mut pod) = *planned;
                let installation = k8s::installation(home).map_err(|e| e.to_string())?;
                let made = cluster
                    .provision(home, id, &installation, &mut pod)
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
        })
    }

    /// Copies the source's tree to the target and compares both; how many paths it verified.
    fn copy_and_verify(
        &self,
        source: SocketAddr,
        target: SocketAddr,
        step: &std::cell::Cell<Step>,
    ) -> Result<usize, String> {
        let record = self.record;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let pin = record.labels.get(CERT_PIN_LABEL).map(String::as_str);
        runtime.block_on(async {
            let endpoint = transfer::bridge_endpoint(&self.home.pki_dir())?;
            let from = Peer::dial(
                &endpoint,
                source,
                record.id.as_str(),
                &record.cert_identity,
                pin,
                &format!("the {} session", record.backend),
                CALL_BOUND,
            )
            .await?;
            let mut copy = Peer::dial(
                &endpoint,
                target,
                record.id.as_str(),
                &record.cert_identity,
                pin,
                &format!("the {} copy", self.opts.to),
                CALL_BOUND,
            )
            .await?;
            // Out of a container, the workspace owner's files become the migrating user's (as
            // `--map-owner` shows them), not those of whatever host account has that uid.
            if self.opts.to == Backend::Local && record.backend != Backend::Local {
                if let Some(owner) = record
                    .labels
                    .get(OWNER_LABEL)
                    .and_then(|o| crate::commands::owner_ids(o))
                {
                    let me = (
                        rustix::process::geteuid().as_raw(),
                        rustix::process::getegid().as_raw(),
                    );
                    copy = copy.map_owner(owner, me);
                }
            }
            let copied = transfer::copy_tree(&from, &copy).await?;
            info!(session = %record.id, nodes = copied, "copied");
            injected(Step::Copy)?;
            step.set(Step::Verify);
            let (a, b) = (
                transfer::manifest(&from).await?,
                transfer::manifest(&copy).await?,
            );
            crate::manifest::compare(
                &a,
                &b,
                &format!("the {} session", record.backend),
                "the copy",
            )
            .map_err(|e| format!("the copy differs from the source: {e}"))?;
            endpoint.close(0u32.into(), b"migration done");
            injected(Step::Verify)?;
            // The paths of the tree, its root not counted.
            Ok(a.len().saturating_sub(1))
        })
    }

    fn run(self) -> Result<Migrated, MigrateError> {
        let (record, opts, id) = (self.record, self.opts, &self.record.id);
        let owner = record
            .labels
            .get(OWNER_LABEL)
            .cloned()
            .unwrap_or_else(|| crate::commands::DEFAULT_DOCKER_OWNER.to_owned());
        let plan = self.plan(&owner)?;

        // stop-source: the mount is fenced off; the source daemon serves the copy.
        let step = std::cell::Cell::new(Step::StopSource);
        self.registry
            .modify(id, |r| {
                r.state = SessionState::Stopped;
                r.endpoint = None;
                r.labels
                    .insert(MIGRATING_LABEL.to_owned(), opts.to.to_string());
            })
            .map_err(|e| self.refuse(format!("cannot fence the record: {e}")))?;
        let mut started: Option<Started> = None;
        let mut target: Option<Target> = None;
        let result = (|| -> Result<usize, String> {
            let (source_addr, source_started) = self.source()?;
            started = source_started;
            step.set(Step::Copy);
            let made = self.make_target(plan, &owner)?;
            let target_addr = made
                .endpoint()
                .ok_or("the new daemon reported no endpoint")?;
            target = Some(made);
            let verified = self.copy_and_verify(source_addr, target_addr, &step)?;
            step.set(Step::Switch);
            let made = target.as_ref().ok_or("no target")?;
            self.registry
                .modify(id, |r| made.switch(r, id, &owner))
                .map_err(|e| e.to_string())?;
            injected(Step::Switch)?;
            Ok(verified)
        })();
        let verified = match result {
            Ok(verified) => verified,
            Err(reason) => {
                warn!(session = %id, step = %step.get(), %reason, "migration failed; rolling back");
                if let Some(target) = target {
                    target.discard(id);
                }
                if let Some(started) = started {
                    self.stop_started(started);
                }
                if let Err(e) = self.registry.modify(id, |r| *r = record.clone()) {
                    warn!(session = %id, error = %e, "rollback: cannot restore the session's record");
                }
                return Err(MigrateError::Failed {
                    id: id.clone(),
                    from: record.backend,
                    to: opts.to,
                    step: step.get(),
                    reason,
                });
            }
        };
        // After the switch: the source goes, its data kept unless purged.
        let running = match &started {
            Some(Started::Local(running)) => running.clone(),
            _ => record.clone(),
        };
        let (source, leftover, purged) = self.remove_source(&running);
        let new = self
            .registry
            .get(id)
            .ok()
            .flatten()
            .unwrap_or_else(|| record.clone());
        info!(session = %id, from = %record.backend, to = %opts.to, "migrated");
        Ok(Migrated {
            record: new,
            from: record.backend,
            verified,
            source,
            purged,
            leftover,
        })
    }

    /// Stops and removes the source after the switch (`running`: its record with the daemon that
    /// served the copy): its data in words, what could not be cleaned up, whether the data was
    /// deleted (`--purge-source`).
    fn remove_source(&self, running: &SessionRecord) -> (String, Option<String>, bool) {
        let (home, purge, id) = (self.home, self.opts.purge_source, &running.id);
        match running.backend {
            Backend::Local => {
                let dir = running.workspace.clone().unwrap_or_default();
                let leftover = crate::local::stop(running)
                    .err()
                    .map(|e| format!("the old daemon: {e}"));
                let mut purged = false;
                if purge {
                    match crate::commands::check_purge(home, &dir) {
                        Ok(()) => match std::fs::remove_dir_all(&dir) {
                            Ok(()) => purged = true,
                            Err(e) => {
                                warn!(path = %dir.display(), error = %e, "cannot delete the source")
                            }
                        },
                        Err(e) => warn!(error = %e, "not deleting the source"),
                    }
                }
                (format!("directory {}", dir.display()), leftover, purged)
            }
            Backend::Docker => {
                let container = docker::record_container(running);
                let volume = running
                    .labels
                    .get(docker::RECORD_VOLUME)
                    .cloned()
                    .unwrap_or_else(|| docker::volume_name(id));
                match Engine::connect().and_then(|engine| engine.remove(running, purge)) {
                    Ok(removal) => (
                        format!("volume {volume}"),
                        None,
                        removal.volume.is_some_and(|(_, deleted)| deleted),
                    ),
                    Err(e) => (
                        format!("volume {volume}"),
                        Some(format!("container {container}: {e}")),
                        false,
                    ),
                }
            }
            Backend::Kubernetes => {
                let name = k8s::object_name(id);
                match Cluster::for_record(self.home, running).and_then(|(cluster, opts)| {
                    cluster
                        .remove(id, purge)
                        .map(|removed| (removed, opts.namespace))
                }) {
                    Ok((removed, namespace)) => {
                        (format!("claim {namespace}/{name}"), None, removed.claim)
                    }
                    Err(e) => (
                        format!("claim {name}"),
                        Some(format!("pod {name}: {e}")),
                        false,
                    ),
                }
            }
        }
    }
}
