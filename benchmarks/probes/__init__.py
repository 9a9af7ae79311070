"""Probes of XLA:CPU behind the claims in docs/benchmarks.md; each module names the claim it backs."""
