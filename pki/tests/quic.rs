//! End-to-end tests: certificate-name authorization and real QUIC handshakes over 127.0.0.1.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::Endpoint;
use sessionfs_pki::*;
use tokio::sync::mpsc;
use tokio::time::timeout;

struct Ca {
    _dir: tempfile::TempDir,
    ca: CertificateAuthority,
}

fn new_ca() -> Ca {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(dir.path()).unwrap();
    Ca { _dir: dir, ca }
}

fn identity(c: &IssuedCert) -> Identity {
    Identity::from_pem(&c.cert_pem, &c.key_pem).unwrap()
}

fn roots(ca: &CertificateAuthority) -> rustls::RootCertStore {
    ca_roots_from_pem(&ca.cert_pem()).unwrap()
}

fn leaf(c: &IssuedCert) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    identity(c).chain
}

#[test]
fn authorize_chain_roles() {
    let Ca { ca, .. } = new_ca();
    let bridge = ca.issue_client(BRIDGE_IDENTITY).unwrap();
    assert_eq!(
        authorize_peer_chain(&leaf(&bridge), "a").unwrap(),
        PeerRole::Bridge
    );
    let a = ca.issue_session("a").unwrap();
    assert_eq!(
        authorize_peer_chain(&leaf(&a), "a").unwrap(),
        PeerRole::HealthProbe
    );
    let b = ca.issue_session("b").unwrap();
    let err = authorize_peer_chain(&leaf(&b), "a").unwrap_err();
    assert!(
        matches!(&err, PkiError::Unauthorized { presented } if presented == "b.session.sessionfs"),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains("not valid for the bridge or this session"));
    assert!(matches!(
        authorize_peer_chain(&[], "a"),
        Err(PkiError::NoPeerCertificate)
    ));
}

type Outcomes = mpsc::UnboundedReceiver<Result<PeerRole, String>>;

/// Starts a daemon endpoint for `session` that reports every handshake outcome
/// and echoes one bidi stream on authorized connections.
fn start_daemon(
    ca: &CertificateAuthority,
    session: &'static str,
) -> (Endpoint, SocketAddr, Outcomes) {
    let id = identity(&ca.issue_session(session).unwrap());
    let cfg = server_config(id, roots(ca), &TransportTuning::default()).unwrap();
    let ep = endpoint("127.0.0.1:0".parse().unwrap(), Some(cfg)).unwrap();
    let addr = ep.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let server = ep.clone();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let conn = match incoming.await {
                    Ok(conn) => conn,
                    Err(e) => return drop(tx.send(Err(format!("handshake: {e}")))),
                };
                let role = authorize_peer(&conn, session);
                let ok = role.is_ok();
                let _ = tx.send(role.map_err(|e| e.to_string()));
                if !ok {
                    return conn.close(1u32.into(), b"unauthorized");
                }
                if let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let data = recv.read_to_end(8 << 20).await.unwrap();
                    send.write_all(&data).await.unwrap();
                    send.finish().unwrap();
                }
                conn.closed().await;
            });
        }
    });
    (ep, addr, rx)
}

fn client_endpoint(cfg: quinn::ClientConfig) -> Endpoint {
    let mut ep = endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    ep.set_default_client_config(cfg);
    ep
}

