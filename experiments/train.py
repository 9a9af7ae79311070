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

Exit status: 0 when done; 2 for a bad command line or config value (nothing ran), 1 when the run
failed, 73 when another run holds DIR, 74 when a file cannot be written, 75 when stopped by SIGTERM
or Ctrl-C after a checkpoint (the same command resumes), 130 after a second Ctrl-C (octflax.errors).
Every error is one line on stderr.

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

from octflax.errors import EXIT_USAGE, OctflaxError, RunStopped, exit_status

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
DEFAULT_CONFIG = os.path.join(CONFIG_DIR, "fashion_mnist.py")

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


def report(error: BaseException) -> int:
  """Prints the one line of ``error`` on stderr; its exit status (`octflax.errors.exit_status`)."""
  if isinstance(error, KeyboardInterrupt):
    line = "interrupted: stopped at once; the next run resumes from the last checkpoint."
  elif isinstance(error, RunStopped):
    line = str(error)  # Not a failure: it says how to resume.
  else:
    line = f"error: {error}"
  print(line, file=sys.stderr, flush=True)
  return exit_status(error)


def usage_error(message: str) -> None:
  """Exits with `EXIT_USAGE` and one line: a bad command line."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USAGE)


def split_command_line(argv: Sequence[str]) -> tuple[str, list[str], list[str]]:
  """``(config file, its --config.FIELD=VALUE overrides, the other arguments)`` of a command line.

  ``--config F`` and ``--config.FIELD VALUE`` (space-separated) are read as
  ``--config=F`` and ``--config.FIELD=VALUE``.

  >>> split_command_line(["train", "--config", "c.py", "--config.seed", "3", "--noconfig.nesterov", "--workdir=w"])
  ('c.py', ['--config.seed=3', '--noconfig.nesterov'], ['train', '--workdir=w'])
  """
  source, overrides, rest = DEFAULT_CONFIG, [], [argv[0]]
  args = list(argv[1:])
  while args:
    arg = args.pop(0)
    if arg == "--config":
      if not args:
        usage_error("--config needs a config file: --config FILE.")
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


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing, a bad flag reported in one line (`EXIT_USAGE`)."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    usage_error(f"{e} (--help lists the flags).")


def main(argv: Sequence[str], config) -> int:
  if len(argv) > 1:
    usage_error(f"unexpected arguments: {' '.join(argv[1:])} (flags are --NAME=VALUE; --help lists them).")
  if FLAGS.aot:
    return compile_ahead_of_time(config, FLAGS.aot)
  if FLAGS.workdir is None:
    usage_error("--workdir is required: the directory of the run's checkpoints and reports (or --aot=TARGET).")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; --verbosity=0 shows it.
  if FLAGS.distributed or FLAGS.coordinator_address:
    from octflax.training import initialize_distributed  # pylint: disable=g-import-not-at-top

    initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)

  from octflax.training import train_and_evaluate  # pylint: disable=g-import-not-at-top

  try:
    summary = train_and_evaluate(config, FLAGS.workdir)
  except (OctflaxError, KeyboardInterrupt) as e:
    return report(e)
  import jax  # pylint: disable=g-import-not-at-top

  if jax.process_index() == 0:
    print(f"test accuracy {100 * summary['test_accuracy']:.2f}% after {summary['steps']} steps "
          f"({summary['train_seconds'] / 60:.1f} min of training); "
          f"{os.path.join(FLAGS.workdir, 'summary.json')}", flush=True)
  return 0


def compile_ahead_of_time(config, target: str) -> int:
  """``--aot``: the run's train step compiled for ``target`` (`experiments.aot_step`); 0, or an error's status."""
  from octflax.aot import TargetUnavailable  # pylint: disable=g-import-not-at-top
  from experiments.aot_step import compile_run_step  # pylint: disable=g-import-not-at-top

  try:
    compile_run_step(config, target)
  except (OctflaxError, TargetUnavailable) as e:
    return report(e)
  return 0


def run() -> None:
  """Reads the config (once; `plan_run` checks it) and the other flags, and runs `main`."""
  source, overrides, rest = split_command_line(sys.argv)
  if any(arg == "--aot" or arg.startswith("--aot=") for arg in rest):
    from octflax.aot import prepare_environment  # pylint: disable=g-import-not-at-top

    prepare_environment()  # Before jax starts: it runs on the CPU and compiles for the target.
  from octflax.training.config import load_config  # pylint: disable=g-import-not-at-top

  try:
    config = load_config(source, overrides, config_dir=CONFIG_DIR)
  except OctflaxError as e:
    sys.exit(report(e))
  app.run(lambda argv: main(argv, config), argv=rest, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
