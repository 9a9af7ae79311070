"""Faults met by the real command line, `python -m experiments.train`, read as a user reads them.

A full disk (a file-size limit, `RLIMIT_FSIZE` with SIGXFSZ ignored: writes then
fail with EFBIG, no root needed), a folder that becomes read-only, two runs on one
working directory, and damaged checkpoints. Each test reads the complete stdout
and stderr of the run: the one line it means to print, and nothing from orbax's
or asyncio's threads (no "Traceback", no "Exception ignored").

The faults are injected by `FAULT_WRAPPER`, which runs `experiments.train` with
`CheckpointStore.save` wrapped to act at one step (set the file-size limit, make
the folder read-only, or pause until told to go on).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from test_training import write_fashion_mnist
from test_training_cli import ROOT, TINY_MODEL_CONFIG, final_state, xla_flags

# python fault_wrapper.py MODE STEP ARG [train flags...]:
#   limit_before / limit_after: set RLIMIT_FSIZE to ARG bytes before / after the save of STEP
#     (limit_now: at the start; ARG "metrics+N": N bytes more than metrics.jsonl has then);
#   shell_before: run the shell command ARG before the save of STEP (e.g. make the folder read-only);
#   pause_after: after the save of STEP, create ARG.waiting and wait until ARG exists.
FAULT_WRAPPER = '''
import os, resource, signal, subprocess, sys, time

mode, at, arg = sys.argv[1], int(sys.argv[2]), sys.argv[3]
del sys.argv[1:4]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # A write over the limit then fails with EFBIG.


def limit(checkpoints=None):
  size = int(arg.split("+")[1]) + os.path.getsize(os.path.join(checkpoints, "..", "metrics.jsonl")) if (
      arg.startswith("metrics+")) else int(arg)
  resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


if mode == "limit_now":
  limit()

from octflax import checkpoint

original = checkpoint.CheckpointStore.save


def save(self, step, *args, **kwargs):
  if step == at and mode in ("limit_before", "shell_before"):
    self.wait()
    limit() if mode == "limit_before" else subprocess.run(arg, shell=True, check=True)
  saved = original(self, step, *args, **kwargs)
  if step == at and mode == "limit_after":
    self.wait()
    limit(self.directory)
  if step == at and mode == "pause_after":
    self.wait()
    open(arg + ".waiting", "w").close()
    while not os.path.exists(arg):
      time.sleep(0.01)
  return saved


checkpoint.CheckpointStore.save = save
from experiments import train

train.run()
'''

# summary.json fields that depend on the wall clock or on where the last run started.
NOT_COMPARED = ("train_seconds", "images_per_second", "resumed_from_step", "peak_bytes_per_device")
NOISE = ("Traceback", "Exception ignored", "exception was never retrieved", "Event loop is closed")


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
  root = tmp_path_factory.mktemp("faults_cli")
  write_fashion_mnist(root / "data", n_train=128, n_test=24)
  (root / "tiny.py").write_text(TINY_MODEL_CONFIG)
  (root / "fault_wrapper.py").write_text(FAULT_WRAPPER)
  env = dict(os.environ)
  env.update({
      "JAX_COMPILATION_CACHE_DIR": str(root / "jax_cache"),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": xla_flags(1),
      "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
  })
  return root, env


def flags(root: Path, workdir: Path, *more: str) -> list[str]:
  return [f"--workdir={workdir}", f"--config={root / 'tiny.py'}", f"--config.data.dir={root / 'data'}", *more]


def train(root: Path, env, workdir: Path, *more: str, timeout: float = 240) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "experiments.train", *flags(root, workdir, *more)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def with_fault(root: Path, env, workdir: Path, mode: str, step: int, arg: str, *more: str,
               timeout: float = 240) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(root / "fault_wrapper.py"), mode, str(step), arg,
                         *flags(root, workdir, *more)], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout)


def output_lines(result) -> list[str]:
  """Every line the run printed, stdout and stderr."""
  return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


def assert_quiet(result) -> None:
  text = result.stdout + result.stderr
  for noise in NOISE:
    assert noise not in text, text[-5000:]
  # Nothing from absl/orbax loggers either ("E1203 07:09:14.146 ... file.py:123] ...").
  assert not re.search(r"^[EWF]\d{4} \d\d:\d\d:\d\d", text, re.M), text[-5000:]


def one_error_line(result) -> str:
  """The run's only line of stderr, an ``error:`` line (progress lines go to stdout)."""
  assert_quiet(result)
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-5000:]
  assert all(line.startswith(("epoch ", "test accuracy ")) for line in result.stdout.splitlines() if line), (
      result.stdout[-3000:])
  return lines[0]


