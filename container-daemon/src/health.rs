//! `sessionfsd --health`: connects to a running daemon with the session's own certificate (the
//! health-probe identity, allowed only to ping) and checks that it answers.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use sessionfs_proto::{Caller, Reply, Request, RequestFrame};

/// Why the probe failed.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("certificates: {0}")]
    Certificates(#[from] sessionfs_pki::PkiError),
    #[error("cannot open a client socket: {0}")]
    Socket(std::io::Error),
    #[error(transparent)]
    Connect(#[from] sessionfs_pki::client::ConnectError),
    #[error(transparent)]
    Call(#[from] sessionfs_pki::client::CallError),
    #[error("daemon answered the ping with an error: {0}")]
    Refused(sessionfs_proto::ErrorReply),
    #[error("daemon answered the ping with {0:?}")]
    Unexpected(Box<Reply>),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Pings the daemon of `session_id` at `addr`; returns the round-trip time of the whole probe.
pub async fn probe(
    addr: SocketAddr,
    session_id: &str,
    cert_dir: &Path,
    timeout: Duration,
) -> Result<Duration, HealthError> {
    let start = Instant::now();
    let identity = sessionfs_pki::Identity::load(cert_dir, sessionfs_pki::SESSION_FILES.stem)?;
    let roots = sessionfs_pki::load_ca_roots(&cert_dir.join(sessionfs_pki::CA_FILES.cert))?;
    let config =
        sessionfs_pki::client_config(identity, roots, &sessionfs_pki::TransportTuning::default())?;
    let bind: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let mut endpoint = sessionfs_pki::endpoint(bind, None).map_err(HealthError::Socket)?;
    endpoint.set_default_client_config(config);
    let attempt = async {
        let conn = sessionfs_pki::client::connect(&endpoint, addr, session_id).await?;
        let frame = RequestFrame {
            caller: Caller::default(),
            request: Request::Ping,
        };
        let reply = sessionfs_pki::client::call(&conn, &frame).await?;
        conn.close(0u32.into(), b"probe done");
        match reply {
            Ok(Reply::Pong) => Ok(()),
            Ok(other) => Err(HealthError::Unexpected(Box::new(other))),
            Err(e) => Err(HealthError::Refused(e)),
        }
    };
    let result = tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| HealthError::Timeout(timeout));
    endpoint.close(0u32.into(), b"probe done");
    result??;
    Ok(start.elapsed())
}
