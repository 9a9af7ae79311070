"""What every Linen zoo network shares: its settings, the conv-BN unit, the head.

Where alpha goes (`stage_alphas`), the identity shortcut's re-split (`resplit`) and the
backbone convention (`backbone_features`) are pure and live in `octflax.models.structure`,
which the NNX zoo shares; they are importable from here too.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from octflax.layers import OctConvBN
from octflax.models.structure import (FeatureStrides, backbone_features, block_kernel, block_strides, classify,
                                      resplit, stage_alphas)
from octflax.tensor import OctTensor, check_alpha

Array = jax.Array
ModuleDef = Any


class Classifier(nn.Module):
  """Global average pool of each part, concatenation, then a dense layer (float32 logits)."""

  num_classes: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: OctTensor | Array) -> Array:
    return classify(x, nn.Dense(self.num_classes, dtype=self.dtype, name="fc"))


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


__all__ = ["Classifier", "FeatureStrides", "ModuleDef", "Network", "backbone_features", "block_kernel", "block_strides",
           "resplit", "stage_alphas"]
