//! The health probe: connects to a running daemon with the session's own certificate (the
//! health-probe identity, allowed only to ping) and checks that it answers. `sessionfsd --health`
//! runs it inside the container (Docker's health check), and the command line runs it through the
//! published port while it waits for a new container; it lives here so the command line does not
//! link the daemon.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use sessionfs_proto::{Caller, Reply, Request, RequestFrame};

use crate::files::{CA_FILES, SESSION_FILES};

/// Why the probe failed.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("certificates: {0}")]
    Certificates(#[from] crate::PkiError),
    #[error("cannot open a client socket: {0}")]
    Socket(std::io::Error),
    #[error(transparent)]
    Connect(#[from] crate::client::ConnectError),
    #[error(transparent)]
    Call(#[from] crate::client::CallError),
    #[error("daemon answered the ping with an error: {0}")]
    Refused(sessionfs_proto::ErrorReply),
    #[error("daemon answered the ping with {0:?}")]
    Unexpected(Box<Reply>),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Pings the daemon of `session_id` at `addr` with the session's certificate from `cert_dir` (a
/// daemon's certificate directory, [`crate::SESSION_CERT_DIR`]); returns the round-trip time of the
/// whole probe. With `pin`, the daemon's certificate must be that one ([`crate::fingerprint`]).
pub async fn probe(
    addr: SocketAddr,
    session_id: &str,
    cert_dir: &Path,
    pin: Option<&str>,
    timeout: Duration,
) -> Result<Duration, HealthError> {
    let start = Instant::now();
    let identity = crate::Identity::load(cert_dir, SESSION_FILES.stem)?;
    // The daemon presents this same certificate: expect the name in it (a host's sessions are
    // named under their host's domain).
    let server_name = identity
        .chain
        .first()
        .and_then(|leaf| {
            webpki::EndEntityCert::try_from(leaf)
                .ok()
                .and_then(|c| c.valid_dns_names().next().map(str::to_owned))
        })
        .unwrap_or_else(|| crate::session_dns_name(session_id));
    let roots = crate::load_ca_roots(&cert_dir.join(CA_FILES.cert))?;
    let config = crate::client_config(identity, roots, &crate::TransportTuning::default())?;
    let bind: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let mut endpoint = crate::endpoint(bind, None).map_err(HealthError::Socket)?;
    endpoint.set_default_client_config(config);
    let attempt = async {
        let conn =
            crate::client::connect_as(&endpoint, addr, session_id, &server_name, pin).await?;
        let frame = RequestFrame {
            caller: Caller::default(),
            request: Request::Ping,
        };
        let reply = crate::client::call(&conn, &frame).await?;
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
