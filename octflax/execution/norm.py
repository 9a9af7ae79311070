"""BatchNorm's training step with a hand-written gradient: one reduction forward and one backward.

Differentiated by jax, BatchNorm's training step reduces over the batch several times in its
backward pass (the gradients through the mean, through the variance, and of scale and bias),
and XLA runs each large reduction as two kernels (a partial pass and a finishing pass).
`normalize` computes what `functional.batch_norm` computes with the batch's statistics, for the
parts of an OctTensor together (the variables and statistics over all their channels, as
`octflax.OctBatchNorm` holds them), with a custom VJP:

- forward: ``mean = E[x]``, ``var = E[x^2] - mean^2`` (clipped at 0) from one reduction,
  ``y = (x - mean) * r * scale + bias`` with ``r = rsqrt(var + epsilon)``;
- backward: with ``xhat = (x - mean) * r``, one reduction for ``E[dy]`` and ``E[dy * xhat]``,
  then elementwise ``dx = scale * r * (dy - E[dy] - xhat * E[dy * xhat])``,
  ``dscale = sum(dy * xhat)``, ``dbias = sum(dy)``; a cotangent of the returned mean and
  variance adds ``(d_mean + 2 (x - mean) d_var) / n``.

Each reduction sums two quantities at once (a variadic reduction: one kernel and one finishing
pass). With ``joint`` the high part's sums over its 2^k windows land on the low part's grid
(`octflax.resample.window_sums`, zeros padding odd sizes) and both parts are summed in one
reduction over ``[N, *low, C_h + C_l]``; otherwise each part is its own reduction.

With ``axis_name`` (under `jax.pmap`) the statistics, and the backward pass's means, are
averaged over the devices of that axis, as jax's differentiation of the same step gives.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from octflax.resample import window_sums

Array = jax.Array
Stats = tuple[Array, Array]


def normalize(parts: Sequence[Array], scale: Array | None, bias: Array | None, epsilon: float, dtype: Any = None,
              axis_name: str | None = None, joint: str | None = None) -> tuple[list[Array], Array, Array]:
  """``(ys, mean, var)``: each part normalised with its batch statistics, and the statistics (float32).

  The layer's variables and statistics run over all the parts' channels, the first part's first
  (`octflax.OctBatchNorm`'s layout): each part reads its channels of ``scale`` and ``bias``, and
  ``mean`` and ``var`` come out whole, so that nothing is split or joined around the reductions.

  Args:
    parts: the present parts, ``[N, *spatial, C_part]`` (the high part first).
    scale, bias: ``[C]`` over all the parts' channels, or None (no scale / no bias).
    epsilon, dtype: as in `functional.batch_norm` (``dtype`` None: the promoted input dtype).
    axis_name: the pmap axis to average statistics over, or None.
    joint: None (each part its own reduction), or the `window_sums` method with which the
      first part's windows are summed onto the second part's grid for one joint reduction.

  Returns:
    What ``functional.batch_norm(x, mean, var, scale, bias, epsilon, dtype)`` gives per part
    with the statistics `octflax.execution.batch_stats` computes, with the hand-written gradient
    of the module docstring; ``mean`` and ``var`` are ``[C]``.
  """
  present = [v for v in (scale, bias) if v is not None]
  out_dtypes = tuple(jnp.dtype(dtype or jnp.result_type(x, *present)) for x in parts)
  channels = sum(x.shape[-1] for x in parts)
  scale = jnp.ones((channels,), jnp.float32) if scale is None else scale
  bias = jnp.zeros((channels,), jnp.float32) if bias is None else bias
  if joint is not None and not joinable(parts):
    joint = None
  ys, mean, var = _normalize(tuple(parts), scale, bias, float(epsilon), out_dtypes, axis_name, joint)
  return list(ys), mean, var


def joinable(parts: Sequence[Array]) -> bool:
  """Whether the second part's grid is the first's halved (ceil) on some axes and equal on the others."""
  if len(parts) != 2 or parts[0].ndim != parts[1].ndim or parts[0].shape[0] != parts[1].shape[0]:
    return False
  return all(lo in (hi, -(-hi // 2)) for hi, lo in zip(parts[0].shape[1:-1], parts[1].shape[1:-1]))


def channel_slices(parts: Sequence[Array]) -> list[slice]:
  """Each part's channels among all the parts' (the first part's first)."""
  ends = np.cumsum([0] + [x.shape[-1] for x in parts])
  return [slice(int(a), int(b)) for a, b in zip(ends[:-1], ends[1:])]


def _counts(parts: Sequence[Array]) -> np.ndarray:
  """Per channel of all the parts, the number of its part's elements that a batch mean divides by."""
  return np.concatenate([np.full(x.shape[-1], math.prod(x.shape[:-1]), np.float32) for x in parts])


def batch_means(pairs: Sequence[tuple[Array, Array]], joint: str | None, axis_name: str | None,
                sums: Callable[[tuple[Array, ...]], tuple[Array, ...]] | None = None) -> tuple[Array, Array]:
  """The batch means of the parts' two ``[..., C_part]`` quantities, over all the parts' channels.

  Returns two ``[C]`` vectors (the first part's channels first), averaged over ``axis_name``.
  With ``joint`` (a `window_sums` method) the first part's sums over its 2^k windows land on
  the second part's grid (zeros pad odd sizes) and one reduction over ``[N, *low, C_h + C_l]``
  sums both parts; otherwise one reduction per part. ``sums`` reduces a tuple of arrays over
  all but their last axis: by default one variadic reduction (no jax gradient; `normalize`
  writes its own), ``lambda vs: tuple(v.sum(axes) ...)`` where jax must differentiate it.
  """
  sums = sums or _sums
  if joint is not None:
    (h1, h2), (l1, l2) = pairs
    axes = [i for i in range(1, h1.ndim - 1) if l1.shape[i] != h1.shape[i]]
    pads = [(0, 2 * l1.shape[i] - h1.shape[i]) if i in axes else (0, 0) for i in range(h1.ndim)]
    on_low = lambda a: window_sums(jnp.pad(a, pads), axes, joint) if axes else a
    both = sums((jnp.concatenate([on_low(h1), l1], -1), jnp.concatenate([on_low(h2), l2], -1)))
  else:
    per_part = [sums(pair) for pair in pairs]
    both = tuple(per_part[0][i] if len(per_part) == 1 else jnp.concatenate([p[i] for p in per_part]) for i in (0, 1))
  counts = _counts([a for a, _ in pairs])
  means = (both[0] / counts, both[1] / counts)
  if axis_name is not None:
    means = tuple(lax.pmean(jnp.stack(means), axis_name))
  return means


def _sums(values: tuple[Array, ...]) -> tuple[Array, ...]:
  """Each ``[..., C]`` value summed over all but its last axis, as one variadic reduction."""
  axes = tuple(range(values[0].ndim - 1))
  zeros = tuple(jnp.zeros((), v.dtype) for v in values)
  return tuple(lax.reduce(values, zeros, lambda a, b: tuple(p + q for p, q in zip(a, b)), axes))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _normalize(parts, scale, bias, epsilon, out_dtypes, axis_name, joint):
  return _forward(parts, scale, bias, epsilon, out_dtypes, axis_name, joint)[0]


def _forward(parts, scale, bias, epsilon, out_dtypes, axis_name, joint):
  xs = [x.astype(jnp.float32) for x in parts]
  mean, mean2 = batch_means([(x, x * x) for x in xs], joint, axis_name)
  var = jnp.maximum(0.0, mean2 - mean * mean)
  r = lax.rsqrt(var + epsilon)
  ys = tuple(((x - mean[s]) * (r[s] * scale[s]) + bias[s]).astype(d)
             for x, s, d in zip(xs, channel_slices(parts), out_dtypes))
  return (ys, mean, var), (parts, scale, mean, r)


def _backward(epsilon, out_dtypes, axis_name, joint, residuals, cotangents):
  del epsilon, out_dtypes
  parts, scale, mean, r = residuals
  dys, d_mean, d_var = cotangents
  slices = channel_slices(parts)
  centred = [x.astype(jnp.float32) - mean[s] for x, s in zip(parts, slices)]
  xhats = [c * r[s] for c, s in zip(centred, slices)]
  dys = [dy.astype(jnp.float32) for dy in dys]
  mean_dy, mean_dy_xhat = batch_means([(dy, dy * xh) for dy, xh in zip(dys, xhats)], joint, None)
  counts = _counts(parts)
  dscale = (mean_dy_xhat * counts).astype(scale.dtype)  # this device's sums: the parameters' gradients
  dbias = (mean_dy * counts).astype(scale.dtype)
  if axis_name is not None:
    mean_dy, mean_dy_xhat, d_mean, d_var = lax.pmean(jnp.stack([mean_dy, mean_dy_xhat, d_mean, d_var]), axis_name)
  dxs = tuple((scale[s] * r[s] * (dy - mean_dy[s] - xh * mean_dy_xhat[s])
               + (d_mean[s] + 2.0 * c * d_var[s]) / counts[s]).astype(x.dtype)
              for x, dy, c, xh, s in zip(parts, dys, centred, xhats, slices))
  return dxs, dscale, dbias


_normalize.defvjp(_forward, _backward)

__all__ = ["batch_means", "channel_slices", "joinable", "normalize"]
