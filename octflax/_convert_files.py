"""The files of `octflax.convert`: PyTorch ``.pth`` files in, octflax checkpoints out.

`octflax.convert` re-exports everything here; the conversions themselves live there.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

SOURCES = ("port", "torchvision")


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
  """Writes converted ``variables`` as an octflax checkpoint and returns its absolute path.

  The format is the trainer's (`octflax.checkpoint.write_checkpoint`): ``DIR/state``
  holds ``{'params', 'batch_stats'}``, ``DIR/meta`` the `ModelIdentity` that rebuilds
  the model (``pool_stride`` False for torchvision's layout, an ImageNet input of
  ``image_size``) and ``source`` and any ``meta``.
  ``octflax.checkpoint.load_model(DIR)`` gives the model back,
  ``experiments.evaluate --checkpoint DIR`` evaluates it and
  ``--config.init_from=DIR`` fine-tunes from it. ``DIR`` must not exist yet.
  """
  from octflax.checkpoint import ModelIdentity, write_checkpoint  # pylint: disable=g-import-not-at-top

  _check_source(source)
  tree = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  identity = ModelIdentity(arch, alpha, num_classes=int(np.shape(tree["params"]["head"]["fc"]["kernel"])[1]),
                           image_shape=(image_size, image_size, 3), data="image_folder",
                           overrides={} if source == "port" else {"pool_stride": False})
  return write_checkpoint(directory, tree, {**meta, "identity": identity.to_json(), "source": source})


__all__ = ["SOURCES", "load_torch_checkpoint", "save_checkpoint", "unwrap_state_dict"]
