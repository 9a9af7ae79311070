"""A training run in-process (octflax.training.trainer): its guards, precision, validation split, init_from.

A tiny CNN with BatchNorm (registered as 'test_tiny_cnn') keeps compilation short;
the runs of the real command line are in test_training_cli.py; the step, the recipe, the
parallel wrappers and the state have their modules' test files, which share this one's tiny model
and tiny data files.
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
import pytest
from flax import linen as nn

import octflax.errors
import octflax.checkpoint
from octflax import models, training

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
# The training loop's guards.


def test_batch_size_not_divisible_by_device_count(tmp_path):
  write_fashion_mnist(tmp_path / "data", n_train=32, n_test=8)
  config = tiny_config(tmp_path / "data", batch_size=12)
  with pytest.raises(octflax.errors.ConfigError, match=r"batch_size 12 is not divisible by the number of devices 8"):
    training.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


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
