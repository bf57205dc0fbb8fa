#!/usr/bin/env bash
# Runs podshaper's kernel-dependent checks (scripts/kernel-checks.sh) on each
# supported kernel: Debian 12's own 6.1 and its 6.12, each booted under QEMU
# with software emulation (TCG; nested KVM does not work here), and the
# host's. Prints one line per kernel, `kernel <release>: ok` or
# `kernel <release>: FAIL <what>`, and exits non-zero if any failed.
#
# The kernels and their modules come from Debian's packages with
# `apt-get download` (nothing is installed on the host) and are cached in
# /var/cache/podshaper/kernels. Each guest boots from an initramfs made here:
# busybox, the podshaper release binary, iproute2 and the libraries they
# link, the modules the checks need, and the checks.
#
#   PODSHAPER_BIN=/path     the podshaper binary (default: a release build)
#   PODSHAPER_KERNELS_LOG=DIR  keep each kernel's full output there
set -euo pipefail
export PATH=/usr/local/sbin:/usr/sbin:/sbin:$PATH

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO
readonly CACHE=/var/cache/podshaper/kernels
# The modules the checks load (with what they depend on).
readonly MODULES=(veth ifb sch_htb sch_ingress cls_u32 cls_bpf act_mirred sch_fq sch_netem)
readonly PACKAGES=(qemu-system-x86 busybox-static cpio xz-utils kmod iproute2)
# A guest's whole run, boot to power-off (about 2 minutes each here). The
# guests run side by side: each is one host thread (thread=single), so each
# has a core of its own once both are booting; the host's checks run after.
readonly GUEST_TIMEOUT=900

WORK=$(mktemp -d /var/tmp/podshaper-kernels.XXXXXX)
# a guest still running (the script interrupted) goes with its files
trap 'pkill -f -- "$WORK/initrd-" || true; rm -rf "$WORK"' EXIT

# shellcheck source=scripts/lib/packages.sh
source "$REPO/scripts/lib/packages.sh"

podshaper_binary() {
  if [ -n "${PODSHAPER_BIN:-}" ]; then
    echo "$PODSHAPER_BIN"
    return
  fi
  # the binary the node's image gets (no plot), so one build serves both
  (cd "$REPO" && cargo build --release -q -p podshaper --no-default-features) >&2
  echo "${CARGO_TARGET_DIR:-$REPO/target}/release/podshaper"
}

# The kernel packages: Debian 12's own (what linux-image-cloud-amd64 points
# at today) and the newest 6.12 it ships.
kernel_packages() {
  apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-6\.1\./ { print $2; exit }'
  apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64$' |
    awk '{ print $1 }' | sort -V | tail -n 1
}

# fetch PACKAGE: the package unpacked in the cache; prints its directory.
fetch() {
  local pkg=$1 dir=$CACHE/$1
  if [ ! -d "$dir/boot" ]; then
    mkdir -p "$CACHE"
    (cd "$CACHE" && apt-get download "$pkg" >/dev/null 2>&1) || {
      echo "kernels: cannot download $pkg" >&2
      return 1
    }
    rm -rf "$dir.tmp"
    dpkg-deb -x "$CACHE/$pkg"_*.deb "$dir.tmp"
    depmod -b "$dir.tmp" "$(ls "$dir.tmp/lib/modules")"
    mv "$dir.tmp" "$dir"
  fi
  rm -f "$CACHE/$pkg"_*.deb
  # an unpacking cut short before depmod
  [ -f "$dir/lib/modules/$(ls "$dir/lib/modules")/modules.dep" ] ||
    depmod -b "$dir" "$(ls "$dir/lib/modules")"
  echo "$dir"
}

# copy_with_libs ROOT BINARY...: the binaries and every library they link,
# at the same paths under ROOT.
copy_with_libs() {
  local root=$1 bin lib
  shift
  for bin in "$@"; do
    mkdir -p "$root$(dirname "$bin")"
    cp -L "$bin" "$root$bin"
    for lib in $(ldd "$bin" | grep -oE '/[^ ]+'); do
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    done
  done
}

