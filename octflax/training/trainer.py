"""The training loop: a config becomes a `RunPlan`, the plan a trained model, its checkpoints and reports.

`train_and_evaluate` builds the plan (`plan_run`, the one reader of the config)
and runs it (`run`): a loop over steps that logs, saves and evaluates when due
and stops on a signal. It resumes from the newest good checkpoint in the
working directory: the data order is a function of ``(seed, epoch)`` and the
loader starts mid-epoch, so an interrupted and resumed run ends with the same
parameters as an uninterrupted one.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
from etils import epath

from octflax.checkpoint import CHECKPOINT_DIR, CheckpointStore
from octflax.errors import DivergenceError, RunStopped
from octflax.training import inputs, monitoring, reporting
from octflax.training import summary as summary_lib
from octflax.training.guard import hold_workdir, run_guard
from octflax.training.inputs import Splits
from octflax.training.optim import learning_rate_schedule, make_optimizer
from octflax.training.parallel import DataParallel
from octflax.training.paths import prepare_workdir
from octflax.training.plan import Optimization, RunPlan, plan_run
from octflax.training.preemption import StopSignals
from octflax.training.start import initial_state
from octflax.training.state import all_finite


@run_guard  # The working directory's lock; a write that cannot succeed stops the run in one line.
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


def optimizer(o: Optimization) -> tuple[Any, Any]:
  """``(schedule, tx)`` of the plan's optimization."""
  schedule = learning_rate_schedule(o.learning_rate, o.total_steps, o.warmup_steps)
  return schedule, make_optimizer(schedule, momentum=o.momentum, nesterov=o.nesterov,
                                  weight_decay=o.weight_decay, grad_clip_norm=o.grad_clip_norm)


