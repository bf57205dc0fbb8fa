#!/usr/bin/env bash
# A real one-node Kubernetes cluster on this machine, for podshaper's
# end-to-end tests and demos (docs: ../shared/docs/DESIGN.md "Kubernetes",
# FACTS.md "A real node ...").
#
#   kube-node.sh up          starts etcd, kube-apiserver, kube-controller-manager,
#                            kube-scheduler, containerd, kubelet and kube-proxy; builds
#                            and imports the pause, podshaper and workload images;
#                            writes an admin kubeconfig to /var/lib/podshaper-node/kubeconfig
#   kube-node.sh down        removes everything `up` made (the caches under
#                            /var/cache/podshaper and podshaper's bpffs pins stay)
#   kube-node.sh image TAG   builds the podshaper image from the working tree and
#                            imports it as docker.io/library/podshaper:TAG
#
# Both `up` and `down` are idempotent; `down` also cleans up a node that is
# half up. Run as root. scripts/node-images.sh builds the images.
#
# Environment:
#   PODSHAPER_BIN=/path   use this podshaper binary instead of building one with
#                         `cargo build --release -p podshaper --no-default-features`
#                         (as deploy/Dockerfile builds it: without the bench's plot)
#   PODSHAPER_NODE_KEEP_LOGS=/dir
#                         `down` copies the components' logs there first
#
# Addresses come only from 198.19.0.0/16 (and loopback): the node's address is
# on an interface of its own, pods live on a CNI bridge, Services have their
# own /24, and everything else in 198.19.0.0/16 is routed into the node's
# interface, which leads nowhere, so no packet of the node leaves the machine.
set -euo pipefail

# iptables, mount, sysctl and the like live in sbin, which not every PATH has.
export PATH=/usr/local/sbin:/usr/sbin:/sbin:$PATH

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO
readonly NODE_NAME=podshaper-node
readonly STATE=/var/lib/podshaper-node
readonly PKI=$STATE/pki
readonly LOGS=$STATE/log
readonly RUN=$STATE/run
readonly HOST_SAVED=$STATE/host # what `up` changed on the host, for `down`
readonly KUBECONFIG_ADMIN=$STATE/kubeconfig
readonly KUBELET_ROOT=$STATE/kubelet
readonly CNI_CONF_DIR=$STATE/cni/net.d
readonly CNI_IPAM_DIR=$STATE/cni/ipam
readonly CONTAINERD_ROOT=$STATE/containerd
readonly CONTAINERD_STATE=/run/containerd
readonly CONTAINERD_SOCK=/run/containerd/containerd.sock
readonly CACHE=/var/cache/podshaper

readonly NODE_NET=198.19.0.0/16     # everything the node addresses
readonly POD_CIDR=198.19.0.0/24     # the CNI bridge's subnet
readonly SERVICE_CIDR=198.19.1.0/24 # ClusterIPs
readonly SERVICE_IP=198.19.1.1      # the `kubernetes` Service (first of SERVICE_CIDR)
readonly NODE_IP=198.19.2.1         # API server, kubelet, kube-proxy; the node's InternalIP
readonly NODE_IF=psnode0
readonly BRIDGE_IF=psnode-br0
readonly ETCD_PORT=2479 ETCD_PEER_PORT=2480 APISERVER_PORT=6443
readonly APISERVER_URL=https://$NODE_IP:$APISERVER_PORT

readonly PAUSE_IMAGE=docker.io/library/podshaper-pause:1
readonly PODSHAPER_REPO=docker.io/library/podshaper
readonly PODSHAPER_TAG=0.1.0
readonly E2E_IMAGE=docker.io/library/podshaper-e2e:1

# The host settings kubelet, kube-proxy and the CNI bridge plugin change;
# `up` records them and `down` puts them back.
readonly SYSCTLS=(
  vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes
  net.ipv4.conf.all.route_localnet
  net.ipv4.ip_forward net.ipv4.conf.all.accept_redirects # ip_forward=1 clears accept_redirects
  net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
  net.netfilter.nf_conntrack_tcp_timeout_close_wait
)
# Paths the kubelet (pod logs, the device plugin socket) and the CNI library
# (its result cache) use whatever they are told; `down` removes each that `up`
# found missing.
readonly HOST_PATHS=(/var/log/pods /var/log/containers /var/lib/kubelet /var/lib/cni)

