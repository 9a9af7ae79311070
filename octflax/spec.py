"""The layers as pure descriptions: what the Linen modules and the NNX modules both wrap.

A spec is a frozen dataclass holding one layer's settings, checked when it is built (every
argument error is raised there, naming the argument), with the pure functions a front end
needs around them: the parameters for a number of input channels (the vanilla conv's one
``kernel`` and ``bias``: shapes, dtype, initialisers), the check of an input's channel split,
and ``apply``, which casts the input and the parameters to the compute dtype, splits the
kernel into the paths' blocks (`functional.kernel_blocks`) and runs the layer through
`octflax.execution.oct_conv` or `functional.oct_conv_transpose`.

The front ends are shells that hold the variables: a Linen module takes its attributes
from a spec's fields (`attributes`: the same names, order and defaults), an NNX module its
keyword settings; both build the spec at construction and call it::

  spec = OctConvSpec(16, 3, alpha_in=0.5, alpha_out=0.5)
  params = spec.params(in_features=8)    # ConvParams(kernel=(3, 3, 8, 16), bias=(16,), ...)
  y = spec.apply(x, kernel, bias)        # what octflax.OctConv and octflax.nnx.OctConv compute
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from octflax import execution
from octflax import functional as F
from octflax.resample import resolve_octave_axes
from octflax.tensor import OctTensor, as_oct, check_alpha, split_channels

Array = jax.Array
Initializer = Callable[..., Array]
initializers = jax.nn.initializers


def attributes(spec_cls: type) -> type:
  """A plain dataclass with the fields of ``spec_cls``: the base a Linen module takes its attributes from.

  The fields keep their names, order, types and defaults, so ``class OctConv(attributes(OctConvSpec),
  nn.Module)`` has the attributes of `OctConvSpec` and builds it with `spec_from`.
  """
  fields = [(f.name, f.type, dataclasses.field(default=f.default) if f.default is not dataclasses.MISSING
             else dataclasses.field()) for f in dataclasses.fields(spec_cls)]
  # No __repr__ / __eq__ of its own: the module's (Flax's) stay in effect.
  base = dataclasses.make_dataclass(f"{spec_cls.__name__}Attributes", fields, repr=False, eq=False)
  base.__module__ = spec_cls.__module__
  return base


def spec_from(spec_cls: type, owner: Any) -> Any:
  """``spec_cls`` built from the attributes of the same names on ``owner`` (a Linen module)."""
  return spec_cls(**{f.name: getattr(owner, f.name) for f in dataclasses.fields(spec_cls)})


def arguments(spec: Any) -> dict[str, Any]:
  """A spec's fields by name (not copied): the keyword arguments that build it, or its Linen module."""
  return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}


def check_split(x: OctTensor, layer: str, channels_name: str, channels: int, alpha_name: str,
                alpha: float) -> OctTensor:
  """Returns ``x`` if its parts have the channels ``split_channels(channels, alpha)`` gives, else raises."""
  expected = split_channels(channels, alpha)
  if (x.high_channels, x.low_channels) != expected:
    raise ValueError(
        f"the input has {x.high_channels} high and {x.low_channels} low channels, but this {layer} has "
        f"{channels_name}={channels} split at {alpha_name}={alpha} into {expected[0]} high and {expected[1]} "
        f"low (C_l = int({alpha_name} * C)); pass an input split at {alpha_name} "
        f"(OctTensor.from_array(x, {alpha_name})) or change {alpha_name}.")
  return x


def per_part(x: OctTensor, fn: Callable[[str, Array], Array]) -> OctTensor:
  """``OctTensor(fn('high', x.high), fn('low', x.low))``, each part that is None staying None."""
  return OctTensor(*(None if p is None else fn(name, p) for name, p in zip(("high", "low"), (x.high, x.low))))


