"""The Oct-ResNet-50 train step on one GPU: execution forms, XLA options, PyTorch peers, profiles.

On the GPU machine, from the repository root (one NVIDIA H200; about 8 of the 10 minutes):

  PYTHONPATH=. timeout 570 python -m benchmarks.probes.gpu_step --budget 420 \\
      --out "$OUT" --results "$OUT/train_step.jsonl"

One process. Each case is compiled in turn and timed round-robin with the cases compiled before
it; every line is printed and flushed as it comes, with the seconds since start. After
``--budget`` seconds no new case is compiled (nor one the compile times so far say would end
past it); the profiles and the final timing rounds still run, and a run cut short (SIGINT,
SIGTERM) writes what it measured. Compiles go to a persistent compilation cache (``--cache``,
default OUT/jax_cache) with XLA's per-fusion autotune cache inside it.

Every case is a full train step (forward, backward, SGD with Nesterov momentum, BatchNorm
statistics; bfloat16 compute, float32 parameters; batch 128, 224 x 224, 1000 classes; the state
donated and kept in the layouts XLA chooses, as `octflax.training.DataParallel` keeps it). In
order: Oct-ResNet-50 at alpha 0 and .5 as shipped (form "default": the device's own,
`octflax.execution.form_for`, as the trainer traces its step); the PyTorch peers when torch has CUDA (`torch_reference.OctResNet`
at alpha 0 and .5 and torchvision's ResNet-50, bf16 autocast, channels_last); alpha .5 in each of
`octflax.execution.PROBE_FORMS`; ResNet-50 written with `flax.linen.Conv`; then, while the budget
lasts, the fastest alpha .5 form and alpha 0 with command buffers that capture convolutions
(form "NAME [cmdbuf]", when this XLA knows the option), alpha .25 and .75 (as shipped and in the
fastest form), batch 256, and XLA's experimental convolution fusion ("[convfusion]").

It prints each case when ready (compile time, device peak memory), the running medians and the
ratio to alpha 0 after each, a kernel-class table for alpha 0, alpha .5 as shipped and the fastest
alpha .5 form (ms per step in convolution forward / input-gradient / weight-gradient kernels,
gemms, reduction fusions, loop fusions, copies and transposes, other; kernels per step; the
share of the step the device is idle), and a final table. One JSON line per timed case (keys:
`ROW_KEYS`) is appended to ``--results`` (default benchmarks/results/gpu/train_step.jsonl); OUT
gets the log, each profiled case's table, per-op times and optimized HLO (gzipped), and after
every round the rows so far (train_step.partial.jsonl: what is left if XLA aborts the process).

  python -m benchmarks.probes.gpu_step --dry [--model oct_resnet8 --image-size 32 --batch 4]

lowers every case for CUDA on any host, without compiling, and prints its number of
convolutions and of StableHLO ops; it writes nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gzip
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental.layout import Format, Layout

from benchmarks import networks
from octflax import execution

ROW_KEYS = ("framework", "device", "jax", "date", "model", "alpha", "form", "batch", "dtype", "median_ms",
            "time_ratio_to_alpha0", "peak_bytes")
DEFAULT_RESULTS = os.path.join("benchmarks", "results", "gpu", "train_step.jsonl")
# XLA:GPU's command buffers (CUDA graphs) with convolutions among the captured commands; without
# CONVOLUTION the cuDNN convolutions split the step into many short graphs.
CMDBUF = ("xla_gpu_enable_command_buffer", "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,CONVOLUTION")
CONV_FUSION = ("xla_gpu_experimental_enable_conv_fusion", True)
AUTOTUNE_CACHE_FLAG = "xla_gpu_per_fusion_autotune_cache_dir"
TX = optax.sgd(0.1, momentum=0.9, nesterov=True)

_T0 = time.time()
_LOG: list[Any] = []  # the open log file, once there is one


def say(*parts: Any) -> None:
  """Prints one line with the seconds since start, flushed, and copies it to the log."""
  line = f"[{time.time() - _T0:6.1f}s] " + " ".join(str(p) for p in parts)
  print(line, flush=True)
  for f in _LOG:
    f.write(line + "\n")
    f.flush()


def slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")


# ----------------------------------------------------------------------------- cases


@dataclasses.dataclass
class Case:
  """One timed train step."""

  label: str
  model: str  # the row's model name
  alpha: float
  form: str  # the row's form: "default", a form name, or either with " [option]"
  batch: int
  framework: str = "octflax"
  use: str | None = None  # the form traced under execution.use_form (None: no use_form)
  options: dict[str, Any] | None = None  # XLA compile options
  run: Callable[[], None] | None = None  # one step, returning when the device is done
  run_async: Callable[[], None] | None = None  # one step, returning once dispatched
  times: list[float] = dataclasses.field(default_factory=list)
  peak: int | None = None
  compile_s: float = 0.0
  hlo: str | None = None  # optimized HLO (octflax cases)
  convolutions: int = 0  # stablehlo.convolution ops in the lowered step

  @property
  def median_ms(self) -> float | None:
    return statistics.median(self.times) * 1e3 if self.times else None


def form_context(name: str | None, platform: str):
  """``name``'s form, or (None) ``platform``'s own, as the trainer traces its step (`execution.form_for`)."""
  return execution.use_form(name or execution.form_for(platform))


def make_step(net: Any) -> Callable:
  """The train step: forward, loss, gradient, SGD-Nesterov update, new BatchNorm statistics.

  `octflax.training.train_step` (which `benchmarks.benchmark` times) is not used here:
  importing `octflax.training` imports its config (ml_collections) and data (grain) modules,
  which the GPU machine lacks; and this probe lowers without compiling (--dry) and compiles
  with per-case options and forms.
  """

  def step(state, images, labels):
    def loss_fn(params):
      logits, updates = net.apply({"params": params, "batch_stats": state["batch_stats"]}, images,
                                  train=True, mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()
      return loss, updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt = TX.update(grads, state["opt"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "batch_stats": batch_stats,
            "opt": opt}, loss

  return step


def count_ops(stablehlo: str) -> tuple[int, int]:
  """(stablehlo.convolution ops, all StableHLO/CHLO ops) in a lowered module's text."""
  ops = re.findall(r"(?:^|[\s\"=])(?:stablehlo|chlo)\.([a-z_]+)", stablehlo)
  return sum(op == "convolution" for op in ops), len(ops)


