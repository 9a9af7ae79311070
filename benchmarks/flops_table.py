"""The cost table of Oct-ResNet and Oct-MobileNet v1 at 224 x 224, next to the published figures.

Counts MACs and parameters with `octflax.cost.analyze` (abstract traces, no FLOPs are spent)
for ResNet-26/50/101/152/200 at alpha 0, .125, .25, .5, .75 and MobileNet v1 (1.0x at every
alpha, 0.75x at 0 and .375), prints the tables, writes them as markdown and plots GMACs
against alpha. Exits with status 1 if any ResNet number (GMACs to four digits, or the
parameter count) differs from the published table.

Examples:
  python benchmarks/flops_table.py                    # docs/cost_table.md, docs/cost_table.png
  python -m benchmarks.flops_table --out /tmp/t.md    # plot next to it: /tmp/t.png
  python -m benchmarks.flops_table --xla              # adds XLA's count for ResNet-50
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import linen as nn  # noqa: E402

import octflax  # noqa: E402
from octflax import models  # noqa: E402
from octflax.cost import analyze, xla_flops  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALPHAS = (0.0, 0.125, 0.25, 0.5, 0.75)
INPUT = (1, 224, 224, 3)

# Published figures, as collected in octflax's reference facts (octconv_facts.md):
# Chen et al., "Drop an Octave", ICCV 2019 (arXiv 1904.05049), the official MXNet
# implementation (facebookresearch/OctConv) and the PyTorch port d-li14/octconv.pytorch.
SOURCE = ("Chen et al., \"Drop an Octave\" (ICCV 2019, arXiv 1904.05049), the official MXNet "
          "implementation facebookresearch/OctConv and the PyTorch port d-li14/octconv.pytorch, "
          "as collected in octflax's reference facts (octconv_facts.md)")
# Exact GMACs (convs and FC) at 224 x 224 per alpha in ALPHAS, and parameters (the same for
# every alpha): official placement, post-activation v1.5 bottleneck.
PUBLISHED_RESNET = {
    "oct_resnet26": ((2.3423, 2.0870, 1.8582, 1.4800, 1.2079), 15_995_176),
    "oct_resnet50": ((4.0892, 3.5652, 3.1035, 2.3671, 1.8800), 25_557_032),
    "oct_resnet101": ((7.8014, 6.6249, 5.5977, 3.9912, 2.9821), 44_549_160),
    "oct_resnet152": ((11.5136, 9.6846, 8.0918, 5.6153, 4.0842), 60_192_808),
    "oct_resnet200": ((15.0075, 12.5643, 10.4393, 7.1439, 5.1214), 64_673_832),
}
# MobileNet v1 MMACs: (width multiplier, alpha) -> (published value, how it is printed).
PUBLISHED_MOBILENET = {
    (1.0, 0.0): (568.7, "568.7"),
    (1.0, 0.5): (318.2, "318.2"),
    (0.75, 0.0): (325.0, "325"),
    (0.75, 0.375): (212.0, "about 212 (paper: 213)"),
}
MOBILENET_RUNS = [(1.0, a) for a in ALPHAS] + [(0.75, 0.0), (0.75, 0.375)]
# Paper, Table 1: MACs of one OctConv relative to the vanilla conv, in percent.
TABLE1 = {0.125: 82, 0.25: 67, 0.5: 44, 0.75: 30, 0.875: 26, 1.0: 25}
RATIO_LAYER = "stage2_block1/conv2/conv"  # a 3x3 conv of ResNet-50 at alpha -> alpha


def _label(name: str) -> str:
  return name.replace("oct_resnet", "ResNet-")


def _fmt_alpha(alpha: float) -> str:
  return "0" if alpha == 0 else f"{alpha:g}".lstrip("0")


def _closed_form_ratio(alpha: float) -> float:
  return 1 - 0.75 * (2 * alpha - alpha ** 2)


class _SplitThenOctConv(nn.Module):
  """Splits an input at alpha (no MACs), then one 3x3 OctConv of 64 channels, alpha -> alpha."""

  alpha: float

  @nn.compact
  def __call__(self, x):
    return octflax.OctConv(64, 3, self.alpha, self.alpha, use_bias=False)(
        octflax.OctTensor.from_array(x, self.alpha))


def _xla_conv_flops(model, input_shape) -> float:
  """XLA's FLOPs of only the convs and dot products: each compiled on its own and summed."""
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  variables = jax.eval_shape(lambda inp: model.init(jax.random.key(0), inp, train=False), x)
  jaxpr = jax.make_jaxpr(lambda v, inp: model.apply(v, inp, train=False))(variables, x)
  cache: dict = {}

  def walk(jp) -> float:
    total = 0.0
    for eqn in jp.eqns:
      if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
        key = (eqn.primitive.name, tuple(v.aval.shape for v in eqn.invars), str(eqn.params))
        if key not in cache:
          fn = jax.jit(lambda a, b, eqn=eqn: eqn.primitive.bind(a, b, **eqn.params))
          args = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in eqn.invars]
          analysis = fn.lower(*args).compile().cost_analysis()
          cache[key] = float((analysis[0] if isinstance(analysis, (list, tuple)) else analysis)["flops"])
        total += cache[key]
      for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
          inner = getattr(item, "jaxpr", item)
          if hasattr(inner, "eqns"):
            total += walk(inner)
    return total

  return walk(jaxpr.jaxpr)


