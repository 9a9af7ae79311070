"""Random-access data sources: Fashion-MNIST, CIFAR-10/100, image folders, synthetic.

Every source follows grain's ``RandomAccessDataSource`` protocol: ``len(source)``
and ``source[i] -> {'image': uint8 [H, W, C], 'label': int32 scalar}``. Each also
carries ``num_classes``, ``image_shape`` (``None`` when images differ in size)
and per-channel ``mean`` and ``std`` on the 0..255 scale for normalisation.
"""

from __future__ import annotations

import os
import pickle
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from octflax.data.download import FASHION_MNIST_DIR, FASHION_MNIST_FILES, FIX_FASHION_MNIST, find_fashion_mnist, find_idx_file
from octflax.data.errors import DataError, MissingDataError

Example = dict[str, np.ndarray]

# Per-channel statistics on the 0..255 scale.
# Fashion-MNIST: mean and (population) standard deviation over all pixels of the
# 60,000 training images, computed once from train-images-idx3-ubyte.gz in
# float64 (72.94035..., 90.02118...).
FASHION_MNIST_MEAN = (72.94035,)
FASHION_MNIST_STD = (90.02118,)
# CIFAR-10 / CIFAR-100: the commonly published per-channel training-set
# statistics on the 0..1 scale (RGB), times 255.
CIFAR10_MEAN = tuple(255.0 * v for v in (0.4914, 0.4822, 0.4465))
CIFAR10_STD = tuple(255.0 * v for v in (0.2470, 0.2435, 0.2616))
CIFAR100_MEAN = tuple(255.0 * v for v in (0.5071, 0.4865, 0.4409))
CIFAR100_STD = tuple(255.0 * v for v in (0.2673, 0.2564, 0.2762))
# ImageNet: the standard RGB statistics (0.485, 0.456, 0.406) and
# (0.229, 0.224, 0.225) on the 0..1 scale, times 255.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
# Synthetic images are uniform on the integers 0..255: mean 127.5 and standard
# deviation sqrt((256**2 - 1) / 12).
SYNTHETIC_MEAN = 127.5
SYNTHETIC_STD = ((256**2 - 1) / 12) ** 0.5

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")


def _check_split(split: str, allowed: Sequence[str]) -> str:
  if split not in allowed:
    raise DataError(f"split must be one of {', '.join(map(repr, allowed))}; got {split!r}.")
  return split


def _check_max_examples(max_examples: int) -> int:
  if isinstance(max_examples, bool) or not isinstance(max_examples, (int, np.integer)) or max_examples < 0:
    raise DataError(
        f"max_examples must be an integer >= 0 (0 means all examples); got {max_examples!r}."
    )
  return int(max_examples)


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
  if labels.size == 0:
    return
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if bad.size:
    i = int(bad[0])
    raise DataError(
        f"{where}: label {int(labels[i])} at index {i} is out of range; labels must be "
        f"integers in 0..{num_classes - 1} ({num_classes} classes); "
        f"{bad.size} label(s) are out of range."
    )


def gather(source: Any, indices: np.ndarray) -> tuple[list[np.ndarray] | np.ndarray, np.ndarray]:
  """Examples ``indices`` of a source: ``(images, labels int32 [n])``.

  Uses the source's batched lookup ``_gather`` when it has one (the sources of
  this module and `Subset`: one NumPy gather instead of ``n`` Python calls);
  otherwise reads ``source[i]`` one by one and returns the images as a list
  (they may differ in size).

  Raises:
    DataError: an example's image is not uint8 [H, W, C].
  """
  batched = getattr(source, "_gather", None)
  if batched is not None:
    return batched(indices)
  images, labels = [], []
  for index in indices:
    example = source[int(index)]
    image = np.asarray(example["image"])
    if image.dtype != np.uint8 or image.ndim != 3:
      raise DataError(
          f"{source!r}: example {int(index)} has an image of dtype {image.dtype} and "
          f"shape {image.shape}; expected uint8 [H, W, C]."
      )
    images.append(image)
    labels.append(example["label"])
  return images, np.asarray(labels, dtype=np.int32).reshape(len(indices))


