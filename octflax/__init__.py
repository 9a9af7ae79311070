"""octflax: Octave Convolution (Chen et al., "Drop an Octave", ICCV 2019) for JAX and Flax.

The front door of the library::

  import octflax
  y = octflax.OctConv(64, 3, alpha_in=0.5, alpha_out=0.5)  # a Flax module over OctTensor
"""

from octflax import functional
from octflax.compiler import inference_compiler_options, train_compiler_options
from octflax.functional import (
    avg_pool2,
    global_avg_pool,
    oct_add,
    oct_conv,
    oct_map,
    oct_max_pool,
    oct_relu,
    upsample2,
)
from octflax.layers import OctBatchNorm, OctConv, OctConvBN
from octflax.tensor import OctTensor, as_oct, low_spatial_size, split_channels

__version__ = "0.1.0"

__all__ = [
    "OctBatchNorm",
    "OctConv",
    "OctConvBN",
    "OctTensor",
    "as_oct",
    "avg_pool2",
    "functional",
    "global_avg_pool",
    "inference_compiler_options",
    "low_spatial_size",
    "oct_add",
    "oct_conv",
    "oct_map",
    "oct_max_pool",
    "oct_relu",
    "split_channels",
    "train_compiler_options",
    "upsample2",
]
