"""Weights from PyTorch: the Oct-ResNet port's and torchvision's ResNet state_dicts.

Two PyTorch layouts are understood (``source``):

``'port'``
  The layout of the PyTorch OctConv port (d-li14/octconv.pytorch), Oct-ResNet-26/50/
  101/152/200 at any alpha. Every conv-BN unit is ``<unit>.conv.conv_{h2h,h2l,l2h,l2l}
  .weight`` plus ``<unit>.bn_h.*`` / ``<unit>.bn_l.*``; a block's units are ``conv1``,
  ``conv2``, ``conv3`` and ``downsample.0``; the stem is ``conv1.weight`` / ``bn1.*``
  and the classifier ``fc.*``. The port runs stride 2 as a 2x2 average pool and a
  stride-1 conv, as octflax does, so it maps onto ``get_model(arch, alpha=alpha)``.

``'torchvision'``
  torchvision's ResNet-18/34/50/101/152 (and ResNeXt-50 32x4d), alpha 0 only:
  ``layer1.0.conv1.weight``, ``layer1.0.bn1.*``, ``layer1.0.downsample.0.weight``
  (1x1 conv), ``layer1.0.downsample.1.*`` (its BN). torchvision's strided layers
  are strided convs, so its weights need the octflax model built with
  ``pool_stride=False`` (`model_for` does this).

``source=None`` detects the layout from the keys (`detect_source`).

Conversions: conv ``weight`` OIHW -> ``kernel`` HWIO; ``fc.weight`` [out, in] ->
Dense ``kernel`` [in, out]; BN ``weight``/``bias`` -> ``scale``/``bias`` (params);
``running_mean``/``running_var`` -> ``mean``/``var`` (batch_stats).
``num_batches_tracked`` carries nothing octflax uses: it may be present or absent and
is dropped (`to_torch_state_dict` writes 0). PyTorch's BatchNorm momentum 0.1 (the
weight of the new batch) is Flax's ``momentum=0.9`` (the weight of the running
average), the default of every octflax model; epsilon is 1e-5 in both.

Any missing key, unexpected key or wrong shape stops the import with one
`ValueError` that lists all of them; nothing is skipped silently.

The files (`load_torch_checkpoint` reads a ``.pth``, `save_checkpoint` writes the
result as an octflax checkpoint, which `octflax.checkpoint.load_model` reads) are in
`octflax._convert_files`, exported here.

Example::

  sd = torch.load('oct_resnet50_0.5.pth', map_location='cpu')['state_dict']
  variables = from_torch_state_dict(sd, arch='oct_resnet50', alpha=0.5, source='port')
  model = model_for('oct_resnet50', alpha=0.5, source='port')
  logits = model.apply(variables, images_nhwc, train=False)
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Iterable, Mapping

import numpy as np

from octflax._convert_files import SOURCES, _check_source, load_torch_checkpoint, save_checkpoint, unwrap_state_dict

_PATH_ORDER = ("l2l", "l2h", "h2l", "h2h")  # the port's registration order of the four convs
_UNITS = ("conv1", "conv2", "conv3", "shortcut")
_BLOCK = re.compile(r"stage(\d+)_block(\d+)$")


# ----------------------------------------------------------------------------- models


def model_for(arch: str, alpha: float = 0.0, source: str = "port", **kwargs: Any):
  """The octflax model whose variables match ``source``'s state_dict of ``arch``.

  ``source='port'``: ``get_model(arch, alpha=alpha, **kwargs)`` (stride 2 pools, as in the
  port). ``source='torchvision'``: alpha must be 0 and the model is built with
  ``pool_stride=False`` so that its strided vanilla units are strided convs, as in
  torchvision. ``kwargs`` (``num_classes``, ``dtype``, ...) go to `get_model`.
  """
  from octflax.models import get_model

  _check_source(source)
  if source == "torchvision" and float(alpha) != 0.0:
    raise ValueError(f"source='torchvision' holds vanilla ResNets: alpha must be 0, got {alpha!r}.")
  if source == "port":
    return get_model(arch, alpha=alpha, **kwargs)
  kwargs.setdefault("pool_stride", False)
  try:
    return get_model(arch, alpha=alpha, **kwargs)
  except TypeError:
    raise ValueError(f"arch {arch!r} has no torchvision layout (no pool_stride option).") from None


@functools.lru_cache(maxsize=16)
def _model_layers(arch: str, alpha: float, source: str, num_classes: int):
  """The model of ``arch`` for ``source``, its abstract variables and its octave layers (`octave_layers`)."""
  import jax
  import jax.numpy as jnp

  from octflax.layers import octave_layers
  from octflax.models.resnet import ResNet

  model = model_for(arch, alpha, source, num_classes=num_classes)
  if not isinstance(model, ResNet) or model.stem != "imagenet":
    raise ValueError(
        f"arch {arch!r} has no PyTorch layout here; supported are the ImageNet Oct-ResNets and "
        "Oct-ResNeXts (oct_resnet18/26/34/50/101/152/200, oct_resnext50_32x4d, "
        "oct_resnext101_32x4d).")
  x = jnp.zeros((1, 64, 64, 3), jnp.float32)
  layers = octave_layers(model, x, train=False)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  return abstract, layers


@functools.lru_cache(maxsize=16)
def _variable_shapes(arch: str, alpha: float, source: str, num_classes: int) -> dict:
  """``{'params': ..., 'batch_stats': ...}`` of shape tuples in the PyTorch layouts' view: per path and part.

  The port holds one convolution per OctConv path and one BatchNorm per part; octflax one kernel
  per OctConv whose blocks are the paths, and one BatchNorm's variables per OctBatchNorm whose
  channels the parts share (`octflax.checkpoint.format2`). The key map works in the port's view;
  the import joins it (`format2.join`), the export splits into it (`format2.split`).
  """
  import jax

  from octflax.checkpoint import format2

  abstract, layers = _model_layers(arch, alpha, source, num_classes)
  view = jax.eval_shape(lambda v: {c: format2.split(v.get(c, {}), layers) for c in ("params", "batch_stats")},
                        dict(abstract))
  return jax.tree.map(lambda a: (tuple(a.shape), np.dtype(a.dtype).name), view)


# ----------------------------------------------------------------------------- key map


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One PyTorch key and where its value lives in the octflax variables."""

  key: str
  kind: str  # 'conv' (OIHW <-> HWIO), 'dense' ([out, in] <-> [in, out]), 'vector', 'count'
  collection: str | None = None
  path: tuple[str, ...] = ()