class ArraySource:
  """An in-memory data source over a uint8 image array and an integer label array.

  Attributes:
    images: uint8 array [N, H, W, C].
    labels: int32 array [N].
    num_classes: number of classes.
    image_shape: ``(H, W, C)``.
    mean: per-channel means on the 0..255 scale.
    std: per-channel standard deviations on the 0..255 scale.
    name: a short description used in messages and ``repr``.
  """

  def __init__(
      self,
      images: np.ndarray,
      labels: np.ndarray,
      *,
      num_classes: int,
      mean: Sequence[float],
      std: Sequence[float],
      name: str = "arrays",
  ):
    """Wraps arrays as a data source, checking shapes, types and labels.

    Args:
      images: uint8 array [N, H, W, C].
      labels: integer array [N] with values in ``0 .. num_classes - 1``.
      num_classes: number of classes (>= 1).
      mean: C per-channel means on the 0..255 scale.
      std: C per-channel standard deviations (> 0) on the 0..255 scale.
      name: a short description used in messages.

    Raises:
      DataError: when any of the above does not hold.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4:
      raise DataError(
          f"{name}: images must be a uint8 array [N, H, W, C]; got dtype {images.dtype} "
          f"and shape {images.shape}."
      )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
      raise DataError(
          f"{name}: labels must be a 1-D integer array; got dtype {labels.dtype} and shape {labels.shape}."
      )
    if len(labels) != len(images):
      raise DataError(
          f"{name}: {len(images)} images but {len(labels)} labels; the counts must agree."
      )
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
      raise DataError(f"{name}: num_classes must be an integer >= 1; got {num_classes!r}.")
    _check_labels(labels, int(num_classes), name)
    channels = images.shape[-1]
    mean = tuple(float(m) for m in mean)
    std = tuple(float(s) for s in std)
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
      raise DataError(
          f"{name}: mean and std must have one value per channel ({channels}) and std must be "
          f"> 0; got mean={mean}, std={std}."
      )
    self.images = images
    self.labels = labels.astype(np.int32, copy=False)
    self.num_classes = int(num_classes)
    self.image_shape: tuple[int, int, int] | None = tuple(int(d) for d in images.shape[1:])
    self.mean = mean
    self.std = std
    self.name = name

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> Example:
    """Returns example ``index`` as ``{'image': uint8 [H, W, C], 'label': int32}``."""
    index = int(index)
    if not -len(self) <= index < len(self):
      raise IndexError(f"{self.name}: index {index} out of range for {len(self)} examples.")
    return {"image": self.images[index], "label": self.labels[index]}

  def _gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised lookup of many examples: (images [n, H, W, C], labels [n])."""
    return self.images[indices], self.labels[indices]

  def __repr__(self) -> str:
    return (
        f"ArraySource({self.name}, {len(self)} examples, image_shape={self.image_shape}, "
        f"num_classes={self.num_classes})"
    )


# ----------------------------------------------------------------------------
# Fashion-MNIST (original gzipped IDX files)

_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions.
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension.
def _read_maybe_gzip(path: Path) -> tuple[bytes, bool]:
  """Returns (content, complete); `complete` is False for a cut gzip stream."""
  raw = path.read_bytes()
  if path.suffix != ".gz":
    return raw, True
  chunks = []
  rest = raw
  complete = True
  while rest:
    decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
      chunks.append(decoder.decompress(rest))
    except zlib.error as e:
      raise DataError(
          f"{path}: not a valid gzip file ({e}); expected the original gzipped IDX file. "
          + FIX_FASHION_MNIST
      ) from e
    if not decoder.eof:
      complete = False
      break
    rest = decoder.unused_data
  return b"".join(chunks), complete


def _read_idx(path: Path, magic: int, ndim: int) -> tuple[tuple[int, ...], np.ndarray]:
  """Reads an IDX file of unsigned bytes; returns (dims, flat uint8 data)."""
  data, complete = _read_maybe_gzip(path)
  header = 4 + 4 * ndim
  if len(data) < header:
    raise DataError(
        f"{path}: file is truncated: the IDX header needs {header} bytes, the file has "
        f"{len(data)} bytes (after decompression)."
    )
  (got_magic,) = struct.unpack(">I", data[:4])
  if got_magic != magic:
    raise DataError(
        f"{path}: wrong magic number {got_magic} (0x{got_magic:08x}); expected {magic} "
        f"(0x{magic:08x}, an IDX file of unsigned bytes with {ndim} dimension(s))."
    )
  dims = struct.unpack(">" + "I" * ndim, data[4:header])
  expected = header + int(np.prod(dims, dtype=np.int64))
  if len(data) != expected or not complete:
    what = "truncated" if len(data) < expected or not complete else "longer than its header says"
    extra = "" if complete else " and its gzip stream ends early"
    raise DataError(
        f"{path}: file is {what}{extra}: its header (dimensions {'x'.join(map(str, dims))}) "
        f"implies {expected} bytes, the file has {len(data)} bytes (after decompression). "
        "Re-install or re-download the file."
    )
  return dims, np.frombuffer(data, dtype=np.uint8, offset=header)


