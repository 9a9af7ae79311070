"""Top-1 / top-5 accuracy of an octflax checkpoint on an ImageNet-style validation folder.

The folder has one sub-folder per class (class index = position in the sorted folder
names) holding JPEGs (or PNGs). Preprocessing is the PyTorch port's (torchvision's
ImageNet evaluation): resize the shorter side to 256 (bilinear, PIL), centre-crop
224 x 224, scale to [0, 1], normalise with mean (0.485, 0.456, 0.406) and std
(0.229, 0.224, 0.225). ``--image-size`` changes the crop; the resize then defaults to
``round(image_size * 256 / 224)``.

The checkpoint is a directory written by ``experiments.convert_torch`` (or
`octflax.convert.save_checkpoint`): ``model.json`` gives arch, alpha and layout, so
``--arch`` / ``--alpha`` are optional and, when given, must agree with it.

Examples:
  python -m experiments.evaluate --arch oct_resnet50 --alpha 0.5 \\
      --checkpoint checkpoints/oct_resnet50_0.5 --data /data/imagenet/val --json result.json
  python -m experiments.evaluate --checkpoint checkpoints/resnet50_tv --data /data/imagenet/val \\
      --max-examples 5000 --batch-size 128
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import sys
import time
from typing import Iterator, Sequence

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")


def list_image_folder(root: str) -> tuple[list[str], np.ndarray, list[str]]:
  """``(paths, labels, class_names)`` of a class-per-folder tree, classes sorted by name."""
  if not os.path.isdir(root):
    raise ValueError(f"--data {root!r} is not a directory.")
  classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
  if not classes:
    raise ValueError(f"{root!r} has no class sub-folders (expected one folder of images per class).")
  paths, labels = [], []
  for label, name in enumerate(classes):
    for dirpath, _, files in sorted(os.walk(os.path.join(root, name))):
      for file in sorted(files):
        if file.lower().endswith(IMAGE_EXTENSIONS):
          paths.append(os.path.join(dirpath, file))
          labels.append(label)
  if not paths:
    raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root!r}.")
  return paths, np.asarray(labels, np.int32), classes


def load_image(path: str, image_size: int = 224, resize_size: int = 256) -> np.ndarray:
  """One preprocessed image, float32 [image_size, image_size, 3] (HWC, normalised)."""
  from PIL import Image

  with Image.open(path) as image:
    image = image.convert("RGB")
    width, height = image.size
    # torchvision's Resize(int): the shorter side becomes resize_size, the longer is truncated.
    if width <= height:
      size = (resize_size, int(resize_size * height / width))
    else:
      size = (int(resize_size * width / height), resize_size)
    image = image.resize(size, Image.BILINEAR)
  width, height = image.size
  if width < image_size or height < image_size:
    raise ValueError(f"{path}: resized to {width}x{height}, smaller than the {image_size} crop; "
                     "use --resize-size >= --image-size.")
  top = int(round((height - image_size) / 2.0))
  left = int(round((width - image_size) / 2.0))
  image = image.crop((left, top, left + image_size, top + image_size))
  array = np.asarray(image, np.float32) / 255.0
  return (array - MEAN) / STD


def _batches(paths: Sequence[str], labels: np.ndarray, batch_size: int, image_size: int,
             resize_size: int, workers: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Batches decoded by a thread pool, two batches ahead of the consumer."""
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    pending = collections.deque()
    starts = iter(range(0, len(paths), batch_size))

    def submit():
      start = next(starts, None)
      if start is not None:
        chunk = paths[start:start + batch_size]
        pending.append(([pool.submit(load_image, p, image_size, resize_size) for p in chunk],
                        labels[start:start + batch_size]))

    for _ in range(3):
      submit()
    while pending:
      futures, batch_labels = pending.popleft()
      submit()
      yield np.stack([f.result() for f in futures]), batch_labels


