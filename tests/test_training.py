"""Tests of octflax.training in-process: the step, the parallel wrappers, the recipe, the guards.

A tiny CNN with BatchNorm (registered as 'test_tiny_cnn') keeps compilation short;
the runs of the real command line are in test_training_cli.py.
"""

from __future__ import annotations

import gzip
import json
import math
import pickle
import struct
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

import octflax.errors
import octflax.checkpoint
from octflax import data, models, training

TINY = "test_tiny_cnn"


class TinyCNN(nn.Module):
  """conv-BN-relu, global pool, dense: the smallest model with parameters of every kind."""

  num_classes: int = 10
  alpha: float = 0.0
  dtype: object = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3), dtype=self.dtype)(x.astype(self.dtype))
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, axis_name=self.axis_name,
                     dtype=self.dtype)(x)
    x = nn.relu(x).mean(axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


if TINY not in models.list_models():
  models.register(TINY)(TinyCNN)


# ----------------------------------------------------------------------------
# Tiny files in the original formats.


def write_fashion_mnist(directory: Path, n_train: int, n_test: int, seed: int = 0) -> None:
  """Gzipped IDX files; the label is a function of the image so that there is something to learn."""
  rng = np.random.default_rng(seed)
  directory.mkdir(parents=True, exist_ok=True)
  for stem, n in (("train", n_train), ("t10k", n_test)):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
      images[i, 2 * label: 2 * label + 6, 4:24] = 250
    for kind, magic, dims, payload in (("images-idx3", 2051, (n, 28, 28), images.tobytes()),
                                       ("labels-idx1", 2049, (n,), labels.tobytes())):
      content = struct.pack(">I", magic) + struct.pack(">" + "I" * len(dims), *dims) + payload
      (directory / f"{stem}-{kind}-ubyte.gz").write_bytes(gzip.compress(content))


def write_cifar10(directory: Path, per_batch: int, seed: int = 0) -> None:
  rng = np.random.default_rng(seed)
  directory.mkdir(parents=True, exist_ok=True)
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    batch = {b"data": rng.integers(0, 256, (per_batch, 3072)).astype(np.uint8),
             b"labels": [int(v) for v in rng.integers(0, 10, per_batch)]}
    with open(directory / name, "wb") as f:
      pickle.dump(batch, f)


def write_image_folder(root: Path, per_class: int, seed: int = 0) -> None:
  from PIL import Image

  rng = np.random.default_rng(seed)
  for split in ("train", "val"):
    for name in ("ant", "bee", "cat"):
      (root / split / name).mkdir(parents=True, exist_ok=True)
      for j in range(per_class):
        pixels = rng.integers(0, 256, (20 + j, 24 - j, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(root / split / name / f"{j}.jpg", format="JPEG")


def tiny_config(data_dir: Path, **fields) -> "ml_collections.ConfigDict":  # noqa: F821
  config = training.default_config()
  config.model.name = TINY
  config.data.dir = str(data_dir)
  config.batch_size = 8
  config.num_epochs = 1
  config.progress_bar = False
  for name, value in fields.items():
    node = config
    *parents, last = name.split(".")
    for part in parents:
      node = node[part]
    node[last] = value
  return config


# ----------------------------------------------------------------------------
# One real train and eval step on each file format.


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


# ----------------------------------------------------------------------------
# jit over a mesh, pmap and one device give the same numbers.


def _run_steps(mode: str, devices, batches, model=None):
  parallel = training.DataParallel(mode, devices)
  model = parallel.prepare_model(model or TinyCNN())
  tx = training.make_optimizer(training.learning_rate_schedule(0.5, total_steps=10, warmup_steps=1))
  state = parallel.put_state(training.create_train_state(model, tx, seed=0, input_shape=(1, 6, 6, 1)))
  losses = []
  for batch in batches:
    state, metrics = parallel.train_step(state, parallel.put_batch(batch))
    losses.append(float(parallel.get_metrics(metrics)["loss"]))
  evaluation = parallel.get_metrics(parallel.eval_step(state, parallel.put_batch(batches[0])))
  return np.array(losses), jax.device_get(parallel.get_state(state)), evaluation


def test_jit_mesh_pmap_and_one_device_agree():
  assert jax.device_count() == 8, "tests/conftest.py simulates 8 CPU devices"
  rng = np.random.default_rng(0)
  batches = [{"image": rng.normal(size=(16, 6, 6, 1)).astype(np.float32),
              "label": rng.integers(0, 10, 16).astype(np.int32),
              "mask": np.ones(16, np.float32)} for _ in range(3)]
  single = _run_steps("jit", jax.devices()[:1], batches)
  for mode in ("jit", "pmap"):
    losses, state, evaluation = _run_steps(mode, jax.devices(), batches)
    np.testing.assert_allclose(losses, single[0], rtol=1e-5, atol=1e-6)
    for name in ("params", "batch_stats"):
      chex.assert_trees_all_close(getattr(state, name), getattr(single[1], name), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(evaluation, single[2], rtol=1e-5, atol=1e-5)
  # The steps moved the parameters and the losses are those of a learning model, not constants.
  assert not np.allclose(single[0][0], single[0][-1])


# ----------------------------------------------------------------------------
# The optimizer recipe.


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


def test_label_smoothing_and_mixup_losses():
  logits = jnp.array([[2.0, 0.0, 0.0]])
  labels = jnp.array([0])
  log_p = jax.nn.log_softmax(logits)[0]
  smoothed = training.cross_entropy_loss(logits, labels, label_smoothing=0.3)
  expected = -(0.8 * log_p[0] + 0.1 * log_p[1] + 0.1 * log_p[2])
  np.testing.assert_allclose(smoothed, [expected], rtol=1e-6)
  lam = training.steps.mixup_weight(jax.random.key(0), 0.2)
  assert 0.0 <= float(lam) <= 1.0


# ----------------------------------------------------------------------------
# The training loop's guards.


def test_batch_size_not_divisible_by_device_count(tmp_path):
  write_fashion_mnist(tmp_path / "data", n_train=32, n_test=8)
  config = tiny_config(tmp_path / "data", batch_size=12)
  with pytest.raises(octflax.errors.ConfigError, match=r"batch_size 12 is not divisible by the number of devices 8"):
    training.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_unknown_field_in_a_config_file_is_refused(tmp_path):
  config = tiny_config(tmp_path)
  config.lerning_rate = 0.1
  with pytest.raises(octflax.errors.ConfigError, match=r"unknown config field 'lerning_rate'.*'learning_rate'"):
    training.train_and_evaluate(config, str(tmp_path / "run"))


def test_workdir_with_another_models_checkpoint_is_refused_untouched(tmp_path):
  write_fashion_mnist(tmp_path / "data", n_train=32, n_test=8)
  workdir = tmp_path / "run"
  other = octflax.checkpoint.CheckpointStore(
      str(workdir / "checkpoints"),
      identity=octflax.checkpoint.ModelIdentity("oct_resnet56", 0.5, 10, (28, 28, 1), data="fashion_mnist"))
  state = training.create_train_state(TinyCNN(), training.make_optimizer(0.1), seed=0, input_shape=(1, 28, 28, 1))
  other.save(7, state)
  other.close()
  (workdir / "metrics.jsonl").write_text('{"kind": "train", "step": 7}\n')
  before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))

  config = tiny_config(tmp_path / "data")
  with pytest.raises(octflax.errors.CheckpointMismatchError) as error:
    training.train_and_evaluate(config, str(workdir))
  message = str(error.value)
  assert "step 7" in message
  assert "model.name: checkpoint has 'oct_resnet56', this run has 'test_tiny_cnn'" in message
  assert "model.alpha: checkpoint has 0.5, this run has 0.25" in message
  assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")) == before
  assert (workdir / "metrics.jsonl").read_text() == '{"kind": "train", "step": 7}\n'


def _restore_params(workdir: Path, config) -> dict:
  del config
  variables, _ = octflax.checkpoint.read_checkpoint(str(workdir))  # The newest checkpoint of the run.
  return variables["params"]


@pytest.mark.slow  # two whole runs (test_jit_mesh_pmap_and_one_device_agree checks the steps by default)
def test_trainer_gives_the_same_run_under_jit_and_pmap(tmp_path):
  write_fashion_mnist(tmp_path / "data", n_train=64, n_test=20)
  summaries, params = {}, {}
  for mode in ("jit", "pmap"):
    config = tiny_config(tmp_path / "data", parallel=mode, batch_size=16, num_epochs=2, warmup_epochs=0.5,
                         checkpoint_every_steps=100, eval_batch_size=8)
    summaries[mode] = training.train_and_evaluate(config, str(tmp_path / mode))
    params[mode] = _restore_params(tmp_path / mode, config)
    records = [json.loads(line) for line in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "eval"] == [1, 2]
    assert (tmp_path / mode / "curves.png").stat().st_size > 1000
  jit, pmap = summaries["jit"], summaries["pmap"]
  assert jit["steps"] == pmap["steps"] == 8
  assert jit["num_devices"] == 8 and jit["params"] == training.state.num_params(params["jit"])
  assert jit["test_loss"] == pytest.approx(pmap["test_loss"], rel=1e-5)
  assert jit["test_accuracy"] == pmap["test_accuracy"]
  assert jit["final_train_loss"] == pytest.approx(pmap["final_train_loss"], rel=1e-5)
  chex.assert_trees_all_close(params["jit"], params["pmap"], rtol=1e-5, atol=1e-6)
  on_disk = json.loads((tmp_path / "jit" / "summary.json").read_text())
  for key in ("test_accuracy", "train_seconds", "images_per_second", "params", "gmacs_per_image", "device"):
    assert on_disk[key] == jit[key]
  assert on_disk["config"]["parallel"] == "jit" and on_disk["config"]["model"]["name"] == TINY
  # TinyCNN's MACs: a 3x3 conv from 1 to 4 channels at 28x28, then a 4x10 dense layer.
  assert on_disk["gmacs_per_image"] * 1e9 == pytest.approx(28 * 28 * 9 * 4 + 4 * 10)


def test_half_precision_computes_in_bfloat16_and_keeps_float32_parameters(tmp_path):
  write_fashion_mnist(tmp_path, n_train=16, n_test=5)
  plan, _ = training.plan_run(tiny_config(tmp_path, half_precision=True))
  model = plan.build_model()
  assert model.dtype == jnp.bfloat16
  parallel = training.DataParallel("jit", jax.devices()[:1])
  state = parallel.put_state(training.create_train_state(model, training.make_optimizer(0.1), seed=0,
                                                         input_shape=(1, 6, 6, 1)))
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(8, 6, 6, 1)).astype(np.float32), "label": np.arange(8, dtype=np.int32)}
  state, metrics = parallel.train_step(state, parallel.put_batch(batch))
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
  intermediates = model.apply(state.variables, batch["image"], capture_intermediates=True,
                              mutable=["intermediates"])[1]["intermediates"]
  assert intermediates["Conv_0"]["__call__"][0].dtype == jnp.bfloat16
  assert abs(float(metrics["loss"]) - math.log(10)) < 1.0


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


