"""How OctConv's path convolutions are executed: the XLA:CPU choices and the one switch between forms.

`octflax.functional` holds the math; a convolution there is `functional.conv`, exactly what
`flax.linen.Conv` computes. On the CPU backend the Linen modules run each path through
`xla_cpu_conv` instead, which computes the same convolution in a form XLA:CPU runs faster
(the measurements are in docs/benchmarks.md):

- a 1x1, ungrouped convolution is a matrix product over the channel axis (`lax.dot_general`);
- an ungrouped convolution whose channel counts are not multiples of 8 is run with its input
  and output channels zero-padded up to the multiple (counts up to 8 stay), and the padding cut
  from the result.

Both change the shapes or ops XLA sees, never the result beyond float32 rounding (a dot sums
in another order than a convolution). `use_conv` is the switch: inside it, every OctConv
traced runs its paths with the given function::

  with octflax.execution.use_conv(octflax.functional.conv):   # exactly nn.Conv's numbers
    y = model.apply(variables, x)

It applies while a function is traced (a function jitted before keeps its compiled form).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import numbers
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from octflax import functional

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


def default_conv() -> ConvFn:
  """The convolution OctConv modules run by default: `xla_cpu_conv` on CPU, else `functional.conv`."""
  return xla_cpu_conv if jax.default_backend() == "cpu" else functional.conv


def chosen_conv() -> ConvFn | None:
  """The convolution of the innermost `use_conv` block, or None outside any (the default applies)."""
  return _CONV_FN.get()


def current_conv() -> ConvFn:
  """The convolution OctConv modules run now: the innermost `use_conv`'s, else `default_conv()`."""
  return _CONV_FN.get() or default_conv()


@contextlib.contextmanager
def use_conv(conv_fn: ConvFn | None) -> Iterator[None]:
  """Every OctConv module traced inside runs its path convolutions with ``conv_fn``.

  Args:
    conv_fn: ``(x, kernel, feature_group_count, precision, kernel_dilation) -> y``, a
      stride-1 SAME convolution: `functional.conv` (exactly `flax.linen.Conv`'s numbers),
      `xla_cpu_conv` or a ``functools.partial`` of it (e.g. ``channel_multiple=1``), or a
      stand-in for measurements. None restores the default (`default_conv`).

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


#: `xla_cpu_conv` without the channel padding (1x1 still as a dot).
xla_cpu_conv_unpadded = functools.partial(xla_cpu_conv, channel_multiple=1)

__all__ = ["chosen_conv", "current_conv", "default_conv", "use_conv", "xla_cpu_conv", "xla_cpu_conv_unpadded"]
