"""How OctConv is executed on each backend: the forms of its convolutions, pooling and BatchNorm.

`octflax.functional` holds the math (`functional.oct_conv`: each path its own convolution,
exactly what `flax.linen.Conv` computes per path). This module owns every choice of how that
math runs, so that models and checkpoints never carry one. A `Form` names four choices, each
computing the same numbers to float rounding with the same parameters:

- ``paths``: ``'separate'`` (four convolutions, as written), ``'shared_output'`` (the paths
  that write one output part at one resolution as one convolution over their concatenated
  inputs), ``'shared_input'`` (L->L and L->H as one convolution of X^L with their kernels
  side by side: three convolutions at stride 1), or ``'two_convs'`` (at stride 1, H->H at full
  resolution and one low-resolution convolution of ``concat([P(X^H), X^L])`` with the block
  kernel ``[[W^hl, 0], [W^ll, W^lh]]``, whose outputs are Y^L and the L->H term before its
  upsample). A layer a form does not apply to (stride 2, two paths, groups) runs the closest
  one: ``'shared_output'``.
- ``pool``: `avg_pool2`'s method, ``'reshape'`` (a reduction) or ``'slices'`` (a sum of
  strided slices, elementwise, which XLA can fuse into its reader).
- ``norm``: ``'per_part'`` (each part's BatchNorm statistics as its own reduction) or
  ``'joint'`` (both parts' statistics in one reduction; the same variables and values).
- ``conv``: the stride-1 convolution each path runs, ``'plain'`` (`functional.conv`) or
  ``'xla_cpu'`` (`xla_cpu_conv`: 1x1 as a dot, channel counts padded to a multiple of 8).

The default is `CPU_FORM` when a step is lowered for the CPU and `ACCELERATOR_FORM` otherwise,
chosen per platform when the function is lowered (`jax.lax.platform_dependent`), so a step
exported from a CPU for a GPU or TPU carries the accelerator form. `use_form` chooses one
form for every OctConv and OctBatchNorm traced inside; `use_conv` replaces the path
convolution of whatever form runs::

  with octflax.execution.use_form("two_convs+slices"):
    y = model.apply(variables, x)
  with octflax.execution.use_conv(octflax.functional.conv):   # exactly nn.Conv's numbers
    y = model.apply(variables, x)

Both apply while a function is traced (a function jitted before keeps its compiled form).
The measurements behind each default are in docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import numbers
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from octflax import functional
from octflax.resample import POOL_METHODS, window_sums
from octflax.tensor import OctTensor, as_oct

Array = jax.Array
ConvFn = functional.ConvFn

_CONV_FN: contextvars.ContextVar[ConvFn | None] = contextvars.ContextVar("octflax_conv_fn", default=None)


def _padded_channels(channels: int, multiple: int) -> int:
  """``channels`` rounded up to ``multiple``; counts up to ``multiple`` stay (padding them measured slower)."""
  return channels if channels <= multiple else -(-channels // multiple) * multiple


def xla_cpu_conv(x: Array, kernel: Array, feature_group_count: int = 1, precision: Any = None,
                 kernel_dilation: Sequence[int] | None = None, *, dot_for_1x1: bool = True,
                 channel_multiple: int = 8) -> Array:
  """`functional.conv` in the form XLA:CPU runs fastest: 1x1 as a dot, channels padded to a multiple.

  Args:
    x, kernel, feature_group_count, precision, kernel_dilation: as in `functional.conv`.
    dot_for_1x1: run a 1x1 ungrouped convolution as ``lax.dot_general`` over the channel axis.
    channel_multiple: pad the channel counts of an ungrouped convolution to this multiple
      (1: no padding).

  Returns:
    What ``functional.conv(x, kernel, feature_group_count, precision, kernel_dilation)``
    returns, to float32 rounding.
  """
  if not isinstance(channel_multiple, numbers.Integral) or isinstance(channel_multiple, bool) or channel_multiple < 1:
    raise ValueError(f"channel_multiple must be a positive integer, got {channel_multiple!r}.")
  dtype = jnp.result_type(x, kernel)
  spatial = kernel.shape[:-2]
  if dot_for_1x1 and all(k == 1 for k in spatial) and feature_group_count == 1:
    # NHWC keeps the channel axis last, so the dot needs no transpose.
    return lax.dot_general(x.astype(dtype), kernel.reshape(kernel.shape[-2:]).astype(dtype),
                           (((x.ndim - 1,), (0,)), ((), ())), precision=precision)
  c_in, c_out = kernel.shape[-2:]
  pad_in = pad_out = 0
  if feature_group_count == 1:
    pad_in = _padded_channels(c_in, channel_multiple) - c_in
    pad_out = _padded_channels(c_out, channel_multiple) - c_out
  if pad_in:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad_in)])
  if pad_in or pad_out:
    kernel = jnp.pad(kernel, [(0, 0)] * len(spatial) + [(0, pad_in), (0, pad_out)])
  y = functional.conv(x, kernel, feature_group_count, precision, kernel_dilation)
  return y[..., :c_out] if pad_out else y


#: The path convolutions a `Form` can name.
CONVS: dict[str, ConvFn] = {"plain": functional.conv, "xla_cpu": xla_cpu_conv}
PATH_FORMS = ("separate", "shared_output", "shared_input", "two_convs")
NORM_FORMS = ("per_part", "joint")
_FIELDS = {"paths": PATH_FORMS, "pool": POOL_METHODS, "norm": NORM_FORMS, "conv": tuple(CONVS)}


@dataclasses.dataclass(frozen=True)
class Form:
  """One way of executing OctConv layers and OctBatchNorms (the module docstring has the choices).

  Its name (``str(form)``) lists the choices that differ from `REFERENCE`'s, joined by
  ``+``, e.g. ``'two_convs+slices'``; `Form.parse` reads it back.

  Examples:
    >>> form = Form.parse("two_convs+slices")
    >>> form.paths, form.pool, form.norm, str(form)
    ('two_convs', 'slices', 'per_part', 'two_convs+slices')
  """

  paths: str = "separate"
  pool: str = "reshape"
  norm: str = "per_part"
  conv: str = "plain"

  def __post_init__(self):
    for field, allowed in _FIELDS.items():
      if getattr(self, field) not in allowed:
        raise ValueError(f"Form: {field}={getattr(self, field)!r}; allowed are {', '.join(allowed)}.")

  def __str__(self) -> str:
    tokens = [getattr(self, f) for f in _FIELDS if getattr(self, f) != getattr(REFERENCE, f)]
    return "+".join(tokens) or "reference"

  @classmethod
  def parse(cls, name: str) -> "Form":
    """The form named by ``name``: choices joined by ``+`` (any order); ``'reference'`` is `REFERENCE`."""
    if not isinstance(name, str):
      raise ValueError(f"a form name must be a string, got {name!r}.")
    choices: dict[str, str] = {}
    for token in filter(None, name.split("+")):
      if token == "reference":
        continue
      field = next((f for f, allowed in _FIELDS.items() if token in allowed), None)
      if field is None:
        known = ", ".join(v for allowed in _FIELDS.values() for v in allowed)
        raise ValueError(f"form {name!r}: unknown choice {token!r}; known: {known} (joined by '+').")
      if field in choices and choices[field] != token:
        raise ValueError(f"form {name!r} names two {field} choices: {choices[field]!r} and {token!r}.")
      choices[field] = token
    return cls(**choices)


#: `functional.oct_conv` as written: every path its own convolution (what `octflax.cost` counts).
REFERENCE = Form()
#: The default when lowering for the CPU (docs/benchmarks.md, "CPU").
CPU_FORM = Form(conv="xla_cpu")
#: The default when lowering for a GPU or TPU. The forms below are candidates that
#: `experiments/probes/gpu_step.py` times on a GPU; until a device run picks one, the default is
#: the reference form.
ACCELERATOR_FORM = Form()
#: The forms the GPU probe times against the default (names for `Form.parse`).
PROBE_FORMS = ("shared_output", "shared_input", "two_convs", "slices", "joint", "two_convs+slices",
               "two_convs+joint", "two_convs+slices+joint", "shared_input+slices+joint")

_FORM: contextvars.ContextVar[Form | None] = contextvars.ContextVar("octflax_form", default=None)


def default_conv() -> ConvFn:
  """The default path convolution for the backend jax runs on now: `xla_cpu_conv` on CPU, else `functional.conv`."""
  return CONVS[(CPU_FORM if jax.default_backend() == "cpu" else ACCELERATOR_FORM).conv]


def chosen_conv() -> ConvFn | None:
  """The convolution of the innermost `use_conv` block, or None outside any (the form's applies)."""
  return _CONV_FN.get()


def current_conv() -> ConvFn:
  """The convolution OctConv modules run now: the innermost `use_conv`'s, else `default_conv()`."""
  return _CONV_FN.get() or default_conv()


@contextlib.contextmanager
def use_conv(conv_fn: ConvFn | None) -> Iterator[None]:
  """Every OctConv module traced inside runs its path convolutions with ``conv_fn``, in any form.

  Args:
    conv_fn: ``(x, kernel, feature_group_count, precision, kernel_dilation) -> y``, a
      stride-1 SAME convolution: `functional.conv` (exactly `flax.linen.Conv`'s numbers),
      `xla_cpu_conv` or a ``functools.partial`` of it (e.g. ``channel_multiple=1``), or a
      stand-in for measurements. None restores the form's own (`Form.conv`).

  Examples:
    >>> import octflax
    >>> with use_conv(octflax.functional.conv):
    ...   current_conv() is octflax.functional.conv
    True
  """
  if conv_fn is not None and not callable(conv_fn):
    raise ValueError(f"use_conv: conv_fn must be a convolution function or None, got {conv_fn!r}.")
  token = _CONV_FN.set(conv_fn)
  try:
    yield
  finally:
    _CONV_FN.reset(token)


def chosen_form() -> Form | None:
  """The form of the innermost `use_form` block, or None outside any (the platform's default applies)."""
  return _FORM.get()


@contextlib.contextmanager
def use_form(form: Form | str | None) -> Iterator[None]:
  """Every OctConv and OctBatchNorm traced inside runs in ``form``, on every platform.

  Args:
    form: a `Form`, a form name (`Form.parse`), or None for the platform's default.

  Examples:
    >>> with use_form("two_convs+slices"):
    ...   str(chosen_form())
    'two_convs+slices'
  """
  if isinstance(form, str):
    form = Form.parse(form)
  if form is not None and not isinstance(form, Form):
    raise ValueError(f"use_form: expected a Form, a form name or None, got {form!r}.")
  token = _FORM.set(form)
  try:
    yield
  finally:
    _FORM.reset(token)


def by_platform(fn: Callable[..., Any], *args: Any, relevant: Sequence[str] = tuple(_FIELDS)) -> Any:
  """``fn(form, *args)`` in the chosen form, else per platform: `CPU_FORM` on CPU, `ACCELERATOR_FORM` elsewhere.

  ``relevant`` names the `Form` fields ``fn`` reads; when the two defaults agree on them (or
  `use_conv` replaces the only difference, the convolution) ``fn`` is traced once. Otherwise
  both are traced and `jax.lax.platform_dependent` keeps the one for the platform the
  function is lowered for.
  """
  form = _FORM.get()
  if form is not None:
    return fn(form, *args)
  fields = [f for f in relevant if not (f == "conv" and _CONV_FN.get() is not None)]
  if all(getattr(CPU_FORM, f) == getattr(ACCELERATOR_FORM, f) for f in fields):
    return fn(ACCELERATOR_FORM, *args)
  return lax.platform_dependent(*args, cpu=functools.partial(fn, CPU_FORM),
                                default=functools.partial(fn, ACCELERATOR_FORM))


# ----------------------------------------------------------------------------- OctConv forms


def oct_conv(x: Any, kernels: Mapping[str, Array], biases: Mapping[str, Array] | None = None, *,
             strides: Any = 1, octave_axes: Any = None, kernel_dilation: Any = 1, precision: Any = None,
             pool_stride: bool = True) -> OctTensor:
  """`functional.oct_conv` in the form chosen for the platform (`by_platform`): what the modules call.

  Same arguments and result as `functional.oct_conv` (to float rounding), except that the
  path convolution comes from the form (or `use_conv`).
  """
  x = as_oct(x)
  biases = dict(biases or {})
  settings = dict(strides=strides, octave_axes=octave_axes, kernel_dilation=kernel_dilation, precision=precision)
  if not pool_stride and functional.is_strided(x, kernels, strides, octave_axes, kernel_dilation):
    return functional.strided_vanilla_conv(x, kernels, biases, **settings)
  return by_platform(lambda form, x, kernels, biases: oct_conv_in_form(form, x, kernels, biases, **settings),
                     x, dict(kernels), biases, relevant=("paths", "pool", "conv"))


def oct_conv_in_form(form: Form, x: OctTensor, kernels: Mapping[str, Array], biases: Mapping[str, Array], *,
                     strides: Any = 1, octave_axes: Any = None, kernel_dilation: Any = 1,
                     precision: Any = None) -> OctTensor:
  """`functional.oct_conv` (with ``pool_stride=True``) executed in ``form``."""
  plan = functional.plan_paths(as_oct(x), kernels, strides=strides, octave_axes=octave_axes,
                               kernel_dilation=kernel_dilation, pool_method=form.pool)
  conv = _CONV_FN.get() or CONVS[form.conv]

  def run(inputs: Sequence[Array], path_kernels: Sequence[Array], groups: int) -> Array:
    inp = inputs[0] if len(inputs) == 1 else jnp.concatenate(inputs, axis=-1)
    kernel = path_kernels[0] if len(path_kernels) == 1 else jnp.concatenate(path_kernels, axis=-2)
    return conv(inp, kernel, groups, precision, plan.dilation)

  low_paths = all(p in kernels and plan.groups[p] == 1 for p in ("l2l", "l2h"))
  low_paths = low_paths and plan.inputs["l2l"].shape == plan.inputs["l2h"].shape
  if form.paths == "two_convs" and low_paths and "h2l" in kernels and plan.groups["h2l"] == 1 \
      and plan.inputs["h2l"].shape[1:-1] == plan.inputs["l2l"].shape[1:-1]:
    # [P(X^H) | X^L] * [[W^hl, 0], [W^ll, W^lh]] = [Y^L | L->H before U]: one low-resolution conv.
    w_hl, w_ll, w_lh = kernels["h2l"], kernels["l2l"], kernels["l2h"]
    top = jnp.concatenate([w_hl, jnp.zeros(w_hl.shape[:-1] + w_lh.shape[-1:], w_hl.dtype)], axis=-1)
    block = jnp.concatenate([top, jnp.concatenate([w_ll, w_lh], axis=-1)], axis=-2)
    z = conv(jnp.concatenate([plan.inputs["h2l"], plan.inputs["l2l"]], axis=-1), block, 1, precision,
             plan.dilation)
    low, from_low = z[..., :w_ll.shape[-1]], plan.upsample_l2h(z[..., w_ll.shape[-1]:])
    high = from_low if "h2h" not in kernels else run([plan.inputs["h2h"]], [kernels["h2h"]], plan.groups["h2h"]) + from_low
    return OctTensor(functional.with_biases(high, ("h2h", "l2h"), biases),
                     functional.with_biases(low, ("l2l", "h2l"), biases))
  if form.paths == "shared_input" and low_paths:
    # X^L * [W^ll | W^lh] = [L->L | L->H before U]: X^L read once.
    c_low = kernels["l2l"].shape[-1]
    z = conv(plan.inputs["l2l"], jnp.concatenate([kernels["l2l"], kernels["l2h"]], axis=-1), 1, precision,
             plan.dilation)
    low, high = z[..., :c_low], plan.upsample_l2h(z[..., c_low:])
    if "h2l" in kernels:
      low = low + run([plan.inputs["h2l"]], [kernels["h2l"]], plan.groups["h2l"])
    if "h2h" in kernels:
      high = run([plan.inputs["h2h"]], [kernels["h2h"]], plan.groups["h2h"]) + high
    return OctTensor(functional.with_biases(high, ("h2h", "l2h"), biases),
                     functional.with_biases(low, ("l2l", "h2l"), biases))
  fuse = form.paths != "separate"  # the closest form for the layers the others do not apply to

  def part(direct: str, cross: str) -> Array | None:
    present = [p for p in (direct, cross) if p in kernels]
    if not present:
      return None
    inputs = [plan.inputs[p] for p in present]
    if fuse and len(present) == 2 and inputs[0].shape[1:-1] == inputs[1].shape[1:-1] \
        and plan.groups[direct] == plan.groups[cross] == 1:
      # Y = [X_a | X_b] * [W_a ; W_b]: the two paths as one convolution over concatenated inputs.
      y = run(inputs, [kernels[p] for p in present], 1)
      y = plan.upsample_l2h(y) if present[-1] == "l2h" else y
    else:
      terms = [run([plan.inputs[p]], [kernels[p]], plan.groups[p]) for p in present]
      terms = [plan.upsample_l2h(t) if p == "l2h" else t for p, t in zip(present, terms)]
      y = terms[0] if len(terms) == 1 else terms[0] + terms[1]
    return functional.with_biases(y, present, biases)

  return OctTensor(high=part("h2h", "l2h"), low=part("l2l", "h2l"))


# ----------------------------------------------------------------------------- OctBatchNorm forms


def joint_norm_in_play() -> bool:
  """Whether an OctBatchNorm traced now may compute its statistics jointly (`batch_stats`)."""
  form = _FORM.get()
  return "joint" in ({form.norm} if form is not None else {CPU_FORM.norm, ACCELERATOR_FORM.norm})


def batch_stats(x: OctTensor, axis_name: str | None = None) -> tuple[tuple[Array, Array] | None, ...]:
  """Each part's BatchNorm statistics ``(mean, var)`` (float32, per channel) in the platform's form.

  ``var = E[x^2] - E[x]^2`` clipped at 0, averaged over the axis ``axis_name`` when given, as
  `flax.linen.BatchNorm` computes them; a part that is None gives None.
  """
  x = as_oct(x)
  return by_platform(lambda form, high, low: batch_stats_in_form(form, OctTensor(high, low), axis_name),
                     x.high, x.low, relevant=("norm", "pool"))


def batch_stats_in_form(form: Form, x: OctTensor, axis_name: str | None = None
                        ) -> tuple[tuple[Array, Array] | None, tuple[Array, Array] | None]:
  """`batch_stats` in ``form``: ``'joint'`` sums both parts in one reduction, ``'per_part'`` one each."""
  parts = [None if p is None else p.astype(jnp.promote_types(p.dtype, jnp.float32)) for p in (x.high, x.low)]
  present = [p for p in parts if p is not None]
  if form.norm == "joint" and len(present) == 2 and parts[0].ndim == parts[1].ndim:
    high, low = parts
    # Each high channel's sums over its 2^k windows land on the low grid (zeros pad odd sizes),
    # then one reduction over [N, *low, C_h + C_l] gives both parts' sums of x and x^2.
    axes = [i for i in range(1, high.ndim - 1) if low.shape[i] != high.shape[i]]
    pads = [(0, 0)] + [(0, 2 * low.shape[i] - high.shape[i]) if i in axes else (0, 0)
                       for i in range(1, high.ndim - 1)] + [(0, 0)]
    windowed = lambda a: a if not axes else window_sums(jnp.pad(a, pads), axes, form.pool)
    both = jnp.concatenate([windowed(high), low], axis=-1)
    both2 = jnp.concatenate([windowed(high * high), low * low], axis=-1)
    reduce_axes = tuple(range(both.ndim - 1))
    counts = jnp.concatenate([jnp.full(high.shape[-1], high.size // high.shape[-1], both.dtype),
                              jnp.full(low.shape[-1], low.size // low.shape[-1], both.dtype)])
    mean, mean2 = both.sum(reduce_axes) / counts, both2.sum(reduce_axes) / counts
    if axis_name is not None:
      mean, mean2 = tuple(lax.pmean(jnp.stack([mean, mean2]), axis_name))
    var = jnp.maximum(0.0, mean2 - mean * mean)
    c_high = high.shape[-1]
    return (mean[:c_high], var[:c_high]), (mean[c_high:], var[c_high:])
  stats = []
  for p in parts:
    if p is None:
      stats.append(None)
      continue
    axes = tuple(range(p.ndim - 1))
    mean, mean2 = p.mean(axes), (p * p).mean(axes)
    if axis_name is not None:
      mean, mean2 = tuple(lax.pmean(jnp.stack([mean, mean2]), axis_name))
    stats.append((mean, jnp.maximum(0.0, mean2 - mean * mean)))
  return tuple(stats)


#: `xla_cpu_conv` without the channel padding (1x1 still as a dot).
xla_cpu_conv_unpadded = functools.partial(xla_cpu_conv, channel_multiple=1)

__all__ = [
    "ACCELERATOR_FORM", "CONVS", "CPU_FORM", "Form", "PROBE_FORMS", "REFERENCE", "batch_stats", "batch_stats_in_form",
    "by_platform", "chosen_conv", "chosen_form", "current_conv", "default_conv", "joint_norm_in_play", "oct_conv",
    "oct_conv_in_form",
    "use_conv", "use_form", "xla_cpu_conv", "xla_cpu_conv_unpadded",
]
