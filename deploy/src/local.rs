//! The local backend: running a session's `sessionfsd` as a detached process on this
//! machine ([`start`]), telling whether it still runs ([`is_running`]) and stopping it
//! ([`stop`]) without ever signalling a process that is not that daemon.
//!
//! The daemon runs in its own session (so a Ctrl-C in the terminal of the `sessionfs`
//! command that started it does not reach it), with its stderr appended to
//! `sessions/<id>/daemon.log`. It announces the bound address with exactly one stdout line,
//! `listening on <addr>`, which [`start`] waits for.

use crate::file_error::io_error;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal};
use sessionfs_registry::{Backend, SessionId, SessionRecord, SessionState, OWNER_LABEL};
use tracing::{debug, info, warn};

use crate::state::{private_dir, Home, StateError};

/// Environment variable naming the `sessionfsd` binary to run.
pub const DAEMON_ENV: &str = "SESSIONFS_DAEMON";
/// The daemon's program name (also the `argv[0]` it is started with).
pub const DAEMON_NAME: &str = "sessionfsd";
/// How long [`start`] waits for the daemon's `listening on` line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`stop`] waits after SIGTERM (and again after SIGKILL).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a daemon whose stdout closed during startup gets to finish exiting.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// How many lines of `daemon.log` a startup error quotes.
const LOG_TAIL_LINES: usize = 20;
/// How many trailing bytes of `daemon.log` are searched for those lines.
const LOG_TAIL_BYTES: u64 = 16 * 1024;

/// Errors of the local backend.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// No daemon binary was found.
    #[error("cannot find the {DAEMON_NAME} binary ({looked}); set {DAEMON_ENV} to its path")]
    DaemonNotFound {
        /// Where it was looked for, in words.
        looked: String,
    },
    /// The record names no workspace directory.
    #[error("session `{0}` has no workspace directory in the registry")]
    NoWorkspace(SessionId),
    /// The workspace directory is gone.
    #[error("workspace {} of session `{id}` is not an existing directory", path.display())]
    WorkspaceMissing {
        /// The session.
        id: SessionId,
        /// Its workspace.
        path: PathBuf,
    },
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] crate::file_error::FileError),
    /// The daemon could not be spawned.
    #[error("cannot run {}: {source}", program.display())]
    Spawn {
        /// The daemon binary.
        program: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The daemon started but did not come up.
    #[error("{DAEMON_NAME} for session `{id}` failed to start: {reason}{log}")]
    Startup {
        /// The session.
        id: SessionId,
        /// What went wrong.
        reason: String,
        /// The last lines of `daemon.log` written by this attempt, formatted for display.
        log: String,
    },
    /// Watching or signalling the daemon failed.
    #[error("cannot {action} {DAEMON_NAME} (pid {pid}) of session `{id}`: {source}")]
    Process {
        /// What was attempted.
        action: &'static str,
        /// The session.
        id: SessionId,
        /// The daemon's process id.
        pid: u32,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Preparing the session's state directory failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The daemon survived SIGKILL for [`STOP_TIMEOUT`].
    #[error(
        "{DAEMON_NAME} (pid {pid}) of session `{id}` is still running {}s after SIGKILL",
        STOP_TIMEOUT.as_secs()
    )]
    StillRunning {
        /// The session.
        id: SessionId,
        /// The daemon's process id.
        pid: u32,
    },
}

/// How [`stop`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// No daemon of this session was running.
    NotRunning,
    /// The daemon exited after SIGTERM.
    Terminated,
    /// The daemon ignored SIGTERM for [`STOP_TIMEOUT`] and was killed.
    Killed,
}

/// Finds the daemon binary: `$SESSIONFS_DAEMON` if set, else `sessionfsd` next to the
/// running executable (or one directory up, for test binaries in `target/*/deps`), else
/// `sessionfsd` on `$PATH`.
pub fn find_daemon() -> Result<PathBuf, LocalError> {
    locate_daemon(
        std::env::var_os(DAEMON_ENV),
        std::env::current_exe().ok(),
        std::env::var_os("PATH"),
    )
}