# initramfs KERNEL_DIR BINARY OUT: the guest's root file system.
initramfs() {
  local kdir=$1 binary=$2 out=$3 root release mod path
  release=$(ls "$kdir/lib/modules")
  root=$WORK/root-$release
  rm -rf "$root"
  mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,run,etc,modules,usr/local/bin}
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
  copy_with_libs "$root" "$(command -v ip)" "$(command -v tc)"
  cp "$binary" "$root/usr/local/bin/podshaper"
  copy_with_libs "$root" "$root/usr/local/bin/podshaper" >/dev/null 2>&1 || true
  for lib in $(ldd "$binary" | grep -oE '/[^ ]+'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  # the modules in the order they load, uncompressed (busybox's insmod)
  : >"$root/modules/order"
  for mod in "${MODULES[@]}"; do
    modprobe -d "$kdir" -S "$release" --show-depends "$mod" | awk '$1 == "insmod" { print $2 }' |
      while read -r path; do
        local name
        name=$(basename "$path" | sed 's/\.xz$//; s/\.zst$//')
        grep -qx "$name" "$root/modules/order" && continue
        case $path in
        *.xz) xz -dc "$path" >"$root/modules/$name" ;;
        *.zst) zstd -qdc "$path" >"$root/modules/$name" ;;
        *) cp "$path" "$root/modules/$name" ;;
        esac
        echo "$name" >>"$root/modules/order"
      done
  done
  cp "$REPO/scripts/kernel-checks.sh" "$root/kernel-checks.sh"
  cat >"$root/init" <<'INIT'
#!/bin/sh
# iproute2 before busybox's ip and tc applets
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mkdir -p /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
for m in $(cat /modules/order); do insmod "/modules/$m" || echo "cannot load $m"; done
echo PODSHAPER-KERNEL-START
# TCG: a longer warm-up (the shaper's verification is emulated), a second
# try for a rate check that a stall of the host thread spoiled, and bounds
# for a functional check (FACTS.md: no timing claims from a guest)
PODSHAPER_KERNEL_TRIES=2 PODSHAPER_KERNEL_WARMUP=3 PODSHAPER_KERNEL_MEASURE=4 PODSHAPER_KERNEL_LISTEN_WAIT=2.5 \
  PODSHAPER_KERNEL_LOW=0.85 PODSHAPER_KERNEL_HIGH=1.05 sh /kernel-checks.sh
echo "PODSHAPER-KERNEL-EXIT $?"
poweroff -f
INIT
  chmod +x "$root/init" "$root/kernel-checks.sh"
  (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out"
}

# summary LOG: `ok`, or `FAIL` and the checks that failed.
summary() {
  local log=$1 failed
  if ! grep -q "PODSHAPER-KERNEL-EXIT 0" "$log" && ! grep -q "^PODSHAPER-HOST-EXIT 0" "$log"; then
    failed=$(grep -oE "^check [^:]+: FAIL" "$log" | sed 's/^check //; s/: FAIL//' | tr '\n' ' ')
    if [ -z "$failed" ]; then
      failed="did not finish: $(grep -vE '^\s*$' "$log" | tail -n 2 | tr '\n' ' ')"
    fi
    echo "FAIL ${failed% }"
  else
    echo ok
  fi
}

run_guest() {
  local kdir=$1 binary=$2 log=$3 release
  release=$(ls "$kdir/lib/modules")
  initramfs "$kdir" "$binary" "$WORK/initrd-$release.gz"
  # one host thread for both vCPUs: with a thread each (MTTCG), 6.12's boot
  # met a stale int3 from its own text patching one time in three
  timeout "$GUEST_TIMEOUT" qemu-system-x86_64 -accel tcg,thread=single -cpu max -smp 2 -m 2048 \
    -kernel "$kdir/boot/vmlinuz-$release" -initrd "$WORK/initrd-$release.gz" \
    -append "console=ttyS0 panic=-1 quiet rdinit=/init" \
    -nographic -no-reboot -nic none </dev/null >"$log" 2>&1 || true
  echo "kernel $release: $(summary "$log")"
}

