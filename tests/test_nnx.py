"""The NNX front end (octflax.nnx) against the Linen one: same state names, same numbers."""

import functools
import re
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import octflax.checkpoint
import octflax
import octflax.nnx as onnx
from octflax import models as linen_models
from octflax.tensor import OctTensor

ROOT = Path(__file__).resolve().parents[1]
TOL = dict(rtol=1e-6, atol=1e-6)


def _shapes(tree):
  return jax.tree.map(lambda a: tuple(a.shape), tree)


def _perturbed(variables, seed=0):
  """The variables with every leaf moved off its initial value (variances kept positive)."""
  rng = np.random.default_rng(seed)
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    name = path[-1].key
    noise = rng.uniform(0.5, 1.5, leaf.shape) if name == "var" else 0.1 * rng.standard_normal(leaf.shape)
    flat[path] = (np.asarray(leaf) * noise if name == "var" else np.asarray(leaf) + noise).astype(np.float32)
  return jax.tree_util.tree_map_with_path(lambda path, _: flat[path], variables)


def _linen_variables(module, *args, seed=0, **kwargs):
  """The variables ``module.init(key, *args, **kwargs)`` lays out (traced, not run: no compile per
  shape), filled from NumPy: kernels N(0, 1/fan-in), variances in [0.5, 1.5], scales near 1, the rest
  small, so that no leaf is at an initial value."""
  shapes = jax.eval_shape(functools.partial(module.init, **kwargs), jax.random.key(0), *args)
  rng = np.random.default_rng(seed)

  def leaf(path, spec):
    name = path[-1].key
    if name == "var":
      value = rng.uniform(0.5, 1.5, spec.shape)
    elif name == "kernel":
      value = rng.standard_normal(spec.shape) / np.sqrt(np.prod(spec.shape[:-1]))
    else:
      value = (name == "scale") + 0.1 * rng.standard_normal(spec.shape)
    return jax.device_put(value.astype(spec.dtype))

  return jax.tree_util.tree_map_with_path(leaf, shapes)


def _assert_trees_close(got, want, **tol):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path), **(tol or TOL))


def _oct_input(shape, alpha, seed=1, octave_axes=None, loc=0.0, scale=1.0):
  """A random OctTensor with ``shape[-1]`` channels split at ``alpha``, its low part halved on the
  octave axes (NumPy's generator: no compile per shape, as jax.random and a pooling would have)."""
  rng = np.random.default_rng(seed)
  high, low = octflax.split_channels(shape[-1], alpha)
  low_size = octflax.low_spatial_size(*shape[1:-1], octave_axes=octave_axes)
  part = lambda size, channels: jax.device_put(
      (loc + scale * rng.standard_normal((shape[0], *size, channels))).astype(np.float32)) if channels else None
  return OctTensor(part(shape[1:-1], high), part(low_size, low))


# ----------------------------------------------------------------------------- layers


@pytest.mark.parametrize("alpha_in,alpha_out,strides,groups,size", [
    (0.0, 0.0, 1, 1, 8),
    (0.0, 0.5, 1, 1, 9),
    (0.5, 0.5, 1, 1, 9),
    (0.5, 0.5, 2, 1, 9),
    (0.25, 0.75, 2, 2, 8),
    (0.5, 0.0, 1, 1, 7),
    (0.5, 1.0, 1, 1, 8),
    (1.0, 1.0, 2, 1, 8),
])
def test_octconv_state_and_output_match_linen(alpha_in, alpha_out, strides, groups, size):
  x = _oct_input((2, size, size, 16), alpha_in)
  linen = octflax.OctConv(24, 3, alpha_in, alpha_out, strides=strides, feature_group_count=groups)
  variables = _linen_variables(linen, x)
  conv = onnx.OctConv(16, 24, 3, alpha_in, alpha_out, strides, feature_group_count=groups, rngs=nnx.Rngs(3))
  assert _shapes(onnx.to_linen(conv)) == _shapes(variables)
  onnx.from_linen(variables, conv)
  _assert_trees_close(jax.jit(lambda x: conv(x))(x), jax.jit(linen.apply)(variables, x))


