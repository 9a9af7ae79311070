"""Tests of octflax/checkpoint: the layouts of OctConv parameters across checkpoint formats.

``tests/data/format2_run`` (its README says how it was written) is a training run of octflax at
checkpoint format 2 (each OctConv's kernels per path), stopped at step 4 of 8, with the
variables the same run had at step 8 when it went on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import octflax
import octflax.checkpoint
from octflax import functional as F
from octflax import models
from octflax.checkpoint import format2
from octflax.checkpoint.format import read_state
from octflax.layers import octave_layers
from tests.test_training import write_fashion_mnist

FORMAT2_RUN = Path(__file__).parent / "data" / "format2_run"
FORMAT2_JAX = "0.10.2"  # the fixture's compiler


def _flat(tree) -> dict[str, np.ndarray]:
  return {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


# The compiler settings the fixture was written under (its README): the tests' XLA_FLAGS then.
FORMAT2_XLA_FLAGS = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
FORMAT2_CONFIG = """
from octflax.training import default_config


def get_config():
  config = default_config()
  config.model.name = "oct_resnet8"
  config.model.alpha = 0.5
  config.batch_size = 8
  config.num_epochs = 2
  config.checkpoint_every_steps = 4
  config.progress_bar = False
  return config
"""


@pytest.mark.slow  # four train steps and an evaluation of oct_resnet8 by the command line (20 s on 2 cores)
def test_a_format2_run_resumes_where_it_stopped(tmp_path):
  """The run saved at format 2 resumes at step 4, by the command line, and ends at step 8 bit for bit.

  Under the fixture's jax and compiler settings every array of the resumed run at step 8 equals,
  bit for bit, what the run had at step 8 when it went on at format 2 (joined to one kernel per
  OctConv): the checkpoint is read without loss and the steps after it compute what they computed.
  Another XLA rounds otherwise, so there to 1e-5.
  """
  workdir = tmp_path / "run"
  shutil.copytree(FORMAT2_RUN, workdir, ignore=shutil.ignore_patterns("*.npz"))
  write_fashion_mnist(tmp_path / "data", n_train=32, n_test=8)
  (tmp_path / "format2.py").write_text(FORMAT2_CONFIG)
  root = Path(__file__).parent.parent
  env = dict(os.environ, XLA_FLAGS=FORMAT2_XLA_FLAGS, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
  run = subprocess.run([sys.executable, "-m", "experiments.train", f"--workdir={workdir}",
                        f"--config={tmp_path / 'format2.py'}", f"--config.data.dir={tmp_path / 'data'}"],
                       cwd=root, env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "Traceback" not in run.stdout + run.stderr
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
  for key in expected:
    if jax.__version__ == FORMAT2_JAX:
      np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    else:
      np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)


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
