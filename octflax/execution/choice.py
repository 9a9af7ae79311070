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
from octflax.resample import POOL_METHODS

ConvFn = functional.ConvFn

_CONV_FN: contextvars.ContextVar[ConvFn | None] = contextvars.ContextVar("octflax_conv_fn", default=None)


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
#: `benchmarks/probes/gpu_step.py` times on a GPU; until a device run picks one, the default is
#: the reference form.
ACCELERATOR_FORM = Form()
#: The forms the GPU probe times against the default (names for `Form.parse`).
PROBE_FORMS = ("shared_output", "shared_input", "two_convs", "slices", "joint", "two_convs+slices",
               "two_convs+joint", "two_convs+slices+joint", "shared_input+slices+joint")

_FORM: contextvars.ContextVar[Form | None] = contextvars.ContextVar("octflax_form", default=None)


def platform_conv(x: jax.Array, kernel: jax.Array, feature_group_count: int = 1, precision: Any = None,
                  kernel_dilation: Sequence[int] | None = None) -> jax.Array:
  """The path convolution of the platform the function is lowered for: `CPU_FORM`'s or `ACCELERATOR_FORM`'s.

  Decided when lowering (`jax.lax.platform_dependent`), never by the host, so a function
  lowered on a CPU for a GPU or TPU runs the accelerator's convolution there.
  """
  settings = dict(feature_group_count=feature_group_count, precision=precision, kernel_dilation=kernel_dilation)
  cpu, accelerator = CONVS[CPU_FORM.conv], CONVS[ACCELERATOR_FORM.conv]
  if cpu is accelerator:
    return cpu(x, kernel, **settings)
  return lax.platform_dependent(x, kernel, cpu=functools.partial(cpu, **settings),
                                default=functools.partial(accelerator, **settings))


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


__all__ = [
    "ACCELERATOR_FORM", "CONVS", "CPU_FORM", "Form", "PROBE_FORMS", "REFERENCE", "by_platform", "chosen_conv",
    "chosen_form", "current_conv", "default_conv", "platform_conv", "use_conv", "use_form",
]
