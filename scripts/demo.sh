#!/usr/bin/env bash
# Fresh machine to live demo: set up, build, run `podshaper demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --quiet
exec ./target/release/podshaper demo "$@"
