# shellcheck shell=bash
# Sourced by scripts/kube-node.sh: containerd and the images the node runs.
# Uses the settings and helpers (step, die, warn) defined there.

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
