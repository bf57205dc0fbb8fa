#!/usr/bin/env bash
# Fresh machine to test results: set up, run every test (unit tests, the
# root-only tests on the real kernel, the controller's against a real
# kube-apiserver), the kernel checks on the kernels nodes run
# (scripts/kernels.sh), then start the one-node cluster (scripts/kube-node.sh)
# and run the tests on that real node, and take the node down. Run as root.
# Arguments go to the first cargo test (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# each step's end, with the seconds since the start, on stderr
step() { echo "[test.sh ${SECONDS}s] $1 done" >&2; }

failed=0
cargo test --workspace --no-fail-fast "$@" || failed=1
step "cargo test"

# Kubernetes quantities: podshaper's parsers against Go's ParseQuantity
# (Kubernetes v1.20.2), on 100,000 generated inputs.
bash scripts/quantity-differential.sh 100000 || failed=1
step "quantity differential"

# The kernel-dependent checks on Debian 12's 6.1 and 6.12 under QEMU, and on
# this machine's kernel.
bash scripts/kernels.sh || failed=1
step kernels

# The node's tests share one kubelet and one DaemonSet: they take turns.
bash scripts/kube-node.sh up
step "node up"
# The DaemonSet's pins outlive the node (as on a real one): an uninstall's
# `podshaper cleanup` removes them once its daemon is gone.
trap 'bash scripts/kube-node.sh down; cargo run --quiet -p podshaper -- cleanup' EXIT
cargo test -p podshaper --features node-tests --test node --no-fail-fast || failed=1
exit "$failed"
