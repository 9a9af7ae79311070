"""Batch arithmetic: a global batch over processes and devices (`BatchPlan`), and steps per epoch."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from octflax.data.errors import DataError


def steps_per_epoch(num_examples: int, global_batch_size: int, *, drop_remainder: bool = True) -> int:
  """Number of global batches in an epoch.

  Args:
    num_examples: examples in the data set.
    global_batch_size: examples per global batch (per-process batch times the
      number of processes).
    drop_remainder: True for training (a final partial batch is dropped);
      False for evaluation (it is padded), which rounds up.

  Returns:
    The number of batches.

  Raises:
    DataError: a negative count or a batch size below 1.
  """
  check_int("num_examples", num_examples, 0)
  check_int("global_batch_size", global_batch_size, 1)
  if drop_remainder:
    return num_examples // global_batch_size
  return -(-num_examples // global_batch_size)


def check_int(name: str, value: Any, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise DataError(f"{name} must be an integer >= {minimum}; got {value!r}.")
  return int(value)


def _plural(count: int, noun: str) -> str:
  return f"{count} {noun}" + ("" if count == 1 else "es" if noun.endswith("s") else "s")


@dataclasses.dataclass(frozen=True)
class BatchPlan:
  """The batch arithmetic of a data-parallel run: who gets how many examples per step.

  A global batch of ``global_batch`` examples splits evenly over ``num_processes``
  processes with ``devices_per_process`` devices each; `make_loader` yields this
  process's share, `per_process` examples, and each device gets `per_device`.
  ``octflax.training.parallel.DataParallel.batch_plan`` builds one for its devices.

  >>> plan = BatchPlan(global_batch=256, num_processes=2, process_index=1,
  ...                  devices_per_process=4, steps_per_epoch=steps_per_epoch(60000, 256))
  >>> plan.num_devices, plan.per_process, plan.per_device, plan.steps_per_epoch
  (8, 128, 32, 234)
  >>> BatchPlan(global_batch=100, num_processes=2, process_index=0, devices_per_process=4,
  ...           steps_per_epoch=0)  # doctest: +ELLIPSIS
  Traceback (most recent call last):
  ...
  octflax.data.errors.DataError: global_batch 100 does not split evenly over 8 devices ... (e.g. 96 or 104).

  Attributes:
    global_batch: examples per training step, over all processes.
    num_processes: processes taking part.
    process_index: this process's index, ``0 .. num_processes - 1``.
    devices_per_process: devices of each process (the same on every process).
    steps_per_epoch: training steps per epoch, the last partial global batch
      dropped (`steps_per_epoch`); 0 when the examples do not fill one global
      batch (fine for planning an evaluation, whose loader pads; a training
      `make_loader` refuses an empty epoch).

  Raises:
    DataError: (a ValueError) a count that is not an integer of the allowed
      range, a global batch that does not split evenly over the devices, or a
      process index out of range.
  """

  global_batch: int
  num_processes: int
  process_index: int
  devices_per_process: int
  steps_per_epoch: int

  def __post_init__(self):
    for name, minimum in (("global_batch", 1), ("num_processes", 1), ("process_index", 0),
                          ("devices_per_process", 1), ("steps_per_epoch", 0)):
      object.__setattr__(self, name, check_int(name, getattr(self, name), minimum))
    if self.process_index >= self.num_processes:
      raise DataError(
          f"process_index must be in 0..{self.num_processes - 1} (num_processes={self.num_processes}); "
          f"got {self.process_index}.")
    devices = self.num_devices
    if self.global_batch % devices:
      lower = self.global_batch // devices * devices
      suggestion = f"{lower} or {lower + devices}" if lower else f"{devices}"
      raise DataError(
          f"global_batch {self.global_batch} does not split evenly over {devices} devices "
          f"({_plural(self.num_processes, 'process')} x {_plural(self.devices_per_process, 'device')}): "
          f"use a multiple of {devices} (e.g. {suggestion}).")

  @property
  def num_devices(self) -> int:
    """Devices over all processes."""
    return self.num_processes * self.devices_per_process

  @property
  def per_process(self) -> int:
    """Examples per step on each process: what its loader yields per batch."""
    return self.global_batch // self.num_processes

  @property
  def per_device(self) -> int:
    """Examples per step on each device."""
    return self.global_batch // self.num_devices


__all__ = ["BatchPlan", "check_int", "steps_per_epoch"]
