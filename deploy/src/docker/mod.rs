//! The Docker backend: a session's `sessionfsd` in its own container, driven through the
//! Docker Engine API (bollard, over the engine's unix socket only).
//!
//! - [`Engine`] is a connection to the engine (API version negotiated, so old engines work)
//!   with a private single-threaded runtime; its methods are blocking.
//! - [`Engine::provision`] makes a session's container: the workspace volume (or bind mount),
//!   the container `sessionfs-<id>` with the daemon's command line, a health check running
//!   `sessionfsd --health`, the daemon port 7878/udp published on `127.0.0.1` at a port Docker
//!   picks, limits and restart policy; uploads the session's certificates into
//!   `/run/sessionfs/` (they are never part of the image) and starts it.
//! - [`Engine::wait_ready`] waits, with a deadline, until Docker reports the container healthy
//!   or the daemon answers a health probe through the published port.
//! - [`Engine::start_with`], [`Engine::stop`], [`Engine::remove`] and [`Engine::status`] map the
//!   `session` commands onto the container.
//!
//! Everything this backend creates carries the labels [`LABEL_SESSION`], [`LABEL_MANAGED`] and
//! [`LABEL_HOME`]; the registry record of a docker session names its container, container id,
//! image and volume (or host workspace) in labels ([`RECORD_CONTAINER`] and friends).
//!
//! This module holds the engine connection and its calls, the labels, names and errors; the
//! container's specification and create request are in `spec.rs`, what an inspect answer means
//! (state, status, published port) in `inspect.rs`, and the certificate archive in `archive.rs`.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

use bollard::models::{
    ContainerInspectResponse, ContainerSummary, EventMessage, HealthStatusEnum, ImageInspect,
    NetworkCreateRequest, VolumeCreateRequest,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, EventsOptionsBuilder,
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder, StopContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures_util::{Stream, StreamExt};
use sessionfs_registry::{SessionId, SessionRecord};
use tracing::{debug, info, warn};

use crate::state::Home;

mod archive;
mod inspect;
mod spec;

pub use archive::{certs_tar, write_tar, TarEntry};
use inspect::{main_pid, not_running, status_of};
pub use inspect::{
    observed_state, published_beyond_loopback, unknown_status, ContainerStatus, Published,
};
use spec::container_body;
pub(crate) use spec::object_labels;
pub use spec::{
    check_volume_name, parse_cpus, parse_memory, ContainerSpec, WorkspaceSource, KEPT_CAPABILITIES,
};

/// The address session containers publish their daemon port on: [`set_publish_ip`]'s, else
/// `127.0.0.1`.
static PUBLISH_IP: std::sync::OnceLock<std::net::IpAddr> = std::sync::OnceLock::new();

/// On a host of several, containers publish their daemon's port on the host's advertised address
/// (where other hosts reach it) instead of loopback. Only the first call counts.
pub fn set_publish_ip(ip: std::net::IpAddr) {
    let _ = PUBLISH_IP.set(ip);
}

/// See [`set_publish_ip`].
pub fn publish_ip() -> std::net::IpAddr {
    PUBLISH_IP
        .get()
        .copied()
        .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into())
}

/// Label on every container and volume sessionfs creates: the session id.
pub const LABEL_SESSION: &str = "sessionfs.session";
/// Label on every container and volume sessionfs creates, value `1`.
pub const LABEL_MANAGED: &str = "sessionfs.managed";
/// Label on every container and volume sessionfs creates: the state directory that owns it.
pub const LABEL_HOME: &str = "sessionfs.home";
/// Label, value `1`, on a container started outside sessionfs (compose, another
/// orchestrator) that the reconciler may adopt as a docker session (see [`crate::compose`]).
pub const LABEL_ADOPT: &str = "sessionfs.adopt";
/// Record label, value `1`: the session's container was adopted, not created by sessionfs.
pub const RECORD_ADOPTED: &str = "docker.adopted";

/// Record label: the container's name.
pub const RECORD_CONTAINER: &str = "docker.container";
/// Record label: the container's id.
pub const RECORD_CONTAINER_ID: &str = "docker.container-id";
/// Record label: the image the container was created from.
pub const RECORD_IMAGE: &str = "docker.image";
/// Record label: the named volume mounted at `/workspace`.
pub const RECORD_VOLUME: &str = "docker.volume";
/// Record label: the host directory bind-mounted at `/workspace`.
pub const RECORD_WORKSPACE: &str = "docker.workspace";
/// Record label: the CPU limit in billionths of a CPU (`--cpus`), if limited.
pub const RECORD_NANO_CPUS: &str = "docker.nano-cpus";
/// Record label: the memory limit in bytes (`--memory`), if limited.
pub const RECORD_MEMORY: &str = "docker.memory";
/// Record label: the `--env` variables, a JSON array of `KEY=VALUE` strings, if any.
pub const RECORD_ENV: &str = "docker.env";

