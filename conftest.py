"""Test set-up for tests/ and the doctests of octflax/: 8 simulated CPU devices for parallel code."""
import os

# Must be set before jax is imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
