"""Flax Linen modules over `OctTensor`: OctConv, OctBatchNorm and their conv-BN(-activation) unit."""

from __future__ import annotations

import functools
import numbers
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from octflax import execution
from octflax import functional as F
from octflax.resample import resolve_octave_axes
from octflax.tensor import OctTensor, as_oct, check_alpha, split_channels

Array = jax.Array
Initializer = Callable[..., Array]


class _PathWeights(nn.Module):
  """The kernel and optional bias of one OctConv path (`functional.oct_conv_param_shapes`)."""

  shapes: F.PathParamShapes
  vanilla_kernel_shape: tuple[int, ...]
  kernel_init: Initializer
  bias_init: Initializer
  param_dtype: Any

  @nn.compact
  def __call__(self) -> tuple[Array, Array | None]:
    init = F.path_kernel_init(self.kernel_init, self.vanilla_kernel_shape)
    kernel = self.param("kernel", init, self.shapes.kernel, self.param_dtype)
    bias = None if self.shapes.bias is None else self.param("bias", self.bias_init, self.shapes.bias, self.param_dtype)
    return kernel, bias


def _check_attributes(module: "OctConv | OctConvTranspose") -> None:
  """Construction-time checks shared by OctConv and OctConvTranspose (each names its attribute)."""
  check_alpha(module.alpha_in, "alpha_in")
  check_alpha(module.alpha_out, "alpha_out")
  kernel_size = F.kernel_size_tuple(module.kernel_size)
  octave_axes = resolve_octave_axes(module.octave_axes, len(kernel_size))
  F.stride_tuple(module.strides, len(kernel_size), octave_axes)
  dilation = F.as_tuple(module.kernel_dilation, len(kernel_size), "kernel_dilation")
  if any(d < 1 for d in dilation):
    raise ValueError(f"kernel_dilation must be positive ints, got {module.kernel_dilation!r}.")
  if not isinstance(module.features, numbers.Integral) or module.features < 1:
    raise ValueError(f"features must be a positive int, got {module.features!r}.")


def _path_parameters(module: "OctConv | OctConvTranspose", x: OctTensor, groups: int
                     ) -> tuple[OctTensor, dict[str, Array], dict[str, Array]]:
  """Checks x's channel split, creates the path parameters, and casts all to the compute dtype.

  Called inside the module's compact ``__call__``, so the ``_PathWeights`` sub-modules (``h2h``,
  ``h2l``, ``l2h``, ``l2l``) belong to it.
  """
  in_channels = x.channels
  expected_high, expected_low = split_channels(in_channels, module.alpha_in)
  if (x.high_channels, x.low_channels) != (expected_high, expected_low):
    raise ValueError(
        f"the input has {x.high_channels} high and {x.low_channels} low channels, but alpha_in="
        f"{module.alpha_in} splits {in_channels} channels into {expected_high} high and "
        f"{expected_low} low (C_l = int(alpha_in * C)); pass an input split at alpha_in "
        "(OctTensor.from_array(x, alpha_in)) or change alpha_in.")
  kernel_size = F.kernel_size_tuple(module.kernel_size)
  shapes = F.oct_conv_param_shapes(kernel_size, in_channels, module.features, module.alpha_in,
                                   module.alpha_out, groups, module.use_bias)
  vanilla = F.vanilla_kernel_shape(kernel_size, in_channels, module.features, groups)
  kernels, biases = {}, {}
  for path, path_shapes in shapes.items():
    kernel, bias = _PathWeights(path_shapes, vanilla, module.kernel_init, module.bias_init, module.param_dtype,
                                name=path)()
    kernels[path] = kernel
    if bias is not None:
      biases[path] = bias
  dtype = module.dtype or jnp.result_type(*(p for p in (x.high, x.low) if p is not None), *kernels.values())
  return (x.map(lambda p: p.astype(dtype)), {p: k.astype(dtype) for p, k in kernels.items()},
          {p: b.astype(dtype) for p, b in biases.items()})


