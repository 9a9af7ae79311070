"""Oct-I3D and Oct-C2D: Oct-ResNets for clips ``[N, T, H, W, C]`` (Chen et al. 2019, Sec. 4.4).

The backbones of the paper's video experiments are the C2D and I3D ResNet-50 of Wang et
al. (non-local networks), with the 2-D convolutions replaced by OctConv at the ImageNet
Oct-ResNet's alpha placement (stem vanilla, last stage at alpha 0)::

  stem    t_s x 7 x 7 conv, stride (1, 2, 2); BN, ReLU; 1 x 3 x 3 max-pool, stride (1, 2, 2)
  stage1  blocks at T frames, then a 3 x 1 x 1 max-pool with stride (2, 1, 1): T/2 frames
  stage2-4  blocks at T/2 frames; the first block of each halves H and W (on its 3x3)
  head    global average pool over (T, H, W), dense

C2D has no time extent anywhere (``t_s = 1``, every block 2-D per frame). I3D has
``t_s = 5`` and inflates the first 1x1 conv of every other block to 3 x 1 x 1
(`I3D_TIME_KERNELS`). The octave split is spatial by default (``octave_axes=(1, 2)``:
the low part has half of H and W, all T frames), as the paper's "spatial OctConv"
integrated into 3-D convolution; ``octave_axes=(0, 1, 2)`` halves time too.

Time is padded by repeating the first and last frames (not with zeros, as I3D's
convolutions do): a clip of one repeated frame is then a fixed point of every layer, so
an inflated 2-D network (`octflax.convert.inflate`) gives exactly the 2-D network's logits
on such a clip; the two paddings differ only on the first and last (k_t - 1) / 2 frames.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from octflax import execution, functional
from octflax.models.common import Classifier, ModuleDef, Network, backbone_features, stage_alphas
from octflax.tensor import OctTensor, as_oct

Array = jax.Array
relu = jax.nn.relu

#: Time extent of the first conv of every block of I3D ResNet-50 (Wang et al.): every
#: other block is 3 x 1 x 1 (and every block of the first stage).
I3D_TIME_KERNELS = ((3, 3, 3), (3, 1, 3, 1), (3, 1, 3, 1, 3, 1), (1, 3, 1))
C2D_TIME_KERNELS = ((1, 1, 1), (1, 1, 1, 1), (1, 1, 1, 1, 1, 1), (1, 1, 1))


def replicate_time_padding(conv_fn: functional.ConvFn) -> functional.ConvFn:
  """``conv_fn`` for ``[N, T, ...]`` inputs, with time padded by repeating the edge frames.

  For a kernel with time extent ``k_t > 1`` the input is padded on the time axis with
  ``d (k_t - 1) / 2`` copies of its first and last frames and convolved without further
  padding in time (SAME zero padding on the other axes); other kernels go to
  ``conv_fn`` unchanged. So a clip whose frames are all equal stays so, with the 2-D
  convolution's values.
  """

  def conv(x: Array, kernel: Array, feature_group_count: int = 1, precision: Any = None,
           kernel_dilation: Sequence[int] | None = None) -> Array:
    spatial_dims = kernel.ndim - 2
    if spatial_dims < 2 or kernel.shape[0] == 1:
      return conv_fn(x, kernel, feature_group_count, precision, kernel_dilation)
    dilation = (1,) * spatial_dims if kernel_dilation is None else tuple(kernel_dilation)
    padding = functional.same_padding(kernel.shape[:-2], dilation)
    x = jnp.pad(x, [(0, 0), padding[0]] + [(0, 0)] * spatial_dims, mode="edge")
    dtype = jnp.result_type(x, kernel)
    # The padded taps are real frames now: 'VALID' in time, SAME zeros elsewhere.
    return lax.conv_general_dilated(
        x.astype(dtype), kernel.astype(dtype), window_strides=(1,) * spatial_dims,
        padding=[(0, 0)] + list(padding[1:]), rhs_dilation=dilation,
        dimension_numbers=functional.dimension_numbers(spatial_dims),
        feature_group_count=feature_group_count, precision=precision)

  return conv


def _max_pool(x: Any, window: tuple[int, ...], strides: tuple[int, ...]) -> OctTensor:
  """Max pool of each part; padding (k - 1) / 2 per side keeps ceil(n / s) on every axis."""
  padding = tuple(((k - 1) // 2, (k - 1) // 2) for k in window)
  return as_oct(x).map(lambda p: nn.max_pool(p, window, strides, padding))


class VideoResNet(Network):
  """Oct-ResNet for clips: Oct-I3D and Oct-C2D (see the module docstring).

  Attributes:
    stage_sizes: blocks per stage.
    block_cls: `Bottleneck` or `BasicBlock` (or a partial); built with the keywords of
      `ResNet`'s blocks plus ``time_kernel`` and ``octave_axes``.
    time_kernels: per stage, per block, the time extent of the block's first conv.
    stem_time_kernel: time extent of the stem conv (5 in I3D, 1 in C2D).
    octave_axes: spatial axes (0 = time) on which the low part has half the size.
    widths, stem_features, zero_init_residual: as in `ResNet`.
    temporal_pool: the 3 x 1 x 1 max-pool (stride 2 in time) after the first stage.
    num_classes, alpha, dtype, momentum, epsilon, axis_name: keyword-only, as in
      `ResNet` (``num_classes`` defaults to 400, Kinetics-400's classes).
  """

  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  time_kernels: Sequence[Sequence[int]]
  stem_time_kernel: int = 5
  octave_axes: tuple[int, ...] = (1, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  stem_features: int = 64
  temporal_pool: bool = True
  zero_init_residual: bool = False
  num_classes: int = dataclasses.field(default=400, kw_only=True)

  def __post_init__(self):
    if len(self.stage_sizes) != len(self.widths):
      raise ValueError(f"stage_sizes {tuple(self.stage_sizes)} and widths {tuple(self.widths)} differ in length.")
    if [len(k) for k in self.time_kernels] != list(self.stage_sizes):
      raise ValueError(f"time_kernels must give one odd time extent per block of stage_sizes "
                       f"{tuple(self.stage_sizes)}, got {tuple(map(tuple, self.time_kernels))}.")
    kernels = [self.stem_time_kernel, *(k for stage in self.time_kernels for k in stage)]
    if any(not isinstance(k, int) or k < 1 or k % 2 == 0 for k in kernels):
      raise ValueError(
          f"time kernels (stem_time_kernel, time_kernels) must be odd positive ints, got {kernels}.")
    axes = tuple(self.octave_axes)
    if not axes or len(set(axes)) != len(axes) or not set(axes) <= {0, 1, 2}:
      raise ValueError(f"octave_axes must be distinct axes among 0 (time), 1, 2, got {self.octave_axes!r}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, train: bool = True, return_features: bool = False) -> Array | dict:
    """Logits of clips ``[N, T, H, W, C]``, or the backbone's maps (see `Network`).

    The maps: ``stem`` (before its max-pool, stride (1, 2, 2)) and each stage's last
    block, ``stage1``.. (strides (1, 4, 4), then (2, 8, 8), (2, 16, 16), ... after the
    temporal pool).
    """
    if x.ndim != 5:
      raise ValueError(f"expected clips [N, T, H, W, C], got shape {x.shape}.")
    # Every convolution of the network pads time with edge frames (see the module docstring).
    with execution.use_conv(replicate_time_padding(execution.current_conv())):
      x = x.astype(self.dtype)
      unit = self.unit_factory(octave_axes=self.octave_axes)
      t = self.stem_time_kernel
      x = jnp.pad(x, [(0, 0), ((t - 1) // 2, (t - 1) // 2), (0, 0), (0, 0), (0, 0)], mode="edge")
      x = nn.Conv(self.stem_features, (t, 7, 7), (1, 2, 2), padding=((0, 0), (3, 3), (3, 3)), use_bias=False,
                  dtype=self.dtype, kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                  name="stem_conv")(x)
      x = relu(self.batch_norm(train)(name="stem_bn")(x))
      maps, strides = {"stem": x}, {"stem": (1, 2, 2)}
      x, stride = _max_pool(x, (1, 3, 3), (1, 2, 2)), [1, 4, 4]
      alpha_in = 0.0
      for stage, (num_blocks, width, alpha, kernels) in enumerate(zip(
          self.stage_sizes, self.widths, stage_alphas(self.alpha, len(self.stage_sizes)), self.time_kernels)):
        for block in range(num_blocks):
          block_strides = 2 if stage > 0 and block == 0 else 1
          x = self.block_cls(width, alpha_in, alpha, unit, strides=block_strides,
                             zero_init_residual=self.zero_init_residual, time_kernel=kernels[block],
                             octave_axes=self.octave_axes, name=f"stage{stage + 1}_block{block}")(x, train)
          stride[1:] = [s * block_strides for s in stride[1:]]
          alpha_in = alpha
        maps[f"stage{stage + 1}"], strides[f"stage{stage + 1}"] = x, tuple(stride)
        if stage == 0 and self.temporal_pool:
          x, stride[0] = _max_pool(x, (3, 1, 1), (2, 1, 1)), 2
      if return_features:
        return backbone_features(maps, strides)
      return Classifier(self.num_classes, self.dtype, name="head")(x)


__all__ = ["C2D_TIME_KERNELS", "I3D_TIME_KERNELS", "VideoResNet", "replicate_time_padding"]
