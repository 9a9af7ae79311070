"""The networks the benchmarks time: the zoo's by registry name (with variants) and the nn.Conv ResNet-50.

Imports only the library's models (no training code), so that probes run where the training
dependencies are not installed.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from octflax import models


def vanilla_resnet50(num_classes: int, dtype: Any) -> nn.Module:
  """ResNet-50 v1.5 written with `flax.linen.Conv` only (strided convs, as Flax's example).

  Its modules are named as the Oct-ResNet-50's (``stem_conv``, ``stem_bn``, ``stageS_blockB`` with
  units ``conv1`` .. ``conv3`` and ``shortcut``, each a ``conv`` and a ``bn``, ``head/fc``), so its
  parameter tree equals the Oct-ResNet-50's at any alpha.
  """

  class Unit(nn.Module):
    features: int
    kernel: int
    strides: int = 1

    @nn.compact
    def __call__(self, x, train):
      k = self.kernel
      x = nn.Conv(self.features, (k, k), (self.strides, self.strides), padding=[((k - 1) // 2,) * 2] * 2,
                  use_bias=False, dtype=dtype, name="conv")(x)
      return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name="bn")(x)

  class Block(nn.Module):
    features: int
    strides: int

    @nn.compact
    def __call__(self, x, train):
      y = nn.relu(Unit(self.features, 1, name="conv1")(x, train))
      y = nn.relu(Unit(self.features, 3, self.strides, name="conv2")(y, train))
      y = Unit(self.features * 4, 1, name="conv3")(y, train)
      if self.strides != 1 or x.shape[-1] != self.features * 4:
        x = Unit(self.features * 4, 1, self.strides, name="shortcut")(x, train)
      return nn.relu(y + x)

  class Head(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(num_classes, dtype=dtype, name="fc")(jnp.mean(x, axis=(1, 2))).astype(jnp.float32)

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
      x = nn.Conv(64, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False, dtype=dtype,
                  name="stem_conv")(x.astype(dtype))
      x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                               name="stem_bn")(x))
      x = nn.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
      for stage, blocks in enumerate((3, 4, 6, 3)):
        for block in range(blocks):
          x = Block(64 * 2**stage, 2 if stage and not block else 1, name=f"stage{stage + 1}_block{block}")(x, train)
      return Head(name="head")(x)

  return Net()


# Model variants, selected with a suffix of the model name, e.g. 'oct_resnet50:strided'.
VARIANTS = {"strided": {"pool_stride": False}}
# Name suffixes that were compile or execution settings, and the flag that replaced each.
_SETTINGS_NOW_FLAGS = {"xladefault": "--compile xla-default", "ynndot": "--compile ynn-dot",
                       "nopad": "--conv unpadded", "fuse": "--form shared_output", "nofuse": "--form separate"}


def build_model(name: str, alpha: float, num_classes: int, dtype: Any) -> nn.Module:
  if name == "flax_resnet50":
    return vanilla_resnet50(num_classes, dtype)
  base, *suffixes = name.split(":")
  kwargs = {}
  for suffix in suffixes:
    if suffix in _SETTINGS_NOW_FLAGS:
      raise ValueError(f"':{suffix}' is not a model variant; use {_SETTINGS_NOW_FLAGS[suffix]}.")
    if suffix not in VARIANTS:
      raise ValueError(f"unknown model variant ':{suffix}'; known: {', '.join(VARIANTS)}.")
    kwargs.update(VARIANTS[suffix])
  return models.get_model(base, alpha=alpha, num_classes=num_classes, dtype=dtype, **kwargs)


__all__ = ["VARIANTS", "build_model", "vanilla_resnet50"]
