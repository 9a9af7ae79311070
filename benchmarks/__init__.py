"""The measurements behind docs/benchmarks.md: the wall-time harness, probes, the cost table and their results (see README.md here)."""
