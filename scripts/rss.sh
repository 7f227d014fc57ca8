#!/usr/bin/env bash
# Measures idle memory: resident set size of a fresh sessionfsd, of daemons that served a little
# traffic, and of the bridge with N sessions mounted (default 3). Release build, local sessions.
#   scripts/rss.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sessionfs-target}"
cargo build --release --bins --locked -q
bin="$CARGO_TARGET_DIR/release"
work="$(mktemp -d)"
export SESSIONFS_HOME="$work/home"
mkdir -p "$work/mnt"
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
cleanup() {
  [ -n "${mount_pid:-}" ] && kill -TERM "$mount_pid" 2>/dev/null && wait "$mount_pid" 2>/dev/null || true
  for i in $(seq "$n"); do "$bin/sessionfs" session rm "s$i" --purge >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
for i in $(seq "$n"); do "$bin/sessionfs" session create "s$i" >/dev/null; done
pid() { "$bin/sessionfs" session ls --json | python3 -c "import json,sys; print([s['pid'] for s in json.load(sys.stdin) if s['id']=='$1'][0])"; }
echo "fresh daemon: $(rss "$(pid s1)") KiB"
SESSIONFS_LOG=warn "$bin/sessionfs" mount "$work/mnt" &
mount_pid=$!
for _ in $(seq 200); do mountpoint -q "$work/mnt" && break; sleep 0.05; done
for i in $(seq "$n"); do echo hello > "$work/mnt/s$i/f"; cat "$work/mnt/s$i/f" >/dev/null; ls -l "$work/mnt/s$i" >/dev/null; done
total=0
for i in $(seq "$n"); do total=$((total + $(rss "$(pid "s$i")"))); done
echo "daemon after serving: $((total / n)) KiB on average over $n"
echo "bridge with $n sessions mounted: $(rss "$mount_pid") KiB"
