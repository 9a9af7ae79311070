"""Wall-time benchmark of octflax networks across alphas, on whatever backend JAX has.

Compiles first (compile time excluded), then times repeated calls with
``block_until_ready`` and reports the median. Configurations are timed round-robin
(one call of each per round) so that a change in machine load hits all of them alike,
and every ratio is taken against alpha 0 measured in the same run.

Examples:
  python -m benchmarks.benchmark --models oct_resnet50 --alphas 0,0.125,0.25,0.5,0.75 \\
      --batch 8 --mode inference --json out.jsonl
  python -m benchmarks.benchmark --models oct_resnet20 --alphas 0,0.5 --batch 128 \\
      --mode train --image-size 32 --num-classes 10
  # the same network compiled with octflax's options and with XLA's defaults, in one run
  python -m benchmarks.benchmark --models oct_resnet20 --compile octflax,xla-default --alphas 0,0.5 \\
      --batch 128 --image-size 32 --num-classes 10
  # octflax next to a PyTorch Oct-ResNet-50 with the PyTorch port's structure (needs torch)
  python -m benchmarks.benchmark --models oct_resnet50,torch_oct_resnet50 --alphas 0,0.5 --batch 8
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.networks import build_model
from octflax import cost, models
from octflax import execution, functional
from octflax.execution import inference_compiler_options, init_compiler_options, train_compiler_options
from octflax.training.optim import make_optimizer
from octflax.training.state import create_train_state
from octflax.training.steps import train_step


@dataclasses.dataclass
class Case:
  model: str
  alpha: float
  batch: int
  mode: str
  label: str
  fn: Callable[[], Any]
  gmacs: float
  params: int
  temp_bytes: int | None
  framework: str = "octflax"
  hlo: str | None = None  # the optimized HLO (octflax networks)
  compiler_options: dict[str, Any] | None = None  # what the network was compiled with (None: XLA's defaults)
  compile: str = "octflax"  # the --compile setting
  conv: str = "default"  # the --conv setting
  form: str = "default"  # the --form setting
  times: list[float] = dataclasses.field(default_factory=list)


# How OctConv's convolutions are executed (--conv): octflax's default for the backend
# (`execution.default_conv`), XLA:CPU's form without the channel padding, or exactly nn.Conv's.
CONV_SETTINGS = {
    "default": None,
    "unpadded": execution.xla_cpu_conv_unpadded,
    "plain": functional.conv,
}
# XLA options a network is compiled with (--compile): octflax's (`octflax.inference_compiler_options()`
# for inference, `octflax.train_compiler_options()` for a train step), XLA's own defaults, or XLA:CPU's
# YNNPACK dot fusions, which hand dots and their elementwise neighbours to YNNPACK as one fused graph.
COMPILE_SETTINGS = {
    "octflax": None,
    "xla-default": {},
    "ynn-dot": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
}
# PyTorch networks timed next to octflax's in the same run (inference only, float32).
TORCH_MODELS = {"torch_oct_resnet50": "oct_resnet50"}


def make_torch_case(name: str, alpha: float, batch: int, mode: str, image_size: int,
                    num_classes: int) -> Case:
  """A PyTorch Oct-ResNet with the port's structure (`benchmarks.torch_reference`), eager, NCHW."""
  from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top

  torch = torch_reference.torch
  if torch is None:
    raise ValueError(f"{name} needs torch (pip install torch); it is not installed.")
  if mode != "inference":
    raise ValueError(f"{name} is timed in inference mode only; got --mode {mode}.")
  arch = TORCH_MODELS[name]
  model = torch_reference.OctResNet(arch, alpha, num_classes).eval()
  images = torch.randn((batch, 3, image_size, image_size), generator=torch.Generator().manual_seed(0))
  report = cost.analyze(models.get_model(arch, alpha=alpha, num_classes=num_classes),
                        (1, image_size, image_size, 3))

  def fn():
    with torch.inference_mode():
      model(images)

  params = sum(p.numel() for p in model.parameters())
  label = f"{name} a={alpha:g} b={batch} {mode}"
  framework = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
  return Case(name, alpha, batch, mode, label, fn, report.gmacs, params, None, framework)


