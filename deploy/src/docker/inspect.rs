//! What the engine's inspect answer means for a session: the registry state, endpoint and
//! daemon pid ([`observed_state`]), the status `session ls` shows ([`ContainerStatus`]), and the
//! published port, main process and reason for not running that [`Engine`](super::Engine) checks.

use std::net::{Ipv4Addr, SocketAddr};

use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum, HealthStatusEnum};
use sessionfs_registry::{SessionRecord, SessionState};

use super::{record_container, PORT_KEY};

/// A session container as `session ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    /// The container's name.
    pub container: String,
    /// Whether it runs.
    pub running: bool,
    /// Whether it exists.
    pub exists: bool,
    /// `healthy`, `unhealthy`, `starting`, `none` while running; the container state (`exited`,
    /// `created`, …) otherwise; `gone` if it does not exist; `unknown` if the engine did not answer.
    pub health: String,
    /// The published daemon port, if running.
    pub endpoint: Option<SocketAddr>,
}

/// Where a running container's daemon is: its published endpoint and its host pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// `127.0.0.1:<published port>`.
    pub endpoint: SocketAddr,
    /// The host pid of the container's main process, the daemon (a `FROM scratch` image runs
    /// nothing else). The bridge opens the daemon's descriptors through `/proc/<pid>/fd` for
    /// direct data, and checks each is the file the daemon named, so a stale pid costs nothing
    /// but the direct data.
    pub pid: Option<u32>,
}

/// The host pid of a running container's main process.
pub(super) fn main_pid(inspected: &ContainerInspectResponse) -> Option<u32> {
    let state = inspected.state.as_ref()?;
    if state.running != Some(true) || state.restarting == Some(true) {
        return None;
    }
    state
        .pid
        .and_then(|p| u32::try_from(p).ok())
        .filter(|&p| p > 0)
}

/// What the registry should hold of a docker session given its container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    /// `running` while running and healthy or not yet checked (or without a health check),
    /// `unhealthy` when the health check fails or the container is paused, `starting` while
    /// Docker restarts it, `stopped` when it is created, exited or dead.
    pub state: SessionState,
    /// The published port of a running container, else `None`.
    pub endpoint: Option<SocketAddr>,
    /// The host pid of a running container's main process (see [`Published::pid`]).
    pub pid: Option<u32>,
}

/// The registry state, endpoint and daemon pid a docker session should have given its container.
pub fn observed_state(inspected: &ContainerInspectResponse) -> Observed {
    let state = inspected.state.clone().unwrap_or_default();
    let session_state = if state.restarting == Some(true) {
        SessionState::Starting
    } else if state.paused == Some(true) {
        SessionState::Unhealthy
    } else if state.running == Some(true) {
        match state.health.and_then(|h| h.status) {
            Some(HealthStatusEnum::UNHEALTHY) => SessionState::Unhealthy,
            _ => SessionState::Running,
        }
    } else {
        match state.status {
            Some(ContainerStateStatusEnum::RESTARTING) => SessionState::Starting,
            _ => SessionState::Stopped,
        }
    };
    let endpoint = match session_state {
        SessionState::Running | SessionState::Unhealthy => published(inspected),
        _ => None,
    };
    Observed {
        state: session_state,
        endpoint,
        pid: endpoint.and_then(|_| main_pid(inspected)),
    }
}

/// The status shown when the engine cannot be asked.
pub fn unknown_status(record: &SessionRecord) -> ContainerStatus {
    ContainerStatus {
        container: record_container(record),
        running: false,
        exists: true,
        health: "unknown".to_owned(),
        endpoint: None,
    }
}

pub(super) fn status_of(
    container: String,
    inspected: &ContainerInspectResponse,
) -> ContainerStatus {
    let state = inspected.state.clone().unwrap_or_default();
    let running = state.running == Some(true);
    let health = if running {
        match state.health.and_then(|h| h.status) {
            Some(HealthStatusEnum::EMPTY) | None => "none".to_owned(),
            Some(h) => h.to_string(),
        }
    } else {
        match state.status {
            Some(ContainerStateStatusEnum::EMPTY) | None => "stopped".to_owned(),
            Some(s) => s.to_string(),
        }
    };
    ContainerStatus {
        container,
        running,
        exists: true,
        health,
        endpoint: running.then(|| published(inspected)).flatten(),
    }
}

