"""The README's Python blocks run as written, in order, in one namespace, and do what they say."""

import pathlib
import re

import chex
import jax.numpy as jnp
import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow  # about 50 s: it builds and runs every example of the README
def test_the_python_blocks_of_the_readme_run_and_give_the_shapes_they_promise():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
  assert len(blocks) >= 4, "the README lost its examples"
  namespace: dict = {}
  for block in blocks:
    exec(compile(block, "README.md", "exec"), namespace)  # pylint: disable=exec-used
  # The Linen example: logits and updated BatchNorm statistics.
  chex.assert_shape(namespace["logits"], (8, 10))
  assert "batch_stats" in namespace["updates"]
  # The NNX training step returned a finite loss.
  assert np.isfinite(float(namespace["loss"]))
  # The N-D examples.
  restored, image = namespace["restored"], namespace["image"]
  chex.assert_equal_shape([restored.high, image.high])
  chex.assert_equal_shape([restored.low, image.low])
  chex.assert_shape(namespace["video_out"].low, (2, 8, 16, 16, 8))
  # Backbone features merged to one array per stage, strides 4 to 32 on a 64 x 64 input.
  pyramid = namespace["pyramid"]
  assert [p.shape[1] for p in pyramid.values()] == [16, 8, 4, 2]
  assert all(p.dtype == jnp.float32 for p in pyramid.values())
