"""Oct-ResNet v1.5, Oct-ResNeXt, Oct-SE-ResNet, CIFAR-style Oct-ResNets and Oct-WRNs.

One `ResNet` definition serves every variant; the variants are partials in
`octflax.models`. Alpha placement comes from `stage_alphas` (stem vanilla, first
block converts in, last stage at alpha 0, classifier on the high part).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from octflax.functional import global_avg_pool, oct_add, oct_max_pool
from octflax.layers import OctBatchNorm, OctConv
from octflax.models.common import (
    Classifier, ModuleDef, Network, backbone_features, block_kernel, block_strides, resplit,
    stage_alphas)
from octflax.tensor import OctTensor, as_oct

Array = jax.Array
relu = jax.nn.relu


class OctSqueezeExcite(nn.Module):
  """Squeeze-and-excitation over both parts: one gate vector, split like the channels.

  ``s = sigmoid(W2 relu(W1 mean(x)))`` over the concatenated channels of both parts;
  each part is multiplied by its slice of ``s``.

  Attributes:
    reduction: channels of the hidden layer are ``max(C // reduction, 1)``.
    dtype: compute dtype of the two dense layers; None uses the input's.
  """

  reduction: int = 16
  dtype: Any = None

  @nn.compact
  def __call__(self, x: OctTensor) -> OctTensor:
    x = as_oct(x)
    dtype = self.dtype or x.dtype
    channels = x.channels
    s = global_avg_pool(x)
    s = relu(nn.Dense(max(channels // self.reduction, 1), dtype=dtype, name="reduce")(s))
    s = jax.nn.sigmoid(nn.Dense(channels, dtype=dtype, name="expand")(s))
    gates = OctTensor(high=None if x.high is None else s[:, : x.high_channels],
                      low=None if x.low is None else s[:, x.high_channels:])
    # [N, C] -> [N, 1, ..., 1, C] for any number of spatial axes.
    return jax.tree.map(
        lambda part, gate: part * jnp.expand_dims(gate, tuple(range(1, part.ndim - 1))).astype(part.dtype),
        x, gates)


def _shortcut(unit: ModuleDef, x: OctTensor, features: int, alpha_in: float, alpha_out: float,
              strides: int, train: bool, time_kernel: int | None = None,
              octave_axes: tuple[int, ...] | None = None) -> OctTensor:
  """Projection (1x1 conv-BN, the only place a block's shape changes) or identity."""
  if strides != 1 or x.channels != features:
    flat = None if time_kernel is None else 1
    return unit(features, block_kernel(1, flat), alpha_in, alpha_out,
                strides=block_strides(strides, time_kernel), name="shortcut")(x, train)
  return resplit(x, alpha_out, octave_axes)


class _ResidualBlock(nn.Module):
  """The constructor `ResNet` and `VideoResNet` build every block with.

  Attributes:
    features, alpha_in, alpha_out, strides: the block's channels, alphas and spatial
      stride (1 or 2).
    unit: the conv-BN unit (`OctConvBN` with the network's settings bound).
    zero_init_residual: zero-init the last BN scale.
    time_kernel: None for images; for clips [N, T, H, W, C] the time extent of the
      block's first conv.
    octave_axes: the unit's octave axes (for the parameter-free re-split of an identity
      shortcut); None = all.
  """

  features: int
  alpha_in: float
  alpha_out: float
  unit: ModuleDef
  strides: int = 1
  zero_init_residual: bool = False
  time_kernel: int | None = None
  octave_axes: tuple[int, ...] | None = None


class BasicBlock(_ResidualBlock):
  """Two 3x3 conv-BN units (post-activation); the first converts alpha_in -> alpha_out.

  Attributes:
    features, alpha_in, alpha_out, unit, strides, zero_init_residual, octave_axes: the
      block's constructor (``features`` is its output channels).
    time_kernel: None for images; for clips the time extent of the first conv
      (``(t, 3, 3)``; the second is ``(1, 3, 3)``).
  """

  expansion = 1

  @nn.compact
  def __call__(self, x: OctTensor, train: bool) -> OctTensor:
    last_scale = nn.initializers.zeros_init() if self.zero_init_residual else nn.initializers.ones_init()
    t = self.time_kernel
    flat = None if t is None else 1  # the convs with no time extent in 3-D
    y = self.unit(self.features, block_kernel(3, t), self.alpha_in, self.alpha_out,
                  strides=block_strides(self.strides, t), activation=relu, name="conv1")(x, train)
    y = self.unit(self.features, block_kernel(3, flat), self.alpha_out, self.alpha_out,
                  bn_scale_init=last_scale, name="conv2")(y, train)
    shortcut = _shortcut(self.unit, as_oct(x), self.features, self.alpha_in, self.alpha_out,
                         self.strides, train, t, self.octave_axes)
    return oct_add(y, shortcut).map(relu)


class Bottleneck(_ResidualBlock):
  """ResNet v1.5 bottleneck: 1x1 -> 3x3 (carries the stride, grouped for ResNeXt) -> 1x1 (x4).

  Attributes:
    features, alpha_in, alpha_out, unit, strides, zero_init_residual, octave_axes: the
      block's constructor (``features`` is the width of the 3x3; the block outputs 4x).
    time_kernel: None for images; for clips the time extent of the first 1x1 conv
      (``(t, 1, 1)``, I3D's inflated 3x1x1 is t = 3); the others are ``(1, k, k)``.
    groups, base_width: ResNeXt cardinality and width per group.
    squeeze_excite: an `OctSqueezeExcite` on the residual branch.
  """

  groups: int = 1
  base_width: int = 64
  squeeze_excite: bool = False
  expansion = 4

  @nn.compact
  def __call__(self, x: OctTensor, train: bool) -> OctTensor:
    width = int(self.features * self.base_width / 64) * self.groups
    last_scale = nn.initializers.zeros_init() if self.zero_init_residual else nn.initializers.ones_init()
    t = self.time_kernel
    flat = None if t is None else 1  # the convs with no time extent in 3-D
    y = self.unit(width, block_kernel(1, t), self.alpha_in, self.alpha_out, activation=relu,
                  name="conv1")(x, train)
    y = self.unit(width, block_kernel(3, flat), self.alpha_out, self.alpha_out,
                  strides=block_strides(self.strides, t), feature_group_count=self.groups,
                  activation=relu, name="conv2")(y, train)
    y = self.unit(self.features * 4, block_kernel(1, flat), self.alpha_out, self.alpha_out,
                  bn_scale_init=last_scale, name="conv3")(y, train)
    if self.squeeze_excite:
      y = OctSqueezeExcite(name="se")(y)
    shortcut = _shortcut(self.unit, as_oct(x), self.features * 4, self.alpha_in, self.alpha_out,
                         self.strides, train, t, self.octave_axes)
    return oct_add(y, shortcut).map(relu)


class ResNet(Network):
  """Oct-ResNet (post-activation v1.5 for ImageNet, or CIFAR-style for small images).

  The network builds every block as ``block_cls(features, alpha_in, alpha_out, unit,
  strides=..., zero_init_residual=..., name=...)`` and never asks which class it is:
  what distinguishes a variant (ResNeXt groups, SE, ...) is bound into ``block_cls``
  with `functools.partial`, as in Flax's ``examples/imagenet``::

    ResNet(stage_sizes=(3, 4, 6, 3), block_cls=functools.partial(Bottleneck, groups=32, base_width=4))

  Attributes:
    stage_sizes: blocks per stage.
    block_cls: `BasicBlock`, `Bottleneck` or a partial of either (or any module with
      that constructor and ``__call__(x, train)``).
    widths: base channels of each stage (a bottleneck outputs 4x).
    stem: 'imagenet' (7x7/2 conv and 3x3/2 max-pool, vanilla) or 'cifar' (3x3 conv).
    stem_features: channels of the stem.
    zero_init_residual: zero-init the last BN scale of every block.
    pool_stride: False makes the strided vanilla (alpha 0) units strided convs, as in
      torchvision's ResNets (needed to load their weights); octave units always pool.
    num_classes, alpha, dtype, momentum, epsilon, axis_name: keyword-only, as in
      `Network` (alpha: share of low-frequency channels in every stage but the last).
  """

  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  widths: Sequence[int] = (64, 128, 256, 512)
  stem: str = "imagenet"
  stem_features: int = 64
  zero_init_residual: bool = False
  pool_stride: bool = True

  def __post_init__(self):
    if self.stem not in ("imagenet", "cifar"):
      raise ValueError(f"stem must be 'imagenet' or 'cifar', got {self.stem!r}.")
    if len(self.stage_sizes) != len(self.widths):
      raise ValueError(f"stage_sizes {tuple(self.stage_sizes)} and widths {tuple(self.widths)} differ in length.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, train: bool = True, return_features: bool = False) -> Array | dict:
    """Logits of images ``[N, H, W, C]``, or the backbone's maps (see `Network`).

    The maps: ``stem`` (the stem's activation, stride 2 for 'imagenet' before its
    max-pool, 1 for 'cifar') and ``stage1``... (each stage's last block).
    """
    if x.ndim != 4:
      raise ValueError(f"expected images [N, H, W, C], got shape {x.shape}.")
    unit = self.unit_factory(self.pool_stride)
    x = x.astype(self.dtype)
    maps, strides = {}, {}
    if self.stem == "imagenet":
      # The vanilla stem of torchvision/Flax ResNets: a strided 7x7 conv is not an OctConv.
      x = nn.Conv(self.stem_features, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False,
                  dtype=self.dtype, kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                  name="stem_conv")(x)
      x = relu(self.batch_norm(train)(name="stem_bn")(x))
      maps["stem"], strides["stem"] = x, (2, 2)
      x, stride = oct_max_pool(x, 3, 2, ((1, 1), (1, 1))), 4
    else:
      x = unit(self.stem_features, 3, 0.0, 0.0, activation=relu, name="stem")(x, train)
      maps["stem"], strides["stem"] = x, (1, 1)
      stride = 1
    alpha_in = 0.0
    for stage, (num_blocks, width, alpha) in enumerate(
        zip(self.stage_sizes, self.widths, stage_alphas(self.alpha, len(self.stage_sizes)))):
      for block in range(num_blocks):
        block_strides = 2 if stage > 0 and block == 0 else 1
        x = self.block_cls(width, alpha_in, alpha, unit, strides=block_strides,
                           zero_init_residual=self.zero_init_residual,
                           name=f"stage{stage + 1}_block{block}")(x, train)
        stride *= block_strides
        alpha_in = alpha
      maps[f"stage{stage + 1}"], strides[f"stage{stage + 1}"] = x, (stride, stride)
    if return_features:
      return backbone_features(maps, strides)
    return Classifier(self.num_classes, self.dtype, name="head")(x)


class PreActBlock(nn.Module):
  """Wide-ResNet block (pre-activation): BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus shortcut."""

  features: int
  alpha_in: float
  alpha_out: float
  strides: int = 1
  dtype: Any = jnp.float32
  momentum: float = 0.9
  epsilon: float = 1e-5
  axis_name: str | None = None
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: OctTensor, train: bool) -> OctTensor:
    x = as_oct(x)
    norm = lambda name: OctBatchNorm(use_running_average=not train, momentum=self.momentum,
                                     epsilon=self.epsilon, dtype=self.dtype,
                                     axis_name=self.axis_name, name=name)
    conv = lambda k, a_in, strides, name: OctConv(
        self.features, k, a_in, self.alpha_out, strides=strides, use_bias=False, dtype=self.dtype,
        kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"), name=name)
    y = norm("bn1")(x).map(relu)
    if self.strides != 1 or x.channels != self.features:
      shortcut = conv(1, self.alpha_in, self.strides, "shortcut")(y)
    else:
      shortcut = resplit(x, self.alpha_out)
    y = conv(3, self.alpha_in, self.strides, "conv1")(y)
    y = norm("bn2")(y).map(relu)
    if self.dropout_rate:
      y = y.map(lambda p: nn.Dropout(self.dropout_rate, deterministic=not train)(p))
    y = conv(3, self.alpha_out, 1, "conv2")(y)
    return oct_add(y, shortcut)


class WideResNet(Network):
  """Oct-WRN-d-k (Zagoruyko & Komodakis) for 28x28/32x32 images: 3 stages of (d-4)/6 blocks.

  Attributes:
    depth: d, with (d - 4) divisible by 6.
    widen_factor: k; stage widths are 16k, 32k, 64k.
    dropout_rate: dropout between the two convs of a block (train only).
    num_classes, alpha, dtype, momentum, epsilon, axis_name: keyword-only, as in
      `ResNet` (``num_classes`` defaults to 10).
  """

  depth: int = 16
  widen_factor: int = 4
  dropout_rate: float = 0.0
  num_classes: int = dataclasses.field(default=10, kw_only=True)

  def __post_init__(self):
    if (self.depth - 4) % 6 or self.depth < 10:
      raise ValueError(f"depth must be 6n + 4 (10, 16, 22, 28, 40, ...), got {self.depth}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, train: bool = True, return_features: bool = False) -> Array | dict:
    """Logits of images ``[N, H, W, C]``, or the backbone's maps (see `Network`).

    The maps: ``stem`` (stride 1) and ``stage1``..``stage3`` (strides 1, 2, 4;
    pre-activation sums, except ``stage3``, which is after the final BN-ReLU).
    """
    if x.ndim != 4:
      raise ValueError(f"expected images [N, H, W, C], got shape {x.shape}.")
    x = x.astype(self.dtype)
    x = OctConv(16, 3, 0.0, 0.0, use_bias=False, dtype=self.dtype,
                kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"), name="stem")(x)
    maps, strides, stride = {"stem": x}, {"stem": (1, 1)}, 1
    blocks = (self.depth - 4) // 6
    widths = [16 * self.widen_factor, 32 * self.widen_factor, 64 * self.widen_factor]
    alpha_in = 0.0
    for stage, (width, alpha) in enumerate(zip(widths, stage_alphas(self.alpha, 3))):
      for block in range(blocks):
        block_strides = 2 if stage > 0 and block == 0 else 1
        x = PreActBlock(width, alpha_in, alpha, strides=block_strides,
                        dtype=self.dtype, momentum=self.momentum, epsilon=self.epsilon,
                        axis_name=self.axis_name, dropout_rate=self.dropout_rate,
                        name=f"stage{stage + 1}_block{block}")(x, train)
        stride *= block_strides
        alpha_in = alpha
      maps[f"stage{stage + 1}"], strides[f"stage{stage + 1}"] = x, (stride, stride)
    x = OctBatchNorm(use_running_average=not train, momentum=self.momentum, epsilon=self.epsilon,
                     dtype=self.dtype, axis_name=self.axis_name, name="final_bn")(x).map(relu)
    if return_features:
      maps["stage3"] = x
      return backbone_features(maps, strides)
    return Classifier(self.num_classes, self.dtype, name="head")(x)


__all__ = ["BasicBlock", "Bottleneck", "OctSqueezeExcite", "PreActBlock", "ResNet", "WideResNet"]
