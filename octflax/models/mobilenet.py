"""Oct-MobileNet v1 and v2: depthwise OctConv (H->H and L->L only, each depthwise).

Placement follows the ResNets: the stem is vanilla, the first block converts into the
octave representation, and the blocks of the last (7x7 at 224) stage run at alpha 0.
In v2 only the expanded channels inside each inverted-residual block are octave, as
in the official code: expansion 1x1 (0 -> alpha), depthwise 3x3 (alpha), projection
1x1 (alpha -> 0), so the narrow residual stream stays vanilla.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import linen as nn

from octflax.functional import oct_add
from octflax.models.common import Classifier, ModuleDef, Network, backbone_features
from octflax.tensor import as_oct

Array = jax.Array
relu = jax.nn.relu
relu6 = jax.nn.relu6

# (output channels, stride) of the 13 depthwise-separable blocks of MobileNet v1.
_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
              (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
# (expansion t, output channels c, repeats n, first stride s) of MobileNet v2.
_V2_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1))


def _make_divisible(value: float, divisor: int = 8) -> int:
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


def _vanilla_stem(features: int, dtype: Any, norm: ModuleDef, x: Array, activation) -> Array:
  x = nn.Conv(features, (3, 3), (2, 2), padding=((1, 1), (1, 1)), use_bias=False, dtype=dtype,
              kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"), name="stem_conv")(x)
  return activation(norm(name="stem_bn")(x))


def _last_stage_starts(strides: list[int]) -> int:
  """Index of the first block of the last resolution stage (the last stride-2 block)."""
  return max(i for i, s in enumerate(strides) if s == 2)


def _feature_ends(strides: list[int]) -> list[int]:
  """Blocks whose output is a backbone feature: the last block at each resolution."""
  return [i for i in range(len(strides)) if i == len(strides) - 1 or strides[i + 1] == 2]


class _Features:
  """Collects the last map at each resolution: 'stem' (stride 2), then 'stage1', ... (4, 8, ...)."""

  def __init__(self, stem_stride: int, block_strides: list[int]):
    self.block_strides, self.stride = block_strides, stem_stride
    self.ends = set(_feature_ends(block_strides))
    self.maps, self.strides = {}, {}

  def after_block(self, i: int, x) -> None:
    self.stride *= self.block_strides[i]
    if i in self.ends:
      name = "stem" if not self.maps else f"stage{len(self.maps)}"
      self.maps[name], self.strides[name] = x, (self.stride, self.stride)

  def result(self) -> dict:
    return backbone_features(self.maps, self.strides)


class _MobileNet(Network):
  """The attribute and check both MobileNets add to `Network`'s."""

  width_multiplier: float = 1.0

  def __post_init__(self):
    if not self.width_multiplier > 0:
      raise ValueError(f"width_multiplier must be > 0, got {self.width_multiplier!r}.")
    super().__post_init__()