/// The daemon's port inside the container.
pub const DAEMON_PORT: u16 = 7878;
/// The published port's key in Docker's port maps.
pub const PORT_KEY: &str = "7878/udp";
/// Where the certificates go inside the container (the daemon's `--cert-dir`).
pub const CERT_DIR: &str = "/run/sessionfs";
/// The workspace inside the container (the daemon's `--root`).
pub const WORKSPACE: &str = "/workspace";
/// How long [`Engine::wait_ready`] waits for a started container.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Seconds Docker waits after SIGTERM before killing the container on stop.
pub const STOP_GRACE_SECS: i32 = 10;
/// Health check interval, timeout (both 2 s) and retries (3).
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
const HEALTH_RETRIES: i64 = 3;
/// Seconds one Docker API request may take (builds stream, so this bounds each read).
const REQUEST_TIMEOUT_SECS: u64 = 120;
/// The default engine socket.
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// How often readiness is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long one readiness probe through the published port may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Lines of container log quoted in errors.
const LOG_TAIL_LINES: usize = 20;
/// Attempts of a forced container removal (see [`Engine::remove_container`]).
const REMOVE_ATTEMPTS: u32 = 5;
/// How long one quick Docker API call (inspect, list) may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the Docker backend.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// `DOCKER_HOST` names something other than a unix socket.
    #[error(
        "DOCKER_HOST={0} is not supported: sessionfs talks to the Docker engine over a unix socket \
         only (unset DOCKER_HOST or set it to unix:///path/to/docker.sock)"
    )]
    UnsupportedHost(String),
    /// The engine did not answer.
    #[error(
        "cannot reach the Docker engine at {socket}: {source} (is dockerd running? \
         scripts/install-deps.sh starts one)"
    )]
    Connect {
        /// The socket tried.
        socket: String,
        /// The underlying error.
        #[source]
        source: bollard::errors::Error,
    },
    /// The private runtime could not be created.
    #[error("cannot start the Docker client's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The session network was created but cannot be found.
    #[error(
        "docker: the network {SESSION_NETWORK} was created but is not listed (removed meanwhile?)"
    )]
    NoNetwork,
    /// An API call failed.
    #[error("docker: cannot {action}: {source}")]
    Api {
        /// What was attempted, e.g. "create container sessionfs-web".
        action: String,
        /// The underlying error.
        #[source]
        source: bollard::errors::Error,
    },
    /// The session image is not there.
    #[error("image `{0}` does not exist locally; build it with `sessionfs image build` (or pass --image)")]
    ImageMissing(String),
    /// The image is not a sessionfs session image.
    #[error(
        "image `{image}` is not a sessionfs session image ({reason}); build one with \
         `sessionfs image build`"
    )]
    NotSessionImage {
        /// The image.
        image: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A limit or option given on the command line is invalid.
    #[error("{0}")]
    InvalidOption(String),
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] crate::file_error::FileError),
    /// The container has no published daemon port.
    #[error("container {0} has no host port published for {PORT_KEY}")]
    NoPort(String),
    /// A Docker API call did not answer in time.
    #[error("docker: cannot {action}: no answer within {} s", timeout.as_secs())]
    Timeout {
        /// What was attempted.
        action: String,
        /// The bound.
        timeout: Duration,
    },
    /// A docker session's record lacks what is needed to rebuild its container.
    #[error("session `{id}`: {reason}")]
    BadRecord {
        /// The session.
        id: SessionId,
        /// What is wrong.
        reason: String,
    },
    /// The container does not exist.
    #[error("container {container} of session `{id}` is gone (removed outside sessionfs?); remove the session with `sessionfs session rm {id}`")]
    ContainerGone {
        /// The session.
        id: SessionId,
        /// The container's name.
        container: String,
    },
    /// The container did not become ready.
    #[error("container {container} of session `{id}` did not become ready: {reason}{logs}")]
    NotReady {
        /// The session.
        id: SessionId,
        /// The container.
        container: String,
        /// What went wrong.
        reason: String,
        /// The container's last log lines, formatted for display.
        logs: String,
    },
    /// A volume that sessionfs did not create for this session is never deleted.
    #[error(
        "volume {volume} was not created by sessionfs for session `{session}`; not deleting it \
         (remove it yourself with `docker volume rm {volume}` if you mean to)"
    )]
    NotOurVolume {
        /// The volume.
        volume: String,
        /// The session whose purge asked for it.
        session: String,
    },
}

impl DockerError {
    fn api(action: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> DockerError {
        let action = action.into();
        move |source| DockerError::Api { action, source }
    }
}

/// Whether `e` is the engine's answer with HTTP status `code` (404: no such object; 409: already
/// exists).
fn has_status(e: &bollard::errors::Error, code: u16) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError { status_code, .. } if *status_code == code
    )
}

/// Whether `e` is the engine's "no such object" answer.
fn is_not_found(e: &bollard::errors::Error) -> bool {
    has_status(e, 404)
}

/// The Docker network session containers join: a bridge network like Docker's default one, with
/// 9,000-byte frames. The transport sends datagrams of up to 6,500 bytes (`pki/src/transport.rs`);
/// on the default bridge's 1,500-byte frames they could not pass whole, path MTU discovery stopped
/// at 1,452 bytes, and a MiB took over four times the packets: a 1 GiB read through a docker session
/// cost twice the CPU of a local session's (docs/benchmarks.md).
pub const SESSION_NETWORK: &str = "sessionfs";

/// The bridge driver's option for traffic between containers of one network.
const NETWORK_ICC: &str = "com.docker.network.bridge.enable_icc";

/// The frame size of [`SESSION_NETWORK`].
pub const SESSION_NETWORK_MTU: u32 = 9000;