def make_case(name: str, alpha: float, batch: int, mode: str, image_size: int, num_classes: int,
              dtype: Any, channels: int = 3, compile: str = "octflax", conv: str = "default",
              form: str = "default") -> Case:
  """Builds and compiles one timed configuration under a compile, a convolution and an execution setting.

  Args:
    name: a registry name with optional model variants (``oct_resnet50:strided``), or one of
      ``flax_resnet50`` and the PyTorch networks.
    compile: a key of `COMPILE_SETTINGS`.
    conv: a key of `CONV_SETTINGS`.
    form: ``'default'`` (the platform's form) or an `octflax.execution.Form` name.
  """
  if compile not in COMPILE_SETTINGS:
    raise ValueError(f"compile={compile!r}; allowed are {', '.join(COMPILE_SETTINGS)}.")
  if conv not in CONV_SETTINGS:
    raise ValueError(f"conv={conv!r}; allowed are {', '.join(CONV_SETTINGS)}.")
  options = COMPILE_SETTINGS[compile]
  if options is None:
    options = inference_compiler_options() if mode == "inference" else train_compiler_options()
  # 'default' leaves the convolution to whoever called (octflax's default, or an enclosing use_conv).
  chosen = contextlib.nullcontext() if conv == "default" else execution.use_conv(CONV_SETTINGS[conv])
  with chosen, execution.use_form(None if form == "default" else form):
    case = _make_case(name, alpha, batch, mode, image_size, num_classes, dtype, channels, options or None)
  case.compile, case.conv, case.form = compile, conv, form
  if (compile, conv, form) != ("octflax", "default", "default"):
    case.label += f" [{compile}, conv {conv}, form {form}]"
  return case


def _make_case(name: str, alpha: float, batch: int, mode: str, image_size: int, num_classes: int,
               dtype: Any, channels: int, options: dict[str, Any] | None) -> Case:
  if name in TORCH_MODELS:
    if dtype != jnp.float32 or channels != 3:
      raise ValueError(f"{name} is timed in float32 on 3-channel images only.")
    return make_torch_case(name, alpha, batch, mode, image_size, num_classes)
  model = build_model(name, alpha, num_classes, dtype)
  shape = (batch, image_size, image_size, channels)
  report = cost.analyze(model, (1,) + shape[1:])
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.standard_normal(shape, dtype=np.float32))
  labels = jnp.asarray(rng.integers(0, num_classes, batch), dtype=jnp.int32)
  if mode == "inference":
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False),
                        compiler_options=init_compiler_options())(images)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    compiled = forward.lower(variables, images).compile(options)
    fn = lambda: compiled(variables, images)
  else:
    # The library's own train step (octflax.training), with the optimizer a training run uses.
    state = create_train_state(model, make_optimizer(0.1), seed=0, input_shape=shape)
    step = jax.jit(train_step, donate_argnums=0)
    compiled = step.lower(state, {"image": images, "label": labels}).compile(options)
    holder = {"state": state}

    def fn():
      holder["state"], metrics = compiled(holder["state"], {"image": images, "label": labels})
      return metrics["loss"]

  try:
    temp = compiled.memory_analysis().temp_size_in_bytes
  except Exception:  # not every backend reports it
    temp = None
  label = f"{name} a={alpha:g} b={batch} {mode}"
  return Case(name, alpha, batch, mode, label, fn, report.gmacs, report.params, temp, hlo=compiled.as_text(),
              compiler_options=options)


def peak_device_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def run(args: argparse.Namespace) -> list[dict]:
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
  alphas = [float(a) for a in args.alphas.split(",")]
  if 0.0 not in alphas:
    alphas = [0.0] + alphas  # ratios need alpha 0 from the same run
  cases = []
  for name in args.models.split(","):
    # PyTorch networks are timed once: neither XLA's options nor octflax's convolutions apply.
    settings = [(c, v, f) for c in args.compile.split(",") for v in args.conv.split(",") for f in args.form.split(",")]
    for compile_setting, conv, form in (settings[:1] if name in TORCH_MODELS else settings):
      for batch in [int(b) for b in str(args.batch).split(",")]:
        for alpha in ([0.0] if name == "flax_resnet50" else alphas):
          cases.append(make_case(name, alpha, batch, args.mode, args.image_size, args.num_classes, dtype,
                                 args.channels, compile_setting, conv, form))
          for _ in range(args.warmup):
            jax.block_until_ready(cases[-1].fn())
  for _ in range(args.repeats):
    for case in cases:
      start = time.perf_counter()
      jax.block_until_ready(case.fn())
      case.times.append(time.perf_counter() - start)

  device = jax.devices()[0]
  rows = []
  for case in cases:
    median = statistics.median(case.times)
    base = next(c for c in cases if (c.model, c.compile, c.conv, c.form, c.batch, c.alpha)
                == (case.model, case.compile, case.conv, case.form, case.batch, 0.0))
    base_median = statistics.median(base.times)
    rows.append({
        "model": case.model, "compile": case.compile, "conv": case.conv, "form": case.form, "alpha": case.alpha, "batch": case.batch, "mode": case.mode,
        "dtype": args.dtype, "image_size": args.image_size,
        "channels": args.channels, "backend": jax.default_backend(),
        "device_kind": device.device_kind, "device_count": jax.device_count(),
        "median_ms": median * 1e3, "min_ms": min(case.times) * 1e3,
        "images_per_second": case.batch / median, "gmacs": case.gmacs, "params": case.params,
        "time_ratio_to_alpha0": median / base_median,
        "macs_ratio_to_alpha0": case.gmacs / base.gmacs,
        "repeats": len(case.times), "compiled_temp_bytes": case.temp_bytes,
        "framework": case.framework, "compiler_options": case.compiler_options,
        "peak_device_bytes": peak_device_bytes(), "jax": jax.__version__,
        "host": platform.node(), "date": datetime.date.today().isoformat(),
    })
  return rows


