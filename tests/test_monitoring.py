"""Watching a run (a theme over `reports` and `progress`): TensorBoard event files, the profile window,
device memory in the summary.

The event files are read back with TensorBoard's own readers (the `tensorboard`
package of the test extra): the accumulator of ``EventAccumulator`` and the one
TensorBoard's server uses (``plugin_event_accumulator``).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import octflax.errors
from octflax import cost, models, training
from octflax.training import progress as progress_lib
from octflax.training import reports
from test_training import TINY, tiny_config, write_fashion_mnist

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
plugin_event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.plugin_event_accumulator")


def run_config(data_dir: Path, **fields):
  # 32 training images in batches of 8: 4 steps an epoch, 2 epochs; a record every 2 steps.
  fields = {"num_epochs": 2, "log_every_steps": 2, "checkpoint_every_steps": 4, "keep_checkpoints": 5, **fields}
  return tiny_config(data_dir, **fields)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("monitoring_data")
  write_fashion_mnist(root, n_train=32, n_test=8)
  return root


@pytest.fixture(scope="module")
def profiled(tmp_path_factory, data_dir):
  """One run of 8 steps with a profile window on steps 3 and 4; its working directory and printed lines."""
  workdir = tmp_path_factory.mktemp("monitoring_run") / "run"
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    summary = training.train_and_evaluate(run_config(data_dir, profile_steps=(3, 2)), str(workdir))
  return workdir, summary, printed.getvalue()


def metrics_records(workdir: Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / reports.METRICS_FILE).read_text().splitlines()]


def expected_scalars(workdir: Path) -> dict[str, list[tuple[int, float]]]:
  """metrics.jsonl's records as (step, value) per TensorBoard tag, at float32 as event files store them."""
  out: dict[str, list[tuple[int, float]]] = {}
  for record in metrics_records(workdir):
    for tag, value in reports.tensorboard_scalars(record).items():
      out.setdefault(tag, []).append((record["step"], float(np.float32(value))))
  return out


def read_scalars(workdir: Path) -> dict[str, list[tuple[int, float]]]:
  """The scalars TensorBoard shows for ``workdir``, read by both of its accumulators (which must agree)."""
  legacy = event_accumulator.EventAccumulator(str(workdir), size_guidance={event_accumulator.SCALARS: 0})
  legacy.Reload()
  got = {tag: [(e.step, e.value) for e in legacy.Scalars(tag)] for tag in legacy.Tags()["scalars"]}
  server = plugin_event_accumulator.EventAccumulator(str(workdir), size_guidance={"tensors": 0})
  server.Reload()
  from tensorboard.util import tensor_util

  tensors = {tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in server.Tensors(tag)]
             for tag in server.Tags()["tensors"] if "/" in tag and not tag.endswith("text_summary")
             and not tag.startswith("_hparams_")}
  assert same(tensors, got)
  return got


def same(a: dict, b: dict) -> bool:
  """Equal (step, value) lists per tag, NaN equal to NaN."""
  if a.keys() != b.keys():
    return False
  return all(len(a[t]) == len(b[t]) and all(s == u and (v == w or (math.isnan(v) and math.isnan(w)))
                                             for (s, v), (u, w) in zip(a[t], b[t])) for t in a)


def test_event_files_hold_the_scalars_of_metrics_jsonl(profiled):
  workdir, _, _ = profiled
  assert len(list(workdir.glob("events.out.tfevents.*"))) == 1
  got = read_scalars(workdir)
  want = expected_scalars(workdir)
  assert same(got, want), (got, want)
  assert set(got) == {"train/loss", "train/accuracy", "train/grad_norm", "train/learning_rate",
                      "train/images_per_second", "train/epoch_loss", "train/epoch_accuracy", "test/loss",
                      "test/accuracy", "test/top5_accuracy"}
  assert [step for step, _ in got["train/loss"]] == [2, 4, 6, 8]
  assert [step for step, _ in got["test/accuracy"]] == [4, 8]
  last_eval = [r for r in metrics_records(workdir) if r["kind"] == "eval"][-1]
  assert got["test/loss"][-1][1] == pytest.approx(last_eval["test_loss"], rel=1e-7)


