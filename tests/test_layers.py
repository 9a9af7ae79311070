"""OctBatchNorm (per-part statistics, eval mode, pmap) and the OctConvBN unit."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import numpy_reference as ref
from octflax import OctBatchNorm, OctConvBN, OctTensor

TOL = dict(rtol=1e-5, atol=1e-5)
EPS = 1e-5


def fast_jit(fn, **kwargs):
  """`jax.jit` without LLVM's expensive optimisations: on these tiny maps compiling, not
  running, is the cost, and the optimisation level does not change what is computed."""
  return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0}, **kwargs)


def oct_input(seed, n, hw, c_high, c_low, high_loc=3.0, high_scale=2.0, low_loc=-1.0, low_scale=0.5):
  """Parts with very different statistics, so mixing them up shows."""
  rng = np.random.default_rng(seed)
  lh, lw = math.ceil(hw[0] / 2), math.ceil(hw[1] / 2)
  high = high_loc + high_scale * rng.standard_normal((n, *hw, c_high)) if c_high else None
  low = low_loc + low_scale * rng.standard_normal((n, lh, lw, c_low)) if c_low else None
  return OctTensor(None if high is None else jnp.asarray(high.astype(np.float32)),
                   None if low is None else jnp.asarray(low.astype(np.float32)))


def random_variables(module, x, seed=0, **kwargs):
  """The variables `module.init` lays out, with random values (positive where it is a var/scale)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x, **kwargs))

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "var" in name or "scale" in name:
      value = rng.uniform(0.5, 2.0, leaf.shape)
    elif "kernel" in name:
      value = rng.standard_normal(leaf.shape) / math.sqrt(math.prod(leaf.shape[:-1]))
    else:
      value = rng.standard_normal(leaf.shape)
    return jnp.asarray(np.asarray(value).astype(leaf.dtype))

  return jax.tree_util.tree_map_with_path(fill, shapes)


def bn_reference(x, mean, var, scale, bias):
  x = np.asarray(x, np.float64)
  return (x - np.asarray(mean)) / np.sqrt(np.asarray(var, np.float64) + EPS) * np.asarray(scale) + np.asarray(bias)


def parts_of(tree, c_high):
  """Each part's channels of one BatchNorm's variables (a dict of [C] vectors): the high part's first."""
  return {"high": {k: np.asarray(v)[:c_high] for k, v in tree.items()},
          "low": {k: np.asarray(v)[c_high:] for k, v in tree.items()}}


def batch_moments(x):
  x = np.asarray(x, np.float64)
  return x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))  # biased variance, as flax.linen.BatchNorm


# ---------------------------------------------------------------------- OctBatchNorm


def test_batchnorm_variables_are_one_flax_batchnorms_over_both_parts():
  x = oct_input(0, 2, (6, 5), 3, 2)
  variables = jax.eval_shape(OctBatchNorm(use_running_average=False).init, jax.random.key(0), x)
  vanilla = jax.eval_shape(nn.BatchNorm(use_running_average=False).init, jax.random.key(0), jnp.zeros((2, 6, 5, 5)))
  chex.assert_trees_all_equal_shapes_and_dtypes(variables, vanilla)
  assert set(variables["params"]) == {"scale", "bias"} and set(variables["batch_stats"]) == {"mean", "var"}
  chex.assert_shape(variables["batch_stats"]["mean"], (5,))
  only_high = jax.eval_shape(OctBatchNorm(use_running_average=False).init, jax.random.key(0), x.high)
  chex.assert_shape(only_high["params"]["scale"], (3,))