def test_validation_split_is_held_out_and_the_test_split_is_read_once_at_the_end(tmp_path):
  write_fashion_mnist(tmp_path / "data", n_train=64, n_test=20)
  config = tiny_config(tmp_path / "data", batch_size=16, num_epochs=2, checkpoint_every_steps=100,
                       eval_batch_size=8)
  config.data.validation_examples = 16
  summary = training.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["steps"] == 2 * (48 // 16)
  assert (summary["train_examples"], summary["validation_examples"]) == (48, 16)
  assert 0 <= summary["validation_accuracy"] <= 1 and 0 <= summary["test_accuracy"] <= 1
  evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in evals if r["kind"] == "eval"]
  assert [("validation_accuracy" in r, "test_accuracy" in r) for r in evals] == [(True, False), (True, True)]
  assert summary["validation_accuracy"] == evals[-1]["validation_accuracy"]


def test_evaluate_workdir_prints_the_runs_test_accuracy(tmp_path, capsys):
  from experiments import evaluate

  write_fashion_mnist(tmp_path / "data", n_train=32, n_test=12)
  summary = training.train_and_evaluate(tiny_config(tmp_path / "data"), str(tmp_path / "run"))
  capsys.readouterr()
  assert evaluate.main(["--workdir", str(tmp_path / "run"), "--batch-size", "8"]) == 0
  line = capsys.readouterr().out.strip().splitlines()[-1]
  assert line.startswith(f"{TINY} a=0.25 (step 4): top-1 {100 * summary['test_accuracy']:.2f}% top-5 ")
  assert "on 12 images" in line


