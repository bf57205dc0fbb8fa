# shellcheck shell=bash
# Sourced by scripts/kube-node.sh: what the node needs on the host: packages,
# the Kubernetes and podshaper binaries, the host settings `up` records and
# `down` restores, bpffs shared.
# Uses the settings and helpers (step, die, warn) defined there.

install_packages() {
  local installed
  installed=$(install_missing_packages "${PACKAGES[@]}")
  [ -z "$installed" ] || step "packages: installed $installed"
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
