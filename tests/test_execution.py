"""octflax.execution: every execution form against the float64 NumPy reference, how forms are chosen,
and XLA:CPU's convolution (channels padded to a multiple of 8, 1x1 as a dot).

Each form of `execution.Form` (how the paths are grouped into convolutions, how the 2x pool is
computed, how OctBatchNorm gathers its statistics, which convolution runs) must compute
`functional.oct_conv`'s equations with the same parameters. The cases cover every path
combination, stride 1 and 2, odd sizes, 1-D/2-D/3-D with and without non-octave axes, groups
(where a form falls back) and bfloat16; one compile per form and rank keeps them fast.
"""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import numpy_reference as ref
from octflax import OctBatchNorm, OctConv, OctTensor, cost, execution, models
from octflax import nnx as octnnx
from octflax.functional import conv
from octflax.resample import avg_pool2, upsample2

PATH_FORMS = ("separate", "shared_output", "shared_input", "two_convs")
#: The ways of upsampling the L->H term (`Form.upsample`), each with a path form that groups paths.
UPSAMPLE_FORMS = ("pads", "ones_conv", "transposed", "shared_output+transposed", "two_convs+transposed",
                  "shared_input+ones_conv", "shared_widening+slices+ones_conv")
FORMS = PATH_FORMS + ("two_convs+slices", "two_convs+xla_cpu") + UPSAMPLE_FORMS


def _low_size(spatial, octave):
  return tuple(math.ceil(n / 2) if i in octave else n for i, n in enumerate(spatial))