/// Connects and round-trips one bidi stream; any failure is an `Err`.
async fn round_trip(ep: &Endpoint, addr: SocketAddr, server_name: &str) -> Result<Vec<u8>, String> {
    let work = async {
        let conn = ep
            .connect(addr, server_name)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(b"ping over quic")
            .await
            .map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let data = recv.read_to_end(1 << 16).await.map_err(|e| e.to_string())?;
        conn.close(0u32.into(), b"done");
        Ok(data)
    };
    timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// Asserts the daemon refused the (single) connection attempt and authorized nothing.
async fn assert_refused_by_daemon(rx: &mut Outcomes) {
    let first = timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("daemon saw no connection");
    let first = first.expect("daemon task ended");
    assert!(
        first.is_err(),
        "daemon authorized a connection it should refuse"
    );
    while let Ok(outcome) = rx.try_recv() {
        assert!(
            outcome.is_err(),
            "daemon authorized a connection it should refuse"
        );
    }
}

#[tokio::test]
async fn bridge_connects_and_round_trips() {
    let Ca { ca, .. } = new_ca();
    let (_server, addr, mut rx) = start_daemon(&ca, "alpha");
    let bridge = identity(&ca.issue_client(BRIDGE_IDENTITY).unwrap());
    let ep =
        client_endpoint(client_config(bridge, roots(&ca), &TransportTuning::default()).unwrap());
    let echoed = round_trip(&ep, addr, &session_dns_name("alpha"))
        .await
        .unwrap();
    assert_eq!(echoed, b"ping over quic");
    assert_eq!(rx.recv().await.unwrap(), Ok(PeerRole::Bridge));
}

#[tokio::test]
async fn health_probe_with_own_cert() {
    let Ca { ca, .. } = new_ca();
    let (_server, addr, mut rx) = start_daemon(&ca, "alpha");
    let own = identity(&ca.issue_session("alpha").unwrap());
    let ep = client_endpoint(client_config(own, roots(&ca), &TransportTuning::default()).unwrap());
    round_trip(&ep, addr, &session_dns_name("alpha"))
        .await
        .unwrap();
    assert_eq!(rx.recv().await.unwrap(), Ok(PeerRole::HealthProbe));
}

#[tokio::test]
async fn other_session_cert_is_unauthorized() {
    let Ca { ca, .. } = new_ca();
    let (_server, addr, mut rx) = start_daemon(&ca, "alpha");
    let other = identity(&ca.issue_session("beta").unwrap());
    let ep =
        client_endpoint(client_config(other, roots(&ca), &TransportTuning::default()).unwrap());
    assert!(round_trip(&ep, addr, &session_dns_name("alpha"))
        .await
        .is_err());
    let outcome = rx.recv().await.unwrap().unwrap_err();
    assert!(outcome.contains("beta.session.sessionfs"), "{outcome}");
}

#[tokio::test]
async fn wrong_expected_session_is_refused() {
    let Ca { ca, .. } = new_ca();
    let (_server, addr, mut rx) = start_daemon(&ca, "alpha");
    let bridge = identity(&ca.issue_client(BRIDGE_IDENTITY).unwrap());
    let ep =
        client_endpoint(client_config(bridge, roots(&ca), &TransportTuning::default()).unwrap());
    let conn = ep.connect(addr, &session_dns_name("beta")).unwrap();
    let result = timeout(Duration::from_secs(10), conn)
        .await
        .expect("connect timed out");
    assert!(result.is_err(), "connected to alpha while expecting beta");
    assert_refused_by_daemon(&mut rx).await;
}

/// Hardening finding 10: a daemon with another certificate of the right session from the right CA
/// (the key of an earlier session of the same id) is refused when the client pins the current one.
#[tokio::test]
async fn a_daemon_with_another_certificate_of_the_session_is_refused_by_the_pin() {
    let Ca { ca, .. } = new_ca();
    let current = ca.issue_session("alpha").unwrap();
    let (_server, addr, _rx) = start_daemon(&ca, "alpha");
    let bridge = identity(&ca.issue_client(BRIDGE_IDENTITY).unwrap());
    let ep =
        client_endpoint(client_config(bridge, roots(&ca), &TransportTuning::default()).unwrap());
    // Unpinned, the old certificate passes the TLS checks: the case the pin is for.
    let conn = timeout(
        Duration::from_secs(10),
        ep.connect(addr, &session_dns_name("alpha")).unwrap(),
    )
    .await
    .expect("connect timed out")
    .expect("the TLS checks pass");
    let presented = client::peer_fingerprint(&conn).expect("a server certificate");
    assert_ne!(presented, pem_fingerprint(&current.cert_pem).unwrap());
    conn.close(0u32.into(), b"done");
    let pin = pem_fingerprint(&current.cert_pem).unwrap();
    let err = timeout(
        Duration::from_secs(10),
        client::connect_pinned(&ep, addr, "alpha", Some(&pin)),
    )
    .await
    .expect("connect timed out")
    .unwrap_err();
    assert!(
        matches!(&err, client::ConnectError::PinMismatch { expected, actual, .. }
            if *expected == pin && *actual == presented),
        "{err}"
    );
}

#[tokio::test]
async fn client_cert_from_other_ca_is_refused() {
    let Ca { ca, .. } = new_ca();
    let Ca { ca: rogue, .. } = new_ca();
    let (_server, addr, mut rx) = start_daemon(&ca, "alpha");
    let forged = identity(&rogue.issue_client(BRIDGE_IDENTITY).unwrap());
    let ep =
        client_endpoint(client_config(forged, roots(&ca), &TransportTuning::default()).unwrap());
    let err = round_trip(&ep, addr, &session_dns_name("alpha"))
        .await
        .unwrap_err();
    assert_ne!(err, "timed out");
    assert_refused_by_daemon(&mut rx).await;
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let Ca { ca, .. } = new_ca();
    let (_server, addr, mut rx) = start_daemon(&ca, "alpha");
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots(&ca))
    .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let ep = client_endpoint(quinn::ClientConfig::new(Arc::new(quic)));
    let err = round_trip(&ep, addr, &session_dns_name("alpha"))
        .await
        .unwrap_err();
    assert_ne!(err, "timed out");
    assert_refused_by_daemon(&mut rx).await;
}

