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
    /// The token file cannot be made or read, or is not private.
    #[error("MCP token {}: {reason}", .path.display())]
    Token {
        /// The token file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// How to serve.
#[derive(Clone, Debug)]
pub struct McpOptions {
    /// The bridge's mount point.
    pub mount: PathBuf,
    /// Serve streamable HTTP on this address instead of stdio.
    pub http: Option<SocketAddr>,
    /// Serve MCP over HTTP on this Unix socket instead (`--socket`): this user only, no token.
    pub socket: Option<std::path::PathBuf>,
    /// Bearer token HTTP clients must send; without one, the state directory's (`mcp-token`).
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

/// The file of the state directory that keeps the MCP server's HTTP token.
const TOKEN_FILE: &str = "mcp-token";

/// Where the HTTP token came from: the state directory's file, made now or found.
struct TokenFile {
    path: PathBuf,
    made: bool,
}

/// The HTTP token of the state directory: read from [`TOKEN_FILE`], which must be a regular file
/// of this user that no one else may read, or made there (32 random bytes, hex, mode 0600,
/// created exclusively and never through a symlink).
fn http_token(home: &Home) -> Result<(String, Option<TokenFile>), McpError> {
    use std::io::{Read, Write};
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let path = home.root().join(TOKEN_FILE);
    let bad = |reason: String| McpError::Token {
        path: path.clone(),
        reason,
    };
    let nofollow = libc::O_NOFOLLOW | libc::O_CLOEXEC;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nofollow)
        .open(&path)
    {
        Ok(mut file) => {
            let meta = file.metadata().map_err(|e| bad(e.to_string()))?;
            let me = rustix::process::geteuid().as_raw();
            if !meta.is_file() || meta.uid() != me || meta.mode() & 0o077 != 0 {
                return Err(bad(format!(
                    "must be a regular file of uid {me} with mode 0600 (it is mode {:o}, uid {})",
                    meta.mode() & 0o7777,
                    meta.uid()
                )));
            }
            let mut token = String::new();
            file.read_to_string(&mut token)
                .map_err(|e| bad(e.to_string()))?;
            let token = token.trim().to_owned();
            if token.len() < 32 {
                return Err(bad("holds no token of at least 32 characters".into()));
            }
            Ok((token, Some(TokenFile { path, made: false })))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut random = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut r| r.read_exact(&mut random))
                .map_err(|e| bad(format!("no randomness: {e}")))?;
            let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(nofollow)
                .open(&path)
                .map_err(|e| bad(e.to_string()))?;
            writeln!(file, "{token}").map_err(|e| bad(e.to_string()))?;
            Ok((token, Some(TokenFile { path, made: true })))
        }
        Err(e) => Err(bad(e.to_string())),
    }
}

/// Serves MCP until the client disconnects (stdio) or SIGINT/SIGTERM (HTTP). Refuses to start when
/// no sessionfs mount is at the mount point.
pub fn serve(home: Home, opts: &McpOptions) -> Result<(), McpError> {
    let mount = Mount::new(&opts.mount).map_err(|source| McpError::MountPath {
        path: opts.mount.clone(),
        source,
    })?;
    let token = match (opts.http, &opts.token) {
        (Some(_), Some(token)) => Some((token.clone(), None)),
        (Some(_), None) => Some(http_token(&home)?),
        (None, _) => None,
    };
    let tools = SessionTools::new(mount, Arc::new(RegistryCatalog { home }));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(McpError::Runtime)?;
    let served = runtime.block_on(async {
        if let Some(path) = &opts.socket {
            return sessionfs_mcp::serve_unix(tools, path, |path| {
                eprintln!(
                    "sessionfs mcp: serving MCP at unix:{} (HTTP path /mcp; this user only)",
                    path.display()
                );
            })
            .await;
        }
        match (opts.http, token) {
            (Some(addr), Some((token, file))) => {
                let told = token.clone();
                sessionfs_mcp::serve_http(tools, addr, token, move |bound| {
                    eprintln!("sessionfs mcp: serving MCP at http://{bound}/mcp");
                    match file {
                        Some(TokenFile { path, made: true }) => eprintln!(
                            "sessionfs mcp: clients send `Authorization: Bearer {told}` (a new token, kept in {}, 0600)",
                            path.display()
                        ),
                        Some(TokenFile { path, made: false }) => eprintln!(
                            "sessionfs mcp: clients send `Authorization: Bearer <the token in {}>`",
                            path.display()
                        ),
                        None => eprintln!(
                            "sessionfs mcp: clients send `Authorization: Bearer $SESSIONFS_MCP_TOKEN`"
                        ),
                    }
                })
                .await
            }
            _ => sessionfs_mcp::serve_stdio(tools).await,
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
