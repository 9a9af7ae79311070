"""Faults a long run meets: relative and ``~`` paths, an unusable workdir, damaged checkpoints,
a full disk, two runs on one working directory.

In-process runs of a tiny CNN (seconds each); the signal and multi-process
cases run the real command line in tests/test_training_cli.py, the full disk,
read-only folders, two runs and damage as a user meets them in
tests/test_faults_cli.py, kills at random moments in tests/test_chaos.py.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import chex
import numpy as np
import pytest

import octflax.files
import octflax.errors
import octflax.checkpoint
from octflax import training
from octflax import files as writes
from octflax.checkpoint import quiet
from octflax.training import progress as progress_lib
from octflax.training import reports
from octflax.checkpoint import CheckpointStore
from test_training import tiny_config, write_fashion_mnist


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("faults_data")
  write_fashion_mnist(root, n_train=32, n_test=8)
  return root


def small_config(data_dir: Path, **fields):
  # 4 steps an epoch; a checkpoint every 2.
  fields = {"checkpoint_every_steps": 2, "log_every_steps": 2, "keep_checkpoints": 5, **fields}
  return tiny_config(data_dir, **fields)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
  """An uninterrupted run of `small_config` over 2 epochs (checkpoints 2, 4, 6, 8)."""
  workdir = tmp_path_factory.mktemp("faults_reference") / "run"
  training.train_and_evaluate(small_config(data_dir, num_epochs=2), str(workdir))
  return workdir


def checkpoint_steps(workdir: Path) -> list[str]:
  return sorted(p.name for p in (workdir / "checkpoints").iterdir())


def test_paths_relative_absolute_home_and_urls_pass_through(monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert octflax.files.resolve_path("runs/a") == str(tmp_path / "runs" / "a")
  assert octflax.files.resolve_path("~/runs/a") == str(tmp_path / "home" / "runs" / "a")
  assert octflax.files.resolve_path(str(tmp_path / "x")) == str(tmp_path / "x")
  for url in ("gs://bucket/runs/a", "s3://b/c", "https://example.org/x"):
    assert octflax.files.resolve_path(url) == url


def test_relative_workdir_checkpoints_and_resumes(monkeypatch, tmp_path, data_dir):
  # orbax refuses relative paths in its background save thread; the trainer resolves them first.
  shutil.copytree(data_dir, tmp_path / "data")
  monkeypatch.chdir(tmp_path)
  config = small_config(Path("data"))
  first = training.train_and_evaluate(config, "runs/fashion_mnist")
  assert first["steps"] == 4 and first["resumed_from_step"] is None
  assert checkpoint_steps(tmp_path / "runs" / "fashion_mnist") == ["2", "4"]
  # The stored config names the data by absolute path (evaluate --workdir works from anywhere);
  # the caller's config is left as it was.
  assert octflax.checkpoint.read_checkpoint("runs/fashion_mnist")[1]["config"]["data"]["dir"] == str(tmp_path / "data")
  assert config.data.dir == "data"
  resumed = training.train_and_evaluate(small_config(Path("data"), num_epochs=2), "runs/fashion_mnist")
  assert resumed["resumed_from_step"] == 4 and resumed["steps"] == 8
  assert checkpoint_steps(tmp_path / "runs" / "fashion_mnist") == ["2", "4", "6", "8"]


def test_data_dir_relative_and_home(monkeypatch, tmp_path, data_dir):
  monkeypatch.chdir(data_dir.parent)
  monkeypatch.setenv("HOME", str(data_dir.parent))
  for given in (data_dir.name, f"~/{data_dir.name}"):
    config = small_config(Path(given))
    _, splits = training.plan_run(config)
    assert len(splits.train) == 32


@pytest.mark.parametrize("case", ["file", "cannot_create"])
def test_unusable_workdir_stops_before_anything_runs(tmp_path, data_dir, case):
  if case == "file":
    workdir = tmp_path / "run"
    workdir.write_text("not a directory")
    expected = "is a file, not a directory"
  elif case == "cannot_create":
    (tmp_path / "blocker").write_text("a file")
    workdir = tmp_path / "blocker" / "run"
    expected = "cannot create"
  with pytest.raises(octflax.errors.WorkdirError, match=expected) as error:
    training.train_and_evaluate(small_config(data_dir), str(workdir))
  assert "\n" not in str(error.value)


def test_workdir_probe_refuses_a_read_only_directory(tmp_path, monkeypatch):
  # Root ignores permissions: refuse the probe's write the way a read-only mount does.
  real_open = open

  def refusing_open(path, *args, **kwargs):
    if training.rundir.PROBE_FILE in os.fspath(path):
      raise PermissionError(13, "Permission denied")
    return real_open(path, *args, **kwargs)

  monkeypatch.setattr("builtins.open", refusing_open)
  with pytest.raises(octflax.errors.WorkdirError, match=r"cannot write in .*: Permission denied"):
    training.rundir.prepare_workdir(str(tmp_path / "run"))


def _damage(step_dir: Path, how: str) -> None:
  if how == "truncated_array":
    # The array data files cut short, as a full disk or an interrupted copy leaves them.
    for path in (step_dir / "state").rglob("*"):
      if path.is_file() and path.parent.name == "d":
        with open(path, "r+b") as f:
          f.truncate(path.stat().st_size // 4)
  elif how == "deleted_metadata":
    (step_dir / "meta" / "metadata").unlink()
  elif how == "unparsable_metadata":
    (step_dir / "meta" / "metadata").write_text("{not json")
  elif how == "leftover_tmp":
    # An unfinished save of a later step, as a kill during the write leaves it.
    shutil.copytree(step_dir, step_dir.parent / f"{int(step_dir.name) + 2}.orbax-checkpoint-tmp")
  else:
    raise ValueError(how)


@pytest.mark.parametrize("how", ["truncated_array"] + [
    pytest.param(how, marks=pytest.mark.slow)
    for how in ("overwritten_arrays", "deleted_metadata", "unparsable_metadata", "leftover_tmp")])
def test_damaged_newest_checkpoint_is_moved_aside_and_the_run_resumes(tmp_path, data_dir, reference, capsys, how):
  config = small_config(data_dir, num_epochs=2)
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  if how == "overwritten_arrays":  # Random bytes in every array file and in _sharding, sizes kept.
    state = workdir / "checkpoints" / "8" / "state"
    for path in [p for p in state.rglob("*") if p.parent.name == "d"] + [state / "_sharding"]:
      path.write_bytes(np.random.default_rng(0).integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes())
  else:
    _damage(workdir / "checkpoints" / "8", how)
  capsys.readouterr()

  summary = training.train_and_evaluate(config, str(workdir))
  gc.collect()  # Orbax's abandoned reads report when they are collected.
  err = capsys.readouterr().err
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1 and "damaged" in lines[0], err
  if how == "leftover_tmp":
    assert "10.orbax-checkpoint-tmp is damaged: an unfinished save" in lines[0]
    assert "moved to 10.damaged, resuming from step 8" in lines[0]
    assert summary["resumed_from_step"] == 8
    assert "10.damaged" in checkpoint_steps(workdir)
  else:
    assert f"{workdir / 'checkpoints' / '8'} is damaged: " in lines[0]
    assert "moved to 8.damaged, resuming from step 6" in lines[0]
    assert summary["resumed_from_step"] == 6 and summary["steps"] == 8
    assert (workdir / "checkpoints" / "8.damaged").is_dir()  # Kept for the user to look at.
  assert "Traceback" not in err and "Exception ignored" not in err
  got, _ = octflax.checkpoint.read_checkpoint(str(workdir))
  want, _ = octflax.checkpoint.read_checkpoint(str(reference))
  chex.assert_trees_all_close(got, want, rtol=0, atol=1e-6)


def test_no_checkpoint_restores_stops_and_changes_nothing(tmp_path, data_dir, reference, capsys):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  for step in ("2", "4", "6", "8"):
    _damage(workdir / "checkpoints" / step, "unparsable_metadata")
  before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))
  with pytest.raises(octflax.errors.CheckpointError, match=r"no checkpoint in .* can be restored: 8: .*; 6: .*; 4: .*; 2: .*"
                     r"Nothing was changed") as error:
    training.train_and_evaluate(small_config(data_dir, num_epochs=3), str(workdir))
  assert "\n" not in str(error.value)
  assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")) == before
  gc.collect()
  assert capsys.readouterr().err == ""  # The one line is the error's; nothing else.


def test_progress_counts_finished_steps_and_prints_plain_lines_off_a_terminal(tmp_path):
  stream = io.StringIO()
  progress = progress_lib.Progress(label="oct_resnet8 a=0.25", total=6, initial=0, enabled=True, stream=stream)
  writer = reports.MetricsWriter(str(tmp_path), resume_step=None)
  fetched = []

  def fetch(items):
    fetched.append(len(items))
    return items

  reporter = progress_lib.StepReporter(
      writer=writer, progress=progress, fetch=fetch, global_batch=8, steps_per_epoch=3, log_every=2,
      learning_rate=lambda s: 0.1, start_step=0,
      max_in_flight=2)
  for step in range(1, 7):
    # NumPy metrics are "finished" at once: each step is read as soon as it is dispatched.
    reporter.dispatched(step, {"loss": np.float32(1.0 / step), "accuracy": np.float32(0.5),
                               "grad_norm": np.float32(1.0)})
    assert reporter.finished_step == step
  reporter.finish()
  writer.close()
  lines = stream.getvalue().splitlines()
  assert [line.split(",")[0] for line in lines] == [
      "oct_resnet8 a=0.25: step 2/6", "oct_resnet8 a=0.25: step 4/6", "oct_resnet8 a=0.25: step 6/6"]
  assert "\r" not in stream.getvalue()
  assert "loss 0.2917" in lines[1]  # mean of steps 3 and 4: (1/3 + 1/4) / 2
  assert all("images/s" in line for line in lines) and "ETA" in lines[1]
  assert reporter.take_epoch_means()["train_loss"] == pytest.approx(np.mean([1 / s for s in range(1, 7)]))


def test_progress_waits_for_steps_beyond_the_in_flight_limit(tmp_path):
  class Pending:
    """A device value that is never ready until read."""

    def is_ready(self):
      return False

  reads = []

  def fetch(items):
    reads.append(len(items))
    return [{"loss": 1.0, "accuracy": 0.0, "grad_norm": 1.0} for _ in items]

  progress = progress_lib.Progress(label="x", total=10, initial=0, enabled=False)
  writer = reports.MetricsWriter(str(tmp_path), resume_step=None, enabled=False)
  reporter = progress_lib.StepReporter(
      writer=writer, progress=progress, fetch=fetch, global_batch=8, steps_per_epoch=10, log_every=5,
      learning_rate=lambda s: 0.1, start_step=0,
      max_in_flight=3)
  for step in range(1, 6):
    reporter.dispatched(step, {"loss": Pending()})
  # Steps 1 and 2 had to be waited for (3 in flight at most); 3..5 are still unread.
  assert reporter.finished_step == 2 and reads == [1, 1]
  reporter.finish()
  assert reporter.finished_step == 5


def test_first_signal_asks_to_stop_and_a_second_ctrl_c_stops_at_once():
  # What was installed before (a job started in the background inherits SIGINT ignored).
  before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  with training.rundir.StopSignals() as stop:
    assert not stop.requested(1)
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.requested(2) and stop.signal_name == "SIGINT"
    # The next Ctrl-C takes the default action: the process ends at once.
    assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL
  with training.rundir.StopSignals() as stop:
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested(1) and stop.signal_name == "SIGTERM"
  assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_sigterm_checkpoints_the_step_in_flight_and_the_resumed_run_matches(tmp_path, data_dir, reference,
                                                                            monkeypatch):
  config = small_config(data_dir, num_epochs=2)

  dispatched = progress_lib.StepReporter.dispatched

  def dispatched_then_terminated(self, step, metrics):
    dispatched(self, step, metrics)
    if step == 3:  # Mid-epoch, between two periodic checkpoints.
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(progress_lib.StepReporter, "dispatched", dispatched_then_terminated)
  workdir = tmp_path / "run"
  with pytest.raises(octflax.errors.RunStopped, match=r"stopped by SIGTERM at step 3 of 8; checkpoint saved") as error:
    training.train_and_evaluate(config, str(workdir))
  assert error.value.step == 3
  assert checkpoint_steps(workdir) == ["2", "3"]
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if r["kind"] == "train"] == [2]  # Flushed before the exit.
  monkeypatch.undo()

  assert not (workdir / training.lock.LOCK_FILE).exists()  # Released on the way out.
  summary = training.train_and_evaluate(config, str(workdir))
  assert summary["resumed_from_step"] == 3 and summary["steps"] == 8
  got, _ = octflax.checkpoint.read_checkpoint(str(workdir))
  want, _ = octflax.checkpoint.read_checkpoint(str(reference))
  chex.assert_trees_all_close(got, want, rtol=0, atol=1e-6)
  # Resumed mid-epoch 1, the run still reports the whole epoch's training loss and accuracy.
  epochs = [[{k: r[k] for k in ("step", "train_loss", "train_accuracy")} for r in
             map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
            for d in (workdir, reference)]
  assert epochs[0] == epochs[1] and len(epochs[0]) == 2


# ----------------------------------------------------------------------------- a full disk


def test_checkpoint_that_cannot_be_written_stops_in_one_line_and_the_same_call_resumes(
    tmp_path, data_dir, reference, capsys, monkeypatch):
  config = small_config(data_dir, num_epochs=2)
  workdir = tmp_path / "run"
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  save = CheckpointStore.save

  def save_with_a_file_size_limit(self, step, *args, **kwargs):
    if step == 8:  # From the last save on, no file may grow past the other files of the run (+500 bytes).
      self.wait()
      limit = max(p.stat().st_size for p in workdir.iterdir() if p.is_file()) + 500
      resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(CheckpointStore, "save", save_with_a_file_size_limit)
  previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # A write over the limit fails with EFBIG.
  try:
    with pytest.raises(octflax.errors.WriteFailedError) as error:
      training.train_and_evaluate(config, str(workdir))
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, previous)
  monkeypatch.undo()
  checkpoints = workdir / "checkpoints"
  # Whether orbax had created step 8's folder when the write failed depends on its threads'
  # timing; the line says so when it had (and the folder is gone either way).
  message = str(error.value).replace("; its unfinished folder was removed", "")
  assert message == (
      f"cannot write checkpoint 8 in {checkpoints}: File too large (EFBIG). "
      f"The newest intact checkpoint is step 6 ({checkpoints / '6'}); nothing saved before was lost. Raise the "
      "file-size limit (ulimit -f) and run the same command: it resumes from step 6.")
  assert error.value.errno == 27 and error.value.intact_step == 6
  assert checkpoint_steps(workdir) == ["2", "4", "6"]
  assert sorted(p.name for p in checkpoints.iterdir()) == ["2", "4", "6"]  # no unfinished folder left
  assert not (workdir / training.lock.LOCK_FILE).exists()
  gc.collect()
  out, err = capsys.readouterr()
  assert err == "" and "Traceback" not in out, err

  summary = training.train_and_evaluate(config, str(workdir))
  assert summary["resumed_from_step"] == 6 and summary["steps"] == 8
  got, _ = octflax.checkpoint.read_checkpoint(str(workdir))
  want, _ = octflax.checkpoint.read_checkpoint(str(reference))
  chex.assert_trees_all_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("code, advice", [
    (28, "Free space there (or raise the quota) and run the same command"),
    (122, "Free space there (or raise the quota) and run the same command"),
    (27, "Raise the file-size limit (ulimit -f) and run the same command"),
    (30, "Make /r/checkpoints writable again and run the same command"),
    (13, "Make /r/checkpoints writable again and run the same command")])
def test_write_failures_are_told_from_other_errors_and_say_what_to_do(tmp_path, code, advice):
  # orbax and tensorstore carry the error number in their text.
  tensorstore = ValueError(f'RESOURCE_EXHAUSTED: Error writing local file "/r/checkpoints/4.orbax-checkpoint-tmp/'
                           f'state/_sharding": Failed to write 446 bytes: {os.strerror(code)} '
                           f"[os_error_code='{code}']")
  wrapped = RuntimeError("save failed")
  wrapped.__cause__ = tensorstore
  assert writes.cannot_write(tensorstore) == writes.cannot_write(wrapped) == code
  assert writes.cannot_write(OSError(code, os.strerror(code))) == code
  assert writes.failed_checkpoint_step(wrapped) == 4
  for other in (FileNotFoundError(2, "No such file"), ValueError("FAILED_PRECONDITION: ZSTD_decompressStream()"),
                OSError(5, "Input/output error")):
    assert writes.cannot_write(other) is None
  message = str(writes.write_failed("checkpoint 4", "/r/checkpoints", code, str(tmp_path)))
  assert message.startswith(f"cannot write checkpoint 4 in /r/checkpoints: {os.strerror(code)}")
  assert ". No checkpoint had been saved yet. " in message and advice in message
  assert message.endswith("it starts again from step 0.") and "\n" not in message


def test_reports_of_orbax_threads_are_held_then_printed_or_dropped_after_a_reported_failure(monkeypatch):
  printed = []
  monkeypatch.setattr(sys, "unraisablehook", printed.append)  # Where reports go without the filter.
  state = quiet._State()  # pylint: disable=protected-access
  monkeypatch.setattr(quiet, "_STATE", state)
  monkeypatch.setattr(warnings, "_showwarnmsg", warnings._showwarnmsg)  # Restored after the test.
  try:
    # The "Event loop is closed" report of a tensorstore result that arrives after orbax closed its loop.
    late = type("Report", (), {"exc_type": RuntimeError, "exc_value": RuntimeError("Event loop is closed"),
                               "exc_traceback": None, "err_msg": None, "object": None})()
    mine = type("Report", (), {"exc_type": ValueError, "exc_value": ValueError("mine"), "exc_traceback": None,
                               "err_msg": None, "object": None})()
    sys.unraisablehook(late)
    assert printed == [late]  # No run: nothing is held.
    with quiet.session():
      sys.unraisablehook(late)
      sys.unraisablehook(mine)
      assert printed == [late, mine]  # Not orbax's: at once; orbax's: held ...
    assert printed == [late, mine, late]  # ... and printed at the end: the run reported no failure.
    with quiet.session():
      sys.unraisablehook(late)
      quiet.failure_reported()
      sys.unraisablehook(late)
    sys.unraisablehook(late)
    assert printed == [late, mine, late]  # After a reported failure: dropped, from then on.
  finally:
    for name in ("absl", "asyncio"):
      logging.getLogger(name).removeFilter(state._filter)  # pylint: disable=protected-access


def test_futures_left_with_a_tensorstore_status_are_dropped_after_a_reported_failure(monkeypatch):
  logged = []
  handler = logging.Handler()
  handler.emit = logged.append
  asyncio_logger = logging.getLogger("asyncio")
  asyncio_logger.addHandler(handler)
  state = quiet._State()  # pylint: disable=protected-access
  monkeypatch.setattr(quiet, "_STATE", state)
  monkeypatch.setattr(warnings, "_showwarnmsg", warnings._showwarnmsg)

  def abandon(error: BaseException) -> None:
    # A future given an error and never awaited, as tensorstore's reads leave them after orbax gave up:
    # collected, it makes asyncio log "Future exception was never retrieved".
    loop = asyncio.new_event_loop()
    future = loop.create_future()
    future.set_exception(error)
    del future
    gc.collect()
    loop.close()

  damaged = 'DATA_LOSS: Error reading "params.conv.kernel/.zarray" in OCDBT database: Error decoding b-tree node'
  try:
    with quiet.session():
      quiet.failure_reported()
      abandon(ValueError(damaged))
      assert logged == []  # tensorstore's status, never raised in Python: dropped.
      abandon(ValueError("mine"))
      try:
        raise ValueError("DATA_LOSS: raised by the program itself")
      except ValueError as raised:
        abandon(raised)  # It has a traceback, outside orbax and tensorstore: not theirs.
    assert [str(r.exc_info[1]) for r in logged] == ["mine", "DATA_LOSS: raised by the program itself"]
    assert all("Future exception was never retrieved" in r.getMessage() for r in logged)
  finally:
    asyncio_logger.removeHandler(handler)
    for name in ("absl", "asyncio"):
      logging.getLogger(name).removeFilter(state._filter)  # pylint: disable=protected-access


# ----------------------------------------------------------------------------- one run per working directory


def test_a_run_on_a_locked_workdir_stops_in_one_line_and_writes_nothing(tmp_path, data_dir):
  workdir = tmp_path / "run"
  workdir.mkdir()
  with training.lock.WorkdirLock(str(workdir)):  # Held as another run holds it: a second open file's flock.
    holder = json.loads((workdir / training.lock.LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname() and holder["started"]
    before = sorted((p.name, p.stat().st_mtime_ns) for p in workdir.iterdir())
    with pytest.raises(octflax.errors.WorkdirLockedError) as error:
      training.train_and_evaluate(small_config(data_dir), str(workdir))
    assert str(error.value) == (
        f"{workdir} is in use by another run: pid {os.getpid()} on host {socket.gethostname()}, started "
        f"{holder['started']} (lock file {workdir / training.lock.LOCK_FILE}). This run wrote nothing; wait for that run "
        "to end or stop it, or use another --workdir.")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in workdir.iterdir()) == before
  assert list(workdir.iterdir()) == []  # Released: the file is gone.


def test_a_lock_left_by_a_killed_run_is_taken_over_and_the_run_says_so(tmp_path, data_dir, capsys):
  workdir = tmp_path / "run"
  workdir.mkdir()
  # Another run's lock as WorkdirLock takes it: an flock held for the process's life, JSON naming it.
  holder = subprocess.Popen([sys.executable, "-S", "-c", (
      "import fcntl, json, os, socket, sys, time\n"
      "fd = os.open(os.path.join(sys.argv[1], 'run.lock'), os.O_RDWR | os.O_CREAT)\n"
      "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
      "os.write(fd, json.dumps({'host': socket.gethostname(), 'pid': os.getpid(), 'started': 'then'}).encode())\n"
      "print('locked', flush=True)\n"
      "time.sleep(600)"), str(workdir)], stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "locked"
  with pytest.raises(octflax.errors.WorkdirLockedError, match=f"pid {holder.pid} on host"):
    training.lock.WorkdirLock(str(workdir)).acquire()
  holder.kill()  # SIGKILL: the file stays, its flock goes with the process.
  holder.wait()
  holder.stdout.close()
  assert json.loads((workdir / training.lock.LOCK_FILE).read_text())["pid"] == holder.pid
  capsys.readouterr()

  summary = training.train_and_evaluate(small_config(data_dir), str(workdir))
  assert summary["steps"] == 4
  lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert lines == [f"{workdir / training.lock.LOCK_FILE} was left by pid {holder.pid} on host {socket.gethostname()}, "
                   "started then, which no longer runs; this run takes the lock over."]
  assert not (workdir / training.lock.LOCK_FILE).exists()


def test_a_lock_left_on_another_host_is_kept(tmp_path):
  (tmp_path / training.lock.LOCK_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "then"}))
  with pytest.raises(octflax.errors.WorkdirLockedError, match=r"pid 1 on host elsewhere, started then; this host cannot "
                     r"tell whether that process still runs, so its lock is kept: delete .*run\.lock once it is gone"):
    training.lock.WorkdirLock(str(tmp_path)).acquire()
  assert json.loads((tmp_path / training.lock.LOCK_FILE).read_text())["host"] == "elsewhere"
