"""What a compiled program launches: its kernels by class, with flops, bytes and the compiler's cycles.

`kernels` reads the optimized HLO of a compiled program (``compiled.as_text()``, after XLA's
fusion passes: the program the device runs) and returns one `Kernel` per launch of the entry
computation, descending into ``while`` loops (times their known trip count), conditionals and
calls. Instructions that launch nothing (parameters, tuples, bitcasts, constants) are skipped;
an asynchronous pair (``all-reduce-start`` / ``-done``, ``copy-start`` / ``-done``) counts once.

A TPU program also moves buffers between its HBM and on-chip memory with asynchronous
copies and slices (``copy-start`` / ``slice-start`` whose result lies in another memory space,
``S(1)`` in its layout): transfers overlapped with the kernels, not kernels, so not counted.
On a TPU, an operation left outside any fusion is a kernel of its own and is classed as the
fusion it would be part of (a lone ``reduce`` as a reduction fusion, a ``broadcast`` as data
movement, a ``multiply`` as a loop fusion).

Each kernel gets one of `CLASSES`:

- ``conv forward``, ``conv input-grad``, ``conv weight-grad``: a convolution (a cuDNN custom
  call on a GPU, whose target says which, except that XLA runs some input gradients as forward
  calls; a convolution fusion on a TPU), told apart by its source in jax: a convolution under
  ``transpose(...)`` is a gradient, and the one that takes the input's features in the batch
  position (dimension labels ``f01b_...``) the weight gradient;
- ``gemm``: a matrix product (cuBLAS, a Triton gemm fusion, a dot fusion, a TPU convolution
  without spatial axes);
- ``reduction fusion``: a fusion with a reduction (BatchNorm statistics, the loss, pooling);
- ``loop fusion``: any other fusion of elementwise work;
- ``data-movement fusion``: a fusion of reshapes, slices, concatenations, pads, broadcasts and
  conversions only;
- ``transpose``: a transpose, or a fusion of only a transpose and conversions;
- ``copy``: a top-level copy (copy insertion's, e.g. around a donated buffer);
- ``collective``: all-reduce, all-gather, reduce-scatter, all-to-all, collective-permute;
- ``other``: anything else (other custom calls, scatters, sorts, random numbers).

Flops count 2 per multiply-accumulate of convolutions and matrix products only (elementwise
work is memory-bound and counted in bytes); bytes are each kernel's operands read and outputs
written, whole arrays (an upper bound where a fusion reads part of an operand).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Iterable

from octflax.aot.hlo import Instruction, arrays, attr, body, cycles, nbytes, parse_module, source

CLASSES = ("conv forward", "conv input-grad", "conv weight-grad", "gemm", "reduction fusion", "loop fusion",
           "data-movement fusion", "transpose", "copy", "collective", "other")
CONV_CLASSES = CLASSES[:3]

_SILENT = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all", "opt-barrier",
           "partition-id", "replica-id", "add-dependency", "domain", "copy-done", "all-reduce-done",
           "all-gather-done", "collective-permute-done", "send-done", "recv-done", "async-done", "async-update",
           "slice-done"}
_COLLECTIVES = {"all-reduce", "all-reduce-start", "all-gather", "all-gather-start", "reduce-scatter", "all-to-all",
                "collective-permute", "collective-permute-start", "ragged-all-to-all"}
_MOVES = {"copy", "transpose", "reshape", "bitcast", "slice", "concatenate", "pad", "broadcast", "reverse",
          "dynamic-slice", "dynamic-update-slice", "parameter", "constant", "get-tuple-element", "tuple", "iota",
          "convert", "bitcast-convert"}
_STRUCTURAL = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast"}
_ELEMENTWISE = {"add", "subtract", "multiply", "divide", "maximum", "minimum", "select", "compare", "exponential",
                "log", "negate", "sqrt", "rsqrt", "abs", "and", "or", "not", "power", "tanh", "clamp", "xor",
                "exponential-minus-one", "log-plus-one", "floor", "ceil", "sign", "is-finite", "remainder"}


@dataclasses.dataclass(frozen=True)
class Kernel:
  """One kernel launch (or ``count`` launches of it, inside a loop).

  Attributes:
    name: the HLO instruction's name.
    cls: one of `CLASSES`.
    detail: the custom-call target, fusion kind or opcode behind the class.
    flops: floating-point operations of convolutions and matrix products (all launches).
    bytes: bytes read and written (all launches).
    count: launches per program run (a loop's trip count, else 1).
    cycles: the TPU compiler's estimated cycles (all launches; 0 where it gives none).
    source: the jax operation it came from (the metadata's ``op_name``), '' when unknown.
  """

  name: str
  cls: str
  detail: str
  flops: float
  bytes: float
  count: int
  cycles: float
  source: str


def _is_transfer(shape: str) -> bool:
  """Whether an async copy moves a buffer between memory spaces (``S(n)`` in its source's or destination's layout)."""
  layouts = re.findall(r"(?:pred|bf16|f8e4m3fn|f8e5m2|c64|c128|[suf]\d+)\[[\d,]*\]\{([^}]*)\}", shape)
  return any(re.search(r"S\([1-9]\)", layout) for layout in layouts[:2])


def _trip_count(computations, loop: Instruction) -> int:
  """A while loop's trip count: XLA:GPU's ``known_trip_count``, else the bound its condition compares with."""
  m = re.search(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"', loop.attrs)
  if m:
    return int(m.group(1))
  condition = computations.get(attr(loop.attrs, "condition").lstrip("%"), [])
  constants = {i.name: i.args.strip() for i in condition if i.op == "constant"}
  for ins in condition:  # i < N, the loop counter against a constant
    if ins.op == "compare" and "direction=LT" in ins.attrs and len(ins.operands) == 2:
      bound = constants.get(ins.operands[1], "")
      if bound.isdigit():
        return int(bound)
  return 1


def _window(attrs: str) -> dict[str, list[list[int]]]:
  """An HLO convolution's ``window={size=3x3 stride=2x2 pad=1_1x1_1 lhs_dilate=.. rhs_dilate=..}``, per axis."""
  m = re.search(r"window=\{([^}]*)\}", attrs)
  fields = dict(item.split("=", 1) for item in m.group(1).split()) if m else {}
  return {key: [[int(v) for v in axis.split("_")] for axis in value.split("x")] for key, value in fields.items()
          if key in ("size", "stride", "pad", "lhs_dilate", "rhs_dilate")}


def _valid_taps(out: int, size: int, window: int, stride: int, pad_low: int, lhs_dilate: int, rhs_dilate: int) -> int:
  """(output position, window tap) pairs of one axis that read the input, not its padding."""
  if lhs_dilate == 1:
    total = 0
    for o in range(out):  # taps k with 0 <= o * stride + k * rhs_dilate - pad_low < size
      start = o * stride - pad_low
      first = max(0, -(start // rhs_dilate)) if start < 0 else 0
      last = min(window, -(-(size - start) // rhs_dilate))
      total += max(0, last - first)
    return total
  span = (size - 1) * lhs_dilate + 1
  return sum(1 for o in range(out) for k in range(window)
             if 0 <= (pos := o * stride + k * rhs_dilate - pad_low) < span and pos % lhs_dilate == 0)


def _conv_flops(ins: Instruction, shapes: dict[str, list]) -> float:
  """2 x the multiply-accumulates of an HLO convolution, counting only taps that read the input.

  Padded taps are skipped (as XLA's own cost analysis does): the TPU compiler writes some
  gradients as convolutions whose window is a whole feature map over a padded input, where
  counting every tap would overstate the work by the window's size.
  """
  out = arrays(ins.shape)
  lhs = shapes.get(ins.operands[0]) if ins.operands else None
  rhs = shapes.get(ins.operands[1]) if len(ins.operands) > 1 else None
  if not (out and lhs and rhs):
    return 0.0
  return _taps_flops(out[0][1], lhs[0][1], rhs[0][1], attr(ins.attrs, "dim_labels"), _window(ins.attrs))


def _taps_flops(out_shape, lhs_shape, rhs_shape, labels: str, window: dict[str, list[list[int]]]) -> float:
  """`_conv_flops` of ``out = conv(lhs, rhs)`` with ``labels`` (``b01f_01io->b01f``) and ``window``."""
  if "->" not in labels or "_" not in labels:
    return 0.0
  (lhs_labels, rhs_labels), out_labels = labels.split("->")[0].split("_", 1), labels.split("->")[1]
  try:
    spatial = [str(i) for i in range(sum(c.isdigit() for c in out_labels))]
    pairs = 1
    for axis, name in enumerate(spatial):
      get = lambda key, default: window.get(key, [[default]] * len(spatial))[axis]
      pairs *= _valid_taps(out_shape[out_labels.index(name)], lhs_shape[lhs_labels.index(name)],
                           rhs_shape[rhs_labels.index(name)], get("stride", 1)[0], get("pad", 0)[0],
                           get("lhs_dilate", 1)[0], get("rhs_dilate", 1)[0])
    per_position = math.prod(out_shape) / max(math.prod(out_shape[out_labels.index(n)] for n in spatial), 1)
    return 2.0 * per_position * rhs_shape[rhs_labels.index("i")] * pairs
  except (IndexError, ValueError):
    return 0.0


def _dot_flops(out_shape: tuple[int, ...], lhs_shape: tuple[int, ...], attrs: str) -> float:
  m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", attrs) or re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]',
                                                                         attrs)
  dims = [int(d) for d in re.findall(r"\d+", m.group(1))] if m else []
  return 2.0 * math.prod(out_shape) * math.prod(lhs_shape[d] for d in dims if d < len(lhs_shape))


def _conv_kind(source: str, dim_labels: str) -> str:
  """The class of an HLO convolution from its jax source and labels (see the module docstring)."""
  if dim_labels and not any(c.isdigit() for c in dim_labels):
    return "gemm"  # no spatial axis: a matrix product the TPU compiler writes as a convolution
  if "transpose(" not in source:
    return "conv forward"
  # The weight gradient convolves the input with the output gradient over the batch: jax lays
  # the input's features where the batch goes ("f01b_i01o->01bf").
  return "conv weight-grad" if dim_labels[:1] == "f" else "conv input-grad"


def _inner_flops(body: list[Instruction], shapes: dict[str, list]) -> tuple[float, str]:
  """Flops of the convolutions and dots inside a fusion body, and the class of the first one."""
  flops, kind = 0.0, ""
  for ins in body:
    out = arrays(ins.shape)
    if ins.op == "convolution" and len(ins.operands) > 1 and out:
      flops += _conv_flops(ins, shapes)
      kind = kind or _conv_kind(source(ins.attrs), attr(ins.attrs, "dim_labels"))
    elif ins.op == "dot" and ins.operands and out:
      lhs = shapes.get(ins.operands[0]) or [("f32", ())]
      flops += _dot_flops(out[0][1], lhs[0][1], ins.attrs)
      kind = kind or "gemm"
  return flops, kind


def _classify_custom_call(ins: Instruction, operand_arrays: list[list], out_arrays: list) -> tuple[str, str, float]:
  target = attr(ins.attrs, "custom_call_target")
  if target.startswith("__cudnn$conv"):
    kind = ("conv input-grad" if "BackwardInput" in target else
            "conv weight-grad" if "BackwardFilter" in target else "conv forward")
    gradient_as_forward = kind == "conv forward" and "transpose(" in source(ins.attrs)
    first = lambda arrays: arrays[0][1] if arrays else ()
    out = first(out_arrays)
    # cuDNN's call keeps the forward convolution's labels and window, y = conv(x, w): the
    # gradients' flops are the forward's.
    x, w, y = ((out, first(operand_arrays[1]), first(operand_arrays[0])) if kind == "conv input-grad" else
               (first(operand_arrays[0]), out, first(operand_arrays[1])) if kind == "conv weight-grad" else
               (first(operand_arrays[0]), first(operand_arrays[1]), out))
    flops = _taps_flops(y, x, w, attr(ins.attrs, "dim_labels"), _window(ins.attrs))
    # XLA runs some input gradients (e.g. of 1x1 convolutions) as forward cuDNN convolutions.
    return "conv input-grad" if gradient_as_forward else kind, target, flops
  if any(word in target for word in ("cublas", "gemm", "matmul")):
    lhs = operand_arrays[0][0][1] if operand_arrays and operand_arrays[0] else ()
    return "gemm", target, _dot_flops(out_arrays[0][1], lhs, ins.attrs) if out_arrays else 0.0
  return "other", target, 0.0


def kernels(hlo: str) -> list[Kernel]:
  """The kernels an optimized HLO module launches per run (see the module docstring).

  Args:
    hlo: ``compiled.as_text()`` of a compiled function (its optimized HLO).

  Returns:
    One `Kernel` per launching instruction, in program order.
  """
  computations, entry = parse_module(hlo)
  found: list[Kernel] = []

  def visit(name: str, trips: int, seen: tuple[str, ...]) -> None:
    if name in seen or name not in computations:
      return
    shapes = {ins.name: arrays(ins.shape) for ins in computations[name]}
    for ins in computations[name]:
      if ins.op in _SILENT or not ins.op:
        continue
      if ins.op == "while":
        n = trips * _trip_count(computations, ins)
        for key in ("body", "condition"):
          visit(attr(ins.attrs, key).lstrip("%"), n, seen + (name,))
        continue
      if ins.op in ("conditional", "call"):
        for callee in re.findall(r"%([\w.\-]+)", attr(ins.attrs, "branch_computations") or
                                 attr(ins.attrs, "to_apply")):
          visit(callee, trips, seen + (name,))
        continue
      operand_arrays = [shapes.get(o, []) for o in ins.operands]
      out_arrays = arrays(ins.shape)
      if len(out_arrays) > 1:  # cuDNN and friends return (result, u8[] workspace)
        out_arrays = [a for a in out_arrays if a[0] != "u8"] or out_arrays
      flops, detail = 0.0, ins.op
      if ins.op == "custom-call":
        cls, detail, flops = _classify_custom_call(ins, operand_arrays, out_arrays)
      elif ins.op == "fusion":
        fused = body(computations, attr(ins.attrs, "calls").lstrip("%"))
        ops = collections.Counter(i.op for i in fused)
        flops, inner = _inner_flops(fused, {i.name: arrays(i.shape) for i in fused})
        detail = attr(ins.attrs, "kind") or "fusion"
        busy = set(ops) - _STRUCTURAL
        if inner:
          cls = inner
        elif busy & _COLLECTIVES:  # a TPU's asynchronous collective, wrapped in a fusion
          cls = "collective"
          detail = next(op for op in sorted(busy & _COLLECTIVES))
        elif ops["reduce"] or ops["reduce-window"] or ops["select-and-scatter"]:
          cls = "reduction fusion"
        elif busy <= _MOVES and busy & {"transpose", "copy"} and busy <= {"transpose", "copy", "convert"}:
          cls = "transpose"
        elif busy <= _MOVES:
          cls = "data-movement fusion"
        elif ops["scatter"] or ops["sort"] or ops["custom-call"]:
          cls = "other"
        else:
          cls = "loop fusion"
      elif ins.op == "convolution":
        cls = _conv_kind(source(ins.attrs), attr(ins.attrs, "dim_labels"))
        flops = _conv_flops(ins, shapes)
      elif ins.op == "dot":
        cls = "gemm"
        lhs = operand_arrays[0] if operand_arrays and operand_arrays[0] else [("f32", ())]
        flops = _dot_flops(out_arrays[0][1], lhs[0][1], ins.attrs) if out_arrays else 0.0
      elif ins.op in ("copy-start", "slice-start") and _is_transfer(ins.shape):
        continue  # a TPU DMA between memory spaces, overlapped with the kernels (see the module docstring)
      elif ins.op in ("copy", "copy-start"):
        cls = "copy"
      elif ins.op in ("reduce", "reduce-window"):
        cls = "reduction fusion"
      elif ins.op in _MOVES:
        cls = "data-movement fusion"
      elif ins.op in _ELEMENTWISE:
        cls = "loop fusion"
      elif ins.op == "transpose":
        cls = "transpose"
      elif ins.op in _COLLECTIVES or (ins.op == "async-start" and any(c in ins.attrs for c in _COLLECTIVES)):
        cls = "collective"
      else:
        cls = "other"
      moved = nbytes(a for operand in operand_arrays for a in operand) + nbytes(out_arrays)
      origin = source(ins.attrs)
      if not origin and ins.op == "fusion":  # the fused computation's root (or last named op) names it
        named = [i for i in computations.get(attr(ins.attrs, "calls").lstrip("%"), []) if source(i.attrs)]
        origin = source(named[-1].attrs) if named else ""
      found.append(Kernel(ins.name, cls, detail, flops * trips, moved * trips, trips, cycles(ins.attrs) * trips,
                          origin))

  visit(entry, 1, ())
  return found


PARTS = ("convolutions", "casts and layout", "BatchNorm", "pooling", "upsampling", "optimizer", "other")
_NORM_SCOPE = re.compile(r"(^|/)(bn\w*|\w*_bn|\w*BatchNorm\w*)(/|$)")


def part_of(kernel: Kernel) -> str:
  """The part of a network and its train step a kernel serves, from its class and jax source.

  ``convolutions`` (convolution and matrix-product kernels), ``casts and layout`` (transposes,
  copies and dtype conversions: weights cast to the compute dtype and put in the layout the
  convolution library wants, buffers copied around donated state), ``BatchNorm`` (kernels of a module named ``bn...``, ``..._bn`` or ``BatchNorm...``:
  statistics, normalisation and their gradients), ``pooling`` and ``upsampling`` (kernels of
  `octflax.resample.avg_pool2` / `upsample2`, forward or backward; an upsample computed as a
  convolution counts as upsampling), ``optimizer`` (kernels outside
  the differentiated function: the update of every parameter and optimizer state), ``other``
  (activations, residual adds, joins and splits of the parts, the loss).
  """
  origin = kernel.source
  if kernel.cls in CONV_CLASSES or kernel.cls == "gemm":
    # An upsample run as a convolution (`upsample2`'s 'ones_conv') is the upsample's cost.
    return "upsampling" if "/upsample2/" in origin else "convolutions"
  if kernel.cls in ("transpose", "copy") or origin.endswith("/convert_element_type"):
    return "casts and layout"
  if "/avg_pool2/" in origin:
    return "pooling"
  if "/upsample2/" in origin:
    return "upsampling"
  if _NORM_SCOPE.search(origin):
    return "BatchNorm"
  if origin and "jvp(" not in origin and "transpose(" not in origin:
    return "optimizer"
  return "other"


def by_part(found: Iterable[Kernel]) -> dict[str, int]:
  """Launches per `part_of`, every part of `PARTS` present (0 where none)."""
  counts = dict.fromkeys(PARTS, 0)
  for k in found:
    counts[part_of(k)] += k.count
  return counts


def by_class(found: Iterable[Kernel]) -> dict[str, int]:
  """Launches per class, every class of `CLASSES` present (0 where none)."""
  counts = dict.fromkeys(CLASSES, 0)
  for k in found:
    counts[k.cls] += k.count
  return counts


def collectives(found: Iterable[Kernel]) -> dict[str, int]:
  """Launches per collective opcode (``all-reduce``, ``all-gather``, ...; ``-start`` dropped)."""
  counts: collections.Counter[str] = collections.Counter()
  for k in found:
    if k.cls == "collective":
      counts[k.detail.removesuffix("-start")] += k.count
  return dict(counts)


__all__ = ["CLASSES", "CONV_CLASSES", "Kernel", "PARTS", "by_class", "by_part", "collectives", "kernels", "parse_module",
           "part_of"]
