"""octflax.layers: OctConv and OctConvTranspose against the float64 NumPy reference of docs/design.md,
OctBatchNorm (per-part statistics, eval mode, pmap) and the OctConvBN unit.

OctConv is covered on the four paths at stride 1 and 2, even/odd/rectangular maps, every alpha pair,
awkward channel counts, 1x1/3x3/5x5 kernels, grouped and depthwise convs, bias on/off, two execution
forms of `octflax.execution` (all of them: test_execution.py), equality with `flax.linen.Conv` at
alpha = 0, Table 1 of the paper counted from the traced computation, bf16 compute, jit / grad / vmap,
1-D and 3-D maps with octave axes and dilation, and the argument errors.
"""

from __future__ import annotations

import functools
import itertools
import math
from fractions import Fraction

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import numpy_reference as ref
from octflax import OctBatchNorm, OctConv, OctConvBN, OctConvTranspose, OctTensor, execution, functional as F

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
TOL = dict(rtol=1e-5, atol=1e-5)
EPS = 1e-5
BIAS_INIT = nn.initializers.normal(1.0)  # non-zero biases, so a misplaced bias shows


# ----------------------------------------------------------------------------- helpers


def make_input(seed: int, n: int, hw: tuple[int, int], channels: int, alpha: float, dtype=np.float32):
  """Random OctTensor of `channels` channels split at `alpha` on an H x W map (NumPy RNG and
  `jax.device_put`: no per-shape compilation of JAX's random kernels or of `jnp.asarray`'s copy)."""
  ch, cl = ref.split(channels, alpha)
  h, w = hw
  rng = np.random.default_rng(seed)
  high = jax.device_put(rng.standard_normal((n, h, w, ch)).astype(dtype)) if ch else None
  low = jax.device_put(rng.standard_normal((n, math.ceil(h / 2), math.ceil(w / 2), cl)).astype(dtype)) if cl else None
  return OctTensor(high, low)


def init_variables(module, x, seed: int = 0):
  """The variable tree `module.init` builds (structure, shapes, dtypes), filled with random
  values from NumPy: kernels ~ N(0, 1/fan_in), biases ~ N(0, 1) so a misplaced bias shows.

  Traced in the reference execution form: the variables are every form's, and the default form
  would trace each platform's form of the layer."""
  with execution.use_form(execution.REFERENCE):
    shapes = jax.eval_shape(module.init, jax.random.key(0), x)
  rng = np.random.default_rng(seed + 1000)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    scale = 1.0
    if "kernel" in name:
      scale = 1.0 / math.sqrt(math.prod(leaf.shape[:-1]))
    return jax.device_put((scale * rng.standard_normal(leaf.shape)).astype(leaf.dtype))

  return jax.tree_util.tree_map_with_path(fill, shapes)


def expected_out_shapes(n, hw, c_in, c_out, alpha_in, alpha_out, stride):
  """Output shapes per the design: high [N, H_out, W_out, C_h], low [N, ceil(H_out/2), ..]."""
  h, w = hw
  in_high, _ = ref.split(c_in, alpha_in)
  out_high, out_low = ref.split(c_out, alpha_out)
  if in_high:
    h_out, w_out = (h, w) if stride == 1 else (math.ceil(h / 2), math.ceil(w / 2))
  else:  # only a low input part of size ceil(H/2): L->H upsamples it (stride 1) or not (stride 2)
    lh, lw = math.ceil(h / 2), math.ceil(w / 2)
    h_out, w_out = (2 * lh, 2 * lw) if stride == 1 else (lh, lw)
  high = (n, h_out, w_out, out_high) if out_high else None
  low = (n, math.ceil(h_out / 2), math.ceil(w_out / 2), out_low) if out_low else None
  return high, low


def np_part(p):
  return None if p is None else np.asarray(p, np.float64)


