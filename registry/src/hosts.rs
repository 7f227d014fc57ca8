//! The hosts of an installation spread over several machines: [`HostRecord`] (durable: a host's
//! name, advertised address and issuing certificate), [`Installation`] (the root certificate every
//! peer trusts), and liveness, which is separate: each serving process of a host keeps a key under
//! `<prefix>live/<host>/` attached to an etcd lease ([`LIVENESS_TTL`]), so a host whose processes
//! all died or are cut off has no key left within the TTL and its sessions show `unreachable`.
//!
//! Only etcd holds hosts; the SQLite registry is one host and refuses these calls
//! ([`crate::RegistryError::NeedsSharedRegistry`]). etcd never holds a private key.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// How long a host stays live after its last keep-alive: a host cut off shows `unreachable`
/// within this.
pub const LIVENESS_TTL: Duration = Duration::from_secs(10);

/// The installation: the root certificate every host, daemon and bridge trusts. Written once, by
/// `sessionfs host init`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installation {
    /// The root CA certificate, PEM (its key stays on the host that made it).
    pub root_ca_pem: String,
    /// The host that made the installation and keeps the root key.
    pub created_by: String,
    /// When, unix seconds.
    pub created_at: u64,
}

/// One host of the installation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// The host's name (a DNS label, like a session id).
    pub name: String,
    /// The address its sessions listen on (set when it joins).
    pub advertise: Option<IpAddr>,
    /// The host's issuing certificate, PEM: signed by the root, constrained to the names
    /// `*.<name>.hosts.sessionfs`.
    pub ca_pem: String,
    /// Whether this host keeps the installation's root key (and so may add hosts).
    pub issuer: bool,
    /// When it was added, unix seconds.
    pub added_at: u64,
    /// When it joined (took its bundle), unix seconds; `None` while only added.
    pub joined_at: Option<u64>,
}

/// A removed host's issuing certificate, which no daemon of the installation accepts in a peer's
/// chain any more: kept at `<prefix>revoked/<fingerprint>` by `sessionfs host rm`, and followed
/// by each host's serving process, which hands the list to its own sessions' daemons.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// SHA-256 of the certificate's DER, lowercase hex (`sessionfs_pki::fingerprint`).
    pub fingerprint: String,
    /// The host it was issued to.
    pub host: String,
    /// When it was revoked, unix seconds.
    pub revoked_at: u64,
}

impl HostRecord {
    /// A host added now, not joined yet.
    pub fn new(name: &str, ca_pem: String, issuer: bool) -> HostRecord {
        HostRecord {
            name: name.to_owned(),
            advertise: None,
            ca_pem,
            issuer,
            added_at: now(),
            joined_at: None,
        }
    }
}

/// Unix seconds now.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A valid host name: 1-63 characters a-z, 0-9 and '-', not starting or ending with '-' (it is a
/// DNS label in certificate names).
pub fn check_host_name(name: &str) -> Result<(), String> {
    crate::SessionId::new(name)
        .map(drop)
        .map_err(|_| format!("invalid host name {name:?}: use 1-63 characters a-z, 0-9 and '-', not starting or ending with '-'"))
}

mod etcd {
    //! The host operations of [`EtcdRegistry`].

    use std::collections::BTreeSet;
    use std::time::Duration;

    use etcd_client::{
        Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp,
    };
    use tracing::{debug, info, warn};

    use super::{now, HostRecord, Installation, Revocation, LIVENESS_TTL};
    use crate::etcd::{decode, encode, etcd_error, EtcdRegistry};
    use crate::store::RegistryError;

    impl EtcdRegistry {
        fn installation_key(&self) -> String {
            format!("{}installation", self.prefix())
        }

        fn host_key(&self, name: &str) -> String {
            format!("{}hosts/{name}", self.prefix())
        }

        fn revoked_prefix(&self) -> String {
            format!("{}revoked/", self.prefix())
        }

        fn live_prefix(&self, name: &str) -> String {
            format!("{}live/{name}/", self.prefix())
        }

