"""Watching the steps of a run: their metrics read back as they finish, the progress line, the profile window.

`StepReporter` receives each step's metrics as the step is dispatched and reads
them back once the step has finished, so that the progress it shows (steps,
loss, images/s, ETA) is that of finished steps only; a loss or gradient norm
that is not finite stops the run (`NonFiniteMetrics`). `ProfileWindow` captures
a `jax.profiler` trace of the steps named by ``config.profile_steps`` into
``workdir/profile/``, readable by XProf or TensorBoard's profile tab.
"""

from __future__ import annotations

import collections
import math
import sys
import time
from typing import Any, Callable, TextIO

import jax

PROFILE_DIR = "profile"


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


__all__ = ["NonFiniteMetrics", "PROFILE_DIR", "ProfileWindow", "Progress", "StepReporter", "format_duration"]
