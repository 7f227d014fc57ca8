//! `sessionfs session migrate ID --to-host NAME`, run on host NAME: moves a session of another host
//! here, daemon to daemon over the sessionfs protocol (neither host sees the other's files).
//!
//! 1. **fence** — the record is read with its etcd revision and written back, at that revision
//!    only, as `stopped` with the label `migrating.to=<this host>`: of two migrations started at
//!    once exactly one gets this far, and every mount drops its connection to the source.
//! 2. **copy** — a new local session is started here (this host's certificate and address, a new
//!    workspace directory) and the source daemon's tree is copied into it ([`transfer`]).
//! 3. **verify** — both trees are read again and compared: paths, kinds, permission bits, sizes,
//!    SHA-256 of every file, symlink targets. A write that reached the source after its file was
//!    copied makes them differ, so nothing written is left behind.
//! 4. **switch** — the record is rewritten at the fence's revision only: host, endpoint, pinned
//!    certificate, workspace, with `moved.from=<source host>`. If anything changed the record
//!    meanwhile, the switch fails.
//!
//! A failure at any step stops the new daemon, deletes what the migration made here and puts the
//! record back as it was: the session stays on its host, serving the same data. After the switch,
//! the source host stops its daemon when it sees the record (any of its `sessionfs mount` or
//! `sessionfs host serve` processes does) and keeps its data.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sessionfs_registry::{
    this_host, Backend, SessionId, SessionRecord, SessionState, CERT_PIN_LABEL, HOST_LABEL,
};
use tracing::{info, warn};

use crate::hosts::HostError;
use crate::state::Home;
use crate::transfer::{self, Peer};

/// The label a migration in progress puts on the record: the host it moves to.
pub const MIGRATING_LABEL: &str = "migrating.to";
/// The label of a record that moved here from another host: that host (which stops its daemon).
pub const MOVED_FROM_LABEL: &str = "moved.from";
/// With [`MOVED_FROM_LABEL`]: the source daemon's process id on its host (local sessions).
pub const MOVED_PID_LABEL: &str = "moved.from.pid";

/// How long one request of the copy may take.
const CALL_BOUND: Duration = Duration::from_secs(30);

/// Arguments of `session migrate --to-host`.
#[derive(Debug, Clone)]
pub struct MoveOptions {
    /// The session.
    pub id: String,
    /// The host to move it to: this one.
    pub to_host: String,
    /// The new workspace directory here (default `<state>/sessions/<id>/workspace`).
    pub dir: Option<PathBuf>,
}

fn refused(id: &SessionId, reason: impl Into<String>) -> HostError {
    HostError::Migrate {
        id: id.to_string(),
        reason: reason.into(),
    }
}

