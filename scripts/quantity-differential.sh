#!/usr/bin/env bash
# The differential check of podshaper's strict quantity parser
# (crates/rate/src/quantity.rs, what the controller reads the bandwidth and
# burst annotations with) against apimachinery's resource.ParseQuantity and
# Value(), built by Debian's Go from Kubernetes v1.20.2's own source (Debian's
# `kubernetes` source package, GOPATH mode against its vendor directory,
# GOPROXY=off). Sends the edge cases and COUNT generated strings to both and
# fails with the first string on which they differ.
#
# Usage: bash scripts/quantity-differential.sh [COUNT [SEED]]   (root)
#   COUNT defaults to 100000; SEED to one from the clock (printed).
# The oracle is cached in /var/cache/podshaper/quantity-oracle; with it and
# the Rust build cached, 100,000 inputs take about 3 s.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
count=${1:-100000}
seed=${2:-}
# shellcheck source=scripts/lib/kube-source.sh
source "$repo/scripts/lib/kube-source.sh"

oracle_src=$repo/scripts/quantity-oracle/main.go
cache=${PODSHAPER_QUANTITY_ORACLE_CACHE:-/var/cache/podshaper/quantity-oracle}
oracle=$cache/quantity-oracle-$(sha256sum "$oracle_src" | cut -c1-16)
if [ ! -x "$oracle" ]; then
  src=$(kube_source)
  mkdir -p "$src/cmd/podshaper-quantity-oracle" "$cache"
  cp "$oracle_src" "$src/cmd/podshaper-quantity-oracle/main.go"
  (cd "$src" && kube_go build -o "$oracle.tmp" ./cmd/podshaper-quantity-oracle)
  mv "$oracle.tmp" "$oracle"
fi

cd "$repo"
cargo build -q -p podshaper-fuzz-checks --example quantity-differential
target=${CARGO_TARGET_DIR:-$repo/target}
RUST_BACKTRACE=0 "$target/debug/examples/quantity-differential" --oracle "$oracle" --count "$count" ${seed:+--seed "$seed"}