def test_event_files_hold_the_config_and_the_models_cost(profiled):
  workdir, summary, _ = profiled
  accumulator = event_accumulator.EventAccumulator(str(workdir), size_guidance={event_accumulator.TENSORS: 0})
  accumulator.Reload()
  config_text = accumulator.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
  assert config_text.startswith("```json\n") and config_text.endswith("\n```")
  assert json.loads(config_text[len("```json\n"):-len("\n```")]) == summary["config"]
  model_text = accumulator.Tensors("model/text_summary")[0].tensor_proto.string_val[0].decode()
  assert f"| params | {summary['params']:,} |" in model_text
  assert f"| macs_per_image | {summary['macs_per_image']:,} |" in model_text

  from tensorboard.plugins.hparams import plugin_data_pb2

  content = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
  hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
  assert hparams["model.name"].string_value == TINY
  assert hparams["model.alpha"].number_value == 0.25
  assert hparams["batch_size"].number_value == 8
  assert hparams["params"].number_value == summary["params"]
  assert hparams["macs_per_image"].number_value == summary["macs_per_image"]


def test_summary_has_the_models_cost_and_the_devices_peak_memory(profiled):
  workdir, summary, _ = profiled
  report = cost.analyze(models.get_model(TINY, alpha=0.25, num_classes=10), (1, 28, 28, 1))
  assert summary["params"] == report.params == 98
  assert summary["macs_per_image"] == report.macs == 28_264
  assert summary["gmacs_per_image"] == pytest.approx(28_264e-9)
  reported = {str(d): d.memory_stats() for d in jax.local_devices()[:1]}
  if all(stats is None for stats in reported.values()):  # CPU: the backend reports no memory.
    assert summary["peak_bytes_per_device"] is None
  else:
    assert set(summary["peak_bytes_per_device"]) == set(reported)
    assert all(v > 0 for v in summary["peak_bytes_per_device"].values())
  assert json.loads((workdir / reports.SUMMARY_FILE).read_text())["macs_per_image"] == 28_264


def test_peak_memory_is_read_per_device_where_the_backend_reports_it():
  class Device:
    def __init__(self, name, stats, process_index=0):
      self.name, self.stats, self.process_index = name, stats, process_index

    def __str__(self):
      return self.name

    def memory_stats(self):
      return self.stats

  gpus = [Device("cuda:0", {"bytes_in_use": 10, "peak_bytes_in_use": 3_000_000}),
          Device("cuda:1", {"bytes_in_use": 10, "peak_bytes_in_use": 5_000_000}),
          Device("cuda:2", {"peak_bytes_in_use": 7}, process_index=1)]  # Another process's: not readable here.
  assert reports.peak_memory_bytes(gpus) == {"cuda:0": 3_000_000, "cuda:1": 5_000_000}
  assert reports.peak_memory_bytes([Device("cpu:0", None), Device("cpu:1", {})]) is None


def test_profile_window_traces_its_steps_and_says_where(profiled):
  workdir, _, printed = profiled
  traces = list((workdir / progress_lib.PROFILE_DIR / "plugins" / "profile").glob("*/*.xplane.pb"))
  assert len(traces) == 1 and b"train_step" in traces[0].read_bytes()
  directory = workdir / progress_lib.PROFILE_DIR
  assert f"profile of steps 3 to 4 written to {directory}; open it with: pip install xprof && " \
         f"xprof --logdir {directory}" in printed.splitlines()
  for trace in traces[0].parent.glob("*.trace.json.gz"):  # The same trace as JSON, where the profiler writes it.
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    calls = [e for e in events if e.get("ph") == "X" and e.get("name", "").startswith("$")
             and e["name"].endswith(" train_step") and "parallel.py" in e["name"]]
    assert len(calls) == 2  # DataParallel.train_step of steps 3 and 4, no other.


