"""Runs of the real command line, `python -m experiments.train`, in subprocesses.

Exact resume after SIGKILL, two processes against one, and the messages of the
bad inputs. The runs share a persistent compilation cache so that only the
first run of each program pays for compiling it, and compile without XLA's CPU
optimisations (the same for every run that is compared).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from octflax.checkpoint import find_checkpoint
from octflax.checkpoint.format import read_state
from test_training import write_fashion_mnist

ROOT = Path(__file__).resolve().parent.parent

# A two-stage Oct-ResNet with 4 and 8 channels: the real OctConv model, small enough to
# compile in seconds.
TINY_MODEL_CONFIG = '''
from octflax.training import default_config


def get_config():
  config = default_config()
  config.model.name = "oct_resnet20"
  config.model.alpha = 0.5
  config.model.overrides.stage_sizes = (1, 1)
  config.model.overrides.widths = (4, 8)
  config.model.overrides.stem_features = 4
  config.data.max_train_examples = 128
  config.data.max_test_examples = 24
  config.num_epochs = 4
  config.batch_size = 16
  config.learning_rate = 0.4
  config.warmup_epochs = 1.0
  config.checkpoint_every_steps = 5
  config.log_every_steps = 4
  config.progress_bar = False
  return config
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("cli")
  write_fashion_mnist(root / "data", n_train=128, n_test=24)
  (root / "tiny.py").write_text(TINY_MODEL_CONFIG)
  env = dict(os.environ)
  env.update({
      "JAX_COMPILATION_CACHE_DIR": str(root / "jax_cache"),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
      "JAX_PLATFORMS": "cpu",
      "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
  })
  return root, env


def train_command(root: Path, workdir: Path, *flags: str) -> list[str]:
  return [sys.executable, "-m", "experiments.train", f"--workdir={workdir}", f"--config={root / 'tiny.py'}",
          f"--config.data.dir={root / 'data'}", *flags]


def xla_flags(devices: int) -> str:
  # Unoptimised CPU code compiles several times faster; these runs are tiny.
  return f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"


def run(command: list[str], env: dict[str, str], devices: int = 8, timeout: float = 240):
  env = dict(env, XLA_FLAGS=xla_flags(devices))
  return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def final_state(workdir: Path) -> dict:
  """The newest checkpoint's arrays (step, params, batch_stats, opt_state, rng) as NumPy."""
  return read_state(find_checkpoint(str(workdir)))


