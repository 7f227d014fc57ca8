//! QUIC endpoint configurations (TLS 1.3 only, *ring* provider, mandatory
//! mutual authentication, ALPN `sessionfs/1`, no 0-RTT) and transport tuning.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{EndpointConfig, IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, CryptoProvider};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::{Identity, PkiError, ALPN};

/// Transport tuning shared by both sides. A zero duration disables the
/// corresponding mechanism.
#[derive(Clone, Debug)]
pub struct TransportTuning {
    /// Request streams a daemon lets the bridge have open at once; more wait
    /// for one to finish. quinn keeps a receive state (with the capacity its
    /// largest request grew) for every stream it allows, so this bounds the
    /// daemon's memory after a burst of 1 MiB writes. Clients allow none: a
    /// daemon never opens streams.
    pub max_concurrent_bidi_streams: u32,
    pub keep_alive: Duration,
    pub idle_timeout: Duration,
    /// For peers on another machine ([`wide_area`]): BBR congestion control instead of Cubic.
    pub wide_area: bool,
}

/// Whether a peer at `addr` is reached over a network (not loopback): its connections use BBR, which
/// keeps its rate through the random losses of a real link, where Cubic takes each for congestion
/// (at 0.5% loss each way and a 10 ms round trip, sequential reads fell to 2 MiB/s under Cubic and
/// ran at 60 MiB/s under BBR). Loopback keeps Cubic. A container's daemon sees its own host's
/// bridge at the Docker network's gateway address, which is not loopback: it sends with BBR too.
pub fn wide_area(addr: &std::net::SocketAddr) -> bool {
    let ip = match addr.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    };
    !ip.is_loopback()
}

impl Default for TransportTuning {
    fn default() -> Self {
        Self {
            max_concurrent_bidi_streams: 128,
            keep_alive: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            wide_area: false,
        }
    }
}

/// ring with TLS 1.3's AES-128-GCM suite alone: sequential I/O is bound by CPU, and this suite costs
/// least per byte (AES-256, ring's first choice, has 14 rounds to its 10; its packet-header protection
/// too): a 1 GiB write through the mount took ~12% less daemon CPU (docs/benchmarks.md).
fn provider() -> Arc<CryptoProvider> {
    let mut provider = ring::default_provider();
    provider.cipher_suites = vec![ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    Arc::new(provider)
}

fn transport(
    tuning: &TransportTuning,
    accepts_streams: bool,
) -> Result<Arc<TransportConfig>, PkiError> {
    let mut t = TransportConfig::default();
    let bidi = if accepts_streams {
        tuning.max_concurrent_bidi_streams
    } else {
        0
    };
    t.max_concurrent_bidi_streams(VarInt::from_u32(bidi));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.keep_alive_interval((!tuning.keep_alive.is_zero()).then_some(tuning.keep_alive));
    let idle = match tuning.idle_timeout {
        d if d.is_zero() => None,
        d => Some(
            IdleTimeout::try_from(d)
                .map_err(|e| PkiError::Quic(format!("idle timeout {d:?}: {e}")))?,
        ),
    };
    t.max_idle_timeout(idle);
    if tuning.wide_area {
        t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    }
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    Ok(Arc::new(t))
}

/// Daemon-side config: presents `identity`, requires a client certificate chaining to `client_ca`.
pub fn server_config(
    identity: Identity,
    client_ca: RootCertStore,
    tuning: &TransportTuning,
) -> Result<quinn::ServerConfig, PkiError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(client_ca), provider.clone())
            .build()
            .map_err(|e| PkiError::Verifier(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain, identity.key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| PkiError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport(tuning, true)?);
    Ok(config)
}

/// Bridge-side config: presents `identity`, trusts only servers chaining to
/// `server_ca` (the server name passed to `Endpoint::connect` is verified).
pub fn client_config(
    identity: Identity,
    server_ca: RootCertStore,
    tuning: &TransportTuning,
) -> Result<quinn::ClientConfig, PkiError> {
    let provider = provider();
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(server_ca), provider.clone())
            .build()
            .map_err(|e| PkiError::Verifier(e.to_string()))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(identity.chain, identity.key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = false;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| PkiError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport(tuning, false)?);
    Ok(config)
}