/// The container name of session `id`: `sessionfs-<id>`.
pub fn container_name(id: &SessionId) -> String {
    format!("sessionfs-{id}")
}

/// The default volume name of session `id`: `sessionfs-<id>`.
pub fn volume_name(id: &SessionId) -> String {
    format!("sessionfs-{id}")
}

/// The container a docker session's record names (its label, else the default name).
pub fn record_container(record: &SessionRecord) -> String {
    record
        .labels
        .get(RECORD_CONTAINER)
        .cloned()
        .unwrap_or_else(|| container_name(&record.id))
}

/// What [`Engine::provision`] created; [`Engine::discard`] undoes it.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// The container's name.
    pub container: String,
    /// The container's id.
    pub container_id: String,
    /// The image it runs.
    pub image: String,
    /// The workspace.
    pub workspace: WorkspaceSource,
    /// Whether the volume was created by this provisioning (and so is removed on failure).
    pub volume_created: bool,
    /// `127.0.0.1:<published port>`.
    pub endpoint: SocketAddr,
    /// The host pid of the container's main process (its daemon), as the engine reports it.
    pub pid: Option<u32>,
}

impl Provisioned {
    /// The registry labels naming the container, image and workspace.
    pub fn record_labels(&self) -> Vec<(String, String)> {
        let mut labels = vec![
            (RECORD_CONTAINER.to_owned(), self.container.clone()),
            (RECORD_CONTAINER_ID.to_owned(), self.container_id.clone()),
            (RECORD_IMAGE.to_owned(), self.image.clone()),
        ];
        labels.push(match &self.workspace {
            WorkspaceSource::Volume(v) => (RECORD_VOLUME.to_owned(), v.clone()),
            WorkspaceSource::HostDir(d) => (RECORD_WORKSPACE.to_owned(), d.display().to_string()),
        });
        labels
    }
}

/// How [`Engine::wait_ready`] saw the daemon come up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Docker's health check passed.
    Healthy,
    /// The daemon answered a probe through the published port (before Docker's first check).
    Answered,
}

/// How [`Engine::stop`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerStop {
    /// The container was running and is stopped now.
    Stopped,
    /// The container exists but was not running.
    NotRunning,
    /// The container does not exist.
    Missing,
}

/// What [`Engine::remove`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRemoval {
    /// What the runtime is, in words: `container` here (`pod` for a kubernetes session).
    pub kind: &'static str,
    /// The container's name.
    pub container: String,
    /// What the volume is, in words: `volume` here (`claim` for a kubernetes session).
    pub volume_kind: &'static str,
    /// Whether it existed (and was removed).
    pub existed: bool,
    /// The named volume and whether it was deleted (`--purge`), if the session had one.
    pub volume: Option<(String, bool)>,
    /// The bind-mounted host directory, if any (never deleted).
    pub host_dir: Option<PathBuf>,
}

/// A connection to the Docker engine with its own runtime; every method blocks.
pub struct Engine {
    runtime: tokio::runtime::Runtime,
    docker: Docker,
    socket: String,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("socket", &self.socket)
            .finish()
    }
}

/// The engine socket: `$DOCKER_HOST` if it is a `unix://` address, else the default.
fn socket_path() -> Result<String, DockerError> {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => match host.strip_prefix("unix://") {
            Some(path) => Ok(path.to_owned()),
            None => Err(DockerError::UnsupportedHost(host)),
        },
        _ => Ok(DEFAULT_SOCKET.to_owned()),
    }
}

impl Engine {
    /// Connects to the engine (`$DOCKER_HOST` if it is `unix://…`, else
    /// `/var/run/docker.sock`) and negotiates the API version.
    pub fn connect() -> Result<Engine, DockerError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(DockerError::Runtime)?;
        let socket = socket_path()?;
        let connect_error = |source| DockerError::Connect {
            socket: socket.clone(),
            source,
        };
        let docker = {
            let _guard = runtime.enter();
            Docker::connect_with_socket(&socket, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
                .map_err(connect_error)?
        };
        // A hung engine must not hang the CLI or the mount's reconciler: the handshake is bounded.
        let docker = runtime
            .block_on(async {
                tokio::time::timeout(CALL_TIMEOUT, docker.negotiate_version()).await
            })
            .map_err(|_| DockerError::Timeout {
                action: format!("negotiate the API version with {socket}"),
                timeout: CALL_TIMEOUT,
            })?
            .map_err(connect_error)?;
        debug!(socket = %socket, version = ?docker.client_version(), "connected to the Docker engine");
        Ok(Engine {
            runtime,
            docker,
            socket,
        })
    }

    /// The socket this engine was reached at.
    pub fn socket(&self) -> &str {
        &self.socket
    }

