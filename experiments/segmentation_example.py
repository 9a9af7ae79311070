r"""Semantic segmentation with an Oct-ResNet backbone and a small FPN head.

  python -m experiments.segmentation_example --alpha 0.5 --steps 100

The backbone is any zoo model called with ``return_features=True`` (here the CIFAR-style
Oct-ResNet-8); each stage's `OctTensor` is merged to one array (``OctTensor.merge``), a
1x1 lateral conv brings it to ``width`` channels, and the FPN top-down path adds each
coarser level, nearest-resized, to the next finer one; a 3x3 conv and a 1x1 classifier
on the finest level give per-pixel logits, resized bilinearly to the input size.

Task: Fashion-MNIST as segmentation, generated from the original IDX files: a pixel's
label is 0 (background, intensity below ``--threshold``) or 1 + the garment's class, so
the head must both find the garment and name it (11 classes per pixel). Loss is the mean
per-pixel cross-entropy; the script prints it with pixel accuracy and mean IoU on the
first 1,000 test images.

Result of the command above (6,000 training images, batch 64, Adam 3e-3, 2 shared CPU
cores, 91 s): loss 3.396 -> 0.322, test pixel accuracy 0.826, mean IoU 0.552.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from octflax import data, models


class FPNHead(nn.Module):
  """Feature-pyramid decoder: per-pixel logits from a backbone's feature dict.

  With levels ``P_n`` (coarsest) .. ``P_1`` (finest) of the features in network order:
  ``P_n = lateral_n(C_n)``, ``P_i = lateral_i(C_i) + nearest_resize(P_{i+1})``; logits are
  ``classify(relu(conv3x3(P_1)))``.

  Attributes:
    num_classes: classes per pixel.
    width: channels of every pyramid level.
    levels: feature names to use, in network order (None: every map of the dict).
  """

  num_classes: int
  width: int = 32
  levels: Sequence[str] | None = None

  @nn.compact
  def __call__(self, features: dict[str, Any]) -> jax.Array:
    levels = list(self.levels or features["strides"])
    top = None
    for name in reversed(levels):
      level = nn.Conv(self.width, (1, 1), name=f"lateral_{name}")(features[name].merge())
      if top is not None:
        top = jax.image.resize(top, level.shape[:-1] + top.shape[-1:], "nearest")
        level = level + top
      top = level
    top = jax.nn.relu(nn.Conv(self.width, (3, 3), name="smooth")(top))
    return nn.Conv(self.num_classes, (1, 1), name="classify")(top)


class Segmenter(nn.Module):
  """A zoo backbone and an `FPNHead`; logits ``[N, H, W, num_classes]`` at the input size.

  Attributes:
    backbone: a zoo model (any ``return_features`` model).
    num_classes: classes per pixel.
    width: channels of the FPN levels.
  """

  backbone: nn.Module
  num_classes: int
  width: int = 32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    features = self.backbone(x, train=train, return_features=True)
    logits = FPNHead(self.num_classes, self.width, name="head")(features)
    return jax.image.resize(logits, x.shape[:-1] + logits.shape[-1:], "bilinear")


def masks_from_images(images: np.ndarray, labels: np.ndarray, threshold: int) -> np.ndarray:
  """Per-pixel labels: 0 where ``image < threshold``, else ``1 + label`` (int32 [N, H, W])."""
  foreground = images[..., 0] >= threshold
  return np.where(foreground, labels[:, None, None] + 1, 0).astype(np.int32)


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  return (images.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def train(model: Segmenter, images: np.ndarray, masks: np.ndarray, *, steps: int, batch_size: int,
          learning_rate: float, seed: int = 0, log=None) -> tuple[dict, list[float]]:
  """Adam on the mean per-pixel cross-entropy; returns (variables, loss of every step).

  Batches are drawn in a fixed order from ``seed`` (a permutation per pass).
  """
  # Under jit, one compilation instead of one per initialiser; an 'rbg' key draws from the
  # same initialisers with far less to compile than threefry.
  key = jax.random.key(seed, impl="rbg")
  variables = jax.jit(lambda x: model.init(key, x, train=False))(jnp.asarray(images[:1]))
  optimizer = optax.adam(learning_rate)
  params, batch_stats = variables["params"], variables["batch_stats"]
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, batch_stats, opt_state, x, y):
    def loss_fn(p):
      logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                    mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    changes, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, changes), updates["batch_stats"], opt_state, loss

  rng = np.random.default_rng(seed)
  order = np.empty(0, np.int64)
  losses = []
  for i in range(steps):
    if len(order) < batch_size:
      order = np.concatenate([order, rng.permutation(len(images))])
    batch, order = order[:batch_size], order[batch_size:]
    params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state,
                                                jnp.asarray(images[batch]), jnp.asarray(masks[batch]))
    losses.append(float(loss))
    if log is not None and (i % 10 == 0 or i == steps - 1):
      log(f"step {i:4d}  loss {losses[-1]:.4f}")
  return {"params": params, "batch_stats": batch_stats}, losses


def evaluate(model: Segmenter, variables: dict, images: np.ndarray, masks: np.ndarray,
             num_classes: int, batch_size: int = 250) -> dict[str, float]:
  """Pixel accuracy and mean IoU (over classes present in ``masks`` or predicted)."""
  predict = jax.jit(lambda v, x: jnp.argmax(model.apply(v, x, train=False), -1))
  confusion = np.zeros((num_classes, num_classes), np.int64)
  for start in range(0, len(images), batch_size):
    pred = np.asarray(predict(variables, jnp.asarray(images[start:start + batch_size])))
    true = masks[start:start + batch_size]
    confusion += np.bincount(true.ravel() * num_classes + pred.ravel(),
                             minlength=num_classes ** 2).reshape(num_classes, num_classes)
  intersection = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - intersection
  present = union > 0
  return {"pixel_accuracy": float(intersection.sum() / confusion.sum()),
          "mean_iou": float(np.mean(intersection[present] / union[present]))}


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--backbone", default="oct_resnet8", help="a zoo model name")
  parser.add_argument("--alpha", type=float, default=0.5)
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--learning_rate", type=float, default=3e-3)
  parser.add_argument("--train_examples", type=int, default=6000)
  parser.add_argument("--threshold", type=int, default=32, help="background below this intensity (0..255)")
  parser.add_argument("--data_dir", default=data.FASHION_MNIST_DIR)
  args = parser.parse_args(argv)
  if not 0 < args.threshold < 256:
    parser.error(f"--threshold must be in 1..255, got {args.threshold}.")
  try:
    backbone = models.get_model(args.backbone, alpha=args.alpha)
    train_source = data.fashion_mnist(args.data_dir, "train", max_examples=args.train_examples)
    test_source = data.fashion_mnist(args.data_dir, "test", max_examples=1000)
  except (ValueError, data.DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  num_classes = train_source.num_classes + 1
  model = Segmenter(backbone, num_classes)
  prepare = lambda s: (normalize(s.images, s.mean, s.std),
                       masks_from_images(s.images, s.labels, args.threshold))
  (x_train, y_train), (x_test, y_test) = prepare(train_source), prepare(test_source)
  start = time.perf_counter()
  variables, losses = train(model, x_train, y_train, steps=args.steps, batch_size=args.batch_size,
                            learning_rate=args.learning_rate, log=print)
  metrics = evaluate(model, variables, x_test, y_test, num_classes)
  print(f"{args.backbone} alpha {args.alpha}: loss {losses[0]:.3f} -> {losses[-1]:.3f} in "
        f"{args.steps} steps ({time.perf_counter() - start:.0f} s); test pixel accuracy "
        f"{metrics['pixel_accuracy']:.4f}, mean IoU {metrics['mean_iou']:.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
