"""One checkpoint: a directory with a ``state`` and a ``meta`` item, written and read in one place.

A checkpoint is a directory holding two orbax items:

- ``state``: a dict of arrays with at least ``params`` and ``batch_stats`` (a
  trainer's checkpoint also has ``step``, ``opt_state`` and ``rng``, see
  `octflax.training.TrainState.checkpoint_items`);
- ``meta``: JSON with ``format`` (`FORMAT`), ``identity``, the model it belongs
  to (`ModelIdentity.to_json`), and more (the trainer's config, the step, where an
  imported checkpoint was converted from).

`items` is the layout; `write_checkpoint` writes one directory, and
`octflax.checkpoint.CheckpointStore` a run's series of them
(``WORKDIR/checkpoints/STEP/``). `find_checkpoint`, `read_checkpoint` and
`load_model` read any of them; older layouts are brought up to date by one
migration as they are read (`_migrate` for the meta, `read_state` for the arrays:
format 2 held an OctConv's kernels per path and an OctBatchNorm's variables per part, `format2`). Any path orbax understands works,
``gs://`` buckets included; local paths are made absolute
(`octflax.files.resolve_path`).
"""

from __future__ import annotations

import io
import logging
import re
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from octflax.checkpoint import format2, quiet
from octflax.checkpoint.identity import ModelIdentity, as_json
from octflax.errors import CheckpointError
from octflax.files import resolve_path

PyTree = Any

FORMAT = "octflax-checkpoint/3"
CHECKPOINT_DIR = "checkpoints"  # A run's checkpoints: WORKDIR/checkpoints/STEP/.
STATE_ITEM, META_ITEM = "state", "meta"


class QuietOrbax:
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


def why(error: BaseException) -> str:
  # The innermost cause says what is wrong with the file ("ZSTD_decompressStream() failed", ...);
  # orbax's wrappers around it add a TensorStore spec of many lines.
  while error.__cause__ is not None:
    error = error.__cause__
  text = " ".join(str(error).split(" See full TensorStore details")[0].split())
  text = re.sub(r' in OCDBT database at local file "[^"]*"', "", text)
  if len(text) > 160:
    text = text[:157] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__




def read_meta(path: epath.PathLike) -> dict[str, Any]:
  """The ``meta`` item of the checkpoint directory ``path``.

  Raises:
    Exception: whatever orbax or the JSON parser raise for a missing or damaged item.
  """
  path = epath.Path(path)
  with QuietOrbax(), ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
    meta = checkpointer.restore(path / META_ITEM)
  if not isinstance(meta, dict):
    raise ValueError(f"{path / META_ITEM} holds {type(meta).__name__}, not a JSON object")
  return _migrate(dict(meta))


def read_state(path: epath.PathLike, target: PyTree | None = None) -> PyTree:
  """The ``state`` item of the checkpoint directory ``path``, in today's layout.

  A state of format 2, whose OctConvs hold one kernel per path and OctBatchNorms one set of
  variables per part, is read to the host and brought to one set per layer (`format2.join`: the
  parameters, the statistics and what mirrors the parameters, such as the optimizer's momentum)
  before it takes ``target``'s placement.

  Args:
    path: the checkpoint directory.
    target: arrays or `jax.ShapeDtypeStruct` (with shardings) whose structure,
      shapes, dtypes and placement the result takes; None reads every array of
      the item to host NumPy arrays.

  Returns:
    A dict of arrays.

  Raises:
    ValueError: the stored arrays do not fit ``target`` (names or shapes).
    Exception: whatever orbax raises for a missing or damaged item.
  """
  path = epath.Path(path) / STATE_ITEM
  with QuietOrbax(), ocp.StandardCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(path)
    stored = getattr(metadata, "item_metadata", metadata)
    stored = dict(getattr(stored, "tree", stored))
    if target is not None and not format2.holds(stored):
      target = jax.tree.map(lambda x: np.asarray(x) if isinstance(x, (np.generic, int, float)) else x, target)
      return checkpointer.restore(path, target)
    host = format2.join(checkpointer.restore(path, jax.tree.map(lambda m: np.zeros(m.shape, m.dtype),
                                                                           stored)))
  return host if target is None else _placed(host, target)


def _placed(host: PyTree, target: PyTree) -> PyTree:
  """``host`` (read without a target) in ``target``'s structure, dtypes and placement, matched by key path."""
  def name(key_path: Any) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in key_path)

  stored = {name(p): v for p, v in jax.tree_util.tree_flatten_with_path(host)[0]}
  wanted, treedef = jax.tree_util.tree_flatten_with_path(target)
  missing = [name(p) for p, _ in wanted if name(p) not in stored]
  if missing or len(stored) != len(wanted):
    extra = sorted(set(stored) - {name(p) for p, _ in wanted})
    raise ValueError(f"the stored arrays do not fit this state: missing {missing[:3]}, unexpected {extra[:3]}")
  leaves = []
  for key_path, t in wanted:
    value = np.asarray(stored[name(key_path)])
    if value.shape != tuple(np.shape(t)):
      raise ValueError(f"{name(key_path)} is stored with shape {value.shape}, expected {tuple(np.shape(t))}")
    value = value.astype(t.dtype)
    sharding = getattr(t, "sharding", None)
    leaves.append(value if sharding is None else jax.device_put(value, sharding))
  return jax.tree_util.tree_unflatten(treedef, leaves)


