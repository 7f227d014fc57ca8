//! `sessionfs session migrate <id> --to docker|local`: moves a session between the local and docker
//! backends (to and from Kubernetes: `between.rs`, over the protocol).
//!
//! The steps, each named in errors:
//! 1. **stop-source** — the source daemon process or container is stopped and the record marked
//!    `stopped` (the mount answers ENOTCONN for the duration), so nothing writes to the workspace
//!    while it is copied.
//! 2. **copy** — local→docker: a new volume `sessionfs-<id>` is filled by uploading a tar of the
//!    workspace into a helper container (`sessionfs-<id>-migrate`, created from the session image
//!    and never started); docker→local: the stopped container's `/workspace` is downloaded as a
//!    tar and unpacked into a new directory (default `<state>/sessions/<id>/workspace-migrated`;
//!    only its last component is created).
//! 3. **verify** — the copy is compared with an independent second read of the source
//!    (local→docker: the volume is downloaded and compared with the directory walked again;
//!    docker→local: `/workspace` is downloaded again and compared with the unpacked directory):
//!    the set of paths, each node's kind and mode, every regular file's size and SHA-256, every
//!    symlink's target. Archives are read strictly (short entry data or a missing end-of-archive
//!    marker fail).
//! 4. **switch** — the target runtime is started (container, or local daemon) and the registry
//!    entry is rewritten (backend, endpoint, labels, workspace).
//!
//! After the switch nothing is rolled back (the target may hold new writes): the old container
//! (docker→local) is removed if possible, else reported as not cleaned up. The source data
//! (directory or volume) is kept unless `--purge-source`.
//!
//! A failure up to the switch rolls back what the migration created (volume, helper and session
//! containers, target directory contents, registry change, new daemon) and restarts the source
//! as it was, so the session stays on its original backend, serving the same data. The state
//! directory's lock is held throughout, so no other `sessionfs` command changes the session
//! meanwhile.
//!
//! For tests only, [`FAIL_ENV`] (`SESSIONFS_MIGRATE_FAIL_AFTER=copy|verify|switch`) makes the
//! migration fail right after that step, to exercise the rollback.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures_util::StreamExt;
use sessionfs_registry::{
    Backend, InvalidSessionId, Registry, RegistryError, SessionId, SessionRecord, SessionState,
    OWNER_LABEL,
};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::docker::{
    self, ContainerSpec, ContainerStop, DockerError, Engine, Provisioned, WorkspaceSource,
};
use crate::file_error::{io_error, FileError};
use crate::image::{self, ImageError};
use crate::local::{self, LocalError};
use crate::state::{Home, StateError};

/// Test-only failure injection: `copy`, `verify` or `switch` makes the migration fail right
/// after that step (and roll back). Not for production use.
pub const FAIL_ENV: &str = "SESSIONFS_MIGRATE_FAIL_AFTER";

/// The name of the default target directory of a docker→local migration, in `sessions/<id>/`.
pub const MIGRATED_DIR: &str = "workspace-migrated";

/// Seconds one Docker API request of the copy may take.
const TRANSFER_TIMEOUT_SECS: u64 = 3600;

/// A step of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Copying the workspace to the target.
    Copy,
    /// Comparing the copy with the source.
    Verify,
    /// Starting the target and rewriting the registry entry.
    Switch,
    /// Stopping the source runtime.
    StopSource,
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

