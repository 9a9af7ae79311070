"""benchmarks/probes/gpu_step.py: its dry run, its kernel classes and (slow) a timed run on the CPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from benchmarks.probes import gpu_step
from octflax import execution

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--model", "oct_resnet8", "--image-size", "32", "--batch", "4", "--num-classes", "10"]


def _probe(*args: str, timeout: int = 240) -> str:
  """Runs the probe in a fresh process (so that its imports are its own) and returns its output."""
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OUT="")
  result = subprocess.run([sys.executable, "-m", "benchmarks.probes.gpu_step", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stdout + result.stderr
  return result.stdout


@pytest.mark.slow  # a subprocess that lowers 17 train steps (about 15 s)
def test_dry_run_lowers_every_form_for_cuda_and_writes_nothing(tmp_path):
  out, results = tmp_path / "out", tmp_path / "rows.jsonl"
  text = _probe("--dry", *SMALL, "--skip", "alphas,b256", "--out", str(out), "--results", str(results))
  # What the GPU machine lacks is never imported.
  assert "imports: grain no, ml_collections no" in text
  lowered = {m[0]: int(m[1]) for m in re.findall(r"lowered oct_resnet8 (.+?)\s+convolutions\s+(\d+)", text)}
  forms = [str(execution.Form.parse(name)) for name in execution.PROBE_FORMS]
  assert forms and {"a=0 default", "a=0.5 default"} | {f"a=0.5 {f}" for f in forms} <= set(lowered)
  # Lowered for CUDA, the reference alpha .5 step runs four convolutions per OctConv; the GPU's
  # default form is the two-convolution form, with fewer; alpha 0 fewer still.
  assert lowered["a=0 default"] < lowered["a=0.5 two_convs"] == lowered["a=0.5 default"] < lowered[
      "a=0.5 reference"]
  assert lowered["a=0.5 two_convs+slices"] == lowered["a=0.5 two_convs"]
  assert re.search(r"dry run: \d+ cases lowered", text)
  assert not out.exists() and not results.exists()


HLO = """HloModule jit_step, entry_computation_layout={(bf16[8,4]{1,0})->f32[4]{0}}

%fused_reduce (param_0: bf16[8,4]) -> f32[4] {
  %param_0 = bf16[8,4]{1,0} parameter(0)
  %convert.1 = f32[8,4]{1,0} convert(%param_0)
  %constant.2 = f32[] constant(0)
  ROOT %reduce.3 = f32[4]{0} reduce(%convert.1, %constant.2), dimensions={0}, to_apply=%add
}

%fused_transpose (param_0.1: bf16[8,4]) -> bf16[4,8] {
  %param_0.1 = bf16[8,4]{1,0} parameter(0)
  ROOT %transpose.4 = bf16[4,8]{1,0} transpose(%param_0.1), dimensions={1,0}
}

%fused_add (param_0.2: bf16[8,4], param_1: bf16[8,4]) -> bf16[8,4] {
  %param_0.2 = bf16[8,4]{1,0} parameter(0)
  %param_1 = bf16[8,4]{1,0} parameter(1)
  ROOT %add.5 = bf16[8,4]{1,0} add(%param_0.2, %param_1)
}

