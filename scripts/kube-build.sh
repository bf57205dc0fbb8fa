#!/usr/bin/env bash
# Builds the Kubernetes binaries podshaper's tests and its one-node cluster run
# (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy)
# from Debian's `kubernetes` source package (v1.20.2), as
# ../shared/docs/FACTS.md records, and caches them outside the repository.
# Idempotent: cached binaries are reused. Installs etcd-server too. Run as root.
#
# Prints the cache directory on its last line of stdout.
set -euo pipefail

cache=${PODSHAPER_KUBE_CACHE:-/var/cache/podshaper/kube-v1.20.2}
binaries=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

missing=()
for b in "${binaries[@]}"; do
  [ -x "$cache/$b" ] || missing+=("$b")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "$cache"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if [ ! -f /etc/apt/sources.list.d/debian-src.sources ]; then
  sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
    >/etc/apt/sources.list.d/debian-src.sources
  apt-get update -q >&2
fi
apt-get install -y -q --no-install-recommends golang-go make rsync jq etcd-server \
  golang-github-modern-go-reflect2-dev dpkg-dev >&2

work=$(mktemp -d /var/tmp/podshaper-kube-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get source --download-only kubernetes >&2
dpkg-source -x kubernetes_*.dsc src >&2
cd src
# The vendored reflect2 v1.0.1 crashes under Go 1.19 on the first CRD or map
# request; Debian's copy does not.
R=vendor/github.com/modern-go/reflect2
rm -rf "$R"
mkdir -p "$R"
cp -rL /usr/share/gocode/src/github.com/modern-go/reflect2/. "$R/"
rm -f "$R/go.mod"
what=""
for b in "${missing[@]}"; do what="$what cmd/$b"; done
echo "kube-build: building${what} (about 4 minutes a binary from cold on 2 cores)" >&2
GOPROXY=off KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20 \
  KUBE_GIT_TREE_STATE=clean KUBE_GIT_COMMIT=faecb196815e248d3ecfb03c680a4507229c2a56 \
  make WHAT="${what# }" >&2
mkdir -p "$cache"
for b in "${missing[@]}"; do
  install -m 0755 "_output/bin/$b" "$cache/$b.tmp"
  mv "$cache/$b.tmp" "$cache/$b"
done
echo "$cache"
