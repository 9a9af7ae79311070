"""BatchNorm's training step with a hand-written gradient: one reduction forward and one backward.

Differentiated by jax, BatchNorm's training step reduces over the batch several times in its
backward pass (the gradients through the mean, through the variance, and of scale and bias),
and XLA runs each large reduction as two kernels (a partial pass and a finishing pass).
`normalize` computes what `functional.batch_norm` computes with the batch's statistics, for the
parts of an OctTensor together, with a custom VJP:

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
from jax import lax

from octflax.resample import window_sums

Array = jax.Array
Stats = tuple[Array, Array]


def normalize(parts: Sequence[Array], scales: Sequence[Array | None], biases: Sequence[Array | None],
              epsilon: float, dtype: Any = None, axis_name: str | None = None,
              joint: str | None = None) -> list[tuple[Array, Array, Array]]:
  """``[(y, mean, var), ...]`` per part: each part normalised with its batch statistics (float32).

  Args:
    parts: the present parts, ``[N, *spatial, C]`` (the high part first).
    scales, biases: per part, or None (no scale / no bias).
    epsilon, dtype: as in `functional.batch_norm` (``dtype`` None: the promoted input dtype).
    axis_name: the pmap axis to average statistics over, or None.
    joint: None (each part its own reduction), or the `window_sums` method with which the
      first part's windows are summed onto the second part's grid for one joint reduction.

  Returns:
    What ``functional.batch_norm(x, mean, var, scale, bias, epsilon, dtype)`` gives with the
    statistics `octflax.execution.batch_stats` computes, with the hand-written gradient of the
    module docstring.
  """
  out_dtypes = tuple(jnp.dtype(dtype or jnp.result_type(x, *(v for v in (s, b) if v is not None)))
                     for x, s, b in zip(parts, scales, biases))
  scales = tuple(jnp.ones(x.shape[-1:], jnp.float32) if s is None else s for x, s in zip(parts, scales))
  biases = tuple(jnp.zeros(x.shape[-1:], jnp.float32) if b is None else b for x, b in zip(parts, biases))
  if joint is not None and not joinable(parts):
    joint = None
  ys, means, variances = _normalize(tuple(parts), scales, biases, float(epsilon), out_dtypes, axis_name, joint)
  return list(zip(ys, means, variances))


def joinable(parts: Sequence[Array]) -> bool:
  """Whether the second part's grid is the first's halved (ceil) on some axes and equal on the others."""
  if len(parts) != 2 or parts[0].ndim != parts[1].ndim or parts[0].shape[0] != parts[1].shape[0]:
    return False
  return all(lo in (hi, -(-hi // 2)) for hi, lo in zip(parts[0].shape[1:-1], parts[1].shape[1:-1]))


def batch_means(pairs: Sequence[tuple[Array, Array]], joint: str | None, axis_name: str | None,
                sums: Callable[[tuple[Array, ...]], tuple[Array, ...]] | None = None) -> list[tuple[Array, Array]]:
  """Per part, the batch means of its two ``[..., C]`` quantities, averaged over ``axis_name``.

  With ``joint`` (a `window_sums` method) the first part's sums over its 2^k windows land on
  the second part's grid (zeros pad odd sizes) and one reduction over ``[N, *low, C_h + C_l]``
  sums both parts; otherwise one reduction per part. ``sums`` reduces a tuple of arrays over
  all but their last axis: by default one variadic reduction (no jax gradient; `normalize`
  writes its own), ``lambda vs: tuple(v.sum(axes) ...)`` where jax must differentiate it.
  """
  sums = sums or _sums
  counts = [math.prod(a.shape[:-1]) for a, _ in pairs]
  if joint is not None:
    (h1, h2), (l1, l2) = pairs
    axes = [i for i in range(1, h1.ndim - 1) if l1.shape[i] != h1.shape[i]]
    pads = [(0, 2 * l1.shape[i] - h1.shape[i]) if i in axes else (0, 0) for i in range(h1.ndim)]
    on_low = lambda a: window_sums(jnp.pad(a, pads), axes, joint) if axes else a
    both = sums((jnp.concatenate([on_low(h1), l1], -1), jnp.concatenate([on_low(h2), l2], -1)))
    c = h1.shape[-1]
    sums_per_part = [(both[0][:c], both[1][:c]), (both[0][c:], both[1][c:])]
  else:
    sums_per_part = [sums(pair) for pair in pairs]
  means = [(s1 / n, s2 / n) for (s1, s2), n in zip(sums_per_part, counts)]
  if axis_name is not None:
    means = [tuple(lax.pmean(jnp.stack(m), axis_name)) for m in means]
  return means


def _sums(values: tuple[Array, ...]) -> tuple[Array, ...]:
  """Each ``[..., C]`` value summed over all but its last axis, as one variadic reduction."""
  axes = tuple(range(values[0].ndim - 1))
  zeros = tuple(jnp.zeros((), v.dtype) for v in values)
  return tuple(lax.reduce(values, zeros, lambda a, b: tuple(p + q for p, q in zip(a, b)), axes))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _normalize(parts, scales, biases, epsilon, out_dtypes, axis_name, joint):
  return _forward(parts, scales, biases, epsilon, out_dtypes, axis_name, joint)[0]


def _forward(parts, scales, biases, epsilon, out_dtypes, axis_name, joint):
  xs = [x.astype(jnp.float32) for x in parts]
  stats = batch_means([(x, x * x) for x in xs], joint, axis_name)
  means = tuple(m for m, _ in stats)
  variances = tuple(jnp.maximum(0.0, m2 - m * m) for m, m2 in stats)
  rs = tuple(lax.rsqrt(v + epsilon) for v in variances)
  ys = tuple(((x - m) * (r * s) + b).astype(d) for x, m, r, s, b, d in zip(xs, means, rs, scales, biases, out_dtypes))
  return (ys, means, variances), (parts, scales, means, rs)


def _backward(epsilon, out_dtypes, axis_name, joint, residuals, cotangents):
  del epsilon, out_dtypes
  parts, scales, means, rs = residuals
  dys, d_means, d_vars = cotangents
  xs = [x.astype(jnp.float32) for x in parts]
  centred = [x - m for x, m in zip(xs, means)]
  xhats = [c * r for c, r in zip(centred, rs)]
  dys = [dy.astype(jnp.float32) for dy in dys]
  grads = batch_means([(dy, dy * xh) for dy, xh in zip(dys, xhats)], joint, None)
  counts = [math.prod(x.shape[:-1]) for x in parts]
  dxs, dscales, dbiases = [], [], []
  for x, dy, c, xh, r, s, (mean_dy, mean_dy_xhat), d_mean, d_var, n in zip(
      parts, dys, centred, xhats, rs, scales, grads, d_means, d_vars, counts):
    dscales.append((mean_dy_xhat * n).astype(s.dtype))  # this device's sums: the parameters' gradients
    dbiases.append((mean_dy * n).astype(s.dtype))
    if axis_name is not None:
      mean_dy, mean_dy_xhat, d_mean, d_var = lax.pmean(jnp.stack([mean_dy, mean_dy_xhat, d_mean, d_var]), axis_name)
    dx = s * r * (dy - mean_dy - xh * mean_dy_xhat) + (d_mean + 2.0 * c * d_var) / n
    dxs.append(dx.astype(x.dtype))
  return tuple(dxs), tuple(dscales), tuple(dbiases)


_normalize.defvjp(_forward, _backward)

__all__ = ["batch_means", "joinable", "normalize"]
