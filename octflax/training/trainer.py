"""The training loop: config -> data, model, optimizer, parallel steps, checkpoints, reports.

`train_and_evaluate` is the whole run. It resumes from the newest checkpoint in
the working directory: the data order is a function of ``(seed, epoch)`` and the
loader starts mid-epoch, so an interrupted and resumed run ends with the same
parameters as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from octflax import data as data_lib
from octflax.training import reporting
from octflax.training.checkpoint import CheckpointStore
from octflax.training.config import check_config, to_json_dict
from octflax.training.errors import ConfigError, DivergenceError
from octflax.training.optim import learning_rate_schedule, make_optimizer, scaled_learning_rate
from octflax.training.parallel import DataParallel, all_finite, check_batch_size, describe_devices, num_params
from octflax.training.state import create_train_state

CHECKPOINT_DIR = "checkpoints"


class _Slice:
  """Examples ``start`` to ``stop`` of a random-access source, with its attributes."""

  def __init__(self, source: Any, start: int, stop: int):
    self._source = source
    self._start = max(0, min(start, len(source)))
    self._count = max(0, min(stop, len(source)) - self._start)
    for attr in ("num_classes", "image_shape", "mean", "std"):
      setattr(self, attr, getattr(source, attr))

  def __len__(self) -> int:
    return self._count

  def __getitem__(self, index: int) -> Any:
    if not -self._count <= int(index) < self._count:
      raise IndexError(f"index {index} out of range for {self._count} examples.")
    return self._source[self._start + int(index) % self._count]

  def __repr__(self) -> str:
    return f"examples {self._start}:{self._start + self._count} of {self._source!r}"


def split_validation(source: Any, count: int) -> tuple[Any, Any | None]:
  """Holds out the last ``count`` examples of a training source for validation.

  The split is a fixed function of the source (no randomness), so every run of a
  sweep, every seed and every resumed run sees the same held-out examples.

  Returns:
    ``(train, validation)``; ``validation`` is None when ``count`` is 0.

  Raises:
    ConfigError: ``count`` leaves no training example.
  """
  if not count:
    return source, None
  if count >= len(source):
    raise ConfigError(
        f"data.validation_examples = {count} holds out the whole training split ({len(source)} "
        "examples); use fewer (e.g. a tenth of it) or 0 for no validation split.")
  cut = len(source) - count
  return _Slice(source, 0, cut), _Slice(source, cut, len(source))


def build_datasets(config: ml_collections.ConfigDict) -> tuple[Any, Any]:
  """The training and test sources named by ``config.data``.

  Returns:
    ``(train_source, test_source)``, random-access sources of `octflax.data`.

  Raises:
    octflax.data.DataError: missing or malformed data (the message says how to fix it).
  """
  d = config.data
  if d.name == "fashion_mnist":
    return (data_lib.fashion_mnist(d.dir, d.train_split, d.max_train_examples),
            data_lib.fashion_mnist(d.dir, d.test_split, d.max_test_examples))
  if d.name in ("cifar10", "cifar100"):
    classes = 10 if d.name == "cifar10" else 100
    return (data_lib.cifar(d.dir, classes, d.train_split, d.max_train_examples),
            data_lib.cifar(d.dir, classes, d.test_split, d.max_test_examples))
  if d.name == "image_folder":
    sources = []
    for split, count in ((d.train_split, d.max_train_examples), (d.test_split, d.max_test_examples)):
      source = data_lib.image_folder(d.dir, split)
      sources.append(_Slice(source, 0, count) if count else source)
    if sources[0].num_classes != sources[1].num_classes:
      raise data_lib.DataError(
          f"{d.dir}: split {d.train_split!r} has {sources[0].num_classes} class folders but "
          f"{d.test_split!r} has {sources[1].num_classes}; both splits need the same classes.")
    return sources[0], sources[1]
  size = d.image_size or 32
  shape, classes = (size, size, 3), d.num_classes or 10
  return (data_lib.synthetic(d.max_train_examples or 1024, shape, classes, seed=_synthetic_seed(config, 0)),
          data_lib.synthetic(d.max_test_examples or 256, shape, classes, seed=_synthetic_seed(config, 1)))


def _synthetic_seed(config: ml_collections.ConfigDict, split: int) -> int:
  """Seed of a synthetic split: different for train and test, fixed by the run's seed."""
  return 2 * int(config.seed) + split


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> Any:
  """The model named by ``config.model``, with the compute dtype of ``config.half_precision``.

  Raises:
    ConfigError: an unknown model name or override.
  """
  from octflax import models  # pylint: disable=g-import-not-at-top

  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  try:
    model = models.get_model(config.model.name, alpha=config.model.alpha, num_classes=num_classes, dtype=dtype)
  except ValueError as e:
    raise ConfigError(f"config.model: {e}") from e
  overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in config.model.overrides.to_dict().items()}
  if overrides:
    fields = {f.name for f in dataclasses.fields(model)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
      raise ConfigError(
          f"config.model.overrides: {type(model).__name__} has no attribute(s) {', '.join(unknown)}; "
          f"its attributes are {', '.join(sorted(f for f in fields if f not in ('parent', 'name')))}.")
    try:
      model = model.clone(**overrides)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"config.model.overrides {overrides}: {e}") from e
  return model


