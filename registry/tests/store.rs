//! Integration tests for the SQLite registry ([`SqliteRegistry`], `Registry` here): round trips, multi-process style
//! concurrency (one `Registry` per thread), watch, and corrupt rows.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use sessionfs_registry::{
    Backend, RegistryError, SessionId, SessionRecord, SessionState, SqliteRegistry as Registry,
};

fn db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/registry.db");
    (dir, path)
}

fn id(s: &str) -> SessionId {
    s.parse().unwrap()
}

fn record(name: &str) -> SessionRecord {
    SessionRecord::new(id(name), Backend::Docker, format!("{name}.sessions.local"))
}

#[test]
fn round_trip() {
    let (_dir, path) = db();
    let reg = Registry::open(&path).unwrap();
    assert_eq!(reg.path(), path);
    assert!(reg.list().unwrap().is_empty());

    let mut rec = record("beta");
    rec.labels.insert("owner".into(), "alice".into());
    rec.labels.insert("team".into(), "infra \"quoted\"".into());
    rec.endpoint = Some("[::1]:4433".parse().unwrap());
    reg.register(&rec).unwrap();
    let mut local = SessionRecord::new(id("alpha"), Backend::Local, "alpha.local".into());
    local.workspace = Some(PathBuf::from("/srv/work space"));
    local.pid = Some(4242);
    reg.register(&local).unwrap();

    assert_eq!(reg.get(&id("beta")).unwrap().as_ref(), Some(&rec));
    assert_eq!(reg.get(&id("alpha")).unwrap().as_ref(), Some(&local));
    assert_eq!(reg.get(&id("nope")).unwrap(), None);
    assert_eq!(reg.list().unwrap(), vec![local.clone(), rec.clone()]);

    let err = reg.register(&record("beta")).unwrap_err();
    assert!(matches!(&err, RegistryError::AlreadyExists(i) if i.as_str() == "beta"));
    assert_eq!(err.to_string(), "session `beta` already exists");
    assert_eq!(
        reg.get(&id("beta")).unwrap().as_ref(),
        Some(&rec),
        "duplicate left it alone"
    );

    rec.state = SessionState::Running;
    rec.endpoint = Some("10.0.0.7:9000".parse().unwrap());
    rec.labels.remove("team");
    reg.update(&rec).unwrap();
    assert_eq!(reg.get(&id("beta")).unwrap().as_ref(), Some(&rec));
    assert!(matches!(
        reg.update(&record("ghost")),
        Err(RegistryError::NotFound(_))
    ));

    let modified = reg
        .modify(&id("alpha"), |r| {
            r.state = SessionState::Unhealthy;
            r.pid = None;
            r.id = "renamed".parse().unwrap();
        })
        .unwrap();
    assert_eq!(modified.id, id("alpha"), "modify cannot rename");
    assert_eq!(modified.state, SessionState::Unhealthy);
    assert_eq!(reg.get(&id("alpha")).unwrap(), Some(modified.clone()));
    assert!(matches!(
        reg.modify(&id("ghost"), |_| {}),
        Err(RegistryError::NotFound(_))
    ));

    assert_eq!(reg.remove(&id("alpha")).unwrap(), modified);
    let err = reg.remove(&id("alpha")).unwrap_err();
    assert_eq!(err.to_string(), "no session `alpha`");
    assert_eq!(reg.list().unwrap(), vec![rec.clone()]);

    // Survives reopening.
    drop(reg);
    assert_eq!(Registry::open(&path).unwrap().list().unwrap(), vec![rec]);
}

#[test]
fn generation_seen_from_other_connection() {
    let (_dir, path) = db();
    let a = Registry::open(&path).unwrap();
    let b = Registry::open(&path).unwrap();
    let g0 = b.generation().unwrap();
    a.register(&record("s1")).unwrap();
    let g1 = b.generation().unwrap();
    assert_ne!(g0, g1);
    a.modify(&id("s1"), |r| r.state = SessionState::Stopped)
        .unwrap();
    let g2 = b.generation().unwrap();
    assert_ne!(g1, g2);
    // Failed writes do not change it.
    assert!(a.register(&record("s1")).is_err());
    assert!(a.remove(&id("zz")).is_err());
    assert_eq!(b.generation().unwrap(), g2);
    a.remove(&id("s1")).unwrap();
    assert_ne!(b.generation().unwrap(), g2);
}

