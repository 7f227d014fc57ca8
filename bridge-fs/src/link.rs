//! The bridge's side of one daemon connection, as a trait: QUIC with mutual TLS in production
//! ([`QuicDialer`]), an in-process daemon in the core's tests.
//!
//! A [`Link`] carries one request per call and the daemon's change stream; a [`Dialer`] makes one for
//! a session's endpoint. Timeouts are the caller's business ([`crate::session::Sessions`] bounds
//! every call), so neither waits on its own clock.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use sessionfs_pki::wire::{read_frame, write_frame};
use sessionfs_proto::{Caller, ErrorReply, Reply, Request, RequestFrame, WatchFrame};
use sessionfs_registry::SessionId;

/// A boxed future that is `Send`: what the object-safe traits here return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One live connection to a session's daemon.
pub trait Link: Send + Sync + 'static {
    /// Sends one request and waits for its reply; `Err` when the connection failed to carry it.
    fn call<'a>(
        &'a self,
        frame: &'a RequestFrame,
    ) -> BoxFuture<'a, Result<Result<Reply, ErrorReply>, String>>;

    /// Subscribes to the daemon's changes (`Request::Watch`).
    fn watch(&self) -> BoxFuture<'_, Result<Box<dyn ChangeStream>, String>>;

    /// Identifies the connection among all the bridge made (a daemon handle belongs to one).
    fn id(&self) -> usize;

    /// Why the connection ended, once it has.
    fn close_reason(&self) -> Option<String>;

    /// The daemon's address, to compare with the session's recorded endpoint.
    fn peer(&self) -> SocketAddr;

    /// Ends the connection.
    fn close(&self, why: &str);
}

/// A daemon's change stream, frame by frame.
pub trait ChangeStream: Send {
    /// The next frame; `Err` once the stream ended.
    fn next(&mut self) -> BoxFuture<'_, Result<WatchFrame, String>>;
}

/// A connection, shared by the requests and open files that use it.
pub type Conn = Arc<dyn Link>;

/// Makes connections to session daemons.
pub trait Dialer: Send + Sync + 'static {
    /// Connects to the daemon of session `id` at `addr` and checks that it serves that session, with
    /// a certificate for `name` (the record's `cert_identity`) and the one `pin` names when there
    /// is one (see [`sessionfs_pki::fingerprint`]).
    fn dial<'a>(
        &'a self,
        id: &'a SessionId,
        addr: SocketAddr,
        name: &'a str,
        pin: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Conn, String>>;

    /// Ends every connection (at unmount).
    fn close_all(&self);
}

/// Dials daemons over QUIC with the bridge's client certificate (see [`sessionfs_pki::client`]).
pub struct QuicDialer {
    /// For daemons on this machine.
    endpoint: quinn::Endpoint,
    /// For daemons on other machines ([`sessionfs_pki::wide_area`]).
    wide_area: quinn::Endpoint,
}

impl QuicDialer {
    /// Client endpoints on dual-stack sockets (IPv4 where IPv6 is missing): one using `client`
    /// for this machine's daemons, one using `wide_area` for other machines'.
    pub fn new(
        client: quinn::ClientConfig,
        wide_area: quinn::ClientConfig,
    ) -> std::io::Result<Self> {
        Ok(QuicDialer {
            endpoint: sessionfs_pki::client_endpoint(client)?,
            wide_area: sessionfs_pki::client_endpoint(wide_area)?,
        })
    }
}

impl Dialer for QuicDialer {
    fn dial<'a>(
        &'a self,
        id: &'a SessionId,
        addr: SocketAddr,
        name: &'a str,
        pin: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Conn, String>> {
        Box::pin(async move {
            let endpoint = if sessionfs_pki::wide_area(&addr) {
                &self.wide_area
            } else {
                &self.endpoint
            };
            let conn = sessionfs_pki::client::connect_as(endpoint, addr, id.as_str(), name, pin)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Arc::new(QuicLink(conn)) as Conn)
        })
    }

    fn close_all(&self) {
        self.endpoint.close(0u32.into(), b"bridge unmounting");
        self.wide_area.close(0u32.into(), b"bridge unmounting");
    }
}

/// A QUIC connection: one bidirectional stream per request.
struct QuicLink(quinn::Connection);

impl Link for QuicLink {
    fn call<'a>(
        &'a self,
        frame: &'a RequestFrame,
    ) -> BoxFuture<'a, Result<Result<Reply, ErrorReply>, String>> {
        Box::pin(async move {
            sessionfs_pki::client::call(&self.0, frame)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn watch(&self) -> BoxFuture<'_, Result<Box<dyn ChangeStream>, String>> {
        Box::pin(async move {
            let (mut send, recv) = self.0.open_bi().await.map_err(|e| e.to_string())?;
            let frame = RequestFrame {
                caller: Caller::default(),
                request: Request::Watch,
            };
            write_frame(&mut send, &frame, true)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Box::new(QuicChanges { _send: send, recv }) as Box<dyn ChangeStream>)
        })
    }

    fn id(&self) -> usize {
        self.0.stable_id()
    }

    fn close_reason(&self) -> Option<String> {
        self.0.close_reason().map(|e| e.to_string())
    }

    fn peer(&self) -> SocketAddr {
        self.0.remote_address()
    }

    fn close(&self, why: &str) {
        self.0.close(0u32.into(), why.as_bytes());
    }
}

/// The watch stream: its sending side is kept open as long as the stream is read.
struct QuicChanges {
    _send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl ChangeStream for QuicChanges {
    fn next(&mut self) -> BoxFuture<'_, Result<WatchFrame, String>> {
        Box::pin(async move { read_frame(&mut self.recv).await.map_err(|e| e.to_string()) })
    }
}