/// [`find_daemon`] with its inputs passed in.
pub fn locate_daemon(
    env: Option<OsString>,
    current_exe: Option<PathBuf>,
    path_var: Option<OsString>,
) -> Result<PathBuf, LocalError> {
    if let Some(explicit) = env.filter(|v| !v.is_empty()) {
        let explicit = PathBuf::from(explicit);
        return if is_executable(&explicit) {
            Ok(explicit)
        } else {
            Err(LocalError::DaemonNotFound {
                looked: format!(
                    "{DAEMON_ENV}={} is not an executable file",
                    explicit.display()
                ),
            })
        };
    }
    let mut looked = Vec::new();
    if let Some(dir) = current_exe.as_deref().and_then(Path::parent) {
        let mut dirs = vec![dir];
        if dir.file_name() == Some(OsStr::new("deps")) {
            dirs.extend(dir.parent());
        }
        for dir in dirs {
            let candidate = dir.join(DAEMON_NAME);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
            looked.push(candidate.display().to_string());
        }
    }
    if let Some(found) = search_path(DAEMON_NAME, path_var.as_deref()) {
        return Ok(found);
    }
    looked.push(format!("{DAEMON_NAME} on $PATH"));
    Err(LocalError::DaemonNotFound {
        looked: format!("{DAEMON_ENV} is not set; looked at {}", looked.join(", ")),
    })
}

/// The first executable `name` in the directories of `path_var` (a `$PATH` value).
pub fn search_path(name: &str, path_var: Option<&OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path_var?)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether UDP `port` on `ip` can be bound right now.
fn udp_port_free(ip: std::net::IpAddr, port: u16) -> bool {
    UdpSocket::bind((ip, port)).is_ok()
}

/// The address in the daemon's `listening on <addr>` line.
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    line.trim_end_matches(['\n', '\r'])
        .strip_prefix("listening on ")?
        .parse()
        .ok()
}

