//! Direct data (FUSE passthrough, `bridge-fs/src/direct.rs`): a large file of a local or docker session
//! is read and written by the kernel in the daemon's own descriptor, and every view of it stays exact.
//!
//! Needs a kernel with FUSE passthrough (6.9+) and the bridge running as root, as on the project's
//! machines; the test fails, not skips, where the data still passes through the bridge.

#![forbid(unsafe_code)]

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use sessionfs_tests::{docker, wait_until, Harness};

/// CPU time (user + system, clock ticks) process `pid` has used.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name (which may hold spaces) end with its closing parenthesis.
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

#[test]
fn large_files_are_read_and_written_directly_and_every_view_stays_exact() -> Result<()> {
    let mut h = Harness::new()?;
    let ws = h.create_session("direct")?;
    let size = 256 << 20;
    let data = pattern(size, 0);
    fs::write(ws.join("big"), &data)?;
    h.mount()?;
    let bridge = h.bridge_pid().context("bridge pid")?;
    let big = h.path("direct", "big");

    // 256 MiB through the bridge costs it ~0.2 s of CPU or more; read directly, next to nothing.
    let used = ticks_to_read(bridge, &big, &data)?;
    ensure!(
        used < 10,
        "the bridge used {used} ticks of CPU to read 256 MiB: its data did not go directly"
    );

    // A handle with direct data: a change behind the mount shows through it at once (one page
    // cache), and its own writes show everywhere at once: `stat`, another open, the session.
    let mut held = fs::OpenOptions::new().read(true).write(true).open(&big)?;
    fs::OpenOptions::new()
        .write(true)
        .open(ws.join("big"))?
        .write_all_at(b"behind", 4096)?;
    let mut six = [0u8; 6];
    held.read_exact_at(&mut six, 4096)?;
    ensure!(
        &six == b"behind",
        "a change behind the mount was not seen through the handle"
    );
    held.seek(SeekFrom::End(0))?;
    held.write_all(b"tail")?;
    ensure!(
        fs::metadata(&big)?.len() == size as u64 + 4,
        "stat after a direct write"
    );
    let mut other = fs::File::open(&big)?;
    other.seek(SeekFrom::Start(size as u64))?;
    let mut tail = String::new();
    other.read_to_string(&mut tail)?;
    ensure!(tail == "tail", "another open read {tail:?}");
    ensure!(
        fs::read(ws.join("big"))?.len() == size + 4,
        "the session's file"
    );
    drop((held, other));

    // Closed: small and cached opens again, with nothing stale left from the direct writes.
    fs::write(ws.join("big"), b"small now")?;
    wait_until(
        "the mount to show the file rewritten behind it",
        Duration::from_secs(5),
        || fs::read(&big).is_ok_and(|now| now == b"small now"),
    )?;
    h.unmount()?;
    Ok(())
}

