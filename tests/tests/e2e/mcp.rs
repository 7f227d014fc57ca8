//! The MCP server driven by a real MCP client written elsewhere: the official Python SDK (`mcp` on PyPI,
//! installed by `scripts/install-deps.sh` into a virtualenv) runs the pytest suite in `tests/mcp/`
//! against `sessionfs mcp` over stdio (and one test over streamable HTTP), with a local session and a
//! Docker session mounted by a real bridge. The suite checks the tool listing and schemas, every tool's
//! happy path, the error cases, escape attempts through `..`, absolute paths and symlinks, and files
//! crossing between MCP and the mount both ways. Never skipped: without the virtualenv, Docker or FUSE
//! this test fails.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use sessionfs_tests::{wait_until, Harness};

/// The virtualenv's Python ($SESSIONFS_PYTHON, else ~/.cache/sessionfs-tools/venv/bin/python).
fn python() -> Result<PathBuf> {
    let path = match std::env::var_os("SESSIONFS_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => {
            let tools = match std::env::var_os("SESSIONFS_TOOLS") {
                Some(t) => PathBuf::from(t),
                None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
                    .join(".cache/sessionfs-tools"),
            };
            tools.join("venv/bin/python")
        }
    };
    ensure!(
        path.is_file(),
        "{} is missing: run scripts/install-deps.sh (it installs the MCP Python SDK)",
        path.display()
    );
    Ok(path)
}

#[test]
fn python_sdk_drives_the_session_tools() -> Result<()> {
    let python = python()?;
    let mut h = Harness::new()?;
    let local = h.unique_id("mcploc");
    h.create_session(&local)?;
    let docker = h.unique_id("mcpdk");
    h.create_docker_session(&docker, &[])?;
    h.mount()?;
    wait_until(
        "both sessions in the mount root",
        Duration::from_secs(5),
        || {
            let names = h.root_names();
            names.contains(&local) && names.contains(&docker)
        },
    )?;
    let outside = h.dir.path().join("outside");
    std::fs::create_dir(&outside)?;
    let sessions = serde_json::json!([
        {"id": local, "backend": "local"},
        {"id": docker, "backend": "docker"},
    ]);
    let suite = sessionfs_tests::tests_dir().join("mcp");
    let bin = sessionfs_tests::bin_dir()?.join("sessionfs");
    let out = Command::new("timeout")
        .arg("900")
        .arg(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE"])
        .arg(&suite)
        .current_dir(&suite)
        .env("SESSIONFS_BIN", &bin)
        .env("SESSIONFS_HOME", &h.home)
        .env("SESSIONFS_MOUNT", &h.mountpoint)
        .env("SESSIONFS_MCP_SESSIONS", sessions.to_string())
        .env("SESSIONFS_OUTSIDE", &outside)
        .env("SESSIONFS_DAEMON", bin.with_file_name("sessionfsd"))
        .output()
        .context("running pytest")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    ensure!(
        out.status.success(),
        "the MCP Python suite failed ({}); bridge log:\n{}",
        out.status,
        h.bridge_log()
    );
    // Every test ran and passed: none skipped, none deselected.
    let summary = stdout.lines().last().unwrap_or_default();
    ensure!(
        summary.contains(" passed")
            && !summary.contains("skipped")
            && !summary.contains("deselected"),
        "unexpected pytest summary: {summary}"
    );
    Ok(())
}
