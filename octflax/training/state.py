"""The train state: everything a training run carries from one step to the next, and where a run starts it.

A run starts from its newest good checkpoint, else from another run's
parameters (``init_from``), else fresh (`initial_state`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from octflax.checkpoint import CheckpointStore, read_checkpoint
from octflax.errors import CheckpointMismatchError
from octflax.execution import init_compiler_options

PyTree = Any

# The parts of a `TrainState` that are arrays and go into a checkpoint, in order.
CHECKPOINT_FIELDS = ("step", "params", "batch_stats", "opt_state", "rng")


class TrainState(struct.PyTreeNode):
  """Parameters, BatchNorm statistics, optimizer state, step and random key of a run.

  A frozen pytree: `jax.jit`, `jax.pmap` and orbax see its array fields as
  leaves; ``apply_fn`` and ``tx`` are static (part of the tree structure).

  Attributes:
    step: int32 scalar, the number of optimizer updates done so far.
    params: the model's ``params`` collection (float32).
    batch_stats: the model's ``batch_stats`` collection (running mean and var).
    opt_state: the optax state of ``tx``.
    rng: raw key data (uint32, e.g. shape [2]) of the run's base key; the step's
      randomness (mixup, dropout) is ``fold_in(key, step)``, so a resumed run
      draws the same numbers as an uninterrupted one.
    apply_fn: the model's ``apply``.
    tx: the optax optimizer.
  """

  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  rng: jax.Array
  apply_fn: Callable[..., Any] = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  @property
  def variables(self) -> dict[str, PyTree]:
    """``{'params': ..., 'batch_stats': ...}`` as ``apply_fn`` takes them."""
    return {"params": self.params, "batch_stats": self.batch_stats}

  def step_key(self) -> jax.Array:
    """The random key of the current step: ``fold_in(key(rng), step)``."""
    return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)

  def apply_gradients(self, grads: PyTree, batch_stats: PyTree) -> TrainState:
    """One optimizer update: returns the state after ``params - update(grads)``."""
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(
        step=self.step + 1,
        params=optax.apply_updates(self.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )

  def checkpoint_items(self) -> dict[str, PyTree]:
    """The array fields as a plain dict (what a checkpoint stores)."""
    return {name: getattr(self, name) for name in CHECKPOINT_FIELDS}

  def replace_items(self, items: dict[str, PyTree]) -> TrainState:
    """A state with the array fields taken from ``items`` (see `checkpoint_items`)."""
    return self.replace(**{name: items[name] for name in CHECKPOINT_FIELDS})


def create_train_state(
    model: Any,
    tx: optax.GradientTransformation,
    *,
    seed: int,
    input_shape: Sequence[int],
) -> TrainState:
  """Initialises a model and its optimizer on the host.

  Args:
    model: a Flax module called as ``model(x, train=...)`` whose variables are
      ``params`` and (optionally) ``batch_stats``.
    tx: the optimizer.
    seed: the run's seed; parameters come from ``key(seed)`` and the run's
      random key from ``fold_in(key(seed), 1)``.
    input_shape: shape of one input batch, e.g. ``(1, 28, 28, 1)``.

  Returns:
    A `TrainState` at step 0 whose arrays are NumPy arrays, ready to be placed
    on devices by `octflax.training.DataParallel.put_state`.

  Examples:
    >>> import optax
    >>> from octflax import models
    >>> state = create_train_state(models.get_model('oct_resnet20', num_classes=10),
    ...                            optax.sgd(0.1), seed=0, input_shape=(1, 28, 28, 1))
    >>> int(state.step)
    0
  """
  init = functools.partial(_initial_items, model, tx, seed, tuple(input_shape))
  items = jax.device_get(jax.jit(init, compiler_options=init_compiler_options())())
  items = jax.tree.map(np.asarray, items)
  return TrainState(apply_fn=model.apply, tx=tx, **items)


def abstract_train_state(model: Any, tx: optax.GradientTransformation, *, input_shape: Sequence[int],
                         sharding: Any = None) -> TrainState:
  """The `TrainState` `create_train_state` would give, as shapes and dtypes only (nothing computed).

  Args:
    model, tx, input_shape: as in `create_train_state`.
    sharding: placed on every leaf (e.g. a replicated `jax.sharding.NamedSharding`), or None.

  Returns:
    A `TrainState` whose array fields are `jax.ShapeDtypeStruct` (what ``jit(...).lower`` takes).
  """
  shapes = jax.eval_shape(functools.partial(_initial_items, model, tx, 0, tuple(input_shape)))
  shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), shapes)
  return TrainState(apply_fn=model.apply, tx=tx, **shapes)


def _initial_items(model: Any, tx: optax.GradientTransformation, seed: int, input_shape: tuple[int, ...]
                   ) -> dict[str, PyTree]:
  """The array fields of a fresh `TrainState` (see `create_train_state`)."""
  key = jax.random.key(seed)
  variables = model.init(key, jnp.zeros(input_shape, jnp.float32), train=False)
  params = variables["params"]
  return {
      "step": jnp.zeros((), jnp.int32),
      "params": params,
      "batch_stats": variables.get("batch_stats", {}),
      "opt_state": tx.init(params),
      "rng": jax.random.key_data(jax.random.fold_in(key, 1)),
  }


@jax.jit
def _finite_flags(leaves: list[jax.Array]) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def all_finite(tree: PyTree) -> bool:
  """True when every floating-point leaf of ``tree`` is finite (no NaN, no inf)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return bool(_finite_flags(leaves)) if leaves else True


def num_params(params: PyTree) -> int:
  """Number of parameters of a tree of arrays."""
  return int(sum(math.prod(np.shape(x)) for x in jax.tree.leaves(params)))


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


def initial_state(parallel: Any, model: Any, tx: Any, store: CheckpointStore, *, seed: int,
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


__all__ = ["CHECKPOINT_FIELDS", "TrainState", "abstract_train_state", "all_finite", "create_train_state",
           "init_from_checkpoint", "initial_state", "num_params"]
