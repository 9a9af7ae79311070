"""Data for octflax: readers of the original data set files and a grain input pipeline.

Sources follow grain's random-access protocol (``len`` and ``source[i] ->
{'image': uint8 [H, W, C], 'label': int32}``) and carry ``num_classes``,
``image_shape`` and per-channel ``mean``/``std``. Each data set has one reader module
(`fashion_mnist`, `cifar`, `image_folder`, `synthetic`, `clips`), and `get_source` finds
them by name (`register_source` adds one)::

  from octflax import data
  train = data.get_source('fashion_mnist', 'train')
  for batch in data.make_loader(train, batch_size=128, train=True, seed=0, epoch=0,
                                augment='crop_flip'):
    ...  # batch['image'] float32 [128, 28, 28, 1], batch['label'] int32 [128]

`split_validation` holds out the last examples of a source as a `Subset`,
`input_shape` is the shape of the images a loader gives (the model's input), and a
`BatchPlan` holds a data-parallel run's batch arithmetic (``make_loader(plan=...)``; `batch_plan`
builds one for a list of devices).
"""

from octflax.data.augment import AUGMENTATIONS
from octflax.data.download import FASHION_MNIST_DIR, download_fashion_mnist, find_fashion_mnist
from octflax.data.errors import DataError, MissingDataError
from octflax.data.batching import BatchPlan, batch_plan, steps_per_epoch
from octflax.data.pipeline import EpochLoader, input_shape, make_loader
from octflax.data.arrays import ArraySource
from octflax.data.cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, cifar
from octflax.data.clips import MovingGarments, moving_fashion_mnist
from octflax.data.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD, fashion_mnist
from octflax.data.image_folder import IMAGENET_MEAN, IMAGENET_STD, ImageFolderSource, image_folder
from octflax.data.registry import get_source, list_sources, register_source
from octflax.data.synthetic import SyntheticSource, synthetic
from octflax.data.subset import Subset, split_validation

__all__ = [
    "AUGMENTATIONS",
    "ArraySource",
    "BatchPlan",
    "batch_plan",
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
    "MovingGarments",
    "Subset",
    "SyntheticSource",
    "cifar",
    "download_fashion_mnist",
    "fashion_mnist",
    "find_fashion_mnist",
    "get_source",
    "image_folder",
    "input_shape",
    "list_sources",
    "make_loader",
    "moving_fashion_mnist",
    "register_source",
    "split_validation",
    "steps_per_epoch",
    "synthetic",
]
