"""The run plan (octflax.training.plan) and the layering it keeps: the config is read in one place,
checkpoints and errors sit below the training package, and the training package is small to import."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import octflax
from octflax import training
from octflax.checkpoint import ModelIdentity
from octflax.errors import ConfigError
from test_training import tiny_config, write_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "octflax"

# The functions that may take the config object: its definition and checks, the plan builder, the entry point.
CONFIG_READERS = {
    "training/config.py": {"default_config", "check_config", "field_names", "load_config", "_override"},
    "training/plan.py": {"plan_run", "data_settings", "to_json_dict"},
    "training/trainer.py": {"train_and_evaluate"},
}


def test_plan_numbers(tmp_path):
  write_fashion_mnist(tmp_path, n_train=40, n_test=9)
  config = tiny_config(tmp_path, num_epochs=3, warmup_epochs=0.5, learning_rate=0.2, eval_batch_size=16,
                       **{"data.validation_examples": 8})
  plan, splits = training.plan_run(config)
  assert (len(splits.train), len(splits.validation), len(splits.test)) == (32, 8, 9)
  assert plan.model == ModelIdentity(config.model.name, 0.25, 10, (28, 28, 1), data="fashion_mnist")
  b = plan.batch
  assert (b.global_batch, b.num_processes, b.devices_per_process, b.per_process, b.per_device) == (8, 1, 8, 8, 1)
  assert (plan.steps_per_epoch, plan.total_steps) == (4, 12)  # 32 examples / 8 per step, 3 epochs.
  assert (plan.eval_batch.global_batch, plan.eval_batch.per_process) == (16, 16)
  o = plan.optimization
  assert (o.warmup_steps, o.total_steps) == (2, 12)
  assert o.learning_rate == pytest.approx(0.2 * 8 / 256) and o.base_learning_rate == 0.2
  assert plan.data.dir == str(tmp_path) and plan.config["data"]["dir"] == str(tmp_path)
  with pytest.raises(dataclasses.FrozenInstanceError):
    plan.num_epochs = 4


def test_plan_refuses_a_batch_that_cannot_work(tmp_path):
  write_fashion_mnist(tmp_path, n_train=16, n_test=5)
  with pytest.raises(ConfigError, match=r"^batch_size 12 is not divisible by the number of devices 8"):
    training.plan_run(tiny_config(tmp_path, batch_size=12))
  with pytest.raises(ConfigError, match=r"^batch_size 24 is larger than the 16 training examples"):
    training.plan_run(tiny_config(tmp_path, batch_size=24))
  plan, _ = training.plan_run(tiny_config(tmp_path, **{"model.overrides": {"width": 3}}))
  with pytest.raises(ConfigError, match=r"^config\.model: model overrides: TinyCNN has no attribute\(s\) width"):
    plan.build_model()


def _functions(tree: ast.AST):
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      yield node


def test_only_the_plan_builder_and_the_entry_point_take_the_config():
  takers = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    name = str(path.relative_to(PACKAGE))
    source = path.read_text()
    for fn in _functions(ast.parse(source)):
      for arg in fn.args.args + fn.args.kwonlyargs:
        annotation = ast.get_source_segment(source, arg.annotation) if arg.annotation is not None else ""
        if "ConfigDict" in annotation:
          takers.setdefault(name, set()).add(fn.name)
    if "import ml_collections" in source:
      assert name in CONFIG_READERS, f"{name} imports ml_collections"
  for name, functions in takers.items():
    assert functions <= CONFIG_READERS.get(name, set()), (name, functions)
  assert takers["training/plan.py"] >= {"plan_run"} and takers["training/trainer.py"] == {"train_and_evaluate"}


def test_no_library_module_imports_the_training_package():
  for path in sorted(PACKAGE.rglob("*.py")):
    if path.relative_to(PACKAGE).parts[0] == "training":
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      names = []
      if isinstance(node, ast.ImportFrom) and node.module:
        names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
      elif isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      assert not any(n == "octflax.training" or n.startswith("octflax.training.") for n in names), path


def test_training_files_and_functions_stay_small():
  for path in sorted(PACKAGE.rglob("*.py")):
    name = str(path.relative_to(PACKAGE))
    lines = path.read_text().count("\n")
    limit = 300 if name.startswith("training/") else 10_000 if name == "functional.py" else 450
    assert lines <= limit, f"{name}: {lines} lines (limit {limit})"
  modules = sorted((PACKAGE / "training").glob("*.py"))
  assert len(modules) <= 12, [m.name for m in modules]
  for path in modules:
    for fn in _functions(ast.parse(path.read_text())):
      doc = fn.body[0] if ast.get_docstring(fn) is not None else None  # Docstring aside.
      lines = fn.end_lineno - fn.lineno + 1 - (doc.end_lineno - doc.lineno + 1 if doc else 0)
      assert lines <= 80, f"{path.name}: {fn.name} has {lines} lines"


def test_the_module_map_names_every_training_module():
  """docs/design.md's map of the training package has one line per module, and no module it lacks."""
  text = (ROOT / "docs" / "design.md").read_text()
  listed = set(re.findall(r"^- `(?:octflax/training/)?([a-z_]+)\.py`", text, flags=re.M))
  assert listed == {p.stem for p in (PACKAGE / "training").glob("*.py")}, listed


def test_the_public_training_api_is_curated():
  assert len(training.__all__) <= 20
  assert all(hasattr(training, name) for name in training.__all__)


def test_every_public_function_has_one_home():
  """A function is exported by the module that defines it (or its package), and may also be at the top."""
  homes = {}
  for info in pkgutil.iter_modules(octflax.__path__):
    if info.name.startswith("_"):
      continue
    module = importlib.import_module(f"octflax.{info.name}")
    for name in getattr(module, "__all__", []):
      obj = getattr(module, name)
      if callable(obj):
        homes.setdefault(id(obj), set()).add(f"octflax.{info.name}.{name}")
  shared = sorted(sorted(h) for h in homes.values() if len(h) > 1)
  assert not shared, shared
