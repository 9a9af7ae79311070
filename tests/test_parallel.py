"""DataParallel (octflax.training.parallel): jit over a mesh, pmap and one device give the same numbers;
and the batch arithmetic over devices, `octflax.data.batch_plan`.

The test session has 8 simulated CPU devices, all of process 0 (conftest.py); runs over
several processes are simulated with stand-in devices that carry only a ``process_index``.
"""

from __future__ import annotations

import types

import chex
import jax
import numpy as np
import pytest

import octflax.errors
from octflax import data, training
from test_training import TinyCNN

UNEQUAL = ("octflax's data-parallel runs need the same number of devices on every process.")


def fake_devices(*counts: int) -> list[types.SimpleNamespace]:
  """``counts[p]`` stand-in devices of process ``p``."""
  return [types.SimpleNamespace(process_index=p) for p, count in enumerate(counts) for _ in range(count)]


def message(excinfo) -> str:
  return str(excinfo.value)


def test_batch_plan_over_8_devices():
  assert jax.device_count() == 8
  devices = jax.devices()
  plan = data.batch_plan(devices, 64, 1000)
  assert plan == data.BatchPlan(global_batch=64, num_processes=1, process_index=0, devices_per_process=8,
                                steps_per_epoch=15)
  assert (plan.num_devices, plan.per_process, plan.per_device) == (8, 64, 8)
  assert data.batch_plan(devices, 64, 0).per_process == 64
  # An evaluation may plan over fewer examples than a global batch: 0 steps.
  assert data.batch_plan(devices, 64, 10, name="eval_batch_size").steps_per_epoch == 0


def test_batch_plan_over_some_devices():
  plan = data.batch_plan(jax.devices()[:4], 16, 100)
  assert (plan.num_devices, plan.per_process, plan.per_device, plan.steps_per_epoch) == (4, 16, 4, 6)
  assert data.batch_plan(jax.devices()[:4], 8, 0).per_process == 8


def test_batch_plan_refuses_a_batch_that_does_not_split():
  devices = jax.devices()
  with pytest.raises(octflax.errors.ConfigError) as excinfo:
    data.batch_plan(devices, 12, 1000)
  assert message(excinfo) == (
      "batch_size 12 is not divisible by the number of devices 8: each device must get the same number "
      "of images. Use a multiple of 8 (e.g. --config.batch_size=8).")
  with pytest.raises(octflax.errors.ConfigError) as excinfo:
    data.batch_plan(devices, 20, 0, name="eval_batch_size")
  assert message(excinfo) == (
      "eval_batch_size 20 is not divisible by the number of devices 8: each device must get the same "
      "number of images. Use a multiple of 8 (e.g. --config.eval_batch_size=16).")
  with pytest.raises(octflax.errors.ConfigError) as excinfo:
    data.batch_plan(devices, 0, 1000, name="batch-size")
  assert message(excinfo) == (
      "batch-size 0 is not divisible by the number of devices 8: each device must get the same number "
      "of images. Use a multiple of 8 (e.g. --config.batch-size=8).")
  assert isinstance(excinfo.value, ValueError)


def test_devices_per_process():
  assert data.batching.devices_per_process(fake_devices(4, 4)) == 4
  assert data.batching.devices_per_process(fake_devices(1)) == 1
  assert data.batching.devices_per_process(jax.devices()) == 8
  cases = [
      ((4, 2), "process 1 has 2 devices, process 0 has 4: " + UNEQUAL),
      ((2, 1), "process 1 has 1 device, process 0 has 2: " + UNEQUAL),
      ((2, 2, 3, 2), "process 2 has 3 devices, process 0 has 2: " + UNEQUAL),
  ]
  for counts, expected in cases:
    with pytest.raises(octflax.errors.ConfigError) as excinfo:
      data.batching.devices_per_process(fake_devices(*counts))
    assert message(excinfo) == expected
  with pytest.raises(octflax.errors.ConfigError) as excinfo:
    data.batching.devices_per_process([])
  assert message(excinfo) == "no devices: octflax's data-parallel runs need at least one device."


def test_batch_plan_of_two_simulated_processes(monkeypatch):
  devices = fake_devices(4, 4)  # batch_plan reads only the devices' process indices.
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  plan = data.batch_plan(devices, 64, 1000)
  assert plan == data.BatchPlan(global_batch=64, num_processes=2, process_index=1, devices_per_process=4,
                                steps_per_epoch=15)
  assert (plan.per_process, plan.per_device) == (32, 8)
  assert data.batch_plan(devices, 64, 0).per_process == 32


def test_batch_plan_refuses_unequal_processes():
  devices = fake_devices(4, 2)
  with pytest.raises(octflax.errors.ConfigError) as excinfo:
    data.batch_plan(devices, 48, 1000)
  assert message(excinfo) == "process 1 has 2 devices, process 0 has 4: " + UNEQUAL
  with pytest.raises(octflax.errors.ConfigError) as excinfo:
    data.batch_plan(devices, 48, 0).per_process
  assert message(excinfo) == "process 1 has 2 devices, process 0 has 4: " + UNEQUAL


def test_batch_plan_refuses_devices_of_other_processes_only():
  devices = [types.SimpleNamespace(process_index=p) for p in (1, 1, 2, 2)]
  with pytest.raises(octflax.errors.ConfigError) as excinfo:
    data.batch_plan(devices, 8, 1000)
  assert message(excinfo) == (
      "the devices belong to processes [1, 2] and this is process 0: octflax's data-parallel runs need "
      "the devices of processes 0..N-1, this one among them (pass devices=None for all devices).")


def test_batch_plan_drives_the_loader():
  source = data.synthetic(100, (4, 4, 1))
  plan = data.batch_plan(jax.devices(), 16, len(source))
  it = data.make_loader(source, train=True, plan=plan)
  assert (len(it), it.global_batch_size) == (plan.steps_per_epoch, 16) == (6, 16)
  batch = next(it)
  assert batch["image"].shape == (16, 4, 4, 1) and batch["label"].dtype == np.int32
  it.close()
  eval_plan = data.batch_plan(jax.devices(), 64, 100, name="eval_batch_size")
  assert eval_plan.steps_per_epoch == 1
  assert len(data.make_loader(source, train=False, plan=eval_plan)) == 2  # 64 + 36 padded.


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