        /// Makes the installation: its root certificate and its first host, at once. Fails with
        /// [`RegistryError::AlreadyInitialized`] if this etcd already holds one.
        pub fn init_installation(
            &self,
            installation: &Installation,
            host: &HostRecord,
        ) -> Result<(), RegistryError> {
            let (ikey, hkey) = (self.installation_key(), self.host_key(&host.name));
            let (ivalue, hvalue) = (
                encode("installation", installation)?,
                encode(&host.name, host)?,
            );
            self.run(move |mut client| async move {
                let txn = Txn::new()
                    .when([Compare::create_revision(ikey.clone(), CompareOp::Equal, 0)])
                    .and_then([
                        TxnOp::put(ikey.clone(), ivalue, None),
                        TxnOp::put(hkey, hvalue, None),
                    ])
                    .or_else([TxnOp::get(ikey, None)]);
                let response = client.txn(txn).await.map_err(etcd_error)?;
                if response.succeeded() {
                    return Ok(());
                }
                let by = response
                    .op_responses()
                    .into_iter()
                    .find_map(|op| match op {
                        etcd_client::TxnOpResponse::Get(get) => get
                            .kvs()
                            .first()
                            .and_then(|kv| decode::<Installation>(kv.key(), kv.value()).ok()),
                        _ => None,
                    })
                    .map_or_else(
                        || "another host".to_owned(),
                        |i| format!("host `{}`", i.created_by),
                    );
                Err(RegistryError::AlreadyInitialized(by))
            })
        }

        /// The installation, if `host init` made one here.
        pub fn installation(&self) -> Result<Option<Installation>, RegistryError> {
            Ok(self.get_key(self.installation_key())?.map(|(i, _)| i))
        }

        /// Adds a host; [`RegistryError::HostExists`] if the name is taken.
        pub fn add_host(&self, host: &HostRecord) -> Result<(), RegistryError> {
            if self.create_key(self.host_key(&host.name), encode(&host.name, host)?)? {
                Ok(())
            } else {
                Err(RegistryError::HostExists(host.name.clone()))
            }
        }

        /// The host `name`, if it is one of the installation's.
        pub fn host(&self, name: &str) -> Result<Option<HostRecord>, RegistryError> {
            Ok(self.get_key(self.host_key(name))?.map(|(h, _)| h))
        }

        /// Read-modify-write of a host record (compare-and-swap, retried); the new record.
        pub fn modify_host(
            &self,
            name: &str,
            mut f: impl FnMut(&mut HostRecord),
        ) -> Result<HostRecord, RegistryError> {
            for _ in 0..64 {
                let (mut host, seen): (HostRecord, i64) = self
                    .get_key(self.host_key(name))?
                    .ok_or_else(|| RegistryError::NoHost(name.to_owned()))?;
                f(&mut host);
                host.name = name.to_owned();
                if self
                    .put_key_if(self.host_key(name), encode(name, &host)?, seen)?
                    .is_some()
                {
                    return Ok(host);
                }
            }
            Err(RegistryError::Unavailable(format!(
                "host `{name}` kept changing under 64 attempts to modify it"
            )))
        }

        /// Removes a host and its liveness keys, and revokes its issuing certificate, at once
        /// (compare-and-swap on the host's record, retried): its last record and the revocation.
        /// `fingerprint` names the certificate in `ca_pem`; one it cannot read fails the removal,
        /// which would otherwise leave the certificate trusted. Its sessions' records stay.
        pub fn remove_host(
            &self,
            name: &str,
            fingerprint: impl Fn(&str) -> Result<String, String>,
        ) -> Result<(HostRecord, Revocation), RegistryError> {
            let (key, live) = (self.host_key(name), self.live_prefix(name));
            for _ in 0..64 {
                let (host, seen): (HostRecord, i64) = self
                    .get_key(key.clone())?
                    .ok_or_else(|| RegistryError::NoHost(name.to_owned()))?;
                let revocation = Revocation {
                    fingerprint: fingerprint(&host.ca_pem).map_err(|e| RegistryError::Corrupt {
                        id: key.clone(),
                        reason: format!(
                            "its certificate cannot be read, so it cannot be revoked: {e}"
                        ),
                    })?,
                    host: name.to_owned(),
                    revoked_at: now(),
                };
                let revoked_key = format!("{}{}", self.revoked_prefix(), revocation.fingerprint);
                let value = encode(&revoked_key, &revocation)?;
                let (key, live) = (key.clone(), live.clone());
                let removed = self.run(move |mut client| async move {
                    let txn = Txn::new()
                        .when([Compare::mod_revision(key.clone(), CompareOp::Equal, seen)])
                        .and_then([
                            TxnOp::delete(key, None),
                            TxnOp::delete(live, Some(DeleteOptions::new().with_prefix())),
                            TxnOp::put(revoked_key, value, None),
                        ]);
                    Ok(client.txn(txn).await.map_err(etcd_error)?.succeeded())
                })?;
                if removed {
                    return Ok((host, revocation));
                }
            }
            Err(RegistryError::Unavailable(format!(
                "host `{name}` kept changing under 64 attempts to remove it"
            )))
        }

