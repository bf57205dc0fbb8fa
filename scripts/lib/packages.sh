# shellcheck shell=bash
# Sourced by the scripts that need Debian packages (setup.sh, kernels.sh,
# kube-node.sh).

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
