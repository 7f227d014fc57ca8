#!/usr/bin/env bash
# The test command: installs what the tests need (and starts a Docker engine if none answers), checks
# format and lints, builds the binaries the end-to-end tests drive (and the statically linked daemon
# their Docker image carries), and runs every test (real FUSE mounts, real daemons and containers,
# real QUIC+TLS).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sessionfs-target}"
export PJDFSTEST="${PJDFSTEST:-${SESSIONFS_TOOLS:-$HOME/.cache/sessionfs-tools}/bin/pjdfstest}"
cargo fmt --all --check
scripts/msrv.sh
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
cargo build --workspace --bins --locked
# The session image is FROM scratch, so its daemon must be statically linked.
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked -p sessionfs-daemon --target x86_64-unknown-linux-gnu
export SESSIONFS_STATIC_DAEMON="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/sessionfsd"
cargo nextest run --workspace --locked --no-fail-fast --failure-output final