/// What went wrong inside a step.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A file operation.
    #[error(transparent)]
    Io(#[from] FileError),
    /// The Docker backend.
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// A Docker API call made by the migration itself.
    #[error("docker: cannot {action}: {source}")]
    Api {
        /// What was attempted.
        action: String,
        /// The engine's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// The local backend.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// The state directory.
    #[error(transparent)]
    State(#[from] StateError),
    /// The Docker client's runtime could not be created.
    #[error("cannot create a runtime for the Docker client: {0}")]
    Runtime(#[source] std::io::Error),
    /// The registry.
    #[error("session registry: {0}")]
    Registry(#[from] RegistryError),
    /// The copy differs from the source.
    #[error("the copy differs from the source: {0}")]
    Mismatch(String),
    /// The archive holds something that cannot be unpacked safely.
    #[error("unsafe or unsupported archive entry {0:?}")]
    BadEntry(String),
    /// The archive ends early (an entry's data is short, or the end-of-archive blocks are
    /// missing).
    #[error("the archive {0} is truncated")]
    Truncated(String),
    /// [`FAIL_ENV`] asked for this failure.
    #[error("failure injected by {FAIL_ENV}={0}")]
    Injected(Step),
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
    /// A check before anything was created failed; nothing was changed.
    #[error("cannot migrate session `{id}`: {source}")]
    Prepare {
        /// The session.
        id: SessionId,
        /// The error.
        #[source]
        source: Box<StepError>,
    },
    /// A step failed; everything the migration created was removed again.
    #[error(
        "migration of session `{id}` to {to} failed at step {step}: {source}; rolled back, the \
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
        /// The error.
        #[source]
        source: Box<StepError>,
    },
}

/// Arguments of `session migrate`.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// The session.
    pub id: String,
    /// The target backend.
    pub to: Backend,
    /// `--to docker`: the session image (default [`image::DEFAULT_TAG`]).
    pub image: Option<String>,
    /// `--to local`: the new workspace directory (must not exist, or be empty).
    pub dir: Option<PathBuf>,
    /// Delete the source data (local directory or volume) after a successful migration.
    pub purge_source: bool,
    /// `--to kubernetes`: the namespace (default: the kubeconfig context's).
    pub namespace: Option<String>,
    /// `--to kubernetes`: the kubeconfig context (default: the current one).
    pub context: Option<String>,
}

/// [`FAIL_ENV`] for the migrations over the protocol: an error right after `step` if asked for.
pub(crate) fn injected(step: Step) -> Result<(), String> {
    match std::env::var(FAIL_ENV) {
        Ok(v) if v == step.to_string() => Err(format!("failure injected by {FAIL_ENV}={v}")),
        _ => Ok(()),
    }
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
    /// The source data, in words (`directory /x`, `volume v`).
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

/// `session migrate`: see the module documentation.
pub fn migrate(home: &Home, opts: &MigrateOptions) -> Result<Migrated, MigrateError> {
    let id = SessionId::from_str(&opts.id)?;
    let refuse = |reason: String| MigrateError::Refused {
        id: id.clone(),
        reason,
    };
    let fail_after = match std::env::var(FAIL_ENV) {
        Ok(v) if v.is_empty() => None,
        Ok(v) => Some(match v.as_str() {
            "copy" => Step::Copy,
            "verify" => Step::Verify,
            "switch" => Step::Switch,
            _ => {
                return Err(refuse(format!(
                    "{FAIL_ENV}={v:?} is not copy, verify or switch"
                )))
            }
        }),
        Err(_) => None,
    };
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
    let registry = home.open_registry()?;
    let _lock = home.lock()?;
    let record = registry
        .get(&id)
        .map_err(|e| MigrateError::Prepare {
            id: id.clone(),
            source: Box::new(e.into()),
        })?
        .ok_or_else(|| MigrateError::NotFound(id.clone()))?;
    if record.elsewhere(&sessionfs_registry::this_host()) {
        return Err(MigrateError::Refused {
            id,
            reason: format!(
                "it runs on host `{}`, not here: migrate it there",
                record.host().unwrap_or_default()
            ),
        });
    }
    let ctx = Ctx {
        home,
        registry: &registry,
        record: &record,
        fail_after,
    };
    match (record.backend, opts.to) {
        (from, to) if from == to => Err(refuse(format!("it already uses the {to} backend"))),
        (Backend::Local, Backend::Docker) => to_docker(&ctx, opts),
        (Backend::Docker, Backend::Local) => to_local(&ctx, opts),
        _ => crate::between::migrate(home, &registry, &record, opts),
    }
}

struct Ctx<'a> {
    home: &'a Home,
    registry: &'a Registry,
    record: &'a SessionRecord,
    fail_after: Option<Step>,
}

impl Ctx<'_> {
    fn inject(&self, step: Step) -> Result<(), StepError> {
        if self.fail_after == Some(step) {
            return Err(StepError::Injected(step));
        }
        Ok(())
    }

    fn prepare<T>(&self, r: Result<T, impl Into<StepError>>) -> Result<T, MigrateError> {
        r.map_err(|e| MigrateError::Prepare {
            id: self.record.id.clone(),
            source: Box::new(e.into()),
        })
    }

    /// The temporary archive of this migration, in the session's state directory.
    fn scratch_tar(&self) -> PathBuf {
        self.home
            .session_dir(&self.record.id)
            .join("migrate.tar.partial")
    }

    /// The second download of a docker→local migration, read for the verification.
    fn verify_tar(&self) -> PathBuf {
        self.home
            .session_dir(&self.record.id)
            .join("migrate-verify.tar.partial")
    }
}

// ---------------------------------------------------------------------------------------
// local → docker

/// What a local→docker migration has created so far.
#[derive(Default)]
struct DockerTarget {
    volume: Option<String>,
    helper: Option<String>,
    container: Option<Provisioned>,
    source: SourceStop,
}

/// What the migration did to the source runtime before copying.
#[derive(Default)]
struct SourceStop {
    /// The source was running when the migration stopped it (restarted on rollback).
    was_running: bool,
    /// The registry entry was changed (marked stopped, or switched); restored on rollback.
    registry_changed: bool,
}

fn to_docker(ctx: &Ctx<'_>, opts: &MigrateOptions) -> Result<Migrated, MigrateError> {
    let id = &ctx.record.id;
    let source_dir = ctx.record.workspace.clone().ok_or(MigrateError::Refused {
        id: id.clone(),
        reason: "it has no workspace directory".into(),
    })?;
    let image = opts
        .image
        .clone()
        .unwrap_or_else(|| image::DEFAULT_TAG.to_owned());
    image::check_reference(&image)?;
    let engine = ctx.prepare(Engine::connect())?;
    ctx.prepare(engine.session_image_daemon(&image))?;
    let volume = docker::volume_name(id);
    let container = docker::container_name(id);
    let helper = format!("{container}-migrate");
    if ctx.prepare(engine.volume_exists(&volume))? {
        return Err(MigrateError::Refused {
            id: id.clone(),
            reason: format!("the volume {volume} exists already (remove it first)"),
        });
    }
    for name in [&container, &helper] {
        if ctx.prepare(engine.inspect_container(name))?.is_some() {
            return Err(MigrateError::Refused {
                id: id.clone(),
                reason: format!("the container {name} exists already (remove it first)"),
            });
        }
    }
    let api = ctx.prepare(Api::connect(&engine))?;
    let mut made = DockerTarget::default();
    let mut step = Step::StopSource;
    let labels = docker::object_labels(ctx.home, id);
    // The daemon in the container gives new files the workspace owner, as `session create`
    // does for docker sessions.
    let owner = ctx
        .record
        .labels
        .get(OWNER_LABEL)
        .cloned()
        .unwrap_or_else(|| crate::commands::DEFAULT_DOCKER_OWNER.to_owned());
    let result = (|| -> Result<(SessionRecord, usize), StepError> {
        // stop-source: nothing writes to the directory from now on; the mount answers
        // ENOTCONN until the switch (or the rollback).
        made.source.was_running = local::is_running(ctx.record);
        local::stop(ctx.record)?;
        mark_stopped(ctx, &mut made.source)?;
        // copy
        step = Step::Copy;
        api.create_volume(&volume, &labels)?;
        made.volume = Some(volume.clone());
        api.create_helper(&helper, &image, &volume, &labels)?;
        made.helper = Some(helper.clone());
        let tar = ctx.scratch_tar();
        pack_dir(&source_dir, &tar)?;
        api.upload(&helper, &tar)?;
        ctx.inject(Step::Copy)?;
        // verify
        step = Step::Verify;
        api.download(&helper, &tar)?;
        let copied = manifest_tar(&tar)?;
        let source = manifest_dir(&source_dir)?;
        compare(&source, &copied, "the local directory", "the volume")?;
        remove_scratch(&tar);
        engine.remove_container(&helper)?;
        made.helper = None;
        ctx.inject(Step::Verify)?;
        // switch
        step = Step::Switch;
        let spec = ContainerSpec {
            image: image.clone(),
            nano_cpus: None,
            memory: None,
            workspace: WorkspaceSource::Volume(volume.clone()),
            env: vec![(crate::commands::OWNER_ENV.to_owned(), owner.clone())],
        };
        let provisioned = engine.provision(ctx.home, id, &spec)?;
        made.container = Some(provisioned.clone());
        engine.wait_ready(
            ctx.home,
            id,
            &provisioned.container,
            provisioned.endpoint,
            docker::READY_TIMEOUT,
        )?;
        let record = ctx.registry.modify(id, |r| {
            r.backend = Backend::Docker;
            r.state = SessionState::Running;
            r.endpoint = Some(provisioned.endpoint);
            r.pid = provisioned.pid;
            r.workspace = None;
            r.labels.retain(|k, _| !k.starts_with("docker."));
            r.labels.extend(provisioned.record_labels());
            r.labels.extend(spec.record_labels());
            r.labels.insert(OWNER_LABEL.to_owned(), owner.clone());
        })?;
        made.source.registry_changed = true;
        ctx.inject(Step::Switch)?;
        // The source daemon was stopped before the copy: nothing left to clean up.
        Ok((record, source.len()))
    })();
    let (record, verified) = match result {
        Ok(done) => done,
        Err(source) => {
            rollback_docker(ctx, &engine, made);
            return Err(failed(ctx, Backend::Docker, step, source));
        }
    };
    info!(session = %id, volume = %volume, "migrated to docker");
    let mut purged = false;
    if opts.purge_source {
        match crate::commands::check_purge(ctx.home, &source_dir) {
            Ok(()) => match fs::remove_dir_all(&source_dir) {
                Ok(()) => purged = true,
                Err(e) => {
                    warn!(path = %source_dir.display(), error = %e, "cannot delete the source")
                }
            },
            Err(e) => warn!(error = %e, "not deleting the source"),
        }
    }
    Ok(Migrated {
        record,
        from: Backend::Local,
        verified,
        source: format!("directory {}", source_dir.display()),
        purged,
        leftover: None,
    })
}

/// Marks the session stopped in the registry (no endpoint, no pid) while it migrates.
fn mark_stopped(ctx: &Ctx<'_>, source: &mut SourceStop) -> Result<(), StepError> {
    ctx.registry.modify(&ctx.record.id, |r| {
        r.state = SessionState::Stopped;
        r.endpoint = None;
        r.pid = None;
    })?;
    source.registry_changed = true;
    Ok(())
}

/// Writes `record` back into the registry if the migration changed it or restarted the source.
fn restore_record(ctx: &Ctx<'_>, record: &SessionRecord, source: &SourceStop, restarted: bool) {
    if source.registry_changed || restarted {
        if let Err(e) = ctx.registry.update(record) {
            warn!(session = %ctx.record.id, error = %e, "rollback: cannot restore the registry entry");
        }
    }
}

fn rollback_docker(ctx: &Ctx<'_>, engine: &Engine, made: DockerTarget) {
    let id = &ctx.record.id;
    if let Some(p) = &made.container {
        engine.discard(p);
    }
    if let Some(helper) = &made.helper {
        if let Err(e) = engine.remove_container(helper) {
            warn!(session = %id, error = %e, "rollback: cannot remove the helper container");
        }
    }
    if let Some(volume) = &made.volume {
        if let Err(e) = engine.remove_volume(volume, Some(id)) {
            warn!(session = %id, error = %e, "rollback: cannot remove the volume");
        }
    }
    remove_scratch(&ctx.scratch_tar());
    // Restart the source daemon as it was (never a second one next to a survivor).
    let mut record = ctx.record.clone();
    let mut restarted = false;
    if made.source.was_running && !local::is_running(ctx.record) {
        match local::start(ctx.home, ctx.record) {
            Ok(started) => {
                record = started;
                restarted = true;
            }
            Err(e) => {
                warn!(session = %id, error = %e, "rollback: cannot restart the source daemon (`session start` it)");
                record.state = SessionState::Stopped;
                record.endpoint = None;
                record.pid = None;
            }
        }
    }
    restore_record(ctx, &record, &made.source, restarted);
}

fn failed(ctx: &Ctx<'_>, to: Backend, step: Step, source: StepError) -> MigrateError {
    warn!(session = %ctx.record.id, %step, error = %source, "migration failed; rolled back");
    MigrateError::Failed {
        id: ctx.record.id.clone(),
        from: ctx.record.backend,
        to,
        step,
        source: Box::new(source),
    }
}

fn remove_scratch(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != ErrorKind::NotFound {
            warn!(path = %path.display(), error = %e, "cannot remove the temporary archive");
        }
    }
}

