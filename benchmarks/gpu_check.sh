#!/usr/bin/env bash
# The GPU check of issue 15, under 4 minutes on one H100 or H200 (2026-11-26: the space-to-depth
# train steps compile in 8-20 s at paper scale, batch 32; cuDNN's plain convolutions in 14-25 s):
#
#   benchmarks/gpu_check.sh [OUT_DIR]        # OUT_DIR default: $OUT, else runs/gpu_check
#
# Writes into OUT_DIR:
#   throughput.json  paper scale (1176 px), batch $BATCH (32): train and inference img/s in float32
#                    and bfloat16, remat on and off (conv_impl=s2d2, the fastest on a GPU, and the
#                    plain cuDNN layer conv_impl=xla for reference), GFLOP/s and
#                    % of the GPU's dense bf16 peak, the measured bf16 matmul rate, compile times,
#                    peak device memory, host->device img/s, and training from 256 images kept on
#                    the device (resident_train_img_per_s) against feeding every batch from the host,
#                    and the GPU kernels that took the most time per train step (profile)
#   input_pipeline.json  grain at paper scale with 0 and 8 workers: does it keep up with the step?
#                    (per-setting lines also in input_pipeline.log, should the time limit cut it)
#                    (needs grain, tensorflow-datasets and array-record; skipped with a line if not)
#   nvidia_smi.txt, env.txt, bench/ (throughput.py's own JSON and results.md)
# Needs jax with CUDA, flax, optax, ml-collections, absl. Where those travel as wheels in ./.whl
# (the project's GPU image lacks ml-collections, grain and TFDS), they are installed first.
# Target (issue 15): >= 1,000 training images/s at paper scale on one H100.
# A CPU rehearsal at toy size: CONFIG=configs/smoke.py BATCH=4 GRID=4 RESIDENT=8 IMAGES=16 \
#   JAX_PLATFORMS=cpu benchmarks/gpu_check.sh /tmp/gpu_check
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-runs/gpu_check}}
PY=${PYTHON:-python3}
CONFIG=${CONFIG:-configs/paper.py}
BATCH=${BATCH:-32}
GRID=${GRID:-42}           # input pipeline: patches per side (42 x 28 px = paper scale)
RESIDENT=${RESIDENT:-256}  # images kept on the device for the resident-data train rate
IMAGES=${IMAGES:-128}      # images in the input-pipeline data set
REPEATS=${REPEATS:-2}
IMPLS=${IMPLS:-s2d2+remat=false+dtype=bfloat16,s2d2+remat=false,s2d2+remat=true+remat_chunk=294+dtype=bfloat16,s2d2+remat=true+remat_chunk=294,xla+remat=false}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false

if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu_check_site .whl/*.whl && export PYTHONPATH=/tmp/gpu_check_site:${PYTHONPATH:-}
fi
nvidia-smi > "$OUT_DIR/nvidia_smi.txt" 2>&1 || echo "nvidia-smi failed" > "$OUT_DIR/nvidia_smi.txt"
$PY -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" \
  > "$OUT_DIR/env.txt" 2>&1
cat "$OUT_DIR/env.txt"

# 1. Throughput: 5 variants interleaved, 2 repeats of 3 steps each after a warm-up step, then 3
#    profiled steps of the first. Compiling dominates: about 80 s in all on an H100 (the first
#    version, four cuDNN variants, took 170 s on an H200; 140 s cut it off before any result).
#    throughput.log gets one line per compiled variant.
timeout 210 $PY benchmarks/throughput.py --config="$CONFIG" --batch "$BATCH" \
  --impls="$IMPLS" --repeats "$REPEATS" --steps 3 --nopredict --resident "$RESIDENT" --profile 3 --json --out "$OUT_DIR/bench" --tag gpu-check \
  > "$OUT_DIR/throughput.json" 2> "$OUT_DIR/throughput.log"
echo "throughput: exit $? ($(tail -c 300 "$OUT_DIR/throughput.log" | tr '\n' ' '))"

# 2. Input pipeline at paper scale, batch 32: images/s by grain worker count.
if $PY -c "import grain, tensorflow_datasets, array_record" 2>/dev/null; then
  timeout 50 $PY benchmarks/input_pipeline.py --grid_size "$GRID" --num_images "$IMAGES" \
    --batch_size "$BATCH" \
    --workers 0 8 --repeats 1 --json > "$OUT_DIR/input_pipeline.json" 2> "$OUT_DIR/input_pipeline.log"
  echo "input pipeline: exit $?"
else
  echo '{"skipped": "grain / tensorflow_datasets / array_record not importable"}' \
    > "$OUT_DIR/input_pipeline.json"
  echo "input pipeline: skipped (grain, tensorflow-datasets or array-record missing: carry wheels)"
fi

$PY - "$OUT_DIR" <<'EOF'
import json, os, sys
out = sys.argv[1]
try:
    r = json.load(open(os.path.join(out, "throughput.json")))
except (OSError, ValueError) as e:
    sys.exit(f"no throughput result: {e}")
print(r["machine"]["name"], "| bf16 matmul", round(r["limits"]["bf16_dot_gflops"]), "GFLOP/s")
for row in r.get("compare", [r]):
    print(f"{row['conv_impl']:38s} train {row['train_img_per_s']:8.1f} img/s "
          f"({row.get('train_pct_bf16_peak', float('nan')):.1f}% peak)  "
          f"infer {row['infer_img_per_s']:8.1f} img/s")
print("resident data, train img/s:", round(r.get("resident_train_img_per_s", float("nan")), 1),
      "| host->device img/s:", round(r["h2d_img_per_s"]))
EOF
