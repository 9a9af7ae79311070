#!/usr/bin/env bash
# CPU measurements: Oct-ResNet-50 inference at batch 8 and 1 (next to a PyTorch Oct-ResNet-50 with
# the PyTorch port's structure when torch is installed), octflax at alpha 0 against ResNet-50
# written with nn.Conv (batch 8 and 1), 1x1 convolutions as dots against convolutions,
# CIFAR-style Oct-ResNet-20 train steps (32 x 32 x 3, and 28 x 28 x 1 as in the Fashion-MNIST
# sweep; also in the `shared_output` execution form), the op time of that train step by kind of op, the split of the time
# into the convolutions and the rest (Oct-ResNet-50 inference, Oct-ResNet-20 train step), and the
# bytes the compiled Oct-ResNet-50 moves (benchmarks/probes/hlo_traffic.py). Inference compiles with
# octflax.inference_compiler_options(); '--compile octflax,xla-default' times the same network also
# compiled with XLA's defaults, in the same run.
# Run from the repository root: bash benchmarks/cpu_benchmarks.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/cpu}
mkdir -p "$out"
torch=$(python -c "import torch" 2>/dev/null && echo ",torch_oct_resnet50" || true)
decompose() { python -m benchmarks.probes.decompose "$@" | tee -a "$out/decompose.txt"; }
bench() { name=$1; shift; rm -f "$out/$name.jsonl"; python -m benchmarks.benchmark "$@" --json "$out/$name.jsonl" | tee "$out/$name.txt"; }
bench resnet50_inference_b8 --models oct_resnet50$torch --compile octflax,xla-default --alphas 0,0.25,0.5,0.75 --batch 8 \
  --repeats 9
bench resnet50_inference_b1 --models oct_resnet50$torch --compile octflax,xla-default --alphas 0,0.25,0.5,0.75 --batch 1 \
  --repeats 21
bench resnet50_alpha0_overhead --models flax_resnet50,oct_resnet50:strided,oct_resnet50 --alphas 0 --batch 8 --repeats 9
bench resnet50_alpha0_overhead_b1 --models flax_resnet50,oct_resnet50:strided,oct_resnet50 --alphas 0 --batch 1 --repeats 15
# Why octflax runs 1x1 convolutions as dots: both forms of ResNet-50's 1x1 shapes.
python -m benchmarks.probes.conv1x1_dot --batch 1,8 | tee "$out/conv1x1_dot_vs_conv.txt"
# Train steps compile with octflax.train_compiler_options(); 'xla-default' with XLA's defaults.
bench resnet20_train_b128 --models oct_resnet20 --compile octflax,xla-default --alphas 0,0.25,0.5,0.75 --batch 128 \
  --mode train --image-size 32 --num-classes 10 --repeats 10
bench resnet50_train_b8 --models oct_resnet50 --compile octflax,xla-default --alphas 0,0.5 --batch 8 --mode train \
  --repeats 5
# The sweep's network on Fashion-MNIST's shape: inference with both compile settings, and training
# throughput at every alpha of the sweep.
bench resnet20_fashion_inference_b500 --models oct_resnet20 --compile octflax,xla-default --alphas 0,0.125,0.25,0.5,0.75 \
  --batch 500 --mode inference --image-size 28 --channels 1 --num-classes 10 --repeats 9
bench resnet20_fashion_train_b128 --models oct_resnet20 --compile octflax,xla-default --alphas 0,0.125,0.25,0.5,0.75 \
  --batch 128 --mode train --image-size 28 --channels 1 --num-classes 10 --repeats 10
# Training with the paths that write one output part run as one convolution (the shared_output form), both shapes.
bench resnet20_train_b128_fuse --models oct_resnet20 --form default,shared_output --alphas 0,0.25,0.5,0.75 --batch 128 \
  --mode train --image-size 32 --num-classes 10 --repeats 12
bench resnet20_fashion_train_b128_fuse --models oct_resnet20 --form default,shared_output --alphas 0,0.25,0.5,0.75 --batch 128 \
  --mode train --image-size 28 --channels 1 --num-classes 10 --repeats 12
# Op time by kind of op, and the longest ops: Oct-ResNet-50 inference at batch 1 (its last stage is
# one graph), and a train step.
python -m benchmarks.probes.profile_ops --model oct_resnet50 --alphas 0,0.25,0.5,0.75 --batch 1 --calls 20 --top 4 \
  | tee "$out/profile_resnet50_inference_b1.txt"
# (with XLA's defaults: XLA:CPU's own convolution kernels, which the train options use, leave no
# trace events)
python -m benchmarks.probes.profile_ops --model oct_resnet20 --compile xla-default --alphas 0,0.5 --batch 128 --image-size 32 \
  --num-classes 10 --mode train --top 12 | tee "$out/profile_resnet20_train_b128.txt"
# Where the time goes: the convolutions in context against everything else.
rm -f "$out/decompose.txt"
decompose --model oct_resnet50 --alphas 0,0.25,0.5,0.75 --batch 1 --repeats 20
decompose --model oct_resnet50 --alphas 0,0.25,0.5,0.75 --batch 8 --repeats 8
decompose --model oct_resnet20 --alphas 0,0.5 --batch 128 --image-size 32 --num-classes 10 --mode train --repeats 8
{ python -m benchmarks.probes.hlo_traffic --model oct_resnet50 --alphas 0,0.25,0.5,0.75 --batch 8 --top 2
  python -m benchmarks.probes.hlo_traffic --model oct_resnet50 --compile xla-default --alphas 0,0.25,0.5,0.75 --batch 8 --top 2
} | tee "$out/hlo_traffic_resnet50_b8.txt"