#[test]
fn a_large_file_opened_to_write_is_written_directly() -> Result<()> {
    let mut h = Harness::new()?;
    let ws = h.create_session("dwrite")?;
    // An unprivileged writer below uses the mount.
    h.mount_args.push("--allow-other".into());
    h.mount()?;
    let bridge = h.bridge_pid().context("bridge pid")?;
    let file = h.path("dwrite", "grows");
    // Created through the mount and closed (a create has no direct data), 1 MiB as an open with
    // direct data needs.
    let seed = vec![1u8; 1 << 20];
    fs::write(&file, &seed)?;
    let data = pattern(256 << 20, 3);
    // The same bytes written through the descriptor that creates their file (no direct data): what
    // carrying them costs the bridge, measured under the same load as what follows.
    let control = h.path("dwrite", "through-the-bridge");
    let before = cpu_ticks(bridge)?;
    let mut created = fs::File::create(&control)?;
    for chunk in data.chunks(1 << 20) {
        created.write_all(chunk)?;
    }
    created.sync_all()?;
    drop(created);
    let carried = cpu_ticks(bridge)? - before;
    let before = cpu_ticks(bridge)?;
    let mut writer = fs::OpenOptions::new().write(true).open(&file)?;
    for chunk in data.chunks(1 << 20) {
        writer.write_all(chunk)?;
    }
    // Its size shows at once, through the mount and in the session.
    ensure!(
        fs::metadata(&file)?.len() == data.len() as u64,
        "stat through the mount while the writer is open"
    );
    ensure!(
        fs::metadata(ws.join("grows"))?.len() == data.len() as u64,
        "the session's file while the writer is open"
    );
    writer.sync_all()?;
    drop(writer);
    let used = cpu_ticks(bridge)? - before;
    // Written directly, the bridge only sees the writes' change events and the `fsync` (under the
    // suites' load 10-25 ticks here, against 60 or more to carry them; an absolute bound was flaky).
    ensure!(
        used * 3 < carried,
        "the bridge used {used} ticks of CPU to write 256 MiB to a file opened to write, {carried} to \
         carry the same through the descriptor that created a file: the data did not go directly"
    );
    ensure!(fs::read(ws.join("grows"))? == data, "the session's file");
    ensure!(
        fs::read(&file)? == data,
        "the file read back through the mount"
    );

    // An unprivileged writer's append through a direct handle clears the set-user-ID bit, as on a
    // local file system (the kernel asks the bridge to, before the write).
    let setuid = h.path("dwrite", "setuid");
    fs::write(&setuid, &seed)?;
    fs::set_permissions(&setuid, fs::Permissions::from_mode(0o4777))?;
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
        ])
        .arg("printf more >> \"$1\"")
        .arg("sh")
        .arg(&setuid)
        .output()
        .context("setpriv (util-linux)")?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        fs::read(ws.join("setuid"))?.ends_with(b"\x01more"),
        "the append reached the session"
    );
    for (view, mode) in [
        ("the mount", fs::metadata(&setuid)?.mode()),
        ("the session", fs::metadata(ws.join("setuid"))?.mode()),
    ] {
        ensure!(
            mode & 0o7777 == 0o777,
            "{view} shows mode {mode:o} after an unprivileged append"
        );
    }
    h.unmount()?;
    Ok(())
}

#[test]
fn nothing_fetched_before_a_write_is_answered_after_it() -> Result<()> {
    let mut h = Harness::new()?;
    let ws = h.create_session("dfetch")?;
    h.mount()?;
    let mut stale = Vec::new();
    for round in 0..20 {
        let dir = format!("w{round}");
        small_files_behind(&h, &ws, "dfetch", &dir, &["a", "b", "c", "d"])?;
        let a = h.path("dfetch", &format!("{dir}/a"));
        // Opened to write: direct data, so the bridge never sees the write (a fetched copy from
        // before it was once served after it).
        let writer = fs::OpenOptions::new().write(true).open(&a)?;
        // A walk reads the directory's other files: the bridge fetches its small files ahead,
        // `a` with them, as it is now.
        for name in ["b", "c", "d"] {
            fs::read(h.path("dfetch", &format!("{dir}/{name}")))?;
        }
        writer.write_all_at(b"new", 0)?;
        drop(writer);
        let got = fs::read(&a)?;
        if got != b"new a" {
            stale.push((round, String::from_utf8_lossy(&got).into_owned()));
        }
    }
    ensure!(
        stale.is_empty(),
        "reads after a write returned older content: {stale:?}"
    );
    h.unmount()?;
    Ok(())
}

#[test]
fn sizes_listed_while_a_file_is_appended_to_are_current() -> Result<()> {
    let mut h = Harness::new()?;
    let ws = h.create_session("dlist")?;
    h.mount()?;
    let mut wrong = Vec::new();
    for round in 0..10 {
        let dir = format!("l{round}");
        small_files_behind(&h, &ws, "dlist", &dir, &["a", "b", "c"])?;
        let path = |name: &str| h.path("dlist", &format!("{dir}/{name}"));
        // Listed (the bridge may remember the listing with its sizes), then grown.
        let _ = fs::read_dir(path(""))?.count();
        let mut writer = fs::OpenOptions::new().append(true).open(path("a"))?;
        writer.write_all(&vec![7u8; 100_000])?;
        // Listed again and looked up by a new name: the size is the file's now.
        let listed: Vec<_> = fs::read_dir(path(""))?
            .map(|e| e.and_then(|e| e.metadata()).map(|m| m.len()))
            .collect::<std::io::Result<_>>()?;
        fs::hard_link(path("a"), path("a2"))?;
        let sizes = (
            fs::metadata(path("a"))?.len(),
            fs::metadata(path("a2"))?.len(),
        );
        let now = ("old a".len() + 100_000) as u64;
        if sizes != (now, now) || !listed.contains(&now) {
            wrong.push((round, sizes, listed));
        }
        drop(writer);
    }
    ensure!(wrong.is_empty(), "sizes while appended to: {wrong:?}");
    h.unmount()?;
    Ok(())
}

