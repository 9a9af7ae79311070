"""Where the time goes: per-op device time of a compiled octflax network, from a profiler trace.

Backs docs/benchmarks.md: the op time of Oct-ResNet-50's vanilla last stage at batch 1, and
"Where a train step's time goes" (CIFAR Oct-ResNet-20, batch 128).

Compiles the network's inference (or train step) as `benchmarks.benchmark` does, records a
`jax.profiler` trace of repeated calls, and sums the time of each compiled op. Ops are grouped by
what the optimized HLO says they contain: a convolution or a dot (1x1 convolutions run as dots;
with whatever XLA fused around them: BatchNorm, ReLU, adds, pooling, upsampling), fusions that
transpose an array (in a train step, the inputs and gradients a weight-gradient convolution
reads in another layout, with the elementwise ops XLA fused into them), other fusions, and the
rest. Comparing two alphas shows which ops grow or shrink; ``--top N`` lists the N ops that
took longest, with their output shapes.

Op times are summed over threads, and XLA:CPU runs independent ops concurrently (more of them at
alpha > 0, whose paths are independent), so overlapping ops are counted twice: read the totals
as op time, not wall time; `benchmarks.probes.decompose` splits the wall time itself into the
convolutions and the rest. Convolutions that XLA:CPU runs with its own kernels (most of a train
step's under `octflax.train_compiler_options()`) may record no trace event; the tool says how
many it missed, and ``--compile xla-default`` profiles them as YNNPACK ops.

Example:
  python -m benchmarks.probes.profile_ops --model oct_resnet50 --alphas 0,0.5 --batch 1
  python -m benchmarks.probes.profile_ops --model oct_resnet20 --compile xla-default --alphas 0,0.5 --batch 128 \
      --image-size 32 --num-classes 10 --mode train --top 10
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

import jax
import jax.numpy as jnp

from benchmarks import benchmark


def _computations(hlo: str) -> dict[str, str]:
  """Name -> body of every computation in an HLO module's text."""
  bodies = {}
  for match in re.finditer(r"^(?:ENTRY )?%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.S | re.M):
    bodies[match.group(1)] = match.group(2)
  return bodies


_OP = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\((.*)$", re.M)


def op_shapes(hlo: str) -> dict[str, str]:
  """Op name -> its output shape as the HLO text writes it, e.g. 'f32[8,56,56,64]{3,2,1,0}'."""
  return {m.group(1): m.group(2) for m in _OP.finditer(hlo)}


def op_kinds(hlo: str) -> dict[str, str]:
  """Op name -> 'convolution' or 'dot' (contains one), 'transpose' (a fusion that transposes),
  'fusion' (other fused op) or its opcode."""
  bodies = _computations(hlo)
  kinds = {}
  for match in _OP.finditer(hlo):
    name, _, opcode, rest = match.groups()
    called = re.search(r"calls=%?([\w.\-]+)", rest)
    body = bodies.get(called.group(1), "") if called else ""
    if opcode == "convolution" or " convolution(" in body:
      kinds[name] = "convolution"
    elif opcode == "dot" or " dot(" in body:
      kinds[name] = "dot"  # octflax's 1x1 convolutions, and the classifier
    elif opcode == "transpose" or (opcode == "fusion" and " transpose(" in body):
      kinds[name] = "transpose"
    elif opcode == "fusion":
      kinds[name] = "fusion"
    else:
      kinds[name] = opcode
  return kinds


def profile(case: benchmark.Case, ops: set[str] | dict[str, str], calls: int) -> dict[str, float]:
  """Milliseconds per call spent in each of ``ops`` (names of compiled ops) that the trace records."""
  with tempfile.TemporaryDirectory() as directory:
    with jax.profiler.trace(directory, create_perfetto_trace=True):
      for _ in range(calls):
        jax.block_until_ready(case.fn())
    (path,) = glob.glob(os.path.join(directory, "**", "*.trace.json.gz"), recursive=True)
    with gzip.open(path) as f:
      events = json.load(f)["traceEvents"]
  per_op = collections.Counter()
  for event in events:
    name = event.get("name", "")
    if event.get("ph") == "X" and name in ops:
      per_op[name] += event["dur"] / 1e3 / calls
  return dict(per_op)


def untraced_convolutions(hlo: str, per_op: dict[str, float]) -> list[str]:
  """Convolution ops of the compiled program's entry computation that the trace has no time for."""
  start = hlo.index("ENTRY")
  entry = hlo[start:hlo.find("\n}", start)]
  kinds = op_kinds(hlo)
  return [m.group(1) for m in _OP.finditer(entry) if kinds[m.group(1)] == "convolution" and m.group(1) not in per_op]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="oct_resnet50")
  parser.add_argument("--alphas", default="0,0.5")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--mode", choices=["inference", "train"], default="inference")
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--num-classes", type=int, default=1000)
  parser.add_argument("--compile", choices=list(benchmark.COMPILE_SETTINGS), default="octflax",
                      help="XLA options, as benchmarks.benchmark's --compile")
  parser.add_argument("--calls", type=int, default=10)
  parser.add_argument("--top", type=int, default=0, help="also list the N ops that took longest")
  args = parser.parse_args(argv)

  rows = {}
  for alpha in [float(a) for a in args.alphas.split(",")]:
    case = benchmark.make_case(args.model, alpha, args.batch, args.mode, args.image_size, args.num_classes,
                               jnp.float32, compile=args.compile)
    for _ in range(2):
      jax.block_until_ready(case.fn())
    kinds = op_kinds(case.hlo)
    per_op = profile(case, kinds, args.calls)
    totals = collections.Counter()
    for name, ms in per_op.items():
      totals[kinds[name]] += ms
    rows[alpha] = (dict(totals), case.gmacs)
    untraced = untraced_convolutions(case.hlo, per_op)
    if untraced:
      print(f"alpha {alpha:g}: {len(untraced)} convolution ops ran without a trace event and are "
            "missing below (XLA:CPU's own convolution kernels do not always record one).")
    if args.top > 0:
      shapes = op_shapes(case.hlo)
      print(f"alpha {alpha:g}: {len(per_op)} ops ran, {sum(per_op.values()):.1f} ms of op time per call; "
            f"the {args.top} longest (ms per call):")
      for name, ms in sorted(per_op.items(), key=lambda item: -item[1])[:args.top]:
        print(f"{ms:9.2f}  {kinds[name]:<12} {shapes[name]:<32} {name}")
  base_alpha = min(rows)
  base, base_gmacs = rows[base_alpha]
  kinds = sorted({k for times, _ in rows.values() for k in times}, key=lambda k: -base.get(k, 0.0))
  print(f"{args.model}, batch {args.batch}, {args.mode}: op time per call (ms; summed over threads), "
        f"and its ratio to alpha {base_alpha:g}")
  print(f"{'alpha':>6}{'MACs ratio':>12}" + "".join(f"{k[:14]:>16}" for k in kinds))
  for alpha, (times, gmacs) in rows.items():
    cells = "".join(f"{times.get(k, 0.0):>9.2f} ({times.get(k, 0.0) / base[k] if base.get(k) else 0:.2f})"
                    for k in kinds)
    print(f"{alpha:>6g}{gmacs / base_gmacs:>12.3f}{cells}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
