"""The fields of a training config (an `ml_collections.ConfigDict`), their checks, and config files.

Every knob of a run is a field here; config files (``experiments/configs/*.py``)
start from `default_config` and set what differs. A field that is not in
`default_config` is an error, caught by `check_config` before anything runs.
`load_config` reads a config file once, applies command-line overrides and checks the result.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from typing import Any, Iterator, Sequence

import ml_collections

from octflax.data import FASHION_MNIST_DIR, list_sources
from octflax.errors import ConfigError
from octflax.training.monitoring import profile_window
from octflax.training.parallel import PARALLEL_MODES

MODEL_APIS = ("linen", "nnx")

# Sub-trees whose keys are free (module attributes), not fields of the trainer.
_FREE_KEYS = ("model.overrides",)


def default_config() -> ml_collections.ConfigDict:
  """All fields of a training config with their defaults.

  Fields:
    model.name: a name `octflax.models.get_model` accepts (e.g. 'oct_resnet20').
    model.alpha: share of low-frequency channels (0 = the vanilla network).
    model.api: 'linen' (the Linen modules of `octflax.models`) or 'nnx' (the
      NNX modules of `octflax.nnx`, driven through the same calling convention).
    model.overrides: attributes of the model module to replace, e.g.
      ``{'stage_sizes': (1, 1, 1)}`` (applied with ``module.clone(**overrides)``).
    data.name: one of 'fashion_mnist', 'cifar10', 'cifar100', 'image_folder',
      'synthetic', 'moving_fashion_mnist' (clips, `octflax.data.clips`).
    data.dir: the data set's directory (image_folder: the folder holding the
      split folders).
    data.train_split, data.test_split: split names ('train'/'test';
      image_folder: sub-folder names such as 'train'/'val').
    data.max_train_examples, data.max_test_examples: use only the first this
      many examples (0 = all; synthetic: the number of examples, 0 = 1024/256).
    data.validation_examples: hold out the last this many training examples
      (after ``max_train_examples``) as a validation split, evaluated every
      ``eval_every_epochs`` in place of the test split, which is then evaluated
      once, at the end (0 = no validation split). Make choices on it, never on
      the test split.
    data.augment: 'none', 'crop', 'crop_flip' or 'imagenet' (see
      `octflax.data.make_loader`).
    data.image_size: side of the images fed to the model (0 = as stored;
      'imagenet' augmentation defaults to 224).
    data.num_classes: classes of synthetic data (others read it from the data).
    data.num_threads: grain threads building batches ahead (0 = in the loop).
    num_epochs: passes over the training set.
    batch_size: GLOBAL batch size (over all devices and processes).
    eval_batch_size: global batch size of evaluation (0 = batch_size).
    learning_rate: peak learning rate for a global batch of 256; the run uses
      ``learning_rate * batch_size / 256``.
    warmup_epochs: linear warm-up from 0 (then cosine decay to 0).
    momentum, nesterov: SGD momentum.
    weight_decay: L2 on kernels (not on BatchNorm parameters and biases).
    label_smoothing: label smoothing of the cross-entropy (0 = off).
    mixup_alpha: Beta(alpha, alpha) mixup (0 = off).
    grad_clip_norm: clip gradients to this global norm (0 = off).
    seed: seeds parameters, data order, augmentation and mixup.
    parallel: 'jit' (jit over a device mesh) or 'pmap'.
    half_precision: compute in bfloat16 (parameters stay float32).
    checkpoint_every_steps: save a checkpoint every this many steps (and at the end).
    keep_checkpoints: how many checkpoints to keep.
    log_every_steps: write a metrics record every this many steps.
    eval_every_epochs: evaluate (validation split, else test split) every this many epochs (and at the end).
    progress_bar: show progress: a bar on a terminal, else one plain line every
      ``log_every_steps`` steps.
    init_from: start from the parameters and BatchNorm statistics of this
      checkpoint (a run's working directory, its checkpoints folder, one
      checkpoint, or an imported one; '' = from scratch). A different number of
      classes re-initialises the classifier; any other difference is an error.
      A run that has its own checkpoint resumes from it instead.
    profile_steps: ``(START, COUNT)``: a `jax.profiler` trace of steps START to
      START + COUNT - 1 into ``workdir/profile/`` (``--config.profile_steps=5,3``;
      START >= 2, after step 1 compiled); ``(0, 0)`` or ``0`` = off.

  Returns:
    A ConfigDict (unlocked; `check_config` rejects unknown fields).
  """
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict()
  config.model.name = "oct_resnet20"
  config.model.alpha = 0.25
  config.model.api = "linen"
  config.model.overrides = ml_collections.ConfigDict()

  config.data = ml_collections.ConfigDict()
  config.data.name = "fashion_mnist"
  config.data.dir = FASHION_MNIST_DIR
  config.data.train_split = "train"
  config.data.test_split = "test"
  config.data.max_train_examples = 0
  config.data.max_test_examples = 0
  config.data.validation_examples = 0
  config.data.augment = "none"
  config.data.image_size = 0
  config.data.num_classes = 0
  config.data.num_threads = 0

  config.num_epochs = 1
  config.batch_size = 128
  config.eval_batch_size = 0
  config.learning_rate = 0.1
  config.warmup_epochs = 0.0
  config.momentum = 0.9
  config.nesterov = True
  config.weight_decay = 1e-4
  config.label_smoothing = 0.0
  config.mixup_alpha = 0.0
  config.grad_clip_norm = 0.0
  config.seed = 0
  config.parallel = "jit"
  config.half_precision = False

  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.log_every_steps = 50
  config.eval_every_epochs = 1
  config.progress_bar = True
  config.init_from = ""
  config.profile_steps = (0, 0)
  return config


def field_names(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[str]:
  """Dotted names of the leaf fields of a config (free sub-trees count as one field)."""
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict) and name not in _FREE_KEYS:
      yield from field_names(value, name + ".")
    else:
      yield name


def unknown_field_message(name: str, known: list[str], where: str) -> str:
  """The message for a field that does not exist, with the closest known names."""
  close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
  hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
  return (f"unknown config field {name!r} ({where}).{hint} The fields are: {', '.join(sorted(known))}.")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Checks field names against `default_config` and the values that have a fixed set.

  Raises:
    ConfigError: an unknown or missing field, or a value out of its range; the
      message names the field and what is allowed.
  """
  known = list(field_names(default_config()))
  given = list(field_names(config))
  for name in given:
    if name not in known:
      raise ConfigError(unknown_field_message(name, known, "in the config file"))
  missing = [name for name in known if name not in given]
  if missing:
    raise ConfigError(
        f"config fields missing: {', '.join(missing)}. Start config files from "
        "octflax.training.default_config() so that every field has a value.")

  def require(ok: bool, field: str, allowed: str) -> None:
    if not ok:
      value = config
      for part in field.split("."):
        value = value[part]
      raise ConfigError(f"config.{field} must be {allowed}; got {value!r}.")

  require(config.model.api in MODEL_APIS, "model.api", " or ".join(map(repr, MODEL_APIS)))
  require(config.parallel in PARALLEL_MODES, "parallel", " or ".join(map(repr, PARALLEL_MODES)))
  require(config.data.name in list_sources(), "data.name", "one of " + ", ".join(map(repr, list_sources())))
  for field in ("num_epochs", "batch_size", "checkpoint_every_steps", "keep_checkpoints",
                "log_every_steps", "eval_every_epochs"):
    require(_is_int(config[field]) and config[field] >= 1, field, "an integer >= 1")
  for field in ("eval_batch_size",):
    require(_is_int(config[field]) and config[field] >= 0, field, "an integer >= 0 (0 = batch_size)")
  for field in ("max_train_examples", "max_test_examples", "validation_examples", "image_size", "num_classes", "num_threads"):
    require(_is_int(config.data[field]) and config.data[field] >= 0, f"data.{field}", "an integer >= 0")
  require(config.learning_rate > 0, "learning_rate", "> 0")
  require(config.warmup_epochs >= 0, "warmup_epochs", ">= 0")
  require(config.weight_decay >= 0, "weight_decay", ">= 0")
  require(0 <= config.label_smoothing < 1, "label_smoothing", "in [0, 1)")
  require(config.mixup_alpha >= 0, "mixup_alpha", ">= 0 (0 = off)")
  require(config.grad_clip_norm >= 0, "grad_clip_norm", ">= 0 (0 = off)")
  require(0 <= config.momentum < 1, "momentum", "in [0, 1)")
  profile_window(config.profile_steps)  # START,COUNT or 0 (the run's length is checked by the trainer).


