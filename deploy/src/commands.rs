//! The `sessionfs` commands: `session create|ls|stop|start|rm|recreate`, `image build`, `mount` and
//! `umount`.
//!
//! Each command is a function taking the state directory and its arguments and returning
//! a report whose `Display` is exactly what the command prints on stdout, so the binary
//! stays a thin front end and tests can run the commands directly. The session commands
//! dispatch on the record's backend: [`crate::local`] or [`crate::docker`].

use crate::file_error::io_error;
use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sessionfs_pki::CertificateAuthority;
use sessionfs_registry::{
    this_host, Backend, InvalidSessionId, Registry, RegistryError, SessionId, SessionRecord,
    SessionState, CERT_PIN_LABEL, HOST_LABEL, OWNER_LABEL,
};
use tracing::{info, warn};

use crate::docker::{
    self, ContainerRemoval, ContainerSpec, ContainerStatus, ContainerStop, DockerError, Engine,
    WorkspaceSource,
};
use crate::image::{self, BuildOptions, Built, ImageError};
use crate::local::{self, LocalError, StopOutcome};
use crate::mounts::{self, MountPointError};
use crate::state::{Home, StateError};

/// Errors of the `sessionfs` commands.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The session id is not valid.
    #[error(transparent)]
    InvalidId(#[from] InvalidSessionId),
    /// `session create` of an id that is taken.
    #[error("session `{0}` already exists")]
    AlreadyExists(SessionId),
    /// The id is not in the registry.
    #[error("no session `{0}`")]
    NotFound(SessionId),
    /// The session is served by another host: only that host starts, stops, removes or recreates it.
    #[error("session `{id}` runs on host `{host}`, not here: run this command there")]
    OtherHost { id: SessionId, host: String },
    /// A label is not `KEY=VALUE`.
    #[error("invalid label {0:?}: expected KEY=VALUE with a non-empty KEY")]
    BadLabel(String),
    /// `--dir` does not exist.
    #[error("workspace directory {} does not exist", .0.display())]
    DirMissing(PathBuf),
    /// `--dir` is not a directory.
    #[error("workspace directory {} is not a directory", .0.display())]
    DirNotDirectory(PathBuf),
    /// `--dir` or `--workspace` is, contains or lies inside the state directory.
    #[error(
        "workspace directory {} is, contains or lies inside the state directory {}, which holds \
         the CA key and every session's certificates; give a directory of its own",
        .dir.display(),
        .state.display()
    )]
    DirAndState {
        /// The directory asked for.
        dir: PathBuf,
        /// The state directory.
        state: PathBuf,
    },
    /// `--dir` or `--workspace` lies inside a sessionfs mount.
    #[error(
        "workspace directory {} is inside the sessionfs mount at {}; a session's workspace must \
         be a directory of the host (serving it would make the bridge wait on its own mount)",
        .dir.display(),
        .mount.display()
    )]
    DirInMount {
        /// The directory asked for.
        dir: PathBuf,
        /// The sessionfs mount it lies in.
        mount: PathBuf,
    },
    /// A docker-only command on a session of another backend.
    #[error("session `{id}` uses the {backend} backend; `session {command}` applies to docker sessions only")]
    DockerOnly {
        /// The session.
        id: SessionId,
        /// Its backend.
        backend: Backend,
        /// The command.
        command: &'static str,
    },
    /// The Docker reconciler thread could not be started.
    #[error("cannot start the docker reconciler: {0}")]
    Reconciler(#[source] std::io::Error),
    /// An option of `session create` that the chosen backend does not take.
    #[error("{flag} applies only to --backend {applies_to}{hint}")]
    BackendOption {
        /// The option, e.g. `--image`.
        flag: &'static str,
        /// The backend it belongs to.
        applies_to: Backend,
        /// What to use instead, with a leading separator, or empty.
        hint: &'static str,
    },
    /// `--volume` and `--workspace` together.
    #[error("--volume and --workspace exclude each other: the workspace is either a volume or a host directory")]
    VolumeAndWorkspace,
    /// An environment variable is not `KEY=VALUE`.
    #[error("invalid environment variable {0:?}: expected KEY=VALUE with a non-empty KEY")]
    BadEnv(String),
    /// A label key reserved for what sessionfs records about a docker session.
    #[error("label key {0:?} is reserved: keys starting with `docker.` describe a docker session's container")]
    ReservedLabel(String),
    /// `rm --purge` of a workspace that must not be deleted.
    #[error("refusing to delete workspace {}: {reason}", path.display())]
    PurgeRefused {
        /// The workspace.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] crate::file_error::FileError),
    /// Reading or writing the registry failed.
    #[error("session registry: {0}")]
    Registry(#[source] RegistryError),
    /// The state directory.
    #[error(transparent)]
    State(#[from] StateError),
    /// A hosts operation.
    #[error(transparent)]
    Host(Box<crate::hosts::HostError>),
    /// The local backend.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// The Docker backend.
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// The Kubernetes backend.
    #[error(transparent)]
    Kube(#[from] crate::k8s::KubeError),
    /// Building the session image.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The mount point checks or unmounting.
    #[error(transparent)]
    MountPoint(#[from] MountPointError),
    /// The bridge failed to mount or to run.
    #[error("sessionfs bridge at {}: {source}", mountpoint.display())]
    Bridge {
        /// The mount point.
        mountpoint: PathBuf,
        /// The bridge's error.
        #[source]
        source: sessionfs_bridge::MountError,
    },
}

impl From<crate::hosts::HostError> for CommandError {
    fn from(e: crate::hosts::HostError) -> Self {
        CommandError::Host(Box::new(e))
    }
}

impl From<RegistryError> for CommandError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::AlreadyExists(id) => CommandError::AlreadyExists(id),
            RegistryError::NotFound(id) => CommandError::NotFound(id),
            other => CommandError::Registry(other),
        }
    }
}

/// Parses a session id, with the registry's precise refusal message.
pub fn parse_id(id: &str) -> Result<SessionId, CommandError> {
    Ok(SessionId::from_str(id)?)
}

/// Parses a `KEY=VALUE` label (the value may be empty or contain `=`).
pub fn parse_label(s: &str) -> Result<(String, String), CommandError> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(CommandError::BadLabel(s.to_owned())),
    }
}

/// Parses a `KEY=VALUE` environment variable (the value may be empty or contain `=`).
pub fn parse_env(s: &str) -> Result<(String, String), CommandError> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() && !key.contains('\0') && !value.contains('\0') => {
            Ok((key.to_owned(), value.to_owned()))
        }
        _ => Err(CommandError::BadEnv(s.to_owned())),
    }
}

/// Parses `session create --backend`: `local`, `docker` or `kubernetes`.
pub fn parse_backend(s: &str) -> Result<Backend, String> {
    match s.parse::<Backend>() {
        Ok(b) => Ok(b),
        Err(_) => Err(format!(
            "unknown backend {s:?} (expected local, docker or kubernetes)"
        )),
    }
}

/// The record of session `id`, which must be served by this host (its lifecycle is this host's to
/// manage: a process id or container name of another host names nothing here).
fn get_record(registry: &Registry, id: &SessionId) -> Result<SessionRecord, CommandError> {
    let record = registry
        .get(id)?
        .ok_or_else(|| CommandError::NotFound(id.clone()))?;
    if record.elsewhere(&this_host()) {
        return Err(CommandError::OtherHost {
            id: id.clone(),
            host: record.host().unwrap_or_default().to_owned(),
        });
    }
    Ok(record)
}

fn endpoint_text(record: &SessionRecord) -> String {
    record
        .endpoint
        .map_or_else(|| "-".to_owned(), |e| e.to_string())
}

/// The workspace: its directory, or `volume <name>` for a docker session's volume.
pub(crate) fn workspace_text(record: &SessionRecord) -> String {
    if let Some(w) = &record.workspace {
        return w.display().to_string();
    }
    match record.labels.get(docker::RECORD_VOLUME) {
        Some(volume) if record.backend == Backend::Docker => format!("volume {volume}"),
        _ if record.backend == Backend::Kubernetes => format!(
            "claim {}/{}",
            record
                .labels
                .get(crate::k8s::RECORD_NAMESPACE)
                .map_or("?", String::as_str),
            crate::k8s::object_name(&record.id)
        ),
        _ => "-".to_owned(),
    }
}

// ---------------------------------------------------------------------------------------
// session create

/// Arguments of `session create`.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// The new session's id (validated by [`create`]).
    pub id: String,
    /// Where its daemon runs: [`Backend::Local`] (the default) or [`Backend::Docker`].
    pub backend: Backend,
    /// Local sessions: the directory to serve; default `sessions/<id>/workspace` in the state
    /// directory.
    pub dir: Option<PathBuf>,
    /// Labels; a repeated key keeps the last value.
    pub labels: Vec<(String, String)>,
    /// The workspace owner `UID:GID` given to new files (`sessionfsd --owner`); docker sessions
    /// default to `DEFAULT_DOCKER_OWNER` (1000:1000), local sessions to the calling host user.
    pub owner: Option<String>,
    /// Options of docker sessions (`image`, `nano_cpus` and `memory` of kubernetes sessions too).
    pub docker: DockerOptions,
    /// Options of kubernetes sessions.
    pub kubernetes: KubeOptions,
}

/// The options of `session create --backend kubernetes` (with `--image`, `--cpus`, `--memory`).
#[derive(Debug, Clone, Default)]
pub struct KubeOptions {
    /// The namespace; default: the kubeconfig context's.
    pub namespace: Option<String>,
    /// The kubeconfig context; default: the current one.
    pub context: Option<String>,
    /// The workspace claim's storage class; default: the cluster's default class.
    pub storage_class: Option<String>,
    /// The workspace claim's size (a Kubernetes quantity); default 10Gi.
    pub size: Option<String>,
    /// Node labels the pod must run on.
    pub node_selector: Vec<(String, String)>,
    /// How the daemon is reached; default at the pod's IP.
    pub reach: Option<crate::k8s::Reach>,
    /// Where `sessionfsd` is in the image; default `/sessionfsd`.
    pub daemon_path: Option<String>,
    /// `POD[/CONTAINER]`: add the daemon as a sidecar of that pod's Deployment instead of making a
    /// pod, serving a volume of that container.
    pub attach: Option<String>,
    /// With `attach`: the container's mount path of the volume to serve.
    pub workspace_path: Option<String>,
}

impl KubeOptions {
    /// The options that were given, as their flags.
    fn given(&self) -> Vec<&'static str> {
        [
            (self.namespace.is_some(), "--namespace"),
            (self.context.is_some(), "--context"),
            (self.storage_class.is_some(), "--storage-class"),
            (self.size.is_some(), "--size"),
            (!self.node_selector.is_empty(), "--node-selector"),
            (self.reach.is_some(), "--reach"),
            (self.daemon_path.is_some(), "--daemon-path"),
            (self.attach.is_some(), "--attach"),
            (self.workspace_path.is_some(), "--workspace-path"),
        ]
        .into_iter()
        .filter_map(|(given, flag)| given.then_some(flag))
        .collect()
    }
}

