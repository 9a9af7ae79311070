"""The fields of a training config (an `ml_collections.ConfigDict`), their checks, and config files.

Config files (``experiments/configs/*.py``) start from `default_config` and set what differs;
`load_config` reads one and applies command-line overrides, each read by ml_collections' parser
of its field's type. `check_config` (which the run's plan, `octflax.training.plan.plan_run`,
calls) rejects an unknown field or a value that cannot work. Reading a config imports no jax
(only `check_config` imports `octflax.data`, for the names of the data sets).
"""

from __future__ import annotations

import difflib
import os
import sys
import warnings
from typing import Any, Iterator, Sequence

import ml_collections
from absl import flags
from ml_collections.config_flags import config_flags, config_path, tuple_parser

from octflax._data_dirs import FASHION_MNIST_DIR
from octflax.errors import ConfigError

MODEL_APIS = ("linen", "nnx")
PARALLEL_MODES = ("jit", "pmap")

# Sub-trees whose keys are free (module attributes), not fields of the trainer.
_FREE_KEYS = ("model.overrides",)
# ml_collections' parser of a command-line value by the type of its field ('5,3' is (5, 3), '0' is (0,)).
_PARSERS = {bool: flags.BooleanParser(), int: flags.IntegerParser(), float: flags.FloatParser(),
            str: flags.ArgumentParser(), tuple: tuple_parser.TupleParser(), list: tuple_parser.TupleParser()}
_PARSER_NAME = "octflax"  # ml_collections runs a config file as the module NAME + '_config'.


def default_config() -> ml_collections.ConfigDict:
  """All fields of a training config with their defaults.

  Fields:
    model.name: a name `octflax.models.get_model` accepts (e.g. 'oct_resnet20').
    model.alpha: share of low-frequency channels (0 = the vanilla network).
    model.api: 'linen' (the Linen modules of `octflax.models`) or 'nnx' (the NNX modules of
      `octflax.nnx`, driven through the same calling convention).
    model.overrides: attributes of the model module to replace, e.g. ``{'stage_sizes': (1, 1, 1)}``
      (applied with ``module.clone(**overrides)``).
    data.name: one of 'fashion_mnist', 'cifar10', 'cifar100', 'image_folder', 'synthetic',
      'moving_fashion_mnist' (clips, `octflax.data.clips`).
    data.dir: the data set's directory (image_folder: the folder holding the split folders).
    data.train_split, data.test_split: split names ('train'/'test'; image_folder: sub-folder
      names such as 'train'/'val').
    data.max_train_examples, data.max_test_examples: use only the first this many examples
      (0 = all; synthetic: the number of examples, 0 = 1024/256).
    data.validation_examples: hold out the last this many training examples (after
      ``max_train_examples``) as a validation split, evaluated every ``eval_every_epochs`` in
      place of the test split, which is then evaluated once, at the end (0 = no validation
      split). Make choices on it, never on the test split.
    data.augment: 'none', 'crop', 'crop_flip' or 'imagenet' (see `octflax.data.make_loader`).
    data.image_size: side of the images fed to the model (0 = as stored; 'imagenet'
      augmentation defaults to 224).
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
    progress_bar: show progress: a bar on a terminal, else one plain line every ``log_every_steps`` steps.
    init_from: start from the parameters and BatchNorm statistics of this checkpoint (a run's
      working directory, its checkpoints folder, one checkpoint, or an imported one; '' = from
      scratch). A different number of classes re-initialises the classifier; any other
      difference is an error. A run that has its own checkpoint resumes from it instead.
    profile_steps: ``(START, COUNT)``: a `jax.profiler` trace of steps START to START + COUNT - 1
      into ``workdir/profile/`` (``--config.profile_steps=5,3``; START >= 2, after step 1
      compiled); ``(0, 0)`` or ``0`` = off.

  Returns:
    A ConfigDict (unlocked; `check_config` rejects unknown fields).
  """
  return ml_collections.ConfigDict(dict(
      model=dict(name="oct_resnet20", alpha=0.25, api="linen", overrides={}),
      data=dict(name="fashion_mnist", dir=FASHION_MNIST_DIR, train_split="train", test_split="test",
                max_train_examples=0, max_test_examples=0, validation_examples=0, augment="none", image_size=0,
                num_classes=0, num_threads=0),
      num_epochs=1, batch_size=128, eval_batch_size=0, learning_rate=0.1, warmup_epochs=0.0, momentum=0.9,
      nesterov=True, weight_decay=1e-4, label_smoothing=0.0, mixup_alpha=0.0, grad_clip_norm=0.0, seed=0,
      parallel="jit", half_precision=False,
      checkpoint_every_steps=1000, keep_checkpoints=3, log_every_steps=50, eval_every_epochs=1,
      progress_bar=True, init_from="", profile_steps=(0, 0)))


