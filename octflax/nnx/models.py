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

The networks are those `octflax.models.structure` describes, which the Linen zoo builds
too: alpha placement (stem vanilla, first block converts in, last stage at alpha 0), strides,
widths, shortcuts and feature maps are not repeated here.
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
from octflax.models import structure
from octflax.nnx.layers import OctConvBN
from octflax.tensor import OctTensor

Array = jax.Array


class OctSqueezeExcite(nnx.Module):
  """Squeeze-and-excitation over both parts (`octflax.models.structure.squeeze_excite`).

  Sub-modules ``reduce`` (C -> max(C / reduction, 1)) and ``expand`` (-> C), as in Linen.
  """

  def __init__(self, channels: int, reduction: int = 16, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    layer = structure.SqueezeExcite("se", channels, reduction)
    self.reduce = nnx.Linear(channels, layer.hidden, dtype=dtype, rngs=rngs)
    self.expand = nnx.Linear(layer.hidden, channels, dtype=dtype, rngs=rngs)

  def __call__(self, x: OctTensor) -> OctTensor:
    return structure.squeeze_excite(x, self.reduce, self.expand)


class _Block(nnx.Module):
  """A residual block built from its description (`structure.ResidualBlock`): one attribute per layer."""

  def _build(self, block: structure.ResidualBlock, unit: Callable[..., OctConvBN], **se_settings: Any) -> None:
    self.block = block
    for layer in block.layers():
      if isinstance(layer, structure.SqueezeExcite):
        setattr(self, layer.name, OctSqueezeExcite(layer.channels, layer.reduction, **se_settings))
      else:
        setattr(self, layer.name, unit(layer.in_features, *layer.args, **layer.kwargs))
    if block.shortcut is None:
      self.shortcut = None

  def __call__(self, x: OctTensor | Array) -> OctTensor:
    return self.block.apply(x, lambda layer, y: getattr(self, layer.name)(y))


class BasicBlock(_Block):
  """Two 3x3 conv-BN units (post-activation); the first converts alpha_in -> alpha_out.

  Sub-modules ``conv1``, ``conv2`` and ``shortcut`` (where the shape changes; None otherwise).
  """

  expansion = 1

  def __init__(self, in_features: int, features: int, alpha_in: float, alpha_out: float, *,
               unit: Callable[..., OctConvBN], strides: int = 1, zero_init_residual: bool = False):
    self._build(structure.basic_block(in_features, features, alpha_in, alpha_out, strides, zero_init_residual), unit)


class Bottleneck(_Block):
  """ResNet v1.5 bottleneck: 1x1 -> 3x3 (carries the stride, grouped for ResNeXt) -> 1x1 (x4).

  Sub-modules ``conv1``, ``conv2``, ``conv3``, ``se`` (with squeeze-excite) and ``shortcut``.
  """

  expansion = 4

  def __init__(self, in_features: int, features: int, alpha_in: float, alpha_out: float, *,
               unit: Callable[..., OctConvBN], strides: int = 1, zero_init_residual: bool = False,
               groups: int = 1, base_width: int = 64, squeeze_excite: bool = False,
               dtype: Any = jnp.float32, rngs: nnx.Rngs):
    block = structure.bottleneck(in_features, features, alpha_in, alpha_out, strides, zero_init_residual,
                                 groups=groups, base_width=base_width, squeeze_excite=squeeze_excite)
    self._build(block, unit, dtype=dtype, rngs=rngs)
    if not squeeze_excite:
      self.se = None


class Classifier(nnx.Module):
  """Global average pool of each part, concatenation, then ``fc`` (float32 logits)."""

  def __init__(self, in_features: int, num_classes: int, *, dtype: Any = None, rngs: nnx.Rngs):
    self.fc = nnx.Linear(in_features, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x: OctTensor | Array) -> Array:
    return structure.classify(x, self.fc)


class ResNet(nnx.Module):
  """Oct-ResNet (post-activation v1.5 for ImageNet, or CIFAR-style for small images) in NNX.

  The NNX form of `octflax.models.ResNet`: both build the layers of
  `octflax.models.structure.resnet` (``stem`` or ``stem_conv``/``stem_bn``,
  ``stage{s}_block{b}``, ``head``) and run its forward pass. The Linen zoo binds ResNeXt's
  ``groups``/``base_width`` and SE into its ``block_cls`` partial; here they are arguments
  of the network, which passes them to `Bottleneck`.

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
    self.layout = structure.resnet(stage_sizes, widths, alpha, stem=stem, stem_features=stem_features,
                                   in_features=in_features, expansion=block_cls.expansion,
                                   num_classes=num_classes, dtype=dtype)
    norm = dict(momentum=momentum, epsilon=epsilon, dtype=dtype, axis_name=axis_name)
    unit = functools.partial(OctConvBN, pool_stride=pool_stride, rngs=rngs, **norm)
    block_kwargs = {}
    if block_cls is Bottleneck:
      block_kwargs = dict(groups=groups, base_width=base_width, squeeze_excite=squeeze_excite, dtype=dtype, rngs=rngs)
    builders = {
        structure.Conv: lambda c: nnx.Conv(c.in_features, c.features, dtype=dtype, rngs=rngs, **c.kwargs),
        structure.Norm: lambda n: nnx.BatchNorm(n.features, rngs=rngs, **norm),
        structure.Unit: lambda u: unit(u.in_features, *u.args, **u.kwargs),
        structure.Block: lambda b: block_cls(b.in_features, b.features, b.alpha_in, b.alpha_out, unit=unit,
                                             strides=b.strides, zero_init_residual=zero_init_residual,
                                             **block_kwargs),
        structure.Head: lambda h: Classifier(h.in_features, h.num_classes, dtype=dtype, rngs=rngs),
    }
    for layer in self.layout.layers():
      setattr(self, layer.name, builders[type(layer)](layer))

  def __call__(self, x: Array, return_features: bool = False) -> Array | dict:
    """Logits ``[N, num_classes]`` (float32), or with ``return_features`` the backbone's maps.

    Args:
      x: images ``[N, H, W, C]``.
      return_features: return `octflax.models.backbone_features` instead of logits, as the
        Linen model does: ``stem`` (before the ImageNet stem's max-pool), ``stage1``, ...
        and their ``strides``; the classifier is not run.
    """
    return self.layout.apply(x, lambda layer, y: getattr(self, layer.name)(y), return_features)


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
    >>> model(jnp.zeros((2, 12, 12, 1))).shape
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
