#!/usr/bin/env bash
# Fresh machine to test results: set up, then run every test (unit tests and
# the root-only tests on the real kernel). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec cargo test --workspace --no-fail-fast "$@"