/// A client endpoint presenting the bridge's certificate.
fn bridge_endpoint(ca: &CertificateAuthority) -> Endpoint {
    let bridge = identity(&ca.issue_client(BRIDGE_IDENTITY).unwrap());
    client_endpoint(client_config(bridge, roots(ca), &TransportTuning::default()).unwrap())
}

/// Connects `ep` to the daemon of session `alpha` at `addr`.
async fn connect_alpha(ep: &Endpoint, addr: SocketAddr) -> quinn::Connection {
    ep.connect(addr, &session_dns_name("alpha"))
        .unwrap()
        .await
        .unwrap()
}

/// Loopback carries large datagrams: path MTU discovery raises the packet size
/// above QUIC's conservative default, and a 4 MiB exchange each way (UDP GSO
/// batches of the discovered size) keeps it there. A bound the kernel refuses
/// in a GSO batch would read as loss and fall back to 1,200 bytes.
#[tokio::test]
async fn loopback_paths_discover_and_keep_large_datagrams() {
    let Ca { ca, .. } = new_ca();
    let (_server, addr, _rx) = start_daemon(&ca, "alpha");
    let ep = bridge_endpoint(&ca);
    let work = async {
        let conn = connect_alpha(&ep, addr).await;
        let payload: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&payload).await.unwrap();
        send.finish().unwrap();
        let echoed = recv.read_to_end(8 << 20).await.unwrap();
        assert!(echoed == payload, "the echo differs from what was sent");
        conn
    };
    let conn = timeout(Duration::from_secs(20), work)
        .await
        .expect("exchange timed out");
    let path = conn.stats().path;
    assert!(
        path.current_mtu > 1452 && path.black_holes_detected == 0,
        "loopback path stayed at small datagrams: {path:?}"
    );
}

/// Frame buffers are reused: frames of alternating sizes, large and small, on streams one after
/// another each decode exactly as sent (nothing of an earlier, larger frame leaks into a later one).
#[tokio::test]
async fn frames_of_alternating_sizes_round_trip_exactly() {
    let Ca { ca, .. } = new_ca();
    let id = identity(&ca.issue_session("alpha").unwrap());
    let server = endpoint(
        "127.0.0.1:0".parse().unwrap(),
        Some(server_config(id, roots(&ca), &TransportTuning::default()).unwrap()),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let sizes = [1 << 20, 3, 700_000, 0, 1 << 20, 17];
    let frame = |n: usize| -> Vec<u8> { (0..n).map(|i| (i * 31 % 253) as u8).collect() };
    let echo = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        for _ in sizes {
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let got: Vec<u8> = wire::read_frame(&mut recv).await.unwrap();
            wire::write_frame(&mut send, &got, true).await.unwrap();
        }
        conn.closed().await;
    });
    let ep = bridge_endpoint(&ca);
    let work = async {
        let conn = connect_alpha(&ep, addr).await;
        for n in sizes {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            wire::write_frame(&mut send, &frame(n), true).await.unwrap();
            let back: Vec<u8> = wire::read_frame(&mut recv).await.unwrap();
            assert!(
                back == frame(n),
                "a frame of {n} bytes came back as {} bytes",
                back.len()
            );
        }
        conn.close(0u32.into(), b"done");
    };
    timeout(Duration::from_secs(20), work)
        .await
        .expect("exchange timed out");
    echo.await.unwrap();
}

