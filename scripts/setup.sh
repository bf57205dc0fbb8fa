#!/usr/bin/env bash
# Installs what podshaper's build, demo and tests need on a fresh Debian 12
# machine, and mounts bpffs. Idempotent; run as root.
set -euo pipefail

packages=(clang clang-format llvm libbpf-dev protobuf-compiler iproute2 iperf3 jq etcd-server fonts-dejavu-core)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Pins live in bpffs, which is not mounted at boot on every machine.
if ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf bpf /sys/fs/bpf
fi

# The controller's tests run a real kube-apiserver, built once from Debian's
# source and cached outside the repository (about 5 minutes the first time).
bash "$(dirname "$0")/kube-build.sh" >/dev/null
# kubectl applies deploy/ in those tests; Debian's (1.20) matches the server.
if ! command -v kubectl >/dev/null; then
  apt-get install -y -q --no-install-recommends kubernetes-client
fi

command -v cargo >/dev/null || { echo "setup: cargo (Rust) is not installed" >&2; exit 1; }