/// `session migrate ID --to-host NAME`: see the module documentation.
pub fn migrate_to_host(home: &Home, opts: &MoveOptions) -> Result<String, HostError> {
    let id = SessionId::from_str(&opts.id).map_err(|e| HostError::BadName(e.to_string()))?;
    let here = home.membership()?.ok_or(HostError::NotAHost)?.name;
    if opts.to_host != here {
        return Err(refused(
            &id,
            format!(
                "a host starts only its own daemons: run `sessionfs session migrate {id} --to-host {}` on host `{}` (this is `{here}`)",
                opts.to_host, opts.to_host
            ),
        ));
    }
    // Issued before the state directory's lock is taken (it takes the lock itself).
    home.ensure_bridge_cert()?;
    let registry = home.open_registry()?;
    let etcd = registry.shared()?;
    let _lock = home.lock()?;
    let (mut record, mut seen) = etcd
        .fetch(&id)?
        .ok_or_else(|| refused(&id, "no such session"))?;
    // A fence this host left: its migration is not running (it would hold this state directory's
    // lock), so it ended without undoing it (killed, or its rollback could not reach etcd).
    if record.labels.get(MIGRATING_LABEL) == Some(&here) {
        let mut cleared = record.clone();
        cleared.labels.remove(MIGRATING_LABEL);
        cleared.state = SessionState::Running;
        match etcd.put_if(&cleared, seen)? {
            Some(revision) => {
                warn!(session = %id, "cleared the fence an unfinished migration to this host left");
                (record, seen) = (cleared, revision);
            }
            None => return Err(refused(&id, "the record changed meanwhile: try again")),
        }
    }
    let from = record.host().unwrap_or_default().to_owned();
    if !record.elsewhere(&here) {
        return Err(refused(
            &id,
            format!("it runs on this host (`{here}`) already"),
        ));
    }
    if let Some(to) = record.labels.get(MIGRATING_LABEL) {
        return Err(refused(
            &id,
            format!(
                "a migration to host `{to}` is under way (if it died, running it again on `{to}` clears it)"
            ),
        ));
    }
    if record.backend != Backend::Local {
        return Err(refused(
            &id,
            format!(
                "it is a {} session; only local sessions move between hosts: on host `{from}`, \
                 `sessionfs session migrate {id} --to local` first",
                record.backend
            ),
        ));
    }
    let Some(source_addr) = record
        .endpoint
        .filter(|_| record.state == SessionState::Running)
    else {
        return Err(refused(
            &id,
            format!(
                "it is {} on host `{from}`: start it there first",
                record.state
            ),
        ));
    };
    let workspace = match &opts.dir {
        Some(dir) => {
            std::path::absolute(dir).map_err(|e| refused(&id, format!("{}: {e}", dir.display())))?
        }
        None => home.default_workspace(&id),
    };
    if let Some(parent) = workspace.parent() {
        if !parent.is_dir() && opts.dir.is_some() {
            return Err(refused(&id, format!("{} does not exist", parent.display())));
        }
    }
    if workspace.exists()
        && std::fs::read_dir(&workspace)
            .map_err(|e| refused(&id, format!("{}: {e}", workspace.display())))?
            .next()
            .is_some()
    {
        return Err(refused(
            &id,
            format!(
                "{} exists and is not empty (an earlier copy?): give another with --dir DIR",
                workspace.display()
            ),
        ));
    }

    // 1. fence
    let mut fenced = record.clone();
    fenced.state = SessionState::Stopped;
    fenced
        .labels
        .insert(MIGRATING_LABEL.to_owned(), here.clone());
    let Some(fence) = etcd.put_if(&fenced, seen)? else {
        return Err(refused(
            &id,
            "the record changed as the migration began (another migration or its host won): try again",
        ));
    };
    info!(session = %id, from = %from, to = %here, "migration fenced");
    let made_dir = !workspace.exists();
    let made_session_dir = !home.session_dir(&id).exists();
    let made_certs = !home.session_cert_dir(&id).exists();
    let mut target: Option<SessionRecord> = None;
    let outcome = (|| -> Result<(SessionRecord, usize), String> {
        if made_session_dir {
            crate::state::private_dir(&home.session_dir(&id)).map_err(|e| e.to_string())?;
        }
        if made_dir {
            std::fs::create_dir(&workspace)
                .map_err(|e| format!("create {}: {e}", workspace.display()))?;
        }
        let ca = home.certificate_authority().map_err(|e| e.to_string())?;
        home.issue_session_certs(&ca, &id)
            .map_err(|e| e.to_string())?;
        let mut new = SessionRecord::new(
            id.clone(),
            Backend::Local,
            home.session_cert_name(&id).map_err(|e| e.to_string())?,
        );
        new.workspace = Some(workspace.clone());
        new.created_at = record.created_at;
        new.labels = user_labels(&record);
        new.labels.insert(HOST_LABEL.to_owned(), here.clone());
        new.labels.insert(
            CERT_PIN_LABEL.to_owned(),
            home.session_cert_pin(&id).map_err(|e| e.to_string())?,
        );
        let started = crate::local::start(home, &new).map_err(|e| e.to_string())?;
        target = Some(started.clone());
        let target_addr = started
            .endpoint
            .ok_or("the new daemon reported no endpoint")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let verified = runtime.block_on(async {
            let endpoint = transfer::bridge_endpoint(&home.pki_dir())?;
            let source = Peer::dial(
                &endpoint,
                source_addr,
                id.as_str(),
                &record.cert_identity,
                record.labels.get(CERT_PIN_LABEL).map(String::as_str),
                &format!("source (host `{from}`)"),
                CALL_BOUND,
            )
            .await?;
            let copy = Peer::dial(
                &endpoint,
                target_addr,
                id.as_str(),
                &started.cert_identity,
                started.labels.get(CERT_PIN_LABEL).map(String::as_str),
                "copy (this host)",
                CALL_BOUND,
            )
            .await?;
            // 2. copy
            let copied = transfer::copy_tree(&source, &copy).await?;
            info!(session = %id, nodes = copied, "copied");
            // 3. verify
            let (a, b) = (
                transfer::manifest(&source).await?,
                transfer::manifest(&copy).await?,
            );
            crate::manifest::compare(&a, &b, &format!("host `{from}`"), "the copy")
                .map_err(|e| format!("verify: {e}"))?;
            endpoint.close(0u32.into(), b"migration done");
            // The paths of the tree, its root not counted.
            Ok::<usize, String>(a.len().saturating_sub(1))
        })?;
        // 4. switch
        let mut switched = started.clone();
        switched.state = SessionState::Running;
        switched
            .labels
            .insert(MOVED_FROM_LABEL.to_owned(), from.clone());
        if let (Backend::Local, Some(pid)) = (record.backend, record.pid) {
            switched
                .labels
                .insert(MOVED_PID_LABEL.to_owned(), pid.to_string());
        }
        match etcd.put_if(&switched, fence) {
            Ok(Some(_)) => Ok((switched, verified)),
            Ok(None) => Err("switch: the record changed during the copy (fenced)".to_owned()),
            // The write may have landed before the answer was lost: look before undoing anything.
            Err(e) => match etcd.fetch(&id) {
                Ok(Some((now, _))) if now == switched => Ok((switched, verified)),
                _ => Err(format!("switch: {e}")),
            },
        }
    })();
    match outcome {
        Ok((switched, verified)) => Ok(format!(
            "migrated session {id} from host `{from}` to host `{here}` at {} serving {} ({verified} paths verified)\nhost `{from}` stops its daemon and keeps its data",
            switched.endpoint.map_or_else(|| "-".to_owned(), |e| e.to_string()),
            workspace.display()
        )),
        Err(reason) => {
            warn!(session = %id, %reason, "migration failed; rolling back");
            if let Some(started) = &target {
                if let Err(e) = crate::local::stop(started) {
                    warn!(session = %id, error = %e, "cannot stop the new daemon");
                }
            }
            if made_dir {
                let _ = std::fs::remove_dir_all(&workspace);
            } else if let Ok(entries) = std::fs::read_dir(&workspace) {
                // It was empty before the copy: empty again.
                for entry in entries.flatten() {
                    let path = entry.path();
                    let _ = if path.is_dir() && !path.is_symlink() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                }
            }
            if made_session_dir {
                let _ = std::fs::remove_dir_all(home.session_dir(&id));
            } else if made_certs {
                let _ = std::fs::remove_dir_all(home.session_cert_dir(&id));
            }
            // Undo the fence only while it is this migration's.
            let restored = match etcd.fetch(&id) {
                Ok(Some((now, revision))) if now.labels.get(MIGRATING_LABEL) == Some(&here) => {
                    matches!(etcd.put_if(&record, revision), Ok(Some(_)))
                }
                Ok(_) => true,
                Err(_) => false,
            };
            let outcome = if restored {
                format!("it stays on host `{from}`")
            } else {
                format!(
                    "its record could not be restored (etcd): it stays on host `{from}`, shown \
                     stopped until this command is run again here, which clears the fence"
                )
            };
            Err(refused(&id, format!("{reason}; {outcome}")))
        }
    }
}

