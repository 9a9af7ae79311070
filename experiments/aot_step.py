"""``experiments.train --aot=TARGET``: a training run's own train step compiled for an accelerator it does not have.

`compile_run_step` builds the run of a config as `train_and_evaluate` would (its model,
optimizer, global batch and the jit step over a mesh of all the target's chips, the state
replicated and donated, the batch sharded on ``'data'``), compiles that step for the target on
this host (`octflax.aot`) and returns the report: memory per chip against the chip's, kernels
by class, collectives, an estimated step time. Nothing is trained and nothing written.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import jax
import ml_collections

from octflax import aot
from octflax import data as data_lib
from octflax.training.parallel import DataParallel
from octflax.training.plan import plan_run
from octflax.training.state import abstract_train_state
from octflax.training.optim import optimizer

# Collectives a data-parallel step is expected to have: the gradient and BatchNorm all-reduces.
EXPECTED_COLLECTIVES = ("all-reduce",)


def compile_run_step(config: ml_collections.ConfigDict, target_name: str,
                     say: Callable[[str], Any] = print) -> aot.Report:
  """Compiles the train step of ``config``'s run for ``target_name`` and prints what it showed.

  When the config's data cannot be opened here (an ImageNet folder on the TPU host, say), the step
  is compiled for synthetic images of the size the run would feed (``data.image_size``, or 224
  with ImageNet augmentation) and ``data.num_classes`` classes (1000 when 0); the line says so.

  Raises:
    octflax.aot.TargetUnavailable: an unknown target, or its plugin is missing.
    ConfigError: a bad config, or a batch that does not split over the target's chips.
  """
  target = aot.get_target(target_name)
  devices = target.devices()
  config = copy.deepcopy(config)
  with config.unlocked():
    config.parallel = "jit"
  try:
    plan, _ = plan_run(config, devices)
  except data_lib.DataError as e:
    config = _synthetic_stand_in(config)
    plan, _ = plan_run(config, devices)
    image = "x".join(map(str, plan.model.image_shape))
    say(f"data not readable here ({str(e).splitlines()[0][:160]}); compiling for synthetic {image} images "
        f"and {plan.model.num_classes} classes")
  o = plan.optimization
  parallel = DataParallel("jit", devices, label_smoothing=o.label_smoothing, mixup_alpha=o.mixup_alpha)
  _, tx = optimizer(o)
  model = plan.build_model()
  host = abstract_train_state(model, tx, input_shape=(1, *plan.model.image_shape))
  report = aot.compile_for(target, parallel.jitted_train_step, parallel.abstract_state(host),
                           parallel.abstract_batch(plan.batch.global_batch, plan.model.image_shape))
  per_chip = plan.batch.global_batch // len(devices)
  found = aot.collectives(report.kernels)
  unexpected = sorted(op for op in found if op not in EXPECTED_COLLECTIVES)
  say(f"{target.name} ({len(devices)} x {target.chip.kind}), jax {jax.__version__}: the train step of {plan.model.name} "
      f"alpha {plan.model.alpha:g}, global batch {plan.batch.global_batch} ({per_chip} per chip), "
      f"{'bfloat16' if plan.half_precision else 'float32'}, compiled in {report.compile_seconds:.1f} s")
  say("  " + report.memory_line())
  say("  " + report.kernel_line())
  say("  " + report.collective_line() + (f"; UNEXPECTED: {', '.join(unexpected)}" if unexpected else
                                         "" if not found else " (the gradient and BatchNorm all-reduces)"))
  say("  " + report.estimate_line())
  return report


def _synthetic_stand_in(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` with synthetic data of the shape and classes its run would feed the model."""
  d = config.data
  size = d.image_size or (224 if d.augment == "imagenet" else 0)
  if not size:
    raise data_lib.DataError(f"{d.name} data are not readable here and the image size is unknown: "
                             "set --config.data.image_size to compile without them.")
  stand_in = copy.deepcopy(config)
  with stand_in.unlocked():
    stand_in.data.name, stand_in.data.dir = "synthetic", ""
    stand_in.data.train_split, stand_in.data.test_split = "train", "test"
    stand_in.data.image_size, stand_in.data.num_classes = size, d.num_classes or 1000
    stand_in.data.max_train_examples = config.batch_size
    stand_in.data.max_test_examples = config.eval_batch_size or config.batch_size
    stand_in.data.validation_examples = 0
  return stand_in


__all__ = ["compile_run_step"]
