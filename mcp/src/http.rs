//! MCP over streamable HTTP: rmcp's `StreamableHttpService` at `/mcp`, served by hyper on one listener
//! (loopback unless asked otherwise; rmcp also checks the `Host` header against loopback names and the
//! bound address, which stops DNS rebinding). Stops on SIGINT/SIGTERM.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::server::{ServeError, SessionTools};

/// The URL path MCP is served at.
pub const MCP_PATH: &str = "/mcp";

/// Serves MCP over streamable HTTP on `addr` until SIGINT/SIGTERM. `on_listening` gets the bound address
/// (useful with port 0) once the listener is up. Fails first if there is no mount.
pub async fn serve_http(
    tools: SessionTools,
    addr: SocketAddr,
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
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(hosts)
        .with_cancellation_token(stop.child_token());
    let service: StreamableHttpService<SessionTools, LocalSessionManager> =
        StreamableHttpService::new(
            move || Ok(tools.clone()),
            Arc::new(LocalSessionManager::default()),
            config,
        );
    info!(%bound, "serving MCP over streamable HTTP at {MCP_PATH}");
    on_listening(bound);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ServeError::Http)?;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        };
        debug!(%peer, "connection");
        let service = service.clone();
        let handler = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let service = service.clone();
            async move {
                if req.uri().path() != MCP_PATH {
                    return Ok::<_, Infallible>(not_found());
                }
                Ok(service.handle(req).await)
            }
        });
        let stop = stop.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), handler);
            tokio::select! {
                result = conn => if let Err(e) = result {
                    debug!(error = %e, "connection ended with an error");
                },
                _ = stop.cancelled() => {}
            }
        });
    }
    stop.cancel();
    info!("MCP HTTP server stopped");
    Ok(())
}

fn not_found() -> Response<BoxBody<Bytes, Infallible>> {
    let mut response =
        Response::new(Full::new(Bytes::from_static(b"not found: MCP is served at /mcp\n")).boxed());
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}
