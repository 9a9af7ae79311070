"""octflax.functional: the pure oct_conv against the float64 NumPy reference, the per-part ops
(max pool, global average pool, add, map, relu) and the argument errors."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_reference as ref
from octflax import OctTensor
from octflax import functional as F
from octflax.functional import global_avg_pool, oct_add, oct_conv, oct_map, oct_max_pool, oct_relu
from test_layers import expected_out_shapes, make_input, np_part

TOL = dict(rtol=1e-6, atol=1e-6)
CONV_TOL = dict(rtol=1e-5, atol=1e-5)  # float32 convolutions against the float64 reference


def rand(seed, shape, dtype=np.float32):
  return jax.device_put(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


# ------------------------------------------------------------------- pure oct_conv


def _random_kernels(seed, paths, k=3, groups=None):
  rng = np.random.default_rng(seed)
  groups = groups or {}
  return {p: jax.device_put((0.3 * rng.standard_normal((k, k, ci // groups.get(p, 1), co))).astype(np.float32))
          for p, (ci, co) in paths.items()}


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [(8, 8), (5, 7)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_functional_oct_conv_matches_reference(stride, hw, with_bias):
  x = make_input(5, 2, hw, 7, 0.5)  # (4, 3)
  paths = ref.path_channels(7, 6, 0.5, 1 / 3)  # out (4, 2)
  kernels = _random_kernels(1, paths)
  rng = np.random.default_rng(2)
  biases = ({"h2h": jax.device_put(rng.standard_normal(4).astype(np.float32)),
             "h2l": jax.device_put(rng.standard_normal(2).astype(np.float32))} if with_bias else None)
  y = jax.jit(oct_conv, static_argnames="strides")(x, kernels, biases, strides=stride)
  yh, yl = ref.oct_conv(np_part(x.high), np_part(x.low), {p: np.asarray(k) for p, k in kernels.items()},
                        None if biases is None else {p: np.asarray(b) for p, b in biases.items()}, stride)
  high_shape, low_shape = expected_out_shapes(2, hw, 7, 6, 0.5, 1 / 3, stride)
  chex.assert_shape(y.high, high_shape)
  chex.assert_shape(y.low, low_shape)
  chex.assert_trees_all_close(y, OctTensor(yh, yl), **CONV_TOL)


@pytest.mark.parametrize("hw", [(6, 6), (6, 5), (5, 7)])
def test_functional_oct_conv_without_h2h_crops_l2h_to_the_high_input_size(hw):
  """An absent path contributes nothing: with only the cross paths, Y^H = U(f(X^L; W^lh))
  cropped to X^H's size (an odd H or W must not come out as 2 ceil(H/2))."""
  x = make_input(6, 1, hw, 4, 0.5)
  paths = ref.path_channels(4, 4, 0.5, 0.5)
  kernels = _random_kernels(3, paths)
  only_cross = {p: kernels[p] for p in ("h2l", "l2h")}
  y = oct_conv(x, only_cross)
  yh, yl = ref.oct_conv(np_part(x.high), np_part(x.low), {p: np.asarray(k) for p, k in only_cross.items()})
  chex.assert_shape(y.high, (1, *hw, 2))
  chex.assert_trees_all_close(y, OctTensor(yh, yl), **CONV_TOL)


def test_functional_oct_conv_grouped_groups_from_kernel_shape():
  x = make_input(7, 1, (5, 5), 8, 0.5)
  paths = ref.path_channels(8, 8, 0.5, 0.5)
  kernels = _random_kernels(4, paths, groups={p: 2 for p in paths})
  y = oct_conv(x, kernels)
  yh, yl = ref.oct_conv(np_part(x.high), np_part(x.low), {p: np.asarray(k) for p, k in kernels.items()},
                        groups=2)
  chex.assert_trees_all_close(y, OctTensor(yh, yl), **CONV_TOL)


def test_functional_oct_conv_accepts_plain_array():
  x = make_input(0, 1, (5, 7), 3, 0.0).high
  kernels = _random_kernels(0, {"h2h": (3, 2), "h2l": (3, 2)})
  y = oct_conv(x, kernels, strides=2)
  yh, yl = ref.oct_conv(np.asarray(x, np.float64), None, {p: np.asarray(k) for p, k in kernels.items()},
                        stride=2)
  chex.assert_shape(y.high, (1, 3, 4, 2))
  chex.assert_shape(y.low, (1, 2, 2, 2))
  chex.assert_trees_all_close(y, OctTensor(yh, yl), **CONV_TOL)


# ------------------------------------------------------------------- per-part ops


@pytest.mark.parametrize("hw", [(9, 6), (7, 7), (8, 8), (5, 3)])
def test_oct_max_pool_keeps_low_at_ceil_half_of_high(hw):
  lh, lw = math.ceil(hw[0] / 2), math.ceil(hw[1] / 2)
  x = OctTensor(rand(5, (2, *hw, 3)), rand(6, (2, lh, lw, 2)))
  y = jax.jit(oct_max_pool, static_argnums=(1, 2))(x, 3, 2)
  h2, w2 = math.ceil(hw[0] / 2), math.ceil(hw[1] / 2)
  chex.assert_shape(y.high, (2, h2, w2, 3))
  chex.assert_shape(y.low, (2, math.ceil(h2 / 2), math.ceil(w2 / 2), 2))
  np.testing.assert_array_equal(np.asarray(y.high), ref.max_pool_same(np.asarray(x.high), 3, 2))
  np.testing.assert_array_equal(np.asarray(y.low), ref.max_pool_same(np.asarray(x.low), 3, 2))


