"""Training for octflax: one pure train step, data-parallel wrappers, the optax recipe and the loop.

How a batch travels: `octflax.data.make_loader` gives this process's share of a
global batch (NumPy) -> `DataParallel.put_batch` makes the step's input (a
global array sharded on the ``'data'`` mesh axis, or per-device shards for pmap)
-> `DataParallel.train_step` runs `train_step` (forward, loss, gradient, optax
update) on all devices. `train_and_evaluate` is the whole run: it builds a
`RunPlan` from a config (`plan_run`) and runs it::

  from octflax import training
  config = training.default_config()
  config.model.name, config.num_epochs = 'oct_resnet8', 1
  summary = training.train_and_evaluate(config, workdir='runs/fashion_mnist')
  summary['test_accuracy']

The errors a run stops with are in `octflax.errors`; checkpoints in
`octflax.checkpoint`.
"""

from octflax.training.config import check_config, default_config
from octflax.training.optim import learning_rate_schedule, make_optimizer
from octflax.training.devices import initialize_distributed
from octflax.training.parallel import DataParallel
from octflax.training.plan import RunPlan, plan_run
from octflax.training.preemption import StopSignals
from octflax.training.state import TrainState, create_train_state
from octflax.training.steps import cross_entropy_loss, eval_step, train_step
from octflax.training.trainer import run, train_and_evaluate

__all__ = [
    "DataParallel",
    "RunPlan",
    "StopSignals",
    "TrainState",
    "check_config",
    "create_train_state",
    "cross_entropy_loss",
    "default_config",
    "eval_step",
    "initialize_distributed",
    "learning_rate_schedule",
    "make_optimizer",
    "plan_run",
    "run",
    "train_and_evaluate",
    "train_step",
]