class Builder:
  """Lowers and (off --dry) compiles the octflax cases; keeps one initialisation per network."""

  def __init__(self, args: argparse.Namespace):
    self.args = args
    self.inits: dict[Any, Any] = {}
    self.init_options: dict[str, Any] | None = None
    rng = np.random.default_rng(0)
    self.data: dict[int, tuple[Any, Any]] = {}
    self.rng = rng

  def batch(self, n: int):
    if n not in self.data:
      s = self.args.image_size
      images = self.rng.standard_normal((n, s, s, 3), dtype=np.float32)  # never zeros
      labels = self.rng.integers(0, self.args.num_classes, n).astype(np.int32)
      self.data[n] = (jnp.asarray(images), jnp.asarray(labels)) if not self.args.dry else \
          (jax.ShapeDtypeStruct(images.shape, jnp.float32), jax.ShapeDtypeStruct(labels.shape, jnp.int32))
    return self.data[n]

  def build(self, case: Case) -> None:
    args = self.args
    start = time.time()
    net = networks.build_model(case.model, case.alpha, args.num_classes, jnp.bfloat16)
    images, labels = self.batch(case.batch)
    one = jax.ShapeDtypeStruct((1, args.image_size, args.image_size, 3), jnp.float32)
    init = lambda x: net.init(jax.random.key(0), x, train=False)
    platform = "cuda" if args.dry and args.dry_platform == "cuda" else jax.default_backend()
    with form_context(case.use, platform):
      shapes = jax.eval_shape(init, one)
      spec = {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {}),
              "opt": jax.eval_shape(TX.init, shapes["params"])}
      auto = Format(Layout.AUTO)  # the state's layouts chosen by XLA, as the trainer's step
      traced = jax.jit(make_step(net), donate_argnums=0, in_shardings=(auto, None, None),
                       out_shardings=(auto, None)).trace(spec, images, labels)
      platforms = (platform,) if platform == "cuda" and args.dry else None
      lowered = traced.lower(lowering_platforms=platforms) if platforms else traced.lower()
      case.convolutions, ops = count_ops(lowered.as_text())
      if args.dry:
        say(f"lowered {case.label:<44} convolutions {case.convolutions:4d}  ops {ops:6d}  "
            f"({time.time() - start:.1f} s)")
        return
      variables = self.initial_variables(case, net, shapes)
    state = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    state = jax.tree.map(jnp.copy, state)  # the step donates its state: each case owns its copy
    state["opt"] = jax.jit(TX.init)(state["params"])
    compiled = lowered.compile(case.options)
    case.hlo = compiled.as_text()
    holder = {"state": jax.device_put(state, compiled.input_formats[0][0], donate=True)}

    def run_async():
      holder["state"], holder["loss"] = compiled(holder["state"], images, labels)

    def run():
      run_async()
      # One executable on one stream: its outputs are ready together.
      jax.block_until_ready((holder["loss"], jax.tree.leaves(holder["state"]["params"])[-1]))

    for _ in range(2):
      run()
    case.run, case.run_async = run, run_async
    case.compile_s = time.time() - start
    case.peak = peak_device_bytes()
    footprint = ""
    try:
      m = compiled.memory_analysis()
      footprint = f", compiled footprint {(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes) / 2**30:.2f} GiB"
    except Exception:  # noqa: BLE001 - not every backend reports it
      pass
    say(f"ready {case.label}: compile+init+2 steps {case.compile_s:.1f} s, {case.convolutions} convolutions "
        f"lowered, device peak so far {fmt_gib(case.peak)}{footprint}")

  def initial_variables(self, case: Case, net: Any, shapes: Any) -> Any:
    """The network's initial variables (real values, batch-1 init compiled without autotuning)."""
    key = (case.model, case.alpha, jax.tree.structure(shapes),
           tuple((a.shape, str(a.dtype)) for a in jax.tree.leaves(shapes)))
    if key not in self.inits:
      if self.init_options is None:
        self.init_options = accepted({"xla_gpu_autotune_level": 0}) or {}
      x = jnp.asarray(self.rng.standard_normal((1, self.args.image_size, self.args.image_size, 3),
                                               dtype=np.float32))
      init = jax.jit(lambda x: net.init(jax.random.key(0), x, train=False))
      self.inits[key] = init.lower(x).compile(self.init_options or None)(x)
    return self.inits[key]


