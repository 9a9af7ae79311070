"""Data sets by name, as the model zoo has networks by name: `get_source`, `register_source`, `list_sources`.

A reader turns ``(split, data_dir, max_examples, image_size, num_classes, seed)`` into a
random-access source (`octflax.data.arrays`); each reads only the arguments that apply to it.
A training config names its data set (``config.data.name``) and the trainer, the evaluation
and the sweep all get their sources here::

  from octflax import data
  test = data.get_source("fashion_mnist", "test", max_examples=1000)
  data.list_sources()   # ('cifar10', 'cifar100', 'fashion_mnist', ...)
"""

from __future__ import annotations

import os
from typing import Any, Callable

from octflax.data.arrays import check_split
from octflax.data.cifar import cifar
from octflax.data.clips import moving_fashion_mnist
from octflax.data.errors import DataError
from octflax.data.fashion_mnist import fashion_mnist
from octflax.data.image_folder import image_folder
from octflax.data.subset import Subset
from octflax.data.synthetic import synthetic

Reader = Callable[..., Any]
_READERS: dict[str, Reader] = {}

# Examples of a synthetic split when max_examples is 0.
SYNTHETIC_SIZES = {"train": 1024, "test": 256}


def register_source(name: str, reader: Reader) -> Reader:
  """Makes ``reader`` the data set ``name`` of `get_source` (and of ``config.data.name``).

  Args:
    name: the data set's name.
    reader: ``reader(split, *, data_dir, max_examples, image_size, num_classes, seed) ->
      source`` (a random-access source with ``num_classes``, ``image_shape``, ``mean``, ``std``).

  Returns:
    ``reader``, so that it can be used as a decorator argument.

  Raises:
    ValueError: ``name`` is taken.
  """
  if name in _READERS:
    raise ValueError(f"a data set named {name!r} is already registered.")
  _READERS[name] = reader
  return reader


def list_sources() -> tuple[str, ...]:
  """The registered data set names, sorted."""
  return tuple(sorted(_READERS))


def get_source(name: str, split: str, *, data_dir: str | os.PathLike[str] | None = None, max_examples: int = 0,
               image_size: int = 0, num_classes: int = 0, seed: int = 0) -> Any:
  """The split ``split`` of the data set ``name``.

  Args:
    name: one of `list_sources()`.
    split: the split's name ('train'/'test'; an image folder's sub-folder such as 'val').
    data_dir: where the files are (None or '': each reader's default, e.g. Debian's
      Fashion-MNIST folder).
    max_examples: only the first this many examples (0 = all; synthetic: the number of
      examples, 0 = 1024 for 'train' and 256 for 'test').
    image_size, num_classes, seed: of synthetic data (others read them from their files).

  Returns:
    A random-access source (grain's protocol) with ``num_classes``, ``image_shape``,
    ``mean`` and ``std``.

  Raises:
    octflax.data.DataError: an unknown name, or missing or malformed data (the message says
      how to fix it).

  Examples:
    >>> source = get_source("synthetic", "test", max_examples=8, image_size=4, num_classes=3)
    >>> len(source), source.image_shape, source.num_classes
    (8, (4, 4, 3), 3)
  """
  if name not in _READERS:
    raise DataError(f"unknown data set {name!r}; known: {', '.join(list_sources())}.")
  return _READERS[name](split, data_dir=data_dir, max_examples=max_examples, image_size=image_size,
                        num_classes=num_classes, seed=seed)


def _first(source: Any, max_examples: int) -> Any:
  return Subset(source, 0, max_examples) if max_examples else source


register_source("fashion_mnist", lambda split, *, data_dir, max_examples, **_: fashion_mnist(
    data_dir, split, max_examples))
# Clips [T, H, W, 1] of moving garments (octflax.data.clips).
register_source("moving_fashion_mnist", lambda split, *, data_dir, max_examples, **_: moving_fashion_mnist(
    data_dir, split, max_examples))
register_source("cifar10", lambda split, *, data_dir, max_examples, **_: cifar(data_dir, 10, split, max_examples))
register_source("cifar100", lambda split, *, data_dir, max_examples, **_: cifar(data_dir, 100, split, max_examples))
register_source("image_folder", lambda split, *, data_dir, max_examples, **_: _first(
    image_folder(data_dir, split), max_examples))


def _synthetic(split: str, *, max_examples: int, image_size: int, num_classes: int, seed: int, **_: Any) -> Any:
  """Uniform random images and labels; the test split draws from another seed than the train split."""
  check_split(split, tuple(SYNTHETIC_SIZES))
  size = image_size or 32
  return synthetic(max_examples or SYNTHETIC_SIZES[split], (size, size, 3), num_classes or 10,
                   seed=2 * int(seed) + (split != "train"))


register_source("synthetic", _synthetic)

__all__ = ["SYNTHETIC_SIZES", "get_source", "list_sources", "register_source"]
