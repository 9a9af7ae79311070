"""What a user runs: training (`experiments.train`), evaluation, sweeps, PyTorch weight import, examples, configs."""