// ---------------------------------------------------------------------------------------
// docker → local

/// What a docker→local migration has created so far.
#[derive(Default)]
struct LocalTarget {
    /// The target directory, and whether the migration created it.
    dir: Option<(PathBuf, bool)>,
    started: Option<SessionRecord>,
    source: SourceStop,
}

fn to_local(ctx: &Ctx<'_>, opts: &MigrateOptions) -> Result<Migrated, MigrateError> {
    let id = &ctx.record.id;
    let refuse = |reason: String| MigrateError::Refused {
        id: id.clone(),
        reason,
    };
    let target = opts
        .dir
        .clone()
        .unwrap_or_else(|| ctx.home.session_dir(id).join(MIGRATED_DIR));
    let target = ctx.prepare(std::path::absolute(&target).map_err(io_error("resolve", &target)))?;
    let exists = match fs::symlink_metadata(&target) {
        Ok(m) if !m.is_dir() => {
            return Err(refuse(format!("{} is not a directory", target.display())))
        }
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::NotFound => false,
        Err(e) => {
            return Err(MigrateError::Prepare {
                id: id.clone(),
                source: Box::new(io_error("inspect", &target)(e).into()),
            })
        }
    };
    if !exists {
        // Only the last component is created (so a rollback removes only what it made).
        let parent_ok = target.parent().is_some_and(|p| p.is_dir());
        if opts.dir.is_some() && !parent_ok {
            return Err(refuse(format!(
                "the parent directory of {} does not exist (create it first)",
                target.display()
            )));
        }
    }
    if exists {
        let mut entries = ctx.prepare(fs::read_dir(&target).map_err(io_error("list", &target)))?;
        if entries.next().is_some() {
            return Err(refuse(format!(
                "the target directory {} is not empty",
                target.display()
            )));
        }
    }
    let container = docker::record_container(ctx.record);
    let source = match (
        ctx.record.labels.get(docker::RECORD_VOLUME),
        ctx.record.labels.get(docker::RECORD_WORKSPACE),
    ) {
        (Some(v), _) => Some(v.clone()),
        (None, Some(_)) => None,
        (None, None) => {
            return Err(refuse(
                "its record names neither volume nor workspace".into(),
            ))
        }
    };
    let source_text = match (&source, ctx.record.labels.get(docker::RECORD_WORKSPACE)) {
        (Some(v), _) => format!("volume {v}"),
        (None, Some(d)) => format!("directory {d} (a --workspace directory, never deleted)"),
        (None, None) => "-".to_owned(),
    };
    let engine = ctx.prepare(Engine::connect())?;
    let Some(inspected) = ctx.prepare(engine.inspect_container(&container))? else {
        return Err(refuse(format!(
            "its container {container} does not exist (`session recreate` it first)"
        )));
    };
    let running = inspected
        .state
        .as_ref()
        .and_then(|s| s.running)
        .unwrap_or(false);
    let api = ctx.prepare(Api::connect(&engine))?;
    let mut made = LocalTarget::default();
    let mut step = Step::StopSource;
    let result = (|| -> Result<(SessionRecord, usize), StepError> {
        // stop-source: nothing writes to the volume from now on; the mount answers ENOTCONN
        // until the switch (or the rollback). The archive download works on a stopped
        // container.
        made.source.was_running = running;
        if engine.stop(ctx.record)? == ContainerStop::Missing {
            return Err(DockerError::ContainerGone {
                id: id.clone(),
                container: container.clone(),
            }
            .into());
        }
        mark_stopped(ctx, &mut made.source)?;
        // copy
        step = Step::Copy;
        crate::state::private_dir(&ctx.home.session_dir(id))?;
        if !exists {
            fs::create_dir(&target).map_err(io_error("create directory", &target))?;
        }
        made.dir = Some((target.clone(), !exists));
        let target = fs::canonicalize(&target).map_err(io_error("resolve", &target))?;
        made.dir = Some((target.clone(), !exists));
        let tar = ctx.scratch_tar();
        api.download(&container, &tar)?;
        unpack(&tar, &target)?;
        remove_scratch(&tar);
        ctx.inject(Step::Copy)?;
        // verify: against a second, independent download of the (stopped) source.
        step = Step::Verify;
        let tar = ctx.verify_tar();
        api.download(&container, &tar)?;
        let source = as_unpacked(manifest_tar(&tar)?);
        let copied = manifest_dir(&target)?;
        compare(
            &source,
            &copied,
            "the container's workspace",
            "the directory",
        )?;
        remove_scratch(&tar);
        ctx.inject(Step::Verify)?;
        // switch
        step = Step::Switch;
        let mut next = ctx.record.clone();
        next.backend = Backend::Local;
        next.workspace = Some(target.clone());
        next.labels.retain(|k, _| !k.starts_with("docker."));
        next.endpoint = None;
        next.pid = None;
        let started = local::start(ctx.home, &next)?;
        made.started = Some(started.clone());
        next.state = started.state;
        next.endpoint = started.endpoint;
        next.pid = started.pid;
        ctx.registry.update(&next)?;
        made.source.registry_changed = true;
        ctx.inject(Step::Switch)?;
        Ok((next, source.len()))
    })();
    let (record, verified) = match result {
        Ok(done) => done,
        Err(source) => {
            rollback_local(ctx, &engine, made);
            return Err(failed(ctx, Backend::Local, step, source));
        }
    };
    info!(session = %id, container = %container, "migrated to local");
    // After the switch nothing is rolled back (the target may hold new writes already): the
    // old container, stopped since the copy, is removed if possible, else reported.
    let leftover = match engine.remove_container(&container) {
        Ok(_) => None,
        Err(e) => {
            warn!(session = %id, container = %container, error = %e, "cannot remove the source container");
            Some(format!(
                "the stopped source container {container} ({e}); remove it with `docker rm {container}`"
            ))
        }
    };
    let mut purged = false;
    if let (true, Some(volume), None) = (opts.purge_source, &source, &leftover) {
        match engine.remove_volume(volume, Some(id)) {
            Ok(_) => purged = true,
            Err(e) => warn!(volume = %volume, error = %e, "cannot delete the source volume"),
        }
    }
    Ok(Migrated {
        record,
        from: Backend::Docker,
        verified,
        source: source_text,
        purged,
        leftover,
    })
}

