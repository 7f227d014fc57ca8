//! Hands the installation's revoked host certificates (`sessionfs host rm`) to this host's own
//! sessions' daemons, which refuse peers whose chain holds one ([`sessionfs_pki::Revoked`]).
//!
//! The host that keeps a session's keys decides who may reach its daemon: a serving process
//! (`mount`, `host serve`) follows the revocations in etcd and writes the list into the
//! certificate directory of every session whose keys are in this state directory (for a docker
//! session, into its container too). A session issued its certificate later gets the list with
//! it ([`crate::state::Home::issue_session_certs`]), so it never serves a removed host.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Duration;

use sessionfs_registry::{Backend, Location, Registry, Revocation, SessionId, SessionRecord};
use tracing::{info, warn};

use crate::state::{revoked_text, write_revoked, Home};

/// How soon a failed hand-out (Docker busy, a full disk) is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// What the worker hears of.
pub(crate) enum Heard {
    Revocations(Vec<Revocation>),
    Sessions(Vec<SessionRecord>),
}

/// Follows the revocations at `location` and hands them out; `sessions` is fed every list of
/// sessions the serving process sees. Dropping the handle ends the following; the worker ends
/// with the last sender.
pub(crate) fn hand_out(
    home: &Home,
    location: &Location,
    here: Option<String>,
) -> Result<(sessionfs_registry::WatchHandle, mpsc::Sender<Heard>), crate::hosts::HostError> {
    let (tx, rx) = mpsc::channel();
    let revocations = tx.clone();
    let watch = Registry::watch_revocations(location, move |list| {
        let _ = revocations.send(Heard::Revocations(list));
    })?;
    let worker = Worker::new(home.clone(), here);
    std::thread::Builder::new()
        .name("sessionfs-revocations".into())
        .spawn(move || worker.run(rx))
        .map_err(|e| crate::hosts::file_error("start a thread for", home.root())(e))?;
    Ok((watch, tx))
}

struct Worker {
    home: Home,
    here: Option<String>,
    revoked: Option<Vec<Revocation>>,
    sessions: Vec<SessionRecord>,
    /// What each session's daemon was last given, and for which instance of it.
    given: HashMap<SessionId, (String, String)>,
    docker: Option<crate::docker::Engine>,
}

impl Worker {
    fn new(home: Home, here: Option<String>) -> Worker {
        Worker {
            home,
            here,
            revoked: None,
            sessions: Vec::new(),
            given: HashMap::new(),
            docker: None,
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Heard>) {
        let mut pending = false;
        loop {
            let heard = if pending {
                match rx.recv_timeout(RETRY) {
                    Ok(heard) => Some(heard),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match rx.recv() {
                    Ok(heard) => Some(heard),
                    Err(_) => return,
                }
            };
            // Only the newest of each matters.
            for heard in heard.into_iter().chain(rx.try_iter()) {
                match heard {
                    Heard::Revocations(list) => self.revoked = Some(list),
                    Heard::Sessions(list) => self.sessions = list,
                }
            }
            pending = !self.give();
        }
    }

    /// Gives every daemon of this host the current list once; whether all took it.
    fn give(&mut self) -> bool {
        let Some(revoked) = &self.revoked else {
            return true;
        };
        let text = revoked_text(revoked);
        let mut all = true;
        for record in &self.sessions {
            if record.host().is_some() && record.host() != self.here.as_deref() {
                continue;
            }
            let dir = self.home.session_cert_dir(&record.id);
            if !dir.is_dir() {
                continue;
            }
            let instance = format!(
                "{:?} {:?} {:?} {:?}",
                record.backend,
                record.state,
                record.pid,
                record.labels.get(crate::docker::RECORD_CONTAINER)
            );
            let given = (text.clone(), instance);
            if self.given.get(&record.id) == Some(&given) {
                continue;
            }
            let result = write_revoked(&dir, revoked)
                .map_err(|e| e.to_string())
                .and_then(|()| match record.backend {
                    Backend::Docker => {
                        if self.docker.is_none() {
                            self.docker =
                                Some(crate::docker::Engine::connect().map_err(|e| e.to_string())?);
                        }
                        let engine = self.docker.as_ref().ok_or("no Docker engine")?;
                        engine
                            .upload_revoked(record, &text)
                            .map_err(|e| e.to_string())
                    }
                    Backend::Kubernetes => crate::k8s::Cluster::for_record(&self.home, record)
                        .and_then(|(cluster, _)| cluster.put_revoked(&record.id, &text))
                        .map_err(|e| e.to_string()),
                    Backend::Local => Ok(()),
                });
            match result {
                Ok(()) => {
                    if !revoked.is_empty() {
                        info!(session = %record.id, revoked = revoked.len(), "handed the revoked host certificates to the session's daemon");
                    }
                    self.given.insert(record.id.clone(), given);
                }
                Err(e) => {
                    warn!(session = %record.id, error = %e, "cannot hand the revoked host certificates to the session's daemon; trying again");
                    all = false;
                }
            }
        }
        all
    }
}
