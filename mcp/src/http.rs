//! MCP over streamable HTTP: rmcp's `StreamableHttpService` at `/mcp`, served by hyper on one listener.
//! Loopback by default, and every request must carry the bearer token (compared in constant time):
//! on a shared host any local user can reach a loopback port. rmcp checks the `Host` header
//! against loopback names and the bound address (DNS rebinding) and refuses any `Origin` (web pages).
//! Bounds: at most 64 connections, 30 s to send a request's headers and 30 s for its body, a body of
//! at most [`MAX_MESSAGE`] bytes, at most [`MAX_SESSIONS`] MCP sessions (idle ones close after 5 minutes,
//! ones never initialized after 10 s), and the server's tool-call slots. Stops on SIGINT/SIGTERM.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, LengthLimitError, Limited};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::net::TcpListener;
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
    let stop = CancellationToken::new();
    let mut hosts = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if !bound.ip().is_loopback() {
        hosts.push(bound.ip().to_string());
    }
    // Browsers send Origin; MCP clients do not. No origin is allowed, so no web page can call the tools.
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
    let expected = Arc::new(format!("Bearer {token}"));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    info!(%bound, "serving MCP over streamable HTTP at {MCP_PATH}");
    on_listening(bound);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ServeError::Http)?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut ctrl_c => break,
            _ = sigterm.recv() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        debug!(%peer, "connection");
        let service = service.clone();
        let expected = expected.clone();
        let sessions = sessions.clone();
        let handler = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let service = service.clone();
            let expected = expected.clone();
            let sessions = sessions.clone();
            async move {
                let given = req.headers().get(hyper::header::AUTHORIZATION);
                if !given.is_some_and(|v| same_secret(v.as_bytes(), expected.as_bytes())) {
                    return Ok::<_, Infallible>(plain(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized: send Authorization: Bearer <token>\n",
                    ));
                }
                if req.uri().path() != MCP_PATH {
                    return Ok(plain(
                        StatusCode::NOT_FOUND,
                        "not found: MCP is served at /mcp\n",
                    ));
                }
                let opens_session = req.method() == hyper::Method::POST
                    && !req.headers().contains_key("mcp-session-id");
                if opens_session && sessions.sessions.read().await.len() >= MAX_SESSIONS {
                    return Ok(plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "service unavailable: too many MCP sessions are open; close one (DELETE /mcp) or wait for idle ones to expire\n",
                    ));
                }
                let (parts, body) = req.into_parts();
                let body = match tokio::time::timeout(
                    BODY_TIMEOUT,
                    Limited::new(body, MAX_MESSAGE).collect(),
                )
                .await
                {
                    Ok(Ok(body)) => body.to_bytes(),
                    Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                        return Ok(plain(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "payload too large: one MCP message may have at most 24 MiB\n",
                        ));
                    }
                    Ok(Err(_)) => {
                        return Ok(plain(
                            StatusCode::BAD_REQUEST,
                            "bad request: the body could not be read\n",
                        ));
                    }
                    Err(_) => {
                        return Ok(plain(
                            StatusCode::REQUEST_TIMEOUT,
                            "request timeout: the body did not arrive within 30 s\n",
                        ));
                    }
                };
                Ok(service
                    .handle(Request::from_parts(parts, Full::new(body)))
                    .await)
            }
        });
        let stop = stop.clone();
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
    stop.cancel();
    info!("MCP HTTP server stopped");
    Ok(())
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