fn rollback_local(ctx: &Ctx<'_>, engine: &Engine, made: LocalTarget) {
    let id = &ctx.record.id;
    if let Some(started) = &made.started {
        if let Err(e) = local::stop(started) {
            warn!(session = %id, error = %e, "rollback: cannot stop the new daemon");
        }
    }
    if let Some((dir, created)) = &made.dir {
        let result = if *created {
            fs::remove_dir_all(dir)
        } else {
            empty_dir(dir)
        };
        if let Err(e) = result {
            warn!(path = %dir.display(), error = %e, "rollback: cannot remove the copy");
        }
    }
    remove_scratch(&ctx.scratch_tar());
    remove_scratch(&ctx.verify_tar());
    // Restart the source container as it was.
    let mut record = ctx.record.clone();
    let mut restarted = false;
    if made.source.was_running {
        match engine.start(ctx.home, ctx.record) {
            Ok((published, _)) => {
                record.state = SessionState::Running;
                record.endpoint = Some(published.endpoint);
                record.pid = published.pid;
                restarted = true;
            }
            Err(e) => {
                warn!(session = %id, error = %e, "rollback: cannot restart the source container (`session start` it)");
                record.state = SessionState::Stopped;
                record.endpoint = None;
                record.pid = None;
            }
        }
    }
    restore_record(ctx, &record, &made.source, restarted);
}

