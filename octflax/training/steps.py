"""The one train step, the one eval step and the evaluation of a split; parallel execution wraps the steps (`parallel`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from octflax.training.plan import loader
from octflax.training.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]

# Sub-keys of a step's key, one per use.
_MIXUP, _DROPOUT = 0, 1


def cross_entropy_loss(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy against (smoothed) one-hot labels.

  With K classes and smoothing s the target of label y is
  ``(1 - s) * onehot(y) + s / K``, and the loss ``-sum_k target_k * log_softmax(logits)_k``.

  Args:
    logits: float [B, K].
    labels: int [B].
    label_smoothing: s in [0, 1).

  Returns:
    float32 [B].

  Examples:
    >>> import jax.numpy as jnp
    >>> cross_entropy_loss(jnp.zeros((2, 4)), jnp.array([0, 3])).tolist()  # log 4
    [1.3862943649291992, 1.3862943649291992]
  """
  logits = logits.astype(jnp.float32)
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def mixup_weight(key: jax.Array, alpha: float) -> jax.Array:
  """The mixing weight ``lam ~ Beta(alpha, alpha)`` of mixup (Zhang et al., 2018)."""
  return jax.random.beta(key, alpha, alpha)


def _mix(x: jax.Array, lam: jax.Array) -> jax.Array:
  """``lam * x + (1 - lam) * reverse(x)``: example i is mixed with example B - 1 - i."""
  return (lam * x + (1.0 - lam) * x[::-1]).astype(x.dtype)


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    axis_name: str | None = None,
    label_smoothing: float = 0.0,
    mixup_alpha: float = 0.0,
) -> tuple[TrainState, Metrics]:
  """One optimizer step on one batch: forward, loss, gradient, update.

  The loss is the mean over the batch of `cross_entropy_loss`; with mixup the
  images are ``lam * x + (1 - lam) * reverse(x)`` and the loss
  ``lam * CE(y) + (1 - lam) * CE(reverse(y))``.

  Under `jax.jit` over a device mesh the batch is the global batch and nothing
  else is needed. Under `jax.pmap` pass the mapped axis as ``axis_name``: the
  batch is then this device's share, and gradients, BatchNorm running
  statistics and metrics are averaged over the axis with ``lax.pmean`` (for the
  forward pass to normalise with the global batch's statistics, as under jit,
  the model's BatchNorm must carry the same ``axis_name``; `DataParallel`
  arranges this).

  Args:
    state: the `TrainState`.
    batch: ``{'image': float [B, H, W, C], 'label': int32 [B]}``.
    axis_name: the pmap axis, or None under jit.
    label_smoothing: see `cross_entropy_loss`.
    mixup_alpha: Beta parameter of mixup; 0 disables it.

  Returns:
    ``(new_state, metrics)`` with metrics ``loss`` (the batch mean),
    ``accuracy`` (top-1 against the unmixed labels) and ``grad_norm`` (global
    norm of the averaged gradient, before any clipping); float32 scalars.
  """
  images, labels = batch["image"], batch["label"]
  key = state.step_key()
  lam = mixup_weight(jax.random.fold_in(key, _MIXUP), mixup_alpha) if mixup_alpha else None
  if lam is not None:
    images = _mix(images, lam)

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, images, train=True,
        mutable=["batch_stats"], rngs={"dropout": jax.random.fold_in(key, _DROPOUT)})
    per_example = cross_entropy_loss(logits, labels, label_smoothing)
    if lam is not None:
      per_example = lam * per_example + (1.0 - lam) * cross_entropy_loss(logits, labels[::-1], label_smoothing)
    return per_example.mean(), (logits, updates.get("batch_stats", {}))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
  if axis_name is not None:
    grads, batch_stats, loss, accuracy = jax.lax.pmean((grads, batch_stats, loss, accuracy), axis_name)
  new_state = state.apply_gradients(grads, batch_stats)
  metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": optax.tree.norm(grads)}
  return new_state, metrics


def eval_step(state: TrainState, batch: Batch, *, axis_name: str | None = None) -> Metrics:
  """Masked sums of the evaluation metrics of one batch (running BatchNorm statistics).

  Sums rather than means, so that the padded examples of a last partial batch
  (``mask`` 0) count for nothing: accuracy is ``correct / count`` over the
  summed batches.

  Args:
    state: the `TrainState`.
    batch: ``{'image', 'label'}`` and optionally ``'mask'`` (float [B], 1 for
      real examples); without a mask every example counts.
    axis_name: the pmap axis (sums are then taken over it), or None under jit.

  Returns:
    ``loss_sum``, ``correct`` (top-1), ``correct_top5`` (when there are at least
    5 classes) and ``count``; float32 scalars.
  """
  images, labels = batch["image"], batch["label"]
  mask = batch.get("mask")
  mask = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
  logits = state.apply_fn(state.variables, images, train=False).astype(jnp.float32)
  metrics = {
      "loss_sum": jnp.sum(cross_entropy_loss(logits, labels) * mask),
      "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
      "count": jnp.sum(mask),
  }
  if logits.shape[-1] >= 5:
    top5 = jax.lax.top_k(logits, 5)[1]
    metrics["correct_top5"] = jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * mask)
  if axis_name is not None:
    metrics = jax.lax.psum(metrics, axis_name)
  return metrics


def evaluate(parallel: Any, state: Any, source: Any, settings: Any, plan: Any, prefix: str = "test") -> dict[str, float]:
  """Loss and accuracy on a whole split with the pipeline's evaluation transform.

  The padded last batch is masked out: ``accuracy = sum(correct * mask) / sum(mask)``.

  Args:
    parallel: a `DataParallel`; runs `eval_step`.
    state: the placed state.
    source: the split.
    settings: the `inputs.DataSettings` (transform, image size, the loader's threads).
    plan: the evaluation batches (an `octflax.data.BatchPlan`).
    prefix: names the results.

  Returns:
    ``{prefix + '_loss', prefix + '_accuracy'}`` (and ``_top5_accuracy`` with >= 5 classes).
  """
  sums = None
  with loader(source, settings, plan, train=False) as batches:
    for batch in batches:
      metrics = parallel.eval_step(state, parallel.put_batch(batch))
      sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
  sums = parallel.get_metrics(sums)
  count = float(sums["count"])
  result = {f"{prefix}_loss": float(sums["loss_sum"]) / count, f"{prefix}_accuracy": float(sums["correct"]) / count}
  if "correct_top5" in sums:
    result[f"{prefix}_top5_accuracy"] = float(sums["correct_top5"]) / count
  return result


__all__ = ["cross_entropy_loss", "eval_step", "evaluate", "mixup_weight", "train_step"]
