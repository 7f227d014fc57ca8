//! Several hosts on one machine: network namespaces joined by a Linux bridge.
//!
//! A [`Lan`] makes one namespace per member (a host, or etcd) and one holding the bridge (the
//! "switch"); each member has `eth0` with its own address `10.77.0.<n>/24`, plugged into the switch
//! through a veth pair. Nothing is routed to the machine's own network: the namespaces reach each
//! other only. [`Lan::partition`] takes a member's switch port down (its link is cut, as a pulled
//! cable), [`Lan::heal`] brings it up again. Processes run in a member's namespace with `nsenter
//! --net` (the network namespace only: a FUSE mount made there is visible to the test, whose mount
//! namespace it shares). Dropping the Lan kills every process left in its namespaces and deletes
//! them.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

/// A member of a [`Lan`]: its namespace and address.
#[derive(Clone, Debug)]
pub struct Member {
    /// Its name in the test (`etcd`, `a`, …).
    pub name: String,
    /// Its network namespace (`/run/netns/<ns>`).
    pub ns: String,
    /// Its address on the LAN.
    pub ip: IpAddr,
    /// Its port on the switch.
    port: String,
}

/// Namespaces joined by a bridge; see the module documentation.
pub struct Lan {
    switch: String,
    members: Vec<Member>,
}

/// Runs `ip args…`, which must succeed.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Lan {
    /// A LAN with one member per name, addressed `10.77.0.1`, `10.77.0.2`, … in that order.
    pub fn new(names: &[&str]) -> Result<Lan> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // Namespace and interface names are global and short (15 bytes): the pid keeps parallel
        // test processes apart, the counter the LANs of one process.
        let tag = format!(
            "s{}x{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let switch = format!("{tag}sw");
        let mut lan = Lan {
            switch: switch.clone(),
            members: Vec::new(),
        };
        ip(&["netns", "add", &switch])?;
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        for (i, name) in names.iter().enumerate() {
            let ns = format!("{tag}{name}");
            let port = format!("p{i}");
            ip(&["netns", "add", &ns])?;
            let member = Member {
                name: (*name).to_owned(),
                ns: ns.clone(),
                ip: IpAddr::V4(Ipv4Addr::new(10, 77, 0, u8::try_from(i + 1)?)),
                port: port.clone(),
            };
            lan.members.push(member.clone());
            ip(&[
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                &switch,
            ])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", member.ip),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &switch, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &switch, "link", "set", &port, "up"])?;
        }
        Ok(lan)
    }

    /// The member called `name`.
    pub fn member(&self, name: &str) -> Result<&Member> {
        self.members
            .iter()
            .find(|m| m.name == name)
            .with_context(|| format!("no member {name} on the LAN"))
    }

    /// Cuts `name`'s link (its switch port goes down).
    pub fn partition(&self, name: &str) -> Result<()> {
        let port = self.member(name)?.port.clone();
        ip(&["-n", &self.switch, "link", "set", &port, "down"])
    }

    /// Restores `name`'s link.
    pub fn heal(&self, name: &str) -> Result<()> {
        let port = self.member(name)?.port.clone();
        ip(&["-n", &self.switch, "link", "set", &port, "up"])
    }
}

impl Member {
    /// A command running `program` in this member's network namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.ns))
            .arg(program);
        cmd
    }

    /// Runs `work` on a thread of this process that entered this member's network namespace
    /// (its sockets are the member's); its result.
    pub fn within<T: Send>(&self, work: impl FnOnce() -> T + Send) -> Result<T> {
        let path = format!("/run/netns/{}", self.ns);
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns(2) on a descriptor we own, for this thread only (a network
                    // namespace applies per thread); the thread ends with the scope.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        bail!("setns {path}: {}", std::io::Error::last_os_error());
                    }
                    Ok(work())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the thread in {path} panicked"))?
        })
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for m in &self.members {
            // Whatever the test left running there (daemons, etcd, mounts) goes with it.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &m.ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    crate::rustix_kill(pid, libc::SIGKILL);
                }
            }
            let _ = ip(&["netns", "del", &m.ns]);
        }
        let _ = ip(&["netns", "del", &self.switch]);
    }
}