/// Deletes everything inside `dir` (it was empty before the migration).
fn empty_dir(dir: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Docker transfers

/// A Docker client of its own (the engine's is private to [`crate::docker`]), on the socket
/// [`Engine`] reached, with a long request timeout for transfers.
struct Api {
    runtime: tokio::runtime::Runtime,
    docker: Docker,
}

impl Api {
    fn connect(engine: &Engine) -> Result<Api, StepError> {
        let api_error = |action: &str| {
            let action = action.to_owned();
            move |source| StepError::Api { action, source }
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StepError::Runtime)?;
        let docker = {
            let _guard = runtime.enter();
            Docker::connect_with_socket(engine.socket(), TRANSFER_TIMEOUT_SECS, API_DEFAULT_VERSION)
                .map_err(api_error("connect"))?
        };
        let docker = runtime
            .block_on(docker.negotiate_version())
            .map_err(api_error("negotiate the API version"))?;
        Ok(Api { runtime, docker })
    }

    fn create_volume(
        &self,
        volume: &str,
        labels: &HashMap<String, String>,
    ) -> Result<(), StepError> {
        let request = VolumeCreateRequest {
            name: Some(volume.to_owned()),
            labels: Some(labels.clone()),
            ..Default::default()
        };
        self.runtime
            .block_on(self.docker.create_volume(request))
            .map_err(|source| StepError::Api {
                action: format!("create volume {volume}"),
                source,
            })?;
        info!(volume = %volume, "created volume");
        Ok(())
    }

    /// A container that is never started, only used to reach the volume at `/workspace`.
    fn create_helper(
        &self,
        name: &str,
        image: &str,
        volume: &str,
        labels: &HashMap<String, String>,
    ) -> Result<(), StepError> {
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            labels: Some(labels.clone()),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                mounts: Some(vec![Mount {
                    target: Some(docker::WORKSPACE.to_owned()),
                    source: Some(volume.to_owned()),
                    typ: Some(MountType::VOLUME),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        self.runtime
            .block_on(self.docker.create_container(Some(options), body))
            .map_err(|source| StepError::Api {
                action: format!("create the helper container {name}"),
                source,
            })?;
        Ok(())
    }

    /// Uploads the archive `tar` (entries below `workspace/`) to `/` of `container`.
    fn upload(&self, container: &str, tar: &Path) -> Result<(), StepError> {
        let file = File::open(tar).map_err(io_error("open", tar))?;
        let chunks = futures_util::stream::unfold(file, |mut file| async move {
            let mut buf = vec![0u8; 1 << 20];
            match file.read(&mut buf) {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(bytes::Bytes::from(buf)), file))
                }
                Err(e) => Some((Err(e), file)),
            }
        });
        let options = UploadToContainerOptionsBuilder::default().path("/").build();
        self.runtime
            .block_on(self.docker.upload_to_container(
                container,
                Some(options),
                bollard::body_try_stream(chunks),
            ))
            .map_err(|source| StepError::Api {
                action: format!("upload the workspace into {container}"),
                source,
            })
    }

    /// Downloads `container`'s `/workspace` as a tar archive into the file `tar`.
    fn download(&self, container: &str, tar: &Path) -> Result<(), StepError> {
        let mut file = File::create(tar).map_err(io_error("create", tar))?;
        let options = DownloadFromContainerOptionsBuilder::default()
            .path(docker::WORKSPACE)
            .build();
        self.runtime.block_on(async {
            let mut stream = self
                .docker
                .download_from_container(container, Some(options));
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|source| StepError::Api {
                    action: format!("download /workspace of {container}"),
                    source,
                })?;
                file.write_all(&chunk).map_err(io_error("write", tar))?;
            }
            Ok::<(), StepError>(())
        })?;
        file.sync_all().map_err(io_error("write", tar))?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Archives

/// Writes `dir`'s tree into the archive `tar` below `workspace/`, symlinks as symlinks.
fn pack_dir(dir: &Path, tar: &Path) -> Result<(), StepError> {
    let file = File::create(tar).map_err(io_error("create", tar))?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
    builder.follow_symlinks(false);
    builder
        .append_dir_all("workspace", dir)
        .map_err(io_error("archive", dir))?;
    let mut out = builder.into_inner().map_err(io_error("write", tar))?;
    out.flush().map_err(io_error("write", tar))?;
    Ok(())
}

/// The entry's path without its first component (`workspace/`); `None` for the root itself.
fn entry_rel(path: &Path) -> Result<Option<PathBuf>, StepError> {
    let mut rel = PathBuf::new();
    for (i, c) in path.components().enumerate() {
        match c {
            Component::Normal(part) if i > 0 => rel.push(part),
            Component::Normal(_) | Component::CurDir if i == 0 => {}
            Component::CurDir => {}
            _ => return Err(StepError::BadEntry(path.display().to_string())),
        }
    }
    Ok((!rel.as_os_str().is_empty()).then_some(rel))
}

/// The set-user-ID and set-group-ID bits, which no file keeps when it comes out of a container: a
/// container's set-user-ID file would be the host's, owned by the user who unpacks it.
const SET_ID: u32 = 0o6000;

/// Unpacks the archive `tar` (one top directory, stripped) into the existing directory
/// `root`, refusing entries that would leave it and anything but directories, regular files,
/// links and FIFOs (no device node leaves a container). Files keep their permission bits only,
/// directories lose [`SET_ID`]; directory modes are applied last.
fn unpack(tar: &Path, root: &Path) -> Result<(), StepError> {
    // A truncated archive is refused before anything is unpacked.
    manifest_tar(tar)?;
    let file = File::open(tar).map_err(io_error("open", tar))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut dir_modes = Vec::new();
    let entries = archive.entries().map_err(io_error("read", tar))?;
    for entry in entries {
        let mut entry = entry.map_err(io_error("read", tar))?;
        let path = entry.path().map_err(io_error("read", tar))?.into_owned();
        let Some(rel) = entry_rel(&path)? else {
            continue;
        };
        let dst = root.join(&rel);
        check_parents(root, &rel)?;
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().map_err(io_error("read", tar))? & 0o7777;
        if kind.is_dir() {
            fs::create_dir(&dst).map_err(io_error("create directory", &dst))?;
            dir_modes.push((dst, mode & !SET_ID));
        } else if kind.is_hard_link() {
            let link = entry
                .link_name()
                .map_err(io_error("read", tar))?
                .ok_or_else(|| StepError::BadEntry(path.display().to_string()))?;
            let src_rel =
                entry_rel(&link)?.ok_or_else(|| StepError::BadEntry(link.display().to_string()))?;
            check_parents(root, &src_rel)?;
            let src = root.join(src_rel);
            fs::hard_link(&src, &dst).map_err(io_error("link", &dst))?;
        } else if kind.is_file() || kind.is_symlink() || kind.is_fifo() {
            // Not preserved: only the permission bits (0o777) are applied.
            entry.set_preserve_permissions(false);
            entry.set_preserve_mtime(true);
            entry.unpack(&dst).map_err(io_error("unpack", &dst))?;
        } else {
            return Err(StepError::BadEntry(path.display().to_string()));
        }
    }
    for (dir, mode) in dir_modes.into_iter().rev() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
            .map_err(io_error("set the mode of", &dir))?;
    }
    Ok(())
}

