"""Where data sets are when their folder is not named: a module that imports nothing.

`octflax.data` reads the data from here by default, and a training config's
defaults (`octflax.training.config`) record the same folder, without importing the
data package (grain, jax).
"""

# Default location of Debian's `dataset-fashion-mnist` package.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