        /// Every revoked issuing certificate, by fingerprint.
        pub fn revocations(&self) -> Result<Vec<Revocation>, RegistryError> {
            let prefix = self.revoked_prefix();
            Ok(self
                .run(move |client| crate::etcd::list_at(client, prefix))?
                .0)
        }

        /// Follows the revocations as [`EtcdRegistry::watch`] follows sessions: `on_change` gets
        /// the whole list at once and after every change. Dropping the handle stops it.
        pub fn watch_revocations<F>(
            &self,
            on_change: F,
        ) -> Result<crate::WatchHandle, RegistryError>
        where
            F: FnMut(Vec<Revocation>) + Send + 'static,
        {
            self.follow_prefix(self.revoked_prefix(), on_change)
        }

        /// Every host, sorted by name.
        pub fn hosts(&self) -> Result<Vec<HostRecord>, RegistryError> {
            let prefix = format!("{}hosts/", self.prefix());
            self.run(move |mut client| async move {
                let response = client
                    .get(prefix, Some(GetOptions::new().with_prefix()))
                    .await
                    .map_err(etcd_error)?;
                let mut hosts = response
                    .kvs()
                    .iter()
                    .map(|kv| decode::<HostRecord>(kv.key(), kv.value()))
                    .collect::<Result<Vec<_>, _>>()?;
                hosts.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(hosts)
            })
        }

        /// The hosts with at least one live process (a key under `live/<host>/`).
        pub fn live_hosts(&self) -> Result<BTreeSet<String>, RegistryError> {
            let prefix = format!("{}live/", self.prefix());
            self.run(move |mut client| async move {
                let response = client
                    .get(
                        prefix.clone(),
                        Some(GetOptions::new().with_prefix().with_keys_only()),
                    )
                    .await
                    .map_err(etcd_error)?;
                Ok(response
                    .kvs()
                    .iter()
                    .filter_map(|kv| {
                        let key = String::from_utf8_lossy(kv.key());
                        let rest = key.strip_prefix(&prefix)?;
                        Some(rest.split('/').next()?.to_owned())
                    })
                    .collect())
            })
        }

