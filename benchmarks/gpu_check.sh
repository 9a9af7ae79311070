#!/usr/bin/env bash
# GPU measurements of octflax on one NVIDIA H100 or H200, in about 17 minutes.
#
# Needs only what such a machine has (jax with CUDA, flax, optax, chex; torch and torchvision
# for the PyTorch peers, which are skipped without them); installs nothing.
# Run from the repository root:   bash benchmarks/gpu_check.sh [OUT_DIR]
# Oct-ResNet-50 at alpha 0 / .25 / .5 / .75 and the same ResNet-50 written with flax.linen.Conv
# (flax_resnet50), timed round-robin in the same run: inference at batch 64 in float32 and in
# bfloat16 (benchmarks.benchmark), and the train step at batch 128 in bfloat16 with its
# execution forms, XLA options, PyTorch peers and profiles (benchmarks.probes.gpu_step). Appends
# JSON lines to OUT_DIR/gpu_benchmarks.jsonl (inference) and OUT_DIR/train_step.jsonl (train
# step), the printed tables to OUT_DIR/gpu_benchmarks.txt and the probe's files to
# OUT_DIR/gpu_step (default OUT_DIR: $OUT if set, else benchmarks/results/gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-benchmarks/results/gpu}}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:-}:$(pwd)
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # so peak memory reflects the program, not the pool
log="$out/gpu_benchmarks.txt"
json="$out/gpu_benchmarks.jsonl"
{
  date -u +"date %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  python -c "import jax; print('jax', jax.__version__, jax.devices())"
} | tee -a "$log"

bench() {  # bench SECONDS ARGS...: one benchmark run under its own time limit
  local limit=$1; shift
  echo "\$ python -m benchmarks.benchmark $*" | tee -a "$log"
  timeout "$limit" python -m benchmarks.benchmark --models oct_resnet50,flax_resnet50 \
    --alphas 0,0.25,0.5,0.75 --repeats 20 --json "$json" "$@" 2>&1 | tee -a "$log" || true
}
# Each run compiles every case before timing any and prints only at the end: on an H200 a
# compile took 20-25 s at alpha 0 and 69 s for an alpha .5 train step (XLA's convolution
# autotuning), so each run needs minutes.
bench 200 --batch 64 --mode inference
bench 200 --batch 64 --mode inference --dtype bfloat16
# The train step: one process that compiles case after case and prints as it goes, within its
# --budget (seconds), then profiles and writes its rows even when the limit cuts it short.
echo "\$ python -m benchmarks.probes.gpu_step --budget 420" | tee -a "$log"
timeout 570 python -m benchmarks.probes.gpu_step --budget 420 --out "$out/gpu_step" \
  --results "$out/train_step.jsonl" 2>&1 | tee -a "$log" || true
echo "done: $out"
