r"""Moving Fashion-MNIST with a small Oct-I3D: a real 3-D run in minutes on a CPU.

Command (one run per alpha; 0.25 is this file's):

  python -m experiments.train --workdir runs/mfm_a0.25 \
      --config experiments/configs/moving_fashion_mnist.py --config.model.alpha=0.25

Task (octflax.data.clips): 8-frame 32 x 32 clips of a Fashion-MNIST garment (14 x 14)
moving in one of 8 directions at 1 or 2 pixels per frame; the label is the direction,
which no single frame shows. Model: oct_i3d_tiny (3 x 7 x 7 stem, one basic block of
16/32/64 channels per stage, every conv 3 x 3 x 3 / 1 x 3 x 3, a temporal max-pool after
the first stage; 130,520 parameters). Training: the first 12,000 training clips for
2 epochs; test: all 10,000 test clips.

Result: 100.00 / 99.99 / 100.00% test accuracy at alpha 0 / 0.25 / 0.5 (97.13 / 98.75 /
99.67% after epoch 1), 12.55 / 11.13 / 9.88 MMACs per clip, 7-11 minutes of training each
on 2 shared CPU cores; without time kernels (model.overrides stem_time_kernel=1,
time_kernels=((1,), (1,), (1,))) 92.64%. docs/video.md and experiments/results/video/.
"""

from octflax.training import default_config


def get_config():
  config = default_config()
  config.model.name = "oct_i3d_tiny"

  config.data.name = "moving_fashion_mnist"
  config.data.max_train_examples = 12000

  config.num_epochs = 2
  config.learning_rate = 0.2  # Per 256 clips: 0.1 at batch 128.
  config.warmup_epochs = 0.2
  config.weight_decay = 5e-4

  config.log_every_steps = 20
  return config