/// The workspace owner of docker sessions unless `--owner` says otherwise: the conventional first
/// unprivileged user of an image, never root.
pub const DEFAULT_DOCKER_OWNER: &str = "1000:1000";

/// The daemon's environment variable for its workspace owner (`sessionfsd --owner`).
pub const OWNER_ENV: &str = "SESSIONFSD_OWNER";

/// Checks a `UID:GID` owner.
pub fn parse_owner(s: &str) -> Result<String, String> {
    match owner_ids(s) {
        Some(_) => Ok(s.to_owned()),
        None => Err(format!("owner `{s}` is not UID:GID (numbers)")),
    }
}

/// The uid and gid of a `UID:GID` owner.
pub(crate) fn owner_ids(s: &str) -> Option<(u32, u32)> {
    let (uid, gid) = s.split_once(':')?;
    Some((uid.parse().ok()?, gid.parse().ok()?))
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            id: String::new(),
            backend: Backend::Local,
            dir: None,
            labels: Vec::new(),
            owner: None,
            docker: DockerOptions::default(),
            kubernetes: KubeOptions::default(),
        }
    }
}

/// The options of `session create --backend docker`.
#[derive(Debug, Clone, Default)]
pub struct DockerOptions {
    /// The session image; default [`image::DEFAULT_TAG`].
    pub image: Option<String>,
    /// CPU limit in billionths of a CPU (`--cpus`, see [`docker::parse_cpus`]).
    pub nano_cpus: Option<i64>,
    /// Memory limit in bytes (`--memory`, see [`docker::parse_memory`]).
    pub memory: Option<i64>,
    /// A named volume for `/workspace`; default `sessionfs-<id>`.
    pub volume: Option<String>,
    /// A host directory to bind-mount at `/workspace` instead of a volume.
    pub workspace: Option<PathBuf>,
    /// Environment variables for the container.
    pub env: Vec<(String, String)>,
}

impl DockerOptions {
    /// The options that were given, as their flags.
    fn given(&self) -> Vec<&'static str> {
        let mut flags = Vec::new();
        for (given, flag) in [
            (self.image.is_some(), "--image"),
            (self.nano_cpus.is_some(), "--cpus"),
            (self.memory.is_some(), "--memory"),
            (self.volume.is_some(), "--volume"),
            (self.workspace.is_some(), "--workspace"),
            (!self.env.is_empty(), "--env"),
        ] {
            if given {
                flags.push(flag);
            }
        }
        flags
    }
}

/// What `session create` made.
#[derive(Debug, Clone)]
pub struct Created {
    /// The registered, running session.
    pub record: SessionRecord,
}

impl fmt::Display for Created {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "created session {} at {} serving {}",
            self.record.id,
            endpoint_text(&self.record),
            workspace_text(&self.record)
        )?;
        if let Some(container) = self.record.labels.get(docker::RECORD_CONTAINER) {
            write!(f, " in container {container}")?;
        }
        Ok(())
    }
}

/// `session create`: issues the session's certificates, registers it and starts its
/// daemon (a local process, or a container with `--backend docker`). If the daemon does not
/// come up, the registration, the files and the Docker objects made for the session are
/// removed again (never the `--dir`/`--workspace` directory, nor a volume that existed).
pub fn create(home: &Home, opts: &CreateOptions) -> Result<Created, CommandError> {
    let id = parse_id(&opts.id)?;
    match opts.backend {
        Backend::Local => {
            if let Some(flag) = opts.docker.given().first() {
                return Err(CommandError::BackendOption {
                    flag,
                    applies_to: Backend::Docker,
                    hint: "",
                });
            }
            if let Some(flag) = opts.kubernetes.given().first() {
                return Err(CommandError::BackendOption {
                    flag,
                    applies_to: Backend::Kubernetes,
                    hint: "",
                });
            }
        }
        Backend::Docker => {
            if let Some(flag) = opts.kubernetes.given().first() {
                return Err(CommandError::BackendOption {
                    flag,
                    applies_to: Backend::Kubernetes,
                    hint: "",
                });
            }
            return create_docker(home, id, opts);
        }
        Backend::Kubernetes => return create_kubernetes(home, id, opts),
    }
    let user_dir = opts
        .dir
        .as_deref()
        .map(|dir| workspace_dir(home, dir))
        .transpose()?;
    let registry = home.open_registry()?;
    let _lock = home.lock()?;
    if registry.get(&id)?.is_some() {
        return Err(CommandError::AlreadyExists(id));
    }
    let ca = home.certificate_authority()?;

    let made_default = user_dir.is_none() && !home.default_workspace(&id).exists();
    let workspace = user_dir
        .clone()
        .unwrap_or_else(|| home.default_workspace(&id));
    let mut record = SessionRecord::new(
        id.clone(),
        Backend::Local,
        sessionfs_pki::session_dns_name(id.as_str()),
    );
    record.workspace = Some(workspace.clone());
    record.labels = opts.labels.iter().cloned().collect::<BTreeMap<_, _>>();
    record.labels.insert(HOST_LABEL.to_owned(), this_host());
    if let Some(owner) = &opts.owner {
        record.labels.insert(OWNER_LABEL.to_owned(), owner.clone());
    }
    // Registering first claims the id: nothing is touched if it is taken.
    registry.register(&record)?;
    let certs_existed = home.session_cert_dir(&id).exists();

    let undo = |e: CommandError| {
        if let Err(re) = registry.remove(&id) {
            warn!(session = %id, error = %re, "cannot remove the failed session's registration");
        }
        remove_created_files(home, &id, made_default, certs_existed);
        e
    };
    let prepared = (|| -> Result<(), CommandError> {
        home.issue_session_certs(&ca, &id)?;
        pin_certificate(home, &registry, &id)?;
        if user_dir.is_none() {
            fs::create_dir_all(&workspace).map_err(io_error("create directory", &workspace))?;
        }
        Ok(())
    })();
    prepared.map_err(undo)?;
    let started = local::start(home, &record).map_err(|e| undo(e.into()))?;
    let record = registry
        .modify(&id, |r| {
            r.state = started.state;
            r.endpoint = started.endpoint;
            r.pid = started.pid;
        })
        .map_err(|e| {
            stop_quietly(&started);
            undo(e.into())
        })?;
    info!(session = %id, "created session");
    Ok(Created { record })
}

/// `session create --backend docker`: see [`create`] and [`Engine::provision`]. The
/// session is registered as `starting` with its endpoint and container labels as soon as
/// the container runs, and marked `running` once it is ready.
fn create_docker(
    home: &Home,
    id: SessionId,
    opts: &CreateOptions,
) -> Result<Created, CommandError> {
    let d = &opts.docker;
    if opts.dir.is_some() {
        return Err(CommandError::BackendOption {
            flag: "--dir",
            applies_to: Backend::Local,
            hint: "; a docker session takes --workspace HOSTDIR or --volume NAME",
        });
    }
    if let Some((key, _)) = opts.labels.iter().find(|(k, _)| k.starts_with("docker.")) {
        return Err(CommandError::ReservedLabel(key.clone()));
    }
    let workspace = match (&d.volume, &d.workspace) {
        (Some(_), Some(_)) => return Err(CommandError::VolumeAndWorkspace),
        (Some(volume), None) => {
            docker::check_volume_name(volume)?;
            WorkspaceSource::Volume(volume.clone())
        }
        (None, Some(dir)) => WorkspaceSource::HostDir(workspace_dir(home, dir)?),
        (None, None) => WorkspaceSource::Volume(docker::volume_name(&id)),
    };
    let image = d
        .image
        .clone()
        .unwrap_or_else(|| image::DEFAULT_TAG.to_owned());
    image::check_reference(&image)?;
    // The daemon in the container gives new files the workspace owner (recorded with the other
    // environment, so a recreated container keeps it).
    let owner = opts
        .owner
        .clone()
        .unwrap_or_else(|| DEFAULT_DOCKER_OWNER.to_owned());
    let mut env = d.env.clone();
    env.retain(|(k, _)| k != OWNER_ENV);
    env.push((OWNER_ENV.to_owned(), owner.clone()));
    let spec = ContainerSpec {
        image,
        nano_cpus: d.nano_cpus,
        memory: d.memory,
        workspace: workspace.clone(),
        env,
    };
    // Reach the engine before touching anything.
    let engine = Engine::connect()?;
    let registry = home.open_registry()?;
    let _lock = home.lock()?;
    if registry.get(&id)?.is_some() {
        return Err(CommandError::AlreadyExists(id));
    }
    let ca = home.certificate_authority()?;
    let mut record = SessionRecord::new(
        id.clone(),
        Backend::Docker,
        sessionfs_pki::session_dns_name(id.as_str()),
    );
    if let WorkspaceSource::HostDir(dir) = &workspace {
        record.workspace = Some(dir.clone());
    }
    record.labels = opts.labels.iter().cloned().collect::<BTreeMap<_, _>>();
    record.labels.insert(OWNER_LABEL.to_owned(), owner);
    record.labels.insert(HOST_LABEL.to_owned(), this_host());
    let registered = register_and_issue(home, &registry, &ca, &record)?;
    let undo = |e: CommandError| registered.undo(e);
    let provisioned = engine
        .provision(home, &id, &spec)
        .map_err(|e| undo(e.into()))?;
    let undo_all = |e: CommandError| {
        engine.discard(&provisioned);
        undo(e)
    };
    registry
        .modify(&id, |r| {
            r.endpoint = Some(provisioned.endpoint);
            r.pid = provisioned.pid;
            r.labels.extend(provisioned.record_labels());
            r.labels.extend(spec.record_labels());
        })
        .map_err(|e| undo_all(e.into()))?;
    engine
        .wait_ready(
            home,
            &id,
            &provisioned.container,
            provisioned.endpoint,
            docker::READY_TIMEOUT,
        )
        .map_err(|e| undo_all(e.into()))?;
    let record = registry
        .modify(&id, |r| r.state = SessionState::Running)
        .map_err(|e| undo_all(e.into()))?;
    info!(session = %id, container = %provisioned.container, "created docker session");
    Ok(Created { record })
}