def print_table(rows: list[dict]) -> None:
  print(f"backend {rows[0]['backend']} ({rows[0]['device_kind']}), jax {rows[0]['jax']}, dtype {rows[0]['dtype']}")
  header = f"{'model [compile, conv]':<40}{'alpha':>6}{'batch':>6}{'mode':>10}{'median ms':>11}{'img/s':>9}{'GMACs':>8}{'time/a0':>9}{'MACs/a0':>9}"
  print(header)
  for r in rows:
    settings = (r["compile"], r["conv"], r.get("form", "default"))
    name = r["model"] if settings == ("octflax", "default", "default") else f"{r['model']} [{', '.join(settings)}]"
    print(f"{name:<40}{r['alpha']:>6g}{r['batch']:>6}{r['mode']:>10}{r['median_ms']:>11.1f}"
          f"{r['images_per_second']:>9.1f}{r['gmacs']:>8.3f}{r['time_ratio_to_alpha0']:>9.3f}"
          f"{r['macs_ratio_to_alpha0']:>9.3f}")
  peak = rows[0]["peak_device_bytes"]
  if peak:
    print(f"peak device memory: {peak / 2**30:.2f} GiB")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="oct_resnet50",
                      help="comma-separated registry names; 'NAME:strided' uses strided vanilla convs; "
                           "'flax_resnet50' is ResNet-50 written with flax.linen.Conv; "
                           "'torch_oct_resnet50' is a PyTorch Oct-ResNet-50 with the PyTorch port's "
                           "structure (needs torch; inference, float32)")
  parser.add_argument("--compile", default="octflax",
                      help="comma-separated compile settings, each model timed under each in the same run: "
                           "'octflax' (octflax.inference_compiler_options() for inference, "
                           "octflax.train_compiler_options() for a train step), 'xla-default' (XLA's defaults), "
                           "'ynn-dot' (XLA:CPU's YNNPACK dot fusions)")
  parser.add_argument("--conv", default="default",
                      help="comma-separated convolution settings (octflax.execution): 'default' (the "
                           "backend's; XLA:CPU's form on CPU), 'unpadded' (without the CPU channel padding), "
                           "'plain' (exactly nn.Conv's convolution)")
  parser.add_argument("--form", default="default",
                      help="comma-separated execution forms (octflax.execution.Form names, e.g. 'two_convs+slices', "
                           "'shared_output', 'reference'), or 'default' (the platform's)")
  parser.add_argument("--alphas", default="0,0.125,0.25,0.5,0.75")
  parser.add_argument("--batch", default="8", help="batch size, or a comma-separated list")
  parser.add_argument("--mode", choices=["inference", "train"], default="inference")
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--channels", type=int, default=3, help="input channels (1 for Fashion-MNIST)")
  parser.add_argument("--num-classes", type=int, default=1000)
  parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--json", default=None, help="append one JSON line per configuration here")
  args = parser.parse_args(argv)
  try:
    for setting in args.compile.split(","):
      if setting not in COMPILE_SETTINGS:
        raise ValueError(f"--compile: {setting!r}; allowed are {', '.join(COMPILE_SETTINGS)}.")
    for setting in args.conv.split(","):
      if setting not in CONV_SETTINGS:
        raise ValueError(f"--conv: {setting!r}; allowed are {', '.join(CONV_SETTINGS)}.")
    for setting in args.form.split(","):
      if setting != "default":
        execution.Form.parse(setting)
    rows = run(args)
  except ValueError as e:
    parser.error(str(e))
  print_table(rows)
  if args.json:
    with open(args.json, "a") as f:
      for row in rows:
        f.write(json.dumps(row) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
