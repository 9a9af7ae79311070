"""Compile a function for a target and report what it would cost: kernels, memory, an estimated time.

`compile_for` lowers and compiles a jitted function for a `Target`'s devices and returns a
`Report`: compile seconds, the kernel census (`octflax.aot.census`), flops and bytes, XLA's
memory analysis against the chip's memory, and an estimated step time from a stated model:

- GPU: ``scale * sum over kernels of max(flops / peak, bytes / bandwidth) + launches * t_kernel``
  (`GPU_MODEL`; the two constants fitted on the one H200 measurement, see `GpuModel`);
- TPU: the sum of the compiler's estimated cycles of every kernel at the chip's clock.

Either is an estimate, not a measurement; every printed estimate carries its model.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax

from octflax.aot import census
from octflax.aot.targets import Target

MIB, GIB = 2**20, 2**30


@dataclasses.dataclass(frozen=True)
class GpuModel:
  """A GPU step's time as ``scale * roofline + launches * per_kernel_us``.

  The roofline of a kernel is ``max(flops / peak, bytes / bandwidth)`` of its chip; ``scale``
  stands for how far kernels stay from it, ``per_kernel_us`` for each launch's fixed cost.

  The default constants solve the two equations of the one GPU measurement the project has (one
  NVIDIA H200, jax 0.11.2, bfloat16, batch 128, Oct-ResNet-50 train step, state donated:
  alpha 0 24.83 ms, alpha .5 36.26 ms; benchmarks/results/gpu/) with the census of the same two
  steps compiled for ``h200`` by jax 0.12.0.1 (1,073 kernels and a roofline of 11.612 ms; 2,647
  and 10.239 ms, flops then counting every tap). Refitted on today's census (flops of taps that
  read the input; ``python -m benchmarks.aot --target h200 --models oct_resnet50,flax_resnet50
  --forms reference --fit 0:24.83,0.5:36.26``) they are 1.344 and 8.74 us, which moves the
  estimates of docs/benchmarks.md by under 1%; the `flax.linen.Conv` ResNet-50 of that run is
  the out-of-sample check: 24.74 ms estimated, 24.06 measured. Two points and two constants:
  good for ranking programs, weak in absolute terms ("Accelerators without one").
  """

  scale: float = 1.358
  per_kernel_us: float = 8.45

  def describe(self) -> str:
    return f"{self.scale:g} x roofline + {self.per_kernel_us:g} us per kernel"


GPU_MODEL = GpuModel()


def calibrate(points: Sequence[tuple[float, int, float]]) -> GpuModel:
  """The `GpuModel` through two measured points ``(roofline_ms, launches, measured_ms)``."""
  (r1, n1, t1), (r2, n2, t2) = points
  det = r1 * n2 - r2 * n1
  if not det:
    raise ValueError("calibrate: the two points are not independent.")
  scale = (t1 * n2 - t2 * n1) / det
  per_kernel_ms = (r1 * t2 - r2 * t1) / det
  return GpuModel(round(scale, 3), round(per_kernel_ms * 1e3, 2))


@dataclasses.dataclass
class Report:
  """What compiling one function for one target showed.

  Attributes:
    target: the `Target`.
    compile_seconds: lowering and compiling, on this host.
    kernels: the census (`octflax.aot.census.kernels`).
    memory: per chip, bytes: ``argument``, ``output``, ``alias`` (outputs written over donated
      arguments), ``temp``, and ``peak`` (``argument + output - alias + temp``).
    hlo: the optimized HLO text.
    gpu_model: the GPU estimate's constants.
  """

  target: Target
  compile_seconds: float
  kernels: list[census.Kernel]
  memory: dict[str, int]
  hlo: str
  gpu_model: GpuModel = GPU_MODEL

  @property
  def launches(self) -> int:
    return sum(k.count for k in self.kernels)

  @property
  def classes(self) -> dict[str, int]:
    return census.by_class(self.kernels)

  @property
  def flops(self) -> float:
    return sum(k.flops for k in self.kernels)

  @property
  def bytes(self) -> float:
    return sum(k.bytes for k in self.kernels)

  @property
  def roofline_ms(self) -> float:
    """Sum over kernels of ``max(flops / peak, bytes / bandwidth)``, in ms."""
    chip = self.target.chip
    return 1e3 * sum(max(k.flops / chip.peak_flops, k.bytes / chip.bandwidth) for k in self.kernels)

  @property
  def estimate_ms(self) -> float | None:
    """The estimated step time (see the module docstring); None on a TPU whose clock is unknown."""
    if self.target.platform == "tpu":
      cycles = sum(k.cycles for k in self.kernels)
      return 1e3 * cycles / self.target.chip.clock_hz if self.target.chip.clock_hz and cycles else None
    return self.gpu_model.scale * self.roofline_ms + self.launches * self.gpu_model.per_kernel_us * 1e-3

  @property
  def estimate_model(self) -> str:
    """The estimate's model and constants, as printed beside it."""
    if self.target.platform == "tpu":
      return f"sum of the compiler's estimated cycles at {self.target.chip.clock_hz / 1e9:g} GHz"
    return self.gpu_model.describe()

  @property
  def fits(self) -> bool:
    return self.memory["peak"] <= self.target.chip.memory_bytes

  def memory_line(self) -> str:
    m, have = self.memory, self.target.chip.memory_bytes
    verdict = (f"fits, {size(have - m['peak'])} to spare" if self.fits else
               f"DOES NOT FIT, {size(m['peak'] - have)} over")
    return (f"memory per chip {size(m['peak'])} of {size(have)} ({verdict}): arguments {size(m['argument'])}, "
            f"outputs {size(m['output'])} ({size(m['alias'])} of them over donated arguments), "
            f"temporaries {size(m['temp'])}")

  def estimate_line(self) -> str:
    est = self.estimate_ms
    value = "none (the compiler gave no cycle estimates)" if est is None else f"{est:.2f} ms"
    return f"estimated step {value} ({self.estimate_model}; an estimate, not a measurement)"

  def kernel_line(self) -> str:
    parts = ", ".join(f"{name} {n}" for name, n in self.classes.items() if n)
    return f"{self.launches} kernels: {parts}"

  def collective_line(self) -> str:
    found = census.collectives(self.kernels)
    return "collectives per step: " + (", ".join(f"{n} {op}" for op, n in sorted(found.items())) or "none")

  def row(self) -> dict[str, Any]:
    """The JSON record of this report (without the HLO)."""
    return {"target": self.target.name, "device": self.target.chip.kind, "chips": self.target.num_chips,
            "jax": jax.__version__, "compile_s": round(self.compile_seconds, 1), "kernels": self.launches,
            "classes": self.classes, "parts": census.by_part(self.kernels), "collectives": census.collectives(self.kernels), "flops": self.flops,
            "bytes": self.bytes, "memory": dict(self.memory), "memory_limit": self.target.chip.memory_bytes,
            "fits": self.fits, "roofline_ms": round(self.roofline_ms, 3),
            "estimated_ms": None if self.estimate_ms is None else round(self.estimate_ms, 3),
            "estimate_model": self.estimate_model}