def field_names(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[str]:
  """Dotted names of the leaf fields of a config (free sub-trees count as one field).

  >>> list(field_names(default_config()))[:4]
  ['batch_size', 'checkpoint_every_steps', 'data.augment', 'data.dir']
  """
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict) and name not in _FREE_KEYS:
      yield from field_names(value, name + ".")
    else:
      yield name


def unknown_field_message(name: str, known: list[str], where: str) -> str:
  """The message for a field that does not exist, with the closest known names.

  >>> unknown_field_message("lerning_rate", ["learning_rate", "seed"], "in the config file")
  "unknown config field 'lerning_rate' (in the config file). Did you mean 'learning_rate'? The fields are: learning_rate, seed."
  """
  close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
  hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
  return (f"unknown config field {name!r} ({where}).{hint} The fields are: {', '.join(sorted(known))}.")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Checks field names against `default_config` and the values that have a fixed set.

  Raises:
    ConfigError: an unknown or missing field, or a value out of its range; the
      message names the field and what is allowed.
  """
  from octflax.data import list_sources  # pylint: disable=g-import-not-at-top  (the data package imports jax)

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
      raise ConfigError(f"config.{field} must be {allowed}; got {config_path.get_value(field, config)!r}.")

  require(config.model.api in MODEL_APIS, "model.api", " or ".join(map(repr, MODEL_APIS)))
  require(config.parallel in PARALLEL_MODES, "parallel", " or ".join(map(repr, PARALLEL_MODES)))
  require(config.data.name in list_sources(), "data.name", "one of " + ", ".join(map(repr, list_sources())))
  for field in ("num_epochs", "batch_size", "checkpoint_every_steps", "keep_checkpoints",
                "log_every_steps", "eval_every_epochs"):
    require(_is_int(config[field]) and config[field] >= 1, field, "an integer >= 1")
  require(_is_int(config.eval_batch_size) and config.eval_batch_size >= 0, "eval_batch_size",
          "an integer >= 0 (0 = batch_size)")
  for field in ("max_train_examples", "max_test_examples", "validation_examples", "image_size", "num_classes", "num_threads"):
    require(_is_int(config.data[field]) and config.data[field] >= 0, f"data.{field}", "an integer >= 0")
  require(config.learning_rate > 0, "learning_rate", "> 0")
  require(config.warmup_epochs >= 0, "warmup_epochs", ">= 0")
  require(config.weight_decay >= 0, "weight_decay", ">= 0")
  require(0 <= config.label_smoothing < 1, "label_smoothing", "in [0, 1)")
  require(config.mixup_alpha >= 0, "mixup_alpha", ">= 0 (0 = off)")
  require(config.grad_clip_norm >= 0, "grad_clip_norm", ">= 0 (0 = off)")
  require(0 <= config.momentum < 1, "momentum", "in [0, 1)")
  profile_window(config.profile_steps)  # START,COUNT or 0 (the run's length is checked by the plan).


def profile_window(profile_steps: Any, total_steps: int | None = None) -> tuple[int, int] | None:
  """``(first, last)`` step of ``config.profile_steps`` (``START,COUNT``), or None when it is off (0).

  >>> profile_window((5, 3)), profile_window((0, 0)), profile_window((0,))
  ((5, 7), None, None)

  Raises:
    ConfigError: anything but ``0`` or two integers ``START >= 2`` (step 1 compiles
      the train step) and ``COUNT >= 1``; or a window that ends after ``total_steps``.
  """
  value = tuple(profile_steps) if isinstance(profile_steps, (tuple, list)) else (profile_steps,)
  if value in ((), (0,), (0, 0)):
    return None
  if (len(value) != 2 or not all(_is_int(v) for v in value) or value[0] < 2 or value[1] < 1):
    raise ConfigError(
        "config.profile_steps must be START,COUNT (e.g. --config.profile_steps=5,3: a trace of steps 5 to 7) "
        f"with START >= 2 (step 1 compiles the train step) and COUNT >= 1, or 0 (off); got {profile_steps!r}.")
  first, last = value[0], value[0] + value[1] - 1
  if total_steps is not None and last > total_steps:
    raise ConfigError(
        f"config.profile_steps {first},{value[1]} asks for steps {first} to {last}, but the run has "
        f"{total_steps} steps.")
  return first, last


def load_config(source: str, overrides: Sequence[str] = (), *,
                config_dir: str | None = None) -> ml_collections.ConfigDict:
  """The config of a config file with command-line overrides applied (checked later: `check_config`).

  Args:
    source: ``FILE`` or ``FILE:ARGS``: a Python file whose ``get_config()`` (or ``get_config(ARGS)``)
      returns a config (read by ml_collections' ``config_flags.ConfigFileFlagParser``).
    overrides: ``--config.FIELD=VALUE`` (read as the field's type: a tuple as ``5,3``),
      ``--config.FIELD`` (a boolean field: True) or ``--noconfig.FIELD`` (False).
    config_dir: a folder of config files, listed in the message when ``FILE`` does not exist.

  Raises:
    ConfigError: no such file, no ``get_config`` or one that fails, an unknown field or a value
      that does not parse; the message names the file or field.
  """
  path = source.split(":", 1)[0]  # Where ml_collections splits FILE:ARGS.
  if not os.path.isfile(path):
    listing = ""
    if config_dir:
      names = sorted(f for f in os.listdir(config_dir) if f.endswith(".py") and not f.startswith("_"))
      listing = f" Configs are in {config_dir}: {', '.join(names)}."
    raise ConfigError(f"config file {path!r} does not exist.{listing}")
  config = _read_config_file(source, path)
  for flag in overrides:
    _override(config, flag, os.path.basename(path))
  return config


def _read_config_file(source: str, path: str) -> ml_collections.ConfigDict:
  """The ``get_config()`` of an existing file, by ml_collections' config-file parser."""
  module = f"{_PARSER_NAME}_config"
  sys.modules.pop(module, None)  # Else the file would be run in the module of a file read before.
  try:
    with warnings.catch_warnings():  # ml_collections loads the file with importlib's deprecated load_module().
      warnings.filterwarnings("ignore", r"the load_module\(\) method is deprecated", DeprecationWarning)
      config = config_flags.ConfigFileFlagParser(_PARSER_NAME, lock_config=False).parse(source)
  except AttributeError as e:
    if e.name != "get_config":
      raise
    raise ConfigError(f"config file {path!r} has no get_config() function.") from None
  except (TypeError, ValueError) as e:  # ml_collections re-raises them with the traceback as the message.
    cause = e.__context__ or e
    call = f"get_config({source.split(':', 1)[1]!r})" if ":" in source else "get_config()"
    raise ConfigError(f"config file {path!r}: {call} failed: {type(cause).__name__}: "
                      f"{' '.join(str(cause).split()).rstrip('.')}.") from None
  finally:
    sys.modules.pop(module, None)
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"config file {path!r}: get_config() returned a {type(config).__name__}, not a ConfigDict.")
  return config


def _override(config: ml_collections.ConfigDict, flag: str, file: str) -> None:
  """Sets the field of ``--config.FIELD=VALUE``, ``--config.FIELD`` or ``--noconfig.FIELD``."""
  option, has_value, text = flag.partition("=")
  name = option.split(".", 1)[1]
  known = list(field_names(config))
  if name.startswith("model.overrides.") and "model.overrides" in known:
    if name.split(".", 2)[2] not in config.model.overrides:
      present = ", ".join(sorted(config.model.overrides.keys())) or "none"
      raise ConfigError(
          f"{option}: {file} sets no model attribute {name.split('.', 2)[2]!r} in config.model.overrides "
          f"(it sets: {present}). Attributes the config file does not set can only be added in a config "
          "file (config.model.overrides.NAME = VALUE).")
  elif name not in known and not any(k.startswith(name + ".") for k in known):
    raise ConfigError(unknown_field_message(name, known, f"from {option}, config {file}"))
  field_type = config_path.get_type(name, config)
  try:
    value = _parse(field_type, text if has_value else None, negate=option.startswith("--no"))
  except ValueError as e:
    raise ConfigError(f"{flag}: cannot set config.{name} ({field_type.__name__}): {str(e).rstrip('.')}.") from None
  config_path.set_value(name, config, value)


def _parse(field_type: type, text: str | None, negate: bool) -> Any:
  """The value of a field of ``field_type`` from the command line (``text`` None: no ``=VALUE``)."""
  if negate or (field_type is bool and text is None):
    if field_type is not bool or (negate and text is not None):
      raise ValueError("--noconfig.FIELD (no value) sets a boolean field to False")
    return not negate
  if text is None:
    raise ValueError("a value is needed: --config.FIELD=VALUE")
  if isinstance(field_type, type) and issubclass(field_type, ml_collections.ConfigDict):
    raise ValueError("it is a group of fields; set its fields one by one")
  if field_type not in _PARSERS:
    raise ValueError(f"only {', '.join(t.__name__ for t in _PARSERS)} fields can be set on the command line")
  try:
    value = _PARSERS[field_type].parse(text)
  except ValueError:
    if field_type is bool:  # absl's message is a tuple.
      raise ValueError("expected true or false") from None
    raise
  return list(value) if field_type is list else value


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


__all__ = ["MODEL_APIS", "PARALLEL_MODES", "check_config", "default_config", "field_names", "load_config",
           "profile_window", "unknown_field_message"]
