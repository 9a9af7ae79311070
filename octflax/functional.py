"""Pure functions on octave feature maps: pooling, upsampling, per-part ops and OctConv itself.

Every function takes arrays in NHWC layout (any number of leading batch dimensions for
the pooling helpers) or `OctTensor`s, and is a pure function usable under `jax.jit`,
`jax.grad` and `jax.vmap`.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from octflax.tensor import OctTensor, as_oct, low_spatial_size

Array = jax.Array
PATHS = ("h2h", "h2l", "l2h", "l2l")


def avg_pool2(x: Array) -> Array:
  """2x2 average pooling, stride 2, ceil mode, averaging only pixels inside the map.

  ``y[i, j] = mean(x[2i:2i+2, 2j:2j+2])`` over the pixels that exist, so an H x W map
  becomes ceil(H/2) x ceil(W/2); at odd sizes the last row/column averages 2 (or 1)
  pixels instead of reading padding. For even sizes this is exactly the official
  2x2 average pool.

  Args:
    x: ``[..., H, W, C]``.

  Returns:
    ``[..., ceil(H/2), ceil(W/2), C]``, same dtype (float32 for integer input).

  Examples:
    >>> avg_pool2(jnp.arange(9.).reshape(1, 3, 3, 1))[0, ..., 0]
    Array([[2. , 3.5],
           [6.5, 8. ]], dtype=float32)
  """
  if not jnp.issubdtype(x.dtype, jnp.inexact):
    x = x.astype(jnp.float32)  # an average of integers is not an integer
  *batch, height, width, channels = x.shape
  out_h, out_w = low_spatial_size(height, width)
  pad_h, pad_w = 2 * out_h - height, 2 * out_w - width
  if pad_h or pad_w:
    x = jnp.pad(x, [(0, 0)] * len(batch) + [(0, pad_h), (0, pad_w), (0, 0)])
  # A reshape and a sum, which XLA fuses into one loop, rather than a generic window op.
  total = x.reshape(*batch, out_h, 2, out_w, 2, channels).sum(axis=(-4, -2))
  if not (pad_h or pad_w):
    return total * jnp.asarray(0.25, x.dtype)
  rows = np.full(out_h, 2.0)
  cols = np.full(out_w, 2.0)
  rows[-1] -= pad_h
  cols[-1] -= pad_w
  inverse_count = (1.0 / np.outer(rows, cols))[:, :, None]
  return total * jnp.asarray(inverse_count, x.dtype)


def upsample2(x: Array, size: Sequence[int] | None = None) -> Array:
  """2x nearest-neighbour upsampling, cropped to ``size`` (H, W) when given.

  ``y[i, j] = x[i // 2, j // 2]``. Cropping makes odd high-part sizes work: a
  ceil(H/2) map upsamples to H x W.

  Args:
    x: ``[..., h, w, C]``.
    size: target ``(H, W)`` with ``2h - 1 <= H <= 2h`` (likewise W); default ``(2h, 2w)``.

  Returns:
    ``[..., H, W, C]``.
  """
  *batch, height, width, channels = x.shape
  target = (2 * height, 2 * width) if size is None else tuple(int(s) for s in size)
  if not (2 * height - 1 <= target[0] <= 2 * height and 2 * width - 1 <= target[1] <= 2 * width):
    raise ValueError(
        f"upsample2: cannot upsample a {height}x{width} map to {target[0]}x{target[1]}; "
        f"allowed target sizes are {2 * height - 1}..{2 * height} x {2 * width - 1}..{2 * width}.")
  # Broadcast + reshape: no gather, no resize kernel; XLA fuses it into the consumer.
  y = jnp.broadcast_to(x[..., :, None, :, None, :], (*batch, height, 2, width, 2, channels))
  y = y.reshape(*batch, 2 * height, 2 * width, channels)
  if target != (2 * height, 2 * width):
    y = y[..., : target[0], : target[1], :]
  return y


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
  """Max pooling on each part with the same window, stride and padding.

  With SAME padding and stride 2 the low part of the result stays at ceil(H'/2) of the
  high part's H', so the octave layout is preserved at any size.
  """
  from flax import linen as nn

  return oct_map(lambda p: nn.max_pool(p, (window, window), (strides, strides), padding), x)


def global_avg_pool(x: Any) -> Array:
  """Spatial mean of each part, concatenated along channels: ``[N, C_h + C_l]``."""
  parts = [p for p in (as_oct(x).high, as_oct(x).low) if p is not None]
  return jnp.concatenate([jnp.mean(p, axis=(-3, -2)) for p in parts], axis=-1)


# Channel counts XLA:CPU's convolutions are padded to (see `conv2d`); 1 turns padding off.
_CPU_CHANNEL_MULTIPLE = contextvars.ContextVar("octflax_cpu_channel_multiple", default=8)


@contextlib.contextmanager
def cpu_channel_multiple(multiple: int) -> Iterator[None]:
  """Sets the channel multiple `conv2d` pads to on the CPU backend, while tracing inside.

  The padding changes the shapes XLA sees, never the result. ``octflax.cost`` traces with
  ``cpu_channel_multiple(1)`` so that it counts each layer's own MACs; benchmarks use it to
  time both forms in one run. It applies to functions traced inside the block (a function
  jitted before keeps its compiled form).

  Args:
    multiple: a positive integer; 1 means no padding.
  """
  if not isinstance(multiple, (int, np.integer)) or multiple < 1:
    raise ValueError(f"cpu_channel_multiple: multiple must be a positive integer, got {multiple!r}.")
  token = _CPU_CHANNEL_MULTIPLE.set(int(multiple))
  try:
    yield
  finally:
    _CPU_CHANNEL_MULTIPLE.reset(token)


def _padded_channels(channels: int, multiple: int) -> int:
  """``channels`` rounded up to ``multiple``; counts up to ``multiple`` stay (padding them measured slower)."""
  return channels if channels <= multiple else -(-channels // multiple) * multiple


def conv2d(x: Array, kernel: Array, feature_group_count: int = 1, precision: Any = None) -> Array:
  """Stride-1 SAME convolution, NHWC input, HWIO kernel: what `flax.linen.Conv` computes."""
  dtype = jnp.result_type(x, kernel)
  if kernel.shape[:2] == (1, 1) and feature_group_count == 1:
    # A 1x1 convolution is a matrix product over the channel axis. XLA:CPU runs it as a
    # dot much faster than as a convolution: 0.37-0.83x the time for ResNet-50's 1x1
    # shapes at batch 8, 0.58-0.91x at batch 1 (experiments/conv1x1_dot.py); Oct-ResNet-50 at
    # alpha 0 went from 448 to 351 ms (batch 8) and from 75 to 52 ms (batch 1) between two
    # idle runs (docs/benchmarks.md). NHWC keeps it transpose-free.
    return lax.dot_general(x.astype(dtype), kernel[0, 0].astype(dtype),
                           (((x.ndim - 1,), (0,)), ((), ())), precision=precision)
  c_in, c_out = kernel.shape[2:]
  pad_in = pad_out = 0
  if feature_group_count == 1 and jax.default_backend() == "cpu":
    # XLA:CPU's convolution kernels take a slow path when a channel count is not a multiple
    # of 8: a 3x3 14->14 train step took 1.5-2x the time of 16->16, 28->28 1.5x that of
    # 32->32. Zero channels up to the multiple cost less than they save: CIFAR Oct-ResNet-20
    # at alpha .125 (14/2, 28/4 and 56/8 channels), train step at batch 128, 0.75x the time;
    # no change at the other alphas (experiments/results/cpu/, docs/benchmarks.md).
    multiple = _CPU_CHANNEL_MULTIPLE.get()
    pad_in, pad_out = _padded_channels(c_in, multiple) - c_in, _padded_channels(c_out, multiple) - c_out
  if pad_in:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad_in)])
  if pad_in or pad_out:
    kernel = jnp.pad(kernel, ((0, 0), (0, 0), (0, pad_in), (0, pad_out)))
  y = lax.conv_general_dilated(
      x.astype(dtype), kernel.astype(dtype), window_strides=(1, 1), padding="SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=feature_group_count, precision=precision)
  return y[..., :c_out] if pad_out else y


def _groups(path: str, in_channels: int, kernel: Array) -> int:
  kh, kw, kernel_in, kernel_out = kernel.shape
  if kh % 2 == 0 or kw % 2 == 0:
    raise ValueError(f"{path}: kernel_size must be odd (SAME padding is (k-1)/2 each side), got {kh}x{kw}.")
  if kernel_in < 1 or in_channels % kernel_in:
    raise ValueError(
        f"{path}: the kernel reads {kernel_in} channels per group but the input part has "
        f"{in_channels} channels; in_channels must be a multiple of the kernel's input dim.")
  groups = in_channels // kernel_in
  if kernel_out % groups:
    raise ValueError(f"{path}: {groups} groups do not divide the path's {kernel_out} output channels.")
  return groups


def oct_conv(
    x: Any,
    kernels: Mapping[str, Array],
    biases: Mapping[str, Array] | None = None,
    *,
    strides: int = 1,
    precision: Any = None,
    fuse: bool = False,
    pool_stride: bool = True,
) -> OctTensor:
  """Octave convolution of ``x`` with the path kernels ``kernels``.

  With P = 2x2 average pool (`avg_pool2`), U = 2x nearest upsample (`upsample2`) and f a
  stride-1 SAME convolution::

    stride 1:  Y^H = f(X^H; W^hh) + U(f(X^L; W^lh))
               Y^L = f(X^L; W^ll) + f(P(X^H); W^hl)
    stride 2:  Y^H = f(P(X^H); W^hh) + f(X^L; W^lh)
               Y^L = f(P(X^L); W^ll) + f(P(P(X^H)); W^hl)

  A path absent from ``kernels`` contributes nothing. Each path's group count is its
  input channels divided by its kernel's input dimension.

  Args:
    x: an OctTensor (or a plain array, meaning ``OctTensor(x, None)``).
    kernels: ``{'h2h', 'h2l', 'l2h', 'l2l'} -> [kh, kw, in / groups, out]`` (HWIO).
    biases: optional ``path -> [out]``, added to that path's output part.
    strides: 1 or 2.
    precision: passed to `lax.conv_general_dilated`.
    fuse: execute paths that share an output resolution as one convolution over
      concatenated inputs (same result, fewer and larger kernels). Off by default:
      on XLA:CPU the concatenation costs more than the saved kernel launch
      (Oct-ResNet-50, batch 8, alpha .5: 0.70 of alpha 0's time fused, 0.60 unfused,
      experiments/results/cpu/).
    pool_stride: True (the OctConv semantics): stride 2 average-pools, then convolves
      at stride 1. False runs a strided convolution with symmetric padding instead, as
      vanilla networks such as torchvision's ResNets do; only for a vanilla layer (the
      ``h2h`` path alone).

  Returns:
    The OctTensor ``(Y^H, Y^L)``; a part is None when no path produces it.
  """
  x = as_oct(x)
  if strides not in (1, 2):
    raise ValueError(f"strides must be 1 or 2 (stride 2 is a 2x2 average pool before a stride-1 conv), got {strides!r}.")
  unknown = set(kernels) - set(PATHS)
  if unknown:
    raise ValueError(f"kernels: unknown path names {sorted(unknown)}; allowed are {list(PATHS)}.")
  for path in kernels:
    source = x.high if path[0] == "h" else x.low
    if source is None:
      raise ValueError(f"kernels has path '{path}' but the input has no {'high' if path[0] == 'h' else 'low'} part.")
  if x.high is not None and x.low is not None:
    expected = low_spatial_size(*x.high.shape[-3:-1])
    if tuple(x.low.shape[-3:-1]) != expected:
      raise ValueError(
          f"the low part must be ceil(H/2) x ceil(W/2) = {expected[0]}x{expected[1]} of the "
          f"{x.high.shape[-3]}x{x.high.shape[-2]} high part, got {x.low.shape[-3]}x{x.low.shape[-2]}.")
  biases = dict(biases or {})
  if strides == 2 and not pool_stride:
    if set(kernels) != {"h2h"}:
      raise ValueError(
          "pool_stride=False (a strided conv) is only defined for a vanilla layer "
          f"(alpha_in = alpha_out = 0, path h2h alone); got paths {sorted(kernels)}.")
    kernel = kernels["h2h"]
    dtype = jnp.result_type(x.high, kernel)
    y = lax.conv_general_dilated(
        x.high.astype(dtype), kernel.astype(dtype), window_strides=(2, 2),
        padding=[((k - 1) // 2, (k - 1) // 2) for k in kernel.shape[:2]],
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=_groups("h2h", x.high.shape[-1], kernel), precision=precision)
    return OctTensor(high=y + biases["h2h"] if "h2h" in biases else y, low=None)

  high, low = x.high, x.low
  # Inputs of each path, already at the resolution of the path's output.
  if strides == 2:
    high = None if high is None else avg_pool2(high)
    inputs = {"h2h": high, "l2h": low, "l2l": None if low is None else avg_pool2(low)}
  else:
    inputs = {"h2h": high, "l2h": low, "l2l": low}
  if "h2l" in kernels:
    inputs["h2l"] = avg_pool2(high)

  groups = {p: _groups(p, inputs[p].shape[-1], k) for p, k in kernels.items()}
  outs = {p: k.shape[-1] for p, k in kernels.items()}
  for a, b in (("h2h", "l2h"), ("l2l", "h2l")):
    if a in outs and b in outs and outs[a] != outs[b]:
      raise ValueError(f"paths {a} and {b} write the same output part but have {outs[a]} and {outs[b]} output channels.")

  def part(direct: str, cross: str) -> Array | None:
    """Sum of the two paths writing one output part (direct: same input resolution)."""
    present = [p for p in (direct, cross) if p in kernels]
    if not present:
      return None
    # Paths whose inputs have the same size reduce to one conv over the concatenated
    # input channels: one larger op instead of two small ones and an add (opt-in, see `fuse`).
    same_size = len(present) == 2 and inputs[direct].shape[-3:-1] == inputs[cross].shape[-3:-1]
    if fuse and same_size and groups[direct] == groups[cross] == 1:
      y = conv2d(jnp.concatenate([inputs[p] for p in present], axis=-1),
                 jnp.concatenate([kernels[p] for p in present], axis=2), 1, precision)
    else:
      y = None
      for p in present:
        term = conv2d(inputs[p], kernels[p], groups[p], precision)
        if y is not None and term.shape[-3:-1] != y.shape[-3:-1]:
          term = upsample2(term, y.shape[-3:-1])
        y = term if y is None else y + term
    for p in present:
      if p in biases:
        y = y + biases[p]
    return y

  y_high = part("h2h", "l2h")
  if y_high is not None and "h2h" not in kernels and strides == 1:
    # Only L->H: the output has the input's high size, or twice the low size without one.
    y_high = upsample2(y_high, None if x.high is None else x.high.shape[-3:-1])
  return OctTensor(high=y_high, low=part("l2l", "h2l"))