        /// Keeps host `name` live while the returned handle is kept: a key under
        /// `live/<name>/` attached to a lease of [`LIVENESS_TTL`], kept alive every quarter of it,
        /// granted again if it lapsed (etcd was away longer than the TTL). Dropping the handle
        /// revokes the lease and deletes the key (within a second), so a process that stops
        /// cleanly stops counting at once.
        pub fn keep_alive(&self, name: &str) -> Result<Liveness, RegistryError> {
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
            let key = format!("{}{}", self.live_prefix(name), std::process::id());
            let value =
                serde_json::json!({ "pid": std::process::id(), "since": super::now() }).to_string();
            let client = self.client();
            // The first lease is granted before returning, so the host is live when this
            // succeeds.
            let first = self.run({
                let (key, value) = (key.clone(), value.clone());
                move |client| async move { grant(client, key, value).await }
            })?;
            let held = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(first));
            self.runtime()?.spawn(async move {
                tokio::select! {
                    () = keep(client.clone(), key.clone(), value, held.clone()) => {}
                    _ = stop_rx => {}
                }
                let mut client = client;
                // The lease held now (maybe granted after `first`) goes, and its key with it; the
                // key is deleted too, in case the revoke does not get through.
                let lease = held.load(std::sync::atomic::Ordering::Relaxed);
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let _ = client.lease_revoke(lease).await;
                    let _ = client.delete(key.clone(), None).await;
                })
                .await;
                debug!(key, "host liveness released");
                let _ = done_tx.send(());
            });
            Ok(Liveness {
                stop: Some(stop_tx),
                done: done_rx,
                keeping: None,
            })
        }
    }

    /// Grants a lease of [`LIVENESS_TTL`] and puts `key` with it; the lease id.
    async fn grant(mut client: Client, key: String, value: String) -> Result<i64, RegistryError> {
        let ttl = i64::try_from(LIVENESS_TTL.as_secs()).unwrap_or(10);
        let lease = client
            .lease_grant(ttl, None)
            .await
            .map_err(etcd_error)?
            .id();
        client
            .put(key, value, Some(PutOptions::new().with_lease(lease)))
            .await
            .map_err(etcd_error)?;
        Ok(lease)
    }

    /// How often the lease is refreshed, and how long each step of a refresh may take: a refresh
    /// that fails is retried several times before the lease could lapse.
    const REFRESH: Duration = Duration::from_millis(LIVENESS_TTL.as_millis() as u64 / 4);
    const STEP: Duration = Duration::from_millis(LIVENESS_TTL.as_millis() as u64 / 8);

    /// Keeps the lease in `held` alive; when it lapses or etcd is away, grants another (retrying
    /// every 200 ms) and stores its id in `held`. Runs until cancelled.
    async fn keep(
        client: Client,
        key: String,
        value: String,
        held: std::sync::Arc<std::sync::atomic::AtomicI64>,
    ) {
        use std::sync::atomic::Ordering;
        let mut lease = Some(held.load(Ordering::Relaxed));
        let mut last_error: Option<String> = None;
        loop {
            let id = match lease {
                Some(id) => id,
                None => match tokio::time::timeout(
                    STEP,
                    grant(client.clone(), key.clone(), value.clone()),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(RegistryError::Unavailable(
                        "etcd did not grant a lease".to_owned(),
                    ))
                }) {
                    Ok(id) => {
                        info!(key, "host live again");
                        held.store(id, Ordering::Relaxed);
                        lease = Some(id);
                        id
                    }
                    Err(e) => {
                        note(&mut last_error, e.to_string());
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                },
            };
            let outcome: Result<(), String> = async {
                let mut c = client.clone();
                let (mut keeper, mut stream) = tokio::time::timeout(STEP, c.lease_keep_alive(id))
                    .await
                    .map_err(|_| "etcd did not open a keep-alive stream".to_owned())?
                    .map_err(|e| e.to_string())?;
                loop {
                    tokio::time::timeout(STEP, keeper.keep_alive())
                        .await
                        .map_err(|_| "etcd took no keep-alive".to_owned())?
                        .map_err(|e| e.to_string())?;
                    match tokio::time::timeout(STEP, stream.message()).await {
                        Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                        Ok(Ok(Some(_))) => return Err("the lease lapsed".to_owned()),
                        Ok(Ok(None)) => return Err("the keep-alive stream ended".to_owned()),
                        Ok(Err(e)) => return Err(e.to_string()),
                        Err(_) => return Err("etcd did not answer a keep-alive".to_owned()),
                    }
                    tokio::time::sleep(REFRESH).await;
                }
            }
            .await;
            if let Err(e) = outcome {
                // etcd answers a keep-alive of an expired lease with a TTL of 0, or (when the
                // stream is opened after the expiry) with the error "lease not found".
                if e == "the lease lapsed" || e.contains("lease not found") {
                    lease = None;
                }
                note(&mut last_error, e);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    fn note(last: &mut Option<String>, error: String) {
        if last.as_ref() != Some(&error) {
            warn!(%error, "keeping this host live in etcd failed; retrying");
        }
        *last = Some(error);
    }

    /// A host kept live ([`EtcdRegistry::keep_alive`]); dropping it revokes the liveness.
    #[derive(Debug)]
    pub struct Liveness {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        done: std::sync::mpsc::Receiver<()>,
        /// The registry whose runtime runs the keep-alive, when the handle owns it (dropped
        /// after the liveness is released).
        keeping: Option<Box<EtcdRegistry>>,
    }

    impl Liveness {
        /// This handle, owning `registry` (whose runtime runs it) until dropped.
        pub(crate) fn keeping(mut self, registry: EtcdRegistry) -> Liveness {
            self.keeping = Some(Box::new(registry));
            self
        }
    }

    impl Drop for Liveness {
        fn drop(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
                let _ = self.done.recv_timeout(Duration::from_secs(2));
            }
            drop(self.keeping.take());
        }
    }
}

pub use etcd::Liveness;
