"""The training loop: config -> data, model, optimizer, parallel steps, checkpoints, reports.

`train_and_evaluate` is the whole run, as a short loop over steps; the pieces
it calls are the functions and small objects below (`build_data`,
`build_model`, `initial_state`, `Evaluations`, `Checkpointing`) and
`reporting.StepReporter`. It resumes from the newest good checkpoint in the
working directory: the data order is a function of ``(seed, epoch)`` and the
loader starts mid-epoch, so an interrupted and resumed run ends with the same
parameters as an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from octflax import data as data_lib
from octflax.training import monitoring, reporting
from octflax.training.checkpoint import CHECKPOINT_DIR, CheckpointStore, read_checkpoint
from octflax.training.config import check_config, to_json_dict
from octflax.training.errors import CheckpointMismatchError, ConfigError, DivergenceError, RunStopped
from octflax.training.guard import hold_workdir, run_guard
from octflax.training.optim import learning_rate_schedule, make_optimizer, scaled_learning_rate
from octflax.training.parallel import DataParallel, all_finite, describe_devices, num_params
from octflax.training.paths import prepare_workdir, resolve_path
from octflax.training.preemption import StopSignals
from octflax.training.state import TrainState, create_train_state


def build_datasets(config: ml_collections.ConfigDict) -> tuple[Any, Any]:
  """The training and test sources named by ``config.data``.

  Returns:
    ``(train_source, test_source)``, random-access sources of `octflax.data`.

  Raises:
    octflax.data.DataError: missing or malformed data (the message says how to fix it).
  """
  d = config.data
  settings = dict(data_dir=resolve_path(d.dir) if d.dir else d.dir, image_size=d.image_size,
                  num_classes=d.num_classes, seed=config.seed)
  train = data_lib.get_source(d.name, d.train_split, max_examples=d.max_train_examples, **settings)
  test = data_lib.get_source(d.name, d.test_split, max_examples=d.max_test_examples, **settings)
  if train.num_classes != test.num_classes:
    raise data_lib.DataError(
        f"{d.dir or d.name}: split {d.train_split!r} has {train.num_classes} classes but "
        f"{d.test_split!r} has {test.num_classes}; both splits need the same classes.")
  return train, test


@dataclasses.dataclass(frozen=True)
class Data:
  """The splits of a run and the batch arithmetic of its devices and processes.

  Attributes:
    train, validation, test: random-access sources (``validation`` may be None).
    num_classes: classes of the training split.
    image_shape: ``(H, W, C)`` of the model's input.
    global_batch, local_batch: images per step over all processes / of this process.
    local_eval_batch: this process's share of an evaluation batch.
    steps_per_epoch, total_steps: of the whole run.
  """

  train: Any
  validation: Any | None
  test: Any
  num_classes: int
  image_shape: tuple[int, int, int]
  global_batch: int
  local_batch: int
  local_eval_batch: int
  steps_per_epoch: int
  total_steps: int


def build_data(config: ml_collections.ConfigDict, parallel: DataParallel) -> Data:
  """The run's splits and batch sizes.

  Raises:
    ConfigError: a batch size that does not split over the devices or exceeds the data.
    octflax.data.DataError: missing or malformed data.
  """
  train, test = build_datasets(config)
  train, validation = data_lib.split_validation(train, config.data.validation_examples)
  local_batch = parallel.local_batch_size(config.batch_size)
  local_eval_batch = parallel.local_batch_size(config.eval_batch_size or config.batch_size, "eval_batch_size")
  steps = data_lib.steps_per_epoch(len(train), config.batch_size)
  if steps == 0:
    raise ConfigError(
        f"batch_size {config.batch_size} is larger than the {len(train)} training examples; an epoch "
        "would have no step. Use a smaller --config.batch_size.")
  return Data(train=train, validation=validation, test=test, num_classes=train.num_classes,
              image_shape=data_lib.input_shape(train, config.data.augment, config.data.image_size),
              global_batch=config.batch_size,
              local_batch=local_batch, local_eval_batch=local_eval_batch, steps_per_epoch=steps,
              total_steps=config.num_epochs * steps)


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> Any:
  """The model named by ``config.model``, with the compute dtype of ``config.half_precision``.

  ``config.model.api`` chooses the Linen zoo (`octflax.models.get_model`) or
  the NNX one (`octflax.nnx.trainer_model`, same calling convention).

  Raises:
    ConfigError: an unknown model name or override.
  """
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in config.model.overrides.to_dict().items()}
  if config.model.api == "nnx":
    from octflax import nnx  # pylint: disable=g-import-not-at-top

    try:
      return nnx.trainer_model(config.model.name, alpha=config.model.alpha, num_classes=num_classes,
                               dtype=dtype, **overrides)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"config.model (api 'nnx'): {e}") from e
  from octflax import models  # pylint: disable=g-import-not-at-top

  try:
    model = models.get_model(config.model.name, alpha=config.model.alpha, num_classes=num_classes, dtype=dtype)
  except ValueError as e:
    raise ConfigError(f"config.model: {e}") from e
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


def run_identity(config: ml_collections.ConfigDict, data: Data) -> dict[str, Any]:
  """What a checkpoint must share with a run to be resumed by it (and what builds its model)."""
  return {"model.name": config.model.name, "model.alpha": float(config.model.alpha),
          "model.overrides": config.model.overrides.to_dict(), "data.name": config.data.name,
          "num_classes": int(data.num_classes), "image_shape": list(data.image_shape)}


# ----------------------------------------------------------------------------- the starting state


def _flat(tree: Any) -> dict[str, tuple[int, ...]]:
  return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(leaf))
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def init_from_checkpoint(host_state: TrainState, path: str, say=print) -> TrainState:
  """``host_state`` with the parameters and BatchNorm statistics of the checkpoint at ``path``.

  The optimizer state is fresh (``tx.init`` of the loaded parameters) and the
  step 0. When only the classifier differs, with the checkpoint's class count
  in its last dimension, it keeps its fresh initialisation and ``say`` tells so.

  Raises:
    CheckpointMismatchError: any other difference; the message lists every one.
    CheckpointError: no readable checkpoint at ``path``.
  """
  variables, meta = read_checkpoint(path)
  ours = {"params": host_state.params, "batch_stats": host_state.batch_stats}
  want, have = _flat(ours), _flat(variables)
  classes = meta.get("identity", {}).get("num_classes", meta.get("num_classes"))
  head, problems = [], []
  for name in sorted(set(want) | set(have)):
    a, b = want.get(name), have.get(name)
    if a == b:
      continue
    if a is not None and b is not None and len(a) == len(b) and a[:-1] == b[:-1] and b[-1] == classes:
      head.append(name)
    elif a is None:
      problems.append(f"  {name}: in the checkpoint {b}, not in this model")
    elif b is None:
      problems.append(f"  {name}: in this model {a}, not in the checkpoint")
    else:
      problems.append(f"  {name}: checkpoint {b}, this model {a}")
  if problems:
    raise CheckpointMismatchError(
        f"--config.init_from {path!r} does not fit this model ({len(problems)} parameters differ):\n"
        + "\n".join(problems))
  loaded = jax.tree_util.tree_map_with_path(
      lambda p, fresh: fresh if "/".join(str(getattr(k, "key", k)) for k in p) in head else np.asarray(
          _get(variables, p)), ours)
  if head:
    say(f"init_from: the checkpoint has {classes} classes, this run {want[head[0]][-1]}: "
        f"{', '.join(head)} re-initialised.")
  return host_state.replace(params=loaded["params"], batch_stats=loaded["batch_stats"],
                            opt_state=host_state.tx.init(loaded["params"]))


def _get(tree: Any, path: Any) -> Any:
  for key in path:
    tree = tree[getattr(key, "key", getattr(key, "idx", key))]
  return tree


def initial_state(config: ml_collections.ConfigDict, parallel: DataParallel, model: Any, tx: Any,
                  data: Data, store: CheckpointStore, say=print) -> tuple[TrainState, int, dict[str, Any]]:
  """The state a run starts from: its newest good checkpoint, else ``config.init_from``, else fresh.

  Returns:
    ``(state placed for ``parallel``, step, the checkpoint's meta or {})``.
  """
  host_state = create_train_state(parallel.prepare_model(model), tx, seed=config.seed,
                                  input_shape=(1,) + data.image_shape)
  found = store.restore_newest(parallel.abstract_state(host_state))
  if found is not None:
    step, state, meta = found
    return parallel.put_state(state), step, meta
  if config.init_from:
    host_state = init_from_checkpoint(host_state, config.init_from, say)
  return parallel.put_state(host_state), 0, {}


# ----------------------------------------------------------------------------- evaluation


def evaluate(parallel: DataParallel, state: TrainState, source: Any, *, batch_size: int,
             config: ml_collections.ConfigDict, prefix: str = "test") -> dict[str, float]:
  """Loss and accuracy on a whole split with the pipeline's evaluation transform.

  The padded last batch is masked out: ``accuracy = sum(correct * mask) / sum(mask)``.

  Args:
    parallel: runs `eval_step`.
    state: the placed state.
    source: the split.
    batch_size: this process's share of an evaluation batch.
    config: ``config.data`` gives the transform (augment, image size).
    prefix: names the results.

  Returns:
    ``{prefix + '_loss', prefix + '_accuracy'}`` (and ``_top5_accuracy`` with >= 5 classes).
  """
  loader = data_lib.make_loader(source, batch_size=batch_size, train=False, seed=config.seed,
                                augment=config.data.augment, image_size=config.data.image_size or None,
                                num_threads=config.data.num_threads)
  sums = None
  with loader:
    for batch in loader:
      metrics = parallel.eval_step(state, parallel.put_batch(batch))
      sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
  sums = parallel.get_metrics(sums)
  count = float(sums["count"])
  result = {f"{prefix}_loss": float(sums["loss_sum"]) / count, f"{prefix}_accuracy": float(sums["correct"]) / count}
  if "correct_top5" in sums:
    result[f"{prefix}_top5_accuracy"] = float(sums["correct_top5"]) / count
  return result


class Evaluations:
  """The run's evaluations: the validation split every ``eval_every_epochs`` epochs (else the
  test split), the test split at the end; their records, their printed lines and their time."""

  def __init__(self, parallel: DataParallel, data: Data, config: ml_collections.ConfigDict,
               writer: reporting.MetricsWriter, progress: reporting.Progress, reporter: reporting.StepReporter):
    self._parallel, self._data, self._config = parallel, data, config
    self._writer, self._progress, self._reporter = writer, progress, reporter
    self._evaluated = writer.evaluated_steps()
    self.seconds = 0.0
    self.last: dict[str, float] = {}

  def _run(self, state: TrainState, final: bool) -> dict[str, float]:
    t = time.time()
    splits = [("validation", self._data.validation)] if self._data.validation is not None else []
    if not splits or final:
      splits.append(("test", self._data.test))
    self.last = {}
    for prefix, source in splits:
      self.last.update(evaluate(self._parallel, state, source, batch_size=self._data.local_eval_batch,
                                config=self._config, prefix=prefix))
    self.seconds += time.time() - t
    self._reporter.pause(time.time() - t)
    return self.last

  def end_of_epoch(self, epoch: int, step: int, state: TrainState) -> None:
    """Evaluates when ``epoch`` is due and records it (once per step, also across a resume)."""
    train = self._reporter.take_epoch_means()
    final = epoch == self._config.num_epochs
    if epoch % self._config.eval_every_epochs and not final:
      return
    result = self._run(state, final)
    if step not in self._evaluated:  # A resumed run may repeat the evaluation of its first step.
      self._evaluated.add(step)
      self._writer.write({"kind": "eval", "step": step, "epoch": epoch, **train, **result})
    self._progress.write(f"epoch {epoch}: " + ", ".join(
        f"{split} accuracy {100 * result[split + '_accuracy']:.2f}%, {split} loss {result[split + '_loss']:.4f}"
        for split in ("validation", "test") if split + "_accuracy" in result))

  def final(self, state: TrainState) -> dict[str, float]:
    """The last evaluation, with the test split (run now if the last epoch's did not include it)."""
    return self.last if "test_accuracy" in self.last else self._run(state, final=True)


# ----------------------------------------------------------------------------- checkpoints


class Checkpointing:
  """Saves the run's state (after checking it is finite) and builds the divergence message."""

  def __init__(self, store: CheckpointStore, parallel: DataParallel, config: ml_collections.ConfigDict,
               schedule: Any, steps_per_epoch: int, writer: reporting.MetricsWriter, last_good_step: int | None):
    self.store, self._parallel, self._config, self._schedule = store, parallel, config, schedule
    self._spe, self._writer, self.last_good_step = steps_per_epoch, writer, last_good_step
    self.epoch_totals = dict  # The epoch's training sums so far, stored with each checkpoint (StepReporter's).

  def save(self, step: int, state: TrainState, train_seconds: float) -> None:
    host = self._parallel.get_state(state)
    if not all_finite(host.params):
      raise self.diverged(step, "the parameters became NaN or infinite")
    if self.store.save(step, host, to_json_dict(self._config),
                       extra={"train_seconds": train_seconds, "epoch_totals": self.epoch_totals()}):
      self.last_good_step = step

  def diverged(self, step: int, what: str) -> DivergenceError:
    c = self._config
    if self.last_good_step is None:
      kept = "No checkpoint had been saved yet, so there is nothing to resume from."
    else:
      kept = (f"The last good checkpoint (step {self.last_good_step}) in {self.store.directory} is "
              "kept; a restart resumes from it.")
    message = (
        f"Training stopped: {what} at step {step} (epoch {(step - 1) // self._spe + 1}, learning rate "
        f"{float(self._schedule(step - 1)):.4g}). {kept} Try a lower --config.learning_rate (now "
        f"{c.learning_rate:g} per 256 images), a longer --config.warmup_epochs (now {c.warmup_epochs:g}), "
        "gradient clipping (--config.grad_clip_norm=1.0)"
        + (", or --config.half_precision=False" if c.half_precision else "") + ".")
    self._writer.write({"kind": "diverged", "step": step, "message": message})
    return DivergenceError(message, step, self.last_good_step)


# ----------------------------------------------------------------------------- the loop


def with_resolved_paths(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of ``config`` whose paths (``data.dir``, ``init_from``) are absolute (see `resolve_path`).

  The run's checkpoints store this config, so that a later ``experiments.evaluate
  --workdir`` finds the data from any directory.
  """
  config = copy.deepcopy(config)
  with config.unlocked():
    for node, field in ((config.data, "dir"), (config, "init_from")):
      if node[field]:
        node[field] = resolve_path(node[field])
  return config


def _train_loader(config: ml_collections.ConfigDict, data: Data, epoch: int, start_batch: int) -> Any:
  """This process's batches of training epoch ``epoch`` from batch ``start_batch`` on (a context manager)."""
  return data_lib.make_loader(data.train, batch_size=data.local_batch, train=True, seed=config.seed, epoch=epoch,
                              augment=config.data.augment, image_size=config.data.image_size or None,
                              start_batch=start_batch, num_threads=config.data.num_threads)


@run_guard  # The working directory's lock; a write that cannot succeed stops the run in one line.
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates the model of ``config``, resuming from ``workdir`` if it holds a checkpoint.

  Writes to ``workdir``: ``checkpoints/`` (every ``config.checkpoint_every_steps``
  steps, at the end and when stopped by SIGTERM/SIGINT), ``metrics.jsonl`` (a
  record per logged step and per evaluation), and at the end ``summary.json``
  and ``curves.png``. Multi-process runs call this on every process (after
  `initialize_distributed`); only process 0 writes the reports.

  Args:
    config: a config built from `octflax.training.default_config`.
    workdir: the working directory (relative, absolute, ``~``, or ``gs://``).

  Returns:
    The summary (also in ``summary.json``): ``test_accuracy``, ``test_loss``,
    ``train_seconds``, ``images_per_second``, ``params``, ``gmacs_per_image``,
    ``device``, ``config`` and more.

  Raises:
    ConfigError: an unknown field or a value that cannot work.
    WorkdirError: ``workdir`` is a file, cannot be created or written.
    octflax.data.DataError: missing or malformed data.
    CheckpointMismatchError: ``workdir`` holds another model's checkpoint.
    CheckpointError: ``workdir`` holds checkpoints and none can be restored.
    DivergenceError: the loss or the parameters became NaN or infinite.
    RunStopped: a SIGTERM or SIGINT; the step in flight was checkpointed.
    WorkdirLockedError: another run holds ``workdir``'s lock (nothing was written).
    WriteFailedError: a file could not be written (no space left, a quota or
      file-size limit, a read-only folder); what was saved before is intact.
  """
  check_config(config)
  config = with_resolved_paths(config)
  is_chief = jax.process_index() == 0
  parallel = DataParallel(config.parallel, label_smoothing=config.label_smoothing, mixup_alpha=config.mixup_alpha)
  data = build_data(config, parallel)
  window = monitoring.profile_window(config.profile_steps, data.total_steps)
  model = build_model(config, data.num_classes)
  workdir = prepare_workdir(workdir)  # Before anything compiles; after the config's checks, which write nothing.
  hold_workdir(workdir, is_chief=is_chief)  # One run per working directory, from here until the run ends.
  store = CheckpointStore(f"{workdir}/{CHECKPOINT_DIR}", identity=run_identity(config, data),
                          keep=config.keep_checkpoints, is_chief=is_chief)
  store.check_identity()  # Before anything in the working directory is written.
  schedule = learning_rate_schedule(scaled_learning_rate(config.learning_rate, config.batch_size), data.total_steps,
                                    round(config.warmup_epochs * data.steps_per_epoch))
  tx = make_optimizer(schedule, momentum=config.momentum, nesterov=config.nesterov,
                      weight_decay=config.weight_decay, grad_clip_norm=config.grad_clip_norm)
  model_cost = _model_cost(model, data)  # Traced, not compiled; before the clock of train_seconds starts.
  state, step, meta = initial_state(config, parallel, model, tx, data, store,
                                    say=lambda line: is_chief and print(line, flush=True))
  board = monitoring.EventWriter(workdir, start_step=step, enabled=is_chief,
                                 say=lambda line: is_chief and print(line, flush=True))
  board.write_run_info(to_json_dict(config), {"model": config.model.name, "alpha": float(config.model.alpha),
                                              "input_shape": list(data.image_shape), **model_cost})
  start_step, spe, loop_start = step, data.steps_per_epoch, time.time()
  writer = reporting.MetricsWriter(workdir, resume_step=step or None, enabled=is_chief, mirror=board)
  progress = reporting.Progress(label=f"{config.model.name} a={config.model.alpha:g}", total=data.total_steps,
                                initial=step, enabled=is_chief and config.progress_bar)
  profile = monitoring.ProfileWindow(window, f"{workdir}/{monitoring.PROFILE_DIR}", say=lambda line: (
      progress.write(line) if progress.enabled else is_chief and print(line, flush=True)))
  saver = Checkpointing(store, parallel, config, schedule, spe, writer, step or None)
  reporter = reporting.StepReporter(
      writer=writer, progress=progress, fetch=parallel.get_metrics, global_batch=data.global_batch,
      steps_per_epoch=spe, log_every=config.log_every_steps, learning_rate=lambda s: float(schedule(s)),
      on_nonfinite=saver.diverged, start_step=step)
  reporter.resume_epoch(meta.get("epoch_totals"))  # A run resumed mid-epoch reports the whole epoch's means.
  saver.epoch_totals = reporter.epoch_totals
  evaluations = Evaluations(parallel, data, config, writer, progress, reporter)
  train_seconds = lambda: float(meta.get("train_seconds", 0.0)) + time.time() - loop_start - evaluations.seconds

  try:
    with StopSignals() as stop:
      if step and step % spe == 0:  # The interrupted run may have stopped before this evaluation.
        evaluations.end_of_epoch(step // spe, step, state)
      for epoch in range(step // spe, config.num_epochs):
        with _train_loader(config, data, epoch, start_batch=step - epoch * spe) as loader:
          for batch in loader:
            profile.before_step(step + 1, state)
            state, metrics = parallel.train_step(state, parallel.put_batch(batch))
            step += 1
            reporter.dispatched(step, metrics)
            profile.after_step(step, (state, metrics))
            stopping = stop.requested(step)
            if stopping or step % config.checkpoint_every_steps == 0 or step == data.total_steps:
              reporter.finish()
              saver.save(step, state, train_seconds())
            if stopping:
              raise RunStopped(f"stopped by {stop.signal_name} at step {step} of {data.total_steps}; checkpoint "
                               f"saved in {store.directory}. Run the same command to resume.", step,
                               stop.signal_name)
        reporter.finish()
        evaluations.end_of_epoch(epoch + 1, step, state)
      last_eval = evaluations.final(state)
  finally:
    profile.close()
    progress.close()
    store.close()
    writer.close()

  summary = _summary(config, model_cost, data, parallel, writer, last_eval, train_seconds=train_seconds(),
                     images_per_second=reporter.images_per_second(), steps=step, start_step=start_step)
  if is_chief:
    reporting.write_json(epath.Path(workdir) / reporting.SUMMARY_FILE, summary)
    reporting.plot_curves(writer.records, epath.Path(workdir) / reporting.CURVES_FILE,
                          title=f"{config.model.name} (alpha {config.model.alpha:g}) on {config.data.name}")
  return summary


def _model_cost(model: Any, data: Data) -> dict[str, Any]:
  """``params``, ``macs_per_image`` and ``gmacs_per_image`` of ``model`` (traced at float32, nothing computed)."""
  from octflax import cost  # pylint: disable=g-import-not-at-top

  report = cost.analyze(model.clone(dtype=jnp.float32) if hasattr(model, "dtype") else model,
                        (1,) + data.image_shape)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + data.image_shape), train=False))["params"]
  return {"params": num_params(params), "macs_per_image": report.macs // report.batch, "gmacs_per_image": report.gmacs}


def _summary(config, model_cost: dict[str, Any], data: Data, parallel: DataParallel, writer, evaluation, *,
             train_seconds: float, images_per_second: float | None, steps: int, start_step: int) -> dict[str, Any]:
  train_records = [r for r in writer.records if r.get("kind") in ("train", "eval") and r.get("train_loss")]
  return {
      **evaluation,
      "train_examples": len(data.train),
      "validation_examples": 0 if data.validation is None else len(data.validation),
      "train_seconds": train_seconds,
      "images_per_second": images_per_second,
      **model_cost,
      "device": describe_devices(parallel.devices),
      "peak_bytes_per_device": monitoring.peak_memory_bytes(parallel.devices),
      "num_devices": parallel.num_devices,
      "num_processes": jax.process_count(),
      "parallel": config.parallel,
      "steps": steps,
      "epochs": config.num_epochs,
      "global_batch_size": data.global_batch,
      "final_train_loss": train_records[-1]["train_loss"] if train_records else None,
      "resumed_from_step": start_step or None,
      "jax_version": jax.__version__,
      "model": config.model.name,
      "alpha": float(config.model.alpha),
      "config": to_json_dict(config),
  }


__all__ = ["CHECKPOINT_DIR", "Checkpointing", "Data", "Evaluations", "build_data", "build_datasets", "build_model", "evaluate",
           "init_from_checkpoint", "initial_state", "run_identity", "train_and_evaluate"]
