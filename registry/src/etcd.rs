//! The registry in etcd ([`EtcdRegistry`]), for several hosts sharing their sessions: the same
//! operations as the SQLite file ([`crate::Registry`]), on keys `<prefix>sessions/<id>` holding
//! each record as JSON.
//!
//! - `register` is a compare-and-swap on the key's create revision (two hosts registering one id:
//!   exactly one wins); `modify` and `update` compare the key's mod revision and retry, so
//!   concurrent writers lose no update; `remove` returns the record it deleted.
//! - `generation` is the etcd revision of the store: it changes whenever a record does.
//! - [`EtcdRegistry::watch`] lists the records, then follows an etcd watch of the prefix from the
//!   next revision (no polling); a broken stream resumes from the last revision seen, a compacted
//!   revision makes it list again.
//!
//! The API is blocking, like the SQLite store's: each call runs on the registry's own runtime
//! thread and waits at most the call timeout, so it can be used from any thread, tokio's included.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, Txn, TxnOp,
    WatchOptions,
};
use tracing::{debug, warn};

use crate::store::{RegistryError, WatchHandle};
use crate::{SessionId, SessionRecord};

/// The key prefix sessionfs keeps its records under (a version, so a later layout can sit beside).
pub const DEFAULT_PREFIX: &str = "/sessionfs/v1/";
/// How long one registry call may take, connection included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts of a compare-and-swap that keeps losing to other writers.
const CAS_ATTEMPTS: usize = 64;
/// Longest wait between attempts to re-establish a broken watch.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The registry in etcd.
pub struct EtcdRegistry {
    client: Client,
    prefix: String,
    /// Always `Some` until dropped (see the `Drop` impl).
    runtime: Option<tokio::runtime::Runtime>,
    endpoints: Vec<String>,
}

impl Drop for EtcdRegistry {
    fn drop(&mut self) {
        // Dropped on a runtime's thread (the bridge's, or a watch callback's), a runtime must not
        // block on its shutdown.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdRegistry")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The TLS settings of `tls`'s files.
fn tls_options(tls: &crate::EtcdTls) -> Result<etcd_client::TlsOptions, RegistryError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            RegistryError::Unavailable(format!("TLS to etcd: cannot read {}: {e}", path.display()))
        })
    };
    let mut options = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)?));
    if let Some((cert, key)) = &tls.client {
        options = options.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(options)
}

pub(crate) fn etcd_error(e: etcd_client::Error) -> RegistryError {
    RegistryError::Etcd(e.to_string())
}

