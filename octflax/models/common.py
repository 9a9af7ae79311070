"""What every octflax network shares: where alpha goes, the shortcut, the classifier head."""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

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


def resplit(x: OctTensor, alpha: float) -> OctTensor:
  """Re-splits ``x`` at a new ratio without parameters (merge, then split again).

  Used by identity shortcuts whose block changes alpha but not the channel count.
  """
  x = as_oct(x)
  if x.alpha == alpha:
    return x
  return OctTensor.from_array(x.merge(), alpha)


def unit_factory(dtype: Any, momentum: float, epsilon: float, axis_name: str | None, fuse: bool,
                 pool_stride: bool = True) -> ModuleDef:
  """The conv-BN unit a network is built from, with its shared settings bound."""
  return functools.partial(OctConvBN, dtype=dtype, momentum=momentum, epsilon=epsilon,
                           axis_name=axis_name, fuse=fuse, pool_stride=pool_stride)


class Classifier(nn.Module):
  """Global average pool of each part, concatenation, then a dense layer (float32 logits)."""

  num_classes: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: OctTensor | Array) -> Array:
    features = global_avg_pool(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(features)
    return logits.astype(jnp.float32)


def check_num_classes(num_classes: int) -> None:
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")


Activation = Callable[[Array], Array]
StageSpec = Sequence[int]
