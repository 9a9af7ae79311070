"""What every octflax network shares: its settings, where alpha goes, the shortcut, the head."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from octflax.functional import global_avg_pool
from octflax.layers import OctConvBN
from octflax.tensor import OctTensor, as_oct, check_alpha

Array = jax.Array
ModuleDef = Any


def stage_alphas(alpha: float, num_stages: int) -> list[float]:
  """The alpha of each stage under the official placement.

  The stem is vanilla (alpha 0), every stage but the last runs at ``alpha`` and the
  last stage runs at alpha 0, so the first block of the first stage converts into
  the octave representation and the first block of the last stage converts back.
  The classifier then sees the high part only.

  Examples:
    >>> stage_alphas(0.5, 4)
    [0.5, 0.5, 0.5, 0.0]
  """
  alpha = check_alpha(alpha)
  return [alpha] * (num_stages - 1) + [0.0]


def resplit(x: OctTensor, alpha: float, octave_axes: tuple[int, ...] | None = None) -> OctTensor:
  """Re-splits ``x`` at a new ratio without parameters (merge, then split again).

  Used by identity shortcuts whose block changes alpha but not the channel count.
  """
  x = as_oct(x)
  if x.alpha == alpha:
    return x
  return OctTensor.from_array(x.merge(octave_axes), alpha, octave_axes)


def block_kernel(size: int, time_kernel: int | None) -> int | tuple[int, int, int]:
  """A block's kernel: ``size`` (2-D images) or ``(time_kernel, size, size)`` (3-D clips)."""
  return size if time_kernel is None else (time_kernel, size, size)


def block_strides(strides: int, time_kernel: int | None) -> int | tuple[int, int, int]:
  """A block's stride: ``strides`` (2-D) or ``(1, strides, strides)`` (3-D: time keeps its rate)."""
  return strides if time_kernel is None else (1, strides, strides)


class Classifier(nn.Module):
  """Global average pool of each part, concatenation, then a dense layer (float32 logits)."""

  num_classes: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: OctTensor | Array) -> Array:
    x = as_oct(x)
    spatial_dims = (x.high if x.high is not None else x.low).ndim - 2
    features = global_avg_pool(x, spatial_dims)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(features)
    return logits.astype(jnp.float32)


def _setting(default: Any) -> Any:
  """A keyword-only attribute: it follows every network's own, positional, attributes."""
  return dataclasses.field(default=default, kw_only=True)


class Network(nn.Module):
  """The settings, construction checks and calling convention every zoo network shares.

  A network's own attributes (its architecture: ``stage_sizes``, ``depth``, ...) come
  first and may be given by position; these settings are keyword-only.

  Every network is called as ``model.apply(variables, x, train=..., return_features=...)``
  with ``x`` images ``[N, H, W, C]`` (clips ``[N, T, H, W, C]`` for the video networks),
  ``train`` choosing batch statistics (True) or running averages (False) in BatchNorm
  (and dropout on or off where a network has it), and returns float32 logits
  ``[N, num_classes]``, or with ``return_features=True`` the backbone's maps as
  `backbone_features` describes (the classifier is not run); each network's ``__call__``
  says which maps.

  Attributes:
    num_classes: classifier outputs.
    alpha: share of low-frequency channels, placed by the network (`stage_alphas`).
    dtype: compute dtype (parameters stay float32).
    momentum, epsilon: BatchNorm settings (momentum 0.9 = PyTorch's 0.1).
    axis_name: BatchNorm axis name under `jax.pmap` (None under jit).
  """

  num_classes: int = _setting(1000)
  alpha: float = _setting(0.0)
  dtype: Any = _setting(jnp.float32)
  momentum: float = _setting(0.9)
  epsilon: float = _setting(1e-5)
  axis_name: str | None = _setting(None)

  def __post_init__(self):
    if not isinstance(self.num_classes, int) or self.num_classes < 1:
      raise ValueError(f"num_classes must be a positive int, got {self.num_classes!r}.")
    check_alpha(self.alpha)
    super().__post_init__()

  def unit_factory(self, pool_stride: bool = True,
                   octave_axes: tuple[int, ...] | None = None) -> ModuleDef:
    """The conv-BN unit the network is built from, with its shared settings bound."""
    return functools.partial(OctConvBN, dtype=self.dtype, momentum=self.momentum,
                             epsilon=self.epsilon, axis_name=self.axis_name,
                             pool_stride=pool_stride,
                             octave_axes=None if octave_axes is None else tuple(octave_axes))

  def batch_norm(self, train: bool) -> ModuleDef:
    """A vanilla `flax.linen.BatchNorm` (the stems') with the network's settings bound."""
    return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.momentum,
                             epsilon=self.epsilon, dtype=self.dtype, axis_name=self.axis_name)


class FeatureStrides(Mapping):
  """Feature name -> per-axis stride: a read-only mapping that is static under `jax.jit`.

  It is a pytree with no leaves (the strides are its static data), so the strides a
  jitted function returns are still Python ints, usable for shapes.
  """

  def __init__(self, items: Iterable[tuple[str, Sequence[int]]]):
    self._items = tuple((str(name), tuple(int(s) for s in stride)) for name, stride in items)

  def __getitem__(self, name: str) -> tuple[int, ...]:
    return dict(self._items)[name]

  def __iter__(self) -> Iterator[str]:
    return (name for name, _ in self._items)

  def __len__(self) -> int:
    return len(self._items)

  def __eq__(self, other: Any) -> bool:
    return isinstance(other, Mapping) and dict(self._items) == dict(other.items())

  def __hash__(self) -> int:
    return hash(self._items)

  def __repr__(self) -> str:
    return f"FeatureStrides({dict(self._items)})"


jax.tree_util.register_pytree_node(
    FeatureStrides, lambda strides: ((), strides._items), lambda items, _: FeatureStrides(items))


def backbone_features(maps: dict[str, Any], strides: dict[str, Sequence[int]]) -> dict[str, Any]:
  """The backbone convention of every zoo model: feature maps and their strides.

  A model called with ``return_features=True`` returns, instead of logits::

    {'stem': OctTensor, 'stage1': OctTensor, ..., 'strides': {'stem': (2, 2), ...}}

  Each map is an `OctTensor` (a vanilla map is ``OctTensor(high=x, low=None)``; its
  ``merge()`` gives one array); its stride is that of the high part relative to the
  input, per spatial axis (the low part has twice that stride on every octave axis).
  ``strides`` is a `FeatureStrides`: Python ints inside and outside `jax.jit`.

  Args:
    maps: name -> feature map (an OctTensor or an array), in network order.
    strides: name -> per-axis stride of the high part; the same keys as ``maps``.

  Returns:
    ``{**maps as OctTensors, 'strides': FeatureStrides}``.
  """
  if set(maps) != set(strides):
    raise ValueError(f"maps {sorted(maps)} and strides {sorted(strides)} name different features.")
  out: dict[str, Any] = {name: as_oct(value) for name, value in maps.items()}
  out["strides"] = FeatureStrides((name, strides[name]) for name in maps)
  return out
