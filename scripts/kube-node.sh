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

# --- waiting ----------------------------------------------------------------

# wait_for WHAT SECONDS LOG COMMAND...: polls COMMAND until it succeeds; on
# timeout prints the last lines of LOG (the component's log) and fails.
wait_for() {
  local what=$1 timeout=$2 log=$3
  shift 3
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "kube-node: $what: not after ${timeout} s" >&2
      if [ -f "$log" ]; then
        echo "--- last lines of $log:" >&2
        tail -n 30 "$log" >&2
      fi
      exit 1
    fi
    sleep 0.5
  done
}

# --- processes ----------------------------------------------------------------

pid_of() { cat "$RUN/$1.pid" 2>/dev/null || true; }

# A daemon runs when its pid file names a live process of the same program.
daemon_running() {
  local pid
  pid=$(pid_of "$1")
  [ -n "$pid" ] && [ "$(basename "$(readlink "/proc/$pid/exe" 2>/dev/null)")" = "$1" ]
}

# start_daemon NAME COMMAND...: runs COMMAND (whose program is called NAME) in
# the background, detached from this shell (setsid), logging to
# $LOGS/NAME.log, unless it already runs.
start_daemon() {
  local name=$1
  shift
  if daemon_running "$name"; then
    step "$name: already running (pid $(pid_of "$name"))"
    return 0
  fi
  mkdir -p "$RUN" "$LOGS"
  rm -f "$RUN/$name.pid"
  # The shell writes its own pid, then becomes the daemon: the pid file is
  # right whether or not setsid has to fork.
  # shellcheck disable=SC2016 # expanded by that shell
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$RUN/$name.pid" "$@" \
    </dev/null >>"$LOGS/$name.log" 2>&1 &
  wait_for "$name: start" 10 "$LOGS/$name.log" test -s "$RUN/$name.pid"
  daemon_running "$name" || wait_for "$name: start" 5 "$LOGS/$name.log" daemon_running "$name"
}

alive() {
  local pid
  for pid in "$@"; do
    if kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
  done
}

# stop_pids GRACE PID...: SIGTERM to all, SIGKILL to those still there after
# GRACE seconds; returns when all are gone.
stop_pids() {
  local grace=$1 left=() i
  shift
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  for ((i = 0; i < grace * 5; i++)); do
    mapfile -t left < <(alive "$@")
    [ "${#left[@]}" -gt 0 ] || return 0
    sleep 0.2
  done
  kill -KILL "${left[@]}" 2>/dev/null || true
  for ((i = 0; i < 25; i++)); do
    mapfile -t left < <(alive "${left[@]}")
    [ "${#left[@]}" -gt 0 ] || return 0
    sleep 0.2
  done
  warn "processes ${left[*]} did not exit"
}

# Stops the named daemons together.
stop_daemons() {
  local name pids=() names=()
  for name in "$@"; do
    if daemon_running "$name"; then
      pids+=("$(pid_of "$name")")
      names+=("$name")
    fi
  done
  stop_pids 10 "${pids[@]}"
  for name in "$@"; do rm -f "$RUN/$name.pid"; done
  if [ "${#names[@]}" -gt 0 ]; then step "${names[*]}: stopped"; fi
}

# Processes whose command line names the state directory are the node's own
# (every daemon gets a path in it), even if their pid file is gone.
stray_pids() {
  local d pid
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    if [ "$pid" = $$ ] || [ "$pid" = "$BASHPID" ]; then continue; fi
    [[ "$(readlink "$d/exe" 2>/dev/null)" =~ /(etcd|kube-[a-z-]+|kubelet|containerd)$ ]] || continue
    if tr '\0' ' ' <"$d/cmdline" 2>/dev/null | grep -q -- "$STATE/"; then echo "$pid"; fi
  done
  return 0
}

