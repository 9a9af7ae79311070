"""Training for octflax: one pure train step, data-parallel wrappers, optax recipe, orbax checkpoints.

How a batch travels: `octflax.data.make_loader` gives this process's share of a
global batch (NumPy) -> `DataParallel.put_batch` makes the step's input (a
global array sharded on the ``'data'`` mesh axis, or per-device shards for pmap)
-> `DataParallel.train_step` runs `train_step` (forward, loss, gradient, optax
update) on all devices. `train_and_evaluate` is the whole loop, driven by a
config from `default_config`::

  from octflax import training
  config = training.default_config()
  config.model.name, config.num_epochs = 'oct_resnet8', 1
  summary = training.train_and_evaluate(config, workdir='runs/fashion_mnist')
  summary['test_accuracy']
"""

from octflax.training.checkpoint import (
    CHECKPOINT_DIR, CheckpointStore, find_checkpoint, read_checkpoint, write_checkpoint)
from octflax.training.config import check_config, default_config
from octflax.training.errors import (
    EXIT_WORKDIR_LOCKED, EXIT_WRITE_FAILED, CheckpointError, CheckpointMismatchError, ConfigError, DivergenceError,
    RunStopped, TrainingError, WorkdirError, WorkdirLockedError, WriteFailedError)
from octflax.training.lock import LOCK_FILE, WorkdirLock
from octflax.training.optim import (
    learning_rate_schedule, make_optimizer, scaled_learning_rate, weight_decay_mask)
from octflax.training.parallel import (
    DATA_AXIS, PARALLEL_MODES, DataParallel, all_finite, check_batch_size, describe_devices,
    initialize_distributed, num_params)
from octflax.training.paths import prepare_workdir, resolve_path
from octflax.training.preemption import EXIT_INTERRUPTED, EXIT_STOPPED, StopSignals
from octflax.training.reporting import MetricsWriter, plot_curves
from octflax.training.state import TrainState, create_train_state
from octflax.training.steps import cross_entropy_loss, eval_step, mixup_weight, train_step
from octflax.training.trainer import (
    build_data, build_datasets, build_model, evaluate, init_from_checkpoint, run_identity, train_and_evaluate)

__all__ = [
    "CHECKPOINT_DIR",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointStore",
    "EXIT_INTERRUPTED",
    "EXIT_STOPPED",
    "EXIT_WORKDIR_LOCKED",
    "EXIT_WRITE_FAILED",
    "LOCK_FILE",
    "RunStopped",
    "StopSignals",
    "WorkdirError",
    "WorkdirLock",
    "WorkdirLockedError",
    "WriteFailedError",
    "build_data",
    "evaluate",
    "find_checkpoint",
    "init_from_checkpoint",
    "prepare_workdir",
    "read_checkpoint",
    "resolve_path",
    "run_identity",
    "write_checkpoint",
    "ConfigError",
    "DATA_AXIS",
    "DataParallel",
    "DivergenceError",
    "MetricsWriter",
    "PARALLEL_MODES",
    "TrainState",
    "TrainingError",
    "all_finite",
    "build_datasets",
    "build_model",
    "check_batch_size",
    "check_config",
    "create_train_state",
    "cross_entropy_loss",
    "default_config",
    "describe_devices",
    "eval_step",
    "initialize_distributed",
    "learning_rate_schedule",
    "make_optimizer",
    "mixup_weight",
    "num_params",
    "plot_curves",
    "scaled_learning_rate",
    "train_and_evaluate",
    "train_step",
    "weight_decay_mask",
]
