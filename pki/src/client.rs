//! The client side of a session connection: dial, verify, handshake, and one request per stream.
//!
//! Used by the bridge for file system traffic and by the health probe ([`crate::health`]). Timeouts are
//! the caller's business: these futures are meant to be wrapped in `tokio::time::timeout`.

use std::net::SocketAddr;

use sessionfs_proto::{
    ErrorReply, Hello, HelloReply, Reply, RequestFrame, ResponseFrame, PROTOCOL_VERSION,
};

use crate::wire::{read_last_frame, write_frame, WireError};

/// Why a connection to a session daemon could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot dial {addr}: {source}")]
    Dial {
        addr: SocketAddr,
        source: quinn::ConnectError,
    },
    #[error("connection to {addr} failed: {source}")]
    Connection {
        addr: SocketAddr,
        source: quinn::ConnectionError,
    },
    #[error("handshake with {addr} failed: {source}")]
    Handshake { addr: SocketAddr, source: WireError },
    #[error("daemon at {addr} speaks protocol version {supported}, this build {PROTOCOL_VERSION}")]
    VersionMismatch { addr: SocketAddr, supported: u32 },
    #[error("daemon at {addr} serves session `{actual}`, expected `{expected}`")]
    WrongSession {
        addr: SocketAddr,
        expected: String,
        actual: String,
    },
}

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// Dials the daemon of `session_id` at `addr`, verifies that its certificate names that session (the
/// TLS layer checks the DNS name [`crate::session_dns_name`]), and runs the protocol handshake.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    session_id: &str,
) -> Result<quinn::Connection, ConnectError> {
    let server_name = crate::session_dns_name(session_id);
    let connecting = endpoint
        .connect(addr, &server_name)
        .map_err(|source| ConnectError::Dial { addr, source })?;
    let conn = connecting
        .await
        .map_err(|source| ConnectError::Connection { addr, source })?;
    let handshake = |source| ConnectError::Handshake { addr, source };
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|source| ConnectError::Connection { addr, source })?;
    write_frame(&mut send, &Hello::current(), true)
        .await
        .map_err(handshake)?;
    match read_last_frame::<HelloReply>(&mut recv)
        .await
        .map_err(handshake)?
    {
        HelloReply::Welcome {
            session_id: actual, ..
        } if actual != session_id => {
            conn.close(0u32.into(), b"wrong session");
            Err(ConnectError::WrongSession {
                addr,
                expected: session_id.to_owned(),
                actual,
            })
        }
        HelloReply::Welcome { .. } => Ok(conn),
        HelloReply::VersionMismatch { supported } => {
            conn.close(0u32.into(), b"version mismatch");
            Err(ConnectError::VersionMismatch { addr, supported })
        }
    }
}

/// Sends one request on a new stream and waits for its reply.
pub async fn call(
    conn: &quinn::Connection,
    frame: &RequestFrame,
) -> Result<Result<Reply, ErrorReply>, CallError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(&mut send, frame, true).await?;
    let ResponseFrame(result) = read_last_frame(&mut recv).await?;
    Ok(result)
}
