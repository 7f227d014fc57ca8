//! pjdfstest, the POSIX file system conformance suite, against a mounted session.
//!
//! The binary comes from `$PJDFSTEST` (the project's test setup installs it). It needs a `tests` user
//! and group, which the setup creates. The summary line is printed for the record.

#![forbid(unsafe_code)]

use std::process::Command;

use anyhow::{bail, Context, Result};
use sessionfs_tests::Harness;

#[test]
fn pjdfstest_passes_on_a_mounted_session() -> Result<()> {
    let bin = std::env::var_os("PJDFSTEST").context(
        "PJDFSTEST is not set; run the tests through scripts/test.sh, which installs pjdfstest",
    )?;
    let mut h = Harness::new()?;
    h.create_session("posix")?;
    // pjdfstest acts as several users.
    h.mount_args.push("--allow-other".into());
    h.mount()?;
    let out = Command::new(&bin)
        .arg("-p")
        .arg(h.path("posix", ""))
        .output()
        .with_context(|| format!("running {}", bin.to_string_lossy()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("Summary:"))
        .with_context(|| {
            format!(
                "pjdfstest printed no summary:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    eprintln!("pjdfstest: {summary}");
    if !summary.contains(" 0 failed") || !out.status.success() {
        let failed: Vec<&str> = stdout.lines().filter(|l| l.contains("FAILED")).collect();
        bail!("pjdfstest failures: {summary}\n{}", failed.join("\n"));
    }
    h.unmount()?;
    Ok(())
}