/// Every parent of `rel` below `root` must be a real directory (no symlink to leave by).
fn check_parents(root: &Path, rel: &Path) -> Result<(), StepError> {
    let mut cur = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            cur.push(c);
            let meta = fs::symlink_metadata(&cur).map_err(io_error("inspect", &cur))?;
            if !meta.is_dir() {
                return Err(StepError::BadEntry(rel.display().to_string()));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Manifests

/// One node of a tree as the verification compares it (also across hosts, [`crate::transfer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        size: u64,
        sha256: String,
    },
    Symlink {
        target: PathBuf,
    },
    Other {
        kind: &'static str,
        mode: u32,
    },
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Dir { mode } => write!(f, "a directory of mode {mode:o}"),
            Node::File { mode, size, sha256 } => {
                write!(f, "a file of mode {mode:o}, {size} bytes, sha256 {sha256}")
            }
            Node::Symlink { target } => write!(f, "a symlink to {}", target.display()),
            Node::Other { kind, mode } => write!(f, "a {kind} of mode {mode:o}"),
        }
    }
}

pub(crate) type Manifest = BTreeMap<PathBuf, Node>;

pub(crate) fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash_reader(mut r: impl Read, path: &Path) -> Result<(u64, String), StepError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = r.read(&mut buf).map_err(io_error("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex(&hasher.finalize())))
}

/// The manifest of the tree below `root` (the root itself excluded).
fn manifest_dir(root: &Path) -> Result<Manifest, StepError> {
    let mut out = Manifest::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let dir = root.join(&rel);
        for entry in fs::read_dir(&dir).map_err(io_error("list", &dir))? {
            let entry = entry.map_err(io_error("list", &dir))?;
            let rel = rel.join(entry.file_name());
            let path = root.join(&rel);
            let meta = fs::symlink_metadata(&path).map_err(io_error("inspect", &path))?;
            let mode = meta.mode() & 0o7777;
            let ft = meta.file_type();
            let node = if ft.is_dir() {
                pending.push(rel.clone());
                Node::Dir { mode }
            } else if ft.is_symlink() {
                Node::Symlink {
                    target: fs::read_link(&path).map_err(io_error("read link", &path))?,
                }
            } else if ft.is_file() {
                let file = File::open(&path).map_err(io_error("open", &path))?;
                let (size, sha256) = hash_reader(file, &path)?;
                Node::File { mode, size, sha256 }
            } else {
                Node::Other {
                    kind: "special file",
                    mode,
                }
            };
            out.insert(rel, node);
        }
    }
    Ok(out)
}