readonly PACKAGES=(containerd runc containernetworking-plugins debootstrap umoci conntrack
  iptables nftables iproute2 etcd-server openssl curl gcc libc6-dev util-linux procps jq
  libcap2-bin)

T0=$SECONDS
step() { printf '[%4ds] %s\n' $((SECONDS - T0)) "$*"; }
die() { echo "kube-node: error: $*" >&2; exit 1; }
warn() { echo "kube-node: warning: $*" >&2; }

kubectl_admin() { kubectl --kubeconfig "$KUBECONFIG_ADMIN" --cache-dir "$STATE/kubectl-cache" "$@"; }

# The steps, one file per part of the node (scripts/kube-node/).
# shellcheck source=scripts/lib/packages.sh
source "$REPO/scripts/lib/packages.sh"
# shellcheck source=scripts/kube-node/processes.sh
source "$REPO/scripts/kube-node/processes.sh"
# shellcheck source=scripts/kube-node/host.sh
source "$REPO/scripts/kube-node/host.sh"
# shellcheck source=scripts/kube-node/network.sh
source "$REPO/scripts/kube-node/network.sh"
# shellcheck source=scripts/kube-node/pki.sh
source "$REPO/scripts/kube-node/pki.sh"
# shellcheck source=scripts/kube-node/control-plane.sh
source "$REPO/scripts/kube-node/control-plane.sh"
# shellcheck source=scripts/kube-node/containerd.sh
source "$REPO/scripts/kube-node/containerd.sh"
# shellcheck source=scripts/kube-node/kubelet.sh
source "$REPO/scripts/kube-node/kubelet.sh"
# shellcheck source=scripts/kube-node/teardown.sh
source "$REPO/scripts/kube-node/teardown.sh"

# --- up -----------------------------------------------------------------------

cmd_up() {
  install_packages
  kube_binaries
  podshaper_binary
  mkdir -p "$STATE" "$LOGS" "$RUN"
  start_rootfs_builds
  record_host_state
  setup_node_address
  setup_forward_guard
  share_bpffs
  make_pki
  start_etcd
  start_apiserver
  start_controller_manager
  start_scheduler
  start_containerd
  import_pause_image
  write_cni_config
  start_kubelet
  start_kube_proxy
  import_images
  wait_node_ready
  echo "kubeconfig: $KUBECONFIG_ADMIN"
  echo "node $NODE_NAME Ready in $((SECONDS - T0)) s"
}

cmd_image() {
  local tag=$1
  [[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9._-]*$ ]] || die "bad tag '$tag'"
  daemon_running containerd || die "the node is not up (no containerd)"
  podshaper_binary
  import_podshaper_image "$tag"
}

# --- down -----------------------------------------------------------------------

cmd_down() {
  if [ -d "$CACHE/kube-v1.20.2" ]; then KUBE_BIN=$CACHE/kube-v1.20.2; fi
  stop_daemons kube-controller-manager kube-scheduler
  delete_pods_via_api
  stop_daemons kubelet kube-proxy
  remove_containers
  stop_daemons containerd
  remove_containers
  # The API server talks to etcd while it shuts down: etcd goes after it.
  stop_daemons kube-apiserver
  stop_daemons etcd
  stop_strays
  clean_iptables
  unmount_node_mounts
  remove_network
  remove_cgroups
  restore_host_state
  unshare_bpffs
  keep_logs
  remove_files
  echo "node $NODE_NAME down in $((SECONDS - T0)) s"
}

main() {
  [ "$(id -u)" = 0 ] || die "run as root"
  case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    image)
      [ $# = 2 ] || die "usage: $0 image TAG"
      cmd_image "$2"
      ;;
    *) die "usage: $0 up | down | image TAG" ;;
  esac
}

main "$@"
