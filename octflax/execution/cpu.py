"""XLA:CPU's form of a path convolution: 1x1 as a dot, channel counts padded to a multiple of 8.

`xla_cpu_conv` computes what `functional.conv` computes (exactly `flax.linen.Conv`'s
convolution) in the form XLA:CPU runs faster (docs/benchmarks.md, "Execution choices"):

- a 1x1, ungrouped convolution is a matrix product over the channel axis (`lax.dot_general`);
- an ungrouped convolution whose channel counts are not multiples of 8 is run with its input
  and output channels zero-padded up to the multiple (counts up to 8 stay), and the padding cut
  from the result.

Both change the shapes or ops XLA sees, never the result beyond float32 rounding (a dot sums
in another order than a convolution).
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from octflax import functional

Array = jax.Array


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


#: `xla_cpu_conv` without the channel padding (1x1 still as a dot).
xla_cpu_conv_unpadded = functools.partial(xla_cpu_conv, channel_multiple=1)

__all__ = ["xla_cpu_conv", "xla_cpu_conv_unpadded"]
