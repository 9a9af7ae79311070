"""The Oct-ResNet family as Flax NNX modules: CIFAR-style and ImageNet, any depth, any alpha.

Native NNX modules (not a `nnx.bridge` wrapper) whose state has the names, shapes and
HWIO layout of the Linen zoo's variables (`octflax.models`), so weights move both ways
with `octflax.nnx.from_linen` / `to_linen`, PyTorch weights imported with
`octflax.convert` included. `get_model` takes the Linen zoo's names; the variant table
(depths, widths, stems, blocks) is read from the Linen zoo, never repeated here::

  model = octflax.nnx.models.get_model('oct_resnet20', alpha=0.25, in_features=1,
                                       rngs=nnx.Rngs(0))
  model.eval()
  logits = model(images)      # [N, num_classes], float32

Alpha placement (stem vanilla, first block converts in, last stage at alpha 0) comes
from `octflax.models.stage_alphas`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from octflax import models as linen_models
from octflax.functional import global_avg_pool, oct_add, oct_max_pool
from octflax.models.common import backbone_features, resplit, stage_alphas
from octflax.nnx.layers import OctConvBN
from octflax.tensor import OctTensor, as_oct

Array = jax.Array
relu = jax.nn.relu
_HE_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class OctSqueezeExcite(nnx.Module):
  """Squeeze-and-excitation over both parts: one gate vector, split like the channels.

  Sub-modules ``reduce`` (C -> max(C / reduction, 1)) and ``expand`` (-> C), as in Linen.
  """

  def __init__(self, channels: int, reduction: int = 16, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.reduce = nnx.Linear(channels, max(channels // reduction, 1), dtype=dtype, rngs=rngs)
    self.expand = nnx.Linear(max(channels // reduction, 1), channels, dtype=dtype, rngs=rngs)

  def __call__(self, x: OctTensor) -> OctTensor:
    s = jax.nn.sigmoid(self.expand(relu(self.reduce(global_avg_pool(x)))))
    gate_high, gate_low = s[:, : x.high_channels], s[:, x.high_channels:]
    return OctTensor(
        high=None if x.high is None else x.high * gate_high[:, None, None, :].astype(x.high.dtype),
        low=None if x.low is None else x.low * gate_low[:, None, None, :].astype(x.low.dtype),
    )


class _Block(nnx.Module):
  """The projection shortcut (1x1 conv-BN) or the identity, shared by both blocks."""

  def _make_shortcut(self, unit, in_features: int, features: int, alpha_in: float, alpha_out: float,
                     strides: int) -> None:
    self.alpha_out = alpha_out
    self.strides = strides
    projection = strides != 1 or in_features != features
    self.shortcut = unit(in_features, features, 1, alpha_in, alpha_out, strides) if projection else None

  def _residual(self, x: OctTensor | Array, y: OctTensor) -> OctTensor:
    shortcut = resplit(as_oct(x), self.alpha_out) if self.shortcut is None else self.shortcut(x)
    return oct_add(y, shortcut).map(relu)


class BasicBlock(_Block):
  """Two 3x3 conv-BN units (post-activation); the first converts alpha_in -> alpha_out.

  Sub-modules ``conv1``, ``conv2`` and ``shortcut`` (where the shape changes).
  """

  expansion = 1

  def __init__(self, in_features: int, features: int, alpha_in: float, alpha_out: float, *,
               unit: Callable[..., OctConvBN], strides: int = 1, zero_init_residual: bool = False):
    last_scale = nn.initializers.zeros_init() if zero_init_residual else nn.initializers.ones_init()
    self.conv1 = unit(in_features, features, 3, alpha_in, alpha_out, strides, activation=relu)
    self.conv2 = unit(features, features, 3, alpha_out, alpha_out, bn_scale_init=last_scale)
    self._make_shortcut(unit, in_features, features, alpha_in, alpha_out, strides)

  def __call__(self, x: OctTensor | Array) -> OctTensor:
    return self._residual(x, self.conv2(self.conv1(x)))


class Bottleneck(_Block):
  """ResNet v1.5 bottleneck: 1x1 -> 3x3 (carries the stride, grouped for ResNeXt) -> 1x1 (x4).

  Sub-modules ``conv1``, ``conv2``, ``conv3``, ``se`` (with squeeze-excite) and ``shortcut``.
  """

  expansion = 4

  def __init__(self, in_features: int, features: int, alpha_in: float, alpha_out: float, *,
               unit: Callable[..., OctConvBN], strides: int = 1, zero_init_residual: bool = False,
               groups: int = 1, base_width: int = 64, squeeze_excite: bool = False,
               dtype: Any = jnp.float32, rngs: nnx.Rngs):
    width = int(features * base_width / 64) * groups
    last_scale = nn.initializers.zeros_init() if zero_init_residual else nn.initializers.ones_init()
    self.conv1 = unit(in_features, width, 1, alpha_in, alpha_out, activation=relu)
    self.conv2 = unit(width, width, 3, alpha_out, alpha_out, strides, feature_group_count=groups,
                      activation=relu)
    self.conv3 = unit(width, features * 4, 1, alpha_out, alpha_out, bn_scale_init=last_scale)
    self.se = OctSqueezeExcite(features * 4, dtype=dtype, rngs=rngs) if squeeze_excite else None
    self._make_shortcut(unit, in_features, features * 4, alpha_in, alpha_out, strides)

  def __call__(self, x: OctTensor | Array) -> OctTensor:
    y = self.conv3(self.conv2(self.conv1(x)))
    if self.se is not None:
      y = self.se(y)
    return self._residual(x, y)


class Classifier(nnx.Module):
  """Global average pool of each part, concatenation, then ``fc`` (float32 logits)."""

  def __init__(self, in_features: int, num_classes: int, *, dtype: Any = None, rngs: nnx.Rngs):
    self.fc = nnx.Linear(in_features, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x: OctTensor | Array) -> Array:
    return self.fc(global_avg_pool(x)).astype(jnp.float32)


class ResNet(nnx.Module):
  """Oct-ResNet (post-activation v1.5 for ImageNet, or CIFAR-style for small images) in NNX.

  The NNX form of `octflax.models.ResNet`, with the same sub-modules (``stem`` or
  ``stem_conv``/``stem_bn``, ``stage{s}_block{b}``, ``head``) and the same math. The
  Linen zoo binds ResNeXt's ``groups``/``base_width`` and SE into its ``block_cls``
  partial; here they are arguments of the network, which passes them to `Bottleneck`.

  Args:
    stage_sizes, num_classes, alpha, widths, stem, stem_features, groups, base_width,
      squeeze_excite, zero_init_residual, dtype, momentum, epsilon, axis_name,
      pool_stride: as in `octflax.models.ResNet`.
    block_cls: `BasicBlock` or `Bottleneck` of this module.
    in_features: channels of the input images (3 for RGB, 1 for Fashion-MNIST).
    rngs: initialises the parameters.
  """

  def __init__(
      self,
      stage_sizes: Sequence[int],
      block_cls: type[_Block],
      num_classes: int = 1000,
      alpha: float = 0.0,
      widths: Sequence[int] = (64, 128, 256, 512),
      stem: str = "imagenet",
      stem_features: int = 64,
      groups: int = 1,
      base_width: int = 64,
      squeeze_excite: bool = False,
      zero_init_residual: bool = False,
      dtype: Any = jnp.float32,
      momentum: float = 0.9,
      epsilon: float = 1e-5,
      axis_name: str | None = None,
      pool_stride: bool = True,
      *,
      in_features: int = 3,
      rngs: nnx.Rngs,
  ):
    if stem not in ("imagenet", "cifar"):
      raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}.")
    if len(stage_sizes) != len(widths):
      raise ValueError(f"stage_sizes {tuple(stage_sizes)} and widths {tuple(widths)} differ in length.")
    if not isinstance(in_features, int) or in_features < 1:
      raise ValueError(f"in_features must be a positive int (image channels), got {in_features!r}.")
    self.dtype = dtype
    self.stem_kind = stem
    unit = functools.partial(OctConvBN, dtype=dtype, momentum=momentum, epsilon=epsilon,
                             axis_name=axis_name, pool_stride=pool_stride, rngs=rngs)
    if stem == "imagenet":
      # The vanilla stem of torchvision/Flax ResNets: a strided 7x7 conv is not an OctConv.
      self.stem_conv = nnx.Conv(in_features, stem_features, (7, 7), (2, 2), padding=((3, 3), (3, 3)),
                                use_bias=False, dtype=dtype, kernel_init=_HE_FAN_OUT, rngs=rngs)
      self.stem_bn = nnx.BatchNorm(stem_features, momentum=momentum, epsilon=epsilon, dtype=dtype,
                                   axis_name=axis_name, rngs=rngs)
    else:
      self.stem = unit(in_features, stem_features, 3, 0.0, 0.0, activation=relu)
    block_kwargs = {}
    if block_cls is Bottleneck:
      block_kwargs = dict(groups=groups, base_width=base_width, squeeze_excite=squeeze_excite,
                          dtype=dtype, rngs=rngs)
    stage_blocks = []
    channels, alpha_in = stem_features, 0.0
    for stage, (num_blocks, width, stage_alpha) in enumerate(
        zip(stage_sizes, widths, stage_alphas(alpha, len(stage_sizes)))):
      names = tuple(f"stage{stage + 1}_block{block}" for block in range(num_blocks))
      for block, name in enumerate(names):
        setattr(self, name, block_cls(
            channels, width, alpha_in, stage_alpha, unit=unit, strides=2 if stage > 0 and block == 0 else 1,
            zero_init_residual=zero_init_residual, **block_kwargs))
        channels, alpha_in = width * block_cls.expansion, stage_alpha
      stage_blocks.append(names)
    self.stage_blocks = tuple(stage_blocks)
    self.head = Classifier(channels, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x: Array, return_features: bool = False) -> Array | dict:
    """Logits ``[N, num_classes]`` (float32), or with ``return_features`` the backbone's maps.

    Args:
      x: images ``[N, H, W, C]``.
      return_features: return `octflax.models.backbone_features` instead of logits, as the
        Linen model does: ``stem`` (before the ImageNet stem's max-pool), ``stage1``, ...
        and their ``strides``; the classifier is not run.
    """
    if x.ndim != 4:
      raise ValueError(f"expected images [N, H, W, C], got shape {x.shape}.")
    x = x.astype(self.dtype)
    if self.stem_kind == "imagenet":
      x = relu(self.stem_bn(self.stem_conv(x)))
      maps, strides = {"stem": x}, {"stem": (2, 2)}
      x, stride = oct_max_pool(x, 3, 2, ((1, 1), (1, 1))), 4
    else:
      x = self.stem(x)
      maps, strides = {"stem": x}, {"stem": (1, 1)}
      stride = 1
    for stage, names in enumerate(self.stage_blocks):
      for name in names:
        block = getattr(self, name)
        x = block(x)
        stride *= block.strides
      maps[f"stage{stage + 1}"], strides[f"stage{stage + 1}"] = x, (stride, stride)
    if return_features:
      return backbone_features(maps, strides)
    return self.head(x)


# Linen block class -> the NNX block built with the same arguments.
_BLOCKS = {linen_models.BasicBlock: BasicBlock, linen_models.Bottleneck: Bottleneck}


def list_models() -> list[str]:
  """The names `get_model` builds natively: the Linen zoo's Oct-ResNet family."""
  return [name for name in linen_models.list_models() if is_oct_resnet(linen_models.get_model(name))]


def is_oct_resnet(module: nn.Module) -> bool:
  """Whether the Linen zoo module ``module`` is of the family this module builds natively."""
  return isinstance(module, linen_models.ResNet) and _block_of(module.block_cls)[0] in _BLOCKS


def _block_of(block_cls: Any) -> tuple[Any, dict[str, Any]]:
  """The Linen block class and the keyword arguments bound to it (a class or a partial)."""
  if isinstance(block_cls, functools.partial):
    return block_cls.func, dict(block_cls.keywords)
  return block_cls, {}


def from_linen_module(module: nn.Module, *, in_features: int = 3, rngs: nnx.Rngs) -> ResNet:
  """The NNX network with the architecture of the Linen zoo module ``module`` (fresh weights).

  Args:
    module: an `octflax.models.ResNet` (any variant of the Linen zoo, with any overrides).
    in_features: channels of the input images.
    rngs: initialises the parameters.

  Raises:
    ValueError: ``module`` is not an Oct-ResNet, or sets an attribute the NNX network lacks.
  """
  if not is_oct_resnet(module):
    raise ValueError(
        f"octflax.nnx.models builds the Oct-ResNet family natively ({', '.join(list_models())}); "
        f"got a Linen {type(module).__name__}.")
  linen_block, bound = _block_of(module.block_cls)
  accepted = set(inspect.signature(ResNet.__init__).parameters)
  kwargs = {}
  for field in dataclasses.fields(module):
    if field.name in ("parent", "name"):
      continue
    value = getattr(module, field.name)
    if field.name in accepted:
      kwargs[field.name] = value
    elif value != field.default:
      raise ValueError(f"{type(module).__name__}.{field.name}={value!r} has no NNX counterpart yet.")
  # Keywords a partial binds to the block (the zoo's way of injecting them) are the network's.
  for key, value in bound.items():
    if key not in accepted:
      raise ValueError(f"block argument {key}={value!r} has no NNX counterpart yet.")
    kwargs[key] = value
  kwargs["block_cls"] = _BLOCKS[linen_block]
  return ResNet(**kwargs, in_features=in_features, rngs=rngs)


def get_model(name: str, *, rngs: nnx.Rngs, in_features: int = 3, **kwargs: Any) -> ResNet:
  """Builds the zoo model ``name`` as an NNX module.

  Args:
    name: a name of `list_models` (the Linen zoo's names, e.g. 'oct_resnet50').
    rngs: initialises the parameters.
    in_features: channels of the input images (3 for RGB, 1 for Fashion-MNIST).
    **kwargs: ``alpha``, ``num_classes`` and any attribute of the Linen zoo module
      (``dtype``, ``axis_name``, ``zero_init_residual``, ``stage_sizes``, ...).

  Returns:
    The NNX model, in training mode (``model.eval()`` switches to running statistics).

  Raises:
    ValueError: an unknown name, a model outside the Oct-ResNet family, bad arguments.

  Examples:
    >>> model = get_model('oct_resnet8', alpha=0.5, in_features=1, rngs=nnx.Rngs(0))
    >>> model.eval()
    >>> model(jnp.zeros((2, 28, 28, 1))).shape
    (2, 10)
  """
  return from_linen_module(linen_description(name, **kwargs), in_features=in_features, rngs=rngs)


def linen_description(name: str, **kwargs: Any) -> nn.Module:
  """The Linen zoo module ``name`` with ``kwargs`` (``alpha``, ``num_classes``, attributes).

  Raises:
    ValueError: an unknown name, or an argument the module has no attribute for.
  """
  settings = {k: kwargs.pop(k) for k in ("alpha", "num_classes") if k in kwargs}
  module = linen_models.get_model(name, **settings)
  fields = sorted(f.name for f in dataclasses.fields(module) if f.name not in ("parent", "name"))
  unknown = sorted(set(kwargs) - set(fields))
  if unknown:
    raise ValueError(f"{name}: unknown argument(s) {', '.join(unknown)}; allowed are {', '.join(fields)}.")
  return module.clone(**kwargs) if kwargs else module


__all__ = ["BasicBlock", "Bottleneck", "Classifier", "OctSqueezeExcite", "ResNet", "from_linen_module",
           "get_model", "is_oct_resnet", "linen_description",
           "list_models"]
