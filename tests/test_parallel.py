"""Tests of the batch arithmetic of `octflax.training.parallel.DataParallel`: `batch_plan`.

The test session has 8 simulated CPU devices, all of process 0 (conftest.py); runs over
several processes are simulated with stand-in devices that carry only a ``process_index``.
The parallel train and eval steps are tested in test_training.py.
"""

from __future__ import annotations

import types

import jax
import numpy as np
import pytest

import octflax.errors
from octflax import data
from octflax.training import devices as devices_lib
from octflax.training.parallel import DataParallel

UNEQUAL = ("octflax's data-parallel runs need the same number of devices on every process.")


def fake_devices(*counts: int) -> list[types.SimpleNamespace]:
  """``counts[p]`` stand-in devices of process ``p``."""
  return [types.SimpleNamespace(process_index=p) for p, count in enumerate(counts) for _ in range(count)]


def message(excinfo) -> str:
  return str(excinfo.value)


def test_batch_plan_over_8_devices():
  assert jax.device_count() == 8
  parallel = DataParallel("jit")
  plan = parallel.batch_plan(64, 1000)
  assert plan == data.BatchPlan(global_batch=64, num_processes=1, process_index=0, devices_per_process=8,
                                steps_per_epoch=15)
  assert (plan.num_devices, plan.per_process, plan.per_device) == (8, 64, 8)
  assert parallel.batch_plan(64, 0).per_process == 64
  # An evaluation may plan over fewer examples than a global batch: 0 steps.
  assert parallel.batch_plan(64, 10, name="eval_batch_size").steps_per_epoch == 0


@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_batch_plan_over_some_devices(mode):
  parallel = DataParallel(mode, jax.devices()[:4])
  plan = parallel.batch_plan(16, 100)
  assert (plan.num_devices, plan.per_process, plan.per_device, plan.steps_per_epoch) == (4, 16, 4, 6)
  assert parallel.batch_plan(8, 0).per_process == 8


def test_batch_plan_refuses_a_batch_that_does_not_split():
  parallel = DataParallel("jit")
  with pytest.raises(octflax.errors.ConfigError) as excinfo:
    parallel.batch_plan(12, 1000)
  assert message(excinfo) == (
      "batch_size 12 is not divisible by the number of devices 8: each device must get the same number "
      "of images. Use a multiple of 8 (e.g. --config.batch_size=8).")
  with pytest.raises(octflax.errors.ConfigError) as excinfo:
    parallel.batch_plan(20, 0, name="eval_batch_size")
  assert message(excinfo) == (
      "eval_batch_size 20 is not divisible by the number of devices 8: each device must get the same "
      "number of images. Use a multiple of 8 (e.g. --config.eval_batch_size=16).")
  with pytest.raises(octflax.errors.ConfigError) as excinfo:
    parallel.batch_plan(0, 1000, name="batch-size")
  assert message(excinfo) == (
      "batch-size 0 is not divisible by the number of devices 8: each device must get the same number "
      "of images. Use a multiple of 8 (e.g. --config.batch-size=8).")
  assert isinstance(excinfo.value, ValueError)


def test_devices_per_process():
  assert devices_lib.devices_per_process(fake_devices(4, 4)) == 4
  assert devices_lib.devices_per_process(fake_devices(1)) == 1
  assert devices_lib.devices_per_process(jax.devices()) == 8
  cases = [
      ((4, 2), "process 1 has 2 devices, process 0 has 4: " + UNEQUAL),
      ((2, 1), "process 1 has 1 device, process 0 has 2: " + UNEQUAL),
      ((2, 2, 3, 2), "process 2 has 3 devices, process 0 has 2: " + UNEQUAL),
  ]
  for counts, expected in cases:
    with pytest.raises(octflax.errors.ConfigError) as excinfo:
      devices_lib.devices_per_process(fake_devices(*counts))
    assert message(excinfo) == expected
  with pytest.raises(octflax.errors.ConfigError) as excinfo:
    devices_lib.devices_per_process([])
  assert message(excinfo) == "no devices: octflax's data-parallel runs need at least one device."


def test_batch_plan_of_two_simulated_processes(monkeypatch):
  parallel = DataParallel("jit")
  parallel.devices = fake_devices(4, 4)  # batch_plan reads only the devices' process indices.
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  plan = parallel.batch_plan(64, 1000)
  assert plan == data.BatchPlan(global_batch=64, num_processes=2, process_index=1, devices_per_process=4,
                                steps_per_epoch=15)
  assert (plan.per_process, plan.per_device) == (32, 8)
  assert parallel.batch_plan(64, 0).per_process == 32


def test_batch_plan_refuses_unequal_processes():
  parallel = DataParallel("jit")
  parallel.devices = fake_devices(4, 2)
  with pytest.raises(octflax.errors.ConfigError) as excinfo:
    parallel.batch_plan(48, 1000)
  assert message(excinfo) == "process 1 has 2 devices, process 0 has 4: " + UNEQUAL
  with pytest.raises(octflax.errors.ConfigError) as excinfo:
    parallel.batch_plan(48, 0).per_process
  assert message(excinfo) == "process 1 has 2 devices, process 0 has 4: " + UNEQUAL


def test_batch_plan_refuses_devices_of_other_processes_only():
  parallel = DataParallel("jit")
  parallel.devices = [types.SimpleNamespace(process_index=p) for p in (1, 1, 2, 2)]
  with pytest.raises(octflax.errors.ConfigError) as excinfo:
    parallel.batch_plan(8, 1000)
  assert message(excinfo) == (
      "the devices belong to processes [1, 2] and this is process 0: octflax's data-parallel runs need "
      "the devices of processes 0..N-1, this one among them (pass devices=None for all devices).")


def test_batch_plan_drives_the_loader():
  parallel = DataParallel("jit")
  source = data.synthetic(100, (4, 4, 1))
  plan = parallel.batch_plan(16, len(source))
  it = data.make_loader(source, train=True, plan=plan)
  assert (len(it), it.global_batch_size) == (plan.steps_per_epoch, 16) == (6, 16)
  batch = next(it)
  assert batch["image"].shape == (16, 4, 4, 1) and batch["label"].dtype == np.int32
  it.close()
  eval_plan = parallel.batch_plan(64, 100, name="eval_batch_size")
  assert eval_plan.steps_per_epoch == 1
  assert len(data.make_loader(source, train=False, plan=eval_plan)) == 2  # 64 + 36 padded.
