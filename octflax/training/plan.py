"""The run plan and its data: everything a training run needs, built once from its config, as plain values.

`plan_run` is the one reader of a training config (besides the entry points
that load it): it checks it, resolves its paths, opens the data (`open_splits`)
and returns a frozen `RunPlan` (the model's identity, the data settings, the
batch plans over the devices (`octflax.data.batch_plan`), the schedule's
lengths, when to log, save and evaluate) with the opened `Splits`. Everything
after it takes plain values; `loader` gives an epoch's batches of a split::

  plan, splits = plan_run(config)
  plan.batch.per_device, plan.steps_per_epoch, plan.model.name
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from octflax import data as data_lib
from octflax.checkpoint import ModelIdentity
from octflax.checkpoint.identity import as_json
from octflax.errors import ConfigError
from octflax.files import resolve_path
from octflax.training.config import check_config, default_config, profile_window
from octflax.training.optim import scaled_learning_rate


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


@dataclasses.dataclass(frozen=True)
class Optimization:
  """The optimizer and its schedule (`octflax.training.optim`).

  Attributes:
    base_learning_rate: the config's peak learning rate per 256 images.
    learning_rate: the peak learning rate of this run's global batch (`scaled_learning_rate`).
    warmup_epochs: the config's warm-up, in epochs.
    warmup_steps, total_steps: linear warm-up, then cosine decay to 0 at ``total_steps``.
    momentum, nesterov, weight_decay, grad_clip_norm: as in `make_optimizer`.
    label_smoothing, mixup_alpha: of the loss (`train_step`).
  """

  base_learning_rate: float
  learning_rate: float
  warmup_epochs: float
  warmup_steps: int
  total_steps: int
  momentum: float
  nesterov: bool
  weight_decay: float
  grad_clip_norm: float
  label_smoothing: float
  mixup_alpha: float


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """A training run, decided before anything is computed.

  Attributes:
    model: what is trained (and what its checkpoints record).
    api: 'linen' or 'nnx'.
    half_precision: compute in bfloat16.
    data: where the examples come from.
    batch, eval_batch: the data-parallel layer's batch plans of training and evaluation.
    num_epochs: passes over the training split.
    optimization: optimizer, schedule and loss settings.
    parallel: 'jit' or 'pmap'.
    seed: parameters, data order, augmentation, mixup.
    init_from: a checkpoint to start from ('' = none), absolute.
    checkpoint_every_steps, keep_checkpoints, log_every_steps, eval_every_epochs: when things happen.
    profile: ``(first, last)`` step of the profile window, or None.
    progress_bar: a progress bar (else plain lines).
    config: the config as JSON values (stored with checkpoints and the summary).
  """

  model: ModelIdentity
  api: str
  half_precision: bool
  data: DataSettings
  batch: data_lib.BatchPlan
  eval_batch: data_lib.BatchPlan
  num_epochs: int
  optimization: Optimization
  parallel: str
  seed: int
  init_from: str
  checkpoint_every_steps: int
  keep_checkpoints: int
  log_every_steps: int
  eval_every_epochs: int
  profile: tuple[int, int] | None
  progress_bar: bool
  config: dict[str, Any]

  @property
  def steps_per_epoch(self) -> int:
    return self.batch.steps_per_epoch

  @property
  def total_steps(self) -> int:
    return self.num_epochs * self.batch.steps_per_epoch

  @property
  def dtype(self) -> Any:
    return jnp.bfloat16 if self.half_precision else jnp.float32

  def build_model(self) -> Any:
    """The model of `model` under `api` at `dtype`.

    Raises:
      ConfigError: an unknown model name or override.
    """
    try:
      return self.model.build(dtype=self.dtype, api=self.api)
    except ValueError as e:
      raise ConfigError(f"config.model: {e}") from None


def to_json_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as plain JSON-able Python values."""
  return as_json(config.to_dict())


def data_settings(config: Mapping[str, Any]) -> DataSettings:
  """The data settings of a config, or of the config a run's checkpoints store (JSON values, where a
  field added since takes its default); ``data.dir`` made absolute."""
  d, default = config["data"], default_config().data
  fields = {f.name: d.get(f.name, default.get(f.name)) for f in dataclasses.fields(DataSettings) if f.name != "seed"}
  return DataSettings(**{**fields, "dir": resolve_path(fields["dir"]) if fields["dir"] else ""}, seed=config["seed"])


def eval_batch_size(config: Mapping[str, Any]) -> int:
  """The global batch of evaluation of a config or a stored one (``eval_batch_size``, else ``batch_size``)."""
  return config.get("eval_batch_size") or config["batch_size"]


def plan_run(config: ml_collections.ConfigDict, devices: Sequence[Any] | None = None) -> tuple[RunPlan, Splits]:
  """Checks ``config``, opens its data and decides the run over ``devices`` (default: all of jax's).

  Paths (``data.dir``, ``init_from``) are made absolute here (see
  `octflax.files.resolve_path`), and the plan's ``config`` records them so, so
  that a later ``experiments.evaluate --workdir`` finds the data from any directory.

  Raises:
    ConfigError: an unknown field, a value that cannot work, a batch size that
      does not split over the devices or exceeds the data.
    octflax.data.DataError: missing or malformed data.
  """
  check_config(config)
  config = copy.deepcopy(config)
  with config.unlocked():
    for node, field in ((config.data, "dir"), (config, "init_from")):
      if node[field]:
        node[field] = resolve_path(node[field])
  d = config.data
  settings = data_settings(config)
  splits = open_splits(settings)
  devices = list(jax.devices() if devices is None else devices)
  batch = data_lib.batch_plan(devices, config.batch_size, len(splits.train))
  if batch.steps_per_epoch == 0:
    raise ConfigError(
        f"batch_size {config.batch_size} is larger than the {len(splits.train)} training examples; an epoch "
        "would have no step. Use a smaller --config.batch_size.")
  eval_batch = data_lib.batch_plan(devices, eval_batch_size(config), len(splits.test), name="eval_batch_size")
  total_steps = config.num_epochs * batch.steps_per_epoch
  identity = ModelIdentity(
      name=config.model.name, alpha=config.model.alpha, num_classes=splits.train.num_classes,
      image_shape=data_lib.input_shape(splits.train, d.augment, d.image_size),
      overrides=config.model.overrides.to_dict(), data=d.name)
  optimization = Optimization(
      base_learning_rate=config.learning_rate,
      learning_rate=scaled_learning_rate(config.learning_rate, config.batch_size),
      warmup_epochs=config.warmup_epochs, warmup_steps=round(config.warmup_epochs * batch.steps_per_epoch), total_steps=total_steps,
      momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay,
      grad_clip_norm=config.grad_clip_norm, label_smoothing=config.label_smoothing,
      mixup_alpha=config.mixup_alpha)
  plan = RunPlan(
      model=identity, api=config.model.api, half_precision=config.half_precision, data=settings, batch=batch,
      eval_batch=eval_batch, num_epochs=config.num_epochs, optimization=optimization, parallel=config.parallel,
      seed=config.seed, init_from=config.init_from, checkpoint_every_steps=config.checkpoint_every_steps,
      keep_checkpoints=config.keep_checkpoints, log_every_steps=config.log_every_steps,
      eval_every_epochs=config.eval_every_epochs, profile=profile_window(config.profile_steps, total_steps),
      progress_bar=config.progress_bar, config=to_json_dict(config))
  return plan, splits


__all__ = ["DataSettings", "Optimization", "RunPlan", "Splits", "data_settings", "eval_batch_size", "loader", "open_splits",
           "plan_run", "to_json_dict"]
