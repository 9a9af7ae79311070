"""Tests of octflax/checkpoint: the layouts of OctConv parameters across checkpoint formats.

``tests/data/format2_run`` (its README says how it was written) is a training run of octflax at
checkpoint format 2 (each OctConv's kernels per path), stopped at step 4 of 8, with the
variables the same run had at step 8 when it went on.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import octflax
import octflax.checkpoint
from octflax import functional as F
from octflax import models, training
from octflax.checkpoint import format2
from octflax.checkpoint.format import read_state
from octflax.layers import octave_layers
from tests.test_training import tiny_config, write_fashion_mnist

FORMAT2_RUN = Path(__file__).parent / "data" / "format2_run"
FORMAT2_JAX = "0.10.2"  # the fixture's compiler


def _flat(tree) -> dict[str, np.ndarray]:
  return {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.slow  # four train steps and an evaluation of oct_resnet8 (15 s on 2 cores)
def test_a_format2_run_resumes_where_it_stopped(tmp_path):
  """The run saved at format 2 resumes at step 4 and ends with the variables it had at step 8, joined.

  The arrays are restored bit for bit (`join` copies blocks); the four steps after them agree to
  float32 rounding, a few ulps under the fixture's jax: the new BatchNorm updates its running
  statistics over the whole channel vector, which XLA fuses (and rounds) otherwise. Another XLA
  may round more differently, so elsewhere to 1e-5.
  """
  workdir = tmp_path / "run"
  shutil.copytree(FORMAT2_RUN, workdir, ignore=shutil.ignore_patterns("*.npz"))
  write_fashion_mnist(tmp_path / "data", n_train=32, n_test=8)
  config = tiny_config(tmp_path / "data", **{"model.name": "oct_resnet8", "model.alpha": 0.5, "num_epochs": 2,
                                             "checkpoint_every_steps": 4})
  training.train_and_evaluate(config, str(workdir))
  variables, meta = octflax.checkpoint.read_checkpoint(str(workdir / "checkpoints" / "8"))
  assert meta["format"] == octflax.checkpoint.FORMAT == "octflax-checkpoint/3"
  stored = np.load(FORMAT2_RUN / "final_step8.npz")
  before = {}
  for key in stored.files:
    node = before
    *parents, last = key.split("/")
    for name in parents:
      node = node.setdefault(name, {})
    node[last] = stored[key]
  expected = _flat(format2.join(before))
  got = _flat(variables)
  assert sorted(got) == sorted(expected)
  assert any(k.endswith("conv1/conv/kernel") for k in got)  # one kernel per OctConv, now
  tolerance = dict(rtol=1e-6, atol=1e-7) if jax.__version__ == FORMAT2_JAX else dict(rtol=1e-5, atol=1e-6)
  for key in expected:
    np.testing.assert_allclose(got[key], expected[key], **tolerance, err_msg=key)


def test_reading_a_format2_checkpoint_joins_parameters_and_momentum():
  state = read_state(str(FORMAT2_RUN / "checkpoints" / "4"))
  assert not format2.holds(state)
  unit = state["params"]["stage1_block0"]["conv2"]
  assert set(unit["conv"]) == {"kernel"} and unit["conv"]["kernel"].shape == (3, 3, 16, 16)
  assert set(unit["bn"]) == {"scale", "bias"} and unit["bn"]["scale"].shape == (16,)
  assert state["batch_stats"]["stage1_block0"]["conv2"]["bn"]["mean"].shape == (16,)
  momentum = _flat(state["opt_state"])
  assert any(k.endswith("stage1_block0/conv2/conv/kernel") for k in momentum)


@pytest.mark.parametrize("alpha_in, alpha_out, groups, bias", [
    (0.5, 0.5, 1, True), (0.0, 0.5, 1, False), (0.25, 0.0, 1, True), (0.5, 0.5, 2, True), (1.0, 1.0, 1, True),
    (0.5, 0.5, 8, True)])  # the last one depthwise
def test_kernel_blocks_are_the_paths_and_join_back(alpha_in, alpha_out, groups, bias):
  in_c, out_c = 8, 8
  kernel = jnp.asarray(np.random.default_rng(0).standard_normal((3, 3, in_c // groups, out_c)), jnp.float32)
  b = jnp.arange(out_c, dtype=jnp.float32) if bias else None
  kernels, biases = F.kernel_blocks(kernel, b, in_c, alpha_in, alpha_out, groups)
  shapes = F.oct_conv_param_shapes((3, 3), in_c, out_c, alpha_in, alpha_out, groups, bias)
  assert {p: k.shape for p, k in kernels.items()} == {p: s.kernel for p, s in shapes.items()}
  assert {p: v.shape for p, v in biases.items()} == {p: s.bias for p, s in shapes.items() if s.bias}
  in_high, out_high = octflax.split_channels(in_c, alpha_in)[0], octflax.split_channels(out_c, alpha_out)[0]
  if "h2l" in kernels and groups == 1:
    np.testing.assert_array_equal(kernels["h2l"], kernel[..., :in_high, out_high:])
  joined, joined_bias = F.join_kernel_blocks(kernels, biases)
  np.testing.assert_array_equal(joined, kernel)
  if bias:
    np.testing.assert_array_equal(joined_bias, b)


def test_kernel_blocks_name_the_expected_shape():
  with pytest.raises(ValueError, match=r"\[\*kernel_size, 8, C_out\]; got \(3, 3, 4, 8\)"):
    F.kernel_blocks(jnp.zeros((3, 3, 4, 8)), None, 8, 0.5, 0.5)


def test_split_inverts_join_for_a_model():
  model = models.get_model("oct_resnet8", alpha=0.5, num_classes=10)
  x = jnp.zeros((1, 28, 28, 1))
  # Distinct values in every array (so a block put back in the wrong place shows), from the
  # variables' shapes: no compiled init.
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype),
                           jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False)))
  layers = octave_layers(model, x, train=False)
  split = {c: format2.split(v, layers) for c, v in variables.items()}
  assert format2.holds(split) and not format2.holds(variables)
  unit = split["params"]["stage1_block0"]["conv2"]
  assert set(unit["conv"]) == {"h2h", "h2l", "l2h", "l2l"} and set(unit["bn"]) == {"high", "low"}
  assert unit["bn"]["high"]["scale"].shape == (8,) and split["batch_stats"]["stage1_block0"]["conv2"]["bn"]["low"][
      "var"].shape == (8,)
  back = _flat(format2.join(split))
  for key, value in _flat(variables).items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)
