//! The differential scenario: one sequence of file operations, through std::fs and through real
//! tools (cp, tar, git, rg, mv, ln, chmod, truncate, dd, touch, mkfifo), whose observations — bytes,
//! metadata and errors — must be identical wherever it runs: on a plain local directory and on any
//! mounted session, local or docker. [`scenario`] runs it; [`assert_same`] compares two runs.

use std::collections::hash_map::DefaultHasher;
use std::ffi::CString;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

/// Observations in order: (step, what was seen).
pub type Log = Vec<(String, String)>;

fn note(log: &mut Log, step: &str, seen: impl std::fmt::Debug) {
    log.push((step.to_owned(), format!("{seen:?}")));
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn err_of<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("errno {:?}", e.raw_os_error()),
    }
}

/// Runs a tool in `dir`; records exit status and stdout.
fn tool(log: &mut Log, dir: &Path, step: &str, cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .env("GIT_AUTHOR_DATE", "2001-02-03T04:05:06Z")
        .env("GIT_COMMITTER_DATE", "2001-02-03T04:05:06Z")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e} (the test setup installs it)"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    note(log, step, (out.status.code(), stdout));
}

/// Every entry below `root` (sorted) with type, permissions, size, link count and content hash.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            // The index caches stat data (inode, device, ctime), which differs by design.
            if rel.ends_with(".git/index") {
                continue;
            }
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            // An archive records the members' mtimes, which differ between runs; its members are
            // compared after extraction instead.
            let content = if ft.is_file() && rel.ends_with(".tar") {
                0
            } else if ft.is_file() {
                hash(&fs::read(&p).unwrap())
            } else if ft.is_symlink() {
                hash(fs::read_link(&p).unwrap().as_os_str().as_bytes())
            } else {
                0
            };
            let size = if ft.is_dir() { 0 } else { m.len() };
            out.push(format!(
                "{rel} mode={:o} size={size} nlink={} hash={content:x}",
                m.mode(),
                if ft.is_dir() { 0 } else { m.nlink() }
            ));
            if ft.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

fn renameat2(dir: &Path, from: &str, to: &str, flags: u32) -> String {
    let a = CString::new(dir.join(from).as_os_str().as_bytes()).unwrap();
    let b = CString::new(dir.join(to).as_os_str().as_bytes()).unwrap();
    // SAFETY: valid NUL-terminated paths; renameat2 has no other preconditions.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        "ok".into()
    } else {
        format!("errno {:?}", std::io::Error::last_os_error().raw_os_error())
    }
}

fn xattr(path: &Path) -> String {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new("user.sessionfs").unwrap();
    let value = b"v1";
    // SAFETY: valid pointers and lengths for the duration of the calls.
    unsafe {
        if libc::setxattr(
            p.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        ) != 0
        {
            return format!(
                "set errno {:?}",
                std::io::Error::last_os_error().raw_os_error()
            );
        }
        let mut buf = [0u8; 16];
        let n = libc::getxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        );
        if n < 0 {
            return format!(
                "get errno {:?}",
                std::io::Error::last_os_error().raw_os_error()
            );
        }
        let mut list = [0u8; 256];
        let l = libc::listxattr(p.as_ptr(), list.as_mut_ptr().cast(), list.len());
        let removed = libc::removexattr(p.as_ptr(), name.as_ptr());
        let gone = libc::getxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        );
        format!(
            "value={:?} list_has_it={} removed={removed} after={gone}",
            &buf[..n as usize],
            l > 0
                && list[..l as usize]
                    .windows(14)
                    .any(|w| w == b"user.sessionfs")
        )
    }
}