def peak_device_bytes() -> int | None:
  try:
    return (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
  except Exception:  # noqa: BLE001
    return None


def fmt_gib(n: int | None) -> str:
  return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def accepted(options: dict[str, Any]) -> dict[str, Any] | None:
  """``options`` when this XLA knows every one of them (`octflax.execution.xla_accepts`), else None."""
  for name, value in options.items():
    try:
      if not execution.xla_accepts(name, value):
        return None
    except Exception as e:  # noqa: BLE001 - a failed check leaves the option out
      say(f"option {name}={value!r}: check failed: {e!r}"[:300])
      return None
  return options


# ----------------------------------------------------------------------------- PyTorch peers


def torch_cases(args: argparse.Namespace) -> list[Case]:
  """The PyTorch peers as cases, or [] with a printed reason."""
  from benchmarks import torch_reference  # noqa: PLC0415 - torch is optional

  torch = torch_reference.torch
  if torch is None:
    say("torch peers: skipped (torch is not installed)")
    return []
  if args.model not in torch_reference.LAYERS:
    say(f"torch peers: skipped (benchmarks.torch_reference has no {args.model})")
    return []
  if not args.dry and not torch.cuda.is_available():
    say(f"torch peers: skipped (torch {torch.__version__} sees no CUDA device)")
    return []
  cases = [Case(f"torch {args.model} a={a:g}", f"torch_{args.model}", a, "default", args.batch, "torch")
           for a in (0.0, 0.5)]
  cases.append(Case("torchvision resnet50", "torchvision_resnet50", 0.0, "default", args.batch, "torch"))
  say(f"torch {torch.__version__}: {len(cases)} peers (bf16 autocast, channels_last, cudnn.benchmark)")
  return cases


def torch_network(case: Case, args: argparse.Namespace):
  from benchmarks import torch_reference  # noqa: PLC0415

  if case.model == "torchvision_resnet50":
    try:
      import torchvision  # noqa: PLC0415

      return torchvision.models.resnet50(weights=None, num_classes=args.num_classes), "torchvision"
    except ImportError:
      return torch_reference.TVResNet("oct_resnet50", args.num_classes), "torch_reference.TVResNet"
  return torch_reference.OctResNet(args.model, case.alpha, args.num_classes), "torch_reference.OctResNet"


def build_torch(case: Case, args: argparse.Namespace) -> None:
  from benchmarks import torch_reference  # noqa: PLC0415

  torch = torch_reference.torch
  F = torch.nn.functional
  start = time.time()
  net, source = torch_network(case, args)
  if args.dry:
    say(f"built {case.label:<44} ({source}, {sum(p.numel() for p in net.parameters())} parameters; not run in --dry)")
    return
  torch.backends.cudnn.benchmark = True
  net = net.cuda().to(memory_format=torch.channels_last).train()
  opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True)
  gen = torch.Generator(device="cuda").manual_seed(0)
  s = args.image_size
  images = torch.randn((case.batch, 3, s, s), device="cuda", generator=gen).to(memory_format=torch.channels_last)
  labels = torch.randint(0, args.num_classes, (case.batch,), device="cuda", generator=gen)

  def run():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
      loss = F.cross_entropy(net(images), labels)
    loss.backward()
    opt.step()
    torch.cuda.synchronize()

  torch.cuda.synchronize()
  torch.cuda.reset_peak_memory_stats()
  for _ in range(3):  # cudnn.benchmark picks its algorithms in the first step
    run()
  case.run = case.run_async = run
  case.peak = torch.cuda.max_memory_allocated()
  case.compile_s = time.time() - start
  say(f"ready {case.label} ({source}): 3 warm-up steps {case.compile_s:.1f} s, peak {fmt_gib(case.peak)}")


