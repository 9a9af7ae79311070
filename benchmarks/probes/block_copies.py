"""Time, in one run: Oct-ResNet-50 inference (batch 8, alpha .5) and a function that only copies every
OctConv kernel into its path blocks (what the one-kernel layout adds to each forward pass on XLA:CPU).

  python -m benchmarks.probes.block_copies [REPEATS]
"""
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.networks import build_model
from octflax import functional, layers
from octflax.execution import inference_compiler_options, init_compiler_options

def main() -> None:
  model = build_model("oct_resnet50", 0.5, 1000, jnp.float32)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 224, 224, 3), dtype=np.float32))
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False), compiler_options=init_compiler_options())(x)
  found = layers.octave_layers(model, x[:1], train=False)

  def blocks(params):
    out = []
    for path, (spec, channels) in found.items():
      if not hasattr(spec, "feature_group_count") or type(spec).__name__ != "OctConvSpec":
        continue
      node = params
      for p in path:
        node = node[p]
      kernels, _ = functional.kernel_blocks(node["kernel"], None, channels, spec.alpha_in, spec.alpha_out,
                                            spec.feature_group_count)
      out.extend(kernels.values())
    return out

  opts = inference_compiler_options()
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).compile(opts)
  copy = jax.jit(blocks).lower(variables["params"]).compile(opts)
  n_blocks = len(copy(variables["params"]))
  nbytes = sum(a.nbytes for a in jax.tree.leaves(variables["params"]))
  times = {"forward": [], "copy blocks": []}
  for _ in range(2):
    jax.block_until_ready(forward(variables, x)); jax.block_until_ready(copy(variables["params"]))
  for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 9):
    for name, fn in (("forward", lambda: forward(variables, x)), ("copy blocks", lambda: copy(variables["params"]))):
      t = time.perf_counter(); jax.block_until_ready(fn()); times[name].append(time.perf_counter() - t)
  print(f"{n_blocks} blocks of {len(found)} octave layers, params {nbytes / 2**20:.1f} MiB")
  for name, ts in times.items():
    print(f"{name}: median {1000 * statistics.median(ts):.1f} ms over {len(ts)}")


if __name__ == "__main__":
  main()
