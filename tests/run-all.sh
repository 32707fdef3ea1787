#!/usr/bin/env bash
# Runs every Keybridge test on a fresh machine: installs what the tests
# need, then runs formatting, lint and the whole test suite.
#
# Today the suite needs only cargo: the gateway tests start the real
# `keybridge` binary on loopback sockets and use temporary directories.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> toolchain: $(cargo --version)"
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "==> cargo test"
cargo test --workspace