@pytest.fixture(scope="module")
def uninterrupted(setup):
  """The working directory of an uninterrupted run of the tiny config."""
  root, env = setup
  reference = run(train_command(root, root / "uninterrupted"), env)
  assert reference.returncode == 0, reference.stderr[-3000:]
  return root / "uninterrupted"


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_uninterrupted_parameters(setup, uninterrupted):
  root, env = setup
  summary = json.loads((uninterrupted / "summary.json").read_text())
  total = summary["steps"]
  assert total == 4 * (128 // 16)

  workdir = root / "killed"
  process = subprocess.Popen(train_command(root, workdir), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True,
                             env=dict(env, XLA_FLAGS=xla_flags(8)))
  first = workdir / "checkpoints" / "5"
  deadline = time.time() + 200
  while not first.exists() and process.poll() is None and time.time() < deadline:
    time.sleep(0.005)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert process.returncode == -signal.SIGKILL
  assert first.exists(), "the run ended before its first checkpoint"
  assert not (workdir / "summary.json").exists(), "the run finished before it was killed"
  killed_at = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert 5 <= killed_at < total

  resumed = run(train_command(root, workdir), env)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  resumed_summary = json.loads((workdir / "summary.json").read_text())
  assert resumed_summary["resumed_from_step"] == killed_at
  assert resumed_summary["steps"] == total

  expected, got = final_state(root / "uninterrupted"), final_state(workdir)
  assert int(got["step"]) == int(expected["step"]) == total
  chex.assert_trees_all_close(got["params"], expected["params"], rtol=0, atol=1e-6)
  chex.assert_trees_all_close(got["batch_stats"], expected["batch_stats"], rtol=0, atol=1e-6)
  assert resumed_summary["test_accuracy"] == summary["test_accuracy"]
  # metrics.jsonl reads as one run: one evaluation per epoch, steps in order.
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records if r["kind"] == "eval"] == [1, 2, 3, 4]
  steps = [r["step"] for r in records if r["kind"] == "train"]
  assert steps == sorted(steps) and len(steps) == len(set(steps))
  assert (workdir / "curves.png").stat().st_size > 1000


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_devices(setup):
  root, env = setup
  flags = ("--config.num_epochs=1", "--config.checkpoint_every_steps=100")
  port = _free_port()
  workdir = root / "two_processes"
  commands = [(train_command(root, root / "one_process", *flags), xla_flags(4))] + [
      (train_command(root, workdir, *flags, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                     f"--process_id={i}"), xla_flags(2))
      for i in range(2)]
  # The three processes run at once: much of their time is compiling and waiting on each other.
  processes = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(env, XLA_FLAGS=flags_, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo"))
               for command, flags_ in commands]
  outputs = [p.communicate(timeout=240) for p in processes]
  for p, (_, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]

  one = json.loads((root / "one_process" / "summary.json").read_text())
  two = json.loads((workdir / "summary.json").read_text())
  assert (one["num_processes"], one["num_devices"]) == (1, 4)
  assert (two["num_processes"], two["num_devices"]) == (2, 4)
  assert two["steps"] == one["steps"] == 128 // 16
  expected, got = final_state(root / "one_process"), final_state(workdir)
  chex.assert_trees_all_close(got["params"], expected["params"], rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(got["batch_stats"], expected["batch_stats"], rtol=1e-5, atol=1e-6)
  assert two["test_accuracy"] == pytest.approx(one["test_accuracy"], abs=1e-6)


def test_unknown_config_field_on_the_command_line(setup):
  root, env = setup
  result = run(train_command(root, root / "unknown", "--config.modle.alpha=0.5"), env)
  assert result.returncode == 2
  assert "unknown config field 'modle.alpha'" in result.stderr
  assert "Did you mean 'model.alpha'" in result.stderr
  assert "Traceback" not in result.stderr
  assert not (root / "unknown").exists()


# A bad command line: its arguments after --workdir, then the one line it prints (the start of it) and
# whether jax was imported by then (a command line that cannot be read fails before jax starts; a value
# out of range is found by the run's plan, which checks the config once).
BAD_COMMAND_LINES = {
    "misspelt field": (["--config.batchsize=3"], False,
                       "error: unknown config field 'batchsize' (from --config.batchsize, config fashion_mnist.py). "
                       "Did you mean 'batch_size' or 'eval_batch_size'? The fields are: batch_size, "),
    "value of another type": (["--config.batch_size", "abc"], False,
                              "error: --config.batch_size=abc: cannot set config.batch_size (int): invalid literal for "
                              "int() with base 10: 'abc'."),
    "not a boolean": (["--config.progress_bar=maybe"], False,
                      "error: --config.progress_bar=maybe: cannot set config.progress_bar (bool): expected true or "
                      "false."),
    "no such config file": (["--config", "experiments/configs/nope.py"], False,
                            "error: config file 'experiments/configs/nope.py' does not exist. Configs are in "
                            f"{ROOT / 'experiments' / 'configs'}: cifar10.py, fashion_mnist.py, imagenet.py, "),
    "attribute the file does not set": (["--config.model.overrides.depth=3"], False,
                                        "error: --config.model.overrides.depth: fashion_mnist.py sets no model "
                                        "attribute 'depth' in config.model.overrides (it sets: none). "),
    "value out of range": (["--config.profile_steps", "1,3"], True,
                           "error: config.profile_steps must be START,COUNT (e.g. --config.profile_steps=5,3: a trace "
                           "of steps 5 to 7) with START >= 2 (step 1 compiles the train step) and COUNT >= 1, or 0 "
                           "(off); got (1, 3)."),
    "misspelt flag": (["--workdri=x"], False,
                      "error: Unknown command line flag 'workdri'. Did you mean: workdir ? (--help lists the flags)."),
    "stray argument": (["extra"], False, "error: unexpected arguments: extra (flags are --NAME=VALUE; "),
}


@pytest.mark.parametrize("case", sorted(BAD_COMMAND_LINES))
def test_a_bad_command_line_is_one_line_and_exit_status_2(setup, case):
  root, env = setup
  flags, imports_jax, line = BAD_COMMAND_LINES[case]
  workdir = root / f"bad_{case.replace(' ', '_')}"
  # The command's own run(), and a note on stdout of whether it imported jax before it stopped.
  code = ("import sys\nfrom experiments import train\ntry:\n  train.run()\nfinally:\n"
          "  print('jax imported' if 'jax' in sys.modules else 'no jax')\n")
  result = run([sys.executable, "-c", code, "--workdir", str(workdir), *flags], env, timeout=120)
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.count("\n") == 1 and result.stderr.startswith(line), result.stderr
  assert result.stdout.strip() == ("jax imported" if imports_jax else "no jax")
  assert not workdir.exists()


def test_no_workdir_is_one_line_and_exit_status_2(setup):
  _, env = setup
  result = run([sys.executable, "-m", "experiments.train", "--config.batch_size=64"], env, timeout=120)
  assert result.returncode == 2
  assert result.stderr == ("error: --workdir is required: the directory of the run's checkpoints and reports "
                           "(or --aot=TARGET).\n")


def test_every_error_has_its_exit_status():
  from octflax import errors  # pylint: disable=g-import-not-at-top
  from octflax.data import DataError, MissingDataError  # pylint: disable=g-import-not-at-top

  statuses = {
      errors.ConfigError("x"): 2, errors.RunStopped("x", step=5, signal_name="SIGTERM"): 75,
      errors.WorkdirLockedError("x"): 73, errors.WriteFailedError("x", errno=28, intact_step=None): 74,
      KeyboardInterrupt(): 130, DataError("x"): 1, MissingDataError("x"): 1, errors.CheckpointError("x"): 1,
      errors.CheckpointMismatchError("x"): 1, errors.DivergenceError("x", step=3, last_good_step=2): 1,
      errors.WorkdirError("x"): 1, ValueError("x"): 1,
  }
  assert {type(e).__name__: errors.exit_status(e) for e in statuses} == {
      type(e).__name__: status for e, status in statuses.items()}
  # Every octflax error is an OctflaxError; a checkpoint or data error is not a training error.
  assert all(isinstance(e, errors.OctflaxError) for e in statuses if type(e) not in (KeyboardInterrupt, ValueError))
  for kind in (errors.CheckpointError, errors.CheckpointMismatchError, DataError):
    assert not issubclass(kind, errors.TrainingError)
  assert issubclass(errors.CheckpointMismatchError, ValueError) and issubclass(DataError, ValueError)


def test_missing_data_says_how_to_fix_it(setup):
  root, env = setup
  # Nowhere to find or fetch the data: Debian's folder hidden (in the child), an empty cache, no server.
  env = dict(env, OCTFLAX_DATA_DIR=str(root / "empty_cache"), OCTFLAX_FASHION_MNIST_URL="http://127.0.0.1:9/")
  command = train_command(root, root / "nodata", f"--config.data.dir={root / 'absent'}")
  hide_debian = ("import sys; from octflax.data import download; download.FASHION_MNIST_DIR = sys.argv.pop(1); "
                 "from experiments import train; train.run()")
  result = run([command[0], "-c", hide_debian, str(root / "no-debian"), *command[3:]], env)
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(error_lines) == 1
  assert "apt-get install -y dataset-fashion-mnist" in error_lines[0]
  assert "--config.data.dir=DIR" in error_lines[0]


def test_batch_size_not_divisible_on_the_command_line(setup):
  root, env = setup
  result = run(train_command(root, root / "indivisible", "--config.batch_size=12"), env)
  assert result.returncode == 2
  assert "batch_size 12 is not divisible by the number of devices 8" in result.stderr
  assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_workdir_that_is_a_file_on_the_command_line(setup):
  root, env = setup
  (root / "a_file").write_text("not a directory")
  result = run(train_command(root, root / "a_file"), env)
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  assert [line for line in result.stderr.splitlines() if line.strip()] == [
      f"error: --workdir '{root / 'a_file'}' ({root / 'a_file'}) is a file, not a directory; give a directory "
      "(it is created if missing)."]


@pytest.mark.slow
def test_diverging_run_stops_with_a_message_and_keeps_the_last_good_checkpoint(setup):
  root, env = setup
  workdir = root / "diverged"
  # Step 0 runs at learning rate 0 (the warm-up starts at 0); the next steps at 1e30 blow up.
  result = run(train_command(root, workdir, "--config.learning_rate=1e30", "--config.checkpoint_every_steps=1",
                             "--config.warmup_epochs=0.25", "--config.log_every_steps=1"), env)
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  message = next(line for line in result.stderr.splitlines() if line.startswith("error:"))
  match = re.search(r"Training stopped: .* at step (\d+) .*The last good checkpoint \(step (\d+)\)", message)
  assert match, message
  bad_step, good_step = int(match.group(1)), int(match.group(2))
  assert 1 <= good_step < bad_step
  assert "--config.learning_rate" in message and "--config.grad_clip_norm" in message
  state = final_state(workdir)
  assert int(state["step"]) == good_step
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["batch_stats"]))
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert records[-1]["kind"] == "diverged" and records[-1]["step"] == bad_step
  assert not (workdir / "summary.json").exists()