class OctConv(nn.Module):
  """Octave convolution (Chen et al., 2019) with the official implementation's semantics, in 1-D, 2-D, 3-D.

  Input and output are split at ``alpha_in`` / ``alpha_out`` (`split_channels`) into a
  full-resolution high part and a low part with half the size on the octave axes; the four
  paths are (`functional.oct_conv` has the general equations)::

    Y^H = f(X^H; W^hh) + U(f(X^L; W^lh)),   Y^L = f(X^L; W^ll) + f(P(X^H); W^hl)

  (P: average pool by 2, U: nearest upsample by 2, on the octave axes; stride 2
  average-pools the input first and never runs a strided conv). The number of spatial axes
  comes from ``kernel_size`` as in `flax.linen.Conv`: ``(k,)`` on ``[N, L, C]``, ``(k, k)``
  (or an int) on NHWC, ``(k, k, k)`` on ``[N, T, H, W, C]``. Parameters are the
  sub-collections ``h2h``, ``h2l``, ``l2h``, ``l2l`` (those present), each a ``kernel``
  ``[*kernel_size, in / groups, out]`` plus a ``bias`` for the path that carries the output
  part's bias (`functional.oct_conv_param_shapes`). Their total equals the parameter count of
  the vanilla conv for every alpha. With ``alpha_in = alpha_out = 0`` it computes what
  `flax.linen.Conv` computes (bit for bit under
  ``octflax.execution.use_conv(octflax.functional.conv)``; by default on CPU the paths run
  through `octflax.execution.xla_cpu_conv`, equal to float32 rounding). How the paths are
  executed (`octflax.execution.Form`) is chosen per platform, never by the module.

  Depthwise (``feature_group_count == in channels == features``, ``alpha_in ==
  alpha_out``): only H->H and L->L exist, each depthwise on its own part. Otherwise
  every path uses ``feature_group_count`` groups.

  Attributes:
    features: output channels C_out (both parts together).
    kernel_size: odd int (2-D) or a tuple of odd ints, one per spatial axis.
    alpha_in: share of low-frequency input channels, in [0, 1].
    alpha_out: share of low-frequency output channels, in [0, 1].
    strides: 1 or 2, or one of them per spatial axis.
    padding: 'SAME' (symmetric, d (k-1)/2 on each side).
    feature_group_count: groups, the same for every path.
    use_bias: add a bias per output channel.
    dtype: compute dtype (None: inferred from inputs and params).
    param_dtype: parameter dtype.
    precision: `jax.lax.Precision` for the convolutions.
    kernel_init, bias_init: initialisers; the kernel initialiser sees the vanilla
      kernel's shape (`functional.path_kernel_init`).
    pool_stride: True (default, the OctConv semantics) runs stride 2 as an average
      pool and a stride-1 conv. False runs a strided conv (symmetric padding) and is
      allowed only for ``alpha_in = alpha_out = 0``: it makes a vanilla layer compute
      what torchvision's strided convs compute.
    octave_axes: the spatial axes (0-based) on which the low part has half the size;
      None (default) = all.
    kernel_dilation: an int or one per spatial axis, on every path, as in `flax.linen.Conv`.

  Examples:
    >>> conv = OctConv(features=32, kernel_size=3, alpha_in=0.0, alpha_out=0.5)
    >>> x = jnp.ones((2, 16, 16, 8))
    >>> y, variables = conv.init_with_output(jax.random.key(0), x)
    >>> y.high.shape, y.low.shape
    ((2, 16, 16, 16), (2, 8, 8, 16))
  """

  features: int
  kernel_size: int | Sequence[int]
  alpha_in: float
  alpha_out: float
  strides: int | Sequence[int] = 1
  padding: str = "SAME"
  feature_group_count: int = 1
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros_init()
  pool_stride: bool = True
  octave_axes: tuple[int, ...] | None = None
  kernel_dilation: int | Sequence[int] = 1

  def __post_init__(self):
    _check_attributes(self)
    if not self.pool_stride and (self.alpha_in or self.alpha_out):
      raise ValueError(
          "pool_stride=False (strided conv) needs alpha_in = alpha_out = 0; got "
          f"alpha_in={self.alpha_in}, alpha_out={self.alpha_out}.")
    if not isinstance(self.padding, str) or self.padding.upper() != "SAME":
      raise ValueError(f"padding must be 'SAME' (the only padding that keeps the octave sizes), got {self.padding!r}.")
    if not isinstance(self.feature_group_count, numbers.Integral) or self.feature_group_count < 1:
      raise ValueError(f"feature_group_count must be a positive int, got {self.feature_group_count!r}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: OctTensor | Array) -> OctTensor:
    x, kernels, biases = _path_parameters(self, as_oct(x), self.feature_group_count)
    return execution.oct_conv(x, kernels, biases, strides=self.strides, octave_axes=self.octave_axes,
                              kernel_dilation=self.kernel_dilation, precision=self.precision,
                              pool_stride=self.pool_stride)


class OctConvTranspose(nn.Module):
  """Transposed octave convolution: the octave counterpart of `flax.linen.ConvTranspose`.

  The four paths (`functional.oct_conv_transpose`; T: SAME transposed conv of stride s,
  P / U: average pool / nearest upsample by 2 on the octave axes, C: crop to the output
  part's size)::

    Y^H = C(T(X^H; W^hh)) + C(U(T(X^L; W^lh)))
    Y^L = C(T(X^L; W^ll)) + C(T(P(X^H); W^hl))

  At stride 2 the high output is twice the input's high size and the low output half of that
  (ceil) on the octave axes; ``output_size`` (a call argument) gives the high output's size
  instead, so that a decoder restores an encoder's odd sizes. Parameters ``h2h``, ``h2l``,
  ``l2h``, ``l2l`` (those present), each a ``kernel`` ``[*kernel_size, in, out]`` and a bias on
  the path that carries its output part's bias: the same total as `flax.linen.ConvTranspose`
  of the same shape. With ``alpha_in = alpha_out = 0`` it computes what
  `flax.linen.ConvTranspose` (``padding='SAME'``) computes.

  Attributes:
    features: output channels (both parts together).
    kernel_size: odd int (2-D) or a tuple of odd ints, one per spatial axis.
    alpha_in, alpha_out: shares of low-frequency input and output channels.
    strides: 1 or 2, or one per spatial axis.
    use_bias: add a bias per output channel.
    dtype, param_dtype, precision, kernel_init, bias_init: as in `flax.linen.ConvTranspose`
      (the kernel initialiser sees the vanilla kernel's shape).
    octave_axes: spatial axes (0-based) on which the low part has half the size; None = all.
    kernel_dilation: an int or one per spatial axis.

  Examples:
    >>> up = OctConvTranspose(features=8, kernel_size=3, alpha_in=0.5, alpha_out=0.5, strides=2)
    >>> x = OctTensor(jnp.ones((1, 4, 4, 8)), jnp.ones((1, 2, 2, 8)))
    >>> y, _ = up.init_with_output(jax.random.key(0), x, output_size=(7, 7))
    >>> y.high.shape, y.low.shape
    ((1, 7, 7, 4), (1, 4, 4, 4))
  """

  features: int
  kernel_size: int | Sequence[int]
  alpha_in: float
  alpha_out: float
  strides: int | Sequence[int] = 1
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros_init()
  octave_axes: tuple[int, ...] | None = None
  kernel_dilation: int | Sequence[int] = 1

  def __post_init__(self):
    _check_attributes(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: OctTensor | Array, output_size: Sequence[int] | None = None) -> OctTensor:
    """Applies the layer; ``output_size`` is the high output's spatial size (default ``s * n``)."""
    x, kernels, biases = _path_parameters(self, as_oct(x), 1)
    return F.oct_conv_transpose(x, kernels, biases, strides=self.strides, octave_axes=self.octave_axes,
                                kernel_dilation=self.kernel_dilation, output_size=output_size,
                                precision=self.precision)


class _BatchNormVariables(nn.Module):
  """The variables of one `flax.linen.BatchNorm` over ``features`` channels, same names, shapes and inits."""

  features: int
  param_dtype: Any
  use_scale: bool
  use_bias: bool
  scale_init: Initializer
  bias_init: Initializer

  @nn.compact
  def __call__(self):
    shape = (self.features,)
    mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), shape)
    var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), shape)
    scale = self.param("scale", self.scale_init, shape, self.param_dtype) if self.use_scale else None
    bias = self.param("bias", self.bias_init, shape, self.param_dtype) if self.use_bias else None
    return mean, var, scale, bias


