"""See the GPU and the TPU without one: compile for a target on any CPU host, and count what it launches.

XLA compiles for accelerators it does not have: with the CUDA plugin installed, an NVIDIA GPU
described by a target config (`targets.gpu_target_config`); with libtpu, a Cloud TPU slice's
topology. The optimized program is the one the device would run, kernel for kernel::

  from octflax import aot
  aot.prepare_environment()                      # before jax initialises: run jax on the CPU
  target = aot.get_target("tpu:v5e:2x2")          # or "h100", "h200", "v4:2x2x1", ...
  mesh = jax.sharding.Mesh(target.devices(), ("data",))
  report = aot.compile_for(target, jax.jit(step, donate_argnums=0), *abstract_args_on(mesh))
  report.kernel_line(), report.memory_line(), report.estimate_line()

`benchmarks/aot.py` compiles the zoo's train steps for a target and tabulates the census;
``python -m experiments.train --aot=TARGET`` compiles a training run's own step over the
target's mesh. Install the plugins with ``pip install -e '.[aot]'`` (README).
"""

from octflax.aot.census import CLASSES, PARTS, Kernel, by_class, by_part, collectives, kernels, part_of
from octflax.aot.report import GPU_MODEL, GpuModel, Report, calibrate, compile_for
from octflax.aot.targets import (GPU_TARGETS, TPU_CHIPS, Target, TargetUnavailable, get_target, list_targets,
                                 prepare_environment)

__all__ = [
    "CLASSES", "GPU_MODEL", "GPU_TARGETS", "GpuModel", "Kernel", "PARTS", "Report", "TPU_CHIPS", "Target",
    "TargetUnavailable", "by_class", "by_part", "calibrate", "collectives", "compile_for", "get_target", "kernels", "list_targets", "part_of",
    "prepare_environment",
]