# containerd's runc shims for the k8s.io namespace of the node's socket.
shim_pids() {
  local d
  for d in /proc/[0-9]*; do
    [[ "$(readlink "$d/exe" 2>/dev/null)" == */containerd-shim-runc-v2 ]] || continue
    if tr '\0' ' ' <"$d/cmdline" 2>/dev/null |
      grep -q -- "-namespace k8s.io .*-address $CONTAINERD_SOCK"; then
      echo "${d#/proc/}"
    fi
  done
  return 0
}

# --- prerequisites ------------------------------------------------------------

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    step "packages: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
  command -v kubectl >/dev/null || die "kubectl is not installed"
  step "packages: present"
}

# The Kubernetes binaries are built from Debian's source by
# scripts/kube-build.sh (minutes on 2 cores) and cached. A build that is
# already running is waited for, not started twice.
KUBE_BIN=""
kube_binaries() {
  local cache=$CACHE/kube-v1.20.2 b absent=0
  local bins=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
  for b in "${bins[@]}"; do [ -x "$cache/$b" ] || absent=1; done
  if ((absent)) && pgrep -f 'kube-build\.sh' >/dev/null; then
    step "kubernetes binaries: a build is running; waiting for it"
    local deadline=$((SECONDS + 3600))
    while ((absent)) && ((SECONDS < deadline)) && pgrep -f 'kube-build\.sh' >/dev/null; do
      sleep 5
      absent=0
      for b in "${bins[@]}"; do [ -x "$cache/$b" ] || absent=1; done
    done
  fi
  if ((absent)); then
    step "kubernetes binaries: building (scripts/kube-build.sh)"
    cache=$(bash "$REPO/scripts/kube-build.sh" | tail -n 1)
  fi
  KUBE_BIN=$cache
  step "kubernetes binaries: $KUBE_BIN"
}

# The podshaper binary for the image: PODSHAPER_BIN if given, else a release
# build of the working tree.
PODSHAPER_BINARY=""
podshaper_binary() {
  if [ -n "${PODSHAPER_BIN:-}" ]; then
    [ -x "$PODSHAPER_BIN" ] || die "PODSHAPER_BIN=$PODSHAPER_BIN is not an executable"
    PODSHAPER_BINARY=$PODSHAPER_BIN
    step "podshaper binary: $PODSHAPER_BINARY (PODSHAPER_BIN)"
    return 0
  fi
  mkdir -p "$LOGS"
  step "podshaper binary: cargo build --release -p podshaper --no-default-features"
  if ! (cd "$REPO" && cargo build --release -p podshaper --no-default-features) >"$LOGS/cargo-build.log" 2>&1; then
    tail -n 30 "$LOGS/cargo-build.log" >&2
    die "cargo build failed (log: $LOGS/cargo-build.log)"
  fi
  PODSHAPER_BINARY=${CARGO_TARGET_DIR:-$REPO/target}/release/podshaper
}

# --- host settings --------------------------------------------------------------

record_host_state() {
  mkdir -p "$HOST_SAVED"
  local s p
  if [ ! -f "$HOST_SAVED/sysctl.conf" ]; then
    for s in "${SYSCTLS[@]}"; do
      if [ -e "/proc/sys/${s//.//}" ]; then echo "$s=$(sysctl -n "$s")"; fi
    done >"$HOST_SAVED/sysctl.conf.tmp"
    mv "$HOST_SAVED/sysctl.conf.tmp" "$HOST_SAVED/sysctl.conf"
  fi
  if [ ! -f "$HOST_SAVED/iptables-tables" ]; then
    {
      iptables-save | sed -n 's/^\*/ip /p'
      ip6tables-save | sed -n 's/^\*/ip6 /p'
    } >"$HOST_SAVED/iptables-tables"
  fi
  if [ ! -f "$HOST_SAVED/created-paths" ]; then
    for p in "${HOST_PATHS[@]}"; do
      if [ ! -e "$p" ]; then echo "$p"; fi
    done >"$HOST_SAVED/created-paths"
  fi
  step "host: sysctls recorded in $HOST_SAVED/sysctl.conf"
}