def items(state: dict[str, PyTree], meta: dict[str, Any]) -> ocp.args.Composite:
  """What is saved as one checkpoint: ``state`` and ``meta`` (tagged with `FORMAT`), as orbax's save arguments.

  The only definition of the on-disk layout; `write_checkpoint` and
  `octflax.checkpoint.CheckpointStore.save` both write it.
  """
  if "identity" not in meta:
    raise ValueError(f"a checkpoint's meta needs an 'identity' (see ModelIdentity.to_json); got {sorted(meta)}.")
  return ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state),
                               META_ITEM: ocp.args.JsonSave(as_json({**meta, "format": FORMAT}))})


def write_checkpoint(path: epath.PathLike, state: dict[str, PyTree], meta: dict[str, Any]) -> str:
  """Writes one checkpoint directory (``state`` and ``meta`` items) and waits for it.

  Args:
    path: the directory to create (must not exist).
    state: a dict of arrays with at least ``params`` and ``batch_stats``.
    meta: JSON-able metadata with an ``identity`` (`ModelIdentity.to_json`).

  Returns:
    The resolved path.

  Raises:
    FileExistsError: ``path`` exists.
  """
  path = epath.Path(resolve_path(path))
  if path.exists():
    raise FileExistsError(f"{path} exists")
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    checkpointer.save(path, args=items(jax.tree.map(np.asarray, state), meta))
  return str(path)


def step_dirs(directory: epath.Path) -> list[tuple[int, epath.Path]]:
  """``(step, path)`` of the ``STEP`` folders in ``directory``, newest first."""
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
    steps = step_dirs(folder)
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
    raise CheckpointError(f"cannot read the checkpoint {directory}: {why(e)}") from None
  if "params" not in state:
    raise CheckpointError(f"the checkpoint {directory} has no 'params' (it has {sorted(state)}).")
  return {"params": state["params"], "batch_stats": state.get("batch_stats", {})}, meta


def load_model(path: str, *, dtype: Any = None, api: str | None = None) -> tuple[Any, dict[str, PyTree]]:
  """The model of the checkpoint at ``path`` and its variables: ``(model, {'params', 'batch_stats'})``.

  ``model.apply(variables, x, train=False)`` runs it. ``path`` is anything
  `find_checkpoint` takes (a checkpoint, a run's working directory).

  Args:
    path: where the checkpoint is.
    dtype: the model's compute dtype (default: the training run's, bfloat16 for a run with
      ``half_precision``; float32 for an imported checkpoint).
    api: ``'linen'`` or ``'nnx'`` (see `ModelIdentity.build`; default: the run's ``model.api``, else Linen).

  Raises:
    CheckpointError: no checkpoint, one that cannot be read, or one whose
      identity names no model of this octflax.
  """
  variables, meta = read_checkpoint(path)
  config = meta.get("config") or {}
  if dtype is None:
    dtype = jnp.bfloat16 if config.get("half_precision") else jnp.float32
  if api is None:
    api = (config.get("model") or {}).get("api", "linen")
  try:
    model = ModelIdentity.from_json(meta.get("identity", {})).build(dtype=dtype, api=api)
  except ValueError as e:
    raise CheckpointError(f"the checkpoint {find_checkpoint(path)} names no model octflax can build: {e}") from None
  return model, variables


def _migrate(meta: dict[str, Any]) -> dict[str, Any]:
  """``meta`` in today's layout (`FORMAT`).

  Format 2 differs from 3 in the state only (the octave layers' variables per path and part),
  which `read_state` migrates. Checkpoints written before ``format`` was stored are of two kinds. Imported
  ones have ``arch``, ``alpha``, ``num_classes`` and ``pool_stride`` at the top
  and an ImageNet input. Training checkpoints have today's ``identity``, but
  its overrides may hold ``fuse``, which chose how OctConv's paths were
  executed (one convolution per output part or two), not its variables: the
  execution form is now the platform's (`octflax.execution`), so it is dropped.
  """
  if meta.get("format") in (FORMAT, "octflax-checkpoint/2"):
    return {**meta, "format": FORMAT}
  if "identity" in meta:
    identity = dict(meta["identity"])
    overrides = dict(identity.get("model.overrides") or {})
    if overrides.pop("fuse", None) is not None:
      identity["model.overrides"] = overrides
    return {**meta, "identity": identity, "format": FORMAT}
  if "arch" in meta:
    identity = ModelIdentity(name=meta["arch"], alpha=meta.get("alpha", 0.0), num_classes=meta["num_classes"],
                             image_shape=(224, 224, 3), data="image_folder",
                             overrides={} if meta.get("pool_stride", True) else {"pool_stride": False})
    return {**meta, "identity": identity.to_json(), "format": FORMAT}
  raise ValueError(f"the checkpoint's meta has neither an identity nor an older layout's keys (it has {sorted(meta)})")


__all__ = ["CHECKPOINT_DIR", "FORMAT", "META_ITEM", "STATE_ITEM", "find_checkpoint", "items", "load_model",
           "read_checkpoint", "read_meta", "read_state", "step_dirs", "why", "write_checkpoint"]