@pytest.mark.slow
def test_sweep_writes_results_and_plot_and_reuses_finished_runs(setup, tmp_path):
  root, env = setup
  results = tmp_path / "sweep.json"
  command = [sys.executable, "-m", "experiments.sweep", f"--config={root / 'tiny.py'}", "--alphas=0,0.5",
             f"--workdir={tmp_path / 'runs'}", f"--results={results}", "--",
             f"--config.data.dir={root / 'data'}", "--config.num_epochs=1",
             "--config.data.validation_examples=32"]
  done = run(command, env)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(results.read_text())
  assert [(r["alpha"], r["seed"], r["epochs"]) for r in report["runs"]] == [(0.0, 0, 1), (0.5, 0, 1)]
  for r in report["runs"]:
    assert 0 <= r["test_accuracy"] <= 1 and 0 <= r["validation_accuracy"] <= 1
    assert r["config"]["data"]["validation_examples"] == 32 and r["params"] > 0
  assert report["runs"][1]["gmacs_per_image"] < report["runs"][0]["gmacs_per_image"]
  assert [s["validation_accuracy_mean"] for s in report["summary"]] == [r["validation_accuracy"]
                                                                        for r in report["runs"]]
  assert results.with_suffix(".png").stat().st_size > 1000
  assert "| 0.5 |" in done.stdout
  # Finished runs are read back, not trained again.
  again = run(command, env)
  assert again.returncode == 0 and "experiments.train" not in again.stdout
  assert json.loads(results.read_text())["runs"] == report["runs"]
  # Another seed, merged with the runs of the earlier results file (its runs are not trained again).
  merged = tmp_path / "merged.json"
  more = [c.replace(str(tmp_path / "runs"), str(tmp_path / "runs2")).replace(str(results), str(merged))
          .replace("--alphas=0,0.5", "--alphas=0") for c in command]
  more[more.index("--"):more.index("--")] = ["--seeds=0,1", f"--previous={results}"]
  done = run(more, env)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.count("experiments.train") == 1 and "--config.seed=1" in done.stdout
  report2 = json.loads(merged.read_text())
  assert report2["runs"][0] == report["runs"][0] and report2["runs"][1]["seed"] == 1
  (row,) = report2["summary"]
  assert row["seeds"] == 2 and row["test_accuracy_std"] >= 0
  assert abs(row["test_accuracy_mean"] - (report2["runs"][0]["test_accuracy"]
                                          + report2["runs"][1]["test_accuracy"]) / 2) < 1e-12
  # A file of another recipe is refused before anything trains.
  other = [c for c in more if not c.startswith("--config.num_epochs")] + ["--config.num_epochs=2"]
  refused = run(other, env)
  assert refused.returncode != 0 and "cannot be merged" in refused.stderr and "overrides" in refused.stderr


