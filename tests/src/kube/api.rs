//! A stateful fake of the Kubernetes API server, for the few resources sessionfs uses: core/v1
//! pods, secrets, persistentvolumeclaims and services, and apps/v1 deployments and replicasets,
//! namespaced. It speaks the real wire
//! protocol over HTTP (JSON bodies, `Status` errors, list and `?watch=true` streams of JSON lines),
//! so the real `kube` client in the `sessionfs` processes talks to it through a kubeconfig.
//!
//! What it keeps like the real one: a cluster-wide `resourceVersion` bumped by every write, `uid`
//! and `creationTimestamp` on create, `409 AlreadyExists` on a second create, `409 Conflict` on an
//! update carrying a stale `resourceVersion`, pod specs immutable after create, label selectors
//! (`k=v`, `k!=v`, `k`, comma-joined), watches from a resource version (replayed from a history;
//! `410 Expired` below it), graceful pod deletion (a pod bound to a node gets a
//! `deletionTimestamp` and is removed when its node says the containers are gone), PVCs bound at
//! once (a provisioner with unlimited space), NodePorts allocated from 30000-32767.
//!
//! What it does not do: authentication and RBAC, admission, defaulting beyond the fields above,
//! strategic-merge and server-side-apply patches (`415`), field selectors, pagination (lists are
//! whole). [`Node`](super::Node) plays the kubelet.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{json, Value};
use tokio::sync::broadcast;

/// The resources served, by plural name, with their kind and API version.
const RESOURCES: [(&str, &str, &str); 6] = [
    ("pods", "Pod", "v1"),
    ("secrets", "Secret", "v1"),
    ("persistentvolumeclaims", "PersistentVolumeClaim", "v1"),
    ("services", "Service", "v1"),
    ("deployments", "Deployment", "apps/v1"),
    ("replicasets", "ReplicaSet", "apps/v1"),
];

/// One object's place: resource (plural), namespace, name.
pub type Key = (String, String, String);

/// A change, as a watch reports it.
#[derive(Clone, Debug)]
pub struct Event {
    pub revision: u64,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    pub resource: String,
    pub namespace: String,
    pub object: Value,
}

#[derive(Default)]
struct Store {
    revision: u64,
    objects: BTreeMap<Key, Value>,
    /// Every change since `first_kept` (a watch from before that is told `410 Expired`).
    history: Vec<Event>,
    first_kept: u64,
    next_uid: u64,
    next_node_port: u16,
    next_cluster_ip: u8,
}

/// The fake API server: its state, shared with the [`Node`](super::Node) and the tests.
#[derive(Clone)]
pub struct Api {
    store: Arc<Mutex<Store>>,
    changes: broadcast::Sender<Event>,
}

/// A running server; dropping it stops it.
pub struct Served {
    pub api: Api,
    pub addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

fn lock(store: &Mutex<Store>) -> MutexGuard<'_, Store> {
    store
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// A `Status` error body and its code.
fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    respond(code, &body)
}

fn respond(code: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

/// Whether `labels` satisfy `selector` (equality-based: `k=v`, `k==v`, `k!=v`, `k`, `!k`).
pub fn selects(selector: &str, labels: &Value) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|term| {
            let label = |k: &str| labels.get(k.trim()).and_then(Value::as_str);
            if let Some((k, v)) = term.split_once("!=") {
                label(k) != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                label(k) == Some(v.trim())
            } else if let Some(k) = term.strip_prefix('!') {
                label(k).is_none()
            } else {
                label(term).is_some()
            }
        })
}