def _image_shape(source: Any, config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  size = config.data.image_size or (224 if config.data.augment == "imagenet" else 0)
  if size:
    channels = source.image_shape[-1] if source.image_shape else len(source.mean)
    return (size, size, channels)
  return tuple(source.image_shape)


@dataclasses.dataclass
class _Window:
  """Per-step metrics not yet read back from the devices, and the epoch's running sums."""

  pending: list[tuple[int, Any]] = dataclasses.field(default_factory=list)
  epoch_loss: float = 0.0
  epoch_accuracy: float = 0.0
  epoch_steps: int = 0
  start_time: float = 0.0
  start_step: int = 0


class _Run:
  """State of one call of `train_and_evaluate` (one process's view)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    check_config(config)
    self.config = config
    self.workdir = str(workdir)
    self.is_chief = jax.process_index() == 0

    train_source, self.test_source = build_datasets(config)
    self.train_source, self.validation_source = split_validation(train_source, config.data.validation_examples)
    self.parallel = DataParallel(config.parallel, label_smoothing=config.label_smoothing,
                                 mixup_alpha=config.mixup_alpha)
    self.global_batch = config.batch_size
    self.local_batch = self.parallel.local_batch_size(self.global_batch)
    self.global_eval_batch = config.eval_batch_size or config.batch_size
    check_batch_size(self.global_eval_batch, self.parallel.num_devices, "eval_batch_size")
    self.local_eval_batch = self.global_eval_batch * len(self.parallel.local_devices) // self.parallel.num_devices
    self.steps_per_epoch = data_lib.steps_per_epoch(len(self.train_source), self.global_batch)
    if self.steps_per_epoch == 0:
      raise ConfigError(
          f"batch_size {self.global_batch} is larger than the {len(self.train_source)} training "
          "examples; an epoch would have no step. Use a smaller --config.batch_size.")
    self.total_steps = config.num_epochs * self.steps_per_epoch
    self.image_shape = _image_shape(self.train_source, config)
    self.num_classes = self.train_source.num_classes
    self.model = build_model(config, self.num_classes)

    identity = {
        "model.name": config.model.name,
        "model.alpha": float(config.model.alpha),
        "model.overrides": config.model.overrides.to_dict(),
        "data.name": config.data.name,
        "num_classes": int(self.num_classes),
        "image_shape": list(self.image_shape),
    }
    self.store = CheckpointStore(str(epath.Path(self.workdir) / CHECKPOINT_DIR), identity=identity,
                                 keep=config.keep_checkpoints)
    # Before anything in the working directory is written.
    self.resume_step = self.store.check_identity()

    peak = scaled_learning_rate(config.learning_rate, self.global_batch)
    self.schedule = learning_rate_schedule(peak, self.total_steps,
                                           round(config.warmup_epochs * self.steps_per_epoch))
    tx = make_optimizer(self.schedule, momentum=config.momentum, nesterov=config.nesterov,
                        weight_decay=config.weight_decay, grad_clip_norm=config.grad_clip_norm)
    host_state = create_train_state(self.parallel.prepare_model(self.model), tx, seed=config.seed,
                                    input_shape=(1,) + self.image_shape)
    self.params = num_params(host_state.params)
    self.previous_train_seconds = 0.0
    if self.resume_step is None:
      self.state = self.parallel.put_state(host_state)
    else:
      restored = self.store.restore(self.parallel.abstract_state(host_state), self.resume_step)
      self.state = restored if config.parallel == "jit" else self.parallel.put_state(restored)
      self.previous_train_seconds = float(self.store.read_meta(self.resume_step).get("train_seconds", 0.0))
    self.step = self.resume_step or 0
    self.last_good_step = self.resume_step
    self.writer = reporting.MetricsWriter(self.workdir, resume_step=self.resume_step, enabled=self.is_chief)

  # Checks and reports ------------------------------------------------------------

  def _diverged(self, step: int, what: str) -> DivergenceError:
    lr = float(self.schedule(step - 1))
    if self.last_good_step is None:
      kept = "No checkpoint had been saved yet, so there is nothing to resume from."
    else:
      kept = (f"The last good checkpoint (step {self.last_good_step}) in {self.store.directory} is "
              "kept; a restart resumes from it.")
    message = (
        f"Training stopped: {what} at step {step} (epoch {(step - 1) // self.steps_per_epoch + 1}, "
        f"learning rate {lr:.4g}). {kept} Try a lower --config.learning_rate (now "
        f"{self.config.learning_rate:g} per 256 images), a longer --config.warmup_epochs (now "
        f"{self.config.warmup_epochs:g}), gradient clipping (--config.grad_clip_norm=1.0)"
        + (", or --config.half_precision=False" if self.config.half_precision else "") + ".")
    self.writer.write({"kind": "diverged", "step": step, "message": message})
    return DivergenceError(message, step, self.last_good_step)

  def _flush(self, window: _Window, bar: Any, log: bool) -> None:
    """Reads back pending step metrics, stops on a non-finite loss, logs a record."""
    if not window.pending:
      return
    values = self.parallel.get_metrics([m for _, m in window.pending])
    now = time.time()
    for (step, _), m in zip(window.pending, values):
      loss, grad_norm = float(m["loss"]), float(m["grad_norm"])
      if not math.isfinite(loss) or not math.isfinite(grad_norm):
        what = f"the loss became {loss}" if not math.isfinite(loss) else f"the gradient norm became {grad_norm}"
        raise self._diverged(step, what)
    losses = [float(m["loss"]) for m in values]
    accuracies = [float(m["accuracy"]) for m in values]
    window.epoch_loss += sum(losses)
    window.epoch_accuracy += sum(accuracies)
    window.epoch_steps += len(values)
    last_step = window.pending[-1][0]
    images_per_second = (last_step - window.start_step) * self.global_batch / max(now - window.start_time, 1e-9)
    window.pending.clear()
    if log:
      record = {"kind": "train", "step": last_step, "epoch": last_step / self.steps_per_epoch,
                "train_loss": float(np.mean(losses)), "train_accuracy": float(np.mean(accuracies)),
                "grad_norm": float(values[-1]["grad_norm"]),
                "learning_rate": float(self.schedule(last_step - 1)),
                "images_per_second": images_per_second}
      self.writer.write(record)
      bar.set_postfix(loss=f"{record['train_loss']:.4f}", acc=f"{record['train_accuracy']:.3f}",
                      img_s=f"{images_per_second:.0f}", refresh=False)
      window.start_time, window.start_step = now, last_step

  def _save(self, train_seconds: float) -> None:
    """Saves the current state unless it is not finite (then stops the run)."""
    state = self.parallel.get_state(self.state)
    if not all_finite(state.params):
      raise self._diverged(self.step, "the parameters became NaN or infinite")
    if self.store.save(self.step, state, to_json_dict(self.config), extra={"train_seconds": train_seconds}):
      self.last_good_step = self.step

  def evaluate(self, source: Any = None, prefix: str = "test") -> dict[str, float]:
    """Loss and accuracy on a whole split (default: test; padded last batch masked out).

    Returns:
      ``{prefix + '_loss', prefix + '_accuracy'}`` (and ``_top5_accuracy`` when
      the model has at least 5 classes).
    """
    loader = data_lib.make_loader(
        self.test_source if source is None else source, batch_size=self.local_eval_batch, train=False, seed=self.config.seed,
        augment=self.config.data.augment, image_size=self.config.data.image_size or None,
        num_threads=self.config.data.num_threads)
    sums = None
    with loader:
      for batch in loader:
        metrics = self.parallel.eval_step(self.state, self.parallel.put_batch(batch))
        sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
    sums = self.parallel.get_metrics(sums)
    count = float(sums["count"])
    result = {f"{prefix}_loss": float(sums["loss_sum"]) / count, f"{prefix}_accuracy": float(sums["correct"]) / count}
    if "correct_top5" in sums:
      result[f"{prefix}_top5_accuracy"] = float(sums["correct_top5"]) / count
    return result

  def evaluate_epoch(self, final: bool) -> dict[str, float]:
    """The end-of-epoch evaluation: the validation split when there is one (the
    test split only at the end of the run), else the test split."""
    result = {}
    if self.validation_source is not None:
      result.update(self.evaluate(self.validation_source, "validation"))
    if self.validation_source is None or final:
      result.update(self.evaluate(self.test_source, "test"))
    return result

  # The loop ---------------------------------------------------------------------

  def run(self) -> dict[str, Any]:
    """Trains to the end (or from the resumed step), evaluates, writes the reports."""
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top

    config = self.config
    spe = self.steps_per_epoch
    start_step = self.step
    loop_start = time.time()
    eval_seconds = 0.0
    first_step_done: float | None = None
    evaluated = self.writer.evaluated_steps()
    last_eval: dict[str, float] | None = None
    window = _Window(start_time=loop_start, start_step=self.step)
    bar = tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True,
               disable=not (self.is_chief and config.progress_bar), desc=f"{config.model.name} a={config.model.alpha:g}")

    def train_seconds() -> float:
      return self.previous_train_seconds + time.time() - loop_start - eval_seconds

    def end_of_epoch(epoch: int) -> None:
      nonlocal eval_seconds, last_eval
      steps = window.epoch_steps
      train = {"train_loss": window.epoch_loss / steps if steps else None,
               "train_accuracy": window.epoch_accuracy / steps if steps else None}
      window.epoch_loss = window.epoch_accuracy = 0.0
      window.epoch_steps = 0
      final = epoch == config.num_epochs
      if epoch % config.eval_every_epochs and not final:
        return
      t = time.time()
      last_eval = self.evaluate_epoch(final)
      eval_seconds += time.time() - t
      window.start_time += time.time() - t
      if self.step not in evaluated:  # A resumed run may repeat the evaluation of its first step.
        evaluated.add(self.step)
        self.writer.write({"kind": "eval", "step": self.step, "epoch": epoch, **train, **last_eval})
      if self.is_chief:
        bar.write(f"epoch {epoch}: " + ", ".join(
            f"{split} accuracy {100 * last_eval[split + '_accuracy']:.2f}%, {split} loss {last_eval[split + '_loss']:.4f}"
            for split in ("validation", "test") if split + "_accuracy" in last_eval))

    try:
      if self.step and self.step % spe == 0:
        # The interrupted run may have stopped before this evaluation. Every process makes
        # the same decision (from the step alone) since evaluation is collective.
        end_of_epoch(self.step // spe)
      for epoch in range(self.step // spe, config.num_epochs):
        loader = data_lib.make_loader(
            self.train_source, batch_size=self.local_batch, train=True, seed=config.seed, epoch=epoch,
            augment=config.data.augment, image_size=config.data.image_size or None,
            start_batch=self.step - epoch * spe, num_threads=config.data.num_threads)
        with loader:
          for batch in loader:
            self.state, metrics = self.parallel.train_step(self.state, self.parallel.put_batch(batch))
            self.step += 1
            window.pending.append((self.step, metrics))
            bar.update(1)
            if first_step_done is None:
              jax.block_until_ready(metrics)
              first_step_done = time.time()
              window.start_time, window.start_step = first_step_done, self.step
            log = self.step % config.log_every_steps == 0
            save = self.step % config.checkpoint_every_steps == 0 or self.step == self.total_steps
            if log or save or self.step % spe == 0:
              self._flush(window, bar, log)
            if save:
              self._save(train_seconds())
        end_of_epoch(epoch + 1)
      self._flush(window, bar, log=False)
      self._save(train_seconds())  # No-op when the last step was just saved.
      if last_eval is None or "test_accuracy" not in last_eval:
        t = time.time()
        last_eval = self.evaluate_epoch(final=True)
        eval_seconds += time.time() - t
    finally:
      bar.close()
      self.store.close()
      self.writer.close()

    loop_end = time.time()
    steady_steps = self.step - start_step - 1
    steady_seconds = loop_end - (first_step_done or loop_end) - eval_seconds
    images_per_second = (steady_steps * self.global_batch / steady_seconds
                         if steady_steps > 0 and steady_seconds > 0 else None)
    summary = self._summary(last_eval, train_seconds=self.previous_train_seconds + loop_end - loop_start - eval_seconds,
                            images_per_second=images_per_second, start_step=start_step)
    if self.is_chief:
      reporting.write_json(epath.Path(self.workdir) / reporting.SUMMARY_FILE, summary)
      reporting.plot_curves(self.writer.records, epath.Path(self.workdir) / reporting.CURVES_FILE,
                            title=f"{config.model.name} (alpha {config.model.alpha:g}) on {config.data.name}")
    return summary

  def _summary(self, evaluation: dict[str, float], *, train_seconds: float, images_per_second: float | None,
               start_step: int) -> dict[str, Any]:
    from octflax import cost  # pylint: disable=g-import-not-at-top

    report = cost.analyze(self.model.clone(dtype=jnp.float32) if hasattr(self.model, "dtype") else self.model,
                          (1,) + self.image_shape)
    train_records = [r for r in self.writer.records if r.get("kind") in ("train", "eval") and r.get("train_loss")]
    return {
        **evaluation,
        "train_examples": len(self.train_source),
        "validation_examples": 0 if self.validation_source is None else len(self.validation_source),
        "train_seconds": train_seconds,
        "images_per_second": images_per_second,
        "params": self.params,
        "gmacs_per_image": report.gmacs,
        "device": describe_devices(self.parallel.devices),
        "num_devices": self.parallel.num_devices,
        "num_processes": jax.process_count(),
        "parallel": self.config.parallel,
        "steps": self.step,
        "epochs": self.config.num_epochs,
        "global_batch_size": self.global_batch,
        "final_train_loss": train_records[-1]["train_loss"] if train_records else None,
        "resumed_from_step": start_step or None,
        "jax_version": jax.__version__,
        "model": self.config.model.name,
        "alpha": float(self.config.model.alpha),
        "config": to_json_dict(self.config),
    }


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates the model of ``config``, resuming from ``workdir`` if it holds a checkpoint.

  Writes to ``workdir``: ``checkpoints/`` (orbax; every
  ``config.checkpoint_every_steps`` steps and at the end), ``metrics.jsonl``
  (a record per logged step and per evaluation), and at the end
  ``summary.json`` and ``curves.png``. Multi-process runs call this on every
  process (after `initialize_distributed`); each loads its share of every
  batch and only process 0 writes the reports.

  Args:
    config: a config built from `octflax.training.default_config`.
    workdir: the working directory (local or ``gs://`` for checkpoints).

  Returns:
    The summary (also in ``summary.json``): ``test_accuracy``, ``test_loss``,
    ``train_seconds``, ``images_per_second``, ``params``,
    ``gmacs_per_image``, ``device``, ``config`` and more.

  Raises:
    ConfigError: an unknown field or a value that cannot work.
    octflax.data.DataError: missing or malformed data.
    CheckpointMismatchError: ``workdir`` holds another model's checkpoint.
    DivergenceError: the loss or the parameters became NaN or infinite.
  """
  return _Run(config, workdir).run()


__all__ = ["CHECKPOINT_DIR", "build_datasets", "build_model", "split_validation", "train_and_evaluate"]
