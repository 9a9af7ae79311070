"""The optimizer recipe: SGD with Nesterov momentum, warm-up plus cosine, masked weight decay."""

from __future__ import annotations

from typing import Any

import jax
import optax

PyTree = Any


def scaled_learning_rate(base_learning_rate: float, global_batch_size: int) -> float:
  """The linear scaling rule: ``lr = base_learning_rate * global_batch_size / 256``.

  Args:
    base_learning_rate: learning rate for a global batch of 256 images
      (0.1 in the ResNet and OctConv ImageNet recipes).
    global_batch_size: images per optimizer step over all devices and hosts.

  Returns:
    The peak learning rate.

  Examples:
    >>> scaled_learning_rate(0.1, 1024)
    0.4
  """
  return base_learning_rate * global_batch_size / 256


def learning_rate_schedule(
    peak_value: float, total_steps: int, warmup_steps: int = 0, end_value: float = 0.0
) -> optax.Schedule:
  """Linear warm-up from 0 to ``peak_value``, then cosine decay to ``end_value``.

  For step t, with W warm-up steps and T steps in all:
  ``lr(t) = peak * t / W`` for ``t < W`` and
  ``lr(t) = end + (peak - end) * (1 + cos(pi * (t - W) / (T - W))) / 2`` after.

  Args:
    peak_value: the learning rate at the end of the warm-up.
    total_steps: T, the number of optimizer steps of the whole run.
    warmup_steps: W (0 starts the cosine at ``peak_value``).
    end_value: the learning rate at step T.

  Returns:
    An optax schedule (a function of the step count).

  Examples:
    >>> schedule = learning_rate_schedule(0.1, total_steps=100, warmup_steps=10)
    >>> [round(float(schedule(t)), 6) for t in (5, 10, 100)]
    [0.05, 0.1, 0.0]
  """
  total_steps = max(int(total_steps), 1)
  warmup_steps = min(max(int(warmup_steps), 0), total_steps - 1)
  if warmup_steps == 0:
    return optax.cosine_decay_schedule(peak_value, total_steps, alpha=end_value / peak_value if peak_value else 0.0)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak_value, warmup_steps=warmup_steps, decay_steps=total_steps,
      end_value=end_value)


def weight_decay_mask(params: PyTree) -> PyTree:
  """True for the parameters weight decay applies to: kernels (rank >= 2).

  BatchNorm scales and biases and all other biases (rank 1) are left out, as in
  the ImageNet recipes of the ResNet and OctConv papers' code bases.

  Args:
    params: a parameter tree.

  Returns:
    A tree of booleans of the same structure.

  Examples:
    >>> import numpy as np
    >>> weight_decay_mask({'conv': {'kernel': np.zeros((3, 3, 1, 8)), 'bias': np.zeros(8)}})
    {'conv': {'bias': False, 'kernel': True}}
  """
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 1e-4,
    grad_clip_norm: float = 0.0,
) -> optax.GradientTransformation:
  """SGD with (Nesterov) momentum, weight decay on kernels and optional clipping.

  The update for gradient g of parameters p (PyTorch's SGD, which the OctConv
  recipes use): ``g <- clip(g); g <- g + weight_decay * mask * p;
  v <- momentum * v + g; p <- p - lr * (g + momentum * v)`` (Nesterov) or
  ``p <- p - lr * v``.

  Args:
    learning_rate: a constant or a schedule (see `learning_rate_schedule`).
    momentum: momentum coefficient (0 disables momentum).
    nesterov: Nesterov momentum.
    weight_decay: L2 coefficient for the parameters `weight_decay_mask` selects.
    grad_clip_norm: clip the gradients' global norm to this value; 0 disables.

  Returns:
    An optax ``GradientTransformation``.

  Examples:
    >>> import numpy as np
    >>> tx = make_optimizer(learning_rate_schedule(0.1, 1000, 50))
    >>> opt_state = tx.init({'kernel': np.ones((3, 3)), 'bias': np.ones(3)})
  """
  parts = []
  if grad_clip_norm and grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(grad_clip_norm))
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay, mask=weight_decay_mask))
  parts.append(optax.sgd(learning_rate, momentum=momentum or None, nesterov=bool(nesterov and momentum)))
  return optax.chain(*parts)


def optimizer(optimization: Any) -> tuple[optax.Schedule, optax.GradientTransformation]:
  """``(schedule, tx)`` of a run plan's `octflax.training.plan.Optimization`."""
  o = optimization
  schedule = learning_rate_schedule(o.learning_rate, o.total_steps, o.warmup_steps)
  return schedule, make_optimizer(schedule, momentum=o.momentum, nesterov=o.nesterov,
                                  weight_decay=o.weight_decay, grad_clip_norm=o.grad_clip_norm)


__all__ = ["learning_rate_schedule", "make_optimizer", "optimizer", "scaled_learning_rate", "weight_decay_mask"]