def fashion_mnist(
    data_dir: str | os.PathLike[str] | None = FASHION_MNIST_DIR,
    split: str = "train",
    max_examples: int = 0,
) -> ArraySource:
  """Reads Fashion-MNIST from its original IDX files, downloading them on first use.

  Looks for ``train-images-idx3-ubyte.gz`` etc. (or the uncompressed names) in
  `data_dir`, then in Debian's folder, then in the cache, and downloads them
  into the cache when they are in none (see `find_fashion_mnist`). Checks magic
  numbers, dimensions, file sizes, counts and labels.

  Args:
    data_dir: directory holding the IDX files, relative, absolute or starting
      with ``~`` (Debian's ``dataset-fashion-mnist`` installs them at the
      default); None looks only in Debian's folder and the cache.
    split: ``'train'`` (60,000 examples) or ``'test'`` (10,000).
    max_examples: keep only the first this many examples; 0 keeps all.

  Returns:
    An `ArraySource` with images uint8 [N, 28, 28, 1], 10 classes, and the
    training-set mean and std.

  Raises:
    MissingDataError: the files are nowhere and cannot be downloaded (the
      message says how to install the data).
    DataError: a file is malformed (wrong magic number or dimensions, truncated,
      image and label counts differ, labels out of range) or an argument is bad.
  """
  split = _check_split(split, ("train", "test"))
  max_examples = _check_max_examples(max_examples)
  directory = find_fashion_mnist(data_dir, split)
  images_path, labels_path = (find_idx_file(directory, stem) for stem in FASHION_MNIST_FILES[split])

  dims, pixels = _read_idx(images_path, _IDX_IMAGES_MAGIC, 3)
  count, rows, cols = dims
  if (rows, cols) != (28, 28):
    raise DataError(
        f"{images_path}: images are {rows}x{cols}; Fashion-MNIST images must be 28x28."
    )
  (label_count,), labels = _read_idx(labels_path, _IDX_LABELS_MAGIC, 1)
  if label_count != count:
    raise DataError(
        f"{images_path} holds {count} images but {labels_path} holds {label_count} labels; "
        "the counts must agree (the files must come from the same split)."
    )
  _check_labels(labels, 10, str(labels_path))
  images = pixels.reshape(count, rows, cols, 1)
  if max_examples:
    images, labels = images[:max_examples], labels[:max_examples]
  return ArraySource(
      images,
      labels.astype(np.int32),
      num_classes=10,
      mean=FASHION_MNIST_MEAN,
      std=FASHION_MNIST_STD,
      name=f"fashion_mnist:{split}",
  )


# ----------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (original python pickle batches)

_CIFAR_LAYOUT = {
    10: {
        "subdir": "cifar-10-batches-py",
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
        "label_key": "labels",
        "archive": "cifar-10-python.tar.gz",
    },
    100: {
        "subdir": "cifar-100-python",
        "train": ("train",),
        "test": ("test",),
        "label_key": "fine_labels",
        "archive": "cifar-100-python.tar.gz",
    },
}


def _cifar_fix(num_classes: int) -> str:
  layout = _CIFAR_LAYOUT[num_classes]
  return (
      f"Get the python version of CIFAR-{num_classes} ({layout['archive']} from "
      "https://www.cs.toronto.edu/~kriz/cifar.html), extract it, and pass "
      f"--config.data.dir=DIR naming the directory that holds {layout['subdir']}/ "
      "or the batch files themselves."
  )


def _pickle_get(batch: dict[Any, Any], key: str) -> Any:
  for k in (key.encode(), key):
    if k in batch:
      return batch[k]
  return None


