"""The input pipeline: shuffled, augmented, normalised batches on grain, sharded by process.

One call of `make_loader` gives one epoch, as a chain of grain ``MapDataset``
transformations over example indices::

  MapDataset.range(N).shuffle(seed)          # the epoch's order (training)
            .random_map(draw, seed)          # each position's augmentation numbers
            .batch(B)                        # chunks of B positions
            [p + start * P : nb * P : P]     # this process's chunk of each global batch
            .map(build)                      # read, augment, normalise: the batch

with ``B`` the per-process batch, ``P`` processes, ``G = B * P`` the global
batch and ``nb`` the number of global batches. Global batch ``k`` is positions
``k * G .. (k + 1) * G - 1`` of the order, and process ``p`` takes chunk
``k * P + p``, the ``p``-th ``B`` of them, so the union of the processes'
batches ``k`` is global batch ``k`` whatever the number of processes. The
order and the augmentation numbers are pure functions of ``(seed, epoch,
position)``: a run can be resumed mid-epoch (``start_batch``) at no cost and
split over any number of processes with identical batches.

Kept by hand, since grain has no equivalent: the per-epoch seeds (below), the
padded and masked last batch of an evaluation (the same number of batches on
every process), and ``build``, which reads a whole batch with one NumPy gather
and crops it vectorised (grain's ``batch`` reads its parent one element at a
time: a Python call per example). The shuffle, batch and ``random_map`` still
cost a few grain calls per example; they hold the GIL, so ``num_threads`` does
not speed them up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

try:
  import grain

  grain.MapDataset  # pylint: disable=pointless-statement
except (ImportError, AttributeError):  # Older grain releases.
  import grain.python as grain  # type: ignore[no-redef]

from octflax.data import augment as aug
from octflax.data.errors import DataError
from octflax.data.arrays import gather
from octflax.data.batching import BatchPlan, check_int, steps_per_epoch

Batch = dict[str, np.ndarray]


def epoch_seeds(seed: int, epoch: int) -> tuple[int, int]:
  """The seeds of an epoch's shuffle and augmentations, both in ``0 .. 2**32 - 1``.

  A hash of ``(seed, epoch)`` (NumPy's ``SeedSequence``, stable across NumPy
  versions). grain's own per-epoch reseeding uses ``seed + epoch``, under which
  seed 1 at epoch 0 would repeat the order of seed 0 at epoch 1; the runs of a
  sweep over seeds should not share orders.

  >>> epoch_seeds(0, 0) == epoch_seeds(0, 0) != epoch_seeds(0, 1)
  True
  """
  shuffle_seed, augment_seed = np.random.SeedSequence([int(seed) % 2**64, int(epoch)]).generate_state(2)
  return int(shuffle_seed), int(augment_seed)


@dataclasses.dataclass(frozen=True)
class _Build:
  """Turns a chunk of positions into a batch (the grain map at the end of the chain).

  A chunk is an int64 array [B] of example indices, with the uniform numbers
  [B, draws] of the augmentation when it draws any; in evaluation the indices
  are positions, those at or past `num_examples` padding.
  """

  source: Any
  num_examples: int
  train: bool
  augment: str
  out_shape: tuple[int, int, int]
  resize: bool  # 'none' with a resize to out_shape (centre crop of the shorter side).
  mean: np.ndarray
  std: np.ndarray

  def _transform(self, images: list[np.ndarray] | np.ndarray, u: np.ndarray | None) -> np.ndarray:
    size = self.out_shape[0]
    if self.augment == "imagenet":
      if self.train:
        out = [aug.imagenet_train(image, u[i], size) for i, image in enumerate(images)]
      else:
        out = [aug.center_resize(image, size) for image in images]
      return np.stack(out)
    if self.resize:
      return np.stack([aug.center_resize(image, size, crop_fraction=1.0) for image in images])
    if not isinstance(images, np.ndarray):
      shapes = {image.shape for image in images}
      if len(shapes) != 1 or next(iter(shapes)) != self.out_shape:
        raise DataError(
            f"{self.source!r}: images of shapes {sorted(shapes)} in one batch; expected all "
            f"{self.out_shape}. Pass image_size=... (resizes) or augment='imagenet'."
        )
      images = np.stack(images)
    if self.train and self.augment in ("crop", "crop_flip"):
      return aug.random_crop_flip(images, u, flip=self.augment == "crop_flip")
    return images

  def __call__(self, chunk: np.ndarray | tuple[np.ndarray, np.ndarray]) -> Batch:
    indices, u = chunk if isinstance(chunk, tuple) else (chunk, None)
    indices = np.asarray(indices, dtype=np.int64)
    valid = indices < self.num_examples
    count = int(valid.sum())  # Valid positions form a prefix.
    image = np.zeros((len(indices),) + self.out_shape, dtype=np.float32)
    label = np.zeros((len(indices),), dtype=np.int32)
    if count:
      images, labels = gather(self.source, indices[:count])
      pixels = self._transform(images, u)
      np.divide(np.subtract(pixels, self.mean, dtype=np.float32), self.std, out=image[:count])
      label[:count] = labels
    batch = {"image": image, "label": label}
    if not self.train:
      batch["mask"] = valid.astype(np.float32)
    return batch


@dataclasses.dataclass(frozen=True)
class _Draw:
  """grain random map: position -> (example index, `draws` uniform numbers in [0, 1))."""

  draws: int

  def __call__(self, index: int, rng: np.random.Generator) -> tuple[int, np.ndarray]:
    return index, rng.random(self.draws)


class EpochLoader(Iterator[Batch]):
  """Iterator over the batches of one epoch on this process (see `make_loader`).

  Attributes:
    num_batches: batches in the whole epoch (the same on every process).
    start_batch: the first batch this iterator yields.
    global_batch_size: examples per global batch.
  """

  def __init__(self, dataset: Any, read_options: Any, num_batches: int, start_batch: int,
               global_batch_size: int):
    self._iterator = iter(dataset.to_iter_dataset(read_options))
    self._remaining = num_batches - start_batch
    self.num_batches = num_batches
    self.start_batch = start_batch
    self.global_batch_size = global_batch_size

  def __iter__(self) -> EpochLoader:
    return self

  def __next__(self) -> Batch:
    if self._remaining <= 0:
      self.close()
      raise StopIteration
    try:
      batch = next(self._iterator)
    except BaseException:
      self.close()
      raise
    self._remaining -= 1
    return batch

  def __len__(self) -> int:
    """Batches still to come."""
    return max(self._remaining, 0)

  def close(self) -> None:
    """Stops the background threads, if any. Safe to call more than once."""
    self._remaining = 0
    close = getattr(self._iterator, "close", None)
    if close is not None:
      close()

  def __enter__(self) -> EpochLoader:
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()


def input_shape(source: Any, augment: str = "none", image_size: int | None = None) -> tuple[int, int, int]:
  """Shape ``(H, W, C)`` of the images `make_loader` gives for a source: the model's input.

  The one home of the image-size default: ``image_size`` 0 or None means the
  stored size, except with ``augment='imagenet'``, which means 224:

      size = image_size or (224 if augment == 'imagenet' else stored size)

  >>> from octflax import data
  >>> source = data.synthetic(4, (28, 28, 1))
  >>> input_shape(source), input_shape(source, 'imagenet'), input_shape(source, 'none', 32)
  ((28, 28, 1), (224, 224, 1), (32, 32, 1))

  Args:
    source: a source with ``image_shape`` (None when images differ in size)
      and per-channel ``mean``.
    augment: one of `octflax.data.AUGMENTATIONS`.
    image_size: the side of the square output images; 0 or None as above.

  Returns:
    ``(H, W, C)``.

  Raises:
    DataError: a bad `augment` or `image_size`, or a source whose images differ
      in size with no size to resize them to.
  """
  if augment not in aug.AUGMENTATIONS:
    raise DataError(f"augment must be one of {', '.join(map(repr, aug.AUGMENTATIONS))}; got {augment!r}.")
  size = check_int("image_size", image_size or 0, 0) or (224 if augment == "imagenet" else 0)
  stored = getattr(source, "image_shape", None)
  if size:
    channels = stored[-1] if stored else len(source.mean)
    return (size, size, int(channels))
  if stored is None:
    raise DataError(
        f"{source!r} has variable image sizes: pass image_size=... (augment='none' then "
        "resizes the shorter side and crops the centre) or use augment='imagenet'."
    )
  return tuple(int(d) for d in stored)  # type: ignore[return-value]


def _output_shape(source: Any, augment: str, image_size: int | None) -> tuple[tuple[int, int, int], bool]:
  """Returns (output image shape, whether 'none' resizes), checking that `augment` allows it."""
  stored = getattr(source, "image_shape", None)
  if stored is None and augment in ("crop", "crop_flip"):
    raise DataError(
        f"augment={augment!r} needs images of one fixed size, but {source!r} has variable "
        "image sizes (image_shape is None); use augment='imagenet' or 'none' with image_size."
    )
  shape = input_shape(source, augment, image_size)
  if augment == "imagenet":
    return shape, False
  if stored is not None and shape[:2] == tuple(stored[:2]):
    return shape, False
  if augment in ("crop", "crop_flip"):
    raise DataError(
        f"image_size={image_size} differs from the source's image shape {tuple(stored)}; "
        f"augment={augment!r} keeps the size: pass image_size=None (or {stored[0]} for square "
        "images), or use augment='imagenet'."
    )
  return shape, True


def make_loader(
    source: Any,
    *,
    batch_size: int | None = None,
    train: bool,
    seed: int = 0,
    epoch: int = 0,
    augment: str = "none",
    image_size: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    start_batch: int = 0,
    num_threads: int = 0,
    plan: BatchPlan | None = None,
) -> Iterator[Batch]:
  """Batches of one epoch of `source` for this process, on grain.

  The batch arithmetic comes from a `BatchPlan` (``plan``), or from
  `batch_size`, `process_index` and `process_count`, which make the plan
  ``BatchPlan(global_batch=batch_size * process_count, num_processes=process_count,
  process_index=process_index, devices_per_process=1, ...)``; the loader does not
  use the plan's devices.

  Training (``train=True``): the epoch's order is grain's shuffle with the
  seed `epoch_seeds` ``(seed, epoch)``; global batch ``k`` is positions
  ``k*G .. k*G + G - 1`` of it (``G = plan.global_batch``), process ``p`` gets
  the ``p``-th ``plan.per_process`` slice, and the last partial global batch
  is dropped: the epoch has ``plan.steps_per_epoch`` batches. Evaluation
  (``train=False``): the order is the source's order, the last global batch is
  padded (zero images, label 0, ``mask`` 0) so that every example appears
  exactly once across processes and every process yields the same number of
  batches.

  Augmentations (train only, except the resize of ``'imagenet'``) draw their
  numbers with grain's ``random_map``, a pure function of ``(seed, epoch,
  position in the epoch)``, the same for any batch size and process count:

  - ``'none'``: images as stored (or, with `image_size` different from the
    stored size, the shorter side resized to `image_size` and the centre cropped).
  - ``'crop'``: random crop after 4-pixel zero padding.
  - ``'crop_flip'``: ``'crop'`` and a horizontal flip with probability 1/2
    (CIFAR, Fashion-MNIST).
  - ``'imagenet'``: random resized crop to `image_size` and flip for training;
    for evaluation the shorter side resized to ``image_size * 256 / 224`` and the
    central ``image_size`` square cropped.

  Args:
    source: a random-access source (``len``, ``source[i] -> {'image', 'label'}``)
      with ``mean``, ``std`` and ``image_shape`` attributes, like those of
      `octflax.data`.
    batch_size: examples per batch on THIS process (``plan.per_process``);
      required unless `plan` is given, and not allowed with it.
    train: shuffle, augment and drop the remainder (True) or evaluate (False).
    seed: seed of the shuffle and the augmentations.
    epoch: epoch number (>= 0); each epoch has its own order and augmentations.
    augment: one of ``'none'``, ``'crop'``, ``'crop_flip'``, ``'imagenet'``.
    image_size: output side for ``'imagenet'`` or for resizing with
      ``'none'``; 0 or None keeps the stored size (224 for ``'imagenet'``):
      the batches' images have shape `input_shape` ``(source, augment, image_size)``.
    process_index: this process's index; default ``jax.process_index()``
      (not allowed with `plan`).
    process_count: number of processes; default ``jax.process_count()``
      (not allowed with `plan`).
    start_batch: first batch to yield (to resume mid-epoch); skipped batches
      cost nothing.
    num_threads: grain threads that build batches ahead; 0 builds each batch
      in the calling thread when it is asked for.
    plan: the batch arithmetic (e.g. `octflax.data.batch_plan`): per-process
      batch, process index and count. For training, its ``steps_per_epoch``
      must be that of ``len(source)`` examples.

  Returns:
    An `EpochLoader`, an iterator (with ``len``) of dicts of NumPy arrays:
    ``'image'`` float32 [batch_size, H, W, C], normalised as
    ``(x - mean) / std``; ``'label'`` int32 [batch_size]; and for evaluation
    ``'mask'`` float32 [batch_size], 1 for real examples and 0 for padding.

  Raises:
    DataError: a bad argument (`plan` together with `batch_size`,
      `process_index` or `process_count`; neither `plan` nor `batch_size`; a
      training plan whose ``steps_per_epoch`` does not match the source), or a
      source without the needed attributes.
  """
  for attr in ("__len__", "__getitem__", "mean", "std"):
    if not hasattr(source, attr):
      raise DataError(
          f"source {source!r} has no {attr!r}; expected a random-access source with len(), "
          "source[i] -> {'image', 'label'}, and mean/std attributes (e.g. octflax.data.fashion_mnist())."
      )
  if plan is not None:
    if not isinstance(plan, BatchPlan):
      raise DataError(f"plan must be an octflax.data.BatchPlan; got {plan!r}.")
    given = [f"{name}={value!r}" for name, value in (
        ("batch_size", batch_size), ("process_index", process_index), ("process_count", process_count))
             if value is not None]
    if given:
      raise DataError(
          f"make_loader takes the batch size and the processes from plan or from batch_size/"
          f"process_index/process_count, not both; got plan and {', '.join(given)}.")
  elif batch_size is None:
    raise DataError(
        "make_loader needs batch_size (examples per batch on this process) or plan=BatchPlan(...).")
  else:
    batch_size = check_int("batch_size", batch_size, 1)
  epoch = check_int("epoch", epoch, 0)
  start_batch = check_int("start_batch", start_batch, 0)
  num_threads = check_int("num_threads", num_threads, 0)
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    raise DataError(f"seed must be an integer; got {seed!r}.")
  if augment not in aug.AUGMENTATIONS:
    raise DataError(f"augment must be one of {', '.join(map(repr, aug.AUGMENTATIONS))}; got {augment!r}.")
  if image_size is not None:
    image_size = check_int("image_size", image_size, 0) or None

  num_examples = len(source)
  if num_examples == 0:
    raise DataError(f"source {source!r} is empty.")
  if plan is None:  # The same arithmetic as a given plan: the loader's one path.
    if process_index is None or process_count is None:
      import jax  # pylint: disable=g-import-not-at-top

      process_index = jax.process_index() if process_index is None else process_index
      process_count = jax.process_count() if process_count is None else process_count
    process_count = check_int("process_count", process_count, 1)
    plan = BatchPlan(global_batch=batch_size * process_count, num_processes=process_count,
                     process_index=process_index, devices_per_process=1,
                     steps_per_epoch=steps_per_epoch(num_examples, batch_size * process_count))
  mean = np.asarray(source.mean, dtype=np.float32).reshape(-1)
  std = np.asarray(source.std, dtype=np.float32).reshape(-1)
  if mean.shape != std.shape or not np.all(std > 0):
    raise DataError(
        f"source {source!r}: mean and std must have one value per channel and std > 0; got "
        f"mean={tuple(source.mean)}, std={tuple(source.std)}."
    )
  out_shape, resize = _output_shape(source, augment, image_size)
  if out_shape[-1] != mean.size:
    raise DataError(
        f"source {source!r}: {mean.size} per-channel mean/std values for images with "
        f"{out_shape[-1]} channels."
    )

  num_batches = steps_per_epoch(num_examples, plan.global_batch, drop_remainder=train)
  if num_batches == 0:
    raise DataError(
        f"global batch size {plan.global_batch} (batch_size {plan.per_process} x {plan.num_processes} "
        f"processes) is larger than the {num_examples} examples of {source!r}; training drops "
        "partial batches, so an epoch would be empty. Use a smaller batch_size."
    )
  if train and num_batches != plan.steps_per_epoch:
    raise DataError(
        f"plan.steps_per_epoch is {plan.steps_per_epoch}, but the {num_examples} examples of {source!r} "
        f"make {num_batches} global batches of {plan.global_batch}: build the plan with "
        f"num_examples={num_examples} (len(source)).")
  if start_batch > num_batches:
    raise DataError(f"start_batch must be in 0..{num_batches} (batches per epoch); got {start_batch}.")

  shuffle_seed, augment_seed = epoch_seeds(seed, epoch)
  draws = aug.NUM_DRAWS[augment] if train else 0
  if train:
    positions = grain.MapDataset.range(num_examples).shuffle(seed=shuffle_seed)
    if draws:
      positions = positions.random_map(_Draw(draws), seed=augment_seed)
  else:  # The source's order, padded to whole global batches.
    positions = grain.MapDataset.range(num_batches * plan.global_batch)
  chunks = positions.batch(plan.per_process, drop_remainder=train)
  count = plan.num_processes
  local = chunks[plan.process_index + start_batch * count : num_batches * count : count]
  dataset = local.map(_Build(source, num_examples, bool(train), augment, out_shape, resize, mean, std))
  read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)
  return EpochLoader(dataset, read_options, num_batches, start_batch, plan.global_batch)


__all__ = ["EpochLoader", "epoch_seeds", "input_shape", "make_loader"]