def _hashable(value: Any) -> Any:
  """An int or None as it is, another sequence as a tuple (specs are hashable: NNX keeps them static)."""
  return value if value is None or isinstance(value, (numbers.Integral, str)) else tuple(value)


class ConvParams(NamedTuple):
  """An OctConv's parameters: ``kernel`` and ``bias`` shapes (bias None: none), dtype, initialisers.

  The shapes of the vanilla conv's (`functional.vanilla_kernel_shape`); the paths read blocks of
  them (`functional.kernel_blocks`).
  """

  kernel: tuple[int, ...]
  bias: tuple[int] | None
  dtype: Any
  kernel_init: Initializer
  bias_init: Initializer


class _PathConv:
  """What `OctConvSpec` and `OctConvTransposeSpec` share: checks, path parameters, input and dtype."""

  layer = "OctConv"
  groups = 1

  def _check(self) -> None:
    """The checks of every argument both layers take; then sequences become tuples."""
    check_alpha(self.alpha_in, "alpha_in")
    check_alpha(self.alpha_out, "alpha_out")
    kernel_size = F.kernel_size_tuple(self.kernel_size)
    octave_axes = resolve_octave_axes(self.octave_axes, len(kernel_size))
    F.stride_tuple(self.strides, len(kernel_size), octave_axes)
    dilation = F.as_tuple(self.kernel_dilation, len(kernel_size), "kernel_dilation")
    if any(d < 1 for d in dilation):
      raise ValueError(f"kernel_dilation must be positive ints, got {self.kernel_dilation!r}.")
    if not isinstance(self.features, numbers.Integral) or self.features < 1:
      raise ValueError(f"features must be a positive int, got {self.features!r}.")
    for name in ("kernel_size", "strides", "octave_axes", "kernel_dilation"):
      object.__setattr__(self, name, _hashable(getattr(self, name)))

  def params(self, in_features: int) -> ConvParams:
    """The layer's ``kernel`` ``[*kernel_size, in_features / groups, features]`` and ``bias`` ``[features]``.

    The kernel initialiser sees the vanilla kernel (its fans are the conv's), so every path's
    block is drawn from the vanilla conv's distribution.

    Raises:
      ValueError: ``in_features`` is not a positive int, or the groups do not divide a path.
    """
    if not isinstance(in_features, numbers.Integral) or isinstance(in_features, bool) or in_features < 1:
      raise ValueError(f"in_features must be a positive int, got {in_features!r}.")
    kernel_size = F.kernel_size_tuple(self.kernel_size)
    F.oct_conv_param_shapes(kernel_size, in_features, self.features, self.alpha_in, self.alpha_out, self.groups)
    return ConvParams(F.vanilla_kernel_shape(kernel_size, in_features, self.features, self.groups),
                      (self.features,) if self.use_bias else None, self.param_dtype, self.kernel_init, self.bias_init)

  def paths(self, in_features: int) -> dict[str, F.PathParamShapes]:
    """The present paths and the shapes of their blocks (`functional.oct_conv_param_shapes`)."""
    self.params(in_features)
    return F.oct_conv_param_shapes(F.kernel_size_tuple(self.kernel_size), in_features, self.features, self.alpha_in,
                                   self.alpha_out, self.groups, self.use_bias)

  def input(self, x: OctTensor | Array, in_features: int | None = None) -> OctTensor:
    """``x`` as an OctTensor, checked to be split at ``alpha_in`` (``in_features`` channels: default its own)."""
    x = as_oct(x)
    return check_split(x, self.layer, "in_features", x.channels if in_features is None else in_features,
                       "alpha_in", self.alpha_in)

  def blocks(self, x: OctTensor, kernel: Array, bias: Array | None
             ) -> tuple[OctTensor, dict[str, Array], dict[str, Array]]:
    """Input, path kernels and biases in the compute dtype: ``dtype``, or the one they promote to.

    The kernel and bias are cast once, then split into the paths' blocks (`functional.kernel_blocks`).
    """
    dtype = self.dtype or jnp.result_type(*(p for p in (x.high, x.low) if p is not None), kernel)
    kernels, biases = F.kernel_blocks(kernel.astype(dtype), None if bias is None else bias.astype(dtype), x.channels,
                                      self.alpha_in, self.alpha_out, self.groups)
    return x.map(lambda p: p.astype(dtype)), kernels, biases


