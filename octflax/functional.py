"""The OctConv equations as pure functions: per-part ops, the octave convolution and its parameters.

Arrays are channels-last with any number of spatial axes (``[N, L, C]``, NHWC,
``[N, T, H, W, C]``); the number of spatial axes of a convolution comes from its kernel
(``[*kernel_size, in / groups, out]``). Every function is pure and usable under `jax.jit`,
`jax.grad` and `jax.vmap`. How a convolution is executed on a given backend is not decided
here: `oct_conv` takes the convolution as an argument (`conv` by default, exactly what
`flax.linen.Conv` computes), and `octflax.execution` holds the faster XLA:CPU choices the
Linen modules use.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from octflax.resample import avg_pool2, low_spatial_size, resolve_octave_axes, upsample2
from octflax.tensor import OctTensor, as_oct, split_channels

Array = jax.Array
Initializer = Callable[..., Array]
# ``conv(x, kernel, feature_group_count, precision, kernel_dilation) -> y``: a stride-1 SAME
# convolution; `conv` below, or one of `octflax.execution`'s.
ConvFn = Callable[..., Array]
PATHS = ("h2h", "h2l", "l2h", "l2l")


def oct_map(fn: Callable[[Array], Array], x: Any) -> OctTensor:
  """Applies ``fn`` to each part of ``x`` (an OctTensor or array), e.g. an activation."""
  return as_oct(x).map(fn)


def oct_relu(x: Any) -> OctTensor:
  """ReLU on each part."""
  return oct_map(jax.nn.relu, x)


def oct_add(x: Any, y: Any) -> OctTensor:
  """Part-wise sum ``OctTensor(x.high + y.high, x.low + y.low)``; both must have the same parts."""
  x, y = as_oct(x), as_oct(y)
  if (x.high is None) != (y.high is None) or (x.low is None) != (y.low is None):
    raise ValueError(
        "oct_add: both operands must have the same parts; got "
        f"(high={x.high_channels}, low={x.low_channels}) and (high={y.high_channels}, low={y.low_channels}) channels.")
  return OctTensor(
      high=None if x.high is None else x.high + y.high,
      low=None if x.low is None else x.low + y.low,
  )


def oct_max_pool(x: Any, window: int = 3, strides: int = 2, padding: str = "SAME") -> OctTensor:
  """Max pooling on each part with the same window, stride and padding (2-D, NHWC).

  With SAME padding and stride 2 the low part of the result stays at ceil(H'/2) of the
  high part's H', so the octave layout is preserved at any size.
  """
  return oct_map(lambda p: nn.max_pool(p, (window, window), (strides, strides), padding), x)


def global_avg_pool(x: Any, spatial_dims: int = 2) -> Array:
  """Spatial mean of each part, concatenated along channels: ``[N, C_h + C_l]``."""
  parts = [p for p in (as_oct(x).high, as_oct(x).low) if p is not None]
  axes = tuple(range(-1 - spatial_dims, -1))
  return jnp.concatenate([jnp.mean(p, axis=axes) for p in parts], axis=-1)


def batch_norm(x: Array, mean: Array, var: Array, scale: Array | None, bias: Array | None, epsilon: float,
               dtype: Any = None) -> Array:
  """``(x - mean) * rsqrt(var + epsilon) * scale + bias`` per channel, as `flax.linen.BatchNorm` normalises.

  The result has ``dtype``, or the promoted dtype of ``x``, ``scale`` and ``bias``.
  """
  multiplier = lax.rsqrt(var + epsilon)
  if scale is not None:
    multiplier = multiplier * scale
  y = (x - mean) * multiplier
  if bias is not None:
    y = y + bias
  return y.astype(dtype or jnp.result_type(x, *(v for v in (scale, bias) if v is not None)))


def running_average(average: Array, value: Array | Sequence[Array], momentum: float) -> Array:
  """``momentum * average + (1 - momentum) * value``: BatchNorm's update of its running statistics.

  ``value`` may also be given as its parts along the last axis (a list, joined in order): each
  part is scaled by ``1 - momentum`` before the join, so that XLA can fold the scaling into the
  computation of each part's statistic (``(sum / n) * (1 - momentum)`` as one multiply), as it
  does for a BatchNorm over that part alone, and so rounds each part as that BatchNorm does.
  """
  if isinstance(value, (list, tuple)):
    scaled = [(1 - momentum) * v for v in value]
    return momentum * average + (scaled[0] if len(scaled) == 1 else jnp.concatenate(scaled, axis=-1))
  return momentum * average + (1 - momentum) * value


def dimension_numbers(spatial_dims: int) -> lax.ConvDimensionNumbers:
  """Channels-last input and output, ``[*kernel_size, in, out]`` kernel (Flax's layout)."""
  lhs = (0, spatial_dims + 1) + tuple(range(1, spatial_dims + 1))
  rhs = (spatial_dims + 1, spatial_dims) + tuple(range(spatial_dims))
  return lax.ConvDimensionNumbers(lhs, rhs, lhs)


def same_padding(kernel_size: Sequence[int], kernel_dilation: Sequence[int]) -> list[tuple[int, int]]:
  """Symmetric SAME padding ``d (k - 1) / 2`` on each side of each axis (odd kernels)."""
  return [((k - 1) * d // 2,) * 2 for k, d in zip(kernel_size, kernel_dilation)]


def conv(x: Array, kernel: Array, feature_group_count: int = 1, precision: Any = None,
         kernel_dilation: Sequence[int] | None = None) -> Array:
  """Stride-1 SAME convolution, channels-last: exactly what `flax.linen.Conv` computes.

  ``y[n, p, o] = sum_{t, i} x[n, p + d * (t - (k - 1) / 2), g(o) * I + i] * kernel[t, i, o]``
  over the kernel taps t (per axis), with zero padding, I = in / groups input channels of
  the group g(o) of output channel o, and dilation d.

  Args:
    x: ``[N, *spatial, C_in]``.
    kernel: ``[*kernel_size, C_in / groups, C_out]`` with odd kernel sizes.
    feature_group_count: groups.
    precision: passed to `lax.conv_general_dilated`.
    kernel_dilation: per spatial axis (default 1).

  Returns:
    ``[N, *spatial, C_out]`` in the promoted dtype of ``x`` and ``kernel``.
  """
  spatial_dims = kernel.ndim - 2
  dilation = (1,) * spatial_dims if kernel_dilation is None else tuple(kernel_dilation)
  dtype = jnp.result_type(x, kernel)
  return lax.conv_general_dilated(
      x.astype(dtype), kernel.astype(dtype), window_strides=(1,) * spatial_dims,
      padding=same_padding(kernel.shape[:-2], dilation), rhs_dilation=dilation,
      dimension_numbers=dimension_numbers(spatial_dims),
      feature_group_count=feature_group_count, precision=precision)


# ----------------------------------------------------------------------------- parameters


def as_tuple(value: int | Sequence[int], rank: int, name: str) -> tuple[int, ...]:
  """``value`` repeated ``rank`` times (an int) or checked to have ``rank`` ints (a sequence)."""
  if isinstance(value, numbers.Integral) and not isinstance(value, bool):
    return (int(value),) * rank
  try:
    values = tuple(value)
  except TypeError:
    values = ()
  if len(values) != rank or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
    raise ValueError(
        f"{name} must be an int or {rank} ints (one per spatial axis of kernel_size), got {value!r}.")
  return tuple(int(v) for v in values)


def kernel_size_tuple(kernel_size: int | Sequence[int], spatial_dims: int = 2) -> tuple[int, ...]:
  """The kernel size per spatial axis; an int means ``spatial_dims`` (2) equal sizes.

  A sequence gives the rank: ``(k,)`` is 1-D, ``(k, k)`` 2-D, ``(k, k, k)`` 3-D. Sizes must be
  odd (SAME padding is (k-1)/2 on each side).
  """
  if isinstance(kernel_size, numbers.Integral):
    sizes = (int(kernel_size),) * spatial_dims
  else:
    sizes = as_tuple(kernel_size, len(tuple(kernel_size)), "kernel_size")
  if not sizes or any(k < 1 or k % 2 == 0 for k in sizes):
    raise ValueError(f"kernel_size must be odd (SAME padding is (k-1)/2 each side), got {kernel_size!r}.")
  return sizes


def is_depthwise(in_channels: int, features: int, feature_group_count: int) -> bool:
  """Depthwise: one group per channel, as many output as input channels (more than one)."""
  return feature_group_count == in_channels == features > 1


class PathParamShapes(NamedTuple):
  """Shapes of one path's parameters: ``kernel`` ``[*kernel_size, in / groups, out]``, ``bias`` or None."""

  kernel: tuple[int, ...]
  bias: tuple[int] | None


def oct_conv_param_shapes(
    kernel_size: Sequence[int],
    in_channels: int,
    features: int,
    alpha_in: float,
    alpha_out: float,
    feature_group_count: int = 1,
    use_bias: bool = True,
) -> dict[str, PathParamShapes]:
  """The parameters of an OctConv: which paths exist and the shapes of their kernels and biases.

  Path ``a2b`` reads the ``a`` input part (``C_in`` split at ``alpha_in`` by `split_channels`)
  and writes the ``b`` output part (``features`` split at ``alpha_out``); it exists when both
  have channels. Its kernel is ``[*kernel_size, c_a / groups, c_b]``. Depthwise
  (`is_depthwise`, ``alpha_in == alpha_out``) keeps only ``h2h`` and ``l2l``, each depthwise on
  its own part (``[*kernel_size, 1, c]``). Each output part carries one bias, on its direct path
  (``h2h`` / ``l2l``) or on the cross path when the direct one is absent. The kernel and bias
  sizes sum to the vanilla conv's for every alpha.

  Args:
    kernel_size: per spatial axis.
    in_channels: C_in, both input parts together.
    features: C_out, both output parts together.
    alpha_in, alpha_out: shares of low-frequency input and output channels.
    feature_group_count: groups, the same on every path.
    use_bias: whether the output parts carry a bias.

  Returns:
    ``{path: PathParamShapes}`` for the present paths, in the order h2h, h2l, l2h, l2l.

  Examples:
    >>> shapes = oct_conv_param_shapes((3, 3), 8, 16, 0.5, 0.5)
    >>> shapes["h2l"]
    PathParamShapes(kernel=(3, 3, 4, 8), bias=None)
    >>> shapes["l2l"].bias
    (8,)
  """
  kernel_size = tuple(kernel_size)
  in_high, in_low = split_channels(in_channels, alpha_in)
  out_high, out_low = split_channels(features, alpha_out)
  groups = feature_group_count
  if is_depthwise(in_channels, features, groups):
    if alpha_in != alpha_out:
      raise ValueError(
          "depthwise OctConv (feature_group_count == in channels == features) needs "
          f"alpha_in == alpha_out, got {alpha_in} and {alpha_out}.")
    kernels = {"h2h": (*kernel_size, 1, out_high), "l2l": (*kernel_size, 1, out_low)}
    kernels = {p: s for p, s in kernels.items() if s[-1]}
  else:
    kernels = {}
    for path, c_in, c_out in (("h2h", in_high, out_high), ("h2l", in_high, out_low),
                              ("l2h", in_low, out_high), ("l2l", in_low, out_low)):
      if c_in and c_out:
        if c_in % groups or c_out % groups:
          raise ValueError(
              f"feature_group_count={groups} must divide the channels of every path; path {path} "
              f"has {c_in} input and {c_out} output channels (alpha_in={alpha_in}, "
              f"alpha_out={alpha_out}, {in_channels} -> {features} channels).")
        kernels[path] = (*kernel_size, c_in // groups, c_out)
  bias_paths = set()
  if use_bias:
    bias_paths = {next((p for p in ("h2h", "l2h") if p in kernels), None),
                  next((p for p in ("l2l", "h2l") if p in kernels), None)} - {None}
  return {p: PathParamShapes(s, (s[-1],) if p in bias_paths else None) for p, s in kernels.items()}


def vanilla_kernel_shape(kernel_size: Sequence[int], in_channels: int, features: int,
                         feature_group_count: int = 1) -> tuple[int, ...]:
  """The kernel shape of the vanilla conv an OctConv replaces: ``[*kernel_size, C_in / groups, C_out]``."""
  return (*tuple(kernel_size), in_channels // feature_group_count, features)


def _block_slices(in_channels: int, features: int, alpha_in: float, alpha_out: float, feature_group_count: int
                  ) -> tuple[dict[str, slice], dict[str, slice]]:
  """The rows (of each input part, per group) and columns (of each output part) of the one kernel."""
  out_high = split_channels(features, alpha_out)[0]
  if is_depthwise(in_channels, features, feature_group_count):
    rows = {"h": slice(None), "l": slice(None)}  # [*k, 1, C]: each channel reads itself
  else:
    in_rows = split_channels(in_channels, alpha_in)[0] // feature_group_count
    rows = {"h": slice(0, in_rows), "l": slice(in_rows, None)}
  return rows, {"h": slice(0, out_high), "l": slice(out_high, None)}


def kernel_blocks(kernel: Array, bias: Array | None, in_channels: int, alpha_in: float, alpha_out: float,
                  feature_group_count: int = 1) -> tuple[dict[str, Array], dict[str, Array]]:
  """The paths' kernels and biases as blocks of an OctConv's one kernel and bias.

  An OctConv carries the parameters of the vanilla conv it replaces: ``kernel``
  ``[*kernel_size, C_in / groups, C_out]`` (`vanilla_kernel_shape`, `flax.linen.Conv`'s) and
  ``bias`` ``[C_out]``. Path ``a2b`` is the block of the rows of input part ``a`` (per group:
  the first ``C_in^H / groups`` rows are the high part's) and the columns of output part ``b``
  (the first ``C_out^H``): ``h2h = W[..., :C_in^H/g, :C_out^H]``, ``h2l = W[..., :C_in^H/g,
  C_out^H:]``, ``l2h = W[..., C_in^H/g:, :C_out^H]``, ``l2l = W[..., C_in^H/g:, C_out^H:]``. A
  depthwise kernel ``[*k, 1, C]`` splits by columns only (``h2h``, ``l2l``). Each output part's
  bias is ``bias[:C_out^H]`` / ``bias[C_out^H:]``, given to its direct path (or to the cross path
  where the direct one is absent), as `oct_conv_param_shapes` places it. At alpha 0 the only
  block, ``h2h``, is the whole kernel. `join_kernel_blocks` is the inverse.

  Args:
    kernel: ``[*kernel_size, C_in / groups, C_out]``.
    bias: ``[C_out]`` or None.
    in_channels: C_in (both input parts together).
    alpha_in, alpha_out: shares of low-frequency input and output channels.
    feature_group_count: groups.

  Returns:
    ``(kernels, biases)``: ``{path: block}`` for the present paths (`oct_conv_param_shapes`) and
    ``{path: bias}`` for the paths that carry one.

  Raises:
    ValueError: a kernel or bias whose shape is not the vanilla conv's.

  Examples:
    >>> kernels, _ = kernel_blocks(jnp.ones((3, 3, 8, 16)), None, 8, 0.5, 0.25)
    >>> {p: k.shape for p, k in kernels.items()}
    {'h2h': (3, 3, 4, 12), 'h2l': (3, 3, 4, 4), 'l2h': (3, 3, 4, 12), 'l2l': (3, 3, 4, 4)}
  """
  features = kernel.shape[-1]
  expected = vanilla_kernel_shape(kernel.shape[:-2], in_channels, features, feature_group_count)
  if tuple(kernel.shape) != expected:
    raise ValueError(f"an OctConv kernel for {in_channels} input channels in {feature_group_count} group(s) is "
                     f"[*kernel_size, {in_channels // feature_group_count}, C_out]; got {tuple(kernel.shape)}.")
  if bias is not None and tuple(bias.shape) != (features,):
    raise ValueError(f"an OctConv bias is [C_out] = ({features},); got {tuple(bias.shape)}.")
  shapes = oct_conv_param_shapes(kernel.shape[:-2], in_channels, features, alpha_in, alpha_out,
                                 feature_group_count, bias is not None)
  rows, cols = _block_slices(in_channels, features, alpha_in, alpha_out, feature_group_count)
  kernels = {p: kernel[..., rows[p[0]], cols[p[2]]] for p in shapes}
  biases = {p: bias[cols[p[2]]] for p, s in shapes.items() if s.bias is not None}
  return kernels, biases


def join_kernel_blocks(kernels: Mapping[str, Any], biases: Mapping[str, Any] | None = None
                       ) -> tuple[Any, Any | None]:
  """An OctConv's one kernel and bias from its paths' blocks: the inverse of `kernel_blocks`.

  Works on NumPy and jax arrays (what checkpoints of the four-kernel layout and PyTorch ports
  hold). The paths present say the layout: ``{'h2h', 'l2l'}`` alone is depthwise (blocks side by
  side); otherwise ``[[h2h, h2l], [l2h, l2l]]`` by (input rows, output columns).

  Args:
    kernels: ``{path: [*kernel_size, c_in / groups, c_out]}`` for the present paths.
    biases: ``{path: [c_out]}`` for the paths that carry the output parts' biases (or None).

  Returns:
    ``(kernel, bias)``; ``bias`` is None without biases.

  Examples:
    >>> k, b = join_kernel_blocks(*kernel_blocks(jnp.arange(48.0).reshape(1, 1, 6, 8), jnp.arange(8.0), 6, 0.5, 0.5))
    >>> k.shape, b.tolist()
    ((1, 1, 6, 8), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
  """
  unknown = set(kernels) - set(PATHS)
  if not kernels or unknown:
    raise ValueError(f"kernel blocks are named among {list(PATHS)} (at least one); got {sorted(kernels)}.")
  cat = jnp.concatenate if any(isinstance(k, jax.Array) for k in kernels.values()) else np.concatenate
  if set(kernels) == {"h2h", "l2l"}:  # only depthwise layers have the direct paths without the cross ones
    kernel = cat([kernels["h2h"], kernels["l2l"]], axis=-1)  # depthwise: the parts' channels side by side
  else:
    rows = [cat([kernels[p] for p in pair if p in kernels], axis=-1)
            for pair in (("h2h", "h2l"), ("l2h", "l2l")) if any(p in kernels for p in pair)]
    kernel = rows[0] if len(rows) == 1 else cat(rows, axis=-2)
  biases = dict(biases or {})
  if not biases:
    return kernel, None
  parts = [next((biases[p] for p in paths if p in biases), None) for paths in (("h2h", "l2h"), ("l2l", "h2l"))]
  return kernel, cat([b for b in parts if b is not None], axis=-1)


# ----------------------------------------------------------------------------- OctConv


def _groups(path: str, in_channels: int, kernel: Array) -> int:
  kernel_size, kernel_in, kernel_out = kernel.shape[:-2], kernel.shape[-2], kernel.shape[-1]
  if any(k % 2 == 0 for k in kernel_size):
    raise ValueError(
        f"{path}: kernel_size must be odd (SAME padding is (k-1)/2 each side), got {tuple(kernel_size)}.")
  if kernel_in < 1 or in_channels % kernel_in:
    raise ValueError(
        f"{path}: the kernel reads {kernel_in} channels per group but the input part has "
        f"{in_channels} channels; in_channels must be a multiple of the kernel's input dim.")
  groups = in_channels // kernel_in
  if kernel_out % groups:
    raise ValueError(f"{path}: {groups} groups do not divide the path's {kernel_out} output channels.")
  return groups


def check_octave_input(x: OctTensor, spatial_dims: int, octave_axes: tuple[int, ...], fn: str) -> None:
  """Raises ValueError unless both parts are ``[N, *spatial, C]`` with the low part at the low size."""
  for name, part in (("high", x.high), ("low", x.low)):
    if part is not None and part.ndim != spatial_dims + 2:
      raise ValueError(
          f"{fn}: the input's {name} part has shape {tuple(part.shape)} (rank {part.ndim}), but the kernel "
          f"has {spatial_dims} spatial axes (kernel_size of length {spatial_dims}): expected rank "
          f"{spatial_dims + 2}, [N, {spatial_dims} spatial axes, C].")
  if x.high is not None and x.low is not None:
    expected = low_spatial_size(*x.high.shape[1:-1], octave_axes=octave_axes)
    if tuple(x.low.shape[1:-1]) != expected:
      raise ValueError(
          f"{fn}: the low part must have spatial size {'x'.join(map(str, expected))} (ceil(n/2) on octave "
          f"axes {octave_axes}) for the {'x'.join(map(str, x.high.shape[1:-1]))} high part, got "
          f"{'x'.join(map(str, x.low.shape[1:-1]))}.")


def stride_tuple(strides: int | Sequence[int], spatial_dims: int, octave_axes: tuple[int, ...]) -> tuple[int, ...]:
  """The stride per spatial axis, each 1 or 2 (checked, naming the axis and whether it is an octave axis)."""
  values = as_tuple(strides, spatial_dims, "strides")
  for i, s in enumerate(values):
    if s not in (1, 2):
      where = "an octave axis" if i in octave_axes else "a spatial axis"
      raise ValueError(
          f"strides={strides!r}: stride {s} on {where} (spatial axis {i}); allowed are 1 and 2 (stride 2 "
          "is an average pool by 2 before a stride-1 conv).")
  return values


class _Geometry(NamedTuple):
  """What `oct_conv` and `oct_conv_transpose` read off their arguments, checked."""

  spatial_dims: int
  octave_axes: tuple[int, ...]
  strides: tuple[int, ...]
  dilation: tuple[int, ...]


def _check_call(fn: str, x: OctTensor, kernels: Mapping[str, Array], strides: Any, octave_axes: Any,
                kernel_dilation: Any) -> _Geometry:
  """Checks the path names, kernel ranks, strides, octave axes, dilation and parts of one call."""
  unknown = set(kernels) - set(PATHS)
  if unknown or not kernels:
    raise ValueError(f"{fn}: kernels: path names must be among {list(PATHS)} (at least one), got {sorted(kernels)}.")
  ranks = {k.ndim for k in kernels.values()}
  if len(ranks) != 1:
    raise ValueError(f"{fn}: kernels: every path kernel needs the same rank, got shapes "
                     f"{[k.shape for k in kernels.values()]}.")
  spatial_dims = ranks.pop() - 2
  axes = resolve_octave_axes(octave_axes, spatial_dims)
  stride = stride_tuple(strides, spatial_dims, axes)
  dilation = as_tuple(kernel_dilation, spatial_dims, "kernel_dilation")
  if any(d < 1 for d in dilation):
    raise ValueError(f"kernel_dilation must be positive, got {kernel_dilation!r}.")
  for path in kernels:
    if (x.high if path[0] == "h" else x.low) is None:
      raise ValueError(f"kernels has path '{path}' but the input has no {'high' if path[0] == 'h' else 'low'} part.")
  check_octave_input(x, spatial_dims, axes, fn)
  return _Geometry(spatial_dims, axes, stride, dilation)


def _pool_on(x: Array | None, axes: Sequence[int], spatial_dims: int, method: str) -> Array | None:
  return x if x is None or not axes else avg_pool2(x, tuple(axes), spatial_dims=spatial_dims, method=method)


class PathPlan(NamedTuple):
  """One `oct_conv` call laid out as convolutions: what every way of executing it shares.

  Attributes:
    inputs: path -> its input, pooled to the path's output resolution (``l2h`` on octave
      axes at stride 1: at the low resolution, upsampled after its convolution).
    groups: path -> its feature group count (its input channels over its kernel's input dim).
    upsample_axes: the axes on which the ``l2h`` output is upsampled (`upsample_l2h`).
    high_size: the spatial size of the high output (None without a high input).
    spatial_dims, dilation: of the convolutions.
    upsample_method: `upsample2`'s ``method`` for `upsample_l2h`.
  """

  inputs: dict[str, Array]
  groups: dict[str, int]
  upsample_axes: tuple[int, ...]
  high_size: tuple[int, ...] | None
  spatial_dims: int
  dilation: tuple[int, ...]
  upsample_method: str = "broadcast"

  def upsample_l2h(self, y: Array) -> Array:
    """U: the ``l2h`` convolution's output brought to the high output's size."""
    if not self.upsample_axes:
      return y
    return upsample2(y, self.high_size, self.upsample_axes, spatial_dims=self.spatial_dims,
                     method=self.upsample_method)


def plan_paths(x: OctTensor, kernels: Mapping[str, Array], *, strides: Any = 1, octave_axes: Any = None,
               kernel_dilation: Any = 1, pool_method: str = "reshape", upsample_method: str = "broadcast",
               fn: str = "oct_conv") -> PathPlan:
  """Checks one `oct_conv` call and pools each path's input to its output resolution (stride 1 or 2).

  The pooling of `oct_conv`'s equations lives here, once, for every way of executing them
  (`oct_conv` runs each path as its own convolution; `octflax.execution` has forms that run
  several paths as one). ``pool_method`` is `avg_pool2`'s ``method``, ``upsample_method``
  `upsample2`'s.
  """
  spatial_dims, axes, stride, dilation = _check_call(fn, x, kernels, strides, octave_axes, kernel_dilation)
  stride2 = tuple(i for i, s in enumerate(stride) if s == 2)
  high = _pool_on(x.high, stride2, spatial_dims, pool_method)
  inputs = {"h2h": high, "l2l": _pool_on(x.low, stride2, spatial_dims, pool_method),
            "l2h": _pool_on(x.low, [i for i in stride2 if i not in axes], spatial_dims, pool_method)}
  if "h2l" in kernels:
    inputs["h2l"] = _pool_on(high, axes, spatial_dims, pool_method)
  inputs = {p: inputs[p] for p in PATHS if p in kernels}
  groups = {p: _groups(p, inputs[p].shape[-1], k) for p, k in kernels.items()}
  outs = {p: k.shape[-1] for p, k in kernels.items()}
  for a, b in (("h2h", "l2h"), ("l2l", "h2l")):
    if a in outs and b in outs and outs[a] != outs[b]:
      raise ValueError(f"paths {a} and {b} write the same output part but have {outs[a]} and {outs[b]} output channels.")
  return PathPlan(inputs, groups, tuple(i for i in axes if i not in stride2),
                  None if high is None else tuple(high.shape[1:-1]), spatial_dims, dilation, upsample_method)


def with_biases(y: Array | None, paths: Sequence[str], biases: Mapping[str, Array]) -> Array | None:
  """``y`` plus the biases of ``paths`` that have one (None stays None)."""
  if y is not None:
    for p in paths:
      if p in biases:
        y = y + biases[p]
  return y


def is_strided(x: OctTensor, kernels: Mapping[str, Array], strides: Any, octave_axes: Any,
               kernel_dilation: Any) -> bool:
  """Whether an `oct_conv` call (checked) has stride 2 on some axis."""
  return 2 in _check_call("oct_conv", x, kernels, strides, octave_axes, kernel_dilation).strides


def strided_vanilla_conv(x: OctTensor, kernels: Mapping[str, Array], biases: Mapping[str, Array], *,
                         strides: Any, octave_axes: Any, kernel_dilation: Any, precision: Any) -> OctTensor:
  """`oct_conv` with ``pool_stride=False``: a strided convolution of a vanilla layer (``h2h`` alone)."""
  spatial_dims, _, stride, dilation = _check_call("oct_conv", x, kernels, strides, octave_axes, kernel_dilation)
  if set(kernels) != {"h2h"}:
    raise ValueError(
        "pool_stride=False (a strided conv) is only defined for a vanilla layer "
        f"(alpha_in = alpha_out = 0, path h2h alone); got paths {sorted(kernels)}.")
  kernel = kernels["h2h"]
  dtype = jnp.result_type(x.high, kernel)
  y = lax.conv_general_dilated(
      x.high.astype(dtype), kernel.astype(dtype), window_strides=stride,
      padding=same_padding(kernel.shape[:-2], dilation), rhs_dilation=dilation,
      dimension_numbers=dimension_numbers(spatial_dims),
      feature_group_count=_groups("h2h", x.high.shape[-1], kernel), precision=precision)
  return OctTensor(high=with_biases(y, ["h2h"], biases), low=None)


def oct_conv(
    x: Any,
    kernels: Mapping[str, Array],
    biases: Mapping[str, Array] | None = None,
    *,
    strides: int | Sequence[int] = 1,
    octave_axes: Sequence[int] | None = None,
    kernel_dilation: int | Sequence[int] = 1,
    precision: Any = None,
    pool_stride: bool = True,
    conv_fn: ConvFn = conv,
) -> OctTensor:
  """Octave convolution of ``x`` with the path kernels ``kernels``, in any number of spatial axes.

  With P_A = average pool by 2 on the axes A (`avg_pool2`), U_A = nearest upsample by 2 on
  the axes A, cropped to the high size (`upsample2`), f a stride-1 SAME convolution, O the
  octave axes and S the axes with stride 2::

    Y^H = f(P_S(X^H); W^hh) + U_{O-S}(f(P_{S-O}(X^L); W^lh))
    Y^L = f(P_S(X^L); W^ll) + f(P_O(P_S(X^H)); W^hl)

  In 2-D with every axis an octave axis this is the paper's OctConv::

    stride 1:  Y^H = f(X^H; W^hh) + U(f(X^L; W^lh))
               Y^L = f(X^L; W^ll) + f(P(X^H); W^hl)
    stride 2:  Y^H = f(P(X^H); W^hh) + f(X^L; W^lh)
               Y^L = f(P(X^L); W^ll) + f(P(P(X^H)); W^hl)

  A path absent from ``kernels`` contributes nothing. Each path's group count is its
  input channels divided by its kernel's input dimension. This function runs each path as a
  convolution of its own; `octflax.execution.oct_conv` (what the modules call) computes the
  same equations in the form chosen for the backend.

  Args:
    x: an OctTensor (or a plain array, meaning ``OctTensor(x, None)``) of parts
      ``[N, *spatial, C]``.
    kernels: ``{'h2h', 'h2l', 'l2h', 'l2l'} -> [*kernel_size, in / groups, out]``; the number
      of spatial axes is ``kernel.ndim - 2``.
    biases: optional ``path -> [out]``, added to that path's output part.
    strides: 1 or 2, or one of them per spatial axis.
    octave_axes: the spatial axes (0-based) on which the low part has half the size; None = all.
    kernel_dilation: per spatial axis (or one int), on every path, as in `flax.linen.Conv`.
    precision: passed to the convolutions.
    pool_stride: True (the OctConv semantics): stride 2 average-pools, then convolves
      at stride 1. False runs a strided convolution with symmetric padding instead, as
      vanilla networks such as torchvision's ResNets do; only for a vanilla layer (the
      ``h2h`` path alone).
    conv_fn: the stride-1 convolution every path runs (`conv` by default, what
      `flax.linen.Conv` computes); `octflax.execution` has backend-specific ones.

  Returns:
    The OctTensor ``(Y^H, Y^L)``; a part is None when no path produces it.
  """
  x = as_oct(x)
  biases = dict(biases or {})
  if not pool_stride and is_strided(x, kernels, strides, octave_axes, kernel_dilation):
    return strided_vanilla_conv(x, kernels, biases, strides=strides, octave_axes=octave_axes,
                                kernel_dilation=kernel_dilation, precision=precision)
  plan = plan_paths(x, kernels, strides=strides, octave_axes=octave_axes, kernel_dilation=kernel_dilation)

  def term(path: str) -> Array:
    y = conv_fn(plan.inputs[path], kernels[path], plan.groups[path], precision, plan.dilation)
    return plan.upsample_l2h(y) if path == "l2h" else y

  def part(direct: str, cross: str) -> Array | None:
    terms = [term(p) for p in (direct, cross) if p in kernels]
    y = None if not terms else terms[0] if len(terms) == 1 else terms[0] + terms[1]
    return with_biases(y, (direct, cross), biases)

  return OctTensor(high=part("h2h", "l2h"), low=part("l2l", "h2l"))


# ----------------------------------------------------------------------------- OctConvTranspose


def conv_transpose(x: Array, kernel: Array, strides: Sequence[int], precision: Any = None,
                   kernel_dilation: Sequence[int] | None = None) -> Array:
  """SAME transposed convolution, channels-last: exactly what `flax.linen.ConvTranspose` computes.

  ``lax.conv_transpose`` with SAME padding: the output has ``strides[i] * n_i`` positions on
  axis i (zeros inserted between the inputs, then a SAME convolution with the kernel).

  Args:
    x: ``[N, *spatial, C_in]``.
    kernel: ``[*kernel_size, C_in, C_out]``.
    strides: per spatial axis.
    precision: passed to `lax.conv_transpose`.
    kernel_dilation: per spatial axis (default 1).

  Returns:
    ``[N, *(s * n), C_out]`` in the promoted dtype of ``x`` and ``kernel``.
  """
  spatial_dims = kernel.ndim - 2
  dilation = (1,) * spatial_dims if kernel_dilation is None else tuple(kernel_dilation)
  dtype = jnp.result_type(x, kernel)
  return lax.conv_transpose(x.astype(dtype), kernel.astype(dtype), tuple(strides), "SAME",
                            rhs_dilation=dilation, precision=precision)


def _crop(x: Array, size: Sequence[int]) -> Array:
  """The first ``size[i]`` positions of each spatial axis."""
  if tuple(x.shape[1:-1]) == tuple(size):
    return x
  return x[(slice(None), *(slice(0, n) for n in size), slice(None))]


def oct_conv_transpose(
    x: Any,
    kernels: Mapping[str, Array],
    biases: Mapping[str, Array] | None = None,
    *,
    strides: int | Sequence[int] = 1,
    octave_axes: Sequence[int] | None = None,
    kernel_dilation: int | Sequence[int] = 1,
    output_size: Sequence[int] | None = None,
    precision: Any = None,
) -> OctTensor:
  """Transposed octave convolution (docs/design.md, "Transposed OctConv"), any number of spatial axes.

  With T a SAME transposed convolution of stride s (`conv_transpose`, ``s * n`` outputs per
  input size n), P = average pool by 2 and U = nearest upsample by 2 on the octave axes, and
  C_A = cropping to the size of output part A::

    Y^H = C_H(T(X^H; W^hh)) + C_H(U(T(X^L; W^lh)))
    Y^L = C_L(T(X^L; W^ll)) + C_L(T(P(X^H); W^hl))

  Each path is the transposed conv of its input part with the pooling (h2l) and upsampling
  (l2h) of an OctConv at stride 1. The high output has ``s * n`` positions per axis of input
  high size n (``output_size`` when given, ``s * n - s + 1 <= output_size <= s * n``), and the
  low output ``ceil`` of half of that on the octave axes (the high size elsewhere): at stride 2
  the high part is twice the input's and the low part half of that. Without a high input, n is
  twice the low input's size on the octave axes. An encoder's stride-2 OctConv on an odd size
  n and a decoder's stride-2 transposed one with ``output_size`` n restore n exactly.

  Args:
    x: an OctTensor (or a plain array) of parts ``[N, *spatial, C]``.
    kernels: ``{'h2h', 'h2l', 'l2h', 'l2l'} -> [*kernel_size, in, out]`` (no groups, as
      `flax.linen.ConvTranspose`).
    biases: optional ``path -> [out]``, added to that path's output part.
    strides: 1 or 2, or one per spatial axis.
    octave_axes: the spatial axes on which the low part has half the size; None = all.
    kernel_dilation: per spatial axis (or one int), as in `flax.linen.ConvTranspose`.
    output_size: the high output's spatial size (every axis), default ``s * n``.
    precision: passed to `lax.conv_transpose`.

  Returns:
    The OctTensor ``(Y^H, Y^L)``.
  """
  x = as_oct(x)
  spatial_dims, axes, stride, dilation = _check_call("oct_conv_transpose", x, kernels, strides, octave_axes,
                                                     kernel_dilation)
  for path, kernel in kernels.items():
    source = x.high if path[0] == "h" else x.low
    if any(k % 2 == 0 for k in kernel.shape[:-2]):
      raise ValueError(f"{path}: kernel_size must be odd, got {tuple(kernel.shape[:-2])}.")
    if kernel.shape[-2] != source.shape[-1]:
      raise ValueError(
          f"{path}: the kernel reads {kernel.shape[-2]} channels but the input part has {source.shape[-1]} "
          "(in_channels must equal the kernel's input dim: transposed convs have no groups).")
  if x.high is not None:
    in_high = tuple(x.high.shape[1:-1])
  else:
    in_high = tuple(2 * n if i in axes else n for i, n in enumerate(x.low.shape[1:-1]))
  full = tuple(s * n for s, n in zip(stride, in_high))
  if output_size is None:
    high_size = full
  else:
    high_size = as_tuple(output_size, spatial_dims, "output_size")
    if not all(f - s + 1 <= t <= f for t, f, s in zip(high_size, full, stride)):
      allowed = " x ".join(f"{f - s + 1}..{f}" if s > 1 else str(f) for f, s in zip(full, stride))
      raise ValueError(
          f"output_size={tuple(output_size)!r}: a stride-{stride} transposed OctConv of a "
          f"{'x'.join(map(str, in_high))} high part gives {allowed}.")
  low_size = low_spatial_size(*high_size, octave_axes=axes)
  biases = dict(biases or {})
  for a, b in (("h2h", "l2h"), ("l2l", "h2l")):
    if a in kernels and b in kernels and kernels[a].shape[-1] != kernels[b].shape[-1]:
      raise ValueError(f"paths {a} and {b} write the same output part but have different output channels.")

  def t(inp: Array, path: str) -> Array:
    return conv_transpose(inp, kernels[path], stride, precision, dilation)

  terms_high, terms_low = [], []
  if "h2h" in kernels:
    terms_high.append(_crop(t(x.high, "h2h"), high_size))
  if "l2h" in kernels:
    terms_high.append(_crop(upsample2(t(x.low, "l2h"), None, axes, spatial_dims=spatial_dims), high_size))
  if "l2l" in kernels:
    terms_low.append(_crop(t(x.low, "l2l"), low_size))
  if "h2l" in kernels:
    terms_low.append(_crop(t(avg_pool2(x.high, axes, spatial_dims=spatial_dims), "h2l"), low_size))

  def total(terms: list[Array], paths: tuple[str, str]) -> Array | None:
    if not terms:
      return None
    y = terms[0] if len(terms) == 1 else terms[0] + terms[1]
    for p in paths:
      if p in biases:
        y = y + biases[p]
    return y

  return OctTensor(high=total(terms_high, ("h2h", "l2h")), low=total(terms_low, ("l2l", "h2l")))


__all__ = [
    "PATHS", "PathParamShapes", "PathPlan", "batch_norm", "conv", "conv_transpose", "global_avg_pool", "is_depthwise",
    "oct_add", "oct_conv", "oct_conv_param_shapes", "oct_conv_transpose", "oct_map", "oct_max_pool", "oct_relu", "kernel_blocks", "join_kernel_blocks",
    "is_strided", "plan_paths", "running_average", "strided_vanilla_conv", "with_biases",
    "vanilla_kernel_shape",
]