/// A DNS-1123 subdomain, as object names must be.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Some(target) = target.as_object_mut() {
                for (k, v) in fields {
                    if v.is_null() {
                        target.remove(k);
                    } else {
                        merge_patch(target.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

impl Api {
    fn new() -> Api {
        let (changes, _) = broadcast::channel(4096);
        let store = Store {
            // Apart from other fakes' ports: tests run in parallel processes on one machine.
            next_node_port: 30_000 + (std::process::id() % 2_000) as u16,
            next_cluster_ip: 10,
            ..Store::default()
        };
        Api {
            store: Arc::new(Mutex::new(store)),
            changes,
        }
    }

    /// Serves on a loopback port of its own, from a runtime of its own.
    pub fn serve() -> Result<Served> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let api = Api::new();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let served = api.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let api = served.clone();
                async move { api.handle(method, uri, headers, body).await }
            },
        );
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Served {
            api,
            addr,
            _runtime: runtime,
        })
    }

    /// Records a change: bumps the revision, stamps the object, keeps it in the history and tells
    /// the watchers (under the store's lock, so a watch that subscribed under it misses nothing).
    fn commit(&self, store: &mut Store, kind: &'static str, key: &Key, mut object: Value) -> Value {
        store.revision += 1;
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert(
                "resourceVersion".into(),
                Value::String(store.revision.to_string()),
            );
        }
        if kind == "DELETED" {
            store.objects.remove(key);
        } else {
            store.objects.insert(key.clone(), object.clone());
        }
        let event = Event {
            revision: store.revision,
            kind,
            resource: key.0.clone(),
            namespace: key.1.clone(),
            object: object.clone(),
        };
        store.history.push(event.clone());
        let _ = self.changes.send(event);
        object
    }

    /// The object at `key`.
    pub fn get(&self, key: &Key) -> Option<Value> {
        lock(&self.store).objects.get(key).cloned()
    }

    /// Every object of `resource`, in every namespace.
    pub fn all(&self, resource: &str) -> Vec<Value> {
        lock(&self.store)
            .objects
            .iter()
            .filter(|(k, _)| k.0 == resource)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every object of `resource` in `namespace`.
    pub fn list(&self, resource: &str, namespace: &str) -> Vec<Value> {
        lock(&self.store)
            .objects
            .iter()
            .filter(|(k, _)| k.0 == resource && k.1 == namespace)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Changes `key`'s object with `f` as a controller would (its `status`, a node's binding);
    /// `None` if it is gone.
    pub fn update(&self, key: &Key, f: impl FnOnce(&mut Value)) -> Option<Value> {
        let mut store = lock(&self.store);
        let mut object = store.objects.get(key)?.clone();
        f(&mut object);
        Some(self.commit(&mut store, "MODIFIED", key, object))
    }

    /// Removes `key`'s object (a node finishing a graceful deletion).
    pub fn remove(&self, key: &Key) -> Option<Value> {
        let mut store = lock(&self.store);
        let object = store.objects.get(key)?.clone();
        Some(self.commit(&mut store, "DELETED", key, object))
    }

    /// Creates `object` in `namespace` as a `POST` would (a controller making an object); the
    /// status code if refused.
    pub fn create_object(&self, resource: &str, namespace: &str, object: Value) -> Result<(), u16> {
        let kind = RESOURCES
            .iter()
            .find(|(r, _, _)| *r == resource)
            .map_or("", |(_, k, _)| *k);
        let response = self.create(namespace, resource, kind, Some(object));
        if response.status().is_success() {
            Ok(())
        } else {
            Err(response.status().as_u16())
        }
    }

    /// Deletes an object as a `DELETE` would (gracefully for a pod on a node); whether it was there.
    pub fn delete_object(&self, resource: &str, namespace: &str, name: &str) -> bool {
        self.delete(namespace, resource, name).status().is_success()
    }

    /// Every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.changes.subscribe()
    }

    /// Forgets the history up to now: a watch from an older resource version gets `410 Expired`
    /// (as after an etcd compaction).
    pub fn compact(&self) {
        let mut store = lock(&self.store);
        store.first_kept = store.revision + 1;
        store.history.clear();
    }

    async fn handle(self, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
        let path: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
        let query: BTreeMap<String, String> = uri
            .query()
            .map(|q| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                    .map(|(k, v)| (k.to_owned(), decode(v)))
                    .collect()
            })
            .unwrap_or_default();
        // `/api/v1/…` for the core group, `/apis/<group>/<version>/…` for the others.
        let (version, rest) = match path[..] {
            ["api", "v1", ref rest @ ..] => ("v1".to_owned(), rest),
            ["apis", group, version, ref rest @ ..] => (format!("{group}/{version}"), rest),
            _ => ("".to_owned(), &path[..0]),
        };
        let (namespace, resource, name, sub) = match rest[..] {
            ["namespaces", ns, resource] => (ns, resource, None, None),
            ["namespaces", ns, resource, name] => (ns, resource, Some(name), None),
            ["namespaces", ns, resource, name, sub] => (ns, resource, Some(name), Some(sub)),
            _ => {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("the fake API server does not serve {}", uri.path()),
                )
            }
        };
        let Some(kind) = RESOURCES
            .iter()
            .find(|(r, _, v)| *r == resource && *v == version)
            .map(|(_, k, _)| *k)
        else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("the server could not find the requested resource {resource}"),
            );
        };
        if sub.is_some_and(|s| s != "status") {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("no subresource {sub:?}"),
            );
        }
        let body: Option<Value> = if body.is_empty() {
            None
        } else {
            match serde_json::from_slice(&body) {
                Ok(v) => Some(v),
                Err(e) => {
                    return status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        format!("the body is not JSON: {e}"),
                    )
                }
            }
        };
        match (method, name) {
            (Method::GET, None) => {
                let selector = query.get("labelSelector").cloned().unwrap_or_default();
                if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) {
                    self.watch(namespace, resource, &selector, &query)
                } else {
                    self.list_response(namespace, resource, kind, &selector)
                }
            }
            (Method::POST, None) => self.create(namespace, resource, kind, body),
            (Method::GET, Some(name)) => {
                match self.get(&(resource.into(), namespace.into(), name.into())) {
                    Some(object) => respond(StatusCode::OK, &object),
                    None => not_found(resource, name),
                }
            }
            (Method::PUT, Some(name)) => {
                self.replace(namespace, resource, name, sub.is_some(), body)
            }
            (Method::PATCH, Some(name)) => {
                let content = headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if content != "application/merge-patch+json" {
                    return status(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        format!("the fake API server takes merge patches only, not {content:?}"),
                    );
                }
                self.patch(namespace, resource, name, sub.is_some(), body)
            }
            (Method::DELETE, Some(name)) => self.delete(namespace, resource, name),
            (method, _) => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} is not served here"),
            ),
        }
    }

    fn list_response(
        &self,
        namespace: &str,
        resource: &str,
        kind: &str,
        selector: &str,
    ) -> Response {
        let store = lock(&self.store);
        let items: Vec<Value> = store
            .objects
            .iter()
            .filter(|(k, v)| {
                k.0 == resource && k.1 == namespace && selects(selector, &v["metadata"]["labels"])
            })
            .map(|(_, v)| v.clone())
            .collect();
        let body = json!({
            "apiVersion": api_version(resource),
            "kind": format!("{kind}List"),
            "metadata": {"resourceVersion": store.revision.to_string()},
            "items": items,
        });
        respond(StatusCode::OK, &body)
    }

    fn create(&self, namespace: &str, resource: &str, kind: &str, body: Option<Value>) -> Response {
        let Some(mut object) = body.filter(Value::is_object) else {
            return status(StatusCode::BAD_REQUEST, "BadRequest", "no object".into());
        };
        let mut store = lock(&self.store);
        store.next_uid += 1;
        let uid = format!("00000000-0000-4000-8000-{:012x}", store.next_uid);
        let name = match object["metadata"]["name"].as_str() {
            Some(name) => name.to_owned(),
            None => match object["metadata"]["generateName"].as_str() {
                Some(prefix) => format!("{prefix}{:05x}", store.next_uid),
                None => {
                    return status(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        format!("{kind} is invalid: metadata.name: Required value"),
                    )
                }
            },
        };
        if !valid_name(&name) {
            return status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!("{kind} {name:?} is invalid: metadata.name: must be a lowercase RFC 1123 subdomain"),
            );
        }
        if let Some(ns) = object["metadata"]["namespace"].as_str() {
            if ns != namespace {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("the namespace of the object ({ns}) does not match the namespace on the request ({namespace})"),
                );
            }
        }
        let key: Key = (resource.into(), namespace.into(), name.clone());
        if store.objects.contains_key(&key) {
            return status(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("{resource} \"{name}\" already exists"),
            );
        }
        object["apiVersion"] = json!(api_version(resource));
        object["kind"] = json!(kind);
        if resource == "deployments" || resource == "replicasets" {
            object["metadata"]["generation"] = json!(1);
        }
        let meta = &mut object["metadata"];
        meta["name"] = json!(name);
        meta["namespace"] = json!(namespace);
        meta["uid"] = json!(uid);
        meta["creationTimestamp"] = json!(now_rfc3339());
        match resource {
            "secrets" => {
                // `stringData` is write-only: merged into `data`, base64-encoded.
                if let Some(strings) = object.get("stringData").and_then(Value::as_object).cloned()
                {
                    for (k, v) in strings {
                        object["data"][k] =
                            json!(base64_encode(v.as_str().unwrap_or("").as_bytes()));
                    }
                    if let Some(o) = object.as_object_mut() {
                        o.remove("stringData");
                    }
                }
            }
            "pods" => object["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"}),
            "persistentvolumeclaims" => {
                let size = object["spec"]["resources"]["requests"]["storage"].clone();
                object["status"] = json!({"phase": "Bound", "capacity": {"storage": size},
                                          "accessModes": object["spec"]["accessModes"].clone()});
            }
            "services" => {
                store.next_cluster_ip = store.next_cluster_ip.wrapping_add(1);
                object["spec"]["clusterIP"] = json!(format!("10.96.0.{}", store.next_cluster_ip));
                if object["spec"]["type"] == "NodePort" || object["spec"]["type"] == "LoadBalancer"
                {
                    if let Some(ports) = object["spec"]["ports"].as_array_mut() {
                        for port in ports {
                            if port.get("nodePort").is_none() {
                                // A port no process here holds (several fakes may run at once).
                                let mut tries = 0;
                                while std::net::UdpSocket::bind(("127.0.0.1", store.next_node_port))
                                    .is_err()
                                    && tries < 2_767
                                {
                                    store.next_node_port =
                                        30_000 + (store.next_node_port - 29_999) % 2_768;
                                    tries += 1;
                                }
                                port["nodePort"] = json!(store.next_node_port);
                                store.next_node_port =
                                    30_000 + (store.next_node_port - 29_999) % 2_768;
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        let object = self.commit(&mut store, "ADDED", &key, object);
        respond(StatusCode::CREATED, &object)
    }

    /// A `PUT`: the whole object, refused if its `resourceVersion` is not the current one.
    fn replace(
        &self,
        namespace: &str,
        resource: &str,
        name: &str,
        status_only: bool,
        body: Option<Value>,
    ) -> Response {
        let Some(new) = body.filter(Value::is_object) else {
            return status(StatusCode::BAD_REQUEST, "BadRequest", "no object".into());
        };
        self.write(namespace, resource, name, status_only, |current| {
            if let Some(seen) = new["metadata"]["resourceVersion"].as_str() {
                if Some(seen) != current["metadata"]["resourceVersion"].as_str() {
                    return Err(Box::new(status(
                        StatusCode::CONFLICT,
                        "Conflict",
                        format!("Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
                    )));
                }
            }
            Ok(new)
        })
    }

    /// A `PATCH` (JSON merge patch).
    fn patch(
        &self,
        namespace: &str,
        resource: &str,
        name: &str,
        status_only: bool,
        body: Option<Value>,
    ) -> Response {
        let Some(patch) = body else {
            return status(StatusCode::BAD_REQUEST, "BadRequest", "no patch".into());
        };
        self.write(namespace, resource, name, status_only, |current| {
            let mut new = current.clone();
            merge_patch(&mut new, &patch);
            Ok(new)
        })
    }

    /// Writes the object `make` makes of the current one, as [`Api::merged`] allows.
    fn write(
        &self,
        namespace: &str,
        resource: &str,
        name: &str,
        status_only: bool,
        make: impl FnOnce(&Value) -> Result<Value, Box<Response>>,
    ) -> Response {
        let key: Key = (resource.into(), namespace.into(), name.into());
        let mut store = lock(&self.store);
        let Some(current) = store.objects.get(&key).cloned() else {
            return not_found(resource, name);
        };
        let written =
            make(&current).and_then(|new| self.merged(&current, new, resource, status_only));
        match written {
            Ok(object) => {
                let object = self.commit(&mut store, "MODIFIED", &key, object);
                respond(StatusCode::OK, &object)
            }
            Err(response) => *response,
        }
    }

    /// `new` as it may replace `current`: identity kept, pod specs immutable, `status` changed
    /// only through the subresource (and only `status` there).
    fn merged(
        &self,
        current: &Value,
        mut new: Value,
        resource: &str,
        status_only: bool,
    ) -> Result<Value, Box<Response>> {
        if status_only {
            let mut object = current.clone();
            object["status"] = new["status"].clone();
            return Ok(object);
        }
        for field in [
            "uid",
            "creationTimestamp",
            "name",
            "namespace",
            "deletionTimestamp",
        ] {
            new["metadata"][field] = current["metadata"][field].clone();
        }
        new["status"] = current["status"].clone();
        new["apiVersion"] = current["apiVersion"].clone();
        new["kind"] = current["kind"].clone();
        // A workload's generation counts the changes of its spec, as its controller sees them.
        let generation = current["metadata"]["generation"].as_u64();
        new["metadata"]["generation"] = match generation {
            Some(g) if new["spec"] != current["spec"] => json!(g + 1),
            Some(g) => json!(g),
            None => Value::Null,
        };
        if new["metadata"]["generation"].is_null() {
            if let Some(meta) = new["metadata"].as_object_mut() {
                meta.remove("generation");
            }
        }
        if resource == "pods" {
            let mut images_only = new["spec"].clone();
            let mut was = current["spec"].clone();
            for spec in [&mut images_only, &mut was] {
                if let Some(containers) = spec["containers"].as_array_mut() {
                    for c in containers {
                        c["image"] = Value::Null;
                    }
                }
            }
            if images_only != was {
                return Err(Box::new(status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "Pod is invalid: spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`".into(),
                )));
            }
        }
        Ok(new)
    }

    fn delete(&self, namespace: &str, resource: &str, name: &str) -> Response {
        let key: Key = (resource.into(), namespace.into(), name.into());
        let mut store = lock(&self.store);
        let Some(current) = store.objects.get(&key).cloned() else {
            return not_found(resource, name);
        };
        // A pod on a node ends gracefully: its node stops the containers, then removes it.
        if resource == "pods" && current["spec"]["nodeName"].is_string() {
            if current["metadata"]["deletionTimestamp"].is_string() {
                return respond(StatusCode::OK, &current);
            }
            let mut object = current;
            object["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            object["metadata"]["deletionGracePeriodSeconds"] = json!(30);
            let object = self.commit(&mut store, "MODIFIED", &key, object);
            return respond(StatusCode::OK, &object);
        }
        let object = self.commit(&mut store, "DELETED", &key, current);
        respond(StatusCode::OK, &object)
    }

    fn watch(
        &self,
        namespace: &str,
        resource: &str,
        selector: &str,
        query: &BTreeMap<String, String>,
    ) -> Response {
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_800u64);
        let (namespace, resource, selector) = (
            namespace.to_owned(),
            resource.to_owned(),
            selector.to_owned(),
        );
        let store = lock(&self.store);
        let mut first: Vec<Value> = Vec::new();
        if from == 0 {
            // From "any": the current objects as ADDED.
            for (k, v) in &store.objects {
                if k.0 == resource
                    && k.1 == namespace
                    && selects(&selector, &v["metadata"]["labels"])
                {
                    first.push(json!({"type": "ADDED", "object": v}));
                }
            }
        } else if from + 1 < store.first_kept {
            first.push(json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {from} ({})", store.first_kept - 1),
                "reason": "Expired", "code": 410}}));
            let text: String = first.iter().map(|e| format!("{e}\n")).collect();
            return Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(text))
                .unwrap_or_default();
        } else {
            for e in store.history.iter().filter(|e| e.revision > from) {
                if e.resource == resource
                    && e.namespace == namespace
                    && selects(&selector, &e.object["metadata"]["labels"])
                {
                    first.push(json!({"type": e.kind, "object": e.object}));
                }
            }
        }
        let seen = store.revision.max(from);
        // Subscribed under the lock: every later change arrives, none twice.
        let live = self.changes.subscribe();
        drop(store);
        let wanted = move |event: &Event| {
            event.revision > seen
                && event.resource == resource
                && event.namespace == namespace
                && selects(&selector, &event.object["metadata"]["labels"])
        };
        let stream = json_lines(first, live, wanted, timeout);
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(stream))
            .unwrap_or_default()
    }
}