@dataclasses.dataclass(frozen=True)
class OctConvSpec(_PathConv):
  """An octave convolution (`octflax.OctConv` has the equations): settings, parameters, apply.

  Attributes:
    features: output channels C_out (both parts together).
    kernel_size: odd int (2-D) or a tuple of odd ints, one per spatial axis.
    alpha_in, alpha_out: shares of low-frequency input and output channels, in [0, 1].
    strides: 1 or 2, or one of them per spatial axis.
    padding: 'SAME', the only padding that keeps the octave sizes.
    feature_group_count: groups, the same for every path.
    use_bias: add a bias per output channel.
    dtype: compute dtype (None: inferred from inputs and params).
    param_dtype: parameter dtype.
    precision: `jax.lax.Precision` for the convolutions.
    kernel_init, bias_init: initialisers; the kernel initialiser sees the vanilla kernel's shape.
    pool_stride: True runs stride 2 as an average pool and a stride-1 conv; False (only at
      ``alpha_in = alpha_out = 0``) a strided conv.
    octave_axes: the spatial axes (0-based) on which the low part has half the size; None = all.
    kernel_dilation: an int or one per spatial axis.

  Examples:
    >>> spec = OctConvSpec(16, 3, 0.5, 0.5)
    >>> spec.params(8).kernel
    (3, 3, 8, 16)
    >>> {path: p.kernel for path, p in spec.paths(8).items()}
    {'h2h': (3, 3, 4, 8), 'h2l': (3, 3, 4, 8), 'l2h': (3, 3, 4, 8), 'l2l': (3, 3, 4, 8)}
    >>> OctConvSpec(16, 3, 1.5, 0.5)
    Traceback (most recent call last):
    ...
    ValueError: alpha_in must be in [0, 1] (the share of low-frequency channels), got 1.5.
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
  kernel_init: Initializer = initializers.lecun_normal()
  bias_init: Initializer = initializers.zeros
  pool_stride: bool = True
  octave_axes: tuple[int, ...] | None = None
  kernel_dilation: int | Sequence[int] = 1

  def __post_init__(self):
    self._check()
    if not self.pool_stride and (self.alpha_in or self.alpha_out):
      raise ValueError(
          "pool_stride=False (strided conv) needs alpha_in = alpha_out = 0; got "
          f"alpha_in={self.alpha_in}, alpha_out={self.alpha_out}.")
    if not isinstance(self.padding, str) or self.padding.upper() != "SAME":
      raise ValueError(f"padding must be 'SAME' (the only padding that keeps the octave sizes), got {self.padding!r}.")
    if not isinstance(self.feature_group_count, numbers.Integral) or self.feature_group_count < 1:
      raise ValueError(f"feature_group_count must be a positive int, got {self.feature_group_count!r}.")

  @property
  def groups(self) -> int:
    return self.feature_group_count

  def apply(self, x: OctTensor, kernel: Array, bias: Array | None = None) -> OctTensor:
    """The layer's output for the checked input ``x`` (`input`), its ``kernel`` and ``bias`` (`params`).

    ``y = execution.oct_conv(x, kernels, biases, ...)`` of the paths' blocks in the compute dtype (`blocks`).
    """
    x, kernels, biases = self.blocks(x, kernel, bias)
    return execution.oct_conv(x, kernels, biases, strides=self.strides, octave_axes=self.octave_axes,
                              kernel_dilation=self.kernel_dilation, precision=self.precision,
                              pool_stride=self.pool_stride)


@dataclasses.dataclass(frozen=True)
class OctConvTransposeSpec(_PathConv):
  """A transposed octave convolution (`octflax.OctConvTranspose` has the equations).

  Attributes:
    features, kernel_size, alpha_in, alpha_out, strides, use_bias, dtype, param_dtype,
      precision, kernel_init, bias_init, octave_axes, kernel_dilation: as in `OctConvSpec`.
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
  kernel_init: Initializer = initializers.lecun_normal()
  bias_init: Initializer = initializers.zeros
  octave_axes: tuple[int, ...] | None = None
  kernel_dilation: int | Sequence[int] = 1

  layer = "OctConvTranspose"

  def __post_init__(self):
    self._check()

  def apply(self, x: OctTensor, kernel: Array, bias: Array | None = None,
            output_size: Sequence[int] | None = None) -> OctTensor:
    """``functional.oct_conv_transpose`` of the paths' blocks in the compute dtype (`blocks`)."""
    x, kernels, biases = self.blocks(x, kernel, bias)
    return F.oct_conv_transpose(x, kernels, biases, strides=self.strides, octave_axes=self.octave_axes,
                                kernel_dilation=self.kernel_dilation, output_size=output_size,
                                precision=self.precision)