def test_init_from_loads_everything_but_a_head_of_another_class_count(tmp_path, capsys):
  config = tiny_config(tmp_path / "data", **{"data.name": "synthetic", "data.image_size": 8,
                                              "data.max_train_examples": 16, "data.max_test_examples": 8})
  training.train_and_evaluate(config, str(tmp_path / "source"))
  trained, _ = octflax.checkpoint.read_checkpoint(str(tmp_path / "source"))

  tx = training.make_optimizer(0.1)
  fresh = training.create_train_state(TinyCNN(num_classes=4), tx, seed=0, input_shape=(1, 8, 8, 3))
  loaded = training.start.init_from_checkpoint(fresh, str(tmp_path / "source"))
  assert "init_from: the checkpoint has 10 classes, this run 4: params/Dense_0/bias, params/Dense_0/kernel " \
         "re-initialised." in capsys.readouterr().out
  chex.assert_trees_all_equal(loaded.params["Conv_0"], trained["params"]["Conv_0"])
  chex.assert_trees_all_equal(loaded.batch_stats, trained["batch_stats"])
  chex.assert_trees_all_equal(loaded.params["Dense_0"], fresh.params["Dense_0"])
  assert int(loaded.step) == 0

  class Wider(TinyCNN):
    @nn.compact
    def __call__(self, x, train: bool = False):
      x = nn.Conv(6, (3, 3))(x)
      x = nn.BatchNorm(use_running_average=not train)(x)
      return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))

  other = training.create_train_state(Wider(num_classes=10), tx, seed=0, input_shape=(1, 8, 8, 3))
  with pytest.raises(octflax.errors.CheckpointMismatchError) as error:
    training.start.init_from_checkpoint(other, str(tmp_path / "source"))
  message = str(error.value)
  assert "(7 parameters differ)" in message  # conv 2, BatchNorm 4, dense kernel
  for line in ("params/Conv_0/kernel: checkpoint (3, 3, 3, 4), this model (3, 3, 3, 6)",
               "params/Conv_0/bias: checkpoint (4,), this model (6,)",
               "params/Dense_0/kernel: checkpoint (4, 10), this model (6, 10)",
               "batch_stats/BatchNorm_0/mean: checkpoint (4,), this model (6,)"):
    assert line in message


