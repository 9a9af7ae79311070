"""The zoo's residual networks as pure descriptions: which layers, with which arguments, in what order.

The Linen zoo (`octflax.models`) and the NNX zoo (`octflax.nnx.models`) instantiate the same
descriptions, so where alpha goes, which unit carries the stride, the widths, the shortcut
rule and the feature maps are written once, here. A description is a frozen dataclass with

- ``layers()``: the layers to build, in order, each a `Unit` (conv-BN unit), a
  `SqueezeExcite`, a `Conv` or `Norm` (the vanilla ImageNet stem), a `Block` (a residual
  block's place in a network) or a `Head`, named as the variables are;
- ``apply(x, run)``: the forward pass, where ``run(layer, x)`` applies the front end's module
  for ``layer`` (Linen builds it there; NNX looks up the one it built from ``layers()``).

No description builds a module or holds a parameter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from octflax.functional import global_avg_pool, oct_add, oct_max_pool
from octflax.tensor import OctTensor, as_oct, check_alpha

Array = jax.Array
Run = Callable[[Any, Any], Any]
relu = jax.nn.relu
initializers = jax.nn.initializers
HE_FAN_OUT = initializers.variance_scaling(2.0, "fan_out", "normal")


def stage_alphas(alpha: float, num_stages: int) -> list[float]:
  """The alpha of each stage under the official placement.

  The stem is vanilla (alpha 0), every stage but the last runs at ``alpha`` and the
  last stage runs at alpha 0, so the first block of the first stage converts into
  the octave representation and the first block of the last stage converts back.
  The classifier then sees the high part only.

  Examples:
    >>> stage_alphas(0.5, 4)
    [0.5, 0.5, 0.5, 0.0]
  """
  alpha = check_alpha(alpha)
  return [alpha] * (num_stages - 1) + [0.0]


def resplit(x: OctTensor, alpha: float, octave_axes: tuple[int, ...] | None = None) -> OctTensor:
  """Re-splits ``x`` at a new ratio without parameters (merge, then split again).

  Used by identity shortcuts whose block changes alpha but not the channel count.
  """
  x = as_oct(x)
  if x.alpha == alpha:
    return x
  return OctTensor.from_array(x.merge(octave_axes), alpha, octave_axes)


def block_kernel(size: int, time_kernel: int | None) -> int | tuple[int, int, int]:
  """A block's kernel: ``size`` (2-D images) or ``(time_kernel, size, size)`` (3-D clips)."""
  return size if time_kernel is None else (time_kernel, size, size)


def block_strides(strides: int, time_kernel: int | None) -> int | tuple[int, int, int]:
  """A block's stride: ``strides`` (2-D) or ``(1, strides, strides)`` (3-D: time keeps its rate)."""
  return strides if time_kernel is None else (1, strides, strides)


class FeatureStrides(Mapping):
  """Feature name -> per-axis stride: a read-only mapping that is static under `jax.jit`.

  It is a pytree with no leaves (the strides are its static data), so the strides a
  jitted function returns are still Python ints, usable for shapes.
  """

  def __init__(self, items: Iterable[tuple[str, Sequence[int]]]):
    self._items = tuple((str(name), tuple(int(s) for s in stride)) for name, stride in items)

  def __getitem__(self, name: str) -> tuple[int, ...]:
    return dict(self._items)[name]

  def __iter__(self) -> Iterator[str]:
    return (name for name, _ in self._items)

  def __len__(self) -> int:
    return len(self._items)

  def __eq__(self, other: Any) -> bool:
    return isinstance(other, Mapping) and dict(self._items) == dict(other.items())

  def __hash__(self) -> int:
    return hash(self._items)

  def __repr__(self) -> str:
    return f"FeatureStrides({dict(self._items)})"


jax.tree_util.register_pytree_node(
    FeatureStrides, lambda strides: ((), strides._items), lambda items, _: FeatureStrides(items))


def backbone_features(maps: dict[str, Any], strides: dict[str, Sequence[int]]) -> dict[str, Any]:
  """The backbone convention of every zoo model: feature maps and their strides.

  A model called with ``return_features=True`` returns, instead of logits::

    {'stem': OctTensor, 'stage1': OctTensor, ..., 'strides': {'stem': (2, 2), ...}}

  Each map is an `OctTensor` (a vanilla map is ``OctTensor(high=x, low=None)``; its
  ``merge()`` gives one array); its stride is that of the high part relative to the
  input, per spatial axis (the low part has twice that stride on every octave axis).
  ``strides`` is a `FeatureStrides`: Python ints inside and outside `jax.jit`.

  Args:
    maps: name -> feature map (an OctTensor or an array), in network order.
    strides: name -> per-axis stride of the high part; the same keys as ``maps``.

  Returns:
    ``{**maps as OctTensors, 'strides': FeatureStrides}``.
  """
  if set(maps) != set(strides):
    raise ValueError(f"maps {sorted(maps)} and strides {sorted(strides)} name different features.")
  out: dict[str, Any] = {name: as_oct(value) for name, value in maps.items()}
  out["strides"] = FeatureStrides((name, strides[name]) for name in maps)
  return out


