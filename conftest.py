"""Test set-up for tests/ and the doctests of octflax/: 8 simulated CPU devices for parallel code.

The tests compile hundreds of small programs, so XLA:CPU compiles them without LLVM's
optimisation passes (``--xla_backend_optimization_level=0``): that changes how fast the code
runs, not what it computes, and roughly halves the time of the suite; jaxlib 0.10 also compiles
with XLA:CPU's loop emitters. Compiled programs go to a persistent compilation cache for the
session (below). Subprocesses the tests start (the command-line tests) inherit all of these
settings.
"""
import importlib.metadata
import os
import shutil
import tempfile


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

# One persistent compilation cache for the session, shared by the xdist workers and the
# subprocesses the tests start (they inherit the environment): the runs that resume, and the
# command-line tests, compile programs an earlier test already compiled. A new, empty folder per
# session, removed at its end, so no result depends on an earlier session's compiles. jax writes
# an entry in place, so a process can read one that another is still writing, or that a killed
# run left half written; jax then warns and compiles the program itself. It also warns when it
# cannot write an entry (a test that limits the size of the files a run may write). These
# warnings are not shown (here: pyproject.toml's filterwarnings; in the subprocesses:
# PYTHONWARNINGS), so a command's stderr is what a user without the cache would see.
_CACHE_OWNER = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _CACHE_OWNER:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="octflax-test-xla-cache-")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [
      os.environ.get("PYTHONWARNINGS"), "ignore:Error reading persistent compilation cache entry",
      "ignore:Error writing persistent compilation cache entry"]))


def pytest_unconfigure(config):
  if _CACHE_OWNER and not hasattr(config, "workerinput"):  # the controller, or a run without xdist
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