/// The scenario. Everything it records must be the same wherever `root` lives.
pub fn scenario(root: &Path) -> Log {
    let mut log = Log::new();
    let p = |rel: &str| root.join(rel);

    // Plain std::fs.
    fs::write(p("a.txt"), b"hello\nworld\n").unwrap();
    note(&mut log, "read a.txt", fs::read(p("a.txt")).unwrap());
    fs::create_dir_all(p("d1/d2/d3")).unwrap();
    for i in 0..20 {
        fs::write(
            p(&format!("d1/d2/f{i:02}")),
            format!("file {i}\n").repeat(i + 1),
        )
        .unwrap();
    }
    let mut names: Vec<_> = fs::read_dir(p("d1/d2"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    note(&mut log, "readdir d1/d2", names);
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(p("a.txt"))
        .unwrap();
    f.write_all(b"appended\n").unwrap();
    drop(f);
    note(&mut log, "append", fs::read(p("a.txt")).unwrap());

    // Random access on a file larger than one transfer chunk.
    let big: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(p("big.bin"), &big).unwrap();
    note(&mut log, "big hash", hash(&fs::read(p("big.bin")).unwrap()));
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p("big.bin"))
        .unwrap();
    f.seek(SeekFrom::Start(3_000_001)).unwrap();
    f.write_all(b"PATCH").unwrap();
    f.seek(SeekFrom::Start(2_999_998)).unwrap();
    let mut buf = [0u8; 12];
    f.read_exact(&mut buf).unwrap();
    note(&mut log, "pwrite+pread", buf);
    drop(f);

    // Rename, links, permissions, truncation.
    fs::rename(p("a.txt"), p("d1/b.txt")).unwrap();
    note(
        &mut log,
        "renamed away",
        (p("a.txt").exists(), fs::read(p("d1/b.txt")).unwrap()),
    );
    std::os::unix::fs::symlink("d1/b.txt", p("link")).unwrap();
    note(
        &mut log,
        "symlink",
        (
            fs::read_link(p("link")).unwrap(),
            fs::read(p("link")).unwrap(),
        ),
    );
    std::os::unix::fs::symlink("/nonexistent/target", p("dangling")).unwrap();
    note(
        &mut log,
        "dangling",
        (
            fs::read_link(p("dangling")).unwrap(),
            err_of(fs::metadata(p("dangling"))),
        ),
    );
    fs::hard_link(p("d1/b.txt"), p("hard")).unwrap();
    let (m1, m2) = (
        fs::metadata(p("d1/b.txt")).unwrap(),
        fs::metadata(p("hard")).unwrap(),
    );
    note(
        &mut log,
        "hard link",
        (m1.nlink(), m2.nlink(), m1.ino() == m2.ino()),
    );
    fs::write(p("hard"), b"through the link\n").unwrap();
    note(
        &mut log,
        "write via hard link",
        fs::read(p("d1/b.txt")).unwrap(),
    );
    fs::set_permissions(p("hard"), fs::Permissions::from_mode(0o640)).unwrap();
    note(
        &mut log,
        "chmod",
        fs::metadata(p("d1/b.txt")).unwrap().mode(),
    );
    fs::remove_file(p("hard")).unwrap();
    note(
        &mut log,
        "unlink one name",
        fs::metadata(p("d1/b.txt")).unwrap().nlink(),
    );
    let f = fs::OpenOptions::new()
        .write(true)
        .open(p("d1/b.txt"))
        .unwrap();
    f.set_len(4).unwrap();
    drop(f);
    note(&mut log, "set_len", fs::read(p("d1/b.txt")).unwrap());
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p("new"))
        .unwrap();
    note(&mut log, "create_new mode", f.metadata().unwrap().mode());
    drop(f);

    // rename flags.
    fs::write(p("x"), b"x").unwrap();
    fs::write(p("y"), b"y").unwrap();
    note(
        &mut log,
        "noreplace",
        renameat2(root, "x", "y", libc::RENAME_NOREPLACE),
    );
    note(
        &mut log,
        "exchange",
        renameat2(root, "x", "y", libc::RENAME_EXCHANGE),
    );
    note(
        &mut log,
        "exchanged",
        (fs::read(p("x")).unwrap(), fs::read(p("y")).unwrap()),
    );

    // Errors.
    note(&mut log, "read missing", err_of(fs::read(p("missing"))));
    note(&mut log, "mkdir existing", err_of(fs::create_dir(p("d1"))));
    note(&mut log, "rmdir non-empty", err_of(fs::remove_dir(p("d1"))));
    note(&mut log, "rmdir file", err_of(fs::remove_dir(p("x"))));
    note(&mut log, "unlink dir", err_of(fs::remove_file(p("d1"))));
    note(
        &mut log,
        "open dir for writing",
        err_of(fs::OpenOptions::new().write(true).open(p("d1"))),
    );
    note(
        &mut log,
        "rename into own child",
        err_of(fs::rename(p("d1"), p("d1/d2/inside"))),
    );
    note(
        &mut log,
        "create under a file",
        err_of(fs::write(p("x/sub"), b"")),
    );
    note(
        &mut log,
        "create_new existing",
        err_of(
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p("x")),
        ),
    );
    note(
        &mut log,
        "long name",
        err_of(fs::write(p(&"n".repeat(300)), b"")),
    );
    note(&mut log, "xattrs", xattr(&p("x")));

    // Real tools.
    tool(&mut log, root, "cp -r", "cp", &["-r", "d1", "d1copy"]);
    tool(&mut log, root, "tar c", "tar", &["cf", "t.tar", "d1"]);
    fs::create_dir(p("untar")).unwrap();
    tool(
        &mut log,
        root,
        "tar x",
        "tar",
        &["xf", "t.tar", "-C", "untar"],
    );
    tool(&mut log, root, "tar t", "tar", &["tf", "t.tar"]);
    tool(&mut log, root, "mv", "mv", &["d1copy", "moved"]);
    tool(
        &mut log,
        root,
        "ln -s",
        "ln",
        &["-s", "moved/d2/f03", "sym"],
    );
    tool(&mut log, root, "ln", "ln", &["moved/d2/f04", "hard2"]);
    tool(&mut log, root, "chmod", "chmod", &["600", "moved/d2/f05"]);
    tool(
        &mut log,
        root,
        "truncate",
        "truncate",
        &["-s", "10000", "moved/d2/f06"],
    );
    tool(
        &mut log,
        root,
        "dd",
        "dd",
        &[
            "if=/dev/zero",
            "of=zeros",
            "bs=4096",
            "count=64",
            "status=none",
        ],
    );
    tool(
        &mut log,
        root,
        "dd conv=notrunc",
        "dd",
        &[
            "if=moved/d2/f07",
            "of=zeros",
            "bs=1",
            "seek=5000",
            "conv=notrunc",
            "status=none",
        ],
    );
    tool(
        &mut log,
        root,
        "touch -d",
        "touch",
        &["-d", "2001-02-03 04:05:06 UTC", "moved/d2/f08"],
    );
    note(
        &mut log,
        "mtime",
        fs::metadata(p("moved/d2/f08")).unwrap().mtime(),
    );
    tool(&mut log, root, "mkfifo", "mkfifo", &["fifo"]);
    note(
        &mut log,
        "fifo type",
        fs::symlink_metadata(p("fifo")).unwrap().file_type(),
    );
    tool(
        &mut log,
        root,
        "rg",
        "rg",
        &["-n", "--sort", "path", "file 1", "moved"],
    );
    tool(
        &mut log,
        root,
        "git init",
        "git",
        &["init", "-q", "-b", "main", "repo"],
    );
    fs::write(p("repo/README"), b"hello git\n").unwrap();
    fs::create_dir(p("repo/src")).unwrap();
    fs::write(p("repo/src/main.rs"), b"fn main() {}\n").unwrap();
    tool(&mut log, &p("repo"), "git add", "git", &["add", "-A"]);
    tool(
        &mut log,
        &p("repo"),
        "git commit",
        "git",
        &["commit", "-q", "-m", "first"],
    );
    fs::write(p("repo/README"), b"changed\n").unwrap();
    tool(
        &mut log,
        &p("repo"),
        "git status",
        "git",
        &["status", "--porcelain"],
    );
    tool(
        &mut log,
        &p("repo"),
        "git log",
        "git",
        &["log", "--format=%H %s"],
    );
    tool(&mut log, &p("repo"), "git diff", "git", &["diff", "--stat"]);

    note(&mut log, "final tree", tree(root));
    log
}

/// Panics, naming the first differing step, unless `seen` (a run on `what`) equals `expected`.
pub fn assert_same(expected: &Log, seen: &Log, what: &str) {
    for (want, got) in expected.iter().zip(seen) {
        assert_eq!(
            want, got,
            "step `{}` differs between the local directory and {what}",
            want.0
        );
    }
    assert_eq!(
        expected.len(),
        seen.len(),
        "{what} recorded a different number of steps"
    );
}
