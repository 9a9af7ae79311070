"""Test set-up for tests/ and the doctests of octflax/: 8 simulated CPU devices for parallel code.

The tests compile hundreds of small programs, so XLA:CPU compiles them without LLVM's
optimisation passes (``--xla_backend_optimization_level=0``): that changes how fast the code
runs, not what it computes, and roughly halves the time of the suite. Subprocesses the tests
start (the command-line tests) inherit both settings.
"""
import importlib.metadata
import os


def _xla_flags() -> str:
  flags = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
  # XLA:CPU's older loop emitters compile the same fusions several times faster than its MLIR
  # fusion emitters. jaxlib 0.10 has the switch; later ones have only the fusion emitters and
  # abort on the unknown flag, so the version is read without importing jax.
  version = tuple(int(p) for p in importlib.metadata.version("jaxlib").split(".")[:2])
  if version < (0, 11):
    flags += " --xla_cpu_use_fusion_emitters=false"
  return flags


# Must be set before jax is imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", _xla_flags())
os.environ.setdefault("JAX_PLATFORMS", "cpu")
