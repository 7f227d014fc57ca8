//! The audit's findings that concern the core (issue "Hardening"), each pinned by a test that
//! failed before its fix.

use std::io::BufRead;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Child, Command, Stdio};

use super::*;

/// The daemon's identity of `path`, as its open reply would give it.
fn attr_of(path: &std::path::Path) -> sessionfs_proto::Attr {
    let meta = std::fs::metadata(path).unwrap();
    sessionfs_proto::Attr {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.len(),
        mode: meta.mode(),
        nlink: meta.nlink() as u32,
        ..Default::default()
    }
}

/// An unprivileged process (uid and gid 65534, no groups) holding `path` open with `O_PATH` as
/// descriptor 9, which needs no right on the file itself. Killed when dropped.
struct Holder(Child);

impl Holder {
    fn new(path: &std::path::Path) -> Holder {
        let script = "import os, sys, time\n\
                      os.dup2(os.open(sys.argv[1], os.O_PATH), 9)\n\
                      print('ready', flush=True)\n\
                      time.sleep(60)\n";
        let mut child = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
            ])
            .arg(script)
            .arg(path)
            .stdout(Stdio::piped())
            .spawn()
            .expect("setpriv and /usr/bin/python3");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the holder did not start");
        Holder(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Finding 1: direct data trusted the daemon's descriptor. The bridge (root) reopened
/// `/proc/<pid>/fd/<n>` read-write for whatever the daemon named and checked only the identity the
/// daemon itself claimed. A daemon with fewer rights than the bridge that holds an `O_PATH`
/// descriptor of a root-only file (any user may, with search permission on its directory) got it
/// as a backing file, readable and writable through the mount. Now the bridge reopens it with the
/// daemon's credentials (`direct::open_daemon_fd`), so the file goes through the bridge, and the
/// daemon's request handling refuses it as usual.
#[test]
fn direct_data_gives_no_more_than_the_daemons_own_rights() {
    let b = Bridge::new();
    let outside = tempfile::tempdir().unwrap();
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, b"root only").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let holder = Holder::new(&secret);
    let created = b.create(b.root, "f", libc::O_RDWR | libc::O_EXCL);
    let ino = created.ino();
    b.close(created.fh());
    b.set_daemon_pid(holder.0.id());
    b.daemon.open_as(9, attr_of(&secret));
    let opened = b.open(ino, libc::O_RDWR);
    let Answer::Opened { fh, direct, .. } = opened else {
        panic!("open failed: {opened:?}");
    };
    assert!(
        direct.is_none(),
        "a root-only file became the backing file of an unprivileged daemon"
    );
    b.close(fh);
    assert_eq!(std::fs::read(&secret).unwrap(), b"root only");
}

/// Finding 1, the other half: only a regular file becomes a backing file. A container made the
/// host open a block device read-write: the type was checked after the open. It is now checked on
/// an `O_PATH` descriptor, which opens nothing (that the device is never opened is not observable
/// here; the refusal is). Here the daemon (this process, root) names its descriptor of `/dev/null`.
#[test]
fn only_a_regular_file_becomes_a_backing_file() {
    let b = Bridge::new();
    let created = b.create(b.root, "g", libc::O_RDWR | libc::O_EXCL);
    let ino = created.ino();
    b.close(created.fh());
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&null) as u32;
    b.daemon
        .open_as(fd, attr_of(std::path::Path::new("/dev/null")));
    let opened = b.open(ino, libc::O_RDWR);
    let Answer::Opened { fh, direct, .. } = opened else {
        panic!("open failed: {opened:?}");
    };
    assert!(direct.is_none(), "a device became a backing file");
    b.close(fh);
}
