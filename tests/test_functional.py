"""Pure helpers of octflax.functional: pooling, upsampling and the per-part ops."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_reference as ref
from octflax import OctConv, OctTensor, execution
from octflax.functional import conv, global_avg_pool, oct_add, oct_map, oct_max_pool, oct_relu
from octflax.resample import avg_pool2, upsample2

TOL = dict(rtol=1e-6, atol=1e-6)


def fast_jit(fn, **kwargs):
  """`jax.jit` without LLVM's expensive optimisations: on these tiny maps compiling, not
  running, is the cost, and the optimisation level does not change what is computed."""
  return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0}, **kwargs)


# Jitted once per shape: one compilation instead of one per eager op keeps the suite fast.
pool_jit = fast_jit(avg_pool2)
up_jit = fast_jit(upsample2, static_argnums=1)


def rand(seed, shape, dtype=np.float32):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def nhwc(a):
  """A 2-D NumPy array as a [1, H, W, 1] map."""
  return jnp.asarray(np.asarray(a, np.float32)[None, :, :, None])


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
  x = jnp.asarray((np.arange(20).reshape(1, 5, 4, 1) * 3).astype(np.dtype(dtype)))
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


# ------------------------------------------------------------------- per-part ops


@pytest.mark.parametrize("hw", [(9, 6), (7, 7), (8, 8), (5, 3)])
def test_oct_max_pool_keeps_low_at_ceil_half_of_high(hw):
  lh, lw = math.ceil(hw[0] / 2), math.ceil(hw[1] / 2)
  x = OctTensor(rand(5, (2, *hw, 3)), rand(6, (2, lh, lw, 2)))
  y = fast_jit(oct_max_pool, static_argnums=(1, 2))(x, 3, 2)
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


# ----------------------------------------------------------------------------- XLA:CPU execution


def _conv_channel_shapes(fn, *args):
  """(input channels, output channels) of every conv_general_dilated in fn's jaxpr."""
  jaxpr = jax.make_jaxpr(lambda *a: fn(*a))(*args)  # A new function: traced now, not from a cache.
  return [(e.invars[0].aval.shape[-1], e.outvars[0].aval.shape[-1])
          for e in jaxpr.jaxpr.eqns if e.primitive.name == "conv_general_dilated"]


@pytest.mark.parametrize("c_in,c_out,expected", [(14, 14, (16, 16)), (28, 12, (32, 16)), (2, 14, (2, 16)),
                                                 (16, 24, (16, 24)), (6, 4, (6, 4))])
def test_xla_cpu_conv_pads_channels_to_8_and_gives_the_same_numbers(c_in, c_out, expected):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 5, 6, c_in), dtype=np.float32))
  kernel = jnp.asarray(rng.standard_normal((3, 3, c_in, c_out), dtype=np.float32))
  assert _conv_channel_shapes(execution.xla_cpu_conv, x, kernel) == [expected]
  assert _conv_channel_shapes(execution.xla_cpu_conv_unpadded, x, kernel) == [(c_in, c_out)]
  assert _conv_channel_shapes(conv, x, kernel) == [(c_in, c_out)]
  plain = jax.jit(conv)(x, kernel)
  plain_grads = jax.grad(lambda x, k: jnp.sum(jnp.sin(conv(x, k))), (0, 1))(x, kernel)
  padded = jax.jit(execution.xla_cpu_conv)(x, kernel)
  chex.assert_shape(padded, (2, 5, 6, c_out))
  np.testing.assert_allclose(padded, plain, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(padded, ref.conv2d(np.asarray(x, np.float64), np.asarray(kernel, np.float64)),
                             rtol=1e-4, atol=1e-4)
  grads = jax.grad(lambda x, k: jnp.sum(jnp.sin(execution.xla_cpu_conv(x, k))), (0, 1))(x, kernel)
  chex.assert_trees_all_equal_shapes(grads, (x, kernel))
  chex.assert_trees_all_close(grads, plain_grads, rtol=1e-4, atol=1e-4)


def test_xla_cpu_conv_runs_1x1_as_a_dot_and_use_conv_switches_the_layers():
  x, kernel = rand(1, (2, 4, 5, 6)), rand(2, (1, 1, 6, 3))
  eqns = [e.primitive.name for e in jax.make_jaxpr(execution.xla_cpu_conv)(x, kernel).jaxpr.eqns]
  assert "dot_general" in eqns and "conv_general_dilated" not in eqns
  np.testing.assert_allclose(execution.xla_cpu_conv(x, kernel), conv(x, kernel), rtol=1e-6, atol=1e-6)
  layer = OctConv(3, 1, 0.0, 0.0)
  variables = layer.init(jax.random.key(0), x)
  # What the layer lowers to for this backend (the default form is chosen per platform at lowering).
  kinds = lambda: {op for op in ("dot_general", "convolution")
                   if f"stablehlo.{op}" in jax.jit(layer.apply).lower(variables, x).as_text()}
  expected_default = "dot_general" if jax.default_backend() == "cpu" else "convolution"
  assert kinds() == {expected_default}
  with execution.use_conv(conv):
    assert execution.current_conv() is conv
    assert kinds() == {"convolution"}
  assert execution.current_conv() is execution.default_conv()


def test_cost_counts_the_layers_own_macs_not_the_padding():
  from octflax import cost, models  # pylint: disable=g-import-not-at-top
  model = models.get_model("oct_resnet20", alpha=0.125, num_classes=10)  # 14/2, 28/4, 56/8 channels
  report = cost.analyze(model, (1, 32, 32, 3))
  with execution.use_conv(conv):
    assert cost.analyze(model, (1, 32, 32, 3)).macs == report.macs
  # Stage 1 (32 x 32, 16 channels at alpha .125: 14 high, 2 low) holds its unpadded MACs.
  layer = next(l for l in report.layers if l.name == "stage1_block1/conv1/conv")
  hh, hl, lh, ll = 14 * 14, 14 * 2, 2 * 14, 2 * 2
  assert layer.macs == 9 * (32 * 32 * hh + 16 * 16 * (hl + lh + ll))


@pytest.mark.parametrize("bad", [0, -8, 2.5, "8"])
def test_xla_cpu_conv_refuses_a_channel_multiple_that_is_not_a_positive_integer(bad):
  with pytest.raises(ValueError, match="channel_multiple must be a positive integer"):
    execution.xla_cpu_conv(rand(0, (1, 3, 3, 2)), rand(1, (3, 3, 2, 2)), channel_multiple=bad)


def test_use_conv_refuses_what_is_not_a_function():
  with pytest.raises(ValueError, match="conv_fn"):
    with execution.use_conv("fast"):
      pass
