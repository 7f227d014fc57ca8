#!/usr/bin/env python3
"""sessionfs benchmark suite: sessionfs next to a local directory, bindfs, sshfs and `docker exec`.

One run compares, on the same data, these targets:

  local             a directory on local disk (the physical limit)
  bindfs            bindfs (FUSE passthrough) of a local directory
  sshfs             sshfs to a local directory over loopback, through a private sshd on 127.0.0.1
                    (its own generated keys and config, in the work directory)
  sessionfs-local   a local-backend session, mounted by `sessionfs mount`
  sessionfs-docker  a docker-backend session (image from `sessionfs image build`), same mount
  docker-exec       `docker exec <container> cat <file>` per file, in the sessionfs-docker container;
                    measured for the per-file read workload only (whole-tree rg is extrapolated)

Across hosts (not in the default set; --targets local,sshfs-remote,sessionfs-remote):

  sessionfs-remote  a session of host A mounted on host B: two network namespaces joined by a router
                    namespace whose traffic goes through a user-space delay line (sessionfs-delay-line:
                    --remote-rtt ms round trip, --remote-loss % of packets dropped each way), checked
                    with ping and a TCP throughput probe before any figure is taken; etcd on B
  sshfs-remote      sshfs on B to an sshd on A, over the same link

Workloads, on a real tree of >= N files (a sorted, deterministic selection of crate directories from the
cargo registry sources, made a git repository with one commit, prepared once, in /dev/shm where it can):

  tar extraction    `tar -xf tree.tar -C <target>` plus a final `sync` (this is how every target gets the tree)
  find              `find <tree> | wc -l`, cold and warm
  rg                `rg -c -F <pattern> <tree>`, cold and warm
  git status        `git status --porcelain`, cold and warm
  fio               1 MiB sequential write (--end_fsync=1) and read, 4 KiB random read; buffered I/O
  stat latency      `os.lstat` of every file of the tree, warm: p50/p99
  per-file read     open+read+close of an evenly spaced sample of files, warm (docker-exec: `docker exec cat`)
  change propagation a new value written through the backing side, polled through the target: p50/p99
  idle RSS          of the bridge (`sessionfs mount`) and of each `sessionfsd`, after the workloads
  scale             (separate) K local sessions in their own SESSIONFS_HOME, all mounted: bridge RSS

Cold = `sync; echo 3 > /proc/sys/vm/drop_caches` before the run (sshfs is also remounted, it has caches of
its own), then 1.1 s of quiet so that sessionfs's 1 s attribute TTL has certainly expired. Warm = after one
untimed run. Each timed workload runs R times; the median is reported.

Writes bench.json (machine, versions, every raw sample, medians), bench.md (tables, ratios against local,
the issue's targets as met/missed) and bench.png (ratio charts) to --out. Everything it creates (mounts,
sshd, sessions, containers, volumes, images, the work directory) is torn down at the end, also on errors
and on SIGINT/SIGTERM/SIGHUP, and every unmount is verified.

Needs root (drop_caches, chown in tar, sshd). Run it through scripts/bench.sh, which installs the tools and
builds the binaries; `--quick` is a smoke test (1000 files, 32 MiB fio, 1 run, 20 scale sessions).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import pwd
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ALL_TARGETS = ["local", "bindfs", "sshfs", "sessionfs-local", "sessionfs-docker", "docker-exec"]
REMOTE_TARGETS = ["sshfs-remote", "sessionfs-remote"]
# The link of the remote targets: host A (serves), router R (delay line), host B (mounts).
LINK_A, LINK_R_A, LINK_B, LINK_R_B = "10.79.1.2", "10.79.1.1", "10.79.2.2", "10.79.2.1"
SESSIONFS_TARGETS = ["sessionfs-local", "sessionfs-docker"]
MiB = 1 << 20
TREE = "tree"  # the top-level directory inside tree.tar
# Before the workloads: extracting the tree into the work directory must take at most this per entry
# (see Bench.settle_disk), probed every SETTLE_POLL_S, for at most SETTLE_MAX_S (ext4's window for
# freed inodes is 300 s). A settled disk here: 35-90 µs; after a mass delete: 200-600 µs.
SETTLE_ENTRY_US = 150
SETTLE_POLL_S = 20
SETTLE_MAX_S = 330
PROP_BOUND_S = 5.0
COLD_QUIET_S = 1.1
GIT_DATE = "2024-01-01T00:00:00+0000"

# Workload keys, in report order: (key, title, unit, better) where better is "lower" or "higher".
WORKLOADS = [
    ("tar", "tar extraction (`tar -xf tree.tar -C <target>` + `sync`)", "s", "lower"),
    ("find_warm", "`find <tree> | wc -l`, warm", "s", "lower"),
    ("find_cold", "`find <tree> | wc -l`, cold", "s", "lower"),
    ("rg_warm", "`rg -c -F <pattern>`, warm", "s", "lower"),
    ("rg_cold", "`rg -c -F <pattern>`, cold", "s", "lower"),
    ("git_warm", "`git status --porcelain`, warm", "s", "lower"),
    ("git_cold", "`git status --porcelain`, cold", "s", "lower"),
    ("fio_seqwrite", "fio sequential write, bs=1M, buffered, --end_fsync=1", "MiB/s", "higher"),
    ("fio_seqread", "fio sequential read, bs=1M, buffered, page cache dropped first", "MiB/s", "higher"),
    ("fio_randread", "fio 4 KiB random read, buffered, page cache dropped first", "IOPS", "higher"),
    ("stat_p50", "`os.lstat` of every file, warm, p50", "µs", "lower"),
    ("stat_p99", "`os.lstat` of every file, warm, p99", "µs", "lower"),
    ("read_p50", "per-file read (open+read+close), warm, p50", "ms", "lower"),
    ("read_p99", "per-file read (open+read+close), warm, p99", "ms", "lower"),
]
WORKLOAD_INFO = {k: (title, unit, better) for k, title, unit, better in WORKLOADS}


class Interrupted(BaseException):
    """A signal asked us to stop: unwinds to the teardown (not caught by `except Exception`)."""


class SetupError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loud(msg: str) -> None:
    bar = "!" * 78
    print(f"\n{bar}\n{msg}\n{bar}\n", file=sys.stderr, flush=True)


def pct(samples: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(samples)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def ns_cmd(ns: str | None) -> list[str]:
    """The prefix that runs a command in network namespace `ns` (only the network: a FUSE mount made
    there stays visible here)."""
    return ["nsenter", f"--net=/run/netns/{ns}"] if ns else []


def run(cmd, *, check=True, env=None, timeout=1800, input=None, cwd=None, text=True):
    return subprocess.run(
        cmd, check=check, env=env, timeout=timeout, input=input, cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=text,
    )


def timed(cmd, *, env=None, ok=(0,), timeout=3600, cwd=None):
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, timeout=timeout, cwd=cwd, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    dt = time.perf_counter() - t
    if p.returncode not in ok:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {p.returncode}: "
                           f"{p.stderr.decode(errors='replace')[-800:]}")
    return dt, p


def first_line(cmd) -> str:
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
        return (p.stdout.strip().splitlines() or ["?"])[0]
    except Exception as e:  # noqa: BLE001
        return f"unavailable ({e})"


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def mountpoints() -> set[str]:
    out = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4]
            out.add(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), mp))
    return out


def is_mounted(path) -> bool:
    return os.path.abspath(path) in mountpoints()


def wait_until(pred, timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def unmount(path, proc: subprocess.Popen | None = None) -> None:
    """Unmounts a FUSE mount, waits for its process, and verifies the mount is gone."""
    path = os.path.abspath(path)
    if is_mounted(path):
        fm = shutil.which("fusermount3") or shutil.which("fusermount")
        for _ in range(10):
            if fm:
                run([fm, "-u", path], check=False, timeout=60)
            if not is_mounted(path):
                break
            run(["umount", path], check=False, timeout=60)
            if not is_mounted(path):
                break
            time.sleep(0.5)
        if is_mounted(path):
            loud(f"{path} is busy: detaching it lazily (umount -l)")
            run(["umount", "-l", path], check=False, timeout=60)
    if proc is not None:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            stop_process(proc)
    if is_mounted(path):
        raise RuntimeError(f"{path} is still mounted")


class Target:
    def __init__(self, name: str, root: str, backing: str | None = None):
        self.name = name
        self.root = root          # the directory the tree is extracted into (root/tree)
        self.backing = backing    # the host directory behind root (None: inside a container)
        self.remount = None       # callable, for targets with caches of their own (sshfs)
        self.ok = True
        self.error: str | None = None

    @property
    def tree(self) -> str:
        return os.path.join(self.root, TREE)


class Bench:
    def __init__(self, args):
        self.args = args
        self.cleanups: list[tuple[str, object]] = []
        self.teardown_errors: list[str] = []
        self.errors: list[dict] = []
        self.results: dict = {}
        self.extra: dict = {}
        self.targets: dict[str, Target] = {}
        self.tag = secrets.token_hex(3)
        self.W = ""
        self.procs: dict[str, subprocess.Popen] = {}
        self.ids: dict[str, str] = {}
        self.meta: dict = {}
        self.scale: dict = {}
        self.rss: dict = {}
        self.tree_info: dict = {}
        self.manifest: list[tuple[str, int]] = []
        self.aside: list[str] = []  # earlier tar runs' trees, removed before the RSS measurement
        self.env = self.workload_env()

    # ---------------------------------------------------------------- plumbing

    def on_cleanup(self, desc: str, fn) -> None:
        self.cleanups.append((desc, fn))

    def teardown(self) -> None:
        # A second Ctrl-C must not abort the teardown.
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, lambda *_: log("teardown in progress; please wait"))
        while self.cleanups:
            desc, fn = self.cleanups.pop()
            log(f"teardown: {desc}")
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                self.teardown_errors.append(f"{desc}: {e}")
                loud(f"teardown step failed: {desc}: {e}")

    def record_error(self, where: str, e: BaseException) -> None:
        msg = f"{type(e).__name__}: {e}"
        self.errors.append({"where": where, "error": msg})
        loud(f"ERROR in {where}: {msg}")
        traceback.print_exc(file=sys.stderr)

    def workload_env(self) -> dict:
        env = dict(os.environ, LC_ALL="C")
        env.pop("RIPGREP_CONFIG_PATH", None)
        return env

    def sfs_env(self, home: str) -> dict:
        env = dict(os.environ, SESSIONFS_HOME=home, SESSIONFS_LOG="warn", NO_COLOR="1")
        if self.args.static_daemon:
            env["SESSIONFS_STATIC_DAEMON"] = self.args.static_daemon
        if self.args.daemon:
            env["SESSIONFS_DAEMON"] = self.args.daemon
        return env

    def sfs(self, home: str, *argv, timeout=300, check=True):
        return run([self.args.bin, *argv], env=self.sfs_env(home), timeout=timeout, check=check)

    def logfile(self, name: str):
        return open(os.path.join(self.W, "logs", name), "ab")

    def tail(self, name: str, n: int = 20) -> str:
        try:
            with open(os.path.join(self.W, "logs", name), errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def cold(self, t: Target) -> None:
        if t.remount:
            t.remount()
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        time.sleep(COLD_QUIET_S)

    def put(self, key: str, target: str, **data) -> None:
        self.results.setdefault(key, {})[target] = data

    def value(self, key: str, target: str):
        return self.results.get(key, {}).get(target, {}).get("value")

    # ---------------------------------------------------------------- preflight

    def preflight(self) -> None:
        a = self.args
        missing: list[str] = []
        if os.geteuid() != 0:
            missing.append("root (cold runs write /proc/sys/vm/drop_caches; tar chowns; sshd)")
        need = {
            "tar": "tar", "find": "findutils", "wc": "coreutils", "bash": "bash", "rg": "ripgrep",
            "git": "git", "fio": "fio",
        }
        if "bindfs" in a.targets:
            need["bindfs"] = "bindfs"
        remote = set(REMOTE_TARGETS) & set(a.targets)
        if "bindfs" in a.targets or "sshfs" in a.targets or set(SESSIONFS_TARGETS) & set(a.targets) or remote:
            if not (shutil.which("fusermount3") or shutil.which("fusermount")):
                missing.append("fusermount3 (apt: fuse3)")
        if remote:
            need.update({"ip": "iproute2", "nsenter": "util-linux", "ping": "iputils-ping", "etcd": "etcd-server"})
            if not os.access(a.delay_line, os.X_OK):
                missing.append(f"the delay line {a.delay_line} (cargo build --release -p sessionfs-tests "
                               "--bin sessionfs-delay-line; or --delay-line)")
        if "sshfs" in a.targets or "sshfs-remote" in a.targets:
            need.update({"sshfs": "sshfs", "ssh": "openssh-client", "ssh-keygen": "openssh-client"})
            for p, pkg in ((a.sshd, "openssh-server"), (a.sftp_server, "openssh-server")):
                if not os.access(p, os.X_OK):
                    missing.append(f"{p} (apt: {pkg})")
        docker = "sessionfs-docker" in a.targets or "docker-exec" in a.targets
        if docker:
            need.update({"docker": "docker.io", "busybox": "busybox-static"})
        for tool, pkg in need.items():
            if not shutil.which(tool):
                missing.append(f"{tool} (apt: {pkg})")
        if set(SESSIONFS_TARGETS) & set(a.targets) or "docker-exec" in a.targets or not a.skip_scale \
                or "sessionfs-remote" in a.targets:
            if not os.access(a.bin, os.X_OK):
                missing.append(f"sessionfs binary {a.bin} (cargo build --release; or --bin)")
        if docker:
            if not (a.static_daemon and os.access(a.static_daemon, os.X_OK)):
                missing.append(f"static sessionfsd {a.static_daemon} (see scripts/bench.sh; or --static-daemon)")
            if shutil.which("docker") and run(["docker", "info"], check=False, timeout=60).returncode != 0:
                missing.append("a running Docker engine (scripts/install-deps.sh starts one)")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            missing.append(f"matplotlib for {sys.executable} (pip install matplotlib)")
        if not os.path.isdir(a.registry):
            missing.append(f"cargo registry sources at {a.registry}")
        if missing:
            loud("MISSING TOOLS — the benchmark cannot run:\n  - " + "\n  - ".join(missing)
                 + "\nscripts/bench.sh installs them; or drop targets with --targets.")
            sys.exit(2)

    @staticmethod
    def sshfs_version() -> str:
        p = run(["sshfs", "--version"], check=False, timeout=30)
        return " / ".join(line.strip() for line in (p.stdout + p.stderr).splitlines()
                          if line.strip() and not line.startswith("fusermount"))

    def machine_info(self) -> dict:
        cpu = "?"
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        cpu = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        mem = "?"
        try:
            with open("/proc/meminfo") as f:
                mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.1f} GiB"
        except OSError:
            pass
        osname = "?"
        try:
            with open("/etc/os-release") as f:
                for line in f:
                    if line.startswith("PRETTY_NAME="):
                        osname = line.split("=", 1)[1].strip().strip('"')
        except OSError:
            pass
        fs = first_line(["stat", "-f", "-c", "%T", self.W])
        a = self.args
        versions = {
            "sessionfs": first_line([a.bin, "--version"]),
            "sshfs": self.sshfs_version() if shutil.which("sshfs") else "missing",
            "openssh": first_line(["ssh", "-V"]) if shutil.which("ssh") else "missing",
            "bindfs": first_line(["bindfs", "--version"]) if shutil.which("bindfs") else "missing",
            "fio": first_line(["fio", "--version"]),
            "docker": first_line(["docker", "version", "--format",
                                  "server {{.Server.Version}}, client {{.Client.Version}}"])
            if shutil.which("docker") else "missing",
            "ripgrep": first_line(["rg", "--version"]),
            "git": first_line(["git", "--version"]),
            "tar": first_line(["tar", "--version"]),
            "fuse": first_line(["fusermount3", "--version"]) if shutil.which("fusermount3") else "?",
            "python": platform.python_version(),
        }
        try:
            import matplotlib
            versions["matplotlib"] = matplotlib.__version__
        except ImportError:
            pass
        binaries = {}
        for role, path in (("bridge", a.bin),
                           ("local daemon", a.daemon or os.path.join(os.path.dirname(a.bin), "sessionfsd")),
                           ("static daemon (docker image)", a.static_daemon)):
            if path and os.path.isfile(path):
                st = os.stat(path)
                with open(path, "rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()[:12]
                binaries[role] = {"path": path, "sha256": digest, "bytes": st.st_size,
                                  "mtime": datetime.datetime.fromtimestamp(st.st_mtime).astimezone()
                                  .isoformat(timespec="seconds")}
        return {
            "host": platform.node(), "cpus": os.cpu_count(), "cpu_model": cpu, "memory": mem,
            "kernel": platform.release(), "os": osname, "work_dir_fs": fs, "versions": versions,
            "binaries": binaries,
        }

    # ---------------------------------------------------------------- the tree

    def settle_disk(self) -> None:
        """Waits (at most SETTLE_MAX_S) until extracting the tree into the work directory is quick.
        On ext4 without a journal, inodes freed in the last 5 to 300 s are skipped one by one by
        every create (see w_tar): a run started right after a mass delete (the previous run's
        teardown, say) would time that instead of the targets. The probe is the tar extraction
        itself, untimed, into a new directory each time: ext4 spreads a tree's directories over its
        block groups, and smaller probes (200 files in one directory, 100 directories of 5 files)
        passed while the tree's extraction was still slow. Probes stay until teardown (removing
        them would free inodes again)."""
        deadline = time.monotonic() + SETTLE_MAX_S
        entries = max(1, self.tree_info.get("find_entries", 1))
        probes = []
        while True:
            d = os.path.join(self.W, f"settle-{len(probes)}")
            os.makedirs(d)
            dt, _ = timed(["sh", "-c", 'tar -xf "$1" -C "$2" && sync', "sh", self.tar, d])
            per_us = dt / entries * 1e6
            probes.append(round(per_us, 1))
            if per_us <= SETTLE_ENTRY_US:
                break
            if time.monotonic() > deadline:
                loud(f"extracting the tree into {self.W} still takes {per_us:.0f} µs per entry after "
                     f"{SETTLE_MAX_S} s: the tar extraction's times include the file system's own slowness")
                break
            if len(probes) == 1:
                log(f"extracting the tree takes {per_us:.0f} µs per entry (a recent mass delete?): waiting "
                    f"until it takes under {SETTLE_ENTRY_US} µs, at most {SETTLE_MAX_S} s")
            time.sleep(SETTLE_POLL_S)
        log(f"work directory settled: tree extraction {probes[-1]:.0f} µs per entry")
        self.extra["disk_settle"] = {"extract_us_per_entry": probes, "threshold_us": SETTLE_ENTRY_US}

    def prepare_tree(self) -> None:
        a = self.args
        crates: dict[str, str] = {}
        for index in sorted(os.listdir(a.registry)):
            d = os.path.join(a.registry, index)
            if os.path.isdir(d):
                for c in sorted(os.listdir(d)):
                    if os.path.isdir(os.path.join(d, c)):
                        crates.setdefault(c, os.path.join(d, c))
        chosen, count = [], 0
        for name in sorted(crates):
            n = sum(len(files) for _, _, files in os.walk(crates[name]))
            if n == 0:
                continue
            chosen.append(name)
            count += n
            if count >= a.files:
                break
        if count < a.files:
            raise SetupError(f"the cargo registry at {a.registry} has only {count} files, "
                             f"fewer than --files {a.files}")
        # The tree is prepared in memory where there is a tmpfs: git's loose objects, deleted by the
        # repack, and the prepared tree itself would otherwise be ~20,000 inodes freed on the work
        # directory's disk just before the tar extractions (see w_tar).
        shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else self.W
        prep = tempfile.mkdtemp(prefix="sessionfs-bench-prep.", dir=shm)
        # Also on errors: /dev/shm is not the work directory, which teardown removes.
        self.on_cleanup(f"remove {prep}", lambda: shutil.rmtree(prep, ignore_errors=True))
        tree = os.path.join(prep, TREE)
        os.makedirs(tree)
        log(f"tree: {len(chosen)} crate directories ({chosen[0]} … {chosen[-1]}), {count} files")
        for name in chosen:
            shutil.copytree(crates[name], os.path.join(tree, name), symlinks=True)
        genv = dict(self.env, GIT_AUTHOR_DATE=GIT_DATE, GIT_COMMITTER_DATE=GIT_DATE,
                    GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@localhost",
                    GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@localhost")
        g = ["git", "-C", tree]
        run(g + ["init", "-q", "-b", "main"], env=genv)
        run(g + ["config", "gc.auto", "0"], env=genv)
        run(g + ["add", "-A"], env=genv)
        run(g + ["commit", "-q", "-m", f"{len(chosen)} crates from the cargo registry"], env=genv)
        run(g + ["repack", "-a", "-d", "-q"], env=genv)
        run(g + ["prune-packed"], env=genv)
        status = run(g + ["status", "--porcelain"], env=genv).stdout
        self.manifest = []
        for dirpath, dirnames, files in os.walk(tree):
            dirnames[:] = sorted(d for d in dirnames if not (dirpath == tree and d == ".git"))
            for f in sorted(files):
                p = os.path.join(dirpath, f)
                self.manifest.append((os.path.relpath(p, tree), os.lstat(p).st_size))
        self.tar = os.path.join(self.W, "tree.tar")
        run(["tar", "--sort=name", "--numeric-owner", "-C", prep, "-cf", self.tar, TREE])
        with open(self.tar, "rb") as f:  # warm: the archive's own reads are not what is measured
            while f.read(8 * MiB):
                pass
        entries = int(run(["bash", "-c", 'find "$1" | wc -l', "_", tree]).stdout.strip())
        tracked = len(run(g + ["ls-files"], env=genv).stdout.splitlines())
        self.tree_info = {
            "source": a.registry, "crates": chosen, "crate_count": len(chosen),
            "files": len(self.manifest), "find_entries": entries, "git_tracked_files": tracked,
            "bytes": sum(s for _, s in self.manifest), "tar_bytes": os.path.getsize(self.tar),
            "commit": run(g + ["rev-parse", "HEAD"], env=genv).stdout.strip(),
            "clean_status_lines": len(status.splitlines()),
        }
        if shm == self.W:  # on the work directory's disk: removed with it, after every workload
            return
        shutil.rmtree(prep)

    # ---------------------------------------------------------------- target setup

    def setup_local(self) -> Target:
        root = os.path.join(self.W, "local")
        os.makedirs(root)
        return Target("local", root, backing=root)

    def setup_bindfs(self) -> Target:
        src, mnt = os.path.join(self.W, "bindfs-src"), os.path.join(self.W, "mnt-bindfs")
        os.makedirs(src)
        os.makedirs(mnt)
        proc = subprocess.Popen(["bindfs", "-f", src, mnt], stdout=self.logfile("bindfs.log"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs["bindfs"] = proc
        self.on_cleanup("unmount bindfs", lambda: unmount(mnt, proc))
        if not wait_until(lambda: is_mounted(mnt) or proc.poll() is not None, 15) or not is_mounted(mnt):
            raise SetupError(f"bindfs did not mount: {self.tail('bindfs.log')}")
        return Target("bindfs", mnt, backing=src)

    def setup_sshfs(self, name: str = "sshfs", server_ns: str | None = None,
                    client_ns: str | None = None, listen: str = "127.0.0.1") -> Target:
        """sshfs to a private sshd listening on `listen`; with namespaces, sshd runs in `server_ns` and
        sshfs (and its checks) in `client_ns`."""
        a = self.args
        d = os.path.join(self.W, f"ssh-{name}")
        src, mnt = os.path.join(self.W, f"{name}-src"), os.path.join(self.W, f"mnt-{name}")
        srv, cli = ns_cmd(server_ns), ns_cmd(client_ns)
        for p in (d, src, mnt):
            os.makedirs(p)
        os.chmod(d, 0o700)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sessionfs-bench-host", "-f", f"{d}/host_key"])
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sessionfs-bench-client", "-f", f"{d}/client_key"])
        shutil.copy(f"{d}/client_key.pub", f"{d}/authorized_keys")
        with open(f"{d}/host_key.pub") as f:
            hostkey = " ".join(f.read().split()[:2])
        with open(f"{d}/known_hosts", "w") as f:
            f.write(f"sessionfs-bench {hostkey}\n")
        if server_ns:
            port = 2222  # the namespace is the benchmark's own
        else:
            with socket.socket() as s:  # a free loopback port (sshd binds it right after)
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        user = pwd.getpwuid(os.getuid()).pw_name
        with open(f"{d}/sshd_config", "w") as f:
            f.write(f"""# private sshd of the sessionfs benchmark: loopback only, key only
