"""Data for octflax: readers of the original data set files and a grain input pipeline.

Sources follow grain's random-access protocol (``len`` and ``source[i] ->
{'image': uint8 [H, W, C], 'label': int32}``) and carry ``num_classes``,
``image_shape`` and per-channel ``mean``/``std``::

  from octflax import data
  train = data.fashion_mnist(split='train')
  for batch in data.make_loader(train, batch_size=128, train=True, seed=0, epoch=0,
                                augment='crop_flip'):
    ...  # batch['image'] float32 [128, 28, 28, 1], batch['label'] int32 [128]

`split_validation` holds out the last examples of a source as a `Subset`, and
`input_shape` is the shape of the images a loader gives (the model's input).
"""

from octflax.data.augment import AUGMENTATIONS
from octflax.data.download import FASHION_MNIST_DIR, download_fashion_mnist, find_fashion_mnist
from octflax.data.errors import DataError, MissingDataError
from octflax.data.pipeline import EpochLoader, input_shape, make_loader, steps_per_epoch
from octflax.data.sources import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ArraySource,
    ImageFolderSource,
    SyntheticSource,
    cifar,
    fashion_mnist,
    image_folder,
    synthetic,
)
from octflax.data.subset import Subset, split_validation

__all__ = [
    "AUGMENTATIONS",
    "ArraySource",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DataError",
    "EpochLoader",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageFolderSource",
    "MissingDataError",
    "Subset",
    "SyntheticSource",
    "cifar",
    "download_fashion_mnist",
    "fashion_mnist",
    "find_fashion_mnist",
    "image_folder",
    "input_shape",
    "make_loader",
    "split_validation",
    "steps_per_epoch",
    "synthetic",
]

from octflax.data.clips import MovingGarments, moving_fashion_mnist  # noqa: E402  (clip data set)
__all__ += ["MovingGarments", "moving_fashion_mnist"]