/// Starts the daemon of the local session `record` and returns the record updated with
/// its endpoint and pid, in state [`SessionState::Running`].
///
/// It listens on `127.0.0.1` (on a host of several: the host's advertised address), on the port
/// of the record's previous endpoint if that port is free, else on a port the kernel picks. The daemon is not waited for: it outlives
/// the calling process.
pub fn start(home: &Home, record: &SessionRecord) -> Result<SessionRecord, LocalError> {
    let id = &record.id;
    let workspace = record
        .workspace
        .clone()
        .ok_or_else(|| LocalError::NoWorkspace(id.clone()))?;
    if !workspace.is_dir() {
        return Err(LocalError::WorkspaceMissing {
            id: id.clone(),
            path: workspace,
        });
    }
    let program = find_daemon()?;
    let cert_dir = home.session_cert_dir(id);
    let ip = match home.membership() {
        Ok(Some(m)) => m.advertise,
        _ => Ipv4Addr::LOCALHOST.into(),
    };
    let port = record
        .endpoint
        .map(|e| e.port())
        .filter(|&p| p != 0 && udp_port_free(ip, p))
        .unwrap_or(0);
    let listen = SocketAddr::from((ip, port));

    private_dir(&home.session_dir(id))?;
    let log_path = home.daemon_log(id);
    let (log, log_start) = open_log(&log_path, id, &program, listen)?;

    let mut command = Command::new(&program);
    command
        .arg0(DAEMON_NAME)
        .arg("--session-id")
        .arg(id.as_str())
        .arg("--cert-dir")
        .arg(&cert_dir)
        .arg("--root")
        .arg(&workspace)
        .arg("--listen")
        .arg(listen.to_string())
        .current_dir("/")
        // The log is a file: no colour escapes in it.
        .env("NO_COLOR", "1")
        .env_remove(crate::commands::OWNER_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    // The session's workspace owner, if it has one, gets every new node.
    if let Some(owner) = record.labels.get(OWNER_LABEL) {
        command.env(crate::commands::OWNER_ENV, owner);
    }
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // async-signal-safe setsid system call.
    unsafe {
        command.pre_exec(|| {
            rustix::process::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command.spawn().map_err(|source| LocalError::Spawn {
        program: program.clone(),
        source,
    })?;
    let pid = child.id();
    debug!(session = %id, pid, program = %program.display(), %listen, "spawned daemon");

    let failed = |child: &mut Child, reason: &str| {
        abort(child, id, reason, Duration::ZERO, &log_path, log_start)
    };
    let Some(stdout) = child.stdout.take() else {
        return Err(failed(&mut child, "its stdout was not captured"));
    };
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::Builder::new()
        .name("sessionfsd-stdout".into())
        .spawn(move || {
            let mut line = String::new();
            let result = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            // The receiver may have given up already.
            let _ = tx.send(result);
            // The pipe is dropped here: the daemon writes nothing more to stdout.
        });
    if let Err(e) = reader {
        return Err(failed(
            &mut child,
            &format!("cannot start a thread to read its output: {e}"),
        ));
    }
    let addr = match rx.recv_timeout(STARTUP_TIMEOUT) {
        Ok(Ok(line)) if line.is_empty() => {
            // Its stdout closed: it is exiting (or has closed stdout, which is as bad).
            let reason = "it exited before reporting its address";
            return Err(abort(
                &mut child, id, reason, EXIT_GRACE, &log_path, log_start,
            ));
        }
        Ok(Ok(line)) => match parse_listening_line(&line) {
            Some(addr) => addr,
            None => {
                let reason = format!(
                    "its first output line was {:?}, expected `listening on <address>`",
                    line.trim_end()
                );
                return Err(failed(&mut child, &reason));
            }
        },
        Ok(Err(e)) => {
            return Err(failed(
                &mut child,
                &format!("reading its output failed: {e}"),
            ))
        }
        Err(RecvTimeoutError::Timeout) => {
            let reason = format!(
                "it did not report its address within {} s",
                STARTUP_TIMEOUT.as_secs()
            );
            return Err(failed(&mut child, &reason));
        }
        Err(RecvTimeoutError::Disconnected) => {
            return Err(failed(&mut child, "the thread reading its output died"))
        }
    };
    info!(session = %id, pid, %addr, "daemon started");
    // Dropping `child` neither kills nor waits for the daemon.
    drop(child);
    let mut started = record.clone();
    started.endpoint = Some(addr);
    started.pid = Some(pid);
    started.state = SessionState::Running;
    Ok(started)
}

/// Opens `daemon.log` for appending, writes a header for this start, and returns the file
/// with the offset after the header.
fn open_log(
    path: &Path,
    id: &SessionId,
    program: &Path,
    listen: SocketAddr,
) -> Result<(File, u64), LocalError> {
    let mut log = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error("open", path))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    writeln!(
        log,
        "--- sessionfs: starting {} for session {id} on {listen} at unix time {now} ---",
        program.display()
    )
    .map_err(io_error("write", path))?;
    let start = log.metadata().map_err(io_error("inspect", path))?.len();
    Ok((log, start))
}

/// Reaps a daemon that failed to come up, after giving it `grace` to exit on its own and
/// killing it if it did not, and builds the error with how it ended and the log lines it
/// wrote.
fn abort(
    child: &mut Child,
    id: &SessionId,
    reason: &str,
    grace: Duration,
    log: &Path,
    log_start: u64,
) -> LocalError {
    if !grace.is_zero() {
        let pidfd = rustix::process::pidfd_open(Pid::from_child(child), PidfdFlags::empty());
        if let Ok(pidfd) = pidfd {
            let _ = wait_exit(&pidfd, grace);
        }
    }
    let ended = match child.try_wait() {
        Ok(Some(status)) => format!("{reason} ({status})"),
        _ => {
            if let Err(e) = child.kill() {
                debug!(session = %id, error = %e, "killing the failed daemon");
            }
            if let Err(e) = child.wait() {
                debug!(session = %id, error = %e, "reaping the failed daemon");
            }
            format!("{reason}; killed it")
        }
    };
    debug!(session = %id, reason = %ended, "daemon failed to start");
    LocalError::Startup {
        id: id.clone(),
        reason: ended,
        log: format_log_tail(log, log_start),
    }
}

/// The last lines written to `log` since offset `from`, as an indented block after a
/// heading, or a note that there are none.
fn format_log_tail(log: &Path, from: u64) -> String {
    match read_tail(log, from) {
        Ok(lines) if lines.is_empty() => format!("; {} has nothing from it", log.display()),
        Ok(lines) => {
            let mut out = format!("; last lines of {}:", log.display());
            for line in lines {
                out.push_str("\n    ");
                out.push_str(&line);
            }
            out
        }
        Err(e) => format!("; cannot read {}: {e}", log.display()),
    }
}

/// Up to [`LOG_TAIL_LINES`] non-empty lines of `path` after offset `from`.
fn read_tail(path: &Path, from: u64) -> std::io::Result<Vec<String>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = from.max(len.saturating_sub(LOG_TAIL_BYTES));
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(last_lines(&String::from_utf8_lossy(&bytes), LOG_TAIL_LINES))
}

fn last_lines(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| (*l).to_owned())
        .collect()
}

/// Whether `cmdline` (the NUL-separated contents of `/proc/<pid>/cmdline`) is that of a
/// serving `sessionfsd` for session `id`.
pub fn cmdline_matches(cmdline: &[u8], id: &str) -> bool {
    let mut args = cmdline.split(|&b| b == 0);
    let is_daemon = args
        .next()
        .and_then(|argv0| Path::new(OsStr::from_bytes(argv0)).file_name())
        .is_some_and(|name| name == DAEMON_NAME);
    if !is_daemon {
        return false;
    }
    let args: Vec<&[u8]> = args.collect();
    if args.iter().any(|a| *a == b"--health") {
        return false;
    }
    let long = format!("--session-id={id}");
    args.iter().enumerate().any(|(i, arg)| {
        *arg == long.as_bytes()
            || (*arg == b"--session-id" && args.get(i + 1) == Some(&id.as_bytes()))
    })
}

/// A pidfd for `pid` if it is a live daemon of session `id`, else `None`.
///
/// The pidfd is opened before `/proc/<pid>/cmdline` is read and checked for exit after,
/// so the process it refers to is the one whose command line was checked, even if the pid
/// is recycled meanwhile.
fn open_daemon(pid: u32, id: &SessionId) -> Result<Option<OwnedFd>, LocalError> {
    let Some(raw) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return Ok(None);
    };
    let pidfd = match rustix::process::pidfd_open(raw, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(Errno::SRCH) => return Ok(None),
        Err(e) => {
            return Err(LocalError::Process {
                action: "open a pidfd for",
                id: id.clone(),
                pid,
                source: e.into(),
            })
        }
    };
    let cmdline = match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(bytes) => bytes,
        Err(e) => {
            debug!(pid, error = %e, "cannot read the command line; treating as not running");
            return Ok(None);
        }
    };
    if !cmdline_matches(&cmdline, id.as_str()) {
        debug!(session = %id, pid, "pid is not this session's daemon (exited or recycled)");
        return Ok(None);
    }
    if wait_exit(&pidfd, Duration::ZERO).map_err(|source| LocalError::Process {
        action: "watch",
        id: id.clone(),
        pid,
        source,
    })? {
        return Ok(None);
    }
    Ok(Some(pidfd))
}