# ----------------------------------------------------------------------------- optimized HLO -> kernel classes

KERNEL_CLASSES = ("conv forward", "conv input-grad", "conv weight-grad", "conv fused", "gemm", "reduction fusion",
                  "loop fusion", "copy/transpose", "other", "not in HLO")
_MOVES = {"copy", "transpose", "reshape", "bitcast", "slice", "concatenate", "pad", "broadcast", "reverse",
          "dynamic-slice", "dynamic-update-slice", "parameter", "constant", "get-tuple-element", "tuple",
          "iota", "convert"}


def _opcode(rest: str) -> tuple[str, str]:
  """(opcode, text after it) of an instruction's right-hand side ``SHAPE opcode(...), attrs``."""
  i = 0
  if rest.startswith("("):  # a tuple shape
    depth = 0
    for i, ch in enumerate(rest):
      depth += (ch == "(") - (ch == ")")
      if depth == 0:
        break
    i += 1
  else:
    i = rest.find(" ")
  m = re.match(r"\s*([a-z][\w\-]*)\((.*)$", rest[max(i, 0):])
  return (m.group(1), m.group(2)) if m else ("", rest)


def parse_hlo(hlo: str) -> dict[str, dict[str, tuple[str, str]]]:
  """computation -> instruction -> (opcode, rest of the line) of an optimized HLO module's text."""
  comps: dict[str, dict[str, tuple[str, str]]] = {}
  current = None
  for line in hlo.splitlines():
    if not line.strip():
      continue
    if not line[0].isspace():
      m = re.match(r"^(?:ENTRY\s+)?%?([^\s(]+)", line)
      current = m.group(1) if m and line.rstrip().endswith("{") else None
      if current:
        comps[current] = {}
      continue
    m = re.match(r"^\s+(?:ROOT\s+)?%?([^\s=]+)\s*=\s*(.*)$", line)
    if m and current is not None:
      comps[current][m.group(1)] = _opcode(m.group(2))
  return comps


def classify_hlo(hlo: str) -> dict[str, str]:
  """Instruction name -> kernel class, for every instruction of the optimized module."""
  comps = parse_hlo(hlo)
  classes = {}
  for instructions in comps.values():
    for name, (op, rest) in instructions.items():
      if op == "custom-call":
        target = (re.search(r'custom_call_target="([^"]+)"', rest) or [None, ""])[1]
        if target in ("__cudnn$convForward", "__cudnn$convBiasActivationForward"):
          cls = "conv forward"
        elif target == "__cudnn$convBackwardInput":
          cls = "conv input-grad"
        elif target == "__cudnn$convBackwardFilter":
          cls = "conv weight-grad"
        elif "gemm" in target or "matmul" in target or "cublas" in target:
          cls = "gemm"
        else:
          cls = "other"
      elif op == "fusion":
        kind = (re.search(r"kind=(k\w+)", rest) or [None, ""])[1]
        called = (re.search(r"calls=%?([\w.\-]+)", rest) or [None, ""])[1]
        body = {o for o, _ in comps.get(called, {}).values()}
        if kind == "kCustom":
          config = (re.search(r'"kind":\s*"([^"]+)"', rest) or [None, ""])[1]
          cls = ("conv fused" if "convolution" in body else
                 "gemm" if ("dot" in body or "gemm" in config or "cublas" in config) else "other")
        elif kind == "kInput":
          cls = "reduction fusion"
        elif kind in ("kLoop", "kScatter"):
          cls = "copy/transpose" if body and body <= _MOVES and body & {"copy", "transpose"} else "loop fusion"
        else:
          cls = "other"
      elif op in ("copy", "transpose", "copy-start", "copy-done"):
        cls = "copy/transpose"
      elif op == "convolution":
        cls = "conv forward"
      elif op == "dot":
        cls = "gemm"
      else:
        cls = "other"
      classes[name] = cls
  return classes


# ----------------------------------------------------------------------------- profile

_DERIVED_LINES = ("xla ops", "xla modules", "steps", "tensorflow ops", "framework", "source", "launch stats",
                  "tensorflow name scope", "xla traceme", "scope range")


