//! The registry in etcd, against a real etcd server (Debian's `etcd-server`, installed by
//! `scripts/install-deps.sh`) started for each test on free loopback ports in a temporary
//! directory. Never skipped: without `etcd` on the PATH these tests fail.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use sessionfs_registry::{
    Backend, EtcdRegistry, RegistryError, SessionId, SessionRecord, SessionState, ETCD_PREFIX,
};

/// A private etcd server, killed when dropped.
struct Etcd {
    child: Child,
    client_url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Etcd {
    fn start() -> Etcd {
        let dir = tempfile::tempdir().expect("a data directory");
        let (client, peer) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("test={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (scripts/install-deps.sh installs etcd-server)");
        Etcd {
            child,
            client_url,
            _dir: dir,
        }
    }

    /// A registry on this server, once it answers (bounded).
    fn registry(&self) -> EtcdRegistry {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let location = sessionfs_registry::EtcdLocation {
                endpoints: vec![self.client_url.clone()],
                tls: None,
            };
            match EtcdRegistry::connect(&location, ETCD_PREFIX) {
                Ok(r) => return r,
                // The poll interval of a bounded wait for the server to listen.
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("etcd did not come up: {e}"),
            }
        }
    }
}

fn id(s: &str) -> SessionId {
    s.parse().expect("an id")
}

fn record(name: &str) -> SessionRecord {
    let mut r = SessionRecord::new(
        id(name),
        Backend::Local,
        format!("{name}.session.sessionfs"),
    );
    r.state = SessionState::Running;
    r.endpoint = Some("127.0.0.1:7878".parse().expect("an address"));
    r.labels.insert("owner".into(), "1000:1000".into());
    r
}

#[test]
fn records_round_trip_and_errors_name_the_session() {
    let etcd = Etcd::start();
    let reg = etcd.registry();
    let a = record("alpha");
    reg.register(&a).unwrap();
    assert_eq!(reg.get(&id("alpha")).unwrap(), Some(a.clone()));
    assert!(matches!(reg.register(&a), Err(RegistryError::AlreadyExists(i)) if i == id("alpha")));
    reg.register(&record("beta")).unwrap();
    let ids: Vec<String> = reg
        .list()
        .unwrap()
        .into_iter()
        .map(|r| r.id.into_string())
        .collect();
    assert_eq!(ids, ["alpha", "beta"]);
    let before = reg.generation().unwrap();
    let changed = reg
        .modify(&id("alpha"), |r| r.state = SessionState::Stopped)
        .unwrap();
    assert_eq!(changed.state, SessionState::Stopped);
    assert!(reg.generation().unwrap() > before);
    assert_eq!(reg.remove(&id("beta")).unwrap().id, id("beta"));
    assert!(matches!(
        reg.remove(&id("beta")),
        Err(RegistryError::NotFound(_))
    ));
    assert!(matches!(
        reg.modify(&id("beta"), |_| {}),
        Err(RegistryError::NotFound(_))
    ));
    assert_eq!(reg.get(&id("beta")).unwrap(), None);
}

