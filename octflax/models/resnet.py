"""Oct-ResNet v1.5, Oct-ResNeXt, Oct-SE-ResNet, CIFAR-style Oct-ResNets and Oct-WRNs.

One `ResNet` definition serves every variant; the variants are partials in
`octflax.models`. Alpha placement comes from `stage_alphas` (stem vanilla, first
block converts in, last stage at alpha 0, classifier on the high part). The blocks and
`ResNet` build the layers `octflax.models.structure` describes, as the NNX zoo does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from octflax.functional import oct_add
from octflax.layers import OctBatchNorm, OctConv
from octflax.models import structure
from octflax.models.common import Classifier, ModuleDef, Network, backbone_features, resplit, stage_alphas
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
    layer = structure.SqueezeExcite(self.name, x.channels, self.reduction)
    return structure.squeeze_excite(x, nn.Dense(layer.hidden, dtype=dtype, name="reduce"),
                                    nn.Dense(layer.channels, dtype=dtype, name="expand"))


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

  def describe(self, in_features: int) -> structure.ResidualBlock:
    """The block's layers for ``in_features`` input channels (`octflax.models.structure`)."""
    raise NotImplementedError

  @nn.compact
  def __call__(self, x: OctTensor, train: bool) -> OctTensor:

    def run(layer, y):
      if isinstance(layer, structure.SqueezeExcite):
        return OctSqueezeExcite(layer.reduction, name=layer.name)(y)
      return self.unit(*layer.args, **layer.kwargs, name=layer.name)(y, train)

    return self.describe(as_oct(x).channels).apply(x, run)


class BasicBlock(_ResidualBlock):
  """Two 3x3 conv-BN units (post-activation); the first converts alpha_in -> alpha_out.

  Attributes:
    features, alpha_in, alpha_out, unit, strides, zero_init_residual, octave_axes: the
      block's constructor (``features`` is its output channels).
    time_kernel: None for images; for clips the time extent of the first conv
      (``(t, 3, 3)``; the second is ``(1, 3, 3)``).
  """

  expansion = 1

  def describe(self, in_features: int) -> structure.ResidualBlock:
    return structure.basic_block(in_features, self.features, self.alpha_in, self.alpha_out, self.strides,
                                 self.zero_init_residual, self.time_kernel, self.octave_axes)


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

  def describe(self, in_features: int) -> structure.ResidualBlock:
    return structure.bottleneck(in_features, self.features, self.alpha_in, self.alpha_out, self.strides,
                                self.zero_init_residual, self.time_kernel, self.octave_axes, self.groups,
                                self.base_width, self.squeeze_excite)


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
    structure.check_resnet(self.stage_sizes, self.widths, self.stem)
    super().__post_init__()

  def layout(self, in_features: int) -> structure.ResNetLayout:
    """The network's layers for images of ``in_features`` channels (`octflax.models.structure.resnet`)."""
    block = getattr(self.block_cls, "func", self.block_cls)  # a class or a partial of one
    return structure.resnet(self.stage_sizes, self.widths, self.alpha, stem=self.stem,
                            stem_features=self.stem_features, in_features=in_features,
                            expansion=getattr(block, "expansion", 1), num_classes=self.num_classes, dtype=self.dtype)

  @nn.compact
  def __call__(self, x: Array, train: bool = True, return_features: bool = False) -> Array | dict:
    """Logits of images ``[N, H, W, C]``, or the backbone's maps (see `Network`).

    The maps: ``stem`` (the stem's activation, stride 2 for 'imagenet' before its
    max-pool, 1 for 'cifar') and ``stage1``... (each stage's last block).
    """
    unit = self.unit_factory(self.pool_stride)

    def run(layer, y):
      if isinstance(layer, structure.Block):
        return self.block_cls(layer.features, layer.alpha_in, layer.alpha_out, unit, strides=layer.strides,
                              zero_init_residual=self.zero_init_residual, name=layer.name)(y, train)
      if isinstance(layer, structure.Unit):
        return unit(*layer.args, **layer.kwargs, name=layer.name)(y, train)
      if isinstance(layer, structure.Conv):  # the vanilla stem of torchvision/Flax ResNets
        return nn.Conv(layer.features, dtype=self.dtype, name=layer.name, **layer.kwargs)(y)
      if isinstance(layer, structure.Norm):
        return self.batch_norm(train)(name=layer.name)(y)
      return Classifier(layer.num_classes, self.dtype, name=layer.name)(y)

    return self.layout(x.shape[-1]).apply(x, run, return_features)


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
