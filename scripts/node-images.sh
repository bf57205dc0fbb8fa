#!/usr/bin/env bash
# Builds the container images the one-node cluster of scripts/kube-node.sh
# runs, without any registry, and imports them into the node's containerd
# (namespace k8s.io, where the kubelet's CRI looks for images).
#
#   node-images.sh pause REF            the pod sandbox image (a static C program)
#   node-images.sh podshaper REF BIN    Debian bookworm minbase + iproute2 + BIN
#                                       at /usr/local/bin/podshaper, as deploy/Dockerfile's
#                                       runtime stage; PODSHAPER_IMAGE_LABEL=k=v adds a label
#   node-images.sh e2e REF              bookworm minbase + iperf3, iproute2, procps, curl
#   node-images.sh rootfs PKG,PKG...    only makes (or finds) the cached root filesystem
#                                       tarball and prints its path
#   node-images.sh rootfs-all           makes the root filesystems of all the images
#                                       above, side by side
#
# REF is a full reference with a tag, e.g. docker.io/library/podshaper:0.1.0
# (what `image: podshaper:0.1.0` in a pod resolves to).
#
# Root filesystems come from debootstrap and are cached as tarballs under
# /var/cache/podshaper/rootfs, so only the first build downloads packages
# (a minute or more each, mostly waiting on downloads and dpkg).
# Images are OCI layouts made with umoci: the cached tarball is added verbatim
# as the first layer, so nothing is unpacked.
set -euo pipefail