/// `session create --backend kubernetes`: a Secret with the session's certificates, a claim for
/// its workspace and a pod serving it (see [`crate::k8s`]); registered first, `running` with the
/// pod's endpoint once the pod is ready. On failure everything this call made is removed again
/// (a claim kept from an earlier session of the id stays).
fn create_kubernetes(
    home: &Home,
    id: SessionId,
    opts: &CreateOptions,
) -> Result<Created, CommandError> {
    use crate::k8s;
    let d = &opts.docker;
    let k = &opts.kubernetes;
    if opts.dir.is_some() {
        return Err(CommandError::BackendOption {
            flag: "--dir",
            applies_to: Backend::Local,
            hint: "; a kubernetes session's workspace is its claim (--size, --storage-class)",
        });
    }
    for (given, flag) in [
        (d.volume.is_some(), "--volume"),
        (d.workspace.is_some(), "--workspace"),
        (!d.env.is_empty(), "--env"),
    ] {
        if given {
            return Err(CommandError::BackendOption {
                flag,
                applies_to: Backend::Docker,
                hint: "",
            });
        }
    }
    if let Some((key, _)) = opts.labels.iter().find(|(k, _)| k.starts_with("k8s.")) {
        return Err(CommandError::ReservedLabel(key.clone()));
    }
    if k.workspace_path.is_some() && k.attach.is_none() {
        return Err(CommandError::Kube(k8s::KubeError::InvalidOption(
            "--workspace-path applies only with --attach".into(),
        )));
    }
    let cluster = k8s::Cluster::connect(k.context.as_deref(), k.namespace.as_deref())?;
    let mut pod = k8s::PodOptions::new(cluster.namespace());
    pod.context = k.context.clone();
    if let Some(image) = &d.image {
        image::check_reference(image)?;
        pod.image = image.clone();
    }
    if let Some(path) = &k.daemon_path {
        pod.daemon_path = path.clone();
    }
    pod.storage_class = k.storage_class.clone();
    if let Some(size) = &k.size {
        k8s::check_quantity("--size", size)?;
        pod.size = size.clone();
    }
    // Docker's parsed limits as Kubernetes quantities: millicores, bytes.
    pod.cpus = d.nano_cpus.map(|n| format!("{}m", (n / 1_000_000).max(1)));
    pod.memory = d.memory.map(|b| b.to_string());
    pod.node_selector = k.node_selector.iter().cloned().collect();
    if let Some(reach) = k.reach {
        pod.reach = reach;
    }
    if let Some(owner) = &opts.owner {
        pod.owner = owner.clone();
    }
    let registry = home.open_registry()?;
    let _lock = home.lock()?;
    if registry.get(&id)?.is_some() {
        return Err(CommandError::AlreadyExists(id));
    }
    let ca = home.certificate_authority()?;
    let installation = k8s::installation(home)?;
    let cluster = cluster.owned_by(&installation);
    let mut record = SessionRecord::new(
        id.clone(),
        Backend::Kubernetes,
        sessionfs_pki::session_dns_name(id.as_str()),
    );
    record.labels = opts.labels.iter().cloned().collect::<BTreeMap<_, _>>();
    record
        .labels
        .insert(OWNER_LABEL.to_owned(), pod.owner.clone());
    record.labels.insert(HOST_LABEL.to_owned(), this_host());
    record
        .labels
        .insert(k8s::RECORD_SPEC.to_owned(), crate::k8s::spec_label(&pod)?);
    record
        .labels
        .insert(k8s::RECORD_NAMESPACE.to_owned(), pod.namespace.clone());
    record
        .labels
        .insert(k8s::RECORD_POD.to_owned(), k8s::object_name(&id));
    let registered = register_and_issue(home, &registry, &ca, &record)?;
    let undo = |e: CommandError| registered.undo(e);
    if k.attach.is_some() {
        return attach_kubernetes(home, &registry, &cluster, &id, pod, k, &installation)
            .map_err(undo);
    }
    let made = cluster
        .provision(home, &id, &installation, &mut pod)
        .map_err(|e| undo(e.into()))?;
    // The node port the API server gave (`--reach node-port`) is the session's from now on.
    let spec = crate::k8s::spec_label(&pod)?;
    let undo_all = |e: CommandError| {
        cluster.discard(&id, &made);
        undo(e)
    };
    let endpoint = cluster
        .wait_ready(&id, pod.reach, k8s::READY_TIMEOUT)
        .map_err(|e| undo_all(e.into()))?;
    let record = registry
        .modify(&id, |r| {
            r.state = SessionState::Running;
            r.endpoint = Some(endpoint);
            r.labels.insert(k8s::RECORD_SPEC.to_owned(), spec.clone());
        })
        .map_err(|e| undo_all(e.into()))?;
    info!(session = %id, namespace = %pod.namespace, %endpoint, "created kubernetes session");
    Ok(Created { record })
}

/// `session create --backend kubernetes --attach POD[/CONTAINER]`: the session's Secret, its
/// daemon added as a native sidecar to the pod's Deployment (and its NodePort Service with
/// `--reach node-port`), `running` once a pod of the rollout is ready. A failure takes the sidecar
/// out again (the caller removes the registration and files).
fn attach_kubernetes(
    home: &Home,
    registry: &Registry,
    cluster: &crate::k8s::Cluster,
    id: &SessionId,
    mut pod: crate::k8s::PodOptions,
    k: &KubeOptions,
    installation: &str,
) -> Result<Created, CommandError> {
    use crate::k8s;
    for (given, flag) in [
        (k.size.is_some(), "--size"),
        (k.storage_class.is_some(), "--storage-class"),
    ] {
        if given {
            return Err(CommandError::Kube(k8s::KubeError::InvalidOption(format!(
                "{flag} does not apply with --attach: the session serves the workload's own volume"
            ))));
        }
    }
    let pod_ref = k.attach.as_deref().unwrap_or_default();
    let attach = cluster.attach(
        home,
        id,
        installation,
        &pod,
        pod_ref,
        k.workspace_path.as_deref(),
    )?;
    pod.attach = Some(attach.clone());
    let mut finish = || -> Result<SessionRecord, CommandError> {
        if let k8s::Reach::NodePort(asked) = pod.reach {
            let (port, _) = cluster.ensure_service(id, installation, &pod, asked)?;
            pod.reach = k8s::Reach::NodePort(port);
        }
        let endpoint = cluster.wait_ready(id, pod.reach, k8s::READY_TIMEOUT)?;
        let spec = crate::k8s::spec_label(&pod)?;
        Ok(registry.modify(id, |r| {
            r.state = SessionState::Running;
            r.endpoint = Some(endpoint);
            r.labels.insert(k8s::RECORD_SPEC.to_owned(), spec.clone());
            r.labels.remove(k8s::RECORD_POD);
        })?)
    };
    let record = match finish() {
        Ok(record) => record,
        Err(e) => {
            if let Err(de) = cluster.detach(id, &attach) {
                warn!(session = %id, error = %de, "cannot take the sidecar out again");
            }
            let _ = cluster.remove(id, false);
            return Err(e);
        }
    };
    info!(session = %id, deployment = %attach.deployment, "attached kubernetes session");
    Ok(Created { record })
}

/// A session `create` registered and issued certificates for: what a later failure removes
/// again (the registration, and the certificates unless they were there before, as `session
/// certs` leaves them for a compose container).
struct Registered<'a> {
    home: &'a Home,
    registry: &'a Registry,
    id: SessionId,
    certs_existed: bool,
}

impl Registered<'_> {
    /// Removes what was made and returns `e`.
    fn undo(&self, e: CommandError) -> CommandError {
        if let Err(re) = self.registry.remove(&self.id) {
            warn!(session = %self.id, error = %re, "cannot remove the failed session's registration");
        }
        remove_created_files(self.home, &self.id, false, self.certs_existed);
        e
    }
}

/// Registers `record` (claiming its id: nothing is touched if it is taken), then issues and pins
/// its certificates; on a failure after the registration, undoes it.
fn register_and_issue<'a>(
    home: &'a Home,
    registry: &'a Registry,
    ca: &CertificateAuthority,
    record: &SessionRecord,
) -> Result<Registered<'a>, CommandError> {
    let id = record.id.clone();
    registry.register(record)?;
    let registered = Registered {
        home,
        registry,
        certs_existed: home.session_cert_dir(&id).exists(),
        id: id.clone(),
    };
    home.issue_session_certs(ca, &id)
        .map_err(|e| registered.undo(e.into()))?;
    pin_certificate(home, registry, &id).map_err(|e| registered.undo(e))?;
    Ok(registered)
}

/// `--dir` or `--workspace`: must exist, be a directory, not lie inside a sessionfs mount, and
/// neither be, contain nor lie inside the state directory (which holds the CA key; `/` contains
/// it); returned canonical.
fn workspace_dir(home: &Home, dir: &Path) -> Result<PathBuf, CommandError> {
    let canonical = fs::canonicalize(dir).map_err(|e| match e.kind() {
        ErrorKind::NotFound => CommandError::DirMissing(dir.to_path_buf()),
        _ => io_error("resolve", dir)(e).into(),
    })?;
    if !canonical.is_dir() {
        return Err(CommandError::DirNotDirectory(dir.to_path_buf()));
    }
    home.ensure_root()?;
    let state = fs::canonicalize(home.root()).map_err(io_error("resolve", home.root()))?;
    if state.starts_with(&canonical) || canonical.starts_with(&state) {
        return Err(CommandError::DirAndState {
            dir: dir.to_path_buf(),
            state,
        });
    }
    let mounts = sessionfs_mountinfo::mounts()
        .map_err(io_error("read", sessionfs_mountinfo::MOUNTINFO.as_ref()))?;
    if let Some(mount) =
        sessionfs_mountinfo::mount_of(&mounts, &canonical).filter(|m| m.is_sessionfs())
    {
        return Err(CommandError::DirInMount {
            dir: dir.to_path_buf(),
            mount: mount.mount_point.clone(),
        });
    }
    Ok(canonical)
}

/// Undoes a failed `create`: the certificates and log, the default workspace if this
/// `create` made it (only while still empty), and the session directory if then empty.
fn remove_created_files(home: &Home, id: &SessionId, made_default: bool, keep_certs: bool) {
    let certs = (!keep_certs).then(|| home.session_cert_dir(id));
    for path in certs.into_iter().chain([home.daemon_log(id)]) {
        if let Err(e) = remove_path(&path) {
            warn!(error = %e, "cannot clean up after the failed create");
        }
    }
    let mut dirs = vec![home.session_dir(id)];
    if made_default {
        dirs.insert(0, home.default_workspace(id));
    }
    for dir in dirs {
        // Removes empty directories only; anything with content is left alone.
        if let Err(e) = fs::remove_dir(&dir) {
            if e.kind() != ErrorKind::NotFound && e.kind() != ErrorKind::DirectoryNotEmpty {
                warn!(path = %dir.display(), error = %e, "cannot clean up after the failed create");
            }
        }
    }
}

fn stop_quietly(record: &SessionRecord) {
    if let Err(e) = local::stop(record) {
        warn!(session = %record.id, error = %e, "cannot stop the daemon");
    }
}

// ---------------------------------------------------------------------------------------
// session ls

