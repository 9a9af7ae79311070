#!/usr/bin/env bash
# GPU measurements of octflax on one NVIDIA H100 or H200, in under 10 minutes.
#
# Needs only what such a machine has (jax with CUDA, flax, optax, chex); installs nothing.
# Run from the repository root:   bash experiments/gpu_check.sh [OUT_DIR]
# Writes JSON lines (one per configuration) and the printed tables to OUT_DIR
# (default: $OUT if set, else experiments/results/gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-experiments/results/gpu}}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:-}:$(pwd)
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # so peak memory reflects the program, not the pool
{
  date -u +"date %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  python -c "import jax; print('jax', jax.__version__, jax.devices())"
} | tee "$out/device.txt"

alphas=0,0.25,0.5,0.75
# Inference, batch 64, float32 and bf16.
timeout 200 python -m experiments.benchmark --models oct_resnet50 --alphas $alphas --batch 64 \
  --mode inference --repeats 20 --json "$out/resnet50_inference_b64.jsonl" | tee "$out/resnet50_inference_b64.txt"
timeout 200 python -m experiments.benchmark --models oct_resnet50 --alphas $alphas --batch 64 \
  --mode inference --dtype bfloat16 --repeats 20 --json "$out/resnet50_inference_b64_bf16.jsonl" \
  | tee "$out/resnet50_inference_b64_bf16.txt"
# One full optimizer step, batch 128, bf16 compute with float32 parameters.
timeout 240 python -m experiments.benchmark --models oct_resnet50 --alphas $alphas --batch 128 \
  --mode train --dtype bfloat16 --repeats 20 --json "$out/resnet50_train_b128_bf16.jsonl" \
  | tee "$out/resnet50_train_b128_bf16.txt"
echo "done: $out"
