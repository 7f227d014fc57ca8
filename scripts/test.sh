#!/usr/bin/env bash
# The test command: installs what the tests need, checks format and lints, builds the binaries the
# end-to-end tests drive, and runs every test (real FUSE mounts, real daemons, real QUIC+TLS).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sessionfs-target}"
export PJDFSTEST="${PJDFSTEST:-${SESSIONFS_TOOLS:-$HOME/.cache/sessionfs-tools}/bin/pjdfstest}"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
cargo nextest run --workspace --locked --no-fail-fast --failure-output final
