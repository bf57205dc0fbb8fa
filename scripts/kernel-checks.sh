#!/bin/sh
# The kernel-dependent checks scripts/kernels.sh runs on each kernel: in a
# QEMU guest (from its initramfs, with busybox) and on the host. POSIX sh.
#
# Needs `podshaper` (or $PODSHAPER), `ip` and `tc` on PATH, cgroup2 and bpffs
# mounted, and runs as root. Everything it makes has a name of its own
# (ps-k-<pid>-...) and is removed when it ends. Prints one line per check,
# `check <name>: ok ...` or `check <name>: FAIL ...`, then the features the
# shaper found (`feature ...`), and exits non-zero if any check failed.
#
# Rates are measured over 3.5 s after a 1.5 s warm-up. A guest under TCG
# (software emulation) runs several times slower than the host: the
# bounds are for functional checks, not for accuracy claims.
set -u

P=${PODSHAPER:-podshaper}
TAG=ps-k-$$
FAILED=""
CG=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
ROOT=$CG/$TAG
BPF=/sys/fs/bpf/$TAG
SOCK=/tmp/$TAG.sock
NS_A=$TAG-a
NS_B=$TAG-b
DAEMON_PID=""
PORT=5601

# iproute2's ip and tc, found on PATH: a static busybox's shell runs its own
# applets of those names before anything on PATH, and they lack netns,
# veth and the qdiscs.
iproute() {
  found=""
  for d in $(echo "$PATH" | tr ':' ' '); do
    if [ -z "$found" ] && [ -x "$d/$1" ] && ! readlink "$d/$1" | grep -q busybox; then
      found=$d/$1
    fi
  done
  echo "${found:-$1}"
}
IP=$(iproute ip)
TC=$(iproute tc)

ok() { echo "check $1: ok${2:+ ($2)}"; }
fail() {
  echo "check $1: FAIL $2"
  FAILED="$FAILED $1"
}

# shellcheck disable=SC2317 # it runs from the trap below
cleanup() {
  [ -n "$DAEMON_PID" ] && kill -9 "$DAEMON_PID" 2>/dev/null
  "$IP" netns del "$NS_A" 2>/dev/null
  "$IP" netns del "$NS_B" 2>/dev/null
  # processes left in the test cgroups, then the cgroups, deepest first
  find "$ROOT" -name cgroup.procs 2>/dev/null | while read -r f; do
    while read -r pid; do kill -9 "$pid" 2>/dev/null; done <"$f"
  done
  sleep 0.2
  find "$ROOT" -depth -type d 2>/dev/null | while read -r d; do rmdir "$d" 2>/dev/null; done
  rm -rf "$BPF" "$SOCK"
}
trap cleanup EXIT INT TERM

daemon() {
  "$P" daemon --socket "$SOCK" --bpffs-dir "$BPF" --cgroup-root "$ROOT" >"/tmp/$TAG.log" 2>&1 &
  DAEMON_PID=$!
  i=0
  while [ $i -lt 300 ]; do
    "$P" list --daemon "unix://$SOCK" >/dev/null 2>&1 && return 0
    sleep 0.1
    i=$((i + 1))
  done
  echo "--- daemon log:"
  cat "/tmp/$TAG.log"
  return 1
}

cli() { "$P" "$@" --daemon "unix://$SOCK"; }

# the value of a JSON number field, from one line of JSON
field() { sed -n "s/.*\"$1\":\([0-9.e+-]*\).*/\1/p" | head -n 1; }

# ratio LOW HIGH MEASURED TARGET: whether MEASURED/TARGET is within [LOW, HIGH]
within() { awk -v lo="$1" -v hi="$2" -v m="$3" -v t="$4" 'BEGIN { r = m / t; exit !(r >= lo && r <= hi) }'; }
ratio() { awk -v m="$1" -v t="$2" 'BEGIN { printf "%.3f", m / t }'; }

lab() {
  "$IP" netns add "$NS_A" && "$IP" netns add "$NS_B" &&
    "$IP" -n "$NS_A" link add veth0 type veth peer name veth0 netns "$NS_B" &&
    "$IP" -n "$NS_A" addr add 198.18.0.1/30 dev veth0 &&
    "$IP" -n "$NS_B" addr add 198.18.0.2/30 dev veth0 &&
    "$IP" -n "$NS_A" link set veth0 up && "$IP" -n "$NS_B" link set veth0 up &&
    "$IP" -n "$NS_A" link set lo up && "$IP" -n "$NS_B" link set lo up
}

