//! Docker reconciliation: the registry learns what happened to docker sessions' containers
//! from Docker itself.
//!
//! - [`reconcile_all`] lists the containers labelled [`docker::LABEL_MANAGED`]`=1` and with
//!   this installation's [`docker::LABEL_HOME`], and brings every docker session's record in
//!   line with its container: state and endpoint from [`docker::observed_state`] (a
//!   `docker restart` publishes a new host port), `gone` without an endpoint when the
//!   container no longer exists.
//! - [`reconcile_session`] does the same for one session.
//! - Adoption: a running container labelled [`docker::LABEL_SESSION`]`=<id>` and
//!   [`docker::LABEL_ADOPT`]`=1` (one started by `deploy/docker-compose.yml`, say) whose id has
//!   no record is registered as a docker session (state and endpoint as above, labels
//!   [`docker::RECORD_CONTAINER`], [`docker::RECORD_CONTAINER_ID`] and
//!   [`docker::RECORD_ADOPTED`]`=1`), provided this installation issued the session's
//!   certificates (`sessions/<id>/certs` exists, see `sessionfs session certs`), the
//!   container carries no other installation's [`docker::LABEL_HOME`], publishes the daemon's
//!   port on loopback only, and its daemon proves it holds this installation's certificate of
//!   the session (it answers a mutual-TLS ping as that session); otherwise a warning is logged
//!   once and the container is left alone (a refused container is probed again after
//!   [`REFUSED_FOR`]). From then on it is reconciled like any docker session. An adopted
//!   session whose container is gone gives way to the next adoptable container of its id, so a
//!   container adopted first cannot hold the id after it is removed.
//! - [`Watcher`] runs both in a background thread owned by `sessionfs mount`: one full pass,
//!   then one session at a time from the engine's event stream, with a full pass again
//!   after every reconnect (events may have been missed meanwhile).
//!
//! Every pass holds the state directory's lock, so it never interleaves with a `session`
//! command, and writes the registry only when something changed. Every Docker call is
//! bounded in time ([`docker::CALL_TIMEOUT`]); the event stream is read in short waits so the
//! watcher stops promptly.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::models::{ContainerInspectResponse, ContainerSummary, EventMessage};
use sessionfs_registry::{
    Backend, Registry, RegistryError, SessionId, SessionRecord, SessionState, CERT_PIN_LABEL,
};
use tracing::{debug, info, warn};

use crate::docker::{self, DockerError, Engine, NextEvent};
use crate::state::{Home, StateError};

/// How long an adoptable container's daemon has to answer the adoption probe.
const ADOPTION_PROBE: Duration = Duration::from_secs(3);
/// How long a container whose adoption probe failed is left alone (its events may come often).
pub const REFUSED_FOR: Duration = Duration::from_secs(30);

