"""The one checkpoint format of octflax: a directory with a ``state`` and a ``meta`` item.

A checkpoint is a directory holding two orbax items:

- ``state``: a dict of arrays with at least ``params`` and ``batch_stats`` (a
  trainer's checkpoint also has ``step``, ``opt_state`` and ``rng``, see
  `TrainState.checkpoint_items`);
- ``meta``: JSON with ``identity``, the model it belongs to (``model.name``,
  ``model.alpha``, ``model.overrides``, ``num_classes``, ``image_shape``,
  ``data.name``) and more (the trainer's config, the step, where an imported
  checkpoint was converted from).

A training run's working directory keeps its checkpoints in
``WORKDIR/checkpoints/STEP/`` (`CheckpointStore`, orbax's `CheckpointManager`);
`experiments.convert_torch` writes one such directory (`write_checkpoint`);
`experiments.evaluate` and ``--config.init_from`` read any of them
(`find_checkpoint`, `read_checkpoint`). Any path orbax understands works,
``gs://`` buckets included; local paths are made absolute
(`octflax.training.paths.resolve_path`).

Damaged checkpoints (an array file cut short, a metadata file missing or
unparsable, an unfinished ``*.orbax-checkpoint-tmp`` folder) are found when a
run resumes: `CheckpointStore.restore_newest` names each one and why on one line,
moves it aside to ``STEP.damaged`` (never deleting it) and resumes from the
newest checkpoint that restores completely. The reports of orbax's reader
threads around such a failure are kept off the terminal (`octflax.training.quiet`).

A save that cannot be written (no space left, a quota or file-size limit, a
read-only folder) stops the run with one `WriteFailedError` line naming the
newest intact checkpoint (`octflax.training.writes`); the failed save's
unfinished folder is removed, every earlier checkpoint is kept.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from octflax.training import quiet, writes
from octflax.training.errors import CheckpointError, CheckpointMismatchError, WriteFailedError
from octflax.training.paths import is_url, resolve_path
from octflax.training.state import TrainState

PyTree = Any

CHECKPOINT_DIR = "checkpoints"  # A run's checkpoints: WORKDIR/checkpoints/STEP/.
STATE_ITEM, META_ITEM = "state", "meta"
DAMAGED_SUFFIX = ".damaged"
_TMP_MARK = ".orbax-checkpoint-tmp"


def _normalise(value: Any) -> Any:
  """The value as JSON reads it back (tuples become lists, keys strings)."""
  return json.loads(json.dumps(value, sort_keys=True, default=str))


def _describe_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
  lines = []
  for key in sorted(set(stored) | set(current)):
    if stored.get(key) != current.get(key):
      lines.append(f"  {key}: checkpoint has {stored.get(key)!r}, this run has {current.get(key)!r}")
  return lines


def _say(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


class _QuietOrbax:
  """Holds back orbax's logs and stderr output while a possibly damaged checkpoint is read.

  A damaged file makes orbax's reader threads print a traceback per array
  ("Event loop is closed") before it raises; the caller reports the one line
  that matters. When the read succeeds, what was held back is printed.
  """

  def __enter__(self):
    self._loggers = [logging.getLogger(n) for n in ("absl", "orbax", "jax")]
    self._levels = [lg.level for lg in self._loggers]
    for lg in self._loggers:
      lg.setLevel(logging.CRITICAL)
    self._stderr, sys.stderr = sys.stderr, io.StringIO()
    # The reader threads' errors arrive as "exception ignored" reports.
    self._unraisable: list[Any] = []
    self._hook, sys.unraisablehook = sys.unraisablehook, self._unraisable.append
    return self

  def __exit__(self, exc_type, *exc):
    held, sys.stderr = sys.stderr, self._stderr
    sys.unraisablehook = self._hook
    if exc_type is not None:
      # The caller reports the failure in one line; the late reports of the other reads are dropped.
      quiet.failure_reported()
    for lg, level in zip(self._loggers, self._levels):
      lg.setLevel(level)
    if exc_type is None:
      if held.getvalue():
        sys.stderr.write(held.getvalue())
      for report in self._unraisable:
        self._hook(report)
    return False


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


def _why(error: BaseException) -> str:
  # The innermost cause says what is wrong with the file ("ZSTD_decompressStream() failed", ...);
  # orbax's wrappers around it add a TensorStore spec of many lines.
  while error.__cause__ is not None:
    error = error.__cause__
  text = " ".join(str(error).split(" See full TensorStore details")[0].split())
  text = re.sub(r' in OCDBT database at local file "[^"]*"', "", text)
  if len(text) > 160:
    text = text[:157] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


# ----------------------------------------------------------------------------- one checkpoint


def read_meta(path: epath.PathLike) -> dict[str, Any]:
  """The ``meta`` item of the checkpoint directory ``path``.

  Raises:
    Exception: whatever orbax or the JSON parser raise for a missing or damaged item.
  """
  path = epath.Path(path)
  with _QuietOrbax(), ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
    meta = checkpointer.restore(path / META_ITEM)
  if not isinstance(meta, dict):
    raise ValueError(f"{path / META_ITEM} holds {type(meta).__name__}, not a JSON object")
  return dict(meta)


def read_state(path: epath.PathLike, target: PyTree | None = None) -> PyTree:
  """The ``state`` item of the checkpoint directory ``path``.

  Args:
    path: the checkpoint directory.
    target: arrays or `jax.ShapeDtypeStruct` (with shardings) whose structure,
      shapes, dtypes and placement the result takes; None reads every array of
      the item to host NumPy arrays.

  Returns:
    A dict of arrays.
  """
  path = epath.Path(path) / STATE_ITEM
  with _QuietOrbax(), ocp.StandardCheckpointer() as checkpointer:
    if target is None:
      metadata = checkpointer.metadata(path)
      tree = getattr(metadata, "item_metadata", metadata)
      tree = getattr(tree, "tree", tree)
      target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), dict(tree))
    target = jax.tree.map(lambda x: np.asarray(x) if isinstance(x, (np.generic, int, float)) else x, target)
    return checkpointer.restore(path, target)


def write_checkpoint(path: epath.PathLike, state: dict[str, PyTree], meta: dict[str, Any]) -> str:
  """Writes one checkpoint directory (``state`` and ``meta`` items) and waits for it.

  Args:
    path: the directory to create (must not exist).
    state: a dict of arrays with at least ``params`` and ``batch_stats``.
    meta: JSON-able metadata with an ``identity`` (see the module docstring).

  Returns:
    The resolved path.
  """
  path = epath.Path(resolve_path(path))
  if path.exists():
    raise FileExistsError(f"{path} exists")
  path.mkdir(parents=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path / STATE_ITEM, jax.tree.map(np.asarray, state))
    checkpointer.wait_until_finished()
  with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
    checkpointer.save(path / META_ITEM, _normalise(meta))
  return str(path)


def _step_dirs(directory: epath.Path) -> list[tuple[int, epath.Path]]:
  if not directory.is_dir():
    return []
  steps = [(int(p.name), p) for p in directory.iterdir() if p.name.isdigit()]
  return sorted(steps, reverse=True)


def find_checkpoint(path: str) -> str:
  """The checkpoint directory that ``path`` names.

  ``path`` may be a checkpoint directory itself (it holds ``meta``), a run's
  checkpoint folder (``.../checkpoints``, its newest step is taken) or a run's
  working directory (its ``checkpoints/`` newest step).

  Raises:
    CheckpointError: there is no checkpoint there.
  """
  root = epath.Path(resolve_path(path))
  if (root / META_ITEM).exists():
    return str(root)
  for folder in (root, root / CHECKPOINT_DIR):
    steps = _step_dirs(folder)
    if steps:
      return str(steps[0][1])
  raise CheckpointError(
      f"{path!r} holds no octflax checkpoint: expected a checkpoint directory (with "
      f"'{STATE_ITEM}' and '{META_ITEM}'), a run's working directory or its '{CHECKPOINT_DIR}' "
      "folder.")


def read_checkpoint(path: str) -> tuple[dict[str, PyTree], dict[str, Any]]:
  """``(variables, meta)`` of the checkpoint at ``path`` (see `find_checkpoint`).

  ``variables`` is ``{'params', 'batch_stats'}`` as host NumPy arrays.

  Raises:
    CheckpointError: no checkpoint, or one that cannot be read.
  """
  directory = find_checkpoint(path)
  try:
    meta = read_meta(directory)
    state = read_state(directory)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"cannot read the checkpoint {directory}: {_why(e)}") from None
  if "params" not in state:
    raise CheckpointError(f"the checkpoint {directory} has no 'params' (it has {sorted(state)}).")
  return {"params": state["params"], "batch_stats": state.get("batch_stats", {})}, meta


# ----------------------------------------------------------------------------- a run's checkpoints


class CheckpointStore:
  """A run's checkpoints: saves `TrainState`s with orbax, keeps the last few, restores the newest good one.

  Typical use::

    store = CheckpointStore('/tmp/run/checkpoints', identity={'model.name': 'oct_resnet8'})
    store.check_identity()                 # raises if another model's checkpoint is there
    found = store.restore_newest(target)   # (step, state, meta) or None
    store.save(100, state, config)         # all processes call it
  """

  def __init__(self, directory: str, *, identity: dict[str, Any], keep: int = 3,
               async_save: bool = True, is_chief: bool = True, report: Callable[[str], None] = _say):
    """Opens (without creating anything) the checkpoint directory of a run.

    Args:
      directory: where the step sub-directories go (a local path, made
        absolute, or ``gs://...``).
      identity: what must match for a checkpoint to be resumed from: a
        JSON-able dict such as ``{'model.name': ..., 'model.alpha': ...}``.
      keep: how many of the latest checkpoints to keep (>= 1).
      async_save: write in a background thread after copying arrays to host.
      is_chief: this process moves damaged checkpoints aside (process 0).
      report: where the one-line notices go (default: stderr).
    """
    self.directory = resolve_path(directory)
    self.identity = _normalise(identity)
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
          item_names=(STATE_ITEM, META_ITEM))
    return self._manager

  def steps(self) -> list[int]:
    """Steps of the checkpoint folders present, newest first (damaged ones included)."""
    return [step for step, _ in _step_dirs(self._path)]

  def latest_step(self) -> int | None:
    """The newest step folder, or None."""
    steps = self.steps()
    return steps[0] if steps else None

  def read_meta(self, step: int) -> dict[str, Any]:
    """The ``meta`` item of checkpoint ``step``."""
    return read_meta(self._path / str(step))

  def _check(self, step: int, meta: dict[str, Any]) -> None:
    differences = _describe_differences(meta.get("identity", {}), self.identity)
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

  def restore_newest(self, target: TrainState) -> tuple[int, TrainState, dict[str, Any]] | None:
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
    for step, path in _step_dirs(self._path):
      try:
        meta = read_meta(path)
      except Exception as e:  # pylint: disable=broad-except
        damaged.append((path, f"its metadata cannot be read ({_why(e)})"))
        continue
      self._check(step, meta)
      try:
        items = read_state(path, target.checkpoint_items())
      except Exception as e:  # pylint: disable=broad-except
        damaged.append((path, f"its arrays cannot be restored ({_why(e)})"))
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

  def save(self, step: int, state: TrainState, config: dict[str, Any] | None = None,
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
      meta = {"identity": self.identity, "config": _normalise(config or {}), "step": int(step),
              **_normalise(extra or {})}
      # Waits for the previous save first: its failure surfaces here.
      manager.save(int(step), args=ocp.args.Composite(**{
          STATE_ITEM: ocp.args.StandardSave(state.checkpoint_items()), META_ITEM: ocp.args.JsonSave(meta)}))
    except Exception as e:  # pylint: disable=broad-except
      failure = self._write_failure(e, step)
      if failure is None:
        raise
      raise failure from None
    self._pending = int(step)
    return True

  def _write_failure(self, error: BaseException, step: int | None) -> WriteFailedError | None:
    """The one-line error of a save that cannot be written (else None); gives the manager up."""
    code = writes.cannot_write(error)
    if code is None:
      return None
    quiet.failure_reported()
    failed = writes.failed_checkpoint_step(error) or self._pending or step
    self._give_up()
    removed = self._remove_unfinished(failed) if failed is not None else False
    return writes.write_failed(f"checkpoint {failed}", self.directory, code, self.directory, exclude=failed,
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
    if not self._is_chief or is_url(self.directory) or jax.process_count() > 1:
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
      if propagating is not None and (failure is None or writes.cannot_write(propagating) is not None):
        return
      if failure is None:
        raise
      raise failure from None


__all__ = ["CHECKPOINT_DIR", "CheckpointStore", "DAMAGED_SUFFIX", "find_checkpoint", "read_checkpoint",
           "read_meta", "read_state", "write_checkpoint"]
