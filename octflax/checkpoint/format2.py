"""The variables of checkpoint format 2 and today's (format 3): one set per layer, not one per path and part.

Since format 3 the octave layers hold the vanilla layers' variables: an OctConv the vanilla conv's
``kernel`` (and ``bias``), its paths being blocks of it (`octflax.functional.kernel_blocks`); an
OctBatchNorm one BatchNorm's ``scale``, ``bias``, ``mean`` and ``var`` over all channels, the
high part's first. Format 2 (training runs and imported weights), like the PyTorch port, held
one sub-tree per path, ``{'h2h': {'kernel', 'bias'?}, 'h2l': ..., 'l2h': ..., 'l2l': ...}``, and
one per part, ``{'high': {...}, 'low': {...}}``.

`join` turns every such sub-tree of any tree (parameters, BatchNorm statistics, an optimizer's
moments that mirror the parameters) into today's; `split` is its inverse for the layers a model
names (`octflax.layers.octave_layers`); `holds` says whether a tree is of format 2.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from octflax import functional as F

PyTree = Any

PARTS = ("high", "low")
_NORM_LEAVES = {"scale", "bias", "mean", "var"}


def _is_paths(node: Any) -> bool:
  """One OctConv's sub-tree per path: path names mapping to ``kernel`` [+ ``bias``]."""
  return (isinstance(node, Mapping) and bool(node) and set(node) <= set(F.PATHS)
          and all(isinstance(v, Mapping) and "kernel" in v and set(v) <= {"kernel", "bias"} for v in node.values()))


def _is_parts(node: Any) -> bool:
  """One OctBatchNorm's sub-tree per part: ``high`` / ``low`` mapping to BatchNorm variables."""
  return (isinstance(node, Mapping) and bool(node) and set(node) <= set(PARTS)
          and all(isinstance(v, Mapping) and v and set(v) <= _NORM_LEAVES for v in node.values()))


def holds(tree: PyTree) -> bool:
  """Whether ``tree`` holds octave layers' variables in the per-path or per-part sub-trees of format 2."""
  if _is_paths(tree) or _is_parts(tree):
    return True
  if isinstance(tree, Mapping):
    return any(holds(v) for v in tree.values())
  if isinstance(tree, (list, tuple)):
    return any(holds(v) for v in tree)
  return False


def join(tree: PyTree) -> PyTree:
  """``tree`` with every per-path and per-part sub-tree replaced by the layer's one set of variables.

  Dicts, lists and tuples are walked; anything else is returned as it is. Exact: values are
  copied, not computed.
  """
  if _is_paths(tree):
    kernel, bias = F.join_kernel_blocks({p: v["kernel"] for p, v in tree.items()},
                                        {p: v["bias"] for p, v in tree.items() if "bias" in v})
    return {"kernel": kernel} if bias is None else {"kernel": kernel, "bias": bias}
  if _is_parts(tree):
    present = [tree[p] for p in PARTS if p in tree]
    return {name: np.concatenate([np.asarray(v[name]) for v in present]) for name in present[0]}
  if isinstance(tree, Mapping):
    return {k: join(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    values = [join(v) for v in tree]
    return type(tree)(*values) if hasattr(tree, "_fields") else type(tree)(values)
  return tree


def split(tree: PyTree, layers: Mapping[tuple[str, ...], Any]) -> PyTree:
  """The inverse of `join` for the octave layers ``layers`` names.

  Args:
    tree: a variables collection (``params`` or ``batch_stats``) in today's layout.
    layers: `octflax.layers.octave_layers` of the model: ``{module path: (spec, channels)}``, an
      OctConv's input channels, an OctBatchNorm's high part's.

  Returns:
    ``tree`` with each OctConv's ``{'kernel', 'bias'?}`` as ``{path: {'kernel', 'bias'?}}`` and each
    OctBatchNorm's variables as ``{'high': ..., 'low': ...}`` (the parts it has).
  """
  def walk(node: Any, where: tuple[str, ...]) -> Any:
    if where in layers and isinstance(node, Mapping):
      spec, channels = layers[where]
      if "kernel" in node:
        kernels, biases = F.kernel_blocks(node["kernel"], node.get("bias"), channels, spec.alpha_in,
                                          spec.alpha_out, getattr(spec, "groups", 1))
        return {p: {"kernel": k, **({"bias": biases[p]} if p in biases else {})} for p, k in kernels.items()}
      total = next(iter(node.values())).shape[-1]
      slices = {"high": slice(0, channels), "low": slice(channels, total)}
      return {part: {name: v[sl] for name, v in node.items()} for part, sl in slices.items()
              if sl.stop > sl.start}
    if isinstance(node, Mapping):
      return {k: walk(v, where + (k,)) for k, v in node.items()}
    return node

  return walk(tree, ())


__all__ = ["PARTS", "holds", "join", "split"]