def size(nbytes: float) -> str:
  """``nbytes`` in GiB, or MiB below 1 GiB: ``'9.05 GiB'``, ``'48.3 MiB'``."""
  return f"{nbytes / GIB:.2f} GiB" if abs(nbytes) >= GIB else f"{nbytes / MIB:.1f} MiB"


def memory_of(compiled: Any) -> dict[str, int]:
  """Per-chip bytes of a compiled program (`Report.memory`) from XLA's memory analysis."""
  m = compiled.memory_analysis()
  sizes = {"argument": int(m.argument_size_in_bytes), "output": int(m.output_size_in_bytes),
           "alias": int(m.alias_size_in_bytes), "temp": int(m.temp_size_in_bytes)}
  sizes["peak"] = sizes["argument"] + sizes["output"] - sizes["alias"] + sizes["temp"]
  return sizes


def compile_for(target: Target, jitted: Callable[..., Any] | Any, *args: Any) -> Report:
  """Lowers and compiles ``jitted`` (a `jax.jit` function) for ``args`` and reports on it.

  Args:
    target: what ``args``' shardings place on (their devices must be ``target.devices()``).
    jitted: the jitted function.
    *args: its arguments, `jax.ShapeDtypeStruct` with shardings over the target's devices.
  """
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  seconds = time.perf_counter() - start
  hlo = compiled.as_text()
  return Report(target, seconds, census.kernels(hlo), memory_of(compiled), hlo)


__all__ = ["GPU_MODEL", "GpuModel", "Report", "calibrate", "compile_for", "memory_of"]