def test_oct_max_pool_on_plain_array():
  x = rand(7, (1, 6, 5, 2))
  y = oct_max_pool(x)
  assert y.low is None
  np.testing.assert_array_equal(np.asarray(y.high), ref.max_pool_same(np.asarray(x), 3, 2))


def test_global_avg_pool_concatenates_part_means_high_first():
  high, low = rand(8, (2, 5, 7, 3)), rand(9, (2, 3, 4, 2))
  y = global_avg_pool(OctTensor(high, low))
  chex.assert_shape(y, (2, 5))
  expected = np.concatenate([np.asarray(high).mean(axis=(1, 2)), np.asarray(low).mean(axis=(1, 2))], -1)
  np.testing.assert_allclose(np.asarray(y), expected, **TOL)
  y_high = global_avg_pool(high)  # a plain array is the high part
  chex.assert_shape(y_high, (2, 3))
  np.testing.assert_allclose(np.asarray(y_high), expected[:, :3], **TOL)
  y_low = global_avg_pool(OctTensor(None, low))
  np.testing.assert_allclose(np.asarray(y_low), expected[:, 3:], **TOL)


def test_oct_add_adds_part_wise():
  a = OctTensor(rand(10, (1, 5, 5, 2)), rand(11, (1, 3, 3, 1)))
  b = OctTensor(rand(12, (1, 5, 5, 2)), rand(13, (1, 3, 3, 1)))
  s = oct_add(a, b)
  np.testing.assert_array_equal(np.asarray(s.high), np.asarray(a.high) + np.asarray(b.high))
  np.testing.assert_array_equal(np.asarray(s.low), np.asarray(a.low) + np.asarray(b.low))
  plain = oct_add(a.high, b.high)
  assert plain.low is None
  np.testing.assert_array_equal(np.asarray(plain.high), np.asarray(s.high))


def test_oct_add_refuses_different_parts():
  a = OctTensor(rand(10, (1, 5, 5, 2)), rand(11, (1, 3, 3, 1)))
  with pytest.raises(ValueError, match="same parts"):
    oct_add(a, a.high)
  with pytest.raises(ValueError, match="same parts"):
    oct_add(OctTensor(None, a.low), a)


def test_oct_map_and_relu_act_on_each_part():
  a = OctTensor(rand(14, (1, 4, 4, 2)), rand(15, (1, 2, 2, 3)))
  r = oct_relu(a)
  np.testing.assert_array_equal(np.asarray(r.high), np.maximum(np.asarray(a.high), 0))
  np.testing.assert_array_equal(np.asarray(r.low), np.maximum(np.asarray(a.low), 0))
  m = oct_map(lambda p: p * 3.0, a.high)
  assert isinstance(m, OctTensor) and m.low is None
  np.testing.assert_allclose(np.asarray(m.high), 3 * np.asarray(a.high), **TOL)
  only_low = oct_map(jnp.tanh, OctTensor(None, a.low))
  assert only_low.high is None


# ------------------------------------------------------------------------- errors


def test_functional_errors_name_the_argument():
  x = make_input(0, 1, (6, 6), 4, 0.5)
  k = {"h2h": jnp.ones((3, 3, 2, 2))}
  with pytest.raises(ValueError, match="strides"):
    oct_conv(x, k, strides=3)
  with pytest.raises(ValueError, match="kernel"):
    oct_conv(x, {"h2x": jnp.ones((3, 3, 2, 2))})
  with pytest.raises(ValueError, match="kernel_size"):
    oct_conv(x, {"h2h": jnp.ones((2, 2, 2, 2))})
  with pytest.raises(ValueError, match="in_channels"):
    oct_conv(x, {"h2h": jnp.ones((3, 3, 3, 2))})
  with pytest.raises(ValueError, match="output channels"):
    oct_conv(x, {"h2h": jnp.ones((3, 3, 2, 2)), "l2h": jnp.ones((3, 3, 2, 3))})
  with pytest.raises(ValueError, match="low part"):
    oct_conv(OctTensor(jnp.ones((1, 6, 6, 2)), jnp.ones((1, 2, 2, 2))), k)


def test_running_average_of_a_statistic_given_in_parts():
  rng = np.random.default_rng(0)
  average, high, low = (jnp.asarray(rng.standard_normal(n), jnp.float32) for n in (7, 4, 3))
  whole = F.running_average(average, jnp.concatenate([high, low]), 0.9)
  np.testing.assert_allclose(whole, 0.9 * np.asarray(average) + 0.1 * np.concatenate([high, low]), rtol=1e-6)
  np.testing.assert_allclose(F.running_average(average, [high, low], 0.9), whole, rtol=1e-6)
  np.testing.assert_array_equal(F.running_average(average[:4], [high], 0.9), F.running_average(average[:4], high, 0.9))