/// One row of `session ls`.
#[derive(Debug, Clone)]
pub struct SessionStatus {
    /// The registry's record.
    pub record: SessionRecord,
    /// Whether the daemon is alive: the local process, or the docker session's container
    /// running. `None` when it cannot be told (other backends, engine unreachable).
    pub alive: Option<bool>,
    /// Docker sessions: their container as the engine reports it.
    pub container: Option<ContainerStatus>,
    /// In a registry shared by hosts: whether the session's host is live. `None` in the SQLite
    /// registry of one host.
    pub reachable: Option<bool>,
}

impl SessionStatus {
    /// The STATE column: the recorded state, or `dead` for a session recorded as running
    /// whose daemon process or container is not running, or `gone` if its container does
    /// not exist.
    pub fn display_state(&self) -> &'static str {
        let serving = matches!(
            self.record.state,
            SessionState::Running | SessionState::Starting | SessionState::Unhealthy
        );
        if serving && self.reachable == Some(false) {
            "unreachable"
        } else if self.record.state == SessionState::Running && self.alive == Some(false) {
            match &self.container {
                Some(c) if !c.exists => "gone",
                _ => "dead",
            }
        } else {
            self.record.state.as_str()
        }
    }

    /// The CONTAINER column: the container's name, `-` for local sessions.
    pub fn container_text(&self) -> String {
        self.container
            .as_ref()
            .map_or_else(|| "-".to_owned(), |c| c.container.clone())
    }

    /// The HEALTH column: Docker's health status of a running container, the container's
    /// state otherwise (`exited`, `gone`, `unknown`, …), `-` for local sessions.
    pub fn health_text(&self) -> String {
        self.container
            .as_ref()
            .map_or_else(|| "-".to_owned(), |c| c.health.clone())
    }

    /// The `--json` object: `{id, backend, state, endpoint, workspace, pid, created_at,
    /// labels, alive, container, health}` in that order; `state` is the recorded state;
    /// `container` and `health` are null for local sessions.
    fn json_row(&self) -> JsonRow<'_> {
        let r = &self.record;
        JsonRow {
            id: r.id.as_str(),
            host: r.host(),
            backend: r.backend.as_str(),
            state: r.state.as_str(),
            endpoint: r.endpoint.map(|e| e.to_string()),
            workspace: r
                .workspace
                .as_ref()
                .map(|w| w.to_string_lossy().into_owned()),
            pid: r.pid,
            created_at: r.created_at,
            labels: r
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), display_label(k, v)))
                .collect(),
            alive: self.alive,
            reachable: self.reachable,
            container: self.container.as_ref().map(|c| c.container.clone()),
            health: self.container.as_ref().map(|c| c.health.clone()),
        }
    }
}

/// A label's value as `ls` shows it: container environment values may be secrets (tokens), so only
/// their names are shown.
fn display_label(key: &str, value: &str) -> String {
    if key != docker::RECORD_ENV {
        return value.to_owned();
    }
    match serde_json::from_str::<Vec<String>>(value) {
        Ok(vars) => {
            let names: Vec<String> = vars
                .iter()
                .map(|kv| format!("{}=…", kv.split_once('=').map_or(kv.as_str(), |(k, _)| k)))
                .collect();
            serde_json::Value::from(names).to_string()
        }
        Err(_) => "…".to_owned(),
    }
}

/// One element of `session ls --json`, fields in output order.
#[derive(serde::Serialize)]
struct JsonRow<'a> {
    id: &'a str,
    /// The host whose daemon serves the session (`null` for a record made before hosts).
    host: Option<&'a str>,
    backend: &'a str,
    state: &'a str,
    endpoint: Option<String>,
    workspace: Option<String>,
    pid: Option<u32>,
    created_at: u64,
    labels: BTreeMap<&'a str, String>,
    alive: Option<bool>,
    /// Whether the session's host is live (`null` in a registry of one host).
    reachable: Option<bool>,
    container: Option<String>,
    health: Option<String>,
}

/// `session ls`: every session with the liveness of its daemon (and, for docker sessions,
/// the container and its health; the engine is asked only if there are such sessions, and
/// an unreachable engine shows as health `unknown`). Writes nothing.
pub fn list(home: &Home) -> Result<Vec<SessionStatus>, CommandError> {
    let registry = home.open_registry()?;
    let records = registry.list()?;
    let engine = if records.iter().any(|r| r.backend == Backend::Docker) {
        Engine::connect()
            .inspect_err(|e| warn!(error = %e, "cannot show the state of docker sessions"))
            .ok()
    } else {
        None
    };
    let here = this_host();
    // In a registry shared by hosts: which hosts are live (a session whose host is not is
    // unreachable from here).
    let live = match registry.shared() {
        Ok(etcd) => Some(etcd.live_hosts()?),
        Err(_) => None,
    };
    let reachable = |record: &SessionRecord| {
        let live = live.as_ref()?;
        Some(record.host().is_none_or(|h| h == here || live.contains(h)))
    };
    Ok(records
        .into_iter()
        .map(|record| match record.backend {
            // Another host's daemon or container cannot be looked at from here.
            _ if record.elsewhere(&here) => SessionStatus {
                alive: None,
                container: None,
                reachable: reachable(&record),
                record,
            },
            Backend::Local => SessionStatus {
                alive: Some(local::is_running(&record)),
                container: None,
                reachable: reachable(&record),
                record,
            },
            Backend::Docker => {
                let status = match &engine {
                    Some(engine) => engine.status(&record),
                    None => docker::unknown_status(&record),
                };
                SessionStatus {
                    alive: (status.health != "unknown").then_some(status.running),
                    container: Some(status),
                    reachable: reachable(&record),
                    record,
                }
            }
            Backend::Kubernetes => SessionStatus {
                alive: None,
                container: None,
                reachable: reachable(&record),
                record,
            },
        })
        .collect())
}

/// The rows of `session ls` for the sessions a mount last saw (the registry cannot be reached):
/// their recorded state, nothing judged now.
pub fn render_seen(seen: &crate::hosts::SeenSessions) -> Vec<SessionStatus> {
    seen.records
        .iter()
        .map(|record| SessionStatus {
            record: record.clone(),
            alive: None,
            container: None,
            reachable: None,
        })
        .collect()
}

/// Whether `e` says the registry (etcd) cannot be reached now, rather than anything else.
pub fn registry_unreachable(e: &CommandError) -> bool {
    matches!(
        e,
        CommandError::Registry(RegistryError::Unavailable(_) | RegistryError::Etcd(_))
            | CommandError::State(StateError::Registry {
                source: RegistryError::Unavailable(_) | RegistryError::Etcd(_),
                ..
            })
    )
}

/// Seconds since `at` (unix seconds).
pub fn age_secs(at: u64) -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .saturating_sub(at)
}

/// The `session ls` table: a header and one line per session, columns separated by at
/// least two spaces, every line ending in a newline.
pub fn render_table(sessions: &[SessionStatus]) -> String {
    // The HOST column when the registry is shared by hosts.
    let hosts = sessions.iter().any(|s| s.reachable.is_some());
    let header = [
        "ID",
        "HOST",
        "BACKEND",
        "STATE",
        "ENDPOINT",
        "CONTAINER",
        "HEALTH",
        "WORKSPACE",
    ];
    let mut rows = vec![header.map(str::to_owned).to_vec()];
    rows.extend(sessions.iter().map(|s| {
        vec![
            s.record.id.to_string(),
            s.record.host().unwrap_or("-").to_owned(),
            s.record.backend.to_string(),
            s.display_state().to_owned(),
            endpoint_text(&s.record),
            s.container_text(),
            s.health_text(),
            workspace_text(&s.record),
        ]
    }));
    if !hosts {
        for row in &mut rows {
            row.remove(1);
        }
    }
    let mut widths = vec![0usize; rows[0].len()];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                let pad = widths[i] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The `session ls --json` output: a pretty-printed JSON array, newline-terminated.
pub fn render_json(sessions: &[SessionStatus]) -> String {
    let rows: Vec<JsonRow<'_>> = sessions.iter().map(SessionStatus::json_row).collect();
    let mut out = serde_json::to_string_pretty(&rows).unwrap_or_else(|_| "[]".to_owned());
    out.push('\n');
    out
}

// ---------------------------------------------------------------------------------------
// session stop / start

/// What `session stop` did.
#[derive(Debug, Clone)]
pub struct Stopped {
    /// The session.
    pub id: SessionId,
    /// What happened to a local daemon ([`StopOutcome::NotRunning`] for docker sessions).
    pub outcome: StopOutcome,
    /// Whether the registry already said `stopped`.
    pub was_stopped: bool,
    /// Docker sessions: the container and what happened to it.
    pub container: Option<(String, ContainerStop)>,
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = &self.id;
        if let Some((container, stop)) = &self.container {
            return match stop {
                ContainerStop::Stopped => {
                    write!(f, "stopped session {id} (container {container})")
                }
                ContainerStop::NotRunning if self.was_stopped => {
                    write!(f, "session {id} was already stopped")
                }
                ContainerStop::NotRunning => write!(
                    f,
                    "session {id} was not running (container {container} had exited); marked it stopped"
                ),
                ContainerStop::Missing => write!(
                    f,
                    "container {container} of session {id} is gone; marked the session gone"
                ),
            };
        }
        match self.outcome {
            StopOutcome::Terminated => write!(f, "stopped session {id}"),
            StopOutcome::Killed => write!(
                f,
                "stopped session {id} (killed: it ignored SIGTERM for {} s)",
                local::STOP_TIMEOUT.as_secs()
            ),
            StopOutcome::NotRunning if self.was_stopped => {
                write!(f, "session {id} was already stopped")
            }
            StopOutcome::NotRunning => write!(
                f,
                "session {id} was not running (its daemon had exited); marked it stopped"
            ),
        }
    }
}

/// `session stop`: stops the daemon (or the docker session's container) and records the
/// session as stopped (no endpoint, no pid); a docker session whose container no longer
/// exists is recorded as gone.
pub fn stop(home: &Home, id: &str) -> Result<Stopped, CommandError> {
    let id = parse_id(id)?;
    let registry = home.open_registry()?;
    let _lock = home.lock()?;
    let record = get_record(&registry, &id)?;
    let was_stopped = record.state == SessionState::Stopped;
    let (outcome, container, state) = match record.backend {
        Backend::Local => (local::stop(&record)?, None, SessionState::Stopped),
        Backend::Docker => {
            let stop = Engine::connect()?.stop(&record)?;
            let state = if stop == ContainerStop::Missing {
                SessionState::Gone
            } else {
                SessionState::Stopped
            };
            let container = docker::record_container(&record);
            (StopOutcome::NotRunning, Some((container, stop)), state)
        }
        Backend::Kubernetes => {
            let (cluster, opts) = crate::k8s::Cluster::for_record(home, &record)?;
            if let Some(attach) = &opts.attach {
                return Err(crate::k8s::attached_error(&id, attach, "stop").into());
            }
            // Stopped first: the mount's follower must not take the pod's deletion for a loss.
            registry.modify(&id, |r| {
                r.state = SessionState::Stopped;
                r.endpoint = None;
            })?;
            cluster.delete_pod(&id)?;
            (StopOutcome::NotRunning, None, SessionState::Stopped)
        }
    };
    registry.modify(&id, |r| {
        r.state = state;
        r.endpoint = None;
        r.pid = None;
    })?;
    Ok(Stopped {
        id,
        outcome,
        was_stopped,
        container,
    })
}

