"""What a training run holds while it runs, and how it stops when a write fails.

`run_guard` wraps `train_and_evaluate`: within it the run takes its working
directory's lock (`hold_workdir`, released on every way out: the end, an
error, a SIGTERM or Ctrl-C stop), a file of the working directory that cannot
be written stops the run with one `WriteFailedError` line (see
`octflax.files`), and orbax's background reports are held back
(`octflax.checkpoint.quiet`).
"""

from __future__ import annotations

import contextvars
import functools
import os
import sys
from typing import Any, Callable

from octflax import files
from octflax.checkpoint import CHECKPOINT_DIR, quiet
from octflax.errors import TrainingError, WorkdirError, WorkdirLockedError, WriteFailedError
from octflax.training.lock import LOCK_FILE, WorkdirLock


class _Run:
  def __init__(self):
    self.workdir: str | None = None
    self.lock: WorkdirLock | None = None


_CURRENT: contextvars.ContextVar[_Run | None] = contextvars.ContextVar("octflax_run", default=None)


def _say(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def hold_workdir(workdir: str, *, is_chief: bool = True, say: Callable[[str], None] = _say) -> None:
  """Takes the lock of ``workdir`` for the run (`run_guard`) that calls this.

  Process 0 takes it; in a multi-process run the other processes learn from
  process 0 whether it did, and all stop together if not. A ``gs://``
  working directory is not locked.

  Raises:
    WorkdirLockedError: another run holds the lock.
    WorkdirError: the lock file cannot be created.
    WriteFailedError: it cannot be written (e.g. no space left).
  """
  run = _CURRENT.get()
  if run is None:
    raise RuntimeError("hold_workdir is called within a function wrapped by run_guard")
  run.workdir = workdir
  if files.is_url(workdir):
    return
  error = None
  if is_chief:
    try:
      run.lock = WorkdirLock(workdir, say=say).acquire()
    except (WorkdirLockedError, WorkdirError) as e:
      error = e
    except OSError as e:
      code = files.cannot_write(e)
      if code is None:
        raise
      error = files.write_failed(f"its lock file {LOCK_FILE}", workdir, code, os.path.join(workdir, CHECKPOINT_DIR))
  import jax  # pylint: disable=g-import-not-at-top

  if jax.process_count() > 1:
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    locked = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not locked and error is None:
      error = WorkdirLockedError(f"process 0 could not take the lock of {workdir} (its output says why); "
                                 "this process stops with it.")
  if error is not None:
    raise error


def _in_workdir(path: Any, workdir: str) -> bool:
  if not path:
    return True  # A write to an open file of the run (no name given).
  path = os.path.abspath(os.fspath(path))
  return path == workdir or path.startswith(workdir.rstrip(os.sep) + os.sep)


def _as_write_failure(error: OSError, workdir: str) -> WriteFailedError | None:
  code = files.cannot_write(error)
  if code is None:
    return None
  # A failed write often fails again while the run closes its files (a buffer that cannot be
  # flushed): the first error that names its file says what was being written.
  for e in files.chain(error):
    if isinstance(e, OSError) and e.filename and files.cannot_write(e) is not None:
      error, code = e, files.cannot_write(e)
      break
  if not _in_workdir(error.filename, workdir):
    return None
  if error.filename:
    path = os.path.abspath(os.fspath(error.filename))
    what, folder = os.path.basename(path), os.path.dirname(path)
  else:
    what, folder = "a file", workdir
  return files.write_failed(what, folder, code, os.path.join(workdir, CHECKPOINT_DIR))


def run_guard(train: Callable[..., Any]) -> Callable[..., Any]:
  """Wraps a run ``train(config, workdir, ...)`` that calls `hold_workdir` (see the module docstring)."""

  @functools.wraps(train)
  def guarded(*args, **kwargs):
    run = _Run()
    token = _CURRENT.set(run)
    failed = False
    try:
      with quiet.session():
        try:
          return train(*args, **kwargs)
        except WriteFailedError:
          failed = True
          raise
        except OSError as e:
          own = isinstance(e, TrainingError) or type(e).__module__.startswith("octflax")  # Already one line.
          failure = None if own or not run.workdir or files.is_url(run.workdir) else _as_write_failure(e, run.workdir)
          if failure is None:
            raise
          failed = True
          raise failure from None
        finally:
          if failed:
            quiet.failure_reported()
    finally:
      _CURRENT.reset(token)
      if run.lock is not None:
        run.lock.release()

  return guarded


__all__ = ["hold_workdir", "run_guard"]
