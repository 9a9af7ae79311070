"""The training loop: a config becomes a `RunPlan`, the plan a trained model, its checkpoints and reports.

`train_and_evaluate` builds the plan (`plan_run`, the one reader of the config)
and runs it (`run`). `run` opens the working directory (`RunDirectory`: its
lock, the stop signals, the writers) and loops over steps, logging, saving and
evaluating when due. It resumes from the newest good checkpoint in the working
directory: the data order is a function of ``(seed, epoch)`` and the loader
starts mid-epoch, so an interrupted and resumed run ends with the same
parameters as an uninterrupted one.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import ml_collections

from octflax.cost import model_cost
from octflax.errors import DivergenceError, RunStopped
from octflax.training import progress as progress_lib
from octflax.training import reports
from octflax.training.optim import optimizer
from octflax.training.parallel import DataParallel
from octflax.training.plan import RunPlan, Splits, loader, plan_run
from octflax.training.rundir import RunDirectory
from octflax.training.state import all_finite, initial_state
from octflax.training.steps import evaluate


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates the model of ``config``, resuming from ``workdir`` if it holds a checkpoint.

  Writes to ``workdir``: ``checkpoints/`` (every ``config.checkpoint_every_steps``
  steps, at the end and when stopped by SIGTERM/SIGINT), ``metrics.jsonl`` (a
  record per logged step and per evaluation), TensorBoard event files, and at
  the end ``summary.json`` and ``curves.png``. Multi-process runs call this on
  every process (after `initialize_distributed`); only process 0 writes the reports.

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
  plan, splits = plan_run(config)
  return run(plan, splits, workdir)


def run(plan: RunPlan, splits: Splits, workdir: str) -> dict[str, Any]:
  """Runs ``plan`` on ``splits`` in ``workdir``; what `train_and_evaluate` does after planning (same
  returns and errors but ConfigError and DataError, which planning raises)."""
  o = plan.optimization
  parallel = DataParallel(plan.parallel, label_smoothing=o.label_smoothing, mixup_alpha=o.mixup_alpha)
  model = plan.build_model()
  with RunDirectory(workdir) as rd:
    store = rd.checkpoints(plan.model, keep=plan.keep_checkpoints)
    schedule, tx = optimizer(o)
    cost = model_cost(model, plan.model.image_shape)  # Traced; before the clock starts.
    state, step, meta = initial_state(parallel, model, tx, store, seed=plan.seed, image_shape=plan.model.image_shape,
                                      init_from=plan.init_from, say=_chief_prints(rd))
    loop = _Loop(plan, splits, parallel, rd, store, schedule, cost, state, step, meta)
    evaluation = loop.train()
    rd.close_writers()  # The checkpoints' writes finish (a failed one raises) before the summary is written.
    result = summary(plan, splits, loop.records.records, evaluation, cost, parallel.devices, counts={
        "train_seconds": loop.train_seconds(), "images_per_second": loop.reporter.images_per_second(),
        "steps": loop.step, "resumed_from_step": loop.start_step or None})
    rd.write_summary(result, loop.records.records,
                     title=f"{plan.model.name} (alpha {plan.model.alpha:g}) on {plan.data.name}")
  return result


def _chief_prints(rd: RunDirectory) -> Callable[[str], Any]:
  """A ``say`` that prints each line to standard output on the chief process only."""
  return lambda line: rd.chief and print(line, flush=True)


class _Loop:
  """The steps of one run from where it starts: train, log, save and evaluate when due, stop when asked."""

  def __init__(self, plan: RunPlan, splits: Splits, parallel: DataParallel, rd: RunDirectory, store: Any,
               schedule: Any, cost: dict[str, Any], state: Any, step: int, meta: dict[str, Any]):
    self.plan, self.splits, self.parallel, self.rd, self.store = plan, splits, parallel, rd, store
    self.schedule, self.state, self.step, self.start_step = schedule, state, step, step
    self.last_good = step or None  # The newest checkpoint written or restored.
    self.records = rd.records(start_step=step, config=plan.config, run_info={
        "model": plan.model.name, "alpha": plan.model.alpha, "input_shape": list(plan.model.image_shape), **cost})
    self.progress = rd.opened(progress_lib.Progress(
        label=f"{plan.model.name} a={plan.model.alpha:g}", total=plan.total_steps, initial=step,
        enabled=rd.chief and plan.progress_bar))
    say = self.progress.write if self.progress.enabled else _chief_prints(rd)
    self.profile = rd.opened(progress_lib.ProfileWindow(plan.profile, f"{rd.path}/{progress_lib.PROFILE_DIR}",
                                                        say=say))
    self.reporter = progress_lib.StepReporter(
        writer=self.records, progress=self.progress, fetch=parallel.get_metrics, global_batch=plan.batch.global_batch,
        steps_per_epoch=plan.steps_per_epoch, log_every=plan.log_every_steps,
        learning_rate=lambda s: float(schedule(s)), start_step=step)
    self.reporter.resume_epoch(meta.get("epoch_totals"))  # A run resumed mid-epoch reports the whole epoch's means.
    self.evaluated = self.records.evaluated_steps()
    self.seconds = {"before": float(meta.get("train_seconds", 0.0)), "start": time.time(), "evaluating": 0.0}

  def train_seconds(self) -> float:
    """Training time of the whole run (resumed runs included), evaluations left out."""
    s = self.seconds
    return s["before"] + time.time() - s["start"] - s["evaluating"]

  def train(self) -> dict[str, float]:
    """Runs the steps left; the last evaluation (with the test split's metrics)."""
    plan, spe, last = self.plan, self.plan.steps_per_epoch, {}
    try:
      with self.rd.stop:  # From here a SIGTERM or a first Ctrl-C stops the run after its step, checkpointed.
        if self.step and self.step % spe == 0:  # The interrupted run may have stopped before this evaluation.
          last = self.evaluate(self.step // spe, final=self.step == plan.total_steps)
        for epoch in range(self.step // spe, plan.num_epochs):
          self.train_epoch(epoch)
          last = self.evaluate(epoch + 1, final=epoch + 1 == plan.num_epochs) or last
        if "test_accuracy" not in last:
          last = self.evaluate_splits(final=True)
    except progress_lib.NonFiniteMetrics as e:
      message = divergence_message(e.step, e.what, plan, float(self.schedule(e.step - 1)), self.last_good,
                                   self.store.directory)
      self.records.write({"kind": "diverged", "step": e.step, "message": message})
      raise DivergenceError(message, e.step, self.last_good) from None
    return last

  def train_epoch(self, epoch: int) -> None:
    """The steps of ``epoch`` from ``self.step`` on; saves when due, and stops (`RunStopped`) when asked."""
    plan, stop = self.plan, self.rd.stop
    with loader(self.splits.train, plan.data, plan.batch, train=True, epoch=epoch,
                start_batch=self.step - epoch * plan.steps_per_epoch) as batches:
      for batch in batches:
        self.profile.before_step(self.step + 1, self.state)
        self.state, metrics = self.parallel.train_step(self.state, self.parallel.put_batch(batch))
        self.step += 1
        self.reporter.dispatched(self.step, metrics)  # Reads finished steps back: logs, progress, NaN check.
        self.profile.after_step(self.step, (self.state, metrics))
        stopping = stop.requested(self.step)
        if stopping or self.step % plan.checkpoint_every_steps == 0 or self.step == plan.total_steps:
          self.save()
        if stopping:
          raise RunStopped(f"stopped by {stop.signal_name} at step {self.step} of {plan.total_steps}; checkpoint "
                           f"saved in {self.store.directory}. Run the same command to resume.", self.step,
                           stop.signal_name)
    self.reporter.finish()

  def save(self) -> None:
    """Checkpoints the step after checking the parameters are finite."""
    self.reporter.finish()
    host_state = self.parallel.get_state(self.state)
    if not all_finite(host_state.params):
      raise progress_lib.NonFiniteMetrics(self.step, "the parameters became NaN or infinite")
    extra = {"train_seconds": self.train_seconds(), "epoch_totals": self.reporter.epoch_totals()}
    if self.store.save(self.step, host_state, self.plan.config, extra=extra):
      self.last_good = self.step

  def evaluate(self, epoch: int, final: bool) -> dict[str, float]:
    """Evaluates when ``epoch`` is due (validation, else test; test at the end) and records it."""
    train = self.reporter.take_epoch_means()
    if epoch % self.plan.eval_every_epochs and not final:
      return {}
    t = time.time()
    result = self.evaluate_splits(final)
    self.reporter.pause(time.time() - t)  # Evaluations count in neither images/s nor the training time.
    self.seconds["evaluating"] += time.time() - t
    if self.step not in self.evaluated:  # A resumed run may repeat the evaluation of its first step.
      self.evaluated.add(self.step)
      self.records.write({"kind": "eval", "step": self.step, "epoch": epoch, **train, **result})
    self.progress.write(f"epoch {epoch}: " + ", ".join(
        f"{split} accuracy {100 * result[split + '_accuracy']:.2f}%, {split} loss {result[split + '_loss']:.4f}"
        for split in ("validation", "test") if split + "_accuracy" in result))
    return result

  def evaluate_splits(self, final: bool) -> dict[str, float]:
    """The validation split's metrics (else the test split's), and the test split's when ``final``."""
    splits = self.splits
    chosen = [("validation", splits.validation)] if splits.validation is not None else []
    if not chosen or final:
      chosen.append(("test", splits.test))
    result: dict[str, float] = {}
    for prefix, source in chosen:
      result.update(evaluate(self.parallel, self.state, source, self.plan.data, self.plan.eval_batch, prefix=prefix))
    return result


def divergence_message(step: int, what: str, plan: RunPlan, learning_rate: float, last_good: int | None,
                       directory: str) -> str:
  """What happened at ``step``, what is kept, and what to try."""
  if last_good is None:
    kept = "No checkpoint had been saved yet, so there is nothing to resume from."
  else:
    kept = f"The last good checkpoint (step {last_good}) in {directory} is kept; a restart resumes from it."
  o = plan.optimization
  return (
      f"Training stopped: {what} at step {step} (epoch {(step - 1) // plan.steps_per_epoch + 1}, learning rate "
      f"{learning_rate:.4g}). {kept} Try a lower --config.learning_rate (now {o.base_learning_rate:g} per 256 "
      f"images), a longer --config.warmup_epochs (now {o.warmup_epochs:g}), gradient clipping "
      "(--config.grad_clip_norm=1.0)" + (", or --config.half_precision=False" if plan.half_precision else "") + ".")


def summary(plan: RunPlan, splits: Splits, records: list[dict[str, Any]], evaluation: dict[str, float],
            cost: dict[str, Any], devices: list[Any], counts: dict[str, Any]) -> dict[str, Any]:
  """The run's summary: the last evaluation, ``counts`` (steps, seconds, images/s), the model's cost,
  the devices, the last training loss of ``records`` and the config."""
  train_records = [r for r in records if r.get("kind") in ("train", "eval") and r.get("train_loss")]
  return {
      **evaluation, "train_examples": len(splits.train),
      "validation_examples": 0 if splits.validation is None else len(splits.validation),
      **counts, "parallel": plan.parallel, "epochs": plan.num_epochs, "global_batch_size": plan.batch.global_batch,
      "model": plan.model.name, "alpha": plan.model.alpha, **cost,
      "device": reports.describe_devices(devices),
      "peak_bytes_per_device": reports.peak_memory_bytes(devices),
      "num_devices": len(devices),
      "num_processes": jax.process_count(),
      "final_train_loss": train_records[-1]["train_loss"] if train_records else None,
      "jax_version": jax.__version__,
      "config": plan.config,
  }


__all__ = ["run", "summary", "train_and_evaluate"]
