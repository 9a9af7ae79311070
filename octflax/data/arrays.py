"""In-memory sources and what every reader shares: argument checks and the batched lookup `gather`.

Every source of `octflax.data` follows grain's ``RandomAccessDataSource`` protocol:
``len(source)`` and ``source[i] -> {'image': uint8 [H, W, C], 'label': int32 scalar}``. Each
also carries ``num_classes``, ``image_shape`` (``None`` when images differ in size) and
per-channel ``mean`` and ``std`` on the 0..255 scale for normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from octflax.data.errors import DataError


Example = dict[str, np.ndarray]

def check_split(split: str, allowed: Sequence[str]) -> str:
  if split not in allowed:
    raise DataError(f"split must be one of {', '.join(map(repr, allowed))}; got {split!r}.")
  return split


def check_max_examples(max_examples: int) -> int:
  if isinstance(max_examples, bool) or not isinstance(max_examples, (int, np.integer)) or max_examples < 0:
    raise DataError(
        f"max_examples must be an integer >= 0 (0 means all examples); got {max_examples!r}."
    )
  return int(max_examples)


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
  if labels.size == 0:
    return
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if bad.size:
    i = int(bad[0])
    raise DataError(
        f"{where}: label {int(labels[i])} at index {i} is out of range; labels must be "
        f"integers in 0..{num_classes - 1} ({num_classes} classes); "
        f"{bad.size} label(s) are out of range."
    )


def gather(source: Any, indices: np.ndarray) -> tuple[list[np.ndarray] | np.ndarray, np.ndarray]:
  """Examples ``indices`` of a source: ``(images, labels int32 [n])``.

  Uses the source's batched lookup ``_gather`` when it has one (the sources of
  this module and `Subset`: one NumPy gather instead of ``n`` Python calls);
  otherwise reads ``source[i]`` one by one and returns the images as a list
  (they may differ in size).

  Raises:
    DataError: an example's image is not uint8 [H, W, C].
  """
  batched = getattr(source, "_gather", None)
  if batched is not None:
    return batched(indices)
  images, labels = [], []
  for index in indices:
    example = source[int(index)]
    image = np.asarray(example["image"])
    if image.dtype != np.uint8 or image.ndim != 3:
      raise DataError(
          f"{source!r}: example {int(index)} has an image of dtype {image.dtype} and "
          f"shape {image.shape}; expected uint8 [H, W, C]."
      )
    images.append(image)
    labels.append(example["label"])
  return images, np.asarray(labels, dtype=np.int32).reshape(len(indices))


class ArraySource:
  """An in-memory data source over a uint8 image array and an integer label array.

  Attributes:
    images: uint8 array [N, H, W, C].
    labels: int32 array [N].
    num_classes: number of classes.
    image_shape: ``(H, W, C)``.
    mean: per-channel means on the 0..255 scale.
    std: per-channel standard deviations on the 0..255 scale.
    name: a short description used in messages and ``repr``.
  """

  def __init__(
      self,
      images: np.ndarray,
      labels: np.ndarray,
      *,
      num_classes: int,
      mean: Sequence[float],
      std: Sequence[float],
      name: str = "arrays",
  ):
    """Wraps arrays as a data source, checking shapes, types and labels.

    Args:
      images: uint8 array [N, H, W, C].
      labels: integer array [N] with values in ``0 .. num_classes - 1``.
      num_classes: number of classes (>= 1).
      mean: C per-channel means on the 0..255 scale.
      std: C per-channel standard deviations (> 0) on the 0..255 scale.
      name: a short description used in messages.

    Raises:
      DataError: when any of the above does not hold.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4:
      raise DataError(
          f"{name}: images must be a uint8 array [N, H, W, C]; got dtype {images.dtype} "
          f"and shape {images.shape}."
      )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
      raise DataError(
          f"{name}: labels must be a 1-D integer array; got dtype {labels.dtype} and shape {labels.shape}."
      )
    if len(labels) != len(images):
      raise DataError(
          f"{name}: {len(images)} images but {len(labels)} labels; the counts must agree."
      )
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
      raise DataError(f"{name}: num_classes must be an integer >= 1; got {num_classes!r}.")
    check_labels(labels, int(num_classes), name)
    channels = images.shape[-1]
    mean = tuple(float(m) for m in mean)
    std = tuple(float(s) for s in std)
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
      raise DataError(
          f"{name}: mean and std must have one value per channel ({channels}) and std must be "
          f"> 0; got mean={mean}, std={std}."
      )
    self.images = images
    self.labels = labels.astype(np.int32, copy=False)
    self.num_classes = int(num_classes)
    self.image_shape: tuple[int, int, int] | None = tuple(int(d) for d in images.shape[1:])
    self.mean = mean
    self.std = std
    self.name = name

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> Example:
    """Returns example ``index`` as ``{'image': uint8 [H, W, C], 'label': int32}``."""
    index = int(index)
    if not -len(self) <= index < len(self):
      raise IndexError(f"{self.name}: index {index} out of range for {len(self)} examples.")
    return {"image": self.images[index], "label": self.labels[index]}

  def _gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised lookup of many examples: (images [n, H, W, C], labels [n])."""
    return self.images[indices], self.labels[indices]

  def __repr__(self) -> str:
    return (
        f"ArraySource({self.name}, {len(self)} examples, image_shape={self.image_shape}, "
        f"num_classes={self.num_classes})"
    )


__all__ = ['ArraySource', 'Example', 'check_labels', 'check_max_examples', 'check_split', 'gather']