/// Whether the record's daemon process is alive (its pid runs `sessionfsd` for this
/// session). Never writes anything.
pub fn is_running(record: &SessionRecord) -> bool {
    // A docker session's pid is its container's: never this module's to judge or signal.
    if record.backend != Backend::Local {
        return false;
    }
    match record.pid {
        Some(pid) => match open_daemon(pid, &record.id) {
            Ok(found) => found.is_some(),
            Err(e) => {
                debug!(session = %record.id, error = %e, "liveness check failed");
                false
            }
        },
        None => false,
    }
}

/// Stops the record's daemon: SIGTERM, up to [`STOP_TIMEOUT`] for it to exit, then
/// SIGKILL and as long again. A pid that is gone or belongs to another program counts as
/// [`StopOutcome::NotRunning`].
pub fn stop(record: &SessionRecord) -> Result<StopOutcome, LocalError> {
    let id = &record.id;
    let Some(pid) = record.pid.filter(|_| record.backend == Backend::Local) else {
        return Ok(StopOutcome::NotRunning);
    };
    let Some(pidfd) = open_daemon(pid, id)? else {
        return Ok(StopOutcome::NotRunning);
    };
    let process_error = |action| {
        move |source| LocalError::Process {
            action,
            id: id.clone(),
            pid,
            source,
        }
    };
    match rustix::process::pidfd_send_signal(&pidfd, Signal::TERM) {
        Ok(()) => {}
        Err(Errno::SRCH) => return Ok(StopOutcome::NotRunning),
        Err(e) => return Err(process_error("send SIGTERM to")(e.into())),
    }
    if wait_exit(&pidfd, STOP_TIMEOUT).map_err(process_error("wait for"))? {
        info!(session = %id, pid, "daemon stopped");
        return Ok(StopOutcome::Terminated);
    }
    warn!(session = %id, pid, "daemon ignored SIGTERM for {}s; killing it", STOP_TIMEOUT.as_secs());
    match rustix::process::pidfd_send_signal(&pidfd, Signal::KILL) {
        Ok(()) => {}
        Err(Errno::SRCH) => return Ok(StopOutcome::Terminated),
        Err(e) => return Err(process_error("send SIGKILL to")(e.into())),
    }
    if wait_exit(&pidfd, STOP_TIMEOUT).map_err(process_error("wait for"))? {
        Ok(StopOutcome::Killed)
    } else {
        Err(LocalError::StillRunning {
            id: id.clone(),
            pid,
        })
    }
}

