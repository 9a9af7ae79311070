"""The files of `octflax.convert`: PyTorch ``.pth`` files in, octflax checkpoints out and in.

`octflax.convert` re-exports everything here; the conversions themselves live there.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

SOURCES = ("port", "torchvision")
CHECKPOINT_FORMAT = "octflax-checkpoint/2"  # The trainer's format (octflax.training.checkpoint).


def _check_source(source: str) -> str:
  if source not in SOURCES:
    raise ValueError(f"source must be one of {SOURCES}, got {source!r}.")
  return source


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
  """The state_dict inside a loaded ``.pth``: a raw state_dict or ``checkpoint['state_dict']``.

  A ``module.`` prefix (``nn.DataParallel`` / ``DistributedDataParallel``) is stripped
  when every key has it.
  """
  if not isinstance(checkpoint, Mapping):
    raise ValueError(f"expected a state_dict or a dict with a 'state_dict' entry, got "
                     f"{type(checkpoint).__name__}.")
  if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], Mapping):
    checkpoint = checkpoint["state_dict"]
  state_dict = dict(checkpoint)
  if state_dict and all(k.startswith("module.") for k in state_dict):
    state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
  return state_dict


def load_torch_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a ``.pth`` with torch (``weights_only=True``, on the CPU) and unwraps its state_dict."""
  try:
    import torch
  except ImportError:
    raise ImportError(
        "reading a .pth file needs PyTorch: pip install torch (the CPU build is enough).") from None
  checkpoint = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
  return unwrap_state_dict(checkpoint)


def save_checkpoint(directory: str | os.PathLike, variables: Mapping[str, Any], *, arch: str,
                    alpha: float, source: str = "port", image_size: int = 224, **meta: Any) -> str:
  """Writes ``variables`` as an octflax checkpoint and returns its absolute path.

  The format is the trainer's (`octflax.training.write_checkpoint`): ``DIR/state``
  holds ``{'params', 'batch_stats'}``, ``DIR/meta`` the identity that rebuilds the
  model (``model.name``, ``model.alpha``, ``model.overrides`` -- ``pool_stride``
  False for torchvision's layout -- ``num_classes``, ``image_shape``) and
  ``format``, ``arch``, ``alpha``, ``source``, ``num_classes``, ``pool_stride`` and
  any ``meta``. ``experiments.evaluate --checkpoint DIR`` evaluates it and
  ``--config.init_from=DIR`` fine-tunes from it. ``DIR`` must not exist yet.
  """
  from octflax.training.checkpoint import write_checkpoint  # pylint: disable=g-import-not-at-top

  _check_source(source)
  tree = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  num_classes = int(np.shape(tree["params"]["head"]["fc"]["kernel"])[1])
  identity = {
      "model.name": arch, "model.alpha": float(alpha),
      "model.overrides": {} if source == "port" else {"pool_stride": False},
      "data.name": "image_folder", "num_classes": num_classes, "image_shape": [image_size, image_size, 3],
  }
  info = {"format": CHECKPOINT_FORMAT, "identity": identity, "arch": arch, "alpha": float(alpha),
          "source": source, "num_classes": num_classes, "pool_stride": source == "port", **meta}
  return write_checkpoint(directory, tree, info)


def load_checkpoint(directory: str | os.PathLike) -> tuple[dict, dict]:
  """Reads an octflax checkpoint: ``(variables, meta)``.

  ``directory`` is one written by `save_checkpoint` or by the trainer (a run's
  working directory gives its newest checkpoint; see
  `octflax.training.read_checkpoint`). ``variables`` is ``{'params',
  'batch_stats'}`` as NumPy arrays; ``meta['identity']`` names the model.

  Raises:
    ValueError: no checkpoint there, or one that cannot be read.
  """
  from octflax.training.checkpoint import read_checkpoint  # pylint: disable=g-import-not-at-top
  from octflax.training.errors import CheckpointError  # pylint: disable=g-import-not-at-top

  try:
    return read_checkpoint(os.fspath(directory))
  except CheckpointError as e:
    raise ValueError(str(e)) from None


__all__ = ["CHECKPOINT_FORMAT", "SOURCES", "load_checkpoint", "load_torch_checkpoint", "save_checkpoint",
           "unwrap_state_dict"]
