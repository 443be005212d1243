#!/usr/bin/env bash
# Start `python -m jaxcerv.main` on every worker of a Cloud TPU VM pod slice at once. Each worker
# is one JAX process; JAX finds the others from the TPU VM metadata (parallel.initialize_distributed
# detects the TPU VM), so no coordinator flags are needed.
#
#   launch/tpu_vm_pod.sh TPU_NAME [jaxcerv.main flags...]
#   ZONE=us-central2-b SYNC=1 SETUP=1 launch/tpu_vm_pod.sh my-v4-32 --config=paper \
#       --workdir=/mnt/shared/runs/paper
#
# The run is detached (nohup) on every worker, so it survives this ssh session: each worker
# logs to REMOTE_DIR/logs/RUN_ID-HOSTNAME.log, and the script prints the command that follows
# worker 0's log. Rerunning the same command resumes from the last checkpoint.
#
# Environment:
#   ZONE        the TPU's zone (default: gcloud's configured compute/zone)
#   PROJECT     the Google Cloud project (default: gcloud's configured project)
#   REMOTE_DIR  the repository on every worker, relative to the home directory (default jaxcerv)
#   SYNC=1      first copy this working tree (the files git knows, untracked ones included; not
#               .venv or runs/) to REMOTE_DIR on every worker
#   SETUP=1     first create REMOTE_DIR/.venv on every worker and install jaxcerv with its tpu
#               extra. jaxcerv needs Python >= 3.11 and TPU VM images ship 3.10, so Python 3.11
#               is installed with apt first when the worker's python3 is older (REMOTE_PYTHON
#               names another interpreter)
#   RUN_ID      names the log files (default: the current time)
#   LOCAL_WORKDIR=1  skip the shared-storage check of --workdir (a single-worker slice)
#   DRY_RUN=1   print the gcloud commands instead of running them
#
# --workdir must be a folder every worker sees: orbax writes one checkpoint from all processes,
# and process 0 alone writes logs, reports and figures. Use Filestore or another NFS mount. A
# gcsfuse mount refuses the directory renames orbax commits checkpoints with unless it is mounted
# with --rename-dir-limit (e.g. 200000) or the bucket has hierarchical namespace enabled. Each
# worker checks that --workdir is on NFS, FUSE, Lustre or GPFS before anything starts.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 TPU_NAME [jaxcerv.main flags...]" >&2
  exit 2
fi
tpu=$1
shift
remote_dir=${REMOTE_DIR:-jaxcerv}
run_id=${RUN_ID:-$(date +%Y%m%d-%H%M%S)}
remote_python=${REMOTE_PYTHON:-python3.11}

gcloud_args=(compute tpus tpu-vm)
where=()
[[ -n "${ZONE:-}" ]] && where+=(--zone="$ZONE")
[[ -n "${PROJECT:-}" ]] && where+=(--project="$PROJECT")

run() {
  if [[ -n "${DRY_RUN:-}" ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

on_workers() {  # WORKER(S) COMMAND: one shell command line, run on those workers in parallel
  run gcloud "${gcloud_args[@]}" ssh "$tpu" "${where[@]}" --worker="$1" --command="$2"
}

workdir=runs/default  # jaxcerv.main's default
for ((i = 1; i <= $#; i++)); do
  case "${!i}" in
    --workdir=*) workdir=${!i#--workdir=} ;;
    --workdir) j=$((i + 1)); workdir=${!j:-} ;;
  esac
done

cd "$(dirname "$0")/.."
rdir=$(printf %q "$remote_dir")
if [[ -n "${SYNC:-}" ]]; then
  archive=$(mktemp --suffix=.tar.gz)
  trap 'rm -f "$archive"' EXIT
  git ls-files -z --cached --others --exclude-standard | tar -czf "$archive" --null -T -
  run gcloud "${gcloud_args[@]}" scp "$archive" "$tpu:jaxcerv_src.tar.gz" "${where[@]}" --worker=all
  on_workers all "mkdir -p $rdir && tar -xzf jaxcerv_src.tar.gz -C $rdir && rm jaxcerv_src.tar.gz"
fi
if [[ -n "${SETUP:-}" ]]; then
  py=$(printf %q "$remote_python")
  on_workers all "set -e; cd $rdir
if ! command -v $py >/dev/null; then
  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    $py $py-venv
fi
$py -m venv .venv && .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q '.[tpu]'"
fi
if [[ -z "${LOCAL_WORKDIR:-}" ]]; then
  wd=$(printf %q "$workdir")
  on_workers all "cd $rdir && p=$wd; while [ ! -e \"\$p\" ]; do p=\$(dirname \"\$p\"); done
fs=\$(stat -f -c %T \"\$p\"); case \$fs in nfs*|fuse*|lustre|gpfs) ;;
*) echo \"\$(hostname): --workdir $wd is on a \$fs filesystem, not storage every worker shares\" \
  \"(use Filestore/NFS; LOCAL_WORKDIR=1 for a single-worker slice)\" >&2; exit 3 ;; esac"
fi

flags=$(printf '%q ' "$@")
log="logs/$(printf %q "$run_id")-\$(hostname).log"
on_workers all "cd $rdir && mkdir -p logs && \
nohup .venv/bin/python -m jaxcerv.main ${flags} > $log 2>&1 < /dev/null & echo \"\$(hostname): $rdir/$log\""
echo "follow worker 0: gcloud ${gcloud_args[*]} ssh $tpu ${where[*]} --worker=0" \
  "--command='tail -f $remote_dir/logs/$run_id-*.log'"
