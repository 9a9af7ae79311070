"""Memory traffic of a compiled network, read from its optimized HLO: what the fusions move.

Backs docs/benchmarks.md: what the compiled Oct-ResNet-50 reads and writes with octflax's
inference options and with XLA's defaults (the fused loops' recomputation).

For every top-level instruction of the compiled entry computation, the bytes it reads (its
operands) and writes (its result) are added up by kind:

- ``loop``: XLA's own fused loops (BatchNorm, activations, adds, pooling, upsampling);
- ``library``: fusions XLA hands to a kernel library (``kind=kCustom``: the dots and
  convolutions, with whatever elementwise work was fused into them);
- ``other``: unfused ops (a convolution, a reduce-window, a copy, ...).

``broadcast`` is reported apart: full tensors XLA materialises from a vector or a scalar (a
BatchNorm statistic, ReLU's zero) so that a library fusion can read them.

The count is static: no timing, no cache effects. It shows what a wall-time split (see
`benchmarks.probes.decompose`) cannot: whether an elementwise result is written once and read back,
or recomputed by every consumer from the convolution outputs it depends on (a fused loop that
reads many full-size tensors is such a recomputation).

Example:
  python -m benchmarks.probes.hlo_traffic --model oct_resnet50 --alphas 0,0.25,0.5 --batch 8
  python -m benchmarks.probes.hlo_traffic --model oct_resnet50 --compile xla-default --alphas 0.5 --batch 8
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys

import jax.numpy as jnp

from benchmarks import benchmark

# Bytes per element of the HLO element types a network produces.
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
               "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}
_SHAPE = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\((.*?)\)(.*)$")


def _bytes(shape_text: str) -> int:
  """Bytes of an HLO shape (an array or a tuple of arrays); unknown types count 4 bytes."""
  total = 0
  for dtype, dims in _SHAPE.findall(shape_text):
    total += DTYPE_BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
  return total


@dataclasses.dataclass
class Instruction:
  name: str
  kind: str  # 'loop', 'library', 'broadcast' or 'other'
  read: int  # bytes of all operands
  written: int  # bytes of the result
  big_operands: int  # operands of at least a quarter of the result's size


def entry_instructions(hlo_text: str) -> list[Instruction]:
  """The entry computation's instructions that move data, with their bytes read and written."""
  start = hlo_text.find("\nENTRY ")
  if start < 0:
    raise ValueError("hlo_traffic: the text has no ENTRY computation; pass an optimized HLO module.")
  sizes: dict[str, int] = {}
  rows = []
  for line in hlo_text[start:].splitlines()[1:]:
    if line.startswith("}"):
      break
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, shape, opcode, operands, attributes = match.groups()
    written = _bytes(shape)
    sizes[name] = written
    if opcode in ("parameter", "constant", "bitcast", "get-tuple-element", "tuple"):
      continue
    reads = [sizes.get(op, 0) for op in re.findall(r"%([\w.\-]+)", operands)]
    if opcode != "fusion":
      kind = "other"
    elif "kind=kCustom" in attributes:
      kind = "library"
    elif name.startswith("wrapped_broadcast"):
      kind = "broadcast"
    else:
      kind = "loop"
    rows.append(Instruction(name, kind, sum(reads), written,
                            sum(1 for r in reads if written and r * 4 >= written)))
  return rows


def summarize(rows: list[Instruction]) -> dict[str, float]:
  """MB read and written per kind, e.g. ``{'loop_read_mb': ..., 'loop_written_mb': ...}``."""
  out = {}
  for kind in ("loop", "library", "broadcast", "other"):
    out[f"{kind}_read_mb"] = sum(r.read for r in rows if r.kind == kind) / 1e6
    out[f"{kind}_written_mb"] = sum(r.written for r in rows if r.kind == kind) / 1e6
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="oct_resnet50",
                      help="a registry name, with the model variants of benchmarks.benchmark (e.g. ':strided')")
  parser.add_argument("--alphas", default="0,0.5")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--mode", choices=["inference", "train"], default="inference")
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--channels", type=int, default=3)
  parser.add_argument("--num-classes", type=int, default=1000)
  parser.add_argument("--compile", choices=list(benchmark.COMPILE_SETTINGS), default="octflax",
                      help="XLA options, as benchmarks.benchmark's --compile")
  parser.add_argument("--top", type=int, default=3, help="also list the N loops that read the most")
  args = parser.parse_args(argv)
  print(f"{'model':24} {'alpha':>5} {'loop MB r/w':>15} {'library MB r/w':>15} {'broadcast MB':>12} "
        f"{'other MB r/w':>13}")
  for alpha in [float(a) for a in args.alphas.split(",")]:
    case = benchmark.make_case(args.model, alpha, args.batch, args.mode, args.image_size,
                               args.num_classes, jnp.float32, args.channels, args.compile)
    rows = entry_instructions(case.hlo)
    s = summarize(rows)
    print(f"{args.model:24} {alpha:5g} {s['loop_read_mb']:7.1f}/{s['loop_written_mb']:<7.1f} "
          f"{s['library_read_mb']:7.1f}/{s['library_written_mb']:<7.1f} {s['broadcast_written_mb']:12.1f} "
          f"{s['other_read_mb']:6.1f}/{s['other_written_mb']:<6.1f}")
    loops = sorted((r for r in rows if r.kind == "loop"), key=lambda r: -r.read)
    for r in loops[: args.top]:
      print(f"    {r.name:36} reads {r.read / 1e6:6.1f} MB from {r.big_operands} full-size operands, "
            f"writes {r.written / 1e6:5.1f} MB")
  return 0


if __name__ == "__main__":
  sys.exit(main())