def classify(x: OctTensor | Array, fc: Callable[[Array], Array]) -> Array:
  """``fc`` of the spatial mean of each part, concatenated: float32 logits ``[N, num_classes]``."""
  x = as_oct(x)
  spatial_dims = (x.high if x.high is not None else x.low).ndim - 2
  return fc(global_avg_pool(x, spatial_dims)).astype(jnp.float32)


def squeeze_excite(x: OctTensor | Array, reduce: Callable[[Array], Array], expand: Callable[[Array], Array]
                   ) -> OctTensor:
  """Squeeze-and-excitation over both parts: one gate vector, split like the channels.

  ``s = sigmoid(expand(relu(reduce(mean(x)))))`` over the concatenated channels of both
  parts (``reduce``: C -> `SqueezeExcite.hidden`, ``expand``: back to C); each part is
  multiplied by its slice of ``s``.
  """
  x = as_oct(x)
  s = jax.nn.sigmoid(expand(relu(reduce(global_avg_pool(x)))))
  gates = OctTensor(high=None if x.high is None else s[:, : x.high_channels],
                    low=None if x.low is None else s[:, x.high_channels:])
  # [N, C] -> [N, 1, ..., 1, C] for any number of spatial axes.
  return jax.tree.map(
      lambda part, gate: part * jnp.expand_dims(gate, tuple(range(1, part.ndim - 1))).astype(part.dtype), x, gates)


@dataclasses.dataclass(frozen=True)
class Unit:
  """One conv-BN(-activation) unit (`octflax.OctConvBN`), the network's settings aside.

  ``args`` and ``kwargs`` are its arguments after ``in_features`` (which only the NNX unit takes).
  """

  name: str
  in_features: int
  features: int
  kernel_size: int | tuple[int, ...]
  alpha_in: float
  alpha_out: float
  strides: int | tuple[int, ...] = 1
  feature_group_count: int = 1
  activation: Callable[[Array], Array] | None = None
  bn_scale_init: Callable[..., Array] = initializers.ones

  @property
  def args(self) -> tuple[Any, ...]:
    return self.features, self.kernel_size, self.alpha_in, self.alpha_out

  @property
  def kwargs(self) -> dict[str, Any]:
    return dict(strides=self.strides, feature_group_count=self.feature_group_count, activation=self.activation,
                bn_scale_init=self.bn_scale_init)


