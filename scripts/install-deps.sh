#!/usr/bin/env bash
# Installs what sessionfs's tests and demo need on Debian: FUSE 3, git, ripgrep, Docker, etcd and
# protoc, the build tools, pjdfstest and the MCP Python SDK (in a virtualenv), and starts a Docker engine if none answers. Idempotent: only missing packages are installed.
set -euo pipefail
need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v git >/dev/null || need+=(git)
command -v rg >/dev/null || need+=(ripgrep)
command -v tar >/dev/null || need+=(tar)
command -v cc >/dev/null || need+=(gcc libc6-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v docker >/dev/null || need+=(docker.io)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v ip >/dev/null || need+=(iproute2)
command -v nsenter >/dev/null || need+=(util-linux)
# The several-hosts registry: a real etcd for the tests, and protoc to build its client.
command -v etcd >/dev/null || need+=(etcd-server)
command -v protoc >/dev/null || need+=(protobuf-compiler)
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3 python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The docker tests need a running engine. Start one if none answers (CI machines start with none).
# SESSIONFS_DOCKER=optional (the demo) turns a failure to start one into a warning.
docker_mode="${SESSIONFS_DOCKER:-required}"
if ! docker info >/dev/null 2>&1; then
  log=/var/log/sessionfs-dockerd.log
  echo "starting dockerd (log: $log)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO sh -c "setsid nohup dockerd --userland-proxy=false </dev/null >>'$log' 2>&1 &"
  deadline=$((SECONDS + 60))
  until docker info >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      if [ "$docker_mode" = optional ]; then
        echo "warning: no Docker engine (see $log); continuing without Docker" >&2
        break
      fi
      echo "error: the Docker engine did not answer within 60 s; last lines of $log:" >&2
      $SUDO tail -n 30 "$log" >&2 || true
      exit 1
    fi
    sleep 1
  done
  docker info >/dev/null 2>&1 && echo "dockerd is up: $(docker info --format '{{.ServerVersion}}')"
fi
if [ ! -e /dev/fuse ]; then
  echo "error: /dev/fuse is missing; load the fuse module (modprobe fuse) or run the container with --device /dev/fuse" >&2
  exit 1
fi
# pjdfstest (the POSIX conformance suite) runs as part of the tests; it needs a `tests` user and group.
getent group tests >/dev/null || { [ "$(id -u)" -eq 0 ] && groupadd tests; }
id tests >/dev/null 2>&1 || { [ "$(id -u)" -eq 0 ] && useradd -g tests -M -s /usr/sbin/nologin tests; }
tools="${SESSIONFS_TOOLS:-$HOME/.cache/sessionfs-tools}"
if [ ! -x "$tools/bin/pjdfstest" ]; then
  echo "installing pjdfstest into $tools"
  cargo install --locked --quiet pjdfstest --version 0.2.2 --root "$tools"
fi
# The MCP tests drive `sessionfs mcp` with the official MCP Python SDK, from a private virtualenv.
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="$tools/venv"
if ! cmp -s "$repo/tests/mcp/requirements.txt" "$venv/requirements.txt" 2>/dev/null; then
  echo "installing the MCP Python SDK into $venv"
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$repo/tests/mcp/requirements.txt"
  cp "$repo/tests/mcp/requirements.txt" "$venv/requirements.txt"
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
