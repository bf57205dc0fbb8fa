# shellcheck shell=bash
# Sourced by scripts/kube-node.sh: waiting for a condition, and the node's
# processes: started detached, found by pid file, stopped.
# Uses the settings and helpers (step, die, warn) defined there.

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