readonly CACHE=${PODSHAPER_CACHE:-/var/cache/podshaper}
readonly MIRROR=${PODSHAPER_DEBIAN_MIRROR:-http://deb.debian.org/debian}
readonly SUITE=bookworm
readonly CONTAINERD_ADDRESS=${CONTAINERD_ADDRESS:-/run/containerd/containerd.sock}
# What each image adds to bookworm minbase. The podshaper image matches
# deploy/Dockerfile's runtime stage (iproute2 for ip and tc).
readonly PODSHAPER_PACKAGES=iproute2
readonly E2E_PACKAGES=iproute2,iperf3,procps,curl
# The PATH Debian's base images set.
readonly DEBIAN_PATH=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { echo "node-images: $*" >&2; }
die() { echo "node-images: error: $*" >&2; exit 1; }

# A scratch directory for one build, removed on exit (with anything
# debootstrap left mounted in it).
scratch=""
cleanup() {
  [ -n "$scratch" ] || return 0
  local m
  for m in $(awk -v d="$scratch/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf "$scratch"
}
trap cleanup EXIT
make_scratch() {
  [ -n "$scratch" ] || scratch=$(mktemp -d /var/tmp/podshaper-image.XXXXXX)
}

# Prints the cached rootfs tarball for bookworm minbase plus the given
# comma-separated packages, making it first if it is missing.
rootfs_tarball() {
  local pkgs=$1
  local tarball="$CACHE/rootfs/$SUITE-minbase+${pkgs//,/+}.tar"
  if [ -s "$tarball" ]; then
    echo "$tarball"
    return 0
  fi
  make_scratch
  local root="$scratch/rootfs-${pkgs//,/+}"
  mkdir -p "$CACHE/rootfs" "$root"
  log "debootstrap $SUITE minbase + $pkgs from $MIRROR (cached afterwards)"
  debootstrap --variant=minbase --include="$pkgs" "$SUITE" "$root" "$MIRROR" \
    >"$root.log" 2>&1 || { tail -n 20 "$root.log" >&2; die "debootstrap failed"; }
  # What an image does not carry: downloaded packages and indexes, device
  # nodes (the runtime makes /dev), logs of the install, this machine's name
  # and resolver (the runtime mounts the pod's), and, as in Debian's -slim
  # images, manual pages, translations and documentation other than the
  # copyright files.
  (
    cd "$root"
    rm -rf var/cache/apt/archives/*.deb var/lib/apt/lists/* var/log/* dev/* \
      usr/share/man/* usr/share/info/* usr/share/locale/*
    rm -f etc/hostname etc/resolv.conf
    : >etc/hostname
    : >etc/resolv.conf
    find usr/share/doc -type f ! -name copyright -delete
    find usr/share/doc -depth -type d -empty -delete
  )
  tar --numeric-owner --xattrs -C "$root" -cf "$tarball.tmp.$$" .
  mv "$tarball.tmp.$$" "$tarball"
  rm -rf "$root"
  echo "$tarball"
}

# A tar of the directory tree under $1, owned by root, as an image layer.
layer_of() {
  tar --numeric-owner --owner=0 --group=0 -C "$1" -cf "$2" .
}

# Makes an OCI layout at $1 with one image tagged $2, layered from the
# given tarballs in order.
oci_image() {
  local layout=$1 tag=$2 layer
  shift 2
  umoci init --layout "$layout"
  umoci new --image "$layout:$tag"
  for layer in "$@"; do
    umoci raw add-layer --image "$layout:$tag" --history.created_by "add $(basename "$layer")" "$layer"
  done
}

# Imports the image tagged with REF's tag in the layout into containerd's
# k8s.io namespace under the name REF.
oci_import() {
  local layout=$1 ref=$2
  local repo=${ref%:*}
  ctr --address "$CONTAINERD_ADDRESS" -n k8s.io images import --base-name "$repo" - \
    < <(tar -C "$layout" -cf - .) >/dev/null
  ctr --address "$CONTAINERD_ADDRESS" -n k8s.io images ls -q "name==$ref" | grep -qx "$ref" ||
    die "$ref is not in containerd after the import"
  log "imported $ref"
}

check_ref() {
  [[ $1 =~ ^[a-z0-9.-]+(/[a-z0-9._-]+)+:[A-Za-z0-9_][A-Za-z0-9._-]*$ ]] ||
    die "image reference '$1' must be registry/path:tag, e.g. docker.io/library/podshaper:0.1.0"
}

# The sandbox ("pause") process: holds the pod's namespaces, reaps the
# zombies it inherits when the pod shares one PID namespace, and exits on
# SIGINT or SIGTERM.
write_pause_c() {
  cat >"$1" <<'EOF'
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }

int main(void) {
  struct sigaction chld = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
  signal(SIGINT, quit);
  signal(SIGTERM, quit);
  sigaction(SIGCHLD, &chld, NULL);
  for (;;) pause();
}
EOF
}

image_pause() {
  local ref=$1
  check_ref "$ref"
  make_scratch
  mkdir -p "$scratch/pause"
  write_pause_c "$scratch/pause.c"
  gcc -static -Os -s -o "$scratch/pause/pause" "$scratch/pause.c"
  layer_of "$scratch/pause" "$scratch/pause.tar"
  oci_image "$scratch/oci" "${ref##*:}" "$scratch/pause.tar"
  umoci config --no-history --image "$scratch/oci:${ref##*:}" --config.entrypoint /pause
  oci_import "$scratch/oci" "$ref"
}

image_podshaper() {
  local ref=$1 bin=$2 base
  check_ref "$ref"
  [ -x "$bin" ] || die "no podshaper binary at $bin"
  base=$(rootfs_tarball "$PODSHAPER_PACKAGES")
  make_scratch
  install -D -m 0755 "$bin" "$scratch/bin/usr/local/bin/podshaper"
  layer_of "$scratch/bin" "$scratch/bin.tar"
  oci_image "$scratch/oci" "${ref##*:}" "$base" "$scratch/bin.tar"
  local config=(--config.env "$DEBIAN_PATH" --config.entrypoint /usr/local/bin/podshaper)
  [ -z "${PODSHAPER_IMAGE_LABEL:-}" ] || config+=(--config.label "$PODSHAPER_IMAGE_LABEL")
  umoci config --no-history --image "$scratch/oci:${ref##*:}" "${config[@]}"
  oci_import "$scratch/oci" "$ref"
}

image_e2e() {
  local ref=$1 base
  check_ref "$ref"
  base=$(rootfs_tarball "$E2E_PACKAGES")
  make_scratch
  oci_image "$scratch/oci" "${ref##*:}" "$base"
  umoci config --no-history --image "$scratch/oci:${ref##*:}" --config.env "$DEBIAN_PATH" \
    --config.cmd /bin/bash
  oci_import "$scratch/oci" "$ref"
}

# Both root filesystems at once: debootstrap mostly waits (downloads, dpkg's
# syncs), so two side by side take little longer than one.
rootfs_all() {
  local pids=() pkgs pid failed=0
  for pkgs in "$PODSHAPER_PACKAGES" "$E2E_PACKAGES"; do
    rootfs_tarball "$pkgs" >/dev/null &
    pids+=("$!")
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  ((failed == 0)) || die "a root filesystem failed"
}

main() {
  [ "$(id -u)" = 0 ] || die "run as root"
  local cmd=${1:-}
  shift || true
  case "$cmd" in
    pause) [ $# = 1 ] || die "usage: $0 pause REF"; image_pause "$1" ;;
    podshaper) [ $# = 2 ] || die "usage: $0 podshaper REF BIN"; image_podshaper "$1" "$2" ;;
    e2e) [ $# = 1 ] || die "usage: $0 e2e REF"; image_e2e "$1" ;;
    rootfs) [ $# = 1 ] || die "usage: $0 rootfs PKG[,PKG...]"; rootfs_tarball "$1" ;;
    rootfs-all) [ $# = 0 ] || die "usage: $0 rootfs-all"; make_scratch; rootfs_all ;;
    *) die "usage: $0 pause|podshaper|e2e|rootfs|rootfs-all ..." ;;
  esac
}

main "$@"
