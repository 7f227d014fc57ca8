//! MCP over streamable HTTP: rmcp's `StreamableHttpService` at `/mcp`, served by hyper on one listener:
//! TCP ([`serve_http`]), loopback by default, where every request must carry the bearer token
//! (compared in constant time: on a shared host any local user can reach a loopback port); or a Unix
//! socket ([`serve_unix`]), 0600, where the peer's credentials must be this user's. rmcp checks the `Host` header
//! against loopback names and the bound address (DNS rebinding) and refuses any `Origin` (web pages).
//! Bounds: at most 64 connections, 30 s to send a request's headers and 30 s for its body, a body of
//! at most [`MAX_MESSAGE`] bytes, at most [`MAX_SESSIONS`] MCP sessions (idle ones close after 5 minutes,
//! ones never initialized after 10 s), and the server's tool-call slots. Stops on SIGINT/SIGTERM.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, LengthLimitError, Limited};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::server::{ServeError, SessionTools};
use crate::stdio::MAX_MESSAGE;

/// The URL path MCP is served at.
pub const MCP_PATH: &str = "/mcp";

/// Most connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 64;
/// Longest time a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest time a client may take to send a request's body, once its headers are in.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Most MCP sessions open at once; a client initializing one more is refused (503).
pub const MAX_SESSIONS: usize = 128;
/// An MCP session idle this long is closed.
const SESSION_IDLE: Duration = Duration::from_secs(300);
/// An MCP session not initialized within this time is closed.
const SESSION_INIT: Duration = Duration::from_secs(10);

/// Serves MCP over streamable HTTP on `addr` until SIGINT/SIGTERM. `on_listening` gets the bound address
/// (useful with port 0) once the listener is up. Every request must carry
/// `Authorization: Bearer <token>`. Fails first if there is no mount.
pub async fn serve_http(
    tools: SessionTools,
    addr: SocketAddr,
    token: String,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    tools.mount_check().map_err(ServeError::NoMount)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(ServeError::Http)?;
    let mut hosts = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if !bound.ip().is_loopback() {
        hosts.push(bound.ip().to_string());
    }
    let server = Server::new(tools, hosts, Some(format!("Bearer {token}")));
    info!(%bound, "serving MCP over streamable HTTP at {MCP_PATH}");
    on_listening(bound);
    server
        .run(|| async {
            let (stream, peer) = listener.accept().await?;
            debug!(%peer, "connection");
            Ok(Some(stream))
        })
        .await
}

