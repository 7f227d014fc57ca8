#!/usr/bin/env bash
# Checks that the Rust version the workspace declares (`rust-version` in the root Cargo.toml,
# inherited by every member) is at least the `rust-version` of every package in Cargo.lock, and
# that every member inherits it. It fails, naming the packages, when a dependency update raised
# what the dependencies need above what the workspace says.
#
# What it does not check: that the workspace builds and passes its tests with that Rust (only one
# toolchain can be installed here, so nothing builds with the declared version itself); the needs
# of dependencies that declare no `rust-version`, or declare one lower than what they really need;
# language features or std APIs newer than the declared version used by the workspace's own code
# (clippy's `incompatible_msrv` lint, which reads `rust-version`, catches some of the std APIs).
# It counts every locked package, those of other platforms too, so it may ask for more than a
# Linux build needs, never less.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --format-version 1 --locked | python3 -c '
import json, sys

meta = json.load(sys.stdin)
members = set(meta["workspace_members"])

def version(text):
    parts = [int(part) for part in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))

declared = {p["rust_version"] for p in meta["packages"] if p["id"] in members}
if len(declared) != 1 or None in declared:
    missing = sorted(p["name"] for p in meta["packages"] if p["id"] in members and not p["rust_version"])
    sys.exit(f"msrv: members declare {sorted(map(str, declared))}; every member needs rust-version.workspace = true (missing in {missing})")
workspace = declared.pop()
needs = sorted(
    ((version(p["rust_version"]), p["name"], p["version"], p["rust_version"])
     for p in meta["packages"]
     if p["id"] not in members and p.get("rust_version")),
    reverse=True,
)
newer = [n for n in needs if n[0] > version(workspace)]
if newer:
    listed = ", ".join(f"{name} {v} needs {rv}" for _, name, v, rv in newer)
    sys.exit(f"msrv: the workspace declares rust-version {workspace}, but {listed}; raise it in Cargo.toml")
top = needs[0]
print(f"msrv: rust-version {workspace} covers every locked package (the highest need: {top[1]} {top[2]}, {top[3]})")
'