def load_config(source: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The config of a config file, with command-line overrides applied, checked (`check_config`).

  Args:
    source: ``FILE`` or ``FILE:ARGS``: a Python file whose ``get_config()`` (or
      ``get_config(ARGS)``) returns a config.
    overrides: ``--config.FIELD=VALUE`` (parsed as the field's type: a tuple as
      ``5,3``), ``--config.FIELD`` (a boolean field: True) or ``--noconfig.FIELD`` (False).

  Raises:
    ConfigError: no such file or no ``get_config``, an unknown field, a value
      that does not parse or cannot work; the message names the field.
  """
  path, args = source, None
  if not os.path.isfile(path) and ":" in path:
    path, args = source.split(":", 1)
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} does not exist.")
  spec = importlib.util.spec_from_file_location("octflax_config_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path!r} has no get_config() function.")
  config = module.get_config() if args is None else module.get_config(args)
  for override in overrides:
    _override(config, override, os.path.basename(path))
  check_config(config)
  return config


def _override(config: ml_collections.ConfigDict, flag: str, file: str) -> None:
  negate = flag.startswith("--noconfig.")
  name, has_value, text = flag.split(".", 1)[1].partition("=")
  *parents, last = name.split(".")
  node = config
  for part in parents + [last]:
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      if name.startswith("model.overrides."):
        present = ", ".join(sorted(config.model.overrides.keys())) or "none"
        raise ConfigError(
            f"{flag.split('=')[0]}: {file} sets no model attribute {name.split('.', 2)[2]!r} in "
            f"config.model.overrides (it sets: {present}). Attributes the config file does not set "
            "can only be added in a config file (config.model.overrides.NAME = VALUE).")
      raise ConfigError(unknown_field_message(name, list(field_names(config)), f"from {flag.split('=')[0]}, config {file}"))
    parent, node = node, node[part]
  try:
    if isinstance(node, bool) or negate:
      if negate or not has_value:
        value = not negate
      elif text.lower() in ("true", "1", "false", "0"):
        value = text.lower() in ("true", "1")
      else:
        raise ValueError("expected true or false")
    elif not has_value:
      raise ValueError("a value is needed: --config.FIELD=VALUE")
    elif isinstance(node, ml_collections.ConfigDict):
      raise ValueError("it is a group of fields; set its fields one by one")
    elif isinstance(node, str):
      value = text
    elif isinstance(node, (int, float)):
      value = int(text) if isinstance(node, int) else float(text)
    else:  # A tuple, a list or None: a Python literal ('5,3' is the tuple (5, 3); '0' is (0,)).
      value = ast.literal_eval(text)
      if isinstance(node, (tuple, list)):
        value = type(node)(value if isinstance(value, (tuple, list)) else (value,))
  except (ValueError, SyntaxError) as e:
    raise ConfigError(f"{flag}: cannot set config.{name} ({type(node).__name__}): {e}.") from None
  with parent.unlocked():
    parent[last] = value


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


__all__ = ["MODEL_APIS", "check_config", "default_config", "field_names", "load_config",
           "unknown_field_message"]
