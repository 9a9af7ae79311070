"""Where the time goes: OctConv's convolutions against everything else, measured in context.

Backs docs/benchmarks.md, "Where the time goes": the wall-time split of Oct-ResNet-50
(and the CIFAR Oct-ResNet-20 train step) into OctConv's convolutions and the rest.

Each network is compiled twice: as it is, and with every convolution that an OctConv path
runs (`octflax.execution.use_conv`; all OctConv paths, 1x1 and 3x3; not the vanilla 7x7 stem of
ImageNet ResNets, which is `nn.Conv`) replaced by a stand-in: a dot over at most 8 input
channels, which keeps the output's shape, its dependence on the input and the kernel, and the
form XLA fuses BatchNorm and adds into, for few MACs. Both forms are timed round-robin in one run. The stand-in form's time is everything but the convolutions
(stem, pooling, upsampling, BatchNorm, activations, adds, classifier; an upper bound, since the
stand-ins cost a little); the difference is the time of the convolutions as XLA fuses and
schedules them in the network.

A per-op profile cannot give this split: XLA:CPU runs independent ops concurrently, so op times
summed over threads count overlapping work twice, and more so at alpha > 0, whose paths are
independent of each other.

Example:
  python -m benchmarks.probes.decompose --model oct_resnet50 --alphas 0,0.25,0.5,0.75 --batch 8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from benchmarks import benchmark
from octflax import cost
from octflax import execution


def _stand_in(x, kernel, feature_group_count=1, precision=None, kernel_dilation=None):
  """A dot over (at most) 8 input channels: the convolution's output shape and form, few MACs."""
  del feature_group_count, kernel_dilation
  dtype = jnp.result_type(x, kernel)
  k = min(8, x.shape[-1], kernel.shape[2])
  return lax.dot_general(x[..., :k].astype(dtype), kernel[(0,) * (kernel.ndim - 2)][:k].astype(dtype),
                         (((x.ndim - 1,), (0,)), ((), ())), precision=precision)


def _no_macs(x, kernel, feature_group_count=1, precision=None, kernel_dilation=None):
  """The output shape with no dot at all (to count the MACs outside the convolutions)."""
  del feature_group_count, precision, kernel_dilation
  return jnp.broadcast_to(x[..., :1], x.shape[:-1] + kernel.shape[-1:]).astype(jnp.result_type(x, kernel))


def convolutions_replaced(stand_in: Callable[..., jax.Array] = _stand_in):
  """Every OctConv path traced inside runs ``stand_in`` instead of its convolution."""
  return execution.use_conv(stand_in)


def run(model: str, alphas: list[float], batch: int, mode: str, image_size: int, num_classes: int,
        channels: int, repeats: int, warmup: int = 2, compile: str = "octflax") -> list[dict]:
  """Times each alpha with and without its convolutions; one row per alpha."""
  if 0.0 not in alphas:
    alphas = [0.0] + alphas
  cases, other_gmacs = {}, {}
  for alpha in alphas:
    cases[alpha, "full"] = benchmark.make_case(model, alpha, batch, mode, image_size, num_classes,
                                               jnp.float32, channels, compile)
    with convolutions_replaced():
      cases[alpha, "rest"] = benchmark.make_case(model, alpha, batch, mode, image_size, num_classes,
                                                 jnp.float32, channels, compile)
    with convolutions_replaced(_no_macs):
      other_gmacs[alpha] = cost.analyze(benchmark.build_model(model, alpha, num_classes, jnp.float32),
                                        (1, image_size, image_size, channels)).gmacs
  for case in cases.values():
    for _ in range(warmup):
      jax.block_until_ready(case.fn())
  for _ in range(repeats):
    for case in cases.values():
      start = time.perf_counter()
      jax.block_until_ready(case.fn())
      case.times.append(time.perf_counter() - start)
  rows = []
  for alpha in alphas:
    full, rest = cases[alpha, "full"], cases[alpha, "rest"]
    full_ms, rest_ms = statistics.median(full.times) * 1e3, statistics.median(rest.times) * 1e3
    rows.append({"model": model, "alpha": alpha, "batch": batch, "mode": mode, "total_ms": full_ms,
                 "rest_ms": rest_ms, "conv_ms": full_ms - rest_ms,
                 "conv_gmacs": full.gmacs - other_gmacs[alpha], "gmacs": full.gmacs})
  base = rows[0]
  ratios = {"total_ratio": "total_ms", "conv_ratio": "conv_ms", "rest_ratio": "rest_ms",
            "conv_macs_ratio": "conv_gmacs", "macs_ratio": "gmacs"}
  for row in rows:
    row.update({name: row[key] / base[key] for name, key in ratios.items()})
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="oct_resnet50")
  parser.add_argument("--alphas", default="0,0.5")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--mode", choices=["inference", "train"], default="inference")
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--channels", type=int, default=3)
  parser.add_argument("--num-classes", type=int, default=1000)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--compile", choices=list(benchmark.COMPILE_SETTINGS), default="octflax",
                      help="XLA options, as benchmarks.benchmark's --compile")
  args = parser.parse_args(argv)
  rows = run(args.model, [float(a) for a in args.alphas.split(",")], args.batch, args.mode,
             args.image_size, args.num_classes, args.channels, args.repeats, compile=args.compile)
  print(f"{args.model}, batch {args.batch}, {args.mode}, {jax.default_backend()}: median ms, and ratio to alpha 0")
  print(f"{'alpha':>6}{'total':>16}{'convolutions':>16}{'the rest':>16}{'conv MACs ratio':>17}{'MACs ratio':>12}")
  for r in rows:
    print(f"{r['alpha']:>6g}{r['total_ms']:>9.1f} ({r['total_ratio']:.3f}){r['conv_ms']:>9.1f} ({r['conv_ratio']:.3f})"
          f"{r['rest_ms']:>9.1f} ({r['rest_ratio']:.3f}){r['conv_macs_ratio']:>17.3f}{r['macs_ratio']:>12.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