/// Serves MCP over streamable HTTP on a Unix socket at `path` until SIGINT/SIGTERM: the socket is
/// made 0600 (a stale one is replaced), and a connection is served only if its peer runs as this
/// user (or root), checked from the socket's peer credentials, so no token is needed. Fails first
/// if there is no mount, or if something other than a socket is at `path`.
pub async fn serve_unix(
    tools: SessionTools,
    path: &Path,
    on_listening: impl FnOnce(&Path),
) -> Result<(), ServeError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    tools.mount_check().map_err(ServeError::NoMount)?;
    let bind_err = |source| ServeError::BindUnix {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path).map_err(bind_err)?,
        Ok(_) => {
            return Err(bind_err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "something other than a socket is there",
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    let me = rustix::process::geteuid().as_raw();
    let server = Server::new(tools, vec!["localhost".to_string()], None);
    info!(path = %path.display(), "serving MCP over streamable HTTP on a Unix socket");
    on_listening(path);
    server
        .run(|| async {
            let (stream, _) = listener.accept().await?;
            let peer = stream.peer_cred()?.uid();
            if peer != me && peer != 0 {
                warn!(uid = peer, "refused a connection from another user");
                return Ok(None);
            }
            Ok(Some(stream))
        })
        .await
}

/// What every connection is served with.
struct Server {
    service: StreamableHttpService<SessionTools, LocalSessionManager>,
    sessions: Arc<LocalSessionManager>,
    /// The `Authorization` value every request must carry, if any.
    expected: Option<Arc<String>>,
    slots: Arc<Semaphore>,
    stop: CancellationToken,
}

impl Server {
    fn new(tools: SessionTools, hosts: Vec<String>, expected: Option<String>) -> Server {
        let stop = CancellationToken::new();
        // Browsers send Origin; MCP clients do not. No origin is allowed, so no web page can call
        // the tools.
        let config = StreamableHttpServerConfig::default()
            .with_allowed_hosts(hosts)
            .enforce_origin_validation()
            .with_max_request_body_bytes(MAX_MESSAGE)
            .with_cancellation_token(stop.child_token());
        let mut sessions = LocalSessionManager::default();
        sessions.session_config.keep_alive = Some(SESSION_IDLE);
        sessions.session_config.init_timeout = Some(SESSION_INIT);
        let sessions = Arc::new(sessions);
        let service: StreamableHttpService<SessionTools, LocalSessionManager> =
            StreamableHttpService::new(move || Ok(tools.clone()), sessions.clone(), config);
        Server {
            service,
            sessions,
            expected: expected.map(Arc::new),
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            stop,
        }
    }

    /// Accepts connections with `accept` (`None`: refused, go on) and serves each, until
    /// SIGINT/SIGTERM.
    async fn run<S, A, F>(self, mut accept: A) -> Result<(), ServeError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        A: FnMut() -> F,
        F: std::future::Future<Output = std::io::Result<Option<S>>>,
    {
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(ServeError::Http)?;
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            let accepted = tokio::select! {
                accepted = accept() => accepted,
                _ = &mut ctrl_c => break,
                _ = sigterm.recv() => break,
            };
            let stream = match accepted {
                Ok(Some(stream)) => stream,
                Ok(None) => continue,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = self.slots.clone().acquire_owned().await else {
                break;
            };
            self.spawn(stream, slot);
        }
        self.stop.cancel();
        info!("MCP HTTP server stopped");
        Ok(())
    }

    /// Serves one connection in a task of its own.
    fn spawn<S>(&self, stream: S, slot: tokio::sync::OwnedSemaphorePermit)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (service, expected, sessions) = (
            self.service.clone(),
            self.expected.clone(),
            self.sessions.clone(),
        );
        let handler = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let (service, expected, sessions) =
                (service.clone(), expected.clone(), sessions.clone());
            async move {
                Ok::<_, Infallible>(handle(req, &service, expected.as_deref(), &sessions).await)
            }
        });
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), handler);
            tokio::select! {
                result = conn => if let Err(e) = result {
                    debug!(error = %e, "connection ended with an error");
                },
                _ = stop.cancelled() => {}
            }
            drop(slot);
        });
    }
}

/// Answers one request: the token (if one is asked), the path, the session limit and the body's
/// bounds are checked before rmcp sees it.
async fn handle(
    req: Request<hyper::body::Incoming>,
    service: &StreamableHttpService<SessionTools, LocalSessionManager>,
    expected: Option<&String>,
    sessions: &LocalSessionManager,
) -> Response<BoxBody<Bytes, Infallible>> {
    if let Some(expected) = expected {
        let given = req.headers().get(hyper::header::AUTHORIZATION);
        if !given.is_some_and(|v| same_secret(v.as_bytes(), expected.as_bytes())) {
            return plain(
                StatusCode::UNAUTHORIZED,
                "unauthorized: send Authorization: Bearer <token>\n",
            );
        }
    }
    if req.uri().path() != MCP_PATH {
        return plain(StatusCode::NOT_FOUND, "not found: MCP is served at /mcp\n");
    }
    let opens_session =
        req.method() == hyper::Method::POST && !req.headers().contains_key("mcp-session-id");
    if opens_session && sessions.sessions.read().await.len() >= MAX_SESSIONS {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "service unavailable: too many MCP sessions are open; close one (DELETE /mcp) or wait for idle ones to expire\n",
        );
    }
    let (parts, body) = req.into_parts();
    let body =
        match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_MESSAGE).collect()).await {
            Ok(Ok(body)) => body.to_bytes(),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload too large: one MCP message may have at most 24 MiB\n",
                );
            }
            Ok(Err(_)) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    "bad request: the body could not be read\n",
                );
            }
            Err(_) => {
                return plain(
                    StatusCode::REQUEST_TIMEOUT,
                    "request timeout: the body did not arrive within 30 s\n",
                );
            }
        };
    service
        .handle(Request::from_parts(parts, Full::new(body)))
        .await
}

/// Whether `given` is `expected`, in a time that does not depend on where they differ (only on
/// their lengths, which are not secret).
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |differ, (a, b)| differ | (a ^ b))
            == 0
}

fn plain(status: StatusCode, text: &'static str) -> Response<BoxBody<Bytes, Infallible>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed());
    *response.status_mut() = status;
    response
}
