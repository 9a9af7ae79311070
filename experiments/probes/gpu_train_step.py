"""Times the Oct-ResNet-50 train step on a GPU case by case, printing as each case is ready.

Backs the GPU train-step numbers in docs/benchmarks.md ("GPU (one NVIDIA H200)"): a bfloat16
optimizer step at batch 128, 224 x 224, for Oct-ResNet-50 at alpha 0 and .5 and for the same
ResNet-50 written with `flax.linen.Conv` (`flax_resnet50`). It uses `experiments.benchmark`'s
cases; unlike the benchmark, which compiles every case before timing any, it times the cases
compiled so far after each compile and prints the running medians, so a run cut short by a
time limit still reports what it measured.

  python -m experiments.probes.gpu_train_step [OUT_FILE]
"""

import statistics
import sys
import time

import jax
import jax.numpy as jnp

from experiments import benchmark

CASES = (("oct_resnet50", 0.0), ("oct_resnet50", 0.5), ("flax_resnet50", 0.0))


def main(argv: list[str]) -> None:
  out = open(argv[1], "a") if len(argv) > 1 else None

  def say(*parts):
    print(*parts, flush=True)
    if out:
      print(*parts, file=out, flush=True)

  say("jax", jax.__version__, jax.devices())
  cases = []
  for name, alpha in CASES:
    start = time.time()
    case = benchmark.make_case(name, alpha, 128, "train", 224, 1000, jnp.bfloat16, 3, "octflax", "default")
    jax.block_until_ready(case.fn())
    jax.block_until_ready(case.fn())
    say("ready", name, alpha, f"{time.time() - start:.1f} s")
    cases.append(case)
    for _ in range(8):
      for c in cases:
        t = time.perf_counter()
        jax.block_until_ready(c.fn())
        c.times.append(time.perf_counter() - t)
    say("medians ms", [(c.model, c.alpha, round(statistics.median(c.times) * 1e3, 2), len(c.times))
                       for c in cases])
  peak = benchmark.peak_device_bytes()
  if peak:
    say("peak GiB", peak / 2**30)


if __name__ == "__main__":
  main(sys.argv)