@pytest.mark.parametrize("momentum", [0.9, 0.99])
@pytest.mark.parametrize("hw", [(6, 5), (4, 4)])
def test_batchnorm_train_uses_each_parts_own_statistics(momentum, hw):
  x = oct_input(1, 4, hw, 3, 3)
  bn = OctBatchNorm(use_running_average=False, momentum=momentum)
  variables = random_variables(bn, x)
  y, updates = fast_jit(lambda v, x: bn.apply(v, x, mutable=["batch_stats"]))(variables, x)
  chex.assert_trees_all_equal_shapes(y, x)
  for part in ("high", "low"):
    xp = getattr(x, part)
    mean, var = batch_moments(xp)
    params = parts_of(variables["params"], 3)[part]
    old = parts_of(variables["batch_stats"], 3)[part]
    np.testing.assert_allclose(np.asarray(getattr(y, part)),
                               bn_reference(xp, mean, var, params["scale"], params["bias"]), **TOL)
    new = parts_of(updates["batch_stats"], 3)[part]
    np.testing.assert_allclose(np.asarray(new["mean"]),
                               momentum * np.asarray(old["mean"]) + (1 - momentum) * mean, **TOL)
    np.testing.assert_allclose(np.asarray(new["var"]),
                               momentum * np.asarray(old["var"]) + (1 - momentum) * var, **TOL)


def test_batchnorm_eval_uses_running_averages():
  x = oct_input(2, 2, (5, 7), 2, 4)
  bn = OctBatchNorm(use_running_average=True)
  variables = random_variables(bn, x, seed=3)
  y = fast_jit(bn.apply)(variables, x)
  for part in ("high", "low"):
    stats, params = parts_of(variables["batch_stats"], 2)[part], parts_of(variables["params"], 2)[part]
    np.testing.assert_allclose(np.asarray(getattr(y, part)),
                               bn_reference(getattr(x, part), stats["mean"], stats["var"], params["scale"],
                                            params["bias"]), **TOL)
  # The call-time flag overrides a module left undecided.
  undecided = OctBatchNorm()
  y2 = fast_jit(lambda v, x: undecided.apply(v, x, use_running_average=True))(variables, x)
  chex.assert_trees_all_close(y2, y, **TOL)


def test_batchnorm_with_one_part():
  x = oct_input(4, 2, (4, 4), 0, 3)
  bn = OctBatchNorm(use_running_average=False)
  variables = random_variables(bn, x)
  y, updates = fast_jit(lambda v, x: bn.apply(v, x, mutable=["batch_stats"]))(variables, x)
  assert y.high is None
  chex.assert_shape(updates["batch_stats"]["mean"], (3,))
  mean, var = batch_moments(x.low)
  p = variables["params"]
  np.testing.assert_allclose(np.asarray(y.low), bn_reference(x.low, mean, var, p["scale"], p["bias"]), **TOL)
  np.testing.assert_allclose(np.asarray(updates["batch_stats"]["mean"]),
                             0.99 * np.asarray(variables["batch_stats"]["mean"]) + 0.01 * mean, **TOL)


