"""The optimizer recipe (octflax.training.optim): masked weight decay, SGD with Nesterov momentum, the schedule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from octflax import training
from test_training import TinyCNN


def test_weight_decay_skips_batch_norm_and_biases():
  variables = TinyCNN().init(jax.random.key(0), jnp.zeros((1, 6, 6, 1)))
  mask = training.optim.weight_decay_mask(variables["params"])
  flat = {"/".join(k.key for k in path): v for path, v in jax.tree_util.tree_leaves_with_path(mask)}
  assert flat == {"Conv_0/kernel": True, "Conv_0/bias": False, "BatchNorm_0/scale": False,
                  "BatchNorm_0/bias": False, "Dense_0/kernel": True, "Dense_0/bias": False}


def test_sgd_nesterov_with_masked_weight_decay_matches_the_formula():
  params = {"kernel": jnp.array([[1.0, -2.0]]), "bias": jnp.array([3.0])}
  grads = {"kernel": jnp.array([[0.5, 0.25]]), "bias": jnp.array([1.0])}
  lr, momentum, wd = 0.1, 0.9, 0.01
  tx = training.make_optimizer(lr, momentum=momentum, weight_decay=wd)
  opt_state = tx.init(params)
  p = params
  expected_k, expected_b = np.array(params["kernel"]), np.array(params["bias"])
  velocity_k, velocity_b = np.zeros_like(expected_k), np.zeros_like(expected_b)
  for _ in range(2):
    updates, opt_state = tx.update(grads, opt_state, p)
    p = optax.apply_updates(p, updates)
    g_k = np.array(grads["kernel"]) + wd * expected_k  # decay on the kernel only
    g_b = np.array(grads["bias"])
    velocity_k = momentum * velocity_k + g_k
    velocity_b = momentum * velocity_b + g_b
    expected_k = expected_k - lr * (g_k + momentum * velocity_k)
    expected_b = expected_b - lr * (g_b + momentum * velocity_b)
  np.testing.assert_allclose(p["kernel"], expected_k, rtol=1e-6)
  np.testing.assert_allclose(p["bias"], expected_b, rtol=1e-6)


def test_learning_rate_scaling_warmup_and_cosine():
  peak = training.optim.scaled_learning_rate(0.1, 1024)
  assert peak == pytest.approx(0.4)
  schedule = training.learning_rate_schedule(peak, total_steps=110, warmup_steps=10)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(0.2)
  assert float(schedule(10)) == pytest.approx(0.4)
  assert float(schedule(60)) == pytest.approx(0.2, rel=1e-5)  # half-way down the cosine
  assert float(schedule(110)) == pytest.approx(0.0, abs=1e-7)


def test_gradient_clipping_bounds_the_update():
  tx = training.make_optimizer(1.0, momentum=0.0, weight_decay=0.0, grad_clip_norm=1.0)
  params = {"w": jnp.zeros((2,))}
  updates, _ = tx.update({"w": jnp.array([30.0, 40.0])}, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], [-0.6, -0.8], rtol=1e-6)
