"""Where a run starts: its newest good checkpoint, else another run's parameters (``init_from``), else fresh."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from octflax.checkpoint import CheckpointStore, read_checkpoint
from octflax.errors import CheckpointMismatchError
from octflax.training.parallel import DataParallel
from octflax.training.state import TrainState, create_train_state


def _flat(tree: Any) -> dict[str, tuple[int, ...]]:
  return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(leaf))
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def init_from_checkpoint(host_state: TrainState, path: str, say=print) -> TrainState:
  """``host_state`` with the parameters and BatchNorm statistics of the checkpoint at ``path``.

  The optimizer state is fresh (``tx.init`` of the loaded parameters) and the
  step 0. When only the classifier differs, with the checkpoint's class count
  in its last dimension, it keeps its fresh initialisation and ``say`` tells so.

  Raises:
    CheckpointMismatchError: any other difference; the message lists every one.
    CheckpointError: no readable checkpoint at ``path``.
  """
  variables, meta = read_checkpoint(path)
  ours = {"params": host_state.params, "batch_stats": host_state.batch_stats}
  want, have = _flat(ours), _flat(variables)
  classes = meta["identity"]["num_classes"]
  head, problems = [], []
  for name in sorted(set(want) | set(have)):
    a, b = want.get(name), have.get(name)
    if a == b:
      continue
    if a is not None and b is not None and len(a) == len(b) and a[:-1] == b[:-1] and b[-1] == classes:
      head.append(name)
    elif a is None:
      problems.append(f"  {name}: in the checkpoint {b}, not in this model")
    elif b is None:
      problems.append(f"  {name}: in this model {a}, not in the checkpoint")
    else:
      problems.append(f"  {name}: checkpoint {b}, this model {a}")
  if problems:
    raise CheckpointMismatchError(
        f"--config.init_from {path!r} does not fit this model ({len(problems)} parameters differ):\n"
        + "\n".join(problems))
  loaded = jax.tree_util.tree_map_with_path(
      lambda p, fresh: fresh if "/".join(str(getattr(k, "key", k)) for k in p) in head else np.asarray(
          _get(variables, p)), ours)
  if head:
    say(f"init_from: the checkpoint has {classes} classes, this run {want[head[0]][-1]}: "
        f"{', '.join(head)} re-initialised.")
  return host_state.replace(params=loaded["params"], batch_stats=loaded["batch_stats"],
                            opt_state=host_state.tx.init(loaded["params"]))


def _get(tree: Any, path: Any) -> Any:
  for key in path:
    tree = tree[getattr(key, "key", getattr(key, "idx", key))]
  return tree


def initial_state(parallel: DataParallel, model: Any, tx: Any, store: CheckpointStore, *, seed: int,
                  image_shape: tuple[int, ...], init_from: str = "",
                  say=print) -> tuple[TrainState, int, dict[str, Any]]:
  """The state a run starts from: its newest good checkpoint in ``store``, else ``init_from``, else fresh.

  Returns:
    ``(state placed for ``parallel``, step, the checkpoint's meta or {})``.
  """
  host_state = create_train_state(parallel.prepare_model(model), tx, seed=seed, input_shape=(1, *image_shape))
  found = store.restore_newest(parallel.abstract_state(host_state))
  if found is not None:
    step, state, meta = found
    return parallel.put_state(state), step, meta
  if init_from:
    host_state = init_from_checkpoint(host_state, init_from, say)
  return parallel.put_state(host_state), 0, {}


__all__ = ["init_from_checkpoint", "initial_state"]