def build(xla: bool = False, log=print) -> tuple[str, list[str], dict]:
  """Computes every number; returns (markdown, mismatch messages, raw results)."""
  results: dict = {"resnet": {}, "mobilenet": {}, "xla": {}, "single": {}}
  mismatches: list[str] = []
  for name, (published, published_params) in PUBLISHED_RESNET.items():
    for alpha, ref in zip(ALPHAS, published):
      start = time.perf_counter()
      report = analyze(models.get_model(name, alpha=alpha), INPUT)
      results["resnet"][name, alpha] = report
      log(f"  {_label(name):<11} alpha {alpha:<5} {report.gmacs:8.4f} GMACs  {report.params:>11,d} params"
          f"  ({time.perf_counter() - start:.1f} s)")
      if round(report.gmacs, 4) != ref:
        mismatches.append(f"{_label(name)} alpha {alpha}: {report.gmacs:.4f} GMACs, published {ref:.4f}")
      if report.params != published_params:
        mismatches.append(f"{_label(name)} alpha {alpha}: {report.params:,d} params, "
                          f"published {published_params:,d}")
  for alpha in TABLE1:
    octave, vanilla = (analyze(_SplitThenOctConv(a), (1, 32, 32, 64)).macs for a in (alpha, 0.0))
    results["single"][alpha] = octave / vanilla
  for wm, alpha in MOBILENET_RUNS:
    report = analyze(models.oct_mobilenet_v1(alpha=alpha, width_multiplier=wm), INPUT)
    results["mobilenet"][wm, alpha] = report
    log(f"  MobileNet v1 {wm}x alpha {alpha:<5} {report.macs / 1e6:8.1f} MMACs  {report.params:>11,d} params")
  if xla:
    for alpha in ALPHAS:
      start = time.perf_counter()
      model = models.oct_resnet50(alpha=alpha)
      xla_conv_flops = _xla_conv_flops(model, INPUT)
      results["xla"][alpha] = (xla_conv_flops, xla_flops(model, INPUT))
      log(f"  XLA ResNet-50 alpha {alpha:<5} conv+dot {xla_conv_flops / 2e9:.4f} G MAC-equivalents"
          f"  ({time.perf_counter() - start:.1f} s)")
  return render(results, mismatches), mismatches, results


