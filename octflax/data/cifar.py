"""CIFAR-10 and CIFAR-100 from their original python pickle batches.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from octflax.data.errors import DataError, MissingDataError
from octflax.data.arrays import ArraySource, check_labels, check_max_examples, check_split


# CIFAR-10 / CIFAR-100: the commonly published per-channel training-set
# statistics on the 0..1 scale (RGB), times 255.
CIFAR10_MEAN = tuple(255.0 * v for v in (0.4914, 0.4822, 0.4465))
CIFAR10_STD = tuple(255.0 * v for v in (0.2470, 0.2435, 0.2616))
CIFAR100_MEAN = tuple(255.0 * v for v in (0.5071, 0.4865, 0.4409))
CIFAR100_STD = tuple(255.0 * v for v in (0.2673, 0.2564, 0.2762))


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
  check_labels(labels, num_classes, f"{path} (b'{label_key}')")
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
  split = check_split(split, ("train", "test"))
  max_examples = check_max_examples(max_examples)
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


__all__ = ['CIFAR100_MEAN', 'CIFAR100_STD', 'CIFAR10_MEAN', 'CIFAR10_STD', 'cifar']
