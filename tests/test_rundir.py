"""The run directory (octflax.training.rundir): what a run holds while it runs, and `run` called on its own."""

from __future__ import annotations

import errno
import json
import os
import signal

import pytest

from octflax import training
from octflax.errors import WorkdirError, WorkdirLockedError, WriteFailedError
from octflax.training.lock import LOCK_FILE
from octflax.training.rundir import RunDirectory
from test_training import tiny_config, write_fashion_mnist


class _Writer:
  def __init__(self, log, name, error=None):
    self.log, self.name, self.error = log, name, error

  def close(self):
    self.log.append(self.name)
    if self.error is not None:
      raise self.error


def test_it_holds_the_lock_and_the_stop_signals_and_closes_its_writers_newest_first(tmp_path):
  closed = []
  before = signal.getsignal(signal.SIGTERM)
  with RunDirectory(tmp_path / "run", chief=True) as rd:
    assert rd.path == str(tmp_path / "run") and os.path.isdir(rd.path)
    assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["pid"] == os.getpid()
    with pytest.raises(WorkdirLockedError, match="is in use by another run: pid"):
      with RunDirectory(tmp_path / "run", chief=True):
        pass
    rd.opened(_Writer(closed, "first"))
    rd.opened(_Writer(closed, "second"))
    assert signal.getsignal(signal.SIGTERM) == before
    rd.stop.__enter__()  # As the loop does around its steps; the directory's exit restores the handlers.
    assert signal.getsignal(signal.SIGTERM) == rd.stop._handle
    os.kill(os.getpid(), signal.SIGTERM)  # Asks the run to stop after its step; the process goes on.
    assert rd.stop.requested(1) and rd.stop.signal_name == "SIGTERM"
  assert closed == ["second", "first"]
  assert not (tmp_path / "run" / LOCK_FILE).exists()
  assert signal.getsignal(signal.SIGTERM) == before


def test_a_failed_write_inside_becomes_one_line_and_one_outside_does_not(tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(WriteFailedError) as error:
    with RunDirectory(workdir, chief=True):
      raise OSError(errno.ENOSPC, "No space left on device", str(workdir / "metrics.jsonl"))
  assert str(error.value).startswith(f"cannot write metrics.jsonl in {workdir}: No space left on device (ENOSPC).")
  assert error.value.__cause__ is None and error.value.__suppress_context__
  elsewhere = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "elsewhere"))
  with pytest.raises(OSError) as raised:
    with RunDirectory(workdir, chief=True):
      raise elsewhere
  assert raised.value is elsewhere  # Not the run's file: passed on as it is.
  assert not (workdir / LOCK_FILE).exists()


def test_a_writer_that_cannot_be_closed_outweighs_the_error_in_flight(tmp_path):
  workdir = tmp_path / "run"
  closed = []
  with pytest.raises(WriteFailedError, match=r"^cannot write metrics\.jsonl in "):
    with RunDirectory(workdir, chief=True) as rd:
      rd.opened(_Writer(closed, "metrics", OSError(errno.EDQUOT, "Disk quota exceeded",
                                                   str(workdir / "metrics.jsonl"))))
      rd.opened(_Writer(closed, "progress"))
      raise KeyboardInterrupt
  assert closed == ["progress", "metrics"]  # Every writer is closed, the first error wins.


def test_a_file_in_place_of_the_directory_is_refused_before_anything_is_held(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(WorkdirError, match="is a file, not a directory"):
    with RunDirectory(tmp_path / "file", chief=True):
      pass


def test_run_works_when_called_on_its_own(tmp_path):
  write_fashion_mnist(tmp_path / "data", n_train=16, n_test=8)
  plan, splits = training.plan_run(tiny_config(tmp_path / "data", checkpoint_every_steps=1))
  summary = training.run(plan, splits, str(tmp_path / "run"))
  assert summary["steps"] == plan.total_steps == 2
  assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2
  assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()) == ["1", "2"]
  assert not (tmp_path / "run" / LOCK_FILE).exists()