def render(results: dict, mismatches: list[str]) -> str:
  command = "python benchmarks/flops_table.py" + (" --xla" if results["xla"] else "")
  lines = [
      "# Cost of Oct-ResNet and Oct-MobileNet v1 at 224 x 224",
      "",
      f"Generated by `{command}` "
      f"(octflax {octflax.__version__}, jax {jax.__version__}). MACs are multiply-accumulates "
      "of all convolutions and the classifier for one 224 x 224 image, every kernel tap counted "
      "(the paper's \"FLOPs\"), from `octflax.cost.analyze`; parameters are the same for every "
      "alpha. Placement: vanilla stem, the first block converts into the octave representation, "
      "the last stage runs at alpha 0.",
      "",
      f"Published figures: {SOURCE}.",
      "",
      "## Oct-ResNet (bottleneck, v1.5)",
      "",
      "| model | alpha | GMACs | published | difference | vs alpha 0 | params | published params |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for name, (published, published_params) in PUBLISHED_RESNET.items():
    vanilla = results["resnet"][name, 0.0].macs
    for alpha, ref in zip(ALPHAS, published):
      report = results["resnet"][name, alpha]
      diff = round(report.gmacs, 4) - ref
      lines.append(
          f"| {_label(name)} | {_fmt_alpha(alpha)} | {report.gmacs:.4f} | {ref:.4f} | {diff:+.4f} | "
          f"{100 * report.macs / vanilla:.1f}% | {report.params:,d} | {published_params:,d} |")
  lines += [
      "",
      "## Oct-MobileNet v1 (depthwise OctConv: H->H and L->L only)",
      "",
      "| model | alpha | MMACs | published | difference | params |",
      "|---|---|---|---|---|---|",
  ]
  for (wm, alpha), report in results["mobilenet"].items():
    mmacs = report.macs / 1e6
    if (wm, alpha) in PUBLISHED_MOBILENET:
      ref, printed = PUBLISHED_MOBILENET[wm, alpha]
      published, diff = printed, f"{mmacs - ref:+.2f}"
    else:
      published, diff = "-", "-"
    lines.append(f"| MobileNet v1 {wm}x | {_fmt_alpha(alpha)} | {mmacs:.1f} | {published} | {diff} | "
                 f"{report.params:,d} |")
  lines += [
      "",
      "The 0.75x network at alpha .375 counts 211.4 MMACs: within one unit of the published "
      "\"about 212\" (the paper prints 213), not a rounding of it.",
      "",
      "## Per-layer MACs relative to the vanilla conv (paper, Table 1)",
      "",
      f"Measured on ResNet-50's `{RATIO_LAYER}` (3x3, 128 channels, 28 x 28, alpha -> alpha) "
      "and on a single 3x3 OctConv (64 channels, 32 x 32); closed form 1 - 3/4(2a - a^2).",
      "",
      "| alpha | " + " | ".join(_fmt_alpha(a) for a in TABLE1) + " |",
      "|---|" + "---|" * len(TABLE1),
      "| closed form | " + " | ".join(f"{100 * _closed_form_ratio(a):.1f}%" for a in TABLE1) + " |",
      "| Table 1 | " + " | ".join(f"{p}%" for p in TABLE1.values()) + " |",
  ]
  layer = lambda alpha: {l.name: l for l in results["resnet"]["oct_resnet50", alpha].layers}[RATIO_LAYER]
  measured = [f"{100 * layer(a).macs / layer(0.0).macs:.1f}%" if ("oct_resnet50", a) in results["resnet"]
              else "-" for a in TABLE1]
  lines.append("| ResNet-50 layer | " + " | ".join(measured) + " |")
  lines.append("| single OctConv | " + " | ".join(f"{100 * results['single'][a]:.1f}%" for a in TABLE1) + " |")
  if results["xla"]:
    lines += [
        "",
        f"## XLA's count for ResNet-50 (`cost_analysis()` on {jax.default_backend()}, 2 FLOPs per MAC)",
        "",
        "XLA skips the kernel taps that fall on SAME padding and adds elementwise work (BatchNorm, "
        "ReLU, pooling, residual adds, upsampling). \"conv+dot\" is the sum over every conv and "
        "dot of the traced program, each compiled alone: exactly 2 x its MACs over the taps inside "
        "the map.",
        "",
        "| alpha | 2 x MACs (G) | XLA conv+dot (G) | padded taps | XLA total (G) | elementwise | XLA total / 2 x MACs |",
        "|---|---|---|---|---|---|---|",
    ]
    for alpha, (conv_flops, total) in results["xla"].items():
      two_macs = 2 * results["resnet"]["oct_resnet50", alpha].macs
      lines.append(
          f"| {_fmt_alpha(alpha)} | {two_macs / 1e9:.4f} | {conv_flops / 1e9:.4f} | "
          f"{100 * (1 - conv_flops / two_macs):.2f}% | {total / 1e9:.4f} | "
          f"{100 * (total - conv_flops) / total:.2f}% | {total / two_macs:.4f} |")
  lines += ["", "Check against the published ResNet table (four digits, parameters): "
            + ("all equal." if not mismatches else "MISMATCH: " + "; ".join(mismatches)), ""]
  return "\n".join(lines)


def plot(results: dict, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [3, 2]})
  for name, (published, _) in PUBLISHED_RESNET.items():
    counted = [results["resnet"][name, a].gmacs for a in ALPHAS]
    left.plot(ALPHAS, counted, marker="o", label=_label(name))
    left.plot(ALPHAS, published, linestyle="none", marker="x", markersize=9, color="black")
  left.set(xlabel="alpha (share of low-frequency channels)", ylabel="GMACs at 224 x 224",
           title="Oct-ResNet (o: octflax, x: published)", xticks=ALPHAS)
  left.grid(alpha=0.3)
  left.legend(fontsize=8)
  for wm in (1.0, 0.75):
    runs = sorted((a, r.macs / 1e6) for (w, a), r in results["mobilenet"].items() if w == wm)
    right.plot(*zip(*runs), marker="o", label=f"{wm}x")
    refs = sorted((a, v[0]) for (w, a), v in PUBLISHED_MOBILENET.items() if w == wm)
    right.plot(*zip(*refs), linestyle="none", marker="x", markersize=9, color="black")
  right.set(xlabel="alpha", ylabel="MMACs at 224 x 224", title="Oct-MobileNet v1",
            xticks=[0.0, 0.125, 0.25, 0.375, 0.5, 0.75])
  right.tick_params(axis="x", labelsize=7)
  right.grid(alpha=0.3)
  right.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--out", default=os.path.join(REPO, "docs", "cost_table.md"),
                      help="markdown output (default: docs/cost_table.md)")
  parser.add_argument("--plot", default=None,
                      help="PNG output (default: the --out path with .png; 'none' to skip)")
  parser.add_argument("--xla", action="store_true",
                      help="add XLA's FLOP count of ResNet-50 (compiles it on the default backend)")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  print(f"octflax {octflax.__version__}, jax {jax.__version__} on {jax.default_backend()}")
  markdown, mismatches, results = build(xla=args.xla)
  print()
  print(markdown)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    f.write(markdown)
  print(f"wrote {args.out}")
  png = args.plot or os.path.splitext(args.out)[0] + ".png"
  if png.lower() != "none":
    plot(results, png)
    print(f"wrote {png}")
  print(f"took {time.perf_counter() - start:.1f} s")
  if mismatches:
    print("ResNet numbers differ from the published table:", *mismatches, sep="\n  ", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
