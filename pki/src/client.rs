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
    #[error("daemon at {addr} refused this client: {reason}")]
    Refused { addr: SocketAddr, reason: String },
    #[error("daemon at {addr} speaks protocol version {supported}, this build {PROTOCOL_VERSION}")]
    VersionMismatch { addr: SocketAddr, supported: u32 },
    #[error("daemon at {addr} serves session `{actual}`, expected `{expected}`")]
    WrongSession {
        addr: SocketAddr,
        expected: String,
        actual: String,
    },
    #[error("daemon at {addr} presents a certificate of session `{session}` other than the one the registry pins (sha256 {expected}, got {actual}): an old or stolen key, refused")]
    PinMismatch {
        addr: SocketAddr,
        session: String,
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
    connect_pinned(endpoint, addr, session_id, None).await
}

/// [`connect`], and with `pin` also checks that the daemon's certificate is that one
/// ([`crate::fingerprint`]), before anything is sent on the connection.
pub async fn connect_pinned(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    session_id: &str,
    pin: Option<&str>,
) -> Result<quinn::Connection, ConnectError> {
    connect_as(
        endpoint,
        addr,
        session_id,
        &crate::session_dns_name(session_id),
        pin,
    )
    .await
}

/// [`connect_pinned`] to a daemon whose certificate names it `server_name` (a host's session:
/// `<id>.session.<host>.hosts.sessionfs`, the record's `cert_identity`).
pub async fn connect_as(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    session_id: &str,
    server_name: &str,
    pin: Option<&str>,
) -> Result<quinn::Connection, ConnectError> {
    let connecting = endpoint
        .connect(addr, server_name)
        .map_err(|source| ConnectError::Dial { addr, source })?;
    let conn = connecting
        .await
        .map_err(|source| ConnectError::Connection { addr, source })?;
    if let Some(expected) = pin {
        let actual = peer_fingerprint(&conn).unwrap_or_default();
        if actual != expected {
            conn.close(0u32.into(), b"certificate not pinned");
            return Err(ConnectError::PinMismatch {
                addr,
                session: session_id.to_owned(),
                expected: expected.to_owned(),
                actual,
            });
        }
    }
    // A daemon that refuses this client (an unauthorized or revoked certificate) closes the
    // connection once TLS is done: say what it said rather than that a stream broke.
    let handshake = |source| match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => ConnectError::Refused {
            addr,
            reason: String::from_utf8_lossy(&close.reason).into_owned(),
        },
        _ => ConnectError::Handshake { addr, source },
    };
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

/// The pin of the certificate the peer of `conn` presented, if it presented one.
pub fn peer_fingerprint(conn: &quinn::Connection) -> Option<String> {
    crate::peer_chain(conn)?
        .first()
        .map(|c| crate::fingerprint(c.as_ref()))
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