def assert_same_run(workdir: Path, reference: Path) -> None:
  """The newest checkpoint's arrays bit for bit, and summary.json but for the wall-clock fields."""
  got, want = final_state(workdir), final_state(reference)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  summary, expected = (json.loads((d / "summary.json").read_text()) for d in (workdir, reference))
  for key in NOT_COMPARED:
    summary.pop(key, None), expected.pop(key, None)
  assert summary == expected


def tree_snapshot(workdir: Path) -> dict[str, tuple[int, int]]:
  return {str(p.relative_to(workdir)): (p.stat().st_size, p.stat().st_mtime_ns) for p in workdir.rglob("*")}


@pytest.fixture(scope="module")
def reference(cli):
  """An uninterrupted run of the tiny config: 4 epochs of 8 steps, checkpoints every 5 steps."""
  root, env = cli
  result = train(root, env, root / "reference")
  assert result.returncode == 0, result.stderr[-3000:]
  assert_quiet(result)
  return root / "reference"


def checkpoint_names(workdir: Path) -> list[str]:
  return sorted((p.name for p in (workdir / "checkpoints").iterdir()), key=lambda n: (len(n), n))


@pytest.mark.slow
def test_out_of_space_while_checkpointing_stops_in_one_line_and_the_same_command_resumes(cli, reference):
  root, env = cli
  workdir = root / "full_disk"
  # From the save of step 10 on, no file may grow past 10 kB: checkpoint 10's array files cannot be
  # written (metrics.jsonl and the event file stay smaller).
  result = with_fault(root, env, workdir, "limit_before", 10, "10000")
  assert result.returncode == 74, result.stderr[-5000:]
  line = one_error_line(result)
  checkpoints = workdir / "checkpoints"
  assert line == (
      f"error: cannot write checkpoint 10 in {checkpoints}: File too large (EFBIG); its unfinished folder was "
      f"removed. The newest intact checkpoint is step 5 ({checkpoints / '5'}); nothing saved before was lost. "
      "Raise the file-size limit (ulimit -f) and run the same command: it resumes from step 5.")
  assert checkpoint_names(workdir) == ["5"]  # Nothing half-written is left, and step 5 is kept.
  assert not (workdir / "run.lock").exists()
  records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if r["kind"] == "eval"] == [8]

  resumed = train(root, env, workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert_quiet(resumed)
  assert resumed.stderr.strip() == ""
  assert json.loads((workdir / "summary.json").read_text())["resumed_from_step"] == 5
  assert_same_run(workdir, reference)


@pytest.mark.slow
def test_out_of_space_while_writing_metrics_names_the_file_and_keeps_the_checkpoints(cli, reference):
  root, env = cli
  workdir = root / "full_metrics"
  # After checkpoint 10 is written, no file may grow past metrics.jsonl's size then (+10 bytes): the
  # record of step 12 cannot be written.
  result = with_fault(root, env, workdir, "limit_after", 10, "metrics+10")
  assert result.returncode == 74, result.stderr[-5000:]
  line = one_error_line(result)
  assert line.startswith(f"error: cannot write metrics.jsonl in {workdir}: File too large (EFBIG). The newest "
                         f"intact checkpoint is step 10 ({workdir / 'checkpoints' / '10'}); nothing saved before "
                         "was lost."), line
  assert checkpoint_names(workdir) == ["5", "10"]
  resumed = train(root, env, workdir)
  assert resumed.returncode == 0 and resumed.stderr.strip() == "", resumed.stderr[-3000:]
  assert json.loads((workdir / "summary.json").read_text())["resumed_from_step"] == 10
  assert_same_run(workdir, reference)


@pytest.mark.slow
def test_out_of_space_for_the_plot_at_the_end_then_the_same_command_writes_it(cli, reference):
  root, env = cli
  workdir = root / "full_plot"
  # Every file of the run fits in 40 kB but curves.png (about 60 kB).
  result = with_fault(root, env, workdir, "limit_now", 0, "40000")
  assert result.returncode == 74, result.stderr[-5000:]
  line = one_error_line(result)
  assert line.startswith(f"error: cannot write curves.png in {workdir}: File too large (EFBIG). The newest intact "
                         f"checkpoint is step 32"), line
  assert_same_run(workdir, reference)  # summary.json was written before the plot.
  again = train(root, env, workdir)
  assert again.returncode == 0 and again.stderr.strip() == "", again.stderr[-3000:]
  assert (workdir / "curves.png").read_bytes() == (reference / "curves.png").read_bytes()


@pytest.mark.slow
def test_folder_that_becomes_read_only_stops_in_one_line_and_resumes(cli, reference, tmp_path):
  root, env = cli
  workdir = tmp_path / "run"
  checkpoints = workdir / "checkpoints"
  if os.geteuid() == 0:  # Root writes through permissions: a read-only bind mount of the folder on itself.
    probe = tmp_path / "probe"
    probe.mkdir()
    if subprocess.run(["mount", "--bind", str(probe), str(probe)], capture_output=True).returncode != 0:
      pytest.skip("run as root without mount: permissions cannot make a folder read-only for root")
    subprocess.run(["umount", str(probe)], check=True)
    make_read_only = f"mount --bind {checkpoints} {checkpoints} && mount -o remount,bind,ro {checkpoints}"
    make_writable = ["umount", str(checkpoints)]
    reason = "Read-only file system (EROFS)"
  else:
    make_read_only, make_writable = f"chmod a-w {checkpoints}", ["chmod", "u+w", str(checkpoints)]
    reason = "Permission denied (EACCES)"
  try:
    result = with_fault(root, env, workdir, "shell_before", 10, make_read_only, timeout=120)
    assert result.returncode == 74, result.stderr[-5000:]
    line = one_error_line(result)
    assert line == (
        f"error: cannot write checkpoint 10 in {checkpoints}: {reason}. The newest intact checkpoint is step 5 "
        f"({checkpoints / '5'}); nothing saved before was lost. Make {checkpoints} writable again and run the same "
        "command: it resumes from step 5."), line
  finally:
    subprocess.run(make_writable, check=False)
  resumed = train(root, env, workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert_quiet(resumed)
  assert resumed.stderr.strip() == ""
  assert json.loads((workdir / "summary.json").read_text())["resumed_from_step"] == 5
  assert_same_run(workdir, reference)


@pytest.mark.slow
def test_second_run_on_one_workdir_refuses_in_one_line_before_writing_and_the_first_finishes_alone(cli, reference):
  root, env = cli
  workdir = root / "shared"
  go = root / "shared_go"
  # The first run stops after its checkpoint 5 until the second has come and gone.
  first = subprocess.Popen([sys.executable, str(root / "fault_wrapper.py"), "pause_after", "5", str(go),
                            *flags(root, workdir)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
  try:
    deadline = time.time() + 200
    while not Path(f"{go}.waiting").exists() and first.poll() is None and time.time() < deadline:
      time.sleep(0.02)
    assert Path(f"{go}.waiting").exists(), first.communicate()[1][-3000:]
    holder = json.loads((workdir / "run.lock").read_text())
    assert holder["pid"] == first.pid and holder["host"] and holder["started"]
    before = tree_snapshot(workdir)

    second = train(root, env, workdir)
    assert second.returncode == 73
    assert output_lines(second) == [
        f"error: {workdir} is in use by another run: pid {first.pid} on host {holder['host']}, started "
        f"{holder['started']} (lock file {workdir / 'run.lock'}). This run wrote nothing; wait for that run to end "
        "or stop it, or use another --workdir."]
    assert_quiet(second)
    assert tree_snapshot(workdir) == before  # Not a file added, changed or removed.
  finally:
    go.write_text("go")
    out, err = first.communicate(timeout=240)
  assert first.returncode == 0, err[-3000:]
  assert err.strip() == "" and "Traceback" not in out
  assert not (workdir / "run.lock").exists()
  assert_same_run(workdir, reference)


def _overwrite(path: Path) -> None:
  path.write_bytes(np.random.default_rng(0).integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes())


def damage(step_dir: Path, how: str) -> None:
  state = step_dir / "state"
  data_files = [p for p in state.rglob("*") if p.is_file() and p.parent.name == "d"]
  if how == "truncated_arrays":
    for path in data_files:
      with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 4)
  elif how == "overwritten_arrays_and_sharding":  # Random bytes, sizes kept.
    for path in data_files + [state / "_sharding"]:
      _overwrite(path)
  elif how == "deleted_array_metadata":
    (state / "_METADATA").unlink()
  elif how == "overwritten_array_metadata":
    _overwrite(state / "_METADATA")
  elif how == "unparsable_meta":
    (step_dir / "meta" / "metadata").write_text("{not json")
  elif how == "deleted_meta":
    (step_dir / "meta" / "metadata").unlink()
  elif how == "unfinished_save":
    shutil.copytree(step_dir, step_dir.parent / f"{int(step_dir.name) + 3}.orbax-checkpoint-tmp")
    for path in (step_dir.parent / f"{int(step_dir.name) + 3}.orbax-checkpoint-tmp").rglob("d/*"):
      with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
  else:
    raise ValueError(how)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated_arrays", "overwritten_arrays_and_sharding", "deleted_array_metadata",
                                 "overwritten_array_metadata", "unparsable_meta", "deleted_meta", "unfinished_save"])
def test_damaged_newest_checkpoint_gives_one_line_and_no_traceback(cli, reference, how):
  root, env = cli
  workdir = root / f"damaged_{how}"
  shutil.copytree(reference, workdir)  # Checkpoints 25, 30 and 32 (the last three are kept).
  damage(workdir / "checkpoints" / "32", how)

  result = train(root, env, workdir)
  assert result.returncode == 0, result.stderr[-5000:]
  assert_quiet(result)
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, result.stderr[-5000:]
  if how == "unfinished_save":
    assert lines[0] == (f"checkpoint {workdir / 'checkpoints' / '35.orbax-checkpoint-tmp'} is damaged: an unfinished "
                        "save (temporary folder); moved to 35.damaged, resuming from step 32."), lines[0]
    resumed_from = 32
  else:
    assert re.fullmatch(rf"checkpoint {re.escape(str(workdir / 'checkpoints' / '32'))} is damaged: its (arrays|metadata) cannot be "
                        r"(restored|read) \(.+\); moved to 32\.damaged, resuming from step 30\.", lines[0]), lines[0]
    resumed_from = 30
  assert json.loads((workdir / "summary.json").read_text())["resumed_from_step"] == resumed_from
  final = final_state(workdir)
  for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(final_state(reference))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_no_checkpoint_restores_one_line_no_traceback(cli, reference):
  root, env = cli
  workdir = root / "all_damaged"
  shutil.copytree(reference, workdir)
  for step in checkpoint_names(workdir):
    damage(workdir / "checkpoints" / step, "overwritten_arrays_and_sharding")
  before = tree_snapshot(workdir)
  result = train(root, env, workdir, "--config.num_epochs=5")
  assert result.returncode == 1
  line = one_error_line(result)
  assert line.startswith(f"error: no checkpoint in {workdir / 'checkpoints'} can be restored: 32: its arrays cannot "
                         "be restored"), line
  assert "Nothing was changed." in line
  assert tree_snapshot(workdir) == before