/// The JSON value of `key`.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    key: &[u8],
    value: &[u8],
) -> Result<T, RegistryError> {
    serde_json::from_slice(value).map_err(|e| RegistryError::Corrupt {
        id: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

/// `value` as JSON (`what` names it in the error).
pub(crate) fn encode<T: serde::Serialize>(what: &str, value: &T) -> Result<Vec<u8>, RegistryError> {
    serde_json::to_vec(value).map_err(|e| RegistryError::Corrupt {
        id: what.to_owned(),
        reason: e.to_string(),
    })
}

impl EtcdRegistry {
    /// Connects to etcd at `location` (TLS with its files, if it names them) and checks that it
    /// answers within [`CALL_TIMEOUT`]; records live under `prefix` (normally [`DEFAULT_PREFIX`]).
    pub fn connect(
        location: &crate::EtcdLocation,
        prefix: &str,
    ) -> Result<EtcdRegistry, RegistryError> {
        let endpoints = &location.endpoints;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sessionfs-etcd")
            .enable_all()
            .build()?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if let Some(tls) = &location.tls {
            options = options.with_tls(tls_options(tls)?);
        }
        let eps = endpoints.to_vec();
        let client = runtime
            .block_on(async {
                tokio::time::timeout(CALL_TIMEOUT, Client::connect(eps, Some(options))).await
            })
            .map_err(|_| {
                RegistryError::Unavailable(format!("etcd at {endpoints:?} did not answer"))
            })?
            .map_err(etcd_error)?;
        let registry = EtcdRegistry {
            client,
            prefix: prefix.to_owned(),
            runtime: Some(runtime),
            endpoints: endpoints.to_vec(),
        };
        // The client connects lazily: a first read says whether etcd is there.
        registry.generation()?;
        Ok(registry)
    }

    /// The registry's runtime (there until it is dropped).
    pub(crate) fn runtime(&self) -> Result<&tokio::runtime::Runtime, RegistryError> {
        self.runtime
            .as_ref()
            .ok_or_else(|| RegistryError::Unavailable("the etcd runtime stopped".into()))
    }

    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, id: &SessionId) -> String {
        format!("{}sessions/{id}", self.prefix)
    }

    fn sessions_prefix(&self) -> String {
        format!("{}sessions/", self.prefix)
    }

    /// Runs `work` on the registry's runtime, bounded by [`CALL_TIMEOUT`], from any thread.
    pub(crate) fn run<T, F>(&self, work: impl FnOnce(Client) -> F) -> Result<T, RegistryError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, RegistryError>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let future = work(self.client.clone());
        self.runtime()?.spawn(async move {
            let outcome = tokio::time::timeout(CALL_TIMEOUT, future).await;
            let _ = tx.send(outcome);
        });
        match rx.recv() {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(RegistryError::Unavailable(format!(
                "etcd at {:?} did not answer within {CALL_TIMEOUT:?}",
                self.endpoints
            ))),
            Err(_) => Err(RegistryError::Unavailable(
                "the etcd runtime stopped".into(),
            )),
        }
    }

    /// Puts `value` at `key` if no key is there (compare-and-swap on its create revision: of two
    /// writers, exactly one wins); whether it did.
    pub(crate) fn create_key(&self, key: String, value: Vec<u8>) -> Result<bool, RegistryError> {
        self.run(move |mut client| async move {
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key, value, None)]);
            Ok(client.txn(txn).await.map_err(etcd_error)?.succeeded())
        })
    }

    /// The JSON value at `key`, with its mod revision.
    pub(crate) fn get_key<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        key: String,
    ) -> Result<Option<(T, i64)>, RegistryError> {
        self.run(move |mut client| async move {
            let response = client.get(key, None).await.map_err(etcd_error)?;
            match response.kvs().first() {
                Some(kv) => Ok(Some((decode(kv.key(), kv.value())?, kv.mod_revision()))),
                None => Ok(None),
            }
        })
    }

    /// Puts `value` at `key` if its mod revision is still `seen`; the new revision, or `None` if
    /// another write came first.
    pub(crate) fn put_key_if(
        &self,
        key: String,
        value: Vec<u8>,
        seen: i64,
    ) -> Result<Option<i64>, RegistryError> {
        self.run(move |mut client| async move {
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, seen)])
                .and_then([TxnOp::put(key, value, None)]);
            let response = client.txn(txn).await.map_err(etcd_error)?;
            Ok(response
                .succeeded()
                .then(|| response.header().map_or(0, |h| h.revision())))
        })
    }

    /// Adds a new session; [`RegistryError::AlreadyExists`] if the id is taken (also when another
    /// host registers it at the same moment: exactly one wins).
    pub fn register(&self, rec: &SessionRecord) -> Result<(), RegistryError> {
        let value = encode(rec.id.as_str(), rec)?;
        if self.create_key(self.key(&rec.id), value)? {
            Ok(())
        } else {
            Err(RegistryError::AlreadyExists(rec.id.clone()))
        }
    }

    /// The record for `id`, with its mod revision (for [`EtcdRegistry::put_if`]).
    pub fn fetch(&self, id: &SessionId) -> Result<Option<(SessionRecord, i64)>, RegistryError> {
        self.get_key(self.key(id))
    }

    /// Writes `rec` if the key's mod revision is still `seen`; whether it was.
    fn swap(&self, rec: &SessionRecord, seen: i64) -> Result<bool, RegistryError> {
        Ok(self.put_if(rec, seen)?.is_some())
    }

    /// Writes `rec` if its key's mod revision is still `seen` (a fence: a writer that read the
    /// record at `seen` wins only if no one wrote it since); the key's new mod revision, or `None`
    /// if another write came first.
    pub fn put_if(&self, rec: &SessionRecord, seen: i64) -> Result<Option<i64>, RegistryError> {
        self.put_key_if(self.key(&rec.id), encode(rec.id.as_str(), rec)?, seen)
    }

    /// Read-modify-write of one record, retried while other writers win the race; returns the new
    /// record. `f` may run more than once. The id cannot be changed.
    pub fn modify<F: FnMut(&mut SessionRecord)>(
        &self,
        id: &SessionId,
        mut f: F,
    ) -> Result<SessionRecord, RegistryError> {
        for _ in 0..CAS_ATTEMPTS {
            let (mut rec, seen) = self
                .fetch(id)?
                .ok_or_else(|| RegistryError::NotFound(id.clone()))?;
            f(&mut rec);
            if rec.id != *id {
                warn!(id = %id, new_id = %rec.id, "modify cannot rename a session; id kept");
                rec.id = id.clone();
            }
            if self.swap(&rec, seen)? {
                return Ok(rec);
            }
        }
        Err(RegistryError::Unavailable(format!(
            "session `{id}` kept changing under {CAS_ATTEMPTS} attempts to modify it"
        )))
    }

    /// Replaces the stored record with `rec`; [`RegistryError::NotFound`] if absent.
    pub fn update(&self, rec: &SessionRecord) -> Result<(), RegistryError> {
        let rec = rec.clone();
        self.modify(&rec.id.clone(), move |r| *r = rec.clone())
            .map(drop)
    }

    /// Deletes a session and returns its last record; [`RegistryError::NotFound`] if absent.
    pub fn remove(&self, id: &SessionId) -> Result<SessionRecord, RegistryError> {
        let (key, id) = (self.key(id), id.clone());
        self.run(move |mut client| async move {
            let response = client
                .delete(key, Some(DeleteOptions::new().with_prev_key()))
                .await
                .map_err(etcd_error)?;
            match response.prev_kvs().first() {
                Some(kv) => decode(kv.key(), kv.value()),
                None => Err(RegistryError::NotFound(id)),
            }
        })
    }

    /// The record for `id`, if any.
    pub fn get(&self, id: &SessionId) -> Result<Option<SessionRecord>, RegistryError> {
        Ok(self.fetch(id)?.map(|(rec, _)| rec))
    }

    /// Every session, sorted by id.
    pub fn list(&self) -> Result<Vec<SessionRecord>, RegistryError> {
        Ok(self.list_at()?.0)
    }

    /// Every session and the revision the list is of.
    fn list_at(&self) -> Result<(Vec<SessionRecord>, i64), RegistryError> {
        let prefix = self.sessions_prefix();
        self.run(move |client| list_at(client, prefix))
    }

    /// A counter that changes whenever the registry changes (etcd's revision).
    pub fn generation(&self) -> Result<u64, RegistryError> {
        let key = self.sessions_prefix();
        self.run(move |mut client| async move {
            let response = client
                .get(key, Some(GetOptions::new().with_prefix().with_count_only()))
                .await
                .map_err(etcd_error)?;
            Ok(response.header().map_or(0, |h| h.revision()).max(0) as u64)
        })
    }

    /// Follows the registry: `on_change` gets the full list at once, and again after every change,
    /// from an etcd watch of the prefix (no polling). A broken stream resumes from the last revision
    /// seen, a compaction lists again (retried with a backoff up to 5 s, errors logged once each).
    /// Dropping the handle stops it.
    pub fn watch<F>(&self, on_change: F) -> Result<WatchHandle, RegistryError>
    where
        F: FnMut(Vec<SessionRecord>) + Send + 'static,
    {
        self.follow_prefix(self.sessions_prefix(), on_change)
    }

    /// [`EtcdRegistry::watch`] of the values under any key prefix, decoded as `T`, in key order.
    pub(crate) fn follow_prefix<T, F>(
        &self,
        prefix: String,
        mut on_change: F,
    ) -> Result<WatchHandle, RegistryError>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
        F: FnMut(Vec<T>) + Send + 'static,
    {
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let client = self.client.clone();
        let handle = self.runtime()?.handle().clone();
        let thread = thread::Builder::new()
            .name("sessionfs-registry-watch".into())
            .spawn(move || {
                handle.block_on(async move {
                    tokio::select! {
                        () = follow(client, prefix, &mut on_change) => {}
                        _ = &mut stop_rx => {}
                    }
                });
                debug!("etcd registry watch stopped");
            })?;
        Ok(WatchHandle::new(
            Box::new(move || {
                let _ = stop_tx.send(());
            }),
            thread,
        ))
    }
}

