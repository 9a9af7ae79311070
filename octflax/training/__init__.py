"""Training for octflax: one pure train step, data-parallel wrappers, the optax recipe and the loop.

How a batch travels: `octflax.data.make_loader` gives this process's share of a
global batch (NumPy) -> `DataParallel.put_batch` makes the step's input (a
global array sharded on the ``'data'`` mesh axis, or per-device shards for pmap)
-> `DataParallel.train_step` runs `train_step` (forward, loss, gradient, optax
update) on all devices. `train_and_evaluate` is the whole run: it builds a
`RunPlan` from a config (`plan_run`) and runs it (`run`, in a `RunDirectory`)::

  from octflax import training
  config = training.default_config()
  config.model.name, config.num_epochs = 'oct_resnet8', 1
  summary = training.train_and_evaluate(config, workdir='runs/fashion_mnist')
  summary['test_accuracy']

The modules, one idea each (``docs/design.md`` has the map): `config` (the
fields), `plan` (the run decided, and its data), `state` (the train state and
where a run starts), `optim` (the optimizer recipe), `steps` (the train and
eval steps), `parallel` (the devices), `rundir` and `lock` (the working
directory held), `progress` (the steps watched), `reports` (the files
written), `trainer` (the loop). Names are imported when first used, so that a
config file's ``from octflax.training import default_config`` imports no jax.
The errors a run stops with are in `octflax.errors`; checkpoints in
`octflax.checkpoint`.
"""

from __future__ import annotations

import importlib
from typing import Any

# Each public name and the module that defines it.
_HOMES = {
    "check_config": "config", "default_config": "config",
    "learning_rate_schedule": "optim", "make_optimizer": "optim",
    "DataParallel": "parallel", "initialize_distributed": "parallel",
    "RunPlan": "plan", "plan_run": "plan",
    "RunDirectory": "rundir",
    "TrainState": "state", "create_train_state": "state",
    "cross_entropy_loss": "steps", "eval_step": "steps", "train_step": "steps",
    "run": "trainer", "train_and_evaluate": "trainer",
}
_MODULES = ("config", "lock", "optim", "parallel", "plan", "progress", "reports", "rundir", "state", "steps",
            "trainer")

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
  if name in _HOMES:
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
  elif name in _MODULES:
    value = importlib.import_module(f"{__name__}.{name}")
  else:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__) | set(_MODULES))