restore_host_state() {
  local line
  if [ -f "$HOST_SAVED/sysctl.conf" ]; then
    while IFS= read -r line; do
      sysctl -q -w "$line" >/dev/null || warn "cannot restore $line"
    done <"$HOST_SAVED/sysctl.conf"
    step "host: sysctls restored"
  fi
}

# The podshaper DaemonSet mounts bpffs at the host's /sys/fs/bpf from an init
# container (hostPath, mountPropagation: Bidirectional) and reads it from the
# daemon container (HostToContainer). containerd accepts those only when the
# host path is on a shared mount, and this host's mounts are all private:
# /sys/fs/bpf becomes a bpffs mount of its own (as on systemd hosts) and is
# made shared. `down` puts the propagation back and unmounts the bpffs only
# if `up` mounted it and nothing is pinned in it.
share_bpffs() {
  local prop
  if ! mountpoint -q /sys/fs/bpf; then
    mount -t bpf bpf /sys/fs/bpf
    touch "$HOST_SAVED/bpffs-mounted"
  fi
  prop=$(findmnt -n -o PROPAGATION /sys/fs/bpf | tail -n 1)
  if [ "$prop" != shared ]; then
    [ -f "$HOST_SAVED/bpffs-propagation" ] || echo "$prop" >"$HOST_SAVED/bpffs-propagation"
    mount --make-shared /sys/fs/bpf
  fi
  step "host: /sys/fs/bpf is a shared bpffs mount"
}

unshare_bpffs() {
  local prop
  if [ -f "$HOST_SAVED/bpffs-propagation" ] && mountpoint -q /sys/fs/bpf; then
    prop=$(cat "$HOST_SAVED/bpffs-propagation")
    case "$prop" in
      private | slave | unbindable) mount --make-"$prop" /sys/fs/bpf ;;
    esac
    step "host: /sys/fs/bpf propagation back to $prop"
  fi
  if [ -f "$HOST_SAVED/bpffs-mounted" ] && mountpoint -q /sys/fs/bpf; then
    # maps.debug and progs.debug are the kernel's own (bpf_preload).
    local pins="" entry
    for entry in /sys/fs/bpf/* /sys/fs/bpf/.[!.]*; do
      [ -e "$entry" ] || continue
      case "${entry##*/}" in maps.debug | progs.debug) ;; *) pins+="${entry##*/} " ;; esac
    done
    if [ -z "$pins" ] && [ "$(findmnt -n -o TARGET -R /sys/fs/bpf | wc -l)" = 1 ]; then
      umount /sys/fs/bpf && step "host: bpffs at /sys/fs/bpf unmounted"
    else
      step "host: bpffs at /sys/fs/bpf kept: it holds ${pins:-mounts}"
    fi
  fi
}

# --- network ------------------------------------------------------------------

# The node's address on an interface of its own, and a route that sends the
# rest of 198.19.0.0/16 (unused Service IPs above all) into that interface:
# nothing for these addresses goes to the default route. The kernel has no
# dummy driver, so the interface is a bridge without ports, which sends what
# it is given nowhere.
setup_node_address() {
  ip link show "$NODE_IF" >/dev/null 2>&1 || ip link add "$NODE_IF" type bridge
  ip link set "$NODE_IF" up
  ip addr replace "$NODE_IP/32" dev "$NODE_IF"
  ip route replace "$NODE_NET" dev "$NODE_IF"
  step "network: $NODE_IP on $NODE_IF, $NODE_NET routed into it"
}

# The bridge plugin turns on IP forwarding for the pod gateway. These rules
# keep forwarding to the bridge: pod traffic is dropped on its way to any
# other interface, and traffic from other interfaces to the pods too.
# (mangle FORWARD runs before filter FORWARD, where kube-proxy accepts.)
setup_forward_guard() {
  iptables -w -t mangle -N PODSHAPER-NODE 2>/dev/null || true
  iptables -w -t mangle -F PODSHAPER-NODE
  iptables -w -t mangle -A PODSHAPER-NODE -s "$NODE_NET" ! -o "$BRIDGE_IF" -j DROP
  iptables -w -t mangle -A PODSHAPER-NODE -o "$BRIDGE_IF" ! -i "$BRIDGE_IF" -j DROP
  iptables -w -t mangle -C FORWARD -j PODSHAPER-NODE 2>/dev/null ||
    iptables -w -t mangle -I FORWARD -j PODSHAPER-NODE
  step "network: forwarding limited to $BRIDGE_IF"
}

