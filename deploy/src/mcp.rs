//! `sessionfs mcp`: runs the MCP server of `sessionfs_mcp` over stdio or streamable HTTP, with
//! `session_list` backed by this installation's registry and backends (the same view as `session ls`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use sessionfs_mcp::{Mount, SessionCatalog, SessionInfo, SessionTools};
use sessionfs_registry::SessionState;

use crate::commands::{self, SessionStatus};
use crate::state::Home;

/// Errors of `sessionfs mcp`.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("invalid --http address {0:?}: give PORT, IP:PORT or [IPv6]:PORT")]
    Address(String),
    #[error("mount point {path}: {source}")]
    MountPath {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Serve(#[from] sessionfs_mcp::ServeError),
}

/// How to serve.
#[derive(Clone, Debug)]
pub struct McpOptions {
    /// The bridge's mount point.
    pub mount: PathBuf,
    /// Serve streamable HTTP on this address instead of stdio.
    pub http: Option<SocketAddr>,
    /// Bearer token HTTP clients must send (required for a non-loopback address).
    pub token: Option<String>,
}

/// `--http` values: `PORT` (on 127.0.0.1), `IP:PORT`, `[IPv6]:PORT`.
pub fn parse_http_addr(s: &str) -> Result<SocketAddr, McpError> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        let port = port.parse().map_err(|_| McpError::Address(s.to_owned()))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    s.parse().map_err(|_| McpError::Address(s.to_owned()))
}

/// The registry and backends as `session_list` shows them.
struct RegistryCatalog {
    home: Home,
}

impl SessionCatalog for RegistryCatalog {
    fn sessions(&self) -> Result<Vec<SessionInfo>, String> {
        let sessions = commands::list(&self.home).map_err(|e| e.to_string())?;
        Ok(sessions.iter().map(session_info).collect())
    }
}

fn session_info(s: &SessionStatus) -> SessionInfo {
    SessionInfo {
        id: s.record.id.as_str().to_owned(),
        backend: s.record.backend.as_str().to_owned(),
        state: s.record.state.as_str().to_owned(),
        health: health(s).to_owned(),
        endpoint: s.record.endpoint.map(|e| e.to_string()),
    }
}

/// One word for whether the session can serve now: `healthy` (passing its health check), `running`
/// (alive, no health check: local sessions), `unhealthy`, `starting`, `stopped`, `dead` (recorded as
/// running, but its process or container is not), `gone` (container removed), `unknown` (engine
/// unreachable).
fn health(s: &SessionStatus) -> &'static str {
    match &s.container {
        Some(c) if c.health == "unknown" => "unknown",
        Some(c) if !c.exists => "gone",
        Some(c) if c.running => match c.health.as_str() {
            "healthy" => "healthy",
            "unhealthy" => "unhealthy",
            "starting" => "starting",
            _ => "running",
        },
        _ => match (s.alive, s.record.state) {
            (Some(true), SessionState::Unhealthy) => "unhealthy",
            (Some(true), _) => "running",
            (_, SessionState::Stopped) => "stopped",
            (_, SessionState::Gone) => "gone",
            (Some(false), _) => "dead",
            (None, _) => "unknown",
        },
    }
}

/// Serves MCP until the client disconnects (stdio) or SIGINT/SIGTERM (HTTP). Refuses to start when
/// no sessionfs mount is at the mount point.
pub fn serve(home: Home, opts: &McpOptions) -> Result<(), McpError> {
    let mount = Mount::new(&opts.mount).map_err(|source| McpError::MountPath {
        path: opts.mount.clone(),
        source,
    })?;
    let tools = SessionTools::new(mount, Arc::new(RegistryCatalog { home }));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(McpError::Runtime)?;
    let served = runtime.block_on(async {
        match opts.http {
            None => sessionfs_mcp::serve_stdio(tools).await,
            Some(addr) => {
                sessionfs_mcp::serve_http(tools, addr, opts.token.clone(), |bound| {
                    eprintln!("sessionfs mcp: serving MCP at http://{bound}/mcp");
                })
                .await
            }
        }
    });
    // A tool call stuck in a file operation is bounded by the mount's operation timeout; do not wait
    // for it longer than that on the way out.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    served?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_addresses() {
        assert_eq!(
            parse_http_addr("8765").unwrap(),
            "127.0.0.1:8765".parse().unwrap()
        );
        assert_eq!(
            parse_http_addr("localhost:9").unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        assert_eq!(
            parse_http_addr("[::1]:80").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        assert!(parse_http_addr("nohost:1").is_err());
        assert!(parse_http_addr("").is_err());
    }
}
