# shellcheck shell=bash
# Sourced by the scripts that read Kubernetes v1.20.2's own Go source
# (quantity-table.sh, quantity-differential.sh): Debian's `kubernetes` source
# package, the one kube-build.sh builds from, unpacked once into a GOPATH
# under /var/cache/podshaper so that Go builds it in GOPATH mode against its
# vendor directory (GO111MODULE=off, GOPROXY=off: no network but Debian's
# mirrors).

# shellcheck source=scripts/lib/packages.sh
source "$(dirname "${BASH_SOURCE[0]}")/packages.sh"

KUBE_SOURCE_GOPATH=${PODSHAPER_KUBE_SOURCE:-/var/cache/podshaper/kube-src-v1.20.2}/gopath
KUBE_SOURCE_DIR=$KUBE_SOURCE_GOPATH/src/k8s.io/kubernetes

# kube_source: installs Go and dpkg-dev, unpacks the source if it is not
# there yet, and prints its directory.
kube_source() {
  install_missing_packages golang-go dpkg-dev >&2
  if [ ! -f "$KUBE_SOURCE_DIR/.podshaper-unpacked" ]; then
    export DEBIAN_FRONTEND=noninteractive
    if [ ! -f /etc/apt/sources.list.d/debian-src.sources ]; then
      sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
        >/etc/apt/sources.list.d/debian-src.sources
      apt-get update -q >&2
    fi
    local work
    work=$(mktemp -d /var/tmp/podshaper-kube-source.XXXXXX)
    (
      cd "$work"
      apt-get source --download-only kubernetes >&2
      dpkg-source -x kubernetes_*.dsc src >/dev/null
    ) || { rm -rf "$work"; return 1; }
    rm -rf "$KUBE_SOURCE_DIR"
    mkdir -p "$(dirname "$KUBE_SOURCE_DIR")"
    mv "$work/src" "$KUBE_SOURCE_DIR"
    rm -rf "$work"
    touch "$KUBE_SOURCE_DIR/.podshaper-unpacked"
  fi
  echo "$KUBE_SOURCE_DIR"
}

# kube_go ARGS...: runs go in the source's GOPATH, offline.
kube_go() {
  GO111MODULE=off GOPATH=$KUBE_SOURCE_GOPATH GOPROXY=off GOFLAGS='' \
    GOCACHE=${KUBE_SOURCE_GOPATH%/gopath}/gocache go "$@"
}