class OctBatchNorm(nn.Module):
  """Batch normalisation of each part with its own statistics and affine parameters.

  Sub-modules ``high`` and ``low`` hold the variables of a `flax.linen.BatchNorm` over the
  channel axis (``batch_stats``: ``mean``, ``var``; ``params``: ``scale``, ``bias``) and
  compute what it computes. In training, the statistics come from
  `octflax.execution.batch_stats`, which may sum both parts in one pass (the ``'joint'``
  form); otherwise each part is a `flax.linen.BatchNorm`. ``axis_name`` defaults to None
  (jit over a mesh needs none); pass the pmap axis name to average statistics across
  devices under `jax.pmap`.
  """

  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  scale_init: Initializer = nn.initializers.ones_init()
  bias_init: Initializer = nn.initializers.zeros_init()
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: OctTensor | Array, use_running_average: bool | None = None) -> OctTensor:
    x = as_oct(x)
    use_running_average = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
    if not use_running_average and execution.joint_norm_in_play() and not self.is_initializing():
      return self._from_batch_stats(x)
    norm = functools.partial(
        nn.BatchNorm, use_running_average=use_running_average, momentum=self.momentum,
        epsilon=self.epsilon, dtype=self.dtype, param_dtype=self.param_dtype,
        use_bias=self.use_bias, use_scale=self.use_scale, scale_init=self.scale_init,
        bias_init=self.bias_init, axis_name=self.axis_name)
    return OctTensor(
        high=None if x.high is None else norm(name="high")(x.high),
        low=None if x.low is None else norm(name="low")(x.low),
    )

  def _from_batch_stats(self, x: OctTensor) -> OctTensor:
    """Training mode with `execution.batch_stats`: `flax.linen.BatchNorm`'s update and normalisation."""
    stats = execution.batch_stats(x, self.axis_name)
    parts = []
    for name, part, (mean, var) in zip(("high", "low"), (x.high, x.low), [s or (None, None) for s in stats]):
      if part is None:
        parts.append(None)
        continue
      ra_mean, ra_var, scale, bias = _BatchNormVariables(
          part.shape[-1], self.param_dtype, self.use_scale, self.use_bias, self.scale_init, self.bias_init,
          name=name)()
      ra_mean.value = F.running_average(ra_mean.value, mean, self.momentum)
      ra_var.value = F.running_average(ra_var.value, var, self.momentum)
      parts.append(F.batch_norm(part, mean, var, scale, bias, self.epsilon, self.dtype))
    return OctTensor(*parts)


