"""octflax: Octave Convolution (Chen et al., "Drop an Octave", ICCV 2019) for JAX and Flax.

The front door of the library::

  import octflax
  y = octflax.OctConv(64, 3, alpha_in=0.5, alpha_out=0.5)  # a Flax module over OctTensor

Names are imported when first used (``octflax.OctConv``, ``from octflax import
OctConv``), so that importing a part of octflax that needs no jax (a training
config's defaults, `octflax.errors`) does not import jax.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Each public name and the module that defines it.
_HOMES = {
    "execution": None,
    "functional": None,
    "inference_compiler_options": "execution",
    "train_compiler_options": "execution",
    "use_conv": "execution",
    "use_form": "execution",
    "global_avg_pool": "functional",
    "join_kernel_blocks": "functional",
    "kernel_blocks": "functional",
    "oct_add": "functional",
    "oct_conv": "functional",
    "oct_conv_param_shapes": "functional",
    "oct_conv_transpose": "functional",
    "oct_map": "functional",
    "oct_max_pool": "functional",
    "oct_relu": "functional",
    "OctBatchNorm": "layers",
    "OctConv": "layers",
    "OctConvBN": "layers",
    "OctConvTranspose": "layers",
    "avg_pool2": "resample",
    "low_spatial_size": "resample",
    "upsample2": "resample",
    "OctTensor": "tensor",
    "as_oct": "tensor",
    "merge": "tensor",
    "split_channels": "tensor",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
  if name not in _HOMES:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  home = _HOMES[name]
  if home is None:  # A submodule.
    value = importlib.import_module(f"{__name__}.{name}")
  else:
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