/// How long one wait for the next event lasts before the stop flag is checked again.
const EVENT_WAIT: Duration = Duration::from_millis(250);
/// At most this many already-arrived events are merged into one round of reconciling.
const EVENT_BATCH: usize = 64;
/// Backoff between reconnects to the event stream.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Errors of reconciliation.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The state directory (its lock).
    #[error(transparent)]
    State(#[from] StateError),
    /// The registry.
    #[error("session registry: {0}")]
    Registry(#[from] RegistryError),
    /// The Docker engine.
    #[error(transparent)]
    Docker(#[from] DockerError),
}

/// One record changed by reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The session.
    pub id: SessionId,
    /// The state before and after.
    pub state: (SessionState, SessionState),
    /// The endpoint before and after.
    pub endpoint: (Option<SocketAddr>, Option<SocketAddr>),
}

/// Brings every docker session of `home` in line with its container (see the module
/// documentation); returns what changed.
pub fn reconcile_all(
    home: &Home,
    registry: &Registry,
    engine: &Engine,
    stop: &AtomicBool,
) -> Result<Vec<Change>, ReconcileError> {
    // A command holding the lock (a long migration, say) must not keep the mount from exiting.
    let Some(_lock) = home.lock_unless(|| stop.load(Ordering::Relaxed))? else {
        return Ok(Vec::new());
    };
    let containers = engine.list_session_containers(home)?;
    let adoptable = engine.list_adoptable_containers()?;
    let listed = |name: &str| {
        let slashed = format!("/{name}");
        containers.iter().chain(&adoptable).any(|c| {
            c.names
                .as_ref()
                .is_some_and(|names| names.contains(&slashed))
        })
    };
    let mut changes = Vec::new();
    for c in &adoptable {
        changes.extend(adopt(home, registry, engine, c)?);
    }
    let records = registry.list()?;
    for c in &containers {
        let session = c.labels.as_ref().and_then(|l| l.get(docker::LABEL_SESSION));
        let known = session.is_some_and(|s| {
            records
                .iter()
                .any(|r| r.backend == Backend::Docker && r.id.as_str() == s)
        });
        if !known {
            debug!(container = ?c.names, session = ?session, "labelled container of no registered session; ignored");
        }
    }
    // Another host's containers are its own reconciler's: this engine does not have them.
    let here = sessionfs_registry::this_host();
    for record in records
        .iter()
        .filter(|r| r.backend == Backend::Docker && !r.elsewhere(&here))
    {
        let container = docker::record_container(record);
        let inspected = if listed(&container) {
            engine.inspect_container(&container)?
        } else {
            None
        };
        changes.extend(apply(registry, record, inspected.as_ref())?);
    }
    Ok(changes)
}

/// Brings docker session `id` in line with its container; `None` if nothing changed (or it
/// is not a registered docker session).
pub fn reconcile_session(
    home: &Home,
    registry: &Registry,
    engine: &Engine,
    id: &SessionId,
    stop: &AtomicBool,
) -> Result<Option<Change>, ReconcileError> {
    let Some(_lock) = home.lock_unless(|| stop.load(Ordering::Relaxed))? else {
        return Ok(None);
    };
    let record = registry.get(id)?;
    // No record, or an adopted one whose container is gone: an adoptable container may take it.
    if record.as_ref().is_none_or(|r| adopted_and_gone(r, "")) {
        for c in engine.list_adoptable_containers()? {
            let labelled = c.labels.as_ref().and_then(|l| l.get(docker::LABEL_SESSION));
            if labelled.is_some_and(|s| s == id.as_str()) {
                if let Some(change) = adopt(home, registry, engine, &c)? {
                    return Ok(Some(change));
                }
            }
        }
    }
    let Some(record) = record else {
        debug!(session = %id, "event for a session that is not registered; ignored");
        return Ok(None);
    };
    if record.backend != Backend::Docker || record.elsewhere(&sessionfs_registry::this_host()) {
        return Ok(None);
    }
    let inspected = engine.inspect_container(&docker::record_container(&record))?;
    apply(registry, &record, inspected.as_ref())
}

/// Containers already warned about (by container id and reason), so that each warning is
/// logged once per process rather than on every pass.
static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Containers whose adoption probe failed, and when.
static REFUSED: Mutex<BTreeMap<String, Instant>> = Mutex::new(BTreeMap::new());

/// Logs `message` about `container` at warn level the first time, at debug level after.
fn warn_once(container: &str, session: &str, message: &'static str) {
    let first = WARNED
        .lock()
        .map_or(true, |mut w| w.insert(format!("{container} {message}")));
    if first {
        warn!(container, session, "{message}");
    } else {
        debug!(container, session, "{message}");
    }
}

/// Adopts the adoptable container `c` as a docker session if its id has no record, it runs,
/// it belongs to no other installation and `home` issued the session's certificates (see the
/// module documentation). Must be called with the state directory's lock held.
fn adopt(
    home: &Home,
    registry: &Registry,
    engine: &Engine,
    c: &ContainerSummary,
) -> Result<Option<Change>, ReconcileError> {
    let labels = c.labels.clone().unwrap_or_default();
    let container_id = c.id.clone().unwrap_or_default();
    let Some(session) = labels.get(docker::LABEL_SESSION) else {
        return Ok(None);
    };
    if labels.get(docker::LABEL_ADOPT).map(String::as_str) != Some("1") {
        return Ok(None);
    }
    if labels
        .get(docker::LABEL_HOME)
        .is_some_and(|h| *h != home.root().display().to_string())
    {
        debug!(container = %container_id, session = %session, "adoptable container of another installation; ignored");
        return Ok(None);
    }
    let Ok(id) = session.parse::<SessionId>() else {
        warn_once(
            &container_id,
            session,
            "container to adopt has an invalid session id label; ignored",
        );
        return Ok(None);
    };
    let replaces = match registry.get(&id)? {
        None => false,
        // An adopted session whose container is gone gives way to another container of its id.
        Some(r) if adopted_and_gone(&r, &container_id) => true,
        Some(_) => return Ok(None),
    };
    let Some(inspected) = engine.inspect_container(&container_id)? else {
        return Ok(None);
    };
    if inspected.state.as_ref().and_then(|s| s.running) != Some(true) {
        debug!(container = %container_id, session = %id, "container to adopt is not running yet");
        return Ok(None);
    }
    if !home.session_cert_dir(&id).is_dir() {
        warn_once(
            &container_id,
            session,
            "not adopting the container: this installation issued no certificates for its \
             session (run `sessionfs session certs <id> --out DIR` and mount DIR at /run/sessionfs)",
        );
        return Ok(None);
    }
    let observed = docker::observed_state(&inspected);
    let (state, endpoint) = (observed.state, observed.endpoint);
    let Some(endpoint) = endpoint else {
        warn_once(
            &container_id,
            session,
            "not adopting the container: it publishes no host port for 7878/udp \
             (publish it as 127.0.0.1::7878/udp)",
        );
        return Ok(None);
    };
    if docker::published_beyond_loopback(&inspected) {
        warn_once(
            &container_id,
            session,
            "not adopting the container: it publishes 7878/udp beyond loopback, where anyone on \
             the network reaches its daemon (publish it as 127.0.0.1::7878/udp)",
        );
        return Ok(None);
    }
    let refused_lately = REFUSED
        .lock()
        .ok()
        .and_then(|r| r.get(&container_id).copied())
        .is_some_and(|at| at.elapsed() < REFUSED_FOR);
    if refused_lately {
        return Ok(None);
    }
    if let Err(e) = engine.proves_session(home, &id, endpoint, ADOPTION_PROBE) {
        if let Ok(mut r) = REFUSED.lock() {
            r.insert(container_id.clone(), Instant::now());
        }
        debug!(container = %container_id, session = %id, error = %e, "adoption probe failed");
        warn_once(
            &container_id,
            session,
            "not adopting the container: its daemon does not answer as the session with this \
             installation's certificate (mount the directory `sessionfs session certs <id> --out \
             DIR` wrote at /run/sessionfs)",
        );
        return Ok(None);
    }
    let endpoint = Some(endpoint);
    let name = inspected
        .name
        .as_deref()
        .map(|n| n.trim_start_matches('/').to_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| container_id.clone());
    let mut record = SessionRecord::new(id.clone(), Backend::Docker, home.session_cert_name(&id)?);
    record.state = state;
    record.endpoint = endpoint;
    record.pid = observed.pid;
    record
        .labels
        .insert(docker::RECORD_CONTAINER.to_owned(), name.clone());
    record
        .labels
        .insert(docker::RECORD_CONTAINER_ID.to_owned(), container_id.clone());
    record
        .labels
        .insert(docker::RECORD_ADOPTED.to_owned(), "1".to_owned());
    record
        .labels
        .insert(CERT_PIN_LABEL.to_owned(), home.session_cert_pin(&id)?);
    record.labels.insert(
        sessionfs_registry::HOST_LABEL.to_owned(),
        sessionfs_registry::this_host(),
    );
    if replaces {
        info!(session = %id, "the session's adopted container is gone; adopting its successor");
        registry.remove(&id)?;
    }
    registry.register(&record)?;
    info!(session = %id, container = %name, endpoint = ?endpoint, state = %state, "adopted container as docker session");
    Ok(Some(Change {
        id,
        state: (SessionState::Gone, state),
        endpoint: (None, endpoint),
    }))
}

/// Whether `record` is an adopted docker session whose container is gone, and `container_id` is
/// another container.
fn adopted_and_gone(record: &SessionRecord, container_id: &str) -> bool {
    record.backend == Backend::Docker
        && !record.elsewhere(&sessionfs_registry::this_host())
        && record.state == SessionState::Gone
        && record
            .labels
            .get(docker::RECORD_ADOPTED)
            .is_some_and(|v| v == "1")
        && record
            .labels
            .get(docker::RECORD_CONTAINER_ID)
            .is_none_or(|c| c != container_id)
}

/// Whether an event is about a container of `home`: one carrying its [`docker::LABEL_HOME`],
/// or an adoptable one ([`docker::LABEL_ADOPT`]`=1`) carrying no other installation's.
fn event_for_home(event: &EventMessage, home: &Home) -> bool {
    let Some(attrs) = event.actor.as_ref().and_then(|a| a.attributes.as_ref()) else {
        return false;
    };
    let root = home.root().display().to_string();
    match attrs.get(docker::LABEL_HOME) {
        Some(h) => *h == root,
        None => attrs.get(docker::LABEL_ADOPT).map(String::as_str) == Some("1"),
    }
}

/// Writes the state, endpoint and container id observed for `record`'s container (`None`:
/// it does not exist) if they differ from the record.
fn apply(
    registry: &Registry,
    record: &SessionRecord,
    inspected: Option<&ContainerInspectResponse>,
) -> Result<Option<Change>, ReconcileError> {
    let (state, endpoint, pid, container_id) = match inspected {
        None => (SessionState::Gone, None, None, None),
        Some(i) => {
            let observed = docker::observed_state(i);
            (
                observed.state,
                observed.endpoint,
                observed.pid,
                i.id.clone(),
            )
        }
    };
    let id_changed = container_id
        .as_ref()
        .is_some_and(|c| record.labels.get(docker::RECORD_CONTAINER_ID) != Some(c));
    if record.state == state && record.endpoint == endpoint && record.pid == pid && !id_changed {
        return Ok(None);
    }
    registry.modify(&record.id, |r| {
        r.state = state;
        r.endpoint = endpoint;
        r.pid = pid;
        if let Some(c) = &container_id {
            r.labels
                .insert(docker::RECORD_CONTAINER_ID.to_owned(), c.clone());
        }
    })?;
    let change = Change {
        id: record.id.clone(),
        state: (record.state, state),
        endpoint: (record.endpoint, endpoint),
    };
    // A restart keeps the state and may keep the endpoint: the daemon's pid is then what changed,
    // so both pids are shown (a recreated container's new id is in the record's labels).
    info!(
        session = %change.id,
        from = %change.state.0,
        to = %change.state.1,
        endpoint = ?change.endpoint.1,
        from_pid = ?record.pid,
        pid = ?pid,
        "reconciled docker session with its container"
    );
    Ok(Some(change))
}

/// The session an event is about, if it is one that can change a session's state.
fn event_session(event: &EventMessage) -> Option<SessionId> {
    let action = event.action.as_deref()?;
    let verb = action.split(':').next().unwrap_or(action).trim();
    let relevant = matches!(
        verb,
        "create"
            | "start"
            | "restart"
            | "die"
            | "stop"
            | "kill"
            | "destroy"
            | "pause"
            | "unpause"
            | "health_status"
            | "oom"
            | "rename"
            | "update"
    );
    if !relevant {
        return None;
    }
    let session = event
        .actor
        .as_ref()?
        .attributes
        .as_ref()?
        .get(docker::LABEL_SESSION)?;
    match session.parse() {
        Ok(id) => Some(id),
        Err(_) => {
            debug!(session = %session, "event with an invalid session label; ignored");
            None
        }
    }
}

/// The background reconciler of `sessionfs mount`: stops and joins its thread when dropped.
#[derive(Debug)]
pub struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts reconciling `home`'s docker sessions in a background thread (see the module
    /// documentation). Without a Docker engine the thread logs that at info level and ends.
    pub fn spawn(home: Home) -> std::io::Result<Watcher> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("sessionfs-docker".to_owned())
            .spawn(move || watch(&home, &flag))?;
        Ok(Watcher {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                warn!("the docker reconciler thread panicked");
            }
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn watch(home: &Home, stop: &AtomicBool) {
    let engine = match Engine::connect() {
        Ok(engine) => engine,
        Err(e) => {
            info!(error = %e, "no Docker engine answers; docker sessions are not reconciled");
            return;
        }
    };
    let registry = match home.open_registry() {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "cannot open the registry; docker sessions are not reconciled");
            return;
        }
    };
    info!(socket = %engine.socket(), "reconciling docker sessions with the Docker engine");
    let mut backoff = MIN_BACKOFF;
    while !stop.load(Ordering::Relaxed) {
        // Events from this second on are replayed, so nothing between the pass and the
        // subscription is lost (a replayed event only reconciles again).
        let since = now_secs();
        let mut healthy = match reconcile_all(home, &registry, &engine, stop) {
            Ok(changes) => {
                debug!(changed = changes.len(), "reconciled every docker session");
                true
            }
            Err(e) => {
                warn!(error = %e, "cannot reconcile docker sessions");
                false
            }
        };
        if healthy {
            let mut stream = engine.subscribe_events(home, since);
            healthy = follow(home, &registry, &engine, &mut stream, stop);
        }
        backoff = if healthy {
            MIN_BACKOFF
        } else {
            (backoff * 2).min(MAX_BACKOFF)
        };
        // Sleeps in short steps so a stop request is seen promptly.
        let mut waited = Duration::ZERO;
        while waited < backoff && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(EVENT_WAIT);
            waited += EVENT_WAIT;
        }
    }
    debug!("docker reconciler stopped");
}

