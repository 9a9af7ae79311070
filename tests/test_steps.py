"""The train and eval steps (octflax.training.steps): one real step on each file format, the losses."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from octflax import data, training
from test_training import TinyCNN, tiny_config, write_cifar10, write_fashion_mnist, write_image_folder


@pytest.mark.parametrize("fmt", ["fashion_mnist", "cifar10", "image_folder"])
def test_one_train_and_eval_step_on_each_format(tmp_path, fmt):
  if fmt == "fashion_mnist":
    write_fashion_mnist(tmp_path, n_train=16, n_test=5)
    config = tiny_config(tmp_path)
    shape = (28, 28, 1)
  elif fmt == "cifar10":
    write_cifar10(tmp_path, per_batch=4)  # 20 training and 4 test images.
    config = tiny_config(tmp_path, **{"data.name": "cifar10", "data.augment": "crop_flip"})
    config.eval_batch_size = 8
    shape = (32, 32, 3)
  else:
    write_image_folder(tmp_path, per_class=3)  # 9 training and 9 test images.
    config = tiny_config(tmp_path, **{"data.name": "image_folder", "data.test_split": "val",
                                      "data.augment": "imagenet", "data.image_size": 16})
    shape = (16, 16, 3)
  plan, splits = training.plan_run(config)
  train_source, test_source = splits.train, splits.test
  assert plan.model.image_shape == shape and plan.model.num_classes == train_source.num_classes
  parallel = training.DataParallel("jit", jax.devices()[:1])
  model = plan.build_model()
  tx = training.make_optimizer(0.1)
  state = parallel.put_state(training.create_train_state(model, tx, seed=0, input_shape=(1,) + shape))
  params_before = jax.device_get(state.params)

  batch = next(iter(data.make_loader(train_source, batch_size=8, train=True, seed=0,
                                     augment=config.data.augment, image_size=config.data.image_size or None,
                                     process_index=0, process_count=1)))
  chex.assert_shape(batch["image"], (8,) + shape)
  state, metrics = parallel.train_step(state, parallel.put_batch(batch))
  metrics = parallel.get_metrics(metrics)
  assert int(state.step) == 1
  # A fresh classifier is near chance: the loss is close to log(num_classes).
  assert abs(float(metrics["loss"]) - math.log(train_source.num_classes)) < 1.0
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), jax.device_get(state.params),
                       params_before)
  assert min(jax.tree.leaves(moved)) > 0  # Every parameter received a gradient.

  totals = {"count": 0.0, "correct": 0.0}
  for eval_batch in data.make_loader(test_source, batch_size=8, train=False, augment=config.data.augment,
                                     image_size=config.data.image_size or None, process_index=0,
                                     process_count=1):
    sums = parallel.get_metrics(parallel.eval_step(state, parallel.put_batch(eval_batch)))
    for key in totals:
      totals[key] += float(sums[key])
  # The padded examples of the last batch count for nothing.
  assert totals["count"] == len(test_source)
  assert 0 <= totals["correct"] <= len(test_source)


def test_label_smoothing_and_mixup_losses():
  logits = jnp.array([[2.0, 0.0, 0.0]])
  labels = jnp.array([0])
  log_p = jax.nn.log_softmax(logits)[0]
  smoothed = training.cross_entropy_loss(logits, labels, label_smoothing=0.3)
  expected = -(0.8 * log_p[0] + 0.1 * log_p[1] + 0.1 * log_p[2])
  np.testing.assert_allclose(smoothed, [expected], rtol=1e-6)
  lam = training.steps.mixup_weight(jax.random.key(0), 0.2)
  assert 0.0 <= float(lam) <= 1.0


def test_mixup_loss_is_the_mixture_of_the_two_labels_losses():
  model = TinyCNN()
  tx = training.make_optimizer(0.1)
  state = training.create_train_state(model, tx, seed=3, input_shape=(1, 6, 6, 1))
  rng = np.random.default_rng(2)
  batch = {"image": rng.normal(size=(8, 6, 6, 1)).astype(np.float32),
           "label": rng.integers(0, 10, 8).astype(np.int32)}
  _, metrics = jax.jit(lambda s, b: training.train_step(s, b, mixup_alpha=0.4, label_smoothing=0.1))(state, batch)

  @jax.jit
  def mixture_loss(state, images, labels):
    # The step's mixup weight comes from fold_in(step key, 0).
    lam = training.steps.mixup_weight(jax.random.fold_in(state.step_key(), 0), 0.4)
    mixed = lam * images + (1 - lam) * images[::-1]
    logits = model.apply(state.variables, mixed, train=True, mutable=["batch_stats"])[0]
    loss = (lam * training.cross_entropy_loss(logits, labels, 0.1)
            + (1 - lam) * training.cross_entropy_loss(logits, labels[::-1], 0.1)).mean()
    return lam, loss

  lam, expected = mixture_loss(state, batch["image"], batch["label"])
  assert 0.0 < float(lam) < 1.0
  np.testing.assert_allclose(float(metrics["loss"]), float(expected), rtol=1e-5)
