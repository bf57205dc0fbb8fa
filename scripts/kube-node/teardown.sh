# shellcheck shell=bash
# Sourced by scripts/kube-node.sh: what `down` removes, step by step.
# Uses the settings and helpers (step, die, warn) defined there.

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
