"""The training config (octflax.training.config): its fields and checks, config files, command-line overrides.

None of these tests trains or imports jax itself; the runs of the real command line are in
test_training_cli.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from octflax.errors import ConfigError
from octflax.training.config import (
    PARALLEL_MODES, check_config, default_config, field_names, load_config, profile_window)

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p for p in (ROOT / "experiments" / "configs").glob("*.py") if not p.name.startswith("_"))
MAIN = str(ROOT / "experiments" / "configs" / "fashion_mnist.py")


def write_config(path: Path, body: str) -> str:
  path.write_text("from octflax.training import default_config\n\n\n" + body)
  return str(path)


def test_a_config_files_defaults_import_no_jax():
  """A config file's ``from octflax.training import default_config``, and reading every config file."""
  code = ("import sys\n"
          "from octflax.training import default_config\n"
          "default_config()\n"
          "from octflax.training.config import load_config\n"
          f"for path in {[str(p) for p in CONFIGS]!r}:\n"
          "  load_config(path, ['--config.batch_size=64', '--noconfig.progress_bar'])\n"
          "print(sorted(m for m in ('jax', 'orbax', 'grain', 'flax') if m in sys.modules))\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_file_loads_and_passes_the_checks(path):
  config = load_config(str(path))
  check_config(config)
  assert list(field_names(config)) == list(field_names(default_config()))
  assert not config.is_locked


def test_overrides_are_read_as_their_fields_type(tmp_path):
  source = write_config(tmp_path / "c.py", (
      "def get_config():\n"
      "  config = default_config()\n"
      "  config.model.overrides.stage_sizes = (1, 1)\n"
      "  config.model.overrides.stem_features = 4\n"
      "  return config\n"))
  config = load_config(source, [
      "--config.batch_size=64", "--config.learning_rate=1", "--config.model.name=oct_resnet8",
      "--config.data.dir=/data/x=y", "--config.profile_steps=5,3", "--noconfig.progress_bar",
      "--config.half_precision", "--config.nesterov=false", "--config.model.overrides.stage_sizes=2,2,2",
      "--config.model.overrides.stem_features=8", "--config.warmup_epochs=0.5"])
  assert config.batch_size == 64 and type(config.batch_size) is int
  assert config.learning_rate == 1.0 and type(config.learning_rate) is float
  assert (config.model.name, config.data.dir) == ("oct_resnet8", "/data/x=y")
  assert config.profile_steps == (5, 3)
  assert (config.progress_bar, config.half_precision, config.nesterov) == (False, True, False)
  assert config.model.overrides.to_dict() == {"stage_sizes": (2, 2, 2), "stem_features": 8}
  assert config.warmup_epochs == 0.5
  # One integer is a tuple of one: '0' turns the profile window off.
  assert load_config(MAIN, ["--config.profile_steps=0"]).profile_steps == (0,)
  for text, value in (("true", True), ("1", True), ("False", False), ("0", False)):
    assert load_config(MAIN, [f"--config.progress_bar={text}"]).progress_bar is value


def test_the_last_override_of_a_field_wins():
  assert load_config(MAIN, ["--config.seed=1", "--config.seed=2"]).seed == 2


@pytest.mark.parametrize("flag, message", [
    ("--config.batchsize=3", r"^unknown config field 'batchsize' \(from --config.batchsize, config fashion_mnist.py\)\. "
                             r"Did you mean 'batch_size' or 'eval_batch_size'\? The fields are: batch_size, "),
    ("--config.modle.alpha=0.5", r"^unknown config field 'modle.alpha' .*Did you mean 'model.alpha' or 'model.api'\?"),
    ("--config.model.items=1", r"^unknown config field 'model.items'"),
    ("--config.batch_size=abc", r"^--config.batch_size=abc: cannot set config.batch_size \(int\): invalid literal"),
    ("--config.batch_size=0.5", r"^--config.batch_size=0.5: cannot set config.batch_size \(int\)"),
    ("--config.learning_rate=fast", r"^--config.learning_rate=fast: cannot set config.learning_rate \(float\)"),
    ("--config.progress_bar=maybe", r"^--config.progress_bar=maybe: cannot set config.progress_bar \(bool\): "
                                    r"expected true or false\.$"),
    ("--config.batch_size", r"^--config.batch_size: cannot set config.batch_size \(int\): a value is needed: "
                            r"--config.FIELD=VALUE\.$"),
    ("--noconfig.batch_size", r"^--noconfig.batch_size: cannot set config.batch_size \(int\): --noconfig.FIELD "
                              r"\(no value\) sets a boolean field to False\.$"),
    ("--noconfig.progress_bar=true", r"^--noconfig.progress_bar=true: cannot set config.progress_bar \(bool\)"),
    ("--config.model=3", r"^--config.model=3: cannot set config.model \(ConfigDict\): it is a group of fields; set "
                         r"its fields one by one\.$"),
    ("--config.profile_steps=a b", r"^--config.profile_steps=a b: cannot set config.profile_steps \(tuple\): "
                                   r"Error while parsing string"),
    ("--config.model.overrides.widths=4,8", r"^--config.model.overrides.widths: fashion_mnist.py sets no model "
                                            r"attribute 'widths' in config.model.overrides \(it sets: none\)\. "
                                            r"Attributes the config file does not set can only be added in a "
                                            r"config file \(config.model.overrides.NAME = VALUE\)\.$"),
])
def test_a_bad_override_is_one_line_naming_the_field(flag, message):
  with pytest.raises(ConfigError, match=message) as error:
    load_config(MAIN, [flag])
  assert "\n" not in str(error.value)


def test_load_config_leaves_the_checks_to_check_config():
  config = load_config(MAIN, ["--config.batch_size=0"])  # Read, not checked: plan_run checks it once.
  assert config.batch_size == 0
  with pytest.raises(ConfigError, match=r"^config.batch_size must be an integer >= 1; got 0\.$"):
    check_config(config)


def test_a_missing_config_file_is_named_with_the_configs_there(tmp_path):
  with pytest.raises(ConfigError, match=r"^config file '.*nope.py' does not exist\.$"):
    load_config(str(tmp_path / "nope.py"))
  (tmp_path / "a.py").write_text("")
  (tmp_path / "_private.py").write_text("")
  with pytest.raises(ConfigError, match=rf"^config file 'nope.py' does not exist\. Configs are in "
                                        rf"{re.escape(str(tmp_path))}: a.py\.$"):
    load_config("nope.py:x", config_dir=str(tmp_path))  # FILE:ARGS names FILE.


def test_config_files_without_get_config_or_with_arguments(tmp_path):
  with_args = write_config(tmp_path / "args.py", (
      "def get_config(alpha):\n"
      "  config = default_config()\n"
      "  config.model.alpha = float(alpha)\n"
      "  return config\n"))
  assert load_config(f"{with_args}:0.5").model.alpha == 0.5
  with pytest.raises(ConfigError, match=r"^config file '.*args.py': get_config\(\) failed: TypeError: .*argument"):
    load_config(with_args)
  plain = write_config(tmp_path / "plain.py", "def get_config():\n  return default_config()\n")
  with pytest.raises(ConfigError, match=r"^config file '.*plain.py': get_config\('x'\) failed: TypeError: "):
    load_config(f"{plain}:x")
  # A file without get_config, read after one that has it, is not confused with it.
  (tmp_path / "empty.py").write_text("ALPHA = 0.5\n")
  with pytest.raises(ConfigError, match=r"^config file '.*empty.py' has no get_config\(\) function\.$"):
    load_config(str(tmp_path / "empty.py"))
  (tmp_path / "none.py").write_text("def get_config():\n  return None\n")
  with pytest.raises(ConfigError, match=r"get_config\(\) returned a NoneType, not a ConfigDict"):
    load_config(str(tmp_path / "none.py"))


def test_unknown_field_in_a_config_file_is_refused():
  config = default_config()
  config.lerning_rate = 0.1
  with pytest.raises(ConfigError, match=r"^unknown config field 'lerning_rate' \(in the config file\)\. Did you mean "
                                        r"'learning_rate'\?"):
    check_config(config)


def test_a_config_that_lacks_fields_is_refused():
  config = default_config()
  del config.data["num_threads"]
  with pytest.raises(ConfigError, match=r"^config fields missing: data.num_threads\. Start config files from "):
    check_config(config)


@pytest.mark.parametrize("field, value, message", [
    ("model.api", "haiku", r"config.model.api must be 'linen' or 'nnx'; got 'haiku'\."),
    ("parallel", "pjit", r"config.parallel must be 'jit' or 'pmap'; got 'pjit'\."),
    ("data.name", "mnist", r"config.data.name must be one of 'cifar10', .*'synthetic'; got 'mnist'\."),
    ("batch_size", 0, r"config.batch_size must be an integer >= 1; got 0\."),
    ("eval_batch_size", -1, r"config.eval_batch_size must be an integer >= 0 \(0 = batch_size\); got -1\."),
    ("data.num_threads", 1.5, r"config.data.num_threads must be an integer >= 0; got 1.5\."),
    ("learning_rate", 0.0, r"config.learning_rate must be > 0; got 0.0\."),
    ("label_smoothing", 1.0, r"config.label_smoothing must be in \[0, 1\); got 1.0\."),
    ("momentum", -0.1, r"config.momentum must be in \[0, 1\); got -0.1\."),
    ("profile_steps", (1, 3), r"config.profile_steps must be START,COUNT .*; got \(1, 3\)\."),
])
def test_values_out_of_their_range_are_refused(field, value, message):
  config = default_config()
  *parents, last = field.split(".")
  node = config
  for part in parents:
    node = node[part]
  with node.unlocked(), node.ignore_type():
    node[last] = value
  with pytest.raises(ConfigError, match="^" + message + "$"):
    check_config(config)


def test_parallel_modes_and_model_apis_are_the_checked_ones():
  assert PARALLEL_MODES == ("jit", "pmap")
  check_config(default_config())


def test_profile_window_values():
  assert profile_window((0, 0)) is None
  assert profile_window((0,)) is None
  assert profile_window(0) is None
  assert profile_window([5, 3], total_steps=7) == (5, 7)
  with pytest.raises(ConfigError, match="got 'a'"):
    profile_window("a")
  with pytest.raises(ConfigError, match=r"^config.profile_steps 5,3 asks for steps 5 to 7, but the run has 6 steps\.$"):
    profile_window((5, 3), total_steps=6)
  with pytest.raises(ConfigError, match="got \\(5, True\\)"):
    profile_window((5, True))
