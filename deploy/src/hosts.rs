//! `sessionfs host …`: an installation of several hosts sharing one etcd registry.
//!
//! - `host init --advertise ADDR` makes this state directory the installation's first host: the
//!   root CA (kept here only), this host's CA under it, and the installation and host records in
//!   etcd.
//! - `host add NAME --out FILE` (on the host keeping the root key) issues NAME's host CA and
//!   writes it, with the root certificate and the registry's address, to a join bundle (0600).
//! - `host join FILE --advertise ADDR` on the new host installs the bundle.
//! - `host ls` lists hosts with their liveness; `host rm NAME` removes one (its sessions stay,
//!   shown `unreachable`).
//! - `host serve` keeps this host live in etcd (as `sessionfs mount` does while mounted).
//!
//! etcd holds certificates and addresses only; a host's CA key never leaves it, except in the
//! bundle that carries it to the host it belongs to.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sessionfs_pki::{CertificateAuthority, IssuedCert, CA_FILES, HOST_CA_STEM};
use sessionfs_registry::{
    check_host_name, this_host, HostRecord, Installation, Liveness, Location, Registry,
    RegistryError,
};
use tracing::info;

use crate::state::{Home, Membership, StateError};

/// Errors of the `host` commands.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A bad host name.
    #[error("{0}")]
    BadName(String),
    /// This state directory is a host already.
    #[error(
        "this state directory is already host `{0}` of an installation ({1}); \
         use another --home for another host"
    )]
    AlreadyHost(String, PathBuf),
    /// A command that needs this state directory to be a host.
    #[error("this state directory is not a host of an installation of several: run `sessionfs host init --advertise ADDR` (first host) or `sessionfs host join BUNDLE --advertise ADDR`")]
    NotAHost,
    /// `host add` on a host without the root key.
    #[error("only the host that made the installation (it keeps the root key in {0}) can add hosts: run `sessionfs host add` there")]
    NotIssuer(PathBuf),
    /// A join bundle that cannot be used.
    #[error("join bundle {}: {reason}", path.display())]
    Bundle {
        /// The bundle.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The state directory has its own CA, not the installation's.
    #[error(
        "{} holds another CA than the installation's: join from a fresh state directory (--home)",
        .0.display()
    )]
    ForeignCa(PathBuf),
    /// The host was joined already.
    #[error(
        "host `{0}` has joined already; to join it again, `sessionfs host rm {0}` and add it again"
    )]
    AlreadyJoined(String),
    /// A state directory error.
    #[error(transparent)]
    State(#[from] StateError),
    /// A registry error.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Certificates.
    #[error("certificates: {0}")]
    Pki(#[from] sessionfs_pki::PkiError),
    /// A migration to this host that did not happen (the session stays where it was).
    #[error("cannot migrate session `{id}`: {reason}")]
    Migrate {
        /// The session.
        id: String,
        /// Why, step included.
        reason: String,
    },
    /// Writing or reading a file.
    #[error("{what} {}: {source}", path.display())]
    File {
        /// What was done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn file_error<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> HostError + 'a {
    move |source| HostError::File {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What `host add` writes and `host join` reads.
#[derive(Serialize, Deserialize)]
struct Bundle {
    /// Always 1.
    version: u32,
    /// The host's name.
    name: String,
    /// The registry the hosts share.
    registry: String,
    /// The installation's root certificate.
    root_ca_pem: String,
    /// The host's CA certificate.
    host_ca_pem: String,
    /// The host's CA key.
    host_ca_key_pem: String,
}

/// Refuses an advertised address other hosts cannot dial.
fn check_advertise(advertise: IpAddr) -> Result<(), HostError> {
    if advertise.is_unspecified() || advertise.is_multicast() {
        return Err(HostError::BadName(format!(
            "--advertise {advertise}: give the address other hosts reach this one at (not a \
             wildcard or multicast address)"
        )));
    }
    if advertise.is_loopback() {
        tracing::warn!(%advertise, "a loopback --advertise address: only this machine reaches its sessions");
    }
    Ok(())
}

/// The shared registry `home` names (etcd), connected.
fn shared_registry(home: &Home) -> Result<(Registry, Location), HostError> {
    let location = home.registry_location();
    if !matches!(location, Location::Etcd(_)) {
        return Err(RegistryError::NeedsSharedRegistry.into());
    }
    let registry = home.open_registry()?;
    Ok((registry, location))
}

/// `host init`: makes this state directory the first host of a new installation in the etcd
/// registry given with `--registry`.
pub fn init(home: &Home, name: Option<&str>, advertise: IpAddr) -> Result<String, HostError> {
    if let Some(m) = home.membership()? {
        return Err(HostError::AlreadyHost(m.name, home.membership_path()));
    }
    let name = name.map_or_else(this_host, str::to_owned);
    check_host_name(&name)
        .map_err(|e| HostError::BadName(format!("{e} (choose one with --name)")))?;
    check_advertise(advertise)?;
    let (registry, location) = shared_registry(home)?;
    let _lock = home.lock()?;
    // The root: this state directory's CA (made now, or the one its sessions already use).
    let root = home.certificate_authority()?;
    let host_ca = root.issue_host_ca(&name)?;
    let mut record = HostRecord::new(&name, host_ca.cert_pem.clone(), true);
    record.advertise = Some(advertise);
    record.joined_at = Some(record.added_at);
    let installation = Installation {
        root_ca_pem: root.cert_pem(),
        created_by: name.clone(),
        created_at: record.added_at,
    };
    // Installed here first: a failure leaves etcd untouched and the command can be run again.
    install(home, &name, advertise, &location, &host_ca)?;
    if let Err(e) = registry.shared()?.init_installation(&installation, &record) {
        uninstall(home);
        return Err(e.into());
    }
    info!(host = %name, %location, "made the installation");
    Ok(format!(
        "host `{name}` made the installation in {location}; its sessions listen on {advertise}. \
         Add a host with `sessionfs host add NAME --out BUNDLE` here, then \
         `sessionfs host join BUNDLE --advertise ADDR` there."
    ))
}

/// Writes this host's CA and its membership (the last step of `init` and `join`).
fn install(
    home: &Home,
    name: &str,
    advertise: IpAddr,
    location: &Location,
    host_ca: &IssuedCert,
) -> Result<(), HostError> {
    let dir = home.pki_dir();
    host_ca.write(&dir, HOST_CA_STEM)?;
    // Refuse what does not load before this state directory depends on it.
    CertificateAuthority::load_host(&dir, name)?;
    home.write_membership(&Membership {
        name: name.to_owned(),
        advertise,
        registry: location.to_string(),
    })?;
    Ok(())
}

/// Undoes [`install`] (its membership and host CA).
fn uninstall(home: &Home) {
    let _ = fs::remove_file(home.membership_path());
    for file in [format!("{HOST_CA_STEM}.pem"), format!("{HOST_CA_STEM}.key")] {
        let _ = fs::remove_file(home.pki_dir().join(file));
    }
}

/// `host add NAME --out FILE`: issues NAME's CA and writes its join bundle.
pub fn add(home: &Home, name: &str, out: &Path) -> Result<String, HostError> {
    check_host_name(name).map_err(HostError::BadName)?;
    home.membership()?.ok_or(HostError::NotAHost)?;
    let key = home.pki_dir().join(CA_FILES.key);
    if !key.exists() {
        return Err(HostError::NotIssuer(key));
    }
    let root = home.root_authority()?;
    let (registry, location) = shared_registry(home)?;
    let host_ca = root.issue_host_ca(name)?;
    // Open the bundle first: an existing file is not overwritten, and nothing is registered.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(file_error("create", out))?;
    let mut registered = false;
    let written = (|| -> Result<(), HostError> {
        registry
            .shared()?
            .add_host(&HostRecord::new(name, host_ca.cert_pem.clone(), false))?;
        registered = true;
        let bundle = Bundle {
            version: 1,
            name: name.to_owned(),
            registry: location.to_string(),
            root_ca_pem: root.cert_pem(),
            host_ca_pem: host_ca.cert_pem.clone(),
            host_ca_key_pem: host_ca.key_pem.clone(),
        };
        let text = serde_json::to_vec_pretty(&bundle)
            .map_err(|e| file_error("encode", out)(std::io::Error::other(e)))?;
        file.write_all(&text).map_err(file_error("write", out))?;
        file.sync_all().map_err(file_error("sync", out))
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(out);
        if registered {
            let _ = registry
                .shared()
                .map(|etcd| etcd.remove_host(name, ca_fingerprint));
        }
        return Err(e);
    }
    Ok(format!(
        "added host `{name}`; its join bundle is {} (it holds the host's CA key: move it like a \
         private key, then on the host run `sessionfs host join {} --advertise ADDR`)",
        out.display(),
        out.display()
    ))
}

/// `host join FILE --advertise ADDR`: installs the bundle `host add` wrote.
pub fn join(home: &Home, bundle_path: &Path, advertise: IpAddr) -> Result<String, HostError> {
    if let Some(m) = home.membership()? {
        return Err(HostError::AlreadyHost(m.name, home.membership_path()));
    }
    check_advertise(advertise)?;
    let bad = |reason: String| HostError::Bundle {
        path: bundle_path.to_path_buf(),
        reason,
    };
    let text = fs::read(bundle_path).map_err(file_error("read", bundle_path))?;
    let bundle: Bundle =
        serde_json::from_slice(&text).map_err(|e| bad(format!("not a join bundle: {e}")))?;
    if bundle.version != 1 {
        return Err(bad(format!("unknown version {}", bundle.version)));
    }
    check_host_name(&bundle.name).map_err(HostError::BadName)?;
    let location: Location = bundle.registry.parse().map_err(|e| bad(format!("{e}")))?;
    // `--registry` wins (another address of the same etcd), else the bundle's.
    let home = if home.registry_location() == Location::Sqlite(home.registry_path()) {
        home.clone().with_registry(Some(location))
    } else {
        home.clone()
    };
    let (registry, location) = shared_registry(&home)?;
    let installation = registry
        .shared()?
        .installation()?
        .ok_or_else(|| bad(format!("{location} holds no installation")))?;
    if installation.root_ca_pem != bundle.root_ca_pem {
        return Err(bad(format!(
            "it is for another installation than the one in {location}"
        )));
    }
    let host = registry
        .shared()?
        .host(&bundle.name)?
        .ok_or_else(|| bad(format!("host `{}` was removed since", bundle.name)))?;
    if host.ca_pem != bundle.host_ca_pem {
        return Err(bad(format!(
            "host `{}` was added again since; use the newer bundle",
            bundle.name
        )));
    }
    if host.joined_at.is_some() {
        return Err(HostError::AlreadyJoined(bundle.name));
    }
    let dir = home.pki_dir();
    let root_path = dir.join(CA_FILES.cert);
    match fs::read_to_string(&root_path) {
        Ok(existing) if existing != bundle.root_ca_pem => {
            return Err(HostError::ForeignCa(root_path))
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            home.ensure_root()?;
            crate::state::private_dir(&dir)?;
            fs::write(&root_path, &bundle.root_ca_pem).map_err(file_error("write", &root_path))?;
        }
        Err(e) => return Err(file_error("read", &root_path)(e)),
    }
    let host_ca = IssuedCert {
        cert_pem: bundle.host_ca_pem.clone(),
        key_pem: bundle.host_ca_key_pem.clone(),
    };
    let _lock = home.lock()?;
    install(&home, &bundle.name, advertise, &location, &host_ca)?;
    // Joined once: the check is part of the compare-and-swap, so two machines joining with one
    // bundle at once cannot both succeed.
    let mut taken = false;
    let joined = registry.shared()?.modify_host(&bundle.name, |h| {
        taken = h.joined_at.is_some();
        if !taken {
            h.advertise = Some(advertise);
            h.joined_at = Some(now());
        }
    });
    if taken || joined.is_err() {
        uninstall(&home);
        if taken {
            return Err(HostError::AlreadyJoined(bundle.name));
        }
    }
    joined?;
    Ok(format!(
        "joined as host `{}` of the installation in {location}; this host's sessions listen on \
         {advertise}. You may delete {} now.",
        bundle.name,
        bundle_path.display()
    ))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One line of `host ls`.
#[derive(Debug, Serialize)]
pub struct HostStatus {
    /// The host's name.
    pub name: String,
    /// Where its sessions listen.
    pub advertise: Option<IpAddr>,
    /// `live`, `unreachable` (joined, no live process) or `added` (not joined yet).
    pub state: &'static str,
    /// How many sessions it serves.
    pub sessions: usize,
    /// Whether it keeps the root key.
    pub issuer: bool,
    /// Whether it is the host this command runs on.
    pub this: bool,
}

/// `host ls`: every host with its liveness and its number of sessions.
pub fn list(home: &Home) -> Result<Vec<HostStatus>, HostError> {
    let (registry, _) = shared_registry(home)?;
    let etcd = registry.shared()?;
    let hosts = etcd.hosts()?;
    let live = etcd.live_hosts()?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for record in registry.list()? {
        if let Some(host) = record.host() {
            *counts.entry(host.to_owned()).or_default() += 1;
        }
    }
    let here = this_host();
    Ok(hosts
        .into_iter()
        .map(|h| HostStatus {
            state: match (h.joined_at, live.contains(&h.name)) {
                (None, _) => "added",
                (Some(_), true) => "live",
                (Some(_), false) => "unreachable",
            },
            sessions: counts.get(&h.name).copied().unwrap_or(0),
            this: h.name == here,
            advertise: h.advertise,
            issuer: h.issuer,
            name: h.name,
        })
        .collect())
}

/// The `host ls` table.
pub fn render_hosts(hosts: &[HostStatus]) -> String {
    let mut out = format!(
        "{:<20}  {:<40}  {:<12}  {:>8}  {}\n",
        "NAME", "ADVERTISE", "STATE", "SESSIONS", "ROLE"
    );
    for h in hosts {
        let name = if h.this {
            format!("{} *", h.name)
        } else {
            h.name.clone()
        };
        out.push_str(&format!(
            "{:<20}  {:<40}  {:<12}  {:>8}  {}\n",
            name,
            h.advertise
                .map_or_else(|| "-".to_owned(), |a| a.to_string()),
            h.state,
            h.sessions,
            if h.issuer { "issuer" } else { "-" }
        ));
    }
    out
}

/// `host rm NAME`: removes a host from the installation. Its sessions' records stay (shown
/// `unreachable`), never silently dropped.
pub fn remove(home: &Home, name: &str) -> Result<String, HostError> {
    let (registry, _) = shared_registry(home)?;
    let (_, revocation) = registry.shared()?.remove_host(name, ca_fingerprint)?;
    let orphans = registry
        .list()?
        .iter()
        .filter(|r| r.host() == Some(name))
        .count();
    Ok(format!(
        "removed host `{name}` and revoked its certificate {}: every host's serving process \
         (`sessionfs mount`, `sessionfs host serve`) now has its daemons refuse `{name}`; its \
         {orphans} session(s) stay in the registry, shown `unreachable` until removed with \
         `sessionfs session rm` there or moved",
        revocation.fingerprint
    ))
}

/// The fingerprint a host CA is revoked by.
fn ca_fingerprint(pem: &str) -> Result<String, String> {
    sessionfs_pki::pem_fingerprint(pem).map_err(|e| e.to_string())
}

/// What a host's serving process (`sessionfs mount`, `sessionfs host serve`) does while it runs,
/// with a registry in etcd: keeps the host live (on a host of several), stops the daemons of
/// sessions that moved to another host, hands removed hosts' revoked certificates to this host's
/// daemons ([`crate::revocation`]), and keeps the last list of sessions it saw in the state
/// directory (`registry-cache.json`), which `session ls` shows when etcd cannot be reached.
/// Dropping it ends them all.
pub struct HostDuties {
    _live: Option<Liveness>,
    _watch: sessionfs_registry::WatchHandle,
    _revocations: sessionfs_registry::WatchHandle,
}

/// The sessions a serving process last saw (`registry-cache.json`).
#[derive(Serialize, Deserialize)]
pub struct SeenSessions {
    /// When, unix seconds.
    pub saved_at: u64,
    /// The registry they came from.
    pub registry: String,
    /// The records.
    pub records: Vec<sessionfs_registry::SessionRecord>,
}

/// The last list of sessions a serving process of this state directory saw, if any.
pub fn seen_sessions(home: &Home) -> Option<SeenSessions> {
    let text = fs::read(home.root().join(SEEN_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

const SEEN_FILE: &str = "registry-cache.json";

/// Writes the list atomically (a reader never sees half of it).
fn save_seen(home: &Home, registry: &str, records: &[sessionfs_registry::SessionRecord]) {
    // Container environments may hold secrets: they are not kept.
    let records = records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.labels.retain(|k, _| k != crate::docker::RECORD_ENV);
            r
        })
        .collect();
    let seen = SeenSessions {
        saved_at: now(),
        registry: registry.to_owned(),
        records,
    };
    let path = home.root().join(SEEN_FILE);
    // One temporary file per process: a mount and a `host serve` may both write.
    let tmp = home
        .root()
        .join(format!(".{SEEN_FILE}.{}.tmp", std::process::id()));
    let written = serde_json::to_vec(&seen)
        .map_err(std::io::Error::other)
        .and_then(|bytes| {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&bytes)
        })
        .and_then(|()| fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::debug!(error = %e, "cannot save the sessions seen");
    }
}

/// Starts the duties (`None` when the registry is the SQLite file of one host).
pub fn start_duties(home: &Home) -> Result<Option<HostDuties>, HostError> {
    let location = home.registry_location();
    if !matches!(location, Location::Etcd(_)) {
        return Ok(None);
    }
    let membership = home.membership()?;
    let live = match &membership {
        Some(m) => Some(Registry::keep_alive(&location, &m.name)?),
        None => None,
    };
    // Records are handed to a worker: stopping a daemon takes seconds, the watch must not wait.
    let (tx, rx) = std::sync::mpsc::channel::<sessionfs_registry::SessionRecord>();
    let worker_home = home.clone();
    std::thread::Builder::new()
        .name("sessionfs-moved-away".into())
        .spawn(move || {
            // Every change lists every record again: handle each move once.
            let mut done = std::collections::HashSet::new();
            for record in rx {
                let key = (
                    record.id.clone(),
                    record
                        .labels
                        .get(crate::move_host::MOVED_PID_LABEL)
                        .cloned(),
                );
                if done.insert(key) {
                    crate::move_host::stop_moved_away(&worker_home, &record);
                }
            }
        })
        .map_err(|e| file_error("start a thread for", home.root())(e))?;
    let here = membership.map(|m| m.name);
    let (revocations, sessions) = crate::revocation::hand_out(home, &location, here.clone())?;
    let (cache_home, shown) = (home.clone(), location.to_string());
    let watch = Registry::watch(
        &location,
        std::time::Duration::from_secs(1),
        move |records| {
            save_seen(&cache_home, &shown, &records);
            let _ = sessions.send(crate::revocation::Heard::Sessions(records.clone()));
            for record in records {
                if here.is_some()
                    && record.labels.get(crate::move_host::MOVED_FROM_LABEL) == here.as_ref()
                {
                    let _ = tx.send(record);
                }
            }
        },
    )?;
    Ok(Some(HostDuties {
        _live: live,
        _watch: watch,
        _revocations: revocations,
    }))
}
