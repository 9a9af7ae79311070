"""Video: the Moving Fashion-MNIST clip source, Oct-I3D / Oct-C2D and inflation."""

from __future__ import annotations

import chex
import numpy as np
import pytest

from octflax import data
from octflax.data import clips


def _garments(n: int = 12, seed: int = 0) -> data.ArraySource:
  """Random 28x28 'garments' (a bright random blob each) with class labels 0..2."""
  rng = np.random.default_rng(seed)
  images = np.zeros((n, 28, 28, 1), np.uint8)
  for i in range(n):
    top, left = rng.integers(2, 10, 2)
    images[i, top:top + 16, left:left + 14, 0] = rng.integers(50, 256, (16, 14))
  return data.ArraySource(images, rng.integers(0, 3, n), num_classes=3, mean=(50.0,), std=(80.0,))


def _centroids(clip: np.ndarray) -> np.ndarray:
  """[T, 2] centre of mass (y, x) of each frame."""
  frames = clip[..., 0].astype(np.float64)
  ys, xs = np.mgrid[:frames.shape[1], :frames.shape[2]]
  mass = frames.sum(axis=(1, 2))
  return np.stack([(frames * ys).sum(axis=(1, 2)) / mass, (frames * xs).sum(axis=(1, 2)) / mass], -1)


def test_clips_move_the_whole_garment_in_the_labelled_direction():
  source = clips.MovingGarments(_garments(), num_frames=6, canvas_size=26, speeds=(1, 2))
  assert (len(source), source.num_classes, source.image_shape) == (12, 8, (6, 26, 26, 1))
  garments = clips.downsample_garments(_garments().images)
  for i in range(len(source)):
    example = source[i]
    clip, label = example["image"], int(example["label"])
    chex.assert_shape(clip, (6, 26, 26, 1))
    assert clip.dtype == np.uint8
    # Every frame holds the whole garment (nothing is cut at the border).
    np.testing.assert_array_equal(clip.reshape(6, -1).astype(np.int64).sum(1),
                                  np.full(6, int(garments[i].astype(np.int64).sum())))
    step = np.diff(_centroids(clip), axis=0)
    speed = int(round(np.abs(step).max()))
    assert speed in (1, 2)
    np.testing.assert_allclose(step, np.tile(np.array(clips.DIRECTIONS[label]) * speed, (5, 1)), atol=1e-9)


def test_clips_are_a_function_of_seed_split_and_index():
  a = clips.MovingGarments(_garments(), seed=3)
  b = clips.MovingGarments(_garments(), seed=3)
  images, labels = a._gather(np.arange(12))
  np.testing.assert_array_equal(images, b._gather(np.arange(12))[0])
  np.testing.assert_array_equal(labels, b._gather(np.arange(12))[1])
  # Random access: one clip read alone equals the same clip in a batch.
  np.testing.assert_array_equal(a[5]["image"], images[5])
  # A prefix of the garments gives the same first clips (the motion depends on the index only).
  prefix = clips.MovingGarments(data.ArraySource(_garments().images[:4], _garments().labels[:4],
                                                 num_classes=3, mean=(0.0,), std=(1.0,)), seed=3)
  np.testing.assert_array_equal(prefix._gather(np.arange(4))[0], images[:4])
  other_seed = clips.MovingGarments(_garments(), seed=4)._gather(np.arange(12))[1]
  other_split = clips.MovingGarments(_garments(), seed=3, split="test")._gather(np.arange(12))[1]
  assert not np.array_equal(other_seed, labels) and not np.array_equal(other_split, labels)


def test_garment_labels_and_pixel_statistics():
  garments = _garments(40)
  source = clips.MovingGarments(garments, label="garment", canvas_size=28, num_frames=4)
  images, labels = source._gather(np.arange(40))
  np.testing.assert_array_equal(labels, garments.labels)
  assert source.num_classes == 3
  # mean and std are exact: every frame is one whole garment on a zero canvas.
  pixels = images.astype(np.float64)
  np.testing.assert_allclose(source.mean, [pixels.mean()], rtol=1e-12)
  np.testing.assert_allclose(source.std, [pixels.std()], rtol=1e-9)


def test_loader_batches_clips():
  source = clips.MovingGarments(_garments(), num_frames=4, canvas_size=24)
  batch = next(iter(data.make_loader(source, batch_size=4, train=False, seed=0, epoch=0)))
  chex.assert_shape(batch["image"], (4, 4, 24, 24, 1))
  images, labels = source._gather(np.arange(4))  # evaluation reads in order
  np.testing.assert_allclose(batch["image"], (images - source.mean[0]) / source.std[0],
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(batch["label"], labels)
  assert data.input_shape(source) == (4, 24, 24, 1)


@pytest.mark.parametrize("kwargs, argument", [
    (dict(num_frames=1), "num_frames"), (dict(canvas_size=20), "canvas_size"),
    (dict(speeds=(0,)), "speeds"), (dict(label="colour"), "label"), (dict(split="val"), "split"),
    (dict(seed=-1), "seed")])
def test_bad_clip_arguments_name_themselves(kwargs, argument):
  with pytest.raises(data.DataError, match=argument):
    clips.MovingGarments(_garments(), **kwargs)


def test_moving_fashion_mnist_reads_the_idx_files(tmp_path):
  import gzip
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
  for stem, magic, dims, payload in (("train-images-idx3-ubyte", 2051, (5, 28, 28), images.tobytes()),
                                     ("train-labels-idx1-ubyte", 2049, (5,), bytes([1, 2, 3, 4, 5]))):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    with gzip.open(tmp_path / f"{stem}.gz", "wb") as f:
      f.write(header + payload)
  source = data.moving_fashion_mnist(tmp_path, "train", label="garment")
  assert len(source) == 5 and source.image_shape == (8, 32, 32, 1)
  np.testing.assert_array_equal(source._gather(np.arange(5))[1], [1, 2, 3, 4, 5])
  # Normalisation from the Fashion-MNIST training garments, whatever the split read.
  np.testing.assert_allclose(source.mean, [14310.879283 / 1024])
