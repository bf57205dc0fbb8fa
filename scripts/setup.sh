#!/usr/bin/env bash
# Installs everything podshaper's build, tests and CI need on a fresh Debian
# 12 machine (the demo's packages and the tests' own), mounts bpffs, and
# builds the Kubernetes binaries the tests run. Idempotent; run as root.
# scripts/demo.sh sets up only what the demo needs.
set -euo pipefail

# shellcheck source=scripts/lib/packages.sh
source "$(dirname "$0")/lib/packages.sh"
installed=$(install_missing_packages "${DEMO_PACKAGES[@]}" "${TEST_PACKAGES[@]}")
[ -z "$installed" ] || echo "setup: installed $installed"

mount_bpffs

# The controller's tests run a real kube-apiserver, built once from Debian's
# source and cached outside the repository (about 5 minutes the first time).
bash "$(dirname "$0")/kube-build.sh" >/dev/null
# kubectl applies deploy/ in those tests; Debian's (1.20) matches the server.
command -v kubectl >/dev/null || install_missing_packages kubernetes-client >/dev/null

require_cargo
