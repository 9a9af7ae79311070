"""An NNX zoo model behind the Linen calling convention the trainer uses.

`octflax.training` drives a model through ``init`` / ``apply`` / ``clone`` on
``{'params', 'batch_stats'}`` pytrees. `trainer_model` gives an NNX network that
interface by splitting it into its graph definition and its state at that edge
(`nnx.split` once per input shape, `nnx.merge` inside each traced step): the train
step, the parallel wrappers, the checkpoints and the cost counter stay as they are,
and a run's state has the Linen network's names, so checkpoints of either API load
into the other.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from octflax.nnx import convert
from octflax.nnx import models as nnx_models

PyTree = Any


class TrainerModel:
  """An `octflax.nnx.models` network with Linen's ``init`` / ``apply`` / ``clone``.

  Attributes:
    name: the zoo name.
    alpha, num_classes, dtype: as in `octflax.nnx.models.get_model`.
    overrides: further attributes of the network (e.g. ``stage_sizes``, ``axis_name``).
  """

  def __init__(self, name: str, *, alpha: float = 0.0, num_classes: int = 1000, dtype: Any = jnp.float32,
               **overrides: Any):
    self.name = name
    self.alpha = alpha
    self.num_classes = num_classes
    self.dtype = dtype
    self.overrides = dict(overrides)
    self._graphs: dict[int, tuple[nnx.GraphDef, nnx.State]] = {}
    # Builds the description now, so that a bad name or override fails here, not in a step.
    linen = self._linen_description()
    if not nnx_models.is_oct_resnet(linen):
      raise ValueError(
          f"model {name!r}: the NNX API has the Oct-ResNet family ({', '.join(nnx_models.list_models())}); "
          f"use model.api='linen' for {name!r}.")

  @property
  def axis_name(self) -> str | None:
    """The BatchNorm axis name (set by ``clone(axis_name=...)`` under pmap)."""
    return self.overrides.get("axis_name")

  def _linen_description(self):
    return nnx_models.linen_description(self.name, alpha=self.alpha, num_classes=self.num_classes,
                                        dtype=self.dtype, **self.overrides)

  def build(self, in_features: int, rngs: nnx.Rngs) -> nnx_models.ResNet:
    """The NNX network for inputs of ``in_features`` channels."""
    return nnx_models.from_linen_module(self._linen_description(), in_features=in_features, rngs=rngs)

  def clone(self, **attrs: Any) -> "TrainerModel":
    """A copy with ``attrs`` replaced (``dtype``, ``axis_name``, ``alpha``, overrides)."""
    settings = dict(alpha=self.alpha, num_classes=self.num_classes, dtype=self.dtype, **self.overrides)
    settings.update(attrs)
    return TrainerModel(self.name, **settings)

  def _graph(self, in_features: int) -> tuple[nnx.GraphDef, nnx.State]:
    """Graph definition and abstract state, built once per input channel count."""
    if in_features not in self._graphs:
      abstract = nnx.eval_shape(lambda: self.build(in_features, nnx.Rngs(0)))
      self._graphs[in_features] = nnx.split(abstract)
    return self._graphs[in_features]

  def init(self, rngs: jax.Array | dict[str, jax.Array], x: jax.Array, train: bool = False) -> dict[str, PyTree]:
    """``{'params', 'batch_stats'}`` of a freshly initialised network (as Linen's ``init``).

    The values are those the Linen network draws from the same key (the two front ends
    draw from the same distributions but consume random streams differently), so a run's
    ``seed`` gives the same starting weights, and the same run, whichever API trains it:
    ``model.api`` changes the front end, not the experiment. The result is checked against
    the NNX network's own state layout.

    Args:
      rngs: a key (or ``{'params': key}``) for the parameters.
      x: an input batch ``[N, H, W, C]``.
      train: accepted for Linen's signature; initialisation does not depend on it.
    """
    del train
    key = rngs["params"] if isinstance(rngs, dict) else rngs
    variables = self._linen_description().init(key, x, train=False)
    graphdef, state = self._graph(x.shape[-1])
    model = convert.from_linen(variables, nnx.merge(graphdef, jax.tree.map(lambda leaf: leaf, state)))
    return convert.to_linen(model)

  def apply(self, variables: dict[str, PyTree], x: jax.Array, train: bool = False,
            mutable: bool | str | Sequence[str] = False, rngs: Any = None) -> Any:
    """The network's logits for ``x`` with ``variables`` (as Linen's ``apply``).

    Args:
      variables: ``{'params', 'batch_stats'}``.
      x: images ``[N, H, W, C]``.
      train: batch statistics (and their running averages updated) or running averages.
      mutable: ``['batch_stats']`` (or True) also returns the updated statistics.
      rngs: accepted for Linen's signature (the Oct-ResNets draw no random numbers).

    Returns:
      ``logits``, or ``(logits, {'batch_stats': ...})`` when ``mutable``.
    """
    del rngs
    graphdef, state = self._graph(x.shape[-1])
    # Fresh Variables in the current trace: the cached ones belong to the trace that built them.
    model = convert.from_linen(variables, nnx.merge(graphdef, jax.tree.map(lambda leaf: leaf, state)))
    if train:
      model.train()
    else:
      model.eval()
    logits = model(x)
    if not mutable:
      return logits
    return logits, {"batch_stats": convert.to_linen(model).get("batch_stats", {})}

  def __repr__(self) -> str:
    return (f"TrainerModel({self.name!r}, alpha={self.alpha}, num_classes={self.num_classes}, "
            f"dtype={jnp.dtype(self.dtype).name}, overrides={self.overrides})")


def trainer_model(name: str, *, alpha: float = 0.0, num_classes: int = 1000, dtype: Any = jnp.float32,
                  **overrides: Any) -> TrainerModel:
  """The NNX network ``name`` with the calling convention of `octflax.training`.

  Args:
    name: a zoo name of `octflax.nnx.models.list_models`.
    alpha, num_classes, dtype: as in `octflax.nnx.models.get_model`.
    **overrides: further network attributes (``stage_sizes``, ``axis_name``, ...).

  Returns:
    A `TrainerModel`: ``init(key, x, train=False)``, ``apply(variables, x, train=...,
    mutable=[...])``, ``clone(**attrs)``.

  Raises:
    ValueError: an unknown name, a model outside the Oct-ResNet family, a bad override.
  """
  return TrainerModel(name, alpha=alpha, num_classes=num_classes, dtype=dtype, **overrides)


__all__ = ["TrainerModel", "trainer_model"]
