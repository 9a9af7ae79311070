"""Contiguous subsets of a data source and the held-out validation split."""

from __future__ import annotations

from typing import Any

import numpy as np

from octflax.data.errors import DataError
from octflax.data.arrays import Example, gather

# Attributes of a source that describe its examples; a subset has the same.
_FORWARDED = ("num_classes", "image_shape", "mean", "std")


class Subset:
  """Examples ``start .. stop - 1`` of a random-access source.

  ``start`` and ``stop`` are clipped to ``0 .. len(source)``, so
  ``Subset(source, 0, n)`` is the first ``min(n, len(source))`` examples.
  ``subset[i] = source[start + i]`` (negative ``i`` counts from the end of the
  subset), and ``num_classes``, ``image_shape``, ``mean`` and ``std`` are the
  source's. The batched lookup of the source (used by `make_loader`) carries
  over, so a subset is read as fast as the whole source.

  >>> from octflax import data
  >>> train = data.synthetic(10, (4, 4, 1), num_classes=3)
  >>> tail = data.Subset(train, 7, 10)
  >>> len(tail), tail.num_classes, int(tail[0]['label']) == int(train[7]['label'])
  (3, 3, True)
  """

  def __init__(self, source: Any, start: int, stop: int):
    """Creates the view (no data is copied).

    Args:
      source: a random-access source (``len``, ``source[i]``) with
        ``num_classes``, ``image_shape``, ``mean`` and ``std`` attributes.
      start: index of the first example.
      stop: index one past the last example.

    Raises:
      DataError: `source` lacks one of the attributes above.
    """
    missing = [a for a in ("__len__", "__getitem__") + _FORWARDED if not hasattr(source, a)]
    if missing:
      raise DataError(
          f"source {source!r} has no {', '.join(map(repr, missing))}; Subset needs a random-access "
          "source with len(), source[i] and num_classes, image_shape, mean, std "
          "(e.g. octflax.data.fashion_mnist()).")
    self._source = source
    self._start = max(0, min(int(start), len(source)))
    self._count = max(0, min(int(stop), len(source)) - self._start)
    for attr in _FORWARDED:
      setattr(self, attr, getattr(source, attr))

  def __len__(self) -> int:
    return self._count

  def __getitem__(self, index: int) -> Example:
    """Returns example ``start + index`` of the source."""
    if not -self._count <= int(index) < self._count:
      raise IndexError(f"index {index} out of range for {self._count} examples.")
    return self._source[self._start + int(index) % self._count]

  def _gather(self, indices: np.ndarray) -> tuple[Any, np.ndarray]:
    """Batched lookup of examples ``indices`` (0 .. len - 1) of the subset."""
    return gather(self._source, self._start + np.asarray(indices, dtype=np.int64))

  def __repr__(self) -> str:
    return f"examples {self._start}:{self._start + self._count} of {self._source!r}"


def split_validation(source: Any, count: int) -> tuple[Any, Subset | None]:
  """Holds out the last ``count`` examples of a training source for validation.

  The split is a fixed function of the source (no randomness), so every run of a
  sweep, every seed and every resumed run sees the same held-out examples:
  ``train = source[0 : n - count]``, ``validation = source[n - count : n]``.

  >>> from octflax import data
  >>> train, validation = data.split_validation(data.synthetic(10, (4, 4, 1)), 3)
  >>> len(train), len(validation)
  (7, 3)

  Args:
    source: a random-access source of `octflax.data`.
    count: examples to hold out (the config field ``data.validation_examples``);
      0 holds out none.

  Returns:
    ``(train, validation)``; ``(source, None)`` when ``count`` is 0.

  Raises:
    DataError: ``count`` is negative or not an integer, or leaves no training
      example.
  """
  if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
    raise DataError(f"data.validation_examples must be an integer >= 0; got {count!r}.")
  if not count:
    return source, None
  if count >= len(source):
    raise DataError(
        f"data.validation_examples = {count} holds out the whole training split ({len(source)} "
        "examples); use fewer (e.g. a tenth of it) or 0 for no validation split.")
  cut = len(source) - int(count)
  return Subset(source, 0, cut), Subset(source, cut, len(source))
