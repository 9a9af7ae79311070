"""octflax.tensor: OctTensor, the channel-split rule, from_array / merge and OctTensor as a pytree (tree_map, jit).

OctConv under jit, grad and vmap: test_layers.py; the pool and upsample it uses: test_resample.py.
"""

from __future__ import annotations

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_reference as ref
import octflax
from octflax import OctTensor, as_oct, low_spatial_size, split_channels

TOL = dict(rtol=1e-5, atol=1e-5)


def rand(seed, shape, dtype=np.float32):
  return jax.device_put(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def oct_rand(seed, n, hw, channels, alpha):
  ch, cl = ref.split(channels, alpha)
  lh, lw = math.ceil(hw[0] / 2), math.ceil(hw[1] / 2)
  return OctTensor(rand(seed, (n, *hw, ch)) if ch else None,
                   rand(seed + 1, (n, lh, lw, cl)) if cl else None)


# -------------------------------------------------------------------- channel split


@pytest.mark.parametrize("channels,alpha,expected", [
    (64, 0.5, (32, 32)),
    (10, 0.25, (8, 2)),
    (3, 0.5, (2, 1)),
    (7, 0.75, (2, 5)),
    (8, 0.0, (8, 0)),
    (8, 1.0, (0, 8)),
    (1, 0.5, (1, 0)),
    (3, 0.25, (3, 0)),
    (100, 0.125, (88, 12)),
    (7, 1 / 3, (5, 2)),
    (100, 0.29, (72, 28)),  # int(0.29 * 100) = int(28.999999999999996) = 28: the official rule
])
def test_split_channels_floor_rule(channels, alpha, expected):
  assert split_channels(channels, alpha) == expected
  assert sum(expected) == channels


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_split_channels_rejects_alpha_outside_unit_interval(alpha):
  with pytest.raises(ValueError, match="alpha"):
    split_channels(8, alpha)


@pytest.mark.parametrize("channels", [0, -3, 2.5])
def test_split_channels_rejects_bad_channel_count(channels):
  with pytest.raises(ValueError, match="channels"):
    split_channels(channels, 0.5)


# ---------------------------------------------------------------------- construction


def test_constructor_refuses_no_parts():
  with pytest.raises(ValueError, match="high=None and low=None"):
    OctTensor(None, None)
  with pytest.raises(ValueError, match="high"):
    OctTensor(high=None, low=None)


def test_one_part_may_be_none():
  assert OctTensor(rand(0, (1, 4, 4, 2)), None).low is None
  assert OctTensor(None, rand(0, (1, 2, 2, 2))).high is None


def test_is_frozen():
  t = OctTensor(rand(0, (1, 4, 4, 2)), None)
  with pytest.raises(dataclasses.FrozenInstanceError):
    t.high = None


def test_channels_and_alpha_properties():
  t = OctTensor(jnp.zeros((2, 8, 6, 6)), jnp.zeros((2, 4, 3, 2)))
  assert (t.high_channels, t.low_channels, t.channels) == (6, 2, 8)
  assert t.alpha == 0.25
  assert t.dtype == jnp.float32
  assert t.batch_shape == (2,)
  # Any spatial rank: sequences [N, L, C] and clips [N, T, H, W, C].
  assert OctTensor(jnp.zeros((3, 9, 4)), jnp.zeros((3, 5, 4))).batch_shape == (3,)
  assert OctTensor(jnp.zeros((2, 4, 8, 8, 4)), jnp.zeros((2, 4, 4, 4, 4))).batch_shape == (2,)
  only_low = OctTensor(None, jnp.zeros((3, 4, 4, 5), jnp.bfloat16))
  assert (only_low.high_channels, only_low.low_channels, only_low.channels, only_low.alpha) == (0, 5, 5, 1.0)
  assert only_low.dtype == jnp.bfloat16
  only_high = OctTensor(jnp.zeros((2, 4, 4, 5)), None)
  assert (only_high.channels, only_high.alpha) == (5, 0.0)


def test_as_oct_wraps_plain_arrays():
  x = rand(0, (1, 4, 4, 3))
  t = as_oct(x)
  assert isinstance(t, OctTensor) and t.high is x and t.low is None
  assert as_oct(t) is t
  with pytest.raises(TypeError):
    as_oct([1.0, 2.0])


# ------------------------------------------------------------------ from_array, merge


@pytest.mark.parametrize("hw", [(8, 6), (5, 7)])
@pytest.mark.parametrize("channels,alpha", [(8, 0.25), (7, 0.75), (8, 0.5), (3, 0.5)])
def test_from_array_keeps_first_channels_high_and_pools_last_low(hw, channels, alpha):
  x = rand(1, (2, *hw, channels))
  t = jax.jit(OctTensor.from_array, static_argnums=1)(x, alpha)
  ch, cl = ref.split(channels, alpha)
  chex.assert_shape(t.high, (2, *hw, ch))
  chex.assert_shape(t.low, (2, math.ceil(hw[0] / 2), math.ceil(hw[1] / 2), cl))
  np.testing.assert_array_equal(np.asarray(t.high), np.asarray(x)[..., :ch])
  np.testing.assert_allclose(np.asarray(t.low), ref.avg_pool2(np.asarray(x)[..., ch:]), **TOL)


def test_from_array_at_alpha_0_and_1_leaves_a_part_out():
  x = rand(2, (1, 5, 5, 4))
  t0 = OctTensor.from_array(x, 0.0)
  assert t0.low is None
  np.testing.assert_array_equal(np.asarray(t0.high), np.asarray(x))
  t1 = OctTensor.from_array(x, 1.0)
  assert t1.high is None
  chex.assert_shape(t1.low, (1, 3, 3, 4))
  np.testing.assert_allclose(np.asarray(t1.low), ref.avg_pool2(np.asarray(x)), **TOL)


def test_from_array_rejects_bad_input():
  with pytest.raises(ValueError, match="rank >= 3"):
    OctTensor.from_array(jnp.zeros((4, 3)), 0.5)
  with pytest.raises(ValueError, match="alpha"):
    OctTensor.from_array(jnp.zeros((1, 4, 4, 3)), 1.5)


@pytest.mark.parametrize("hw", [(8, 6), (5, 7), (1, 3)])
def test_merge_upsamples_low_crops_and_concatenates(hw):
  lh, lw = math.ceil(hw[0] / 2), math.ceil(hw[1] / 2)
  t = OctTensor(rand(3, (2, *hw, 3)), rand(4, (2, lh, lw, 2)))
  m = jax.jit(OctTensor.merge)(t)
  chex.assert_shape(m, (2, *hw, 5))
  expected = np.concatenate([np.asarray(t.high), ref.upsample2(np.asarray(t.low), hw)], axis=-1)
  np.testing.assert_array_equal(np.asarray(m), expected)


def test_merge_with_one_part():
  low = rand(5, (1, 3, 2, 2))
  m = OctTensor(None, low).merge()
  chex.assert_shape(m, (1, 6, 4, 2))
  np.testing.assert_array_equal(np.asarray(m), ref.upsample2(np.asarray(low)))
  high = rand(6, (1, 5, 5, 2))
  assert OctTensor(high, None).merge() is high


@pytest.mark.parametrize("hw", [(8, 6), (5, 7)])
def test_from_array_inverts_merge(hw):
  """Average-pooling a nearest-upsampled map gives it back, also when the upsample was cropped."""
  lh, lw = math.ceil(hw[0] / 2), math.ceil(hw[1] / 2)
  t = OctTensor(rand(7, (2, *hw, 6)), rand(8, (2, lh, lw, 2)))
  back = jax.jit(lambda t: OctTensor.from_array(t.merge(), 0.25))(t)
  chex.assert_trees_all_close(back, t, **TOL)


# ------------------------------------------------------------------------- pytree


def test_pytree_leaves_in_field_order_and_none_parts_are_empty():
  high, low = rand(0, (1, 4, 4, 2)), rand(1, (1, 2, 2, 3))
  assert [l.shape for l in jax.tree.leaves(OctTensor(high, low))] == [high.shape, low.shape]
  assert len(jax.tree.leaves(OctTensor(high, None))) == 1
  assert len(jax.tree.leaves(OctTensor(None, low))) == 1
  assert jax.tree.structure(OctTensor(high, None)) != jax.tree.structure(OctTensor(None, high))


@pytest.mark.parametrize("parts", ["both", "high", "low"])
def test_flatten_unflatten_round_trip(parts):
  high = rand(0, (1, 4, 4, 2)) if parts in ("both", "high") else None
  low = rand(1, (1, 2, 2, 3)) if parts in ("both", "low") else None
  t = OctTensor(high, low)
  leaves, treedef = jax.tree.flatten(t)
  back = jax.tree.unflatten(treedef, leaves)
  assert isinstance(back, OctTensor)
  assert (back.high is None) == (high is None) and (back.low is None) == (low is None)
  chex.assert_trees_all_equal(back, t)
  mapped = jax.tree.map(lambda a: 2 * a, t)
  assert isinstance(mapped, OctTensor) and (mapped.low is None) == (low is None)
  for got, want in zip(jax.tree.leaves(mapped), jax.tree.leaves(t)):
    np.testing.assert_array_equal(np.asarray(got), 2 * np.asarray(want))
  chex.assert_trees_all_equal_structs(mapped, t)


def test_map_method_applies_to_present_parts():
  t = OctTensor(None, jnp.full((1, 2, 2, 1), -1.0))
  r = t.map(jax.nn.relu)
  assert r.high is None
  np.testing.assert_array_equal(np.asarray(r.low), 0.0)


# --------------------------------------------------------------------------- jit


def test_jit_passes_octtensor_through():
  t = oct_rand(0, 2, (5, 7), 6, 0.5)
  f = jax.jit(lambda u: OctTensor(u.high * 2, u.low + 1))
  r = f(t)
  assert isinstance(r, OctTensor)
  chex.assert_trees_all_close(r, OctTensor(t.high * 2, t.low + 1))


# ----------------------------------------------------------------------------- 1-D and 3-D, octave_axes


@pytest.mark.parametrize("spatial,octave_axes", [((7,), None), ((8,), None), ((3, 5, 6), None), ((3, 5, 6), (1, 2)),
                                                 ((5, 4, 3), (0,)), ((4, 5), (1,)), ((3, 4), ())])
def test_nd_from_array_pools_the_octave_axes_and_merge_restores_the_size(spatial, octave_axes):
  x = rand(len(spatial), (2, *spatial, 4))
  t = jax.jit(OctTensor.from_array, static_argnums=(1, 2))(x, 0.5, octave_axes)
  axes = tuple(range(len(spatial))) if octave_axes is None else octave_axes
  low_size = tuple(math.ceil(n / 2) if i in axes else n for i, n in enumerate(spatial))
  assert low_spatial_size(*spatial, octave_axes=octave_axes) == low_size
  chex.assert_shape(t.high, (2, *spatial, 2))
  chex.assert_shape(t.low, (2, *low_size, 2))
  np.testing.assert_allclose(np.asarray(t.low), ref.pool_axes(np.asarray(x)[..., 2:], axes), **TOL)
  merged = np.asarray(jax.jit(lambda t: t.merge(octave_axes=octave_axes))(t))
  chex.assert_shape(merged, (2, *spatial, 4))
  np.testing.assert_array_equal(merged[..., :2], np.asarray(x)[..., :2])
  np.testing.assert_allclose(merged[..., 2:], ref.upsample_axes(np.asarray(t.low), axes, spatial), **TOL)
  # Without a high part the low part is doubled on the octave axes.
  alone = jax.eval_shape(lambda low: OctTensor(None, low).merge(octave_axes=octave_axes), t.low)
  chex.assert_shape(alone, (2, *(2 * n if i in axes else n for i, n in enumerate(low_size)), 2))


def test_nd_avg_pool2_and_upsample2_refuse_sizes_they_cannot_produce():
  from octflax import avg_pool2, upsample2  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=r"upsample2: cannot upsample a 3x4 map \(octave axes \(1,\)\) to size \(4, 7\); allowed sizes are 3 x 7..8"):
    upsample2(jnp.ones((1, 3, 4, 2)), (4, 7), (1,))
  with pytest.raises(ValueError, match=r"avg_pool2: expected an array \[..., 3 spatial axes, C\] of rank >= 4"):
    avg_pool2(jnp.ones((4, 4, 2)), spatial_dims=3)
  with pytest.raises(ValueError, match="octave_axes"):
    OctTensor.from_array(jnp.ones((1, 4, 4, 2)), 0.5, octave_axes=(0, 2))


