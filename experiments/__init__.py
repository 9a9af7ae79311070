"""Runnable scripts of octflax: training (`experiments.train`), benchmarks, sweeps."""
