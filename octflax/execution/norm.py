"""BatchNorm's training step with a hand-written gradient: one reduction forward, one backward, per part.

Differentiated by jax, BatchNorm's training step reduces over the batch several times in its
backward pass (the gradients through the mean, through the variance, and of scale and bias),
and XLA runs each large reduction as two kernels. `normalize` computes what
`functional.batch_norm` computes with the batch's statistics, with a custom VJP:

- forward: ``mean = E[x]``, ``var = E[x^2] - mean^2`` (clipped at 0) in one pass over x,
  ``y = (x - mean) * rsqrt(var + epsilon) * scale + bias``;
- backward: with ``xhat = (x - mean) * r``, ``r = rsqrt(var + epsilon)``, one pass for
  ``E[dy]`` and ``E[dy * xhat]``, then elementwise
  ``dx = scale * r * (dy - E[dy] - xhat * E[dy * xhat])``,
  ``dscale = sum(dy * xhat)``, ``dbias = sum(dy)``; a cotangent of the returned mean and
  variance adds ``(d_mean + 2 (x - mean) d_var) / n``.

With ``axis_name`` (under `jax.pmap`) the statistics, and the backward pass's means, are
averaged over the devices of that axis, as jax's differentiation of the same step gives.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def normalize(x: Array, scale: Array | None, bias: Array | None, epsilon: float, dtype: Any = None,
              axis_name: str | None = None) -> tuple[Array, Array, Array]:
  """``(y, mean, var)``: ``x`` normalised with its own batch statistics (float32), per channel.

  The same values as ``functional.batch_norm(x, mean, var, scale, bias, epsilon, dtype)`` with
  the statistics `octflax.execution.batch_stats` computes; the gradient is the hand-written one
  of the module docstring.
  """
  out_dtype = dtype or jnp.result_type(x, *(v for v in (scale, bias) if v is not None))
  channels = x.shape[-1]
  scale_ = jnp.ones((channels,), jnp.float32) if scale is None else scale
  bias_ = jnp.zeros((channels,), jnp.float32) if bias is None else bias
  return _normalize(x, scale_, bias_, float(epsilon), jnp.dtype(out_dtype), axis_name)


def _sums(values: tuple[Array, ...]) -> tuple[Array, ...]:
  """Each ``[..., C]`` value summed over all but its last axis, as one (variadic) reduction.

  One reduction of several operands is one kernel (and one small finishing pass) where
  separate sums of the same input are one finishing pass each.
  """
  axes = tuple(range(values[0].ndim - 1))
  zeros = tuple(jnp.zeros((), v.dtype) for v in values)
  return tuple(lax.reduce(values, zeros, lambda a, b: tuple(p + q for p, q in zip(a, b)), axes))


def _mean_over_batch(values: list[Array], count: int, axis_name: str | None) -> list[Array]:
  """Each ``[..., C]`` value summed over all but its last axis, divided by ``count``, averaged over ``axis_name``."""
  means = [total / count for total in _sums(tuple(values))]
  if axis_name is not None:
    means = list(lax.pmean(jnp.stack(means), axis_name))
  return means


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _normalize(x, scale, bias, epsilon, out_dtype, axis_name):
  return _forward(x, scale, bias, epsilon, out_dtype, axis_name)[0]


def _forward(x, scale, bias, epsilon, out_dtype, axis_name):
  x32 = x.astype(jnp.float32)
  count = math.prod(x.shape[:-1])
  mean, mean2 = _mean_over_batch([x32, x32 * x32], count, axis_name)
  var = jnp.maximum(0.0, mean2 - mean * mean)
  r = lax.rsqrt(var + epsilon)
  y = ((x32 - mean) * (r * scale) + bias).astype(out_dtype)
  return (y, mean, var), (x, scale, mean, r)


def _backward(epsilon, out_dtype, axis_name, residuals, cotangents):
  del epsilon, out_dtype
  x, scale, mean, r = residuals
  dy, d_mean, d_var = cotangents
  x32, dy32 = x.astype(jnp.float32), dy.astype(jnp.float32)
  count = math.prod(x.shape[:-1])
  centred = x32 - mean
  xhat = centred * r
  sum_dy, sum_dy_xhat = _sums((dy32, dy32 * xhat))
  mean_dy, mean_dy_xhat = sum_dy / count, sum_dy_xhat / count
  if axis_name is not None:
    mean_dy, mean_dy_xhat, d_mean, d_var = lax.pmean(jnp.stack([mean_dy, mean_dy_xhat, d_mean, d_var]), axis_name)
  dx = scale * r * (dy32 - mean_dy - xhat * mean_dy_xhat) + (d_mean + 2.0 * centred * d_var) / count
  return dx.astype(x.dtype), sum_dy_xhat.astype(scale.dtype), sum_dy.astype(scale.dtype)


_normalize.defvjp(_forward, _backward)

__all__ = ["normalize"]
