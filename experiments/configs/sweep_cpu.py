r"""Alpha sweep on Fashion-MNIST, CPU protocol: Oct-ResNet-20, two seeds, a fixed epoch budget.

Command (two seeds: about 2 hours per seed for the five alphas on 2 CPU cores; a second seed
can be added later to an earlier results file with --previous):

  python -m experiments.sweep --config experiments/configs/sweep_cpu.py --seeds 0,1

Result (2026-11-28 and 29, Python 3.11, jax 0.10.2, 6 epochs, seeds 0 and 1): mean test accuracy
92.65 / 92.61 / 92.65 / 92.14 / 91.53% (standard deviation over seeds 0.18 / 0.12 / 0.01 / 0.18 / 0.29; validation
93.27 / 93.28 / 92.91 / 92.53 / 92.37%) at alpha 0 / .125 / .25 / .5 / .75 (31.0 / 27.6 / 24.6 /
19.8 / 16.7 MMACs per image); experiments/results/fashion_mnist_alpha_sweep.{json,png}. Every
network is still improving at the end of the budget.

Every alpha gets the same network (CIFAR-style Oct-ResNet-20: 3x3 stem, three stages of
three basic blocks with 16/32/64 channels, last stage at alpha 0), the same recipe
(SGD Nesterov 0.9, warm-up then cosine, weight decay 5e-4 on kernels, random crop with
4-pixel padding and horizontal flip), the same seed and the same number of epochs.
Nothing is tuned on the test set: the recipe is fixed in advance for all alphas.
"""

from octflax.training import default_config


def get_config():
  config = default_config()
  config.model.alpha = 0.0  # set per run by experiments.sweep
  config.data.augment = "crop_flip"
  config.data.validation_examples = 5000  # The last 5,000 training images: 55,000 train.
  config.num_epochs = 6
  config.learning_rate = 0.2  # per 256 images: 0.1 at batch 128
  config.warmup_epochs = 0.3
  config.weight_decay = 5e-4
  config.checkpoint_every_steps = 200
  config.keep_checkpoints = 2
  config.log_every_steps = 100
  config.progress_bar = False
  return config