def make_case(seed, spatial, c_in, c_out, alpha_in, alpha_out, k, strides=1, octave_axes=None, groups=1,
              dtype=np.float32):
  """(x, kernels, biases, call settings) of one OctConv call with NumPy-drawn values."""
  rng = np.random.default_rng(seed)
  rank = len(spatial)
  octave = tuple(range(rank)) if octave_axes is None else tuple(octave_axes)
  ch, cl = ref.split(c_in, alpha_in)
  high = rng.standard_normal((2, *spatial, ch)).astype(dtype) if ch else None
  low = rng.standard_normal((2, *_low_size(spatial, octave), cl)).astype(dtype) if cl else None
  kernels, biases = {}, {}
  for path, (ci, co) in ref.path_channels(c_in, c_out, alpha_in, alpha_out).items():
    fan_in = ci // groups * k ** rank
    kernels[path] = (rng.standard_normal((k,) * rank + (ci // groups, co)) / math.sqrt(fan_in)).astype(dtype)
  for direct, cross in (("h2h", "l2h"), ("l2l", "h2l")):
    carrier = next((p for p in (direct, cross) if p in kernels), None)
    if carrier:
      biases[carrier] = rng.standard_normal(kernels[carrier].shape[-1]).astype(dtype)
  settings = dict(strides=strides, octave_axes=octave_axes)
  return OctTensor(high, low), kernels, biases, settings, groups


def reference(case):
  x, kernels, biases, settings, groups = case
  rank = next(iter(kernels.values())).ndim - 2
  strides = settings["strides"]
  strides = (strides,) * rank if isinstance(strides, int) else tuple(strides)
  f64 = lambda a: None if a is None else np.asarray(a, np.float64)
  return ref.oct_conv_nd(f64(x.high), f64(x.low), {p: f64(k) for p, k in kernels.items()},
                         {p: f64(b) for p, b in biases.items()}, strides, groups, settings["octave_axes"])


def assert_close(actual, expected, rtol):
  """max |actual - expected| <= rtol * max |expected|, part by part, with the same parts present."""
  for a, e in zip((actual.high, actual.low), expected):
    assert (a is None) == (e is None)
    if e is not None:
      a = np.asarray(a, np.float64)
      assert a.shape == e.shape, (a.shape, e.shape)
      assert np.max(np.abs(a - e)) <= rtol * np.max(np.abs(e)), np.max(np.abs(a - e)) / np.max(np.abs(e))


CASES_2D = [
    # Every path combination (alpha_in, alpha_out in {0, .5, 1}) at stride 1 and 2, odd sizes.
    dict(spatial=(7, 5), c_in=8, c_out=8, alpha_in=a_in, alpha_out=a_out, k=3, strides=s)
    for a_in in (0.0, 0.5, 1.0) for a_out in (0.0, 0.5, 1.0) for s in (1, 2)
] + [
    dict(spatial=(8, 6), c_in=12, c_out=10, alpha_in=0.25, alpha_out=0.75, k=3),
    dict(spatial=(9, 9), c_in=6, c_out=6, alpha_in=0.5, alpha_out=0.5, k=1, strides=2),
    dict(spatial=(5, 7), c_in=8, c_out=8, alpha_in=0.5, alpha_out=0.5, k=3, groups=2),
    dict(spatial=(6, 7), c_in=8, c_out=8, alpha_in=0.5, alpha_out=0.5, k=3, strides=(1, 2)),
]
CASES_ND = [
    dict(spatial=(9,), c_in=8, c_out=8, alpha_in=0.5, alpha_out=0.5, k=3),
    dict(spatial=(11,), c_in=8, c_out=6, alpha_in=0.5, alpha_out=0.25, k=5, strides=2),
    dict(spatial=(3, 5, 6), c_in=8, c_out=8, alpha_in=0.5, alpha_out=0.5, k=3),
    dict(spatial=(4, 5, 7), c_in=8, c_out=8, alpha_in=0.5, alpha_out=0.5, k=3, octave_axes=(1, 2)),
    dict(spatial=(4, 5, 7), c_in=8, c_out=8, alpha_in=0.5, alpha_out=0.5, k=3, octave_axes=(1, 2), strides=2),
]


def run_cases(form, specs, dtype=np.float32):
  """All ``specs`` executed in ``form`` under one jit; returns (outputs, cases)."""
  cases = [make_case(i, dtype=dtype, **spec) for i, spec in enumerate(specs)]

  def apply(arrays):
    return [execution.oct_conv_in_form(execution.Form.parse(form), x, kernels, biases, **case[3])
            for (x, kernels, biases), case in zip(arrays, cases)]

  outputs = jax.jit(apply)([(x, k, b) for x, k, b, _, _ in cases])
  return outputs, cases


@pytest.mark.parametrize("form", FORMS)
def test_every_form_equals_the_float64_reference_in_2d(form):
  outputs, cases = run_cases(form, CASES_2D)
  for spec, y, case in zip(CASES_2D, outputs, cases):
    try:
      assert_close(y, reference(case), 1e-5)
    except AssertionError as e:
      raise AssertionError(f"{form}: {spec}: {e}") from None


@pytest.mark.parametrize("form", ("shared_output", "shared_input", "two_convs+slices") + UPSAMPLE_FORMS)
def test_forms_in_1d_and_3d_with_non_octave_axes(form):
  outputs, cases = run_cases(form, CASES_ND)
  for spec, y, case in zip(CASES_ND, outputs, cases):
    try:
      assert_close(y, reference(case), 1e-5)
    except AssertionError as e:
      raise AssertionError(f"{form}: {spec}: {e}") from None


@pytest.mark.parametrize("form", ("two_convs+slices", "shared_input", "slices+ones_conv", "slices+pads", "transposed",
                                  "shared_widening+slices+ones_conv"))
def test_forms_in_bfloat16(form):
  specs = [dict(spatial=(9, 7), c_in=16, c_out=16, alpha_in=0.5, alpha_out=0.5, k=3, strides=s) for s in (1, 2)]
  outputs, cases = run_cases(form, specs, dtype=jnp.bfloat16)
  for y, case in zip(outputs, cases):
    chex.assert_type([y.high, y.low], jnp.bfloat16)
    assert_close(y, reference(case), 2e-2)


def test_the_forms_run_fewer_convolutions():
  x, kernels, biases, settings, _ = make_case(0, (8, 8), 8, 8, 0.5, 0.5, 3)
  counts = {}
  for form in PATH_FORMS:
    lowered = jax.jit(lambda x, k, b: execution.oct_conv_in_form(execution.Form.parse(form), x, k, b, **settings))
    counts[form] = lowered.lower(x, kernels, biases).as_text().count("stablehlo.convolution")
  assert counts == {"separate": 4, "shared_output": 3, "shared_input": 3, "two_convs": 2}


def test_shared_widening_joins_the_paths_of_a_part_only_where_it_has_its_inputs_channels():
  counts = {}
  for c_out in (8, 16):  # the low part: 4 or 8 channels, from 4 + 4
    x, kernels, biases, settings, _ = make_case(0, (8, 8), 8, c_out, 0.5, 0.5, 1)
    lowered = jax.jit(lambda x, k, b: execution.oct_conv_in_form(execution.Form.parse("shared_widening"), x, k, b,
                                                                 **settings))
    counts[c_out] = lowered.lower(x, kernels, biases).as_text().count("stablehlo.convolution")
  assert counts == {8: 4, 16: 3}


def test_slices_pool_equals_reshape_pool():
  x = jax.device_put(np.random.default_rng(0).standard_normal((2, 7, 6, 5, 3)).astype(np.float32))
  pool = jax.jit(avg_pool2, static_argnums=1, static_argnames=("spatial_dims", "method"))
  for axes in (None, (0,), (1, 2), (0, 2)):
    slices = pool(x, axes, spatial_dims=3, method="slices")
    chex.assert_trees_all_close(slices, pool(x, axes, spatial_dims=3), rtol=1e-6)
  with pytest.raises(ValueError, match="method must be one of"):
    avg_pool2(x, method="window")


@pytest.mark.parametrize("method", ("pads", "ones_conv"))
def test_upsample_methods_equal_the_reference_and_their_gradients_the_window_sums(method):
  """Every upsample method: nearest by 2, cropped at odd sizes; its gradient sums each 2^k window."""
  rng = np.random.default_rng(0)
  cases = [((2, 3, 4, 3), (5, 8), None), ((2, 3, 4, 3), (6, 7), None), ((2, 4, 3), (7,), None),
           ((2, 3, 4, 3, 2), (3, 8, 5), (1, 2)), ((2, 3, 4, 3, 2), (6, 4, 3), (0,))]
  for shape, size, axes in cases:
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    g = jnp.asarray(rng.standard_normal((shape[0], *size, shape[-1])), jnp.float32)
    up = lambda x: upsample2(x, size, axes, method=method)
    y, vjp = jax.vjp(up, x)
    expected = np.asarray(x, np.float64)
    for a in (range(len(size)) if axes is None else axes):
      expected = np.repeat(expected, 2, axis=1 + a)[(slice(None),) * (1 + a) + (slice(0, size[a]),)]
    np.testing.assert_array_equal(np.asarray(y), expected.astype(np.float32))
    # The transpose of upsampling: each low position gets the sum of the high positions it fills.
    grad = np.zeros(shape, np.float64)
    for index in np.ndindex(*g.shape):
      low = list(index)
      for a in (range(len(size)) if axes is None else axes):
        low[1 + a] //= 2
      grad[tuple(low)] += float(g[index])
    np.testing.assert_allclose(np.asarray(vjp(g)[0]), grad, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="method must be one of"):
    upsample2(x, method="gather")


def test_transposed_l2h_runs_one_convolution_per_part_and_no_upsample():
  x, kernels, biases, settings, _ = make_case(0, (7, 8), 8, 8, 0.5, 0.5, 3)
  lowered = jax.jit(lambda x, k, b: execution.oct_conv_in_form(execution.Form.parse("transposed"), x, k, b,
                                                               **settings)).lower(x, kernels, biases).as_text()
  assert lowered.count("stablehlo.convolution") == 4 and "lhs_dilate = [2, 2]" in lowered
  assert "upsample2" not in lowered


# ----------------------------------------------------------------------------- OctBatchNorm


def _bn_input(hw, alpha_in=0.5, dtype=jnp.float32):
  rng = np.random.default_rng(1)
  low_size = tuple(math.ceil(n / 2) for n in hw)
  high = jax.device_put((rng.standard_normal((3, *hw, 6)) * 2 + 1).astype(dtype))
  low = None if alpha_in == 0 else jax.device_put((rng.standard_normal((3, *low_size, 5)) - 1).astype(dtype))
  return OctTensor(high, low)


def _bn_train(form, bn, variables, x):
  """(output, updated statistics) of a training-mode OctBatchNorm in ``form``, under jit."""
  with execution.use_form(form):
    return jax.jit(lambda v, x: bn.apply(v, x, use_running_average=False, mutable=["batch_stats"]))(variables, x)


@functools.cache
def _bn_train_case(hw):
  """(bn, variables, x, the per-part form's output and statistics): the reference of every form, computed once."""
  x = _bn_input(hw)
  bn = OctBatchNorm(momentum=0.9)
  variables = bn.init(jax.random.key(0), x, use_running_average=False)
  variables = jax.tree.map(lambda v: v + 0.3, variables)  # not the initial values, so every term counts
  return bn, variables, x, _bn_train("per_part", bn, variables, x)


@pytest.mark.parametrize("hw", [(8, 8), (7, 5)])
@pytest.mark.parametrize("form", ["xla_cpu", "joint", "joint+slices", "one_pass", "joint+one_pass",
                                  "joint+slices+one_pass"])
def test_joint_batchnorm_keeps_the_variables_and_values_of_per_part(hw, form):
  bn, variables, x, (y_ref, stats_ref) = _bn_train_case(hw)
  y, stats = _bn_train(form, bn, variables, x)
  chex.assert_trees_all_equal_structs(stats, stats_ref)
  chex.assert_trees_all_close(stats, stats_ref, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(y, y_ref, rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(stats["batch_stats"]["mean"] - variables["batch_stats"]["mean"]).max()) > 0.01


@functools.cache
def _bn_default_case(dtype, alpha_in):
  """(bn, variables, x, the default form's output and statistics) on a 9 x 6 map: the reference of every
  form, computed once."""
  x = _bn_input((9, 6), alpha_in=alpha_in, dtype=dtype)
  bn = OctBatchNorm(momentum=0.9)
  variables = bn.init(jax.random.key(0), x, use_running_average=False)
  return bn, variables, x, _bn_train(None, bn, variables, x)


@pytest.mark.parametrize("form", ["joint", "one_pass", "joint+one_pass"])
def test_joint_batchnorm_in_bfloat16_and_with_one_part(form):
  for dtype, alpha_in in ((jnp.bfloat16, 0.5), (jnp.float32, 0)):
    bn, variables, x, (y_ref, stats_ref) = _bn_default_case(dtype, alpha_in)
    y, stats = _bn_train(form, bn, variables, x)
    chex.assert_trees_all_equal_dtypes(y, y_ref)
    chex.assert_trees_all_close(stats, stats_ref, rtol=1e-4, atol=1e-5)
    tol = 3e-2 if x.high.dtype == jnp.bfloat16 else 1e-5
    chex.assert_trees_all_close(jax.tree.map(lambda a: a.astype(jnp.float32), y),
                                jax.tree.map(lambda a: a.astype(jnp.float32), y_ref), rtol=tol, atol=tol)


def test_joint_batchnorm_averages_statistics_across_devices():
  """Under `jax.pmap` with ``axis_name``, both forms average the statistics over the devices."""
  devices = jax.local_devices()[:2]
  x = _bn_input((6, 6))
  xs = jax.tree.map(lambda a: jnp.stack([a, 2 * a + 1]), x)
  bn = OctBatchNorm(momentum=0.5, axis_name="batch")
  variables = bn.init(jax.random.key(0), x, use_running_average=False)
  results = {}
  for form in ("per_part", "joint", "one_pass", "joint+one_pass"):
    with execution.use_form(form):
      step = jax.pmap(lambda x: bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"]),
                      axis_name="batch", devices=devices)
      results[form] = step(xs)
  chex.assert_trees_all_close(results["joint"], results["per_part"], rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(results["one_pass"], results["per_part"], rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(results["joint+one_pass"], results["per_part"], rtol=1e-5, atol=1e-5)
  stats = results["joint"][1]["batch_stats"]["mean"]
  chex.assert_trees_all_close(stats[0], stats[1])  # the same average on both devices


def test_nnx_joint_batchnorm_equals_its_per_part():
  x = _bn_input((7, 7))
  outputs = {}
  for form in ("per_part", "joint", "one_pass", "joint+one_pass"):
    bn = octnnx.OctBatchNorm(11, 5 / 11, momentum=0.9, rngs=nnx.Rngs(0))
    with execution.use_form(form):
      y = bn(x)
    outputs[form] = (y, nnx.to_pure_dict(nnx.state(bn)))
  chex.assert_trees_all_close(outputs["joint"], outputs["per_part"], rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(outputs["one_pass"], outputs["per_part"], rtol=1e-5, atol=1e-5)


def _bn_gradients(form, x, variables, bn, weights):
  """Gradients of a loss that reads the output and the new statistics, w.r.t. x and the parameters."""

  def loss(params, x):
    y, new = bn.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, use_running_average=False,
                      mutable=["batch_stats"])
    stats = new["batch_stats"]
    out = sum(jnp.sum(p.astype(jnp.float32) * w) for p, w in zip((y.high, y.low), weights) if p is not None)
    return out + sum(jnp.sum(jnp.sin(v)) for v in jax.tree.leaves(stats))  # the statistics' cotangents count

  with execution.use_form(form):
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], x)


@functools.cache
def _bn_gradient_case(hw, dtype):
  """(x, variables, bn, weights, autodiff's per-part gradients): the reference of every form, computed once."""
  x = _bn_input(hw, dtype=dtype)
  bn = OctBatchNorm(momentum=0.9)
  variables = bn.init(jax.random.key(0), x, use_running_average=False)
  variables = jax.tree.map(lambda v: v + 0.3, variables)
  rng = np.random.default_rng(2)
  weights = [jax.device_put(rng.standard_normal(p.shape).astype(np.float32)) for p in (x.high, x.low)]
  return x, variables, bn, weights, _bn_gradients("per_part", x, variables, bn, weights)


@pytest.mark.parametrize("form", ["one_pass", "joint+one_pass", "joint+slices+one_pass"])
@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 2e-5), (jnp.bfloat16, 3e-2)])
@pytest.mark.parametrize("hw", [(8, 8), (7, 5)])
def test_one_pass_batchnorm_gradient_equals_autodiff(hw, dtype, tol, form):
  """The hand-written VJP against jax's differentiation of the per-part BatchNorm, under jit."""
  x, variables, bn, weights, reference = _bn_gradient_case(hw, dtype)
  one_pass = _bn_gradients(form, x, variables, bn, weights)
  chex.assert_trees_all_equal_dtypes(one_pass, reference)
  chex.assert_trees_all_close(jax.tree.map(lambda a: a.astype(jnp.float32), one_pass),
                              jax.tree.map(lambda a: a.astype(jnp.float32), reference), rtol=tol, atol=tol)


@pytest.mark.parametrize("form", ["one_pass", "joint+one_pass"])
def test_one_pass_batchnorm_gradient_across_devices(form):
  """Under `jax.pmap`, statistics and the backward pass's means average over the devices, as autodiff's."""
  devices = jax.local_devices()[:2]
  x = _bn_input((6, 5))
  xs = jax.tree.map(lambda a: jnp.stack([a, 2 * a + 1]), x)
  bn = OctBatchNorm(momentum=0.5, axis_name="batch")
  variables = bn.init(jax.random.key(0), x, use_running_average=False)
  rng = np.random.default_rng(3)
  weights = [jax.device_put(rng.standard_normal(p.shape).astype(np.float32)) for p in (x.high, x.low)]

  def grads(form):
    def loss(params, x):
      y, _ = bn.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, use_running_average=False,
                      mutable=["batch_stats"])
      return sum(jnp.sum(p * w) for p, w in zip((y.high, y.low), weights))

    with execution.use_form(form):
      return jax.pmap(jax.grad(loss, argnums=(0, 1)), axis_name="batch", devices=devices)(
          jax.tree.map(lambda a: jnp.stack([a, a]), variables["params"]), xs)

  chex.assert_trees_all_close(grads(form), grads("per_part"), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- choosing a form


def test_form_names_parse_and_print_back():
  for name in execution.PROBE_FORMS:
    assert str(execution.Form.parse(name)) == name
  assert execution.Form.parse("slices+two_convs") == execution.Form(paths="two_convs", pool="slices")
  for name in UPSAMPLE_FORMS + ("slices+ones_conv",):
    assert str(execution.Form.parse(name)) == name
  assert str(execution.REFERENCE) == "reference" and execution.Form.parse("reference") == execution.REFERENCE
  with pytest.raises(ValueError, match="unknown choice 'three'.*known: separate"):
    execution.Form.parse("two_convs+three")
  with pytest.raises(ValueError, match="names two paths choices"):
    execution.Form.parse("two_convs+shared_input")
  with pytest.raises(ValueError, match="paths='fast'; allowed are separate"):
    execution.Form(paths="fast")
  with pytest.raises(ValueError, match="use_form: expected a Form"):
    with execution.use_form(3):
      pass


def _train_step_hlo(platforms, form=None):
  """The StableHLO of an Oct-ResNet-8 gradient step lowered for each of ``platforms`` (one trace)."""
  model = models.get_model("oct_resnet8", alpha=0.5, num_classes=10)
  x = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)

  def loss(params, batch_stats, x):
    y, _ = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"])
    return y.sum()

  with execution.use_form(form):
    traced = jax.jit(jax.grad(loss)).trace(variables["params"], variables["batch_stats"], x)
  return [traced.lower(lowering_platforms=(platform,)).as_text() for platform in platforms]