/// Two hosts' CAs under one root: a root kept in `dir` and host CAs issued by it, each loaded
/// back from files as a joined host has them (its own key and the root's certificate only).
fn host_ca(root: &CertificateAuthority, host: &str) -> (tempfile::TempDir, CertificateAuthority) {
    let dir = tempfile::tempdir().unwrap();
    let issued = root.issue_host_ca(host).unwrap();
    issued.write(dir.path(), HOST_CA_STEM).unwrap();
    std::fs::write(dir.path().join(CA_FILES.cert), root.cert_pem()).unwrap();
    let ca = CertificateAuthority::load_host(dir.path(), host).unwrap();
    (dir, ca)
}

/// Several hosts: host b's bridge reaches host a's session through real QUIC, both trusting only
/// the root; host a's session is named under a's domain, so a certificate for it made by host b's
/// CA is refused by the TLS layer (name constraints), as is one made by a host CA the root did not
/// sign; host b cannot add hosts.
#[tokio::test]
async fn host_cas_issue_only_their_own_names() {
    let Ca { ca: root, .. } = new_ca();
    let (_a_dir, a) = host_ca(&root, "host-a");
    let (_b_dir, b) = host_ca(&root, "host-b");
    assert_eq!(a.session_name("s"), "s.session.host-a.hosts.sessionfs");
    assert_eq!(b.bridge_name(), "bridge.host-b.hosts.sessionfs");
    let (_server, addr, mut rx) = start_daemon(&a, "s");
    let bridge = identity(&b.issue_bridge().unwrap());
    let ep =
        client_endpoint(client_config(bridge, roots(&root), &TransportTuning::default()).unwrap());
    let echoed = round_trip(&ep, addr, &a.session_name("s")).await.unwrap();
    assert_eq!(echoed, b"ping over quic");
    assert_eq!(rx.recv().await.unwrap(), Ok(PeerRole::Bridge));
    // The session's own certificate is its health probe, under a host CA too.
    let own = identity(&a.issue_session("s").unwrap());
    let ep =
        client_endpoint(client_config(own, roots(&root), &TransportTuning::default()).unwrap());
    round_trip(&ep, addr, &a.session_name("s")).await.unwrap();
    assert_eq!(rx.recv().await.unwrap(), Ok(PeerRole::HealthProbe));

    // Host b's CA making a certificate in host a's domain: refused by every verifier.
    let forged = b.issue_client(&a.session_name("t")).unwrap();
    let err = verify_client(&root, &forged).unwrap_err();
    assert!(err.contains("NameConstraint"), "{err}");
    // The same name from host a's own CA verifies.
    let genuine = a.issue_client(&a.session_name("t")).unwrap();
    verify_client(&root, &genuine).unwrap();

    // A host CA from another root does not load against this root.
    let Ca { ca: other_root, .. } = new_ca();
    let dir = tempfile::tempdir().unwrap();
    other_root
        .issue_host_ca("host-a")
        .unwrap()
        .write(dir.path(), HOST_CA_STEM)
        .unwrap();
    std::fs::write(dir.path().join(CA_FILES.cert), root.cert_pem()).unwrap();
    let err = CertificateAuthority::load_host(dir.path(), "host-a")
        .err()
        .unwrap();
    assert!(err.to_string().contains("not signed by"), "{err}");
    // Loaded under another host's name, a host CA is refused too.
    let err = CertificateAuthority::load_host(_a_dir.path(), "host-b")
        .err()
        .unwrap();
    assert!(err.to_string().contains("host `host-b`"), "{err}");

    // Only the root adds hosts, and only names of one label.
    assert!(b.issue_host_ca("host-c").is_err());
    assert!(root.issue_host_ca("session.host-a").is_err());
    // A root-issued certificate is not the host CA's own: due to be issued again by it.
    assert!(a.due_for_renewal(&root.issue_session("s").unwrap().cert_pem));
    assert!(!a.due_for_renewal(&a.issue_session("s").unwrap().cert_pem));
}

/// Verifies `cert` as a client certificate, trusting only `root` (name constraints are checked
/// on every path, whatever the usage).
fn verify_client(root: &CertificateAuthority, cert: &IssuedCert) -> Result<(), String> {
    let chain = leaf(cert);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(root)),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    verifier
        .verify_client_cert(&chain[0], &chain[1..], rustls_pki_types::UnixTime::now())
        .map(drop)
        .map_err(|e| format!("{e:?}"))
}
