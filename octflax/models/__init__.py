"""The octflax model zoo: Oct-ResNet, Oct-ResNeXt, Oct-SE-ResNet, Oct-MobileNet, CIFAR nets.

Every factory takes ``alpha`` (share of low-frequency channels; 0 gives the vanilla
network exactly) and ``num_classes`` plus any attribute of the underlying module
(``dtype``, ``zero_init_residual``, ``axis_name``, ...). Calling convention of Flax's
examples::

  model = octflax.models.get_model('oct_resnet50', alpha=0.5)
  variables = model.init(rng, x, train=False)
  logits, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from flax import linen as nn

from octflax.models.common import resplit, stage_alphas
from octflax.models.mobilenet import MobileNetV1, MobileNetV2
from octflax.models.resnet import (
    BasicBlock, Bottleneck, OctSqueezeExcite, PreActBlock, ResNet, WideResNet)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
  """Adds a factory to the registry under ``name`` (used by `get_model`)."""

  def wrap(factory):
    if name in _REGISTRY:
      raise ValueError(f"model name {name!r} is already registered.")
    _REGISTRY[name] = factory
    return factory

  return wrap


def list_models() -> list[str]:
  """Names `get_model` accepts."""
  return sorted(_REGISTRY)


def get_model(name: str, **kwargs: Any) -> nn.Module:
  """Builds the registered model ``name`` with ``kwargs`` (e.g. ``alpha=0.5, num_classes=10``)."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models())}.")
  return _REGISTRY[name](**kwargs)


def _variant(name: str, cls, default_classes: int = 1000, **fixed):
  def factory(alpha: float = 0.0, num_classes: int = default_classes, **kwargs) -> nn.Module:
    return cls(alpha=alpha, num_classes=num_classes, **fixed, **kwargs)

  factory.__name__ = name
  factory.__doc__ = f"{name}: {cls.__name__} with {fixed}."
  register(name)(factory)
  return factory


_BASIC = dict(block_cls=BasicBlock)
_BOTTLENECK = dict(block_cls=Bottleneck)

# ImageNet Oct-ResNet v1.5 (stride on the 3x3 of the bottleneck).
oct_resnet18 = _variant("oct_resnet18", ResNet, stage_sizes=(2, 2, 2, 2), **_BASIC)
oct_resnet26 = _variant("oct_resnet26", ResNet, stage_sizes=(2, 2, 2, 2), **_BOTTLENECK)
oct_resnet34 = _variant("oct_resnet34", ResNet, stage_sizes=(3, 4, 6, 3), **_BASIC)
oct_resnet50 = _variant("oct_resnet50", ResNet, stage_sizes=(3, 4, 6, 3), **_BOTTLENECK)
oct_resnet101 = _variant("oct_resnet101", ResNet, stage_sizes=(3, 4, 23, 3), **_BOTTLENECK)
oct_resnet152 = _variant("oct_resnet152", ResNet, stage_sizes=(3, 8, 36, 3), **_BOTTLENECK)
oct_resnet200 = _variant("oct_resnet200", ResNet, stage_sizes=(3, 24, 36, 3), **_BOTTLENECK)
oct_se_resnet50 = _variant("oct_se_resnet50", ResNet, stage_sizes=(3, 4, 6, 3), squeeze_excite=True,
                           **_BOTTLENECK)
oct_resnext50_32x4d = _variant("oct_resnext50_32x4d", ResNet, stage_sizes=(3, 4, 6, 3), groups=32,
                               base_width=4, **_BOTTLENECK)
oct_resnext101_32x4d = _variant("oct_resnext101_32x4d", ResNet, stage_sizes=(3, 4, 23, 3), groups=32,
                                base_width=4, **_BOTTLENECK)

# CIFAR-style (3x3 stem, three stages of 16/32/64 channels) for 28x28 and 32x32 images.
_CIFAR = dict(stem="cifar", stem_features=16, widths=(16, 32, 64), default_classes=10, **_BASIC)
oct_resnet8 = _variant("oct_resnet8", ResNet, stage_sizes=(1, 1, 1), **_CIFAR)
oct_resnet20 = _variant("oct_resnet20", ResNet, stage_sizes=(3, 3, 3), **_CIFAR)
oct_resnet32 = _variant("oct_resnet32", ResNet, stage_sizes=(5, 5, 5), **_CIFAR)
oct_resnet56 = _variant("oct_resnet56", ResNet, stage_sizes=(9, 9, 9), **_CIFAR)
oct_wrn_16_4 = _variant("oct_wrn_16_4", WideResNet, depth=16, widen_factor=4, default_classes=10)
oct_wrn_16_8 = _variant("oct_wrn_16_8", WideResNet, depth=16, widen_factor=8, default_classes=10)
oct_wrn_28_10 = _variant("oct_wrn_28_10", WideResNet, depth=28, widen_factor=10, default_classes=10)

# Depthwise-separable networks.
oct_mobilenet_v1 = _variant("oct_mobilenet_v1", MobileNetV1)
oct_mobilenet_v2 = _variant("oct_mobilenet_v2", MobileNetV2)

__all__ = [
    "BasicBlock", "Bottleneck", "MobileNetV1", "MobileNetV2", "OctSqueezeExcite", "PreActBlock",
    "ResNet", "WideResNet", "get_model", "list_models", "register", "resplit", "stage_alphas",
] + list_models()
