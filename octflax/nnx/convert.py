"""Moving weights between a Linen module's variables and an NNX module's state.

The NNX modules of `octflax.nnx` keep the Linen modules' names, shapes and HWIO layout:
an NNX module's ``nnx.Param`` state is the Linen ``params`` collection and its
``nnx.BatchStat`` state the ``batch_stats`` collection, key for key. Both functions
check that the names and shapes agree and copy nothing else, so
``to_linen(from_linen(variables, model)) == variables`` exactly.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx
from flax import traverse_util

PyTree = Any

# Linen collection -> NNX variable type holding it.
COLLECTIONS: dict[str, type[nnx.Variable]] = {"params": nnx.Param, "batch_stats": nnx.BatchStat}


def to_linen(model: nnx.Module) -> dict[str, PyTree]:
  """The Linen variables of an NNX model: ``{'params': ..., 'batch_stats': ...}``.

  Args:
    model: an `octflax.nnx` module (or any NNX module whose state is ``nnx.Param`` and
      ``nnx.BatchStat`` variables).

  Returns:
    Nested dicts of arrays, as the Linen module's ``init`` returns them; a collection
    the model has no variable of is left out (e.g. ``batch_stats`` of a plain OctConv).
  """
  variables = {}
  for collection, kind in COLLECTIONS.items():
    tree = nnx.to_pure_dict(nnx.state(model, kind))
    if tree:
      variables[collection] = _string_keys(tree)
  return variables


def from_linen(variables: Mapping[str, PyTree], model: nnx.Module) -> nnx.Module:
  """Copies Linen variables into an NNX model of the same architecture, in place.

  Args:
    variables: ``{'params': ..., 'batch_stats': ...}`` of the Linen module, e.g. from
      ``linen_model.init(...)``, a checkpoint or `octflax.convert`.
    model: the NNX module to fill; it is returned.

  Returns:
    ``model``, holding the given weights.

  Raises:
    ValueError: a collection other than ``params`` / ``batch_stats``, or names or
      shapes that differ from the model's (every difference is listed).
  """
  unknown = sorted(set(variables) - set(COLLECTIONS))
  if unknown:
    raise ValueError(
        f"from_linen: variables has collection(s) {unknown}; allowed are {list(COLLECTIONS)}.")
  for collection, kind in COLLECTIONS.items():
    state = nnx.state(model, kind)
    pure = nnx.to_pure_dict(state)
    target = _string_keys(pure)
    given = variables.get(collection, {})
    check_same_layout(given, target, f"variables[{collection!r}]")
    if target:
      nnx.replace_by_pure_dict(state, _as_state_keys(given, pure))
      nnx.update(model, state)
  return model


def check_same_layout(given: PyTree, expected: PyTree, what: str) -> None:
  """Raises a ValueError listing every name or shape of ``given`` that ``expected`` lacks or has otherwise."""
  flat_given = traverse_util.flatten_dict(dict(given), sep="/") if given else {}
  flat_expected = traverse_util.flatten_dict(dict(expected), sep="/") if expected else {}
  problems = [f"missing {k} {tuple(np.shape(v))}" for k, v in flat_expected.items() if k not in flat_given]
  problems += [f"unexpected {k} {tuple(np.shape(v))}" for k, v in flat_given.items() if k not in flat_expected]
  problems += [
      f"{k}: shape {tuple(np.shape(v))}, the model has {tuple(np.shape(flat_expected[k]))}"
      for k, v in flat_given.items() if k in flat_expected and np.shape(v) != np.shape(flat_expected[k])]
  if problems:
    raise ValueError(f"{what} does not match the model: " + "; ".join(sorted(problems)) + ".")


def _string_keys(tree: PyTree) -> PyTree:
  """Nested dicts with the keys as strings (Linen's collections use string names)."""
  if isinstance(tree, Mapping):
    return {str(k): _string_keys(v) for k, v in tree.items()}
  return tree


def _as_state_keys(given: PyTree, like: PyTree) -> PyTree:
  """``given`` with the keys of ``like`` (an NNX pure dict, whose keys may be ints)."""
  if isinstance(like, Mapping):
    return {k: _as_state_keys(given[str(k)], v) for k, v in like.items()}
  return jax.numpy.asarray(given)


__all__ = ["COLLECTIONS", "check_same_layout", "from_linen", "to_linen"]
