"""What a run leaves in its working directory: metrics.jsonl, summary.json, curves.png."""

from __future__ import annotations

import io
import json
from typing import Any

from etils import epath

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CURVES_FILE = "curves.png"


class MetricsWriter:
  """Appends one JSON record per line to ``workdir/metrics.jsonl``.

  Records carry ``kind`` ('train' for a logged step, 'eval' for an epoch's
  evaluation) and ``step``. When a run resumes from the checkpoint of step s,
  records after s (written by the interrupted run) are dropped, so the file
  reads as one uninterrupted run.
  """

  def __init__(self, workdir: str, *, resume_step: int | None, enabled: bool = True):
    """Opens the file.

    Args:
      workdir: the run's working directory.
      resume_step: the step the run resumes from (None: a fresh run, the file
        starts empty).
      enabled: False on all processes but the first (nothing is written).
    """
    self.path = epath.Path(workdir) / METRICS_FILE
    self.enabled = enabled
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
    self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))
    self._file = self.path.open("a")

  def write(self, record: dict[str, Any]) -> None:
    """Appends ``record`` (flushed at once, so a killed run keeps what it logged)."""
    if not self.enabled:
      return
    record = json.loads(json.dumps(record, default=float))
    self.records.append(record)
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()

  def evaluated_steps(self) -> set[int]:
    """Steps that have an 'eval' record."""
    return {r["step"] for r in self.records if r.get("kind") == "eval"}

  def close(self) -> None:
    if self.enabled and not self._file.closed:
      self._file.close()


def write_json(path: epath.PathLike, value: Any) -> None:
  """Writes ``value`` as indented JSON."""
  epath.Path(path).write_text(json.dumps(value, indent=1, default=str) + "\n")


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
  epath.Path(path).write_bytes(buffer.getvalue())
  return True


__all__ = ["CURVES_FILE", "METRICS_FILE", "MetricsWriter", "SUMMARY_FILE", "plot_curves", "write_json"]
