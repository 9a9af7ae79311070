"""The octave feature map: `OctTensor` and the channel-split rule."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import serialization

from octflax.resample import avg_pool2, resolve_octave_axes, upsample2

Array = jax.Array


def check_alpha(alpha: float, name: str = "alpha") -> float:
  """Returns `alpha` as a float, or raises `ValueError` unless 0 <= alpha <= 1."""
  try:
    value = float(alpha)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a number in [0, 1], got {alpha!r}.") from None
  if not 0.0 <= value <= 1.0 or math.isnan(value):
    raise ValueError(f"{name} must be in [0, 1] (the share of low-frequency channels), got {alpha!r}.")
  return value


def split_channels(channels: int, alpha: float) -> tuple[int, int]:
  """Splits `channels` into (high, low) channel counts at ratio `alpha`.

  The rule of the official implementation: ``C_l = int(alpha * C)`` (floor) and
  ``C_h = C - C_l``. Every part of octflax gets its channel counts from here.

  Args:
    channels: total number of channels C (>= 1).
    alpha: share of low-frequency channels, in [0, 1].

  Returns:
    ``(C_h, C_l)``.

  Examples:
    >>> split_channels(64, 0.5)
    (32, 32)
    >>> split_channels(10, 0.25)
    (8, 2)
  """
  alpha = check_alpha(alpha)
  if int(channels) != channels or channels < 1:
    raise ValueError(f"channels must be a positive integer, got {channels!r}.")
  low = int(alpha * channels)
  return channels - low, low


@dataclasses.dataclass(frozen=True)
class OctTensor:
  """A feature map split into a high- and a low-frequency part (channels last).

  In 2-D ``high`` is ``[N, H, W, C_h]`` at full resolution and ``low`` is
  ``[N, ceil(H/2), ceil(W/2), C_l]``; with other ranks (``[N, L, C]``, ``[N, T, H, W, C]``)
  the low part has ceil(n/2) of the high part's size n on the octave axes and the same size
  on the others (`low_spatial_size`). Either may be ``None`` (alpha = 0 gives
  ``low=None``, alpha = 1 gives ``high=None``), never both. It is a pytree, so it
  passes through ``jax.jit``, ``jax.grad``, ``jax.vmap`` and ``jax.tree.map``.

  Examples:
    >>> x = OctTensor(jnp.zeros((2, 8, 8, 3)), jnp.zeros((2, 4, 4, 1)))
    >>> x.channels, x.alpha
    (4, 0.25)
  """

  high: Array | None
  low: Array | None

  def __post_init__(self):
    if self.high is None and self.low is None:
      raise ValueError("OctTensor needs a high or a low part (or both); got high=None and low=None.")

  @classmethod
  def from_array(cls, x: Array, alpha: float = 0.0, octave_axes: tuple[int, ...] | None = None) -> "OctTensor":
    """Splits a full-resolution map ``[N, *spatial, C]`` into an OctTensor at ratio alpha.

    The first ``C_h`` channels stay at full resolution; the last ``C_l`` are average-pooled
    by 2 (ceil mode) on the octave axes to form the low part.

    Args:
      x: ``[N, *spatial, C]`` with at least one spatial axis.
      alpha: share of low-frequency channels (`split_channels`).
      octave_axes: spatial axes (0-based) that the low part halves; None = all.
    """
    if x.ndim < 3:
      raise ValueError(f"from_array: expected an array [N, *spatial, C] of rank >= 3, got shape {tuple(x.shape)}.")
    spatial_dims = x.ndim - 2
    axes = resolve_octave_axes(octave_axes, spatial_dims)
    c_high, c_low = split_channels(x.shape[-1], alpha)
    high = x[..., :c_high] if c_high else None
    low = avg_pool2(x[..., c_high:], axes, spatial_dims=spatial_dims) if c_low else None
    return cls(high=high, low=low)

  @property
  def high_channels(self) -> int:
    """C_h, the number of high-frequency channels (0 when ``high`` is None)."""
    return 0 if self.high is None else self.high.shape[-1]

  @property
  def low_channels(self) -> int:
    """C_l, the number of low-frequency channels (0 when ``low`` is None)."""
    return 0 if self.low is None else self.low.shape[-1]

  @property
  def channels(self) -> int:
    """C = C_h + C_l."""
    return self.high_channels + self.low_channels

  @property
  def alpha(self) -> float:
    """The share of low-frequency channels, C_l / C."""
    return self.low_channels / self.channels

  @property
  def dtype(self):
    return (self.high if self.high is not None else self.low).dtype

  @property
  def batch_shape(self) -> tuple[int, ...]:
    """``(N,)``, the batch axis of the ``[N, *spatial, C]`` layout, shared by both parts (any spatial rank)."""
    part = self.high if self.high is not None else self.low
    return tuple(part.shape[:1])

  def replace(self, **updates: Any) -> "OctTensor":
    """A copy with the given fields (``high``, ``low``) replaced."""
    return dataclasses.replace(self, **updates)

  def map(self, fn: Callable[[Array], Array]) -> "OctTensor":
    """Applies ``fn`` to each present part: ``OctTensor(fn(high), fn(low))``."""
    return OctTensor(
        high=None if self.high is None else fn(self.high),
        low=None if self.low is None else fn(self.low),
    )

  def merge(self, octave_axes: tuple[int, ...] | None = None) -> Array:
    """One full-resolution map: nearest-upsample ``low`` to the high size, concatenate channels.

    With no high part, the low part is upsampled to twice its size on the octave axes.

    Args:
      octave_axes: spatial axes (0-based) on which the low part has half the size; None = all.
    """
    if self.low is None:
      return self.high
    spatial_dims = self.low.ndim - 2
    axes = resolve_octave_axes(octave_axes, spatial_dims)
    if self.high is None:
      return upsample2(self.low, None, axes, spatial_dims=spatial_dims)
    low = upsample2(self.low, self.high.shape[1:-1], axes).astype(self.high.dtype)
    return jnp.concatenate([self.high, low], axis=-1)


def merge(x: Any, octave_axes: tuple[int, ...] | None = None) -> Array:
  """One full-resolution array of ``x``: ``concat([X^H, U(X^L)], channels)``.

  U is the nearest upsample on the octave axes, cropped to the high part's size, so a neck or
  head that expects plain arrays can read an octave feature map. A plain array is returned as
  it is.

  Args:
    x: an OctTensor or an array.
    octave_axes: spatial axes (0-based) on which the low part has half the size; None = all.

  Returns:
    ``[N, *spatial, C_h + C_l]`` at the high part's resolution.

  Examples:
    >>> x = OctTensor(jnp.zeros((1, 5, 5, 3)), jnp.ones((1, 3, 3, 1)))
    >>> merge(x).shape
    (1, 5, 5, 4)
  """
  return as_oct(x).merge(octave_axes)


def _flatten_with_keys(x: OctTensor):
  return ((jax.tree_util.GetAttrKey("high"), x.high), (jax.tree_util.GetAttrKey("low"), x.low)), None


def _unflatten(_, children) -> OctTensor:
  # Bypasses __init__ (and its check): JAX and Flax rebuild pytrees with placeholder or None
  # leaves (jax.tree.map(lambda _: None, x), NNX's graph handling), which must not fail.
  x = object.__new__(OctTensor)
  object.__setattr__(x, "high", children[0])
  object.__setattr__(x, "low", children[1])
  return x


jax.tree_util.register_pytree_with_keys(
    OctTensor, _flatten_with_keys, _unflatten, lambda x: ((x.high, x.low), None))
serialization.register_serialization_state(
    OctTensor,
    lambda x: {"high": serialization.to_state_dict(x.high), "low": serialization.to_state_dict(x.low)},
    lambda x, state: _unflatten(None, (serialization.from_state_dict(x.high, state["high"]),
                                       serialization.from_state_dict(x.low, state["low"]))))


def as_oct(x: Any) -> OctTensor:
  """Returns ``x`` if it is an OctTensor; a plain array becomes ``OctTensor(high=x, low=None)``."""
  if isinstance(x, OctTensor):
    return x
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    raise TypeError(f"expected an OctTensor or an array, got {type(x).__name__}.")
  return OctTensor(high=x, low=None)