/// The labels a user gave the session (none of sessionfs's own about where it runs).
fn user_labels(record: &SessionRecord) -> BTreeMap<String, String> {
    record
        .labels
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                HOST_LABEL | CERT_PIN_LABEL | MIGRATING_LABEL | MOVED_FROM_LABEL | MOVED_PID_LABEL
            ) && !k.starts_with("docker.")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// On the source host, after a session moved away: stops the daemon it left here (a local
/// session's process, checked to be that session's `sessionfsd`) and clears the labels.
pub fn stop_moved_away(home: &Home, record: &SessionRecord) {
    let here = this_host();
    if record.labels.get(MOVED_FROM_LABEL) != Some(&here) {
        return;
    }
    if let Some(pid) = record
        .labels
        .get(MOVED_PID_LABEL)
        .and_then(|p| p.parse::<u32>().ok())
    {
        let mut old = record.clone();
        old.backend = Backend::Local;
        old.pid = Some(pid);
        match crate::local::stop(&old) {
            Ok(outcome) => {
                info!(session = %record.id, pid, ?outcome, "stopped the daemon of a session that moved to another host")
            }
            Err(e) => {
                warn!(session = %record.id, pid, error = %e, "cannot stop the daemon of a session that moved away")
            }
        }
    }
    let cleared = home.open_registry().and_then(|r| {
        r.modify(&record.id, |r| {
            if r.labels.get(MOVED_FROM_LABEL) == Some(&here) {
                r.labels.remove(MOVED_FROM_LABEL);
                r.labels.remove(MOVED_PID_LABEL);
            }
        })
        .map_err(|source| crate::state::StateError::Registry {
            location: home.registry_location(),
            source,
        })
    });
    if let Err(e) = cleared {
        warn!(session = %record.id, error = %e, "cannot clear the moved-away labels");
    }
}
