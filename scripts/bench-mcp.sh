#!/usr/bin/env bash
# MCP tool latency next to `docker exec cat`: builds sessionfs (release), makes a Docker session whose image
# also has a shell and `cat` (busybox, so that `docker exec` has something to run; nothing is pulled: the
# base image is imported from a tar of Debian's static busybox), mounts it, and runs bench/mcp_latency.py.
# Writes bench/results/mcp-latency.{json,md}.
#
#   scripts/bench-mcp.sh [RUNS]     (default 200 calls per operation)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-200}"
scripts/install-deps.sh
command -v busybox >/dev/null || {
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sessionfs-target}"
cargo build --release --locked -p sessionfs-deploy --bin sessionfs
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked -p sessionfs-daemon --target x86_64-unknown-linux-gnu
export SESSIONFS_STATIC_DAEMON="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/sessionfsd"
bin="$CARGO_TARGET_DIR/release/sessionfs"
python="${SESSIONFS_TOOLS:-$HOME/.cache/sessionfs-tools}/venv/bin/python"

work="$(mktemp -d /tmp/sessionfs-bench-mcp.XXXXXX)"
export SESSIONFS_HOME="$work/home"
mnt="$work/mnt"
id="benchmcp"
mkdir -p "$mnt" "$work/rootfs/bin"
cleanup() {
  [ -n "${mount_pid:-}" ] && { kill -TERM "$mount_pid" 2>/dev/null || true; wait "$mount_pid" 2>/dev/null || true; }
  "$bin" session rm "$id" --purge >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# A base image with busybox as sh and cat, imported from a tar (no registry involved).
cp "$(command -v busybox)" "$work/rootfs/bin/busybox"
ln -s busybox "$work/rootfs/bin/sh"
ln -s busybox "$work/rootfs/bin/cat"
tar -C "$work/rootfs" -c . | docker import - sessionfs-bench-busybox:latest >/dev/null
"$bin" image build --base sessionfs-bench-busybox:latest --tag sessionfs-session-busybox:latest 2>/dev/null
"$bin" session create "$id" --backend docker --image sessionfs-session-busybox:latest
"$bin" mount "$mnt" &
mount_pid=$!
for _ in $(seq 200); do [ -d "$mnt/$id" ] && break; sleep 0.05; done
[ -d "$mnt/$id" ] || { echo "the bridge did not mount $id" >&2; exit 1; }
"$python" bench/mcp_latency.py --bin "$bin" --home "$SESSIONFS_HOME" --mount "$mnt" --session "$id" \
  --container "sessionfs-$id" --runs "$runs" --out bench/results
