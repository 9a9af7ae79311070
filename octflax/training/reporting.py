"""What a run reports as it goes: the progress line and metrics.jsonl (the end's files: `summary`).

`StepReporter` receives each step's metrics as the step is dispatched and reads
them back once the step has finished, so that the progress it shows (steps,
loss, images/s, ETA) is that of finished steps only.
"""

from __future__ import annotations

import collections
import json
import math
import sys
import time
from typing import Any, Callable, TextIO

from etils import epath

from octflax.files import replace_file

METRICS_FILE = "metrics.jsonl"


class MetricsWriter:
  """Appends one JSON record per line to ``workdir/metrics.jsonl``.

  Records carry ``kind`` ('train' for a logged step, 'eval' for an epoch's
  evaluation) and ``step``. When a run resumes from the checkpoint of step s,
  records after s (written by the interrupted run) are dropped, so the file
  reads as one uninterrupted run.
  """

  def __init__(self, workdir: str, *, resume_step: int | None, enabled: bool = True, mirror: Any = None):
    """Opens the file.

    Args:
      workdir: the run's working directory.
      resume_step: the step the run resumes from (None: a fresh run, the file
        starts empty).
      enabled: False on all processes but the first (nothing is written).
      mirror: also receives every record written (``write(record)``) and is
        closed with this writer, e.g. a `monitoring.EventWriter`.
    """
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
    except OSError as e:  # Named, so that the run's one-line error says which file (see octflax.training.guard).
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