write_cni_config() {
  mkdir -p "$CNI_CONF_DIR" "$CNI_IPAM_DIR"
  cat >"$CNI_CONF_DIR/10-podshaper-node.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "$NODE_NAME",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE_IF",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CNI_IPAM_DIR",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  step "network: CNI bridge $BRIDGE_IF, pods in $POD_CIDR"
}

# --- certificates and kubeconfigs ----------------------------------------------

make_ca() {
  [ -s "$PKI/ca.crt" ] && return 0
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -days 3650 -subj "/CN=$NODE_NAME-ca" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    2>/dev/null
}

# issue_cert NAME SUBJECT server|client [SUBJECT_ALT_NAMES]
issue_cert() {
  local name=$1 subject=$2 usage=$3 san=${4:-}
  [ -s "$PKI/$name.crt" ] && return 0
  local ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=${usage}Auth"
  [ -z "$san" ] || ext="$ext
subjectAltName=$san"
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$PKI/$name.key" -out "$PKI/$name.csr" -subj "$subject" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -CAcreateserial -days 365 -sha256 -extfile <(echo "$ext") -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr"
}

# write_kubeconfig FILE CERT_NAME: a kubeconfig for the client certificate.
write_kubeconfig() {
  local file=$1 cert=$2
  (
    umask 077
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $NODE_NAME
  cluster:
    server: $APISERVER_URL
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $cert
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$cert.crt")
    client-key-data: $(base64 -w0 "$PKI/$cert.key")
contexts:
- name: $NODE_NAME
  context: {cluster: $NODE_NAME, user: $cert}
current-context: $NODE_NAME
EOF
  )
}

make_pki() {
  mkdir -p "$PKI" "$STATE/kubeconfigs"
  chmod 700 "$PKI"
  make_ca
  issue_cert apiserver "/CN=kube-apiserver" server \
    "IP:$NODE_IP,IP:127.0.0.1,IP:$SERVICE_IP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:$NODE_NAME,DNS:localhost"
  issue_cert kubelet-serving "/CN=$NODE_NAME" server "IP:$NODE_IP,DNS:$NODE_NAME"
  # The API server's identity towards the kubelet (logs, exec, port-forward).
  issue_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" client
  issue_cert admin "/O=system:masters/CN=podshaper-node-admin" client
  issue_cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" client
  issue_cert kube-scheduler "/CN=system:kube-scheduler" client
  issue_cert kube-controller-manager "/CN=system:kube-controller-manager" client
  issue_cert kube-proxy "/CN=system:kube-proxy" client
  if [ ! -s "$PKI/sa.key" ]; then
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
  write_kubeconfig "$KUBECONFIG_ADMIN" admin
  local c
  for c in kubelet kube-scheduler kube-controller-manager kube-proxy; do
    write_kubeconfig "$STATE/kubeconfigs/$c.kubeconfig" "$c"
  done
  step "pki: CA, serving and client certificates, kubeconfigs in $STATE"
}

# --- control plane ------------------------------------------------------------

start_etcd() {
  start_daemon etcd etcd --name "$NODE_NAME" --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "$NODE_NAME=http://127.0.0.1:$ETCD_PEER_PORT"
  wait_for "etcd health" 60 "$LOGS/etcd.log" \
    curl -fsS "http://127.0.0.1:$ETCD_PORT/health"
  step "etcd: healthy on 127.0.0.1:$ETCD_PORT"
}

start_apiserver() {
  start_daemon kube-apiserver "$KUBE_BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" \
    --secure-port "$APISERVER_PORT" --insecure-port 0 \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --allow-privileged=true \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" \
    --service-account-signing-key-file "$PKI/sa.key" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" \
    --kubelet-preferred-address-types InternalIP \
    --profiling=false --v 1
  wait_for "kube-apiserver /readyz" 120 "$LOGS/kube-apiserver.log" \
    kubectl_admin get --raw /readyz
  step "kube-apiserver: ready at $APISERVER_URL"
}