def run(plan: RunPlan, splits: Splits, workdir: str) -> dict[str, Any]:
  """Runs ``plan`` on ``splits`` in ``workdir`` (see `train_and_evaluate`, which calls it under its guard)."""
  is_chief = jax.process_index() == 0
  say = lambda line: is_chief and print(line, flush=True)
  o, spe = plan.optimization, plan.steps_per_epoch
  parallel = DataParallel(plan.parallel, label_smoothing=o.label_smoothing, mixup_alpha=o.mixup_alpha)
  model = plan.build_model()
  workdir = prepare_workdir(workdir)  # Before anything compiles; after the config's checks, which write nothing.
  hold_workdir(workdir, is_chief=is_chief)  # One run per working directory, from here until the run ends.
  store = CheckpointStore(f"{workdir}/{CHECKPOINT_DIR}", identity=plan.model, keep=plan.keep_checkpoints,
                          is_chief=is_chief)
  store.check_identity()  # Before anything in the working directory is written.
  schedule, tx = optimizer(o)
  cost = summary_lib.model_cost(model, plan.model.image_shape)  # Traced; before the clock starts.
  state, step, meta = initial_state(parallel, model, tx, store, seed=plan.seed, image_shape=plan.model.image_shape,
                                    init_from=plan.init_from, say=say)
  writer, progress, profile, reporter = open_reports(plan, workdir, step, cost, parallel.get_metrics, schedule,
                                                    is_chief)
  reporter.resume_epoch(meta.get("epoch_totals"))  # A run resumed mid-epoch reports the whole epoch's means.
  evaluated, start_step, last_good = writer.evaluated_steps(), step, step or None
  seconds = {"before": float(meta.get("train_seconds", 0.0)), "start": time.time(), "evaluating": 0.0}
  train_seconds = lambda: seconds["before"] + time.time() - seconds["start"] - seconds["evaluating"]

  def evaluate(epoch: int, final: bool) -> dict[str, float]:
    """Evaluates when ``epoch`` is due (validation, else test; test at the end) and records it."""
    train = reporter.take_epoch_means()
    if epoch % plan.eval_every_epochs and not final:
      return {}
    t = time.time()
    result = evaluate_splits(parallel, state, splits, plan, final)
    reporter.pause(time.time() - t)  # Evaluations count in neither images/s nor the training time.
    seconds["evaluating"] += time.time() - t
    if step not in evaluated:  # A resumed run may repeat the evaluation of its first step.
      evaluated.add(step)
      writer.write({"kind": "eval", "step": step, "epoch": epoch, **train, **result})
    progress.write(f"epoch {epoch}: " + ", ".join(
        f"{split} accuracy {100 * result[split + '_accuracy']:.2f}%, {split} loss {result[split + '_loss']:.4f}"
        for split in ("validation", "test") if split + "_accuracy" in result))
    return result

  last: dict[str, float] = {}
  try:
    with StopSignals() as stop:
      if step and step % spe == 0:  # The interrupted run may have stopped before this evaluation.
        last = evaluate(step // spe, final=step == plan.total_steps)
      for epoch in range(step // spe, plan.num_epochs):
        with inputs.loader(splits.train, plan.data, plan.batch, train=True, epoch=epoch,
                           start_batch=step - epoch * spe) as batches:
          for batch in batches:
            profile.before_step(step + 1, state)
            state, metrics = parallel.train_step(state, parallel.put_batch(batch))
            step += 1
            reporter.dispatched(step, metrics)  # Reads finished steps back: logs, progress, NaN check.
            profile.after_step(step, (state, metrics))
            stopping = stop.requested(step)
            if stopping or step % plan.checkpoint_every_steps == 0 or step == plan.total_steps:
              reporter.finish()
              last_good = save(store, parallel.get_state(state), step, plan.config, last_good,
                               {"train_seconds": train_seconds(), "epoch_totals": reporter.epoch_totals()})
            if stopping:
              raise RunStopped(f"stopped by {stop.signal_name} at step {step} of {plan.total_steps}; checkpoint "
                               f"saved in {store.directory}. Run the same command to resume.", step,
                               stop.signal_name)
        reporter.finish()
        last = evaluate(epoch + 1, final=epoch + 1 == plan.num_epochs) or last
      if "test_accuracy" not in last:
        last = evaluate_splits(parallel, state, splits, plan, final=True)
  except reporting.NonFiniteMetrics as e:
    message = divergence_message(e.step, e.what, plan, float(schedule(e.step - 1)), last_good, store.directory)
    writer.write({"kind": "diverged", "step": e.step, "message": message})
    raise DivergenceError(message, e.step, last_good) from None
  finally:
    profile.close()
    progress.close()
    store.close()
    writer.close()
  return finish(plan, splits, workdir, writer.records, last, cost, parallel.devices, counts={
      "train_seconds": train_seconds(), "images_per_second": reporter.images_per_second(), "steps": step,
      "resumed_from_step": start_step or None})


def open_reports(plan: RunPlan, workdir: str, step: int, cost: dict[str, Any], fetch: Any, schedule: Any,
                 is_chief: bool) -> tuple[reporting.MetricsWriter, reporting.Progress, monitoring.ProfileWindow,
                                          reporting.StepReporter]:
  """What a run starting at ``step`` reports to: metrics.jsonl (mirrored to TensorBoard), the progress
  line, the profile window, and the reader of the steps' metrics (process 0 writes)."""
  say = lambda line: is_chief and print(line, flush=True)
  board = monitoring.EventWriter(workdir, start_step=step, enabled=is_chief, say=say)
  board.write_run_info(plan.config, {"model": plan.model.name, "alpha": plan.model.alpha,
                                     "input_shape": list(plan.model.image_shape), **cost})
  writer = reporting.MetricsWriter(workdir, resume_step=step or None, enabled=is_chief, mirror=board)
  progress = reporting.Progress(label=f"{plan.model.name} a={plan.model.alpha:g}", total=plan.total_steps,
                                initial=step, enabled=is_chief and plan.progress_bar)
  profile = monitoring.ProfileWindow(plan.profile, f"{workdir}/{monitoring.PROFILE_DIR}",
                                     say=progress.write if progress.enabled else say)
  reporter = reporting.StepReporter(
      writer=writer, progress=progress, fetch=fetch, global_batch=plan.batch.global_batch,
      steps_per_epoch=plan.steps_per_epoch, log_every=plan.log_every_steps,
      learning_rate=lambda s: float(schedule(s)), start_step=step)
  return writer, progress, profile, reporter


def save(store: CheckpointStore, host_state: Any, step: int, config: dict[str, Any], last_good: int | None,
         extra: dict[str, Any]) -> int | None:
  """Saves ``host_state`` as checkpoint ``step`` after checking it is finite; the newest good step."""
  if not all_finite(host_state.params):
    raise reporting.NonFiniteMetrics(step, "the parameters became NaN or infinite")
  return step if store.save(step, host_state, config, extra=extra) else last_good


def evaluate_splits(parallel: DataParallel, state: Any, splits: Splits, plan: RunPlan,
                    final: bool) -> dict[str, float]:
  """The validation split's metrics (else the test split's), and the test split's when ``final``."""
  chosen = [("validation", splits.validation)] if splits.validation is not None else []
  if not chosen or final:
    chosen.append(("test", splits.test))
  result: dict[str, float] = {}
  for prefix, source in chosen:
    result.update(inputs.evaluate(parallel, state, source, plan.data, plan.eval_batch, prefix=prefix))
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


def finish(plan: RunPlan, splits: Splits, workdir: str, records: list[dict[str, Any]], evaluation: dict[str, float],
           cost: dict[str, Any], devices: list[Any], counts: dict[str, Any]) -> dict[str, Any]:
  """The summary; process 0 writes it and the curves to ``workdir``."""
  result = summary_lib.summary(evaluation=evaluation, records=records, cost=cost, devices=devices, config=plan.config,
                               counts={
                                   "train_examples": len(splits.train),
                                   "validation_examples": 0 if splits.validation is None else len(splits.validation),
                                   **counts, "parallel": plan.parallel, "epochs": plan.num_epochs,
                                   "global_batch_size": plan.batch.global_batch, "model": plan.model.name,
                                   "alpha": plan.model.alpha})
  if jax.process_index() == 0:
    summary_lib.write_json(epath.Path(workdir) / summary_lib.SUMMARY_FILE, result)
    summary_lib.plot_curves(records, epath.Path(workdir) / summary_lib.CURVES_FILE,
                            title=f"{plan.model.name} (alpha {plan.model.alpha:g}) on {plan.data.name}")
  return result


__all__ = ["evaluate_splits", "optimizer", "run", "train_and_evaluate"]
