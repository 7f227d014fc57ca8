//! The SQLite file shared by every sessionfs process ([`SqliteRegistry`]) and change
//! notification by polling ([`SqliteRegistry::watch`], [`WatchHandle`]).
//!
//! Several processes open the same file at once. The database uses a rollback journal
//! (`journal_mode=DELETE`) with a 5 s busy timeout; every write is one `BEGIN IMMEDIATE`
//! transaction that also bumps the `generation` row of the `meta` table, so writers serialize
//! without losing updates and readers detect any change by comparing [`SqliteRegistry::generation`].
//! Not WAL: a write-ahead log lives beside the file for as long as any connection is open, so a
//! file replaced under open connections (a restored backup) would be read through the old file's
//! log. With a rollback journal nothing outlives a transaction, and each call notices a replaced
//! file and opens the new one. The registry is small and written rarely; readers and the writer
//! waiting on each other for a moment costs nothing here.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rusqlite::types::{FromSql, Value, ValueRef};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior};
use tracing::{debug, warn};

use crate::id::SessionId;
use crate::record::SessionRecord;

/// Schema version stored in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS sessions (
        id            TEXT PRIMARY KEY NOT NULL,
        backend       TEXT NOT NULL,
        state         TEXT NOT NULL,
        endpoint      TEXT NULL,
        created_at    INTEGER NOT NULL,
        labels        TEXT NOT NULL,
        cert_identity TEXT NOT NULL,
        workspace     TEXT NULL,
        pid           INTEGER NULL
    );
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);
    INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', 0);
";
const COLUMNS: &str =
    "id, backend, state, endpoint, created_at, labels, cert_identity, workspace, pid";
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after a failed reopen of a replaced registry file it is tried again.
const REOPEN_AGAIN: Duration = Duration::from_secs(5);
/// Lower bound for the watch poll interval, so a zero interval cannot spin.
const MIN_POLL: Duration = Duration::from_millis(10);

/// Errors from the registry store.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// `register` of an id that is already present.
    #[error("session `{0}` already exists")]
    AlreadyExists(SessionId),
    /// The id is not in the registry.
    #[error("no session `{0}`")]
    NotFound(SessionId),
    /// A stored row that does not parse.
    #[error("corrupt registry row `{id}`: {reason}")]
    Corrupt { id: String, reason: String },
    /// The file's schema is unknown (newer) or damaged.
    #[error("registry schema error: {0}")]
    Schema(String),
    /// SQLite failed.
    #[error("registry store error: {0}")]
    Store(#[from] rusqlite::Error),
    /// Creating the registry's directory failed, or the watch thread could not start.
    #[error("registry i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// etcd refused or failed a call.
    #[error("registry (etcd): {0}")]
    Etcd(String),
    /// etcd did not answer in time, or a write kept losing to other writers.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// A hosts operation on the SQLite registry, which is one host's.
    #[error(
        "hosts need a registry shared by them: give --registry etcd://HOST:PORT \
         (or set SESSIONFS_REGISTRY); this registry is one host's SQLite file"
    )]
    NeedsSharedRegistry,
    /// `host init` where an installation already is.
    #[error("this registry already holds an installation, made by {0}; join it with a bundle from `sessionfs host add` instead")]
    AlreadyInitialized(String),
    /// `host add` of a name that is taken.
    #[error("host `{0}` already exists (see `sessionfs host ls`)")]
    HostExists(String),
    /// No host of that name.
    #[error("no host `{0}` (see `sessionfs host ls`)")]
    NoHost(String),
}

/// A connection to the registry file; cheap to share between threads (`Send + Sync`). If the file
/// is replaced (a new file renamed over it, a restored backup), the next call opens the new one:
/// a long-lived reader such as the mount never keeps reading a file that is gone.
pub struct SqliteRegistry {
    conn: Mutex<Opened>,
    path: PathBuf,
}

