//! The soak test: many sessions, mixed file operations from several worker processes
//! (`sessionfs-soak-worker`), and sessions stopped, started and migrated (local → docker → local)
//! underneath, for a while. It asserts no unexpected error (errors are expected only on the
//! sessions being churned, and never wrong data), no lost write (every file a worker wrote, synced
//! and closed is there with its content at the end), and the bridge's memory flat (the last sample
//! at most twice the one after warm-up, plus 64 MiB); it prints the memory curves of the bridge and
//! the daemons.
//!
//! Bounded in CI: 16 sessions, 4 workers, 30 s. The long run:
//! `SESSIONFS_SOAK_SESSIONS=200 SESSIONFS_SOAK_SECONDS=600 SESSIONFS_SOAK_OUT=DIR cargo nextest run
//! -p sessionfs-tests -E 'test(/^soak::/)' --no-capture` (DIR gets `memory.csv`).

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use sessionfs_tests::{bin_dir, docker_image, soak_content, wait_until, Harness};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident memory of `pid` in KiB (0 if it is gone).
fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Kills the worker processes left when dropped (after a failure).
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn many_sessions_churned_underneath_lose_nothing_and_stay_flat() -> Result<()> {
    let sessions_n = setting("SESSIONFS_SOAK_SESSIONS", 16).max(4) as usize;
    let seconds = setting("SESSIONFS_SOAK_SECONDS", 30).max(10);
    let workers_n = setting("SESSIONFS_SOAK_WORKERS", 4).max(1) as u32;
    let mut h = Harness::new()?;
    h.op_timeout_secs = 5;
    let image = docker_image()?;
    h.uses_docker();
    let ids: Vec<String> = (0..sessions_n)
        .map(|i| h.unique_id(&format!("soak{i}")))
        .collect();
    for id in &ids {
        h.create_session(id)?;
    }
    // A tenth of the sessions (at least two) are stopped, started and migrated underneath.
    let churned: Vec<String> = ids[..(sessions_n / 10).max(2)].to_vec();
    let steady: Vec<String> = ids[churned.len()..].to_vec();
    h.mount()?;
    wait_until(
        "every session under the mount",
        Duration::from_secs(10),
        || {
            let names = h.root_names();
            ids.iter().all(|id| names.contains(id))
        },
    )?;

    // Memory, every second: the bridge, and the steady sessions' daemons together.
    let bridge = h.bridge_pid().context("the bridge runs")?;
    let daemons: Vec<u32> = steady
        .iter()
        .map(|id| h.daemon_pid(id).map(|p| p as u32))
        .collect::<Result<_>>()?;
    let samples = Arc::new(Mutex::new(Vec::<(f64, u64, u64)>::new()));
    let sampling = Arc::new(AtomicBool::new(true));
    let start = Instant::now();
    let sampler = {
        let (samples, sampling) = (samples.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                let daemons_kib: u64 = daemons.iter().map(|&p| rss_kib(p)).sum();
                if let Ok(mut s) = samples.lock() {
                    s.push((start.elapsed().as_secs_f64(), rss_kib(bridge), daemons_kib));
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };

    let reports = h.dir.path().join("reports");
    fs::create_dir(&reports)?;
    let worker_bin = bin_dir()?.join("sessionfs-soak-worker");
    let mut workers = Workers(Vec::new());
    for k in 0..workers_n {
        workers.0.push(
            Command::new(&worker_bin)
                .arg("--mount")
                .arg(&h.mountpoint)
                .args([
                    "--sessions",
                    &ids.join(","),
                    "--churned",
                    &churned.join(","),
                ])
                .args([
                    "--seconds",
                    &seconds.to_string(),
                    "--worker",
                    &k.to_string(),
                ])
                .arg("--report")
                .arg(reports.join(format!("{k}.json")))
                .stdin(Stdio::null())
                .spawn()
                .context("the soak worker (cargo build --bins)")?,
        );
    }

    // Churn until the workers' deadline: stop and start, and now and then a migration there and
    // back (each session at most once: a migration back leaves the volume and directory behind).
    let deadline = start + Duration::from_secs(seconds);
    let (mut restarts, mut migrations) = (0u32, 0u32);
    let mut migrated = Vec::new();
    let mut turn = 0usize;
    while Instant::now() < deadline {
        let id = &churned[turn % churned.len()];
        turn += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        if turn.is_multiple_of(3) && !migrated.contains(id) && left > Duration::from_secs(15) {
            h.ok(&["session", "migrate", id, "--to", "docker", "--image", image])?;
            h.ok(&["session", "migrate", id, "--to", "local"])?;
            migrated.push(id.clone());
            migrations += 1;
        } else {
            h.ok(&["session", "stop", id])?;
            // Down for a moment while the workers go on: part of the scenario, not a wait.
            std::thread::sleep(Duration::from_millis(300));
            h.ok(&["session", "start", id])?;
            restarts += 1;
        }
    }
    let finish = deadline + Duration::from_secs(60);
    for child in &mut workers.0 {
        let waited = wait_until("a soak worker to finish", Duration::from_secs(90), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        ensure!(
            waited.is_ok() && Instant::now() < finish,
            "a worker did not finish in time"
        );
        let status = child.wait()?;
        ensure!(status.success(), "a worker failed: {status}");
    }
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();

    // Every churned session serves again; then every file left is there, whole.
    for id in &churned {
        h.ok(&["session", "start", id])?;
    }
    let (mut ops, mut expected_errors, mut files) = (0u64, 0u64, 0usize);
    for k in 0..workers_n {
        let report: serde_json::Value =
            serde_json::from_slice(&fs::read(reports.join(format!("{k}.json")))?)?;
        let unexpected = report["unexpected"].as_array().context("unexpected")?;
        ensure!(
            unexpected.is_empty(),
            "worker {k}: {} unexpected errors, the first: {}\n{}",
            unexpected.len(),
            unexpected[0],
            h.bridge_log()
        );
        ensure!(report["ops"].as_u64() > Some(0), "worker {k} did nothing");
        ops += report["ops"].as_u64().unwrap_or(0);
        expected_errors += report["expected_errors"].as_u64().unwrap_or(0);
        for f in report["files"].as_array().context("files")? {
            let path = f["path"].as_str().context("path")?;
            let (seq, size) = (
                f["seq"].as_u64().context("seq")?,
                f["size"].as_u64().context("size")? as usize,
            );
            let got = fs::read(h.mountpoint.join(path)).with_context(|| format!("lost {path}"))?;
            ensure!(
                got == soak_content(k, seq, size),
                "{path}: {} bytes that are not what was written ({size})",
                got.len()
            );
            files += 1;
        }
    }

    let samples = samples
        .lock()
        .map_err(|_| anyhow::anyhow!("sampler"))?
        .clone();
    let curve: Vec<String> = samples
        .iter()
        .map(|(t, b, d)| format!("{t:.0},{b},{d}"))
        .collect();
    if let Some(dir) = std::env::var_os("SESSIONFS_SOAK_OUT").map(PathBuf::from) {
        fs::create_dir_all(&dir)?;
        fs::write(
            dir.join("memory.csv"),
            format!("seconds,bridge_kib,daemons_kib\n{}\n", curve.join("\n")),
        )?;
    }
    println!(
        "soak: {sessions_n} sessions, {workers_n} workers, {seconds} s: {ops} operations, \
         {expected_errors} expected errors on churned sessions, {restarts} restarts, \
         {migrations} migrations there and back, {files} files verified"
    );
    println!(
        "memory (seconds, bridge KiB, steady daemons KiB): {}",
        curve.join(" ")
    );
    let warm = samples
        .iter()
        .find(|(t, _, _)| *t >= seconds as f64 / 4.0)
        .or(samples.first())
        .context("no memory sample")?;
    let last = samples.last().context("no memory sample")?;
    ensure!(
        last.1 <= 2 * warm.1 + 64 * 1024,
        "the bridge grew from {} KiB after warm-up to {} KiB",
        warm.1,
        last.1
    );
    h.unmount()?;
    Ok(())
}
