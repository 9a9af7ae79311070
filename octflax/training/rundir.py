"""The run directory: what a training run holds in its working directory while it runs.

`RunDirectory` is a context manager that the loop (`octflax.training.run`) opens
itself::

  with RunDirectory(workdir, chief=jax.process_index() == 0) as rd:
    store = rd.checkpoints(identity, keep=3)     # checkpoints/, closed on the way out
    records = rd.records(start_step=0, ...)      # metrics.jsonl and the TensorBoard events
    ...
    with rd.stop:                                # the steps: a SIGTERM or a first Ctrl-C asks to stop
      ... if rd.stop.requested(step): ...
    rd.write_summary(summary, title)             # summary.json and curves.png

Entering, it creates the directory and checks it can be written (before anything
compiles), takes its lock (`lock.WorkdirLock`), holds back orbax's background
reports (`octflax.checkpoint.quiet`) and holds the run's `StopSignals` (the loop
installs them around its steps). On the way out (the end, an error, a stop) it
closes every writer it opened, restores the signal handlers, releases the lock, and turns a failed write of the directory
(no space left, a quota, a read-only folder) into one `WriteFailedError` line
naming the file and the newest intact checkpoint (`octflax.files`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any, Callable

import jax
from etils import epath

from octflax import files
from octflax.checkpoint import CHECKPOINT_DIR, CheckpointStore, ModelIdentity, quiet
from octflax.errors import OctflaxError, WorkdirError, WorkdirLockedError, WriteFailedError
from octflax.training import reports
from octflax.training.lock import LOCK_FILE, WorkdirLock

PROBE_FILE = ".octflax-write-probe"


def _say(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


class RunDirectory:
  """A run's working directory while the run holds it (see the module docstring).

  Attributes:
    given: the directory as the user gave it.
    path: the resolved path (a local path or a ``gs://`` URL); set on entering.
    chief: whether this process writes the reports and takes the lock (process 0).
    stop: the run's `StopSignals` (``with rd.stop:`` installs them; the directory's exit restores).
  """

  def __init__(self, workdir: str | os.PathLike, *, chief: bool | None = None, say: Callable[[str], Any] = _say):
    self.given, self.path, self.stop, self._say = os.fspath(workdir), "", StopSignals(), say
    self.chief = jax.process_index() == 0 if chief is None else chief
    self._lock: WorkdirLock | None = None
    self._open: list[Any] = []  # What `close_writers` closes, newest first.
    self._quiet: Any = None

  def __enter__(self) -> RunDirectory:
    self.path = prepare_workdir(self.given)  # Before anything compiles: an unusable directory costs nothing.
    self._quiet = quiet.session()
    self._quiet.__enter__()
    try:
      self._lock = hold_lock(self.path, chief=self.chief, say=self._say)
    except BaseException:
      self._quiet.__exit__(*sys.exc_info())
      raise
    return self

  def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> bool:
    original = error
    try:
      try:
        self.close_writers()
      except BaseException as e:  # pylint: disable=broad-except
        error = e  # As in a `finally`: e.g. a checkpoint that could not be written outweighs a stop.
      failure = error if isinstance(error, WriteFailedError) else self._as_write_failure(error)
      if failure is not None:
        quiet.failure_reported()
    finally:
      self.stop.__exit__()
      self._quiet.__exit__(kind, error, traceback)
      if self._lock is not None:
        self._lock.release()
    if failure is not None and failure is not error:
      raise failure from None
    if error is not original:
      raise error  # A writer that could not be closed (its own one-line error).
    return False

  def close_writers(self) -> None:
    """Closes the writers opened so far (all of them; the first error is raised): the checkpoints'
    background writes finish here, and a save that failed raises its `WriteFailedError`."""
    first = None
    while self._open:
      try:
        self._open.pop().close()
      except BaseException as e:  # pylint: disable=broad-except
        first = first or e
    if first is not None:
      raise first

  def _as_write_failure(self, error: BaseException | None) -> WriteFailedError | None:
    """``error`` as the one-line `WriteFailedError` of a failed write in this directory, or None."""
    if not isinstance(error, OSError) or files.is_url(self.path):
      return None
    if isinstance(error, OctflaxError):
      return None  # Already one line.
    code = files.cannot_write(error)
    if code is None:
      return None
    # A failed write often fails again while the run closes its files (a buffer that cannot be
    # flushed): the first error that names its file says what was being written.
    for e in files.chain(error):
      if isinstance(e, OSError) and e.filename and files.cannot_write(e) is not None:
        error, code = e, files.cannot_write(e)
        break
    if not _inside(error.filename, self.path):
      return None
    if error.filename:
      path = os.path.abspath(os.fspath(error.filename))
      what, folder = os.path.basename(path), os.path.dirname(path)
    else:
      what, folder = "a file", self.path
    return files.write_failed(what, folder, code, os.path.join(self.path, CHECKPOINT_DIR))

  # The writers: opened here, closed by `__exit__`. ---------------------------------------

  def checkpoints(self, identity: ModelIdentity, *, keep: int) -> CheckpointStore:
    """The run's ``checkpoints/`` for the model ``identity``, checked to hold no other model's.

    Raises:
      CheckpointMismatchError: the directory holds another model's or data set's checkpoints.
    """
    store = self.opened(CheckpointStore(f"{self.path}/{CHECKPOINT_DIR}", identity=identity, keep=keep,
                                         is_chief=self.chief))
    store.check_identity()  # Before anything in the working directory is written.
    return store

  def records(self, *, start_step: int, config: dict[str, Any], run_info: dict[str, Any]) -> reports.MetricsWriter:
    """``metrics.jsonl`` from ``start_step`` on (what an interrupted run logged after it is dropped),
    mirrored to TensorBoard event files that start with the run's config and ``run_info``."""
    board = reports.EventWriter(self.path, start_step=start_step, enabled=self.chief, say=self._say)
    board.write_run_info(config, run_info)
    return self.opened(reports.MetricsWriter(self.path, resume_step=start_step or None, enabled=self.chief,
                                              mirror=board))

  def opened(self, writer: Any) -> Any:
    """Closes ``writer`` (anything with ``close()``, e.g. a progress bar) with the directory."""
    self._open.append(writer)
    return writer

  def write_summary(self, summary: dict[str, Any], records: list[dict[str, Any]], title: str) -> None:
    """``summary.json`` and ``curves.png`` (process 0)."""
    if self.chief:
      reports.write_json(epath.Path(self.path) / reports.SUMMARY_FILE, summary)
      reports.plot_curves(records, epath.Path(self.path) / reports.CURVES_FILE, title=title)