/// The connection and the identity of the file it was opened on.
struct Opened {
    conn: Connection,
    file: Option<(u64, u64)>,
    /// A replacement that could not be opened, and when (tried again after [`REOPEN_AGAIN`]).
    refused: Option<((u64, u64), Instant)>,
}

/// The `(device, inode)` of the file at `path`, if there is one.
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// A ready connection to the registry at `path` (WAL, schema current).
fn connect(path: &Path) -> Result<Connection, RegistryError> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    use_rollback_journal(&conn)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    migrate(&mut conn, path)?;
    Ok(conn)
}

impl fmt::Debug for SqliteRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteRegistry")
            .field("path", &self.path)
            .finish()
    }
}

/// Makes `path` an empty file of mode 0600 if it does not exist, or takes group and other access
/// away from it if it is this user's.
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::metadata(path)?;
    let mine = meta.uid() == rustix::process::geteuid().as_raw();
    if mine && meta.is_file() && meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.mode() & 0o700))?;
    }
    Ok(())
}

impl SqliteRegistry {
    /// Opens (creating if needed, with parent directories) the registry at `path`. The file is
    /// private (mode 0600, made so or tightened if it is this user's): it holds sessions'
    /// environment values, which may be secrets. SQLite gives its journal files the same mode.
    pub fn open(path: &Path) -> Result<SqliteRegistry, RegistryError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        private_file(path)?;
        let file = file_identity(path);
        let conn = connect(path)?;
        debug!(path = %path.display(), "opened session registry");
        Ok(SqliteRegistry {
            conn: Mutex::new(Opened {
                conn,
                file,
                refused: None,
            }),
            path: path.to_owned(),
        })
    }

    /// The file this registry was opened on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds a new session; [`RegistryError::AlreadyExists`] if the id is taken.
    pub fn register(&self, rec: &SessionRecord) -> Result<(), RegistryError> {
        self.write(|tx| {
            let sql = format!(
                "INSERT INTO sessions ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (id) DO NOTHING"
            );
            if exec_record(tx, &sql, rec)? == 0 {
                return Err(RegistryError::AlreadyExists(rec.id.clone()));
            }
            Ok(())
        })
    }

    /// Replaces the stored record with `rec`; [`RegistryError::NotFound`] if absent.
    pub fn update(&self, rec: &SessionRecord) -> Result<(), RegistryError> {
        self.write(|tx| update_row(tx, rec))
    }

    /// Read-modify-write of one record in a single transaction; returns the new record.
    ///
    /// `f` runs while the registry's write lock is held, so it should be quick and must
    /// not call back into the registry. The id cannot be changed: changes to it are undone.
    pub fn modify<F: FnOnce(&mut SessionRecord)>(
        &self,
        id: &SessionId,
        f: F,
    ) -> Result<SessionRecord, RegistryError> {
        self.write(|tx| {
            let mut rec = fetch_one(tx, id)?.ok_or_else(|| RegistryError::NotFound(id.clone()))?;
            f(&mut rec);
            if rec.id != *id {
                warn!(id = %id, new_id = %rec.id, "modify cannot rename a session; id kept");
                rec.id = id.clone();
            }
            update_row(tx, &rec)?;
            Ok(rec)
        })
    }

    /// Deletes a session and returns its last record; [`RegistryError::NotFound`] if absent.
    pub fn remove(&self, id: &SessionId) -> Result<SessionRecord, RegistryError> {
        self.write(|tx| {
            let rec = fetch_one(tx, id)?.ok_or_else(|| RegistryError::NotFound(id.clone()))?;
            tx.execute("DELETE FROM sessions WHERE id = ?1", [id.as_str()])?;
            Ok(rec)
        })
    }

    /// The record for `id`, if any.
    pub fn get(&self, id: &SessionId) -> Result<Option<SessionRecord>, RegistryError> {
        fetch_one(&self.lock().conn, id)
    }

    /// Every session, sorted by id.
    pub fn list(&self) -> Result<Vec<SessionRecord>, RegistryError> {
        fetch_all(&self.lock().conn)
    }

    /// A counter that changes whenever any process writes to the registry.
    pub fn generation(&self) -> Result<u64, RegistryError> {
        read_generation(&self.lock().conn)
    }

    /// Follows the registry at `path` from a background thread named
    /// `sessionfs-registry-watch`, with its own connection.
    ///
    /// `on_change` gets the full list once immediately and again whenever the
    /// generation changes, checked every `poll_interval` (at least 10 ms). Store errors
    /// are logged and retried on the next tick. Dropping the handle stops the thread.
    pub fn watch<F>(
        path: &Path,
        poll_interval: Duration,
        mut on_change: F,
    ) -> Result<WatchHandle, RegistryError>
    where
        F: FnMut(Vec<SessionRecord>) + Send + 'static,
    {
        let registry = SqliteRegistry::open(path)?;
        let poll_interval = poll_interval.max(MIN_POLL);
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("sessionfs-registry-watch".into())
            .spawn(move || {
                let mut seen = None;
                let mut last_error = None;
                loop {
                    match registry.changed_since(seen) {
                        Ok(Some((generation, list))) => {
                            seen = Some(generation);
                            last_error = None;
                            on_change(list);
                        }
                        Ok(None) => last_error = None,
                        Err(e) => {
                            let msg = e.to_string();
                            if last_error.as_ref() != Some(&msg) {
                                warn!(path = %registry.path.display(), error = %msg,
                                      "registry watch failed to read the store; retrying");
                            }
                            last_error = Some(msg);
                        }
                    }
                    match stop_rx.recv_timeout(poll_interval) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                debug!(path = %registry.path.display(), "registry watch stopped");
            })?;
        Ok(WatchHandle::new(Box::new(move || drop(stop_tx)), thread))
    }

    /// The generation and full list, if the generation differs from `seen`; both read
    /// in one transaction so they are consistent.
    fn changed_since(
        &self,
        seen: Option<u64>,
    ) -> Result<Option<(u64, Vec<SessionRecord>)>, RegistryError> {
        let mut opened = self.lock();
        let tx = opened
            .conn
            .transaction_with_behavior(TransactionBehavior::Deferred)?;
        let generation = read_generation(&tx)?;
        if seen == Some(generation) {
            return Ok(None);
        }
        Ok(Some((generation, fetch_all(&tx)?)))
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction that also bumps the generation; rolls
    /// back if `f` fails.
    fn write<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let mut opened = self.lock();
        let tx = opened
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.execute(
            "UPDATE meta SET value = value + 1 WHERE key = 'generation'",
            [],
        )?;
        tx.commit()?;
        Ok(out)
    }

    /// The connection, opened again first if the file at the path is another one now.
    fn lock(&self) -> MutexGuard<'_, Opened> {
        // A panic mid-transaction rolls back when the transaction drops; the connection
        // itself stays usable.
        let mut opened = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let now = file_identity(&self.path);
        let refused_lately = opened
            .refused
            .is_some_and(|(file, at)| Some(file) == now && at.elapsed() < REOPEN_AGAIN);
        if now.is_some() && now != opened.file && !refused_lately {
            // The old connection goes first: closing it checkpoints its write-ahead log into the
            // old file and removes the log, which would otherwise be replayed into the new one.
            if let Ok(placeholder) = Connection::open_in_memory() {
                drop(std::mem::replace(&mut opened.conn, placeholder));
                match connect(&self.path) {
                    Ok(conn) => {
                        warn!(path = %self.path.display(), "the registry file was replaced; reading the new one");
                        *opened = Opened {
                            conn,
                            file: now,
                            refused: None,
                        };
                    }
                    Err(e) => {
                        // Calls fail rather than answer from the file that is gone; tried again later.
                        opened.refused = now.map(|file| (file, Instant::now()));
                        warn!(path = %self.path.display(), error = %e, "the registry file was replaced and the new one cannot be opened");
                    }
                }
            }
        }
        opened
    }
}

