"""XLA compiler options octflax compiles with: the one place that knows them.

XLA's defaults are kept everywhere except where a measurement showed a better choice:

- `inference_compiler_options`: a network's forward pass on CPU, with XLA:CPU's YNNPACK
  fusions extended to elementwise ops (BatchNorm, ReLU, residual adds, the L->H upsample and
  add). Pass it to ``jax.jit(apply_fn, compiler_options=...)``.
- `train_compiler_options`: a train step on CPU (jaxlib before 0.12), with convolutions left to
  XLA:CPU's own kernels instead of YNNPACK. The trainer's jit step uses it.
- `init_compiler_options`: a one-off ``init`` on CPU, compiled without optimisation passes.

Each returns None (XLA's defaults) on other backends, and on CPU when the installed XLA does
not know the option, so the same code runs on every jax version octflax supports.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

# XLA:CPU's option for which ops it hands to YNNPACK (an XLA-internal library of fused CPU
# kernels). XLA's default is dots, convolutions and reductions, each a library call of its own,
# with the elementwise ops between them in XLA's own fused loops.
YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
CPU_INFERENCE_YNN_FUSIONS = (
    "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
    "LIBRARY_FUSION_TYPE_REDUCE",
    "LIBRARY_FUSION_TYPE_ELTWISE",
)
CPU_TRAIN_YNN_FUSIONS = (
    "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    "LIBRARY_FUSION_TYPE_REDUCE",
)


@functools.lru_cache(maxsize=None)
def xla_accepts(option: str, value: Any) -> bool:
  """Whether this jaxlib's XLA accepts ``{option: value}`` on the default backend.

  Compiles a one-op function once per (option, value). An unknown option or value gives
  False; any other compile failure is raised.
  """
  lowered = jax.jit(lambda x: x + 1).lower(jnp.zeros((), jnp.float32))
  try:
    lowered.compile({option: value})
  except jax.errors.JaxRuntimeError as e:
    if "No such compile option" in str(e) or "not a valid" in str(e):
      return False
    raise
  return True


def inference_compiler_options() -> dict[str, Any] | None:
  """XLA options for compiling a network's forward pass (inference) on the default backend.

  On CPU, XLA:CPU also hands elementwise ops to YNNPACK, which runs each convolution or dot
  together with the BatchNorm, activation and adds around it and writes every block output
  once. With XLA's defaults a residual block's output is never written: each op reading it
  recomputes it from the convolution outputs of earlier blocks, and an octave network has more
  such readers (the H->L pool). Oct-ResNet-50 inference on a 2-core CPU, time against the same
  network compiled with XLA's defaults in the same run (docs/benchmarks.md): batch 8 (four
  runs), alpha 0 0.94-1.01x, alpha .5 0.87-0.90x, alpha .75 0.87-0.92x; batch 1, alpha 0
  0.93-1.03x, alpha .5 0.92-0.94x (jax 0.10.2; with jax 0.12.0.1 the gain at batch 8 was 0-7%).
  Not a gain for every network: CIFAR-style Oct-ResNet-20 inference on 28 x 28 images took
  0.89-0.93x the time at alpha 0 but 1.07-1.12x at alpha .5 and .75; time a network both ways
  (``experiments.benchmark --models NAME,NAME:xladefault``). Not used for training: a CIFAR-style
  Oct-ResNet-20 train step took 1.02-1.08x the time with it (see `train_compiler_options`).

  Returns:
    ``{'xla_cpu_experimental_ynn_fusion_type': ...}`` on CPU when XLA knows the option, else
    None (XLA's defaults).

  Example::

    forward = jax.jit(lambda v, x: model.apply(v, x, train=False),
                      compiler_options=octflax.inference_compiler_options())
  """
  return _cpu_ynn_fusions(CPU_INFERENCE_YNN_FUSIONS)


def train_compiler_options() -> dict[str, Any] | None:
  """XLA options for compiling a train step (forward, backward and update) on the default backend.

  On CPU with jaxlib older than 0.12, YNNPACK keeps the dots and reductions, and XLA:CPU runs
  the convolutions with its own kernels, forward and backward. Time against XLA's defaults in
  the same run, 2-core CPU, jax 0.10.2, two runs each (docs/benchmarks.md): CIFAR-style
  Oct-ResNet-20, batch 128, 32 x 32 x 3, 0.84 / 0.90-0.91 / 0.90-0.91 / 0.93-0.95x at alpha 0 /
  .25 / .5 / .75; on 28 x 28 x 1, 0.79-0.89 / 0.88-0.92 / 0.89-0.93 / 0.89-0.93x; Oct-ResNet-50,
  batch 8, 224 x 224, 0.86-0.95x at alpha 0 and 0.97-1.00x at .5. Alpha 0 gains most, so the
  time ratios to alpha 0 rise, while every alpha gets faster.
  With jax 0.12.0.1, whose YNNPACK convolutions are faster, the same option took 1.01x (alpha
  0) and 1.04x (.5) the time of XLA's defaults, so from jaxlib 0.12 on the defaults stay.
  jaxlib 0.11 on CPU was not measured; it gets the option.

  Returns:
    ``{'xla_cpu_experimental_ynn_fusion_type': ...}`` on CPU with jaxlib older than 0.12 when
    XLA knows the option, else None (XLA's defaults).

  Example::

    step = jax.jit(train_step, donate_argnums=0, compiler_options=octflax.train_compiler_options())
  """
  if _jaxlib_version() >= (0, 12):
    return None
  return _cpu_ynn_fusions(CPU_TRAIN_YNN_FUSIONS)


def _jaxlib_version() -> tuple[int, ...]:
  """(major, minor) of the installed jaxlib, e.g. (0, 10)."""
  return tuple(int(part) for part in jax.lib.__version__.split(".")[:2])


def _cpu_ynn_fusions(fusions: tuple[str, ...]) -> dict[str, Any] | None:
  """``{YNN_FUSION_OPTION: fusions}`` on CPU when this XLA accepts them, else None."""
  if jax.default_backend() != "cpu":
    return None
  value = ",".join(fusions)
  return {YNN_FUSION_OPTION: value} if xla_accepts(YNN_FUSION_OPTION, value) else None


def init_compiler_options() -> dict[str, Any] | None:
  """XLA options for compiling a one-off initialisation: no optimisation passes on CPU.

  Initialisation runs once, and XLA:CPU's passes cost far more than they save there: with jax
  0.12 compiling Oct-ResNet-20's ``init`` took 37 s optimised and 3.2 s unoptimised (6.8 s and
  3.6 s with jax 0.10). The initial values agree with an optimised compile to float32 rounding
  (at most 6e-8 apart for Oct-ResNet-20).
  """
  return {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