def test_the_default_form_is_chosen_for_the_platform_lowered_for():
  """Lowered from this CPU for a GPU or a TPU, a step carries that platform's form, not XLA:CPU's."""
  on_cpu, on_gpu, on_tpu = _train_step_hlo(("cpu", "cuda", "tpu"))
  reference, = _train_step_hlo(("cuda",), "reference")
  assert execution.CPU_FORM.conv == "xla_cpu" and execution.GPU_FORM.conv == execution.TPU_FORM.conv == "plain"
  # XLA:CPU's form runs the 1x1 convolutions as dots; the accelerators' as convolutions.
  assert on_cpu.count("stablehlo.dot_general") > on_gpu.count("stablehlo.dot_general") + 10
  # The TPU's form upsamples L->H with a depthwise transposed convolution (one more per L->H path)
  # and runs the two paths of a widening part as one (one fewer per such part).
  assert reference.count("stablehlo.convolution") > on_cpu.count("stablehlo.convolution")
  assert on_tpu.count("lhs_dilate = [2, 2]") > reference.count("lhs_dilate = [2, 2]")
  # The GPU's form (two_convs): fewer, larger convolutions than the reference form.
  assert execution.GPU_FORM.paths == "two_convs"
  assert on_gpu.count("stablehlo.convolution") < reference.count("stablehlo.convolution")
  # The TPU's form (shared_widening+slices+ones_conv) pools with strided slices, not a reshape and a sum.
  assert execution.TPU_FORM.pool == "slices" and execution.TPU_FORM.upsample == "ones_conv"
  assert execution.TPU_FORM.paths == "shared_widening"
  assert execution.GPU_FORM.upsample == execution.CPU_FORM.upsample == "broadcast"
  assert execution.GPU_FORM.norm_grad == "one_pass" and execution.TPU_FORM.norm_grad == "autodiff"