    /// The image, or `None` if it does not exist locally.
    pub fn inspect_image(&self, image: &str) -> Result<Option<ImageInspect>, DockerError> {
        match self.runtime.block_on(self.docker.inspect_image(image)) {
            Ok(found) => Ok(Some(found)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(DockerError::api(format!("inspect image {image}"))(e)),
        }
    }

    /// Builds an image from a tar `context` (with a `Dockerfile`) tagged `tag`, pulling
    /// nothing; `progress` gets each line of the build's output. Returns the image id if
    /// the engine reported one.
    pub fn build_image(
        &self,
        context: Vec<u8>,
        tag: &str,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Option<String>, DockerError> {
        let options = BuildImageOptionsBuilder::default()
            .dockerfile("Dockerfile")
            .t(tag)
            .rm(true)
            .forcerm(true)
            .build();
        let action = format!("build image {tag}");
        self.runtime.block_on(async {
            let mut stream = self.docker.build_image(
                options,
                None,
                Some(bollard::body_full(bytes::Bytes::from(context))),
            );
            let mut id = None;
            while let Some(item) = stream.next().await {
                let info = item.map_err(DockerError::api(action.clone()))?;
                for text in [info.stream.as_deref(), info.status.as_deref()]
                    .into_iter()
                    .flatten()
                {
                    for line in text.lines().map(str::trim_end) {
                        if !line.trim().is_empty() {
                            progress(line);
                        }
                    }
                }
                if let Some(aux) = info.aux {
                    id = aux.id.or(id);
                }
            }
            Ok(id)
        })
    }

    /// Runs `call` on the private runtime, giving up after `timeout`.
    fn bounded<F: Future>(
        &self,
        action: impl FnOnce() -> String,
        timeout: Duration,
        call: F,
    ) -> Result<F::Output, DockerError> {
        self.runtime
            // The timer is made inside the runtime, which it needs.
            .block_on(async { tokio::time::timeout(timeout, call).await })
            .map_err(|_| DockerError::Timeout {
                action: action(),
                timeout,
            })
    }

    /// The container, or `None` if it does not exist (bounded by [`CALL_TIMEOUT`]).
    pub fn inspect_container(
        &self,
        container: &str,
    ) -> Result<Option<ContainerInspectResponse>, DockerError> {
        let action = || format!("inspect container {container}");
        match self.bounded(
            action,
            CALL_TIMEOUT,
            self.docker.inspect_container(container, None),
        )? {
            Ok(found) => Ok(Some(found)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(DockerError::api(format!("inspect container {container}"))(
                e,
            )),
        }
    }

    /// Every container, running or not, labelled [`LABEL_MANAGED`]`=1` and [`LABEL_HOME`]
    /// of `home` (bounded by [`CALL_TIMEOUT`]).
    pub fn list_session_containers(
        &self,
        home: &Home,
    ) -> Result<Vec<ContainerSummary>, DockerError> {
        let filters = HashMap::from([("label", home_filters(home))]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let action = || "list the session containers".to_owned();
        self.bounded(
            action,
            CALL_TIMEOUT,
            self.docker.list_containers(Some(options)),
        )?
        .map_err(DockerError::api("list the session containers"))
    }

    /// Every container, running or not, labelled [`LABEL_ADOPT`]`=1` (and [`LABEL_SESSION`]),
    /// whatever its [`LABEL_HOME`] (bounded by [`CALL_TIMEOUT`]).
    pub fn list_adoptable_containers(&self) -> Result<Vec<ContainerSummary>, DockerError> {
        let filters = HashMap::from([(
            "label",
            vec![format!("{LABEL_ADOPT}=1"), LABEL_SESSION.to_owned()],
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let action = || "list the adoptable session containers".to_owned();
        self.bounded(
            action,
            CALL_TIMEOUT,
            self.docker.list_containers(Some(options)),
        )?
        .map_err(DockerError::api("list the adoptable session containers"))
    }

    /// The engine's events of containers labelled [`LABEL_SESSION`] since `since` (unix
    /// seconds), as a stream read with [`Engine::next_event`]. This includes other
    /// installations' containers and adoptable ones; the reconciler picks its own.
    pub fn subscribe_events(&self, _home: &Home, since: u64) -> EventStream {
        let filters = HashMap::from([
            ("type", vec!["container".to_owned()]),
            ("label", vec![LABEL_SESSION.to_owned()]),
        ]);
        let options = EventsOptionsBuilder::default()
            .since(&since.to_string())
            .filters(&filters)
            .build();
        EventStream(Box::pin(self.docker.events(Some(options))))
    }

    /// Waits at most `wait` for the next event of `stream`.
    pub fn next_event(&self, stream: &mut EventStream, wait: Duration) -> NextEvent {
        match self
            .runtime
            .block_on(async { tokio::time::timeout(wait, stream.0.next()).await })
        {
            Err(_) => NextEvent::Idle,
            Ok(None) => NextEvent::Ended,
            Ok(Some(Ok(event))) => NextEvent::Event(Box::new(event)),
            Ok(Some(Err(e))) => NextEvent::Failed(DockerError::api("read the event stream")(e)),
        }
    }

    /// The id of [`SESSION_NETWORK`], created if missing, with inter-container traffic off: session
    /// containers reach the host (and the host them), never each other. One an older sessionfs made
    /// with that traffic on is replaced when no container uses it, and kept with a warning otherwise.
    /// Engines before API 1.44 let two concurrent creates make two networks of one name; every caller
    /// then takes the same one (the least id), and a container on the other would do as well.
    pub fn session_network(&self) -> Result<String, DockerError> {
        let find = || -> Result<Option<(String, bool)>, DockerError> {
            let options = ListNetworksOptionsBuilder::default()
                .filters(&HashMap::from([("name", vec![SESSION_NETWORK])]))
                .build();
            let networks = self
                .runtime
                .block_on(self.docker.list_networks(Some(options)))
                .map_err(DockerError::api(format!(
                    "list networks named {SESSION_NETWORK}"
                )))?;
            // The engine's name filter matches substrings.
            Ok(networks
                .into_iter()
                .filter(|n| n.name.as_deref() == Some(SESSION_NETWORK))
                .filter_map(|n| {
                    let isolated = n
                        .options
                        .as_ref()
                        .and_then(|o| o.get(NETWORK_ICC))
                        .is_some_and(|v| v == "false");
                    Some((n.id?, isolated))
                })
                .min())
        };
        match find()? {
            Some((id, true)) => return Ok(id),
            Some((id, false)) => match self.runtime.block_on(self.docker.remove_network(&id)) {
                Ok(()) => info!(
                    network = SESSION_NETWORK,
                    "replaced the network: inter-container traffic was on"
                ),
                Err(e) => {
                    warn!(
                        network = SESSION_NETWORK,
                        error = %e,
                        "the network lets session containers reach each other and is in use; remove it (docker network rm {SESSION_NETWORK}) once no session runs on it"
                    );
                    return Ok(id);
                }
            },
            None => {}
        }
        let request = NetworkCreateRequest {
            name: SESSION_NETWORK.to_owned(),
            driver: Some("bridge".to_owned()),
            options: Some(HashMap::from([
                (
                    "com.docker.network.driver.mtu".to_owned(),
                    SESSION_NETWORK_MTU.to_string(),
                ),
                (NETWORK_ICC.to_owned(), "false".to_owned()),
            ])),
            labels: Some(HashMap::from([(LABEL_MANAGED.to_owned(), "1".to_owned())])),
            ..Default::default()
        };
        match self.runtime.block_on(self.docker.create_network(request)) {
            Ok(_) => info!(
                network = SESSION_NETWORK,
                mtu = SESSION_NETWORK_MTU,
                "created network"
            ),
            // Created meanwhile by another sessionfs (engines from API 1.44 refuse a second one).
            Err(e) if has_status(&e, 409) => {}
            Err(e) => {
                return Err(DockerError::api(format!(
                    "create network {SESSION_NETWORK}"
                ))(e))
            }
        }
        find()?.map(|(id, _)| id).ok_or(DockerError::NoNetwork)
    }

    /// Whether the named volume exists.
    pub fn volume_exists(&self, volume: &str) -> Result<bool, DockerError> {
        match self.runtime.block_on(self.docker.inspect_volume(volume)) {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(DockerError::api(format!("inspect volume {volume}"))(e)),
        }
    }

    /// Deletes the named volume if sessionfs created it (it carries [`LABEL_MANAGED`]), and, when
    /// `session` is given, created it for that session; false if it did not exist. A volume the user
    /// brought (`--volume`), or another session's, is refused with [`DockerError::NotOurVolume`].
    pub fn remove_volume(
        &self,
        volume: &str,
        session: Option<&SessionId>,
    ) -> Result<bool, DockerError> {
        let labels = match self.runtime.block_on(self.docker.inspect_volume(volume)) {
            Ok(v) => v.labels,
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(DockerError::api(format!("inspect volume {volume}"))(e)),
        };
        let managed = labels.get(LABEL_MANAGED).is_some_and(|v| v == "1");
        let owner = labels.get(LABEL_SESSION).map(String::as_str);
        if !managed || session.is_some_and(|id| owner != Some(id.as_str())) {
            return Err(DockerError::NotOurVolume {
                volume: volume.to_owned(),
                session: session
                    .map_or_else(|| owner.unwrap_or("?").to_owned(), ToString::to_string),
            });
        }
        let options = RemoveVolumeOptionsBuilder::default().force(false).build();
        match self
            .runtime
            .block_on(self.docker.remove_volume(volume, Some(options)))
        {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(DockerError::api(format!("remove volume {volume}"))(e)),
        }
    }

    /// Force-removes a container (not its volumes); false if it did not exist.
    ///
    /// A container whose process exits while its restart policy restarts it can fail a forced
    /// removal: the engine sees it running, then cannot kill it because it no longer runs
    /// ("Could not kill running container …, cannot remove - Container … is not running",
    /// seen in CI on Docker 20.10). Such a failure (a conflict or an engine error) is retried, at
    /// most `REMOVE_ATTEMPTS` times `POLL_INTERVAL` apart, while the container still exists; any
    /// other failure is reported at once.
    pub fn remove_container(&self, container: &str) -> Result<bool, DockerError> {
        let mut attempt = 1;
        loop {
            let options = RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(false)
                .build();
            match self
                .runtime
                .block_on(self.docker.remove_container(container, Some(options)))
            {
                Ok(()) => return Ok(true),
                Err(e) if is_not_found(&e) => return Ok(attempt > 1),
                Err(e)
                    if attempt < REMOVE_ATTEMPTS
                        && (has_status(&e, 409) || has_status(&e, 500)) =>
                {
                    if self.inspect_container(container)?.is_none() {
                        return Ok(true);
                    }
                    debug!(%container, attempt, error = %e, "removal failed; retrying");
                    attempt += 1;
                    std::thread::sleep(POLL_INTERVAL);
                }
                Err(e) => return Err(DockerError::api(format!("remove container {container}"))(e)),
            }
        }
    }

    /// The last lines of the container's output, as an indented block after a heading, or
    /// a note that there are none.
    pub fn logs_tail(&self, container: &str) -> String {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&LOG_TAIL_LINES.to_string())
            .build();
        let collected = self.runtime.block_on(async {
            let mut stream = self.docker.logs(container, Some(options));
            let mut text = String::new();
            while let Some(item) = stream.next().await {
                match item {
                    Ok(chunk) => text.push_str(&chunk.to_string()),
                    Err(e) => return Err(e),
                }
            }
            Ok(text)
        });
        match collected {
            Ok(text) if text.trim().is_empty() => format!("; container {container} logged nothing"),
            Ok(text) => {
                let mut out = format!("; last lines of `docker logs {container}`:");
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    out.push_str("\n    ");
                    out.push_str(line);
                }
                out
            }
            Err(e) => format!("; cannot read the logs of {container}: {e}"),
        }
    }

    /// The session image's daemon path (its entrypoint), checking that `image` exists and
    /// is labelled as a sessionfs session image.
    pub fn session_image_daemon(&self, image: &str) -> Result<String, DockerError> {
        let found = self
            .inspect_image(image)?
            .ok_or_else(|| DockerError::ImageMissing(image.to_owned()))?;
        let config = found.config.unwrap_or_default();
        let labelled = config
            .labels
            .as_ref()
            .and_then(|l| l.get(crate::image::IMAGE_LABEL))
            .is_some_and(|v| v == "1");
        if !labelled {
            return Err(DockerError::NotSessionImage {
                image: image.to_owned(),
                reason: "it lacks the label sessionfs.image=1",
            });
        }
        config
            .entrypoint
            .and_then(|e| e.into_iter().next())
            .filter(|e| e.ends_with(crate::local::DAEMON_NAME))
            .ok_or_else(|| DockerError::NotSessionImage {
                image: image.to_owned(),
                reason: "its entrypoint is not sessionfsd",
            })
    }

    /// Creates and starts session `id`'s container (see the module documentation). The
    /// certificates are read from `home`'s `sessions/<id>/certs/`. On failure everything this
    /// call created is removed again.
    pub fn provision(
        &self,
        home: &Home,
        id: &SessionId,
        spec: &ContainerSpec,
    ) -> Result<Provisioned, DockerError> {
        let daemon = self.session_image_daemon(&spec.image)?;
        let certs = certs_tar(&home.session_cert_dir(id))?;
        let container = container_name(id);
        let labels = object_labels(home, id);

        let mut volume_created = false;
        if let WorkspaceSource::Volume(volume) = &spec.workspace {
            if !self.volume_exists(volume)? {
                let request = VolumeCreateRequest {
                    name: Some(volume.clone()),
                    labels: Some(labels.clone()),
                    ..Default::default()
                };
                self.runtime
                    .block_on(self.docker.create_volume(request))
                    .map_err(DockerError::api(format!("create volume {volume}")))?;
                volume_created = true;
                info!(session = %id, volume = %volume, "created volume");
            }
        }
        let undo_volume = |e: DockerError| {
            if let (true, WorkspaceSource::Volume(volume)) = (volume_created, &spec.workspace) {
                if let Err(re) = self.remove_volume(volume, Some(id)) {
                    warn!(session = %id, error = %re, "cannot remove the failed session's volume");
                }
            }
            e
        };

        let network = self.session_network().map_err(undo_volume)?;
        let body = container_body(id, spec, &daemon, labels, &network);
        let options = CreateContainerOptionsBuilder::default()
            .name(&container)
            .build();
        let created = self
            .runtime
            .block_on(self.docker.create_container(Some(options), body))
            .map_err(DockerError::api(format!("create container {container}")))
            .map_err(undo_volume)?;
        for warning in &created.warnings {
            warn!(session = %id, container = %container, "docker: {warning}");
        }
        let container_id = created.id;
        let undo = |e: DockerError| {
            if let Err(re) = self.remove_container(&container_id) {
                warn!(session = %id, error = %re, "cannot remove the failed session's container");
            }
            undo_volume(e)
        };

        self.upload_certs(&container_id, &container, certs)
            .map_err(undo)?;
        self.start_container(&container_id, &container)
            .map_err(undo)?;
        let Published { endpoint, pid } = self
            .published(id, &container_id, &container)
            .map_err(undo)?;
        info!(session = %id, container = %container, %endpoint, "started container");
        Ok(Provisioned {
            container,
            container_id,
            image: spec.image.clone(),
            workspace: spec.workspace.clone(),
            volume_created,
            endpoint,
            pid,
        })
    }

    /// Undoes [`Engine::provision`]: removes the container, and the volume if it made it.
    pub fn discard(&self, provisioned: &Provisioned) {
        if let Err(e) = self.remove_container(&provisioned.container_id) {
            warn!(container = %provisioned.container, error = %e, "cannot remove the container");
        }
        if let (true, WorkspaceSource::Volume(volume)) =
            (provisioned.volume_created, &provisioned.workspace)
        {
            if let Err(e) = self.remove_volume(volume, None) {
                warn!(volume = %volume, error = %e, "cannot remove the volume");
            }
        }
    }

    fn start_container(&self, container_id: &str, container: &str) -> Result<(), DockerError> {
        self.runtime
            .block_on(self.docker.start_container(container_id, None))
            .map_err(DockerError::api(format!("start container {container}")))
    }

    /// `127.0.0.1:<host port>` of the container's published daemon port, and its main process
    /// (only a running container has them: a stopped one is reported with its exit code and logs).
    fn published(
        &self,
        id: &SessionId,
        container_id: &str,
        container: &str,
    ) -> Result<Published, DockerError> {
        let inspected =
            self.inspect_container(container_id)?
                .ok_or_else(|| DockerError::ContainerGone {
                    id: id.clone(),
                    container: container.to_owned(),
                })?;
        if let Some(reason) = not_running(&inspected) {
            return Err(DockerError::NotReady {
                id: id.clone(),
                container: container.to_owned(),
                reason,
                logs: self.logs_tail(container),
            });
        }
        let endpoint = inspect::published(&inspected)
            .ok_or_else(|| DockerError::NoPort(container.to_owned()))?;
        Ok(Published {
            endpoint,
            pid: main_pid(&inspected),
        })
    }

    /// Uploads `certs` (a [`certs_tar`]) into container `target` (named `container` in errors).
    fn upload_certs(
        &self,
        target: &str,
        container: &str,
        certs: Vec<u8>,
    ) -> Result<(), DockerError> {
        let upload = UploadToContainerOptionsBuilder::default().path("/").build();
        self.runtime
            .block_on(self.docker.upload_to_container(
                target,
                Some(upload),
                bollard::body_full(bytes::Bytes::from(certs)),
            ))
            .map_err(DockerError::api(format!(
                "upload the certificates into {container}"
            )))
    }

    /// Puts the revocation list `text` into the certificate directory of `record`'s container,
    /// running or not (its daemon reads it within a second).
    pub fn upload_revoked(&self, record: &SessionRecord, text: &str) -> Result<(), DockerError> {
        let container = record_container(record);
        let upload = UploadToContainerOptionsBuilder::default().path("/").build();
        self.runtime
            .block_on(self.docker.upload_to_container(
                &container,
                Some(upload),
                bollard::body_full(bytes::Bytes::from(archive::revoked_tar(text)?)),
            ))
            .map_err(DockerError::api(format!(
                "upload the revocation list into {container}"
            )))
    }

    /// One health probe of session `id`'s daemon at `endpoint` with the session's certificate from
    /// `cert_dir` (and the daemon's pinned, if `pin`), bounded by [`PROBE_TIMEOUT`] and by what is
    /// `remaining` of the caller's wait.
    fn probe(
        &self,
        endpoint: SocketAddr,
        id: &SessionId,
        cert_dir: &Path,
        pin: Option<&str>,
        remaining: Duration,
    ) -> Result<Duration, sessionfs_pki::health::HealthError> {
        self.runtime.block_on(sessionfs_pki::health::probe(
            endpoint,
            id.as_str(),
            cert_dir,
            pin,
            PROBE_TIMEOUT.min(remaining).max(Duration::from_millis(50)),
        ))
    }

    /// Whether the daemon at `endpoint` proves it holds this installation's certificate of session
    /// `id`: it answers a ping over mutual TLS in which the client presents the session's own
    /// certificate and accepts only a server certificate that names the session, both from this
    /// installation's CA. Retried within `window` (a daemon just started may not listen yet); the
    /// last failure is returned.
    pub fn proves_session(
        &self,
        home: &Home,
        id: &SessionId,
        endpoint: SocketAddr,
        window: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + window;
        let cert_dir = home.session_cert_dir(id);
        // The daemon must present the very certificate issued for the session, not an older one.
        let pin = Some(home.session_cert_pin(id).map_err(|e| e.to_string())?);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.probe(endpoint, id, &cert_dir, pin.as_deref(), remaining) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e.to_string()),
                // The poll interval of a bounded wait, not a fixed delay.
                Err(_) => std::thread::sleep(POLL_INTERVAL.min(remaining)),
            }
        }
    }

    /// Waits up to `timeout` until the container of session `id` is healthy or its daemon
    /// answers a probe at `endpoint` (with the session's own certificate from `home`). Fails
    /// at once if the container stops running, quoting its logs.
    pub fn wait_ready(
        &self,
        home: &Home,
        id: &SessionId,
        container: &str,
        endpoint: SocketAddr,
        timeout: Duration,
    ) -> Result<Readiness, DockerError> {
        let deadline = Instant::now() + timeout;
        let cert_dir = home.session_cert_dir(id);
        let pin = home.session_cert_pin(id).ok();
        let not_ready = |reason: String| DockerError::NotReady {
            id: id.clone(),
            container: container.to_owned(),
            reason,
            logs: self.logs_tail(container),
        };
        loop {
            let inspected =
                self.inspect_container(container)?
                    .ok_or_else(|| DockerError::ContainerGone {
                        id: id.clone(),
                        container: container.to_owned(),
                    })?;
            if let Some(reason) = not_running(&inspected) {
                return Err(not_ready(reason));
            }
            let health = inspected
                .state
                .and_then(|s| s.health)
                .and_then(|h| h.status);
            if health == Some(HealthStatusEnum::HEALTHY) {
                debug!(session = %id, "container reported healthy");
                return Ok(Readiness::Healthy);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let probe_error = match self.probe(endpoint, id, &cert_dir, pin.as_deref(), remaining) {
                Ok(rtt) => {
                    debug!(session = %id, ?rtt, "daemon answered through the published port");
                    return Ok(Readiness::Answered);
                }
                Err(e) => e.to_string(),
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                let health = health.map_or_else(|| "none".to_owned(), |h| h.to_string());
                return Err(not_ready(format!(
                    "neither healthy (health: {health}) nor answering at {endpoint} ({probe_error}) \
                     within {} s",
                    timeout.as_secs()
                )));
            }
            // The poll interval of a bounded wait, not a fixed delay.
            std::thread::sleep(POLL_INTERVAL.min(remaining));
        }
    }

    /// Starts a docker session's stopped container and returns its (possibly new) endpoint and
    /// main process once ready, and whether it was running already (then it is left alone), after
    /// uploading `certs` (a [`certs_tar`]) into it if it was not running (renewed certificates). A
    /// container that this call started but that does not become ready is stopped again.
    pub fn start_with(
        &self,
        home: &Home,
        record: &SessionRecord,
        certs: Option<Vec<u8>>,
    ) -> Result<(Published, bool), DockerError> {
        let container = record_container(record);
        let inspected =
            self.inspect_container(&container)?
                .ok_or_else(|| DockerError::ContainerGone {
                    id: record.id.clone(),
                    container: container.clone(),
                })?;
        let was_running = inspected
            .state
            .as_ref()
            .and_then(|s| s.running)
            .unwrap_or(false);
        if !was_running {
            if let Some(certs) = certs {
                self.upload_certs(&container, &container, certs)?;
            }
            self.start_container(&container, &container)?;
        }
        let ready = self
            .published(&record.id, &container, &container)
            .and_then(|published| {
                self.wait_ready(
                    home,
                    &record.id,
                    &container,
                    published.endpoint,
                    READY_TIMEOUT,
                )
                .map(|_| published)
            });
        match ready {
            Ok(published) => Ok((published, was_running)),
            Err(e) => {
                // Leave a container this call started as it found it: stopped.
                if !was_running {
                    if let Err(se) = self.stop(record) {
                        warn!(session = %record.id, error = %se, "cannot stop the container again");
                    }
                }
                Err(e)
            }
        }
    }

    /// Stops a docker session's container (SIGTERM, SIGKILL after [`STOP_GRACE_SECS`]).
    pub fn stop(&self, record: &SessionRecord) -> Result<ContainerStop, DockerError> {
        let container = record_container(record);
        let Some(inspected) = self.inspect_container(&container)? else {
            return Ok(ContainerStop::Missing);
        };
        let running = inspected
            .state
            .as_ref()
            .and_then(|s| s.running)
            .unwrap_or(false);
        let options = StopContainerOptionsBuilder::default()
            .t(STOP_GRACE_SECS)
            .build();
        // Stopped even when not running: this also tells the restart policy it was on purpose.
        match self
            .runtime
            .block_on(self.docker.stop_container(&container, Some(options)))
        {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => return Ok(ContainerStop::Missing),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => {}
            Err(e) => return Err(DockerError::api(format!("stop container {container}"))(e)),
        }
        info!(session = %record.id, container = %container, "stopped container");
        Ok(if running {
            ContainerStop::Stopped
        } else {
            ContainerStop::NotRunning
        })
    }

    /// Removes a docker session's container, and with `purge` its named volume. A host
    /// directory is never touched.
    pub fn remove(
        &self,
        record: &SessionRecord,
        purge: bool,
    ) -> Result<ContainerRemoval, DockerError> {
        let container = record_container(record);
        let existed = self.remove_container(&container)?;
        let volume = match record.labels.get(RECORD_VOLUME) {
            Some(volume) if purge => Some((
                volume.clone(),
                self.remove_volume(volume, Some(&record.id))?,
            )),
            Some(volume) => Some((volume.clone(), false)),
            None => None,
        };
        let host_dir = record
            .labels
            .get(RECORD_WORKSPACE)
            .map(PathBuf::from)
            .or_else(|| record.workspace.clone());
        info!(session = %record.id, container = %container, existed, "removed container");
        Ok(ContainerRemoval {
            kind: "container",
            container,
            volume_kind: "volume",
            existed,
            volume,
            host_dir,
        })
    }

    /// The container of a docker session as `session ls` shows it.
    pub fn status(&self, record: &SessionRecord) -> ContainerStatus {
        let container = record_container(record);
        match self.inspect_container(&container) {
            Ok(Some(inspected)) => status_of(container, &inspected),
            Ok(None) => ContainerStatus {
                container,
                running: false,
                exists: false,
                health: "gone".to_owned(),
                endpoint: None,
            },
            Err(e) => {
                warn!(session = %record.id, error = %e, "cannot inspect the container");
                unknown_status(record)
            }
        }
    }
}

/// A stream of engine events (see [`Engine::subscribe_events`]).
pub struct EventStream(Pin<Box<dyn Stream<Item = Result<EventMessage, bollard::errors::Error>>>>);

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EventStream")
    }
}

/// What [`Engine::next_event`] saw.
#[derive(Debug)]
pub enum NextEvent {
    /// An event.
    Event(Box<EventMessage>),
    /// Nothing within the wait.
    Idle,
    /// The engine closed the stream.
    Ended,
    /// Reading the stream failed.
    Failed(DockerError),
}

/// The `label` filters selecting `home`'s session containers.
fn home_filters(home: &Home) -> Vec<String> {
    vec![
        format!("{LABEL_MANAGED}=1"),
        format!("{LABEL_HOME}={}", home.root().display()),
    ]
}