class MobileNetV1(_MobileNet):
  """Oct-MobileNet v1 (Howard et al., 2017) with depthwise OctConv.

  Attributes:
    width_multiplier: scales every layer's channels (``int(c * width_multiplier)``).
    alpha, num_classes, dtype, momentum, epsilon, axis_name: keyword-only, as in
      `Network` (alpha: share of low-frequency channels outside the stem and the last stage).
  """

  @nn.compact
  def __call__(self, x: Array, train: bool = True, return_features: bool = False) -> Array | dict:
    """Logits of images ``[N, H, W, C]``, or the backbone's maps (see `Network`).

    The maps: the last one at each resolution, ``stem`` (stride 2, after the first
    block), ``stage1``..``stage4`` (4 to 32).
    """
    unit = self.unit_factory()
    width = lambda c: max(1, int(c * self.width_multiplier))
    collected = _Features(2, [s for _, s in _V1_BLOCKS])
    x = _vanilla_stem(width(32), self.dtype, self.batch_norm(train), x.astype(self.dtype), relu)
    # A depthwise conv cannot change alpha, so the pointwise conv just before the last
    # stage converts back: every conv of the 7x7 stage, its strided depthwise conv
    # included, is vanilla (this gives the official 318.2 MMACs at alpha .5).
    convert_back = _last_stage_starts([s for _, s in _V1_BLOCKS]) - 1
    alpha_in = 0.0
    for i, (features, strides) in enumerate(_V1_BLOCKS):
      alpha_out = 0.0 if i >= convert_back else self.alpha
      channels = as_oct(x).channels
      # The depthwise conv keeps its input's split; the pointwise conv changes it.
      x = unit(channels, 3, alpha_in, alpha_in, strides=strides, feature_group_count=channels,
               activation=relu, name=f"block{i}_depthwise")(x, train)
      x = unit(width(features), 1, alpha_in, alpha_out, activation=relu,
               name=f"block{i}_pointwise")(x, train)
      collected.after_block(i, x)
      alpha_in = alpha_out
    if return_features:
      return collected.result()
    return Classifier(self.num_classes, self.dtype, name="head")(x)


class InvertedResidual(nn.Module):
  """MobileNet v2 block: expand 1x1 (0 -> alpha), depthwise 3x3 (alpha), project 1x1 (alpha -> 0)."""

  features: int
  expansion: int
  strides: int
  alpha: float
  unit: Any

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    channels = as_oct(x).channels
    hidden = channels * self.expansion
    y, alpha_in = x, 0.0
    if self.expansion != 1:
      y = self.unit(hidden, 1, 0.0, self.alpha, activation=relu6, name="expand")(y, train)
      alpha_in = self.alpha
    y = self.unit(hidden, 3, alpha_in, alpha_in, strides=self.strides, feature_group_count=hidden,
                  activation=relu6, name="depthwise")(y, train)
    y = self.unit(self.features, 1, alpha_in, 0.0, name="project")(y, train)
    if self.strides == 1 and channels == self.features:
      y = oct_add(y, x)
    return y.high


class MobileNetV2(_MobileNet):
  """Oct-MobileNet v2 (Sandler et al., 2018): octave only on the expanded channels.

  Attributes:
    width_multiplier: scales channels (rounded to multiples of 8, as in the paper).
    alpha, num_classes, dtype, momentum, epsilon, axis_name: keyword-only, as in
      `Network` (alpha: share of low-frequency channels of the expanded features; the last
      stage at 0).
  """

  @nn.compact
  def __call__(self, x: Array, train: bool = True, return_features: bool = False) -> Array | dict:
    """Logits of images ``[N, H, W, C]``, or the backbone's maps (see `Network`).

    The maps: the last block's output at each resolution, ``stem`` (stride 2),
    ``stage1``..``stage4`` (4 to 32); the last 1x1 conv is not run either.
    """
    unit = self.unit_factory()
    x = _vanilla_stem(_make_divisible(32 * self.width_multiplier), self.dtype, self.batch_norm(train),
                      x.astype(self.dtype), relu6)
    blocks = [(t, c, s if i == 0 else 1) for t, c, n, s in _V2_BLOCKS for i in range(n)]
    last = _last_stage_starts([s for _, _, s in blocks])
    collected = _Features(2, [s for _, _, s in blocks])
    for i, (t, c, s) in enumerate(blocks):
      alpha = 0.0 if i >= last else self.alpha
      x = InvertedResidual(_make_divisible(c * self.width_multiplier), t, s, alpha, unit,
                           name=f"block{i}")(x, train)
      collected.after_block(i, x)
    if return_features:
      return collected.result()
    last_features = _make_divisible(1280 * max(1.0, self.width_multiplier))
    x = unit(last_features, 1, 0.0, 0.0, activation=relu6, name="last_conv")(x, train)
    return Classifier(self.num_classes, self.dtype, name="head")(x)
