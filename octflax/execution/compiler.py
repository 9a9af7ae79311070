"""XLA compiler options octflax compiles with: the one place that knows them.

XLA's defaults are kept everywhere except where a measurement showed a better choice:

- `inference_compiler_options`: a network's forward pass on CPU, with XLA:CPU's YNNPACK
  fusions extended to elementwise ops (BatchNorm, ReLU, residual adds, the L->H upsample and
  add). Pass it to ``jax.jit(apply_fn, compiler_options=...)``.
- `train_compiler_options`: a train step on CPU (jaxlib before 0.12), with convolutions left to
  XLA:CPU's own kernels instead of YNNPACK. The trainer's jit step uses it.
- `init_compiler_options`: a one-off ``init`` on CPU, compiled without optimisation passes.

Each takes the platform the program is compiled for (``'cpu'``, ``'cuda'``, ``'tpu'``; default:
jax's default backend, the host's) and returns None (XLA's defaults) for other platforms, and on
CPU when the installed XLA does not know the option, so the same code runs on every jax version
octflax supports, and a program compiled on a CPU for a TPU gets no CPU option.
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


def inference_compiler_options(platform: str | None = None) -> dict[str, Any] | None:
  """XLA options for compiling a network's forward pass (inference) on the default backend.

  On CPU, XLA:CPU also hands elementwise ops to YNNPACK, which runs each convolution or dot
  together with the BatchNorm, activation and adds around it and writes every block output
  once. With XLA's defaults a residual block's output is never written: each op reading it
  recomputes it from the convolution outputs of earlier blocks, and an octave network has more
  such readers (the H->L pool). It is not a gain for every network, and not used for training
  (see `train_compiler_options`); docs/benchmarks.md has the measurements. Time a network both
  ways with ``benchmarks.benchmark --models NAME --compile octflax,xla-default``.

  Returns:
    ``{'xla_cpu_experimental_ynn_fusion_type': ...}`` on CPU when XLA knows the option, else
    None (XLA's defaults).

  Example::

    forward = jax.jit(lambda v, x: model.apply(v, x, train=False),
                      compiler_options=octflax.inference_compiler_options())
  """
  return _cpu_ynn_fusions(CPU_INFERENCE_YNN_FUSIONS, platform)


def train_compiler_options(platform: str | None = None) -> dict[str, Any] | None:
  """XLA options for compiling a train step (forward, backward and update) on the default backend.

  On CPU with jaxlib older than 0.12, YNNPACK keeps the dots and reductions, and XLA:CPU runs
  the convolutions with its own kernels, forward and backward. From jaxlib 0.12 on, whose
  YNNPACK convolutions are faster, XLA's defaults stay; jaxlib 0.11 was not measured and gets
  the option. The measurements on both jax versions are in docs/benchmarks.md.

  Returns:
    ``{'xla_cpu_experimental_ynn_fusion_type': ...}`` on CPU with jaxlib older than 0.12 when
    XLA knows the option, else None (XLA's defaults).

  Example::

    step = jax.jit(train_step, donate_argnums=0, compiler_options=octflax.train_compiler_options())
  """
  if _jaxlib_version() >= (0, 12):
    return None
  return _cpu_ynn_fusions(CPU_TRAIN_YNN_FUSIONS, platform)


def _jaxlib_version() -> tuple[int, ...]:
  """(major, minor) of the installed jaxlib, e.g. (0, 10)."""
  return tuple(int(part) for part in jax.lib.__version__.split(".")[:2])


def _compiles_for_cpu(platform: str | None) -> bool:
  """Whether a program for ``platform`` (None: the default backend) is compiled by XLA:CPU on this host."""
  return (platform or jax.default_backend()) == "cpu" and jax.default_backend() == "cpu"


def _cpu_ynn_fusions(fusions: tuple[str, ...], platform: str | None) -> dict[str, Any] | None:
  """``{YNN_FUSION_OPTION: fusions}`` for a CPU program when this XLA accepts them, else None."""
  if not _compiles_for_cpu(platform):
    return None
  value = ",".join(fusions)
  return {YNN_FUSION_OPTION: value} if xla_accepts(YNN_FUSION_OPTION, value) else None


def init_compiler_options(platform: str | None = None) -> dict[str, Any] | None:
  """XLA options for compiling a one-off initialisation: no optimisation passes on CPU.

  Initialisation runs once, and XLA:CPU's passes cost far more than they save there
  (docs/benchmarks.md); the initial values agree with an optimised compile to float32 rounding.
  """
  return {"xla_backend_optimization_level": 0} if _compiles_for_cpu(platform) else None