/// What `session start` did.
#[derive(Debug, Clone)]
pub enum Started {
    /// The daemon was started; the updated record.
    Started(SessionRecord),
    /// The daemon was running already; the record as stored.
    AlreadyRunning(SessionRecord),
}

impl fmt::Display for Started {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Started::Started(r) => {
                write!(
                    f,
                    "started session {} at {} serving {}",
                    r.id,
                    endpoint_text(r),
                    workspace_text(r)
                )?;
                if let Some(container) = r.labels.get(docker::RECORD_CONTAINER) {
                    write!(f, " in container {container}")?;
                }
                Ok(())
            }
            Started::AlreadyRunning(r) => write!(
                f,
                "session {} is already running at {}",
                r.id,
                endpoint_text(r)
            ),
        }
    }
}

/// `session start`: starts the daemon of a stopped (or dead) session. For a docker session
/// this starts its container, reads back the published port (which may have changed),
/// waits until it is ready and records the new endpoint.
pub fn start(home: &Home, id: &str) -> Result<Started, CommandError> {
    let id = parse_id(id)?;
    let registry = home.open_registry()?;
    let _lock = home.lock()?;
    let record = get_record(&registry, &id)?;
    match record.backend {
        Backend::Local => {}
        Backend::Docker => {
            let engine = Engine::connect()?;
            // Renewed only while stopped, and never for an adopted container (its certificates
            // are mounted from where `session certs` wrote them).
            let stopped = engine
                .inspect_container(&docker::record_container(&record))?
                .is_some_and(|c| c.state.and_then(|s| s.running) != Some(true));
            let adopted = record
                .labels
                .get(docker::RECORD_ADOPTED)
                .is_some_and(|v| v == "1");
            // A stopped container gets the state directory's certificates before it starts, renewed
            // or not: an upload that failed on an earlier start (after the renewal and its pin)
            // must not leave it with a certificate the registry no longer pins.
            let certs = if stopped && !adopted {
                if home.renew_session_certs_if_due(&id)? {
                    pin_certificate(home, &registry, &id)?;
                }
                Some(docker::certs_tar(&home.session_cert_dir(&id))?)
            } else {
                None
            };
            let (published, was_running) = engine.start_with(home, &record, certs)?;
            let unchanged = record.state == SessionState::Running
                && record.endpoint == Some(published.endpoint);
            let record = registry.modify(&id, |r| {
                r.state = SessionState::Running;
                r.endpoint = Some(published.endpoint);
                r.pid = published.pid;
            })?;
            return Ok(if was_running && unchanged {
                Started::AlreadyRunning(record)
            } else {
                Started::Started(record)
            });
        }
        Backend::Kubernetes => return start_kubernetes(home, &registry, record),
    }
    if local::is_running(&record) {
        return Ok(Started::AlreadyRunning(record));
    }
    if home.renew_session_certs_if_due(&id)? {
        pin_certificate(home, &registry, &id)?;
    }
    let started = local::start(home, &record)?;
    let record = registry
        .modify(&id, |r| {
            r.state = started.state;
            r.endpoint = started.endpoint;
            r.pid = started.pid;
        })
        .inspect_err(|_| stop_quietly(&started))?;
    Ok(Started::Started(record))
}

/// `session start` of a kubernetes session: the certificates (renewed if due) and revocation
/// list into its Secret, its pod made again unless it runs, and `running` at the pod's endpoint
/// once ready.
fn start_kubernetes(
    home: &Home,
    registry: &Registry,
    record: SessionRecord,
) -> Result<Started, CommandError> {
    use crate::k8s;
    let id = record.id.clone();
    let (cluster, opts) = k8s::Cluster::for_record(home, &record)?;
    if let Some(attach) = &opts.attach {
        return Err(k8s::attached_error(&id, attach, "start").into());
    }
    let installation = k8s::installation(home)?;
    let existing = cluster.live_pod(&id)?;
    let was_ready = existing.as_ref().is_some_and(k8s::ready);
    if existing.is_none() {
        if home.renew_session_certs_if_due(&id)? {
            pin_certificate(home, registry, &id)?;
        }
        cluster.put_secret(home, &id, &installation, &opts)?;
        cluster.create_pod(&id, &installation, &opts)?;
    }
    let endpoint = cluster.wait_ready(&id, opts.reach, k8s::READY_TIMEOUT)?;
    let unchanged = record.state == SessionState::Running && record.endpoint == Some(endpoint);
    let record = registry.modify(&id, |r| {
        r.state = SessionState::Running;
        r.endpoint = Some(endpoint);
    })?;
    Ok(if was_ready && unchanged {
        Started::AlreadyRunning(record)
    } else {
        Started::Started(record)
    })
}

// ---------------------------------------------------------------------------------------
// session rm

/// What `session rm` did.
#[derive(Debug, Clone)]
pub struct Removed {
    /// The session.
    pub id: SessionId,
    /// What happened to a local daemon ([`StopOutcome::NotRunning`] for docker sessions).
    pub outcome: StopOutcome,
    /// Files and directories deleted, in order (the workspace too, with `--purge`).
    pub deleted: Vec<PathBuf>,
    /// The workspace deleted by `--purge` (also in [`Removed::deleted`]).
    pub purged_workspace: Option<PathBuf>,
    /// The workspace kept (no `--purge`).
    pub kept_workspace: Option<PathBuf>,
    /// Docker sessions: the container, volume and host directory.
    pub container: Option<ContainerRemoval>,
}

impl fmt::Display for Removed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "removed session {}", self.id)?;
        match (&self.container, self.outcome) {
            (Some(c), _) if c.existed => write!(f, " (removed {} {})", c.kind, c.container)?,
            (Some(c), _) => write!(f, " ({} {} was already gone)", c.kind, c.container)?,
            (None, StopOutcome::NotRunning) => {}
            (None, StopOutcome::Terminated) => f.write_str(" (stopped its daemon)")?,
            (None, StopOutcome::Killed) => f.write_str(" (killed its daemon)")?,
        }
        for path in &self.deleted {
            let what = if self.purged_workspace.as_ref() == Some(path) {
                "workspace "
            } else {
                ""
            };
            write!(f, "\ndeleted {what}{}", path.display())?;
        }
        if let Some(ws) = &self.kept_workspace {
            write!(
                f,
                "\nkept workspace {} (use --purge to delete it)",
                ws.display()
            )?;
        }
        if let Some(c) = &self.container {
            match &c.volume {
                Some((name, true)) => write!(f, "\ndeleted {} {name}", c.volume_kind)?,
                Some((name, false)) => write!(
                    f,
                    "\nkept {} {name} (use --purge to delete it)",
                    c.volume_kind
                )?,
                None => {}
            }
            if let Some(dir) = &c.host_dir {
                write!(
                    f,
                    "\nkept workspace {} (a --workspace directory is never deleted)",
                    dir.display()
                )?;
            }
        }
        Ok(())
    }
}

/// `session rm`: stops the daemon, removes the registration and deletes
/// `sessions/<id>/` (certificates, log). The workspace is kept unless `purge`. A docker
/// session's container is removed; its volume is deleted only with `purge`, and a
/// bind-mounted host directory never.
pub fn remove(home: &Home, id: &str, purge: bool) -> Result<Removed, CommandError> {
    let id = parse_id(id)?;
    let registry = home.open_registry()?;
    let _lock = home.lock()?;
    let record = get_record(&registry, &id)?;
    let (outcome, container, workspace) = match record.backend {
        Backend::Local => {
            let workspace = record.workspace.clone();
            if purge {
                if let Some(ws) = &workspace {
                    check_purge(home, ws)?;
                }
            }
            (local::stop(&record)?, None, workspace)
        }
        Backend::Docker => {
            let removal = Engine::connect()?.remove(&record, purge)?;
            (StopOutcome::NotRunning, Some(removal), None)
        }
        Backend::Kubernetes => {
            // The API server first: a session whose cluster cannot be reached keeps its state (and
            // `rm --forget` drops it).
            let (cluster, opts) = crate::k8s::Cluster::for_record(home, &record)?;
            cluster.pod(&id)?;
            registry.modify(&id, |r| {
                r.state = SessionState::Stopped;
                r.endpoint = None;
            })?;
            let name = crate::k8s::object_name(&id);
            let namespace = cluster.namespace().to_owned();
            match &opts.attach {
                Some(attach) => {
                    // The workload's volume is its own: never deleted, even with --purge.
                    cluster.detach(&id, attach)?;
                    cluster.remove(&id, false)?;
                    (
                        StopOutcome::NotRunning,
                        Some(ContainerRemoval {
                            kind: "pod sidecar of deployment",
                            container: format!("{namespace}/{}", attach.deployment),
                            volume_kind: "",
                            existed: true,
                            volume: None,
                            host_dir: None,
                        }),
                        None,
                    )
                }
                None => {
                    let removed = cluster.remove(&id, purge)?;
                    (
                        StopOutcome::NotRunning,
                        Some(ContainerRemoval {
                            kind: "pod",
                            container: format!("{namespace}/{name}"),
                            volume_kind: "claim",
                            existed: removed.pod,
                            volume: Some((format!("{namespace}/{name}"), removed.claim)),
                            host_dir: None,
                        }),
                        None,
                    )
                }
            }
        }
    };
    registry.remove(&id)?;

    let mut deleted = Vec::new();
    for path in [home.session_cert_dir(&id), home.daemon_log(&id)] {
        if remove_path(&path)? {
            deleted.push(path);
        }
    }
    let mut report = Removed {
        id: id.clone(),
        outcome,
        deleted,
        purged_workspace: None,
        kept_workspace: None,
        container,
    };
    if let Some(ws) = workspace {
        if !purge {
            report.kept_workspace = ws.exists().then_some(ws);
        } else if remove_path(&ws)? {
            report.deleted.push(ws.clone());
            report.purged_workspace = Some(ws);
        }
    }
    let session_dir = home.session_dir(&id);
    match fs::remove_dir(&session_dir) {
        Ok(()) => report.deleted.push(session_dir),
        // Not empty: the kept default workspace (or files someone put there) remain.
        Err(e) if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::DirectoryNotEmpty => {}
        Err(e) => warn!(path = %session_dir.display(), error = %e, "cannot remove"),
    }
    info!(session = %id, "removed session");
    Ok(report)
}