def _load_cifar_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  label_key = _CIFAR_LAYOUT[num_classes]["label_key"]
  try:
    with open(path, "rb") as f:
      # The CIFAR batches are pickles: only read files from a trusted source.
      batch = pickle.load(f, encoding="bytes")
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
          ImportError, IndexError, KeyError, MemoryError) as e:
    raise DataError(
        f"{path}: not a readable CIFAR pickle batch ({type(e).__name__}: {e}); the file is "
        f"damaged or truncated. " + _cifar_fix(num_classes)
    ) from e
  if not isinstance(batch, dict):
    raise DataError(
        f"{path}: expected a pickled dict with keys b'data' and b'{label_key}', got "
        f"{type(batch).__name__}."
    )
  data = _pickle_get(batch, "data")
  labels = _pickle_get(batch, label_key)
  if data is None or labels is None:
    missing = [k for k, v in (("data", data), (label_key, labels)) if v is None]
    present = ", ".join(repr(k) for k in batch)
    hint = ""
    if num_classes == 10 and _pickle_get(batch, "fine_labels") is not None:
      hint = " This looks like a CIFAR-100 file: pass num_classes=100."
    elif num_classes == 100 and _pickle_get(batch, "labels") is not None:
      hint = " This looks like a CIFAR-10 file: pass num_classes=10."
    raise DataError(
        f"{path}: missing key(s) {', '.join('b' + repr(k) for k in missing)}; a CIFAR-"
        f"{num_classes} batch has b'data' and b'{label_key}' (keys present: {present}).{hint}"
    )
  data = np.asarray(data)
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
    raise DataError(
        f"{path}: b'data' must be a uint8 array [N, 3072] (N images of 3x32x32, "
        f"channel-major); got dtype {data.dtype} and shape {data.shape}."
    )
  labels = np.asarray(labels)
  if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
    raise DataError(
        f"{path}: b'{label_key}' must be a list of integers; got dtype {labels.dtype} and "
        f"shape {labels.shape}."
    )
  if len(labels) != len(data):
    raise DataError(
        f"{path}: {len(data)} images in b'data' but {len(labels)} labels in "
        f"b'{label_key}'; the counts must agree."
    )
  labels = labels.astype(np.int64)
  _check_labels(labels, num_classes, f"{path} (b'{label_key}')")
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return images, labels.astype(np.int32)


def cifar(
    data_dir: str | os.PathLike[str],
    num_classes: int = 10,
    split: str = "train",
    max_examples: int = 0,
) -> ArraySource:
  """Reads CIFAR-10 or CIFAR-100 from the original python pickle batches.

  CIFAR-10 has ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` (labels
  under ``b'labels'``); CIFAR-100 has ``train`` and ``test`` (labels under
  ``b'fine_labels'``). The files may sit in `data_dir` itself or in its
  ``cifar-10-batches-py`` / ``cifar-100-python`` subfolder. The files are
  pickles: read only files from a trusted source.

  Args:
    data_dir: directory holding the batches or their standard subfolder.
    num_classes: 10 or 100.
    split: ``'train'`` or ``'test'``.
    max_examples: keep only the first this many examples; 0 keeps all.

  Returns:
    An `ArraySource` with images uint8 [N, 32, 32, 3] (HWC, RGB) and the
    published per-channel mean and std.

  Raises:
    MissingDataError: the directory or a batch file is missing.
    DataError: a batch is unreadable or malformed, or an argument is bad.
  """
  if num_classes not in _CIFAR_LAYOUT:
    raise DataError(f"num_classes must be 10 (CIFAR-10) or 100 (CIFAR-100); got {num_classes!r}.")
  split = _check_split(split, ("train", "test"))
  max_examples = _check_max_examples(max_examples)
  layout = _CIFAR_LAYOUT[num_classes]
  root = Path(data_dir).expanduser()
  if not root.is_dir():
    raise MissingDataError(f"CIFAR-{num_classes} directory {root} does not exist. " + _cifar_fix(num_classes))
  if (root / layout["subdir"]).is_dir():
    root = root / layout["subdir"]
  images, labels = [], []
  total = 0
  for name in layout[split]:
    path = root / name
    if not path.is_file():
      raise MissingDataError(f"CIFAR-{num_classes} file {path} is missing. " + _cifar_fix(num_classes))
    batch_images, batch_labels = _load_cifar_batch(path, num_classes)
    images.append(batch_images)
    labels.append(batch_labels)
    total += len(batch_labels)
    if max_examples and total >= max_examples:
      break
  all_images = np.ascontiguousarray(np.concatenate(images))
  all_labels = np.concatenate(labels)
  if max_examples:
    all_images, all_labels = all_images[:max_examples], all_labels[:max_examples]
  return ArraySource(
      all_images,
      all_labels,
      num_classes=num_classes,
      mean=CIFAR10_MEAN if num_classes == 10 else CIFAR100_MEAN,
      std=CIFAR10_STD if num_classes == 10 else CIFAR100_STD,
      name=f"cifar{num_classes}:{split}",
  )


