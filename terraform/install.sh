#!/usr/bin/env bash
# Installs terraform-provider-keybridge into a Terraform filesystem mirror.
#
#   terraform/install.sh [MIRROR_DIR]
#
# MIRROR_DIR defaults to ~/.terraform.d/plugins, which Terraform searches
# without any configuration. Builds the provider in release mode unless
# KEYBRIDGE_PROVIDER_BIN names an already built binary.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
mirror="${1:-$HOME/.terraform.d/plugins}"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../Cargo.toml" | head -1)"

case "$(uname -s)" in
  Linux) os=linux ;;
  Darwin) os=darwin ;;
  *) echo "unsupported OS $(uname -s)" >&2; exit 1 ;;
esac
case "$(uname -m)" in
  x86_64 | amd64) arch=amd64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) echo "unsupported CPU $(uname -m)" >&2; exit 1 ;;
esac

bin="${KEYBRIDGE_PROVIDER_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --manifest-path "$here/../Cargo.toml" -p terraform-provider-keybridge
  bin="$here/../target/release/terraform-provider-keybridge"
fi

dest="$mirror/registry.terraform.io/keybridge/keybridge/$version/${os}_${arch}"
mkdir -p "$dest"
install -m 0755 "$bin" "$dest/terraform-provider-keybridge_v$version"
echo "installed keybridge/keybridge $version in $dest"