/// What `session rm --forget` did.
#[derive(Debug, Clone)]
pub struct Forgotten {
    /// The session.
    pub id: SessionId,
    /// Files and directories of the state directory deleted.
    pub deleted: Vec<PathBuf>,
    /// What may still run or hold data where the session was, in words (left alone).
    pub left: String,
}

impl fmt::Display for Forgotten {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "forgot session {} without reaching its backend", self.id)?;
        for path in &self.deleted {
            write!(f, "\ndeleted {}", path.display())?;
        }
        write!(f, "\nleft as it was: {}", self.left)
    }
}

/// `session rm --forget`: removes the registration and the session's files in the state
/// directory without reaching its backend, for a session whose cluster, engine or context is
/// gone; whatever still runs or holds data there is left alone and named.
pub fn forget(home: &Home, id: &str) -> Result<Forgotten, CommandError> {
    let id = parse_id(id)?;
    let registry = home.open_registry()?;
    let _lock = home.lock()?;
    let record = get_record(&registry, &id)?;
    let left = match record.backend {
        Backend::Local => match (record.pid, &record.workspace) {
            (Some(pid), Some(ws)) => format!("daemon process {pid}, workspace {}", ws.display()),
            (None, Some(ws)) => format!("workspace {}", ws.display()),
            _ => "nothing known".to_owned(),
        },
        Backend::Docker => format!(
            "container {} and {}",
            docker::record_container(&record),
            workspace_text(&record)
        ),
        Backend::Kubernetes => format!(
            "pod, Secret and Service sessionfs-{id} and {}",
            workspace_text(&record)
        ),
    };
    registry.remove(&id)?;
    let mut deleted = Vec::new();
    for path in [home.session_cert_dir(&id), home.daemon_log(&id)] {
        if remove_path(&path)? {
            deleted.push(path);
        }
    }
    let session_dir = home.session_dir(&id);
    if fs::remove_dir(&session_dir).is_ok() {
        deleted.push(session_dir);
    }
    info!(session = %id, "forgot session");
    Ok(Forgotten { id, deleted, left })
}

// ---------------------------------------------------------------------------------------
// session recreate

/// What `session recreate` did.
#[derive(Debug, Clone)]
pub struct Recreated {
    /// The updated record.
    pub record: SessionRecord,
    /// Whether an old container existed (and was removed).
    pub replaced: bool,
}

impl fmt::Display for Recreated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.record;
        let container = r
            .labels
            .get(docker::RECORD_CONTAINER)
            .cloned()
            .unwrap_or_else(|| docker::container_name(&r.id));
        let image = r
            .labels
            .get(docker::RECORD_IMAGE)
            .map_or("-", String::as_str);
        write!(
            f,
            "recreated session {} at {} serving {} in container {container} from image {image}",
            r.id,
            endpoint_text(r),
            workspace_text(r)
        )?;
        if !self.replaced {
            f.write_str(" (the old container was already gone)")?;
        }
        Ok(())
    }
}

/// `session recreate`: replaces a docker session's container with a new one from its image
/// (`image`, else the recorded one, possibly rebuilt meanwhile) on the same volume or host
/// directory with the same limits and environment; uploads the certificates, starts it,
/// waits until ready and records the new endpoint. The mount follows the new endpoint
/// without a remount. The image is checked before the old container is removed; if the new
/// container does not come up it is stopped and the session recorded `stopped` (`gone` if
/// it could not be created), and `recreate` may be run again.
pub fn recreate(home: &Home, id: &str, image: Option<&str>) -> Result<Recreated, CommandError> {
    let id = parse_id(id)?;
    let registry = home.open_registry()?;
    let _lock = home.lock()?;
    let record = get_record(&registry, &id)?;
    if record.backend == Backend::Kubernetes {
        return recreate_kubernetes(home, &registry, record, image);
    }
    if record.backend != Backend::Docker {
        return Err(CommandError::DockerOnly {
            id,
            backend: record.backend,
            command: "recreate",
        });
    }
    if let Some(image) = image {
        image::check_reference(image)?;
    }
    let spec = ContainerSpec::from_record(&record, image)?;
    let engine = Engine::connect()?;
    // Refuse a missing or foreign image while the old container still exists.
    engine.session_image_daemon(&spec.image)?;
    let old = docker::record_container(&record);
    let replaced = engine.remove_container(&old)?;
    info!(session = %id, container = %old, replaced, "removed the old container");
    let provisioned = match engine.provision(home, &id, &spec) {
        Ok(p) => p,
        Err(e) => {
            registry.modify(&id, |r| {
                r.state = SessionState::Gone;
                r.endpoint = None;
                r.pid = None;
            })?;
            return Err(e.into());
        }
    };
    registry.modify(&id, |r| {
        r.state = SessionState::Starting;
        r.endpoint = Some(provisioned.endpoint);
        r.pid = provisioned.pid;
        r.labels.extend(provisioned.record_labels());
        r.labels.extend(spec.record_labels());
    })?;
    let ready = engine.wait_ready(
        home,
        &id,
        &provisioned.container,
        provisioned.endpoint,
        docker::READY_TIMEOUT,
    );
    if let Err(e) = ready {
        let current = get_record(&registry, &id)?;
        if let Err(se) = engine.stop(&current) {
            warn!(session = %id, error = %se, "cannot stop the new container");
        }
        registry.modify(&id, |r| {
            r.state = SessionState::Stopped;
            r.endpoint = None;
            r.pid = None;
        })?;
        return Err(e.into());
    }
    let record = registry.modify(&id, |r| r.state = SessionState::Running)?;
    info!(session = %id, container = %provisioned.container, "recreated docker session");
    Ok(Recreated { record, replaced })
}

/// `session recreate` of a kubernetes session: its pod deleted and made again (with `image` if
/// given) on the same claim, its certificates put into its Secret again first.
fn recreate_kubernetes(
    home: &Home,
    registry: &Registry,
    record: SessionRecord,
    image: Option<&str>,
) -> Result<Recreated, CommandError> {
    use crate::k8s;
    let id = record.id.clone();
    let (cluster, mut opts) = k8s::Cluster::for_record(home, &record)?;
    if let Some(attach) = &opts.attach {
        return Err(k8s::attached_error(&id, attach, "recreate").into());
    }
    if let Some(image) = image {
        image::check_reference(image)?;
        opts.image = image.to_owned();
    }
    let spec = crate::k8s::spec_label(&opts)?;
    let installation = k8s::installation(home)?;
    registry.modify(&id, |r| {
        r.state = SessionState::Stopped;
        r.endpoint = None;
    })?;
    let replaced = cluster.delete_pod(&id)?;
    if home.renew_session_certs_if_due(&id)? {
        pin_certificate(home, registry, &id)?;
    }
    cluster.put_secret(home, &id, &installation, &opts)?;
    registry.modify(&id, |r| {
        r.state = SessionState::Starting;
        r.labels.insert(k8s::RECORD_SPEC.to_owned(), spec.clone());
    })?;
    let started = cluster
        .create_pod(&id, &installation, &opts)
        .and_then(|()| cluster.wait_ready(&id, opts.reach, k8s::READY_TIMEOUT));
    let endpoint = match started {
        Ok(endpoint) => endpoint,
        Err(e) => {
            // No pod serves it: recorded stopped (not starting for ever); `start` tries again.
            registry.modify(&id, |r| r.state = SessionState::Stopped)?;
            return Err(e.into());
        }
    };
    let record = registry.modify(&id, |r| {
        r.state = SessionState::Running;
        r.endpoint = Some(endpoint);
    })?;
    info!(session = %id, "recreated kubernetes session");
    Ok(Recreated { record, replaced })
}

// ---------------------------------------------------------------------------------------
// image build

/// `image build`: builds the session image (see `image::build`), passing each line of the
/// engine's output to `progress`.
pub fn image_build(
    opts: &BuildOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Built, CommandError> {
    Ok(image::build(opts, progress)?)
}

/// Refuses to purge a workspace that is `/`, the user's home, or holds the state
/// directory.
pub(crate) fn check_purge(home: &Home, ws: &Path) -> Result<(), CommandError> {
    let refuse = |reason| {
        Err(CommandError::PurgeRefused {
            path: ws.to_path_buf(),
            reason,
        })
    };
    if ws.parent().is_none() {
        return refuse("it is the root directory");
    }
    // `ws` is canonical; compare with the canonical home too (it may sit behind a symlink), and refuse
    // the home directory and everything above it.
    if let Some(h) = std::env::var_os("HOME") {
        let home_dir = fs::canonicalize(&h).unwrap_or_else(|_| Path::new(&h).to_path_buf());
        if home_dir.starts_with(ws) {
            return refuse("it is your home directory or contains it");
        }
    }
    let state = fs::canonicalize(home.root()).unwrap_or_else(|_| home.root().to_path_buf());
    if state.starts_with(ws) {
        return refuse("it contains the sessionfs state directory");
    }
    Ok(())
}

/// Deletes a file or a directory tree (a symlink itself, never its target); false if it
/// did not exist.
fn remove_path(path: &Path) -> Result<bool, CommandError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_error("inspect", path)(e).into()),
    };
    let result = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    result.map_err(io_error("delete", path))?;
    Ok(true)
}

/// Records the pin of session `id`'s certificate (just issued) in its record: the bridge accepts no
/// other certificate for the session from then on.
pub(crate) fn pin_certificate(
    home: &Home,
    registry: &Registry,
    id: &SessionId,
) -> Result<(), CommandError> {
    let pin = home.session_cert_pin(id)?;
    // The name follows the certificate: a session of a host is named under the host's domain.
    let name = home.session_cert_name(id)?;
    registry.modify(id, |r| {
        r.labels.insert(CERT_PIN_LABEL.to_owned(), pin.clone());
        r.cert_identity = name.clone();
    })?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// mount / umount

/// Arguments of `mount`.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Upper bound for one file system operation.
    pub op_timeout: Duration,
    /// FUSE worker threads.
    pub threads: usize,
    /// Show each session's workspace owner as the mounting user (`--map-owner`).
    pub map_owner: bool,
    /// Let other local users use the mount (`--allow-other`).
    pub allow_other: bool,
    /// Follow no symlink on the mount (`--nosymfollow`).
    pub nosymfollow: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            mountpoint: PathBuf::from(mounts::DEFAULT_MOUNTPOINT),
            op_timeout: Duration::from_secs(10),
            threads: 4,
            map_owner: false,
            allow_other: false,
            nosymfollow: false,
        }
    }
}

