"""What a checkpoint's arrays belong to: `ModelIdentity`, and the one function that builds its model.

A run, a checkpoint and an imported PyTorch model are the same model when their
identities are equal: the zoo name, alpha, the attributes that differ from the
zoo's defaults, the number of classes, the input shape and the data set. The
identity is stored in every checkpoint's ``meta`` (under ``identity``, with the
keys of `ModelIdentity.to_json`), and rebuilds the model from it
(`ModelIdentity.build`), under Linen or NNX.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import jax.numpy as jnp

APIS = ("linen", "nnx")


def as_json(value: Any) -> Any:
  """The value as JSON reads it back (tuples become lists, keys strings)."""
  return json.loads(json.dumps(value, sort_keys=True, default=str))


@dataclasses.dataclass(frozen=True)
class ModelIdentity:
  """A model of the zoo, as a checkpoint records it.

  Attributes:
    name: the zoo name (`octflax.models.list_models`).
    alpha: the low-frequency share.
    num_classes: outputs of the classifier.
    image_shape: ``(H, W, C)`` of the input the model was built for.
    overrides: attributes set over the zoo's defaults (JSON values).
    data: the data set's registry name ('' when unknown).

  Example:
    >>> identity = ModelIdentity('oct_resnet8', 0.5, 10, (28, 28, 1), data='fashion_mnist')
    >>> ModelIdentity.from_json(identity.to_json()) == identity
    True
    >>> identity.to_json()['model.alpha']
    0.5
  """

  name: str
  alpha: float
  num_classes: int
  image_shape: tuple[int, ...]
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  data: str = ""

  def __post_init__(self):
    object.__setattr__(self, "alpha", float(self.alpha))
    object.__setattr__(self, "num_classes", int(self.num_classes))
    object.__setattr__(self, "image_shape", tuple(int(n) for n in self.image_shape))
    object.__setattr__(self, "overrides", as_json(dict(self.overrides)))

  def to_json(self) -> dict[str, Any]:
    """The ``identity`` entry of a checkpoint's ``meta``."""
    return {"model.name": self.name, "model.alpha": self.alpha, "model.overrides": dict(self.overrides),
            "data.name": self.data, "num_classes": self.num_classes, "image_shape": list(self.image_shape)}

  @classmethod
  def from_json(cls, entry: Mapping[str, Any]) -> ModelIdentity:
    """The identity that `to_json` wrote.

    Raises:
      ValueError: a key is missing.
    """
    missing = [k for k in ("model.name", "model.alpha", "num_classes", "image_shape") if k not in entry]
    if missing:
      raise ValueError(f"the checkpoint's identity lacks {', '.join(missing)} (it has {sorted(entry)}).")
    return cls(name=entry["model.name"], alpha=entry["model.alpha"], num_classes=entry["num_classes"],
               image_shape=entry["image_shape"], overrides=entry.get("model.overrides") or {},
               data=entry.get("data.name") or "")

  def build(self, *, dtype: Any = jnp.float32, api: str = "linen") -> Any:
    """The model: the zoo's ``name`` at ``alpha`` with ``num_classes`` outputs and the overrides.

    Args:
      dtype: the compute dtype.
      api: ``'linen'`` (an `octflax.models` module) or ``'nnx'`` (an
        `octflax.nnx.TrainerModel`, with the same calling convention and
        variable names).

    Raises:
      ValueError: an unknown name, api or override (the message lists what is allowed).
    """
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in self.overrides.items()}
    settings = dict(alpha=self.alpha, num_classes=self.num_classes, dtype=dtype)
    if api == "nnx":
      from octflax import nnx  # pylint: disable=g-import-not-at-top

      try:
        return nnx.trainer_model(self.name, **settings, **overrides)
      except TypeError as e:
        raise ValueError(f"model overrides {overrides} (api 'nnx'): {e}") from None
    if api != "linen":
      raise ValueError(f"api must be one of {APIS}, got {api!r}.")
    from octflax import models  # pylint: disable=g-import-not-at-top

    model = models.get_model(self.name, **settings)
    if not overrides:
      return model
    fields = {f.name for f in dataclasses.fields(model)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
      raise ValueError(
          f"model overrides: {type(model).__name__} has no attribute(s) {', '.join(unknown)}; "
          f"its attributes are {', '.join(sorted(f for f in fields if f not in ('parent', 'name')))}.")
    try:
      return model.clone(**overrides)
    except TypeError as e:
      raise ValueError(f"model overrides {overrides}: {e}") from None


__all__ = ["APIS", "ModelIdentity", "as_json"]