@pytest.mark.parametrize("kernel_size,shape,octave_axes,strides,dilation", [
    ((3,), (2, 9, 8), None, 2, 1),
    ((3, 3, 3), (1, 4, 7, 7, 8), (1, 2), (1, 2, 2), 1),
    pytest.param((3, 3), (2, 9, 9, 8), None, 1, 2, marks=pytest.mark.slow),
])
def test_nd_octconv_and_octconvbn_match_linen(kernel_size, shape, octave_axes, strides, dilation):
  x = _oct_input(shape, 0.5, octave_axes=octave_axes)
  kwargs = dict(octave_axes=octave_axes, kernel_dilation=dilation)
  linen = octflax.OctConvBN(8, kernel_size, 0.5, 0.25, strides=strides, activation=jax.nn.relu, **kwargs)
  variables = _linen_variables(linen, x, train=False)
  unit = onnx.OctConvBN(8, 8, kernel_size, 0.5, 0.25, strides, activation=jax.nn.relu, rngs=nnx.Rngs(0), **kwargs)
  assert _shapes(onnx.to_linen(unit)) == _shapes(variables)
  onnx.from_linen(variables, unit)
  y, updates = linen.apply(variables, x, train=True, mutable=["batch_stats"])
  _assert_trees_close(unit(x), y)
  _assert_trees_close(onnx.to_linen(unit)["batch_stats"], updates["batch_stats"])


@pytest.mark.parametrize("alpha_in,alpha_out,strides,size,output_size", [
    (0.5, 0.5, 2, 4, (7, 7)),
    (0.0, 0.5, 1, 5, None),
    (0.25, 0.0, 2, 4, None),
])
def test_octconv_transpose_matches_linen(alpha_in, alpha_out, strides, size, output_size):
  x = _oct_input((2, size, size, 8), alpha_in)
  linen = octflax.OctConvTranspose(12, 3, alpha_in, alpha_out, strides=strides)
  variables = _linen_variables(linen, x, output_size=output_size)
  up = onnx.OctConvTranspose(8, 12, 3, alpha_in, alpha_out, strides, rngs=nnx.Rngs(0))
  assert _shapes(onnx.to_linen(up)) == _shapes(variables)
  onnx.from_linen(variables, up)
  _assert_trees_close(jax.jit(lambda x: up(x, output_size=output_size))(x),
                      jax.jit(lambda v, x: linen.apply(v, x, output_size=output_size))(variables, x))


def test_depthwise_octconv_has_only_intra_paths_as_in_linen():
  x = _oct_input((2, 8, 8, 16), 0.5)
  linen = octflax.OctConv(16, 3, 0.5, 0.5, feature_group_count=16)
  variables = _linen_variables(linen, x)
  conv = onnx.OctConv(16, 16, 3, 0.5, 0.5, feature_group_count=16, rngs=nnx.Rngs(0))
  assert _shapes(onnx.to_linen(conv)) == _shapes(variables) == {"params": {"bias": (16,), "kernel": (3, 3, 1, 16)}}
  assert sorted(conv.spec.paths(16)) == ["h2h", "l2l"]
  onnx.from_linen(variables, conv)
  _assert_trees_close(jax.jit(lambda x: conv(x))(x), jax.jit(linen.apply)(variables, x))


def test_octconv_kernels_have_the_vanilla_conv_fan_in():
  # The one kernel is drawn as the vanilla conv's, so every path's block has lecun_normal's std
  # sqrt(1 / (3 * 3 * 128)), not sqrt(1 / (3 * 3 * 64)) of the path's own input.
  conv = onnx.OctConv(128, 128, 3, 0.5, 0.5, kernel_init=jax.nn.initializers.lecun_normal(),
                      rngs=nnx.Rngs(0))
  kernel = onnx.to_linen(conv)["params"]["kernel"]
  assert kernel.shape == (3, 3, 128, 128)
  blocks, _ = octflax.kernel_blocks(kernel, None, 128, 0.5, 0.5)
  for path, block in blocks.items():
    assert block.shape == (3, 3, 64, 64)
    np.testing.assert_allclose(np.std(block), np.sqrt(1 / (9 * 128)), rtol=0.03, err_msg=path)


