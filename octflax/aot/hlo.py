"""A reader of optimized HLO text (``compiled.as_text()``): computations, instructions, shapes, attributes.

What `octflax.aot.census` reads a compiled program with: `parse_module` splits the module
into computations of `Instruction` records; the helpers read array shapes and sizes, an
attribute's value, the jax source of an instruction (its metadata's ``op_name``) and the TPU
compiler's estimated cycles.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Iterable

_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2, "f16": 2,
          "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b(pred|bf16|f8e4m3fn|f8e5m2|c64|c128|[suf]\d+)\[([\d,]*)\]")


@dataclasses.dataclass
class Instruction:
  name: str
  shape: str
  op: str
  operands: list[str]
  attrs: str
  args: str = ""


def arrays(shape_text: str) -> list[tuple[str, tuple[int, ...]]]:
  return [(dtype, tuple(int(d) for d in dims.split(",") if d)) for dtype, dims in _ARRAY.findall(shape_text)]


def nbytes(arrays: Iterable[tuple[str, tuple[int, ...]]]) -> float:
  return float(sum(_BYTES.get(dtype, 4) * math.prod(dims) for dtype, dims in arrays))


def split_instruction(text: str) -> tuple[str, str, str, str]:
  """``(shape, opcode, operands, attributes)`` of the right-hand side ``SHAPE opcode(OPERANDS), ATTRS``."""
  if text.startswith("("):  # a tuple shape: up to its closing parenthesis
    depth, end = 0, 0
    for end, ch in enumerate(text):
      depth += (ch == "(") - (ch == ")")
      if depth == 0:
        break
    end += 1
  else:
    end = text.find(" ")
  shape, rest = text[:end], text[end:]
  m = re.match(r"\s*([a-z][\w\-]*)\(", rest)
  if not m:
    return shape, "", "", rest
  depth, k = 1, m.end()
  while k < len(rest) and depth:
    depth += (rest[k] == "(") - (rest[k] == ")")
    k += 1
  return shape, m.group(1), rest[m.end():k - 1], rest[k:]


def parse_module(hlo: str) -> tuple[dict[str, list[Instruction]], str]:
  """The computations of an HLO module's text (name -> instructions) and the entry's name."""
  computations: dict[str, list[Instruction]] = {}
  entry, current = "", None
  for line in hlo.splitlines():
    if not line.strip():
      continue
    if not line[0].isspace():
      m = re.match(r"^(ENTRY\s+)?%?([^\s(]+)", line)
      current = m.group(2) if m and line.rstrip().endswith("{") else None
      if current is not None:
        computations[current] = []
        entry = current if m.group(1) else entry
      continue
    m = re.match(r"^\s+(?:ROOT\s+)?%?([^\s=]+)\s*=\s*(.*)$", line)
    if m and current is not None:
      shape, op, operands, attrs = split_instruction(m.group(2))
      computations[current].append(
          Instruction(m.group(1), shape, op, re.findall(r"%([\w.\-]+)", operands), attrs, operands))
  return computations, entry


def attr(attrs: str, key: str) -> str:
  m = re.search(r"\b" + re.escape(key) + r'=("[^"]*"|\{[^}]*\}|[^,\s]+)', attrs)
  return m.group(1).strip('"') if m else ""


def source(attrs: str) -> str:
  m = re.search(r'op_name="([^"]*)"', attrs)
  return m.group(1) if m else ""


def cycles(attrs: str) -> float:
  m = re.search(r'"estimated_cycles"\s*:\s*"?(\d+)', attrs)
  return float(m.group(1)) if m else 0.0


def body(computations, name: str, seen: set[str] | None = None) -> list[Instruction]:
  """The instructions of a called computation and of everything it calls (nested fusions)."""
  seen = set() if seen is None else seen
  if name in seen or name not in computations:
    return []
  seen.add(name)
  out = []
  for ins in computations[name]:
    out.append(ins)
    for callee in re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", ins.attrs):
      out += body(computations, callee, seen)
  return out


__all__ = ["Instruction", "arrays", "attr", "body", "cycles", "nbytes", "parse_module", "source",
           "split_instruction"]