# ----------------------------------------------------------------------------
# Image folders (ImageNet-style: root/<class>/<image>.jpg)


class ImageFolderSource:
  """Images in one folder per class, decoded lazily to RGB uint8.

  Classes are the sub-folders of the root sorted by name; the label of a class
  is its position in that order. Images are found recursively under each class
  folder (extensions in `IMAGE_EXTENSIONS`, case-insensitive), in sorted order.

  Attributes:
    root: the folder that holds the class folders.
    classes: class folder names; ``classes[label]`` is the name of ``label``.
    paths: image paths, in example order.
    labels: int32 array of labels, in example order.
    num_classes: ``len(classes)``.
    image_shape: ``None`` (images differ in size).
    mean: ImageNet per-channel means on the 0..255 scale.
    std: ImageNet per-channel standard deviations on the 0..255 scale.
  """

  def __init__(self, root: str | os.PathLike[str], split: str | None = None):
    """Indexes the folder tree (no image is decoded here).

    Args:
      root: the data set's folder.
      split: when given, the class folders are read from ``root/split``.

    Raises:
      MissingDataError: the folder does not exist.
      DataError: there are no class folders or no images.
    """
    folder = Path(root).expanduser() if split is None else Path(root).expanduser() / split
    if not folder.is_dir():
      raise MissingDataError(
          f"image folder {folder} does not exist; expected a tree {folder}/<class>/<image>.jpg "
          "with one folder per class. Pass --config.data.dir=DIR naming the data set's folder."
      )
    classes = sorted(
        entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith(".")
    )
    if not classes:
      raise DataError(
          f"image folder {folder} has no class folders; expected {folder}/<class>/<image>.jpg "
          "with one folder per class."
      )
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
      for dirpath, dirnames, filenames in os.walk(folder / name):
        dirnames.sort()
        for filename in sorted(filenames):
          if filename.lower().endswith(IMAGE_EXTENSIONS):
            paths.append(os.path.join(dirpath, filename))
            labels.append(label)
    if not paths:
      raise DataError(
          f"image folder {folder} has {len(classes)} class folder(s) but no images (extensions "
          f"{', '.join(IMAGE_EXTENSIONS)}); expected {folder}/<class>/<image>.jpg."
      )
    self.root = folder
    self.classes = tuple(classes)
    self.paths = tuple(paths)
    self.labels = np.asarray(labels, dtype=np.int32)
    self.num_classes = len(classes)
    self.image_shape: tuple[int, int, int] | None = None
    self.mean = IMAGENET_MEAN
    self.std = IMAGENET_STD

  def __len__(self) -> int:
    return len(self.paths)

  def load_image(self, index: int) -> np.ndarray:
    """Decodes image `index` to an RGB uint8 array [H, W, 3].

    Raises:
      DataError: the file cannot be read or decoded (the message names it).
    """
    from PIL import Image  # pylint: disable=g-import-not-at-top

    path = self.paths[index]
    try:
      with Image.open(path) as image:
        rgb = image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
      raise DataError(
          f"{path}: cannot decode image ({type(e).__name__}: {e}); expected a readable "
          f"{', '.join(IMAGE_EXTENSIONS)} image. Replace or remove the file."
      ) from e
    return np.asarray(rgb, dtype=np.uint8)

  def __getitem__(self, index: int) -> Example:
    """Returns example ``index`` as ``{'image': uint8 [H, W, 3], 'label': int32}``."""
    index = int(index)
    if not -len(self) <= index < len(self):
      raise IndexError(f"image folder {self.root}: index {index} out of range for {len(self)} images.")
    return {"image": self.load_image(index), "label": self.labels[index]}

  def __repr__(self) -> str:
    return f"ImageFolderSource({str(self.root)!r}, {len(self)} images, {self.num_classes} classes)"