@pytest.mark.parametrize("devices", [2, 4])
def test_batchnorm_under_pmap_averages_statistics_across_devices(devices):
  if jax.device_count() < devices:
    pytest.skip(f"needs {devices} devices (tests/conftest.py simulates 8 CPU devices)")
  per_device = 2
  x = oct_input(5, devices * per_device, (5, 6), 3, 2)
  bn = OctBatchNorm(use_running_average=False, momentum=0.9, axis_name="batch")
  single = OctBatchNorm(use_running_average=False, momentum=0.9)
  variables = random_variables(single, x, seed=6)
  sharded = jax.tree.map(lambda a: a.reshape(devices, per_device, *a.shape[1:]), x)
  y_p, upd_p = jax.pmap(lambda v, x: bn.apply(v, x, mutable=["batch_stats"]), axis_name="batch",
                        in_axes=(None, 0), devices=jax.devices()[:devices])(variables, sharded)
  y_s, upd_s = fast_jit(lambda v, x: single.apply(v, x, mutable=["batch_stats"]))(variables, x)
  chex.assert_shape(y_p.high, (devices, per_device, 5, 6, 3))
  chex.assert_shape(y_p.low, (devices, per_device, 3, 3, 2))
  chex.assert_trees_all_close(jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), y_p), y_s, **TOL)
  for d in range(devices):
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[d], upd_p), upd_s, **TOL)
  # ... and per-device statistics alone would differ: the test can tell.
  local = jax.tree.map(lambda a: a[0], sharded)
  _, upd_local = fast_jit(lambda v, x: single.apply(v, x, mutable=["batch_stats"]))(variables, local)
  assert not np.allclose(np.asarray(upd_local["batch_stats"]["mean"][:3]),
                         np.asarray(upd_s["batch_stats"]["mean"][:3]), rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------ OctConvBN


def conv_bn_reference(x, variables, stride, train, activation, alpha_out, momentum=0.9):
  conv = variables["params"]["conv"]
  assert set(conv) == {"kernel"}, "the conv of a conv-BN unit has no bias"
  c_in = sum(p.shape[-1] for p in (x.high, x.low) if p is not None)
  alpha_in = 0.0 if x.low is None else x.low.shape[-1] / c_in
  kernels, _, _ = ref.blocks(np.asarray(conv["kernel"]), None, c_in, alpha_in, alpha_out)
  yh, yl = ref.oct_conv(None if x.high is None else np.asarray(x.high),
                        None if x.low is None else np.asarray(x.low), kernels, None, stride)
  c_high = 0 if yh is None else yh.shape[-1]
  out, new_stats = {}, {}
  for part, y in (("high", yh), ("low", yl)):
    if y is None:
      out[part] = None
      continue
    params = parts_of(variables["params"]["bn"], c_high)[part]
    stats = parts_of(variables["batch_stats"]["bn"], c_high)[part]
    if train:
      mean, var = batch_moments(y)
      new_stats[part] = (momentum * np.asarray(stats["mean"]) + (1 - momentum) * mean,
                         momentum * np.asarray(stats["var"]) + (1 - momentum) * var)
    else:
      mean, var = np.asarray(stats["mean"]), np.asarray(stats["var"])
    out[part] = activation(bn_reference(y, mean, var, params["scale"], params["bias"]))
  return OctTensor(out["high"], out["low"]), new_stats


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("alpha_in,alpha_out", [(0.5, 0.5), (0.0, 0.25)])
def test_octconvbn_forward(train, stride, alpha_in, alpha_out):
  c_in, c_out = 8, 8
  ch, cl = ref.split(c_in, alpha_in)
  x = oct_input(7, 2, (7, 6), ch, cl)
  unit = OctConvBN(c_out, 3, alpha_in, alpha_out, strides=stride, activation=jax.nn.relu)
  variables = random_variables(unit, x, seed=8)
  assert set(variables) == {"params", "batch_stats"}
  assert set(variables["params"]) == {"conv", "bn"}
  if train:
    y, updates = fast_jit(lambda v, x: unit.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
  else:
    y = fast_jit(lambda v, x: unit.apply(v, x, train=False))(variables, x)
  expected, new_stats = conv_bn_reference(x, variables, stride, train, lambda a: np.maximum(a, 0), alpha_out)
  h_out = 7 if stride == 1 else 4
  w_out = 6 if stride == 1 else 3
  oh, ol = ref.split(c_out, alpha_out)
  chex.assert_shape(y.high, (2, h_out, w_out, oh))
  chex.assert_shape(y.low, (2, math.ceil(h_out / 2), math.ceil(w_out / 2), ol))
  chex.assert_tree_all_finite(y)
  chex.assert_trees_all_close(y, expected, **TOL)
  if train:
    for part, (mean, var) in new_stats.items():
      got = parts_of(updates["batch_stats"]["bn"], oh)[part]
      np.testing.assert_allclose(np.asarray(got["mean"]), mean, **TOL)
      np.testing.assert_allclose(np.asarray(got["var"]), var, **TOL)


def test_octconvbn_without_activation_is_affine_normalised():
  x = oct_input(9, 4, (6, 6), 4, 4)
  unit = OctConvBN(6, 1, 0.5, 0.5)
  variables = fast_jit(lambda x: unit.init(jax.random.key(0), x))(x)
  y, _ = fast_jit(lambda v, x: unit.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
  # Fresh BatchNorm (scale 1, bias 0) in train mode: every channel of each part has mean 0, var 1.
  for part in (y.high, y.low):
    mean, var = batch_moments(part)
    np.testing.assert_allclose(mean, 0.0, atol=1e-5)
    np.testing.assert_allclose(var, 1.0, atol=1e-3)