run_host() {
  local binary=$1 log=$2 rc=0
  mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
  PODSHAPER=$binary sh "$REPO/scripts/kernel-checks.sh" >"$log" 2>&1 || rc=$?
  echo "PODSHAPER-HOST-EXIT $rc" >>"$log"
  echo "kernel $(uname -r): $(summary "$log")"
}

# cell LOG CHECK: a check's outcome in a table cell: its measure if it has
# one, `yes`, `no`, or `-` (skipped or absent).
cell() {
  local line
  # a guest's serial console ends its lines with CR LF
  line=$(tr -d '\r' <"$1" | grep -m1 "^check $2: " || true)
  case $line in
  *": ok ("[0-9]*" of "*)
    line=${line##*(}
    echo "yes (${line%% of *})"
    ;;
  *": ok ("[0-9]*" bytes at "*)
    line=${line##*(}
    echo "yes (${line%% bytes at *} B)"
    ;;
  *": ok"*) echo yes ;;
  *": FAIL"*) echo no ;;
  *) echo - ;;
  esac
}

# feature LOG NAME: whether `podshaper doctor` found the shaper's part on.
feature() {
  if tr -d '\r' <"$1" | grep -qE "^feature ok +$2 "; then echo yes; else echo no; fi
}

# The support table (README.md "Kernels"): one row per kernel, from the logs.
table() {
  local log release
  echo "| kernel | loads | egress, 100M TCP | policer, 100M TCP | ingress queue, 10M TCP | receive-window clamp | hostNetwork queue | open sockets armed | EDT under fq, 10M | 40 ms round trip, 10M |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  for log in "$@"; do
    release=$(tr -d '\r' <"$log" | sed -n 's/^kernel \([^ :]*\)$/\1/p' | head -n 1)
    [ -n "$release" ] || continue
    echo "| $release | $(cell "$log" load) | $(cell "$log" run-tcp-egress-100M) | $(cell "$log" run-tcp-ingress-100M) | $(cell "$log" ingress-queue) | $(cell "$log" window-clamp) | $(feature "$log" "host classifier") | $(feature "$log" "arming open sockets") | $(cell "$log" fq) | $(cell "$log" rtt-40ms) |"
  done
}

main() {
  install_missing_packages "${PACKAGES[@]}" >/dev/null
  local binary results=() failed=0 pkg kdir line log pid
  binary=$(podshaper_binary)
  local logs=${PODSHAPER_KERNELS_LOG:-$WORK/logs}
  mkdir -p "$logs"
  local pkgs=() guests=()
  mapfile -t pkgs < <(kernel_packages)
  for pkg in "${pkgs[@]}"; do
    log=$logs/$pkg.log
    if kdir=$(fetch "$pkg"); then
      run_guest "$kdir" "$binary" "$log" >"$WORK/$pkg.line" &
      guests+=($!)
    else
      echo "kernel ${pkg#linux-image-}: FAIL cannot download $pkg" >"$WORK/$pkg.line"
    fi
  done
  for pid in "${guests[@]}"; do
    wait "$pid" || true
  done
  for pkg in "${pkgs[@]}"; do
    line=$(cat "$WORK/$pkg.line")
    [ -n "$line" ] || line="kernel ${pkg#linux-image-}: FAIL its guest did not start"
    echo "$line"
    results+=("$line")
  done
  log=$logs/host.log
  line=$(run_host "$binary" "$log")
  echo "$line"
  results+=("$line")
  for line in "${results[@]}"; do
    [[ $line == *": ok" ]] || failed=1
  done
  echo
  table "$logs"/linux-image-*.log "$logs/host.log"
  if [ -z "${PODSHAPER_KERNELS_LOG:-}" ] && ((failed)); then
    for log in "$logs"/*.log; do
      echo "--- $log" >&2
      tail -n 40 "$log" >&2
    done
  fi
  exit "$failed"
}

main "$@"
