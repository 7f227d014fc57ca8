//! A network delay line in user space, for benchmarks across "hosts" on one machine whose kernel has
//! neither netem nor fq: every IP packet routed into the TUN device `--dev` is held for
//! `--delay-ms` and written back into it (the kernel then routes it on), or dropped with
//! probability `--loss` percent. Packets leave in the order they came. Put it in a router namespace
//! with policy routing that sends traffic between two links into the device, and each packet
//! crossing the router gets the delay once: a round trip gets it twice.
//!
//!   sessionfs-delay-line --dev dl0 --delay-ms 5 --loss 0.5
//!
//! Prints `ready <dev>` once the device exists (bring it up and route into it then); runs until
//! killed.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// Packets held, each with the moment it is due, and the signal that one arrived.
type Queue = Arc<(Mutex<VecDeque<(Instant, Vec<u8>)>>, Condvar)>;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// A small deterministic generator (xorshift64*), so that a run's losses can be repeated.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dev = arg(&args, "--dev").context("--dev NAME is needed")?;
    let delay_ms: f64 = arg(&args, "--delay-ms")
        .context("--delay-ms is needed")?
        .parse()
        .context("--delay-ms")?;
    let loss: f64 = arg(&args, "--loss")
        .map_or(Ok(0.0), |v| v.parse())
        .context("--loss")?;
    let seed: u64 = arg(&args, "--seed")
        .map_or(Ok(0x9e37_79b9_7f4a_7c15), |v| v.parse())
        .context("--seed")?;
    if dev.len() >= 16 || !(0.0..=100.0).contains(&loss) || delay_ms < 0.0 {
        bail!("--dev must be shorter than 16 bytes, --loss within 0-100, --delay-ms not negative");
    }
    let mut tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..dev.len()].copy_from_slice(dev.as_bytes());
    // SAFETY: TUNSETIFF reads and writes an `ifreq`, which `IfReq` lays out (name, flags, padding
    // to the union's size); the descriptor is ours and open.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req) } != 0 {
        bail!("TUNSETIFF {dev}: {}", std::io::Error::last_os_error());
    }
    println!("ready {dev}");
    std::io::stdout().flush()?;

    let delay = Duration::from_secs_f64(delay_ms / 1000.0);
    let queue: Queue = Arc::new((Mutex::new(VecDeque::new()), Condvar::new()));
    let mut out = tun.try_clone()?;
    let sender = {
        let queue = Arc::clone(&queue);
        std::thread::spawn(move || -> Result<()> {
            let (lock, ready) = &*queue;
            loop {
                let (due, packet) = {
                    let mut q = lock.lock().map_err(|_| anyhow::anyhow!("queue poisoned"))?;
                    while q.is_empty() {
                        q = ready
                            .wait(q)
                            .map_err(|_| anyhow::anyhow!("queue poisoned"))?;
                    }
                    q.pop_front().context("a packet")?
                };
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                // A packet the kernel refuses (its route went away) is dropped, as a router would.
                let _ = out.write(&packet);
            }
        })
    };
    let mut rng = Rng(seed | 1);
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = tun.read(&mut buf).context("reading the device")?;
        if n == 0 {
            bail!("the device closed");
        }
        if loss > 0.0 && rng.unit() * 100.0 < loss {
            continue;
        }
        let (lock, ready) = &*queue;
        lock.lock()
            .map_err(|_| anyhow::anyhow!("queue poisoned"))?
            .push_back((Instant::now() + delay, buf[..n].to_vec()));
        ready.notify_one();
        if sender.is_finished() {
            bail!("the sending thread ended");
        }
    }
}
