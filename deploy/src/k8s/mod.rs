//! The Kubernetes backend: a session's `sessionfsd` in a pod, its workspace on a
//! PersistentVolumeClaim, its certificates in a Secret (`spec.rs` builds them), driven through the
//! API server with the `kube` client ([`Cluster`]), and followed while mounted by a watcher
//! (`follow.rs`): pod phase and readiness set the record's state, the pod's address its endpoint,
//! and a pod deleted outside sessionfs makes the session `gone`.
//!
//! Every API call is bounded ([`CALL_TIMEOUT`]); waiting for a pod is bounded by the caller.

mod follow;
mod manifests;
mod spec;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::Api;
use sessionfs_registry::{SessionId, SessionRecord};
use tracing::{info, warn};

pub use follow::Follower;
pub use manifests::manifests;
pub use spec::{
    check_quantity, object_name, Attachment, PodOptions, Reach, LABEL_INSTALLATION, LABEL_SESSION,
};

use crate::docker::DAEMON_PORT;
use crate::state::Home;

/// The record label holding a kubernetes session's [`PodOptions`] (JSON).
pub const RECORD_SPEC: &str = "k8s.spec";
/// The record label naming the session's namespace.
pub const RECORD_NAMESPACE: &str = "k8s.namespace";
/// The record label naming the session's pod.
pub const RECORD_POD: &str = "k8s.pod";

/// How long one API call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `session create` and `session start` wait for the pod to be ready (an image pull,
/// a volume to attach).
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How long `session stop` and `session rm` wait for the pod to be gone.
pub const GONE_TIMEOUT: Duration = Duration::from_secs(90);

/// Errors of the Kubernetes backend.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No kubeconfig and no in-cluster configuration, or a broken one.
    #[error("no Kubernetes cluster configured: {0} (set KUBECONFIG, or run inside a cluster)")]
    Config(String),
    /// The API server refused or failed a call.
    #[error("Kubernetes API: {action}: {message}")]
    Api { action: String, message: String },
    /// The API server did not answer in time.
    #[error("Kubernetes API: {action}: no answer within {CALL_TIMEOUT:?}")]
    Timeout { action: String },
    /// An object sessionfs would make exists and is not this session's.
    #[error("{kind} {namespace}/{name} already exists and is not session {id}'s; remove it or pick another id")]
    Taken {
        kind: &'static str,
        namespace: String,
        name: String,
        id: SessionId,
    },
    /// The pod did not become ready.
    #[error("pod {namespace}/{name} is not ready after {waited:?}: {status}")]
    NotReady {
        namespace: String,
        name: String,
        waited: Duration,
        status: String,
    },
    /// The pod did not go away.
    #[error("pod {namespace}/{name} is still there after {waited:?}")]
    NotGone {
        namespace: String,
        name: String,
        waited: Duration,
    },
    /// A bad option.
    #[error("{0}")]
    InvalidOption(String),
    /// A record that is not a kubernetes session's, or lost its labels.
    #[error("session {0} has no Kubernetes pod specification in its record (label {RECORD_SPEC})")]
    NoSpec(SessionId),
    /// The runtime for API calls could not start.
    #[error("cannot start the Kubernetes client's runtime: {0}")]
    Runtime(std::io::Error),
    /// A local file (certificates).
    #[error(transparent)]
    File(#[from] crate::file_error::FileError),
}

fn api_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> KubeError {
    let action = action.into();
    move |e| KubeError::Api {
        action,
        message: match e {
            kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
            other => other.to_string(),
        },
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == code)
}

/// The installation label's value: the first 16 hex digits of the root CA's fingerprint.
pub fn installation(home: &Home) -> Result<String, crate::state::StateError> {
    let ca = home.certificate_authority()?;
    let fingerprint = sessionfs_pki::pem_fingerprint(&ca.cert_pem()).map_err(|source| {
        crate::state::StateError::Pki {
            dir: home.root().join("pki"),
            source,
        }
    })?;
    Ok(fingerprint[..16].to_owned())
}

/// The record label of a session's pod options ([`RECORD_SPEC`]).
pub fn spec_label(opts: &PodOptions) -> Result<String, KubeError> {
    serde_json::to_string(opts)
        .map_err(|e| KubeError::InvalidOption(format!("cannot record the pod options: {e}")))
}

