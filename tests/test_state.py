"""The train state (octflax.training.state): where a run starts, here from another run's parameters."""

from __future__ import annotations

import chex
import pytest
from flax import linen as nn

import octflax.checkpoint
import octflax.errors
from octflax import training
from test_training import TinyCNN, tiny_config


def test_init_from_loads_everything_but_a_head_of_another_class_count(tmp_path, capsys):
  config = tiny_config(tmp_path / "data", **{"data.name": "synthetic", "data.image_size": 8,
                                              "data.max_train_examples": 16, "data.max_test_examples": 8})
  training.train_and_evaluate(config, str(tmp_path / "source"))
  trained, _ = octflax.checkpoint.read_checkpoint(str(tmp_path / "source"))

  tx = training.make_optimizer(0.1)
  fresh = training.create_train_state(TinyCNN(num_classes=4), tx, seed=0, input_shape=(1, 8, 8, 3))
  loaded = training.state.init_from_checkpoint(fresh, str(tmp_path / "source"))
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
    training.state.init_from_checkpoint(other, str(tmp_path / "source"))
  message = str(error.value)
  assert "(7 parameters differ)" in message  # conv 2, BatchNorm 4, dense kernel
  for line in ("params/Conv_0/kernel: checkpoint (3, 3, 3, 4), this model (3, 3, 3, 6)",
               "params/Conv_0/bias: checkpoint (4,), this model (6,)",
               "params/Dense_0/kernel: checkpoint (4, 10), this model (6, 10)",
               "batch_stats/BatchNorm_0/mean: checkpoint (4,), this model (6,)"):
    assert line in message
