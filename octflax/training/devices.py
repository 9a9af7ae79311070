"""The devices of a run: processes connected, described, and the batch checked against them."""

from __future__ import annotations

import collections
from typing import Any, Sequence

import jax

from octflax.errors import ConfigError


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
  """Connects the processes of a multi-host run (`jax.distributed.initialize`).

  Call once per process before any other JAX call. On Cloud TPU pods, SLURM and
  other detected clusters the arguments may be left out; elsewhere give all
  three. CPU processes exchange data through gloo.

  Args:
    coordinator_address: ``host:port`` of process 0.
    num_processes: number of processes.
    process_id: this process's index, ``0 .. num_processes - 1``.
  """
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, KeyError, ValueError):  # A jax without the option: gloo is built in.
    pass
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)


def describe_devices(devices: Sequence[jax.Device] | None = None) -> str:
  """A short description such as ``'8 x TPU v4 (tpu), 2 processes'``."""
  devices = list(jax.devices() if devices is None else devices)
  kinds = sorted({f"{d.device_kind} ({d.platform})" for d in devices})
  processes = len({d.process_index for d in devices})
  text = f"{len(devices)} x {', '.join(kinds)}"
  return text + (f", {processes} processes" if processes > 1 else "")


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


__all__ = ["check_batch_size", "describe_devices", "devices_per_process", "initialize_distributed"]