def test_cost_counts_the_equations_whatever_form_is_chosen():
  model = models.get_model("oct_resnet8", alpha=0.5, num_classes=10)
  plain = cost.analyze(model, (1, 28, 28, 1))
  with execution.use_form("two_convs+xla_cpu"):
    chosen = cost.analyze(model, (1, 28, 28, 1))
  assert chosen.macs == plain.macs and chosen.params == plain.params


# ----------------------------------------------------------------------------- XLA:CPU's convolution


def rand(seed, shape, dtype=np.float32):
  return jax.device_put(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def _conv_channel_shapes(fn, *args):
  """(input channels, output channels) of every conv_general_dilated in fn's jaxpr."""
  jaxpr = jax.make_jaxpr(lambda *a: fn(*a))(*args)  # A new function: traced now, not from a cache.
  return [(e.invars[0].aval.shape[-1], e.outvars[0].aval.shape[-1])
          for e in jaxpr.jaxpr.eqns if e.primitive.name == "conv_general_dilated"]


@pytest.mark.parametrize("c_in,c_out,expected", [(14, 14, (16, 16)), (28, 12, (32, 16)), (2, 14, (2, 16)),
                                                 (16, 24, (16, 24)), (6, 4, (6, 4))])
def test_xla_cpu_conv_pads_channels_to_8_and_gives_the_same_numbers(c_in, c_out, expected):
  rng = np.random.default_rng(0)
  x = jax.device_put(rng.standard_normal((2, 5, 6, c_in), dtype=np.float32))
  kernel = jax.device_put(rng.standard_normal((3, 3, c_in, c_out), dtype=np.float32))
  assert _conv_channel_shapes(execution.xla_cpu_conv, x, kernel) == [expected]
  assert _conv_channel_shapes(execution.xla_cpu_conv_unpadded, x, kernel) == [(c_in, c_out)]
  assert _conv_channel_shapes(conv, x, kernel) == [(c_in, c_out)]
  plain = jax.jit(conv)(x, kernel)
  plain_grads = jax.jit(jax.grad(lambda x, k: jnp.sum(jnp.sin(conv(x, k))), (0, 1)))(x, kernel)
  padded = jax.jit(execution.xla_cpu_conv)(x, kernel)
  chex.assert_shape(padded, (2, 5, 6, c_out))
  np.testing.assert_allclose(padded, plain, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(padded, ref.conv2d(np.asarray(x, np.float64), np.asarray(kernel, np.float64)),
                             rtol=1e-4, atol=1e-4)
  grads = jax.jit(jax.grad(lambda x, k: jnp.sum(jnp.sin(execution.xla_cpu_conv(x, k))), (0, 1)))(x, kernel)
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
