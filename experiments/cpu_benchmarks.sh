#!/usr/bin/env bash
# CPU measurements of issue-level targets: Oct-ResNet-50 inference at batch 8 and 1 (fused and
# unfused execution), octflax at alpha 0 against ResNet-50 written with nn.Conv, and a CIFAR-style
# Oct-ResNet-20 train step. Run from the repository root: bash experiments/cpu_benchmarks.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-experiments/results/cpu}
mkdir -p "$out"
bench() { name=$1; shift; python -m experiments.benchmark "$@" --json "$out/$name.jsonl" | tee "$out/$name.txt"; }
bench resnet50_inference_b8 --models oct_resnet50,oct_resnet50:fuse --alphas 0,0.25,0.5,0.75 --batch 8 --repeats 7
bench resnet50_inference_b1 --models oct_resnet50,oct_resnet50:fuse --alphas 0,0.25,0.5,0.75 --batch 1 --repeats 15
bench resnet50_alpha0_overhead --models flax_resnet50,oct_resnet50:strided,oct_resnet50 --alphas 0 --batch 8 --repeats 9
bench resnet20_train_b128 --models oct_resnet20 --alphas 0,0.5 --batch 128 --mode train --image-size 32 \
  --num-classes 10 --repeats 10