@pytest.mark.slow
def test_readme_command_with_relative_paths_checkpoints_and_resumes(setup, tmp_path):
  root, env = setup
  shutil.copytree(root / "data", tmp_path / "data")
  shutil.copy(root / "tiny.py", tmp_path / "tiny.py")
  # As the README has it: a relative --workdir (and here a relative config and data folder too).
  command = [sys.executable, "-m", "experiments.train", "--workdir", "runs/fashion_mnist", "--config", "tiny.py",
             "--config.data.dir=data", "--config.num_epochs=1"]
  env = dict(env, XLA_FLAGS=xla_flags(8))
  first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "Traceback" not in first.stderr
  workdir = tmp_path / "runs" / "fashion_mnist"
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["5", "8"]
  again = subprocess.run(command[:-1] + ["--config.num_epochs=2"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=240)
  assert again.returncode == 0, again.stderr[-3000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["resumed_from_step"] == 8 and summary["steps"] == 16


def _wait_for(path: Path, processes, timeout: float = 200) -> None:
  deadline = time.time() + timeout
  while not path.exists() and all(p.poll() is None for p in processes) and time.time() < deadline:
    time.sleep(0.005)
  assert path.exists(), "the run ended before its first checkpoint"


@pytest.mark.slow
def test_sigterm_mid_epoch_checkpoints_that_step_exits_75_and_resumes_exactly(setup, uninterrupted):
  root, env = setup
  workdir = root / "terminated"
  process = subprocess.Popen(train_command(root, workdir), cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=dict(env, XLA_FLAGS=xla_flags(8)))
  _wait_for(workdir / "checkpoints" / "5", [process])
  process.send_signal(signal.SIGTERM)
  _, err = process.communicate(timeout=120)
  assert process.returncode == 75, err[-3000:]
  assert "Traceback" not in err
  match = re.search(r"stopped by SIGTERM at step (\d+) of 32; checkpoint saved in .*\. Run the same command", err)
  assert match, err[-3000:]
  stopped_at = int(match.group(1))
  steps = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
  assert max(steps) == stopped_at and 5 <= stopped_at < 32
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  logged = [r["step"] for r in records if r["kind"] == "train"]
  assert logged == list(range(4, stopped_at + 1, 4))  # Every logged step before the stop, flushed.

  resumed = run(train_command(root, workdir), env)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert json.loads((workdir / "summary.json").read_text())["resumed_from_step"] == stopped_at
  expected, got = final_state(uninterrupted), final_state(workdir)
  chex.assert_trees_all_close(got["params"], expected["params"], rtol=0, atol=1e-6)
  chex.assert_trees_all_close(got["batch_stats"], expected["batch_stats"], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_two_processes_receiving_sigterm_save_the_same_step(setup):
  root, env = setup
  port = _free_port()
  workdir = root / "two_terminated"
  processes = [
      subprocess.Popen(train_command(root, workdir, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                                     f"--process_id={i}"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, env=dict(env, XLA_FLAGS=xla_flags(2), JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo"))
      for i in range(2)]
  _wait_for(workdir / "checkpoints" / "5", processes)
  for p in processes:
    p.send_signal(signal.SIGTERM)
  outputs = [p.communicate(timeout=120) for p in processes]
  steps = []
  for p, (_, err) in zip(processes, outputs):
    assert p.returncode == 75, err[-3000:]
    steps.append(int(re.search(r"stopped by SIGTERM at step (\d+)", err).group(1)))
  assert steps[0] == steps[1]
  saved = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
  assert max(saved) == steps[0]
  assert int(final_state(workdir)["step"]) == steps[0]
