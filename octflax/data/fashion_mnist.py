"""Fashion-MNIST from its original gzipped IDX files.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

from octflax.data.download import FASHION_MNIST_DIR, FASHION_MNIST_FILES, FIX_FASHION_MNIST, find_fashion_mnist, find_idx_file
from octflax.data.errors import DataError
from octflax.data.arrays import ArraySource, check_labels, check_max_examples, check_split


# Per-channel statistics on the 0..255 scale.
# Fashion-MNIST: mean and (population) standard deviation over all pixels of the
# 60,000 training images, computed once from train-images-idx3-ubyte.gz in
# float64 (72.94035..., 90.02118...).
FASHION_MNIST_MEAN = (72.94035,)
FASHION_MNIST_STD = (90.02118,)


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
  split = check_split(split, ("train", "test"))
  max_examples = check_max_examples(max_examples)
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
  check_labels(labels, 10, str(labels_path))
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


__all__ = ['FASHION_MNIST_MEAN', 'FASHION_MNIST_STD', 'fashion_mnist']