/// `mount`: checks the FUSE device, the mount point and `fusermount3`, makes sure the
/// bridge certificate exists, then mounts and serves until unmounted or signalled.
pub fn mount(home: &Home, opts: &MountOptions) -> Result<(), CommandError> {
    let mountpoint = mounts::preflight(&opts.mountpoint)?;
    home.ensure_bridge_cert()?;
    // Created here so the bridge finds a registry even before the first session.
    drop(home.open_registry()?);
    let mut config = home.bridge_config();
    config.op_timeout = opts.op_timeout;
    config.connect_timeout = config.connect_timeout.min(opts.op_timeout);
    config.fuse_threads = opts.threads.max(1);
    config.map_owner = opts.map_owner;
    config.allow_other = opts.allow_other;
    config.nosymfollow = opts.nosymfollow;
    info!(mountpoint = %mountpoint.display(), home = %home.root().display(), "mounting");
    // Follows Docker while mounted; stopped and joined when dropped, after the unmount.
    let _watcher =
        crate::reconcile::Watcher::spawn(home.clone()).map_err(CommandError::Reconciler)?;
    // Follows the API server for kubernetes sessions while mounted.
    let _follower = crate::k8s::Follower::spawn(home.clone()).map_err(CommandError::Reconciler)?;
    // A host of several is live while it is mounted (as while `host serve` runs).
    let _duties = crate::hosts::start_duties(home)?;
    sessionfs_bridge::mount(config, &mountpoint).map_err(|source| CommandError::Bridge {
        mountpoint: opts.mountpoint.clone(),
        source,
    })
}

/// What `umount` did.
#[derive(Debug, Clone)]
pub struct Unmounted {
    /// The mount point (canonical).
    pub mountpoint: PathBuf,
}

impl fmt::Display for Unmounted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unmounted {}", self.mountpoint.display())
    }
}

