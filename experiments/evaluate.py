"""Top-1 / top-5 accuracy of an octflax checkpoint, with the data pipeline's evaluation transform.

  python -m experiments.evaluate --workdir DIR [--data DIR] [--split NAME]
  python -m experiments.evaluate --checkpoint DIR --data DIR [--split NAME] [--image-size N]

``--workdir`` evaluates a trained run's newest checkpoint on the test split of
the data set it was trained on (its config is stored in the checkpoint;
``--data`` and ``--split`` point elsewhere). ``--checkpoint`` evaluates one
checkpoint directory: one the trainer wrote, or one ``experiments.convert_torch``
imported, which is evaluated on a class-per-folder image tree (``--data``; with
``--split`` the classes are in ``DATA/SPLIT``), ImageNet style: shorter side
resized to ``image_size * 256 / 224``, the centre ``image_size`` square cropped
(`octflax.data.make_loader`, ``augment='imagenet'``). Classes are the sorted
folder names. Paths may be relative, absolute or start with ``~``.

Examples:
  python -m experiments.evaluate --workdir runs/fashion_mnist
  python -m experiments.evaluate --checkpoint checkpoints/oct_resnet50_0.5 --data /data/imagenet/val
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any

import numpy as np



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m experiments.evaluate",
      description="Top-1/top-5 accuracy of an octflax checkpoint (a trained run's or an imported one).")
  which = parser.add_mutually_exclusive_group(required=True)
  which.add_argument("--workdir", help="a training run's working directory: its newest checkpoint")
  which.add_argument("--checkpoint", help="one checkpoint directory (e.g. experiments.convert_torch's --out)")
  parser.add_argument("--data", default=None,
                      help="data folder (default: the run's config.data.dir); for an imported checkpoint, "
                           "a folder with one sub-folder of images per class")
  parser.add_argument("--split", default=None,
                      help="split to evaluate (default: the run's test split; imported: --data itself)")
  parser.add_argument("--batch-size", type=int, default=None, help="global batch size (default: the run's, or 64)")
  parser.add_argument("--image-size", type=int, default=None,
                      help="imported checkpoints: side of the centre crop (default: the checkpoint's, 224)")
  parser.add_argument("--json", default=None, help="also write the result to this JSON file")
  return parser.parse_args(argv)


def _settings(meta: dict[str, Any], args: argparse.Namespace):
  """The data settings and the global batch to evaluate the checkpoint of ``meta`` with.

  A trainer's checkpoint stores its run's config, which the run plan's own readers
  (`octflax.training.plan.data_settings`, `eval_batch_size`) read; an imported one is an
  ImageNet-style model, evaluated on an image folder.
  """
  from octflax.files import resolve_path  # pylint: disable=g-import-not-at-top
  from octflax.training import plan  # pylint: disable=g-import-not-at-top

  stored = meta.get("config")
  if stored:
    settings, batch = plan.data_settings(stored), plan.eval_batch_size(stored)
  else:
    settings = plan.DataSettings(
        name="image_folder", dir="", train_split="train", test_split="", max_train_examples=0, max_test_examples=0,
        validation_examples=0, augment="imagenet", image_size=int(meta["identity"]["image_shape"][0]),
        num_classes=0, num_threads=0, seed=0)
    batch = 64
  settings = dataclasses.replace(
      settings, dir=resolve_path(args.data) if args.data else settings.dir,
      image_size=args.image_size or settings.image_size, num_threads=max(settings.num_threads, 4))
  return settings, args.batch_size or batch


def evaluate_checkpoint(path: str, args: argparse.Namespace) -> dict[str, Any]:
  """Reads the checkpoint at ``path``, builds its model and data and returns the accuracies."""
  import jax  # pylint: disable=g-import-not-at-top

  from octflax import checkpoint, data  # pylint: disable=g-import-not-at-top
  from octflax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from octflax.training import DataParallel, TrainState  # pylint: disable=g-import-not-at-top
  from octflax.training.steps import evaluate  # pylint: disable=g-import-not-at-top

  directory = checkpoint.find_checkpoint(path)
  meta = checkpoint.read_meta(directory)
  imported = not meta.get("config")
  settings, global_batch = _settings(meta, args)
  model, variables = checkpoint.load_model(directory)  # In the run's dtype and API.
  num_classes = int(meta["identity"]["num_classes"])
  if settings.name == "image_folder" and not settings.dir:
    raise data.DataError("an imported checkpoint needs --data: a folder with one sub-folder of images per class.")
  # An imported checkpoint's --data folder is itself the class folders (no split sub-folder).
  split = args.split if args.split is not None else (
      None if imported and settings.name == "image_folder" else settings.test_split)
  source = data.get_source(settings.name, split, data_dir=settings.dir, max_examples=settings.max_test_examples,
                           image_size=settings.image_size, num_classes=settings.num_classes, seed=settings.seed)
  if source.num_classes > num_classes:
    raise ConfigError(f"the data has {source.num_classes} classes but the model has {num_classes} outputs.")
  parallel = DataParallel("jit")
  batch = data.batch_plan(parallel.devices, global_batch, len(source), name="batch-size")
  state = TrainState(step=np.zeros((), np.int32), params=variables["params"], batch_stats=variables["batch_stats"],
                     opt_state={}, rng=np.zeros(2, np.uint32), apply_fn=model.apply, tx=None)
  start = time.perf_counter()
  result = evaluate(parallel, parallel.put_state(state), source, settings, batch)
  seconds = time.perf_counter() - start
  return {"checkpoint": directory, "step": meta.get("step"), "model": meta["identity"]["model.name"],
          "alpha": float(meta["identity"]["model.alpha"]), "data": settings.name, "examples": len(source),
          "num_classes": num_classes,
          "image_shape": list(data.input_shape(source, settings.augment, settings.image_size)),
          "top1": 100.0 * result["test_accuracy"],
          "top5": 100.0 * result["test_top5_accuracy"] if "test_top5_accuracy" in result else None,
          "loss": result["test_loss"], "seconds": seconds, "devices": jax.device_count()}


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  from octflax.errors import OctflaxError, exit_status  # pylint: disable=g-import-not-at-top

  try:
    result = evaluate_checkpoint(args.workdir or args.checkpoint, args)
  except (OctflaxError, ValueError) as e:  # A checkpoint, data or option that does not fit: one line.
    print(f"error: {e}", file=sys.stderr, flush=True)
    return exit_status(e)
  top5 = f" top-5 {result['top5']:.2f}%" if result["top5"] is not None else ""
  at = f" (step {result['step']})" if result["step"] is not None else ""
  print(f"{result['model']} a={result['alpha']:g}{at}: top-1 {result['top1']:.2f}%{top5} on "
        f"{result['examples']} images; {result['checkpoint']}", flush=True)
  if args.json:
    from octflax.files import resolve_path  # pylint: disable=g-import-not-at-top

    with open(resolve_path(args.json), "w") as f:
      json.dump(result, f, indent=2)
      f.write("\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
