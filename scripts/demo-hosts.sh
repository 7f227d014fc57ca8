#!/usr/bin/env bash
# Three hosts, one etcd registry, every session under every host's mount. On one machine: etcd and
# three hosts each run in a network namespace of their own, joined by a bridge on 10.78.0.0/24
# (nothing is routed to the machine's network). Host a makes the installation and adds b and c,
# which join with their bundles; each creates sessions listening on its own address; every host
# mounts, and the tour writes on one host and reads on another. Then it stays up until Ctrl-C (or
# tears everything down at once with --no-wait). Needs root (namespaces).
#
#   scripts/demo-hosts.sh [--no-wait]        (mounts at ./demo-hosts/<host>/sessions)
set -euo pipefail
cd "$(dirname "$0")/.."
wait=1
for a in "$@"; do
  case "$a" in
    --no-wait) wait=0 ;;
    *) echo "usage: $0 [--no-wait]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "$0 makes network namespaces: run it as root" >&2; exit 1; }
SESSIONFS_DOCKER=optional scripts/install-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sessionfs-target}"
cargo build --release --bins --locked
bin="$CARGO_TARGET_DIR/release"
export SESSIONFS_DAEMON="$bin/sessionfsd"
root="$(pwd)/demo-hosts"
tag=sfsdemo
hosts=(a b c)
declare -A ip=([etcd]=10.78.0.1 [a]=10.78.0.2 [b]=10.78.0.3 [c]=10.78.0.4)

teardown() {
  for h in "${hosts[@]}"; do
    mountpoint -q "$root/$h/sessions" 2>/dev/null && fusermount3 -u -z "$root/$h/sessions" || true
  done
  for m in etcd "${hosts[@]}"; do
    if ip netns list | grep -qw "$tag-$m"; then
      for pid in $(ip netns pids "$tag-$m"); do kill -TERM "$pid" 2>/dev/null || true; done
    fi
  done
  sleep 0.5
  for m in etcd "${hosts[@]}"; do
    if ip netns list | grep -qw "$tag-$m"; then
      for pid in $(ip netns pids "$tag-$m"); do kill -KILL "$pid" 2>/dev/null || true; done
      ip netns del "$tag-$m"
    fi
  done
  ip netns list | grep -qw "$tag-sw" && ip netns del "$tag-sw" || true
}
# A clean slate: whatever an earlier run left.
teardown
rm -rf "$root"
mkdir -p "$root"

# The LAN: a bridge in a namespace of its own, one veth pair per member.
ip netns add "$tag-sw"
ip -n "$tag-sw" link add br0 type bridge
ip -n "$tag-sw" link set br0 up
i=0
for m in etcd "${hosts[@]}"; do
  ns="$tag-$m"
  ip netns add "$ns"
  ip -n "$ns" link add eth0 type veth peer name "p$i" netns "$tag-sw"
  ip -n "$ns" addr add "${ip[$m]}/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  ip -n "$tag-sw" link set "p$i" master br0
  ip -n "$tag-sw" link set "p$i" up
  i=$((i + 1))
done
on() { local m="$1"; shift; nsenter --net="/run/netns/$tag-$m" "$@"; }
# `sfs HOST args…`: the sessionfs CLI of a host (its own state directory, in its namespace).
sfs() { local h="$1"; shift; SESSIONFS_HOME="$root/$h/state" on "$h" "$bin/sessionfs" "$@"; }

echo "== etcd on ${ip[etcd]}"
on etcd etcd --name demo --data-dir "$root/etcd" \
  --listen-client-urls "http://${ip[etcd]}:2379" --advertise-client-urls "http://${ip[etcd]}:2379" \
  --listen-peer-urls "http://${ip[etcd]}:2380" --initial-advertise-peer-urls "http://${ip[etcd]}:2380" \
  --initial-cluster "demo=http://${ip[etcd]}:2380" >"$root/etcd.log" 2>&1 &
for _ in $(seq 100); do on a bash -c "</dev/tcp/${ip[etcd]}/2379" 2>/dev/null && break; sleep 0.1; done

echo; echo "== host a makes the installation; b and c join"
sfs a --registry "etcd://${ip[etcd]}:2379" host init --name a --advertise "${ip[a]}"
for h in b c; do
  sfs a host add "$h" --out "$root/$h.bundle"
  sfs "$h" host join "$root/$h.bundle" --advertise "${ip[$h]}"
  rm "$root/$h.bundle"
done

echo; echo "== each host creates its sessions"
for h in "${hosts[@]}"; do
  for s in web api; do sfs "$h" session create "$s-$h" >/dev/null; done
done

for h in "${hosts[@]}"; do
  mkdir -p "$root/$h/sessions"
  SESSIONFS_LOG=warn sfs "$h" mount "$root/$h/sessions" 2>"$root/$h/mount.log" &
done
trap teardown EXIT
for h in "${hosts[@]}"; do
  for _ in $(seq 200); do mountpoint -q "$root/$h/sessions" && break; sleep 0.05; done
  mountpoint -q "$root/$h/sessions" || { echo "host $h did not mount" >&2; cat "$root/$h/mount.log" >&2; exit 1; }
done
sfs a host ls
echo; echo "== session ls on host b"
sfs b session ls

echo; echo "== every host shows every session"
for h in "${hosts[@]}"; do echo "host $h: $(ls "$root/$h/sessions" | tr '\n' ' ')"; done

echo; echo "== written on host a into c's session, read on host b"
printf 'hello from host a\n' > "$root/a/sessions/web-c/hello.txt"
cat "$root/b/sessions/web-c/hello.txt"
echo "(on host c's disk: $(cat "$root/c/state/sessions/web-c/workspace/hello.txt"))"

echo; echo "== a session created on c appears at a and b"
sfs c session create late-c >/dev/null
for _ in $(seq 100); do [ -d "$root/a/sessions/late-c" ] && [ -d "$root/b/sessions/late-c" ] && break; sleep 0.05; done
ls -d "$root/a/sessions/late-c" "$root/b/sessions/late-c"

echo; echo "== ripgrep on host b across every host's sessions"
rg -n "hello" "$root/b/sessions"

if [ "$wait" = 1 ]; then
  echo; echo "Hosts are up. Try: ls $root/*/sessions; Ctrl-C to tear everything down."
  wait || true
else
  echo; echo "demo done: tearing down the hosts, their sessions and etcd"
fi