start_controller_manager() {
  local kc=$STATE/kubeconfigs/kube-controller-manager.kubeconfig
  start_daemon kube-controller-manager "$KUBE_BIN/kube-controller-manager" \
    --kubeconfig "$kc" --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --port 0 --cert-dir "$STATE/kube-controller-manager" \
    --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --allocate-node-cidrs=false --profiling=false --v 1
  wait_for "kube-controller-manager /healthz" 60 "$LOGS/kube-controller-manager.log" \
    curl -fsk https://127.0.0.1:10257/healthz
  step "kube-controller-manager: healthy"
}

start_scheduler() {
  local kc=$STATE/kubeconfigs/kube-scheduler.kubeconfig
  start_daemon kube-scheduler "$KUBE_BIN/kube-scheduler" \
    --kubeconfig "$kc" --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --port 0 --cert-dir "$STATE/kube-scheduler" \
    --leader-elect=false --profiling=false --v 1
  wait_for "kube-scheduler /healthz" 60 "$LOGS/kube-scheduler.log" \
    curl -fsk https://127.0.0.1:10259/healthz
  step "kube-scheduler: healthy"
}

# --- containerd and images ------------------------------------------------------

# containerd's defaults, except: its root under the state directory, the
# locally built pause image, restrict_oom_score_adj (this machine lacks
# CAP_SYS_RESOURCE, so a negative oom_score_adj fails every sandbox), the CNI
# directories, network namespaces kept in containerd's own state directory
# rather than the host's /run/netns.
write_containerd_config() {
  mkdir -p "$CONTAINERD_ROOT"
  cat >"$CONTAINERD_ROOT/config.toml" <<EOF
version = 2
root = "$CONTAINERD_ROOT/root"
state = "$CONTAINERD_STATE"

[grpc]
  address = "$CONTAINERD_SOCK"

[plugins."io.containerd.internal.v1.opt"]
  path = "$CONTAINERD_ROOT/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CNI_CONF_DIR"

  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
EOF
}

containerd_answers() { [ -S "$CONTAINERD_SOCK" ] && ctr --address "$CONTAINERD_SOCK" --connect-timeout 2s version; }

start_containerd() {
  if ! daemon_running containerd && containerd_answers >/dev/null 2>&1; then
    die "another containerd already serves $CONTAINERD_SOCK"
  fi
  write_containerd_config
  start_daemon containerd containerd --config "$CONTAINERD_ROOT/config.toml"
  wait_for "containerd" 60 "$LOGS/containerd.log" containerd_answers
  step "containerd: serving $CONTAINERD_SOCK"
}

image_present() {
  ctr --address "$CONTAINERD_SOCK" -n k8s.io images ls -q "name==$1" 2>/dev/null | grep -qx "$1"
}

node_images() { CONTAINERD_ADDRESS=$CONTAINERD_SOCK bash "$REPO/scripts/node-images.sh" "$@"; }

# The images' root filesystems take minutes to bootstrap the first time (they
# are cached afterwards): they are made in the background while the control
# plane starts.
ROOTFS_JOB=""
start_rootfs_builds() {
  node_images rootfs-all >"$LOGS/rootfs.log" 2>&1 &
  ROOTFS_JOB=$!
}

wait_rootfs_builds() {
  [ -n "$ROOTFS_JOB" ] || return 0
  if ! wait "$ROOTFS_JOB"; then
    tail -n 30 "$LOGS/rootfs.log" >&2
    die "the images' root filesystems failed (log: $LOGS/rootfs.log)"
  fi
  ROOTFS_JOB=""
}

# pause and the workload image change only with the scripts: imported once
# per node. The podshaper image is rebuilt and imported on every `up`.
import_pause_image() {
  image_present "$PAUSE_IMAGE" || node_images pause "$PAUSE_IMAGE"
  step "images: $PAUSE_IMAGE"
}