fn not_found(resource: &str, name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{resource} \"{name}\" not found"),
    )
}

/// Standard base64 with padding.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The API version of `resource`.
fn api_version(resource: &str) -> &'static str {
    RESOURCES
        .iter()
        .find(|(r, _, _)| *r == resource)
        .map_or("v1", |(_, _, v)| *v)
}

/// Percent-decoding of a query value.
fn decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A stream of JSON lines: `first`, then the live events `wanted` picks, until `timeout_secs`
/// (or until the watcher falls too far behind, as a real server ends a slow watch).
fn json_lines(
    first: Vec<Value>,
    live: broadcast::Receiver<Event>,
    wanted: impl Fn(&Event) -> bool + Send + 'static,
    timeout_secs: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout_secs);
    let first: std::collections::VecDeque<Value> = first.into();
    futures_util::stream::unfold(
        (first, live, wanted),
        move |(mut first, mut live, wanted)| async move {
            let line = match first.pop_front() {
                Some(e) => e,
                None => loop {
                    match tokio::time::timeout_at(deadline, live.recv()).await {
                        Ok(Ok(event)) if wanted(&event) => {
                            break json!({"type": event.kind, "object": event.object})
                        }
                        Ok(Ok(_)) => {}
                        Err(_) | Ok(Err(_)) => return None,
                    }
                },
            };
            Some((Ok(Bytes::from(format!("{line}\n"))), (first, live, wanted)))
        },
    )
}

/// One plain HTTP request to the server at `addr` (as `kubectl` would make it, without a client
/// library): its status code and body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP response: {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// What a kubeconfig for `addr` says: one cluster, one user without credentials, one context
/// with `namespace`.
pub fn kubeconfig(addr: SocketAddr, namespace: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
         users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\n\
         current-context: fake\n"
    )
}

/// Writes [`kubeconfig`] to `path`.
pub fn write_kubeconfig(path: &std::path::Path, addr: SocketAddr, namespace: &str) -> Result<()> {
    std::fs::write(path, kubeconfig(addr, namespace))
        .with_context(|| format!("writing {}", path.display()))
}
