"""I3D inflation: a 2-D network's variables as a 3-D network's (Carreira & Zisserman, 2017)."""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
from flax import traverse_util


def inflate(variables: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Any]:
  """Turns a 2-D network's variables into those of its 3-D counterpart.

  Every kernel whose target has one more (leading, time) axis is repeated over time and
  divided by the time extent t::

    W3[tau, ...] = W2[...] / t,   tau = 0 .. t - 1

  so on a clip whose frames are all one image, each inflated convolution computes the
  2-D convolution of that image (with time padded by repeating frames, as
  `octflax.models.VideoResNet` does, on every frame). Every other leaf (BatchNorm
  scales, biases and statistics, the dense head) is copied. With an Oct-ResNet-50
  (trained, or imported with `octflax.convert.from_torch_state_dict`) and
  ``oct_i3d_resnet50`` / ``oct_c2d_resnet50`` at the same alpha and classes, a clip of
  one repeated frame gives the 2-D network's logits on that frame.

  Args:
    variables: the 2-D network's variables (``{'params': ..., 'batch_stats': ...}``).
    target: the 3-D network's variables, or their shapes, e.g.
      ``jax.eval_shape(lambda: model3d.init(key, clip, train=False))``.

  Returns:
    Variables with the structure and shapes of ``target``.

  Raises:
    ValueError: listing every leaf that is missing, unexpected, or whose shapes do not
      inflate (target shape neither equal to the 2-D shape nor ``(t, *shape)`` for a kernel).

  Examples:
    >>> import numpy as np
    >>> v2 = {'params': {'conv': {'kernel': np.ones((3, 3, 2, 4))}}}
    >>> v3 = inflate(v2, {'params': {'conv': {'kernel': np.zeros((3, 3, 3, 2, 4))}}})
    >>> v3['params']['conv']['kernel'].shape, float(v3['params']['conv']['kernel'][0, 0, 0, 0, 0])
    ((3, 3, 3, 2, 4), 0.3333333432674408)
  """
  source = traverse_util.flatten_dict(dict(variables), sep="/")
  wanted = traverse_util.flatten_dict(dict(target), sep="/")
  problems = [f"missing in the 2-D variables: {path} {tuple(wanted[path].shape)}"
              for path in wanted if path not in source]
  problems += [f"not in the 3-D network: {path} {tuple(source[path].shape)}"
               for path in source if path not in wanted]
  out = {}
  for path in (p for p in wanted if p in source):
    value, shape = jnp.asarray(source[path]), tuple(wanted[path].shape)
    if value.shape == shape:
      out[path] = value
    elif path.endswith("kernel") and shape[1:] == value.shape:
      t = shape[0]
      out[path] = (jnp.repeat(value[None], t, axis=0) / t).astype(value.dtype)
    else:
      problems.append(f"{path}: 2-D shape {value.shape} does not inflate to {shape}")
  if problems:
    raise ValueError(f"inflate: {len(problems)} variable(s) do not match the 3-D network:\n  "
                     + "\n  ".join(problems))
  return traverse_util.unflatten_dict(out, sep="/")


__all__ = ["inflate"]
