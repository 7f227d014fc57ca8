#!/usr/bin/env bash
# The main job, end to end: builds sessionfs, creates three sessions (Docker containers when an engine
# answers, local processes otherwise) with some files, mounts them under one directory, and shows
# ordinary tools working on them. Then it stays mounted until Ctrl-C
# (or unmounts at once with --no-wait).
#
#   scripts/demo.sh [MOUNTPOINT] [--no-wait]      (default mountpoint: ./demo/sessions)
set -euo pipefail
cd "$(dirname "$0")/.."
wait=1; mnt=""
for a in "$@"; do
  case "$a" in
    --no-wait) wait=0 ;;
    *) mnt="$a" ;;
  esac
done
root="$(pwd)/demo"
mnt="${mnt:-$root/sessions}"
SESSIONFS_DOCKER=optional scripts/install-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sessionfs-target}"
cargo build --release --bins --locked
bin="$CARGO_TARGET_DIR/release"
# Sessions run in Docker containers when an engine answers, as local processes otherwise.
backend=local
if docker info >/dev/null 2>&1; then
  backend=docker
  # The image is FROM scratch: its daemon is linked statically.
  RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked -p sessionfs-daemon --target x86_64-unknown-linux-gnu
  export SESSIONFS_STATIC_DAEMON="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/sessionfsd"
fi
export SESSIONFS_HOME="$root/state"
sfs() { "$bin/sessionfs" "$@"; }

# A clean slate: forget sessions of an earlier demo run.
if [ -d "$SESSIONFS_HOME" ]; then
  sfs umount "$mnt" 2>/dev/null || true
  for id in $(sfs session ls --json | python3 -c 'import json,sys; print(" ".join(s["id"] for s in json.load(sys.stdin)))'); do
    sfs session rm "$id" --purge >/dev/null
  done
fi
mkdir -p "$mnt"
if [ "$backend" = docker ]; then
  sfs image build
fi
for id in web api notes; do
  sfs session create "$id" --backend "$backend"
done
sfs session ls

SESSIONFS_LOG="${SESSIONFS_LOG:-warn}" "$bin/sessionfs" mount "$mnt" --map-owner &
mount_pid=$!
trap 'kill -TERM $mount_pid 2>/dev/null || true; wait $mount_pid 2>/dev/null || true' EXIT
for _ in $(seq 200); do mountpoint -q "$mnt" && break; sleep 0.05; done
mountpoint -q "$mnt" || { echo "the bridge did not mount" >&2; exit 1; }

echo; echo "== ls $mnt"; ls -l "$mnt"
echo; echo "== writing through the mount"
printf '<h1>hello from web</h1>\n' > "$mnt/web/index.html"
mkdir -p "$mnt/api/src" && printf 'fn main() { println!("api"); }\n' > "$mnt/api/src/main.rs"
printf '# notes\n- sessionfs demo\n' > "$mnt/notes/todo.md"
echo; echo "== git in a session"
git -C "$mnt/api" init -q -b main
git -C "$mnt/api" -c user.name=demo -c user.email=demo@example.invalid add -A
git -C "$mnt/api" -c user.name=demo -c user.email=demo@example.invalid commit -q -m "first commit"
git -C "$mnt/api" log --oneline
echo; echo "== ripgrep across all sessions"
rg -n "hello|api|demo" "$mnt"
echo; echo "== the same bytes on the daemon side"
if [ "$backend" = docker ]; then
  docker cp sessionfs-web:/workspace/index.html - | tar -xO
else
  cat "$SESSIONFS_HOME/sessions/web/workspace/index.html"
fi

if [ "$wait" = 1 ]; then
  echo; echo "Sessions are mounted at $mnt. Try: ls $mnt; Ctrl-C to unmount."
  wait $mount_pid || true
  echo "The session daemons keep running: SESSIONFS_HOME=$SESSIONFS_HOME $bin/sessionfs session ls"
else
  kill -TERM $mount_pid; wait $mount_pid || true
  for id in web api notes; do sfs session stop "$id" >/dev/null; done
  echo; echo "demo done: unmounted $mnt and stopped the sessions"
fi
