"""octflax.execution.compiler: the XLA options octflax compiles with reach XLA and keep the results."""

from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import octflax
from octflax.execution import compiler
from octflax.models import get_model

CPU = jax.default_backend() == "cpu"


def _library_fusions(hlo: str) -> int:
  """The fusions XLA:CPU hands to YNNPACK (``"kind":"__ynn_fusion"``) in the entry computation."""
  entry = hlo[hlo.index("ENTRY"):]
  return len(re.findall(r'"kind":"__ynn_fusion"', entry))


def _convolutions(hlo: str) -> tuple[int, int]:
  """(convolutions in the module, convolutions XLA runs itself: ops of the entry computation)."""
  entry = hlo[hlo.index("ENTRY"):]
  return len(re.findall(r"= \S+ convolution\(", hlo)), len(re.findall(r"= \S+ convolution\(", entry))


def _small_train_step():
  model = get_model("oct_resnet20", alpha=0.5, num_classes=10)
  images = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  labels = jnp.arange(4) % 10
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False),
                      compiler_options=compiler.init_compiler_options())(images)

  def grads(params, batch_stats):
    def loss(params):
      logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, images, train=True,
                              mutable=["batch_stats"])
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))
    return jax.grad(loss)(params)

  return jax.jit(grads).lower(variables["params"], variables["batch_stats"]), variables


@pytest.mark.skipif(not CPU, reason="the options are XLA:CPU's")
def test_inference_options_on_cpu_extend_xla_defaults_with_elementwise_fusions():
  options = octflax.inference_compiler_options()
  assert options == {compiler.YNN_FUSION_OPTION: ",".join(compiler.CPU_INFERENCE_YNN_FUSIONS)}
  # XLA's defaults (dots, convolutions, reductions) plus elementwise ops.
  assert options[compiler.YNN_FUSION_OPTION].split(",")[-1] == "LIBRARY_FUSION_TYPE_ELTWISE"
  assert compiler.init_compiler_options() == {"xla_backend_optimization_level": 0}


@pytest.mark.skipif(not CPU, reason="the options are XLA:CPU's")
def test_unknown_options_and_values_are_reported_as_unsupported():
  assert compiler.xla_accepts(compiler.YNN_FUSION_OPTION, "LIBRARY_FUSION_TYPE_ELTWISE")
  assert not compiler.xla_accepts(compiler.YNN_FUSION_OPTION, "LIBRARY_FUSION_TYPE_NO_SUCH_TYPE")
  assert not compiler.xla_accepts("xla_cpu_no_such_option", "1")


@pytest.mark.slow  # compiles a network (10-20 s on 2 cores)
@pytest.mark.skipif(not CPU, reason="the options are XLA:CPU's")
def test_an_octave_network_compiled_with_inference_options_computes_the_same_logits():
  model = get_model("oct_resnet20", alpha=0.5, num_classes=10)
  images = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False),
                      compiler_options=compiler.init_compiler_options())(images)
  lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, images)
  default = lowered.compile()
  tuned = lowered.compile(octflax.inference_compiler_options())
  # The option reaches XLA: more of the network runs as YNNPACK library fusions.
  assert _library_fusions(tuned.as_text()) > _library_fusions(default.as_text())
  np.testing.assert_allclose(np.asarray(tuned(variables, images)), np.asarray(default(variables, images)),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not CPU, reason="the options are XLA:CPU's")
def test_train_options_on_cpu_leave_convolutions_to_xla_before_jaxlib_0_12():
  assert compiler.CPU_TRAIN_YNN_FUSIONS == ("LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT", "LIBRARY_FUSION_TYPE_REDUCE")
  expected = {compiler.YNN_FUSION_OPTION: ",".join(compiler.CPU_TRAIN_YNN_FUSIONS)}
  assert octflax.train_compiler_options() == (None if compiler._jaxlib_version() >= (0, 12) else expected)  # pylint: disable=protected-access


@pytest.mark.slow  # compiles a network (10-20 s on 2 cores)
@pytest.mark.skipif(not CPU, reason="the options are XLA:CPU's")
def test_a_train_step_compiled_with_train_options_computes_the_same_gradients():
  lowered, variables = _small_train_step()
  default = lowered.compile()
  # The option itself, on every jaxlib (train_compiler_options() gives it before 0.12).
  tuned = lowered.compile({compiler.YNN_FUSION_OPTION: ",".join(compiler.CPU_TRAIN_YNN_FUSIONS)})
  total, own = _convolutions(tuned.as_text())
  default_total, default_own = _convolutions(default.as_text())
  # The option reaches XLA: every convolution, forward and backward, is XLA's own op; with
  # XLA's defaults YNNPACK runs some of them.
  assert total == own > default_own and default_total == total
  args = (variables["params"], variables["batch_stats"])
  chex.assert_trees_all_close(tuned(*args), default(*args), rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # compiles a network (10-20 s on 2 cores)
@pytest.mark.skipif(not CPU, reason="the options are XLA:CPU's")
def test_the_trainers_jit_step_compiles_with_the_train_options():
  from octflax import training  # pylint: disable=g-import-not-at-top

  model = get_model("oct_resnet20", alpha=0.5, num_classes=10)
  parallel = training.DataParallel("jit", jax.devices()[:1])
  state = parallel.put_state(training.create_train_state(model, training.make_optimizer(0.1), seed=0,
                                                         input_shape=(1, 16, 16, 3)))
  rng = np.random.default_rng(0)
  batch = parallel.put_batch({"image": rng.normal(size=(4, 16, 16, 3)).astype(np.float32),
                              "label": np.arange(4, dtype=np.int32), "mask": np.ones(4, np.float32)})
  # The step keeps the state in XLA's layouts (Layout.AUTO): it lowers for shapes, not for arrays.
  abstract = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
  total, own = _convolutions(parallel.jitted_train_step.lower(abstract(state), abstract(batch)).compile().as_text())
  if octflax.train_compiler_options():
    assert total == own > 0  # every convolution is XLA's own op, as with the train options
  else:
    assert 0 < own < total  # XLA's defaults: YNNPACK runs some of them


def test_options_are_none_off_cpu(monkeypatch):
  monkeypatch.setattr(compiler.jax, "default_backend", lambda: "gpu")
  assert octflax.inference_compiler_options() is None
  assert octflax.train_compiler_options() is None
  assert compiler.init_compiler_options() is None