fn spawn_all<F>(path: &Path, n: usize, f: F)
where
    F: Fn(usize, Registry) + Send + Sync + 'static,
{
    let f = Arc::new(f);
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (f, barrier, path) = (f.clone(), barrier.clone(), path.to_owned());
            thread::spawn(move || {
                barrier.wait();
                f(i, Registry::open(&path).unwrap());
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn concurrent_modify_loses_no_update() {
    let (_dir, path) = db();
    Registry::open(&path)
        .unwrap()
        .register(&record("counter"))
        .unwrap();
    spawn_all(&path, 8, |_, reg| {
        for _ in 0..50 {
            reg.modify(&id("counter"), |r| {
                let n: u32 = r.labels.get("count").map_or(0, |c| c.parse().unwrap());
                r.labels.insert("count".into(), (n + 1).to_string());
            })
            .unwrap();
        }
    });
    let rec = Registry::open(&path)
        .unwrap()
        .get(&id("counter"))
        .unwrap()
        .unwrap();
    assert_eq!(rec.labels["count"], "400");
}

#[test]
fn concurrent_open_and_register() {
    // Fresh file: the threads also race on schema creation and the WAL switch.
    let (_dir, path) = db();
    spawn_all(&path, 8, |i, reg| {
        for j in 0..10 {
            reg.register(&record(&format!("t{i}-s{j}"))).unwrap();
        }
    });
    let reg = Registry::open(&path).unwrap();
    let ids: Vec<String> = reg
        .list()
        .unwrap()
        .into_iter()
        .map(|r| r.id.into_string())
        .collect();
    let mut expected: Vec<String> = (0..8)
        .flat_map(|i| (0..10).map(move |j| format!("t{i}-s{j}")))
        .collect();
    expected.sort();
    assert_eq!(ids, expected);
}

#[test]
fn watch_sees_other_writers_and_stops() {
    let (_dir, path) = db();
    let writer = Registry::open(&path).unwrap();
    writer.register(&record("first")).unwrap();

    let (tx, rx) = mpsc::channel();
    let handle = Registry::watch(&path, Duration::from_millis(20), move |list| {
        let _ = tx.send(
            list.into_iter()
                .map(|r| r.id.into_string())
                .collect::<Vec<_>>(),
        );
    })
    .unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), ["first"]);

    writer.register(&record("second")).unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        ["first", "second"]
    );

    drop(handle);
    // The callback (and its sender) is gone once the handle is dropped.
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)),
        Err(mpsc::RecvTimeoutError::Disconnected)
    );
}