def evaluate(model, variables, paths: Sequence[str], labels: np.ndarray, *, batch_size: int = 64,
             image_size: int = 224, resize_size: int = 256, workers: int = 4,
             progress: bool = True) -> dict:
  """Top-1 / top-5 accuracy (in %) of ``model`` with ``variables`` on the images ``paths``."""
  import jax
  import jax.numpy as jnp
  from tqdm import tqdm

  variables = jax.device_put(variables)

  @jax.jit
  def correct(variables, images, labels, valid):
    logits = model.apply(variables, images, train=False)
    k = min(5, logits.shape[-1])
    _, top = jax.lax.top_k(logits, k)
    hits = top == labels[:, None]
    top1 = jnp.sum(hits[:, 0] & valid)
    top5 = jnp.sum(jnp.any(hits, axis=-1) & valid)
    return top1, top5

  top1 = top5 = seen = 0
  start = time.perf_counter()
  with tqdm(total=len(paths), unit="img", desc="evaluate", disable=not progress) as bar:
    for images, batch_labels in _batches(paths, labels, batch_size, image_size, resize_size, workers):
      count = len(batch_labels)
      valid = np.arange(batch_size) < count
      if count < batch_size:  # pad the last batch: one compiled shape for the whole run
        images = np.concatenate([images, np.zeros((batch_size - count,) + images.shape[1:], images.dtype)])
        batch_labels = np.concatenate([batch_labels, np.zeros(batch_size - count, batch_labels.dtype)])
      hit1, hit5 = correct(variables, images, batch_labels, valid)
      top1 += int(hit1)
      top5 += int(hit5)
      seen += count
      bar.update(count)
      bar.set_postfix(top1=f"{100.0 * top1 / seen:.2f}", top5=f"{100.0 * top5 / seen:.2f}")
  seconds = time.perf_counter() - start
  return {
      "examples": seen,
      "top1": 100.0 * top1 / seen,
      "top5": 100.0 * top5 / seen,
      "seconds": seconds,
      "images_per_second": seen / seconds if seconds else None,
  }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m experiments.evaluate",
      description="Top-1/top-5 accuracy of an octflax checkpoint on a class-per-folder image tree.")
  parser.add_argument("--checkpoint", required=True, help="directory written by experiments.convert_torch")
  parser.add_argument("--data", required=True, help="validation folder: one sub-folder per class")
  parser.add_argument("--arch", default=None, help="model name (default: the checkpoint's)")
  parser.add_argument("--alpha", type=float, default=None, help="alpha (default: the checkpoint's)")
  parser.add_argument("--source", default=None, choices=("port", "torchvision"),
                      help="layout the weights came from (default: the checkpoint's, else port); "
                           "torchvision builds the model with pool_stride=False")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--max-examples", type=int, default=None,
                      help="evaluate on N images spread evenly over the sorted list")
  parser.add_argument("--image-size", type=int, default=224, help="centre crop (default 224)")
  parser.add_argument("--resize-size", type=int, default=None,
                      help="shorter side before the crop (default: round(image_size * 256 / 224))")
  parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                      help="threads decoding images")
  parser.add_argument("--json", default=None, help="also write the result to this JSON file")
  parser.add_argument("--no-progress", action="store_true", help="no progress bar")
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  from octflax import convert

  try:
    variables, meta = convert.load_checkpoint(args.checkpoint)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  settings = {}
  for name, given in (("arch", args.arch), ("alpha", args.alpha), ("source", args.source)):
    stored = meta.get(name)
    if given is not None and stored is not None and given != stored:
      print(f"error: --{name} {given!r} disagrees with the checkpoint's {name} {stored!r} "
            f"({os.path.join(args.checkpoint, convert.CHECKPOINT_META)}).", file=sys.stderr)
      return 1
    settings[name] = given if given is not None else stored
  if settings["arch"] is None or settings["alpha"] is None:
    print("error: the checkpoint has no model.json; pass --arch and --alpha.", file=sys.stderr)
    return 1
  source = settings["source"] or "port"
  num_classes = int(np.shape(variables["params"]["head"]["fc"]["kernel"])[1])
  try:
    model = convert.model_for(settings["arch"], settings["alpha"], source, num_classes=num_classes)
    paths, labels, classes = list_image_folder(args.data)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if len(classes) > num_classes:
    print(f"error: {args.data} has {len(classes)} class folders but the model has {num_classes} "
          "outputs.", file=sys.stderr)
    return 1
  if args.max_examples is not None and args.max_examples < len(paths):
    keep = np.unique(np.linspace(0, len(paths) - 1, max(args.max_examples, 1)).round().astype(int))
    paths, labels = [paths[i] for i in keep], labels[keep]
  resize_size = args.resize_size or int(round(args.image_size * 256 / 224))
  result = evaluate(model, variables, paths, labels, batch_size=args.batch_size,
                    image_size=args.image_size, resize_size=resize_size, workers=args.workers,
                    progress=not args.no_progress)
  result = {"arch": settings["arch"], "alpha": settings["alpha"], "source": source,
            "checkpoint": os.path.abspath(args.checkpoint), "data": os.path.abspath(args.data),
            "classes": len(classes), "image_size": args.image_size, "resize_size": resize_size,
            **result}
  print(f"{result['arch']} alpha={result['alpha']} ({source}): top-1 {result['top1']:.2f}% "
        f"top-5 {result['top5']:.2f}% on {result['examples']} images "
        f"({result['images_per_second']:.1f} img/s)")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)
      f.write("\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
