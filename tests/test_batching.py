"""Tests of the batch arithmetic of the input pipeline: `octflax.data.BatchPlan` and `make_loader(plan=...)`.

The readers, augmentations and the rest of the pipeline are tested in test_data.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from octflax import data


def indexed_source(n: int, shape=(6, 6, 1), seed: int = 0) -> data.ArraySource:
  """An ArraySource whose label is the example index (to track examples)."""
  images = np.random.default_rng(seed).integers(0, 256, (n,) + shape, dtype=np.uint8)
  return data.ArraySource(images, np.arange(n), num_classes=n, mean=(100.0,) * shape[-1],
                          std=(50.0,) * shape[-1], name="indexed")


def plan(**kwargs) -> data.BatchPlan:
  fields = dict(global_batch=64, num_processes=2, process_index=0, devices_per_process=4, steps_per_epoch=0)
  return data.BatchPlan(**{**fields, **kwargs})


def message(excinfo) -> str:
  return str(excinfo.value)


# ----------------------------------------------------------------------------
# BatchPlan


def test_batch_plan_numbers_for_8_devices():
  two = data.BatchPlan(global_batch=64, num_processes=2, process_index=1, devices_per_process=4,
                       steps_per_epoch=data.steps_per_epoch(1000, 64))
  assert (two.num_devices, two.per_process, two.per_device, two.steps_per_epoch) == (8, 32, 8, 15)
  one = data.BatchPlan(global_batch=64, num_processes=1, process_index=0, devices_per_process=8,
                       steps_per_epoch=data.steps_per_epoch(1000, 64))
  assert (one.num_devices, one.per_process, one.per_device, one.steps_per_epoch) == (8, 64, 8, 15)
  eight = data.BatchPlan(global_batch=8, num_processes=8, process_index=7, devices_per_process=1,
                         steps_per_epoch=0)  # 0 steps: allowed (an evaluation plan over few examples).
  assert (eight.num_devices, eight.per_process, eight.per_device) == (8, 1, 1)


def test_batch_plan_is_frozen_and_holds_python_ints():
  p = plan(global_batch=np.int64(64), process_index=np.int32(1))
  assert p == plan(process_index=1) and hash(p) == hash(plan(process_index=1))
  assert type(p.global_batch) is int and type(p.process_index) is int
  with pytest.raises(dataclasses.FrozenInstanceError):
    p.global_batch = 32


def test_batch_plan_is_exported():
  from octflax.data import batching

  assert data.BatchPlan is batching.BatchPlan and "BatchPlan" in data.__all__


@pytest.mark.parametrize("kwargs, expected", [
    (dict(global_batch=0), "global_batch must be an integer >= 1; got 0."),
    (dict(global_batch=64.0), "global_batch must be an integer >= 1; got 64.0."),
    (dict(num_processes=0), "num_processes must be an integer >= 1; got 0."),
    (dict(num_processes=True), "num_processes must be an integer >= 1; got True."),
    (dict(process_index=-1), "process_index must be an integer >= 0; got -1."),
    (dict(process_index=2), "process_index must be in 0..1 (num_processes=2); got 2."),
    (dict(devices_per_process=0), "devices_per_process must be an integer >= 1; got 0."),
    (dict(steps_per_epoch=-1), "steps_per_epoch must be an integer >= 0; got -1."),
    (dict(global_batch=100),
     "global_batch 100 does not split evenly over 8 devices (2 processes x 4 devices): use a multiple of 8 "
     "(e.g. 96 or 104)."),
    (dict(global_batch=4),
     "global_batch 4 does not split evenly over 8 devices (2 processes x 4 devices): use a multiple of 8 "
     "(e.g. 8)."),
    (dict(global_batch=3, num_processes=2, devices_per_process=1),
     "global_batch 3 does not split evenly over 2 devices (2 processes x 1 device): use a multiple of 2 "
     "(e.g. 2 or 4)."),
    (dict(global_batch=6, num_processes=1, devices_per_process=4),
     "global_batch 6 does not split evenly over 4 devices (1 process x 4 devices): use a multiple of 4 "
     "(e.g. 4 or 8)."),
])
def test_batch_plan_refusals(kwargs, expected):
  with pytest.raises(data.DataError) as excinfo:
    plan(**kwargs)
  assert message(excinfo) == expected
  assert isinstance(excinfo.value, ValueError) and "\n" not in expected


# ----------------------------------------------------------------------------
# make_loader(plan=...)


def batches(source, **kwargs) -> list[dict[str, np.ndarray]]:
  return list(data.make_loader(source, **kwargs))


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


@pytest.mark.parametrize("train", [True, False])
def test_plan_gives_the_batches_of_batch_size_and_processes(train):
  src = indexed_source(37)
  kwargs = dict(train=train, seed=3, epoch=1, augment="crop_flip")
  for p in range(2):
    by_plan = batches(src, plan=data.BatchPlan(global_batch=8, num_processes=2, process_index=p,
                                               devices_per_process=4, steps_per_epoch=4), **kwargs)
    by_size = batches(src, batch_size=4, process_index=p, process_count=2, **kwargs)
    assert_same_batches(by_plan, by_size)
    assert len(by_plan) == (4 if train else 5) and all(b["label"].shape == (4,) for b in by_plan)
  it = data.make_loader(src, plan=plan(global_batch=8, steps_per_epoch=4), start_batch=2, **kwargs)
  assert (len(it), it.num_batches, it.start_batch, it.global_batch_size) == ((2, 4, 2, 8) if train else
                                                                             (3, 5, 2, 8))


def test_plan_shards_an_evaluation_by_process():
  """20 examples, global batch 8 over 2 processes: 3 batches each, the last one padded."""
  src = indexed_source(20)
  labels, masks = {}, {}
  for p in range(2):
    eval_plan = data.BatchPlan(global_batch=8, num_processes=2, process_index=p, devices_per_process=4,
                               steps_per_epoch=data.steps_per_epoch(20, 8))
    assert eval_plan.steps_per_epoch == 2  # Training steps; the evaluation pads a third batch.
    out = batches(src, plan=eval_plan, train=False)
    labels[p] = [b["label"].tolist() for b in out]
    masks[p] = [b["mask"].tolist() for b in out]
  assert labels[0] == [[0, 1, 2, 3], [8, 9, 10, 11], [16, 17, 18, 19]]
  assert labels[1] == [[4, 5, 6, 7], [12, 13, 14, 15], [0, 0, 0, 0]]
  assert masks[0] == [[1.0] * 4] * 3
  assert masks[1] == [[1.0] * 4, [1.0] * 4, [0.0] * 4]


def test_plan_training_batches_cover_the_global_batches():
  src = indexed_source(20)
  shards = [batches(src, train=True, seed=0, plan=plan(global_batch=8, process_index=p, steps_per_epoch=2))
            for p in range(2)]
  assert [len(s) for s in shards] == [2, 2]
  union = np.concatenate([np.concatenate([s[k]["label"] for s in shards]) for k in range(2)])
  assert len(set(union.tolist())) == 16  # 16 distinct examples; the other 4 are dropped.
  one_process = batches(src, train=True, seed=0, plan=plan(global_batch=8, num_processes=1,
                                                           devices_per_process=8, steps_per_epoch=2))
  for k in range(2):
    np.testing.assert_array_equal(one_process[k]["label"],
                                  np.concatenate([s[k]["label"] for s in shards]))


def test_plan_refusals():
  src = indexed_source(20)
  good = plan(global_batch=8, steps_per_epoch=2)
  with pytest.raises(data.DataError) as excinfo:
    data.make_loader(src, train=True, plan=good, batch_size=4)
  assert message(excinfo) == ("make_loader takes the batch size and the processes from plan or from "
                              "batch_size/process_index/process_count, not both; got plan and batch_size=4.")
  with pytest.raises(data.DataError) as excinfo:
    data.make_loader(src, train=True, plan=good, process_index=0, process_count=2)
  assert message(excinfo) == ("make_loader takes the batch size and the processes from plan or from "
                              "batch_size/process_index/process_count, not both; got plan and "
                              "process_index=0, process_count=2.")
  with pytest.raises(data.DataError) as excinfo:
    data.make_loader(src, train=True)
  assert message(excinfo) == ("make_loader needs batch_size (examples per batch on this process) or "
                              "plan=BatchPlan(...).")
  with pytest.raises(data.DataError) as excinfo:
    data.make_loader(src, train=True, plan=(8, 2, 0))
  assert message(excinfo) == "plan must be an octflax.data.BatchPlan; got (8, 2, 0)."
  with pytest.raises(data.DataError) as excinfo:
    data.make_loader(src, train=True, plan=plan(global_batch=8, steps_per_epoch=3))
  assert message(excinfo) == (f"plan.steps_per_epoch is 3, but the 20 examples of {src!r} make 2 global "
                              "batches of 8: build the plan with num_examples=20 (len(source)).")
  with pytest.raises(data.DataError) as excinfo:
    data.make_loader(src, train=True, plan=plan(global_batch=32, steps_per_epoch=0))
  assert message(excinfo) == (f"global batch size 32 (batch_size 16 x 2 processes) is larger than the 20 "
                              f"examples of {src!r}; training drops partial batches, so an epoch would be "
                              "empty. Use a smaller batch_size.")
  # An evaluation counts its own (padded) batches: the plan's training steps need not match.
  assert len(data.make_loader(src, train=False, plan=plan(global_batch=8, steps_per_epoch=0))) == 3


def test_batch_size_arguments_keep_their_checks():
  src = indexed_source(10)
  with pytest.raises(data.DataError) as excinfo:
    data.make_loader(src, batch_size=2, train=True, process_index=2, process_count=2)
  assert message(excinfo) == "process_index must be in 0..1 (num_processes=2); got 2."
  with pytest.raises(data.DataError) as excinfo:
    data.make_loader(src, batch_size=2, train=True, process_index=0, process_count=0)
  assert message(excinfo) == "process_count must be an integer >= 1; got 0."
  with pytest.raises(data.DataError) as excinfo:
    data.make_loader(src, batch_size=0, train=True, process_index=0, process_count=1)
  assert message(excinfo) == "batch_size must be an integer >= 1; got 0."
  it = data.make_loader(src, batch_size=3, train=True, process_index=1, process_count=3)
  assert (len(it), it.global_batch_size) == (1, 9)