/// Waits up to `timeout` for the process behind `pidfd` to exit; true if it has.
fn wait_exit(pidfd: &OwnedFd, timeout: Duration) -> std::io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let timespec = Timespec::try_from(remaining).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&timespec)) {
            // A pidfd becomes readable when the process exits.
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(Errno::INTR) if !remaining.is_zero() => {}
            Err(Errno::INTR) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmdline(args: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for a in args {
            out.extend_from_slice(a.as_bytes());
            out.push(0);
        }
        out
    }

    #[test]
    fn matches_only_this_sessions_daemon() {
        let serving = cmdline(&[
            "sessionfsd",
            "--session-id",
            "s1",
            "--cert-dir",
            "/c",
            "--root",
            "/w",
            "--listen",
            "127.0.0.1:0",
        ]);
        assert!(cmdline_matches(&serving, "s1"));
        assert!(!cmdline_matches(&serving, "s"));
        assert!(!cmdline_matches(&serving, "s12"));
        assert!(cmdline_matches(
            &cmdline(&["/usr/bin/sessionfsd", "--session-id=s1"]),
            "s1"
        ));
        // No trailing NUL (cmdline rewritten by the process) still parses.
        assert!(cmdline_matches(b"sessionfsd\0--session-id\0s1", "s1"));
        // Other programs, probes, zombies (empty cmdline), and the id in the wrong place.
        assert!(!cmdline_matches(
            &cmdline(&["bash", "--session-id", "s1"]),
            "s1"
        ));
        assert!(!cmdline_matches(
            &cmdline(&["sessionfsd-old", "--session-id", "s1"]),
            "s1"
        ));
        assert!(!cmdline_matches(
            &cmdline(&["sessionfsd", "--health", "--session-id", "s1"]),
            "s1"
        ));
        assert!(!cmdline_matches(b"", "s1"));
        assert!(!cmdline_matches(
            &cmdline(&["sessionfsd", "--root", "--session-id", "--cert-dir", "s1"]),
            "s1"
        ));
        assert!(!cmdline_matches(&cmdline(&["sessionfsd", "s1"]), "s1"));
    }

    #[test]
    fn own_process_is_not_a_daemon() {
        let mut rec = SessionRecord::new(
            "s1".parse().unwrap(),
            Backend::Local,
            "s1.session.sessionfs".into(),
        );
        rec.pid = Some(std::process::id());
        assert!(!is_running(&rec));
        assert_eq!(stop(&rec).unwrap(), StopOutcome::NotRunning);
        rec.pid = Some(u32::MAX);
        assert!(!is_running(&rec));
        assert_eq!(stop(&rec).unwrap(), StopOutcome::NotRunning);
        rec.pid = None;
        assert_eq!(stop(&rec).unwrap(), StopOutcome::NotRunning);
    }

    #[test]
    fn listening_line() {
        assert_eq!(
            parse_listening_line("listening on 127.0.0.1:4567\n"),
            Some("127.0.0.1:4567".parse().unwrap())
        );
        assert_eq!(
            parse_listening_line("listening on [::1]:80"),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(parse_listening_line("listening on nowhere\n"), None);
        assert_eq!(parse_listening_line("hello\n"), None);
    }

    #[test]
    fn daemon_lookup_order() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        let deps = bin.join("deps");
        let on_path = tmp.path().join("path");
        for d in [&deps, &on_path] {
            fs::create_dir_all(d).unwrap();
        }
        let make = |p: &Path, mode: u32| {
            fs::write(p, "#!/bin/sh\n").unwrap();
            fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
        };
        let exe = Some(deps.join("test-binary"));
        let path_var = Some(OsString::from(format!(
            "/nonexistent:{}",
            on_path.display()
        )));

        let err = locate_daemon(None, exe.clone(), path_var.clone()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&deps.join("sessionfsd").display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("sessionfsd on $PATH"), "{msg}");
        assert!(msg.contains("set SESSIONFS_DAEMON"), "{msg}");

        make(&on_path.join("sessionfsd"), 0o755);
        assert_eq!(
            locate_daemon(None, exe.clone(), path_var.clone()).unwrap(),
            on_path.join("sessionfsd")
        );
        make(&bin.join("sessionfsd"), 0o755);
        assert_eq!(
            locate_daemon(None, exe.clone(), path_var.clone()).unwrap(),
            bin.join("sessionfsd")
        );
        make(&deps.join("sessionfsd"), 0o644);
        assert_eq!(
            locate_daemon(None, exe.clone(), path_var.clone()).unwrap(),
            bin.join("sessionfsd")
        );

        let explicit = tmp.path().join("custom");
        let err = locate_daemon(Some(explicit.clone().into()), exe.clone(), path_var.clone())
            .unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "SESSIONFS_DAEMON={} is not an executable file",
                explicit.display()
            )),
            "{err}"
        );
        make(&explicit, 0o700);
        assert_eq!(
            locate_daemon(Some(explicit.clone().into()), exe, path_var).unwrap(),
            explicit
        );
    }

    #[test]
    fn log_tail_shows_only_this_attempt() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("daemon.log");
        fs::write(&log, "old run\n").unwrap();
        let from = fs::metadata(&log).unwrap().len();
        assert!(format_log_tail(&log, from).contains("has nothing from it"));
        let mut text = String::from("old run\n");
        for i in 0..30 {
            text.push_str(&format!("line {i}\n"));
        }
        fs::write(&log, &text).unwrap();
        let tail = format_log_tail(&log, from);
        assert!(tail.starts_with(&format!("; last lines of {}:", log.display())));
        assert!(!tail.contains("old run") && !tail.contains("line 9\n"));
        assert!(
            tail.contains("\n    line 10\n") && tail.ends_with("line 29"),
            "{tail}"
        );
    }

    #[test]
    fn free_port_probe() {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = socket.local_addr().unwrap().port();
        assert!(!udp_port_free(Ipv4Addr::LOCALHOST.into(), port));
        drop(socket);
        assert!(udp_port_free(Ipv4Addr::LOCALHOST.into(), port));
    }

    /// Starts a `sessionfsd`-named stand-in (`tail -f` under `exec -a`), optionally ignoring
    /// SIGTERM, and stops them through [`stop`].
    fn fake_daemon(id: &str, ignore_term: bool) -> (Child, SessionRecord) {
        let trap = if ignore_term { "trap '' TERM; " } else { "" };
        let script =
            format!("{trap}exec -a sessionfsd tail -f /dev/null -- --session-id {id} 2>/dev/null");
        let child = Command::new("bash").arg("-c").arg(script).spawn().unwrap();
        let mut rec = SessionRecord::new(id.parse().unwrap(), Backend::Local, "x".into());
        rec.pid = Some(child.id());
        // Wait until the exec has happened.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !is_running(&rec) {
            assert!(Instant::now() < deadline, "stand-in did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        (child, rec)
    }

    #[test]
    fn stop_terminates_then_kills() {
        let (mut child, rec) = fake_daemon("term-me", false);
        let mut other = rec.clone();
        other.id = "someone-else".parse().unwrap();
        assert!(!is_running(&other));
        assert_eq!(stop(&other).unwrap(), StopOutcome::NotRunning);
        // A docker session's pid is its container's: never judged or signalled here.
        let mut docker = rec.clone();
        docker.backend = Backend::Docker;
        assert!(!is_running(&docker));
        assert_eq!(stop(&docker).unwrap(), StopOutcome::NotRunning);
        assert!(is_running(&rec));
        assert_eq!(stop(&rec).unwrap(), StopOutcome::Terminated);
        assert!(!child.wait().unwrap().success());
        assert!(!is_running(&rec));

        let (mut child, rec) = fake_daemon("stubborn", true);
        let started = Instant::now();
        assert_eq!(stop(&rec).unwrap(), StopOutcome::Killed);
        assert!(started.elapsed() >= STOP_TIMEOUT);
        assert!(!child.wait().unwrap().success());
    }
}