/// Stops the watch thread when dropped (promptly: the thread waits on a channel).
#[must_use = "the watch stops when the handle is dropped"]
pub struct WatchHandle {
    stop: Option<Box<dyn FnOnce() + Send>>,
    thread: Option<JoinHandle<()>>,
    /// What the watch needs alive until its thread ended (dropped after it).
    _keep: Option<Box<dyn Send>>,
}

impl std::fmt::Debug for WatchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHandle").finish_non_exhaustive()
    }
}

impl WatchHandle {
    /// A handle that calls `stop` and joins `thread` when dropped.
    pub(crate) fn new(stop: Box<dyn FnOnce() + Send>, thread: JoinHandle<()>) -> WatchHandle {
        WatchHandle {
            stop: Some(stop),
            thread: Some(thread),
            _keep: None,
        }
    }

    /// This handle, also keeping `keep` alive until the watch has stopped.
    pub(crate) fn keeping(mut self, keep: Box<dyn Send>) -> WatchHandle {
        self._keep = Some(keep);
        self
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
        if let Some(thread) = self.thread.take() {
            // Dropped from inside the callback: the thread exits on its own.
            if thread.thread().id() != thread::current().id() && thread.join().is_err() {
                warn!("registry watch callback panicked");
            }
        }
    }
}