def image_folder(root: str | os.PathLike[str], split: str | None = None) -> ImageFolderSource:
  """An ImageNet-style tree of images, one folder per class.

  Args:
    root: the data set's folder.
    split: when given (``'train'``, ``'val'``, ...), read ``root/split``.

  Returns:
    An `ImageFolderSource` (images decoded lazily; ``image_shape`` is None).

  Raises:
    MissingDataError: the folder does not exist.
    DataError: there are no class folders or no images.
  """
  return ImageFolderSource(root, split)


# ----------------------------------------------------------------------------
# Synthetic data


class SyntheticSource:
  """Deterministic random images and labels, generated on access.

  Image ``i`` is uniform noise from a generator seeded with ``(seed, i)`` and
  the labels are drawn once from a generator of ``seed``, so every access
  returns the same example.

  Attributes:
    num_classes: number of classes.
    image_shape: ``(H, W, C)``.
    labels: int32 array of labels.
    mean: per-channel means on the 0..255 scale (those of uniform bytes).
    std: per-channel standard deviations on the 0..255 scale.
  """

  def __init__(
      self,
      num_examples: int,
      image_shape: Sequence[int] = (224, 224, 3),
      num_classes: int = 1000,
      seed: int = 0,
  ):
    """Creates the source.

    Args:
      num_examples: number of examples (>= 1).
      image_shape: ``(H, W, C)``, all positive.
      num_classes: number of classes (>= 1).
      seed: integer seed.

    Raises:
      DataError: an argument is bad.
    """
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
      raise DataError(f"num_examples must be an integer >= 1; got {num_examples!r}.")
    shape = tuple(image_shape)
    if len(shape) != 3 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
      raise DataError(f"image_shape must be three positive integers (H, W, C); got {image_shape!r}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
      raise DataError(f"num_classes must be an integer >= 1; got {num_classes!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
      raise DataError(f"seed must be an integer; got {seed!r}.")
    self.num_classes = int(num_classes)
    self.image_shape: tuple[int, int, int] | None = tuple(int(d) for d in shape)  # type: ignore[assignment]
    self.seed = int(seed)
    self._entropy = self.seed & ((1 << 64) - 1)
    # The labels have a stream of their own (a spawn key), apart from the images' (seed, index) ones.
    labels = np.random.default_rng(np.random.SeedSequence(self._entropy, spawn_key=(1,)))
    self.labels = labels.integers(0, self.num_classes, num_examples, dtype=np.int32)
    channels = self.image_shape[-1]
    self.mean = (SYNTHETIC_MEAN,) * channels
    self.std = (SYNTHETIC_STD,) * channels

  def __len__(self) -> int:
    return len(self.labels)

  def _image(self, index: int) -> np.ndarray:
    rng = np.random.default_rng([self._entropy, index])
    return rng.integers(0, 256, self.image_shape, dtype=np.uint8)

  def __getitem__(self, index: int) -> Example:
    """Returns example ``index`` as ``{'image': uint8 [H, W, C], 'label': int32}``."""
    index = int(index)
    if not -len(self) <= index < len(self):
      raise IndexError(f"synthetic: index {index} out of range for {len(self)} examples.")
    index %= len(self)
    return {"image": self._image(index), "label": self.labels[index]}

  def _gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised lookup of many examples: (images [n, H, W, C], labels [n])."""
    images = np.empty((len(indices),) + self.image_shape, dtype=np.uint8)
    for row, index in enumerate(indices):
      images[row] = self._image(int(index))
    return images, self.labels[indices]

  def __repr__(self) -> str:
    return (
        f"SyntheticSource({len(self)} examples, image_shape={self.image_shape}, "
        f"num_classes={self.num_classes}, seed={self.seed})"
    )


def synthetic(
    num_examples: int,
    image_shape: Sequence[int] = (224, 224, 3),
    num_classes: int = 1000,
    seed: int = 0,
) -> SyntheticSource:
  """Deterministic random images and labels, for benchmarks and tests.

  Args:
    num_examples: number of examples (>= 1).
    image_shape: ``(H, W, C)``.
    num_classes: number of classes.
    seed: integer seed; the same seed gives the same data.

  Returns:
    A `SyntheticSource`.

  Raises:
    DataError: an argument is bad.
  """
  return SyntheticSource(num_examples, image_shape, num_classes, seed)
