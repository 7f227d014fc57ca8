//! One worker process of the soak test (`tests/tests/e2e/soak.rs`): mixed file operations on the
//! mounted sessions until a deadline, each checked. Writes its report (JSON) to `--report`:
//! operations done, expected errors (on sessions being stopped, started or migrated underneath),
//! unexpected ones, and every file it left with the seed that makes its content.
//!
//! `sessionfs-soak-worker --mount DIR --sessions a,b --churned b --seconds N --worker K --report FILE`

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sessionfs_tests::soak_content as content;

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[derive(Default)]
struct Report {
    ops: u64,
    expected_errors: u64,
    unexpected: Vec<String>,
    /// Files that must exist at the end: path (relative to the mount) → (seq, size).
    files: BTreeMap<String, (u64, usize)>,
}

fn arg(args: &[String], name: &str) -> Result<String> {
    let at = args
        .iter()
        .position(|a| a == name)
        .with_context(|| format!("{name} is required"))?;
    args.get(at + 1)
        .cloned()
        .with_context(|| format!("{name} needs a value"))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mount = PathBuf::from(arg(&args, "--mount")?);
    let sessions: Vec<String> = arg(&args, "--sessions")?
        .split(',')
        .map(str::to_owned)
        .collect();
    let churned: Vec<String> = arg(&args, "--churned")?
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let seconds: u64 = arg(&args, "--seconds")?.parse()?;
    let worker: u32 = arg(&args, "--worker")?.parse()?;
    let report_path = PathBuf::from(arg(&args, "--report")?);
    if sessions.is_empty() {
        bail!("no sessions");
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (u64::from(worker + 1) * 0x2545_f491));
    let mut report = Report::default();
    let mut seq = 0u64;
    for s in &sessions {
        let dir = mount.join(s).join(format!("w{worker}"));
        // A churned session may be down right now; its directory is made on first success.
        if let Err(e) = fs::create_dir_all(&dir) {
            if !churned.contains(s) {
                report
                    .unexpected
                    .push(format!("mkdir {}: {e}", dir.display()));
            }
        }
    }
    while Instant::now() < deadline {
        let session = &sessions[rng.below(sessions.len() as u64) as usize];
        let churn = churned.contains(session);
        let dir_rel = format!("{session}/w{worker}");
        let dir = mount.join(&dir_rel);
        let mine: Vec<String> = report
            .files
            .keys()
            .filter(|p| p.starts_with(&format!("{dir_rel}/")))
            .cloned()
            .collect();
        let op = rng.below(10);
        report.ops += 1;
        let outcome = match op {
            // Write a new file, or rewrite one.
            0..=3 => {
                seq += 1;
                let size = rng.below(64 << 10) as usize;
                let rel = if op == 3 && !mine.is_empty() {
                    mine[rng.below(mine.len() as u64) as usize].clone()
                } else {
                    format!("{dir_rel}/f{seq}")
                };
                let data = content(worker, seq, size);
                match write_file(&mount.join(&rel), &data) {
                    Ok(()) => {
                        report.files.insert(rel, (seq, size));
                        Ok(())
                    }
                    Err(e) => {
                        // What it holds now is unknown.
                        report.files.remove(&rel);
                        Err(format!("write {rel}: {e}"))
                    }
                }
            }
            // Read one back.
            4..=6 if !mine.is_empty() => {
                let rel = &mine[rng.below(mine.len() as u64) as usize];
                let (s, size) = report.files[rel];
                match fs::read(mount.join(rel)) {
                    Ok(data) if data == content(worker, s, size) => Ok(()),
                    Ok(data) => {
                        // Wrong data is never expected, churn or not.
                        report.unexpected.push(format!(
                            "read {rel}: {} bytes that are not what was written ({size} bytes)",
                            data.len()
                        ));
                        Ok(())
                    }
                    Err(e) => Err(format!("read {rel}: {e}")),
                }
            }
            // Rename one.
            7 if !mine.is_empty() => {
                seq += 1;
                let from = mine[rng.below(mine.len() as u64) as usize].clone();
                let to = format!("{dir_rel}/r{seq}");
                let entry = report.files.remove(&from);
                match fs::rename(mount.join(&from), mount.join(&to)) {
                    Ok(()) => {
                        if let Some(entry) = entry {
                            report.files.insert(to, entry);
                        }
                        Ok(())
                    }
                    Err(e) => Err(format!("rename {from}: {e}")),
                }
            }
            // Delete one.
            8 if !mine.is_empty() => {
                let rel = mine[rng.below(mine.len() as u64) as usize].clone();
                report.files.remove(&rel);
                fs::remove_file(mount.join(&rel)).map_err(|e| format!("unlink {rel}: {e}"))
            }
            // List the directory: every file this worker holds there is listed.
            _ => {
                match fs::read_dir(&dir).and_then(|entries| entries.collect::<Result<Vec<_>, _>>())
                {
                    // A listing that failed part way (a session stopped underneath: ENOTCONN) is an
                    // error like any other, not a listing without names.
                    Ok(entries) => {
                        let names: Vec<String> = entries
                            .iter()
                            .map(|e| format!("{dir_rel}/{}", e.file_name().to_string_lossy()))
                            .collect();
                        for rel in &mine {
                            if !names.contains(rel) {
                                // Whether the name is missing from the listing only, or gone.
                                let looked_up = match fs::symlink_metadata(mount.join(rel)) {
                                    Ok(m) => format!("a lookup finds it ({} bytes)", m.len()),
                                    Err(e) => format!("a lookup says {e}"),
                                };
                                report.unexpected.push(format!(
                                "list {dir_rel}: {rel} is missing ({} names listed; {looked_up})",
                                names.len()
                            ));
                            }
                        }
                        Ok(())
                    }
                    Err(e) => Err(format!("list {dir_rel}: {e}")),
                }
            }
        };
        if let Err(e) = outcome {
            if churn {
                report.expected_errors += 1;
            } else {
                report.unexpected.push(e);
            }
        }
    }
    let files: Vec<serde_json::Value> = report
        .files
        .iter()
        .map(|(path, (seq, size))| serde_json::json!({"path": path, "seq": seq, "size": size}))
        .collect();
    let json = serde_json::json!({
        "worker": worker,
        "ops": report.ops,
        "expected_errors": report.expected_errors,
        "unexpected": report.unexpected,
        "files": files,
    });
    fs::write(&report_path, serde_json::to_vec_pretty(&json)?)?;
    Ok(())
}

/// Writes `data` as the whole content of `path` and closes it (which reports a write that failed
/// after it was acknowledged).
fn write_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut file = fs::File::create(path)?;
    file.write_all(data)?;
    file.sync_all()?;
    drop(file);
    Ok(())
}
