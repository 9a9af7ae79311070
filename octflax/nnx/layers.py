"""Flax NNX modules over `OctTensor`: OctConv, OctBatchNorm and their conv-BN(-activation) unit.

The NNX front end of the layers in `octflax.layers`: eager construction with
``rngs=nnx.Rngs(...)`` and explicit input feature counts, as `flax.nnx.Conv` wants, over
the same functional core (`octflax.functional.oct_conv`). The state of each module has
the names, shapes and HWIO layout of the Linen module's variables, so
`octflax.nnx.from_linen` / `octflax.nnx.to_linen` move weights between the two.

Train and eval mode follow NNX: ``model.train()`` / ``model.eval()`` set the
BatchNorms' ``use_running_average``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from octflax import execution
from octflax import functional as F
from octflax import layers as linen_layers
from octflax.tensor import OctTensor, as_oct, split_channels

Array = jax.Array
Initializer = Callable[..., Array]


class _PathWeights(nnx.Module):
  """The ``kernel`` (HWIO) and optional ``bias`` of one OctConv path (Linen's sub-collection)."""

  def __init__(self, kernel: Array, bias: Array | None):
    self.kernel = nnx.Param(kernel)
    if bias is not None:
      self.bias = nnx.Param(bias)


class OctConv(nnx.Module):
  """Octave convolution (Chen et al., 2019) as a Flax NNX module, in 1-D, 2-D or 3-D.

  The same layer as `octflax.OctConv` (Linen), constructed eagerly::

    Y^H = f(X^H; W^hh) + U(f(X^L; W^lh)),   Y^L = f(X^L; W^ll) + f(P(X^H); W^hl)

  (P: average pool by 2, U: nearest upsample by 2, on the octave axes; stride 2
  average-pools the input first; `octflax.functional.oct_conv` has the general equations).
  Its state holds the sub-modules ``h2h``, ``h2l``, ``l2h``, ``l2l`` (those present), each
  with a ``kernel`` ``[*kernel_size, in / groups, out]`` and a ``bias`` where the Linen layer
  has one (`octflax.functional.oct_conv_param_shapes`), drawn from the vanilla kernel's
  distribution (`octflax.functional.path_kernel_init`): the Linen layer's names, shapes and
  initialisation.

  Args:
    in_features: input channels C_in (both parts together).
    out_features: output channels C_out (both parts together).
    kernel_size: odd int (2-D) or a tuple of odd ints, one per spatial axis.
    alpha_in: share of low-frequency input channels, in [0, 1].
    alpha_out: share of low-frequency output channels, in [0, 1].
    strides: 1 or 2, or one of them per spatial axis.
    padding, feature_group_count, use_bias, dtype, param_dtype, precision, kernel_init,
      bias_init, pool_stride, octave_axes, kernel_dilation: as in `octflax.OctConv`.
    rngs: the ``params`` stream initialises the kernels and biases.

  Examples:
    >>> conv = OctConv(8, 32, 3, alpha_in=0.0, alpha_out=0.5, rngs=nnx.Rngs(0))
    >>> y = conv(jnp.ones((2, 16, 16, 8)))
    >>> y.high.shape, y.low.shape
    ((2, 16, 16, 16), (2, 8, 8, 16))
  """

  def __init__(
      self,
      in_features: int,
      out_features: int,
      kernel_size: int | Sequence[int],
      alpha_in: float,
      alpha_out: float,
      strides: int | Sequence[int] = 1,
      *,
      padding: str = "SAME",
      feature_group_count: int = 1,
      use_bias: bool = True,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      precision: Any = None,
      kernel_init: Initializer = nn.initializers.lecun_normal(),
      bias_init: Initializer = nn.initializers.zeros_init(),
      pool_stride: bool = True,
      octave_axes: Sequence[int] | None = None,
      kernel_dilation: int | Sequence[int] = 1,
      rngs: nnx.Rngs,
  ):
    # The Linen layer's attribute checks, so that both front ends accept the same arguments.
    linen_layers.OctConv(
        out_features, kernel_size, alpha_in, alpha_out, strides=strides, padding=padding,
        feature_group_count=feature_group_count, use_bias=use_bias, pool_stride=pool_stride,
        octave_axes=None if octave_axes is None else tuple(octave_axes), kernel_dilation=kernel_dilation)
    _check_in_features(in_features)
    self.in_features = in_features
    self.out_features = out_features
    self.alpha_in = float(alpha_in)
    self.alpha_out = float(alpha_out)
    self.strides = strides if isinstance(strides, int) else tuple(strides)
    self.octave_axes = None if octave_axes is None else tuple(octave_axes)
    self.kernel_dilation = kernel_dilation if isinstance(kernel_dilation, int) else tuple(kernel_dilation)
    self.dtype = dtype
    self.precision = precision
    self.pool_stride = pool_stride
    _add_paths(self, kernel_size, in_features, out_features, alpha_in, alpha_out, feature_group_count,
               use_bias, kernel_init, bias_init, param_dtype, rngs)

  def __call__(self, x: OctTensor | Array) -> OctTensor:
    x, kernels, biases = _inputs_and_weights(self, as_oct(x), "OctConv")
    return execution.oct_conv(x, kernels, biases, strides=self.strides, octave_axes=self.octave_axes,
                              kernel_dilation=self.kernel_dilation, precision=self.precision,
                              pool_stride=self.pool_stride)


def _add_paths(module: nnx.Module, kernel_size: int | Sequence[int], in_features: int, out_features: int,
               alpha_in: float, alpha_out: float, feature_group_count: int, use_bias: bool,
               kernel_init: Initializer, bias_init: Initializer, param_dtype: Any, rngs: nnx.Rngs) -> None:
  """Sets ``module.h2h``... to the paths of `functional.oct_conv_param_shapes`, initialised as in Linen."""
  kernel_size = F.kernel_size_tuple(kernel_size)
  vanilla = F.vanilla_kernel_shape(kernel_size, in_features, out_features, feature_group_count)
  path_init = F.path_kernel_init(kernel_init, vanilla)
  shapes = F.oct_conv_param_shapes(kernel_size, in_features, out_features, alpha_in, alpha_out,
                                   feature_group_count, use_bias)
  for path, path_shapes in shapes.items():
    kernel = path_init(rngs.params(), path_shapes.kernel, param_dtype)
    bias = None if path_shapes.bias is None else bias_init(rngs.params(), path_shapes.bias, param_dtype)
    setattr(module, path, _PathWeights(kernel, bias))


def _inputs_and_weights(module: nnx.Module, x: OctTensor, layer: str) -> tuple[OctTensor, dict, dict]:
  """The checked input and the path kernels and biases, all in the compute dtype (as in Linen)."""
  expected = split_channels(module.in_features, module.alpha_in)
  if (x.high_channels, x.low_channels) != expected:
    raise ValueError(
        f"the input has {x.high_channels} high and {x.low_channels} low channels, but this "
        f"{layer} has in_features={module.in_features} split at alpha_in={module.alpha_in} into "
        f"{expected[0]} high and {expected[1]} low (C_l = int(alpha_in * C)).")
  paths = {p: getattr(module, p) for p in F.PATHS if getattr(module, p, None) is not None}
  kernels = {p: w.kernel[...] for p, w in paths.items()}
  biases = {p: w.bias[...] for p, w in paths.items() if hasattr(w, "bias")}
  dtype = module.dtype or jnp.result_type(*(p for p in (x.high, x.low) if p is not None), *kernels.values())
  return (x.map(lambda p: p.astype(dtype)), {p: k.astype(dtype) for p, k in kernels.items()},
          {p: b.astype(dtype) for p, b in biases.items()})


def _check_in_features(in_features: Any) -> None:
  if not isinstance(in_features, int) or isinstance(in_features, bool) or in_features < 1:
    raise ValueError(f"in_features must be a positive int, got {in_features!r}.")


class OctConvTranspose(nnx.Module):
  """Transposed octave convolution as a Flax NNX module: the octave `flax.nnx.ConvTranspose`.

  The same layer as `octflax.OctConvTranspose` (Linen; `octflax.functional.oct_conv_transpose`
  has the equations; T: SAME transposed conv, P / U: pool / upsample by 2, C: crop)::

    Y^H = C(T(X^H; W^hh)) + C(U(T(X^L; W^lh)))
    Y^L = C(T(X^L; W^ll)) + C(T(P(X^H); W^hl))

  State: ``h2h``, ``h2l``, ``l2h``, ``l2l`` (those present), each a ``kernel``
  ``[*kernel_size, in, out]`` and a ``bias`` where the Linen layer has one.

  Args:
    in_features, out_features: channels of input and output (both parts together).
    kernel_size, alpha_in, alpha_out, strides, use_bias, dtype, param_dtype, precision,
      kernel_init, bias_init, octave_axes, kernel_dilation: as in `octflax.OctConvTranspose`.
    rngs: the ``params`` stream initialises the kernels and biases.

  Examples:
    >>> up = OctConvTranspose(8, 8, 3, alpha_in=0.5, alpha_out=0.5, strides=2, rngs=nnx.Rngs(0))
    >>> y = up(OctTensor(jnp.ones((1, 4, 4, 4)), jnp.ones((1, 2, 2, 4))), output_size=(7, 7))
    >>> y.high.shape, y.low.shape
    ((1, 7, 7, 4), (1, 4, 4, 4))
  """

  def __init__(
      self,
      in_features: int,
      out_features: int,
      kernel_size: int | Sequence[int],
      alpha_in: float,
      alpha_out: float,
      strides: int | Sequence[int] = 1,
      *,
      use_bias: bool = True,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      precision: Any = None,
      kernel_init: Initializer = nn.initializers.lecun_normal(),
      bias_init: Initializer = nn.initializers.zeros_init(),
      octave_axes: Sequence[int] | None = None,
      kernel_dilation: int | Sequence[int] = 1,
      rngs: nnx.Rngs,
  ):
    # The Linen layer's attribute checks, so that both front ends accept the same arguments.
    linen_layers.OctConvTranspose(
        out_features, kernel_size, alpha_in, alpha_out, strides=strides, use_bias=use_bias,
        octave_axes=None if octave_axes is None else tuple(octave_axes), kernel_dilation=kernel_dilation)
    _check_in_features(in_features)
    self.in_features = in_features
    self.out_features = out_features
    self.alpha_in = float(alpha_in)
    self.alpha_out = float(alpha_out)
    self.strides = strides if isinstance(strides, int) else tuple(strides)
    self.octave_axes = None if octave_axes is None else tuple(octave_axes)
    self.kernel_dilation = kernel_dilation if isinstance(kernel_dilation, int) else tuple(kernel_dilation)
    self.dtype = dtype
    self.precision = precision
    _add_paths(self, kernel_size, in_features, out_features, alpha_in, alpha_out, 1, use_bias,
               kernel_init, bias_init, param_dtype, rngs)

  def __call__(self, x: OctTensor | Array, output_size: Sequence[int] | None = None) -> OctTensor:
    """Applies the layer; ``output_size`` is the high output's spatial size (default ``s * n``)."""
    x, kernels, biases = _inputs_and_weights(self, as_oct(x), "OctConvTranspose")
    return F.oct_conv_transpose(x, kernels, biases, strides=self.strides, octave_axes=self.octave_axes,
                                kernel_dilation=self.kernel_dilation, output_size=output_size,
                                precision=self.precision)


class OctBatchNorm(nnx.Module):
  """Batch normalisation of each part with its own statistics and affine parameters.

  Sub-modules ``high`` and ``low`` are `flax.nnx.BatchNorm`s over the channels of each
  part (absent when the part is), as in `octflax.OctBatchNorm`.

  Args:
    num_features: channels C of the input (both parts together).
    alpha: the input's share of low-frequency channels (`split_channels` gives the parts).
    use_running_average, momentum, epsilon, dtype, param_dtype, use_bias, use_scale,
      scale_init, bias_init, axis_name: as in `flax.nnx.BatchNorm`.
    rngs: unused by the initialisers of BatchNorm, required by NNX's signature.
  """

  def __init__(
      self,
      num_features: int,
      alpha: float,
      *,
      use_running_average: bool = False,
      momentum: float = 0.99,
      epsilon: float = 1e-5,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      use_bias: bool = True,
      use_scale: bool = True,
      scale_init: Initializer = nn.initializers.ones_init(),
      bias_init: Initializer = nn.initializers.zeros_init(),
      axis_name: str | None = None,
      rngs: nnx.Rngs,
  ):
    self.num_features = num_features
    self.alpha = float(alpha)
    channels = dict(zip(("high", "low"), split_channels(num_features, alpha)))
    for part, count in channels.items():
      norm = None
      if count:
        norm = nnx.BatchNorm(
            count, use_running_average=use_running_average, momentum=momentum, epsilon=epsilon,
            dtype=dtype, param_dtype=param_dtype, use_bias=use_bias, use_scale=use_scale,
            scale_init=scale_init, bias_init=bias_init, axis_name=axis_name, rngs=rngs)
      setattr(self, part, norm)

  def __call__(self, x: OctTensor | Array, use_running_average: bool | None = None) -> OctTensor:
    x = as_oct(x)
    expected = split_channels(self.num_features, self.alpha)
    if (x.high_channels, x.low_channels) != expected:
      raise ValueError(
          f"the input has {x.high_channels} high and {x.low_channels} low channels, but this "
          f"OctBatchNorm has num_features={self.num_features} split at alpha={self.alpha} into "
          f"{expected[0]} high and {expected[1]} low.")
    norms = [n for n in (self.high, self.low) if n is not None]
    running = norms[0].use_running_average if use_running_average is None else use_running_average
    if not running and execution.joint_norm_in_play():
      # Training with `execution.batch_stats` (which may sum both parts in one pass).
      parts = []
      for norm, part, stats in zip((self.high, self.low), (x.high, x.low), execution.batch_stats(x, norms[0].axis_name)):
        if part is None:
          parts.append(None)
          continue
        mean, var = stats
        norm.mean[...] = F.running_average(norm.mean[...], mean, norm.momentum)
        norm.var[...] = F.running_average(norm.var[...], var, norm.momentum)
        scale, bias = (None if p is None else p[...] for p in (norm.scale, norm.bias))
        parts.append(F.batch_norm(part, mean, var, scale, bias, norm.epsilon, norm.dtype))
      return OctTensor(*parts)
    return OctTensor(
        high=None if x.high is None else self.high(x.high, use_running_average=use_running_average),
        low=None if x.low is None else self.low(x.low, use_running_average=use_running_average),
    )


class OctConvBN(nnx.Module):
  """OctConv (no bias) -> OctBatchNorm -> optional activation on each part.

  The NNX form of `octflax.OctConvBN`, with the same sub-modules ``conv`` and ``bn``.

  Args:
    in_features, out_features, kernel_size, alpha_in, alpha_out, strides,
      feature_group_count: as in `OctConv`.
    activation: applied to each part after normalisation (None: no activation).
    momentum, epsilon, axis_name: of the BatchNorm (momentum 0.9 is PyTorch's 0.1).
    bn_scale_init: initialiser of the BatchNorm scale (zeros for a residual block's last unit).
    dtype, param_dtype, precision, kernel_init, pool_stride, octave_axes,
      kernel_dilation: as in `octflax.OctConvBN` (``kernel_size`` gives the rank).
    use_running_average: the BatchNorm's initial mode (``model.eval()`` sets it).
    rngs: initialises the kernels.
  """

  def __init__(
      self,
      in_features: int,
      out_features: int,
      kernel_size: int | Sequence[int],
      alpha_in: float,
      alpha_out: float,
      strides: int | Sequence[int] = 1,
      *,
      feature_group_count: int = 1,
      activation: Callable[[Array], Array] | None = None,
      momentum: float = 0.9,
      epsilon: float = 1e-5,
      axis_name: str | None = None,
      bn_scale_init: Initializer = nn.initializers.ones_init(),
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      precision: Any = None,
      kernel_init: Initializer = nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
      pool_stride: bool = True,
      octave_axes: Sequence[int] | None = None,
      kernel_dilation: int | Sequence[int] = 1,
      use_running_average: bool = False,
      rngs: nnx.Rngs,
  ):
    vanilla = not (alpha_in or alpha_out)
    self.conv = OctConv(
        in_features, out_features, kernel_size, alpha_in, alpha_out, strides,
        feature_group_count=feature_group_count, use_bias=False, dtype=dtype, param_dtype=param_dtype,
        precision=precision, kernel_init=kernel_init, pool_stride=pool_stride or not vanilla,
        octave_axes=octave_axes, kernel_dilation=kernel_dilation, rngs=rngs)
    self.bn = OctBatchNorm(
        out_features, alpha_out, use_running_average=use_running_average, momentum=momentum,
        epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, scale_init=bn_scale_init,
        axis_name=axis_name, rngs=rngs)
    self.activation = activation

  def __call__(self, x: OctTensor | Array) -> OctTensor:
    y = self.bn(self.conv(x))
    if self.activation is not None:
      y = y.map(self.activation)
    return y


__all__ = ["OctBatchNorm", "OctConv", "OctConvBN", "OctConvTranspose"]