def test_octconv_rejects_bad_arguments_and_inputs():
  with pytest.raises(ValueError, match="alpha_in"):
    onnx.OctConv(8, 8, 3, 1.5, 0.5, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="strides"):
    onnx.OctConv(8, 8, 3, 0.5, 0.5, 3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="in_features"):
    onnx.OctConv(0, 8, 3, 0.5, 0.5, rngs=nnx.Rngs(0))
  conv = onnx.OctConv(8, 8, 3, 0.5, 0.5, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="in_features=8 split at alpha_in=0.5"):
    conv(_oct_input((1, 8, 8, 8), 0.25))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_octbatchnorm_train_and_eval_match_linen(alpha):
  x = _oct_input((4, 6, 6, 8), alpha, loc=3.0, scale=2.0)
  linen = octflax.OctBatchNorm(momentum=0.9)
  variables = _linen_variables(linen, x, use_running_average=False)
  norm = onnx.OctBatchNorm(8, alpha, momentum=0.9, rngs=nnx.Rngs(0))
  assert _shapes(onnx.to_linen(norm)) == _shapes(variables)
  onnx.from_linen(variables, norm)
  y, updates = linen.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
  _assert_trees_close(norm(x), y)
  _assert_trees_close(onnx.to_linen(norm)["batch_stats"], updates["batch_stats"])
  norm.eval()
  _assert_trees_close(norm(x), linen.apply({**variables, **updates}, x, use_running_average=True))


def test_octconvbn_train_and_eval_match_linen():
  x = _oct_input((4, 9, 9, 12), 0.25)
  linen = octflax.OctConvBN(16, 3, 0.25, 0.5, strides=2, activation=jax.nn.relu)
  variables = _linen_variables(linen, x, train=False)
  unit = onnx.OctConvBN(12, 16, 3, 0.25, 0.5, 2, activation=jax.nn.relu, rngs=nnx.Rngs(0))
  assert _shapes(onnx.to_linen(unit)) == _shapes(variables)
  onnx.from_linen(variables, unit)
  y, updates = linen.apply(variables, x, train=True, mutable=["batch_stats"])
  _assert_trees_close(unit(x), y)
  _assert_trees_close(onnx.to_linen(unit)["batch_stats"], updates["batch_stats"])
  unit.eval()
  _assert_trees_close(unit(x), linen.apply({**variables, **updates}, x, train=False))


# ----------------------------------------------------------------------------- conversion


def test_linen_round_trip_is_lossless():
  x = _oct_input((2, 8, 8, 12), 0.25)
  linen = octflax.OctConvBN(16, 3, 0.25, 0.5)
  variables = _linen_variables(linen, x, train=False)
  unit = onnx.from_linen(variables, onnx.OctConvBN(12, 16, 3, 0.25, 0.5, rngs=nnx.Rngs(0)))
  _assert_trees_close(onnx.to_linen(unit), variables, rtol=0, atol=0)
  # And NNX -> Linen -> NNX keeps the state.
  other = onnx.OctConvBN(12, 16, 3, 0.25, 0.5, rngs=nnx.Rngs(5))
  onnx.from_linen(onnx.to_linen(unit), other)
  _assert_trees_close(nnx.to_pure_dict(nnx.state(other)), nnx.to_pure_dict(nnx.state(unit)), rtol=0, atol=0)


def test_from_linen_lists_every_mismatch():
  unit = onnx.OctConvBN(12, 16, 3, 0.25, 0.5, rngs=nnx.Rngs(0))
  variables = onnx.to_linen(unit)
  params = jax.tree.map(np.asarray, variables["params"])
  params["conv"]["kernel"] = np.zeros((3, 3, 5, 8), np.float32)
  del params["bn"]["scale"]
  params["extra"] = {"kernel": np.zeros((1,), np.float32)}
  with pytest.raises(ValueError) as info:
    onnx.from_linen({"params": params, "batch_stats": variables["batch_stats"]}, unit)
  message = str(info.value)
  assert "conv/kernel: shape (3, 3, 5, 8), the model has (3, 3, 12, 16)" in message
  assert "missing bn/scale (16,)" in message
  assert "unexpected extra/kernel (1,)" in message
  with pytest.raises(ValueError, match=r"collection\(s\) \['cache'\]"):
    onnx.from_linen({"cache": {}}, unit)


# ----------------------------------------------------------------------------- transformations


