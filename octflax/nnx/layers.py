"""Flax NNX modules over `OctTensor`: OctConv, OctBatchNorm and their conv-BN(-activation) unit.

The NNX front end of the layers in `octflax.layers`: eager construction with
``rngs=nnx.Rngs(...)`` and explicit input feature counts, as `flax.nnx.Conv` wants. Each
module builds the layer's spec (`octflax.spec`), which the Linen module builds too: the
same argument checks, parameter shapes, initialisers and ``apply``. The keyword settings
(``padding``, ``use_bias``, ``dtype``, ...) are the spec's fields, with its defaults, which
are the Linen module's attributes. The state of each module has the names, shapes and HWIO
layout of the Linen module's variables, so `octflax.nnx.from_linen` /
`octflax.nnx.to_linen` move weights between the two.

Train and eval mode follow NNX: ``model.train()`` / ``model.eval()`` set the
BatchNorms' ``use_running_average``.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from octflax.spec import (OctBatchNormSpec, OctConvBNSpec, OctConvSpec, OctConvTransposeSpec, PartVariables,
                          arguments, check_split)
from octflax.tensor import OctTensor, as_oct

Array = jax.Array


class _PathConv(nnx.Module):
  """An OctConv or OctConvTranspose: the spec, ``in_features``, the ``kernel`` and the ``bias`` (if any).

  The kernel, then the bias, are drawn from ``rngs.params()`` (`spec.ConvParams` has their
  shapes and initialisers); the paths read blocks of them (`octflax.functional.kernel_blocks`).
  """

  def _build(self, spec: OctConvSpec | OctConvTransposeSpec, in_features: int, rngs: nnx.Rngs) -> None:
    self.spec = spec
    p = spec.params(in_features)
    self.kernel = nnx.Param(p.kernel_init(rngs.params(), p.kernel, p.dtype))
    self.bias = None if p.bias is None else nnx.Param(p.bias_init(rngs.params(), p.bias, p.dtype))
    self.in_features = in_features

  def _convolve(self, x: OctTensor | Array, **call: Any) -> OctTensor:
    x = self.spec.input(x, self.in_features)
    return self.spec.apply(x, self.kernel[...], None if self.bias is None else self.bias[...], **call)


class OctConv(_PathConv):
  """Octave convolution (Chen et al., 2019) as a Flax NNX module, in 1-D, 2-D or 3-D.

  The same layer as `octflax.OctConv` (Linen), constructed eagerly::

    Y^H = f(X^H; W^hh) + U(f(X^L; W^lh)),   Y^L = f(X^L; W^ll) + f(P(X^H); W^hl)

  (P: average pool by 2, U: nearest upsample by 2, on the octave axes; stride 2
  average-pools the input first; `octflax.functional.oct_conv` has the general equations).
  Its state holds `flax.nnx.Conv`'s parameters: a ``kernel`` ``[*kernel_size, in / groups, out]``
  and a ``bias`` ``[out]`` (None without), the paths read as blocks of them
  (`octflax.functional.kernel_blocks`): the Linen layer's names, shapes and initialisation.
  ``spec`` is its `octflax.spec.OctConvSpec`.

  Args:
    in_features: input channels C_in (both parts together).
    out_features: output channels C_out (both parts together).
    kernel_size: odd int (2-D) or a tuple of odd ints, one per spatial axis.
    alpha_in: share of low-frequency input channels, in [0, 1].
    alpha_out: share of low-frequency output channels, in [0, 1].
    strides: 1 or 2, or one of them per spatial axis.
    rngs: the ``params`` stream initialises the kernels and biases.
    **settings: keyword-only ``padding``, ``feature_group_count``, ``use_bias``, ``dtype``,
      ``param_dtype``, ``precision``, ``kernel_init``, ``bias_init``, ``pool_stride``,
      ``octave_axes``, ``kernel_dilation``: as in `octflax.OctConv`, with its defaults.

  Examples:
    >>> conv = OctConv(8, 32, 3, alpha_in=0.0, alpha_out=0.5, rngs=nnx.Rngs(0))
    >>> y = conv(jnp.ones((2, 16, 16, 8)))
    >>> y.high.shape, y.low.shape
    ((2, 16, 16, 16), (2, 8, 8, 16))
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int | Sequence[int], alpha_in: float,
               alpha_out: float, strides: int | Sequence[int] = 1, *, rngs: nnx.Rngs, **settings: Any):
    self._build(OctConvSpec(out_features, kernel_size, alpha_in, alpha_out, strides, **settings), in_features, rngs)

  def __call__(self, x: OctTensor | Array) -> OctTensor:
    return self._convolve(x)


