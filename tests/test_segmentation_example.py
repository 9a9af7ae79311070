"""The FPN segmentation example on an Oct-ResNet backbone: shapes and a few training steps."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import segmentation_example as seg
from octflax import models


def _squares(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Images of one bright square each on a dark canvas; the class sets the square's side."""
  rng = np.random.default_rng(seed)
  images = np.zeros((n, size, size, 1), np.uint8)
  labels = rng.integers(0, 2, n).astype(np.int32)
  for i, label in enumerate(labels):
    side = 4 if label == 0 else 8
    top, left = rng.integers(0, size - side + 1, 2)
    images[i, top:top + side, left:left + side] = 200
  return images, labels


def test_masks_from_images_label_the_foreground_with_the_class():
  images = np.array([[[[0], [40]], [[31], [255]]]], np.uint8)
  np.testing.assert_array_equal(seg.masks_from_images(images, np.array([3]), 32), [[[0, 4], [0, 4]]])


def test_segmenter_logits_have_the_input_size_at_odd_sizes():
  model = seg.Segmenter(models.oct_resnet8(alpha=0.5), num_classes=5, width=8)
  x = jax.ShapeDtypeStruct((2, 15, 13, 1), jnp.float32)
  logits, variables = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, train=False), x)
  chex.assert_shape(logits, (2, 15, 13, 5))
  # One lateral conv per backbone map; the backbone's classifier is never built.
  assert set(variables["params"]["head"]) == {
      "lateral_stem", "lateral_stage1", "lateral_stage2", "lateral_stage3", "smooth", "classify"}
  assert "head" not in variables["params"]["backbone"]
  # The lateral of stage1 reads both octave parts merged: 16 channels at alpha .5.
  chex.assert_shape(variables["params"]["head"]["lateral_stage1"]["kernel"], (1, 1, 16, 8))


@pytest.mark.slow  # about 5-20 s: trains the example's FPN head
def test_a_few_training_steps_lower_the_loss():
  images, labels = _squares(64, 16, seed=0)
  masks = seg.masks_from_images(images, labels, 100)
  x = seg.normalize(images, (40.0,), (80.0,))
  model = seg.Segmenter(models.oct_resnet8(alpha=0.5), num_classes=3, width=8)
  variables, losses = seg.train(model, x, masks, steps=12, batch_size=16, learning_rate=1e-2)
  assert len(losses) == 12 and np.all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses
  metrics = seg.evaluate(model, variables, x, masks, num_classes=3, batch_size=32)
  assert metrics["pixel_accuracy"] > 0.8, metrics
