"""A 1x1 convolution timed as `lax.conv_general_dilated` and as `lax.dot_general`.

Backs docs/benchmarks.md, "1x1 convolutions as dots": on ResNet-50's 1x1 shapes a dot
over the channel axis takes less time than the same convolution on XLA:CPU.

`octflax.execution.xla_cpu_conv` runs every 1x1, ungrouped convolution as a dot over the channel
axis; this script is the measurement behind that choice, on ResNet-50's 1x1 shapes (and the
half-resolution low-frequency shapes of Oct-ResNet-50). Both forms compute the same numbers.

  python -m benchmarks.probes.conv1x1_dot --batch 1,8
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from octflax import execution

# (spatial size, input channels, output channels) of ResNet-50's 1x1 convolutions, high and low.
SHAPES = ((56, 64, 256), (56, 256, 64), (28, 512, 128), (14, 1024, 256), (7, 2048, 512),
          (7, 512, 2048), (4, 1024, 256))


def as_conv(x, kernel):
  return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def as_dot(x, kernel):
  return execution.xla_cpu_conv(x, kernel)  # what octflax runs on CPU for a 1x1 kernel: a dot


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
  parser.add_argument("--repeats", type=int, default=15)
  args = parser.parse_args(argv)
  print(f"backend {jax.default_backend()}, jax {jax.__version__}, float32; median of {args.repeats} "
        "round-robin calls")
  print(f"{'batch':>5} {'shape':>18} {'conv ms':>9} {'dot ms':>9} {'dot/conv':>9}")
  rng = np.random.default_rng(0)
  for batch in (int(b) for b in args.batch.split(",")):
    for size, c_in, c_out in SHAPES:
      x = jnp.asarray(rng.standard_normal((batch, size, size, c_in), dtype=np.float32))
      kernel = jnp.asarray(rng.standard_normal((1, 1, c_in, c_out), dtype=np.float32) / np.sqrt(c_in))
      fns = [jax.jit(f).lower(x, kernel).compile() for f in (as_conv, as_dot)]
      outs = [np.asarray(f(x, kernel)) for f in fns]
      np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-4)
      times = [[], []]
      for _ in range(args.repeats):
        for i, f in enumerate(fns):
          start = time.perf_counter()
          f(x, kernel).block_until_ready()
          times[i].append(time.perf_counter() - start)
      conv_ms, dot_ms = (1e3 * float(np.median(t)) for t in times)
      shape = f"{size}x{size} {c_in}->{c_out}"
      print(f"{batch:>5} {shape:>18} {conv_ms:>9.3f} {dot_ms:>9.3f} {dot_ms / conv_ms:>9.2f}", flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
