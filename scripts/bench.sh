#!/usr/bin/env bash
# The benchmark suite in one command: sessionfs (local and docker sessions) next to a local directory,
# bindfs, sshfs over loopback and `docker exec`, on the same tree (see bench/run.py for the workloads).
# Installs what the benchmark needs if missing, builds the release binaries (the bridge, the local
# daemon and the static daemon of the session image), then runs bench/run.py with the tools
# virtualenv's python, passing every argument through. Needs root (it drops the page cache).
# Writes bench/results/bench.{json,md,png} unless --out says otherwise.
#
#   scripts/bench.sh                        # full run: 10,000 files, 1 GiB fio file, 3 runs, 200 sessions
#   scripts/bench.sh --quick --out /tmp/b   # smoke test: 1,000 files, 32 MiB, 1 run, 20 sessions
#   scripts/bench.sh --targets local,sshfs,sessionfs-local --skip-scale
#   scripts/bench.sh --targets local,sshfs-remote,sessionfs-remote --remote-rtt 10 --skip-scale
#                                           # across hosts: namespaces joined by a delay line
#   SESSIONFS_BENCH_NO_BUILD=1 scripts/bench.sh …   # reuse the binaries already built
set -euo pipefail
cd "$(dirname "$0")/.."

# Docker, FUSE, git, ripgrep and the tools virtualenv (starts a Docker engine if none answers).
scripts/install-deps.sh

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
need=()
command -v bindfs >/dev/null || need+=(bindfs)
command -v sshfs >/dev/null || need+=(sshfs)
command -v ssh >/dev/null && command -v ssh-keygen >/dev/null || need+=(openssh-client)
{ [ -x /usr/sbin/sshd ] && [ -x /usr/lib/openssh/sftp-server ]; } || need+=(openssh-server)
command -v fio >/dev/null || need+=(fio)
command -v rg >/dev/null || need+=(ripgrep)
command -v git >/dev/null || need+=(git)
command -v busybox >/dev/null || need+=(busybox-static)  # sh and cat in the image `docker exec` runs in
command -v ping >/dev/null || need+=(iputils-ping)        # checks the remote targets' link
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  # The benchmark runs its own sshd on 127.0.0.1 only: keep the package from starting the system's
  # (listening on every address) while it is installed, unless a policy is in place already.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    trap '$SUDO rm -f "$policy"' EXIT
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  if [ -n "$policy" ]; then $SUDO rm -f "$policy"; trap - EXIT; fi
fi

# matplotlib (the charts) into the virtualenv scripts/install-deps.sh made; it recreates that venv
# when the MCP requirements change, so this is checked on every run.
tools="${SESSIONFS_TOOLS:-$HOME/.cache/sessionfs-tools}"
python="$tools/venv/bin/python"
if ! "$python" -c 'import matplotlib' 2>/dev/null; then
  echo "installing matplotlib into $tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check 'matplotlib==3.11.2'
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sessionfs-target}"
if [ -z "${SESSIONFS_BENCH_NO_BUILD:-}" ]; then
  cargo build --release --locked -p sessionfs-deploy --bin sessionfs
  cargo build --release --locked -p sessionfs-daemon --bin sessionfsd   # local sessions' daemon
  cargo build --release --locked -p sessionfs-tests --bin sessionfs-delay-line  # the remote link
  # The session image is FROM scratch, so its daemon must be statically linked.
  RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked -p sessionfs-daemon --target x86_64-unknown-linux-gnu
fi
export SESSIONFS_STATIC_DAEMON="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/sessionfsd"
export SESSIONFS_DAEMON="$CARGO_TARGET_DIR/release/sessionfsd"
exec "$python" bench/run.py --bin "$CARGO_TARGET_DIR/release/sessionfs" "$@"