/// Makes the file use a rollback journal (a registry made by an older sessionfs is in WAL mode;
/// it switches once no other connection holds it).
fn use_rollback_journal(conn: &Connection) -> Result<(), RegistryError> {
    // Leaving WAL needs the file to itself; an older process holding it keeps it in WAL for now.
    let deadline = Instant::now() + Duration::from_millis(200);
    loop {
        match conn
            .pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get::<_, String>(0))
        {
            Ok(mode) if mode.eq_ignore_ascii_case("delete") => return Ok(()),
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            Ok(_) | Err(_) if Instant::now() >= deadline => {
                warn!("the registry stays in WAL mode while another process holds it; a replaced registry file may not be noticed until then");
                return Ok(());
            }
            Ok(mode) => {
                warn!(mode, "the registry did not switch to a rollback journal");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

fn user_version(conn: &Connection) -> Result<i64, RegistryError> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), RegistryError> {
    if user_version(conn)? == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    match user_version(&tx)? {
        0 => {
            tx.execute_batch(SCHEMA)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            debug!(path = %path.display(), version = SCHEMA_VERSION, "created registry schema");
        }
        SCHEMA_VERSION => {}
        v => {
            return Err(RegistryError::Schema(format!(
                "{} has schema version {v}; this build supports version {SCHEMA_VERSION}",
                path.display()
            )))
        }
    }
    tx.commit()?;
    Ok(())
}

fn read_generation(conn: &Connection) -> Result<u64, RegistryError> {
    let value: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE key = 'generation'", [], |r| {
            r.get(0)
        })
        .optional()?;
    let value = value.ok_or_else(|| RegistryError::Schema("missing generation row".into()))?;
    u64::try_from(value).map_err(|_| RegistryError::Schema(format!("negative generation {value}")))
}

fn update_row(conn: &Connection, rec: &SessionRecord) -> Result<(), RegistryError> {
    let sql = "UPDATE sessions SET backend = ?2, state = ?3, endpoint = ?4, created_at = ?5,
               labels = ?6, cert_identity = ?7, workspace = ?8, pid = ?9 WHERE id = ?1";
    if exec_record(conn, sql, rec)? == 0 {
        return Err(RegistryError::NotFound(rec.id.clone()));
    }
    Ok(())
}