/// A session's pod options from its record.
pub fn record_options(record: &SessionRecord) -> Result<PodOptions, KubeError> {
    record
        .labels
        .get(RECORD_SPEC)
        .and_then(|json| serde_json::from_str(json).ok())
        .ok_or_else(|| KubeError::NoSpec(record.id.clone()))
}

/// Where a pod's daemon is reached, once the pod has an address.
pub fn endpoint(pod: &Pod, reach: Reach) -> Option<SocketAddr> {
    let status = pod.status.as_ref()?;
    let (ip, port) = match reach {
        Reach::PodIp => (status.pod_ip.as_deref()?, DAEMON_PORT),
        Reach::HostPort(port) | Reach::NodePort(port) if port != 0 => {
            (status.host_ip.as_deref()?, port)
        }
        Reach::HostPort(_) | Reach::NodePort(_) => return None,
    };
    Some(SocketAddr::new(ip.parse::<IpAddr>().ok()?, port))
}

/// Whether a pod is running with every container ready.
pub fn ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// What a pod says of itself, for messages: phase, the Ready condition's message, the container's
/// waiting or terminated reason.
pub fn describe(pod: &Pod) -> String {
    let Some(status) = &pod.status else {
        return "no status yet".to_owned();
    };
    let mut parts = vec![format!(
        "phase {}",
        status.phase.as_deref().unwrap_or("unknown")
    )];
    if let Some(reason) = &status.reason {
        parts.push(format!(
            "{reason}: {}",
            status.message.as_deref().unwrap_or("")
        ));
    }
    for c in status.conditions.iter().flatten() {
        if c.status != "True" {
            if let Some(message) = &c.message {
                parts.push(format!("{}: {message}", c.type_));
            }
        }
    }
    for c in status.container_statuses.iter().flatten() {
        if let Some(state) = &c.state {
            if let Some(w) = &state.waiting {
                parts.push(format!(
                    "{} waiting: {} {}",
                    c.name,
                    w.reason.as_deref().unwrap_or(""),
                    w.message.as_deref().unwrap_or("")
                ));
            }
            if let Some(t) = &state.terminated {
                parts.push(format!(
                    "{} terminated: exit {} {}",
                    c.name,
                    t.exit_code,
                    t.reason.as_deref().unwrap_or("")
                ));
            }
        }
        if c.restart_count > 0 {
            parts.push(format!("{} restarted {} times", c.name, c.restart_count));
        }
    }
    parts.join("; ")
}

/// A connection to one namespace of a cluster, with its own runtime; every method blocks.
pub struct Cluster {
    runtime: tokio::runtime::Runtime,
    client: kube::Client,
    namespace: String,
    /// This installation's label value: objects of the session's name and another
    /// installation's are never taken for the session's ([`Cluster::owned_by`]).
    installation: Option<String>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("namespace", &self.namespace)
            .finish()
    }
}

/// What [`Cluster::provision`] made, so a failure can undo exactly that.
#[derive(Debug, Default)]
pub struct Provisioned {
    pub secret: bool,
    pub claim: bool,
    pub service: bool,
    pub pod: bool,
}

/// Why a command that acts on a session's own pod refuses an attached session.
pub fn attached_error(id: &SessionId, attach: &Attachment, command: &str) -> KubeError {
    KubeError::InvalidOption(format!(
        "session {id} is a sidecar of deployment {}: it runs with its workload, so `session \
         {command}` does not apply (scale or change the Deployment; `session rm` detaches it)",
        attach.deployment
    ))
}

/// What [`Cluster::remove`] deleted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removed {
    pub pod: bool,
    pub secret: bool,
    pub service: bool,
    pub claim: bool,
}

