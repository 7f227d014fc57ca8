//! End-to-end test harness: a private sessionfs installation in a temporary directory.
//!
//! A [`Harness`] owns a `SESSIONFS_HOME`, drives the real `sessionfs` CLI (which starts real
//! `sessionfsd` processes, or real Docker containers), and mounts the real bridge through FUSE.
//! Nothing is mocked. Binaries come from the cargo target directory next to the test executable;
//! build them first with `cargo build --bins` (the project's test command does). A missing binary,
//! `/dev/fuse` or `fusermount3` fails the test loudly: these tests never skip.
//!
//! Docker sessions need a running engine and the static daemon (`SESSIONFS_STATIC_DAEMON`, or
//! `<target>/x86_64-unknown-linux-gnu/release/sessionfsd`); [`docker_image`] builds the test image
//! once per process (serialized between processes by a file lock), and a harness that created docker
//! sessions removes every container and volume labelled with its state directory when dropped, even
//! after a failure. [`scenario`] is the differential scenario shared by the test files.

pub mod kube;
pub mod netns;
mod scenario;

pub use scenario::{assert_same, scenario};

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The tag of the image the tests build and run docker sessions from.
pub const TEST_IMAGE: &str = "sessionfs-test:latest";

/// Runs `docker args…`, which must succeed; returns stdout. Fails loudly if there is no engine.
pub fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run `docker` (scripts/install-deps.sh installs docker.io)")?;
    if !out.status.success() {
        bail!(
            "docker {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `docker args…` succeeds (for checking that an object exists).
pub fn docker_succeeds(args: &[&str]) -> bool {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Builds [`TEST_IMAGE`] with `sessionfs image build` once per test process and returns its tag.
/// Builds in several processes are serialized by a lock file; each is quick (the engine's build
/// cache makes a rebuild of an unchanged daemon a re-tag). Fails loudly without an engine.
pub fn docker_image() -> Result<&'static str> {
    static BUILT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_test_image().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map(|()| TEST_IMAGE)
        .map_err(|e| anyhow::anyhow!("building the test image failed: {e}"))
}

fn build_test_image() -> Result<()> {
    docker(&["info", "--format", "{{.ServerVersion}}"]).context(
        "the docker tests need a running Docker engine (scripts/install-deps.sh starts one)",
    )?;
    let lock_path = std::env::temp_dir().join("sessionfs-test-image.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    // SAFETY: flock(2) on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!(
            "locking {}: {}",
            lock_path.display(),
            std::io::Error::last_os_error()
        );
    }
    let image_id = || {
        docker(&["image", "inspect", "--format", "{{.Id}}", TEST_IMAGE])
            .map(|id| id.trim().to_owned())
            .ok()
    };
    let previous = image_id();
    let out = Command::new(bin_dir()?.join("sessionfs"))
        .args(["image", "build", "--tag", TEST_IMAGE])
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "sessionfs image build failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A changed daemon makes a new image; drop the one it replaced unless containers of other
    // test processes still use it (then the engine refuses, which is fine).
    if let Some(old) = previous.filter(|old| image_id().as_ref() != Some(old)) {
        let _ = docker(&["rmi", &old]);
    }
    // The lock is released when `lock` is dropped here.
    drop(lock);
    Ok(())
}

/// This crate's directory (`tests/`) in the checkout under test. Read at run time (cargo and
/// nextest set `CARGO_MANIFEST_DIR` for every test process): a test binary that cargo found fresh
/// in a shared target directory may have been compiled in another checkout, whose path the
/// compile-time value would name.
pub fn tests_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

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

/// Waits until `path` can be read (a session coming back), returning its bytes; fails after `limit`.
pub fn wait_readable(what: &str, path: &Path, limit: Duration) -> Result<Vec<u8>> {
    let mut seen = Vec::new();
    wait_until(what, limit, || match std::fs::read(path) {
        Ok(bytes) => {
            seen = bytes;
            true
        }
        Err(_) => false,
    })?;
    Ok(seen)
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
    /// Extra arguments for `sessionfs mount` (e.g. `--map-owner`).
    pub mount_args: Vec<String>,
    /// The registry every command uses (`SESSIONFS_REGISTRY`), when not the state directory's file.
    pub registry: Option<String>,
    /// More environment for every command (the mount's included).
    pub env: Vec<(String, String)>,
    /// The network namespace every command runs in (a host of a [`netns::Lan`]).
    pub netns: Option<netns::Member>,
    /// Whether docker sessions were created (then dropping removes their containers and volumes).
    docker_used: bool,
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
            mount_args: Vec::new(),
            registry: None,
            env: Vec::new(),
            netns: None,
            docker_used: false,
        })
    }

    /// A session id unique on this machine while this process runs (container and volume names
    /// are global to the Docker engine): `<name>-<pid>-<n>`.
    pub fn unique_id(&self, name: &str) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        format!("{name}-{}-{n}", std::process::id())
    }

    /// Creates a docker session from [`docker_image`] with extra `session create` arguments;
    /// returns the command's stdout.
    pub fn create_docker_session(&mut self, id: &str, extra: &[&str]) -> Result<String> {
        let image = docker_image()?;
        self.docker_used = true;
        let mut args = vec![
            "session",
            "create",
            id,
            "--backend",
            "docker",
            "--image",
            image,
        ];
        args.extend_from_slice(extra);
        self.ok(&args)
    }

    /// Marks this installation as using Docker, so that dropping it removes what it created.
    pub fn uses_docker(&mut self) {
        self.docker_used = true;
    }

    /// The `sessionfs.home` label value of everything this installation creates in Docker.
    pub fn docker_label(&self) -> String {
        format!("label=sessionfs.home={}", self.home.display())
    }

    /// Names of the containers (`docker ps -a`) or volumes (`docker volume ls`) this installation
    /// created that still exist.
    pub fn docker_objects(&self, volumes: bool) -> Result<Vec<String>> {
        let label = self.docker_label();
        let out = if volumes {
            docker(&["volume", "ls", "-q", "--filter", &label])?
        } else {
            docker(&["ps", "-a", "--format", "{{.Names}}", "--filter", &label])?
        };
        Ok(out.lines().map(str::to_owned).collect())
    }

    /// Removes every container and volume labelled with this installation's state directory.
    pub fn remove_docker_objects(&self) -> Result<()> {
        let containers = self.docker_objects(false)?;
        if !containers.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(containers.iter().map(String::as_str));
            docker(&args)?;
        }
        let volumes = self.docker_objects(true)?;
        if !volumes.is_empty() {
            let mut args = vec!["volume", "rm", "-f"];
            args.extend(volumes.iter().map(String::as_str));
            docker(&args)?;
        }
        Ok(())
    }

    /// A `sessionfs` command bound to this installation.
    pub fn cli(&self) -> Command {
        let program = self.bin.join("sessionfs");
        let mut cmd = match &self.netns {
            Some(member) => member.command(program),
            None => Command::new(program),
        };
        cmd.env("SESSIONFS_HOME", &self.home)
            .env("SESSIONFS_DAEMON", self.bin.join("sessionfsd"));
        match &self.registry {
            Some(registry) => cmd.env("SESSIONFS_REGISTRY", registry),
            None => cmd.env_remove("SESSIONFS_REGISTRY"),
        };
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
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
            .args(&self.mount_args)
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
    /// The process id of the mounted bridge, if mounted.
    pub fn bridge_pid(&self) -> Option<u32> {
        self.mount.as_ref().map(Child::id)
    }

    pub fn bridge_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bridge.log")).unwrap_or_default()
    }

    /// The names under the mount root (the sessions it shows); empty if it cannot be read.
    pub fn root_names(&self) -> Vec<String> {
        std::fs::read_dir(&self.mountpoint)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
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

/// A private etcd server on free loopback ports in a temporary directory, killed when dropped.
pub struct Etcd {
    child: Option<Child>,
    port: u16,
    peer: u16,
    dir: tempfile::TempDir,
    /// The LAN member it runs on (else loopback).
    on: Option<netns::Member>,
}

impl Etcd {
    /// Starts `etcd` (Debian's `etcd-server`, installed by `scripts/install-deps.sh`) and waits
    /// until it answers (bounded).
    pub fn start() -> Result<Etcd> {
        let free = || -> Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let mut etcd = Etcd {
            child: None,
            port: free()?,
            peer: free()?,
            dir: tempfile::tempdir()?,
            on: None,
        };
        etcd.restart()?;
        Ok(etcd)
    }

    /// Starts `etcd` on a member of a [`netns::Lan`], listening on its address (ports 2379/2380:
    /// the namespace is its own).
    pub fn start_on(member: &netns::Member) -> Result<Etcd> {
        let mut etcd = Etcd {
            child: None,
            port: 2379,
            peer: 2380,
            dir: tempfile::tempdir()?,
            on: Some(member.clone()),
        };
        etcd.restart()?;
        Ok(etcd)
    }

    fn ip(&self) -> String {
        self.on
            .as_ref()
            .map_or_else(|| "127.0.0.1".to_owned(), |m| m.ip.to_string())
    }

    /// Kills the server (its data stays).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports and data (after [`Etcd::kill`]).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let ip = self.ip();
        let client = format!("http://{ip}:{}", self.port);
        let peer = format!("http://{ip}:{}", self.peer);
        let mut command = match &self.on {
            Some(member) => member.command("etcd"),
            None => Command::new("etcd"),
        };
        let child = command
            .args(["--name", "e2e", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("e2e={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("etcd (scripts/install-deps.sh installs etcd-server)")?;
        self.child = Some(child);
        let addr = format!("{ip}:{}", self.port);
        let listening = || std::net::TcpStream::connect(&addr).is_ok();
        wait_until("etcd to listen", Duration::from_secs(20), || {
            match &self.on {
                Some(member) => member.within(listening).unwrap_or(false),
                None => listening(),
            }
        })?;
        Ok(())
    }

    /// `etcd://IP:PORT`, for `--registry`.
    pub fn url(&self) -> String {
        format!("etcd://{}:{}", self.ip(), self.port)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The content of the soak test's file `seq` of worker `worker`: `size` bytes no other file has.
pub fn soak_content(worker: u32, seq: u64, size: usize) -> Vec<u8> {
    let stamp = format!("w{worker}s{seq};");
    stamp.bytes().cycle().take(size).collect()
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
        // Kept for study where SESSIONFS_TEST_LOGS names a directory (the temporary one goes).
        if let Some(keep) = std::env::var_os("SESSIONFS_TEST_LOGS") {
            let name = self
                .dir
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::copy(
                self.dir.path().join("bridge.log"),
                Path::new(&keep).join(format!("bridge-{name}.log")),
            );
        }
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.mountpoint)
                .status();
        }
        // Stop every local daemon this installation started.
        if let Ok(out) = self.run(&["session", "ls", "--json"]) {
            if let Ok(serde_json::Value::Array(all)) = serde_json::from_slice(&out.stdout) {
                for s in all {
                    if let (Some(id), Some("local")) = (s["id"].as_str(), s["backend"].as_str()) {
                        let _ = self.run(&["session", "stop", id]);
                    }
                }
            }
        }
        // Remove every container and volume it made, by label.
        if self.docker_used {
            if let Err(e) = self.remove_docker_objects() {
                eprintln!(
                    "cleaning up docker objects of {}: {e:#}",
                    self.home.display()
                );
            }
        }
    }
}

/// What a tree holds, path by path (relative, the root itself excluded): `dir <mode>`,
/// `file <mode> <size> <sha256>` or `link <target>` (`other <mode>` for anything else), read
/// without following symlinks. Two trees with equal digests hold the same bytes, modes and links.
pub fn tree_digest(root: &Path) -> Result<std::collections::BTreeMap<String, String>> {
    use sha2::Digest;
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let dir = root.join(&rel);
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let rel = rel.join(entry?.file_name());
            let path = root.join(&rel);
            let meta = std::fs::symlink_metadata(&path)
                .with_context(|| format!("inspecting {}", path.display()))?;
            let mode = meta.mode() & 0o7777;
            let ft = meta.file_type();
            let value = if ft.is_dir() {
                pending.push(rel.clone());
                format!("dir {mode:o}")
            } else if ft.is_symlink() {
                format!("link {}", std::fs::read_link(&path)?.display())
            } else if ft.is_file() {
                let bytes =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                let sum: String = sha2::Sha256::digest(&bytes)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                format!("file {mode:o} {} {sum}", bytes.len())
            } else {
                format!("other {mode:o}")
            };
            out.insert(rel.to_string_lossy().into_owned(), value);
        }
    }
    Ok(out)
}
