"""Which execution form runs: `Form`, the per-platform defaults, `use_form` and `use_conv`.

The package docstring (`octflax.execution`) describes the choices a `Form` names.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from typing import Any, Callable, Iterator, Sequence

import jax
from jax import lax

from octflax import functional
from octflax.execution.cpu import xla_cpu_conv
from octflax.resample import POOL_METHODS, UPSAMPLE_METHODS

ConvFn = functional.ConvFn

_CONV_FN: contextvars.ContextVar[ConvFn | None] = contextvars.ContextVar("octflax_conv_fn", default=None)


#: The path convolutions a `Form` can name.
CONVS: dict[str, ConvFn] = {"plain": functional.conv, "xla_cpu": xla_cpu_conv}
PATH_FORMS = ("separate", "shared_output", "shared_input", "two_convs", "shared_widening")
NORM_FORMS = ("per_part", "joint")
NORM_GRADS = ("autodiff", "one_pass")
_FIELDS = {"paths": PATH_FORMS, "pool": POOL_METHODS, "norm": NORM_FORMS, "conv": tuple(CONVS), "norm_grad": NORM_GRADS,
           "upsample": UPSAMPLE_METHODS + ("transposed",)}


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
  norm_grad: str = "autodiff"
  upsample: str = "broadcast"

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
#: The default when lowering for an NVIDIA GPU: the form whose Oct-ResNet-50 train step has the
#: lowest estimated time in the census for an H100 (docs/benchmarks.md, "Accelerators without
#: one"): two convolutions per OctConv, pooling as strided slices (fused into the join of the
#: parts and the BatchNorm reductions), both parts' BatchNorm in one reduction forward and one
#: backward. No GPU has timed it yet.
GPU_FORM = Form(paths="two_convs", pool="slices", norm="joint", norm_grad="one_pass")
#: The default when lowering for a TPU: the lowest sum of the compiler's estimated cycles for a
#: TPU v5e (same section): pooling as strided slices, which the TPU compiler fuses, and the L->H
#: term upsampled by a depthwise transposed convolution with a window of ones (``ones_conv``),
#: into which it fuses the add of the H->H term and BatchNorm's sums, where a broadcast and a
#: reshape left 6-D kernels and their reductions (Oct-ResNet-50 at alpha .5: 72.7 ms against
#: 85.6); and the two paths of a part that has as many channels as their inputs together as one
#: convolution (``shared_widening``: the 1x1 convolutions that widen, whose part's BatchNorm
#: input gradient, read by two convolutions instead of four, the compiler then fuses into them:
#: 71.2 ms against 72.7). BatchNorm stays jax's: the TPU compiler fuses it into the convolutions
#: around it, which the hand-written gradient and the joint reduction prevent (alpha 0: 100.0 ms
#: against 75.2).
TPU_FORM = Form(paths="shared_widening", pool="slices", upsample="ones_conv")
#: The default form of each platform; any other platform (e.g. ``rocm``) runs `GPU_FORM`.
PLATFORM_FORMS = {"cpu": CPU_FORM, "cuda": GPU_FORM, "tpu": TPU_FORM}
_OTHER_PLATFORMS_FORM = GPU_FORM
#: The forms the GPU probe times against the default (names for `Form.parse`).
PROBE_FORMS = ("reference", "shared_output", "shared_input", "two_convs", "slices", "joint", "one_pass",
               "two_convs+slices", "two_convs+joint", "two_convs+one_pass", "two_convs+slices+joint",
               "shared_input+slices+joint")

_FORM: contextvars.ContextVar[Form | None] = contextvars.ContextVar("octflax_form", default=None)


def form_for(platform: str) -> Form:
  """The default form of a jax platform (``'cpu'``, ``'cuda'`` or ``'gpu'``, ``'tpu'``; others: `GPU_FORM`).

  For code that knows where it runs (`octflax.training.DataParallel` from its devices), to trace
  in that form (`use_form`) rather than in one branch per platform: the same numbers, without
  the branches' leftovers in the compiled step (docs/benchmarks.md).
  """
  return PLATFORM_FORMS.get("cuda" if platform == "gpu" else platform, _OTHER_PLATFORMS_FORM)


def platform_conv(x: jax.Array, kernel: jax.Array, feature_group_count: int = 1, precision: Any = None,
                  kernel_dilation: Sequence[int] | None = None) -> jax.Array:
  """The path convolution of the platform the function is lowered for (its form's, `PLATFORM_FORMS`).

  Decided when lowering (`jax.lax.platform_dependent`), never by the host, so a function
  lowered on a CPU for a GPU or TPU runs the accelerator's convolution there.
  """
  settings = dict(feature_group_count=feature_group_count, precision=precision, kernel_dilation=kernel_dilation)
  return _per_platform(lambda form, x, kernel: CONVS[form.conv](x, kernel, **settings), (x, kernel), ("conv",))


def default_conv() -> ConvFn:
  """The default path convolution: `platform_conv`, the lowering platform's (`xla_cpu_conv` on CPU)."""
  return platform_conv


def chosen_conv() -> ConvFn | None:
  """The convolution of the innermost `use_conv` block, or None outside any (the form's applies)."""
  return _CONV_FN.get()


def current_conv() -> ConvFn:
  """The path convolution now: the innermost `use_conv`'s, else the chosen form's, else `default_conv()`."""
  form = _FORM.get()
  return _CONV_FN.get() or (CONVS[form.conv] if form is not None else default_conv())


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
  """``fn(form, *args)`` in the chosen form, else in the form of the platform lowered for (`PLATFORM_FORMS`).

  ``relevant`` names the `Form` fields ``fn`` reads; platforms whose forms agree on them (after
  `use_conv`, which replaces the convolution) share one trace of ``fn``, and when all agree
  ``fn`` is traced once. Otherwise `jax.lax.platform_dependent` keeps the trace of the platform
  the function is lowered for.
  """
  form = _FORM.get()
  if form is not None:
    return fn(form, *args)
  fields = [f for f in relevant if not (f == "conv" and _CONV_FN.get() is not None)]
  return _per_platform(fn, args, fields)


def _per_platform(fn: Callable[..., Any], args: Sequence[Any], fields: Sequence[str]) -> Any:
  """``fn(form, *args)`` with the lowering platform's form, traced once per distinct form on ``fields``.

  Platforms whose forms agree on ``fields`` share one branch of `jax.lax.platform_dependent`
  (which joins equal branches), and those that agree with the other platforms' form use its
  default branch: tracing stays at one trace per distinct form. Called eagerly (no tracer among
  ``args``), the form is that of the platform the arrays are on.
  """
  def key(form: Form) -> tuple[str, ...]:
    # Pooling matters to BatchNorm's statistics only when they sum windows (joint).
    norm_only = "norm" in fields and "paths" not in fields
    return tuple(getattr(form, f) for f in fields if not (f == "pool" and norm_only and form.norm != "joint"))

  arrays = [a for a in jax.tree.leaves(args) if isinstance(a, jax.Array)]
  if arrays and not any(isinstance(a, jax.core.Tracer) for a in arrays):
    # Run eagerly, not traced: nothing is lowered for another platform, the arrays' device runs it.
    return fn(form_for(next(iter(arrays[0].devices())).platform), *args)
  default_key = key(_OTHER_PLATFORMS_FORM)
  branches: dict[tuple[str, ...], Callable[..., Any]] = {}
  per_platform = {}
  for platform, form in PLATFORM_FORMS.items():
    if key(form) != default_key:
      per_platform[platform] = branches.setdefault(key(form), functools.partial(fn, form))
  if not per_platform:
    return fn(_OTHER_PLATFORMS_FORM, *args)
  return lax.platform_dependent(*args, **per_platform, default=functools.partial(fn, _OTHER_PLATFORMS_FORM))


__all__ = [
    "CONVS", "CPU_FORM", "Form", "GPU_FORM", "PLATFORM_FORMS", "PROBE_FORMS", "REFERENCE", "TPU_FORM", "by_platform",
    "form_for",
    "chosen_conv", "chosen_form", "current_conv", "default_conv", "platform_conv", "use_conv", "use_form",
]