/// Reconciles the session of every relevant event until the stream ends or fails, or
/// `stop` is set; returns whether the stream delivered anything (or was stopped).
fn follow(
    home: &Home,
    registry: &Registry,
    engine: &Engine,
    stream: &mut docker::EventStream,
    stop: &AtomicBool,
) -> bool {
    let mut delivered = false;
    while !stop.load(Ordering::Relaxed) {
        let first = match engine.next_event(stream, EVENT_WAIT) {
            NextEvent::Idle => continue,
            NextEvent::Ended => {
                info!("the Docker event stream ended; reconnecting");
                return delivered;
            }
            NextEvent::Failed(e) => {
                warn!(error = %e, "the Docker event stream failed; reconnecting");
                return delivered;
            }
            NextEvent::Event(event) => event,
        };
        delivered = true;
        let mut sessions = BTreeSet::new();
        let mut add = |event: &EventMessage| {
            if event_for_home(event, home) {
                sessions.extend(event_session(event));
            }
        };
        add(&first);
        // Merges the events that are already there (a restart is kill, die, stop, start…).
        let mut ended = false;
        for _ in 0..EVENT_BATCH {
            match engine.next_event(stream, Duration::ZERO) {
                NextEvent::Event(event) => add(&event),
                NextEvent::Idle => break,
                NextEvent::Ended | NextEvent::Failed(_) => {
                    ended = true;
                    break;
                }
            }
        }
        for id in &sessions {
            if let Err(e) = reconcile_session(home, registry, engine, id, stop) {
                warn!(session = %id, error = %e, "cannot reconcile the session");
            }
        }
        if ended {
            return delivered;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bollard::models::{EventActor, EventMessage};

    use super::*;

    fn event(action: &str, session: Option<&str>) -> EventMessage {
        EventMessage {
            action: Some(action.to_owned()),
            actor: Some(EventActor {
                id: Some("abc".into()),
                attributes: Some(
                    session
                        .map(|s| HashMap::from([(docker::LABEL_SESSION.to_owned(), s.to_owned())]))
                        .unwrap_or_default(),
                ),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn relevant_events_name_their_session() {
        let web: SessionId = "web".parse().unwrap();
        for action in [
            "start",
            "die",
            "destroy",
            "health_status: healthy",
            "restart",
        ] {
            assert_eq!(
                event_session(&event(action, Some("web"))),
                Some(web.clone())
            );
        }
        for action in [
            "exec_create: /sessionfsd --health",
            "exec_die",
            "attach",
            "top",
        ] {
            assert_eq!(event_session(&event(action, Some("web"))), None, "{action}");
        }
        assert_eq!(event_session(&event("start", None)), None);
        assert_eq!(event_session(&event("start", Some("Bad_Id"))), None);
    }

    #[test]
    fn events_of_own_and_adoptable_containers_only() {
        let home = Home::new("/state").unwrap();
        let with = |labels: &[(&str, &str)]| EventMessage {
            action: Some("start".to_owned()),
            actor: Some(EventActor {
                id: Some("abc".into()),
                attributes: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
            }),
            ..Default::default()
        };
        let s = docker::LABEL_SESSION;
        let own = with(&[(s, "web"), (docker::LABEL_HOME, "/state")]);
        assert!(event_for_home(&own, &home));
        let other = with(&[(s, "web"), (docker::LABEL_HOME, "/elsewhere")]);
        assert!(!event_for_home(&other, &home));
        let adoptable = with(&[(s, "web"), (docker::LABEL_ADOPT, "1")]);
        assert!(event_for_home(&adoptable, &home));
        let foreign_adoptable = with(&[
            (s, "web"),
            (docker::LABEL_ADOPT, "1"),
            (docker::LABEL_HOME, "/elsewhere"),
        ]);
        assert!(!event_for_home(&foreign_adoptable, &home));
        assert!(!event_for_home(&with(&[(s, "web")]), &home));
    }
}