def path_params(params, c_in, c_out, alpha_in, alpha_out, k, groups=1, depthwise=False, use_bias=True):
  """The layer's parameters checked to be `flax.linen.Conv`'s (one HWIO kernel, one bias) and read
  as the paths' blocks by the reference's rule: ``(kernels, biases, groups per path)``."""
  kernel_size = (k, k) if isinstance(k, int) else tuple(k)
  assert set(params) == ({"kernel", "bias"} if use_bias else {"kernel"}), sorted(params)
  chex.assert_shape(params["kernel"], (*kernel_size, 1 if depthwise else c_in // groups, c_out))
  if use_bias:
    chex.assert_shape(params["bias"], (c_out,))
  return ref.blocks(np.asarray(params["kernel"]), np.asarray(params["bias"]) if use_bias else None, c_in,
                    alpha_in, alpha_out, groups, depthwise)


def run_case(*, c_in, c_out, alpha_in, alpha_out, hw, k=3, stride=1, groups=1, use_bias=True,
             form="shared_output", n=2, seed=0, depthwise=False):
  """Lays out an OctConv's variables (init), applies it in ``form`` (None: the platform's default)
  and holds the result against the reference."""
  conv = OctConv(c_out, k, alpha_in, alpha_out, strides=stride, feature_group_count=groups,
                 use_bias=use_bias, bias_init=BIAS_INIT)
  x = make_input(seed, n, hw, c_in, alpha_in)
  variables = init_variables(conv, x, seed)
  with execution.use_form(form):
    y = jax.jit(conv.apply)(variables, x)
  kernels, biases, per_path_groups = path_params(variables["params"], c_in, c_out, alpha_in, alpha_out, k, groups,
                                                 depthwise, use_bias)
  yh, yl = ref.oct_conv(np_part(x.high), np_part(x.low), kernels, biases, stride, per_path_groups)
  high_shape, low_shape = expected_out_shapes(n, hw, c_in, c_out, alpha_in, alpha_out, stride)
  assert (y.high is None) == (high_shape is None)
  assert (y.low is None) == (low_shape is None)
  if high_shape is not None:
    chex.assert_shape(y.high, high_shape)
    assert yh.shape == high_shape
  if low_shape is not None:
    chex.assert_shape(y.low, low_shape)
    assert yl.shape == low_shape
  chex.assert_tree_all_finite(y)
  chex.assert_trees_all_close(y, OctTensor(yh, yl), **TOL)
  return y


# --------------------------------------------------------------- against the reference


@pytest.mark.parametrize("alpha_in,alpha_out", list(itertools.product(ALPHAS, ALPHAS)))
def test_all_alpha_pairs_stride1_match_reference(alpha_in, alpha_out):
  run_case(c_in=8, c_out=8, alpha_in=alpha_in, alpha_out=alpha_out, hw=(5, 7))


STRIDE2_PAIRS = [(a, a) for a in ALPHAS] + [
    (0.0, 0.5), (0.5, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 0.5), (0.5, 1.0), (0.25, 0.75), (0.75, 0.25)]


@pytest.mark.parametrize("alpha_in,alpha_out", STRIDE2_PAIRS)
def test_alpha_pairs_stride2_pools_before_conv_in_the_default_form(alpha_in, alpha_out):
  run_case(c_in=8, c_out=8, alpha_in=alpha_in, alpha_out=alpha_out, hw=(9, 6), stride=2, form=None)


@pytest.mark.parametrize("hw", [(8, 8), (5, 7), (9, 6), (7, 7), (1, 1), (2, 3)])
@pytest.mark.parametrize("stride", [1, 2])
def test_even_odd_square_rectangular_maps(hw, stride):
  run_case(c_in=6, c_out=6, alpha_in=0.5, alpha_out=0.5, hw=hw, stride=stride)


@pytest.mark.parametrize("c_in,c_out,alpha_in,alpha_out", [
    (7, 5, 0.5, 0.5),      # (4,3) -> (3,2)
    (7, 5, 0.75, 0.25),    # (2,5) -> (4,1)
    (13, 13, 0.5, 0.5),    # (7,6) -> (7,6)
    (13, 13, 0.25, 0.75),  # (10,3) -> (4,9)
    (3, 3, 0.25, 0.25),    # int(.75) = 0 low channels: no low part, no L paths
    (3, 1, 0.5, 0.5),      # a single output channel lands in the high part
    (1, 4, 0.0, 0.5),      # conversion from a 1-channel vanilla input
])
@pytest.mark.parametrize("stride", [1, 2])
def test_awkward_channel_counts(c_in, c_out, alpha_in, alpha_out, stride):
  run_case(c_in=c_in, c_out=c_out, alpha_in=alpha_in, alpha_out=alpha_out, hw=(5, 6), stride=stride)


@pytest.mark.parametrize("k", [1, 5, (1, 3), (5, 3)])
@pytest.mark.parametrize("stride", [1, 2])
def test_kernel_sizes_pad_symmetrically(k, stride):
  run_case(c_in=6, c_out=4, alpha_in=0.5, alpha_out=0.25, hw=(7, 6), k=k, stride=stride)


@pytest.mark.parametrize("groups,c_in,c_out,alpha_in,alpha_out", [
    (2, 8, 12, 0.5, 0.5),     # (4,4) -> (6,6)
    (2, 8, 8, 0.5, 0.25),     # (4,4) -> (6,2)
    (2, 8, 8, 0.0, 0.5),      # vanilla input converts, grouped
    (4, 16, 16, 0.25, 0.25),  # (12,4) -> (12,4)
    (4, 16, 8, 0.5, 0.5),     # (8,8) -> (4,4)
])
@pytest.mark.parametrize("stride", [1, 2])
def test_grouped_conv_every_path_uses_the_groups(groups, c_in, c_out, alpha_in, alpha_out, stride):
  run_case(c_in=c_in, c_out=c_out, alpha_in=alpha_in, alpha_out=alpha_out, hw=(5, 7),
           groups=groups, stride=stride)


@pytest.mark.parametrize("channels,alpha", [(8, 0.25), (6, 0.5), (5, 0.75), (4, 1.0)])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_has_only_intra_paths(channels, alpha, stride):
  run_case(c_in=channels, c_out=channels, alpha_in=alpha, alpha_out=alpha, hw=(7, 5),
           groups=channels, stride=stride, depthwise=True)


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("form", ["shared_output", "separate"])
@pytest.mark.parametrize("stride", [1, 2])
def test_bias_in_two_forms(use_bias, form, stride):
  run_case(c_in=8, c_out=6, alpha_in=0.5, alpha_out=0.5, hw=(5, 7), stride=stride,
           use_bias=use_bias, form=form)


def test_params_from_init_match_reference():
  """The real initialiser's parameters (not only the init's layout) drive the same math."""
  conv = OctConv(6, 3, 0.5, 0.25, strides=2, bias_init=BIAS_INIT)
  x = make_input(4, 2, (7, 6), 8, 0.5)
  variables = jax.jit(conv.init)(jax.random.key(0), x)
  kernels, biases, _ = path_params(variables["params"], 8, 6, 0.5, 0.25, 3)
  y = jax.jit(conv.apply)(variables, x)
  yh, yl = ref.oct_conv(np_part(x.high), np_part(x.low), kernels, biases, stride=2)
  chex.assert_shape(y.high, (2, 4, 3, 5))
  chex.assert_shape(y.low, (2, 2, 2, 1))
  chex.assert_trees_all_close(y, OctTensor(yh, yl), **TOL)


def test_strides_given_as_pair_equal_int():
  x = make_input(0, 1, (6, 6), 4, 0.5)
  a = OctConv(4, 3, 0.5, 0.5, strides=2)
  b = OctConv(4, 3, 0.5, 0.5, strides=(2, 2))
  v = init_variables(a, x)
  chex.assert_trees_all_equal(jax.jit(a.apply)(v, x), jax.jit(b.apply)(v, x))


# ------------------------------------------------------- alpha = 0 is flax.linen.Conv


def _alpha_zero_and_flax_conv(k, use_bias, hw):
  x = make_input(k, 2, hw, 5, 0.0).high
  conv = OctConv(7, k, 0.0, 0.0, use_bias=use_bias)
  variables = init_variables(conv, x)
  assert set(variables["params"]) == ({"kernel", "bias"} if use_bias else {"kernel"})
  flax_conv = nn.Conv(7, (k, k), padding="SAME", use_bias=use_bias)
  # The parameter layout is flax.linen.Conv's.
  chex.assert_trees_all_equal_shapes_and_dtypes(
      variables["params"], jax.eval_shape(flax_conv.init, jax.random.key(0), x)["params"])
  expected = flax_conv.apply({"params": variables["params"]}, x)
  return conv, variables, x, expected


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("hw", [(8, 8), (5, 7)])
def test_alpha_zero_equals_flax_conv_bit_for_bit_with_cpu_choices_off(k, use_bias, hw):
  conv, variables, x, expected = _alpha_zero_and_flax_conv(k, use_bias, hw)
  with execution.use_conv(F.conv):
    y = conv.apply(variables, x)
  assert y.low is None
  chex.assert_shape(y.high, (2, *hw, 7))
  np.testing.assert_array_equal(np.asarray(y.high), np.asarray(expected))


@pytest.mark.parametrize("k", [1, 3])
def test_alpha_zero_equals_flax_conv_to_float32_rounding_with_default_execution(k):
  # On CPU a 1x1 convolution runs as a dot over channels (octflax.execution): the same
  # products, summed in another order.
  conv, variables, x, expected = _alpha_zero_and_flax_conv(k, True, (5, 7))
  np.testing.assert_allclose(np.asarray(conv.apply(variables, x).high), np.asarray(expected), rtol=1e-6, atol=1e-6)


def test_alpha_zero_grouped_equals_flax_conv_bit_for_bit():
  x = make_input(0, 2, (6, 5), 8, 0.0).high
  conv = OctConv(4, 3, 0.0, 0.0, feature_group_count=2)
  variables = init_variables(conv, x)
  expected = nn.Conv(4, (3, 3), feature_group_count=2).apply({"params": variables["params"]}, x)
  np.testing.assert_array_equal(np.asarray(conv.apply(variables, x).high), np.asarray(expected))


@pytest.mark.parametrize("hw", [(8, 8), (7, 5)])
def test_pool_stride_false_is_a_strided_conv_with_symmetric_padding(hw):
  x = make_input(0, 1, hw, 3, 0.0).high
  conv = OctConv(4, 3, 0.0, 0.0, strides=2, pool_stride=False)
  variables = init_variables(conv, x)
  y = jax.jit(conv.apply)(variables, x)
  p = variables["params"]
  expected = ref.conv2d(x, p["kernel"], stride=2) + np.asarray(p["bias"])
  chex.assert_shape(y.high, (1, math.ceil(hw[0] / 2), math.ceil(hw[1] / 2), 4))
  chex.assert_trees_all_close(y.high, expected, **TOL)


# ------------------------------------------------------ Table 1 from the traced layer


def _sub_jaxprs(params):
  for value in params.values():
    for item in value if isinstance(value, (list, tuple)) else (value,):
      if hasattr(item, "eqns"):
        yield item
      elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
        yield item.jaxpr


def conv_eqns(jaxpr):
  """Every conv_general_dilated equation of a jaxpr, recursing into sub-jaxprs."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      found.append(eqn)
    for sub in _sub_jaxprs(eqn.params):
      found.extend(conv_eqns(sub))
  return found


def conv_macs(eqn) -> int:
  """Output elements x kh x kw x (input channels / groups) of one conv equation."""
  rhs = eqn.invars[1].aval.shape
  rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
  kernel_in = rhs[rhs_spec[1]]
  window = math.prod(rhs[d] for d in rhs_spec[2:])
  return math.prod(eqn.outvars[0].aval.shape) * window * kernel_in


def traced_layer(module, x):
  variables = jax.eval_shape(module.init, jax.random.key(0), x)
  with execution.use_form(execution.REFERENCE):  # The layer's equations, not a backend's form of them.
    jaxpr = jax.make_jaxpr(lambda v, x: module.apply(v, x))(variables, x)
  out = jax.eval_shape(module.apply, variables, x)
  return variables, conv_eqns(jaxpr.jaxpr), out


def oct_input_shapes(n, h, w, c, alpha):
  ch, cl = ref.split(c, alpha)
  return OctTensor(
      jax.ShapeDtypeStruct((n, h, w, ch), jnp.float32) if ch else None,
      jax.ShapeDtypeStruct((n, math.ceil(h / 2), math.ceil(w / 2), cl), jnp.float32) if cl else None)


TABLE1 = {0.0: (100, 100), 0.125: (82, 91), 0.25: (67, 81), 0.5: (44, 63), 0.75: (30, 44),
          0.875: (26, 35), 1.0: (25, 25)}


def _percent(fraction: Fraction) -> int:
  return math.floor(fraction * 100 + Fraction(1, 2))  # round half up


def test_table1_macs_and_memory_from_the_traced_layer():
  n, h, w, c = 1, 32, 32, 64
  _, vanilla_convs, _ = traced_layer(nn.Conv(c, (3, 3)), jax.ShapeDtypeStruct((n, h, w, c), jnp.float32))
  vanilla_macs = sum(conv_macs(e) for e in vanilla_convs)
  assert vanilla_macs == h * w * c * c * 9
  vanilla_mem = n * h * w * c
  for a, (mac_pct, mem_pct) in TABLE1.items():
    x = oct_input_shapes(n, h, w, c, a)
    _, convs, y = traced_layer(OctConv(c, 3, a, a), x)
    macs = sum(conv_macs(e) for e in convs)
    fa = Fraction(a)
    mac_ratio = Fraction(macs, vanilla_macs)
    assert mac_ratio == 1 - Fraction(3, 4) * (2 * fa - fa * fa), (a, mac_ratio)
    assert _percent(mac_ratio) == mac_pct, (a, float(mac_ratio))
    out_elements = sum(math.prod(p.shape) for p in (y.high, y.low) if p is not None)
    mem_ratio = Fraction(out_elements, vanilla_mem)
    assert mem_ratio == 1 - Fraction(3, 4) * fa, (a, mem_ratio)
    # The paper prints 35% at a = .875 where 1 - 3/4 a = 34.375%; allow its rounding.
    assert abs(float(mem_ratio) * 100 - mem_pct) <= 1.0, (a, float(mem_ratio))


@pytest.mark.parametrize("stride", [1, 2])
def test_every_conv_is_stride1_with_symmetric_padding(stride):
  x = oct_input_shapes(2, 9, 6, 8, 0.5)
  _, convs, _ = traced_layer(OctConv(8, 5, 0.5, 0.5, strides=stride), x)
  assert len(convs) == 4
  for eqn in convs:
    assert tuple(eqn.params["window_strides"]) == (1, 1)
    assert tuple(eqn.params["lhs_dilation"]) == (1, 1)
    assert tuple(eqn.params["rhs_dilation"]) == (1, 1)
    padding = eqn.params["padding"]
    assert [tuple(p) for p in padding] == [(2, 2), (2, 2)], padding


@pytest.mark.parametrize("alpha", [0.0, 0.125, 0.25, 0.5, 0.75, 1.0])
def test_stride2_macs_are_one_minus_three_quarters_alpha_of_a_strided_conv(alpha):
  """At stride 2, H->H, L->H run at the output resolution H/2 (L->H reads the unpooled X^L,
  no upsample) and H->L, L->L at H/4: MACs relative to a vanilla stride-2 conv are
  (1-a)^2 + a(1-a) + (a^2 + a(1-a))/4 = 1 - 3/4 a."""
  n, h, w, c = 1, 16, 16, 16
  x = oct_input_shapes(n, h, w, c, alpha)
  _, convs, y = traced_layer(OctConv(c, 3, alpha, alpha, strides=2), x)
  vanilla_macs = (h // 2) * (w // 2) * c * c * 9
  fa = Fraction(alpha)
  assert Fraction(sum(map(conv_macs, convs)), vanilla_macs) == 1 - Fraction(3, 4) * fa


def _param_count(variables):
  return sum(math.prod(p.shape) for p in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("alpha_in,alpha_out", [(a, a) for a in TABLE1] + [
    (0.0, 0.5), (0.5, 0.0), (0.25, 0.75), (1.0, 0.0), (0.0, 1.0), (0.125, 0.875)])
@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("use_bias", [True, False])
def test_param_count_equals_vanilla(alpha_in, alpha_out, groups, use_bias):
  c_in, c_out = 64, 32  # every split of these at multiples of 1/8 is divisible by 4
  x = oct_input_shapes(1, 8, 8, c_in, alpha_in)
  oct_vars = jax.eval_shape(
      OctConv(c_out, 3, alpha_in, alpha_out, feature_group_count=groups, use_bias=use_bias).init,
      jax.random.key(0), x)
  vanilla = jax.eval_shape(nn.Conv(c_out, (3, 3), feature_group_count=groups, use_bias=use_bias).init,
                           jax.random.key(0), jax.ShapeDtypeStruct((1, 8, 8, c_in), jnp.float32))
  assert _param_count(oct_vars) == _param_count(vanilla) == 9 * c_in // groups * c_out + use_bias * c_out


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_param_count_depthwise_equals_vanilla(alpha):
  c = 16
  x = oct_input_shapes(1, 8, 8, c, alpha)
  oct_vars = jax.eval_shape(OctConv(c, 3, alpha, alpha, feature_group_count=c).init, jax.random.key(0), x)
  vanilla = jax.eval_shape(nn.Conv(c, (3, 3), feature_group_count=c).init, jax.random.key(0),
                           jax.ShapeDtypeStruct((1, 8, 8, c), jnp.float32))
  assert _param_count(oct_vars) == _param_count(vanilla) == 9 * c + c


# --------------------------------------------------------------------------- bf16


@pytest.mark.parametrize("stride", [1, 2])
def test_bf16_compute_keeps_float32_params(stride):
  x = make_input(0, 2, (6, 7), 8, 0.5)
  conv32 = OctConv(8, 3, 0.5, 0.5, strides=stride, bias_init=BIAS_INIT)
  conv16 = OctConv(8, 3, 0.5, 0.5, strides=stride, bias_init=BIAS_INIT, dtype=jnp.bfloat16)
  for leaf in jax.tree.leaves(jax.eval_shape(conv16.init, jax.random.key(0), x)):
    assert leaf.dtype == jnp.float32
  variables = init_variables(conv16, x)
  y16 = jax.jit(conv16.apply)(variables, x)
  y32 = jax.jit(conv32.apply)(variables, x)
  assert y16.high.dtype == jnp.bfloat16 and y16.low.dtype == jnp.bfloat16
  assert y32.high.dtype == jnp.float32
  chex.assert_trees_all_equal_shapes(y16, y32)
  chex.assert_tree_all_finite(y16)
  chex.assert_trees_all_close(jax.tree.map(lambda a: a.astype(jnp.float32), y16), y32, atol=0.1, rtol=0.05)
  # ... and not trivially: bf16 rounding is visible.
  assert not np.array_equal(np.asarray(y16.high, np.float32), np.asarray(y32.high))


def test_bf16_input_and_params_infers_bf16():
  x = make_input(0, 1, (4, 4), 4, 0.5, dtype=jnp.bfloat16)
  conv = OctConv(4, 3, 0.5, 0.5, param_dtype=jnp.bfloat16)
  variables = init_variables(conv, x)
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == jnp.bfloat16
  y = jax.jit(conv.apply)(variables, x)
  assert y.high.dtype == y.low.dtype == jnp.bfloat16


# ------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
@pytest.mark.parametrize("name", ["alpha_in", "alpha_out"])
def test_alpha_outside_unit_interval_fails_at_construction(bad, name):
  kwargs = {"alpha_in": 0.5, "alpha_out": 0.5, name: bad}
  with pytest.raises(ValueError, match=name):
    OctConv(8, 3, **kwargs)


@pytest.mark.parametrize("strides", [3, (1, 3), 0, (2, 2, 2)])
def test_stride_not_1_or_2_fails(strides):
  with pytest.raises(ValueError, match="strides"):
    OctConv(8, 3, 0.5, 0.5, strides=strides)


@pytest.mark.parametrize("k", [2, 4, (3, 2)])
def test_even_kernel_size_fails(k):
  with pytest.raises(ValueError, match="kernel_size"):
    OctConv(8, k, 0.5, 0.5)


@pytest.mark.parametrize("padding", ["VALID", ((1, 1), (1, 1)), "CIRCULAR"])
def test_padding_other_than_same_fails(padding):
  with pytest.raises(ValueError, match="padding"):
    OctConv(8, 3, 0.5, 0.5, padding=padding)


@pytest.mark.parametrize("low_hw", [(4, 4), (2, 3), (3, 3), (5, 4)])
def test_low_part_of_wrong_size_fails(low_hw):
  x = OctTensor(jnp.ones((1, 7, 6, 4)), jnp.ones((1, *low_hw, 4)))  # needs 4 x 3
  conv = OctConv(8, 3, 0.5, 0.5)
  with pytest.raises(ValueError, match="low part"):
    jax.eval_shape(conv.init, jax.random.key(0), x)


def test_channel_split_not_matching_alpha_in_fails():
  conv = OctConv(8, 3, 0.5, 0.5)
  with pytest.raises(ValueError, match="alpha_in"):
    jax.eval_shape(conv.init, jax.random.key(0), jnp.ones((1, 8, 8, 8)))
  with pytest.raises(ValueError, match="alpha_in"):  # 5 high + 3 low is not the (4, 4) split
    jax.eval_shape(conv.init, jax.random.key(0), OctTensor(jnp.ones((1, 8, 8, 5)), jnp.ones((1, 4, 4, 3))))


def test_groups_that_do_not_divide_a_path_fail():
  conv = OctConv(8, 3, 0.25, 0.25, feature_group_count=4)  # (6, 2) -> (6, 2)
  x = make_input(0, 1, (8, 8), 8, 0.25)
  with pytest.raises(ValueError, match="feature_group_count"):
    jax.eval_shape(conv.init, jax.random.key(0), x)


def test_depthwise_needs_equal_alphas():
  conv = OctConv(8, 3, 0.5, 0.25, feature_group_count=8)
  x = make_input(0, 1, (8, 8), 8, 0.5)
  with pytest.raises(ValueError, match="alpha_in == alpha_out"):
    jax.eval_shape(conv.init, jax.random.key(0), x)


# ------------------------------------------------------------------ jit / grad / vmap


def rand(seed, shape, dtype=np.float32):
  return jax.device_put(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


@pytest.mark.parametrize("alpha_in,alpha_out", [(0.5, 0.5), (0.75, 0.25)])
def test_jit_octconv_equals_eager(alpha_in, alpha_out):
  conv = OctConv(6, 3, alpha_in, alpha_out)
  x = make_input(1, 2, (5, 7), 8, alpha_in)
  variables = init_variables(conv, x)
  chex.assert_trees_all_close(jax.jit(conv.apply)(variables, x), conv.apply(variables, x), **TOL)


@pytest.mark.parametrize("alpha_in,alpha_out,stride", [
    (0.5, 0.5, 1), (0.5, 0.25, 2), (0.0, 0.5, 1), (1.0, 0.5, 2)])
def test_grad_wrt_octtensor_input_is_the_reference_adjoint(alpha_in, alpha_out, stride):
  """loss(x) = sum(R * OctConv(x)) is affine in x, so <grad, v> = sum(R * conv_nobias(v))."""
  conv = OctConv(6, 3, alpha_in, alpha_out, strides=stride)
  x = make_input(2, 2, (5, 7), 8, alpha_in)
  variables = init_variables(conv, x, seed=1)
  y = jax.eval_shape(conv.apply, variables, x)
  r = jax.tree.map(lambda p: rand(p.size, p.shape), y)

  def loss(inp):
    out = conv.apply(variables, inp)
    return sum(jnp.sum(a * b) for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(r)))

  g = jax.jit(jax.grad(loss))(x)
  assert isinstance(g, OctTensor)
  chex.assert_trees_all_equal_shapes_and_dtypes(g, x)
  chex.assert_tree_all_finite(g)
  kernels, _, _ = path_params(variables["params"], 8, 6, alpha_in, alpha_out, 3)
  for seed in (10, 20):
    v = make_input(seed, 2, (5, 7), 8, alpha_in)
    lhs = sum(float(np.vdot(np.asarray(a, np.float64), np.asarray(b, np.float64)))
              for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(v)))
    vh, vl = ref.oct_conv(np_part(v.high), np_part(v.low), kernels, None, stride)
    rhs = sum(float(np.vdot(np.asarray(a, np.float64), b))
              for a, b in zip(jax.tree.leaves(r), [p for p in (vh, vl) if p is not None]))
    assert lhs == pytest.approx(rhs, rel=1e-5, abs=1e-4)


def test_grad_wrt_params_matches_finite_differences():
  conv = OctConv(4, 3, 0.5, 0.5)
  x = make_input(3, 1, (5, 6), 4, 0.5)
  variables = init_variables(conv, x, seed=2)

  def loss(params):
    y = conv.apply({"params": params}, x)
    return jnp.sum(y.high ** 2) + jnp.sum(jnp.sin(y.low))

  g = jax.jit(jax.grad(loss))(variables["params"])
  chex.assert_trees_all_equal_shapes(g, variables["params"])
  # Central difference along one random direction, in float64 through the reference.
  direction = jax.tree.map(lambda p: rand(p.size + 7, p.shape), variables["params"])
  dot = sum(float(jnp.vdot(a, b)) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(direction)))

  def ref_loss(t):
    params = jax.tree.map(lambda p, d: np.asarray(p, np.float64) + t * np.asarray(d, np.float64),
                          variables["params"], direction)
    kernels, biases, _ = path_params(params, 4, 4, 0.5, 0.5, 3)
    yh, yl = ref.oct_conv(np_part(x.high), np_part(x.low), kernels, biases)
    return np.sum(yh ** 2) + np.sum(np.sin(yl))

  eps = 1e-4
  fd = (ref_loss(eps) - ref_loss(-eps)) / (2 * eps)
  assert dot == pytest.approx(fd, rel=1e-4)


@pytest.mark.parametrize("alpha_in", [0.5, 0.0])
def test_vmap_over_leading_axis_equals_loop(alpha_in):
  conv = OctConv(4, 3, alpha_in, 0.5, strides=2)
  xs = [make_input(10 * i, 2, (5, 6), 4, alpha_in) for i in range(3)]
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *xs)
  chex.assert_shape(stacked.high, (3, 2, 5, 6, ref.split(4, alpha_in)[0]))
  variables = init_variables(conv, xs[0])
  batched = jax.jit(jax.vmap(conv.apply, in_axes=(None, 0)))(variables, stacked)
  assert isinstance(batched, OctTensor)
  chex.assert_shape(batched.high, (3, 2, 3, 3, 2))
  chex.assert_shape(batched.low, (3, 2, 2, 2, 2))
  apply = jax.jit(conv.apply)
  looped = jax.tree.map(lambda *a: jnp.stack(a), *[apply(variables, x) for x in xs])
  chex.assert_trees_all_close(batched, looped, **TOL)


# --------------------------------------------- any number of spatial axes: 1-D, 3-D, octave_axes, dilation


def _low_size(spatial, octave):
  return tuple(math.ceil(s / 2) if i in octave else s for i, s in enumerate(spatial))


def make_input_nd(seed, n, spatial, channels, alpha, octave_axes=None):
  """Random OctTensor [N, *spatial, C] split at alpha, the low part halved on the octave axes."""
  octave = range(len(spatial)) if octave_axes is None else octave_axes
  ch, cl = ref.split(channels, alpha)
  rng = np.random.default_rng(seed)
  high = jax.device_put(rng.standard_normal((n, *spatial, ch)).astype(np.float32)) if ch else None
  low = jax.device_put(rng.standard_normal((n, *_low_size(spatial, octave), cl)).astype(np.float32)) if cl else None
  return OctTensor(high, low)


def expected_nd_spatial(spatial, strides, octave, has_high):
  """(high, low) output spatial sizes per the per-axis rule of docs/design.md ("Spatial rank and octave axes")."""
  if has_high:
    high = tuple(math.ceil(n / s) for n, s in zip(spatial, strides))
  else:  # from the low part alone: l2h upsamples on octave axes of stride 1, pools on others of stride 2
    low_in = _low_size(spatial, octave)
    high = tuple((l if s == 2 else 2 * l) if i in octave else math.ceil(l / s)
                 for i, (l, s) in enumerate(zip(low_in, strides)))
  return high, _low_size(high, octave)


def assert_relative_close(actual, expected, rtol=1e-5):
  """max |actual - expected| <= rtol * max |expected| (the issue's "1e-5 relative")."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  scale = max(np.max(np.abs(expected)), 1e-30)
  assert np.max(np.abs(actual - expected)) <= rtol * scale, np.max(np.abs(actual - expected)) / scale


def run_nd_case(*, spatial, k, c_in=8, c_out=8, alpha_in=0.5, alpha_out=0.5, strides=1, octave_axes=None,
                dilation=1, groups=1, depthwise=False, seed=0, n=2):
  rank = len(spatial)
  conv = OctConv(c_out, k, alpha_in, alpha_out, strides=strides, feature_group_count=groups,
                 octave_axes=octave_axes, kernel_dilation=dilation, bias_init=BIAS_INIT)
  x = make_input_nd(seed, n, spatial, c_in, alpha_in, octave_axes)
  variables = init_variables(conv, x, seed)
  y = jax.jit(conv.apply)(variables, x)
  kernels, biases, path_groups = path_params(variables["params"], c_in, c_out, alpha_in, alpha_out, k, groups,
                                             depthwise)
  stride_t = (strides,) * rank if isinstance(strides, int) else strides
  dilation_t = (dilation,) * rank if isinstance(dilation, int) else dilation
  yh, yl = ref.oct_conv_nd(np_part(x.high), np_part(x.low), kernels, biases, stride_t, path_groups,
                           octave_axes, dilation_t)
  octave = tuple(range(rank)) if octave_axes is None else octave_axes
  high_size, low_size = expected_nd_spatial(spatial, stride_t, octave, x.high is not None)
  _, out_low = ref.split(c_out, alpha_out)
  out_high = c_out - out_low
  assert (y.high is None) == (out_high == 0) and (y.low is None) == (out_low == 0)
  if out_high:
    chex.assert_shape(y.high, (n, *high_size, out_high))
    assert_relative_close(y.high, yh)
  if out_low:
    chex.assert_shape(y.low, (n, *low_size, out_low))
    assert_relative_close(y.low, yl)
  return y


ND_CASES = {
    # name: keyword arguments of run_nd_case
    "1d_odd_stride1": dict(spatial=(9,), k=(3,)),
    "1d_even_stride2": dict(spatial=(8,), k=(3,), strides=2),
    "1d_odd_stride2_k5": dict(spatial=(11,), k=(5,), strides=2),
    "1d_alpha_0_to_half": dict(spatial=(9,), k=(3,), alpha_in=0.0, strides=2),
    "1d_alpha_half_to_0": dict(spatial=(7,), k=(3,), alpha_out=0.0),
    "1d_alpha_1_to_half": dict(spatial=(7,), k=(3,), alpha_in=1.0, strides=2),
    "1d_alpha_half_to_1": dict(spatial=(7,), k=(3,), alpha_out=1.0),
    "1d_alpha_1_to_1_stride1": dict(spatial=(7,), k=(3,), alpha_in=1.0, alpha_out=1.0),
    "1d_mixed_quarter_to_three_quarters": dict(spatial=(10,), k=(3,), alpha_in=0.25, alpha_out=0.75),
    "1d_groups": dict(spatial=(9,), k=(3,), groups=2),
    "1d_depthwise_stride2": dict(spatial=(9,), k=(3,), groups=8, depthwise=True, strides=2),
    "1d_dilation": dict(spatial=(11,), k=(3,), dilation=2),
    "1d_dilation_stride2": dict(spatial=(13,), k=(3,), dilation=3, strides=2, alpha_in=0.25, alpha_out=0.75),
    "2d_per_axis_strides": dict(spatial=(7, 6), k=(3, 3), strides=(2, 1)),
    "2d_one_octave_axis_stride2": dict(spatial=(7, 6), k=(3, 5), strides=2, octave_axes=(1,), alpha_in=0.25),
    "3d_even_stride1": dict(spatial=(4, 6, 6), k=(3, 3, 3)),
    "3d_odd_stride2": dict(spatial=(5, 7, 5), k=(3, 3, 3), strides=2),
    "3d_video_octave_hw_stride_hw": dict(spatial=(3, 5, 6), k=(3, 3, 3), strides=(1, 2, 2), octave_axes=(1, 2)),
    "3d_all_octave_stride_hw": dict(spatial=(4, 5, 7), k=(3, 3, 3), strides=(1, 2, 2)),
    "3d_stride_on_non_octave_axis": dict(spatial=(5, 6, 7), k=(3, 3, 3), strides=(2, 1, 1), octave_axes=(1, 2)),
    "3d_alpha_0_to_half_octave_hw": dict(spatial=(4, 5, 5), k=(1, 3, 3), alpha_in=0.0, octave_axes=(1, 2)),
    "3d_alpha_half_to_0_stride2": dict(spatial=(4, 5, 5), k=(3, 1, 1), alpha_out=0.0, strides=2),
    "3d_alpha_1_to_half_octave_t": dict(spatial=(5, 4, 3), k=(3, 3, 3), alpha_in=1.0, octave_axes=(0,),
                                        strides=(2, 2, 1)),
    "3d_alpha_half_to_1": dict(spatial=(3, 5, 5), k=(3, 3, 3), alpha_out=1.0, octave_axes=(1, 2)),
    "3d_groups": dict(spatial=(3, 4, 5), k=(3, 3, 3), groups=2, strides=(1, 2, 2), octave_axes=(1, 2)),
    "3d_depthwise": dict(spatial=(3, 5, 4), k=(3, 3, 3), groups=8, depthwise=True, octave_axes=(2, 1)),
    "3d_dilation": dict(spatial=(5, 7, 7), k=(3, 3, 3), dilation=(1, 2, 2), octave_axes=(1, 2)),
    "3d_dilation_stride2": dict(spatial=(4, 9, 8), k=(3, 3, 3), dilation=(2, 2, 1), strides=(1, 2, 2)),
}


@pytest.mark.parametrize("case", sorted(ND_CASES))
def test_nd_octconv_matches_the_float64_reference(case):
  run_nd_case(**ND_CASES[case])


@pytest.mark.parametrize("rank,k,dilation", [(1, 1, 1), (1, 3, 2), (3, 1, 1), (3, 3, (1, 2, 2)), (3, (3, 1, 1), 1)])
def test_nd_alpha_zero_equals_flax_conv_bit_for_bit_with_cpu_choices_off(rank, k, dilation):
  spatial = (7,) if rank == 1 else (3, 5, 6)
  kernel_size = (k,) * rank if isinstance(k, int) else k
  x = make_input_nd(rank, 2, spatial, 5, 0.0).high
  conv = OctConv(6, kernel_size, 0.0, 0.0, kernel_dilation=dilation, bias_init=BIAS_INIT)
  variables = init_variables(conv, x)
  flax_conv = nn.Conv(6, kernel_size, kernel_dilation=dilation, padding="SAME")
  chex.assert_trees_all_equal_shapes_and_dtypes(
      variables["params"], jax.eval_shape(flax_conv.init, jax.random.key(0), x)["params"])
  with execution.use_conv(F.conv):
    y = conv.apply(variables, x)
  assert y.low is None
  np.testing.assert_array_equal(np.asarray(y.high), np.asarray(flax_conv.apply({"params": variables["params"]}, x)))


def test_nd_alpha_zero_strided_conv_equals_flax_conv_with_symmetric_padding():
  x = make_input_nd(0, 2, (4, 7, 6), 3, 0.0).high
  conv = OctConv(4, (3, 3, 3), 0.0, 0.0, strides=(1, 2, 2), pool_stride=False, kernel_dilation=(1, 1, 2))
  variables = init_variables(conv, x)
  flax_conv = nn.Conv(4, (3, 3, 3), strides=(1, 2, 2), kernel_dilation=(1, 1, 2), padding=[(1, 1), (1, 1), (2, 2)])
  np.testing.assert_array_equal(np.asarray(conv.apply(variables, x).high),
                                np.asarray(flax_conv.apply({"params": variables["params"]}, x)))


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 1.0])
def test_nd_param_count_equals_flax_conv(alpha):
  x = make_input_nd(0, 1, (3, 4, 4), 16, alpha, (1, 2))
  conv = OctConv(16, (3, 3, 3), alpha, alpha, octave_axes=(1, 2))
  assert _param_count(jax.eval_shape(conv.init, jax.random.key(0), x)) == 27 * 16 * 16 + 16


def test_nd_octconvbn_runs_with_octave_axes_and_dilation():
  x = make_input_nd(0, 2, (3, 5, 5), 8, 0.5, (1, 2))
  unit = OctConvBN(8, (3, 3, 3), 0.5, 0.5, strides=(1, 2, 2), octave_axes=(1, 2), kernel_dilation=(1, 2, 2),
                   activation=jax.nn.relu)
  variables = jax.eval_shape(unit.init, jax.random.key(0), x)
  y = jax.eval_shape(unit.apply, variables, x)
  chex.assert_shape(y.high, (2, 3, 3, 3, 4))
  chex.assert_shape(y.low, (2, 3, 2, 2, 4))


@pytest.mark.parametrize("kwargs,input_spatial,match", [
    (dict(kernel_size=(3,)), (6, 6), r"kernel_size .*rank 3"),          # a 1-D kernel on NHWC
    (dict(kernel_size=(3, 3, 3)), (6, 6), r"kernel_size .*rank 5"),     # a 3-D kernel on NHWC
])
def test_input_rank_that_does_not_match_kernel_size_fails(kwargs, input_spatial, match):
  conv = OctConv(8, alpha_in=0.5, alpha_out=0.5, **kwargs)
  x = make_input_nd(0, 1, input_spatial, 8, 0.5)
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(conv.init, jax.random.key(0), x)


@pytest.mark.parametrize("kwargs,match", [
    (dict(kernel_size=(3, 3), octave_axes=(2,)), r"octave_axes=\(2,\) has \[2\] outside the 2 spatial axes; allowed are 0..1"),
    (dict(kernel_size=(3, 3, 3), octave_axes=(-1,)), r"octave_axes.*allowed are 0..2"),
    (dict(kernel_size=(3, 3, 3), octave_axes=(1, 1)), r"octave_axes=\(1, 1\) repeats an axis"),
    (dict(kernel_size=(3, 3, 3), octave_axes="hw"), r"octave_axes must be None or a tuple of ints, got 'hw'"),
    (dict(kernel_size=(3, 3, 3), strides=(1, 3, 1)), r"strides=\(1, 3, 1\): stride 3 on an octave axis \(spatial axis 1\); allowed are 1 and 2"),
    (dict(kernel_size=(3, 3, 3), strides=(4, 1, 1), octave_axes=(1, 2)), r"stride 4 on a spatial axis \(spatial axis 0\)"),
    (dict(kernel_size=(3, 3, 3), strides=(2, 2)), r"strides must be an int or 3 ints"),
    (dict(kernel_size=(3,), kernel_dilation=0), r"kernel_dilation must be positive ints, got 0"),
    (dict(kernel_size=(3, 3), kernel_dilation=(1, 2, 2)), r"kernel_dilation must be an int or 2 ints"),
    (dict(kernel_size=(3, 2, 3)), r"kernel_size must be odd"),
])
def test_nd_bad_arguments_fail_at_construction_naming_the_argument(kwargs, match):
  with pytest.raises(ValueError, match=match):
    OctConv(8, alpha_in=0.5, alpha_out=0.5, **kwargs)


def test_nd_low_part_not_halved_on_the_octave_axes_fails():
  x = OctTensor(jnp.ones((1, 4, 6, 6, 4)), jnp.ones((1, 2, 3, 3, 4)))  # time halved, but octave_axes=(1, 2)
  conv = OctConv(8, (3, 3, 3), 0.5, 0.5, octave_axes=(1, 2))
  with pytest.raises(ValueError, match=r"low part must have spatial size 4x3x3"):
    jax.eval_shape(conv.init, jax.random.key(0), x)


# ----------------------------------------------------------------------------- OctConvTranspose


def run_transpose_case(*, spatial, k, c_in=8, c_out=8, alpha_in=0.5, alpha_out=0.5, strides=1, octave_axes=None,
                       dilation=1, output_size=None, seed=0, n=2):
  rank = len(spatial)
  layer = OctConvTranspose(c_out, k, alpha_in, alpha_out, strides=strides, octave_axes=octave_axes,
                           kernel_dilation=dilation, bias_init=BIAS_INIT)
  x = make_input_nd(seed, n, spatial, c_in, alpha_in, octave_axes)
  variables = init_variables(layer, x, seed)
  y = jax.jit(layer.apply, static_argnums=2)(variables, x, output_size)
  kernels, biases, _ = path_params(variables["params"], c_in, c_out, alpha_in, alpha_out, k)
  stride_t = (strides,) * rank if isinstance(strides, int) else strides
  dilation_t = (dilation,) * rank if isinstance(dilation, int) else dilation
  yh, yl = ref.oct_conv_transpose_nd(np_part(x.high), np_part(x.low), kernels, biases, stride_t, octave_axes,
                                     dilation_t, output_size)
  octave = tuple(range(rank)) if octave_axes is None else octave_axes
  in_high = spatial if x.high is not None else tuple(2 * n if i in octave else n
                                                      for i, n in enumerate(_low_size(spatial, octave)))
  high_size = output_size or tuple(s * m for s, m in zip(stride_t, in_high))
  _, out_low = ref.split(c_out, alpha_out)
  if c_out - out_low:
    chex.assert_shape(y.high, (n, *high_size, c_out - out_low))
    assert_relative_close(y.high, yh)
  else:
    assert y.high is None
  if out_low:
    chex.assert_shape(y.low, (n, *_low_size(high_size, octave), out_low))
    assert_relative_close(y.low, yl)
  else:
    assert y.low is None
  return y


TRANSPOSE_CASES = {
    "1d_stride1": dict(spatial=(9,), k=(3,)),
    "1d_stride2_odd": dict(spatial=(7,), k=(3,), strides=2),
    "1d_stride2_output_size": dict(spatial=(4,), k=(5,), strides=2, output_size=(7,)),
    "1d_alpha_0_to_half": dict(spatial=(6,), k=(3,), alpha_in=0.0, strides=2),
    "1d_alpha_half_to_0": dict(spatial=(5,), k=(3,), alpha_out=0.0, strides=2),
    "1d_alpha_1_to_half": dict(spatial=(5,), k=(3,), alpha_in=1.0, strides=2),
    "1d_alpha_half_to_1": dict(spatial=(5,), k=(3,), alpha_out=1.0),
    "1d_dilation_stride2": dict(spatial=(6,), k=(3,), dilation=2, strides=2, alpha_in=0.25, alpha_out=0.75),
    "2d_stride2_even": dict(spatial=(4, 6), k=(3, 3), strides=2),
    "2d_stride2_odd_output_size": dict(spatial=(4, 3), k=(3, 3), strides=2, output_size=(7, 5)),
    "2d_per_axis_strides_one_octave_axis": dict(spatial=(5, 4), k=(3, 1), strides=(2, 1), octave_axes=(0,)),
    "2d_kernel_1": dict(spatial=(5, 5), k=(1, 1), strides=2),
    "3d_video_octave_hw": dict(spatial=(3, 4, 5), k=(3, 3, 3), strides=(1, 2, 2), octave_axes=(1, 2)),
    "3d_all_octave_stride2": dict(spatial=(3, 3, 4), k=(3, 3, 3), strides=2),
    "3d_dilation": dict(spatial=(3, 5, 5), k=(3, 3, 3), dilation=(1, 2, 2), octave_axes=(1, 2)),
}


@pytest.mark.parametrize("case", sorted(TRANSPOSE_CASES))
def test_octconv_transpose_matches_the_float64_reference(case):
  run_transpose_case(**TRANSPOSE_CASES[case])


@pytest.mark.parametrize("k,strides,dilation,spatial", [
    ((3, 3), 2, 1, (5, 4)), ((1, 1), 2, 1, (3, 3)), ((3, 3), 1, 2, (5, 6)), ((5,), 2, 1, (7,)),
    ((3, 3, 3), (1, 2, 2), 1, (3, 4, 5))])
def test_alpha_zero_octconv_transpose_equals_flax_conv_transpose_bit_for_bit(k, strides, dilation, spatial):
  x = make_input_nd(1, 2, spatial, 5, 0.0).high
  layer = OctConvTranspose(6, k, 0.0, 0.0, strides=strides, kernel_dilation=dilation, bias_init=BIAS_INIT)
  variables = init_variables(layer, x)
  flax_layer = nn.ConvTranspose(6, k, strides=(strides,) * len(k) if isinstance(strides, int) else strides,
                                kernel_dilation=(dilation,) * len(k), padding="SAME")
  chex.assert_trees_all_equal_shapes_and_dtypes(
      variables["params"], jax.eval_shape(flax_layer.init, jax.random.key(0), x)["params"])
  y = layer.apply(variables, x)
  assert y.low is None
  np.testing.assert_array_equal(np.asarray(y.high),
                                np.asarray(flax_layer.apply({"params": variables["params"]}, x)))


@pytest.mark.parametrize("alpha_in,alpha_out", [(0.0, 0.0), (0.5, 0.5), (0.0, 0.5), (0.25, 0.75), (1.0, 0.0)])
def test_octconv_transpose_params_equal_flax_conv_transpose(alpha_in, alpha_out):
  x = make_input_nd(0, 1, (4, 4), 16, alpha_in)
  layer = OctConvTranspose(24, 3, alpha_in, alpha_out, strides=2)
  assert _param_count(jax.eval_shape(layer.init, jax.random.key(0), x)) == 9 * 16 * 24 + 24


@pytest.mark.parametrize("spatial", [(7, 5), (6, 9), (1, 3)])
def test_stride2_octconv_then_octconv_transpose_restore_odd_sizes(spatial):
  x = make_input_nd(0, 1, spatial, 8, 0.5)
  down = OctConv(8, 3, 0.5, 0.5, strides=2)
  up = OctConvTranspose(8, 3, 0.5, 0.5, strides=2)
  h = jax.eval_shape(down.apply, jax.eval_shape(down.init, jax.random.key(0), x), x)
  variables = jax.eval_shape(up.init, jax.random.key(0), h)
  restored = jax.eval_shape(functools.partial(up.apply, output_size=spatial), variables, h)
  chex.assert_trees_all_equal_shapes(restored, x)
  # Without a target size: twice the high size, and half of that for the low part.
  doubled = jax.eval_shape(up.apply, variables, h)
  chex.assert_shape(doubled.high, (1, *(2 * n for n in h.high.shape[1:3]), 4))
  chex.assert_shape(doubled.low, (1, *h.high.shape[1:3], 4))


@pytest.mark.parametrize("kwargs,call,match", [
    (dict(strides=2), dict(output_size=(9, 8)), r"output_size=\(9, 8\): a stride-\(2, 2\) transposed OctConv of a 4x4 high part gives 7..8 x 7..8"),
    (dict(strides=1), dict(output_size=(3, 4)), r"output_size=\(3, 4\).*gives 4 x 4"),
    (dict(strides=(2, 3)), {}, r"strides=\(2, 3\): stride 3 on an octave axis \(spatial axis 1\)"),
    (dict(kernel_size=(3,)), {}, r"kernel_size .*rank 3"),
    (dict(octave_axes=(0, 0)), {}, r"octave_axes=\(0, 0\) repeats an axis"),
    (dict(kernel_dilation=(1, 0)), {}, r"kernel_dilation must be positive"),
])
def test_octconv_transpose_bad_input_names_the_argument(kwargs, call, match):
  kwargs = {"kernel_size": 3, **kwargs}
  x = make_input_nd(0, 1, (4, 4), 8, 0.5)
  with pytest.raises(ValueError, match=match):
    layer = OctConvTranspose(8, alpha_in=0.5, alpha_out=0.5, **kwargs)
    jax.eval_shape(functools.partial(layer.init, **call), jax.random.key(0), x)


# ---------------------------------------------------------------------- OctBatchNorm


def oct_input(seed, n, hw, c_high, c_low, high_loc=3.0, high_scale=2.0, low_loc=-1.0, low_scale=0.5):
  """Parts with very different statistics, so mixing them up shows."""
  rng = np.random.default_rng(seed)
  lh, lw = math.ceil(hw[0] / 2), math.ceil(hw[1] / 2)
  high = high_loc + high_scale * rng.standard_normal((n, *hw, c_high)) if c_high else None
  low = low_loc + low_scale * rng.standard_normal((n, lh, lw, c_low)) if c_low else None
  return OctTensor(None if high is None else jax.device_put(high.astype(np.float32)),
                   None if low is None else jax.device_put(low.astype(np.float32)))


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
    return jax.device_put(np.asarray(value).astype(leaf.dtype))

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
  y, updates = jax.jit(lambda v, x: bn.apply(v, x, mutable=["batch_stats"]))(variables, x)
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
  y = jax.jit(bn.apply)(variables, x)
  for part in ("high", "low"):
    stats, params = parts_of(variables["batch_stats"], 2)[part], parts_of(variables["params"], 2)[part]
    np.testing.assert_allclose(np.asarray(getattr(y, part)),
                               bn_reference(getattr(x, part), stats["mean"], stats["var"], params["scale"],
                                            params["bias"]), **TOL)
  # The call-time flag overrides a module left undecided.
  undecided = OctBatchNorm()
  y2 = jax.jit(lambda v, x: undecided.apply(v, x, use_running_average=True))(variables, x)
  chex.assert_trees_all_close(y2, y, **TOL)


def test_batchnorm_with_one_part():
  x = oct_input(4, 2, (4, 4), 0, 3)
  bn = OctBatchNorm(use_running_average=False)
  variables = random_variables(bn, x)
  y, updates = jax.jit(lambda v, x: bn.apply(v, x, mutable=["batch_stats"]))(variables, x)
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
  y_s, upd_s = jax.jit(lambda v, x: single.apply(v, x, mutable=["batch_stats"]))(variables, x)
  chex.assert_shape(y_p.high, (devices, per_device, 5, 6, 3))
  chex.assert_shape(y_p.low, (devices, per_device, 3, 3, 2))
  chex.assert_trees_all_close(jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), y_p), y_s, **TOL)
  for d in range(devices):
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[d], upd_p), upd_s, **TOL)
  # ... and per-device statistics alone would differ: the test can tell.
  local = jax.tree.map(lambda a: a[0], sharded)
  _, upd_local = jax.jit(lambda v, x: single.apply(v, x, mutable=["batch_stats"]))(variables, local)
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
    y, updates = jax.jit(lambda v, x: unit.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
  else:
    y = jax.jit(lambda v, x: unit.apply(v, x, train=False))(variables, x)
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
  variables = jax.jit(lambda x: unit.init(jax.random.key(0), x))(x)
  y, _ = jax.jit(lambda v, x: unit.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
  # Fresh BatchNorm (scale 1, bias 0) in train mode: every channel of each part has mean 0, var 1.
  for part in (y.high, y.low):
    mean, var = batch_moments(part)
    np.testing.assert_allclose(mean, 0.0, atol=1e-5)
    np.testing.assert_allclose(var, 1.0, atol=1e-3)
