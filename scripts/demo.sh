#!/usr/bin/env bash
# Fresh machine to live demo: installs only what the release build and the
# demo need (scripts/lib/packages.sh: DEMO_PACKAGES), mounts bpffs, builds the
# release binary and runs `podshaper demo`. The tests' set-up
# (scripts/setup.sh: etcd, the Kubernetes binaries, ...) is not needed here.
# Run as root; arguments go to `podshaper demo` (e.g. --first 50mbit).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (it makes network namespaces and a cgroup, and loads BPF)" >&2; exit 1; }

# shellcheck source=scripts/lib/packages.sh
source scripts/lib/packages.sh
require_cargo
echo "demo: checking packages (${DEMO_PACKAGES[*]})"
installed=$(install_missing_packages "${DEMO_PACKAGES[@]}")
[ -z "$installed" ] || echo "demo: installed $installed"
mount_bpffs

echo "demo: building the release binary (cargo build --release)"
cargo build --release
# CARGO_TARGET_DIR, when set, says where cargo put it.
exec "${CARGO_TARGET_DIR:-target}/release/podshaper" demo "$@"
