#!/usr/bin/env bash
# Runs every Keybridge test on a fresh machine: installs what the tests
# need, then runs formatting, lint and the whole test suite.
#
# The gateway tests start the real `keybridge` binary on loopback sockets
# and use temporary directories. The AWS adapter's tests need moto's server
# (PyPI `moto[server]`), installed here into a virtualenv under target/.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> toolchain: $(cargo --version)"
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

VENV="target/test-venv"
MOTO_VERSION="5.2.5"
if [ ! -x "$VENV/bin/moto_server" ] || ! "$VENV/bin/pip" show moto 2>/dev/null | grep -q "^Version: $MOTO_VERSION$"; then
  echo "==> installing moto[server]==$MOTO_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi
export KEYBRIDGE_MOTO_SERVER="$PWD/$VENV/bin/moto_server"

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "==> cargo test"
cargo test --workspace
