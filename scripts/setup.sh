#!/usr/bin/env bash
# Installs what podshaper's build, demo and tests need on a fresh Debian 12
# machine, and mounts bpffs. Idempotent; run as root.
set -euo pipefail

packages=(clang clang-format llvm libbpf-dev protobuf-compiler iproute2 iperf3 jq etcd-server fonts-dejavu-core)
# shellcheck source=scripts/lib/packages.sh
source "$(dirname "$0")/lib/packages.sh"
installed=$(install_missing_packages "${packages[@]}")
[ -z "$installed" ] || echo "setup: installed $installed"

# Pins live in bpffs, which is not mounted at boot on every machine.
if ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf bpf /sys/fs/bpf
fi

# The controller's tests run a real kube-apiserver, built once from Debian's
# source and cached outside the repository (about 5 minutes the first time).
bash "$(dirname "$0")/kube-build.sh" >/dev/null
# kubectl applies deploy/ in those tests; Debian's (1.20) matches the server.
command -v kubectl >/dev/null || install_missing_packages kubernetes-client >/dev/null

command -v cargo >/dev/null || { echo "setup: cargo (Rust) is not installed" >&2; exit 1; }