/// Executes `sql` with the record's columns bound to `?1..?9` in [`COLUMNS`] order.
fn exec_record(conn: &Connection, sql: &str, rec: &SessionRecord) -> Result<usize, RegistryError> {
    let labels = serde_json::Value::Object(
        rec.labels
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
    );
    // Non-UTF-8 paths are kept byte for byte as a BLOB.
    let workspace = rec.workspace.as_ref().map(|p| match p.to_str() {
        Some(s) => Value::Text(s.to_owned()),
        None => Value::Blob(p.as_os_str().as_bytes().to_vec()),
    });
    Ok(conn.prepare_cached(sql)?.execute(params![
        rec.id.as_str(),
        rec.backend.as_str(),
        rec.state.as_str(),
        rec.endpoint.map(|e| e.to_string()),
        i64::try_from(rec.created_at).unwrap_or(i64::MAX),
        labels.to_string(),
        rec.cert_identity,
        workspace,
        rec.pid,
    ])?)
}

fn fetch_one(conn: &Connection, id: &SessionId) -> Result<Option<SessionRecord>, RegistryError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM sessions WHERE id = ?1"))?;
    let mut rows = stmt.query([id.as_str()])?;
    rows.next()?.map(parse_row).transpose()
}

fn fetch_all(conn: &Connection) -> Result<Vec<SessionRecord>, RegistryError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM sessions ORDER BY id"))?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(parse_row(row)?);
    }
    Ok(out)
}

fn corrupt(id: &str, reason: impl Into<String>) -> RegistryError {
    RegistryError::Corrupt {
        id: id.to_owned(),
        reason: reason.into(),
    }
}

fn column<T: FromSql>(row: &Row<'_>, idx: usize, name: &str, id: &str) -> Result<T, RegistryError> {
    row.get(idx)
        .map_err(|e| corrupt(id, format!("column {name}: {e}")))
}

/// Turns a row selected with [`COLUMNS`] into a record; anything unexpected is `Corrupt`.
fn parse_row(row: &Row<'_>) -> Result<SessionRecord, RegistryError> {
    let raw = match row.get_ref(0)? {
        ValueRef::Text(b) | ValueRef::Blob(b) => String::from_utf8_lossy(b).into_owned(),
        other => format!("{other:?}"),
    };
    let id = &raw;
    let workspace = match row.get_ref(7)? {
        ValueRef::Null => None,
        ValueRef::Text(b) | ValueRef::Blob(b) => Some(PathBuf::from(OsStr::from_bytes(b))),
        other => {
            return Err(corrupt(
                id,
                format!("column workspace: {:?}", other.data_type()),
            ))
        }
    };
    let endpoint = column::<Option<String>>(row, 3, "endpoint", id)?
        .map(|s| {
            s.parse()
                .map_err(|e| corrupt(id, format!("endpoint {s:?}: {e}")))
        })
        .transpose()?;
    let created_at = column::<i64>(row, 4, "created_at", id)?;
    let labels = column::<String>(row, 5, "labels", id)?;
    Ok(SessionRecord {
        id: SessionId::new(raw.clone()).map_err(|e| corrupt(id, e.to_string()))?,
        backend: column::<String>(row, 1, "backend", id)?
            .parse()
            .map_err(|e: crate::record::UnknownVariant| corrupt(id, e.to_string()))?,
        state: column::<String>(row, 2, "state", id)?
            .parse()
            .map_err(|e: crate::record::UnknownVariant| corrupt(id, e.to_string()))?,
        endpoint,
        created_at: u64::try_from(created_at)
            .map_err(|_| corrupt(id, format!("negative created_at {created_at}")))?,
        labels: serde_json::from_str::<BTreeMap<String, String>>(&labels)
            .map_err(|e| corrupt(id, format!("labels {labels:?}: {e}")))?,
        cert_identity: column(row, 6, "cert_identity", id)?,
        workspace,
        pid: column(row, 8, "pid", id)?,
    })
}