ENTRY %main.9 (Arg_0.1: bf16[8,4]) -> f32[4] {
  %Arg_0.1 = bf16[8,4]{1,0} parameter(0)
  %custom-call.1 = (bf16[8,4]{1,0}, u8[0]{0}) custom-call(%Arg_0.1, %Arg_0.1), window={size=1}, custom_call_target="__cudnn$convForward", backend_config={"cudnn_conv_backend_config":{}}
  %custom-call.2 = (bf16[8,4]{1,0}, u8[0]{0}) custom-call(%Arg_0.1, %Arg_0.1), custom_call_target="__cudnn$convBackwardInput"
  %custom-call.3 = (bf16[8,4]{1,0}, u8[0]{0}) custom-call(%Arg_0.1, %Arg_0.1), custom_call_target="__cudnn$convBackwardFilter"
  %custom-call.4 = bf16[8,4]{1,0} custom-call(%Arg_0.1, %Arg_0.1), custom_call_target="__cublas$gemm"
  %loop_add_fusion = bf16[8,4]{1,0} fusion(%Arg_0.1, %Arg_0.1), kind=kLoop, calls=%fused_add
  %transpose_fusion = bf16[4,8]{1,0} fusion(%loop_add_fusion), kind=kLoop, calls=%fused_transpose
  ROOT %input_reduce_fusion = f32[4]{0} fusion(%loop_add_fusion), kind=kInput, calls=%fused_reduce
}
"""


def test_kernels_are_classed_by_the_optimized_hlo_and_idle_time_is_the_gaps():
  classes = gpu_step.classify_hlo(HLO)
  assert classes["custom-call.1"] == "conv forward" and classes["custom-call.2"] == "conv input-grad"
  assert classes["custom-call.3"] == "conv weight-grad" and classes["custom-call.4"] == "gemm"
  assert classes["loop_add_fusion"] == "loop fusion" and classes["transpose_fusion"] == "copy/transpose"
  assert classes["input_reduce_fusion"] == "reduction fusion"
  meta = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
          {"ph": "M", "pid": 1, "tid": 7, "name": "thread_name", "args": {"name": "Stream #7(Compute)"}},
          {"ph": "M", "pid": 1, "tid": 8, "name": "thread_name", "args": {"name": "XLA Ops"}},
          {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/host:CPU"}}]
  kernel = lambda ts, dur, op: {"ph": "X", "pid": 1, "tid": 7, "ts": ts, "dur": dur,
                                "args": {"hlo_op": op, "hlo_module": "jit_step"}}
  events = meta + [
      # two steps of 100 us each: 60 us of convolutions, 20 of a reduction, 20 idle
      kernel(0, 40, "custom-call.1"), kernel(50, 20, "custom-call.3"), kernel(80, 20, "input_reduce_fusion"),
      kernel(100, 40, "custom-call.1"), kernel(150, 20, "custom-call.3"), kernel(180, 20, "input_reduce_fusion"),
      # the derived "XLA Ops" line and host events are not kernels
      {"ph": "X", "pid": 1, "tid": 8, "ts": 0, "dur": 100, "name": "custom-call.1", "args": {"hlo_op": "custom-call.1"}},
      {"ph": "X", "pid": 2, "tid": 1, "ts": 0, "dur": 500, "name": "PjitFunction(step)"},
  ]
  table, ops = gpu_step.summarize_trace(events, HLO, steps=2)
  rows = {line[:20].strip(): line[20:].split() for line in table.splitlines()[1:-1]}
  assert rows["conv forward"] == ["0.040", "50.0%", "1.0"]
  assert rows["conv weight-grad"] == ["0.020", "25.0%", "1.0"]
  assert rows["reduction fusion"] == ["0.020", "25.0%", "1.0"]
  assert rows["all"] == ["0.080", "100.0%", "3.0"]
  assert "device span 0.100 ms/step" in table and "idle 20.0% of the span" in table
  assert ops[0] == (pytest.approx(0.04), 2, "conv forward", "custom-call.1")
  # Kernels that do not name their op (a cuDNN kernel's own name) are classed by the XLA Ops line.
  unnamed = [dict(e, name="sm90_xmma_fprop", args={}) if e.get("tid") == 7 else e for e in events]
  table, ops = gpu_step.summarize_trace(unnamed, HLO, steps=2)
  assert "classes from the XLA Ops line (0 of 6 kernels name their op); 3.0 kernels/step" in table
  assert ops == [(pytest.approx(0.05), 1, "conv forward", "custom-call.1")]


@pytest.mark.slow  # about a minute: compiles, times and profiles four small steps on the CPU
def test_timed_run_on_the_cpu_writes_rows_profiles_and_hlo(tmp_path):
  out, results = tmp_path / "out", tmp_path / "rows.jsonl"
  text = _probe(*SMALL, "--forms", "two_convs", "--skip", "vanilla,torch,alphas,b256", "--final-rounds", "2",
                "--budget", "300", "--out", str(out), "--results", str(results), timeout=600)
  rows = [json.loads(line) for line in results.read_text().splitlines()]
  assert [(r["alpha"], r["form"]) for r in rows] == [
      (0.0, "default"), (0.5, "default"), (0.5, "two_convs"), (0.5, "two_convs [cmdbuf]"), (0.0, "default [cmdbuf]"),
      (0.5, "two_convs [convfusion]")]
  for r in rows:
    assert tuple(r) == gpu_step.ROW_KEYS and r["framework"] == "octflax" and r["batch"] == 4 and r["median_ms"] > 0
  assert rows[0]["time_ratio_to_alpha0"] == 1.0
  assert rows[2]["time_ratio_to_alpha0"] == pytest.approx(rows[2]["median_ms"] / rows[0]["median_ms"], rel=1e-3)
  for name in ("oct_resnet8_a_0_default", "oct_resnet8_a_0.5_default", "oct_resnet8_a_0.5_two_convs"):
    assert (out / f"{name}.profile.txt").exists() and (out / f"{name}.hlo.txt.gz").exists()
  assert "kernels/step" in text and (out / "gpu_step.log").exists()