@dataclasses.dataclass(frozen=True)
class SqueezeExcite:
  """A squeeze-and-excitation layer (`squeeze_excite`) over ``channels``, named ``name``."""

  name: str
  channels: int
  reduction: int = 16

  @property
  def hidden(self) -> int:
    """Channels of the hidden layer: ``max(channels // reduction, 1)``."""
    return max(self.channels // self.reduction, 1)


@dataclasses.dataclass(frozen=True)
class ResidualBlock:
  """A residual block: ``relu(branch(x) + shortcut(x))``, post-activation.

  Attributes:
    branch: the residual branch's layers in order (`Unit`, `SqueezeExcite`).
    shortcut: the projection (a 1x1 `Unit` named ``shortcut``), or None: the identity,
      re-split at ``alpha_out`` (`resplit`).
    alpha_out: the block's output alpha.
    octave_axes: for the identity's re-split; None = all.
  """

  branch: tuple[Unit | SqueezeExcite, ...]
  shortcut: Unit | None
  alpha_out: float
  octave_axes: tuple[int, ...] | None = None

  def layers(self) -> tuple[Unit | SqueezeExcite, ...]:
    return self.branch + (() if self.shortcut is None else (self.shortcut,))

  def apply(self, x: OctTensor | Array, run: Run) -> OctTensor:
    y = x
    for layer in self.branch:
      y = run(layer, y)
    shortcut = resplit(as_oct(x), self.alpha_out, self.octave_axes) if self.shortcut is None else run(self.shortcut, x)
    return oct_add(y, shortcut).map(relu)


def _shortcut(in_features: int, features: int, alpha_in: float, alpha_out: float, strides: int,
              time_kernel: int | None) -> Unit | None:
  """The projection (1x1 conv-BN, the only place a block's shape changes), or None (identity)."""
  if strides == 1 and in_features == features:
    return None
  flat = None if time_kernel is None else 1
  return Unit("shortcut", in_features, features, block_kernel(1, flat), alpha_in, alpha_out,
              block_strides(strides, time_kernel))


def basic_block(in_features: int, features: int, alpha_in: float, alpha_out: float, strides: int = 1,
                zero_init_residual: bool = False, time_kernel: int | None = None,
                octave_axes: tuple[int, ...] | None = None) -> ResidualBlock:
  """Two 3x3 conv-BN units ``conv1`` (converts alpha_in -> alpha_out, carries the stride) and ``conv2``.

  For clips (``time_kernel`` not None) ``conv1`` is ``(t, 3, 3)`` and ``conv2`` ``(1, 3, 3)``;
  ``zero_init_residual`` zero-inits ``conv2``'s BatchNorm scale.
  """
  flat = None if time_kernel is None else 1  # the convs with no time extent in 3-D
  last_scale = initializers.zeros if zero_init_residual else initializers.ones
  branch = (Unit("conv1", in_features, features, block_kernel(3, time_kernel), alpha_in, alpha_out,
                 block_strides(strides, time_kernel), activation=relu),
            Unit("conv2", features, features, block_kernel(3, flat), alpha_out, alpha_out, bn_scale_init=last_scale))
  return ResidualBlock(branch, _shortcut(in_features, features, alpha_in, alpha_out, strides, time_kernel),
                       alpha_out, octave_axes)


def bottleneck(in_features: int, features: int, alpha_in: float, alpha_out: float, strides: int = 1,
               zero_init_residual: bool = False, time_kernel: int | None = None,
               octave_axes: tuple[int, ...] | None = None, groups: int = 1, base_width: int = 64,
               squeeze_excite: bool = False) -> ResidualBlock:
  """ResNet v1.5 bottleneck: ``conv1`` 1x1, ``conv2`` 3x3 (stride, groups), ``conv3`` 1x1 to ``4 features``.

  The inner width is ``int(features * base_width / 64) * groups`` (ResNeXt); ``se`` follows
  ``conv3`` with ``squeeze_excite``. For clips ``conv1`` is ``(t, 1, 1)``, the others ``(1, k, k)``.
  """
  width = int(features * base_width / 64) * groups
  flat = None if time_kernel is None else 1
  last_scale = initializers.zeros if zero_init_residual else initializers.ones
  branch = (Unit("conv1", in_features, width, block_kernel(1, time_kernel), alpha_in, alpha_out, activation=relu),
            Unit("conv2", width, width, block_kernel(3, flat), alpha_out, alpha_out, block_strides(strides, time_kernel),
                 feature_group_count=groups, activation=relu),
            Unit("conv3", width, features * 4, block_kernel(1, flat), alpha_out, alpha_out, bn_scale_init=last_scale))
  if squeeze_excite:
    branch += (SqueezeExcite("se", features * 4),)
  return ResidualBlock(branch, _shortcut(in_features, features * 4, alpha_in, alpha_out, strides, time_kernel),
                       alpha_out, octave_axes)


@dataclasses.dataclass(frozen=True)
class Conv:
  """A vanilla convolution without bias (`flax.linen.Conv` / `flax.nnx.Conv` keyword arguments in ``kwargs``)."""

  name: str
  in_features: int
  features: int
  kernel_size: tuple[int, ...]
  strides: tuple[int, ...]
  padding: tuple[tuple[int, int], ...]

  @property
  def kwargs(self) -> dict[str, Any]:
    return dict(kernel_size=self.kernel_size, strides=self.strides, padding=self.padding, use_bias=False,
                kernel_init=HE_FAN_OUT)


@dataclasses.dataclass(frozen=True)
class Norm:
  """A vanilla BatchNorm over ``features`` channels (with the network's settings)."""

  name: str
  features: int


@dataclasses.dataclass(frozen=True)
class Block:
  """A residual block's place in a network: its name and the arguments it is built with."""

  name: str
  in_features: int
  features: int
  alpha_in: float
  alpha_out: float
  strides: int


@dataclasses.dataclass(frozen=True)
class Head:
  """The classifier (`classify`): ``fc`` from ``in_features`` to ``num_classes``."""

  name: str
  in_features: int
  num_classes: int


def check_resnet(stage_sizes: Sequence[int], widths: Sequence[int], stem: str) -> None:
  """Raises a ValueError unless ``stem`` is 'imagenet' or 'cifar' and there is one width per stage."""
  if stem not in ("imagenet", "cifar"):
    raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}.")
  if len(stage_sizes) != len(widths):
    raise ValueError(f"stage_sizes {tuple(stage_sizes)} and widths {tuple(widths)} differ in length.")


