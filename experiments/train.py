r"""Trains an octflax model: the entry point of every training run.

  python -m experiments.train --workdir DIR [--config FILE] [--config.FIELD=VALUE ...]

The config defaults to experiments/configs/fashion_mnist.py (the main job: an
Oct-ResNet on Fashion-MNIST in minutes on a CPU). A run resumes from the newest
good checkpoint in DIR (a damaged one is moved aside to STEP.damaged). DIR may be
relative, absolute, start with ~, or be a gs:// URL. It writes DIR/metrics.jsonl while it runs and
DIR/summary.json and DIR/curves.png at the end; see octflax.training.

Multi-host (Cloud TPU pod slices, multi-node GPU): run the same command on every
host with --distributed (jax.distributed.initialize() finds the cluster on TPU,
SLURM and similar), or name the cluster with --coordinator_address,
--num_processes and --process_id. --config.batch_size is the global batch; each
host loads only its share of every batch.

Ahead of time: --aot=TARGET compiles this run's train step for an accelerator on this host
(h100, h200, tpu:v5e:2x2, tpu:v5e:16x16, tpu:v4:2x2x1, ...; needs pip install -e '.[aot]'), prints
memory per chip against the chip's, the kernels, the collectives and an estimated step time,
and exits without training (no --workdir needed).

Examples:
  python -m experiments.train --workdir runs/fashion_mnist
  python -m experiments.train --aot=tpu:v5e:2x2 --config experiments/configs/imagenet.py
  python -m experiments.train --workdir runs/cifar10 --config experiments/configs/cifar10.py \
      --config.data.dir=/data/cifar10 --config.model.alpha=0.5
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from absl import app, flags, logging

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
DEFAULT_CONFIG = os.path.join(CONFIG_DIR, "fashion_mnist.py")
EXIT_USAGE = 2  # A bad command line or config value: nothing ran.
EXIT_FAILED = 1  # Missing data, an unusable working directory or checkpoints, or a diverged run.
# Also: 73 (octflax.training.EXIT_WORKDIR_LOCKED) when another run holds the working directory
# (nothing written); 74 (EXIT_WRITE_FAILED) when a file cannot be written (no space left, a quota or
# file-size limit, a read-only folder; what was saved before is intact and the same command resumes);
# 75 (EXIT_STOPPED) after a SIGTERM or the first Ctrl-C: the step in flight was checkpointed and the
# same command resumes; 130 after a second Ctrl-C (stopped at once).

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Working directory: checkpoints, metrics.jsonl, summary.json, curves.png.")
flags.DEFINE_bool("distributed", False,
                  "Call jax.distributed.initialize() before anything else (multi-host runs; the "
                  "cluster is detected on Cloud TPU, SLURM and others).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs; implies --distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
flags.DEFINE_string("aot", None,
                    "Compile this run's train step for TARGET (h100, h200, tpu:v5e:2x2, ...) on this host, "
                    "print its memory, kernels and estimated time, and exit without training.")


def _fail(message: str, code: int) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def split_command_line(argv: Sequence[str]) -> tuple[str, list[str], list[str]]:
  """``(config file, its --config.FIELD=VALUE overrides, the other arguments)`` of a command line.

  ``--config F`` and ``--config.FIELD VALUE`` (space-separated) are read as
  ``--config=F`` and ``--config.FIELD=VALUE``.
  """
  source, overrides, rest = DEFAULT_CONFIG, [], [argv[0]]
  args = list(argv[1:])
  while args:
    arg = args.pop(0)
    if arg == "--config" and args:
      source = args.pop(0)
    elif arg.startswith("--config="):
      source = arg.split("=", 1)[1]
    elif arg.startswith(("--config.", "--noconfig.")):
      if "=" not in arg and arg.startswith("--config.") and args and not args[0].startswith("-"):
        arg = f"{arg}={args.pop(0)}"
      overrides.append(arg)
    else:
      rest.append(arg)
  return source, overrides, rest


def load_command_line_config(source: str, overrides: list[str]):
  """The checked config of the command line (`octflax.training.config.load_config`); exits 2 on an error."""
  path = source if os.path.isfile(source) or ":" not in source else source.split(":", 1)[0]
  if not os.path.isfile(path):
    _fail(f"config file {path!r} does not exist. Configs are in {CONFIG_DIR}: "
          f"{', '.join(sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith('.py') and f[0] != '_'))}.",
          EXIT_USAGE)
  from octflax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from octflax.training.config import load_config  # pylint: disable=g-import-not-at-top

  try:
    return load_config(source, overrides)
  except ConfigError as e:
    _fail(str(e), EXIT_USAGE)


def main(argv: Sequence[str], config) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.aot:
    return compile_ahead_of_time(config, FLAGS.aot)
  if FLAGS.workdir is None:
    raise app.UsageError("--workdir is required.")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; --verbosity=0 shows it.
  if FLAGS.distributed or FLAGS.coordinator_address:
    from octflax.training import initialize_distributed  # pylint: disable=g-import-not-at-top

    initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)

  from octflax.data import DataError  # pylint: disable=g-import-not-at-top
  from octflax.errors import (  # pylint: disable=g-import-not-at-top
      EXIT_WORKDIR_LOCKED, EXIT_WRITE_FAILED, ConfigError, RunStopped, TrainingError, WorkdirLockedError,
      WriteFailedError)
  from octflax.training import train_and_evaluate  # pylint: disable=g-import-not-at-top
  from octflax.training.preemption import EXIT_INTERRUPTED, EXIT_STOPPED  # pylint: disable=g-import-not-at-top

  try:
    summary = train_and_evaluate(config, FLAGS.workdir)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return EXIT_USAGE
  except RunStopped as e:
    print(str(e), file=sys.stderr, flush=True)
    return EXIT_STOPPED
  except WorkdirLockedError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return EXIT_WORKDIR_LOCKED
  except WriteFailedError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return EXIT_WRITE_FAILED
  except (DataError, TrainingError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return EXIT_FAILED
  except KeyboardInterrupt:
    print("interrupted: stopped at once; the next run resumes from the last checkpoint.", file=sys.stderr,
          flush=True)
    return EXIT_INTERRUPTED
  import jax  # pylint: disable=g-import-not-at-top

  if jax.process_index() == 0:
    print(f"test accuracy {100 * summary['test_accuracy']:.2f}% after {summary['steps']} steps "
          f"({summary['train_seconds'] / 60:.1f} min of training); "
          f"{os.path.join(FLAGS.workdir, 'summary.json')}", flush=True)
  return 0


def compile_ahead_of_time(config, target: str) -> int:
  """``--aot``: the run's train step compiled for ``target`` (`octflax.training.aot`); 0, or 1 with one line."""
  from octflax.aot import TargetUnavailable  # pylint: disable=g-import-not-at-top
  from octflax.data import DataError  # pylint: disable=g-import-not-at-top
  from octflax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from octflax.training.aot import compile_run_step  # pylint: disable=g-import-not-at-top

  try:
    compile_run_step(config, target)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return EXIT_USAGE
  except (TargetUnavailable, DataError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return EXIT_FAILED
  return 0


def run() -> None:
  """Reads the config (once, checked) and the other flags, and runs `main`."""
  source, overrides, rest = split_command_line(sys.argv)
  if any(arg == "--aot" or arg.startswith("--aot=") for arg in rest):
    from octflax.aot import prepare_environment  # pylint: disable=g-import-not-at-top

    prepare_environment()  # Before jax starts: it runs on the CPU and compiles for the target.
  config = load_command_line_config(source, overrides)
  app.run(lambda argv: main(argv, config), argv=rest)


if __name__ == "__main__":
  run()