@pytest.mark.parametrize("value, message", [
    ((1, 3), r"START >= 2 \(step 1 compiles the train step\)"),
    ((5, 0), r"COUNT >= 1"),
    ((5,), r"must be START,COUNT"),
    ((5, 3, 1), r"must be START,COUNT"),
    ((7, 3), r"asks for steps 7 to 9, but the run has 8 steps"),
])
def test_bad_profile_steps_stop_the_run_before_anything_is_written(tmp_path, data_dir, value, message):
  with pytest.raises(octflax.errors.ConfigError, match=message):
    training.train_and_evaluate(run_config(data_dir, profile_steps=value), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


class Crash(Exception):
  pass


def test_a_resumed_run_shows_every_step_once_with_the_resumed_values(tmp_path, data_dir, monkeypatch):
  config = run_config(data_dir)  # profile_steps off.
  dispatched = progress_lib.StepReporter.dispatched

  def dispatched_then_crash(self, step, metrics):
    dispatched(self, step, metrics)
    if step == 7:  # After the checkpoint of step 4 and the record of step 6.
      self.finish()
      raise Crash

  monkeypatch.setattr(progress_lib.StepReporter, "dispatched", dispatched_then_crash)
  workdir = tmp_path / "run"
  with pytest.raises(Crash):
    training.train_and_evaluate(config, str(workdir))
  monkeypatch.undo()
  crashed = {r["step"]: r for r in metrics_records(workdir) if r["kind"] == "train"}
  assert sorted(crashed) == [2, 4, 6]

  summary = training.train_and_evaluate(config, str(workdir))
  assert summary["resumed_from_step"] == 4
  assert len(list(workdir.glob("events.out.tfevents.*"))) == 2
  got, want = read_scalars(workdir), expected_scalars(workdir)
  assert same(got, want), (got, want)
  assert [step for step, _ in got["train/loss"]] == [2, 4, 6, 8]
  assert [step for step, _ in got["test/accuracy"]] == [4, 8]
  # Step 6 shows the resumed run's images/s (equal to metrics.jsonl, above), not the crashed run's.
  shown = [(6, dict(got["train/images_per_second"])[6])]
  assert not same({"rate": shown}, {"rate": [(6, float(np.float32(crashed[6]["images_per_second"])))]})
  assert not (workdir / progress_lib.PROFILE_DIR).exists()


def test_bad_profile_steps_on_the_command_line_exit_2_with_one_line(tmp_path):
  root = Path(__file__).resolve().parent.parent
  result = subprocess.run([sys.executable, "-m", "experiments.train", f"--workdir={tmp_path / 'run'}",
                           "--config.profile_steps=1,3"], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines() == [
      "error: config.profile_steps must be START,COUNT (e.g. --config.profile_steps=5,3: a trace of steps 5 to 7) "
      "with START >= 2 (step 1 compiles the train step) and COUNT >= 1, or 0 (off); got (1, 3)."]
  assert not (tmp_path / "run").exists()


def test_a_sweep_merges_earlier_runs_whatever_their_profile_window():
  from experiments import sweep

  earlier = {"alpha": 0.5, "seed": 0, "config": {"seed": 0, "model": {"name": "m", "alpha": 0.5}, "batch_size": 8}}
  now = {"alpha": 0.25, "seed": 0, "config": {"seed": 0, "model": {"name": "m", "alpha": 0.25}, "batch_size": 8,
                                              "profile_steps": [5, 3]}}
  sweep.check_same_recipe([earlier], [now])  # No difference that changes results.
  with pytest.raises(SystemExit, match="batch_size: 8 then, 16 now"):
    sweep.check_same_recipe([earlier], [{**now, "config": {**now["config"], "batch_size": 16}}])