def trace_lines(events: list[dict]) -> tuple[list[dict], list[dict]]:
  """(kernel and memcpy events, "XLA Ops" events) of a trace's device; on a CPU host, XLA's thunks and []."""
  pname = {e["pid"]: e.get("args", {}).get("name", "") for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  tname = {(e["pid"], e.get("tid")): e.get("args", {}).get("name", "").lower() for e in events
           if e.get("ph") == "M" and e.get("name") == "thread_name"}
  devices = {pid for pid, name in pname.items() if name.startswith("/device:")}
  xs = [e for e in events if e.get("ph") == "X" and "dur" in e]
  line = lambda e: tname.get((e["pid"], e.get("tid")), "")
  on_device = [e for e in xs if e["pid"] in devices and not line(e).startswith(_DERIVED_LINES)]
  streams = [e for e in on_device if "stream" in line(e)]
  xla_ops = [e for e in xs if e["pid"] in devices and line(e).startswith("xla ops")]
  if streams or on_device:
    return streams or on_device, xla_ops
  return [e for e in xs if "hlo_op" in e.get("args", {}) and not line(e).startswith(_DERIVED_LINES)], []


def summarize_trace(events: list[dict], hlo: str, steps: int) -> tuple[str, list[tuple[float, int, str, str]]]:
  """A table of ms per step by kernel class, kernels per step and device idle share; per-op rows.

  Kernels are classed by their ``hlo_op`` (the instruction of the optimized module that launched
  them); where most kernels lack one, the times come from the trace's "XLA Ops" line instead.
  """
  kernels, xla_ops = trace_lines(events)
  if not kernels:
    return "no device kernels in the trace", []
  module = (re.match(r"HloModule\s+([\w.\-]+)", hlo) or [None, None])[1]
  if module and any(e.get("args", {}).get("hlo_module") == module for e in kernels):
    kernels = [e for e in kernels if e.get("args", {}).get("hlo_module") in (module, None)]
  classes = classify_hlo(hlo)
  named = sum("hlo_op" in e.get("args", {}) for e in kernels)
  source = kernels if named * 2 >= len(kernels) or not xla_ops else xla_ops
  by_class = {c: [0.0, 0] for c in KERNEL_CLASSES}
  per_op: dict[str, list] = {}
  for e in source:
    op = (e.get("args", {}).get("hlo_op") or e.get("name", "?")).lstrip("%")
    cls = classes.get(op, "not in HLO")
    by_class[cls][0] += e["dur"]
    by_class[cls][1] += 1
    row = per_op.setdefault(op, [0.0, 0, cls])
    row[0] += e["dur"]
    row[1] += 1
  intervals = sorted((e["ts"], e["ts"] + e["dur"]) for e in kernels)
  busy, end = 0.0, -float("inf")
  for s, t in intervals:
    if s >= end:
      busy += t - s
      end = t
    elif t > end:
      busy += t - end
      end = t
  span = end - intervals[0][0]
  total = sum(v[0] for v in by_class.values())
  unit = "kernels/step" if source is kernels else "ops/step"
  lines = [f"{'kernel class':<20}{'ms/step':>9}{'share':>8}{unit:>14}"]
  for cls, (us, n) in by_class.items():
    if n:
      lines.append(f"{cls:<20}{us / 1e3 / steps:>9.3f}{us / total:>8.1%}{n / steps:>14.1f}")
  lines.append(f"{'all':<20}{total / 1e3 / steps:>9.3f}{1:>8.1%}{len(source) / steps:>14.1f}")
  if source is not kernels:
    lines.append(f"classes from the XLA Ops line ({named} of {len(kernels)} kernels name their op); "
                 f"{len(kernels) / steps:.1f} kernels/step")
  lines.append(f"device span {span / 1e3 / steps:.3f} ms/step ({steps} steps dispatched back to back), busy "
               f"{busy / 1e3 / steps:.3f} ms/step, idle {1 - busy / span:.1%} of the span")
  ops = sorted(((us / 1e3 / steps, n, cls, op) for op, (us, n, cls) in per_op.items()), reverse=True)
  return "\n".join(lines), ops


def profile(case: Case, args: argparse.Namespace, out: str) -> None:
  """Traces ``--profile-steps`` steps of a compiled case and writes its kernel-class table and HLO."""
  name = slug(case.label)
  with tempfile.TemporaryDirectory() as tmp:
    case.run()
    # The steps are dispatched back to back: the idle share is the device's, not the host's wait.
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      for _ in range(args.profile_steps - 1):
        case.run_async()
      case.run()
    # HOST.trace.json.gz and perfetto_trace.json.gz hold the same Chrome-format events.
    paths = sorted((p for p in _walk(tmp) if p.endswith(".json.gz")), key=lambda p: "perfetto" in p)
    if not paths:
      say(f"profile {case.label}: no JSON trace written (found: {sorted(_walk(tmp))[:5]})")
      return
    with gzip.open(paths[0], "rt") as f:
      trace = json.load(f)
    events = trace.get("traceEvents", []) if isinstance(trace, dict) else trace
  table, ops = summarize_trace(events, case.hlo, args.profile_steps)
  with gzip.open(os.path.join(out, f"{name}.hlo.txt.gz"), "wt") as f:
    f.write(case.hlo)
  with open(os.path.join(out, f"{name}.profile.txt"), "w") as f:
    f.write(f"{case.label}: jax {jax.__version__}, {jax.devices()[0].device_kind}\n{table}\n\n")
    f.write("ms/step\tkernels/step\tclass\top\n")
    for ms, n, cls, op in ops:
      f.write(f"{ms:.4f}\t{n / args.profile_steps:g}\t{cls}\t{op}\n")
  say(f"profile {case.label} (median step {case.median_ms:.2f} ms):\n" + table + "\n  top ops: " +
      "; ".join(f"{op} {cls} {ms:.3f}" for ms, _, cls, op in ops[:8]))


def _walk(root: str) -> list[str]:
  return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]