def test_tree_map_to_none_leaves_rebuilds_without_the_constructor_check():
  x = OctTensor(jnp.ones((1, 4, 4, 2)), jnp.ones((1, 2, 2, 2)))
  empty = jax.tree.map(lambda _: None, x)  # the placeholder trees JAX and Flax NNX build
  assert isinstance(empty, OctTensor) and empty.high is None and empty.low is None
  assert [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(x)] == [".high", ".low"]
  with pytest.raises(ValueError, match="needs a high or a low part"):
    OctTensor(None, None)  # constructing one by hand is still refused


@pytest.mark.slow  # eager 3-D layers: about 10 s on 2 cores
def test_the_code_blocks_of_docs_nd_octconv_run():
  import pathlib  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "nd_octconv.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
  assert len(blocks) == 4
  namespace = {}
  for block in blocks:  # one namespace, in page order, as a reader runs them
    exec(compile(block, "docs/nd_octconv.md", "exec"), namespace)  # pylint: disable=exec-used


def test_top_level_merge_upsamples_low_and_passes_arrays_through():
  high = np.arange(2 * 5 * 3 * 2, dtype=np.float32).reshape(2, 5, 3, 2)
  low = np.arange(2 * 3 * 2 * 1, dtype=np.float32).reshape(2, 3, 2, 1)
  parts = octflax.OctTensor(jax.device_put(high), jax.device_put(low))
  merged = np.asarray(jax.jit(octflax.merge)(parts))
  chex.assert_shape(merged, (2, 5, 3, 3))
  np.testing.assert_array_equal(merged[..., :2], high)
  np.testing.assert_array_equal(merged[:, 4, 2, 2], low[:, 2, 1, 0])  # (4 // 2, 2 // 2)
  np.testing.assert_array_equal(merged[:, 1, 0, 2], low[:, 0, 0, 0])
  assert octflax.merge(parts.high) is parts.high
