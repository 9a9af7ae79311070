"""A run's checkpoints (``WORKDIR/checkpoints/STEP/``): saved in the background, the newest good one restored.

`CheckpointStore` writes the layout of `octflax.checkpoint.format` with orbax's
`CheckpointManager`, keeps the last few, and never resumes a run from another
model's checkpoint (`ModelIdentity`).

Damaged checkpoints (an array file cut short, a metadata file missing or
unparsable, an unfinished ``*.orbax-checkpoint-tmp`` folder) are found when a
run resumes: `CheckpointStore.restore_newest` names each one and why on one line,
moves it aside to ``STEP.damaged`` (never deleting it) and resumes from the
newest checkpoint that restores completely. The reports of orbax's reader
threads around such a failure are kept off the terminal (`octflax.checkpoint.quiet`).

A save that cannot be written (no space left, a quota or file-size limit, a
read-only folder) stops the run with one `WriteFailedError` line naming the
newest intact checkpoint (`octflax.files.write_failed`); the failed save's
unfinished folder is removed, every earlier checkpoint is kept.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from etils import epath

from octflax import files
from octflax.checkpoint import quiet
from octflax.checkpoint import format as layout
from octflax.checkpoint.format import items, read_meta, read_state
from octflax.checkpoint.identity import ModelIdentity
from octflax.errors import CheckpointError, CheckpointMismatchError, WriteFailedError

State = Any  # octflax.training.TrainState: checkpoint_items() / replace_items(items).

DAMAGED_SUFFIX = ".damaged"
_TMP_MARK = ".orbax-checkpoint-tmp"


def _describe_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
  return [f"  {key}: checkpoint has {stored.get(key)!r}, this run has {current.get(key)!r}"
          for key in sorted(set(stored) | set(current)) if stored.get(key) != current.get(key)]


def _say(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def _release_waiting_threads() -> None:
  """Ends orbax's threads that wait for a signal of a save that failed before sending it.

  Orbax starts a thread per part of a save, each waiting (up to its coordination
  timeout, minutes) for a signal such as "the step directory was created". When
  the save fails before that (the directory cannot be created), nothing sends
  it, and these threads, not daemons, would keep the process from exiting after
  it reported the failure. They are cancelled and woken: a cancelled thread ends
  without running its part.
  """
  try:
    from orbax.checkpoint._src.futures import future as orbax_future  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  waiting = getattr(orbax_future, "_SignalingThread", None)
  if waiting is None:
    return
  for thread in threading.enumerate():
    if isinstance(thread, waiting) and thread.is_alive():
      try:
        thread.cancel()
        orbax_future.set_signals(thread._receive_signals, operation_id=thread._operation_id)  # pylint: disable=protected-access
      except Exception:  # pylint: disable=broad-except
        pass


class CheckpointStore:
  """A run's checkpoints: saves `State`s with orbax, keeps the last few, restores the newest good one.

  Typical use::

    store = CheckpointStore('/tmp/run/checkpoints', identity=ModelIdentity('oct_resnet8', 0.5, 10, (28, 28, 1)))
    store.check_identity()                 # raises if another model's checkpoint is there
    found = store.restore_newest(target)   # (step, state, meta) or None
    store.save(100, state, config)         # all processes call it
  """

  def __init__(self, directory: str, *, identity: ModelIdentity, keep: int = 3,
               async_save: bool = True, is_chief: bool = True, report: Callable[[str], None] = _say):
    """Opens (without creating anything) the checkpoint directory of a run.

    Args:
      directory: where the step sub-directories go (a local path, made
        absolute, or ``gs://...``).
      identity: the run's model; a checkpoint of another is never resumed from.
      keep: how many of the latest checkpoints to keep (>= 1).
      async_save: write in a background thread after copying arrays to host.
      is_chief: this process moves damaged checkpoints aside (process 0).
      report: where the one-line notices go (default: stderr).
    """
    self.directory = files.resolve_path(directory)
    self.identity = identity
    self._keep = max(int(keep), 1)
    self._async = async_save
    self._is_chief = is_chief
    self._report = report
    self._manager: ocp.CheckpointManager | None = None
    self._pending: int | None = None  # The step whose save may still be writing in the background.

  @property
  def _path(self) -> epath.Path:
    return epath.Path(self.directory)

  def _writer(self) -> ocp.CheckpointManager:
    if self._manager is None:
      self._manager = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(
              max_to_keep=self._keep, create=True, enable_async_checkpointing=self._async,
              # Unfinished folders are moved aside by restore_newest, never deleted.
              cleanup_tmp_directories=False),
          item_names=(layout.STATE_ITEM, layout.META_ITEM))
    return self._manager

  def steps(self) -> list[int]:
    """Steps of the checkpoint folders present, newest first (damaged ones included)."""
    return [step for step, _ in layout.step_dirs(self._path)]

  def latest_step(self) -> int | None:
    """The newest step folder, or None."""
    steps = self.steps()
    return steps[0] if steps else None

  def read_meta(self, step: int) -> dict[str, Any]:
    """The ``meta`` item of checkpoint ``step``."""
    return read_meta(self._path / str(step))

  def _check(self, step: int, meta: dict[str, Any]) -> None:
    differences = _describe_differences(meta.get("identity", {}), self.identity.to_json())
    if differences:
      raise CheckpointMismatchError(
          f"{self.directory} holds a checkpoint (step {step}) of another run:\n"
          + "\n".join(differences)
          + "\nNothing was changed. Use another --workdir for this run, or delete "
          f"{self.directory} to start over.")

  def check_identity(self) -> None:
    """Refuses a directory whose newest readable checkpoint belongs to another model or data set.

    Nothing is written or deleted; call before anything else touches the
    working directory. Checkpoints whose metadata cannot be read are left to
    `restore_newest`.

    Raises:
      CheckpointMismatchError: the identity differs from this run's.
    """
    for step in self.steps():
      try:
        meta = self.read_meta(step)
      except Exception:  # pylint: disable=broad-except
        continue
      self._check(step, meta)
      return

  def restore_newest(self, target: State) -> tuple[int, State, dict[str, Any]] | None:
    """Restores the newest checkpoint that restores completely.

    Every newer checkpoint that cannot be restored (and every unfinished
    temporary folder) is named on one line with the reason and moved aside to
    ``STEP.damaged``. Nothing is moved when no checkpoint restores.

    Args:
      target: a state whose array fields give shapes, dtypes and placement
        (`jax.ShapeDtypeStruct` with shardings, or NumPy arrays).

    Returns:
      ``(step, state, meta)``, or None when the directory holds no checkpoint.

    Raises:
      CheckpointMismatchError: a checkpoint of another run.
      CheckpointError: checkpoints exist and none restores (nothing changed).
    """
    leftovers = [p for p in self._path.iterdir() if _TMP_MARK in p.name] if self._path.is_dir() else []
    damaged: list[tuple[epath.Path, str]] = [(p, "an unfinished save (temporary folder)") for p in leftovers]
    found = None
    for step, path in layout.step_dirs(self._path):
      try:
        meta = read_meta(path)
      except Exception as e:  # pylint: disable=broad-except
        damaged.append((path, f"its metadata cannot be read ({layout.why(e)})"))
        continue
      self._check(step, meta)
      try:
        items = read_state(path, target.checkpoint_items())
      except Exception as e:  # pylint: disable=broad-except
        damaged.append((path, f"its arrays cannot be restored ({layout.why(e)})"))
        continue
      found = (step, target.replace_items(items), meta)
      break
    if found is None and any(_TMP_MARK not in p.name for p, _ in damaged):
      raise CheckpointError(
          f"no checkpoint in {self.directory} can be restored: "
          + "; ".join(f"{p.name}: {why}" for p, why in damaged)
          + ". Nothing was changed. Move or delete that folder to start over.")
    for path, why in damaged:
      self._move_aside(path, why, found[0] if found else None)
    return found

  def _move_aside(self, path: epath.Path, why: str, resume_step: int | None) -> None:
    name = path.name.split(_TMP_MARK)[0] if _TMP_MARK in path.name else path.name
    target = path.parent / f"{name}{DAMAGED_SUFFIX}"
    count = 1
    while target.exists():
      count += 1
      target = path.parent / f"{name}{DAMAGED_SUFFIX}-{count}"
    then = f"resuming from step {resume_step}" if resume_step is not None else "starting from step 0"
    if self._is_chief:
      path.rename(target)
      self._report(f"checkpoint {path} is damaged: {why}; moved to {target.name}, {then}.")

  def save(self, step: int, state: State, config: dict[str, Any] | None = None,
           extra: dict[str, Any] | None = None) -> bool:
    """Saves ``state`` as checkpoint ``step`` (every process must call this).

    Args:
      step: the checkpoint's step.
      state: the state (global arrays, or host arrays).
      config: the run's config, stored in the metadata.
      extra: more JSON-able metadata (e.g. the training time so far).

    Returns:
      False when checkpoint ``step`` already exists (nothing is written).

    Raises:
      WriteFailedError: this save, or the one before it (still writing in the
        background), cannot be written: no space left, a quota or file-size
        limit, a read-only folder.
    """
    manager = self._writer()
    try:
      if step in manager.all_steps():
        return False
      meta = {**(extra or {}), "identity": self.identity.to_json(), "config": config or {}, "step": int(step)}
      # Waits for the previous save first: its failure surfaces here.
      manager.save(int(step), args=items(state.checkpoint_items(), meta))
    except Exception as e:  # pylint: disable=broad-except
      failure = self._write_failure(e, step)
      if failure is None:
        raise
      raise failure from None
    self._pending = int(step)
    return True

  def _write_failure(self, error: BaseException, step: int | None) -> WriteFailedError | None:
    """The one-line error of a save that cannot be written (else None); gives the manager up."""
    code = files.cannot_write(error)
    if code is None:
      return None
    quiet.failure_reported()
    failed = files.failed_checkpoint_step(error) or self._pending or step
    self._give_up()
    removed = self._remove_unfinished(failed) if failed is not None else False
    return files.write_failed(f"checkpoint {failed}", self.directory, code, self.directory, exclude=failed,
                               removed=removed)

  def _give_up(self) -> None:
    manager, self._manager, self._pending = self._manager, None, None
    if manager is None:
      return
    _release_waiting_threads()
    for finish in (manager.wait_until_finished, manager.close):
      try:
        finish()
      except Exception:  # pylint: disable=broad-except
        pass  # The same failure again, already reported.

  def _remove_unfinished(self, step: int) -> bool:
    """Removes the unfinished folder of a failed save of ``step`` (never a finished checkpoint)."""
    if not self._is_chief or files.is_url(self.directory) or jax.process_count() > 1:
      return False  # The next run moves it aside (see restore_newest).
    path = os.path.join(self.directory, f"{step}{_TMP_MARK}")
    if not os.path.isdir(path):
      return False
    # A writer thread of the failed save may still add files while the folder is removed: try
    # again until it is gone and stays gone (the next run moves aside whatever is left).
    for _ in range(40):
      shutil.rmtree(path, ignore_errors=True)
      time.sleep(0.05)
      if not os.path.exists(path):
        return True
    return False

  def wait(self) -> None:
    """Blocks until background writes are finished.

    Raises:
      WriteFailedError: a save cannot be written.
    """
    if self._manager is not None:
      try:
        self._manager.wait_until_finished()
      except Exception as e:  # pylint: disable=broad-except
        failure = self._write_failure(e, self._pending)
        if failure is None:
          raise
        raise failure from None

  def close(self) -> None:
    """Finishes background writes and releases the manager.

    Raises:
      WriteFailedError: the last save cannot be written. Called while another
        error propagates, it raises only if that error is not itself a failed
        write (a run stopped by SIGTERM must not claim a checkpoint it could not
        write).
    """
    propagating = sys.exc_info()[1]
    if self._manager is None:
      return
    try:
      self._manager.wait_until_finished()
      self._manager.close()
      self._manager, self._pending = None, None
    except Exception as e:  # pylint: disable=broad-except
      failure = self._write_failure(e, self._pending)
      if propagating is not None and (failure is None or files.cannot_write(propagating) is not None):
        return
      if failure is None:
        raise
      raise failure from None


__all__ = ["CheckpointStore", "DAMAGED_SUFFIX"]
