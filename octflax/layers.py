"""Flax Linen modules over `OctTensor`: OctConv, OctBatchNorm and their conv-BN(-activation) unit."""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from octflax import execution
from octflax.spec import (OctBatchNormSpec, OctConvBNSpec, OctConvSpec, OctConvTransposeSpec, PartVariables,
                          PathParams, arguments, attributes, per_part, spec_from)
from octflax.tensor import OctTensor, as_oct

Array = jax.Array


class _SpecModule(nn.Module):
  """A Linen layer over a spec (`octflax.spec`): ``spec`` is built from the attributes, which it checks.

  Subclasses take their attributes from ``attributes(SPEC)`` and name the spec class ``SPEC``.
  """

  def __post_init__(self):
    _ = self.spec  # the checks, at construction
    super().__post_init__()

  @property
  def spec(self) -> Any:
    """The layer's spec, built from its attributes."""
    return spec_from(self.SPEC, self)


class _PathWeights(nn.Module):
  """The ``kernel`` and optional ``bias`` of one OctConv path (`spec.PathParams`)."""

  params: PathParams

  @nn.compact
  def __call__(self) -> tuple[Array, Array | None]:
    p = self.params
    kernel = self.param("kernel", p.kernel_init, p.kernel, p.dtype)
    return kernel, None if p.bias is None else self.param("bias", p.bias_init, p.bias, p.dtype)


def _convolve(spec: OctConvSpec | OctConvTransposeSpec, x: OctTensor | Array, **call: Any) -> OctTensor:
  """Checks ``x``, creates the path parameters (sub-modules ``h2h``, ...) and applies ``spec``.

  Called inside a compact ``__call__``, so that the ``_PathWeights`` belong to its module.
  """
  x = spec.input(x)
  kernels, biases = {}, {}
  for path, params in spec.paths(x.channels).items():
    kernels[path], bias = _PathWeights(params, name=path)()
    if bias is not None:
      biases[path] = bias
  return spec.apply(x, kernels, biases, **call)


class OctConv(attributes(OctConvSpec), _SpecModule):
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

  SPEC = OctConvSpec

  @nn.compact
  def __call__(self, x: OctTensor | Array) -> OctTensor:
    return _convolve(self.spec, x)


class OctConvTranspose(attributes(OctConvTransposeSpec), _SpecModule):
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

  SPEC = OctConvTransposeSpec

  @nn.compact
  def __call__(self, x: OctTensor | Array, output_size: Sequence[int] | None = None) -> OctTensor:
    """Applies the layer; ``output_size`` is the high output's spatial size (default ``s * n``)."""
    return _convolve(self.spec, x, output_size=output_size)


class _BatchNormVariables(nn.Module):
  """The variables of one `flax.linen.BatchNorm` over ``features`` channels, same names, shapes and inits."""

  features: int
  spec: OctBatchNormSpec

  def setup(self):
    shape, spec = (self.features,), self.spec
    self.mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), shape)
    self.var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), shape)
    self.scale = self.param("scale", spec.scale_init, shape, spec.param_dtype) if spec.use_scale else None
    self.bias = self.param("bias", spec.bias_init, shape, spec.param_dtype) if spec.use_bias else None

  def read(self) -> PartVariables:
    return PartVariables(self.mean.value, self.var.value, self.scale, self.bias)


class OctBatchNorm(attributes(OctBatchNormSpec), _SpecModule):
  """Batch normalisation of each part with its own statistics and affine parameters.

  Sub-modules ``high`` and ``low`` hold the variables of a `flax.linen.BatchNorm` over the
  channel axis (``batch_stats``: ``mean``, ``var``; ``params``: ``scale``, ``bias``) and
  compute what it computes. In training, the statistics come from
  `octflax.execution.batch_stats`, which may sum both parts in one pass (the ``'joint'``
  form); otherwise each part is a `flax.linen.BatchNorm`. ``axis_name`` defaults to None
  (jit over a mesh needs none); pass the pmap axis name to average statistics across
  devices under `jax.pmap`.
  """

  SPEC = OctBatchNormSpec

  @nn.compact
  def __call__(self, x: OctTensor | Array, use_running_average: bool | None = None) -> OctTensor:
    spec, x = self.spec, as_oct(x)
    use_running_average = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
    if use_running_average or not execution.joint_norm_in_play() or self.is_initializing():
      norm = functools.partial(nn.BatchNorm, **spec.part_settings(use_running_average))
      return per_part(x, lambda name, part: norm(name=name)(part))
    # Training with `execution.batch_stats` (which may sum both parts in one pass).
    parts = [None if part is None else _BatchNormVariables(part.shape[-1], spec, name=name)
             for name, part in (("high", x.high), ("low", x.low))]
    y, averages = spec.train_with_batch_stats(x, [None if v is None else v.read() for v in parts])
    for v, average in zip(parts, averages):
      if v is not None:
        v.mean.value, v.var.value = average
    return y


class OctConvBN(attributes(OctConvBNSpec), _SpecModule):
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

  SPEC = OctConvBNSpec

  @nn.compact
  def __call__(self, x: OctTensor | Array, train: bool = False) -> OctTensor:
    spec = self.spec
    y = OctConv(**arguments(spec.conv), name="conv")(x)
    return spec.activate(OctBatchNorm(**arguments(spec.norm(not train)), name="bn")(y))