def test_nnx_jit_and_grad_through_octtensor_inputs_match_linen():
  x = _oct_input((2, 8, 8, 16), 0.5)
  linen = octflax.OctConv(8, 3, 0.5, 0.25, strides=2)
  variables = _linen_variables(linen, x)
  conv = onnx.from_linen(variables, onnx.OctConv(16, 8, 3, 0.5, 0.25, 2, rngs=nnx.Rngs(0)))

  def energy(y):
    return sum(jnp.sum(jnp.sin(p)) for p in (y.high, y.low))

  @nnx.jit
  def nnx_grads(conv, x):
    return nnx.grad(lambda conv, x: energy(conv(x)), argnums=(0, 1))(conv, x)

  conv_grads, x_grads = nnx_grads(conv, x)
  chex.assert_trees_all_equal_shapes(x_grads, x)
  want_params, want_x = jax.jit(jax.grad(lambda v, x: energy(linen.apply(v, x)), argnums=(0, 1)))(variables, x)
  _assert_trees_close(nnx.to_pure_dict(conv_grads), want_params["params"], rtol=1e-5, atol=1e-6)
  _assert_trees_close(x_grads, want_x, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- zoo


def _compare_zoo_model(name, alpha, image_shape, **overrides):
  """Linen and NNX zoo model with the same weights: state names, train/eval logits, BN updates."""
  x = jax.random.normal(jax.random.key(1), image_shape)
  linen = linen_models.get_model(name, alpha=alpha, num_classes=10).clone(**overrides)
  model = onnx.models.get_model(name, alpha=alpha, num_classes=10, in_features=image_shape[-1],
                                rngs=nnx.Rngs(0), **overrides)
  expected = jax.eval_shape(functools.partial(linen.init, train=False), jax.random.key(0), x)
  assert _shapes(onnx.to_linen(model)) == _shapes(expected)
  variables = _perturbed(onnx.to_linen(model))
  onnx.from_linen(variables, model)

  logits, updates = linen.apply(variables, x, train=True, mutable=["batch_stats"])
  model.train()
  _assert_trees_close(model(x), logits, rtol=1e-6, atol=1e-6 * float(jnp.abs(logits).max()))
  _assert_trees_close(onnx.to_linen(model)["batch_stats"], updates["batch_stats"])
  model.eval()
  want = linen.apply({**variables, **updates}, x, train=False)
  _assert_trees_close(model(x), want, rtol=1e-6, atol=1e-6 * float(jnp.abs(want).max()))


@pytest.mark.slow  # about 8 s; the oct_resnet8 tests cover the CIFAR network in the default run
def test_cifar_oct_resnet_matches_linen():
  # The shape of docs/nnx.md's example, whose operations are then compiled once.
  _compare_zoo_model("oct_resnet8", 0.25, (8, 28, 28, 1))


@pytest.mark.slow
def test_imagenet_stem_and_bottleneck_with_squeeze_excite_match_linen():
  _compare_zoo_model("oct_se_resnet50", 0.5, (2, 16, 16, 3), stage_sizes=(1, 1), widths=(4, 8),
                     stem_features=8)


@pytest.mark.slow  # every backbone map of two networks in both front ends (about 6 s)
def test_backbone_features_match_linen():
  # The shape of the other oct_resnet8 tests: their compiled operations are reused.
  x = jax.random.normal(jax.random.key(1), (8, 28, 28, 1))
  linen = linen_models.get_model("oct_resnet8", alpha=0.25)
  model = onnx.models.get_model("oct_resnet8", alpha=0.25, in_features=1, rngs=nnx.Rngs(0))
  model.eval()
  got = model(x, return_features=True)
  want = linen.apply(onnx.to_linen(model), x, train=False, return_features=True)
  assert got["strides"] == want["strides"] == {"stem": (1, 1), "stage1": (1, 1), "stage2": (2, 2), "stage3": (4, 4)}
  _assert_trees_close({k: v for k, v in got.items() if k != "strides"},
                      {k: v for k, v in want.items() if k != "strides"}, rtol=1e-6, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name,image_shape", [("oct_resnet20", (4, 32, 32, 3)), ("oct_resnet50", (2, 32, 32, 3))])
@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5])
def test_full_oct_resnet_matches_linen(name, image_shape, alpha):
  _compare_zoo_model(name, alpha, image_shape)