class OctConvTranspose(_PathConv):
  """Transposed octave convolution as a Flax NNX module: the octave `flax.nnx.ConvTranspose`.

  The same layer as `octflax.OctConvTranspose` (Linen; `octflax.functional.oct_conv_transpose`
  has the equations; T: SAME transposed conv, P / U: pool / upsample by 2, C: crop)::

    Y^H = C(T(X^H; W^hh)) + C(U(T(X^L; W^lh)))
    Y^L = C(T(X^L; W^ll)) + C(T(P(X^H); W^hl))

  State: `flax.nnx.ConvTranspose`'s ``kernel`` ``[*kernel_size, in, out]`` and ``bias`` ``[out]``
  (None without), the paths read as blocks (`octflax.functional.kernel_blocks`).

  Args:
    in_features, out_features: channels of input and output (both parts together).
    kernel_size, alpha_in, alpha_out, strides: as in `OctConv`.
    rngs: the ``params`` stream initialises the kernels and biases.
    **settings: keyword-only ``use_bias``, ``dtype``, ``param_dtype``, ``precision``,
      ``kernel_init``, ``bias_init``, ``octave_axes``, ``kernel_dilation``: as in
      `octflax.OctConvTranspose` (`octflax.spec.OctConvTransposeSpec`).

  Examples:
    >>> up = OctConvTranspose(8, 8, 3, alpha_in=0.5, alpha_out=0.5, strides=2, rngs=nnx.Rngs(0))
    >>> y = up(OctTensor(jnp.ones((1, 4, 4, 4)), jnp.ones((1, 2, 2, 4))), output_size=(7, 7))
    >>> y.high.shape, y.low.shape
    ((1, 7, 7, 4), (1, 4, 4, 4))
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int | Sequence[int], alpha_in: float,
               alpha_out: float, strides: int | Sequence[int] = 1, *, rngs: nnx.Rngs, **settings: Any):
    spec = OctConvTransposeSpec(out_features, kernel_size, alpha_in, alpha_out, strides, **settings)
    self._build(spec, in_features, rngs)

  def __call__(self, x: OctTensor | Array, output_size: Sequence[int] | None = None) -> OctTensor:
    """Applies the layer; ``output_size`` is the high output's spatial size (default ``s * n``)."""
    return self._convolve(x, output_size=output_size)


class OctBatchNorm(nnx.Module):
  """Batch normalisation of each part with its own statistics and affine parameters.

  The NNX form of `octflax.OctBatchNorm`: the variables of one `flax.nnx.BatchNorm` over all
  ``num_features`` channels (``mean``, ``var``: ``nnx.BatchStat``; ``scale``, ``bias``:
  ``nnx.Param`` or None; each ``[num_features]``, the high part's channels first), each part
  normalised with its channels (`octflax.spec.OctBatchNormSpec.apply`).

  Args:
    num_features: channels C of the input (both parts together).
    alpha: the input's share of low-frequency channels (`octflax.split_channels` gives the parts).
    use_running_average: the initial mode (``model.eval()`` / ``.train()`` switch it).
    rngs: the ``params`` stream's key goes to ``scale_init`` and ``bias_init``, as in `flax.nnx.BatchNorm`.
    **settings: keyword-only ``momentum``, ``epsilon``, ``dtype``, ``param_dtype``,
      ``use_bias``, ``use_scale``, ``scale_init``, ``bias_init``, ``axis_name``: as in
      `flax.nnx.BatchNorm` (`octflax.spec.OctBatchNormSpec` has the defaults).
  """

  def __init__(self, num_features: int, alpha: float, *, use_running_average: bool = False, rngs: nnx.Rngs,
               **settings: Any):
    self.spec = spec = OctBatchNormSpec(use_running_average, **settings)
    self.num_features = num_features
    self.alpha = float(alpha)
    self.use_running_average = use_running_average
    shape, key = (num_features,), rngs.params()
    self.mean = nnx.BatchStat(jnp.zeros(shape, jnp.float32))
    self.var = nnx.BatchStat(jnp.ones(shape, jnp.float32))
    self.scale = nnx.Param(spec.scale_init(key, shape, spec.param_dtype)) if spec.use_scale else None
    self.bias = nnx.Param(spec.bias_init(key, shape, spec.param_dtype)) if spec.use_bias else None

  def __call__(self, x: OctTensor | Array, use_running_average: bool | None = None) -> OctTensor:
    x = check_split(as_oct(x), "OctBatchNorm", "num_features", self.num_features, "alpha", self.alpha)
    if use_running_average is None:
      use_running_average = self.use_running_average
    read = lambda v: None if v is None else v[...]
    y, average = self.spec.apply(x, PartVariables(self.mean[...], self.var[...], read(self.scale), read(self.bias)),
                                 use_running_average)
    if average is not None:
      self.mean[...], self.var[...] = average
    return y


class OctConvBN(nnx.Module):
  """OctConv (no bias) -> OctBatchNorm -> optional activation on each part.

  The NNX form of `octflax.OctConvBN`, with the same sub-modules ``conv`` and ``bn``, both
  built from its `octflax.spec.OctConvBNSpec` (``spec``).

  Args:
    in_features, out_features, kernel_size, alpha_in, alpha_out, strides: as in `OctConv`.
    use_running_average: the BatchNorm's initial mode (``model.eval()`` sets it).
    rngs: initialises the kernels.
    **settings: keyword-only ``feature_group_count``, ``activation``, ``momentum``,
      ``epsilon``, ``axis_name``, ``bn_scale_init``, ``dtype``, ``param_dtype``,
      ``precision``, ``kernel_init``, ``pool_stride``, ``octave_axes``, ``kernel_dilation``:
      as in `octflax.OctConvBN`, with its defaults.
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int | Sequence[int], alpha_in: float,
               alpha_out: float, strides: int | Sequence[int] = 1, *, use_running_average: bool = False,
               rngs: nnx.Rngs, **settings: Any):
    self.spec = OctConvBNSpec(out_features, kernel_size, alpha_in, alpha_out, strides, **settings)
    conv = arguments(self.spec.conv)
    self.conv = OctConv(in_features, conv.pop("features"), rngs=rngs, **conv)
    self.bn = OctBatchNorm(out_features, alpha_out, rngs=rngs, **arguments(self.spec.norm(use_running_average)))

  def __call__(self, x: OctTensor | Array) -> OctTensor:
    return self.spec.activate(self.bn(self.conv(x)))


__all__ = ["OctBatchNorm", "OctConv", "OctConvBN", "OctConvTranspose"]