import_images() {
  wait_rootfs_builds
  step "images: root filesystems ready"
  image_present "$E2E_IMAGE" || node_images e2e "$E2E_IMAGE"
  step "images: $E2E_IMAGE"
  import_podshaper_image "$PODSHAPER_TAG"
}

import_podshaper_image() {
  local tag=$1
  PODSHAPER_IMAGE_LABEL=io.podshaper.image.tag=$tag \
    node_images podshaper "$PODSHAPER_REPO:$tag" "$PODSHAPER_BINARY"
  step "images: $PODSHAPER_REPO:$tag ($(sha256sum "$PODSHAPER_BINARY" | cut -c1-12) binary)"
}

# --- node -----------------------------------------------------------------------

# The node runs no cluster DNS, and the host's name server is outside the
# addresses the node may use: pods get loopback as their name server, which
# answers nothing, so no query leaves (a resolv.conf without any name server
# would make containerd copy the host's). Pods reach the API server by the
# KUBERNETES_SERVICE_HOST address.
write_kubelet_config() {
  echo "nameserver 127.0.0.1" >"$STATE/resolv.conf"
  cat >"$STATE/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
# runc puts the pods' processes at kubepods/<qos>/pod<uid> in cgroup2 too,
# where podshaper attaches.
cgroupDriver: cgroupfs
failSwapOn: false
clusterDomain: cluster.local
resolvConf: $STATE/resolv.conf
EOF
}

start_kubelet() {
  mkdir -p "$KUBELET_ROOT"
  write_kubelet_config
  start_daemon kubelet "$KUBE_BIN/kubelet" \
    --config "$STATE/kubelet-config.yaml" \
    --kubeconfig "$STATE/kubeconfigs/kubelet.kubeconfig" \
    --root-dir "$KUBELET_ROOT" --cert-dir "$KUBELET_ROOT/pki" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
    --container-runtime remote --container-runtime-endpoint "unix://$CONTAINERD_SOCK" \
    --eviction-hard= --v 1 # no evictions: a test machine's disk is whatever it is
  wait_for "node $NODE_NAME registered" 90 "$LOGS/kubelet.log" \
    kubectl_admin get node "$NODE_NAME"
  step "kubelet: node $NODE_NAME registered"
}

start_kube_proxy() {
  start_daemon kube-proxy "$KUBE_BIN/kube-proxy" \
    --kubeconfig "$STATE/kubeconfigs/kube-proxy.kubeconfig" \
    --hostname-override "$NODE_NAME" --bind-address "$NODE_IP" \
    --proxy-mode iptables --cluster-cidr "$POD_CIDR" \
    --nodeport-addresses "$NODE_IP/32" \
    --healthz-bind-address 127.0.0.1:10256 --metrics-bind-address 127.0.0.1:10249 \
    --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 \
    --conntrack-tcp-timeout-close-wait 0 --v 1
  wait_for "kube-proxy rules for the kubernetes Service" 60 "$LOGS/kube-proxy.log" \
    service_rule_present
  step "kube-proxy: $SERVICE_IP:443 -> $NODE_IP:$APISERVER_PORT"
}

service_rule_present() { iptables -w -t nat -S KUBE-SERVICES | grep -q -- "-d $SERVICE_IP/32"; }

