"""Image augmentations driven by given uniform numbers.

Each function takes its randomness as an array of uniform numbers in [0, 1)
(drawn by the pipeline's grain ``random_map``, a function of the seed, the
epoch and the example's position in the epoch), so an augmentation is a pure
function of its inputs. Crops of fixed-size
images are vectorised over the batch in NumPy; the ImageNet crops resize each
image with PIL.
"""

from __future__ import annotations

import math

import numpy as np

AUGMENTATIONS = ("none", "crop", "crop_flip", "imagenet")
CROP_PADDING = 4
RESIZED_CROP_ATTEMPTS = 10
RESIZED_CROP_SCALE = (0.08, 1.0)
RESIZED_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# ImageNet evaluation: resize the shorter side to image_size * 256 / 224, then
# take the central image_size x image_size crop.
EVAL_CROP_FRACTION = 224.0 / 256.0

# Uniform numbers each augmentation draws per example.
NUM_DRAWS = {
    "none": 0,
    "crop": 2,
    "crop_flip": 3,
    "imagenet": 2 * RESIZED_CROP_ATTEMPTS + 3,
}


def random_crop_flip(
    images: np.ndarray, u: np.ndarray, *, padding: int = CROP_PADDING, flip: bool = True
) -> np.ndarray:
  """Random crop of zero-padded images, and optionally a horizontal flip.

  Pads each image with `padding` zero pixels on every side and cuts out a
  window of the original size at a random offset (each offset in
  ``0 .. 2 * padding`` equally likely), then flips it left-right with
  probability 1/2 when `flip`.

  Args:
    images: uint8 array [B, H, W, C].
    u: uniform numbers [B, 3] (or [B, 2] without flip): vertical offset,
      horizontal offset, flip.
    padding: pixels of zero padding on each side.
    flip: whether to flip.

  Returns:
    uint8 array [B, H, W, C].
  """
  batch, height, width, _ = images.shape
  if batch == 0:
    return images
  span = 2 * padding + 1
  dy = np.minimum((u[:, 0] * span).astype(np.int64), span - 1)
  dx = np.minimum((u[:, 1] * span).astype(np.int64), span - 1)
  padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  rows = dy[:, None] + np.arange(height)
  cols = dx[:, None] + np.arange(width)
  if flip:
    cols = np.where((u[:, 2] < 0.5)[:, None], cols[:, ::-1], cols)
  b = np.arange(batch)[:, None, None]
  return padded[b, rows[:, :, None], cols[:, None, :]]


def random_resized_crop_box(height: int, width: int, u: np.ndarray) -> tuple[int, int, int, int]:
  """The Inception-style random crop box of an image.

  Tries up to `RESIZED_CROP_ATTEMPTS` boxes with an area of
  `RESIZED_CROP_SCALE` of the image and an aspect ratio (width / height)
  log-uniform in `RESIZED_CROP_RATIO`, at a uniform position; takes the first
  that fits. If none fits, takes the largest central box whose aspect ratio is
  clamped to that range.

  Args:
    height: image height.
    width: image width.
    u: uniform numbers [2 * RESIZED_CROP_ATTEMPTS + 2]: areas, log-ratios,
      horizontal and vertical position.

  Returns:
    ``(left, top, crop_width, crop_height)`` in pixels.
  """
  n = RESIZED_CROP_ATTEMPTS
  area = height * width
  lo, hi = RESIZED_CROP_SCALE
  log_lo, log_hi = math.log(RESIZED_CROP_RATIO[0]), math.log(RESIZED_CROP_RATIO[1])
  target = area * (lo + (hi - lo) * u[:n])
  aspect = np.exp(log_lo + (log_hi - log_lo) * u[n : 2 * n])
  crop_w = np.rint(np.sqrt(target * aspect)).astype(np.int64)
  crop_h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
  fits = (crop_w >= 1) & (crop_w <= width) & (crop_h >= 1) & (crop_h <= height)
  if fits.any():
    j = int(np.argmax(fits))
    cw, ch = int(crop_w[j]), int(crop_h[j])
    left = min(int(u[2 * n] * (width - cw + 1)), width - cw)
    top = min(int(u[2 * n + 1] * (height - ch + 1)), height - ch)
    return left, top, cw, ch
  in_ratio = width / height
  if in_ratio < RESIZED_CROP_RATIO[0]:
    cw, ch = width, max(1, min(height, int(round(width / RESIZED_CROP_RATIO[0]))))
  elif in_ratio > RESIZED_CROP_RATIO[1]:
    cw, ch = max(1, min(width, int(round(height * RESIZED_CROP_RATIO[1])))), height
  else:
    cw, ch = width, height
  return (width - cw) // 2, (height - ch) // 2, cw, ch


def center_crop_box(
    height: int, width: int, crop_fraction: float
) -> tuple[float, float, float, float]:
  """The central square box whose side is `crop_fraction` of the shorter side.

  Resizing this box to ``S x S`` equals resizing the shorter side to
  ``S / crop_fraction`` and taking the central ``S x S`` crop.

  Args:
    height: image height.
    width: image width.
    crop_fraction: side of the box over the shorter side, in (0, 1].

  Returns:
    ``(left, top, right, bottom)`` in (fractional) pixels, for PIL.
  """
  side = crop_fraction * min(height, width)
  left = (width - side) / 2
  top = (height - side) / 2
  return left, top, left + side, top + side


def resize_box(
    image: np.ndarray, box: tuple[float, float, float, float], size: int
) -> np.ndarray:
  """Resizes the `box` region of an image to ``size x size`` (bilinear, antialiased).

  Args:
    image: uint8 array [H, W, C] with C = 1 or 3.
    box: ``(left, top, right, bottom)`` in pixels.
    size: output side.

  Returns:
    uint8 array [size, size, C].
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  channels = image.shape[-1]
  pixels = np.ascontiguousarray(image[..., 0] if channels == 1 else image)
  resized = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR, box=box)
  out = np.asarray(resized, dtype=np.uint8)
  return out[..., None] if channels == 1 else out


def imagenet_train(image: np.ndarray, u: np.ndarray, size: int) -> np.ndarray:
  """Random resized crop to ``size x size`` and a horizontal flip with probability 1/2.

  Args:
    image: uint8 array [H, W, C].
    u: uniform numbers [NUM_DRAWS['imagenet']].
    size: output side.

  Returns:
    uint8 array [size, size, C].
  """
  height, width = image.shape[:2]
  left, top, cw, ch = random_resized_crop_box(height, width, u)
  out = resize_box(image, (left, top, left + cw, top + ch), size)
  if u[2 * RESIZED_CROP_ATTEMPTS + 2] < 0.5:
    out = out[:, ::-1]
  return out


def center_resize(image: np.ndarray, size: int, crop_fraction: float = EVAL_CROP_FRACTION) -> np.ndarray:
  """Resizes the shorter side to ``size / crop_fraction`` and crops the centre ``size x size``.

  Args:
    image: uint8 array [H, W, C].
    size: output side.
    crop_fraction: ``224 / 256`` for ImageNet evaluation; 1 keeps the whole
      shorter side.

  Returns:
    uint8 array [size, size, C].
  """
  height, width = image.shape[:2]
  return resize_box(image, center_crop_box(height, width, crop_fraction), size)