#[test]
fn watch_drop_is_prompt_with_long_interval() {
    let (_dir, path) = db();
    let (tx, rx) = mpsc::channel();
    let handle = Registry::watch(&path, Duration::from_secs(3600), move |list| {
        let _ = tx.send(list.len());
    })
    .unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 0);
    let start = Instant::now();
    drop(handle);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn corrupt_rows_are_errors_not_panics() {
    let (_dir, path) = db();
    let reg = Registry::open(&path).unwrap();
    reg.register(&record("good")).unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute(
        "INSERT INTO sessions (id, backend, state, endpoint, created_at, labels, cert_identity)
         VALUES ('bad', 'bogus', 'running', NULL, 0, '{}', 'x')",
        [],
    )
    .unwrap();
    let err = reg.list().unwrap_err();
    assert!(
        matches!(&err, RegistryError::Corrupt { id, reason } if id == "bad" && reason.contains("bogus")),
        "{err}"
    );
    assert!(matches!(
        reg.get(&id("bad")),
        Err(RegistryError::Corrupt { .. })
    ));
    assert!(reg.get(&id("good")).unwrap().is_some());

    for (col, value) in [
        ("endpoint", "'not-an-addr'"),
        ("labels", "'[1,2]'"),
        ("created_at", "-5"),
        ("pid", "-1"),
        ("state", "'Running'"),
    ] {
        raw.execute(
            &format!("UPDATE sessions SET backend = 'local', {col} = {value} WHERE id = 'bad'"),
            [],
        )
        .unwrap();
        let err = reg.get(&id("bad")).unwrap_err();
        assert!(matches!(err, RegistryError::Corrupt { .. }), "{col}: {err}");
        raw.execute(
            "UPDATE sessions SET endpoint = NULL, labels = '{}', created_at = 0, pid = NULL,
             state = 'running' WHERE id = 'bad'",
            [],
        )
        .unwrap();
    }
    assert!(
        reg.get(&id("bad")).unwrap().is_some(),
        "repaired row parses"
    );

    raw.execute("INSERT INTO sessions VALUES ('Bad/Id', 'local', 'running', NULL, 0, '{}', 'x', NULL, NULL)", [])
        .unwrap();
    assert!(matches!(reg.list(), Err(RegistryError::Corrupt { id, .. }) if id == "Bad/Id"));
}

#[test]
fn newer_schema_is_refused() {
    let (_dir, path) = db();
    drop(Registry::open(&path).unwrap());
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = Registry::open(&path).unwrap_err();
    assert!(
        matches!(&err, RegistryError::Schema(m) if m.contains("99")),
        "{err}"
    );
}

#[test]
fn registry_is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Registry>();
}

/// Hardening finding 12: `registry.db` was 0644, and it holds `--env` values. A new registry is
/// 0600, its journal files too, and an existing one of this user's is tightened when opened.
#[test]
fn the_registry_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let (dir, path) = db();
    let reg = Registry::open(&path).unwrap();
    reg.register(&record("a")).unwrap();
    assert_eq!(mode(&path), 0o600);
    let wal = dir.path().join(format!(
        "{}-wal",
        path.file_name().unwrap().to_str().unwrap()
    ));
    if wal.exists() {
        assert_eq!(mode(&wal), 0o600);
    }
    drop(reg);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    Registry::open(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
}

/// Hardening (faults): a registry file replaced while a long-lived reader (the mount's watch) has
/// it open used to be read no more: the reader kept the old file until it was restarted. The next
/// call now opens the new file, and the watch reports its sessions.
#[test]
fn a_replaced_registry_file_is_read_again() {
    let (_dir, path) = db();
    let reader = Registry::open(&path).unwrap();
    reader.register(&record("old")).unwrap();
    let (tx, rx) = mpsc::channel();
    let _watch = Registry::watch(&path, Duration::from_millis(20), move |list| {
        let _ = tx.send(
            list.into_iter()
                .map(|r| r.id.into_string())
                .collect::<Vec<_>>(),
        );
    })
    .unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), ["old"]);

    // A new file made elsewhere and renamed over the registry, as a restore would.
    let other = tempfile::tempdir().unwrap();
    let new_path = other.path().join("registry.db");
    {
        let replacement = Registry::open(&new_path).unwrap();
        replacement.register(&record("restored")).unwrap();
        replacement.register(&record("another")).unwrap();
    }
    std::fs::copy(&new_path, path.with_extension("tmp")).unwrap();
    std::fs::rename(path.with_extension("tmp"), &path).unwrap();

    let ids: Vec<String> = reader
        .list()
        .unwrap()
        .into_iter()
        .map(|r| r.id.into_string())
        .collect();
    assert_eq!(ids, ["another", "restored"]);
    let seen = loop {
        let list = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the watch saw the new file");
        if list != ["old"] {
            break list;
        }
    };
    assert_eq!(seen, ["another", "restored"]);
    // And it is written to, not the file that is gone.
    reader.register(&record("after")).unwrap();
    let fresh = Registry::open(&path).unwrap();
    assert!(fresh.get(&id("after")).unwrap().is_some());
}