/// Two hosts registering one id at the same moment: exactly one wins, the other is told clearly.
#[test]
fn concurrent_registers_of_one_id_have_one_winner() {
    let etcd = Etcd::start();
    let regs: Vec<Arc<EtcdRegistry>> = (0..8).map(|_| Arc::new(etcd.registry())).collect();
    for round in 0..20 {
        let name = format!("race{round}");
        let barrier = Arc::new(Barrier::new(regs.len()));
        let outcomes: Vec<Result<(), RegistryError>> = regs
            .iter()
            .map(|reg| {
                let (reg, barrier, name) = (reg.clone(), barrier.clone(), name.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    reg.register(&record(&name))
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().expect("a thread"))
            .collect();
        let won = outcomes.iter().filter(|o| o.is_ok()).count();
        let lost = outcomes
            .iter()
            .filter(|o| matches!(o, Err(RegistryError::AlreadyExists(_))))
            .count();
        assert_eq!(
            (won, lost),
            (1, regs.len() - 1),
            "round {round}: {outcomes:?}"
        );
    }
}

/// Writers on several connections modifying one record at once lose no update.
#[test]
fn concurrent_modifies_lose_no_update() {
    let etcd = Etcd::start();
    let first = etcd.registry();
    first.register(&record("counter")).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let reg = etcd.registry();
            std::thread::spawn(move || {
                for _ in 0..25 {
                    reg.modify(&id("counter"), |r| {
                        let n: u64 = r.labels.get("n").and_then(|v| v.parse().ok()).unwrap_or(0);
                        r.labels.insert("n".into(), (n + 1).to_string());
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let n = first.get(&id("counter")).unwrap().unwrap().labels["n"].clone();
    assert_eq!(n, "100");
}

/// The watch reports the list at once and after every change made through another connection,
/// from etcd's watch (no polling interval to wait for), and stops when its handle is dropped.
#[test]
fn the_watch_follows_other_writers_without_polling() {
    let etcd = Etcd::start();
    let writer = etcd.registry();
    writer.register(&record("first")).unwrap();
    let reader = etcd.registry();
    let (tx, rx) = mpsc::channel();
    let handle = reader
        .watch(move |list| {
            let _ = tx.send(
                list.into_iter()
                    .map(|r| r.id.into_string())
                    .collect::<Vec<_>>(),
            );
        })
        .unwrap();
    let next = || rx.recv_timeout(Duration::from_secs(10)).expect("a report");
    assert_eq!(next(), ["first"]);
    writer.register(&record("second")).unwrap();
    assert_eq!(next(), ["first", "second"]);
    writer.remove(&id("first")).unwrap();
    assert_eq!(next(), ["second"]);
    drop(handle);
    assert!(matches!(
        rx.recv_timeout(Duration::from_secs(10)),
        Err(mpsc::RecvTimeoutError::Disconnected)
    ));
}

/// A registry whose etcd is gone answers every call with a clear error within the call timeout,
/// never waiting longer.
#[test]
fn a_dead_etcd_fails_calls_within_the_timeout() {
    let etcd = Etcd::start();
    let reg = etcd.registry();
    reg.register(&record("alive")).unwrap();
    drop(etcd);
    let started = Instant::now();
    let err = reg.get(&id("alive")).unwrap_err();
    assert!(
        matches!(err, RegistryError::Etcd(_) | RegistryError::Unavailable(_)),
        "{err}"
    );
    assert!(started.elapsed() < sessionfs_registry::ETCD_CALL_TIMEOUT + Duration::from_secs(2));
}

/// A registry dropped on a runtime's thread (the bridge drops its last handle there at unmount)
/// does not panic: its own runtime shuts down in the background.
#[test]
fn a_registry_dropped_on_a_runtime_thread_does_not_panic() {
    let etcd = Etcd::start();
    let reg = etcd.registry();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        assert!(reg.list().unwrap().is_empty());
        drop(reg);
    });
}

/// Hosts: the installation is made once (a second `init` is told who made it), host names are
/// taken once, and a host is live exactly while a process keeps its lease: revoked behind the
/// keeper's back (as when etcd lost it), the lease is granted again; dropped, the host stops being
/// live at once. Removing a host returns its record and keeps nothing of it.
#[test]
fn hosts_are_live_while_kept_and_a_lapsed_lease_is_granted_again() {
    use sessionfs_registry::{HostRecord, Installation, LIVENESS_TTL};
    let etcd = Etcd::start();
    let r = etcd.registry();
    let installation = Installation {
        root_ca_pem: "root".into(),
        created_by: "a".into(),
        created_at: 1,
    };
    r.init_installation(&installation, &HostRecord::new("a", "a-ca".into(), true))
        .unwrap();
    match r.init_installation(&installation, &HostRecord::new("x", "x-ca".into(), true)) {
        Err(RegistryError::AlreadyInitialized(by)) => assert!(by.contains("`a`"), "{by}"),
        other => panic!("a second init: {other:?}"),
    }
    assert_eq!(r.installation().unwrap(), Some(installation));
    r.add_host(&HostRecord::new("b", "b-ca".into(), false))
        .unwrap();
    assert!(matches!(
        r.add_host(&HostRecord::new("b", "other".into(), false)),
        Err(RegistryError::HostExists(name)) if name == "b"
    ));
    let names = |r: &EtcdRegistry| -> Vec<String> {
        r.hosts().unwrap().into_iter().map(|h| h.name).collect()
    };
    assert_eq!(names(&r), ["a", "b"]);
    assert!(r.live_hosts().unwrap().is_empty());

    let live = r.keep_alive("a").unwrap();
    assert_eq!(
        r.live_hosts().unwrap().into_iter().collect::<Vec<_>>(),
        ["a"]
    );
    // Revoke every lease from another client: the key goes with it, and the keeper grants anew.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = etcd_client::Client::connect([etcd.client_url.as_str()], None)
            .await
            .unwrap();
        for lease in client.leases().await.unwrap().leases() {
            client.lease_revoke(lease.id()).await.unwrap();
        }
    });
    assert!(r.live_hosts().unwrap().is_empty());
    let deadline = Instant::now() + 2 * LIVENESS_TTL;
    while !r.live_hosts().unwrap().contains("a") {
        assert!(
            Instant::now() < deadline,
            "the lapsed lease was not granted again"
        );
        // The poll interval of a bounded wait for the keeper's next round.
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(live);
    assert!(r.live_hosts().unwrap().is_empty());

    let modified = r.modify_host("b", |h| h.advertise = Some("10.0.0.2".parse().unwrap()));
    assert_eq!(
        modified.unwrap().advertise,
        Some("10.0.0.2".parse().unwrap())
    );
    // Removal revokes the host's certificate in the same transaction, and is followed.
    let (tx, rx) = std::sync::mpsc::channel();
    let _watch = r
        .watch_revocations(move |list| tx.send(list).unwrap())
        .unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), []);
    let fingerprint = |pem: &str| Ok(format!("fp-of-{pem}"));
    let (removed, revocation) = r.remove_host("b", fingerprint).unwrap();
    assert_eq!(removed.ca_pem, "b-ca");
    assert_eq!(
        (revocation.fingerprint.as_str(), revocation.host.as_str()),
        ("fp-of-b-ca", "b")
    );
    assert_eq!(r.revocations().unwrap(), std::slice::from_ref(&revocation));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        [revocation]
    );
    assert!(matches!(
        r.remove_host("b", fingerprint),
        Err(RegistryError::NoHost(_))
    ));
    assert_eq!(names(&r), ["a"]);
    // A certificate that cannot be read is not silently left trusted: nothing is removed.
    let unreadable = r.remove_host("a", |_| Err("not PEM".to_owned()));
    assert!(
        matches!(&unreadable, Err(RegistryError::Corrupt { reason, .. }) if reason.contains("not PEM")),
        "{unreadable:?}"
    );
    assert_eq!(names(&r), ["a"]);
}

/// A write fenced by the revision it read: the first of two writers that read the same revision
/// wins, the second is told so (and writes nothing); the winner's new revision fences the next.
#[test]
fn writes_fenced_by_a_revision_have_one_winner() {
    let etcd = Etcd::start();
    let r = etcd.registry();
    r.register(&record("m")).unwrap();
    let (rec, seen) = r.fetch(&id("m")).unwrap().unwrap();
    let mut first = rec.clone();
    first.labels.insert("to".into(), "b".into());
    let mut second = rec;
    second.labels.insert("to".into(), "c".into());
    let won = r
        .put_if(&first, seen)
        .unwrap()
        .expect("the first writer wins");
    assert!(won > seen);
    assert_eq!(r.put_if(&second, seen).unwrap(), None);
    assert_eq!(r.get(&id("m")).unwrap().unwrap().labels["to"], "b");
    second.labels.insert("to".into(), "c".into());
    assert!(r.put_if(&second, won).unwrap().is_some());
}

/// `etcds://`: the registry over TLS to an etcd that authenticates its clients
/// (`--client-cert-auth`): with the CA and a client certificate it works; without the client
/// certificate, or trusting another CA, it is refused within the call timeout, with a clear error.
#[test]
fn the_registry_speaks_tls_to_an_etcd_that_checks_its_clients() {
    use sessionfs_registry::{Location, Registry};
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let write = |name: &str, text: String| std::fs::write(path(name), text).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    write("ca.pem", ca.pem());
    let issue = |name: &str, san: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![san.to_owned()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        write(&format!("{name}.pem"), cert.pem());
        write(&format!("{name}.key"), key.serialize_pem());
    };
    issue("server", "127.0.0.1");
    issue("client", "sessionfs");
    let other_key = rcgen::KeyPair::generate().unwrap();
    let mut other = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    other.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    write("other-ca.pem", other.self_signed(&other_key).unwrap().pem());

    let (client, peer) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let p = |name: &str| path(name).display().to_string();
    let mut child = Command::new("etcd")
        .args(["--name", "tls", "--data-dir"])
        .arg(path("data"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("tls={peer_url}")])
        .args([
            "--cert-file",
            &p("server.pem"),
            "--key-file",
            &p("server.key"),
        ])
        .args(["--client-cert-auth", "--trusted-ca-file", &p("ca.pem")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd");
    let location = |query: String| -> Location {
        format!("etcds://127.0.0.1:{client}?{query}")
            .parse()
            .unwrap()
    };
    let good = location(format!(
        "ca={}&cert={}&key={}",
        p("ca.pem"),
        p("client.pem"),
        p("client.key")
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    let registry = loop {
        match Registry::connect(&good) {
            Ok(r) => break r,
            // The poll interval of a bounded wait for the server to listen.
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("etcds:// did not connect: {e}"),
        }
    };
    registry.register(&record("tls")).unwrap();
    assert_eq!(registry.get(&id("tls")).unwrap().unwrap().id, id("tls"));
    for (bad, why) in [
        (
            location(format!("ca={}", p("ca.pem"))),
            "no client certificate",
        ),
        (
            location(format!(
                "ca={}&cert={}&key={}",
                p("other-ca.pem"),
                p("client.pem"),
                p("client.key")
            )),
            "another CA",
        ),
    ] {
        let started = Instant::now();
        let err = Registry::connect(&bad)
            .err()
            .unwrap_or_else(|| panic!("{why}: connected"));
        assert!(
            started.elapsed() < Duration::from_secs(12),
            "{why}: {:?}",
            started.elapsed()
        );
        assert!(!err.to_string().is_empty(), "{why}");
    }
    let missing = location("ca=/nonexistent/ca.pem".into());
    let err = Registry::connect(&missing).err().unwrap().to_string();
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    let _ = child.kill();
    let _ = child.wait();
}