# ----------------------------------------------------------------------------- timing and rows


def time_rounds(cases: list[Case], rounds: int) -> None:
  for _ in range(rounds):
    for c in cases:
      start = time.perf_counter()
      c.run()
      c.times.append(time.perf_counter() - start)


PEERS = ("flax_resnet50", "torchvision_resnet50")  # vanilla networks, never a baseline


def baseline(case: Case, cases: list[Case]) -> Case | None:
  """The same framework's alpha-0 default case (the octave network's) at the same batch."""
  for c in cases:
    if (c.framework == case.framework and c.batch == case.batch and c.alpha == 0 and c.form == "default"
        and c.model not in PEERS and c.times):
      return c
  return None


def rows(cases: list[Case], dtype: str = "bfloat16") -> list[dict]:
  device = jax.devices()[0].device_kind
  today = datetime.date.today().isoformat()
  out = []
  for c in cases:
    if not c.times:
      continue
    base = baseline(c, cases)
    out.append({
        "framework": c.framework, "device": device, "jax": jax.__version__, "date": today, "model": c.model,
        "alpha": c.alpha, "form": c.form, "batch": c.batch, "dtype": dtype, "median_ms": round(c.median_ms, 4),
        "time_ratio_to_alpha0": round(c.median_ms / base.median_ms, 4) if base else None,
        "peak_bytes": c.peak,
    })
  return out


def medians_line(cases: list[Case]) -> str:
  parts = []
  for c in cases:
    if c.times:
      base = baseline(c, cases)
      ratio = f" ({c.median_ms / base.median_ms:.3f})" if base and base is not c else ""
      parts.append(f"{c.label.replace(c.model + ' ', '')} {c.median_ms:.2f}{ratio} n={len(c.times)}")
  return "medians ms (ratio to alpha 0): " + " | ".join(parts)


def final_table(cases: list[Case]) -> str:
  lines = [f"{'framework':<9} {'model':<22}{'alpha':>6} {'form':<30}{'batch':>6}{'median ms':>11}{'ratio':>8}"
           f"{'n':>5}{'peak GiB':>10}"]
  for r, c in zip(rows(cases), [c for c in cases if c.times]):
    ratio = "" if r["time_ratio_to_alpha0"] is None else f"{r['time_ratio_to_alpha0']:.3f}"
    peak = "" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**30:.2f}"
    lines.append(f"{r['framework']:<9} {r['model']:<22}{r['alpha']:>6g} {r['form']:<30}{r['batch']:>6}"
                 f"{r['median_ms']:>11.2f}{ratio:>8}{len(c.times):>5}{peak:>10}")
  return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def setup_caches(cache: str) -> None:
  """Persistent compilation cache for every compile, and XLA's GPU autotune cache beside it."""
  os.makedirs(cache, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  autotune = os.path.join(os.path.abspath(cache), AUTOTUNE_CACHE_FLAG)
  # jax puts the autotune cache under the compilation cache when this option names it; that this
  # jax has the option says its XLA has the flag, so the flag below cannot be unknown to XLA
  # (an unknown flag in XLA_FLAGS aborts the process).
  if hasattr(jax.config, "jax_persistent_cache_enable_xla_caches"):
    jax.config.update("jax_persistent_cache_enable_xla_caches", AUTOTUNE_CACHE_FLAG)
    flags = os.environ.get("XLA_FLAGS", "")
    if AUTOTUNE_CACHE_FLAG not in flags:
      os.environ["XLA_FLAGS"] = f"{flags} --{AUTOTUNE_CACHE_FLAG}={autotune}".strip()
    say(f"caches: compilation {cache}, autotune {autotune}")
  else:
    say(f"caches: compilation {cache}; this jax offers no autotune cache")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--budget", type=float, default=420.0,
                 help="seconds from start after which no new case is compiled (default 420)")
  p.add_argument("--out", default=None, help="folder for the log, profiles and HLO (default: $OUT, else "
                 "benchmarks/results/gpu/gpu_step)")
  p.add_argument("--results", default=DEFAULT_RESULTS, help="JSON lines appended here at the end")
  p.add_argument("--cache", default=None, help="persistent compilation cache (default OUT/jax_cache)")
  p.add_argument("--dry", action="store_true", help="lower every case without compiling; write nothing")
  p.add_argument("--dry-platform", choices=["cuda", "native"], default="cuda",
                 help="--dry lowers for CUDA (default) or for this host's backend")
  p.add_argument("--model", default="oct_resnet50")
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--num-classes", type=int, default=1000)
  p.add_argument("--forms", default=None, help="comma-separated forms (default execution.PROBE_FORMS)")
  p.add_argument("--skip", default="", help="comma-separated parts to leave out: vanilla, torch, xla, "
                 "alphas, b256, profile")
  p.add_argument("--rounds", type=int, default=3, help="timing rounds after each new case")
  p.add_argument("--final-rounds", type=int, default=10)
  p.add_argument("--profile-steps", type=int, default=4)
  args = p.parse_args(argv)
  unknown = set(filter(None, args.skip.split(","))) - {"vanilla", "torch", "xla", "alphas", "b256", "profile"}
  if unknown:
    p.error(f"--skip: unknown {', '.join(sorted(unknown))}")
  args.skip = set(filter(None, args.skip.split(",")))
  return args


