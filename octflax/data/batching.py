"""Batch arithmetic: a global batch over processes and devices (`BatchPlan`, `batch_plan`), and steps per epoch."""

from __future__ import annotations

import dataclasses
import collections
from typing import Any, Sequence

import jax
import numpy as np

from octflax.data.errors import DataError
from octflax.errors import ConfigError


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
  `batch_plan` builds one for a list of devices.

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


def batch_plan(devices: Sequence[Any], global_batch: int, num_examples: int, *,
               name: str = "batch_size") -> BatchPlan:
  """The batch arithmetic of a global batch over ``devices`` (`BatchPlan`), all processes'.

  What `octflax.data.make_loader` takes as ``plan``: this process's share of
  each global batch (``per_process``), its index (``jax.process_index()``)
  and the number of processes.

  Args:
    global_batch: examples per step over all devices.
    num_examples: examples of the data set the plan counts steps over
      (`octflax.data.steps_per_epoch`, the partial last batch dropped). For
      training, the training set (``len(source)``); for evaluation any
      number, where ``steps_per_epoch`` 0 is fine (its loader pads the last
      batch and counts its own batches).
    name: the config field of ``global_batch``, named in the error.

  Returns:
    The plan.

  Raises:
    ConfigError: processes with different numbers of devices, this process
      not among processes ``0 .. N - 1`` of the devices, or a global batch
      that does not split evenly over the devices (the message names ``name``
      and suggests a value).
    DataError: a negative ``num_examples``.
  """
  per_process = devices_per_process(devices)
  processes = sorted({d.process_index for d in devices})
  if processes != list(range(len(processes))) or jax.process_index() not in processes:
    raise ConfigError(
        f"the devices belong to processes {processes} and this is process {jax.process_index()}: "
        "octflax's data-parallel runs need the devices of processes 0..N-1, this one among them "
        "(pass devices=None for all devices).")
  check_batch_size(global_batch, len(devices), name)
  return BatchPlan(global_batch=global_batch, num_processes=len(processes),
                            process_index=jax.process_index(), devices_per_process=per_process,
                            steps_per_epoch=steps_per_epoch(num_examples, global_batch))


def check_batch_size(global_batch_size: int, num_devices: int, name: str = "batch_size") -> None:
  """Raises `ConfigError` unless the global batch splits evenly over the devices."""
  if global_batch_size < 1 or global_batch_size % num_devices:
    raise ConfigError(
        f"{name} {global_batch_size} is not divisible by the number of devices {num_devices}: "
        f"each device must get the same number of images. Use a multiple of {num_devices} "
        f"(e.g. --config.{name}={max(num_devices, global_batch_size // num_devices * num_devices)}).")


def devices_per_process(devices: Sequence[Any]) -> int:
  """The number of devices of each process among ``devices`` (objects with a ``process_index``).

  Raises:
    ConfigError: no devices, or processes with different numbers of devices.
  """
  counts = collections.Counter(d.process_index for d in devices)
  if not counts:
    raise ConfigError("no devices: octflax's data-parallel runs need at least one device.")
  first = min(counts)
  for process in sorted(counts):
    if counts[process] != counts[first]:
      raise ConfigError(
          f"process {process} has {counts[process]} device{'s' if counts[process] != 1 else ''}, "
          f"process {first} has {counts[first]}: octflax's data-parallel runs need the same number "
          "of devices on every process.")
  return counts[first]


