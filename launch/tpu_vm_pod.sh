#!/usr/bin/env bash
# Run `python -m jaxcerv.main` on every worker of a Cloud TPU VM pod slice at once. Each worker is
# one JAX process; JAX finds the others from the TPU VM metadata (parallel.initialize_distributed
# detects the TPU VM), so no coordinator flags are needed.
#
#   launch/tpu_vm_pod.sh TPU_NAME [jaxcerv.main flags...]
#   ZONE=us-central2-b launch/tpu_vm_pod.sh my-v4-32 --config=configs/paper.py \
#       --workdir=/mnt/shared/runs/paper
#
# Environment:
#   ZONE        the TPU's zone (default: gcloud's configured compute/zone)
#   PROJECT     the Google Cloud project (default: gcloud's configured project)
#   REMOTE_DIR  the repository on every worker, relative to the home directory (default jaxcerv)
#   SYNC=1      first copy this working tree (the files git knows, untracked ones included; not
#               .venv or runs/) to REMOTE_DIR on every worker
#   SETUP=1     first create REMOTE_DIR/.venv on every worker and install jaxcerv with jax[tpu]
#   DRY_RUN=1   print the gcloud commands instead of running them
#
# --workdir must be a folder every worker sees (NFS/Filestore or a gcsfuse mount): orbax writes
# one checkpoint from all processes, and process 0 alone writes logs, reports and figures.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 TPU_NAME [jaxcerv.main flags...]" >&2
  exit 2
fi
tpu=$1
shift
remote_dir=${REMOTE_DIR:-jaxcerv}

gcloud_args=(compute tpus tpu-vm)
where=()
[[ -n "${ZONE:-}" ]] && where+=(--zone="$ZONE")
[[ -n "${PROJECT:-}" ]] && where+=(--project="$PROJECT")

run() {
  if [[ -n "${DRY_RUN:-}" ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

on_all_workers() {  # one shell command line, run on every worker in parallel
  run gcloud "${gcloud_args[@]}" ssh "$tpu" "${where[@]}" --worker=all --command="$1"
}

cd "$(dirname "$0")/.."
if [[ -n "${SYNC:-}" ]]; then
  archive=$(mktemp --suffix=.tar.gz)
  trap 'rm -f "$archive"' EXIT
  git ls-files -z --cached --others --exclude-standard | tar -czf "$archive" --null -T -
  run gcloud "${gcloud_args[@]}" scp "$archive" "$tpu:jaxcerv_src.tar.gz" "${where[@]}" --worker=all
  on_all_workers "mkdir -p $(printf %q "$remote_dir") && \
tar -xzf jaxcerv_src.tar.gz -C $(printf %q "$remote_dir") && rm jaxcerv_src.tar.gz"
fi
if [[ -n "${SETUP:-}" ]]; then
  on_all_workers "cd $(printf %q "$remote_dir") && python3 -m venv .venv && \
.venv/bin/pip install -q -e . 'jax[tpu]==0.10.2'"
fi

flags=$(printf '%q ' "$@")
on_all_workers "cd $(printf %q "$remote_dir") && .venv/bin/python -m jaxcerv.main ${flags}"
