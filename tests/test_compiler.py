"""octflax.compiler: the XLA options octflax compiles with reach XLA and keep the results."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import octflax
from octflax import compiler
from octflax.models import get_model

CPU = jax.default_backend() == "cpu"


def _loop_fusions(hlo: str) -> int:
  entry = hlo[hlo.index("ENTRY"):]
  return len(re.findall(r"kind=kLoop", entry))


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


@pytest.mark.skipif(not CPU, reason="the options are XLA:CPU's")
def test_an_octave_network_compiled_with_inference_options_computes_the_same_logits():
  model = get_model("oct_resnet20", alpha=0.5, num_classes=10)
  images = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False),
                      compiler_options=compiler.init_compiler_options())(images)
  lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, images)
  default = lowered.compile()
  tuned = lowered.compile(octflax.inference_compiler_options())
  # The option reaches XLA: its own fused loops give way to library fusions.
  assert _loop_fusions(tuned.as_text()) < _loop_fusions(default.as_text())
  np.testing.assert_allclose(np.asarray(tuned(variables, images)), np.asarray(default(variables, images)),
                             rtol=1e-5, atol=1e-5)


def test_options_are_none_off_cpu(monkeypatch):
  monkeypatch.setattr(compiler.jax, "default_backend", lambda: "gpu")
  assert octflax.inference_compiler_options() is None
  assert compiler.init_compiler_options() is None
