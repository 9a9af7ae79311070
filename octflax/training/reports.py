"""What a run writes as it goes and at its end: ``metrics.jsonl``, TensorBoard event files, ``summary.json``, ``curves.png``.

`MetricsWriter` appends a record per logged step and per evaluation to
``metrics.jsonl`` and mirrors it to an `EventWriter`, which writes it as
TensorBoard scalars (``events.out.tfevents.*``, with tensorboardX) after the
run's config and model cost (text and hparams). At the end the run writes
its summary (`write_json`) and its learning curves (`plot_curves`).
`octflax.training.rundir.RunDirectory` opens and closes them.
"""

from __future__ import annotations

import io
import json
import os
import time
from typing import Any, Callable, Sequence

import jax
from etils import epath

from octflax.files import overwrite_file, replace_file

METRICS_FILE = "metrics.jsonl"
EVENTS_PREFIX = "events"  # Files are named events.out.tfevents.TIME.HOST.START_STEP.PID.
SUMMARY_FILE = "summary.json"
CURVES_FILE = "curves.png"


class MetricsWriter:
  """Appends one JSON record per line to ``workdir/metrics.jsonl``.

  Records carry ``kind`` ('train' for a logged step, 'eval' for an epoch's
  evaluation) and ``step``. When a run resumes from the checkpoint of step s,
  records after s (written by the interrupted run) are dropped, so the file
  reads as one uninterrupted run.
  """

  def __init__(self, workdir: str, *, resume_step: int | None, enabled: bool = True, mirror: Any = None):
    """Opens the file: empty for a fresh run (``resume_step`` None), else with the records up to
    ``resume_step``. ``enabled`` False (processes but the first): nothing is written. ``mirror`` (e.g.
    an `EventWriter`) also receives every record written and is closed with this writer."""
    self.path = epath.Path(workdir) / METRICS_FILE
    self.enabled = enabled
    self._mirror = mirror if enabled else None
    self.records: list[dict[str, Any]] = []
    if not enabled:
      return
    if resume_step is not None and self.path.exists():
      for line in self.path.read_text().splitlines():
        try:
          record = json.loads(line)
        except json.JSONDecodeError:  # A line cut by a kill.
          continue
        if record.get("step", 0) <= resume_step:
          self.records.append(record)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    # Replaced whole: a failed or killed rewrite leaves the records of the earlier run in place.
    replace_file(self.path, "".join(json.dumps(r) + "\n" for r in self.records))
    self._file = self.path.open("a")

  def write(self, record: dict[str, Any]) -> None:
    """Appends ``record`` (flushed at once, so a killed run keeps what it logged)."""
    if not self.enabled:
      return
    record = json.loads(json.dumps(record, default=float))
    self.records.append(record)
    try:
      self._file.write(json.dumps(record) + "\n")
      self._file.flush()
    except OSError as e:  # Named, so that the run's one-line error says which file (see `rundir`).
      raise OSError(e.errno, e.strerror, str(self.path)) from None
    if self._mirror is not None:
      self._mirror.write(record)

  def evaluated_steps(self) -> set[int]:
    """Steps that have an 'eval' record."""
    return {r["step"] for r in self.records if r.get("kind") == "eval"}

  def close(self) -> None:
    if self.enabled and not self._file.closed:
      self._file.close()
    if self._mirror is not None:
      self._mirror.close()

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


def write_json(path: epath.PathLike, value: Any) -> None:
  """Writes ``value`` as indented JSON (replacing the file whole: a failed write keeps the old one)."""
  replace_file(path, json.dumps(value, indent=1, default=str) + "\n")


def plot_curves(records: list[dict[str, Any]], path: epath.PathLike, title: str = "") -> bool:
  """Train, validation and test loss and accuracy per epoch (from the 'eval' records) as a PNG.

  Returns:
    False when there is no epoch to plot (nothing is written).
  """
  epochs = [r for r in records if r.get("kind") == "eval"]
  if not epochs:
    return False
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  x = [r["epoch"] for r in epochs]
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", "accuracy (%)")):
    scale = 100.0 if key == "accuracy" else 1.0
    train = [(e, scale * r[f"train_{key}"]) for e, r in zip(x, epochs) if r.get(f"train_{key}") is not None]
    if train:
      ax.plot(*zip(*train), "o-", label="train")
    for split, marker in (("validation", "^-"), ("test", "s-")):
      points = [(e, scale * r[f"{split}_{key}"]) for e, r in zip(x, epochs) if r.get(f"{split}_{key}") is not None]
      if points:
        ax.plot(*zip(*points), marker, label=split)
    ax.set_xlabel("epoch")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend()
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110)
  plt.close(fig)
  overwrite_file(path, buffer.getvalue())  # In place: no room is needed for a second copy.
  return True


def describe_devices(devices: Sequence[jax.Device] | None = None) -> str:
  """A short description such as ``'8 x TPU v4 (tpu), 2 processes'``."""
  devices = list(jax.devices() if devices is None else devices)
  kinds = sorted({f"{d.device_kind} ({d.platform})" for d in devices})
  processes = len({d.process_index for d in devices})
  text = f"{len(devices)} x {', '.join(kinds)}"
  return text + (f", {processes} processes" if processes > 1 else "")


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


__all__ = ["CURVES_FILE", "EVENTS_PREFIX", "EventWriter", "METRICS_FILE", "MetricsWriter", "SUMMARY_FILE",
           "describe_devices", "peak_memory_bytes", "plot_curves", "tensorboard_scalars", "write_json"]