/// The manifest of an archive with one top directory (stripped); hard links count as the
/// file they link to. Strict: fails if an entry's data is shorter than its header says or
/// the archive lacks its end-of-archive blocks.
fn manifest_tar(tar: &Path) -> Result<Manifest, StepError> {
    let truncated = |what: String| StepError::Truncated(format!("{} ({what})", tar.display()));
    let file = File::open(tar).map_err(io_error("open", tar))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut out = Manifest::new();
    // Where the last entry's data (padded to whole blocks) ends.
    let mut end = 0u64;
    for entry in archive.entries().map_err(io_error("read", tar))? {
        let mut entry = entry.map_err(io_error("read", tar))?;
        let declared = entry.size();
        end = entry.raw_file_position() + declared.div_ceil(BLOCK) * BLOCK;
        let path = entry.path().map_err(io_error("read", tar))?.into_owned();
        let Some(rel) = entry_rel(&path)? else {
            continue;
        };
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().map_err(io_error("read", tar))? & 0o7777;
        let link = entry.link_name().map_err(io_error("read", tar))?;
        let node = if kind.is_dir() {
            Node::Dir { mode }
        } else if kind.is_symlink() {
            Node::Symlink {
                target: link
                    .ok_or_else(|| StepError::BadEntry(path.display().to_string()))?
                    .into_owned(),
            }
        } else if kind.is_hard_link() {
            let src = link
                .as_deref()
                .map(entry_rel)
                .transpose()?
                .flatten()
                .ok_or_else(|| StepError::BadEntry(path.display().to_string()))?;
            out.get(&src)
                .cloned()
                .ok_or_else(|| StepError::BadEntry(path.display().to_string()))?
        } else if kind.is_file() {
            let (size, sha256) = hash_reader(&mut entry, tar)?;
            if size != declared {
                return Err(truncated(format!(
                    "{} holds {size} of {declared} bytes",
                    path.display()
                )));
            }
            Node::File { mode, size, sha256 }
        } else {
            Node::Other {
                kind: "special file",
                mode,
            }
        };
        out.insert(rel, node);
    }
    // The end-of-archive marker: two zero blocks after the last entry.
    let mut file = File::open(tar).map_err(io_error("open", tar))?;
    let len = file.metadata().map_err(io_error("inspect", tar))?.len();
    if len < end + 2 * BLOCK {
        return Err(truncated(format!(
            "{len} bytes, no end-of-archive blocks after byte {end}"
        )));
    }
    let mut marker = vec![0u8; 2 * BLOCK as usize];
    file.seek(SeekFrom::Start(end))
        .and_then(|_| file.read_exact(&mut marker))
        .map_err(io_error("read", tar))?;
    if marker.iter().any(|&b| b != 0) {
        return Err(truncated(format!("no end-of-archive blocks at byte {end}")));
    }
    Ok(out)
}

