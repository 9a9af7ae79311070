"""Converts a PyTorch ResNet checkpoint (the OctConv port's or torchvision's) to an octflax one.

Reads the ``.pth`` with torch (CPU, ``weights_only=True``): a raw state_dict or a dict
with a ``state_dict`` entry, a ``module.`` prefix (DataParallel) stripped. Writes
``OUT`` as an octflax checkpoint, the trainer's format (`octflax.convert.save_checkpoint`):
``python -m experiments.evaluate --checkpoint OUT`` evaluates it and
``python -m experiments.train --config.init_from=OUT`` fine-tunes from it. Paths may be
relative, absolute or start with ``~``.

Examples:
  python -m experiments.convert_torch oct_resnet50_0.5.pth --arch oct_resnet50 --alpha 0.5 \\
      --out checkpoints/oct_resnet50_0.5
  python -m experiments.convert_torch resnet50-11ad3fa6.pth --arch oct_resnet50 \\
      --source torchvision --out checkpoints/resnet50_tv
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

import jax
import numpy as np

from octflax import convert
from octflax.errors import EXIT_FAILED, EXIT_USAGE, OctflaxError, exit_status
from octflax.files import resolve_path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m experiments.convert_torch",
      description="Convert a PyTorch Oct-ResNet (d-li14/octconv.pytorch layout) or torchvision "
                  "ResNet checkpoint into an octflax checkpoint.")
  parser.add_argument("checkpoint", help="the .pth file")
  parser.add_argument("--arch", required=True, help="octflax model name, e.g. oct_resnet50 "
                      "(torchvision's resnet50 is oct_resnet50 at alpha 0)")
  parser.add_argument("--alpha", type=float, default=0.0, help="the checkpoint's alpha (default 0)")
  parser.add_argument("--source", choices=convert.SOURCES, default=None,
                      help="key layout; default: detected from the keys")
  parser.add_argument("--num-classes", type=int, default=None,
                      help="classifier outputs (default: read from fc.weight)")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--force", action="store_true", help="replace an existing checkpoint in --out")
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    state_dict = convert.load_torch_checkpoint(resolve_path(args.checkpoint))
  except ImportError as e:  # No torch: nothing ran.
    print(f"error: {e}", file=sys.stderr)
    return EXIT_USAGE
  except (OSError, ValueError) as e:
    print(f"error: cannot read {args.checkpoint}: {e}", file=sys.stderr)
    return EXIT_FAILED
  try:
    source = args.source or convert.detect_source(state_dict)
    variables = convert.from_torch_state_dict(
        state_dict, arch=args.arch, alpha=args.alpha, source=source, num_classes=args.num_classes)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_FAILED
  out = resolve_path(args.out)
  if os.path.exists(out) and os.listdir(out):
    if not os.path.isdir(os.path.join(out, "meta")):
      print(f"error: --out {args.out!r} ({out}) exists and is not an octflax checkpoint; give a new "
            "directory.", file=sys.stderr)
      return EXIT_FAILED
    if not args.force:
      print(f"error: {out} holds a checkpoint; pass --force to replace it.", file=sys.stderr)
      return EXIT_FAILED
    shutil.rmtree(out)
  elif os.path.exists(out):
    os.rmdir(out)
  try:
    out = convert.save_checkpoint(out, variables, arch=args.arch, alpha=args.alpha, source=source,
                                  converted_from=resolve_path(args.checkpoint))
  except OctflaxError as e:  # A write that failed (74), or a checkpoint error (1).
    print(f"error: {e}", file=sys.stderr)
    return exit_status(e)
  count = sum(int(np.size(v)) for v in jax.tree.leaves(variables["params"]))
  print(f"wrote {out}: {args.arch} alpha={args.alpha} source={source} "
        f"({count:,} parameters, {len(state_dict)} PyTorch entries)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
