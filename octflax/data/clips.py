"""Moving Fashion-MNIST: clip classification generated deterministically from the IDX files.

Clip ``i`` of a split shows garment ``i`` of Fashion-MNIST (downsampled 2x to 14 x 14)
moving in a straight line across a dark ``canvas_size`` x ``canvas_size`` canvas over
``num_frames`` frames, in the manner of Moving MNIST. Its motion is drawn from a generator
seeded with ``(seed, split, i)``: one of eight directions (E, SE, S, SW, W, NW, N, NE:
``(dy, dx)`` in `DIRECTIONS`), a speed from ``speeds`` pixels per frame (per axis), and a
start so that the whole garment stays inside the canvas in every frame::

  frame t = garment placed at (y0 + t * s * dy, x0 + t * s * dx),   t = 0 .. T - 1

The label is the direction of motion (``label='direction'``, 8 classes: a single frame
cannot tell it, the network must use time) or the garment's class (``label='garment'``,
10 classes). The source follows the protocol of `octflax.data`'s sources (``len``,
``source[i] -> {'image': uint8 [T, H, W, 1], 'label': int32}``, a batched ``_gather``,
``num_classes``, ``image_shape = (T, H, W, 1)``, ``mean``, ``std``), so `make_loader`
batches it with ``augment='none'``::

  from octflax import data
  train = data.moving_fashion_mnist(split='train')
  batch = next(iter(data.make_loader(train, batch_size=32, train=True, seed=0, epoch=0)))
  batch['image'].shape   # (32, 8, 32, 32, 1)
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from octflax.data.errors import DataError
from octflax.data.download import FASHION_MNIST_DIR
from octflax.data.arrays import ArraySource
from octflax.data.fashion_mnist import fashion_mnist

#: (dy, dx) of the eight directions, in label order: E, SE, S, SW, W, NW, N, NE.
DIRECTIONS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))
LABELS = ("direction", "garment")
GARMENT_SIZE = 14
_SPLIT_CODES = {"train": 0, "test": 1}

# Sums over the pixels of a downsampled Fashion-MNIST training garment, averaged over the
# 60,000 garments: sum(g) and sum(g^2). Every frame holds the whole garment on a zero
# canvas, so a canvas of A pixels has mean G1 / A and second moment G2 / A exactly.
_FASHION_MNIST_G1 = 14310.879283
_FASHION_MNIST_G2 = 2434934.08095


def downsample_garments(images: np.ndarray) -> np.ndarray:
  """2x2 means of uint8 images [N, 28, 28, 1], rounded half up: uint8 [N, 14, 14]."""
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.shape[1:] != (28, 28, 1):
    raise DataError(f"images must be uint8 [N, 28, 28, 1]; got dtype {images.dtype} and shape {images.shape}.")
  out = np.empty((len(images), GARMENT_SIZE, GARMENT_SIZE), np.uint8)
  for start in range(0, len(images), 8192):  # bounded temporary memory
    block = images[start:start + 8192, :, :, 0].astype(np.uint16)
    sums = block.reshape(-1, GARMENT_SIZE, 2, GARMENT_SIZE, 2).sum(axis=(2, 4))
    out[start:start + 8192] = (sums + 2) // 4
  return out


def _moments(garments: np.ndarray, area: int) -> tuple[float, float]:
  g = garments.astype(np.float64)
  mean = g.sum(axis=(1, 2)).mean() / area
  second = (g ** 2).sum(axis=(1, 2)).mean() / area
  return mean, second


class MovingGarments:
  """Clips of garments moving across a canvas (see the module docstring).

  Attributes:
    num_frames, canvas_size, speeds, label, seed, split: as given.
    num_classes: 8 (direction) or the garments' class count (garment).
    image_shape: ``(num_frames, canvas_size, canvas_size, 1)``.
    mean, std: per-channel statistics of the clips' pixels (0..255 scale).
  """

  def __init__(self, garments: ArraySource, *, split: str = "train", num_frames: int = 8,
               canvas_size: int = 32, speeds: Sequence[int] = (1, 2), label: str = "direction",
               seed: int = 0, moments: tuple[float, float] | None = None):
    """Creates the source.

    Args:
      garments: an `ArraySource` of uint8 images [N, 28, 28, 1] with class labels.
      split: 'train' or 'test': part of the seed of every clip's motion.
      num_frames: frames T per clip (>= 2).
      canvas_size: side of the square canvas; the longest path must fit:
        ``canvas_size >= 14 + (T - 1) * max(speeds)``.
      speeds: pixels per frame (per axis) to draw from, positive ints.
      label: 'direction' or 'garment'.
      seed: the motion seed; the same seed gives the same clips.
      moments: (sum(g), sum(g^2)) averaged over training garments (None: those of
        ``garments``); the clips' mean and std follow from them.

    Raises:
      DataError: an argument is out of range (the message names it).
    """
    if split not in _SPLIT_CODES:
      raise DataError(f"split must be one of {sorted(_SPLIT_CODES)}; got {split!r}.")
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 2:
      raise DataError(f"num_frames must be an integer >= 2; got {num_frames!r}.")
    speeds = tuple(speeds)
    if not speeds or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
                             for s in speeds):
      raise DataError(f"speeds must be positive integers; got {speeds!r}.")
    need = GARMENT_SIZE + (num_frames - 1) * max(speeds)
    if isinstance(canvas_size, bool) or not isinstance(canvas_size, (int, np.integer)) or canvas_size < need:
      raise DataError(f"canvas_size must be an integer >= 14 + (num_frames - 1) * max(speeds) = {need} "
                      f"(the whole path inside the canvas); got {canvas_size!r}.")
    if label not in LABELS:
      raise DataError(f"label must be one of {LABELS}; got {label!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
      raise DataError(f"seed must be a non-negative integer; got {seed!r}.")
    self.garments = downsample_garments(garments.images)
    self.classes = garments.labels
    self.split, self.num_frames, self.canvas_size = split, int(num_frames), int(canvas_size)
    self.speeds, self.label, self.seed = speeds, label, int(seed)
    self.num_classes = len(DIRECTIONS) if label == "direction" else garments.num_classes
    self.image_shape = (self.num_frames, self.canvas_size, self.canvas_size, 1)
    area = self.canvas_size ** 2
    if moments is None:
      mean, second = _moments(self.garments, area)
    else:
      mean, second = moments[0] / area, moments[1] / area
    self.mean, self.std = (float(mean),), (float(np.sqrt(second - mean ** 2)),)
    self._motion = np.stack([self._draw(i) for i in range(len(self.classes))]) if len(self.classes) \
        else np.zeros((0, 4), np.int64)

  def _draw(self, index: int) -> np.ndarray:
    """(direction, speed, y0, x0) of clip ``index``, from its own generator."""
    rng = np.random.default_rng([self.seed, _SPLIT_CODES[self.split], index])
    direction = int(rng.integers(len(DIRECTIONS)))
    speed = self.speeds[int(rng.integers(len(self.speeds)))]
    travel = (self.num_frames - 1) * speed
    free = self.canvas_size - GARMENT_SIZE
    start = []
    for step in DIRECTIONS[direction]:
      low, high = (travel, free) if step < 0 else (0, free - travel if step > 0 else free)
      start.append(int(rng.integers(low, high + 1)))
    return np.array([direction, speed, *start], np.int64)

  def __len__(self) -> int:
    return len(self.classes)

  def _labels(self, indices: np.ndarray) -> np.ndarray:
    if self.label == "direction":
      return self._motion[indices, 0].astype(np.int32)
    return self.classes[indices].astype(np.int32)

  def _gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised lookup of many clips: (uint8 [n, T, H, W, 1], labels int32 [n])."""
    indices = np.asarray(indices, np.int64)
    clips = np.zeros((len(indices),) + self.image_shape, np.uint8)
    steps = np.asarray(DIRECTIONS, np.int64)
    for row, index in enumerate(indices):
      direction, speed, y0, x0 = self._motion[index]
      dy, dx = steps[direction] * speed
      for t in range(self.num_frames):
        y, x = y0 + t * dy, x0 + t * dx
        clips[row, t, y:y + GARMENT_SIZE, x:x + GARMENT_SIZE, 0] = self.garments[index]
    return clips, self._labels(indices)

  def __getitem__(self, index: int) -> dict[str, Any]:
    """Returns clip ``index`` as ``{'image': uint8 [T, H, W, 1], 'label': int32}``."""
    index = int(index)
    if not -len(self) <= index < len(self):
      raise IndexError(f"moving garments ({self.split}): index {index} out of range for {len(self)} clips.")
    clips, labels = self._gather(np.array([index % len(self)]))
    return {"image": clips[0], "label": labels[0]}

  def __repr__(self) -> str:
    return (f"MovingGarments({self.split}, {len(self)} clips, image_shape={self.image_shape}, "
            f"label={self.label!r}, num_classes={self.num_classes})")


def moving_fashion_mnist(data_dir: str | os.PathLike[str] | None = FASHION_MNIST_DIR, split: str = "train",
                         max_examples: int = 0, *, num_frames: int = 8, canvas_size: int = 32,
                         speeds: Sequence[int] = (1, 2), label: str = "direction",
                         seed: int = 0) -> MovingGarments:
  """Moving Fashion-MNIST clips of a split (see the module docstring).

  Args:
    data_dir: the Fashion-MNIST IDX files (as in `fashion_mnist`).
    split: 'train' (60,000 clips) or 'test' (10,000).
    max_examples: keep only the first this many clips; 0 keeps all.
    num_frames, canvas_size, speeds, label, seed: as in `MovingGarments`.

  Returns:
    A `MovingGarments` whose mean and std come from the training garments (for every split).
  """
  garments = fashion_mnist(data_dir, split, max_examples)
  return MovingGarments(garments, split=split, num_frames=num_frames, canvas_size=canvas_size,
                        speeds=speeds, label=label, seed=seed,
                        moments=(_FASHION_MNIST_G1, _FASHION_MNIST_G2))


__all__ = ["DIRECTIONS", "LABELS", "MovingGarments", "downsample_garments", "moving_fashion_mnist"]