# measure VERB LIMIT_ARGS...: `podshaper run` with the limit in namespace A,
# the other end in B; prints the receiver's bits per second over MEASURE
# seconds after a warm-up of WARMUP (which covers `podshaper run` loading
# the shaper: with 1.5 s under TCG, where the load runs emulated, every
# check read 0.56-0.74 of its limit). The
# sender runs on past the receiver's end. VERB: tcp-egress, tcp-ingress,
# udp-egress, udp-ingress. OFFER: UDP's rate.
measure() {
  kind=$1
  shift
  PORT=$((PORT + 1))
  out=/tmp/$TAG.out
  case $kind in
  tcp-egress | udp-egress)
    proto=${kind%-egress}
    "$P" traffic "$proto-recv" --netns "$NS_B" --listen "198.18.0.2:$PORT" --seconds "$RECV_FOR" --skip "$WARMUP" >"$out" &
    recv=$!
    sleep 0.3
    if [ "$proto" = udp ]; then extra="--rate $OFFER"; else extra=""; fi
    # shellcheck disable=SC2086 # extra is two words or none
    "$P" run "$@" -- "$P" traffic "$proto-send" --netns "$NS_A" --to "198.18.0.2:$PORT" --seconds "$SEND_FOR" $extra >/dev/null &
    send=$!
    wait $recv
    kill "$send" 2>/dev/null
    wait "$send" 2>/dev/null
    ;;
  tcp-ingress | udp-ingress)
    proto=${kind%-ingress}
    "$P" run "$@" -- "$P" traffic "$proto-recv" --netns "$NS_A" --listen "198.18.0.1:$PORT" --seconds "$RECV_FOR" --skip "$WARMUP" >"$out" &
    recv=$!
    # until it listens (UDP: until its socket is bound)
    sleep "$LISTEN_WAIT"
    if [ "$proto" = udp ]; then extra="--rate $OFFER"; else extra=""; fi
    # shellcheck disable=SC2086
    "$P" traffic "$proto-send" --netns "$NS_B" --to "198.18.0.1:$PORT" --seconds "$SEND_FOR" $extra >/dev/null &
    send=$!
    wait $recv
    kill "$send" 2>/dev/null
    wait "$send" 2>/dev/null
    ;;
  esac
  field bits_per_second <"$out"
}

# rate_check NAME LOW HIGH BITS WHAT VERB LIMIT_ARGS...: `measure VERB
# LIMIT_ARGS...`, checked within [LOW, HIGH] of BITS; WHAT follows the ratio
# in the check's line. A check outside its bounds measures again, up to
# TRIES measurements in all (PODSHAPER_KERNEL_TRIES, a positive integer),
# and its line says what each earlier one read.
# The guests take two: a TCG guest runs on one host thread, and a stall of
# that thread takes the guest's traffic with it (one run of 6.1 read 0.813
# of 10M over a 40 ms round trip and 0.874 of 10M UDP egress, where three
# runs of the round trip alone read 0.970-0.973 with no retransmission). A
# kernel that lacks what a check needs fails every try.
rate_check() {
  rc_name=$1 rc_low=$2 rc_high=$3 rc_bits=$4 rc_what=$5
  shift 5
  rc_tries=0 rc_earlier=""
  while :; do
    rc_got=$(measure "$@")
    rc_tries=$((rc_tries + 1))
    if [ -n "$rc_got" ]; then rc_read=$(ratio "$rc_got" "$rc_bits"); else rc_read="no measurement"; fi
    if [ -n "$rc_got" ] && within "$rc_low" "$rc_high" "$rc_got" "$rc_bits"; then
      ok "$rc_name" "$rc_read $rc_what${rc_earlier:+; before it, $rc_earlier}"
      return
    fi
    rc_earlier="${rc_earlier:+$rc_earlier, }$rc_read"
    if [ "$rc_tries" -ge "$TRIES" ]; then
      fail "$rc_name" "$rc_earlier $rc_what, outside [$rc_low, $rc_high]"
      return
    fi
  done
}

# queued_tcp_rate: one TCP flow from B into a receiver in the cgroup
# $ROOT/pod/app (in namespace A), through whatever limit the daemon put on
# it; prints the receiver's bits per second.
queued_tcp_rate() {
  PORT=$((PORT + 1))
  out=/tmp/$TAG.out
  sh -c "echo \$\$ > $ROOT/pod/app/cgroup.procs; exec $P traffic tcp-recv --netns $NS_A --listen 198.18.0.1:$PORT --seconds $RECV_FOR --skip $WARMUP" >"$out" &
  recv=$!
  sleep 1
  "$P" traffic tcp-send --netns "$NS_B" --to "198.18.0.1:$PORT" --seconds "$SEND_FOR" >/dev/null &
  send=$!
  wait $recv
  kill "$send" 2>/dev/null
  wait "$send" 2>/dev/null
  field bits_per_second <"$out"
}

