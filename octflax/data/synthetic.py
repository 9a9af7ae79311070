"""Synthetic images: uniform random pixels and labels, for tests and timing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from octflax.data.errors import DataError
from octflax.data.arrays import Example


# Synthetic images are uniform on the integers 0..255: mean 127.5 and standard
# deviation sqrt((256**2 - 1) / 12).
SYNTHETIC_MEAN = 127.5
SYNTHETIC_STD = ((256**2 - 1) / 12) ** 0.5


class SyntheticSource:
  """Deterministic random images and labels, generated on access.

  Image ``i`` is uniform noise from a generator seeded with ``(seed, i)`` and
  the labels are drawn once from a generator of ``seed``, so every access
  returns the same example.

  Attributes:
    num_classes: number of classes.
    image_shape: ``(H, W, C)``.
    labels: int32 array of labels.
    mean: per-channel means on the 0..255 scale (those of uniform bytes).
    std: per-channel standard deviations on the 0..255 scale.
  """

  def __init__(
      self,
      num_examples: int,
      image_shape: Sequence[int] = (224, 224, 3),
      num_classes: int = 1000,
      seed: int = 0,
  ):
    """Creates the source.

    Args:
      num_examples: number of examples (>= 1).
      image_shape: ``(H, W, C)``, all positive.
      num_classes: number of classes (>= 1).
      seed: integer seed.

    Raises:
      DataError: an argument is bad.
    """
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
      raise DataError(f"num_examples must be an integer >= 1; got {num_examples!r}.")
    shape = tuple(image_shape)
    if len(shape) != 3 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
      raise DataError(f"image_shape must be three positive integers (H, W, C); got {image_shape!r}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
      raise DataError(f"num_classes must be an integer >= 1; got {num_classes!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
      raise DataError(f"seed must be an integer; got {seed!r}.")
    self.num_classes = int(num_classes)
    self.image_shape: tuple[int, int, int] | None = tuple(int(d) for d in shape)  # type: ignore[assignment]
    self.seed = int(seed)
    self._entropy = self.seed & ((1 << 64) - 1)
    # The labels have a stream of their own (a spawn key), apart from the images' (seed, index) ones.
    labels = np.random.default_rng(np.random.SeedSequence(self._entropy, spawn_key=(1,)))
    self.labels = labels.integers(0, self.num_classes, num_examples, dtype=np.int32)
    channels = self.image_shape[-1]
    self.mean = (SYNTHETIC_MEAN,) * channels
    self.std = (SYNTHETIC_STD,) * channels

  def __len__(self) -> int:
    return len(self.labels)

  def _image(self, index: int) -> np.ndarray:
    rng = np.random.default_rng([self._entropy, index])
    return rng.integers(0, 256, self.image_shape, dtype=np.uint8)

  def __getitem__(self, index: int) -> Example:
    """Returns example ``index`` as ``{'image': uint8 [H, W, C], 'label': int32}``."""
    index = int(index)
    if not -len(self) <= index < len(self):
      raise IndexError(f"synthetic: index {index} out of range for {len(self)} examples.")
    index %= len(self)
    return {"image": self._image(index), "label": self.labels[index]}

  def _gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised lookup of many examples: (images [n, H, W, C], labels [n])."""
    images = np.empty((len(indices),) + self.image_shape, dtype=np.uint8)
    for row, index in enumerate(indices):
      images[row] = self._image(int(index))
    return images, self.labels[indices]

  def __repr__(self) -> str:
    return (
        f"SyntheticSource({len(self)} examples, image_shape={self.image_shape}, "
        f"num_classes={self.num_classes}, seed={self.seed})"
    )


def synthetic(
    num_examples: int,
    image_shape: Sequence[int] = (224, 224, 3),
    num_classes: int = 1000,
    seed: int = 0,
) -> SyntheticSource:
  """Deterministic random images and labels, for benchmarks and tests.

  Args:
    num_examples: number of examples (>= 1).
    image_shape: ``(H, W, C)``.
    num_classes: number of classes.
    seed: integer seed; the same seed gives the same data.

  Returns:
    A `SyntheticSource`.

  Raises:
    DataError: an argument is bad.
  """
  return SyntheticSource(num_examples, image_shape, num_classes, seed)


__all__ = ['SYNTHETIC_MEAN', 'SYNTHETIC_STD', 'SyntheticSource', 'synthetic']
