"""Alpha sweep: the same network, recipe, seed and budget at several alphas.

Each run is one call of the trainer (`experiments.train`) in its own working
directory, so a sweep that is stopped resumes where it was: finished runs are read
back from their ``summary.json`` and an unfinished run resumes from its checkpoint.

Writes one results file (per run: alpha, seed, test accuracy, GMACs per image,
parameters, training time, images per second, device, epochs, config) and a plot of
test accuracy against GMACs per image (mean and spread over seeds), in the manner of
the paper's Figure 4.

Examples:
  # CPU protocol (see experiments/configs/sweep_cpu.py for the budget and result)
  python -m experiments.sweep --config experiments/configs/sweep_cpu.py
  # Full protocol on one GPU, 3 seeds
  python -m experiments.sweep --config experiments/configs/sweep_gpu.py --seeds 0,1,2
  # A second seed on another day or machine, merged with the runs of an earlier results file
  python -m experiments.sweep --config experiments/configs/sweep_cpu.py --seeds 0,1 \
      --previous experiments/results/fashion_mnist_alpha_sweep.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ALPHAS = "0,0.125,0.25,0.5,0.75"


def run_one(config: str, workdir: str, alpha: float, seed: int, overrides: list[str]) -> dict:
  """Trains one configuration (or resumes it) and returns its summary."""
  summary_path = os.path.join(workdir, "summary.json")
  if not os.path.exists(summary_path):
    command = [sys.executable, "-m", "experiments.train", f"--workdir={workdir}", f"--config={config}",
               f"--config.model.alpha={alpha}", f"--config.seed={seed}", *overrides]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)
  with open(summary_path) as f:
    return json.load(f)


def row_of(summary: dict, alpha: float, seed: int) -> dict:
  config = summary.get("config", {})
  return {
      "alpha": alpha,
      "seed": seed,
      "test_accuracy": summary["test_accuracy"],
      "validation_accuracy": summary.get("validation_accuracy"),
      "gmacs_per_image": summary["gmacs_per_image"],
      "params": summary["params"],
      "train_seconds": summary["train_seconds"],
      "images_per_second": summary["images_per_second"],
      "device": summary.get("device"),
      "epochs": config.get("num_epochs"),
      "model": config.get("model", {}).get("name"),
      "config": config,
  }


def _without_run_fields(config: dict) -> dict:
  """A run's config less what a sweep varies (alpha and seed) and what does not change its results (profile_steps)."""
  config = json.loads(json.dumps(config))
  config.get("model", {}).pop("alpha", None)
  config.pop("seed", None)
  config.pop("profile_steps", None)
  return config


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def load_previous(path: str, config: str, overrides: list[str]) -> dict[tuple[float, int], dict]:
  """Runs of an earlier results file of the same protocol, by (alpha, seed)."""
  with open(path) as f:
    previous = json.load(f)
  problems = []
  if os.path.abspath(previous.get("protocol", "")) != os.path.abspath(config):
    problems.append(f"its protocol is {previous.get('protocol')!r}, this sweep's is {config!r}")
  if previous.get("overrides", []) != list(overrides):
    problems.append(f"its overrides are {previous.get('overrides', [])}, this sweep's are {list(overrides)}")
  if problems:
    raise SystemExit(f"error: --previous {path} cannot be merged: " + "; ".join(problems) + ".")
  return {(float(r["alpha"]), int(r["seed"])): r for r in previous["runs"]}


def check_same_recipe(reused: list[dict], trained: list[dict]) -> None:
  """Refuses to merge reused runs whose config differs from the runs trained now (but for alpha, seed)."""
  if not reused or not trained:
    return
  reference = _flat(_without_run_fields(trained[0]["config"]))
  for row in reused:
    other = _flat(_without_run_fields(row["config"]))
    differences = sorted(k for k in reference.keys() | other.keys() if reference.get(k) != other.get(k))
    if differences:
      raise SystemExit(
          f"error: the earlier run alpha {row['alpha']:g} seed {row['seed']} used a different recipe "
          f"({', '.join(f'{k}: {other.get(k)!r} then, {reference.get(k)!r} now' for k in differences[:5])}); "
          "it is not merged. Rerun it, or drop --previous.")


def reused_runs(previous: dict[tuple[float, int], dict], alphas: list[float], seeds: list[int]) -> list[dict]:
  return [previous[(a, s)] for s in seeds for a in alphas if (a, s) in previous]