ListenAddress {listen}:{port}
AddressFamily inet
HostKey {d}/host_key
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
AllowUsers {user}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
X11Forwarding no
AllowTcpForwarding no
AllowAgentForwarding no
PermitTunnel no
PermitTTY no
MaxStartups 20
LogLevel ERROR
Subsystem sftp {a.sftp_server}
""")
        with open(f"{d}/ssh_config", "w") as f:
            f.write(f"""Host sessionfs-bench
  HostName {listen}
  Port {port}
  User {user}
  IdentityFile {d}/client_key
  IdentitiesOnly yes
  HostKeyAlias sessionfs-bench
  UserKnownHostsFile {d}/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  LogLevel ERROR
""")
        # sshd wants its privilege separation directory; Debian's init script makes it.
        if not os.path.isdir("/run/sshd"):
            os.makedirs("/run/sshd", mode=0o755)
            self.on_cleanup("remove /run/sshd (made for sshd)", lambda: os.rmdir("/run/sshd"))
        run([a.sshd, "-t", "-f", f"{d}/sshd_config"])
        sshd = subprocess.Popen([*srv, a.sshd, "-D", "-e", "-f", f"{d}/sshd_config"],
                                stdout=self.logfile(f"sshd-{name}.log"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[f"sshd-{name}"] = sshd
        self.on_cleanup(f"stop the private sshd of {name}", lambda: stop_process(sshd))

        def listening():
            if client_ns:
                probe = f"import socket; socket.create_connection(({listen!r}, {port}), timeout=0.5)"
                return run([*cli, sys.executable, "-c", probe], check=False, timeout=10).returncode == 0
            try:
                with socket.create_connection((listen, port), timeout=0.5):
                    return True
            except OSError:
                return False
        if not wait_until(lambda: listening() or sshd.poll() is not None, 15) or sshd.poll() is not None:
            raise SetupError(f"sshd did not start: {self.tail(f'sshd-{name}.log')}")
        p = run([*cli, "ssh", "-F", f"{d}/ssh_config", "sessionfs-bench", "true"], check=False, timeout=30)
        if p.returncode != 0:
            raise SetupError(f"ssh to the private sshd failed: {p.stderr.strip()}")
        self.extra[f"sshd-{name}"] = {"listen": f"{listen}:{port}", "sftp_server": a.sftp_server}
        t = Target(name, mnt, backing=src)
        argv = [*cli, "sshfs", "-f", "-F", f"{d}/ssh_config", f"sessionfs-bench:{src}", mnt]

        def mount():
            proc = subprocess.Popen(argv, stdout=self.logfile(f"{name}.log"), stderr=subprocess.STDOUT,
                                    start_new_session=True)
            self.procs[name] = proc
            if not wait_until(lambda: is_mounted(mnt) or proc.poll() is not None, 20) or not is_mounted(mnt):
                raise SetupError(f"sshfs did not mount: {self.tail(f'{name}.log')}")

        def remount():
            unmount(mnt, self.procs.get(name))
            mount()
        self.on_cleanup(f"unmount {name}", lambda: unmount(mnt, self.procs.get(name)))
        mount()
        t.remount = remount
        return t

    def setup_docker_image(self) -> str:
        """A session image whose base has busybox (sh, cat) for `docker exec`; nothing is pulled."""
        base = f"sessionfs-bench-base:{self.tag}"
        image = f"sessionfs-bench-session:{self.tag}"
        rootfs = os.path.join(self.W, "rootfs")
        os.makedirs(os.path.join(rootfs, "bin"))
        shutil.copy(shutil.which("busybox"), os.path.join(rootfs, "bin", "busybox"))
        for tool in ("sh", "cat", "printf"):
            os.symlink("busybox", os.path.join(rootfs, "bin", tool))
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        imp = run(["docker", "import", "-", base], input=tar.stdout.read(), text=False, check=False)
        tar.wait()
        if imp.returncode != 0:
            raise SetupError(f"docker import failed: {imp.stderr.decode(errors='replace')}")
        self.on_cleanup(f"remove image {base}", lambda: run(["docker", "rmi", "-f", base]))
        self.on_cleanup(f"remove image {image}", lambda: run(["docker", "rmi", "-f", image], check=False))
        p = self.sfs(self.home, "image", "build", "--base", base, "--tag", image, timeout=600, check=False)
        if p.returncode != 0:
            raise SetupError(f"sessionfs image build failed: {p.stderr[-1500:]}")
        return image

    def setup_sessionfs(self, want_local: bool, want_docker: bool) -> None:
        self.home = os.path.join(self.W, "home")
        mnt = os.path.join(self.W, "mnt-sfs")
        os.makedirs(mnt)
        if want_local:
            sid = f"bench-{self.tag}-local"
            src = os.path.join(self.W, "sfs-local-src")
            os.makedirs(src)
            self.on_cleanup(f"remove session {sid}", lambda sid=sid: self.rm_session(self.home, sid))
            p = self.sfs(self.home, "session", "create", sid, "--dir", src, check=False)
            if p.returncode != 0:
                raise SetupError(f"session create {sid} failed: {p.stderr.strip()}")
            self.ids["sessionfs-local"] = sid
            self.targets["sessionfs-local"] = Target("sessionfs-local", os.path.join(mnt, sid), backing=src)
        if want_docker:
            sid = f"bench-{self.tag}-docker"
            try:
                image = self.setup_docker_image()
                self.on_cleanup(f"remove docker session {sid}",
                                lambda sid=sid: self.rm_session(self.home, sid, docker=True))
                p = self.sfs(self.home, "session", "create", sid, "--backend", "docker", "--image", image,
                             check=False)
                if p.returncode != 0:
                    raise SetupError(f"session create {sid} --backend docker failed: {p.stderr.strip()}")
                self.ids["sessionfs-docker"] = sid
                self.container = f"sessionfs-{sid}"
                self.targets["sessionfs-docker"] = Target("sessionfs-docker", os.path.join(mnt, sid))
            except Exception as e:  # noqa: BLE001
                self.record_error("setup sessionfs-docker", e)
        if not self.ids:
            return
        # --map-owner: the docker session's files (owner 1000:1000 inside) show as us, so git accepts them.
        proc = subprocess.Popen([self.args.bin, "mount", mnt, "--map-owner"], env=self.sfs_env(self.home),
                                stdout=self.logfile("sessionfs-mount.log"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs["sessionfs"] = proc
        self.on_cleanup("unmount sessionfs", lambda: self.stop_bridge(mnt, proc))
        wait_until(lambda: proc.poll() is not None or (
            is_mounted(mnt) and all(os.path.isdir(os.path.join(mnt, s)) for s in self.ids.values())), 30)
        if proc.poll() is not None or not is_mounted(mnt):
            raise SetupError(f"sessionfs mount failed: {self.tail('sessionfs-mount.log')}")
        for name, sid in list(self.ids.items()):
            if os.path.isdir(os.path.join(mnt, sid)):
                continue
            why = f"{mnt}/{sid} is not usable through the mount; bridge log: {self.tail('sessionfs-mount.log', 3)}"
            if name == "sessionfs-docker":
                logs = run(["docker", "logs", "--tail", "3", self.container], check=False)
                why += f"; container log: {(logs.stdout + logs.stderr).strip()}"
            self.targets.pop(name, None)
            self.record_error(f"setup {name}", SetupError(why))


    # ---------------------------------------------------------------- the remote link

    def setup_link(self) -> None:
        """Hosts A and B as network namespaces joined by router R, where every packet between them
        goes through the delay line; checked to add the stated round trip and loss (ping) and to
        carry data (a TCP throughput probe) before anything is measured across it."""
        a = self.args
        self.ns = {h: f"sfsb{self.tag}{h}" for h in ("a", "b", "r")}
        A, B, R = self.ns["a"], self.ns["b"], self.ns["r"]

        def ip(*argv):
            run(["ip", *argv])

        def remove():
            for ns in self.ns.values():
                for pid in run(["ip", "netns", "pids", ns], check=False).stdout.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                run(["ip", "netns", "del", ns], check=False)
        self.on_cleanup("remove the remote link's namespaces", remove)
        for ns in (A, B, R):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        for host, ns, addr, gw, port in ((A, A, LINK_A, LINK_R_A, "ra"), (B, B, LINK_B, LINK_R_B, "rb")):
            ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", R)
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "route", "add", "default", "via", gw)
            ip("-n", R, "addr", "add", f"{gw}/24", "dev", port)
            ip("-n", R, "link", "set", port, "up")
        run(["ip", "netns", "exec", R, "sysctl", "-qw", "net.ipv4.ip_forward=1",
             "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"])
        delay = a.remote_rtt / 2
        line = subprocess.Popen([*ns_cmd(R), a.delay_line, "--dev", "dl0", "--delay-ms", str(delay),
                                 "--loss", str(a.remote_loss)],
                                stdout=subprocess.PIPE, stderr=self.logfile("delay-line.log"), text=True,
                                start_new_session=True)
        self.procs["delay-line"] = line
        self.on_cleanup("stop the delay line", lambda: stop_process(line))
        first = line.stdout.readline() if line.stdout else ""
        if not first.startswith("ready"):
            raise SetupError(f"the delay line did not start: {first!r} {self.tail('delay-line.log')}")
        run(["ip", "netns", "exec", R, "sysctl", "-qw", "net.ipv4.conf.dl0.rp_filter=0"])
        ip("-n", R, "link", "set", "dl0", "up")
        for port in ("ra", "rb"):
            ip("-n", R, "rule", "add", "iif", port, "lookup", "100")
        ip("-n", R, "route", "add", "default", "dev", "dl0", "table", "100")
        # The check: 1000 pings, 2 ms apart.
        p = run([*ns_cmd(B), "ping", "-q", "-c", "1000", "-i", "0.002", "-W", "2", LINK_A], check=False, timeout=120)
        m_loss = re.search(r"([0-9.]+)% packet loss", p.stdout)
        m_rtt = re.search(r"= ([0-9.]+)/([0-9.]+)/([0-9.]+)/", p.stdout)
        if not (m_loss and m_rtt):
            raise SetupError(f"ping across the link failed: {p.stdout} {p.stderr}")
        loss, rtt = float(m_loss.group(1)), float(m_rtt.group(2))
        probe = textwrap.dedent(f"""
            import socket, sys, time
            if sys.argv[1] == "serve":
                s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(({LINK_A!r}, 5201)); s.listen(1); print("listening", flush=True)
                c, _ = s.accept()
                while c.recv(1 << 20): pass
                c.sendall(b"x")
            else:
                s = socket.create_connection(({LINK_A!r}, 5201), timeout=30)
                data, total, t0 = bytes(1 << 20), 64 << 20, time.time()
                for _ in range(total >> 20): s.sendall(data)
                s.shutdown(socket.SHUT_WR); s.recv(1)
                print(total / (time.time() - t0) / (1 << 20))
        """)
        server = subprocess.Popen([*ns_cmd(A), sys.executable, "-c", probe, "serve"], stdout=subprocess.PIPE,
                                  text=True)
        try:
            server.stdout.readline() if server.stdout else None
            out = run([*ns_cmd(B), sys.executable, "-c", probe, "send"], timeout=300)
            mibs = float(out.stdout.strip())
        finally:
            stop_process(server)
        self.extra["link"] = {"rtt_ms_asked": a.remote_rtt, "loss_pct_asked_each_way": a.remote_loss,
                              "ping_rtt_avg_ms": rtt, "ping_loss_pct": loss, "tcp_mib_s": mibs}
        log(f"remote link: ping rtt {rtt:.2f} ms (asked {a.remote_rtt}), loss {loss}% "
            f"(asked {a.remote_loss}% each way), TCP {mibs:.0f} MiB/s")
        # A ping's round trip crosses the line twice; each way may drop it.
        if not (a.remote_rtt * 0.95 <= rtt <= a.remote_rtt + 1.5):
            raise SetupError(f"the link's round trip is {rtt} ms, not the {a.remote_rtt} ms asked")
        expected = 100 * (1 - (1 - a.remote_loss / 100) ** 2)
        if loss > 3 * expected + 1.0 or (expected >= 1.0 and loss == 0):
            raise SetupError(f"the link drops {loss}% of pings, expected about {expected:.2f}%")

    def setup_remote_sessionfs(self) -> Target:
        """Host A serves a local session; host B mounts it; etcd runs on B. Both made with the real
        `host init` / `host add` / `host join`."""
        A, B = self.ns["a"], self.ns["b"]
        home_a, home_b = os.path.join(self.W, "home-remote-a"), os.path.join(self.W, "home-remote-b")
        etcd_url = f"etcd://{LINK_B}:2379"
        data = os.path.join(self.W, "etcd-remote")
        etcd = subprocess.Popen([*ns_cmd(B), "etcd", "--name", "bench", "--data-dir", data,
                                 "--listen-client-urls", f"http://{LINK_B}:2379",
                                 "--advertise-client-urls", f"http://{LINK_B}:2379",
                                 "--listen-peer-urls", f"http://{LINK_B}:2380",
                                 "--initial-advertise-peer-urls", f"http://{LINK_B}:2380",
                                 "--initial-cluster", f"bench=http://{LINK_B}:2380"],
                                stdout=self.logfile("etcd.log"), stderr=subprocess.STDOUT, start_new_session=True)
        self.procs["etcd"] = etcd
        self.on_cleanup("stop etcd", lambda: stop_process(etcd))
        probe = f"import socket; socket.create_connection(({LINK_B!r}, 2379), timeout=0.5)"
        if not wait_until(lambda: run([*ns_cmd(B), sys.executable, "-c", probe], check=False).returncode == 0, 20):
            raise SetupError(f"etcd did not start: {self.tail('etcd.log')}")

        def sfs(ns, home, *argv, timeout=300):
            p = run([*ns_cmd(ns), self.args.bin, *argv], env=self.sfs_env(home), timeout=timeout, check=False)
            if p.returncode != 0:
                raise SetupError(f"sessionfs {' '.join(argv)} failed: {p.stderr.strip()}")
            return p
        sfs(A, home_a, "--registry", etcd_url, "host", "init", "--name", "bench-a", "--advertise", LINK_A)
        bundle = os.path.join(self.W, "bench-b.bundle")
        sfs(A, home_a, "host", "add", "bench-b", "--out", bundle)
        sfs(B, home_b, "host", "join", bundle, "--advertise", LINK_B)
        sid = f"bench-{self.tag}-remote"
        src = os.path.join(self.W, "sfs-remote-src")
        mnt = os.path.join(self.W, "mnt-sfs-remote")
        os.makedirs(src)
        os.makedirs(mnt)
        sfs(A, home_a, "session", "create", sid, "--dir", src)
        self.on_cleanup(f"stop session {sid}", lambda: run([*ns_cmd(A), self.args.bin, "session", "stop", sid],
                                                             env=self.sfs_env(home_a), check=False))
        proc = subprocess.Popen([*ns_cmd(B), self.args.bin, "mount", mnt, "--map-owner"], env=self.sfs_env(home_b),
                                stdout=self.logfile("sessionfs-remote-mount.log"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs["sessionfs-remote"] = proc
        self.on_cleanup("unmount sessionfs-remote", lambda: self.stop_bridge(mnt, proc))
        wait_until(lambda: proc.poll() is not None or (is_mounted(mnt) and os.path.isdir(os.path.join(mnt, sid))), 30)
        if proc.poll() is not None or not os.path.isdir(os.path.join(mnt, sid)):
            raise SetupError(f"the remote mount failed: {self.tail('sessionfs-remote-mount.log')}")
        return Target("sessionfs-remote", os.path.join(mnt, sid), backing=src)

    # ---------------------------------------------------------------- measuring

    def stop_bridge(self, mnt: str, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the bridge unmounts cleanly on SIGTERM
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        unmount(mnt, proc)

    def rm_session(self, home: str, sid: str, docker: bool = False) -> None:
        pid = None
        try:
            for s in json.loads(self.sfs(home, "session", "ls", "--json", timeout=60).stdout):
                if s["id"] == sid:
                    pid = s.get("pid")
        except Exception:  # noqa: BLE001
            pass
        p = self.sfs(home, "session", "rm", sid, "--purge", timeout=120, check=False)
        if p.returncode != 0 and "no session `" not in p.stderr:
            raise RuntimeError(f"session rm {sid} --purge: {p.stderr.strip()}")
        if pid and not wait_until(lambda: not proc_alive(pid), 10):
            raise RuntimeError(f"the daemon of {sid} (pid {pid}) still runs")
        if docker:
            name = f"sessionfs-{sid}"
            if run(["docker", "container", "inspect", name], check=False).returncode == 0:
                run(["docker", "rm", "-f", name], check=False)
                raise RuntimeError(f"container {name} was left behind (now removed with docker rm -f)")
            if run(["docker", "volume", "inspect", name], check=False).returncode == 0:
                run(["docker", "volume", "rm", "-f", name], check=False)
                raise RuntimeError(f"volume {name} was left behind (now removed)")

    # ---------------------------------------------------------------- workloads

    def docker_path(self, rel: str) -> str:
        return f"/workspace/{TREE}/{rel}"

    def w_tar(self, t: Target, runs: int) -> None:
        # Every run extracts into a name that never held a tree, and nothing is deleted before a run:
        # the previous run's tree is renamed aside and removed once every target's workloads have run
        # (remove_aside). For a local session, aside means out of the session's directory, on the
        # host: its daemon watches every directory of its workspace, and two trees watched during the
        # workloads left it ~0.6 MiB larger for the idle RSS measurement. (Not for sshfs: a tree
        # moved behind its back stays in its cache, and the next extraction fails with EEXIST.) On ext4 without a journal (this VM's disk), inode allocation skips every
        # inode freed in the last 5 to 300 s (`recently_deleted`), one inode-table lookup each, so a
        # tar right after an `rm -rf` of 12,000 files paid ~0.7 ms per create on every target alike.
        samples = []
        for i in range(runs):
            if os.path.lexists(t.tree):
                self.aside.append(self.set_aside(t, i))
            os.sync()
            dt, _ = timed(["sh", "-c", 'tar -xf "$1" -C "$2" && sync', "sh", self.tar, t.root])
            samples.append(dt)
            log(f"  {t.name}: tar extraction run {i + 1}/{runs}: {dt:.2f} s")
        self.put("tar", t.name, value=med(samples), samples=samples, unit="s")

    def set_aside(self, t: Target, index: int) -> str:
        """Renames `t`'s tree out of the way of tar run `index`; returns where it went."""
        backing = t.backing if t.name == "sessionfs-local" else None
        if backing and os.path.isdir(os.path.join(backing, TREE)):
            aside = os.path.join(self.W, "aside", f"{t.name}.run{index}")
            os.makedirs(os.path.dirname(aside), exist_ok=True)
            try:
                os.rename(os.path.join(backing, TREE), aside)
                return aside
            except OSError as e:  # kept in the target after all
                log(f"  {t.name}: could not move the previous tree out of the target ({e})")
        aside = os.path.join(t.root, f".{TREE}.run{index}")
        os.rename(t.tree, aside)
        return aside

    def prime_git(self, t: Target) -> None:
        # The index's stat data come from the preparing machine's tree: the first status rehashes.
        for _ in range(2):
            p = run(["git", "-C", t.tree, "status", "--porcelain"], env=self.git_env, check=False)
        if p.returncode != 0:
            raise RuntimeError(f"git status failed on {t.name}: {p.stderr.strip()}")

    def w_cmd(self, t: Target, key: str, cmd: list, runs: int, cold: bool, ok=(0,), env=None,
              check_out=None) -> None:
        samples, outs = [], []
        if not cold:
            timed(cmd, ok=ok, env=env)  # warm-up, untimed
        for i in range(runs):
            if cold:
                self.cold(t)
            dt, p = timed(cmd, ok=ok, env=env)
            samples.append(dt)
            outs.append(check_out(p.stdout) if check_out else None)
        self.put(key, t.name, value=med(samples), samples=samples, unit="s", output=outs[-1])
        log(f"  {t.name}: {key}: median {med(samples):.3f} s over {runs} run(s), output {outs[-1]}")

    def w_tree_cmds(self, t: Target) -> None:
        a = self.args
        find = ["bash", "-c", 'set -o pipefail; find "$1" | wc -l', "bash", t.tree]
        rg = ["rg", "-c", "-F", a.pattern, t.tree]
        git = ["git", "-C", t.tree, "status", "--porcelain"]
        count = lambda out: int(out.strip())  # noqa: E731
        lines = lambda out: len(out.splitlines())  # noqa: E731
        for key, cmd, ok, env, chk in (
            ("find", find, (0,), self.env, count),
            ("rg", rg, (0, 1), self.env, lines),
            ("git", git, (0,), self.git_env, lines),
        ):
            for cold in (False, True):
                k = f"{key}_{'cold' if cold else 'warm'}"
                try:
                    self.w_cmd(t, k, cmd, a.cold_runs if cold else a.runs, cold, ok=ok, env=env, check_out=chk)
                except Exception as e:  # noqa: BLE001
                    self.record_error(f"{t.name} {k}", e)

    def w_stat(self, t: Target) -> None:
        paths = [os.path.join(t.tree, rel) for rel, _ in self.manifest]
        for p in paths:
            os.lstat(p)
        runs = []
        for _ in range(self.args.runs):
            s = []
            for p in paths:
                t0 = time.perf_counter_ns()
                os.lstat(p)
                s.append((time.perf_counter_ns() - t0) / 1e3)
            runs.append(s)
        p50 = med([pct(s, 50) for s in runs])
        p99 = med([pct(s, 99) for s in runs])
        raw = [[round(x, 2) for x in s] for s in runs]
        self.put("stat_p50", t.name, value=p50, unit="µs", n=len(paths), runs=len(runs), samples_us=raw)
        self.put("stat_p99", t.name, value=p99, unit="µs", n=len(paths), runs=len(runs))
        log(f"  {t.name}: lstat p50 {p50:.1f} µs, p99 {p99:.1f} µs over {len(paths)} files")

    def read_sample(self) -> list[tuple[str, int]]:
        k = min(self.args.read_samples, len(self.manifest))
        step = len(self.manifest) / k
        return [self.manifest[int(i * step)] for i in range(k)]

    def w_read(self, t: Target) -> None:
        sample = self.read_sample()
        runs = []
        if t.name == "docker-exec":
            def read(rel):
                return run(["docker", "exec", self.container, "cat", self.docker_path(rel)], text=False).stdout
        else:
            def read(rel):
                with open(os.path.join(t.tree, rel), "rb") as f:
                    return f.read()
        for rel, size in sample:  # warm-up and check
            n = len(read(rel))
            if n != size:
                raise RuntimeError(f"{t.name}: {rel} read {n} bytes, expected {size}")
        for _ in range(self.args.runs):
            s = []
            for rel, _ in sample:
                t0 = time.perf_counter()
                read(rel)
                s.append((time.perf_counter() - t0) * 1e3)
            runs.append(s)
        p50 = med([pct(s, 50) for s in runs])
        p99 = med([pct(s, 99) for s in runs])
        self.put("read_p50", t.name, value=p50, unit="ms", n=len(sample), runs=len(runs),
                 samples_ms=[[round(x, 4) for x in s] for s in runs])
        self.put("read_p99", t.name, value=p99, unit="ms", n=len(sample), runs=len(runs))
        log(f"  {t.name}: per-file read p50 {p50:.3f} ms, p99 {p99:.3f} ms over {len(sample)} files")

    def fio(self, t: Target, job: str) -> dict:
        a = self.args
        path = os.path.join(t.root, "fio", "bench.dat")
        argv = ["fio", f"--name={job}", f"--filename={path}", f"--size={a.fio_size}", "--ioengine=psync",
                "--direct=0", "--fallocate=none", "--numjobs=1", "--iodepth=1", "--output-format=json"]
        if job == "seqwrite":
            argv += ["--rw=write", "--bs=1M", "--end_fsync=1"]
        elif job == "seqread":
            argv += ["--rw=read", "--bs=1M"]
        else:
            argv += ["--rw=randread", "--bs=4k", f"--runtime={a.fio_runtime}", "--randrepeat=1"]
        dt, p = timed(argv, timeout=7200)
        out = p.stdout.decode(errors="replace")
        j = json.loads(out[out.index("{"):])
        side = j["jobs"][0]["write" if job == "seqwrite" else "read"]
        if side.get("io_bytes", 0) == 0:
            raise RuntimeError(f"fio {job} on {t.name} moved no data: {p.stderr.decode(errors='replace')}")
        bw = side.get("bw_bytes", side.get("bw", 0) * 1024)
        return {"mib_s": bw / MiB, "iops": side["iops"], "io_bytes": side["io_bytes"],
                "runtime_ms": side.get("runtime"), "wall_s": dt}

    def w_fio(self, t: Target) -> None:
        a = self.args
        d = os.path.join(t.root, "fio")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "bench.dat")
        try:
            for job, key in (("seqwrite", "fio_seqwrite"), ("seqread", "fio_seqread"),
                             ("randread", "fio_randread")):
                raws = []
                for _ in range(a.runs):
                    if job == "seqwrite":
                        if os.path.exists(path):
                            os.unlink(path)
                        os.sync()
                    else:
                        self.cold(t)
                    raws.append(self.fio(t, job))
                metric = "iops" if job == "randread" else "mib_s"
                v = med([r[metric] for r in raws])
                self.put(key, t.name, value=v, unit="IOPS" if job == "randread" else "MiB/s",
                         samples=[r[metric] for r in raws], raw=raws)
                log(f"  {t.name}: fio {job}: {v:.1f} {'IOPS' if job == 'randread' else 'MiB/s'}")
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def w_propagation(self, t: Target) -> None:
        name = "propagation.txt"
        through = os.path.join(t.root, name)
        if t.backing is not None:
            behind = os.path.join(t.backing, name)

            def write(value: str) -> None:
                with open(behind, "w") as f:
                    f.write(value)
            how = "host file behind the target: open, write, close"
        else:
            def write(value: str) -> None:
                run(["docker", "exec", self.container, "sh", "-c", 'printf "%s" "$1" > /workspace/' + name,
                     "sh", value], timeout=60)
            how = f"docker exec {self.container} sh -c 'printf … > /workspace/{name}'"

        def read() -> str | None:
            try:
                with open(through) as f:
                    return f.read()
            except OSError:
                return None

        def wait_for(value: str, bound: float) -> float | None:
            t0 = time.perf_counter()
            while True:
                if read() == value:
                    return time.perf_counter() - t0
                if time.perf_counter() - t0 > bound:
                    return None
                time.sleep(0.001)
        write("initial\n")
        if wait_for("initial\n", 30) is None:
            raise RuntimeError(f"{t.name}: the initial value never showed through the target")
        lat, missed = [], 0
        for i in range(self.args.prop_samples):
            read()  # the target has just seen the old value (as an open editor would)
            value = f"change {i} {secrets.token_hex(1 + i % 8)}\n"  # sizes vary, as edits do
            write(value)
            d = wait_for(value, PROP_BOUND_S)
            if d is None:
                missed += 1
            else:
                lat.append(d * 1e3)
        n = self.args.prop_samples
        p = {"p50_ms": pct(lat, 50) if lat else None, "p99_ms": pct(lat, 99) if lat else None,
             "arrived": len(lat), "missed": missed, "samples": n, "bound_s": PROP_BOUND_S,
             "written": how, "samples_ms": [round(x, 3) for x in lat]}
        self.results.setdefault("propagation", {})[t.name] = p
        log(f"  {t.name}: change propagation p50 {self.fmt(p['p50_ms'], 'ms')}, p99 {self.fmt(p['p99_ms'], 'ms')}, "
            f"{missed}/{n} never arrived within {PROP_BOUND_S:.0f} s")
        try:
            os.unlink(through)
        except OSError:
            pass

    def run_target(self, t: Target) -> None:
        log(f"== {t.name}: {t.root}")
        if t.name == "docker-exec":
            self.w_read(t)
            return
        self.w_tar(t, self.args.runs)
        self.prime_git(t)
        self.w_tree_cmds(t)
        for step in (self.w_stat, self.w_read, self.w_fio, self.w_propagation):
            try:
                step(t)
            except Exception as e:  # noqa: BLE001
                self.record_error(f"{t.name} {step.__name__[2:]}", e)

    def extrapolate_docker_exec(self) -> None:
        v = self.value("read_p50", "docker-exec")
        if v is None:
            return
        n = len(self.manifest)
        for key in ("rg_warm", "rg_cold"):
            self.put(key, "docker-exec", value=v / 1e3 * n, unit="s", extrapolated=True,
                     note=f"extrapolated: per-file `docker exec cat` p50 {v:.1f} ms × {n} files")

    # ---------------------------------------------------------------- idle RSS

    def measure_rss(self) -> None:
        time.sleep(self.args.idle_s)
        out = {}
        if "sessionfs" in self.procs:
            out["bridge (sessionfs mount)"] = rss_kib(self.procs["sessionfs"].pid)
            for s in json.loads(self.sfs(self.home, "session", "ls", "--json").stdout):
                if s["id"] == self.ids.get("sessionfs-local") and s.get("pid"):
                    out["sessionfsd (sessionfs-local, process)"] = rss_kib(s["pid"])
            if "sessionfs-docker" in self.ids:
                pid = run(["docker", "inspect", "-f", "{{.State.Pid}}", self.container]).stdout.strip()
                if pid and pid != "0":
                    out["sessionfsd (sessionfs-docker, in its container)"] = rss_kib(int(pid))
        for name in ("bindfs", "sshfs"):
            if name in self.procs and self.procs[name].poll() is None:
                out[f"{name} (for comparison)"] = rss_kib(self.procs[name].pid)
        self.rss = {k: v for k, v in out.items()}
        for k, v in self.rss.items():
            log(f"  idle RSS {k}: {v} KiB")

    # ---------------------------------------------------------------- scale

    def run_scale(self) -> None:
        n = self.args.scale_sessions
        home = os.path.join(self.W, "scale-home")
        mnt = os.path.join(self.W, "mnt-scale")
        ws = os.path.join(self.W, "scale-ws")
        os.makedirs(mnt)
        ids = [f"scale-{self.tag}-{i:03d}" for i in range(n)]
        created: list[str] = []

        def remove_all():
            failures = []
            for sid in reversed(created):
                try:
                    self.rm_session(home, sid)
                except Exception as e:  # noqa: BLE001
                    failures.append(f"{sid}: {e}")
            left = json.loads(self.sfs(home, "session", "ls", "--json").stdout)
            if left:
                failures.append(f"still registered: {[s['id'] for s in left]}")
            if failures:
                raise RuntimeError("; ".join(failures[:5]))
        self.on_cleanup(f"remove the {n} scale sessions", remove_all)
        log(f"== scale: creating {n} local sessions")
        t0 = time.perf_counter()
        for sid in ids:
            d = os.path.join(ws, sid)
            os.makedirs(os.path.join(d, "src"))
            with open(os.path.join(d, "README.md"), "w") as f:
                f.write(f"# {sid}\n")
            with open(os.path.join(d, "src", "main.rs"), "w") as f:
                f.write('fn main() {\n    println!("hello");\n}\n')
            p = self.sfs(home, "session", "create", sid, "--dir", d, check=False)
            if p.returncode != 0:
                raise SetupError(f"session create {sid}: {p.stderr.strip()}")
            created.append(sid)
        create_s = time.perf_counter() - t0
        proc = subprocess.Popen([self.args.bin, "mount", mnt], env=self.sfs_env(home),
                                stdout=self.logfile("scale-mount.log"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs["scale-mount"] = proc
        self.on_cleanup("unmount the scale bridge", lambda: self.stop_bridge(mnt, proc))
        t0 = time.perf_counter()

        def listed():
            try:
                return len(os.listdir(mnt)) >= n
            except OSError:
                return False
        if not wait_until(lambda: proc.poll() is not None or (is_mounted(mnt) and listed()), 60) \
                or proc.poll() is not None:
            raise SetupError(f"the scale bridge did not show {n} sessions: {self.tail('scale-mount.log')}")
        visible_s = time.perf_counter() - t0
        time.sleep(self.args.idle_s)
        rss_mounted = rss_kib(proc.pid)
        ls_s, p = timed(["ls", mnt])
        listed_n = len(p.stdout.splitlines())
        ok = 0
        t0 = time.perf_counter()
        for sid in ids:
            try:
                os.listdir(os.path.join(mnt, sid))
                with open(os.path.join(mnt, sid, "README.md")) as f:
                    ok += f.read() == f"# {sid}\n"
            except OSError as e:
                log(f"  scale: {sid}: {e}")
        touch_s = time.perf_counter() - t0
        time.sleep(self.args.idle_s)
        rss_used = rss_kib(proc.pid)
        drss = []
        for s in json.loads(self.sfs(home, "session", "ls", "--json").stdout):
            if s.get("pid"):
                r = rss_kib(s["pid"])
                if r:
                    drss.append(r)
        self.scale = {
            "sessions": n, "listed_by_ls": listed_n, "readable": ok,
            "create_all_s": create_s, "visible_after_mount_s": visible_s, "ls_root_s": ls_s,
            "list_and_read_every_session_s": touch_s,
            "bridge_rss_kib_mounted": rss_mounted, "bridge_rss_kib_after_use": rss_used,
            "bridge_rss_kib_per_session": rss_used / n if rss_used else None,
            "bridge_rss_kib_per_session_used": (rss_used - rss_mounted) / n if rss_used and rss_mounted else None,
            "daemon_rss_kib_mean": statistics.mean(drss) if drss else None,
            "daemon_rss_kib_max": max(drss) if drss else None,
        }
        log(f"  scale: {listed_n}/{n} listed, {ok}/{n} readable; bridge RSS {rss_used} KiB "
            f"({rss_used / n:.1f} KiB per session); ls of the root {ls_s * 1e3:.1f} ms")

    # ---------------------------------------------------------------- main

    def main(self) -> int:
        a = self.args
        self.preflight()
        base = a.work_parent
        os.makedirs(base, exist_ok=True)
        self.W = os.path.realpath(tempfile.mkdtemp(prefix="sessionfs-bench.", dir=base))
        os.makedirs(os.path.join(self.W, "logs"))
        self.on_cleanup(f"remove the work directory {self.W}", self.remove_work)
        gitconfig = os.path.join(self.W, "gitconfig")
        with open(gitconfig, "w") as f:
            f.write("[safe]\n\tdirectory = *\n[core]\n\tfsmonitor = false\n")
        self.git_env = dict(self.env, GIT_CONFIG_GLOBAL=gitconfig, GIT_CONFIG_NOSYSTEM="1")
        self.env = self.git_env
        self.started = datetime.datetime.now().astimezone()
        self.meta = self.machine_info()
        log(f"work directory {self.W} ({self.meta['work_dir_fs']}); targets: {', '.join(a.targets)}")
        self.prepare_tree()
        self.settle_disk()
        # Targets, set up all at once; a target whose setup fails is reported and skipped.
        for name, fn in (("local", self.setup_local), ("bindfs", self.setup_bindfs), ("sshfs", self.setup_sshfs)):
            if name in a.targets:
                try:
                    self.targets[name] = fn()
                except Exception as e:  # noqa: BLE001
                    self.record_error(f"setup {name}", e)
        want_local = "sessionfs-local" in a.targets
        want_docker = "sessionfs-docker" in a.targets or "docker-exec" in a.targets
        if want_local or want_docker:
            try:
                self.setup_sessionfs(want_local, want_docker)
            except Exception as e:  # noqa: BLE001
                self.record_error("setup sessionfs", e)
                for n in SESSIONFS_TARGETS:
                    self.targets.pop(n, None)
        if "docker-exec" in a.targets and "sessionfs-docker" in self.targets:
            self.targets["docker-exec"] = Target("docker-exec", "(container)")
        if set(REMOTE_TARGETS) & set(a.targets):
            try:
                self.setup_link()
                if "sshfs-remote" in a.targets:
                    try:
                        self.targets["sshfs-remote"] = self.setup_sshfs(
                            "sshfs-remote", server_ns=self.ns["a"], client_ns=self.ns["b"], listen=LINK_A)
                    except Exception as e:  # noqa: BLE001
                        self.record_error("setup sshfs-remote", e)
                if "sessionfs-remote" in a.targets:
                    try:
                        self.targets["sessionfs-remote"] = self.setup_remote_sessionfs()
                    except Exception as e:  # noqa: BLE001
                        self.record_error("setup sessionfs-remote", e)
            except Exception as e:  # noqa: BLE001
                self.record_error("setup the remote link", e)
        for name in self.order():
            if name not in self.targets:
                continue
            t = self.targets[name]
            if name == "docker-exec" and "sessionfs-docker" not in a.targets:
                d = self.targets["sessionfs-docker"]  # the tree must be in the container all the same
                run(["tar", "-xf", self.tar, "-C", d.root], timeout=7200)
            try:
                self.run_target(t)
            except Exception as e:  # noqa: BLE001
                t.ok, t.error = False, str(e)
                self.record_error(f"target {name}", e)
        self.extrapolate_docker_exec()
        self.remove_aside()
        try:
            self.measure_rss()
        except Exception as e:  # noqa: BLE001
            self.record_error("idle RSS", e)
        self.teardown_main_targets()
        if not a.skip_scale:
            try:
                self.run_scale()
            except Exception as e:  # noqa: BLE001
                self.record_error("scale", e)
        self.teardown()
        self.finished = datetime.datetime.now().astimezone()
        self.write_reports()
        if self.teardown_errors:
            loud("TEARDOWN PROBLEMS:\n  - " + "\n  - ".join(self.teardown_errors))
        return 1 if (self.errors or self.teardown_errors) else 0

    def remove_aside(self) -> None:
        """Removes the earlier tar runs' trees once every workload has run (a daemon's memory grows
        with the directories it watches, and the idle RSS is measured next)."""
        for path in self.aside:
            p = run(["rm", "-rf", path], timeout=3600, check=False)
            if p.returncode != 0:
                self.record_error("remove an earlier tar run's tree", RuntimeError(p.stderr.strip()))
        self.aside.clear()
        os.sync()

    def teardown_main_targets(self) -> None:
        """Unmounts the targets before the scale run, so that it runs on a quiet machine. Only the
        cleanups registered so far (not the work directory's) are run."""
        keep = [c for c in self.cleanups if c[1] == self.remove_work]
        self.cleanups = [c for c in self.cleanups if c[1] != self.remove_work]
        try:
            self.teardown()
        finally:
            self.cleanups = keep + self.cleanups
            install_signal_handlers()

    def leftover_processes(self) -> list[tuple[int, str]]:
        """Processes whose command line names the work directory: ours, and all should be gone."""
        found = []
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            if self.W + "/" in cmd and proc_alive(int(d)):
                found.append((int(d), cmd))
        return found

    def remove_work(self) -> None:
        left = self.leftover_processes()
        if left:
            for pid, _ in left:  # by pid: these run on the work directory, so this run started them
                try:
                    os.kill(pid, signal.SIGTERM)
                except OSError:
                    pass
            wait_until(lambda: not self.leftover_processes(), 10)
            self.teardown_errors.append(f"processes were left running (now sent SIGTERM): {left}")
            loud(f"processes were left running (now sent SIGTERM): {left}")
        under = [m for m in mountpoints() if m == self.W or m.startswith(self.W + "/")]
        if under:
            raise RuntimeError(f"not removing {self.W}: still mounted under it: {under}")
        if self.errors and self.args.out:
            dest = os.path.join(self.args.out, "logs")
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(os.path.join(self.W, "logs"), dest)
            log(f"logs kept in {dest} (there were errors)")
        shutil.rmtree(self.W)

    # ---------------------------------------------------------------- reports

    def write_reports(self) -> None:
        os.makedirs(self.args.out, exist_ok=True)
        checks = self.checks()
        doc = {
            "benchmark": "sessionfs-bench",
            "started": self.started.isoformat(timespec="seconds"),
            "finished": self.finished.isoformat(timespec="seconds"),
            "machine": self.meta,
            "config": {k: v for k, v in vars(self.args).items()},
            "tree": self.tree_info,
            "sessions": self.ids,
            "targets": {n: {"root": t.root, "backing": t.backing, "ok": t.ok, "error": t.error}
                        for n, t in self.targets.items()},
            "results": self.results,
            "idle_rss_kib": self.rss,
            "scale": self.scale,
            "checks": checks,
            "errors": self.errors,
            "teardown_errors": self.teardown_errors,
            "notes": self.extra,
        }
        with open(os.path.join(self.args.out, "bench.json"), "w") as f:
            json.dump(doc, f, indent=1, ensure_ascii=False)
        md = self.markdown(checks)
        with open(os.path.join(self.args.out, "bench.md"), "w") as f:
            f.write(md)
        try:
            self.chart(os.path.join(self.args.out, "bench.png"))
        except Exception as e:  # noqa: BLE001
            self.record_error("chart", e)
        print(md)
        log(f"wrote {self.args.out}/bench.json, bench.md, bench.png")

    def order(self) -> list[str]:
        return [n for n in ALL_TARGETS + REMOTE_TARGETS if n in self.args.targets]

    @staticmethod
    def fmt(v, unit: str) -> str:
        if v is None:
            return "—"
        if unit == "s":
            return f"{v:.3f} s" if v < 10 else f"{v:.1f} s"
        if unit in ("MiB/s", "IOPS"):
            return f"{v:,.0f} {unit}" if v >= 100 else f"{v:.1f} {unit}"
        if unit == "µs":
            return f"{v:.1f} µs"
        if unit == "ms":
            return f"{v:.3f} ms" if v < 10 else f"{v:.1f} ms"
        return f"{v} {unit}"

    def ratio(self, key: str, target: str) -> float | None:
        v, l = self.value(key, target), self.value(key, "local")
        if v is None or not l:
            return None
        return v / l

    def checks(self) -> list[dict]:
        out = []

        def add(target, what, required, measured, ok):
            out.append({"target": target, "check": what, "required": required, "measured": measured,
                        "status": "n/a" if ok is None else ("met" if ok else "missed")})

        def vs(key, target, other, limit, higher: bool, what):
            v, o = self.value(key, target), self.value(key, other)
            unit = WORKLOAD_INFO[key][1]
            if v is None or o is None or o == 0:
                add(target, what, "", f"not measured ({target}: {self.fmt(v, unit)}, {other}: "
                    f"{self.fmt(o, unit)})", None)
                return
            r = v / o
            ok = r >= limit if higher else r <= limit
            req = f"{'≥' if higher else '≤'} {limit:g}× {other}"
            add(target, what, req, f"{r:.2f}× ({self.fmt(v, unit)} vs {self.fmt(o, unit)})", ok)
        for t in SESSIONFS_TARGETS:
            if t not in self.args.targets:
                continue
            vs("find_warm", t, "local", 2, False, "warm find within 2× of local")
            vs("git_warm", t, "local", 2, False, "warm git status within 2× of local")
            vs("find_cold", t, "sshfs", 0.5, False, "cold find at most half of sshfs's time")
            vs("rg_cold", t, "sshfs", 0.5, False, "cold rg at most half of sshfs's time")
            vs("fio_seqread", t, "sshfs", 3, True, "sequential read ≥ 3× sshfs's throughput")
            vs("fio_seqwrite", t, "sshfs", 3, True, "sequential write ≥ 3× sshfs's throughput")
            vs("tar", t, "sshfs", 0.5, False, "tar extraction at most half of sshfs's time")
        for k, v in self.rss.items():
            if k.startswith("sessionfsd"):
                add(k.split("(")[1].split(",")[0], "daemon idle RSS ≤ 10 MiB", "≤ 10.0 MiB",
                    f"{v / 1024:.1f} MiB" if v else "not measured", None if v is None else v <= 10 * 1024)
        if self.scale:
            s = self.scale
            n = s["sessions"]
            all_ok = s["listed_by_ls"] == n and s["readable"] == n
            measured = (f"{s['listed_by_ls']}/{n} listed, {s['readable']}/{n} readable; bridge RSS "
                        f"{s['bridge_rss_kib_after_use'] / 1024:.1f} MiB "
                        f"({s['bridge_rss_kib_per_session']:.0f} KiB per session)")
            ok = all_ok if n >= 200 else None
            if n < 200:
                measured += f" — only {n} sessions in this run (--scale-sessions), the target is 200"
            add("bridge", "200 sessions mounted, with the bridge's memory", "all 200 listed and readable",
                measured, ok)
        elif not self.args.skip_scale:
            add("bridge", "200 sessions mounted, with the bridge's memory", "all 200 listed and readable",
                "the scale run failed (see errors)", False)
        return out

    def markdown(self, checks: list[dict]) -> str:
        a, m, ti = self.args, self.meta, self.tree_info
        L = [f"# sessionfs benchmark ({self.started.strftime('%Y-%m-%d %H:%M %Z')})", ""]
        if a.quick:
            L += ["**Quick smoke run (`--quick`): small tree, small fio file, one run — not representative.**", ""]
        L += [
            f"- Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory']}, kernel {m['kernel']}, {m['os']}; "
            f"work directory on {m['work_dir_fs']}",
            "- Versions: " + ", ".join(f"{k} `{v}`" for k, v in m["versions"].items()),
            "- Binaries: " + ", ".join(f"{k} `{v['path']}` (sha256 {v['sha256']}…, built {v['mtime']})"
                                       for k, v in m.get("binaries", {}).items()),
            f"- Tree: {ti.get('files')} files ({ti.get('bytes', 0) / MiB:.0f} MiB) in {ti.get('crate_count')} crate "
            f"directories from the cargo registry (sorted; `{ti.get('crates', ['?'])[0]}` … "
            f"`{ti.get('crates', ['?'])[-1]}`), one git commit; `find` sees {ti.get('find_entries')} entries",
            f"- Runs: warm {a.runs} (after one untimed run), cold {a.cold_runs}; medians. Cold = `sync; echo 3 > "
            f"/proc/sys/vm/drop_caches` (+ sshfs remounted), then {COLD_QUIET_S} s idle. fio: {a.fio_size} file, "
            f"psync, buffered, page cache dropped before every read job; random read capped at {a.fio_runtime} s.",
            "- Ratio = target ÷ local (for times and latencies lower is better; for MiB/s and IOPS higher is better).",
            "",
        ]
        for key, title, unit, better in WORKLOADS:
            rows = self.results.get(key, {})
            if not rows:
                continue
            L += [f"## {title}", "", f"| target | {'median' if key[:4] not in ('stat', 'read') else 'value'} "
                  "| × local | runs | notes |", "|---|---:|---:|---:|---|"]
            for t in self.order():
                r = rows.get(t)
                if r is None:
                    if t == "docker-exec":
                        continue
                    L.append(f"| {t} | — | — | — | not measured |")
                    continue
                ratio = self.ratio(key, t)
                note = []
                if r.get("extrapolated"):
                    note.append(f"**{r['note']}**")
                if key.startswith("find") and r.get("output") is not None and r["output"] != ti.get("find_entries"):
                    note.append(f"find counted {r['output']}, expected {ti.get('find_entries')}")
                if key.startswith("git") and r.get("output"):
                    note.append(f"status printed {r['output']} lines")
                if key.startswith("rg") and r.get("output") is not None:
                    note.append(f"{r['output']} files match")
                if key.startswith("stat") or key.startswith("read"):
                    note.append(f"{r.get('n')} files")
                runs = r.get("runs") or len(r.get("samples", []))
                L.append(f"| {t}{' (extrapolated)' if r.get('extrapolated') else ''} | {self.fmt(r['value'], unit)} | "
                         f"{'—' if ratio is None else f'{ratio:.2f}×'} | {runs or '—'} | {'; '.join(note)} |")
            if key.startswith(("find", "git")) and "docker-exec" in self.args.targets:
                L.append("| docker-exec | — | — | — | skipped: no per-file equivalent (see per-file read) |")
            L.append("")
        prop = self.results.get("propagation", {})
        if prop:
            L += [f"## Change propagation (write through the backing side, poll through the target; "
                  f"{a.prop_samples} samples, bound {PROP_BOUND_S:.0f} s)", "",
                  "Timed from the moment the write returned (for `docker exec` that is after the exec's own "
                  "round trip); the file was read through the target just before each write.", "",
                  "| target | p50 | p99 | arrived | never arrived | written |", "|---|---:|---:|---:|---:|---|"]
            for t in self.order():
                r = prop.get(t)
                if r:
                    L.append(f"| {t} | {self.fmt(r['p50_ms'], 'ms')} | {self.fmt(r['p99_ms'], 'ms')} | "
                             f"{r['arrived']}/{r['samples']} | {r['missed']} | {r['written']} |")
            L.append("")
        if self.rss:
            L += [f"## Idle RSS after the workloads ({a.idle_s:g} s idle)", "", "| process | RSS |", "|---|---:|"]
            for k, v in self.rss.items():
                L.append(f"| {k} | {'—' if v is None else f'{v / 1024:.1f} MiB'} |")
            L.append("")
        if self.scale:
            s = self.scale
            n = s["sessions"]
            L += [f"## Scale: {n} local sessions in their own SESSIONFS_HOME, one bridge", "",
                  "| measure | value |", "|---|---:|",
                  f"| sessions listed by `ls` of the mount root | {s['listed_by_ls']}/{n} |",
                  f"| sessions listed and a file read in each | {s['readable']}/{n} |",
                  f"| `session create` × {n} | {s['create_all_s']:.2f} s |",
                  f"| all visible after the mount started | {s['visible_after_mount_s']:.2f} s |",
                  f"| `ls` of the mount root | {s['ls_root_s'] * 1e3:.1f} ms |",
                  f"| list + read a file in every session | {s['list_and_read_every_session_s']:.2f} s |",
                  f"| bridge RSS, mounted (idle) | {s['bridge_rss_kib_mounted'] / 1024:.1f} MiB |",
                  f"| bridge RSS after every session was used | {s['bridge_rss_kib_after_use'] / 1024:.1f} MiB |",
                  f"| bridge RSS per mounted session (total ÷ {n}) | {s['bridge_rss_kib_per_session']:.0f} KiB |",
                  f"| bridge RSS added per session by using it (after − mounted) ÷ {n} | "
                  f"{s['bridge_rss_kib_per_session_used']:.0f} KiB |"]
            if s.get("daemon_rss_kib_mean"):
                L.append(f"| sessionfsd RSS, mean / max over the {n} | {s['daemon_rss_kib_mean'] / 1024:.1f} / "
                         f"{s['daemon_rss_kib_max'] / 1024:.1f} MiB |")
            L.append("")
        L += ["## The issue's targets", "", "| target | check | required | measured | status |",
              "|---|---|---|---|---|"]
        for c in checks:
            mark = {"met": "✅ met", "missed": "❌ missed", "n/a": "— n/a"}[c["status"]]
            L.append(f"| {c['target']} | {c['check']} | {c['required']} | {c['measured']} | {mark} |")
        L.append("")
        if self.errors or self.teardown_errors:
            L += ["## Errors", ""] + [f"- {e['where']}: {e['error']}" for e in self.errors] + \
                 [f"- teardown: {e}" for e in self.teardown_errors] + [""]
        L += ["Raw samples: `bench.json`; chart: `bench.png`. Reproduce: `scripts/bench.sh` "
              f"(this run: `bench/run.py {' '.join(self.argv)}`).", ""]
        return "\n".join(L)

    def chart(self, path: str) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, NullFormatter
        keys = [k for k, *_ in WORKLOADS if any(t != "local" for t in self.results.get(k, {}))]
        colors = {"local": "#888888", "bindfs": "#4c72b0", "sshfs": "#dd8452", "sessionfs-local": "#55a868",
                  "sessionfs-docker": "#2a7a3b", "docker-exec": "#c44e52"}
        cols = 3
        rows = max(1, math.ceil(len(keys) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.4 * rows), squeeze=False)
        for ax in axes.flat[len(keys):]:
            ax.set_visible(False)
        for ax, key in zip(axes.flat, keys):
            title, unit, better = WORKLOAD_INFO[key]
            names, vals, hatches = [], [], []
            for t in self.order():
                r = self.ratio(key, t)
                if t == "local" or r is None or r <= 0:
                    continue
                names.append(t.replace("sessionfs-", "sfs-"))
                # Slowdown: > 1 is worse than local, whatever the unit.
                vals.append(1 / r if better == "higher" else r)
                hatches.append("//" if self.results[key][t].get("extrapolated") else "")
            bars = ax.bar(names, vals, color=[colors.get(n.replace("sfs-", "sessionfs-"), "#999") for n in names])
            for b, h, v in zip(bars, hatches, vals):
                b.set_hatch(h)
                ax.annotate(f"{v:.0f}×" if v >= 10 else f"{v:.2g}×", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
            ax.axhline(1, color="black", linewidth=0.8)
            ax.set_yscale("log")
            if vals:
                ax.set_ylim(min(min(vals), 1) / 1.6, max(max(vals), 1) * 1.6)
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_title("\n".join(textwrap.wrap(title.replace("`", ""), 55)), fontsize=8)
            ax.set_ylabel("slowdown vs local (×, log)", fontsize=7)
            ax.tick_params(axis="x", labelrotation=25, labelsize=7)
            ax.tick_params(axis="y", labelsize=7)
        fig.suptitle("sessionfs benchmark: slowdown against a local directory (1 = local; higher is worse; "
                     "hatched = extrapolated)", fontsize=10)
        fig.tight_layout(rect=(0, 0, 1, 0.96))
        fig.savefig(path, dpi=110)
        plt.close(fig)


def install_signal_handlers() -> None:
    def handler(signum, _frame):
        raise Interrupted(f"signal {signal.Signals(signum).name}")
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)


def parse_args(argv):
    target_dir = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/sessionfs-target"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, help="files in the tree, at least (default 10000; quick 1000)")
    ap.add_argument("--fio-size", help="fio file size (default 1g; quick 32m)")
    ap.add_argument("--runs", type=int, help="runs per timed workload (default 3; quick 1)")
    ap.add_argument("--cold-runs", type=int, help="runs per cold workload (default min(runs, 3))")
    ap.add_argument("--targets", default=",".join(ALL_TARGETS),
                    help="comma-separated subset of " + ",".join(ALL_TARGETS + REMOTE_TARGETS))
    ap.add_argument("--remote-rtt", type=float, default=10.0, help="round trip of the remote link, ms (default 10)")
    ap.add_argument("--remote-loss", type=float, default=0.5,
                    help="packets the remote link drops, %% each way (default 0.5)")
    ap.add_argument("--delay-line", default=str(target_dir / "release/sessionfs-delay-line"))
    ap.add_argument("--skip-scale", action="store_true", help="skip the many-sessions measurement")
    ap.add_argument("--scale-sessions", type=int, help="sessions in the scale run (default 200; quick 20)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"), help="output directory")
    ap.add_argument("--quick", action="store_true", help="smoke test: files 1000, fio 32m, runs 1, 20 sessions")
    ap.add_argument("--pattern", default="unsafe", help="fixed string for rg (default: unsafe)")
    ap.add_argument("--prop-samples", type=int, help="change-propagation samples (default 50; quick 10)")
    ap.add_argument("--read-samples", type=int, help="files in the per-file read sample (default 200; quick 30)")
    ap.add_argument("--fio-runtime", type=int, help="cap in seconds for the random-read job (default 20; quick 5)")
    ap.add_argument("--idle-s", type=float, default=3.0, help="idle seconds before measuring RSS")
    ap.add_argument("--registry", default=str(Path.home() / ".cargo/registry/src"), help="cargo registry sources")
    ap.add_argument("--work-parent", default="/var/tmp", help="where the work directory is made (local disk)")
    ap.add_argument("--bin", default=os.environ.get("SESSIONFS_BIN", str(target_dir / "release/sessionfs")))
    ap.add_argument("--daemon", default=os.environ.get("SESSIONFS_DAEMON"),
                    help="sessionfsd for local sessions (default: next to --bin)")
    ap.add_argument("--static-daemon", default=os.environ.get(
        "SESSIONFS_STATIC_DAEMON", str(target_dir / "x86_64-unknown-linux-gnu/release/sessionfsd")))
    ap.add_argument("--sshd", default="/usr/sbin/sshd")
    ap.add_argument("--sftp-server", default="/usr/lib/openssh/sftp-server")
    a = ap.parse_args(argv)
    q = a.quick
    for name, normal, quick in (("files", 10000, 1000), ("fio_size", "1g", "32m"), ("runs", 3, 1),
                                ("scale_sessions", 200, 20), ("prop_samples", 50, 10),
                                ("read_samples", 200, 30), ("fio_runtime", 20, 5)):
        if getattr(a, name) is None:
            setattr(a, name, quick if q else normal)
    if a.cold_runs is None:
        a.cold_runs = max(1, min(a.runs, 3))
    a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    bad = [t for t in a.targets if t not in ALL_TARGETS + REMOTE_TARGETS]
    if bad:
        ap.error(f"unknown targets {bad}; choose from {ALL_TARGETS + REMOTE_TARGETS}")
    if a.runs < 1 or a.files < 1 or a.prop_samples < 1 or a.read_samples < 1:
        ap.error("--runs, --files, --prop-samples and --read-samples must be positive")
    a.out = os.path.abspath(a.out)
    return a


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    bench = Bench(args)
    bench.argv = argv
    install_signal_handlers()
    code = 1
    try:
        code = bench.main()
    except Interrupted as e:
        loud(f"interrupted ({e}): tearing everything down")
        code = 130
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException as e:  # noqa: BLE001
        bench.record_error("benchmark", e)
        code = 1
    finally:
        bench.teardown()
        if bench.teardown_errors:
            loud("TEARDOWN PROBLEMS:\n  - " + "\n  - ".join(bench.teardown_errors))
            code = code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
