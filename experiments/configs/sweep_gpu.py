r"""Alpha sweep on Fashion-MNIST, full protocol for one H100/H200 GPU: Oct-WRN-16-4, 3 seeds.

Command (15 runs; sized for about 10 minutes on one H100 in bf16):

  python -m experiments.sweep --config experiments/configs/sweep_gpu.py --seeds 0,1,2 \
      --results experiments/results/fashion_mnist_alpha_sweep_gpu.json

Result: not yet run (no GPU was available when it was written); the target is >= 95.5%
test accuracy for the best alpha and alpha .25/.5 within 0.3 points of alpha 0.
The trainer needs grain and ml_collections besides jax/flax/optax/orbax.

Same recipe for every alpha and seed: SGD Nesterov 0.9, warm-up then cosine, weight decay
5e-4 on kernels, random crop (4-pixel padding) and flip, bf16 compute with float32 parameters.
The last 5,000 training images are held out for validation (any choice is made on them); the
test split is evaluated once, at the end of each run.
"""

from octflax.training import default_config


def get_config():
  config = default_config()
  config.model.name = "oct_wrn_16_4"
  config.model.alpha = 0.0  # set per run by experiments.sweep
  config.data.augment = "crop_flip"
  config.data.num_threads = 4
  config.data.validation_examples = 5000  # The last 5,000 training images: 55,000 train.
  config.num_epochs = 15
  config.batch_size = 256
  config.learning_rate = 0.2
  config.warmup_epochs = 1.0
  config.weight_decay = 5e-4
  config.half_precision = True
  config.checkpoint_every_steps = 2000
  config.keep_checkpoints = 1
  config.log_every_steps = 100
  config.progress_bar = False
  return config