class PartVariables(NamedTuple):
  """BatchNorm variables over some channels: running ``mean`` and ``var``, ``scale`` and ``bias`` (None: absent)."""

  mean: Array
  var: Array
  scale: Array | None
  bias: Array | None


@dataclasses.dataclass(frozen=True)
class OctBatchNormSpec:
  """Batch normalisation of each part with its own statistics (`octflax.OctBatchNorm`).

  The layer holds the variables of one `flax.linen.BatchNorm` over all ``C = C_h + C_l``
  channels (``mean``, ``var``, ``scale``, ``bias``, each ``[C]``); the high part owns the first
  ``C_h`` channels of each (`parts`) and is normalised as a BatchNorm over its channels computes,
  the low part likewise with the rest. `apply` runs both; in training through
  `train_with_batch_stats`, the platform's form (`octflax.execution.batch_norm`: both parts'
  statistics in one pass, or a hand-written gradient).

  Attributes:
    use_running_average: the mode when a call gives none (None: the call must).
    momentum, epsilon, dtype, param_dtype, use_bias, use_scale, scale_init, bias_init,
      axis_name: as in `flax.linen.BatchNorm`.
  """

  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  scale_init: Initializer = initializers.ones
  bias_init: Initializer = initializers.zeros
  axis_name: str | None = None

  @staticmethod
  def parts(x: OctTensor, variables: PartVariables) -> tuple[PartVariables | None, PartVariables | None]:
    """Each part's slice of the layer's variables: the high part's ``C_h`` channels first (None: no part).

    Raises:
      ValueError: variables over another number of channels than ``x`` has.
    """
    channels = variables.mean.shape[-1]
    if channels != x.channels:
      raise ValueError(f"OctBatchNorm: the input has {x.channels} channels (both parts), its variables {channels}.")
    c_high = 0 if x.high is None else x.high.shape[-1]
    take = lambda v, sl: None if v is None else v[sl]
    return tuple(None if part is None else PartVariables(*(take(v, sl) for v in variables))
                 for part, sl in ((x.high, slice(0, c_high)), (x.low, slice(c_high, channels))))

  def apply(self, x: OctTensor, variables: PartVariables, use_running_average: bool
            ) -> tuple[OctTensor, tuple[Array, Array] | None]:
    """Normalises both parts with their channels of ``variables`` (the layer's, over all channels).

    Returns:
      The output and, in training, the new running ``(mean, var)`` over all channels
      (`train_with_batch_stats`); None with ``use_running_average``.
    """
    parts = self.parts(x, variables)  # checks the channel count too
    if not use_running_average:
      return self.train_with_batch_stats(x, variables)
    return OctTensor(*(None if p is None else F.batch_norm(p, v.mean, v.var, v.scale, v.bias, self.epsilon, self.dtype)
                       for p, v in zip((x.high, x.low), parts))), None

  def train_with_batch_stats(self, x: OctTensor, variables: PartVariables) -> tuple[OctTensor, tuple[Array, Array]]:
    """Training mode in the platform's form (`execution.batch_norm`): each part normalised by its batch statistics.

    ``y = (x - mean) rsqrt(var + epsilon) scale + bias`` (`functional.batch_norm`) per part, and
    the running averages ``momentum * average + (1 - momentum) * statistic``: what
    `flax.linen.BatchNorm` computes and updates, over each part's channels.

    Args:
      x: the input.
      variables: the layer's variables over all of ``x``'s channels (the high part's first).

    Returns:
      The output and the new running ``(mean, var)`` over all channels.
    """
    return execution.batch_norm(x, variables.scale, variables.bias, (variables.mean, variables.var), self.momentum,
                                self.epsilon, self.dtype, self.axis_name)


