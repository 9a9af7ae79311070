"""The octave size rule and the two resamplings between the parts: pooling and upsampling.

The low part of an octave feature map has ``ceil(n / 2)`` of the high part's size ``n`` on
each *octave axis* and the same size on the other spatial axes. `avg_pool2` maps a high-size
map to the low size (ceil mode, averaging only the elements inside the map) and `upsample2`
maps a low-size map back (nearest neighbour, cropped to the high size). Both `OctTensor` and
the functional core use these; this module depends on neither.

Arrays are channels-last, ``[..., *spatial, C]``; ``spatial_dims`` says how many axes before
the channel axis are spatial (2 for NHWC), and ``octave_axes`` (0-based among the spatial
axes, None = all) which of them are octave axes.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array


def resolve_octave_axes(octave_axes: Sequence[int] | None, spatial_dims: int) -> tuple[int, ...]:
  """The octave axes as a sorted tuple of spatial-axis indices; None means all of them.

  Args:
    octave_axes: 0-based indices among the ``spatial_dims`` spatial axes, or None.
    spatial_dims: the number of spatial axes (1, 2, 3, ...).

  Returns:
    ``tuple(sorted(octave_axes))``, or ``tuple(range(spatial_dims))`` for None.

  Raises:
    ValueError: an index outside ``0..spatial_dims-1``, a repeated index, or not a sequence of ints.

  Examples:
    >>> resolve_octave_axes(None, 3), resolve_octave_axes((2, 1), 3)
    ((0, 1, 2), (1, 2))
  """
  if octave_axes is None:
    return tuple(range(spatial_dims))
  if isinstance(octave_axes, numbers.Integral):
    octave_axes = (octave_axes,)
  try:
    axes = tuple(octave_axes)
  except TypeError:
    axes = None
  if axes is None or not all(isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in axes):
    raise ValueError(f"octave_axes must be None or a tuple of ints, got {octave_axes!r}.")
  bad = [a for a in axes if not 0 <= a < spatial_dims]
  if bad:
    raise ValueError(
        f"octave_axes={tuple(axes)!r} has {bad} outside the {spatial_dims} spatial axes; allowed are "
        f"0..{spatial_dims - 1} (0-based among the spatial axes), or None for all.")
  if len(set(axes)) != len(axes):
    raise ValueError(f"octave_axes={tuple(axes)!r} repeats an axis; each spatial axis may be named once.")
  return tuple(sorted(int(a) for a in axes))


def low_spatial_size(*sizes: int, octave_axes: Sequence[int] | None = None) -> tuple[int, ...]:
  """Spatial size of the low part for a high part of spatial size ``sizes``.

  ``ceil(n / 2)`` on each octave axis, ``n`` on the others.

  Examples:
    >>> low_spatial_size(7, 8)
    (4, 4)
    >>> low_spatial_size(8, 7, 7, octave_axes=(1, 2))
    (8, 4, 4)
  """
  axes = resolve_octave_axes(octave_axes, len(sizes))
  return tuple(-(-int(n) // 2) if i in axes else int(n) for i, n in enumerate(sizes))


def _spatial_axes(x: Array, spatial_dims: int, fn: str) -> list[int]:
  """The array axes of the spatial dimensions: the ``spatial_dims`` axes before the channel axis."""
  if x.ndim < spatial_dims + 1:
    raise ValueError(
        f"{fn}: expected an array [..., {spatial_dims} spatial axes, C] of rank >= {spatial_dims + 1}, "
        f"got shape {tuple(x.shape)}.")
  return list(range(x.ndim - 1 - spatial_dims, x.ndim - 1))


POOL_METHODS = ("reshape", "slices")
UPSAMPLE_METHODS = ("broadcast", "pads", "ones_conv")


def window_sums(x: Array, axes: Sequence[int], method: str = "reshape") -> Array:
  """Sums of ``x``'s windows of 2 elements on each of the array axes ``axes`` (even sizes there).

  ``y[..., i, ...] = x[..., 2i, ...] + x[..., 2i + 1, ...]`` on each axis in ``axes``; ``method``
  as in `avg_pool2`, which divides these sums by the window's size.

  Examples:
    >>> window_sums(jnp.arange(8.).reshape(2, 4), [1], "slices")
    Array([[ 1.,  5.],
           [ 9., 13.]], dtype=float32)
  """
  if method == "slices":
    # 2^k strided slices added elementwise: no reduction op, so it fuses into its reader.
    total = None
    for offsets in np.ndindex(*(2,) * len(axes)):
      index = [slice(None)] * x.ndim
      for axis, offset in zip(axes, offsets):
        index[axis] = slice(offset, None, 2)
      term = x[tuple(index)]
      total = term if total is None else total + term
    return total
  # A reshape and a sum, which XLA fuses into one loop, rather than a generic window op.
  shape, summed = [], []
  for axis, n in enumerate(x.shape):
    if axis in axes:
      shape += [n // 2, 2]
      summed.append(len(shape) - 1)
    else:
      shape.append(n)
  return x.reshape(shape).sum(axis=tuple(summed))


@jax.named_scope("avg_pool2")  # names its ops in profiles and in octflax.aot's census
def avg_pool2(x: Array, octave_axes: Sequence[int] | None = None, *, spatial_dims: int = 2,
              method: str = "reshape") -> Array:
  """Average pooling by 2 on the octave axes, stride 2, ceil mode, averaging only elements inside the map.

  In 2-D ``y[i, j] = mean(x[2i:2i+2, 2j:2j+2])`` over the pixels that exist, so an H x W map
  becomes ceil(H/2) x ceil(W/2); at odd sizes the last row/column averages 2 (or 1)
  pixels instead of reading padding. For even sizes this is exactly the official
  2x2 average pool. On a non-octave axis the window is 1 (the axis is left as it is).

  Args:
    x: ``[..., *spatial, C]``.
    octave_axes: which spatial axes are pooled (0-based among them; None = all).
    spatial_dims: number of spatial axes before the channel axis.
    method: how the window sums are computed, the same numbers either way: ``'reshape'``
      (a reshape and a sum: one reduction) or ``'slices'`` (the sum of the 2^k strided
      slices, elementwise, which XLA can fuse into the op that reads the result).
      `octflax.execution` chooses it per backend.

  Returns:
    ``[..., *low_spatial_size(*spatial), C]``, same dtype (float32 for integer input).

  Examples:
    >>> avg_pool2(jnp.arange(9.).reshape(1, 3, 3, 1))[0, ..., 0]
    Array([[2. , 3.5],
           [6.5, 8. ]], dtype=float32)
    >>> avg_pool2(jnp.arange(3.).reshape(1, 3, 1), spatial_dims=1)[0, :, 0]
    Array([0.5, 2. ], dtype=float32)
  """
  if method not in POOL_METHODS:
    raise ValueError(f"avg_pool2: method must be one of {POOL_METHODS}, got {method!r}.")
  if not jnp.issubdtype(x.dtype, jnp.inexact):
    x = x.astype(jnp.float32)  # an average of integers is not an integer
  spatial = _spatial_axes(x, spatial_dims, "avg_pool2")
  axes = resolve_octave_axes(octave_axes, spatial_dims)
  if not axes:
    return x
  pads = [(0, 0)] * x.ndim
  for a in axes:
    pads[spatial[a]] = (0, x.shape[spatial[a]] % 2)
  padded = any(p[1] for p in pads)
  if padded:
    x = jnp.pad(x, pads)
  total = window_sums(x, [spatial[a] for a in axes], method)
  if not padded:
    return total * jnp.asarray(0.5 ** len(axes), x.dtype)
  # 1 / (elements inside the map) per output position: an outer product of per-axis counts.
  inverse = np.ones([total.shape[s] if i in axes else 1 for i, s in enumerate(spatial)] + [1])
  for i in axes:
    counts = np.full(total.shape[spatial[i]], 2.0)
    counts[-1] -= pads[spatial[i]][1]
    inverse = inverse / counts.reshape([-1 if j == i else 1 for j in range(spatial_dims)] + [1])
  return total * jnp.asarray(inverse, x.dtype)


@jax.named_scope("upsample2")
def upsample2(x: Array, size: Sequence[int] | None = None, octave_axes: Sequence[int] | None = None, *,
              spatial_dims: int | None = None, method: str = "broadcast") -> Array:
  """Nearest-neighbour upsampling by 2 on the octave axes, cropped to ``size`` when given.

  In 2-D ``y[i, j] = x[i // 2, j // 2]``. Cropping makes odd high-part sizes work: a
  ceil(H/2) map upsamples to H x W. Non-octave axes are left as they are.

  Args:
    x: ``[..., *spatial, C]``.
    size: the target spatial size (every spatial axis), with ``2n - 1 <= target <= 2n`` on an
      octave axis of size n and ``target == n`` on the others; default ``2n`` on octave axes.
    octave_axes: which spatial axes are upsampled (0-based among them; None = all).
    spatial_dims: number of spatial axes; default ``len(size)``, or 2 without ``size``.
    method: how the copies are made, the same numbers either way: ``'broadcast'`` (a
      broadcast over a new axis of 2 after each octave axis and a reshape; its gradient sums
      over those axes) or ``'pads'`` (the sum of the 2^k copies of ``x`` spread out by interior
      padding, each starting at offset 0 or 1 on each octave axis: the transpose of
      `window_sums`'s ``'slices'``, so its gradient is a sum of strided slices; no array of
      higher rank, which the TPU's tiled layouts pad) or ``'ones_conv'`` (a depthwise transposed
      convolution, stride 2, with a window of ones: 2 on each octave axis; its gradient is the
      strided convolution summing each window, and the TPU compiler fuses the add of the other
      path and BatchNorm's sums into it). `octflax.execution` chooses it per backend.

  Returns:
    ``[..., *size, C]``.

  Examples:
    >>> upsample2(jnp.array([[[1.], [2.]]]), (3,))[0, :, 0]
    Array([1., 1., 2.], dtype=float32)
  """
  if spatial_dims is None:
    spatial_dims = 2 if size is None else len(size)
  spatial = _spatial_axes(x, spatial_dims, "upsample2")
  axes = resolve_octave_axes(octave_axes, spatial_dims)
  current = tuple(x.shape[s] for s in spatial)
  doubled = tuple(2 * n if i in axes else n for i, n in enumerate(current))
  target = doubled if size is None else tuple(int(s) for s in size)
  allowed = tuple((2 * n - 1, 2 * n) if i in axes else (n, n) for i, n in enumerate(current))
  if len(target) != spatial_dims or not all(lo <= t <= hi for t, (lo, hi) in zip(target, allowed)):
    ranges = " x ".join(f"{lo}..{hi}" if lo != hi else str(lo) for lo, hi in allowed)
    raise ValueError(
        f"upsample2: cannot upsample a {'x'.join(map(str, current))} map (octave axes {axes}) to size "
        f"{tuple(size)}; allowed sizes are {ranges}.")
  if method not in UPSAMPLE_METHODS:
    raise ValueError(f"upsample2: method must be one of {UPSAMPLE_METHODS}, got {method!r}.")
  if not axes:
    return x
  if method == "pads":
    return _upsample_pads(x, [spatial[a] for a in axes], [target[a] for a in axes])
  if method == "ones_conv":
    return _upsample_conv(x, spatial, axes, target)
  # Broadcast + reshape: no gather, no resize kernel; XLA fuses it into the consumer.
  expanded, broadcast = [], []
  for axis, n in enumerate(x.shape):
    expanded.append(n)
    broadcast.append(n)
    if axis in {spatial[a] for a in axes}:
      expanded.append(1)
      broadcast.append(2)
  y = jnp.broadcast_to(x.reshape(expanded), broadcast)
  y = y.reshape(x.shape[:spatial[0]] + doubled + x.shape[-1:])
  if target != doubled:
    y = y[(Ellipsis, *(slice(0, t) for t in target), slice(None))]
  return y


def _upsample_pads(x: Array, axes: Sequence[int], sizes: Sequence[int]) -> Array:
  """``y[..., i, ...] = x[..., i // 2, ...]`` on the array axes ``axes``, of sizes ``sizes`` (2n - 1 or 2n).

  Interior padding by 1 puts ``x[j]`` at ``2j``; a low pad of ``o`` moves it to ``2j + o``, and
  the high pad (-1 when cropping an odd size) makes the length ``size``. Summing over the 2^k
  offsets fills every position exactly once (the padding adds zeros), elementwise.
  """
  zero = jnp.zeros((), x.dtype)
  total = None
  for offsets in np.ndindex(*(2,) * len(axes)):
    config = [(0, 0, 0)] * x.ndim
    for axis, size, offset in zip(axes, sizes, offsets):
      config[axis] = (offset, size - (2 * x.shape[axis] - 1) - offset, 1)
    term = lax.pad(x, zero, config)
    total = term if total is None else total + term
  return total


def _upsample_conv(x: Array, spatial: Sequence[int], axes: Sequence[int], target: Sequence[int]) -> Array:
  """Nearest upsampling as a depthwise transposed convolution with a kernel of ones (2 per octave axis).

  With the input dilated by 2 (``x[j]`` at ``2j``) and padded by 1 in front, output ``i`` sums
  positions ``i - 1`` and ``i``, of which exactly one holds ``x[i // 2]``. Float32 asks for the
  highest precision, so that no accelerator rounds the copies to bfloat16.
  """
  lead, channels = x.shape[:spatial[0]], x.shape[-1]
  flat = x.reshape((-1,) + x.shape[spatial[0]:])
  nd = len(spatial)
  kernel = jnp.ones(tuple(2 if a in axes else 1 for a in range(nd)) + (1, channels), x.dtype)
  pads = [(1, t - 2 * flat.shape[1 + a] + 1) if a in axes else (0, 0) for a, t in enumerate(target)]
  lhs = (0, nd + 1) + tuple(range(1, nd + 1))
  rhs = (nd + 1, nd) + tuple(range(nd))
  y = lax.conv_general_dilated(flat, kernel, (1,) * nd, pads, lhs_dilation=tuple(2 if a in axes else 1 for a in range(nd)),
                               dimension_numbers=lax.ConvDimensionNumbers(lhs, rhs, lhs), feature_group_count=channels,
                               precision=lax.Precision.HIGHEST if x.dtype == jnp.float32 else None)
  return y.reshape(lead + y.shape[1:])


__all__ = ["POOL_METHODS", "UPSAMPLE_METHODS", "avg_pool2", "low_spatial_size", "resolve_octave_axes", "upsample2", "window_sums"]