node_ready() {
  [ "$(kubectl_admin get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
node_untainted() {
  [ -z "$(kubectl_admin get node "$NODE_NAME" -o jsonpath='{.spec.taints}')" ]
}
sa_token_ready() {
  kubectl_admin -n "$1" get serviceaccount default -o jsonpath='{.secrets[0].name}' | grep -q .
}

wait_node_ready() {
  wait_for "node $NODE_NAME Ready" 120 "$LOGS/kubelet.log" node_ready
  wait_for "node $NODE_NAME without taints" 60 "$LOGS/kube-controller-manager.log" node_untainted
  wait_for "kube-system default ServiceAccount token" 60 "$LOGS/kube-controller-manager.log" \
    sa_token_ready kube-system
  wait_for "default ServiceAccount token" 60 "$LOGS/kube-controller-manager.log" \
    sa_token_ready default
  step "node: Ready, no taints, ServiceAccount tokens issued"
}

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

# Deletes every pod through the API while the kubelet still runs, so the
# kubelet stops them the normal way (CNI DEL releases addresses and veths).
# The controllers that would recreate them are stopped first. The kubelet
# stops the containers and sandboxes within seconds; it removes the API
# objects only later, which nothing here needs to wait for.
delete_pods_via_api() {
  [ -f "$KUBECONFIG_ADMIN" ] && daemon_running kube-apiserver && daemon_running kubelet || return 0
  kubectl_admin get --raw /readyz >/dev/null 2>&1 || return 0
  local n deadline
  n=$(kubectl_admin get pods -A --no-headers 2>/dev/null | wc -l)
  [ "$n" -gt 0 ] || return 0
  step "pods: deleting $n through the API"
  kubectl_admin delete pods --all -A --grace-period 2 --wait=false >/dev/null 2>&1 || true
  deadline=$((SECONDS + 30))
  until pods_stopped; do
    if ((SECONDS >= deadline)); then
      warn "the kubelet did not stop every pod in 30 s (what is left is killed below)"
      return 0
    fi
    sleep 0.5
  done
  step "pods: stopped by the kubelet"
}

# No container or sandbox runs, and no pod's veth is left on the bridge.
pods_stopped() {
  [ -z "$(ctr --address "$CONTAINERD_SOCK" --connect-timeout 2s -n k8s.io tasks ls -q 2>/dev/null)" ] &&
    [ -z "$(ip -o link show master "$BRIDGE_IF" 2>/dev/null)" ]
}

# Kills what is left of the containers with runc itself, then the shims.
remove_containers() {
  local root=$CONTAINERD_STATE/runc/k8s.io id pid
  if [ -d "$root" ]; then
    for id in $(runc --root "$root" list -q 2>/dev/null); do
      runc --root "$root" kill --all "$id" KILL 2>/dev/null || true
    done
    sleep 0.5
    for id in $(runc --root "$root" list -q 2>/dev/null); do
      runc --root "$root" delete --force "$id" 2>/dev/null || true
    done
  fi
  # shellcheck disable=SC2046 # one pid a word
  stop_pids 5 $(shim_pids)
}

stop_strays() {
  local pid pids=()
  for pid in $(stray_pids); do
    warn "stopping stray process $pid ($(tr '\0' ' ' </proc/"$pid"/cmdline | cut -c1-80))"
    pids+=("$pid")
  done
  stop_pids 5 "${pids[@]}"
}

# Kills processes still in the kubepods cgroups (the pods' own processes, if a
# shim died without them), then removes those cgroups leaf first in every
# hierarchy.
remove_cgroups() {
  local mnt pid found=0
  for mnt in $(awk '$9 == "cgroup" || $9 == "cgroup2" { print $5 }' /proc/self/mountinfo); do
    [ -d "$mnt/kubepods" ] || continue
    found=1
    for pid in $(find "$mnt/kubepods" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u); do
      kill -KILL "$pid" 2>/dev/null || true
    done
  done
  ((found)) || return 0
  sleep 0.5
  for mnt in $(awk '$9 == "cgroup" || $9 == "cgroup2" { print $5 }' /proc/self/mountinfo); do
    [ -d "$mnt/kubepods" ] || continue
    find "$mnt/kubepods" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ ! -d "$mnt/kubepods" ] || warn "cannot remove $mnt/kubepods"
  done
  step "cgroups: kubepods removed"
}

node_mounts() {
  awk -v s="$STATE" -v r="$CONTAINERD_STATE" \
    '$5 == s || index($5, s "/") == 1 || $5 == r || index($5, r "/") == 1 { print $5 }' \
    /proc/self/mountinfo | sort -r -u
}

# Unmounts every mount below the node's directories, deepest first (the
# kubelet bind-mounts its root dir onto itself, so a path can be mounted
# twice: a few passes).
unmount_node_mounts() {
  local m n=0 _
  for _ in 1 2 3; do
    for m in $(node_mounts); do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || warn "cannot unmount $m"
      n=$((n + 1))
    done
  done
  if [ -n "$(node_mounts)" ]; then warn "still mounted: $(node_mounts | tr '\n' ' ')"; fi
  if ((n > 0)); then step "mounts: $n unmounted"; fi
}

remove_network() {
  local dev
  for dev in $(ip -o link show master "$BRIDGE_IF" 2>/dev/null | awk -F': ' '{ print $2 }' | cut -d@ -f1); do
    ip link del "$dev" 2>/dev/null || true
  done
  ip link del "$BRIDGE_IF" 2>/dev/null || true
  ip link del "$NODE_IF" 2>/dev/null || true
  step "network: $BRIDGE_IF and $NODE_IF removed"
}

# Removes the rules of kube-proxy, kubelet (KUBE-*), the CNI portmap plugin
# (CNI-*) and of the forward guard (PODSHAPER-NODE), in one transaction per
# table: jumps into those chains from other chains, then the chains.
purge_iptables() {
  local ipt=$1 table saved chains
  for table in filter nat mangle raw; do
    saved=$("$ipt-save" -t "$table" 2>/dev/null) || continue
    chains=$(grep -oE '^:(KUBE-|CNI-|PODSHAPER-NODE)[^ ]*' <<<"$saved" | cut -c2- || true)
    [ -n "$chains" ] || continue
    {
      echo "*$table"
      grep -E -- '-j (KUBE-|CNI-|PODSHAPER-NODE)' <<<"$saved" |
        grep -vE '^-A (KUBE-|CNI-|PODSHAPER-NODE)' | sed 's/^-A /-D /' || true
      sed 's/^/-F /' <<<"$chains"
      sed 's/^/-X /' <<<"$chains"
      echo COMMIT
    } | "$ipt-restore" -w --noflush
  done
}

# iptables (over nftables here) leaves a table behind once anything used it:
# the tables `up` found missing go again if nothing else put rules in them.
remove_new_iptables_tables() {
  [ -f "$HOST_SAVED/iptables-tables" ] || return 0
  local family table ipt
  for family in ip ip6; do
    ipt=iptables
    [ "$family" = ip ] || ipt=ip6tables
    for table in $("$ipt-save" | sed -n 's/^\*//p'); do
      if grep -qx "$family $table" "$HOST_SAVED/iptables-tables"; then continue; fi
      if ! "$ipt-save" -t "$table" | grep -qE '^(-A|:[A-Z]+ DROP)'; then
        nft delete table "$family" "$table" 2>/dev/null || warn "cannot delete table $family $table"
      fi
    done
  done
}

clean_iptables() {
  if [ -x "${KUBE_BIN:-/nonexistent}/kube-proxy" ]; then
    "$KUBE_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  fi
  purge_iptables iptables
  purge_iptables ip6tables
  remove_new_iptables_tables
  step "iptables: KUBE-, CNI- and PODSHAPER-NODE chains removed"
}

remove_files() {
  local p
  if [ -f "$HOST_SAVED/created-paths" ]; then
    while IFS= read -r p; do
      if [ -n "$p" ]; then rm -rf "$p"; fi
    done <"$HOST_SAVED/created-paths"
  fi
  rm -f /var/lib/cni/results/"$NODE_NAME"-* 2>/dev/null || true
  rm -rf "$CONTAINERD_STATE" "$STATE"
  step "files: $STATE and $CONTAINERD_STATE removed"
}

keep_logs() {
  [ -n "${PODSHAPER_NODE_KEEP_LOGS:-}" ] && [ -d "$LOGS" ] || return 0
  mkdir -p "$PODSHAPER_NODE_KEEP_LOGS"
  cp -a "$LOGS/." "$PODSHAPER_NODE_KEEP_LOGS/"
  step "logs: copied to $PODSHAPER_NODE_KEEP_LOGS"
}

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
