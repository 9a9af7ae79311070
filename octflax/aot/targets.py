"""The accelerators octflax compiles for without having them: NVIDIA GPUs and Cloud TPU slices.

A target is named on the command line as ``h100``, ``h200`` (one GPU, `GPU_TARGETS`) or
``tpu:GENERATION:TOPOLOGY`` (``tpu:v5e:2x2``, ``tpu:v4:2x2x1``; the ``tpu:`` may be left out).
`get_target` reads the name; `Target.devices` gives the devices of its topology, which a
`jax.sharding.Mesh` is built from and a function lowered and compiled for, on a CPU host.

What it needs installed (``pip install -e '.[aot]'``, README "Accelerators without one"):
the CUDA plugin of the installed jax for the GPUs (``jax-cuda12-plugin``), libtpu for the
TPUs; jax must run on the CPU (``JAX_PLATFORMS=cpu``, which `prepare_environment` sets when
no platform was asked for).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from typing import Any

import jax

GPU_TARGET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_targets")


class TargetUnavailable(RuntimeError):
  """A target cannot be compiled for here: its plugin is missing, or the name is unknown."""


@dataclasses.dataclass(frozen=True)
class Chip:
  """What the estimate and the memory check need of one accelerator chip.

  Attributes:
    kind: e.g. ``'NVIDIA H100 80GB HBM3'``, ``'TPU v5e'``.
    memory_bytes: the memory one program may use (per chip).
    peak_flops: dense bfloat16 FLOP/s of the chip.
    bandwidth: bytes/s of its main memory.
    clock_hz: the clock the TPU compiler's estimated cycles count (0: unknown).
    source: where the numbers come from.
  """

  kind: str
  memory_bytes: int
  peak_flops: float
  bandwidth: float
  clock_hz: float = 0.0
  source: str = ""


GIB = 2**30
# Dense bfloat16 peak of the H100 and H200 SXM (NVIDIA datasheets: 1,979 TFLOP/s with sparsity).
HOPPER_BF16_FLOPS = 989.4e12
GPU_CHIPS = {
    "h100": Chip("NVIDIA H100 80GB HBM3", 84929347584, HOPPER_BF16_FLOPS, 3.35e12,
                 source="NVIDIA H100 SXM5 datasheet; gpu_targets/h100.txtpb"),
    "h200": Chip("NVIDIA H200", 150754820096, HOPPER_BF16_FLOPS, 4.8e12,
                 source="NVIDIA H200 SXM datasheet; gpu_targets/h200.txtpb"),
}
GPU_TARGETS = tuple(GPU_CHIPS)

# Per chip, as libtpu (0.0.42.1 and 0.0.50.1) describes it to its compiler: the TensorCore clock,
# the HBM bandwidth its cost model uses (its "optimal_seconds" are bytes / this bandwidth), and
# the HBM one program may use (what its out-of-memory message calls available: a little under
# the chip's 16 / 32 / 96 / 31.5 GiB); the bf16 peaks are Google Cloud's published figures.
# That the compiler's estimated cycles are TensorCore cycles at this clock is an assumption.
_LIBTPU = "libtpu's embedded chip description (clock, bandwidth) and its HBM limit; peak: Cloud TPU docs"
TPU_CHIPS = {
    "v4": Chip("TPU v4", int(30.75 * GIB), 275e12, 982473768960, 1.05e9, _LIBTPU),
    "v5e": Chip("TPU v5 lite", int(15.75 * GIB), 197e12, 737660633088, 1.5e9, _LIBTPU),
    "v5p": Chip("TPU v5", int(95.74 * GIB), 459e12, 2350420852736, 1.75e9, _LIBTPU),
    "v6e": Chip("TPU v6 lite", int(31.25 * GIB), 918e12, 1638000000000, 1.75e9, _LIBTPU),
}
# TPU generations whose chips have two TensorCores that the compiler drives as one ("megacore").
_MEGACORE = ("v4", "v5p")


@dataclasses.dataclass(frozen=True)
class Target:
  """One compile target: a GPU or a TPU slice.

  Attributes:
    name: as given, normalised (``'h100'``, ``'tpu:v5e:2x2'``).
    platform: ``'cuda'`` or ``'tpu'`` (what `jax.lax.platform_dependent` sees).
    chip: the chip's numbers (`Chip`).
    topology: ``'1x1x1'`` for a GPU, the TPU slice's chips per dimension (``'2x2'``).
  """

  name: str
  platform: str
  chip: Chip
  topology: str

  @property
  def num_chips(self) -> int:
    return math.prod(int(n) for n in self.topology.split("x"))

  @property
  def generation(self) -> str:
    return self.name.split(":")[1] if self.platform == "tpu" else self.name

  def devices(self) -> list[Any]:
    """The devices of this target's topology (no hardware needed; see the module docstring).

    Raises:
      TargetUnavailable: the plugin for this platform is not installed or cannot describe the
        topology (the message says what to install).
    """
    return list(_topology(self).devices)


def list_targets() -> tuple[str, ...]:
  """Example target names: the GPUs, and a TPU slice of each generation."""
  return GPU_TARGETS + ("tpu:v5e:1x1", "tpu:v5e:2x2", "tpu:v5e:4x4", "tpu:v4:2x2x1", "tpu:v5p:2x2x1",
                        "tpu:v6e:2x2")


def get_target(name: str) -> Target:
  """The target named ``name``: ``h100``, ``h200``, or ``[tpu:]GENERATION:TOPOLOGY``.

  Raises:
    TargetUnavailable: a name that is none of these (the message lists the forms).

  Examples:
    >>> get_target("tpu:v5e:2x2").num_chips, get_target("v4:2x2x1").platform
    (4, 'tpu')
    >>> get_target("h100").chip.kind
    'NVIDIA H100 80GB HBM3'
  """
  text = name.strip().lower()
  if text in GPU_CHIPS:
    return Target(text, "cuda", GPU_CHIPS[text], "1x1x1")
  parts = text.split(":")
  if parts[0] == "tpu":
    parts = parts[1:]
  if len(parts) == 2 and parts[0] in TPU_CHIPS and re.fullmatch(r"[1-9]\d*(x[1-9]\d*){1,2}", parts[1]):
    return Target(f"tpu:{parts[0]}:{parts[1]}", "tpu", TPU_CHIPS[parts[0]], parts[1])
  raise TargetUnavailable(
      f"unknown target {name!r}: use {', '.join(GPU_TARGETS)}, or tpu:GENERATION:TOPOLOGY with a generation "
      f"among {', '.join(TPU_CHIPS)} and a topology such as 2x2 or 2x2x1 (e.g. {', '.join(list_targets()[2:])}).")


def prepare_environment() -> None:
  """Sets what a deviceless compile needs; call it before jax initialises its backends.

  jax runs on the CPU (``jax_platforms='cpu'``, unless ``JAX_PLATFORMS`` chose otherwise); the
  CUDA plugin skips its driver check and libtpu its metadata-server query, both of which fail
  on a host without the hardware.
  """
  os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  # Without a TPU VM's metadata, libtpu prints five lines of warnings at start; these settle it.
  # They name no topology: each compile gives its own (`Target.devices`).
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-1")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  if not jax.config.jax_platforms:  # JAX_PLATFORMS unset: jax would try every installed platform
    jax.config.update("jax_platforms", "cpu")


def gpu_target_config(name: str) -> str:
  """The GpuTargetConfigProto text of a GPU target (`GPU_TARGET_DIR`), comments removed."""
  with open(os.path.join(GPU_TARGET_DIR, f"{name}.txtpb")) as f:
    return "\n".join(line for line in f.read().splitlines() if not line.lstrip().startswith("#"))


_EXTRA_HINT = "install it with pip install -e '.[aot]' (README, 'Accelerators without one')"


@functools.lru_cache(maxsize=None)
def _topology(target: Target) -> Any:
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  try:
    if target.platform == "cuda":
      return topologies.get_topology_desc(platform="cuda", target_config=gpu_target_config(target.name),
                                          topology="1x1x1")
    dims = [int(n) for n in target.topology.split("x")]
    bounds = tuple(min(d, 2) for d in dims) + (1,) * (3 - len(dims))
    return topologies.get_topology_desc(
        platform="tpu", topology_name=f"{target.generation}:{target.topology}",
        chip_config_name="megacore" if target.generation in _MEGACORE else "default",
        chips_per_host_bounds=bounds, num_slices=1, wrap=(False, False, False))
  except Exception as e:  # noqa: BLE001 - jax raises several types here; all mean "not available"
    plugin = "the CUDA plugin (jax-cuda12-plugin)" if target.platform == "cuda" else "libtpu"
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise TargetUnavailable(
        f"cannot compile for {target.name}: {plugin} of jax {jax.__version__} is not usable here "
        f"({first[:200]}); {_EXTRA_HINT}.") from None


__all__ = ["Chip", "GPU_TARGETS", "Target", "TargetUnavailable", "TPU_CHIPS", "get_target", "gpu_target_config",
           "list_targets", "prepare_environment"]
