"""The octflax model zoo: Oct-ResNet, Oct-ResNeXt, Oct-SE-ResNet, Oct-MobileNet, CIFAR nets.

Every model is a `functools.partial` of one network definition (`ResNet`,
`WideResNet`, `MobileNetV1`, `MobileNetV2`) and takes ``alpha`` (share of
low-frequency channels; 0 gives the vanilla network exactly) and ``num_classes`` plus
any attribute of that module (``dtype``, ``zero_init_residual``, ``axis_name``, ...); the
settings every network shares (`Network`) are keyword-only.
Calling convention of Flax's examples::

  model = octflax.models.get_model('oct_resnet50', alpha=0.5)
  variables = model.init(rng, x, train=False)
  logits, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])

Video models (``oct_i3d_resnet50``, ``oct_c2d_resnet50``, ``oct_i3d_tiny``) take clips
``[N, T, H, W, C]``; see `octflax.models.video`.

Every model is also a backbone: ``model.apply(variables, x, train=False,
return_features=True)`` returns ``{'stem': OctTensor, 'stage1': ..., 'strides': {...}}``
(see `backbone_features`); ``features['stage2'].merge()`` gives one array per stage.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from flax import linen as nn

from octflax.models.common import Network, backbone_features, resplit, stage_alphas
from octflax.models.mobilenet import MobileNetV1, MobileNetV2
from octflax.models.resnet import (
    BasicBlock, Bottleneck, OctSqueezeExcite, PreActBlock, ResNet, WideResNet)
from octflax.models.video import C2D_TIME_KERNELS, I3D_TIME_KERNELS, VideoResNet

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


def _variant(name: str, cls, **fixed) -> Callable[..., nn.Module]:
  """Registers ``functools.partial(cls, **fixed)`` as ``name``; callers may override any of ``fixed``."""
  factory = functools.partial(cls, **fixed)
  register(name)(factory)
  return factory


_R50 = (3, 4, 6, 3)

# ImageNet Oct-ResNet v1.5 (stride on the 3x3 of the bottleneck).
oct_resnet18 = _variant("oct_resnet18", ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
oct_resnet26 = _variant("oct_resnet26", ResNet, stage_sizes=(2, 2, 2, 2), block_cls=Bottleneck)
oct_resnet34 = _variant("oct_resnet34", ResNet, stage_sizes=_R50, block_cls=BasicBlock)
oct_resnet50 = _variant("oct_resnet50", ResNet, stage_sizes=_R50, block_cls=Bottleneck)
oct_resnet101 = _variant("oct_resnet101", ResNet, stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck)
oct_resnet152 = _variant("oct_resnet152", ResNet, stage_sizes=(3, 8, 36, 3), block_cls=Bottleneck)
oct_resnet200 = _variant("oct_resnet200", ResNet, stage_sizes=(3, 24, 36, 3), block_cls=Bottleneck)
oct_se_resnet50 = _variant("oct_se_resnet50", ResNet, stage_sizes=_R50,
                           block_cls=functools.partial(Bottleneck, squeeze_excite=True))
oct_resnext50_32x4d = _variant("oct_resnext50_32x4d", ResNet, stage_sizes=_R50,
                               block_cls=functools.partial(Bottleneck, groups=32, base_width=4))
oct_resnext101_32x4d = _variant("oct_resnext101_32x4d", ResNet, stage_sizes=(3, 4, 23, 3),
                                block_cls=functools.partial(Bottleneck, groups=32, base_width=4))

# CIFAR-style (3x3 stem, three stages of 16/32/64 channels) for 28x28 and 32x32 images.
_CIFAR = dict(stem="cifar", stem_features=16, widths=(16, 32, 64), num_classes=10, block_cls=BasicBlock)
oct_resnet8 = _variant("oct_resnet8", ResNet, stage_sizes=(1, 1, 1), **_CIFAR)
oct_resnet20 = _variant("oct_resnet20", ResNet, stage_sizes=(3, 3, 3), **_CIFAR)
oct_resnet32 = _variant("oct_resnet32", ResNet, stage_sizes=(5, 5, 5), **_CIFAR)
oct_resnet56 = _variant("oct_resnet56", ResNet, stage_sizes=(9, 9, 9), **_CIFAR)
oct_wrn_16_4 = _variant("oct_wrn_16_4", WideResNet, depth=16, widen_factor=4, num_classes=10)
oct_wrn_16_8 = _variant("oct_wrn_16_8", WideResNet, depth=16, widen_factor=8, num_classes=10)
oct_wrn_28_10 = _variant("oct_wrn_28_10", WideResNet, depth=28, widen_factor=10, num_classes=10)

# Depthwise-separable networks.
oct_mobilenet_v1 = _variant("oct_mobilenet_v1", MobileNetV1)
oct_mobilenet_v2 = _variant("oct_mobilenet_v2", MobileNetV2)

# Video (clips [N, T, H, W, C]): the paper's Kinetics backbones, and a small Oct-I3D for
# 8 x 32 x 32 clips (basic blocks of 16/32/64 channels, every conv 3-D).
oct_i3d_resnet50 = _variant("oct_i3d_resnet50", VideoResNet, stage_sizes=_R50, block_cls=Bottleneck,
                            time_kernels=I3D_TIME_KERNELS, stem_time_kernel=5)
oct_c2d_resnet50 = _variant("oct_c2d_resnet50", VideoResNet, stage_sizes=_R50, block_cls=Bottleneck,
                            time_kernels=C2D_TIME_KERNELS, stem_time_kernel=1)
oct_i3d_tiny = _variant("oct_i3d_tiny", VideoResNet, stage_sizes=(1, 1, 1), block_cls=BasicBlock,
                        time_kernels=((3,), (3,), (3,)), stem_time_kernel=3, widths=(16, 32, 64),
                        stem_features=16, num_classes=8)

__all__ = [
    "BasicBlock", "Bottleneck", "MobileNetV1", "MobileNetV2", "Network", "OctSqueezeExcite", "PreActBlock",
    "ResNet", "VideoResNet", "WideResNet", "backbone_features", "get_model", "list_models",
    "register", "resplit", "stage_alphas",
] + list_models()
