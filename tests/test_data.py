"""Tests of octflax.data: the readers of the original file formats and the grain pipeline.

Every test builds tiny files of the real formats in tmp_path; the test over the
installed Fashion-MNIST is skipped when the files are absent.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from octflax import data
from octflax.data import augment as aug

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


# ----------------------------------------------------------------------------
# Builders of tiny files in the original formats.


def write_idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes, compress: bool = True) -> Path:
  content = struct.pack(">I", magic) + struct.pack(">" + "I" * len(dims), *dims) + payload
  if compress:
    path = path.with_name(path.name + ".gz")
    path.write_bytes(gzip.compress(content))
  else:
    path.write_bytes(content)
  return path


def make_fashion(directory: Path, n_train: int = 12, n_test: int = 5, compress: bool = True, seed: int = 0):
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, n, stem in (("train", n_train, "train"), ("test", n_test, "t10k")):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    write_idx(directory / f"{stem}-images-idx3-ubyte", 2051, (n, 28, 28), images.tobytes(), compress)
    write_idx(directory / f"{stem}-labels-idx1-ubyte", 2049, (n,), labels.tobytes(), compress)
    arrays[split] = (images, labels)
  return arrays


def make_cifar(directory: Path, num_classes: int, per_batch: int = 4, seed: int = 0):
  rng = np.random.default_rng(seed)
  if num_classes == 10:
    names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    label_key = b"labels"
  else:
    names = {"train": ["train"], "test": ["test"]}
    label_key = b"fine_labels"
  directory.mkdir(parents=True, exist_ok=True)
  arrays = {}
  for split, files in names.items():
    datas, labels = [], []
    for name in files:
      batch_data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
      batch_labels = [int(v) for v in rng.integers(0, num_classes, per_batch)]
      content = {b"batch_label": b"x", b"data": batch_data, label_key: batch_labels}
      if num_classes == 100:
        content[b"coarse_labels"] = [v // 5 for v in batch_labels]
      with open(directory / name, "wb") as f:
        pickle.dump(content, f)
      datas.append(batch_data)
      labels += batch_labels
    arrays[split] = (np.concatenate(datas), np.array(labels))
  return arrays


def make_image_tree(root: Path, classes=("cat", "ant", "bee"), per_class: int = 2, fmt: str = "PNG", seed: int = 0):
  from PIL import Image

  rng = np.random.default_rng(seed)
  arrays = {}
  for c in classes:
    (root / c).mkdir(parents=True, exist_ok=True)
    for j in range(per_class):
      h, w = 20 + 3 * j, 30 - 2 * j
      pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
      ext = "png" if fmt == "PNG" else "jpg"
      path = root / c / f"img{j}.{ext}"
      Image.fromarray(pixels).save(path, format=fmt)
      arrays[str(path)] = pixels
  return arrays


def indexed_source(n: int, shape=(6, 6, 1), seed: int = 0) -> data.ArraySource:
  """An ArraySource whose label is the example index (to track examples)."""
  images = np.random.default_rng(seed).integers(0, 256, (n,) + shape, dtype=np.uint8)
  channels = shape[-1]
  return data.ArraySource(images, np.arange(n), num_classes=n, mean=(100.0,) * channels,
                          std=(50.0,) * channels, name="indexed")


def loader(source, **kwargs):
  kwargs.setdefault("process_index", 0)
  kwargs.setdefault("process_count", 1)
  return list(data.make_loader(source, **kwargs))


# ----------------------------------------------------------------------------
# Fashion-MNIST


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_round_trip(tmp_path, compress):
  arrays = make_fashion(tmp_path, compress=compress)
  for split in ("train", "test"):
    src = data.fashion_mnist(tmp_path, split=split)
    images, labels = arrays[split]
    assert len(src) == len(labels)
    assert src.num_classes == 10 and src.image_shape == (28, 28, 1)
    assert src.mean == data.FASHION_MNIST_MEAN and src.std == data.FASHION_MNIST_STD
    for i in range(len(src)):
      example = src[i]
      assert example["image"].dtype == np.uint8 and example["image"].shape == (28, 28, 1)
      np.testing.assert_array_equal(example["image"][..., 0], images[i])
      assert example["label"].dtype == np.int32 and example["label"] == labels[i]
  assert len(data.fashion_mnist(tmp_path, max_examples=5)) == 5
  np.testing.assert_array_equal(data.fashion_mnist(tmp_path, max_examples=5)[4]["image"][..., 0], arrays["train"][0][4])


def test_fashion_mnist_missing(tmp_path, monkeypatch):
  # Nowhere to be found: Debian's folder hidden, an empty cache, no server.
  from octflax.data import download

  monkeypatch.setattr(download, "FASHION_MNIST_DIR", str(tmp_path / "no-debian"))
  monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
  monkeypatch.setenv(download.URL_ENV, "http://127.0.0.1:9/")  # The discard port: refused at once.
  for directory in (tmp_path / "nowhere", tmp_path):
    with pytest.raises(data.MissingDataError) as info:
      data.fashion_mnist(directory)
    message = str(info.value)
    assert "train files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz)" in message
    assert f"none of {directory}, {tmp_path / 'no-debian'}, {tmp_path / 'cache' / 'fashion_mnist'}" in message
    assert "http://127.0.0.1:9/train-images-idx3-ubyte.gz failed" in message
    assert "apt-get install -y dataset-fashion-mnist" in message
    assert "--config.data.dir=DIR" in message
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, data.DataError)
  make_fashion(tmp_path)
  os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
  with pytest.raises(data.MissingDataError, match="test files .*t10k-labels-idx1-ubyte.gz"):
    data.fashion_mnist(tmp_path, split="test")
  assert len(data.fashion_mnist(tmp_path, split="train")) == 12


def test_fashion_mnist_wrong_magic(tmp_path):
  make_fashion(tmp_path)
  write_idx(tmp_path / "train-images-idx3-ubyte", 2049, (12, 28, 28), bytes(12 * 784))
  with pytest.raises(data.DataError, match=r"train-images-idx3-ubyte.gz.*magic number 2049.*expected 2051"):
    data.fashion_mnist(tmp_path)


def test_fashion_mnist_truncated(tmp_path):
  make_fashion(tmp_path)
  # A complete gzip stream of a cut IDX file: the header promises more bytes.
  write_idx(tmp_path / "train-images-idx3-ubyte", 2051, (12, 28, 28), bytes(11 * 784))
  with pytest.raises(data.DataError) as info:
    data.fashion_mnist(tmp_path)
  message = str(info.value)
  assert "train-images-idx3-ubyte.gz" in message and "truncated" in message
  assert str(16 + 12 * 784) in message and str(16 + 11 * 784) in message
  # A cut gzip stream.
  path = tmp_path / "train-labels-idx1-ubyte.gz"
  path.write_bytes(path.read_bytes()[:-12])
  write_idx(tmp_path / "train-images-idx3-ubyte", 2051, (12, 28, 28), bytes(12 * 784))
  with pytest.raises(data.DataError, match=r"train-labels-idx1-ubyte.gz.*truncated"):
    data.fashion_mnist(tmp_path)
  path.write_bytes(b"not gzip at all")
  with pytest.raises(data.DataError, match=r"train-labels-idx1-ubyte.gz.*not a valid gzip"):
    data.fashion_mnist(tmp_path)


def test_fashion_mnist_bad_contents(tmp_path):
  make_fashion(tmp_path)
  write_idx(tmp_path / "train-labels-idx1-ubyte", 2049, (11,), bytes(11))
  with pytest.raises(data.DataError, match=r"12 images.*11 labels"):
    data.fashion_mnist(tmp_path)
  write_idx(tmp_path / "train-labels-idx1-ubyte", 2049, (12,), bytes([1] * 7 + [10] + [0] * 4))
  with pytest.raises(data.DataError, match=r"train-labels-idx1-ubyte.gz.*label 10 at index 7.*0\.\.9"):
    data.fashion_mnist(tmp_path)
  write_idx(tmp_path / "train-images-idx3-ubyte", 2051, (12, 27, 28), bytes(12 * 27 * 28))
  with pytest.raises(data.DataError, match=r"27x28.*28x28"):
    data.fashion_mnist(tmp_path)
  with pytest.raises(data.DataError, match="split"):
    data.fashion_mnist(tmp_path, split="val")
  with pytest.raises(data.DataError, match="max_examples"):
    data.fashion_mnist(tmp_path, max_examples=-1)


@pytest.mark.skipif(not (FASHION_DIR / "t10k-labels-idx1-ubyte.gz").exists(), reason="Fashion-MNIST not installed")
def test_fashion_mnist_installed():
  train = data.fashion_mnist(split="train")
  test = data.fashion_mnist(split="test")
  assert (len(train), len(test)) == (60000, 10000)
  np.testing.assert_array_equal(np.bincount(train.labels, minlength=10), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(test.labels, minlength=10), [1000] * 10)
  # Mean and population standard deviation of all pixels from exact integer sums (a float64
  # copy of the 47 million pixels takes seconds).
  count = train.images.size
  mean = int(train.images.sum(dtype=np.uint64)) / count
  std = (int(np.square(train.images, dtype=np.uint32).sum(dtype=np.uint64)) / count - mean**2) ** 0.5
  assert abs(mean - data.FASHION_MNIST_MEAN[0]) < 1e-3
  assert abs(std - data.FASHION_MNIST_STD[0]) < 1e-3
  batch = next(iter(data.make_loader(train, batch_size=256, train=True, augment="crop_flip",
                                     process_index=0, process_count=1)))
  assert batch["image"].shape == (256, 28, 28, 1) and batch["image"].dtype == np.float32
  assert abs(float(batch["image"].mean())) < 0.3


# ----------------------------------------------------------------------------
# CIFAR


@pytest.mark.parametrize("num_classes,subfolder", [(10, "cifar-10-batches-py"), (100, None)])
def test_cifar_round_trip(tmp_path, num_classes, subfolder):
  directory = tmp_path / subfolder if subfolder else tmp_path
  arrays = make_cifar(directory, num_classes)
  for split in ("train", "test"):
    src = data.cifar(tmp_path, num_classes=num_classes, split=split)
    raw, labels = arrays[split]
    assert len(src) == len(labels) and src.num_classes == num_classes
    assert src.image_shape == (32, 32, 3)
    for i in range(len(src)):
      image = src[i]["image"]
      assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
      # Channel-major rows: data[c * 1024 + h * 32 + w] is pixel (h, w) of channel c.
      for h, w, c in ((0, 0, 0), (5, 31, 1), (31, 7, 2)):
        assert image[h, w, c] == raw[i, c * 1024 + h * 32 + w]
      np.testing.assert_array_equal(image, raw[i].reshape(3, 32, 32).transpose(1, 2, 0))
      assert src[i]["label"] == labels[i] and src[i]["label"].dtype == np.int32
  expected_mean = data.CIFAR10_MEAN if num_classes == 10 else data.CIFAR100_MEAN
  assert src.mean == expected_mean and len(src.std) == 3
  first = data.cifar(tmp_path, num_classes=num_classes, max_examples=3)
  assert len(first) == 3
  np.testing.assert_array_equal(first[2]["image"], data.cifar(tmp_path, num_classes=num_classes)[2]["image"])


def test_cifar_errors(tmp_path):
  with pytest.raises(data.MissingDataError, match=r"nowhere.*cifar.html"):
    data.cifar(tmp_path / "nowhere")
  make_cifar(tmp_path, 10)
  os.remove(tmp_path / "data_batch_3")
  with pytest.raises(data.MissingDataError, match="data_batch_3"):
    data.cifar(tmp_path)
  with pytest.raises(data.DataError, match="num_classes must be 10"):
    data.cifar(tmp_path, num_classes=20)

  def dump(content, name="test_batch"):
    with open(tmp_path / name, "wb") as f:
      pickle.dump(content, f)

  dump({b"data": np.zeros((4, 3071), np.uint8), b"labels": [0] * 4})
  with pytest.raises(data.DataError, match=r"test_batch.*\[N, 3072\].*\(4, 3071\)"):
    data.cifar(tmp_path, split="test")
  dump({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]})
  with pytest.raises(data.DataError, match=r"test_batch.*label 10 at index 3.*0\.\.9"):
    data.cifar(tmp_path, split="test")
  dump({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2]})
  with pytest.raises(data.DataError, match=r"4 images.*3 labels"):
    data.cifar(tmp_path, split="test")
  dump({b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": [0] * 4})
  with pytest.raises(data.DataError, match=r"b'labels'.*num_classes=100"):
    data.cifar(tmp_path, split="test")
  (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": 1})[:-5])
  with pytest.raises(data.DataError, match=r"test_batch.*not a readable CIFAR pickle"):
    data.cifar(tmp_path, split="test")


# ----------------------------------------------------------------------------
# Image folders


def test_image_folder_round_trip(tmp_path):
  arrays = make_image_tree(tmp_path / "train", fmt="PNG")
  src = data.image_folder(tmp_path, split="train")
  assert src.classes == ("ant", "bee", "cat") and src.num_classes == 3
  assert src.image_shape is None and len(src) == 6
  assert src.mean == data.IMAGENET_MEAN
  for i in range(len(src)):
    example = src[i]
    path = src.paths[i]
    np.testing.assert_array_equal(example["image"], arrays[path])  # PNG is lossless.
    assert example["label"] == src.classes.index(Path(path).parent.name)
  make_image_tree(tmp_path / "jpeg", fmt="JPEG")
  jpeg = data.image_folder(tmp_path / "jpeg")
  image = jpeg[0]["image"]
  assert image.dtype == np.uint8 and image.shape == (20, 30, 3)


def test_image_folder_errors(tmp_path):
  with pytest.raises(data.MissingDataError, match="does not exist"):
    data.image_folder(tmp_path / "nowhere")
  (tmp_path / "empty").mkdir()
  with pytest.raises(data.DataError, match=r"empty has no class folders"):
    data.image_folder(tmp_path / "empty")
  (tmp_path / "empty" / "a").mkdir()
  (tmp_path / "empty" / "a" / "notes.txt").write_text("x")
  with pytest.raises(data.DataError, match=r"no images"):
    data.image_folder(tmp_path / "empty")
  make_image_tree(tmp_path / "tree", fmt="JPEG")
  bad = tmp_path / "tree" / "ant" / "zz_bad.jpg"
  bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  src = data.image_folder(tmp_path / "tree")
  index = src.paths.index(str(bad))
  with pytest.raises(data.DataError, match="zz_bad.jpg"):
    src[index]
  good = (tmp_path / "tree" / "ant" / "img0.jpg").read_bytes()
  bad.write_bytes(good[: len(good) // 2])  # A truncated JPEG.
  with pytest.raises(data.DataError, match="zz_bad.jpg.*cannot decode"):
    src[index]
  with pytest.raises(data.DataError, match="zz_bad.jpg"):
    loader(src, batch_size=len(src), train=False, augment="imagenet", image_size=16)


def test_image_folder_imagenet_pipeline(tmp_path):
  make_image_tree(tmp_path, per_class=3, fmt="JPEG")
  src = data.image_folder(tmp_path)
  train = loader(src, batch_size=4, train=True, augment="imagenet", image_size=16, seed=3, num_threads=2)
  assert len(train) == 2 and train[0]["image"].shape == (4, 16, 16, 3)
  again = loader(src, batch_size=4, train=True, augment="imagenet", image_size=16, seed=3)
  for a, b in zip(train, again):
    np.testing.assert_array_equal(a["image"], b["image"])
  evaluation = loader(src, batch_size=4, train=False, augment="imagenet", image_size=16)
  assert sum(float(b["mask"].sum()) for b in evaluation) == len(src)
  with pytest.raises(data.DataError, match="variable image sizes"):
    loader(src, batch_size=4, train=True, augment="crop_flip")
  resized = loader(src, batch_size=4, train=False, image_size=12)
  assert resized[0]["image"].shape == (4, 12, 12, 3)


def test_imagenet_transforms():
  image = np.full((40, 60, 3), 77, np.uint8)
  np.testing.assert_array_equal(aug.center_resize(image, 16), np.full((16, 16, 3), 77, np.uint8))
  u = np.linspace(0.01, 0.99, aug.NUM_DRAWS["imagenet"])
  assert aug.imagenet_train(image, u, 24).shape == (24, 24, 3)
  rng = np.random.default_rng(0)
  for _ in range(50):
    h, w = (int(v) for v in rng.integers(1, 50, 2))
    left, top, cw, ch = aug.random_resized_crop_box(h, w, rng.random(aug.NUM_DRAWS["imagenet"]))
    assert 0 <= left and left + cw <= w and 0 <= top and top + ch <= h and cw >= 1 and ch >= 1
  gray = aug.center_resize(np.zeros((10, 30, 1), np.uint8), 8)
  assert gray.shape == (8, 8, 1)


# ----------------------------------------------------------------------------
# Synthetic


def test_synthetic():
  a = data.synthetic(10, image_shape=(8, 8, 3), num_classes=5, seed=1)
  b = data.synthetic(10, image_shape=(8, 8, 3), num_classes=5, seed=1)
  c = data.synthetic(10, image_shape=(8, 8, 3), num_classes=5, seed=2)
  assert len(a) == 10 and a.image_shape == (8, 8, 3) and a.num_classes == 5
  np.testing.assert_array_equal(a[3]["image"], b[3]["image"])
  assert a[3]["image"].dtype == np.uint8 and a[3]["label"].dtype == np.int32
  assert not np.array_equal(a[3]["image"], c[3]["image"])
  assert not np.array_equal(a[3]["image"], a[4]["image"])
  assert 0 <= a.labels.min() and a.labels.max() < 5
  batch = loader(a, batch_size=4, train=True, augment="imagenet", image_size=6)[0]
  assert batch["image"].shape == (4, 6, 6, 3)
  with pytest.raises(data.DataError, match="image_shape"):
    data.synthetic(4, image_shape=(8, 8))


# ----------------------------------------------------------------------------
# The pipeline


def test_normalisation_and_values():
  src = indexed_source(10, shape=(5, 5, 3))
  src.mean, src.std = (10.0, 20.0, 30.0), (2.0, 4.0, 8.0)
  batches = loader(src, batch_size=4, train=False)
  assert [b["image"].shape for b in batches] == [(4, 5, 5, 3)] * 3
  for k, batch in enumerate(batches):
    assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
    assert batch["mask"].dtype == np.float32
    for j in range(4):
      i = 4 * k + j
      if i < 10:
        expected = (src.images[i].astype(np.float32) - np.float32([10, 20, 30])) / np.float32([2, 4, 8])
        np.testing.assert_array_equal(batch["image"][j], expected)
        assert batch["label"][j] == i and batch["mask"][j] == 1
      else:
        assert batch["mask"][j] == 0 and not batch["image"][j].any()


def train_order(src, **kwargs):
  return np.concatenate([b["label"] for b in loader(src, train=True, **kwargs)])


def test_order_is_a_function_of_seed_and_epoch():
  src = indexed_source(50)
  a = train_order(src, batch_size=8, seed=0, epoch=0)
  assert len(a) == 48 and len(set(a.tolist())) == 48  # 6 full batches, no repeats.
  np.testing.assert_array_equal(a, train_order(src, batch_size=8, seed=0, epoch=0))
  assert not np.array_equal(a, train_order(src, batch_size=8, seed=0, epoch=1))
  assert not np.array_equal(a, train_order(src, batch_size=8, seed=1, epoch=0))
  # The order does not depend on the batch size.
  np.testing.assert_array_equal(a[:40], train_order(src, batch_size=10, seed=0, epoch=0)[:40])
  # Augmentations repeat with (seed, epoch) and change across epochs.
  img = lambda epoch: loader(src, batch_size=8, train=True, augment="crop_flip", epoch=epoch)[0]["image"]
  np.testing.assert_array_equal(img(0), img(0))
  assert not np.array_equal(img(0), img(1))


@pytest.mark.parametrize("train", [True, False])
def test_process_sharding_reconstructs_global_batches(train):
  src = indexed_source(37)
  kwargs = dict(train=train, seed=5, epoch=2, augment="crop_flip")
  single = loader(src, batch_size=8, **kwargs)
  shards = [loader(src, batch_size=4, process_index=p, process_count=2, **kwargs) for p in range(2)]
  assert len(shards[0]) == len(shards[1]) == len(single) == (4 if train else 5)
  for k, batch in enumerate(single):
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([shards[0][k][key], shards[1][k][key]]), batch[key])
  labels0 = {int(v) for b in shards[0] for v in b["label"]}
  labels1 = {int(v) for b in shards[1] for v in b["label"]}
  if train:
    assert not labels0 & labels1  # Disjoint shares.


def test_eval_padding_covers_each_example_once():
  src = indexed_source(23)
  seen = []
  counts = set()
  for p in range(3):
    batches = loader(src, batch_size=4, train=False, process_index=p, process_count=3)
    counts.add(len(batches))
    for b in batches:
      assert b["image"].shape == (4, 6, 6, 1)
      seen += b["label"][b["mask"] == 1].tolist()
      assert not b["label"][b["mask"] == 0].any()
  assert counts == {2}  # Every process yields the same number of batches.
  assert sorted(seen) == list(range(23))


class CountingSource:
  """A plain random-access source (no vectorised gather) that counts reads."""

  def __init__(self, inner):
    self.inner = inner
    self.reads = 0
    self.mean, self.std, self.image_shape = inner.mean, inner.std, inner.image_shape

  def __len__(self):
    return len(self.inner)

  def __getitem__(self, i):
    self.reads += 1
    return self.inner[i]


def test_start_batch_resumes_exactly_and_cheaply():
  src = indexed_source(40)
  kwargs = dict(batch_size=4, train=True, seed=7, epoch=3, augment="crop_flip")
  full = loader(src, **kwargs)
  counting = CountingSource(src)
  it = data.make_loader(counting, process_index=0, process_count=1, start_batch=6, **kwargs)
  assert len(it) == 4 and it.num_batches == 10
  first = next(it)
  assert counting.reads == 4  # Only the yielded batch was read.
  resumed = [first] + list(it)
  assert len(resumed) == 4
  for a, b in zip(full[6:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert loader(src, start_batch=10, **kwargs) == []


def test_threads_give_the_same_batches():
  src = indexed_source(64, shape=(8, 8, 3))
  kwargs = dict(batch_size=8, train=True, seed=1, augment="crop_flip")
  for a, b in zip(loader(src, num_threads=0, **kwargs), loader(src, num_threads=3, **kwargs)):
    np.testing.assert_array_equal(a["image"], b["image"])
  with data.make_loader(src, process_index=0, process_count=1, num_threads=2, **kwargs) as it:
    next(it)


@pytest.mark.parametrize("flip", [False, True])
def test_random_crop_flip_is_a_shifted_window(flip):
  rng = np.random.default_rng(0)
  images = rng.integers(1, 256, (64, 7, 9, 2), dtype=np.uint8)
  u = rng.random((64, 3))
  out = aug.random_crop_flip(images, u, padding=2, flip=flip)
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  offsets, flips = set(), set()
  for b in range(64):
    dy, dx = int(u[b, 0] * 5), int(u[b, 1] * 5)
    window = padded[b, dy : dy + 7, dx : dx + 9]
    flipped = bool(flip and u[b, 2] < 0.5)
    np.testing.assert_array_equal(out[b], window[:, ::-1] if flipped else window)
    offsets.add((dy, dx))
    flips.add(flipped)
  assert len(offsets) > 10 and flips == ({False, True} if flip else {False})


def test_loader_argument_errors():
  src = indexed_source(10)
  with pytest.raises(data.DataError, match="augment must be one of"):
    loader(src, batch_size=2, train=True, augment="mixup")
  with pytest.raises(data.DataError, match=r"process_index must be in 0\.\.1"):
    loader(src, batch_size=2, train=True, process_index=2, process_count=2)
  with pytest.raises(data.DataError, match="larger than the 10 examples"):
    loader(src, batch_size=6, train=True, process_count=2)
  with pytest.raises(data.DataError, match=r"start_batch must be in 0\.\.5"):
    loader(src, batch_size=2, train=True, start_batch=6)
  with pytest.raises(data.DataError, match="batch_size"):
    loader(src, batch_size=0, train=True)
  with pytest.raises(data.DataError, match="image_size=8 differs"):
    loader(src, batch_size=2, train=True, augment="crop", image_size=8)
  with pytest.raises(data.DataError, match="has no 'mean'"):
    loader([{"image": np.zeros((2, 2, 1), np.uint8), "label": 0}], batch_size=1, train=True)


def test_steps_per_epoch_and_default_processes():
  assert data.steps_per_epoch(60000, 128) == 468
  assert data.steps_per_epoch(60000, 128, drop_remainder=False) == 469
  with pytest.raises(data.DataError):
    data.steps_per_epoch(10, 0)
  src = indexed_source(10)
  it = data.make_loader(src, batch_size=5, train=True)  # jax.process_index()/process_count().
  assert len(it) == 2 and it.global_batch_size == 5


# ----------------------------------------------------------------------------
# Subsets, the validation split and the input shape


class GatherCountingSource(CountingSource):
  """A source with a batched gather that counts batched and one-by-one reads."""

  def __init__(self, inner):
    super().__init__(inner)
    self.num_classes = inner.num_classes
    self.gathers = 0

  def _gather(self, indices):
    self.gathers += 1
    return self.inner._gather(indices)


def test_subset_is_a_window_with_the_source_attributes():
  src = indexed_source(20)
  sub = data.Subset(src, 3, 9)
  assert len(sub) == 6
  assert [int(sub[i]["label"]) for i in range(6)] == [3, 4, 5, 6, 7, 8]
  assert int(sub[-1]["label"]) == 8
  np.testing.assert_array_equal(sub[2]["image"], src.images[5])
  for attr in ("num_classes", "image_shape", "mean", "std"):
    assert getattr(sub, attr) == getattr(src, attr)
  with pytest.raises(IndexError):
    sub[6]
  with pytest.raises(IndexError):
    sub[-7]
  assert len(data.Subset(src, 15, 100)) == 5 and len(data.Subset(src, 25, 30)) == 0
  assert repr(sub) == f"examples 3:9 of {src!r}"
  with pytest.raises(data.DataError, match="has no 'num_classes'"):
    data.Subset(CountingSource(src), 0, 2)


def test_subset_batches_come_from_the_source_gather():
  src = indexed_source(30)
  counting = GatherCountingSource(src)
  sub = data.Subset(counting, 10, 30)
  batches = loader(sub, batch_size=8, train=True, seed=3, augment="crop_flip")
  assert counting.reads == 0 and counting.gathers == 2  # One batched read per batch.
  labels = np.concatenate([b["label"] for b in batches])
  assert len(set(labels.tolist())) == 16 and labels.min() >= 10
  # The same batches as a source holding just those examples.
  copy = data.ArraySource(src.images[10:], np.arange(10, 30), num_classes=30, mean=src.mean, std=src.std)
  for a, b in zip(batches, loader(copy, batch_size=8, train=True, seed=3, augment="crop_flip")):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  # A source without a batched gather is still read one example at a time.
  plain = CountingSource(src)
  plain.num_classes = src.num_classes
  evaluation = loader(data.Subset(plain, 25, 30), batch_size=4, train=False)
  assert plain.reads == 5
  assert evaluation[1]["label"].tolist() == [29, 0, 0, 0] and evaluation[1]["mask"].tolist() == [1, 0, 0, 0]


def test_split_validation_holds_out_the_last_examples():
  src = indexed_source(64)
  train, validation = data.split_validation(src, 16)
  assert (len(train), len(validation)) == (48, 16)
  assert [int(validation[i]["label"]) for i in range(16)] == list(range(48, 64))
  assert int(train[-1]["label"]) == 47
  assert data.split_validation(src, 0) == (src, None)
  with pytest.raises(data.DataError, match=r"data\.validation_examples = 64 holds out the whole training split \(64"):
    data.split_validation(src, 64)
  with pytest.raises(data.DataError, match=r"data\.validation_examples must be an integer >= 0; got -1"):
    data.split_validation(src, -1)


def test_input_shape_default_and_loader_agree(tmp_path):
  src = indexed_source(8, shape=(6, 6, 3))
  assert data.input_shape(src) == data.input_shape(src, "crop_flip", 0) == (6, 6, 3)
  assert data.input_shape(src, "imagenet") == data.input_shape(src, "imagenet", 0) == (224, 224, 3)
  assert data.input_shape(src, "imagenet", 32) == data.input_shape(src, "none", 32) == (32, 32, 3)
  for augment, size in (("none", None), ("none", 0), ("none", 10), ("crop", None), ("imagenet", 16)):
    batch = loader(src, batch_size=4, train=True, augment=augment, image_size=size)[0]
    assert batch["image"].shape == (4,) + data.input_shape(src, augment, size)
  make_image_tree(tmp_path / "tree")
  folder = data.image_folder(tmp_path / "tree")
  assert folder.image_shape is None
  assert data.input_shape(folder, "imagenet") == (224, 224, 3)
  assert data.input_shape(folder, "none", 12) == (12, 12, 3)
  with pytest.raises(data.DataError, match="variable image sizes: pass image_size"):
    data.input_shape(folder, "none")
  with pytest.raises(data.DataError, match="augment must be one of"):
    data.input_shape(src, "mixup")
  with pytest.raises(data.DataError, match="image_size must be an integer >= 0; got -2"):
    data.input_shape(src, "none", -2)


def test_order_is_grains_shuffle_with_the_epoch_seed():
  import grain

  src = indexed_source(30)
  shuffle_seed, _ = data.pipeline.epoch_seeds(4, 2)
  expected = [grain.MapDataset.range(30).shuffle(seed=shuffle_seed)[i] for i in range(30)]
  np.testing.assert_array_equal(train_order(src, batch_size=5, seed=4, epoch=2), expected)
  # Seeds are hashed with the epoch: seed 1 at epoch 0 does not repeat seed 0 at epoch 1.
  assert not np.array_equal(train_order(src, batch_size=5, seed=1, epoch=0),
                            train_order(src, batch_size=5, seed=0, epoch=1))


def test_augmentation_follows_the_position_not_the_batching():
  src = indexed_source(48, shape=(8, 8, 1))
  kwargs = dict(train=True, seed=2, epoch=1, augment="crop_flip")
  images = lambda batches: np.concatenate([b["image"] for b in batches])
  by_12 = images(loader(src, batch_size=12, **kwargs))
  np.testing.assert_array_equal(by_12, images(loader(src, batch_size=4, **kwargs)))
  three = [loader(src, batch_size=4, process_index=p, process_count=3, **kwargs) for p in range(3)]
  np.testing.assert_array_equal(by_12, np.concatenate([images([s[k] for s in three]) for k in range(4)]))
  # The crops differ between examples (the numbers are per position, not per batch).
  raw = loader(src, batch_size=12, train=True, seed=2, epoch=1)[0]["image"]
  assert (np.abs(by_12[:12] - raw).reshape(12, -1).sum(1) > 0).sum() >= 10


def test_readers_take_relative_and_home_paths(tmp_path, monkeypatch):
  for folder in ("c10", "fm"):
    (tmp_path / folder).mkdir()
  make_cifar(tmp_path / "c10", 10)
  make_image_tree(tmp_path / "tree" / "train")
  make_fashion(tmp_path / "fm")
  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.chdir(tmp_path)
  for prefix in ("", "~/", f"{tmp_path}/"):
    assert len(data.cifar(prefix + "c10", 10, "test")) == 4
    assert len(data.image_folder(prefix + "tree", "train")) == 6
    assert len(data.fashion_mnist(prefix + "fm", "test")) == 5