impl Cluster {
    /// Connects with the kubeconfig's `context` (the current one if `None`; the in-cluster
    /// configuration when there is no kubeconfig), in `namespace` (the context's if `None`).
    pub fn connect(context: Option<&str>, namespace: Option<&str>) -> Result<Cluster, KubeError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(KubeError::Runtime)?;
        let config = runtime.block_on(async {
            let options = kube::config::KubeConfigOptions {
                context: context.map(str::to_owned),
                ..Default::default()
            };
            match kube::Config::from_kubeconfig(&options).await {
                Ok(config) => Ok(config),
                Err(e) if context.is_some() => Err(KubeError::Config(e.to_string())),
                Err(kubeconfig) => kube::Config::incluster().map_err(|incluster| {
                    KubeError::Config(format!("kubeconfig: {kubeconfig}; in-cluster: {incluster}"))
                }),
            }
        })?;
        let namespace = namespace
            .map(str::to_owned)
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = {
            let _guard = runtime.enter();
            kube::Client::try_from(config).map_err(|e| KubeError::Config(e.to_string()))?
        };
        Ok(Cluster {
            runtime,
            client,
            namespace,
            installation: None,
        })
    }

    /// This connection works for `installation`: only objects carrying its label are a session's.
    pub fn owned_by(mut self, installation: &str) -> Cluster {
        self.installation = Some(installation.to_owned());
        self
    }

    /// The cluster a kubernetes session's record names, working for `home`'s installation.
    pub fn for_record(
        home: &Home,
        record: &SessionRecord,
    ) -> Result<(Cluster, PodOptions), KubeError> {
        let opts = record_options(record)?;
        let installation =
            installation(home).map_err(|e| KubeError::Config(format!("this installation: {e}")))?;
        let cluster = Cluster::connect(opts.context.as_deref(), Some(&opts.namespace))?
            .owned_by(&installation);
        Ok((cluster, opts))
    }

    /// The namespace this connection works in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Runs one API call, bounded by [`CALL_TIMEOUT`].
    fn call<T>(
        &self,
        action: &str,
        work: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<Result<T, kube::Error>, KubeError> {
        self.runtime
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, work).await })
            .map_err(|_| KubeError::Timeout {
                action: action.to_owned(),
            })
    }

    /// Session `id`'s pod, if there is one.
    pub fn pod(&self, id: &SessionId) -> Result<Option<Pod>, KubeError> {
        let name = object_name(id);
        let action = format!("read pod {}/{name}", self.namespace);
        self.call(&action, self.api::<Pod>().get_opt(&name))?
            .map_err(api_error(action))
    }

    /// Whether session `id` has a workspace claim (kept by `rm` without `--purge`).
    pub fn has_claim(&self, id: &SessionId) -> Result<bool, KubeError> {
        let name = object_name(id);
        let action = format!("read persistentvolumeclaim {}/{name}", self.namespace);
        Ok(self
            .call(&action, self.api::<PersistentVolumeClaim>().get_opt(&name))?
            .map_err(api_error(action))?
            .is_some())
    }

    /// Session `id`'s pod unless it is being deleted or ended (failed or succeeded: an evicted
    /// pod stays so), after deleting such a one and waiting for it to be gone (a new one of its
    /// name can be made then).
    pub fn live_pod(&self, id: &SessionId) -> Result<Option<Pod>, KubeError> {
        match self.pod(id)? {
            Some(pod) if !self.is_ours(pod.metadata.labels.as_ref(), id) => {
                Err(self.taken("Pod", &object_name(id), id))
            }
            Some(pod)
                if pod.metadata.deletion_timestamp.is_some()
                    || matches!(
                        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Failed" | "Succeeded")
                    ) =>
            {
                self.delete_pod(id)?;
                Ok(None)
            }
            other => Ok(other),
        }
    }

    /// Makes session `id`'s Secret (from its certificate directory), claim (kept from an earlier
    /// session of the id if there is one), Service (`--reach node-port`; the node port it got is
    /// put into `opts`) and pod.
    pub fn provision(
        &self,
        home: &Home,
        id: &SessionId,
        installation: &str,
        opts: &mut PodOptions,
    ) -> Result<Provisioned, KubeError> {
        let mut made = Provisioned::default();
        let result = (|| {
            made.secret = self.put_secret(home, id, installation, opts)?;
            made.claim = self.ensure_claim(id, installation, opts)?;
            if let Reach::NodePort(asked) = opts.reach {
                let (port, created) = self.ensure_service(id, installation, opts, asked)?;
                made.service = created;
                opts.reach = Reach::NodePort(port);
            }
            self.create_pod(id, installation, opts)?;
            made.pod = true;
            Ok(())
        })();
        match result {
            Ok(()) => Ok(made),
            Err(e) => {
                self.discard(id, &made);
                Err(e)
            }
        }
    }

    /// Removes what [`Cluster::provision`] made.
    pub fn discard(&self, id: &SessionId, made: &Provisioned) {
        let removed = self.delete_objects(id, made.pod, made.secret, made.service, made.claim);
        if let Err(e) = removed {
            warn!(session = %id, error = %e, "cannot remove the failed session's Kubernetes objects");
        }
    }

    /// Whether an object's labels say it is session `id`'s, of this installation.
    fn is_ours(&self, labels: Option<&BTreeMap<String, String>>, id: &SessionId) -> bool {
        let label = |key: &str| labels.and_then(|l| l.get(key));
        label(LABEL_SESSION).is_some_and(|s| s == id.as_str())
            && self
                .installation
                .as_ref()
                .is_none_or(|i| label(LABEL_INSTALLATION) == Some(i))
    }

    /// The label selector of session `id`'s objects.
    fn selector(&self, id: &SessionId) -> String {
        match &self.installation {
            Some(i) => format!("{LABEL_SESSION}={id},{LABEL_INSTALLATION}={i}"),
            None => format!("{LABEL_SESSION}={id}"),
        }
    }

    /// Writes the Secret of session `id`'s certificate directory; whether it made it (rather
    /// than replaced its own).
    pub fn put_secret(
        &self,
        home: &Home,
        id: &SessionId,
        installation: &str,
        opts: &PodOptions,
    ) -> Result<bool, KubeError> {
        let dir = home.session_cert_dir(id);
        let mut files = BTreeMap::new();
        for (name, _) in sessionfs_pki::SESSION_CERT_DIR {
            let path = dir.join(name);
            let bytes = std::fs::read(&path).map_err(crate::file_error::io_error("read", &path))?;
            files.insert(name.to_owned(), bytes);
        }
        let revoked = dir.join(sessionfs_pki::REVOKED_FILE);
        if let Ok(bytes) = std::fs::read(&revoked) {
            files.insert(sessionfs_pki::REVOKED_FILE.to_owned(), bytes);
        }
        let secret = spec::secret(id, installation, opts, &files)?;
        let name = object_name(id);
        let action = format!("create secret {}/{name}", self.namespace);
        match self.call(
            &action,
            self.api::<Secret>().create(&PostParams::default(), &secret),
        )? {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 409) => {
                let action = format!("read secret {}/{name}", self.namespace);
                let current = self
                    .call(&action, self.api::<Secret>().get(&name))?
                    .map_err(api_error(action))?;
                if !self.is_ours(current.metadata.labels.as_ref(), id) {
                    return Err(self.taken("Secret", &name, id));
                }
                // Read and replaced again when another writer (the revocation hand-out) came
                // between.
                let mut seen = current.metadata.resource_version;
                for _ in 0..8 {
                    let mut replacement = secret.clone();
                    replacement.metadata.resource_version = seen;
                    let action = format!("replace secret {}/{name}", self.namespace);
                    match self.call(
                        &action,
                        self.api::<Secret>()
                            .replace(&name, &PostParams::default(), &replacement),
                    )? {
                        Ok(_) => return Ok(false),
                        Err(e) if is_status(&e, 409) => {
                            let action = format!("read secret {}/{name}", self.namespace);
                            seen = self
                                .call(&action, self.api::<Secret>().get(&name))?
                                .map_err(api_error(action))?
                                .metadata
                                .resource_version;
                        }
                        Err(e) => return Err(api_error(action)(e)),
                    }
                }
                Err(KubeError::Api {
                    action: format!("replace secret {}/{name}", self.namespace),
                    message: "it kept changing under 8 attempts".into(),
                })
            }
            Err(e) => Err(api_error(action)(e)),
        }
    }

    /// Puts revocation list `text` into session `id`'s Secret (its pod's kubelet updates the
    /// mounted file; on a real cluster within its sync period, about a minute).
    pub fn put_revoked(&self, id: &SessionId, text: &str) -> Result<(), KubeError> {
        let name = object_name(id);
        let action = format!("patch secret {}/{name}", self.namespace);
        let patch = serde_json::json!({"data": {
            sessionfs_pki::REVOKED_FILE: k8s_openapi::ByteString(text.as_bytes().to_vec()),
        }});
        self.call(
            &action,
            self.api::<Secret>()
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch)),
        )?
        .map_err(api_error(action))?;
        Ok(())
    }

    fn taken(&self, kind: &'static str, name: &str, id: &SessionId) -> KubeError {
        KubeError::Taken {
            kind,
            namespace: self.namespace.clone(),
            name: name.to_owned(),
            id: id.clone(),
        }
    }

    /// Makes the workspace claim unless session `id` has one; whether it made it.
    fn ensure_claim(
        &self,
        id: &SessionId,
        installation: &str,
        opts: &PodOptions,
    ) -> Result<bool, KubeError> {
        let claim = spec::claim(id, installation, opts)?;
        let name = object_name(id);
        let action = format!("create persistentvolumeclaim {}/{name}", self.namespace);
        match self.call(
            &action,
            self.api::<PersistentVolumeClaim>()
                .create(&PostParams::default(), &claim),
        )? {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 409) => {
                let action = format!("read persistentvolumeclaim {}/{name}", self.namespace);
                let current = self
                    .call(&action, self.api::<PersistentVolumeClaim>().get(&name))?
                    .map_err(api_error(action))?;
                if !self.is_ours(current.metadata.labels.as_ref(), id) {
                    return Err(self.taken("PersistentVolumeClaim", &name, id));
                }
                if current.metadata.deletion_timestamp.is_some() {
                    return Err(KubeError::InvalidOption(format!(
                        "the claim {}/{name} of an earlier session {id} is being deleted: try again \
                         once it is gone",
                        self.namespace
                    )));
                }
                info!(session = %id, claim = %name, "reusing the session's workspace claim");
                Ok(false)
            }
            Err(e) => Err(api_error(action)(e)),
        }
    }

    /// Makes session `id`'s NodePort Service unless it has one (asking for node port `asked`, or
    /// any if 0); its node port, and whether it made it.
    pub fn ensure_service(
        &self,
        id: &SessionId,
        installation: &str,
        opts: &PodOptions,
        asked: u16,
    ) -> Result<(u16, bool), KubeError> {
        let service = spec::service(id, installation, opts, asked)?;
        let name = object_name(id);
        let action = format!("create service {}/{name}", self.namespace);
        let (service, created) = match self.call(
            &action,
            self.api::<Service>()
                .create(&PostParams::default(), &service),
        )? {
            Ok(service) => (service, true),
            Err(e) if is_status(&e, 409) => {
                let action = format!("read service {}/{name}", self.namespace);
                let current = self
                    .call(&action, self.api::<Service>().get(&name))?
                    .map_err(api_error(action))?;
                if !self.is_ours(current.metadata.labels.as_ref(), id) {
                    return Err(self.taken("Service", &name, id));
                }
                (current, false)
            }
            Err(e) => return Err(api_error(action)(e)),
        };
        let port = service
            .spec
            .and_then(|s| s.ports)
            .and_then(|ports| ports.into_iter().find_map(|p| p.node_port))
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| KubeError::Api {
                action: format!("create service {}/{name}", self.namespace),
                message: "the API server allocated no node port".into(),
            })?;
        Ok((port, created))
    }

    /// Makes session `id`'s pod.
    pub fn create_pod(
        &self,
        id: &SessionId,
        installation: &str,
        opts: &PodOptions,
    ) -> Result<(), KubeError> {
        let pod = spec::pod(id, installation, opts)?;
        let name = object_name(id);
        let action = format!("create pod {}/{name}", self.namespace);
        match self.call(
            &action,
            self.api::<Pod>().create(&PostParams::default(), &pod),
        )? {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 409) => match self.pod(id)? {
                Some(p) if self.is_ours(p.metadata.labels.as_ref(), id) => {
                    Err(KubeError::InvalidOption(format!(
                        "pod {}/{name} of session {id} exists already ({}); `session stop {id}` \
                         first, or wait until it is gone",
                        self.namespace,
                        describe(&p)
                    )))
                }
                _ => Err(self.taken("Pod", &name, id)),
            },
            Err(e) => Err(api_error(action)(e)),
        }
    }

    /// Session `id`'s live pods (its own, or its workload's with the sidecar), newest last.
    pub fn session_pods(&self, id: &SessionId) -> Result<Vec<Pod>, KubeError> {
        let action = format!("list the pods of session {id} in {}", self.namespace);
        let params = kube::api::ListParams::default().labels(&self.selector(id));
        let mut pods: Vec<Pod> = self
            .call(&action, self.api::<Pod>().list(&params))?
            .map_err(api_error(action))?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        pods.sort_by_key(|p| p.metadata.creation_timestamp.clone());
        Ok(pods)
    }

    /// Waits until a pod of session `id` is ready and has an address; its endpoint.
    pub fn wait_ready(
        &self,
        id: &SessionId,
        reach: Reach,
        timeout: Duration,
    ) -> Result<SocketAddr, KubeError> {
        let started = Instant::now();
        loop {
            let pods = self.session_pods(id)?;
            if let Some(endpoint) = pods
                .iter()
                .rev()
                .filter(|p| ready(p))
                .find_map(|p| endpoint(p, reach))
            {
                return Ok(endpoint);
            }
            if started.elapsed() >= timeout {
                return Err(KubeError::NotReady {
                    namespace: self.namespace.clone(),
                    name: pods.last().map_or_else(
                        || object_name(id),
                        |p| p.metadata.name.clone().unwrap_or_default(),
                    ),
                    waited: started.elapsed(),
                    status: pods
                        .last()
                        .map_or_else(|| "no pod of the session".to_owned(), describe),
                });
            }
            // The poll interval of a bounded wait (a watch would need its own stream per call).
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Deletes session `id`'s pod and waits until it is gone; whether there was one.
    pub fn delete_pod(&self, id: &SessionId) -> Result<bool, KubeError> {
        let name = object_name(id);
        // Only the session's own pod is deleted, and only it is waited for.
        let existed = self.delete_named::<Pod>("pod", id)?;
        let started = Instant::now();
        while existed && self.pod(id)?.is_some() {
            if started.elapsed() >= GONE_TIMEOUT {
                return Err(KubeError::NotGone {
                    namespace: self.namespace.clone(),
                    name,
                    waited: started.elapsed(),
                });
            }
            // The poll interval of a bounded wait.
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(existed)
    }

    fn delete_named<K>(&self, kind: &str, id: &SessionId) -> Result<bool, KubeError>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        let name = object_name(id);
        // Never another installation's (or anyone else's) object of the same name.
        let action = format!("read {kind} {}/{name}", self.namespace);
        match self
            .call(&action, self.api::<K>().get_opt(&name))?
            .map_err(api_error(action))?
        {
            None => return Ok(false),
            Some(object) if !self.is_ours(object.meta().labels.as_ref(), id) => {
                warn!(session = %id, "not deleting {kind} {}/{name}: it is not this session's", self.namespace);
                return Ok(false);
            }
            Some(_) => {}
        }
        let action = format!("delete {kind} {}/{name}", self.namespace);
        match self.call(
            &action,
            self.api::<K>().delete(&name, &DeleteParams::default()),
        )? {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 404) => Ok(false),
            Err(e) => Err(api_error(action)(e)),
        }
    }

    fn delete_objects(
        &self,
        id: &SessionId,
        pod: bool,
        secret: bool,
        service: bool,
        claim: bool,
    ) -> Result<Removed, KubeError> {
        let mut removed = Removed::default();
        if pod {
            removed.pod = self.delete_pod(id)?;
        }
        if secret {
            removed.secret = self.delete_named::<Secret>("secret", id)?;
        }
        if service {
            removed.service = self.delete_named::<Service>("service", id)?;
        }
        if claim {
            removed.claim =
                self.delete_named::<PersistentVolumeClaim>("persistentvolumeclaim", id)?;
        }
        Ok(removed)
    }

    /// Adds session `id`'s daemon as a native sidecar to the Deployment running pod `pod_ref`
    /// (`POD[/CONTAINER]`), serving the volume that container has at `path` (default: its
    /// working directory's, or its only volume's), and writes the session's Secret. The
    /// Deployment rolls its pods out with the sidecar.
    pub fn attach(
        &self,
        home: &Home,
        id: &SessionId,
        installation: &str,
        opts: &PodOptions,
        pod_ref: &str,
        path: Option<&str>,
    ) -> Result<Attachment, KubeError> {
        use k8s_openapi::api::apps::v1::ReplicaSet;
        let invalid = |m: String| KubeError::InvalidOption(m);
        let (pod_name, container) = match pod_ref.split_once('/') {
            Some((p, c)) => (p, Some(c)),
            None => (pod_ref, None),
        };
        let action = format!("read pod {}/{pod_name}", self.namespace);
        let pod = self
            .call(&action, self.api::<Pod>().get_opt(pod_name))?
            .map_err(api_error(action))?
            .ok_or_else(|| invalid(format!("no pod {}/{pod_name} to attach to", self.namespace)))?;
        let spec = pod.spec.clone().unwrap_or_default();
        let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        let target = match container {
            Some(c) => spec.containers.iter().find(|x| x.name == c).ok_or_else(|| {
                invalid(format!("pod {pod_name} has no container {c} (it has {})", names.join(", ")))
            })?,
            None if spec.containers.len() == 1 => &spec.containers[0],
            None => {
                return Err(invalid(format!(
                    "pod {pod_name} has several containers ({}): name one, --attach {pod_name}/CONTAINER",
                    names.join(", ")
                )))
            }
        };
        let controller = |meta: &kube::api::ObjectMeta| {
            meta.owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| (o.kind.clone(), o.name.clone()))
        };
        let not_deployment = |what: String| {
            invalid(format!(
                "pod {pod_name} is not a Deployment's ({what}): a pod cannot gain a container, so \
                 sessionfs adds its sidecar to a Deployment's pod template"
            ))
        };
        let deployment = match controller(&pod.metadata) {
            Some((kind, rs)) if kind == "ReplicaSet" => {
                let action = format!("read replicaset {}/{rs}", self.namespace);
                let set = self
                    .call(&action, self.api::<ReplicaSet>().get(&rs))?
                    .map_err(api_error(action))?;
                match controller(&set.metadata) {
                    Some((kind, d)) if kind == "Deployment" => d,
                    other => {
                        return Err(not_deployment(format!(
                            "replicaset {rs} is controlled by {other:?}"
                        )))
                    }
                }
            }
            Some((kind, name)) => {
                return Err(not_deployment(format!("controlled by {kind} {name}")))
            }
            None => return Err(not_deployment("it has no controller".into())),
        };
        let mounts = target.volume_mounts.clone().unwrap_or_default();
        let path = match path
            .map(str::to_owned)
            .or_else(|| target.working_dir.clone())
        {
            Some(path) => path,
            None => {
                let volumes = spec.volumes.clone().unwrap_or_default();
                let data: Vec<_> = mounts
                    .iter()
                    .filter(|m| {
                        volumes.iter().any(|v| {
                            v.name == m.name
                                && (v.persistent_volume_claim.is_some() || v.empty_dir.is_some())
                        })
                    })
                    .collect();
                match data[..] {
                    [one] => one.mount_path.clone(),
                    _ => return Err(invalid(format!(
                        "container {} has {} workspace-like volumes: say which with --workspace-path PATH",
                        target.name,
                        data.len()
                    ))),
                }
            }
        };
        let volume = mounts
            .iter()
            .find(|m| m.mount_path == path)
            .map(|m| m.name.clone())
            .ok_or_else(|| {
                invalid(format!(
                    "container {} mounts no volume at {path}: the sidecar serves a volume it shares \
                     (--workspace-path names the mount)",
                    target.name
                ))
            })?;
        let attach = Attachment {
            deployment: deployment.clone(),
            container: target.name.clone(),
            volume,
            path,
        };
        // A Deployment carries one session's sidecar.
        let action = format!("read deployment {}/{deployment}", self.namespace);
        let current = self
            .call(
                &action,
                self.api::<k8s_openapi::api::apps::v1::Deployment>()
                    .get(&deployment),
            )?
            .map_err(api_error(action))?;
        let template = current.spec.as_ref().map(|s| &s.template);
        let carried = template
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.as_ref())
            .and_then(|l| l.get(LABEL_SESSION).cloned());
        let has_sidecar = template
            .and_then(|t| t.spec.as_ref())
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.name == spec::SIDECAR));
        if has_sidecar || carried.as_deref().is_some_and(|s| s != id.as_str()) {
            return Err(invalid(format!(
                "deployment {deployment} carries the sidecar of session {} already: one session \
                 per workload",
                carried.unwrap_or_else(|| "(unknown)".into())
            )));
        }
        let mut with = opts.clone();
        with.attach = Some(attach.clone());
        self.put_secret(home, id, installation, &with)?;
        let (sidecar, certs) = spec::sidecar(id, &with, &attach)?;
        let labels = spec::labels(id, installation);
        let changed = self.change_deployment(&deployment, |d| {
            let template = &mut d.spec.get_or_insert_with(Default::default).template;
            let meta = template.metadata.get_or_insert_with(Default::default);
            let l = meta.labels.get_or_insert_with(Default::default);
            l.insert(LABEL_SESSION.to_owned(), labels[LABEL_SESSION].clone());
            l.insert(
                LABEL_INSTALLATION.to_owned(),
                labels[LABEL_INSTALLATION].clone(),
            );
            let pod = template.spec.get_or_insert_with(Default::default);
            let init = pod.init_containers.get_or_insert_with(Vec::new);
            init.retain(|c| c.name != spec::SIDECAR);
            init.push(sidecar.clone());
            let volumes = pod.volumes.get_or_insert_with(Vec::new);
            volumes.retain(|v| v.name != spec::SIDECAR_CERTS);
            volumes.push(certs.clone());
        });
        if let Err(e) = changed {
            // The Secret holds the session's key: it goes with the attempt.
            let _ = self.delete_named::<Secret>("secret", id);
            return Err(e);
        }
        Ok(attach)
    }

    /// Takes session `id`'s sidecar out of its Deployment's pod template again (the Deployment
    /// rolls its pods out without it) and deletes the session's Secret.
    pub fn detach(&self, id: &SessionId, attach: &Attachment) -> Result<(), KubeError> {
        let result = self.change_deployment(&attach.deployment, |d| {
            let template = &mut d.spec.get_or_insert_with(Default::default).template;
            let carried = template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.as_ref())
                .and_then(|l| l.get(LABEL_SESSION));
            if carried.is_some_and(|s| s != id.as_str()) {
                // Another session's sidecar now: not this one's to take out.
                return;
            }
            if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
                labels.remove(LABEL_SESSION);
                labels.remove(LABEL_INSTALLATION);
            }
            if let Some(pod) = template.spec.as_mut() {
                // As the template was before: an emptied list goes.
                if let Some(init) = pod.init_containers.as_mut() {
                    init.retain(|c| c.name != spec::SIDECAR);
                }
                if pod.init_containers.as_ref().is_some_and(Vec::is_empty) {
                    pod.init_containers = None;
                }
                if let Some(volumes) = pod.volumes.as_mut() {
                    volumes.retain(|v| v.name != spec::SIDECAR_CERTS);
                }
            }
        });
        match result {
            // A Deployment deleted meanwhile has no sidecar left to take out.
            Err(KubeError::Api { message, .. }) if message.contains("(404)") => {}
            other => other?,
        }
        self.delete_named::<Secret>("secret", id)?;
        Ok(())
    }

    /// Read-modify-write of Deployment `name` at the resource version read (a `409 Conflict`
    /// from a concurrent writer is retried).
    fn change_deployment(
        &self,
        name: &str,
        f: impl Fn(&mut k8s_openapi::api::apps::v1::Deployment),
    ) -> Result<(), KubeError> {
        use k8s_openapi::api::apps::v1::Deployment;
        for _ in 0..8 {
            let action = format!("read deployment {}/{name}", self.namespace);
            let mut d = self
                .call(&action, self.api::<Deployment>().get(name))?
                .map_err(api_error(action))?;
            f(&mut d);
            let action = format!("replace deployment {}/{name}", self.namespace);
            match self.call(
                &action,
                self.api::<Deployment>()
                    .replace(name, &PostParams::default(), &d),
            )? {
                Ok(_) => return Ok(()),
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => return Err(api_error(action)(e)),
            }
        }
        Err(KubeError::Api {
            action: format!("replace deployment {}/{name}", self.namespace),
            message: "it kept changing under 8 attempts".into(),
        })
    }

    /// Deletes session `id`'s pod, Secret and Service, and with `purge` its workspace claim.
    pub fn remove(&self, id: &SessionId, purge: bool) -> Result<Removed, KubeError> {
        self.delete_objects(id, true, true, true, purge)
    }
}