# the first receive window clamp in a receiver's report
window_clamp() { sed -n 's/.*"window_clamps":\[\([0-9]*\).*/\1/p' | head -n 1; }

mkdir -p "$ROOT/pod/app" || {
  echo "check setup: FAIL cannot make $ROOT"
  exit 1
}
echo "kernel $(uname -r)"

# --- the shaper loads, and what the kernel allows of it
if "$P" doctor --cgroup-root "$CG" >"/tmp/$TAG.doctor" 2>&1; then
  ok load
else
  fail load "podshaper doctor: $(grep FAIL "/tmp/$TAG.doctor" | head -n 3 | tr '\n' ' ')"
fi
grep -E "^(ok|warn|FAIL) " "/tmp/$TAG.doctor" | sed 's/^/feature /'

# --- the daemon: attach, update, adoption after kill -9, detach
if daemon; then
  APP=$ROOT/pod/app
  if cli attach --cgroup "$APP" --egress 10M --ingress 5M >/dev/null &&
    cli status --cgroup "$APP" -o json | grep -q '"egress_bps":10000000'; then
    ok attach
  else
    fail attach "no 10M on $APP"
  fi
  if cli attach --cgroup "$APP" --egress 20M >/dev/null &&
    cli status --cgroup "$APP" -o json | grep -q '"egress_bps":20000000'; then
    ok update
  else
    fail update "the limit did not change to 20M"
  fi
  kill -9 "$DAEMON_PID"
  wait "$DAEMON_PID" 2>/dev/null
  if daemon && cli list -o json | grep -q '"egress_bps":20000000'; then
    ok adoption "20M kept through kill -9 and a restart"
  else
    fail adoption "the restarted daemon does not list 20M"
  fi
  if cli detach --cgroup "$APP" >/dev/null && [ "$(cli list -o json)" = "[]" ]; then
    ok detach
  else
    fail detach "the cgroup is still listed"
  fi
else
  fail daemon "the daemon does not start"
fi

# --- rates: bounds of a check, and how long its traffic runs
LOW=${PODSHAPER_KERNEL_LOW:-0.85}
HIGH=${PODSHAPER_KERNEL_HIGH:-1.05}
WARMUP=${PODSHAPER_KERNEL_WARMUP:-1.5}
MEASURE=${PODSHAPER_KERNEL_MEASURE:-3.5}
LISTEN_WAIT=${PODSHAPER_KERNEL_LISTEN_WAIT:-0.8}
TRIES=${PODSHAPER_KERNEL_TRIES:-1}
case $TRIES in '' | *[!0-9]* | 0) TRIES=1 ;; esac
# policer_high BITS: the upper bound of the policer alone (`podshaper run
# --ingress` over TCP) at BITS per second. It lets retransmissions and a
# flow's packet after a drop borrow, down to max(200 ms of the rate, two
# bursts) below an empty bucket (MAX_DEFICIT_NS, MIN_DEFICIT_BURSTS in
# bpf/lib/bucket.h), on top of a full burst (25 ms, at least 128 KiB): a window
# of MEASURE seconds that starts full and ends in debt reads that much above
# the limit (1.051 of 10M over 3.5 s on the host, where 10M may lend 0.31 s).
# The bound is that, plus 0.02.
policer_high() {
  awk -v bits="$1" -v h="$HIGH" -v m="$MEASURE" 'BEGIN {
    rate = bits / 8; burst = rate / 40; if (burst < 131072) burst = 131072
    debt = rate / 5; if (debt < 2 * burst) debt = 2 * burst
    b = 1.02 + (burst + debt) / rate / m; print (b > h ? b : h) }'
}
# policer_low: the lower bound of the policer alone over TCP. A drop there
# can leave a flow waiting for its retransmission timer (200 ms at least):
# two such waits in a window of MEASURE seconds take 2 x 0.2 / MEASURE of it
# (0.835 of 10M over 3.5 s on the host). The bound is LOW less that.
policer_low() {
  awk -v l="$LOW" -v m="$MEASURE" 'BEGIN { print l - 2 * 0.2 / m }'
}
# a receiver's whole run, and its sender's, which outlasts it
RECV_FOR=$(awk -v w="$WARMUP" -v m="$MEASURE" 'BEGIN { print w + m }')
SEND_FOR=$(awk -v w="$WARMUP" -v m="$MEASURE" 'BEGIN { print w + m + 1 }')
# --- the ingress queue, built in a pod's namespace, carrying a flow, removed
if lab; then
  # what the path carries with no limit: a limit checked must be below it
  got=$(measure tcp-egress --egress 100G)
  UNLIMITED_CLAMP=$(window_clamp <"/tmp/$TAG.out")
  echo "check capacity: ok (one TCP flow with no limit in force: $(awk -v b="${got:-0}" 'BEGIN { printf "%.0f", b / 1e6 }') Mbit/s, receive window clamp ${UNLIMITED_CLAMP:-?} bytes)"
  sh -c "echo \$\$ > $ROOT/pod/app/cgroup.procs; exec $IP netns exec $NS_A sleep 60" &
  SLEEPER=$!
  sleep 0.5
  if [ -n "$DAEMON_PID" ] && cli attach --cgroup "$ROOT/pod" --ingress 10M >/dev/null; then
    i=0
    while [ $i -lt 50 ] && ! "$IP" -n "$NS_A" link show podshaper-ifb >/dev/null 2>&1; do
      sleep 0.2
      i=$((i + 1))
    done
    if "$IP" -n "$NS_A" link show podshaper-ifb >/dev/null 2>&1 &&
      cli status --cgroup "$ROOT/pod" -o json | grep -q '"ingress_mode":"queue"'; then
      got=$(queued_tcp_rate)
      clamp=$(window_clamp <"/tmp/$TAG.out")
      if [ -n "$got" ] && within "$LOW" "$HIGH" "$got" 10000000; then
        ok ingress-queue "$(ratio "$got" 10000000) of the limit"
      else
        fail ingress-queue "${got:-no measurement} bit/s of 10M through the queue"
      fi
      # the queue's FIFO depth and a round trip at the limit, not what the
      # kernel's buffer autotuning gives an unlimited flow
      if [ -n "$clamp" ] && [ -n "$UNLIMITED_CLAMP" ] && [ "$clamp" -lt $((UNLIMITED_CLAMP / 2)) ]; then
        ok window-clamp "$clamp bytes at 10M, $UNLIMITED_CLAMP with no limit"
      else
        fail window-clamp "${clamp:-none} bytes at 10M, ${UNLIMITED_CLAMP:-none} with no limit"
      fi
    else
      fail ingress-queue "no queue in the pod's namespace: $(cli status --cgroup "$ROOT/pod" -o json)"
    fi
    cli detach --cgroup "$ROOT/pod" >/dev/null
    if "$IP" -n "$NS_A" link show podshaper-ifb >/dev/null 2>&1; then
      fail ingress-queue-removed "the ifb is still there after the detach"
    else
      ok ingress-queue-removed
    fi
  else
    fail ingress-queue "cannot attach"
  fi
  kill -9 "$SLEEPER" 2>/dev/null
  wait "$SLEEPER" 2>/dev/null
