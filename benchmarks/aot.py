r"""The train step of zoo networks compiled for a GPU or a TPU slice on this CPU: a kernel census.

  python -m benchmarks.aot --target h100 --models oct_resnet50 --alphas 0,0.5 --batch 128

For every model x alpha x form it compiles one full train step (forward, backward, SGD with
Nesterov momentum, BatchNorm statistics; the state donated and kept in the layouts XLA
chooses, as the trainer keeps it, or row-major with ``--state-layout default``; the step of
`benchmarks/probes/gpu_step.py`, which times the same step on a GPU) for ``--target``, with the
batch sharded over the target's chips, and prints one table row: compile seconds, the kernels it
launches by class (`octflax.aot.census`), flops and bytes, memory per chip, the estimated step
time with its model (an estimate, not a measurement) and its ratio to alpha 0 in the default
form of the same model in the same run. Each row is appended as a JSON line to ``--results``
(default benchmarks/results/aot/census.jsonl); ``--hlo DIR`` writes each optimized program.

Models: zoo names (`octflax.models`, with `benchmarks.networks` variants) and
``flax_resnet50`` (ResNet-50 written with `flax.linen.Conv`). Forms: ``default`` (the target
platform's form, `octflax.execution.form_for`, in which the trainer traces its step) or any
`octflax.execution.Form` name.

Needs the target's plugin: ``pip install -e '.[aot]'`` (README).
``--fit 0:24.83,0.5:36.26`` solves the GPU model's two constants from two measured step times
(ms, at those alphas in the first of ``--forms``) and this run's census of them
(docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gzip
import json
import os
import re
import sys

from octflax.aot import targets as targets_lib

targets_lib.prepare_environment()

import jax  # noqa: E402  (after prepare_environment: jax must start on the CPU)
import jax.numpy as jnp  # noqa: E402
from jax.experimental.layout import Format, Layout  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

from benchmarks import networks  # noqa: E402
from benchmarks.probes.gpu_step import TX, make_step  # noqa: E402
from octflax import aot, execution  # noqa: E402

DEFAULT_RESULTS = os.path.join("benchmarks", "results", "aot", "census.jsonl")
DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}
SHORT = {"conv forward": "fwd", "conv input-grad": "bw-in", "conv weight-grad": "bw-w", "gemm": "gemm",
         "reduction fusion": "reduce", "loop fusion": "loop", "data-movement fusion": "move", "transpose": "transp",
         "copy": "copy", "collective": "coll", "other": "other"}


def compile_case(target: aot.Target, mesh: Mesh, model: str, alpha: float, form: str, batch: int, dtype: str,
                 image_size: int, num_classes: int, state_layout: str = "auto") -> aot.Report:
  """One train step of ``model`` at ``alpha`` in ``form``, compiled for ``target``.

  ``state_layout='auto'`` (the trainer's, `octflax.training.DataParallel`) lets XLA choose the
  layout of the (donated) state in device memory (`jax.experimental.layout.Layout.AUTO`), e.g.
  cuDNN's for the kernels; ``'default'`` keeps the logical row-major one.
  """
  net = networks.build_model(model, alpha, num_classes, DTYPES[dtype])
  replicated, sharded = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
  one = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  # "default": the form the trainer traces its step in on the target's platform (`execution.form_for`).
  with execution.use_form(execution.form_for(target.platform) if form == "default" else form):
    shapes = jax.eval_shape(lambda x: net.init(jax.random.key(0), x, train=False), one)
    state = {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {}),
             "opt": jax.eval_shape(TX.init, shapes["params"])}
    state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), state)
    images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32, sharding=sharded)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=sharded)
    jitted = jax.jit(make_step(net), donate_argnums=0)
    if state_layout == "auto":
      formats = jax.tree.map(lambda _: Format(Layout.AUTO, replicated), state)
      jitted = jax.jit(make_step(net), donate_argnums=0, in_shardings=(formats, sharded, sharded),
                       out_shardings=(formats, replicated))
    return aot.compile_for(target, jitted, state, images, labels)


def table_line(label: str, report: aot.Report | None, ratio: float | None = None) -> str:
  if report is None:
    cells = [f"{'compile s':>9}", f"{'kernels':>7}"] + [f"{SHORT[c]:>6}" for c in aot.CLASSES] + \
        [f"{'TFLOP':>7}", f"{'GB':>7}", f"{'GiB/chip':>8}", f"{'est. ms':>8}", f"{'/ a0':>5}"]
    return f"{label:<48}" + " ".join(cells)
  est = report.estimate_ms
  cells = [f"{report.compile_seconds:9.1f}", f"{report.launches:7d}"] + \
      [f"{report.classes[c]:6d}" for c in aot.CLASSES] + \
      [f"{report.flops / 1e12:7.3f}", f"{report.bytes / 1e9:7.2f}", f"{report.memory['peak'] / 2**30:8.2f}",
       f"{est:8.2f}" if est is not None else f"{'-':>8}", f"{ratio:5.2f}" if ratio else f"{'':>5}"]
  return f"{label:<48}" + " ".join(cells)


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n", 2)[2])
  p.add_argument("--target", default="h100", help=f"h100, h200 or tpu:GEN:TOPOLOGY (e.g. {', '.join(aot.list_targets())})")
  p.add_argument("--models", default="oct_resnet50", help="comma-separated zoo names and/or flax_resnet50")
  p.add_argument("--alphas", default="0,0.5", help="comma-separated alphas (ignored for flax_resnet50)")
  p.add_argument("--forms", default="default", help="comma-separated: default and/or execution form names")
  p.add_argument("--batch", type=int, default=128, help="global batch (split over the target's chips)")
  p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="compute dtype (parameters float32)")
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--num-classes", type=int, default=1000)
  p.add_argument("--state-layout", choices=("default", "auto"), default="auto",
                 help="the state's layout in device memory: chosen by XLA (Layout.AUTO, as the trainer keeps it) or row-major")
  p.add_argument("--results", default=DEFAULT_RESULTS, help="JSON lines appended here ('' = none)")
  p.add_argument("--hlo", default="", help="folder for each case's optimized HLO (gzipped)")
  p.add_argument("--fit", default="", help="ALPHA:MS,ALPHA:MS measured (first of --forms): fit the GPU model")
  return p.parse_args(argv)


def cases(args) -> list[tuple[str, float, str]]:
  found = []
  for model in args.models.split(","):
    alphas = [0.0] if model == "flax_resnet50" else [float(a) for a in args.alphas.split(",")]
    forms = ["default"] if model == "flax_resnet50" else args.forms.split(",")
    found += [(model, alpha, form) for alpha in alphas for form in forms]
  return found


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    target = aot.get_target(args.target)
    devices = target.devices()
    for form in args.forms.split(","):
      if form != "default":
        execution.Form.parse(form)
  except (aot.TargetUnavailable, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.batch % len(devices):
    print(f"error: --batch {args.batch} does not split over the {len(devices)} chips of {target.name}.",
          file=sys.stderr)
    return 2
  mesh = Mesh(devices, ("data",))
  date = datetime.date.today().isoformat()
  print(f"{target.name}: {len(devices)} x {target.chip.kind}; jax {jax.__version__}; {date}; train step, "
        f"batch {args.batch}, {args.image_size} x {args.image_size}, {args.dtype}, state donated", flush=True)
  print(table_line("case", None), flush=True)
  reports: dict[tuple[str, float, str], aot.Report] = {}
  for model, alpha, form in cases(args):
    label = model if model == "flax_resnet50" else f"{model} a={alpha:g} {form}"
    label += " [state row-major]" if args.state_layout == "default" else ""
    try:
      report = compile_case(target, mesh, model, alpha, form, args.batch, args.dtype, args.image_size,
                            args.num_classes, args.state_layout)
    except Exception as e:  # noqa: BLE001 - one case failing to compile must not lose the others
      print(f"{label:<48}FAILED: {type(e).__name__}: {str(e).splitlines()[0][:300]}", flush=True)
      continue
    reports[model, alpha, form] = report
    base = reports.get((model, 0.0, "default"))
    ratio = report.estimate_ms / base.estimate_ms if base and report.estimate_ms and base.estimate_ms else None
    print(table_line(label, report, ratio), flush=True)
    print(f"{'':<4}by part: " + ", ".join(f"{part} {n}" for part, n in aot.by_part(report.kernels).items()),
          flush=True)
    row = {"date": date, "model": model, "alpha": alpha, "form": form, "batch": args.batch, "dtype": args.dtype,
           "image_size": args.image_size, "state_layout": args.state_layout, **report.row(), "ratio_to_alpha0": None if ratio is None else round(ratio, 4)}
    if args.results:
      os.makedirs(os.path.dirname(args.results) or ".", exist_ok=True)
      with open(args.results, "a") as f:
        f.write(json.dumps(row) + "\n")
    if args.hlo:
      os.makedirs(args.hlo, exist_ok=True)
      name = re.sub(r"[^A-Za-z0-9.]+", "_", f"{target.name} {label} b{args.batch} {args.dtype}").strip("_")
      with gzip.open(os.path.join(args.hlo, f"{name}.hlo.txt.gz"), "wt") as f:
        f.write(report.hlo)
  if reports:
    print(f"est. ms: {next(iter(reports.values())).estimate_model}; an estimate, not a measurement", flush=True)
  if args.fit:
    return fit(args, reports)
  return 0


def fit(args, reports) -> int:
  """Prints the GPU model through the measured points ``--fit`` gives (see the module docstring)."""
  points = []
  for item in args.fit.split(","):
    alpha, ms = (float(v) for v in item.split(":"))
    form = args.forms.split(",")[0]
    report = next((r for (m, a, f), r in reports.items() if a == alpha and f == form and m != "flax_resnet50"), None)
    if report is None:
      print(f"error: --fit {item}: no {form!r} case at alpha {alpha:g} in this run.", file=sys.stderr)
      return 2
    points.append((report.roofline_ms, report.launches, ms))
  model = aot.calibrate(points)
  print(f"fitted: {model.describe()} (from {', '.join(args.fit.split(','))} ms measured)")
  for (m, a, f), r in reports.items():
    print(f"  {m} a={a:g} {f}: {model.scale * r.roofline_ms + r.launches * model.per_kernel_us * 1e-3:.2f} ms")
  return 0


if __name__ == "__main__":
  with contextlib.suppress(KeyboardInterrupt):
    sys.exit(main())
