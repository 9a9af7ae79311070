"""Orbax checkpoints of a run, tagged with what was trained so that runs cannot be mixed up.

A checkpoint directory holds one sub-directory per saved step (orbax's
`CheckpointManager`), each with two items: ``state`` (the `TrainState`'s arrays:
step, params, batch_stats, opt_state, rng) and ``meta`` (JSON: the run's
identity, i.e. model name, alpha, architecture overrides, classes and image
shape, plus the full config). Any path orbax understands works, ``gs://``
buckets included.
"""

from __future__ import annotations

import json
from typing import Any

import orbax.checkpoint as ocp
from etils import epath

from octflax.training.errors import CheckpointMismatchError
from octflax.training.state import TrainState

PyTree = Any


def _normalise(value: Any) -> Any:
  """The value as JSON reads it back (tuples become lists, keys strings)."""
  return json.loads(json.dumps(value, sort_keys=True, default=str))


def _describe_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
  lines = []
  for key in sorted(set(stored) | set(current)):
    if stored.get(key) != current.get(key):
      lines.append(f"  {key}: checkpoint has {stored.get(key)!r}, this run has {current.get(key)!r}")
  return lines


class CheckpointStore:
  """Saves and restores a run's `TrainState` with orbax, keeping the last few.

  Typical use::

    store = CheckpointStore('/tmp/run/checkpoints', identity={'model.name': 'oct_resnet20'})
    step = store.check_identity()   # raises if another model's checkpoint is there
    store.save(100, state)          # all processes call it
    state = store.restore(target)   # the newest checkpoint
  """

  def __init__(self, directory: str, *, identity: dict[str, Any], keep: int = 3,
               async_save: bool = True):
    """Opens (without creating anything) the checkpoint directory of a run.

    Args:
      directory: where the step sub-directories go (local path or ``gs://...``).
      identity: what must match for a checkpoint to be resumed from: a
        JSON-able dict such as ``{'model.name': ..., 'model.alpha': ...}``.
      keep: how many of the latest checkpoints to keep (>= 1).
      async_save: write in a background thread after copying arrays to host.
    """
    self.directory = str(directory)
    self.identity = _normalise(identity)
    self._keep = max(int(keep), 1)
    self._async = async_save
    self._manager: ocp.CheckpointManager | None = None

  def _reader(self) -> ocp.CheckpointManager:
    # Not orbax's read_only mode (which logs warnings); a manager that never saves writes nothing.
    return ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(create=False),
                                 item_names=("state", "meta"))

  def _writer(self) -> ocp.CheckpointManager:
    if self._manager is None:
      self._manager = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(
              max_to_keep=self._keep, create=True, cleanup_tmp_directories=True,
              enable_async_checkpointing=self._async),
          item_names=("state", "meta"))
    return self._manager

  def latest_step(self) -> int | None:
    """The step of the newest complete checkpoint, or None when there is none."""
    if self._manager is not None:
      return self._manager.latest_step()
    if not epath.Path(self.directory).exists():
      return None
    try:
      reader = self._reader()
    except (FileNotFoundError, ValueError):
      return None
    try:
      return reader.latest_step()
    finally:
      reader.close()

  def read_meta(self, step: int | None = None) -> dict[str, Any]:
    """The ``meta`` item of a checkpoint (the newest by default)."""
    manager = self._manager or self._reader()
    try:
      step = manager.latest_step() if step is None else step
      return dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)
    finally:
      if manager is not self._manager:
        manager.close()

  def check_identity(self) -> int | None:
    """Refuses a directory whose checkpoint belongs to another model or data set.

    Nothing is written or deleted. Call before anything else touches the
    working directory.

    Returns:
      The step of the checkpoint that will be resumed from, or None.

    Raises:
      CheckpointMismatchError: the newest checkpoint's identity differs from
        this run's, or it has no octflax metadata.
    """
    step = self.latest_step()
    if step is None:
      return None
    try:
      meta = self.read_meta(step)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointMismatchError(
          f"{self.directory} holds a checkpoint (step {step}) without octflax run metadata "
          f"({type(e).__name__}); it was not written by this trainer. Nothing was changed. Use "
          "another --workdir, or delete that directory to start over.") from e
    stored = meta.get("identity", {})
    differences = _describe_differences(stored, self.identity)
    if differences:
      raise CheckpointMismatchError(
          f"{self.directory} holds a checkpoint (step {step}) of another run:\n"
          + "\n".join(differences)
          + "\nNothing was changed. Use another --workdir for this run, or delete "
          f"{self.directory} to start over.")
    return step

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
    """
    manager = self._writer()
    if step in manager.all_steps():
      return False
    meta = {"identity": self.identity, "config": _normalise(config or {}), "step": int(step),
            **_normalise(extra or {})}
    manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state.checkpoint_items()), meta=ocp.args.JsonSave(meta)))
    return True

  def restore(self, target: TrainState, step: int | None = None) -> TrainState:
    """Restores checkpoint ``step`` (newest by default) into the structure of ``target``.

    Args:
      target: a state whose array fields give shapes, dtypes and placement
        (`jax.ShapeDtypeStruct` with shardings, or NumPy arrays for host arrays).
      step: which checkpoint.

    Returns:
      ``target`` with its array fields replaced by the checkpoint's.
    """
    manager = self._writer()
    step = manager.latest_step() if step is None else step
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target.checkpoint_items())))
    return target.replace_items(restored.state)

  def wait(self) -> None:
    """Blocks until background writes are finished."""
    if self._manager is not None:
      self._manager.wait_until_finished()

  def close(self) -> None:
    """Finishes background writes and releases the manager."""
    if self._manager is not None:
      self._manager.wait_until_finished()
      self._manager.close()
      self._manager = None


__all__ = ["CheckpointStore"]
