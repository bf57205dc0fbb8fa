# shellcheck shell=bash
# Sourced by the scripts that need Debian packages (setup.sh, demo.sh,
# kernels.sh, kube-node.sh).

# What building the release binary and running `podshaper demo` need: clang
# and the libbpf headers compile bpf/ (crates/shaper/build.rs), protoc
# generates the gRPC code (crates/api/build.rs), and iproute2's `ip` makes the
# demo's network namespaces and veth pair (crates/netlab).
# shellcheck disable=SC2034 # used by the scripts that source this file
DEMO_PACKAGES=(clang libbpf-dev protobuf-compiler iproute2)

# What the tests and CI need beside those: clang-format (BPF C formatting),
# llvm (llvm-objdump for scripts/bpf-same.sh), iperf3 (traffic in the node's
# pods), jq, etcd-server (the controller's tests), the plot's font, and
# prometheus (tests/root/dashboard evaluates the Grafana dashboard's queries).
# shellcheck disable=SC2034
TEST_PACKAGES=(clang-format llvm iperf3 jq etcd-server fonts-dejavu-core prometheus)

# install_missing_packages PKG...: installs those of the named packages that
# are not installed (apt's progress is left out; its errors are not), and
# prints their names, space-separated, on stdout (nothing if none was
# missing).
install_missing_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  echo "${missing[*]}"
}

# mount_bpffs: mounts bpffs at /sys/fs/bpf unless it is there already (it is
# not mounted at boot on every machine, and the shaper's pins live in it).
mount_bpffs() {
  mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
}

# require_cargo: fails with one line if Rust's cargo is not on PATH.
require_cargo() {
  command -v cargo >/dev/null || { echo "cargo is not installed: podshaper needs Rust 1.87 or later (rustup.rs)" >&2; return 1; }
}