/// `umount`: unmounts the bridge (or whatever is mounted) at `mountpoint`.
pub fn umount(mountpoint: &Path) -> Result<Unmounted, CommandError> {
    Ok(Unmounted {
        mountpoint: mounts::unmount(mountpoint)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn home() -> (tempfile::TempDir, Home) {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::new(tmp.path().join("state")).unwrap();
        (tmp, home)
    }

    #[test]
    fn ids_are_refused_precisely() {
        let (_tmp, home) = home();
        for (id, reason) in [
            ("Foo", "character 'F' at position 1 is not allowed"),
            ("-x", "it starts with '-'"),
            ("", "it is empty"),
            ("../x", "character '.' at position 1 is not allowed"),
        ] {
            let opts = CreateOptions {
                id: id.into(),
                ..Default::default()
            };
            let msg = create(&home, &opts).unwrap_err().to_string();
            assert!(
                msg.starts_with(&format!("invalid session id {id:?}: {reason}")),
                "{msg}"
            );
            for err in [
                stop(&home, id).unwrap_err(),
                start(&home, id).unwrap_err(),
                remove(&home, id, false).unwrap_err(),
            ] {
                assert!(matches!(err, CommandError::InvalidId(_)), "{err}");
            }
        }
        // Nothing was created for refused ids.
        assert!(!home.sessions_dir().exists());
    }

    #[test]
    fn unknown_sessions() {
        let (_tmp, home) = home();
        assert_eq!(stop(&home, "x").unwrap_err().to_string(), "no session `x`");
        assert_eq!(start(&home, "x").unwrap_err().to_string(), "no session `x`");
        assert_eq!(
            remove(&home, "x", true).unwrap_err().to_string(),
            "no session `x`"
        );
        assert!(list(&home).unwrap().is_empty());
    }

    #[test]
    fn duplicate_and_bad_dir_are_refused() {
        let (tmp, home) = home();
        let registry = home.open_registry().unwrap();
        let mut rec = SessionRecord::new("dup".parse().unwrap(), Backend::Local, "d".into());
        rec.workspace = Some(tmp.path().to_path_buf());
        registry.register(&rec).unwrap();
        let opts = CreateOptions {
            id: "dup".into(),
            ..Default::default()
        };
        assert_eq!(
            create(&home, &opts).unwrap_err().to_string(),
            "session `dup` already exists"
        );
        assert!(!home.session_dir(&rec.id).exists());

        let missing = tmp.path().join("missing");
        let opts = CreateOptions {
            id: "new".into(),
            dir: Some(missing.clone()),
            ..Default::default()
        };
        assert_eq!(
            create(&home, &opts).unwrap_err().to_string(),
            format!("workspace directory {} does not exist", missing.display())
        );
        let file = tmp.path().join("file");
        fs::write(&file, "").unwrap();
        let opts = CreateOptions {
            id: "new".into(),
            dir: Some(file.clone()),
            ..Default::default()
        };
        assert_eq!(
            create(&home, &opts).unwrap_err().to_string(),
            format!("workspace directory {} is not a directory", file.display())
        );
    }

    #[test]
    fn failed_start_is_undone() {
        let (tmp, home) = home();
        let user_dir = tmp.path().join("work");
        fs::create_dir(&user_dir).unwrap();
        fs::write(user_dir.join("keep.txt"), "data").unwrap();
        // A "daemon" that exits at once with a message on stderr.
        let fake = tmp.path().join("sessionfsd");
        fs::write(&fake, "#!/bin/sh\necho 'boom: bad certs' >&2\nexit 3\n").unwrap();
        fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        // Only this test sets the variable; other tests do not start daemons.
        std::env::set_var(local::DAEMON_ENV, &fake);
        let id: SessionId = "s1".parse().unwrap();
        for dir in [Some(user_dir.clone()), None] {
            let opts = CreateOptions {
                id: "s1".into(),
                dir: dir.clone(),
                labels: vec![("k".into(), "v".into())],
                ..Default::default()
            };
            let msg = create(&home, &opts).unwrap_err().to_string();
            assert!(
                msg.contains("sessionfsd for session `s1` failed to start"),
                "{msg}"
            );
            assert!(msg.contains("exit status: 3"), "{msg}");
            assert!(msg.contains("boom: bad certs"), "{msg}");
            assert!(home.open_registry().unwrap().get(&id).unwrap().is_none());
            assert!(!home.session_dir(&id).exists());
            assert_eq!(
                fs::read_to_string(user_dir.join("keep.txt")).unwrap(),
                "data"
            );
        }
        // A kept default workspace from an earlier session survives a failed create.
        let kept = home.default_workspace(&id);
        fs::create_dir_all(&kept).unwrap();
        fs::write(kept.join("old.txt"), "old").unwrap();
        let opts = CreateOptions {
            id: "s1".into(),
            ..Default::default()
        };
        create(&home, &opts).unwrap_err();
        assert_eq!(fs::read_to_string(kept.join("old.txt")).unwrap(), "old");
        assert!(!home.session_cert_dir(&id).exists());
        std::env::remove_var(local::DAEMON_ENV);
    }

    #[test]
    fn backend_options_are_checked_before_anything_happens() {
        let (tmp, home) = home();
        let local_with_image = CreateOptions {
            id: "s".into(),
            docker: DockerOptions {
                image: Some("i".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            create(&home, &local_with_image).unwrap_err().to_string(),
            "--image applies only to --backend docker"
        );
        let docker = |docker: DockerOptions, dir: Option<PathBuf>, labels| CreateOptions {
            id: "s".into(),
            backend: Backend::Docker,
            dir,
            labels,
            owner: None,
            docker,
            kubernetes: KubeOptions::default(),
        };
        let msg = create(
            &home,
            &docker(DockerOptions::default(), Some(tmp.path().into()), vec![]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.starts_with("--dir applies only to --backend local"),
            "{msg}"
        );
        let both = DockerOptions {
            volume: Some("v1".into()),
            workspace: Some(tmp.path().into()),
            ..Default::default()
        };
        assert!(matches!(
            create(&home, &docker(both, None, vec![])).unwrap_err(),
            CommandError::VolumeAndWorkspace
        ));
        let bad_volume = DockerOptions {
            volume: Some("a/b".into()),
            ..Default::default()
        };
        assert!(create(&home, &docker(bad_volume, None, vec![]))
            .unwrap_err()
            .to_string()
            .starts_with("invalid volume name"));
        let reserved = vec![("docker.container".to_owned(), "x".to_owned())];
        assert!(matches!(
            create(&home, &docker(DockerOptions::default(), None, reserved)).unwrap_err(),
            CommandError::ReservedLabel(_)
        ));
        let kube_with_volume = CreateOptions {
            id: "s".into(),
            backend: Backend::Kubernetes,
            docker: DockerOptions {
                volume: Some("v".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            create(&home, &kube_with_volume).unwrap_err().to_string(),
            "--volume applies only to --backend docker"
        );
        let local_with_namespace = CreateOptions {
            id: "s".into(),
            kubernetes: KubeOptions {
                namespace: Some("ns".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            create(&home, &local_with_namespace)
                .unwrap_err()
                .to_string(),
            "--namespace applies only to --backend kubernetes"
        );
        assert_eq!(parse_backend("docker"), Ok(Backend::Docker));
        assert_eq!(parse_backend("kubernetes"), Ok(Backend::Kubernetes));
        assert!(parse_backend("vm").is_err());
        // Nothing was created.
        assert!(!home.root().exists());
    }

    #[test]
    fn envs() {
        assert_eq!(
            parse_env("A=b=c").unwrap(),
            ("A".to_owned(), "b=c".to_owned())
        );
        assert!(parse_env("=b").is_err());
        assert!(parse_env("AB").is_err());
    }

    #[test]
    fn labels() {
        assert_eq!(
            parse_label("a=b=c").unwrap(),
            ("a".to_owned(), "b=c".to_owned())
        );
        assert_eq!(parse_label("a=").unwrap(), ("a".to_owned(), String::new()));
        assert_eq!(
            parse_label("=b").unwrap_err().to_string(),
            "invalid label \"=b\": expected KEY=VALUE with a non-empty KEY"
        );
        assert!(parse_label("ab").is_err());
    }

    fn status(id: &str, state: SessionState, alive: Option<bool>) -> SessionStatus {
        let mut record = SessionRecord::new(id.parse().unwrap(), Backend::Local, "x".into());
        record.state = state;
        record.created_at = 1_700_000_000;
        if state == SessionState::Running {
            record.endpoint = Some("127.0.0.1:40000".parse().unwrap());
            record.pid = Some(4242);
        }
        record.workspace = Some(PathBuf::from(format!("/w/{id}")));
        record.labels.insert("team".into(), "a".into());
        SessionStatus {
            record,
            alive,
            container: None,
            reachable: None,
        }
    }

    fn docker_status(id: &str, state: SessionState, health: &str, exists: bool) -> SessionStatus {
        let mut record = SessionRecord::new(id.parse().unwrap(), Backend::Docker, "x".into());
        record.state = state;
        record.created_at = 1_700_000_000;
        let container = format!("sessionfs-{id}");
        record
            .labels
            .insert(docker::RECORD_CONTAINER.into(), container.clone());
        record
            .labels
            .insert(docker::RECORD_VOLUME.into(), container.clone());
        if state == SessionState::Running {
            record.endpoint = Some("127.0.0.1:32768".parse().unwrap());
        }
        let running = health == "healthy";
        SessionStatus {
            record,
            alive: Some(running),
            container: Some(ContainerStatus {
                container,
                running,
                exists,
                health: health.into(),
                endpoint: None,
            }),
            reachable: None,
        }
    }

    /// In a registry shared by hosts the table has a HOST column, and a session whose host is not
    /// live shows `unreachable` (whatever its record says), while a stopped one stays `stopped`.
    #[test]
    fn table_with_hosts() {
        let on = |id: &str, host: &str, state, reachable| {
            let mut s = status(id, state, None);
            s.record.labels.insert(HOST_LABEL.into(), host.into());
            s.reachable = Some(reachable);
            s
        };
        let rows = [
            on("here", "h1", SessionState::Running, true),
            on("there", "h2", SessionState::Running, false),
            on("idle", "h2", SessionState::Stopped, false),
        ];
        assert_eq!(
            render_table(&rows),
            "\
ID     HOST  BACKEND  STATE        ENDPOINT         CONTAINER  HEALTH  WORKSPACE
here   h1    local    running      127.0.0.1:40000  -          -       /w/here
there  h2    local    unreachable  127.0.0.1:40000  -          -       /w/there
idle   h2    local    stopped      -                -          -       /w/idle
"
        );
        let json: serde_json::Value = serde_json::from_str(&render_json(&rows)).unwrap();
        assert_eq!(json[1]["reachable"], false);
        assert_eq!(json[1]["host"], "h2");
        assert_eq!(json[0]["reachable"], true);
    }

    #[test]
    fn table_and_json() {
        let rows = [
            status("alpha", SessionState::Running, Some(true)),
            status("b", SessionState::Running, Some(false)),
            status("gamma-long-id", SessionState::Stopped, Some(false)),
        ];
        assert_eq!(
            render_table(&rows),
            "\
ID             BACKEND  STATE    ENDPOINT         CONTAINER  HEALTH  WORKSPACE
alpha          local    running  127.0.0.1:40000  -          -       /w/alpha
b              local    dead     127.0.0.1:40000  -          -       /w/b
gamma-long-id  local    stopped  -                -          -       /w/gamma-long-id
"
        );
        assert_eq!(
            render_table(&[]),
            "ID  BACKEND  STATE  ENDPOINT  CONTAINER  HEALTH  WORKSPACE\n"
        );
        let docker_rows = [
            docker_status("web", SessionState::Running, "healthy", true),
            docker_status("down", SessionState::Stopped, "exited", true),
            docker_status("lost", SessionState::Running, "gone", false),
            docker_status("died", SessionState::Running, "exited", true),
        ];
        assert_eq!(
            render_table(&docker_rows),
            "\
ID    BACKEND  STATE    ENDPOINT         CONTAINER       HEALTH   WORKSPACE
web   docker   running  127.0.0.1:32768  sessionfs-web   healthy  volume sessionfs-web
down  docker   stopped  -                sessionfs-down  exited   volume sessionfs-down
lost  docker   gone     127.0.0.1:32768  sessionfs-lost  gone     volume sessionfs-lost
died  docker   dead     127.0.0.1:32768  sessionfs-died  exited   volume sessionfs-died
"
        );
        let json: serde_json::Value = serde_json::from_str(&render_json(&docker_rows)).unwrap();
        assert_eq!(json[0]["container"], "sessionfs-web");
        assert_eq!(json[0]["health"], "healthy");
        assert_eq!(json[0]["alive"], true);
        assert_eq!(json[0]["workspace"], serde_json::Value::Null);
        assert_eq!(json[0]["labels"]["docker.volume"], "sessionfs-web");
        let json: serde_json::Value = serde_json::from_str(&render_json(&rows)).unwrap();
        assert_eq!(
            json[1],
            json!({
                "id": "b", "host": null, "backend": "local", "state": "running",
                "endpoint": "127.0.0.1:40000", "workspace": "/w/b", "pid": 4242,
                "created_at": 1_700_000_000u64, "labels": {"team": "a"}, "alive": false, "reachable": null,
                "container": null, "health": null,
            })
        );
        assert_eq!(json[2]["endpoint"], serde_json::Value::Null);
        assert_eq!(render_json(&[]), "[]\n");
        // Keys in the documented order.
        let text = render_json(&rows[..1]);
        let keys = [
            "id",
            "host",
            "backend",
            "state",
            "endpoint",
            "workspace",
            "pid",
            "created_at",
            "labels",
            "alive",
            "container",
            "health",
        ];
        let positions: Vec<usize> = keys
            .iter()
            .map(|k| text.find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
    }

    #[test]
    fn reports() {
        let id: SessionId = "s".parse().unwrap();
        let stopped = |outcome, was_stopped| {
            Stopped {
                id: id.clone(),
                outcome,
                was_stopped,
                container: None,
            }
            .to_string()
        };
        assert_eq!(stopped(StopOutcome::Terminated, false), "stopped session s");
        assert_eq!(
            stopped(StopOutcome::NotRunning, true),
            "session s was already stopped"
        );
        let removed = Removed {
            id: id.clone(),
            outcome: StopOutcome::Terminated,
            deleted: vec![PathBuf::from("/st/sessions/s/certs")],
            purged_workspace: None,
            kept_workspace: Some(PathBuf::from("/w")),
            container: None,
        };
        assert_eq!(
            removed.to_string(),
            "removed session s (stopped its daemon)\ndeleted /st/sessions/s/certs\n\
             kept workspace /w (use --purge to delete it)"
        );
        let purged = Removed {
            id: id.clone(),
            outcome: StopOutcome::NotRunning,
            deleted: vec![
                PathBuf::from("/st/sessions/s/certs"),
                PathBuf::from("/st/sessions/s/workspace"),
                PathBuf::from("/st/sessions/s"),
            ],
            purged_workspace: Some(PathBuf::from("/st/sessions/s/workspace")),
            kept_workspace: None,
            container: None,
        };
        assert_eq!(
            purged.to_string(),
            "removed session s\ndeleted /st/sessions/s/certs\n\
             deleted workspace /st/sessions/s/workspace\ndeleted /st/sessions/s"
        );
        let docker_stopped = |stop, was_stopped| {
            Stopped {
                id: id.clone(),
                outcome: StopOutcome::NotRunning,
                was_stopped,
                container: Some(("sessionfs-s".into(), stop)),
            }
            .to_string()
        };
        assert_eq!(
            docker_stopped(ContainerStop::Stopped, false),
            "stopped session s (container sessionfs-s)"
        );
        assert_eq!(
            docker_stopped(ContainerStop::NotRunning, true),
            "session s was already stopped"
        );
        assert_eq!(
            docker_stopped(ContainerStop::Missing, false),
            "container sessionfs-s of session s is gone; marked the session gone"
        );
        let removed_docker = |volume, host_dir: Option<&str>, existed| {
            Removed {
                id: id.clone(),
                outcome: StopOutcome::NotRunning,
                deleted: vec![PathBuf::from("/st/sessions/s/certs")],
                purged_workspace: None,
                kept_workspace: None,
                container: Some(ContainerRemoval {
                    kind: "container",
                    container: "sessionfs-s".into(),
                    volume_kind: "volume",
                    existed,
                    volume,
                    host_dir: host_dir.map(PathBuf::from),
                }),
            }
            .to_string()
        };
        assert_eq!(
            removed_docker(Some(("sessionfs-s".into(), false)), None, true),
            "removed session s (removed container sessionfs-s)\ndeleted /st/sessions/s/certs\n\
             kept volume sessionfs-s (use --purge to delete it)"
        );
        assert_eq!(
            removed_docker(Some(("sessionfs-s".into(), true)), None, false),
            "removed session s (container sessionfs-s was already gone)\n\
             deleted /st/sessions/s/certs\ndeleted volume sessionfs-s"
        );
        assert_eq!(
            removed_docker(None, Some("/src"), true),
            "removed session s (removed container sessionfs-s)\ndeleted /st/sessions/s/certs\n\
             kept workspace /src (a --workspace directory is never deleted)"
        );
    }

    #[test]
    fn ls_hides_environment_values() {
        let shown = display_label(docker::RECORD_ENV, r#"["API_TOKEN=s3cret","A=b=c"]"#);
        assert_eq!(shown, r#"["API_TOKEN=…","A=…"]"#);
        assert!(!shown.contains("s3cret"));
        assert_eq!(display_label("team", "core"), "core");
    }

    #[test]
    fn purge_guard() {
        let (tmp, home) = home();
        assert!(check_purge(&home, Path::new("/")).is_err());
        let msg = check_purge(&home, tmp.path()).unwrap_err().to_string();
        assert!(
            msg.ends_with("it contains the sessionfs state directory"),
            "{msg}"
        );
        assert!(check_purge(&home, &tmp.path().join("elsewhere")).is_ok());
        // The home directory and any directory above it are refused.
        if let Some(h) = std::env::var_os("HOME") {
            let h = fs::canonicalize(h).unwrap();
            assert!(check_purge(&home, &h).is_err());
            if let Some(parent) = h.parent().filter(|p| p.parent().is_some()) {
                assert!(check_purge(&home, parent).is_err());
            }
        }
    }

    #[test]
    fn rm_without_daemon_keeps_workspace_unless_purged() {
        let (tmp, home) = home();
        let registry = home.open_registry().unwrap();
        let ca = home.certificate_authority().unwrap();
        for (name, purge) in [("keep", false), ("purge", true)] {
            let id: SessionId = name.parse().unwrap();
            home.issue_session_certs(&ca, &id).unwrap();
            fs::write(home.daemon_log(&id), "log\n").unwrap();
            let ws = tmp.path().join(format!("ws-{name}"));
            fs::create_dir(&ws).unwrap();
            fs::write(ws.join("f"), "x").unwrap();
            let mut rec = SessionRecord::new(id.clone(), Backend::Local, "x".into());
            rec.workspace = Some(ws.clone());
            rec.state = SessionState::Stopped;
            registry.register(&rec).unwrap();
            let report = remove(&home, name, purge).unwrap();
            assert_eq!(report.outcome, StopOutcome::NotRunning);
            assert!(registry.get(&id).unwrap().is_none());
            assert!(!home.session_dir(&id).exists());
            assert_eq!(ws.exists(), !purge);
            let text = report.to_string();
            assert!(text.contains(&format!("deleted {}", home.session_cert_dir(&id).display())));
            assert!(text.contains(&format!("deleted {}", home.daemon_log(&id).display())));
            if purge {
                assert!(
                    text.contains(&format!("deleted workspace {}", ws.display())),
                    "{text}"
                );
            } else {
                assert!(
                    text.contains(&format!("kept workspace {}", ws.display())),
                    "{text}"
                );
            }
        }
    }
}