/// The largest UDP payload an endpoint accepts and path MTU discovery probes
/// for. Discovery starts at QUIC's 1200-byte floor and settles at what the
/// path carries: 6,500 bytes over loopback (a 1 MiB read is ~160 packets
/// instead of ~720 at the default 1,452, which cuts the CPU per MiB by about a
/// third on both sides), ~1,450 over a container bridge. Not higher: quinn
/// sends up to 10 packets per `sendmsg` with UDP GSO, and the kernel refuses a
/// GSO batch over 64 KiB (EMSGSIZE, which quinn counts as loss, so a larger
/// bound ends in black-hole detection back at 1,200 bytes).
const MAX_UDP_PAYLOAD: u16 = 6_500;

/// Kernel socket buffers asked for (capped by `net.core.{r,w}mem_max`): room
/// for a few 1 MiB replies in flight, so a busy receiver does not drop them.
const SOCKET_BUFFER: usize = 4 << 20;

/// A client endpoint using `config`, on a dual-stack socket (IPv4 where IPv6 is missing), so it
/// dials daemons at either family's addresses.
pub fn client_endpoint(config: quinn::ClientConfig) -> std::io::Result<quinn::Endpoint> {
    let mut endpoint = endpoint((std::net::Ipv6Addr::UNSPECIFIED, 0).into(), None)
        .or_else(|_| endpoint((std::net::Ipv4Addr::UNSPECIFIED, 0).into(), None))?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// A QUIC endpoint on a UDP socket bound to `addr`, accepting datagrams up to
/// `MAX_UDP_PAYLOAD`; a server when `server` is given.
pub fn endpoint(
    addr: std::net::SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    let mut config = EndpointConfig::default();
    config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .map_err(|e| std::io::Error::other(format!("max UDP payload: {e}")))?;
    let socket = std::net::UdpSocket::bind(addr)?;
    // Best effort: a smaller buffer only costs retransmissions under load.
    if let Err(e) = rustix::net::sockopt::set_socket_recv_buffer_size(&socket, SOCKET_BUFFER)
        .and_then(|()| rustix::net::sockopt::set_socket_send_buffer_size(&socket, SOCKET_BUFFER))
    {
        tracing::debug!("socket buffers: {e}");
    }
    let runtime =
        quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime found"))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
    let wrapped = runtime.wrap_udp_socket(socket)?;
    // After wrapping: quinn-udp turns receive coalescing on when it sets the socket up.
    let socket: Arc<dyn quinn::AsyncUdpSocket> = if receive_coalescing_off(fd) {
        Arc::new(OneDatagramPerReceive(wrapped))
    } else {
        wrapped
    };
    quinn::Endpoint::new_with_abstract_socket(config, server, socket, runtime)
}

/// Turns UDP receive coalescing (`UDP_GRO`) off on `fd`; false if the socket keeps it.
fn receive_coalescing_off(fd: std::os::fd::RawFd) -> bool {
    let off: libc::c_int = 0;
    // SAFETY: `fd` is a UDP socket owned by the wrapped socket, alive for this call; the option
    // value is a c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&off as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!("UDP_GRO off: {}", std::io::Error::last_os_error());
    }
    rc == 0
}

/// A socket that receives one datagram per buffer. quinn sizes its receive buffer for the socket's
/// coalescing batch: 64 datagrams per buffer, 32 buffers, 13 MiB at [`MAX_UDP_PAYLOAD`], and a burst
/// leaves what it touched resident in an idle process (~4.7 MiB of a daemon's 14 MiB after 1 GiB of
/// writes). One datagram per buffer needs 208 KiB. Coalescing saves receive calls only where the
/// kernel coalesces: never over loopback, where sessions on this host are reached.
#[derive(Debug)]
struct OneDatagramPerReceive(Arc<dyn quinn::AsyncUdpSocket>);

impl quinn::AsyncUdpSocket for OneDatagramPerReceive {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        self.0.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> std::io::Result<()> {
        self.0.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut std::task::Context,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.0.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        1
    }

    fn may_fragment(&self) -> bool {
        self.0.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_loopback_peers_are_local() {
        for local in ["127.0.0.1:1", "[::1]:1", "[::ffff:127.0.0.1]:1"] {
            assert!(!super::wide_area(&local.parse().unwrap()), "{local}");
        }
        for remote in [
            "10.0.0.2:1",
            "[::ffff:10.0.0.2]:1",
            "[2001:db8::1]:1",
            "172.17.0.2:1",
        ] {
            assert!(super::wide_area(&remote.parse().unwrap()), "{remote}");
        }
    }
}
