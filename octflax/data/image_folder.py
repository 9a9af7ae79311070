"""Image folders, ImageNet-style: ``root/<split>/<class>/<image>.jpg``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from octflax.data.errors import DataError, MissingDataError
from octflax.data.arrays import Example


# ImageNet: the standard RGB statistics (0.485, 0.456, 0.406) and
# (0.229, 0.224, 0.225) on the 0..1 scale, times 255.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")


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


__all__ = ['IMAGENET_MEAN', 'IMAGENET_STD', 'IMAGE_EXTENSIONS', 'ImageFolderSource', 'image_folder']
