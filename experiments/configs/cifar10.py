r"""CIFAR-10 with an Oct-ResNet-56 (alpha 0.5), the recipe of He et al.'s CIFAR ResNets with a cosine schedule.

Command (data: the python version of CIFAR-10, cifar-10-python.tar.gz, extracted under DIR):

  python -m experiments.train --workdir runs/cifar10 --config experiments/configs/cifar10.py \
      --config.data.dir=DIR

Result: not run here. Expected about 93% test accuracy: vanilla ResNet-56 reaches 93.0% with
this recipe's step-schedule version (He et al., 2016), and the Oct-ResNet at alpha 0.5 costs
79.3 MMACs per image against 125.7 for alpha 0 (855,770 parameters for both). Roughly an hour
on one current GPU with --config.half_precision=True; far too long for a CPU (use
experiments/configs/fashion_mnist.py there).

Recipe: SGD with Nesterov momentum 0.9, learning rate 0.1 at batch 128 (0.2 per 256 images),
1 warm-up epoch then cosine to 0 over 180 epochs, weight decay 1e-4 on kernels, random crop
after 4-pixel padding and horizontal flip.
"""

from octflax.training import default_config


def get_config():
  config = default_config()
  config.model.name = "oct_resnet56"
  config.model.alpha = 0.5

  config.data.name = "cifar10"
  config.data.dir = "data/cifar10"
  config.data.augment = "crop_flip"
  config.data.num_threads = 2

  config.num_epochs = 180
  config.learning_rate = 0.2  # Per 256 images: 0.1 at batch 128.
  config.warmup_epochs = 1.0
  config.weight_decay = 1e-4

  config.checkpoint_every_steps = 2000
  config.keep_checkpoints = 3
  config.log_every_steps = 100
  config.eval_every_epochs = 5
  return config