@pytest.mark.slow
def test_oct_resnet18_and_resnext_match_linen():
  _compare_zoo_model("oct_resnet18", 0.25, (2, 32, 32, 3))
  _compare_zoo_model("oct_resnet26", 0.5, (2, 16, 16, 3), stage_sizes=(1, 1), widths=(4, 8), stem_features=8)
  _compare_zoo_model("oct_resnext50_32x4d", 0.5, (2, 32, 32, 3), stage_sizes=(1, 1, 1, 1))


def test_zoo_names_are_the_linen_oct_resnets():
  names = onnx.models.list_models()
  assert {"oct_resnet8", "oct_resnet20", "oct_resnet50", "oct_resnext50_32x4d", "oct_se_resnet50"} <= set(names)
  assert "oct_mobilenet_v2" not in names
  with pytest.raises(ValueError, match="unknown model 'resnet'"):
    onnx.models.get_model("resnet", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="Oct-ResNet family"):
    onnx.models.get_model("oct_mobilenet_v2", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="in_features"):
    onnx.models.get_model("oct_resnet8", in_features=0, rngs=nnx.Rngs(0))


@pytest.mark.slow
def test_pytorch_port_weights_move_into_the_nnx_model():
  from octflax import convert

  shapes = convert.expected_state_dict_shapes("oct_resnet26", alpha=0.5, source="port", num_classes=10)
  rng = np.random.default_rng(0)
  state_dict = {k: (rng.uniform(0.5, 1.5, s) if k.endswith("running_var") else 0.1 * rng.standard_normal(s))
                .astype(np.int64 if k.endswith("num_batches_tracked") else np.float32) for k, s in shapes.items()}
  variables = convert.from_torch_state_dict(state_dict, arch="oct_resnet26", alpha=0.5, source="port")
  model = onnx.from_linen(variables, onnx.models.get_model("oct_resnet26", alpha=0.5, num_classes=10,
                                                           rngs=nnx.Rngs(0)))
  model.eval()
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  want = convert.model_for("oct_resnet26", 0.5, "port", num_classes=10).apply(variables, x, train=False)
  np.testing.assert_allclose(model(x), want, rtol=1e-6, atol=1e-6 * float(jnp.abs(want).max()))


# ----------------------------------------------------------------------------- trainer


def test_trainer_model_has_linens_calling_convention():
  model = onnx.trainer_model("oct_resnet8", alpha=0.25, num_classes=10)
  linen = linen_models.get_model("oct_resnet8", alpha=0.25, num_classes=10)
  x = jax.random.normal(jax.random.key(1), (4, 12, 12, 1))
  # Both front ends under one jit each (as the trainer runs them): one compile, not one per operation.
  variables, linen_variables = jax.jit(lambda key, x: (model.init(key, x, train=False),
                                                         linen.init(key, x, train=False)))(jax.random.key(0), x)
  assert set(variables) == {"params", "batch_stats"}
  assert _shapes(variables) == _shapes(jax.eval_shape(functools.partial(linen.init, train=False),
                                                      jax.random.key(0), x))
  # The same seed, the same starting weights: model.api changes the front end, not the run.
  _assert_trees_close(variables, linen_variables, rtol=0, atol=0)
  variables = _perturbed(variables)

  def both(v, x, key):
    return {"train": model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": key}),
            "want_train": linen.apply(v, x, train=True, mutable=["batch_stats"]),
            "eval": model.apply(v, x, train=False), "want_eval": linen.apply(v, x, train=False)}

  out = jax.jit(both)(variables, x, jax.random.key(2))
  (logits, updates), (want_logits, want_updates) = out["train"], out["want_train"]
  _assert_trees_close(logits, want_logits, rtol=1e-6, atol=1e-6 * float(jnp.abs(want_logits).max()))
  _assert_trees_close(updates, want_updates)
  want = out["want_eval"]
  _assert_trees_close(out["eval"], want, rtol=1e-6, atol=1e-6 * float(jnp.abs(want).max()))
  # What octflax.training and octflax.cost ask of a model.
  assert model.axis_name is None and model.clone(axis_name="data").axis_name == "data"
  assert model.clone(dtype=jnp.bfloat16).dtype == jnp.bfloat16
  assert model.clone(axis_name="data").overrides == {"axis_name": "data"}
  with pytest.raises(ValueError, match="Oct-ResNet family"):
    onnx.trainer_model("oct_mobilenet_v1")
  with pytest.raises(ValueError, match=r"unknown argument\(s\) depth; allowed are alpha, axis_name, block_cls"):
    onnx.trainer_model("oct_resnet8", depth=3)


