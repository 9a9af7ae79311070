"""A run's data: its splits opened from `octflax.data`'s registry, its loaders, and evaluation over a split."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from octflax import data as data_lib


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """Where a run's examples come from and how they are transformed (plain values of ``config.data``).

  Attributes:
    name: the registry name (`octflax.data.list_sources`).
    dir: the data set's directory, absolute ('' = the reader's default).
    train_split, test_split: split names.
    max_train_examples, max_test_examples: use the first this many (0 = all).
    validation_examples: the last this many training examples form the validation split.
    augment: the pipeline's augmentation (see `octflax.data.make_loader`).
    image_size: side of the model's input (0 = as stored).
    num_classes: classes of synthetic data (0 = the reader's).
    num_threads: grain threads building batches ahead.
    seed: data order and augmentation.
  """

  name: str
  dir: str
  train_split: str
  test_split: str
  max_train_examples: int
  max_test_examples: int
  validation_examples: int
  augment: str
  image_size: int
  num_classes: int
  num_threads: int
  seed: int


@dataclasses.dataclass(frozen=True)
class Splits:
  """The random-access sources of a run (``validation`` may be None)."""

  train: Any
  validation: Any | None
  test: Any


def open_splits(settings: DataSettings) -> Splits:
  """The training (less the validation examples), validation and test splits.

  Raises:
    octflax.data.DataError: missing or malformed data, or splits with different classes.
  """
  s = settings
  common = dict(data_dir=s.dir, image_size=s.image_size, num_classes=s.num_classes, seed=s.seed)
  train = data_lib.get_source(s.name, s.train_split, max_examples=s.max_train_examples, **common)
  test = data_lib.get_source(s.name, s.test_split, max_examples=s.max_test_examples, **common)
  if train.num_classes != test.num_classes:
    raise data_lib.DataError(
        f"{s.dir or s.name}: split {s.train_split!r} has {train.num_classes} classes but "
        f"{s.test_split!r} has {test.num_classes}; both splits need the same classes.")
  train, validation = data_lib.split_validation(train, s.validation_examples)
  return Splits(train=train, validation=validation, test=test)


def loader(source: Any, settings: DataSettings, plan: data_lib.BatchPlan, *, train: bool, epoch: int = 0,
           start_batch: int = 0) -> data_lib.EpochLoader:
  """This process's batches of one epoch of ``source`` from batch ``start_batch`` on (a context manager)."""
  return data_lib.make_loader(source, plan=plan, train=train, seed=settings.seed, epoch=epoch,
                              augment=settings.augment, image_size=settings.image_size or None,
                              start_batch=start_batch, num_threads=settings.num_threads)


def evaluate(parallel: Any, state: Any, source: Any, settings: DataSettings, plan: data_lib.BatchPlan,
             prefix: str = "test") -> dict[str, float]:
  """Loss and accuracy on a whole split with the pipeline's evaluation transform.

  The padded last batch is masked out: ``accuracy = sum(correct * mask) / sum(mask)``.

  Args:
    parallel: a `DataParallel`; runs `eval_step`.
    state: the placed state.
    source: the split.
    settings: the transform (augment, image size) and the loader's threads.
    plan: the evaluation batches.
    prefix: names the results.

  Returns:
    ``{prefix + '_loss', prefix + '_accuracy'}`` (and ``_top5_accuracy`` with >= 5 classes).
  """
  sums = None
  with loader(source, settings, plan, train=False) as batches:
    for batch in batches:
      metrics = parallel.eval_step(state, parallel.put_batch(batch))
      sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
  sums = parallel.get_metrics(sums)
  count = float(sums["count"])
  result = {f"{prefix}_loss": float(sums["loss_sum"]) / count, f"{prefix}_accuracy": float(sums["correct"]) / count}
  if "correct_top5" in sums:
    result[f"{prefix}_top5_accuracy"] = float(sums["correct_top5"]) / count
  return result


__all__ = ["DataSettings", "Splits", "evaluate", "loader", "open_splits"]
