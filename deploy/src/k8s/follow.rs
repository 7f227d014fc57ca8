//! The registry follows the API server while `sessionfs mount` runs: one kube-runtime watcher per
//! namespace (and kubeconfig context) this host's kubernetes sessions live in, on the pods labelled
//! with this installation. A pod's phase and readiness set its session's state, its address the
//! endpoint (a pod made again with a new IP is picked up without a remount), and a pod deleted
//! outside sessionfs makes the session `gone`, which takes it off the mount root.
//!
//! `session stop` marks the record `stopped` before it deletes the pod, so that deletion is not
//! taken for a disappearance; events of a pod being deleted are skipped until it is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt};
use sessionfs_registry::{Backend, SessionId, SessionRecord, SessionState};
use tracing::{debug, info, warn};

use super::{endpoint, ready, record_options, LABEL_INSTALLATION, LABEL_SESSION};
use crate::state::Home;

/// How often the set of namespaces to watch is read from the registry.
const RESCAN: Duration = Duration::from_secs(2);

/// A namespace to follow: the kubeconfig context and the namespace.
type Place = (Option<String>, String);

/// The follower thread; dropping it stops it.
pub struct Follower {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Follower {
    /// Starts following `home`'s kubernetes sessions (none yet: it starts watching a namespace
    /// when a record names it).
    pub fn spawn(home: Home) -> std::io::Result<Follower> {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("sessionfs-kubernetes".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        warn!("cannot start the Kubernetes follower: {e}");
                        return;
                    }
                };
                runtime.block_on(async move {
                    tokio::select! {
                        () = follow(Arc::new(home)) => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(Follower {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// This host's kubernetes sessions, by the place their pods are in.
fn places(home: &Home) -> BTreeMap<Place, Vec<SessionRecord>> {
    let mut places: BTreeMap<Place, Vec<SessionRecord>> = BTreeMap::new();
    let records = match home.open_registry().and_then(|r| {
        r.list()
            .map_err(|source| crate::state::StateError::Registry {
                location: home.registry_location(),
                source,
            })
    }) {
        Ok(records) => records,
        Err(e) => {
            debug!("kubernetes follower: cannot list the sessions: {e}");
            return places;
        }
    };
    let here = sessionfs_registry::this_host();
    for record in records {
        if record.backend != Backend::Kubernetes || record.elsewhere(&here) {
            continue;
        }
        if let Ok(opts) = record_options(&record) {
            places
                .entry((opts.context.clone(), opts.namespace.clone()))
                .or_default()
                .push(record);
        }
    }
    places
}

async fn follow(home: Arc<Home>) {
    let mut watching = BTreeSet::new();
    let mut tasks = Vec::new();
    loop {
        let scan = home.clone();
        let found = tokio::task::spawn_blocking(move || places(&scan))
            .await
            .unwrap_or_default();
        for place in found.into_keys() {
            if watching.insert(place.clone()) {
                info!(context = ?place.0, namespace = %place.1, "following the session pods");
                tasks.push(tokio::spawn(watch_place(home.clone(), place)));
            }
        }
        tokio::time::sleep(RESCAN).await;
    }
}

/// Watches one namespace for ever (the watcher retries with backoff).
async fn watch_place(home: Arc<Home>, place: Place) {
    let installation = {
        let home = home.clone();
        match tokio::task::spawn_blocking(move || super::installation(&home)).await {
            Ok(Ok(installation)) => installation,
            Ok(Err(e)) => {
                warn!("kubernetes follower: {e}");
                return;
            }
            Err(_) => return,
        }
    };
    let mut last_error = None;
    loop {
        let options = kube::config::KubeConfigOptions {
            context: place.0.clone(),
            ..Default::default()
        };
        let client = match kube::Config::from_kubeconfig(&options).await {
            Ok(config) => kube::Client::try_from(config).map_err(|e| e.to_string()),
            Err(e) => kube::Config::incluster()
                .map_err(|i| format!("kubeconfig: {e}; in-cluster: {i}"))
                .and_then(|c| kube::Client::try_from(c).map_err(|e| e.to_string())),
        };
        let client = match client {
            Ok(client) => client,
            Err(e) => {
                if last_error.as_ref() != Some(&e) {
                    warn!(namespace = %place.1, "kubernetes follower cannot connect: {e}");
                }
                last_error = Some(e);
                tokio::time::sleep(RESCAN).await;
                continue;
            }
        };
        let api: kube::Api<Pod> = kube::Api::namespaced(client, &place.1);
        let config =
            watcher::Config::default().labels(&format!("{LABEL_INSTALLATION}={installation}"));
        let mut events = watcher(api, config).default_backoff().boxed();
        // Every live pod of each session here (a workload may have several during a rollout);
        // a session's state comes from all of them.
        let mut pods: BTreeMap<SessionId, BTreeMap<String, Pod>> = BTreeMap::new();
        let mut listing: Option<BTreeMap<SessionId, BTreeMap<String, Pod>>> = None;
        while let Some(event) = events.next().await {
            let touched = match event {
                Ok(watcher::Event::Init) => {
                    listing = Some(BTreeMap::new());
                    continue;
                }
                Ok(watcher::Event::InitApply(pod)) => {
                    if pod.metadata.deletion_timestamp.is_some() {
                        // Going: no longer serving (as for `Apply`).
                        continue;
                    }
                    if let (Some(listing), Some(id)) = (listing.as_mut(), session_of(&pod)) {
                        listing.entry(id).or_default().insert(pod_name(&pod), pod);
                    }
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    let listed = listing.take().unwrap_or_default();
                    let before: BTreeSet<SessionId> = pods.keys().cloned().collect();
                    pods = listed;
                    // Sessions listed now, those that had pods before, and every session of this
                    // place that should have one.
                    let mut touched: BTreeSet<SessionId> = pods.keys().cloned().collect();
                    touched.extend(before);
                    touched.extend(known(&home, &place).await);
                    touched
                }
                Ok(watcher::Event::Apply(pod)) => {
                    let Some(id) = session_of(&pod) else { continue };
                    let name = pod_name(&pod);
                    let entry = pods.entry(id.clone()).or_default();
                    if pod.metadata.deletion_timestamp.is_some() {
                        // Going: no longer serving, gone once deleted.
                        entry.remove(&name);
                    } else {
                        entry.insert(name, pod);
                    }
                    BTreeSet::from([id])
                }
                Ok(watcher::Event::Delete(pod)) => {
                    let Some(id) = session_of(&pod) else { continue };
                    if let Some(entry) = pods.get_mut(&id) {
                        entry.remove(&pod_name(&pod));
                    }
                    BTreeSet::from([id])
                }
                Err(e) => {
                    let message = e.to_string();
                    if last_error.as_ref() != Some(&message) {
                        warn!(namespace = %place.1, "kubernetes watch interrupted: {message}");
                    }
                    last_error = Some(message);
                    continue;
                }
            };
            for id in touched {
                let live: Vec<Pod> = pods
                    .get(&id)
                    .map(|p| p.values().cloned().collect())
                    .unwrap_or_default();
                settle(&home, &place, id, live).await;
            }
            pods.retain(|_, p| !p.is_empty());
        }
    }
}

fn pod_name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// The sessions of `place` in the registry.
async fn known(home: &Arc<Home>, place: &Place) -> Vec<SessionId> {
    let scan = home.clone();
    tokio::task::spawn_blocking(move || places(&scan))
        .await
        .unwrap_or_default()
        .remove(place)
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.id)
        .collect()
}

fn session_of(pod: &Pod) -> Option<SessionId> {
    pod.metadata
        .labels
        .as_ref()?
        .get(LABEL_SESSION)?
        .parse()
        .ok()
}

/// Changes session `id`'s record with `f` (on the blocking pool), if it is a kubernetes session of
/// this host in `place`; logs what changed.
async fn change(
    home: &Arc<Home>,
    place: &Place,
    id: SessionId,
    f: impl Fn(&SessionRecord) -> Option<(SessionState, Option<std::net::SocketAddr>)> + Send + 'static,
) {
    let (home, place) = (home.clone(), place.clone());
    let done = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let registry = home.open_registry().map_err(|e| e.to_string())?;
        let Some(record) = registry.get(&id).map_err(|e| e.to_string())? else {
            return Ok(());
        };
        // Whether the follower may change `r`, and to what: decided again on the record the write
        // is made to, so a command's change made meanwhile (stop, a migration's fence) is never
        // written over.
        let decide = |r: &SessionRecord| {
            let eligible = r.backend == Backend::Kubernetes
                && !r.elsewhere(&sessionfs_registry::this_host())
                && !r.labels.contains_key(crate::move_host::MIGRATING_LABEL)
                && record_options(r)
                    .is_ok_and(|o| (o.context.clone(), o.namespace.clone()) == place);
            eligible
                .then(|| f(r))
                .flatten()
                .filter(|(state, endpoint)| (r.state, r.endpoint) != (*state, *endpoint))
        };
        let Some((state, endpoint)) = decide(&record) else {
            return Ok(());
        };
        registry
            .modify(&id, |r| {
                if let Some((state, endpoint)) = decide(r) {
                    r.state = state;
                    r.endpoint = endpoint;
                }
            })
            .map_err(|e| e.to_string())?;
        info!(session = %id, from = %record.state, to = %state, endpoint = ?endpoint, "the session's pod changed");
        Ok(())
    })
    .await;
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!("kubernetes follower: cannot update a session: {e}"),
        Err(e) => warn!("kubernetes follower: {e}"),
    }
}

/// Sets session `id`'s state and endpoint from its live pods: running at a ready pod's address
/// (the newest), starting or unhealthy while none is ready, gone when it has none (unless it was
/// stopped, or has not had a pod yet).
async fn settle(home: &Arc<Home>, place: &Place, id: SessionId, mut live: Vec<Pod>) {
    live.sort_by_key(|p| p.metadata.creation_timestamp.clone());
    change(home, place, id, move |record| {
        let reach = record_options(record).ok()?.reach;
        if let Some(pod) = live.iter().rev().find(|p| ready(p)) {
            return Some((
                SessionState::Running,
                endpoint(pod, reach).or(record.endpoint),
            ));
        }
        match live.last() {
            Some(pod) => {
                let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                let state = match (phase, record.state) {
                    (Some("Pending") | None, _) => SessionState::Starting,
                    (_, SessionState::Running | SessionState::Unhealthy) => SessionState::Unhealthy,
                    (Some("Running"), _) => SessionState::Starting,
                    _ => SessionState::Unhealthy,
                };
                Some((state, endpoint(pod, reach).or(record.endpoint)))
            }
            // A pod that never came is not a pod that went: `starting` records wait for theirs.
            None => matches!(
                record.state,
                SessionState::Running | SessionState::Unhealthy
            )
            .then_some((SessionState::Gone, None)),
        }
    })
    .await;
}