def test_cost_counts_the_nnx_model_like_the_linen_one():
  from octflax import cost

  nnx_report = cost.analyze(onnx.trainer_model("oct_resnet20", alpha=0.5, num_classes=10), (1, 28, 28, 1))
  linen_report = cost.analyze(linen_models.get_model("oct_resnet20", alpha=0.5, num_classes=10), (1, 28, 28, 1))
  assert (nnx_report.macs, nnx_report.params) == (linen_report.macs, linen_report.params)


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["jit", "pmap"])
def test_train_steps_of_the_nnx_model_match_linen(parallel):
  from octflax.training import DataParallel
  from octflax.training.state import create_train_state

  runner = DataParallel(parallel)
  nnx_model = runner.prepare_model(onnx.trainer_model("oct_resnet8", alpha=0.25, num_classes=10))
  linen = runner.prepare_model(linen_models.get_model("oct_resnet8", alpha=0.25, num_classes=10))
  tx = optax.sgd(0.05, momentum=0.9)
  start = create_train_state(nnx_model, tx, seed=0, input_shape=(1, 12, 12, 1))
  rng = np.random.default_rng(0)
  batches = [{"image": rng.standard_normal((16, 12, 12, 1)).astype(np.float32),
              "label": rng.integers(0, 10, 16).astype(np.int32)} for _ in range(3)]
  losses, params = [], []
  for apply_fn in (nnx_model.apply, linen.apply):
    state = runner.put_state(start.replace(apply_fn=apply_fn))
    curve = []
    for batch in batches:
      state, metrics = runner.train_step(state, runner.put_batch(batch))
      curve.append(float(runner.get_metrics([metrics])[0]["loss"]))
    losses.append(curve)
    params.append(jax.device_get(state.params))
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
  _assert_trees_close(params[0], params[1], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- docs


@pytest.mark.slow  # the page's examples, run in full
def test_the_nnx_page_runs_as_written():
  """docs/nnx.md: the Linen and NNX models agree; the nnx.Optimizer / nnx.jit loop trains."""
  blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "nnx.md").read_text(), flags=re.S)
  assert len(blocks) == 5
  namespace = {}
  for block in blocks:
    exec(compile(block, "docs/nnx.md", "exec"), namespace)  # pylint: disable=exec-used
  losses = namespace["losses"]
  assert len(losses) == 5 and losses[-1] < losses[0], losses
  chex.assert_shape([namespace["nnx_logits"], namespace["zoo_logits"]], (8, 10))
  assert 0.0 <= namespace["accuracy"] <= 1.0


@pytest.mark.slow
def test_trainer_with_the_nnx_api_follows_the_linen_loss_curve(tmp_path):
  import json

  from octflax import training
  from octflax.checkpoint import write_checkpoint

  # Both runs start from the same weights: a checkpoint of the Linen model's initial variables.
  linen = linen_models.get_model("oct_resnet8", alpha=0.25, num_classes=10)
  variables = jax.jit(functools.partial(linen.init, train=False))(jax.random.key(3), jnp.zeros((1, 12, 12, 3)))
  start = write_checkpoint(tmp_path / "start", dict(variables), {"identity": {"num_classes": 10}})
  curves, summaries = {}, {}
  for api in ("linen", "nnx"):
    config = training.default_config()
    config.model.name, config.model.alpha, config.model.api = "oct_resnet8", 0.25, api
    config.data.name, config.data.image_size, config.data.num_classes = "synthetic", 12, 10
    config.data.max_train_examples, config.data.max_test_examples = 96, 32
    config.batch_size, config.log_every_steps, config.progress_bar = 16, 1, False
    config.init_from = start
    summaries[api] = training.train_and_evaluate(config, str(tmp_path / api))
    records = [json.loads(line) for line in (tmp_path / api / "metrics.jsonl").read_text().splitlines()]
    curves[api] = [r["train_loss"] for r in records if r.get("kind") == "train"]
  assert len(curves["nnx"]) == 6
  np.testing.assert_allclose(curves["nnx"], curves["linen"], rtol=1e-5)
  assert summaries["nnx"]["params"] == summaries["linen"]["params"]
