"""octflax's checkpoints: one on-disk format, the model identity it records, and a run's series of them.

Write one checkpoint and read it back as a model::

  from octflax import checkpoint
  identity = checkpoint.ModelIdentity('oct_resnet8', alpha=0.5, num_classes=10, image_shape=(28, 28, 1))
  checkpoint.write_checkpoint('/tmp/ck', variables, {'identity': identity.to_json()})
  model, variables = checkpoint.load_model('/tmp/ck')

A training run keeps its checkpoints with `CheckpointStore` (background saves,
the newest good one restored, damaged ones moved aside). This package imports
nothing of `octflax.training`.
"""

from octflax.checkpoint.format import (
    CHECKPOINT_DIR, FORMAT, find_checkpoint, load_model, read_checkpoint, read_meta, write_checkpoint)
from octflax.checkpoint.identity import ModelIdentity
from octflax.checkpoint.store import DAMAGED_SUFFIX, CheckpointStore

__all__ = ["CHECKPOINT_DIR", "CheckpointStore", "DAMAGED_SUFFIX", "FORMAT", "ModelIdentity", "find_checkpoint",
           "load_model", "read_checkpoint", "read_meta", "write_checkpoint"]