@pytest.mark.slow
def test_init_from_in_the_config_starts_a_run_and_resuming_ignores_it(tmp_path, capsys):
  config = tiny_config(tmp_path / "data", **{"data.name": "synthetic", "data.image_size": 8,
                                              "data.max_train_examples": 16, "data.max_test_examples": 8})
  training.train_and_evaluate(config, str(tmp_path / "source"))
  trained, _ = octflax.checkpoint.read_checkpoint(str(tmp_path / "source"))
  tuned = tiny_config(tmp_path / "data", **{"data.name": "synthetic", "data.image_size": 8, "data.num_classes": 3,
                                             "data.max_train_examples": 16, "data.max_test_examples": 8,
                                             "learning_rate": 1e-9, "weight_decay": 0.0, "num_epochs": 1,
                                             "init_from": str(tmp_path / "source")})
  capsys.readouterr()
  summary = training.train_and_evaluate(tuned, str(tmp_path / "tuned"))
  assert "this run 3: params/Dense_0/bias, params/Dense_0/kernel re-initialised" in capsys.readouterr().out
  got, _ = octflax.checkpoint.read_checkpoint(str(tmp_path / "tuned"))
  # A learning rate of 1e-9: the convolution is the source run's, to float32 rounding.
  chex.assert_trees_all_close(got["params"]["Conv_0"], trained["params"]["Conv_0"], atol=1e-6)
  assert got["params"]["Dense_0"]["kernel"].shape == (4, 3)
  tuned.num_epochs = 2
  summary = training.train_and_evaluate(tuned, str(tmp_path / "tuned"))
  assert summary["resumed_from_step"] == 2
  assert "re-initialised" not in capsys.readouterr().out


@pytest.mark.slow
def test_model_api_nnx_trains_through_the_same_loop_and_unknown_apis_are_refused(tmp_path):
  write_fashion_mnist(tmp_path / "data", n_train=32, n_test=8)
  config = tiny_config(tmp_path / "data", **{"model.name": "oct_resnet20", "model.alpha": 0.5, "model.api": "nnx"})
  config.model.overrides.stage_sizes = (1, 1)
  config.model.overrides.widths = (4, 8)
  config.model.overrides.stem_features = 4
  summary = training.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["steps"] == 4 and 0 <= summary["test_accuracy"] <= 1
  variables, meta = octflax.checkpoint.read_checkpoint(str(tmp_path / "run"))
  assert meta["config"]["model"]["api"] == "nnx" and "params" in variables
  config.model.api = "haiku"
  with pytest.raises(octflax.errors.ConfigError, match=r"config.model.api must be 'linen' or 'nnx'; got 'haiku'"):
    training.train_and_evaluate(config, str(tmp_path / "other"))
