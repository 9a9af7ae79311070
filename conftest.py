"""Test set-up for tests/ and the doctests of octflax/: 8 simulated CPU devices for parallel code.

The tests compile hundreds of small programs, so XLA:CPU compiles them without LLVM's
optimisation passes (``--xla_backend_optimization_level=0``): that changes how fast the code
runs, not what it computes, and roughly halves the time of the suite. Subprocesses the tests
start (the command-line tests) inherit both settings.
"""
import os

# Must be set before jax is imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