@dataclasses.dataclass(frozen=True)
class OctConvBNSpec:
  """OctConv (no bias) -> OctBatchNorm -> optional activation on each part (`octflax.OctConvBN`).

  Attributes:
    features, kernel_size, alpha_in, alpha_out, strides, feature_group_count: as in `OctConvSpec`.
    activation: applied to each part after normalisation (None: no activation).
    momentum, epsilon, axis_name: of the BatchNorm (momentum 0.9 is PyTorch's 0.1).
    bn_scale_init: initialiser of the BatchNorm scale (zeros for a residual block's last unit).
    dtype, param_dtype, precision, kernel_init: as in `OctConvSpec`.
    pool_stride: as in `OctConvSpec`, where the unit is vanilla (an octave unit always pools).
    octave_axes, kernel_dilation: as in `OctConvSpec`.
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
  bn_scale_init: Initializer = initializers.ones
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Initializer = initializers.variance_scaling(2.0, "fan_out", "normal")
  pool_stride: bool = True
  octave_axes: tuple[int, ...] | None = None
  kernel_dilation: int | Sequence[int] = 1

  def __post_init__(self):
    _ = self.conv  # its spec checks the arguments
    for name in ("kernel_size", "strides", "octave_axes", "kernel_dilation"):
      object.__setattr__(self, name, _hashable(getattr(self, name)))

  @property
  def conv(self) -> OctConvSpec:
    """The unit's convolution: no bias; pool_stride applies where the unit is vanilla."""
    vanilla = not (self.alpha_in or self.alpha_out)
    return OctConvSpec(
        self.features, self.kernel_size, self.alpha_in, self.alpha_out, strides=self.strides,
        feature_group_count=self.feature_group_count, use_bias=False, dtype=self.dtype,
        param_dtype=self.param_dtype, precision=self.precision, kernel_init=self.kernel_init,
        pool_stride=self.pool_stride or not vanilla, octave_axes=self.octave_axes,
        kernel_dilation=self.kernel_dilation)

  def norm(self, use_running_average: bool | None) -> OctBatchNormSpec:
    """The unit's BatchNorm in the mode ``use_running_average``."""
    return OctBatchNormSpec(use_running_average, momentum=self.momentum, epsilon=self.epsilon, dtype=self.dtype,
                            param_dtype=self.param_dtype, scale_init=self.bn_scale_init, axis_name=self.axis_name)

  def activate(self, y: OctTensor) -> OctTensor:
    """``activation`` on each part of the normalised ``y`` (``y`` itself without one)."""
    return y if self.activation is None else y.map(self.activation)


__all__ = ["ConvParams", "OctBatchNormSpec", "OctConvBNSpec", "OctConvSpec", "OctConvTransposeSpec", "PartVariables",
           "arguments", "attributes", "check_split", "per_part", "spec_from"]