/// Every value under `prefix`, in key order (for sessions: by id), and the revision the list is of.
pub(crate) async fn list_at<T: serde::de::DeserializeOwned>(
    mut client: Client,
    prefix: String,
) -> Result<(Vec<T>, i64), RegistryError> {
    let response = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(etcd_error)?;
    let revision = response.header().map_or(0, |h| h.revision());
    let records = response
        .kvs()
        .iter()
        .map(|kv| decode::<T>(kv.key(), kv.value()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((records, revision))
}

/// Lists, then watches from the next revision and lists again on every change. When the watch
/// breaks it resumes from the last revision it saw (changes made meanwhile arrive as events); when
/// that revision was compacted away it lists afresh. Runs until dropped.
async fn follow<T: serde::de::DeserializeOwned>(
    client: Client,
    prefix: String,
    on_change: &mut impl FnMut(Vec<T>),
) {
    let mut backoff = Duration::from_millis(100);
    let mut last_error: Option<String> = None;
    // The revision the caller's view is of; `None`: list first.
    let mut seen: Option<i64> = None;
    loop {
        let started = std::time::Instant::now();
        let once = async {
            let from = match seen {
                Some(revision) => revision,
                None => {
                    let (records, revision) = list_at(client.clone(), prefix.clone()).await?;
                    on_change(records);
                    seen = Some(revision);
                    revision
                }
            };
            let mut watching = client.clone();
            let mut stream = watching
                .watch(
                    prefix.clone(),
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(from + 1),
                    ),
                )
                .await
                .map_err(etcd_error)?;
            while let Some(response) = stream.message().await.map_err(etcd_error)? {
                if response.compact_revision() > 0 || response.canceled() {
                    seen = None;
                    return Err(RegistryError::Etcd(format!(
                        "the watch was cancelled (compacted at revision {})",
                        response.compact_revision()
                    )));
                }
                let changed = response
                    .events()
                    .iter()
                    .any(|e| matches!(e.event_type(), EventType::Put | EventType::Delete));
                if changed {
                    let (records, revision) = list_at(client.clone(), prefix.clone()).await?;
                    on_change(records);
                    seen = Some(revision);
                }
            }
            Err(RegistryError::Etcd("the watch stream ended".into()))
        };
        let outcome: Result<(), RegistryError> = once.await;
        if let Err(e) = outcome {
            let message = e.to_string();
            if last_error.as_ref() != Some(&message) {
                warn!(error = %message, "etcd registry watch interrupted; listing again");
            }
            last_error = Some(message);
        }
        // A watch that held for a while starts over quickly; one that keeps failing, slowly.
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
