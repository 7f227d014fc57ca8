//! End-to-end test harness: a private sessionfs installation in a temporary directory.
//!
//! A [`Harness`] owns a `SESSIONFS_HOME`, drives the real `sessionfs` CLI (which starts real
//! `sessionfsd` processes), and mounts the real bridge through FUSE. Nothing is mocked. Binaries come
//! from the cargo target directory next to the test executable; build them first with
//! `cargo build --bins` (the project's test command does). A missing binary, `/dev/fuse` or
//! `fusermount3` fails the test loudly: these tests never skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The directory holding the workspace binaries (`sessionfs`, `sessionfsd`).
pub fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test-binary>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no target directory")?
        .to_path_buf();
    for bin in ["sessionfs", "sessionfsd"] {
        if !dir.join(bin).is_file() {
            bail!(
                "{} is missing: build the binaries first (cargo build --bins)",
                dir.join(bin).display()
            );
        }
    }
    Ok(dir)
}

/// Waits until `cond` holds, checking every 10 ms, failing after `limit`. A readiness check, not a
/// sleep: it returns as soon as the condition is true.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `path` is a mount point, from /proc/self/mountinfo.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// A private installation: state directory, sessions, and at most one mount.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub mountpoint: PathBuf,
    bin: PathBuf,
    mount: Option<Child>,
    pub op_timeout_secs: u64,
}

impl Harness {
    /// A fresh installation; checks that FUSE can be used here.
    pub fn new() -> Result<Self> {
        let bin = bin_dir()?;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .context("/dev/fuse must be usable for the end-to-end tests")?;
        let dir = tempfile::Builder::new()
            .prefix("sessionfs-e2e-")
            .tempdir()?;
        let home = dir.path().join("home");
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir_all(&mountpoint)?;
        Ok(Harness {
            dir,
            home,
            mountpoint,
            bin,
            mount: None,
            op_timeout_secs: 3,
        })
    }

    /// A `sessionfs` command bound to this installation.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("sessionfs"));
        cmd.env("SESSIONFS_HOME", &self.home)
            .env("SESSIONFS_DAEMON", self.bin.join("sessionfsd"));
        cmd
    }

    /// Runs `sessionfs args…` and returns its output, whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        let out = self.cli().args(args).stdin(Stdio::null()).output()?;
        Ok(out)
    }

    /// Runs `sessionfs args…`, which must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        if !out.status.success() {
            bail!(
                "sessionfs {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates a local session serving a new directory `<tmp>/ws-<id>`; returns that directory.
    pub fn create_session(&self, id: &str) -> Result<PathBuf> {
        let ws = self.dir.path().join(format!("ws-{id}"));
        std::fs::create_dir_all(&ws)?;
        self.ok(&[
            "session",
            "create",
            id,
            "--dir",
            ws.to_str().context("utf-8 path")?,
        ])?;
        Ok(ws)
    }

    /// The session's record as `session ls --json` shows it.
    pub fn session_json(&self, id: &str) -> Result<serde_json::Value> {
        let out = self.ok(&["session", "ls", "--json"])?;
        let all: serde_json::Value = serde_json::from_str(&out)?;
        all.as_array()
            .and_then(|a| a.iter().find(|s| s["id"] == id).cloned())
            .with_context(|| format!("session {id} not in `session ls --json`: {out}"))
    }

    /// The daemon pid of a local session.
    pub fn daemon_pid(&self, id: &str) -> Result<i32> {
        let v = self.session_json(id)?;
        v["pid"]
            .as_i64()
            .map(|p| p as i32)
            .with_context(|| format!("no pid for {id}: {v}"))
    }

    /// Mounts the bridge and waits until the mount is live.
    pub fn mount(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.dir.path().join("bridge.log"))?;
        let child = self
            .cli()
            .args(["mount", self.mountpoint.to_str().context("utf-8 path")?])
            .args(["--op-timeout", &self.op_timeout_secs.to_string()])
            .env("SESSIONFS_LOG", "info,sessionfs_bridge=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.mount = Some(child);
        let mp = self.mountpoint.clone();
        let mut exited = None;
        let ready = wait_until("the bridge to mount", Duration::from_secs(20), || {
            if let Some(Ok(Some(status))) = self.mount.as_mut().map(|c| c.try_wait()) {
                exited = Some(status);
                return true;
            }
            is_mounted(&mp)
        });
        if let Some(status) = exited {
            bail!(
                "sessionfs mount exited early ({status}): {}",
                self.bridge_log()
            );
        }
        ready.map(|_| ()).with_context(|| self.bridge_log())
    }

    /// The bridge's log so far.
    pub fn bridge_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bridge.log")).unwrap_or_default()
    }

    /// The path of `rel` inside session `id` on the mount.
    pub fn path(&self, id: &str, rel: &str) -> PathBuf {
        let p = self.mountpoint.join(id);
        if rel.is_empty() {
            p
        } else {
            p.join(rel)
        }
    }

    /// Stops the bridge with SIGTERM and waits for a clean unmount.
    pub fn unmount(&mut self) -> Result<()> {
        let Some(mut child) = self.mount.take() else {
            return Ok(());
        };
        rustix_kill(child.id() as i32, libc::SIGTERM);
        let status = child.wait()?;
        if !status.success() {
            bail!(
                "sessionfs mount exited with {status}: {}",
                self.bridge_log()
            );
        }
        if is_mounted(&self.mountpoint) {
            bail!(
                "{} still mounted after the bridge exited",
                self.mountpoint.display()
            );
        }
        Ok(())
    }
}

/// Sends `sig` to `pid`.
pub fn rustix_kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(mut child) = self.mount.take() {
            rustix_kill(child.id() as i32, libc::SIGTERM);
            let _ = child.wait();
        }
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.mountpoint)
                .status();
        }
        // Stop every daemon this installation started.
        if let Ok(out) = self.run(&["session", "ls", "--json"]) {
            if let Ok(serde_json::Value::Array(all)) = serde_json::from_slice(&out.stdout) {
                for s in all {
                    if let Some(id) = s["id"].as_str() {
                        let _ = self.run(&["session", "stop", id]);
                    }
                }
            }
        }
    }
}