/// The tar block size.
const BLOCK: u64 = 512;

/// Fails with the first difference between the two manifests.
/// A container's manifest as [`unpack`] leaves its tree on the host: no set-id bits, and files with
/// their permission bits only.
fn as_unpacked(manifest: Manifest) -> Manifest {
    manifest
        .into_iter()
        .map(|(path, node)| {
            let node = match node {
                Node::Dir { mode } => Node::Dir {
                    mode: mode & !SET_ID,
                },
                Node::File { mode, size, sha256 } => Node::File {
                    mode: mode & 0o777,
                    size,
                    sha256,
                },
                Node::Other { kind, mode } => Node::Other {
                    kind,
                    mode: mode & 0o777,
                },
                link @ Node::Symlink { .. } => link,
            };
            (path, node)
        })
        .collect()
}

pub(crate) fn compare(
    source: &Manifest,
    copy: &Manifest,
    source_name: &str,
    copy_name: &str,
) -> Result<(), StepError> {
    for (path, node) in source {
        match copy.get(path) {
            None => {
                return Err(StepError::Mismatch(format!(
                    "{} is missing in {copy_name}",
                    path.display()
                )))
            }
            Some(other) if other != node => {
                return Err(StepError::Mismatch(format!(
                    "{} is {node} in {source_name} but {other} in {copy_name}",
                    path.display()
                )))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = copy.keys().find(|p| !source.contains_key(*p)) {
        return Err(StepError::Mismatch(format!(
            "{} is in {copy_name} but not in {source_name}",
            extra.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn pack_unpack_and_verify_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("a/b")).unwrap();
        fs::write(src.join("a/b/f"), vec![7u8; 100_000]).unwrap();
        fs::write(src.join("x.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(src.join("x.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("a/b/f", src.join("link")).unwrap();
        fs::set_permissions(src.join("a"), fs::Permissions::from_mode(0o500)).unwrap();
        let tar = tmp.path().join("t.tar");
        pack_dir(&src, &tar).unwrap();
        let from_tar = manifest_tar(&tar).unwrap();
        let from_dir = manifest_dir(&src).unwrap();
        compare(&from_dir, &from_tar, "src", "tar").unwrap();
        let dst = tmp.path().join("dst");
        fs::create_dir(&dst).unwrap();
        unpack(&tar, &dst).unwrap();
        compare(&from_dir, &manifest_dir(&dst).unwrap(), "src", "dst").unwrap();
        assert_eq!(from_dir.len(), 5);
        fs::set_permissions(src.join("a"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(dst.join("a"), fs::Permissions::from_mode(0o755)).unwrap();
        // A changed byte is found.
        fs::write(dst.join("a/b/f"), vec![8u8; 100_000]).unwrap();
        let from_dir = manifest_dir(&src).unwrap();
        let msg = compare(&from_dir, &manifest_dir(&dst).unwrap(), "src", "dst")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("a/b/f is a file of mode 644"), "{msg}");
    }

    #[test]
    fn truncated_archives_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("d")).unwrap();
        fs::write(src.join("d/big"), vec![3u8; 10_000]).unwrap();
        let tar = tmp.path().join("t.tar");
        pack_dir(&src, &tar).unwrap();
        let full = fs::read(&tar).unwrap();
        manifest_tar(&tar).unwrap();
        let cut = tmp.path().join("cut.tar");
        // Without the end-of-archive blocks, cut at a block boundary inside the data, and
        // cut mid-block: each is refused, and nothing is unpacked.
        for len in [
            full.len() - 1024,
            full.len() - 1024 - 4096,
            full.len() - 2000,
        ] {
            fs::write(&cut, &full[..len]).unwrap();
            let err = manifest_tar(&cut).unwrap_err();
            assert!(
                matches!(err, StepError::Truncated(_) | StepError::Io(_)),
                "{len}: {err}"
            );
            let dst = tmp.path().join(format!("dst{len}"));
            fs::create_dir(&dst).unwrap();
            assert!(unpack(&cut, &dst).is_err());
            assert!(fs::read_dir(&dst).unwrap().next().is_none());
        }
        fs::write(&cut, &full[..full.len() - 1024]).unwrap();
        let msg = manifest_tar(&cut).unwrap_err().to_string();
        assert!(msg.contains("truncated"), "{msg}");
    }

    #[test]
    fn entries_outside_the_root_are_refused() {
        assert!(entry_rel(Path::new("workspace/../x")).is_err());
        assert!(entry_rel(Path::new("/etc/passwd")).is_err());
        assert_eq!(entry_rel(Path::new("workspace/")).unwrap(), None);
        assert_eq!(
            entry_rel(Path::new("workspace/a/b")).unwrap(),
            Some(PathBuf::from("a/b"))
        );
    }
}
