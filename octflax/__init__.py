"""octflax: Octave Convolution (Chen et al., "Drop an Octave", ICCV 2019) for JAX and Flax.

The front door of the library::

  import octflax
  y = octflax.OctConv(64, 3, alpha_in=0.5, alpha_out=0.5)  # a Flax module over OctTensor
"""

from octflax import execution, functional
from octflax.execution import inference_compiler_options, train_compiler_options
from octflax.execution import use_conv, use_form
from octflax.functional import (
    global_avg_pool,
    join_kernel_blocks,
    kernel_blocks,
    oct_add,
    oct_conv,
    oct_conv_param_shapes,
    oct_conv_transpose,
    oct_map,
    oct_max_pool,
    oct_relu,
)
from octflax.layers import OctBatchNorm, OctConv, OctConvBN, OctConvTranspose
from octflax.resample import avg_pool2, low_spatial_size, upsample2
from octflax.tensor import OctTensor, as_oct, merge, split_channels

__version__ = "0.1.0"

__all__ = [
    "OctBatchNorm",
    "OctConv",
    "OctConvBN",
    "OctConvTranspose",
    "OctTensor",
    "as_oct",
    "avg_pool2",
    "execution",
    "functional",
    "global_avg_pool",
    "inference_compiler_options",
    "join_kernel_blocks",
    "kernel_blocks",
    "low_spatial_size",
    "merge",
    "oct_add",
    "oct_conv",
    "oct_conv_param_shapes",
    "oct_conv_transpose",
    "oct_map",
    "oct_max_pool",
    "oct_relu",
    "split_channels",
    "train_compiler_options",
    "upsample2",
    "use_conv",
    "use_form",
]
