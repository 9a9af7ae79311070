"""What a run leaves at its end: ``summary.json`` (results, cost, devices, config) and ``curves.png``."""

from __future__ import annotations

import io
import json
from typing import Any

import jax
import jax.numpy as jnp
from etils import epath

from octflax.files import overwrite_file, replace_file
from octflax.training import monitoring
from octflax.training.devices import describe_devices
from octflax.training.state import num_params

SUMMARY_FILE = "summary.json"
CURVES_FILE = "curves.png"


def model_cost(model: Any, image_shape: tuple[int, ...]) -> dict[str, Any]:
  """``params``, ``macs_per_image`` and ``gmacs_per_image`` of ``model`` (traced at float32, nothing computed)."""
  from octflax import cost  # pylint: disable=g-import-not-at-top

  shape = (1, *image_shape)
  report = cost.analyze(model.clone(dtype=jnp.float32) if hasattr(model, "dtype") else model, shape)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))["params"]
  return {"params": num_params(params), "macs_per_image": report.macs // report.batch, "gmacs_per_image": report.gmacs}


def summary(*, evaluation: dict[str, float], records: list[dict[str, Any]], cost: dict[str, Any],
            devices: list[Any], counts: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
  """The run's summary.

  Args:
    evaluation: the last evaluation (with the test split).
    records: the run's metrics records (the last training loss is taken from them).
    cost: `model_cost`.
    devices: the devices the run used.
    counts: the run's numbers (steps, epochs, examples, seconds, images/s, ...), as they are.
    config: the config as JSON values.
  """
  train_records = [r for r in records if r.get("kind") in ("train", "eval") and r.get("train_loss")]
  return {
      **evaluation, **counts, **cost,
      "device": describe_devices(devices),
      "peak_bytes_per_device": monitoring.peak_memory_bytes(devices),
      "num_devices": len(devices),
      "num_processes": jax.process_count(),
      "final_train_loss": train_records[-1]["train_loss"] if train_records else None,
      "jax_version": jax.__version__,
      "config": config,
  }


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


__all__ = ["CURVES_FILE", "SUMMARY_FILE", "model_cost", "plot_curves", "summary", "write_json"]