def format_duration(seconds: float) -> str:
  """``'1h02m'``, ``'3m07s'`` or ``'42s'``.

  Examples:
    >>> format_duration(3725), format_duration(187), format_duration(42.4)
    ('1h02m', '3m07s', '42s')
  """
  seconds = max(int(round(seconds)), 0)
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return f"{hours}h{minutes:02d}m"
  return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class Progress:
  """Shows how far a run is: a tqdm bar on a terminal, else one plain line per report.

  Both count finished steps only (`StepReporter` calls `advance` when it has
  read a step's metrics back); images/s and the ETA come from the finished
  steps' times.
  """

  def __init__(self, *, label: str, total: int, initial: int, enabled: bool, stream: TextIO | None = None):
    self.label = label
    self.total = total
    self.stream = sys.stdout if stream is None else stream
    self.enabled = enabled
    self._bar = None
    if enabled and self.stream.isatty():
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top

      self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc=label,
                       file=self.stream)

  def advance(self, steps: int, record: dict[str, Any] | None, eta_seconds: float | None) -> None:
    """``steps`` more steps finished; ``record`` (a logged step's metrics) updates the numbers."""
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.update(steps)
      if record is not None:
        self._bar.set_postfix(loss=f"{record['train_loss']:.4f}", acc=f"{record['train_accuracy']:.3f}",
                              img_s=f"{record['images_per_second']:.0f}", refresh=False)
    elif record is not None:
      eta = f", ETA {format_duration(eta_seconds)}" if eta_seconds is not None else ""
      self.write(f"{self.label}: step {record['step']}/{self.total}, loss {record['train_loss']:.4f}, "
                 f"accuracy {record['train_accuracy']:.3f}, {record['images_per_second']:.0f} images/s{eta}")

  def write(self, line: str) -> None:
    """A line of text that does not break the bar."""
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(line, file=self.stream)
    else:
      print(line, file=self.stream, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None


class NonFiniteMetrics(Exception):
  """A step's loss or gradient norm is NaN or infinite (`StepReporter` raises it; the trainer stops).

  Attributes:
    step: the step.
    what: e.g. ``'the loss became nan'``.
  """

  def __init__(self, step: int, what: str):
    super().__init__(f"{what} at step {step}")
    self.step, self.what = step, what


class StepReporter:
  """Reads finished steps' metrics back, checks them, logs them and moves the progress on.

  Steps are dispatched ahead of the devices; `dispatched` keeps at most
  ``max_in_flight`` steps unread (waiting for the oldest beyond that), so the
  host never runs far ahead and the progress never lags far behind.

  Attributes:
    epoch_means: ``{'train_loss', 'train_accuracy'}`` over the epoch's read steps
      (see `take_epoch_means`).
  """

  def __init__(self, *, writer: MetricsWriter, progress: Progress, fetch: Callable[[list[Any]], list[Any]],
               global_batch: int, steps_per_epoch: int, log_every: int, learning_rate: Callable[[int], float],
               start_step: int, max_in_flight: int = 3):
    self._writer, self._progress, self._fetch = writer, progress, fetch
    self._global_batch, self._steps_per_epoch, self._log_every = global_batch, steps_per_epoch, log_every
    self._learning_rate = learning_rate
    self._max_in_flight = max_in_flight
    self._pending: collections.deque[tuple[int, Any]] = collections.deque()
    self._window: list[dict[str, float]] = []
    self._epoch: list[dict[str, float]] = []
    self._carried = {"loss": 0.0, "accuracy": 0.0, "count": 0}  # Of the epoch's steps before a resume.
    self.finished_step = start_step
    self._start_step = start_step
    self._clock_step: int | None = None  # Timing starts at the first finished step (after compiling).
    self._clock_start = 0.0
    self._window_step, self._window_start = start_step, 0.0
    self._paused = 0.0
    self.steady_seconds = 0.0

  def dispatched(self, step: int, metrics: Any) -> None:
    """Step ``step`` was dispatched with ``metrics`` (device arrays, not yet read)."""
    self._pending.append((step, metrics))
    ready = 0
    while ready < len(self._pending) and _is_ready(self._pending[ready][1]):
      ready += 1
    self._read(max(ready, len(self._pending) - self._max_in_flight))

  def finish(self) -> None:
    """Waits for every dispatched step and reads its metrics."""
    self._read(len(self._pending))

  def pause(self, seconds: float) -> None:
    """Leaves ``seconds`` (an evaluation) out of the images/s and ETA."""
    self._paused += seconds
    self._window_start += seconds

  def take_epoch_means(self) -> dict[str, float | None]:
    """Mean train loss and accuracy of the epoch's steps read since the last call (and before a resume)."""
    totals = self.epoch_totals()
    n = totals["count"]
    self._epoch, self._carried = [], {"loss": 0.0, "accuracy": 0.0, "count": 0}
    return {"train_loss": totals["loss"] / n if n else None, "train_accuracy": totals["accuracy"] / n if n else None}

  def epoch_totals(self) -> dict[str, float]:
    """``{'loss', 'accuracy'}`` summed over the epoch's read steps, and their ``count``.

    Stored with each checkpoint; `resume_epoch` continues the sums, adding in
    the same order, so a run resumed mid-epoch reports the epoch's means of an
    uninterrupted run, bit for bit.
    """
    totals = dict(self._carried)
    for m in self._epoch:
      totals["loss"] += m["loss"]
      totals["accuracy"] += m["accuracy"]
      totals["count"] += 1
    return totals

  def resume_epoch(self, totals: dict[str, float] | None) -> None:
    """Continues the epoch sums of `epoch_totals` (None: from zero)."""
    if totals:
      self._carried = {"loss": float(totals["loss"]), "accuracy": float(totals["accuracy"]),
                       "count": int(totals["count"])}

  def images_per_second(self) -> float | None:
    """Over the finished steps after the first (which includes compiling)."""
    if self._clock_step is None or self.finished_step <= self._clock_step:
      return None
    seconds = time.time() - self._clock_start - self._paused
    return (self.finished_step - self._clock_step) * self._global_batch / seconds if seconds > 0 else None

  def _read(self, count: int) -> None:
    if count <= 0:
      return
    items = [self._pending.popleft() for _ in range(count)]
    values = self._fetch([m for _, m in items])
    now = time.time()
    advanced = items[-1][0] - self.finished_step
    if self._clock_step is None:
      self._clock_step, self._clock_start = items[-1][0], now
      self._window_step, self._window_start = items[-1][0], now
    record = None
    for (step, _), m in zip(items, values):
      m = {k: float(v) for k, v in m.items()}
      for key, what in (("loss", "the loss"), ("grad_norm", "the gradient norm")):
        if not math.isfinite(m[key]):
          raise NonFiniteMetrics(step, f"{what} became {m[key]}")
      self._epoch.append(m)
      self._window.append(m)
      if step % self._log_every == 0:
        record = self._log(step, now)
    self.finished_step = items[-1][0]
    self._progress.advance(advanced, record, self._eta(now))

  def _log(self, step: int, now: float) -> dict[str, Any]:
    seconds = now - self._window_start
    rate = (step - self._window_step) * self._global_batch / seconds if seconds > 0 else float("nan")
    window, self._window = self._window, []
    record = {"kind": "train", "step": step, "epoch": step / self._steps_per_epoch,
              "train_loss": sum(m["loss"] for m in window) / len(window),
              "train_accuracy": sum(m["accuracy"] for m in window) / len(window),
              "grad_norm": window[-1]["grad_norm"], "learning_rate": float(self._learning_rate(step - 1)),
              "images_per_second": rate}
    self._writer.write(record)
    self._window_step, self._window_start = step, now
    return record

  def _eta(self, now: float) -> float | None:
    if self._clock_step is None or self.finished_step <= self._clock_step:
      return None
    per_step = (now - self._clock_start - self._paused) / (self.finished_step - self._clock_step)
    return per_step * (self._progress.total - self.finished_step)


def _is_ready(metrics: Any) -> bool:
  import jax  # pylint: disable=g-import-not-at-top

  return all(x.is_ready() for x in jax.tree.leaves(metrics) if hasattr(x, "is_ready"))


__all__ = ["METRICS_FILE", "MetricsWriter", "NonFiniteMetrics", "Progress", "StepReporter", "format_duration"]