/// Why the container is not running (its state, exit code and error), or `None` if it runs.
pub(super) fn not_running(inspected: &ContainerInspectResponse) -> Option<String> {
    let state = inspected.state.clone().unwrap_or_default();
    if state.running == Some(true) && state.restarting != Some(true) {
        return None;
    }
    let status = state
        .status
        .map_or_else(|| "unknown".to_owned(), |s| s.to_string());
    let code = state
        .exit_code
        .map_or_else(String::new, |c| format!(", exit code {c}"));
    let error = state
        .error
        .filter(|e| !e.is_empty())
        .map_or_else(String::new, |e| format!(": {e}"));
    Some(format!("it is not running (state {status}{code}){error}"))
}

/// The host port published for [`PORT_KEY`].
/// Whether the daemon's port is published on an address other than loopback (an empty host address
/// is every address): then anyone on the network could reach the daemon.
pub fn published_beyond_loopback(inspected: &ContainerInspectResponse) -> bool {
    let bindings = inspected
        .network_settings
        .as_ref()
        .and_then(|n| n.ports.as_ref())
        .and_then(|p| p.get(PORT_KEY))
        .and_then(Option::as_ref);
    bindings.is_some_and(|bindings| {
        bindings.iter().any(|b| {
            let ip = b.host_ip.as_deref().unwrap_or("");
            // This host's advertised address is where its sessions are meant to be reached.
            !matches!(ip, "127.0.0.1" | "::1" | "localhost")
                && super::publish_ip().to_string() != ip
        })
    })
}

/// The address the daemon's port is published at: the binding's host address (the host's
/// advertised address on a host of several, else `127.0.0.1`) and port.
pub(super) fn published(inspected: &ContainerInspectResponse) -> Option<SocketAddr> {
    inspected
        .network_settings
        .as_ref()?
        .ports
        .as_ref()?
        .get(PORT_KEY)?
        .as_ref()?
        .iter()
        .find_map(|b| {
            let port: u16 = b.host_port.as_deref()?.parse().ok().filter(|&p| p != 0)?;
            let ip = b
                .host_ip
                .as_deref()
                .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
                .filter(|ip| !ip.is_unspecified())
                .unwrap_or(Ipv4Addr::LOCALHOST.into());
            Some(SocketAddr::new(ip, port))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::PortBinding;
    use std::collections::HashMap;

    #[test]
    fn states_from_inspect() {
        use bollard::models::{
            ContainerState, ContainerStateStatusEnum as S, Health, NetworkSettings,
        };
        let inspected = |status: S, running: bool, health: Option<HealthStatusEnum>| {
            let ports = HashMap::from([(
                PORT_KEY.to_owned(),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some("40001".into()),
                }]),
            )]);
            ContainerInspectResponse {
                state: Some(ContainerState {
                    status: Some(status),
                    running: Some(running),
                    restarting: Some(status == S::RESTARTING),
                    paused: Some(status == S::PAUSED),
                    pid: Some(if running { 4321 } else { 0 }),
                    health: health.map(|h| Health {
                        status: Some(h),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                network_settings: Some(NetworkSettings {
                    ports: Some(ports),
                    ..Default::default()
                }),
                ..Default::default()
            }
        };
        let ep: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let cases = [
            (
                S::RUNNING,
                true,
                Some(HealthStatusEnum::HEALTHY),
                SessionState::Running,
                Some(ep),
            ),
            (
                S::RUNNING,
                true,
                Some(HealthStatusEnum::STARTING),
                SessionState::Running,
                Some(ep),
            ),
            (S::RUNNING, true, None, SessionState::Running, Some(ep)),
            (
                S::RUNNING,
                true,
                Some(HealthStatusEnum::UNHEALTHY),
                SessionState::Unhealthy,
                Some(ep),
            ),
            (
                S::PAUSED,
                true,
                Some(HealthStatusEnum::HEALTHY),
                SessionState::Unhealthy,
                Some(ep),
            ),
            (S::RESTARTING, true, None, SessionState::Starting, None),
            (
                S::EXITED,
                false,
                Some(HealthStatusEnum::UNHEALTHY),
                SessionState::Stopped,
                None,
            ),
            (S::CREATED, false, None, SessionState::Stopped, None),
            (S::DEAD, false, None, SessionState::Stopped, None),
        ];
        for (status, running, health, state, endpoint) in cases {
            // The daemon's pid goes with the endpoint: a container that does not run has none.
            let pid = endpoint.map(|_| 4321);
            assert_eq!(
                observed_state(&inspected(status, running, health)),
                Observed {
                    state,
                    endpoint,
                    pid
                },
                "{status:?} {health:?}"
            );
        }
    }
}