else
  fail lab "cannot make two network namespaces joined by veth"
fi
if [ -n "$DAEMON_PID" ]; then
  kill "$DAEMON_PID"
  wait "$DAEMON_PID" 2>/dev/null
  DAEMON_PID=""
fi

# --- `podshaper run`: TCP and UDP, both ways, 10M and 100M
for rate in 10M 100M; do
  bits=$(echo "$rate" | sed 's/M$/000000/')
  # offered at twice the limit: a TCG guest cannot send much more than 400M
  OFFER=$((bits * 2))
  for kind in tcp-egress tcp-ingress udp-egress udp-ingress; do
    dir=${kind#*-}
    low=$LOW high=$HIGH
    if [ "$kind" = tcp-ingress ]; then
      low=$(policer_low) high=$(policer_high "$bits")
    fi
    rate_check "run-$kind-$rate" "$low" "$high" "$bits" "of the limit" "$kind" "--$dir" "$rate"
  done
done

# --- where the kernel has them: fq on the sender's interface, and a
# round trip of 40 ms (netem on both sides)
if "$IP" netns exec "$NS_A" "$TC" qdisc replace dev veth0 root fq 2>/dev/null; then
  rate_check fq "$LOW" "$HIGH" 10000000 "of 10M egress with fq on the interface" tcp-egress --egress 10M
  "$IP" netns exec "$NS_A" "$TC" qdisc del dev veth0 root 2>/dev/null
else
  echo "check fq: skipped (no fq qdisc in this kernel)"
fi
if "$IP" netns exec "$NS_A" "$TC" qdisc replace dev veth0 root netem delay 20ms 2>/dev/null &&
  "$IP" netns exec "$NS_B" "$TC" qdisc replace dev veth0 root netem delay 20ms 2>/dev/null; then
  rate_check rtt-40ms "$LOW" "$HIGH" 10000000 "of 10M egress over a 40 ms round trip" tcp-egress --egress 10M
else
  echo "check rtt-40ms: skipped (no netem qdisc in this kernel)"
fi

if [ -n "$FAILED" ]; then
  echo "failed:$FAILED"
  exit 1
fi
exit 0