class OctConvBN(nn.Module):
  """OctConv (no bias) -> OctBatchNorm -> optional activation on each part.

  The unit every octflax network is built from. Sub-modules: ``conv`` and ``bn``.

  Attributes:
    features, kernel_size, alpha_in, alpha_out, strides, feature_group_count: as in `OctConv`.
    activation: applied to each part after normalisation (None: no activation).
    momentum, epsilon, axis_name: of the BatchNorm (momentum 0.9 is PyTorch's 0.1).
    bn_scale_init: initialiser of the BatchNorm scale (zeros for a residual block's last unit).
    dtype, param_dtype, precision, kernel_init: as in `OctConv`.
    pool_stride: as in `OctConv`; False is used only where the unit is vanilla.
    octave_axes, kernel_dilation: as in `OctConv` (``kernel_size`` gives the rank).
  """

  features: int
  kernel_size: int | Sequence[int]
  alpha_in: float
  alpha_out: float
  strides: int | Sequence[int] = 1
  feature_group_count: int = 1
  activation: Callable[[Array], Array] | None = None
  momentum: float = 0.9
  epsilon: float = 1e-5
  axis_name: str | None = None
  bn_scale_init: Initializer = nn.initializers.ones_init()
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Initializer = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
  pool_stride: bool = True
  octave_axes: tuple[int, ...] | None = None
  kernel_dilation: int | Sequence[int] = 1

  @nn.compact
  def __call__(self, x: OctTensor | Array, train: bool = False) -> OctTensor:
    vanilla = not (self.alpha_in or self.alpha_out)
    y = OctConv(
        self.features, self.kernel_size, self.alpha_in, self.alpha_out, strides=self.strides,
        feature_group_count=self.feature_group_count, use_bias=False, dtype=self.dtype,
        param_dtype=self.param_dtype, precision=self.precision, kernel_init=self.kernel_init,
        pool_stride=self.pool_stride or not vanilla, octave_axes=self.octave_axes,
        kernel_dilation=self.kernel_dilation, name="conv")(x)
    y = OctBatchNorm(
        use_running_average=not train, momentum=self.momentum, epsilon=self.epsilon,
        dtype=self.dtype, param_dtype=self.param_dtype, scale_init=self.bn_scale_init,
        axis_name=self.axis_name, name="bn")(y)
    if self.activation is not None:
      y = y.map(self.activation)
    return y
