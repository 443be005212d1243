#!/usr/bin/env bash
# N CPU processes on this machine forming one JAX runtime (a localhost coordinator, gloo
# collectives): the multi-host code path without a cluster.
#
#   launch/local_multiprocess.sh N [jaxcerv.main flags...]
#   launch/local_multiprocess.sh 2 --config=configs/smoke.py --workdir=runs/mp
#
# Paths in the flags are relative to the current directory, as for python -m jaxcerv.main.
# Environment: PYTHON (default: the repository's .venv/bin/python, else python3),
# COORDINATOR_PORT (default: a free port), DEVICES_PER_PROCESS (CPU devices per process,
# default 1). Process 0 prints as usual; the others' lines are prefixed "[process k]". If one
# process fails, the others are stopped (otherwise they would wait for it until the coordinator
# times out) and its exit status is returned.
set -euo pipefail

if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NUM_PROCESSES [jaxcerv.main flags...]" >&2
  exit 2
fi
num_processes=$1
shift

repo=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON=$repo/.venv/bin/python; else PYTHON=python3; fi
fi
port=${COORDINATOR_PORT:-$("$PYTHON" -c \
  'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
devices=${DEVICES_PER_PROCESS:-1}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"  # config files import the configs package
export JAX_PLATFORMS=cpu
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${devices}"

declare -A alive=()  # pid -> process index, until it has exited
# Stop every worker: SIGTERM, then SIGKILL after 5 s (a worker blocked in a collective or an
# orbax barrier does not act on SIGTERM). Also run when the launcher itself is stopped (Ctrl-C,
# kill, `timeout`), so no worker is left behind as an orphan.
stop_all() {
  local pids=("${!alive[@]}") pid left
  ((${#pids[@]})) || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in {1..50}; do
    left=0
    for pid in "${pids[@]}"; do
      # A worker that has exited but is not yet reaped is a zombie: it counts as gone.
      if [[ -e /proc/$pid && $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; then
        left=1
      fi
    done
    ((left)) || return 0
    sleep 0.1
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM

for ((k = 0; k < num_processes; k++)); do
  cmd=("$PYTHON" -m jaxcerv.main --coordinator="127.0.0.1:${port}"
       --num_processes="$num_processes" --process_id="$k" "$@")
  if ((k == 0)); then
    "${cmd[@]}" &
  else
    "${cmd[@]}" > >(sed -u "s/^/[process $k] /") 2>&1 &
  fi
  alive[$!]=$k
done

status=0
while ((${#alive[@]})); do
  rc=0
  finished=""
  wait -n -p finished "${!alive[@]}" 2>/dev/null || rc=$?
  [[ -n "${finished:-}" ]] || break  # the rest were already reaped
  k=${alive[$finished]}
  unset "alive[$finished]"
  if ((rc != 0 && status == 0)); then
    status=$rc
    echo "local_multiprocess.sh: process $k exited with status $rc; stopping the others" >&2
    stop_all
  fi
done
exit "$status"
