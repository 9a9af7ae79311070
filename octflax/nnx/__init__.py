"""octflax for Flax NNX: OctConv, OctConvTranspose, OctBatchNorm, OctConvBN and the Oct-ResNet zoo as `nnx.Module`s.

The same layers as the Linen front end (`octflax.OctConv`, ...) over the same functional
core, constructed eagerly in NNX style, with the Linen variables' names, shapes and HWIO
layout::

  from flax import nnx
  import octflax.nnx as onnx

  conv = onnx.OctConv(16, 32, 3, alpha_in=0.5, alpha_out=0.5, rngs=nnx.Rngs(0))
  model = onnx.models.get_model('oct_resnet20', alpha=0.25, in_features=1, rngs=nnx.Rngs(0))
  variables = onnx.to_linen(model)        # {'params', 'batch_stats'} as the Linen model has them
  onnx.from_linen(variables, model)       # and back
"""

from octflax.nnx import models
from octflax.nnx.convert import from_linen, to_linen
from octflax.nnx.layers import OctBatchNorm, OctConv, OctConvBN, OctConvTranspose
from octflax.nnx.trainer import TrainerModel, trainer_model

__all__ = ["OctBatchNorm", "OctConv", "OctConvBN", "OctConvTranspose", "TrainerModel", "from_linen", "models",
           "to_linen", "trainer_model"]