def aggregate(rows: list[dict]) -> list[dict]:
  """Mean and standard deviation over seeds, per alpha."""
  out = []
  for alpha in sorted({r["alpha"] for r in rows}):
    group = [r for r in rows if r["alpha"] == alpha]
    accuracies = [r["test_accuracy"] for r in group]
    out.append({
        "alpha": alpha,
        "seeds": len(group),
        "gmacs_per_image": group[0]["gmacs_per_image"],
        "test_accuracy_mean": statistics.mean(accuracies),
        "test_accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        "validation_accuracy_mean": (statistics.mean(r["validation_accuracy"] for r in group)
                                     if all(r.get("validation_accuracy") is not None for r in group) else None),
        "images_per_second_mean": statistics.mean(r["images_per_second"] for r in group),
    })
  return out


def plot(summary: list[dict], path: str, title: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4.2))
  x = [s["gmacs_per_image"] * 1e3 for s in summary]
  y = [100 * s["test_accuracy_mean"] for s in summary]
  err = [100 * s["test_accuracy_std"] for s in summary]
  ax.errorbar(x, y, yerr=err, fmt="o-", capsize=4, color="tab:blue", label="Oct (alpha > 0)")
  for s, xi, yi in zip(summary, x, y):
    ax.annotate(f"alpha={s['alpha']:g}", (xi, yi), textcoords="offset points", xytext=(4, 6), fontsize=8)
  vanilla = [s for s in summary if s["alpha"] == 0.0]
  if vanilla:
    ax.axhline(100 * vanilla[0]["test_accuracy_mean"], color="gray", linestyle=":", label="vanilla (alpha = 0)")
  ax.set_xlabel("MMACs per image")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def markdown(summary: list[dict]) -> str:
  lines = ["| alpha | MMACs / image | validation accuracy (%) | test accuracy (%) | images / s (train) |",
           "|---|---|---|---|---|"]
  for s in summary:
    spread = f" +- {100 * s['test_accuracy_std']:.2f}" if s["seeds"] > 1 else ""
    validation = s.get("validation_accuracy_mean")
    lines.append(f"| {s['alpha']:g} | {s['gmacs_per_image'] * 1e3:.2f} | "
                 f"{'-' if validation is None else f'{100 * validation:.2f}'} | "
                 f"{100 * s['test_accuracy_mean']:.2f}{spread} | {s['images_per_second_mean']:.0f} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="experiments/configs/sweep_cpu.py")
  parser.add_argument("--alphas", default=DEFAULT_ALPHAS)
  parser.add_argument("--seeds", default="0")
  parser.add_argument("--workdir", default=None, help="root of the runs (default runs/sweep_<config>)")
  parser.add_argument("--results", default="experiments/results/fashion_mnist_alpha_sweep.json")
  parser.add_argument("--plot", default=None, help="PNG path (default: the results path with .png)")
  parser.add_argument("--title", default="Fashion-MNIST: accuracy against cost")
  parser.add_argument("--previous", default=None,
                      help="an earlier results file of the same protocol: its runs are reused, not trained again")
  parser.add_argument("overrides", nargs="*", help="extra --config.FIELD=VALUE flags for every run")
  args = parser.parse_args(argv)

  name = os.path.splitext(os.path.basename(args.config))[0]
  workroot = args.workdir or os.path.join("runs", f"sweep_{name}")
  alphas = [float(a) for a in args.alphas.split(",")]
  seeds = [int(s) for s in args.seeds.split(",")]
  previous = load_previous(args.previous, args.config, args.overrides) if args.previous else {}
  rows, trained = [], []
  start = time.time()
  for seed in seeds:
    for alpha in alphas:
      if (alpha, seed) in previous:
        rows.append(previous[(alpha, seed)])
        print(f"alpha {alpha:g} seed {seed}: from {args.previous}", flush=True)
        continue
      workdir = os.path.abspath(os.path.join(workroot, f"alpha{alpha:g}_seed{seed}"))
      summary = run_one(args.config, workdir, alpha, seed, args.overrides)
      rows.append(row_of(summary, alpha, seed))
      trained.append(rows[-1])
      if len(trained) == 1:  # As early as a run of this recipe exists: not after the whole sweep.
        check_same_recipe(reused_runs(previous, alphas, seeds), trained)
      print(f"alpha {alpha:g} seed {seed}: test accuracy {100 * rows[-1]['test_accuracy']:.2f}% "
            f"({rows[-1]['gmacs_per_image'] * 1e3:.2f} MMACs, {rows[-1]['train_seconds']:.0f} s)", flush=True)
  summary = aggregate(rows)
  os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
  with open(args.results, "w") as f:
    json.dump({"protocol": args.config, "overrides": list(args.overrides),
               "sweep_seconds": time.time() - start, "summary": summary, "runs": rows}, f, indent=1)
  plot_path = args.plot or os.path.splitext(args.results)[0] + ".png"
  plot(summary, plot_path, args.title)
  print(markdown(summary))
  print(f"wrote {args.results} and {plot_path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