@dataclasses.dataclass(frozen=True)
class ResNetLayout:
  """An Oct-ResNet for images (post-activation v1.5 for ImageNet, or CIFAR-style): stem, stages, head.

  Built by `resnet`. Attributes: ``stem`` ('imagenet': `Conv` ``stem_conv``, `Norm`
  ``stem_bn``, ReLU and a 3x3/2 max-pool; 'cifar': a 3x3 `Unit` ``stem``), ``stages`` (the
  `Block` s of each stage), ``head`` and ``dtype`` (the compute dtype of the input).
  """

  stem: tuple[Conv, Norm] | tuple[Unit]
  stages: tuple[tuple[Block, ...], ...]
  head: Head
  dtype: Any

  def layers(self) -> tuple[Any, ...]:
    return (*self.stem, *(block for stage in self.stages for block in stage), self.head)

  def apply(self, x: Array, run: Run, return_features: bool = False) -> Array | dict:
    """Logits of images ``[N, H, W, C]``, or with ``return_features`` the backbone's maps.

    The maps (`backbone_features`): ``stem`` (the stem's activation, stride 2 for 'imagenet'
    before its max-pool, 1 for 'cifar') and ``stage1``... (each stage's last block).
    """
    if x.ndim != 4:
      raise ValueError(f"expected images [N, H, W, C], got shape {x.shape}.")
    x = x.astype(self.dtype)
    if isinstance(self.stem[0], Conv):
      conv, norm = self.stem
      x = relu(run(norm, run(conv, x)))
      maps, strides = {"stem": x}, {"stem": (2, 2)}
      x, stride = oct_max_pool(x, 3, 2, ((1, 1), (1, 1))), 4
    else:
      x = run(self.stem[0], x)
      maps, strides, stride = {"stem": x}, {"stem": (1, 1)}, 1
    for number, stage in enumerate(self.stages, 1):
      for block in stage:
        x = run(block, x)
        stride *= block.strides
      maps[f"stage{number}"], strides[f"stage{number}"] = x, (stride, stride)
    if return_features:
      return backbone_features(maps, strides)
    return run(self.head, x)


def resnet(stage_sizes: Sequence[int], widths: Sequence[int], alpha: float, *, stem: str, stem_features: int,
           in_features: int, expansion: int, num_classes: int, dtype: Any) -> ResNetLayout:
  """The layout of `octflax.models.ResNet` for ``in_features`` image channels.

  Alpha follows `stage_alphas`; the first block of every stage but the first has stride 2;
  a block outputs ``expansion`` times its width (1: basic block, 4: bottleneck).

  Raises:
    ValueError: ``in_features`` is not a positive int, or `check_resnet` fails.
  """
  check_resnet(stage_sizes, widths, stem)
  if not isinstance(in_features, int) or in_features < 1:
    raise ValueError(f"in_features must be a positive int (image channels), got {in_features!r}.")
  if stem == "imagenet":
    stem_layers = (Conv("stem_conv", in_features, stem_features, (7, 7), (2, 2), ((3, 3), (3, 3))),
                   Norm("stem_bn", stem_features))
  else:
    stem_layers = (Unit("stem", in_features, stem_features, 3, 0.0, 0.0, activation=relu),)
  stages, channels, alpha_in = [], stem_features, 0.0
  for stage, (num_blocks, width, stage_alpha) in enumerate(zip(stage_sizes, widths, stage_alphas(alpha, len(widths)))):
    blocks = []
    for block in range(num_blocks):
      blocks.append(Block(f"stage{stage + 1}_block{block}", channels, width, alpha_in, stage_alpha,
                          2 if stage > 0 and block == 0 else 1))
      channels, alpha_in = width * expansion, stage_alpha
    stages.append(tuple(blocks))
  return ResNetLayout(stem_layers, tuple(stages), Head("head", channels, num_classes), dtype)


__all__ = ["Block", "Conv", "FeatureStrides", "Head", "Norm", "ResNetLayout", "ResidualBlock", "SqueezeExcite", "Unit",
           "backbone_features", "basic_block", "block_kernel", "block_strides", "bottleneck", "check_resnet",
           "classify", "resnet", "resplit", "squeeze_excite", "stage_alphas"]