def probe_forms(args: argparse.Namespace) -> list[str]:
  if not hasattr(execution, "use_form"):
    say("octflax.execution has no use_form: only the shipped form is probed")
    return []
  names = args.forms.split(",") if args.forms else list(getattr(execution, "PROBE_FORMS", ()))
  forms = [str(execution.Form.parse(n)) for n in names] if hasattr(execution, "Form") else names
  return [f for f in forms if f != "default"]


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  out = args.out or os.environ.get("OUT") or os.path.join("benchmarks", "results", "gpu", "gpu_step")
  if not args.dry:
    os.makedirs(out, exist_ok=True)
    _LOG.append(open(os.path.join(out, "gpu_step.log"), "a"))
    # Before jax starts its backend: the pool grows with use (peak memory is the program's, and
    # PyTorch gets memory too), and the caches are in place.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    setup_caches(args.cache or os.path.join(out, "jax_cache"))
  say(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.devices()[0].device_kind}; "
      f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; budget {args.budget:.0f} s{'; dry' if args.dry else ''}")
  say("imports: grain " + ("yes" if "grain" in sys.modules else "no") + ", ml_collections " +
      ("yes" if "ml_collections" in sys.modules else "no"))
  m, b = args.model, args.batch
  forms = probe_forms(args)
  say(f"forms: {', '.join(forms) or 'none'}")
  builder = Builder(args)
  ready: list[Case] = []
  compile_times: dict[bool, list[float]] = {True: [], False: []}

  def add(case: Case) -> bool:
    """Builds one case unless the budget is spent; times the ready cases; True when it is ready."""
    elapsed = time.time() - _T0
    # Later compiles reuse the autotuning of the convolution shapes seen before: the recent ones say more.
    similar = compile_times[case.alpha == 0][-3:] or (compile_times[True] + compile_times[False])[-3:]
    expected = statistics.median(similar) * (case.batch / b) ** 0.5 if similar else 0.0
    if case.framework == "torch":
      expected = 20.0  # eager: three warm-up steps
    if args.dry:
      expected = 0.0
    if elapsed + expected > args.budget:
      say(f"budget: not compiling {case.label} (elapsed {elapsed:.0f} s + expected {expected:.0f} s "
          f"> {args.budget:.0f} s)")
      return False
    try:
      if case.framework == "torch":
        build_torch(case, args)
      else:
        builder.build(case)
    except Exception as e:  # noqa: BLE001 - one failed case must not end the run
      say(f"FAILED {case.label}: {type(e).__name__}: {str(e)[:400]}")
      return False
    if args.dry:
      ready.append(case)
      return True
    if case.framework == "octflax":
      compile_times[case.alpha == 0].append(case.compile_s)
    ready.append(case)
    time_rounds(ready, args.rounds)
    say(medians_line(ready))
    write_partial(out, ready)
    return True

  def best_form() -> str | None:
    candidates = [c for c in ready if c.framework == "octflax" and c.alpha == 0.5 and c.batch == b
                  and c.use and not c.options]
    if not candidates:
      return None
    if args.dry:  # a stand-in without timings: the form with the fewest convolutions
      return min(candidates, key=lambda c: c.convolutions).use
    return min(candidates, key=lambda c: c.median_ms).use

  oct_case = lambda alpha, use=None, batch=b, options=None, tag="": Case(
      f"{m} a={alpha:g} {use or 'default'}{tag}" + (f" b{batch}" if batch != b else ""), m, alpha,
      f"{use or 'default'}{tag}", batch, use=use, options=options)

  previous = None if args.dry else signal.signal(signal.SIGTERM, _terminate)
  try:
    # 1. as shipped; the PyTorch peers (no XLA compile: cheap, and the comparison every run needs);
    # every form at alpha .5; nn.Conv's ResNet-50.
    add(oct_case(0.0))
    add(oct_case(0.5))
    if "torch" not in args.skip:
      for case in torch_cases(args):
        add(case)
    for form in forms:
      add(oct_case(0.5, form))
    if "vanilla" not in args.skip:
      if m == "oct_resnet50":
        add(Case("nn.Conv resnet50", "flax_resnet50", 0.0, "default", b))
      else:
        say(f"flax_resnet50: skipped (it is the peer of oct_resnet50, not of {m})")
    best = best_form()
    say(f"fastest alpha .5 form: {best or 'none'}" + (" (dry: the one with the fewest convolutions)" if args.dry else ""))
    # 2. profiles: alpha 0, alpha .5 as shipped, the fastest alpha .5 form.
    if not args.dry and "profile" not in args.skip:
      for case in [c for c in ready if c.framework == "octflax" and c.batch == b and not c.options and c.model == m
                   and (c.alpha == 0 and not c.use or c.alpha == 0.5 and c.use in (None, best))]:
        try:
          profile(case, args, out)
        except Exception as e:  # noqa: BLE001
          say(f"profile {case.label} failed: {type(e).__name__}: {str(e)[:400]}")
    elif args.dry:
      say("profiles (not in --dry): alpha 0, alpha .5 default" + (f", alpha .5 {best}" if best else ""))
    # 3. XLA options A/B: command buffers with convolutions.
    if "xla" not in args.skip:
      cmdbuf = accepted({CMDBUF[0]: CMDBUF[1]})
      say(f"{CMDBUF[0]}={CMDBUF[1]}: " + ("accepted" if cmdbuf else "not known to this XLA; no [cmdbuf] cases"))
      if cmdbuf:
        add(oct_case(0.5, best, options=cmdbuf, tag=" [cmdbuf]"))
        add(oct_case(0.0, options=cmdbuf, tag=" [cmdbuf]"))
    # 4. while the budget lasts: alpha .25 and .75, batch 256, XLA's convolution fusion.
    if "alphas" not in args.skip:
      for alpha in (0.25, 0.75):
        add(oct_case(alpha))
        if best:
          add(oct_case(alpha, best))
    if "b256" not in args.skip:
      add(oct_case(0.0, batch=2 * b))
      if best:
        add(oct_case(0.5, best, batch=2 * b))
      add(oct_case(0.5, batch=2 * b))
    if "xla" not in args.skip and best:
      fusion = accepted({CONV_FUSION[0]: CONV_FUSION[1]})
      say(f"{CONV_FUSION[0]}: " + ("accepted" if fusion else "not known to this XLA"))
      if fusion:
        add(oct_case(0.5, best, options=fusion, tag=" [convfusion]"))
    if args.dry:
      say(f"dry run: {len(ready)} cases lowered")
      return 0
    time_rounds(ready, args.final_rounds)
    say(medians_line(ready))
  except KeyboardInterrupt:
    say("interrupted: writing what was measured")
  finally:
    if not args.dry:
      signal.signal(signal.SIGTERM, previous)
      finish(args, out, ready)
  return 0


def _terminate(signum, frame):  # noqa: ARG001
  raise KeyboardInterrupt


def write_partial(out: str, cases: list[Case]) -> None:
  with open(os.path.join(out, "train_step.partial.jsonl"), "w") as f:
    for r in rows(cases):
      f.write(json.dumps(r) + "\n")


def finish(args: argparse.Namespace, out: str, cases: list[Case]) -> None:
  measured = rows(cases)
  if not measured:
    say("no case was timed; nothing written")
    return
  say("peak_bytes: octflax rows give the device's peak_bytes_in_use read after the case's warm-up, "
      "a running maximum over the run (it cannot be reset); torch rows give "
      "torch.cuda.max_memory_allocated of that case alone")
  say("final:\n" + final_table(cases))
  os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
  with open(args.results, "a") as f:
    for r in measured:
      f.write(json.dumps(r) + "\n")
  say(f"{len(measured)} rows appended to {args.results}")


if __name__ == "__main__":
  sys.exit(main())