# Where each axis of a PyTorch weight comes from in the Flax one, by entry kind: a conv
# kernel [kh, kw, in, out] is stored [out, in, kh, kw], a dense kernel transposed. Other
# kinds (vectors, scalars) share one layout.
_TORCH_AXES = {"conv": (3, 2, 0, 1), "dense": (1, 0)}


def _torch_shape(kind: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  axes = _TORCH_AXES.get(kind)
  return tuple(flax_shape) if axes is None else tuple(flax_shape[a] for a in axes)


def _to_torch_layout(kind: str, value: np.ndarray) -> np.ndarray:
  axes = _TORCH_AXES.get(kind)
  return value if axes is None else np.ascontiguousarray(np.transpose(value, axes))


def _to_flax_layout(kind: str, value: np.ndarray) -> np.ndarray:
  axes = _TORCH_AXES.get(kind)
  return value if axes is None else np.ascontiguousarray(np.transpose(value, np.argsort(axes)))


def _bn_entries(prefix: str, path: tuple[str, ...]) -> list[_Entry]:
  return [
      _Entry(f"{prefix}.weight", "vector", "params", path + ("scale",)),
      _Entry(f"{prefix}.bias", "vector", "params", path + ("bias",)),
      _Entry(f"{prefix}.running_mean", "vector", "batch_stats", path + ("mean",)),
      _Entry(f"{prefix}.running_var", "vector", "batch_stats", path + ("var",)),
      _Entry(f"{prefix}.num_batches_tracked", "count"),
  ]


def _entries(params: Mapping[str, Any], source: str, arch: str) -> list[_Entry]:
  """Every PyTorch key of ``source``'s layout, in PyTorch's order, with its octflax place."""
  entries = [_Entry("conv1.weight", "conv", "params", ("stem_conv", "kernel"))]
  entries += _bn_entries("bn1", ("stem_bn",))
  blocks = []
  for name in params:
    match = _BLOCK.match(name)
    if match:
      blocks.append((int(match.group(1)), int(match.group(2)), name))
    elif name not in ("stem_conv", "stem_bn", "head"):
      raise ValueError(f"{arch}: module {name!r} has no counterpart in the {source!r} layout.")
  for stage, index, name in sorted(blocks):
    block = params[name]
    unknown = set(block) - set(_UNITS)
    if unknown:
      raise ValueError(f"{arch}: {name} has modules {sorted(unknown)} with no counterpart in the "
                       f"{source!r} layout.")
    for unit in (u for u in _UNITS if u in block):
      base = (name, unit)
      paths = block[unit]["conv"]
      if source == "port":
        prefix = f"layer{stage}.{index}." + ("downsample.0" if unit == "shortcut" else unit)
        for path in (p for p in _PATH_ORDER if p in paths):
          entries.append(_Entry(f"{prefix}.conv.conv_{path}.weight", "conv", "params",
                                base + ("conv", path, "kernel")))
          if "bias" in paths[path]:
            entries.append(_Entry(f"{prefix}.conv.conv_{path}.bias", "vector", "params",
                                  base + ("conv", path, "bias")))
        for part, suffix in (("high", "h"), ("low", "l")):
          if part in block[unit]["bn"]:
            entries += _bn_entries(f"{prefix}.bn_{suffix}", base + ("bn", part))
      else:
        if set(paths) != {"h2h"}:
          raise ValueError("source='torchvision' holds vanilla ResNets: the model must have alpha 0.")
        if unit == "shortcut":
          conv_key, bn_prefix = f"layer{stage}.{index}.downsample.0", f"layer{stage}.{index}.downsample.1"
        else:
          conv_key, bn_prefix = f"layer{stage}.{index}.{unit}", f"layer{stage}.{index}.bn{unit[-1]}"
        entries.append(_Entry(f"{conv_key}.weight", "conv", "params", base + ("conv", "h2h", "kernel")))
        entries += _bn_entries(bn_prefix, base + ("bn", "high"))
  entries.append(_Entry("fc.weight", "dense", "params", ("head", "fc", "kernel")))
  entries.append(_Entry("fc.bias", "vector", "params", ("head", "fc", "bias")))
  return entries


def _leaf_paths(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterable[tuple[str, ...]]:
  for name, value in tree.items():
    if isinstance(value, Mapping):
      yield from _leaf_paths(value, prefix + (name,))
    else:
      yield prefix + (name,)


def _get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
  for name in path:
    tree = tree[name]
  return tree


def _numpy_tree(tree: Mapping[str, Any]) -> dict:
  return {k: _numpy_tree(v) if isinstance(v, Mapping) else np.asarray(v) for k, v in tree.items()}


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


@functools.lru_cache(maxsize=16)
def _key_map(arch: str, alpha: float, source: str, num_classes: int):
  """The entries of the layout and the octflax shapes/dtypes, checked to cover every variable."""
  shapes = _variable_shapes(arch, alpha, source, num_classes)
  entries = _entries(shapes["params"], source, arch)
  covered = {(e.collection, e.path) for e in entries if e.collection}
  every = {(c, p) for c in ("params", "batch_stats") for p in _leaf_paths(shapes[c])}
  if covered != every:
    raise ValueError(f"{arch}: octflax variables with no PyTorch key in the {source!r} layout: "
                     f"{sorted('/'.join((c,) + p) for c, p in every - covered)}.")
  return entries, shapes


def _normalise_alpha(alpha: float) -> float:
  from octflax.tensor import check_alpha

  return check_alpha(alpha)


def expected_state_dict_shapes(arch: str, *, alpha: float = 0.0, source: str = "port",
                               num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
  """Every key of ``source``'s state_dict for ``arch`` and its PyTorch shape, in PyTorch's order.

  ``num_batches_tracked`` keys are listed (shape ``()``) although the import does not need them.
  """
  _check_source(source)
  entries, shapes = _key_map(arch, _normalise_alpha(alpha), source, int(num_classes))
  return {e.key: (() if e.kind == "count" else
                  _torch_shape(e.kind, _get(shapes[e.collection], e.path)[0])) for e in entries}


# ----------------------------------------------------------------------------- conversion


def detect_source(keys: Iterable[str]) -> str:
  """'port' or 'torchvision', from the key names of a ResNet state_dict."""
  keys = list(keys)
  port = any(".conv.conv_" in k for k in keys)
  torchvision = any(re.match(r"layer\d+\.\d+\.bn\d\.weight$", k) for k in keys)
  if port == torchvision:
    raise ValueError(
        "cannot tell the state_dict's layout from its keys (the port has "
        "'layerS.B.convK.conv.conv_h2h.weight', torchvision 'layerS.B.bnK.weight'); pass "
        "source='port' or source='torchvision'.")
  return "port" if port else "torchvision"


def _as_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor; torch itself is not needed to read it
    value = value.detach().cpu()
    if not value.dtype.is_floating_point or value.dtype in _torch_float_dtypes():
      return value.numpy()
    return value.float().numpy()  # bfloat16 and other types NumPy does not have
  return np.asarray(value)


def _torch_float_dtypes():
  import torch

  return (torch.float16, torch.float32, torch.float64)


def _format_shape(shape: tuple[int, ...]) -> str:
  return str(tuple(int(s) for s in shape))


def from_torch_state_dict(state_dict: Mapping[str, Any], *, arch: str, alpha: float = 0.0,
                          source: str | None = None, num_classes: int | None = None) -> dict:
  """Converts a PyTorch ResNet state_dict into octflax variables.

  Args:
    state_dict: key -> NumPy array or torch tensor, in the port's or torchvision's
      layout (see the module docstring). Strip a ``module.`` prefix first
      (`unwrap_state_dict`).
    arch: the octflax model name, e.g. ``'oct_resnet50'`` (torchvision's ``resnet50`` is
      ``'oct_resnet50'`` at alpha 0).
    alpha: the checkpoint's alpha (0 for torchvision).
    source: ``'port'``, ``'torchvision'`` or None to detect it from the keys.
    num_classes: classifier outputs; None reads them from ``fc.weight`` (default 1000).

  Returns:
    ``{'params': ..., 'batch_stats': ...}`` (nested dicts of float32 `jax.Array`s) for
    ``model_for(arch, alpha, source, num_classes=num_classes)``: the port's four convolutions
    of a unit become the blocks of its OctConv's one kernel (`octflax.functional.kernel_blocks`). For
    ``source='torchvision'`` that model has ``pool_stride=False``: torchvision's strided
    convs are not the OctConv's pool-then-conv, and the weights give the published
    accuracy only in the model built that way.

  Raises:
    ValueError: listing every missing key, unexpected key and key of the wrong shape
      (with the expected and the given shape), or for an unknown arch/source.
  """
  import jax
  import jax.numpy as jnp

  alpha = _normalise_alpha(alpha)
  if not isinstance(state_dict, Mapping):
    raise ValueError(f"state_dict must be a mapping of key -> array, got {type(state_dict).__name__}.")
  source = detect_source(state_dict) if source is None else _check_source(source)
  if num_classes is None:
    fc = state_dict.get("fc.weight")
    num_classes = int(np.shape(fc)[0]) if fc is not None and len(np.shape(fc)) == 2 else 1000
  entries, shapes = _key_map(arch, alpha, source, int(num_classes))

  known = {e.key for e in entries}
  missing, wrong, unexpected = [], [], []
  variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
  for entry in entries:
    if entry.key not in state_dict:
      if entry.kind != "count":
        flax_shape = _get(shapes[entry.collection], entry.path)[0]
        missing.append(f"  missing key: {entry.key} (expected shape "
                       f"{_format_shape(_torch_shape(entry.kind, flax_shape))})")
      continue
    value = state_dict[entry.key]
    got = tuple(np.shape(value))
    if entry.kind == "count":
      if got not in ((), (1,)):
        wrong.append(f"  wrong shape: {entry.key} (expected shape (), got shape {_format_shape(got)})")
      continue
    flax_shape, dtype = _get(shapes[entry.collection], entry.path)
    expected = _torch_shape(entry.kind, flax_shape)
    if got != expected:
      wrong.append(f"  wrong shape: {entry.key} (expected shape {_format_shape(expected)}, "
                   f"got shape {_format_shape(got)})")
      continue
    array = _to_flax_layout(entry.kind, _as_numpy(value))
    _set(variables[entry.collection], entry.path, jnp.asarray(array, dtype=dtype))
  for key in state_dict:
    if key not in known:
      unexpected.append(f"  unexpected key: {key} (got shape {_format_shape(np.shape(state_dict[key]))})")
  problems = missing + unexpected + wrong
  if problems:
    raise ValueError(
        f"cannot import the state_dict into {arch} (alpha={alpha}, source={source!r}, "
        f"num_classes={num_classes}): {len(missing)} missing, {len(unexpected)} unexpected, "
        f"{len(wrong)} of the wrong shape (a wrong arch, alpha or source gives many):\n"
        + "\n".join(problems))
  from octflax.checkpoint import format2

  return jax.tree.map(jnp.asarray, format2.join(variables))


def to_torch_state_dict(variables: Mapping[str, Any], *, arch: str, alpha: float = 0.0,
                        source: str = "port") -> dict[str, np.ndarray]:
  """The inverse of `from_torch_state_dict`: octflax variables -> a PyTorch state_dict.

  Returns key -> NumPy array (float32; ``num_batches_tracked`` as an int64 zero) in the
  order PyTorch lists them, so ``{k: torch.from_numpy(v) for k, v in sd.items()}`` loads
  with ``load_state_dict(..., strict=True)`` into the port's or torchvision's model.
  ``variables`` must have the shapes of ``model_for(arch, alpha, source)``.
  """
  alpha = _normalise_alpha(alpha)
  _check_source(source)
  params = variables["params"]
  stats = variables.get("batch_stats", {})
  try:
    num_classes = int(np.shape(params["head"]["fc"]["kernel"])[1])
  except (KeyError, TypeError, IndexError):
    raise ValueError(f"variables have no classifier params['head']['fc']['kernel'] of {arch}.") from None
  entries, port_shapes = _key_map(arch, alpha, source, num_classes)
  from octflax.checkpoint import format2

  tree = {"params": params, "batch_stats": stats}
  if format2.holds(tree):  # already in the port's view (per path and part), as format 2 held it
    shapes = port_shapes
  else:
    abstract, layers = _model_layers(arch, alpha, source, num_classes)
    shapes = {c: _shape_tree(abstract.get(c, {})) for c in ("params", "batch_stats")}
  problems = []
  for collection in ("params", "batch_stats"):
    for path in _leaf_paths(shapes[collection]):
      name = "/".join((collection,) + path)
      expected = _get(shapes[collection], path)[0]
      try:
        value = np.asarray(_get(tree[collection], path))
      except (KeyError, TypeError):
        problems.append(f"  missing variable: {name} (expected shape {_format_shape(expected)})")
        continue
      if value.shape != expected:
        problems.append(f"  wrong shape: {name} (expected shape {_format_shape(expected)}, "
                        f"got shape {_format_shape(value.shape)})")
    known = set(_leaf_paths(shapes[collection]))
    for path in _leaf_paths(tree[collection]):
      if path not in known:
        problems.append(f"  unexpected variable: {'/'.join((collection,) + path)}")
  if problems:
    raise ValueError(f"variables do not match {arch} (alpha={alpha}, source={source!r}):\n"
                     + "\n".join(problems))
  if shapes is not port_shapes:  # today's variables as the port's convolutions per path and BatchNorms per part
    tree = {c: format2.split(_numpy_tree(t), layers) for c, t in tree.items()}
  return {e.key: np.asarray(0, dtype=np.int64) if e.kind == "count" else
          _to_torch_layout(e.kind, np.asarray(_get(tree[e.collection], e.path)).astype(np.float32)) for e in entries}


def _shape_tree(tree: Mapping[str, Any]) -> dict:
  """Nested dicts of ``(shape,)`` (the key map's leaves) for a tree of arrays or shapes."""
  return {k: _shape_tree(v) if isinstance(v, Mapping) else (tuple(v.shape),) for k, v in tree.items()}


__all__ = [
    "SOURCES", "detect_source", "expected_state_dict_shapes", "from_torch_state_dict",
    "load_torch_checkpoint", "model_for", "save_checkpoint",
    "to_torch_state_dict", "unwrap_state_dict",
]

from octflax._inflate import inflate  # noqa: E402  (2-D -> 3-D variables, I3D inflation)

__all__ += ["inflate"]