#[test]
fn a_truncation_answered_before_direct_writes_is_not_remembered_after_them() -> Result<()> {
    const ROUNDS: usize = 1000;
    let mut h = Harness::new()?;
    let ws = h.create_session("dtrunc")?;
    h.mount()?;
    // Rewritten through one name and read through the other, by two writers at once: each rewrite
    // is an open to write (direct data), a truncation answered by the bridge, and writes it never
    // sees. The truncation's answer (size 0) must not outlive them: a `stat` answered from it makes
    // the next read return nothing.
    let wrong: Vec<String> = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let (ws, h) = (&ws, &h);
                scope.spawn(move || -> Result<Vec<String>> {
                    let (name, link) = (format!("t{w}"), format!("t{w}-link"));
                    fs::write(ws.join(&name), b"first")?;
                    fs::hard_link(ws.join(&name), ws.join(&link))?;
                    let (name, link) = (h.path("dtrunc", &name), h.path("dtrunc", &link));
                    wait_until("the link to show", Duration::from_secs(5), || link.exists())?;
                    let mut wrong = Vec::new();
                    for round in 0..ROUNDS {
                        let content = format!("writer {w} round {round} ").repeat(round % 7 + 1);
                        fs::write(&link, &content)?;
                        let got = fs::read(&name)?;
                        if got != content.as_bytes() {
                            let got = String::from_utf8_lossy(&got).into_owned();
                            wrong.push(format!("writer {w} round {round}: read {got:?}"));
                        }
                    }
                    Ok(wrong)
                })
            })
            .collect();
        writers
            .into_iter()
            .map(|t| t.join().map_err(|_| anyhow::anyhow!("a writer panicked"))?)
            .collect::<Result<Vec<_>>>()
            .map(|all| all.concat())
    })?;
    ensure!(
        wrong.is_empty(),
        "{} of {} reads after a rewrite were wrong: {:?}",
        wrong.len(),
        2 * ROUNDS,
        &wrong[..wrong.len().min(5)]
    );
    h.unmount()?;
    Ok(())
}

#[test]
fn a_name_looked_up_after_a_direct_writer_closed_shows_the_final_size() -> Result<()> {
    let mut h = Harness::new()?;
    let ws = h.create_session("dname")?;
    h.mount()?;
    let mut wrong = Vec::new();
    for round in 0..100 {
        let dir = format!("n{round}");
        small_files_behind(&h, &ws, "dname", &dir, &["a", "b"])?;
        // A second name of `a`, made behind the mount: the kernel has never looked it up.
        fs::hard_link(ws.join(&dir).join("a"), ws.join(&dir).join("a-link"))?;
        let path = |name: &str| h.path("dname", &format!("{dir}/{name}"));
        wait_until("the link to be listed", Duration::from_secs(5), || {
            fs::read_dir(path("")).is_ok_and(|d| d.count() == 3)
        })?;
        // Written directly, listed in the middle (the bridge may remember the listing, with the
        // size of that moment), written again, closed.
        let mut writer = fs::OpenOptions::new().append(true).open(path("a"))?;
        writer.write_all(&[1u8; 1000])?;
        let _ = fs::read_dir(path(""))?.count();
        writer.write_all(&[2u8; 1000])?;
        drop(writer);
        // The new name's lookup right after the close, while its release may be under way.
        let size = fs::metadata(path("a-link"))?.len();
        let now = ("old a".len() + 2000) as u64;
        if size != now {
            wrong.push((round, size));
        }
    }
    ensure!(
        wrong.is_empty(),
        "a name looked up after the writer closed showed an older size (round, size): {wrong:?}"
    );
    h.unmount()?;
    Ok(())
}

