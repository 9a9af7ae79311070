"""octflax.resample: the 2x average pool and the 2x nearest upsample at even and odd sizes, their
gradients, and the low part's spatial size."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_reference as ref
from octflax.resample import avg_pool2, low_spatial_size, upsample2

TOL = dict(rtol=1e-6, atol=1e-6)


# Jitted once per shape: one compilation instead of one per eager op keeps the suite fast.
pool_jit = jax.jit(avg_pool2)
up_jit = jax.jit(upsample2, static_argnums=1)


def rand(seed, shape, dtype=np.float32):
  return jax.device_put(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def nhwc(a):
  """A 2-D NumPy array as a [1, H, W, 1] map."""
  return jax.device_put(np.asarray(a, np.float32)[None, :, :, None])


# ---------------------------------------------------------------------- avg_pool2


def test_avg_pool2_odd_3x3_averages_only_in_map_pixels():
  # [[0 1 2] [3 4 5] [6 7 8]]: blocks {0,1,3,4}, {2,5}, {6,7}, {8}
  y = avg_pool2(nhwc(np.arange(9.0).reshape(3, 3)))
  chex.assert_shape(y, (1, 2, 2, 1))
  np.testing.assert_allclose(np.asarray(y)[0, :, :, 0], [[2.0, 3.5], [6.5, 8.0]], **TOL)


def test_avg_pool2_odd_5x4_averages_only_in_map_pixels():
  # x[i, j] = 4 i + j; the last row of blocks holds one image row (2 pixels).
  y = avg_pool2(nhwc(np.arange(20.0).reshape(5, 4)))
  chex.assert_shape(y, (1, 3, 2, 1))
  expected = [[(0 + 1 + 4 + 5) / 4, (2 + 3 + 6 + 7) / 4],
              [(8 + 9 + 12 + 13) / 4, (10 + 11 + 14 + 15) / 4],
              [(16 + 17) / 2, (18 + 19) / 2]]
  np.testing.assert_allclose(np.asarray(y)[0, :, :, 0], expected, **TOL)


@pytest.mark.parametrize("hw", [(3, 3), (5, 4), (4, 7), (1, 1), (1, 6), (7, 1)])
def test_avg_pool2_of_constant_is_constant_at_odd_sizes(hw):
  """Zero padding would pull border averages toward 0; in-map averaging keeps them at 3."""
  y = pool_jit(jnp.full((2, *hw, 3), 3.0))
  chex.assert_shape(y, (2, math.ceil(hw[0] / 2), math.ceil(hw[1] / 2), 3))
  np.testing.assert_allclose(np.asarray(y), 3.0, **TOL)


@pytest.mark.parametrize("hw", [(8, 8), (4, 6), (2, 2)])
def test_avg_pool2_even_equals_2x2_mean(hw):
  x = rand(0, (2, *hw, 3))
  h, w = hw
  expected = np.asarray(x).reshape(2, h // 2, 2, w // 2, 2, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(np.asarray(pool_jit(x)), expected, **TOL)


@pytest.mark.parametrize("hw", [(5, 7), (9, 6)])
def test_avg_pool2_matches_reference_with_extra_batch_dims(hw):
  x = rand(1, (3, 2, *hw, 4))
  y = pool_jit(x)
  chex.assert_shape(y, (3, 2, math.ceil(hw[0] / 2), math.ceil(hw[1] / 2), 4))
  np.testing.assert_allclose(np.asarray(y), ref.avg_pool2(np.asarray(x)), **TOL)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint8])
def test_avg_pool2_of_integer_map_averages_instead_of_truncating_to_zero(dtype):
  """An integer map (e.g. uint8 pixels through OctTensor.from_array) must be averaged, not
  multiplied by a 1/4 (or 1/count) factor that the integer dtype truncates to 0."""
  x = jax.device_put((np.arange(20).reshape(1, 5, 4, 1) * 3).astype(np.dtype(dtype)))
  y = avg_pool2(x)
  chex.assert_shape(y, (1, 3, 2, 1))
  expected = ref.avg_pool2(np.asarray(x, np.float64))  # [[7.5 13.5] [31.5 37.5] [49.5 55.5]]
  # Either a floating result or the integer-rounded mean; never the truncated factor (zeros).
  np.testing.assert_allclose(np.asarray(y, np.float64), expected, atol=0.5 + 1e-6)


def test_avg_pool2_keeps_dtype():
  x = rand(2, (1, 5, 5, 2), jnp.bfloat16)
  y = avg_pool2(x)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y, np.float32), ref.avg_pool2(np.asarray(x, np.float32)),
                             rtol=1e-2, atol=1e-2)


# ---------------------------------------------------------------------- upsample2


def test_upsample2_is_nearest_neighbour():
  x = nhwc([[1.0, 2.0], [3.0, 4.0]])
  y = upsample2(x)
  chex.assert_shape(y, (1, 4, 4, 1))
  np.testing.assert_array_equal(np.asarray(y)[0, :, :, 0],
                                [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])


@pytest.mark.parametrize("size", [(5, 7), (6, 7), (5, 8), (6, 8)])
def test_upsample2_crops_to_size(size):
  x = rand(3, (2, 3, 4, 2))
  y = up_jit(x, size)
  chex.assert_shape(y, (2, *size, 2))
  np.testing.assert_array_equal(np.asarray(y), ref.upsample2(np.asarray(x), size))


@pytest.mark.parametrize("size", [(4, 8), (7, 8), (6, 9), (6, 6)])
def test_upsample2_refuses_sizes_that_are_not_an_octave(size):
  with pytest.raises(ValueError, match="upsample2"):
    upsample2(jnp.zeros((1, 3, 4, 1)), size)


def test_upsample2_then_avg_pool2_is_identity():
  x = rand(4, (1, 3, 4, 2))
  np.testing.assert_allclose(np.asarray(avg_pool2(upsample2(x, (5, 7)))), np.asarray(x), **TOL)


# ---------------------------------------------------------------------- gradients, sizes


def test_pool_and_upsample_gradients_at_odd_sizes():
  """VJPs: pool^T spreads y[block] / (in-map pixels of the block); up^T sums the cropped block."""
  x, y = rand(16, (1, 5, 7, 2)), rand(17, (1, 3, 4, 2))
  counts = np.array([[min(2, 5 - 2 * i) * min(2, 7 - 2 * j) for j in range(4)] for i in range(3)])
  (xt,) = jax.vjp(avg_pool2, x)[1](y)
  expected = np.zeros((1, 5, 7, 2))
  for i in range(5):
    for j in range(7):
      expected[0, i, j] = np.asarray(y)[0, i // 2, j // 2] / counts[i // 2, j // 2]
  np.testing.assert_allclose(np.asarray(xt), expected, **TOL)
  (yt,) = jax.vjp(lambda a: upsample2(a, (5, 7)), y)[1](x)
  np.testing.assert_allclose(np.asarray(yt), ref.avg_pool2(np.asarray(x)) * counts[None, :, :, None],
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw,expected", [((8, 8), (4, 4)), ((7, 6), (4, 3)), ((1, 1), (1, 1)),
                                         ((5, 9), (3, 5))])
def test_low_spatial_size_is_ceil_half(hw, expected):
  assert low_spatial_size(*hw) == expected
