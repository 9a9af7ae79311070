"""Watching a run: TensorBoard event files, a profile window of chosen steps, device memory.

`EventWriter` writes every record of ``metrics.jsonl`` as TensorBoard scalars
(``events.out.tfevents.*`` in the working directory, with tensorboardX), and the
run's config and model cost as text and hparams. `ProfileWindow` captures a
`jax.profiler` trace of the steps named by ``config.profile_steps`` into
``workdir/profile/``, readable by XProf or TensorBoard's profile tab.
`peak_memory_bytes` reads the devices' peak memory for the summary.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Sequence

import jax

from octflax.errors import ConfigError

PROFILE_DIR = "profile"
EVENTS_PREFIX = "events"  # Files are named events.out.tfevents.TIME.HOST.START_STEP.PID.


def tensorboard_scalars(record: dict[str, Any]) -> dict[str, float]:
  """The scalars, by TensorBoard tag, of one ``metrics.jsonl`` record (at the record's step).

  A 'train' record gives ``train/loss``, ``train/accuracy``, ``train/grad_norm``,
  ``train/learning_rate``, ``train/images_per_second``; an 'eval' record gives
  ``validation/loss``, ``test/accuracy``, ... and the epoch's mean training loss
  and accuracy as ``train/epoch_loss``, ``train/epoch_accuracy``. ``step``,
  ``epoch`` and values that are not numbers (None) are left out.

  Examples:
    >>> tensorboard_scalars({"kind": "eval", "step": 8, "epoch": 2, "train_loss": 0.5,
    ...                      "test_accuracy": 0.75, "test_loss": None})
    {'train/epoch_loss': 0.5, 'test/accuracy': 0.75}
  """
  kind = record.get("kind")
  scalars = {}
  for key, value in record.items():
    if key in ("kind", "step", "epoch") or isinstance(value, bool) or not isinstance(value, (int, float)):
      continue
    split, _, name = key.partition("_")
    if kind == "train":
      tag = "train/" + key.removeprefix("train_")
    elif kind == "eval" and split in ("validation", "test"):
      tag = f"{split}/{name}"
    elif kind == "eval" and split == "train":
      tag = f"train/epoch_{name}"
    else:
      tag = f"{kind}/{key}"
    scalars[tag] = float(value)
  return scalars


def _hparams(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """The config's leaves by dotted name, as numbers, strings or booleans (others as text)."""
  flat = {}
  for key, value in config.items():
    if isinstance(value, dict):
      flat.update(_hparams(value, f"{prefix}{key}."))
    elif value is None or isinstance(value, (bool, int, float, str)):
      flat[prefix + key] = value
    else:
      flat[prefix + key] = json.dumps(value)
  return flat


class EventWriter:
  """TensorBoard event files in the working directory, written next to ``metrics.jsonl``.

  Each run (a fresh start or a resume from the checkpoint of step s) opens a new
  file and first writes a ``SessionLog.START`` event at step s + 1: TensorBoard
  then discards what an interrupted run had logged after step s, so a resumed
  run shows every step once, with the resumed run's values, as ``metrics.jsonl``
  does. Events are written at once and flushed, so a killed run keeps what it
  logged.
  """

  def __init__(self, workdir: str, *, start_step: int, enabled: bool = True,
               say: Callable[[str], Any] = print):
    """Opens a new event file.

    Args:
      workdir: the run's working directory.
      start_step: the step the run starts from (0, or the resumed checkpoint's).
      enabled: False on all processes but the first (nothing is written).
      say: prints a line (used when event files cannot be written, e.g. a
        ``gs://`` working directory without google-cloud-storage).
    """
    self._events = None
    if not enabled:
      return
    from tensorboardX.event_file_writer import EventsWriter  # pylint: disable=g-import-not-at-top
    from tensorboardX.proto.event_pb2 import Event, SessionLog  # pylint: disable=g-import-not-at-top

    self._event_class = Event
    try:  # Same second, same host: the start step, then the process, keep the files apart and in order.
      self._events = EventsWriter(f"{workdir}/{EVENTS_PREFIX}", f".{start_step:010d}.{os.getpid()}")
    except ImportError as e:
      say(f"TensorBoard event files are not written: {e}")
      return
    self._file = getattr(self._events, "_file_name", f"{workdir}/{EVENTS_PREFIX}.out.tfevents")
    self.start_step = start_step
    self._write(Event(step=start_step + 1, session_log=SessionLog(status=SessionLog.START)))

  def _write(self, event: Any) -> None:
    if not event.wall_time:
      event.wall_time = time.time()
    try:
      self._events.write_event(event)
      self._events.flush()
    except OSError as e:  # Named, as the trainer's other writes are (e.g. no space left on the device).
      raise OSError(e.errno, e.strerror, self._file) from None

  def _summary(self, step: int, summaries: Sequence[Any]) -> None:
    if self._events is None:
      return
    from tensorboardX.proto.summary_pb2 import Summary  # pylint: disable=g-import-not-at-top

    merged = Summary(value=[value for s in summaries for value in s.value])
    self._write(self._event_class(step=int(step), summary=merged))

  def write(self, record: dict[str, Any]) -> None:
    """The scalars of a ``metrics.jsonl`` record (`tensorboard_scalars`), and a divergence's message as text."""
    if self._events is None:
      return
    from tensorboardX import summary  # pylint: disable=g-import-not-at-top
    from tensorboardX.proto.summary_pb2 import Summary  # pylint: disable=g-import-not-at-top

    # Summary.Value directly: NaN (e.g. images/s of a window too short to time) is kept, as in metrics.jsonl.
    values = [Summary(value=[Summary.Value(tag=tag, simple_value=value)])
              for tag, value in tensorboard_scalars(record).items()]
    if isinstance(record.get("message"), str):
      values.append(summary.text(str(record.get("kind")), record["message"]))
    if values:
      self._summary(record.get("step", 0), values)

  def write_run_info(self, config: dict[str, Any], model: dict[str, Any]) -> None:
    """The run's config (text ``config``: JSON), the model (text ``model``: a table), and as hparams
    the config's fields (dotted names) with the model's ``params`` and ``macs_per_image``.

    Args:
      config: the run's config as JSON values.
      model: what describes the model, e.g. ``{'model': 'oct_resnet8', 'alpha': 0.25,
        'input_shape': [28, 28, 1], 'params': 77754, 'macs_per_image': 7628800}``.
    """
    if self._events is None:
      return
    from tensorboardX import summary  # pylint: disable=g-import-not-at-top

    table = "| field | value |\n|---|---|\n" + "".join(
        f"| {k} | {f'{v:,}' if isinstance(v, int) and not isinstance(v, bool) else v} |\n" for k, v in model.items())
    cost = {k: model[k] for k in ("params", "macs_per_image") if k in model}
    _, session_start, _ = summary.hparams({**_hparams(config), **cost}, {})
    self._summary(self.start_step, [summary.text("config", "```json\n" + json.dumps(config, indent=1) + "\n```"),
                                    summary.text("model", table), session_start])

  def close(self) -> None:
    if self._events is not None:
      self._events.close()
      self._events = None


# ----------------------------------------------------------------------------- the profile window


def profile_window(profile_steps: Any, total_steps: int | None = None) -> tuple[int, int] | None:
  """``(first, last)`` step of ``config.profile_steps`` (``START,COUNT``), or None when it is off (0).

  Raises:
    ConfigError: anything but ``0`` or two integers ``START >= 2`` (step 1 compiles
      the train step) and ``COUNT >= 1``; or a window that ends after ``total_steps``.
  """
  value = tuple(profile_steps) if isinstance(profile_steps, (tuple, list)) else (profile_steps,)
  if value in ((), (0,), (0, 0)):
    return None
  if (len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
      or value[0] < 2 or value[1] < 1):
    raise ConfigError(
        "config.profile_steps must be START,COUNT (e.g. --config.profile_steps=5,3: a trace of steps 5 to 7) "
        f"with START >= 2 (step 1 compiles the train step) and COUNT >= 1, or 0 (off); got {profile_steps!r}.")
  first, last = value[0], value[0] + value[1] - 1
  if total_steps is not None and last > total_steps:
    raise ConfigError(
        f"config.profile_steps {first},{value[1]} asks for steps {first} to {last}, but the run has "
        f"{total_steps} steps.")
  return first, last


class ProfileWindow:
  """A `jax.profiler` trace of the steps ``first`` to ``last`` (from `profile_window`).

  The trainer calls `before_step` before it dispatches a step and `after_step`
  after; the trace starts once the steps before the window have finished and
  stops once its last step has. A window that begins at or before this
  process's first step (which compiles; e.g. a run resumed past it) is skipped,
  with a line saying so.
  """

  def __init__(self, window: tuple[int, int] | None, directory: str, *, say: Callable[[str], Any] = print):
    self.window, self.directory, self._say = window, directory, say
    self._first_step: int | None = None
    self.active = False
    self.written = False

  def before_step(self, step: int, state: Any) -> None:
    """Step ``step`` is about to be dispatched; ``state`` is the previous step's output."""
    if self.window is None:
      return
    if self._first_step is None:
      self._first_step = step
      if self.window[0] <= step:
        self._say(f"profile_steps: steps {self.window[0]} to {self.window[1]} are not traced: this run starts "
                  f"at step {step}, which compiles the train step.")
        self.window = None
        return
    if step == self.window[0]:
      jax.block_until_ready(state)
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after_step(self, step: int, outputs: Any) -> None:
    """Step ``step`` was dispatched with ``outputs``; the trace stops when it is the window's last."""
    if self.active and step == self.window[1]:
      jax.block_until_ready(outputs)
      self.close()

  def close(self) -> None:
    """Stops a running trace (also when the run stops inside the window) and says where it is."""
    if not self.active:
      return
    self.active = False
    jax.profiler.stop_trace()
    self.written = True
    self._say(f"profile of steps {self.window[0]} to {self.window[1]} written to {self.directory}; "
              f"open it with: pip install xprof && xprof --logdir {self.directory}")


# ----------------------------------------------------------------------------- memory


def peak_memory_bytes(devices: Sequence[Any]) -> dict[str, int] | None:
  """Peak bytes in use on each of this process's ``devices``, by device name, where the backend reports it.

  None when no device reports it (CPU devices usually do not: their
  ``memory_stats()`` is None). The peak is since the process started.
  """
  peaks = {}
  for device in devices:
    if device.process_index != jax.process_index():
      continue
    stats = device.memory_stats()
    if stats and "peak_bytes_in_use" in stats:
      peaks[str(device)] = int(stats["peak_bytes_in_use"])
  return peaks or None


__all__ = ["EVENTS_PREFIX", "EventWriter", "PROFILE_DIR", "ProfileWindow", "peak_memory_bytes", "profile_window",
           "tensorboard_scalars"]