#[test]
fn a_create_of_a_file_with_direct_handles_joins_them() -> Result<()> {
    let mut h = Harness::new()?;
    let ws = h.create_session("dcreate")?;
    let data = pattern(2 << 20, 3);
    fs::write(ws.join("big"), &data)?;
    h.mount()?;
    // Held open with direct data (2 MiB, read-only).
    let held = fs::File::open(h.path("dcreate", "big"))?;
    let mut failed = Vec::new();
    for round in 0..50 {
        let name = format!("other-{round}");
        let other = h.path("dcreate", &name);
        // The kernel learns the name is missing, then it becomes a second name of `big` behind the
        // mount: an open with O_CREAT before the change event arrives is a create through the
        // mount, of the file that has direct handles. The kernel refuses (`EIO`) a handle of the
        // other kind on it; after the event, the open is an ordinary one. Either must work.
        ensure!(!other.exists(), "{name} exists before it was made");
        fs::hard_link(ws.join("big"), ws.join(&name))?;
        match fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&other)
        {
            Ok(file) => file.write_all_at(b"joined", 0)?,
            Err(e) => failed.push((round, e.to_string())),
        }
    }
    ensure!(failed.is_empty(), "opens with O_CREAT failed: {failed:?}");
    let mut head = [0u8; 6];
    held.read_exact_at(&mut head, 0)?;
    ensure!(&head == b"joined", "the held handle read {head:?}");
    drop(held);
    h.unmount()?;
    Ok(())
}

/// Makes directory `dir` in session `id`'s workspace `ws`, behind the mount, with a small file per
/// name (holding "old <name>"), and waits until the mount shows them.
fn small_files_behind(
    h: &Harness,
    ws: &std::path::Path,
    id: &str,
    dir: &str,
    names: &[&str],
) -> Result<()> {
    fs::create_dir(ws.join(dir))?;
    for name in names {
        fs::write(ws.join(dir).join(name), format!("old {name}"))?;
    }
    let last = names.last().context("no names")?;
    wait_until("the files to show", Duration::from_secs(5), || {
        h.path(id, &format!("{dir}/{last}")).exists()
    })?;
    Ok(())
}

/// The bridge's CPU ticks for reading `path` whole, which must hold `data`.
fn ticks_to_read(bridge: u32, path: &std::path::Path, data: &[u8]) -> Result<u64> {
    let before = cpu_ticks(bridge)?;
    let mut read = Vec::with_capacity(data.len());
    fs::File::open(path)?.read_to_end(&mut read)?;
    let used = cpu_ticks(bridge)? - before;
    ensure!(read == data, "the file read through the mount differs");
    Ok(used)
}

/// The daemon's pid in the session's registry record, and its container's main process.
fn recorded_and_actual_pid(h: &Harness, id: &str) -> Result<(Option<u64>, u64)> {
    let recorded = h.session_json(id)?["pid"].as_u64();
    let actual = docker(&[
        "inspect",
        "-f",
        "{{.State.Pid}}",
        &format!("sessionfs-{id}"),
    ])?
    .trim()
    .parse()?;
    Ok((recorded, actual))
}

#[test]
fn large_files_of_a_docker_session_are_read_directly_across_a_container_restart() -> Result<()> {
    let mut h = Harness::new()?;
    let id = h.unique_id("ddirect");
    h.create_docker_session(&id, &[])?;
    let (recorded, actual) = recorded_and_actual_pid(&h, &id)?;
    ensure!(
        recorded == Some(actual),
        "the registry holds pid {recorded:?}, the container's daemon is {actual}"
    );
    h.mount()?;
    let bridge = h.bridge_pid().context("bridge pid")?;
    let big = h.path(&id, "big");
    let data = pattern(256 << 20, 7);
    // Written through the bridge (a create has no direct data); read back directly.
    fs::write(&big, &data)?;
    let used = ticks_to_read(bridge, &big, &data)?;
    ensure!(
        used < 10,
        "the bridge used {used} ticks of CPU to read 256 MiB of a docker session: its data did \
         not go directly"
    );

    // A restarted container has a new daemon with a new pid: the reconciler records it from the
    // events, and reads go directly again (through the old pid they could not).
    docker(&["restart", "-t", "1", &format!("sessionfs-{id}")])?;
    wait_until(
        "the registry to record the restarted daemon's pid",
        Duration::from_secs(10),
        || {
            recorded_and_actual_pid(&h, &id).is_ok_and(|(r, a)| r == Some(a))
                && h.session_json(&id).is_ok_and(|v| v["state"] == "running")
        },
    )
    .with_context(|| h.bridge_log())?;
    wait_until(
        "the file to be readable after the restart",
        Duration::from_secs(10),
        || fs::metadata(&big).is_ok_and(|m| m.len() == data.len() as u64),
    )?;
    let used = ticks_to_read(bridge, &big, &data)?;
    ensure!(
        used < 10,
        "after a container restart the bridge used {used} ticks of CPU to read 256 MiB"
    );
    h.unmount()?;
    Ok(())
}