def prepare_workdir(workdir: str | os.PathLike) -> str:
  """Resolves ``workdir`` (`octflax.files.resolve_path`), creates it and checks files can be written in it
  (a probe file written and removed; a URL is only resolved: its store is checked by the first write).

  Raises:
    WorkdirError: the path is a file, cannot be created or is not writable.
  """
  path = files.resolve_path(workdir)
  if files.is_url(path):
    return path
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f"--workdir {os.fspath(workdir)!r} ({path}) is a file, not a directory; "
                       "give a directory (it is created if missing).")
  probe = os.path.join(path, f"{PROBE_FILE}-{os.getpid()}")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"--workdir {os.fspath(workdir)!r}: cannot create {path}: {e.strerror or e}.") from None
  try:
    with open(probe, "w") as f:
      f.write("probe\n")
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(f"--workdir {os.fspath(workdir)!r}: cannot write in {path}: {e.strerror or e}.") from None
  return path


def hold_lock(workdir: str, *, chief: bool = True, say: Callable[[str], Any] = _say) -> WorkdirLock | None:
  """The lock of ``workdir``, taken by process 0; None for a ``gs://`` directory (not locked) or
  on the other processes, which learn from process 0 whether it took it and all stop together if not.

  Raises:
    WorkdirLockedError: another run holds the lock.
    WorkdirError: the lock file cannot be created.
    WriteFailedError: it cannot be written (e.g. no space left).
  """
  if files.is_url(workdir):
    return None
  error, lock = None, None
  if chief:
    try:
      lock = WorkdirLock(workdir, say=say).acquire()
    except (WorkdirLockedError, WorkdirError) as e:
      error = e
    except OSError as e:
      code = files.cannot_write(e)
      if code is None:
        raise
      error = files.write_failed(f"its lock file {LOCK_FILE}", workdir, code, os.path.join(workdir, CHECKPOINT_DIR))
  if jax.process_count() > 1:
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    locked = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not locked and error is None:
      error = WorkdirLockedError(f"process 0 could not take the lock of {workdir} (its output says why); "
                                 "this process stops with it.")
  if error is not None:
    if lock is not None:
      lock.release()
    raise error
  return lock


def _inside(path: Any, workdir: str) -> bool:
  if not path:
    return True  # A write to an open file of the run (no name given).
  path = os.path.abspath(os.fspath(path))
  return path == workdir or path.startswith(workdir.rstrip(os.sep) + os.sep)


class StopSignals:
  """SIGTERM (a pre-emption notice) and SIGINT (Ctrl-C) ask the run to stop after the step in flight.

  The trainer then checkpoints that step and stops with `RunStopped` (exit status 75); the same
  command resumes. A second Ctrl-C ends the process at once (status 130). Multi-process runs
  stop at the same step everywhere (saving is collective): JAX's preemption sync service
  (`jax.distributed.initialize`) receives the SIGTERM and names that step; a SIGINT is passed
  on to it as a SIGTERM.
  """

  def __init__(self):
    self.signal_name: str | None = None
    self._previous: dict[int, Any] = {}
    self._sync = None

  def __enter__(self) -> StopSignals:
    self._sync = _sync_manager()
    if threading.current_thread() is not threading.main_thread():
      return self  # Signals reach only the main thread's handlers; nothing to install.
    for sig in [signal.SIGINT] + ([signal.SIGTERM] if self._sync is None else []):  # Else JAX owns SIGTERM.
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> bool:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
    return False

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    if self.signal_name is None:
      self.signal_name = signal.Signals(signum).name
    # A second Ctrl-C ends the process at once, also while it waits in XLA (where a Python
    # handler would run only when the call returns).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if self._sync is not None and signum == signal.SIGINT:
      os.kill(os.getpid(), signal.SIGTERM)  # Through JAX's service, so all processes agree.

  def requested(self, step: int) -> bool:
    """Whether to checkpoint ``step`` (just dispatched) and stop; call after every step.

    Multi-process: True on every process at the same step.
    """
    if self._sync is not None:
      if self._sync.reached_sync_point(int(step)):
        self.signal_name = self.signal_name or "SIGTERM"
        return True
      return False
    return self.signal_name is not None


def _sync_manager() -> Any:
  """JAX's preemption sync manager of a multi-process run, or None."""
  if jax.process_count() == 1:
    return None
  try:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return getattr(distributed.global_state, "preemption_sync_manager", None)


__all__ = ["PROBE_FILE", "RunDirectory", "StopSignals", "hold_lock", "prepare_workdir"]
