"""Flax Linen modules over `OctTensor`: OctConv, OctBatchNorm and their conv-BN(-activation) unit."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from octflax.spec import (OctBatchNormSpec, OctConvBNSpec, OctConvSpec, OctConvTransposeSpec, PartVariables,
                          arguments, attributes, spec_from)
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


def _convolve(module: nn.Module, spec: OctConvSpec | OctConvTransposeSpec, x: OctTensor | Array,
              **call: Any) -> OctTensor:
  """Checks ``x``, creates the layer's ``kernel`` and ``bias`` (`spec.params`) and applies ``spec``.

  Called inside ``module``'s compact ``__call__``, so that the parameters belong to it.
  """
  x = spec.input(x)
  p = spec.params(x.channels)
  kernel = module.param("kernel", p.kernel_init, p.kernel, p.dtype)
  bias = None if p.bias is None else module.param("bias", p.bias_init, p.bias, p.dtype)
  return spec.apply(x, kernel, bias, **call)


class OctConv(attributes(OctConvSpec), _SpecModule):
  """Octave convolution (Chen et al., 2019) with the official implementation's semantics, in 1-D, 2-D, 3-D.

  Input and output are split at ``alpha_in`` / ``alpha_out`` (`split_channels`) into a
  full-resolution high part and a low part with half the size on the octave axes; the four
  paths are (`functional.oct_conv` has the general equations)::

    Y^H = f(X^H; W^hh) + U(f(X^L; W^lh)),   Y^L = f(X^L; W^ll) + f(P(X^H); W^hl)

  (P: average pool by 2, U: nearest upsample by 2, on the octave axes; stride 2
  average-pools the input first and never runs a strided conv). The number of spatial axes
  comes from ``kernel_size`` as in `flax.linen.Conv`: ``(k,)`` on ``[N, L, C]``, ``(k, k)``
  (or an int) on NHWC, ``(k, k, k)`` on ``[N, T, H, W, C]``. Its parameters are
  `flax.linen.Conv`'s: one ``kernel`` ``[*kernel_size, in / groups, out]`` and a ``bias``
  ``[out]``, at every alpha. The paths are blocks of the kernel (`functional.kernel_blocks`:
  the high input part's rows and the high output part's columns come first), so the weights of
  a vanilla conv start an OctConv of the same shape at any alpha. With
  ``alpha_in = alpha_out = 0`` it computes what
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
    kernel_init, bias_init: initialisers of the kernel and bias (the vanilla conv's shapes).
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
    return _convolve(self, self.spec, x)


class OctConvTranspose(attributes(OctConvTransposeSpec), _SpecModule):
  """Transposed octave convolution: the octave counterpart of `flax.linen.ConvTranspose`.

  The four paths (`functional.oct_conv_transpose`; T: SAME transposed conv of stride s,
  P / U: average pool / nearest upsample by 2 on the octave axes, C: crop to the output
  part's size)::

    Y^H = C(T(X^H; W^hh)) + C(U(T(X^L; W^lh)))
    Y^L = C(T(X^L; W^ll)) + C(T(P(X^H); W^hl))

  At stride 2 the high output is twice the input's high size and the low output half of that
  (ceil) on the octave axes; ``output_size`` (a call argument) gives the high output's size
  instead, so that a decoder restores an encoder's odd sizes. Parameters: those of
  `flax.linen.ConvTranspose`, a ``kernel`` ``[*kernel_size, in, out]`` and a ``bias`` ``[out]``,
  the paths read as blocks (`functional.kernel_blocks`). With ``alpha_in = alpha_out = 0`` it
  computes what
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
    return _convolve(self, self.spec, x, output_size=output_size)


class OctBatchNorm(attributes(OctBatchNormSpec), _SpecModule):
  """Batch normalisation of each part with its own statistics and affine parameters.

  Its variables are those of one `flax.linen.BatchNorm` over all the input's channels
  (``batch_stats``: ``mean``, ``var``; ``params``: ``scale``, ``bias``; each ``[C_h + C_l]``,
  the high part's channels first), so that a vanilla network's BatchNorm starts it at any
  alpha. Each part is normalised with its channels' variables, as a `flax.linen.BatchNorm` over
  that part computes; in training the statistics come from `octflax.execution.batch_norm`,
  which may sum both parts in one pass or run a hand-written gradient (the platform's form).
  ``axis_name`` defaults to None (jit over a mesh needs none); pass the pmap axis name to
  average statistics across devices under `jax.pmap`.
  """

  SPEC = OctBatchNormSpec

  @nn.compact
  def __call__(self, x: OctTensor | Array, use_running_average: bool | None = None) -> OctTensor:
    spec, x = self.spec, as_oct(x)
    use_running_average = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
    if self.is_initializing():  # as flax.linen.BatchNorm: no cross-device statistics outside the mapped step
      spec = dataclasses.replace(spec, axis_name=None)
    shape = (x.channels,)
    mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), shape)
    var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), shape)
    scale = self.param("scale", spec.scale_init, shape, spec.param_dtype) if spec.use_scale else None
    bias = self.param("bias", spec.bias_init, shape, spec.param_dtype) if spec.use_bias else None
    y, average = spec.apply(x, PartVariables(mean.value, var.value, scale, bias), use_running_average)
    if average is not None and not self.is_initializing():
      mean.value, var.value = average
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


def octave_layers(model: nn.Module, *args: Any, **kwargs: Any) -> dict[tuple[str, ...], tuple[Any, int]]:
  """``{module path: (spec, channels)}`` of the octave layers ``model.init(key, *args, **kwargs)`` builds.

  ``channels`` is an OctConv's or OctConvTranspose's input channels and an OctBatchNorm's high
  part's: what reading a layer's one set of variables as its paths' or parts' needs
  (`functional.kernel_blocks`, `octflax.checkpoint.format2.split`), which the shapes alone do not
  say. Traced abstractly (`jax.eval_shape`).
  """
  found: dict[tuple[str, ...], tuple[Any, int]] = {}

  def record(next_fun, fn_args, fn_kwargs, context):
    module = context.module
    if context.method_name == "__call__" and isinstance(module, (OctConv, OctConvTranspose, OctBatchNorm)):
      x = as_oct(fn_args[0])
      channels = x.channels if not isinstance(module, OctBatchNorm) else 0 if x.high is None else x.high.shape[-1]
      found[tuple(module.path)] = (module.spec, channels)
    return next_fun(*fn_args, **fn_kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs))
  return found
