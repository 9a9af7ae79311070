"""Video: the Moving Fashion-MNIST clip source, Oct-I3D / Oct-C2D and inflation."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from octflax import convert, cost, data, execution, models
from octflax.data import clips


def _garments(n: int = 12, seed: int = 0) -> data.ArraySource:
  """Random 28x28 'garments' (a bright random blob each) with class labels 0..2."""
  rng = np.random.default_rng(seed)
  images = np.zeros((n, 28, 28, 1), np.uint8)
  for i in range(n):
    top, left = rng.integers(2, 10, 2)
    images[i, top:top + 16, left:left + 14, 0] = rng.integers(50, 256, (16, 14))
  return data.ArraySource(images, rng.integers(0, 3, n), num_classes=3, mean=(50.0,), std=(80.0,))


def _centroids(clip: np.ndarray) -> np.ndarray:
  """[T, 2] centre of mass (y, x) of each frame."""
  frames = clip[..., 0].astype(np.float64)
  ys, xs = np.mgrid[:frames.shape[1], :frames.shape[2]]
  mass = frames.sum(axis=(1, 2))
  return np.stack([(frames * ys).sum(axis=(1, 2)) / mass, (frames * xs).sum(axis=(1, 2)) / mass], -1)


def test_clips_move_the_whole_garment_in_the_labelled_direction():
  source = clips.MovingGarments(_garments(), num_frames=6, canvas_size=26, speeds=(1, 2))
  assert (len(source), source.num_classes, source.image_shape) == (12, 8, (6, 26, 26, 1))
  garments = clips.downsample_garments(_garments().images)
  for i in range(len(source)):
    example = source[i]
    clip, label = example["image"], int(example["label"])
    chex.assert_shape(clip, (6, 26, 26, 1))
    assert clip.dtype == np.uint8
    # Every frame holds the whole garment (nothing is cut at the border).
    np.testing.assert_array_equal(clip.reshape(6, -1).astype(np.int64).sum(1),
                                  np.full(6, int(garments[i].astype(np.int64).sum())))
    step = np.diff(_centroids(clip), axis=0)
    speed = int(round(np.abs(step).max()))
    assert speed in (1, 2)
    np.testing.assert_allclose(step, np.tile(np.array(clips.DIRECTIONS[label]) * speed, (5, 1)), atol=1e-9)


def test_clips_are_a_function_of_seed_split_and_index():
  a = clips.MovingGarments(_garments(), seed=3)
  b = clips.MovingGarments(_garments(), seed=3)
  images, labels = a._gather(np.arange(12))
  np.testing.assert_array_equal(images, b._gather(np.arange(12))[0])
  np.testing.assert_array_equal(labels, b._gather(np.arange(12))[1])
  # Random access: one clip read alone equals the same clip in a batch.
  np.testing.assert_array_equal(a[5]["image"], images[5])
  # A prefix of the garments gives the same first clips (the motion depends on the index only).
  prefix = clips.MovingGarments(data.ArraySource(_garments().images[:4], _garments().labels[:4],
                                                 num_classes=3, mean=(0.0,), std=(1.0,)), seed=3)
  np.testing.assert_array_equal(prefix._gather(np.arange(4))[0], images[:4])
  other_seed = clips.MovingGarments(_garments(), seed=4)._gather(np.arange(12))[1]
  other_split = clips.MovingGarments(_garments(), seed=3, split="test")._gather(np.arange(12))[1]
  assert not np.array_equal(other_seed, labels) and not np.array_equal(other_split, labels)


def test_garment_labels_and_pixel_statistics():
  garments = _garments(40)
  source = clips.MovingGarments(garments, label="garment", canvas_size=28, num_frames=4)
  images, labels = source._gather(np.arange(40))
  np.testing.assert_array_equal(labels, garments.labels)
  assert source.num_classes == 3
  # mean and std are exact: every frame is one whole garment on a zero canvas.
  pixels = images.astype(np.float64)
  np.testing.assert_allclose(source.mean, [pixels.mean()], rtol=1e-12)
  np.testing.assert_allclose(source.std, [pixels.std()], rtol=1e-9)


def test_loader_batches_clips():
  source = clips.MovingGarments(_garments(), num_frames=4, canvas_size=24)
  batch = next(iter(data.make_loader(source, batch_size=4, train=False, seed=0, epoch=0)))
  chex.assert_shape(batch["image"], (4, 4, 24, 24, 1))
  images, labels = source._gather(np.arange(4))  # evaluation reads in order
  np.testing.assert_allclose(batch["image"], (images - source.mean[0]) / source.std[0],
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(batch["label"], labels)
  assert data.input_shape(source) == (4, 24, 24, 1)


@pytest.mark.parametrize("kwargs, argument", [
    (dict(num_frames=1), "num_frames"), (dict(canvas_size=20), "canvas_size"),
    (dict(speeds=(0,)), "speeds"), (dict(label="colour"), "label"), (dict(split="val"), "split"),
    (dict(seed=-1), "seed")])
def test_bad_clip_arguments_name_themselves(kwargs, argument):
  with pytest.raises(data.DataError, match=argument):
    clips.MovingGarments(_garments(), **kwargs)


def _write_fashion_mnist(directory, n: int, splits=("train",)) -> None:
  """Tiny gzip IDX files of random garments with labels 1, 2, 3, ... (mod 10)."""
  import gzip
  rng = np.random.default_rng(0)
  for split in splits:
    stem = "train" if split == "train" else "t10k"
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = bytes([(i + 1) % 10 for i in range(n)])
    for name, magic, dims, payload in ((f"{stem}-images-idx3-ubyte", 2051, (n, 28, 28), images.tobytes()),
                                       (f"{stem}-labels-idx1-ubyte", 2049, (n,), labels)):
      header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
      with gzip.open(directory / f"{name}.gz", "wb") as f:
        f.write(header + payload)


def test_moving_fashion_mnist_reads_the_idx_files(tmp_path):
  _write_fashion_mnist(tmp_path, 5)
  source = data.moving_fashion_mnist(tmp_path, "train", label="garment")
  assert len(source) == 5 and source.image_shape == (8, 32, 32, 1)
  np.testing.assert_array_equal(source._gather(np.arange(5))[1], [1, 2, 3, 4, 5])
  # Normalisation from the Fashion-MNIST training garments, whatever the split read.
  np.testing.assert_allclose(source.mean, [14310.879283 / 1024])


# ----------------------------------------------------------------------------- Oct-I3D / Oct-C2D



def _random_variables(abstract, seed: int):
  """Concrete variables: He-normal kernels, random BN scales, biases and running statistics."""
  rng = np.random.default_rng(seed)

  def leaf(path, spec):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(spec.shape[:-1]))
      kernel = rng.standard_normal(spec.shape, dtype=np.float32) * np.sqrt(2.0 / fan_in)
      return jax.device_put(kernel.astype(np.float32))
    if name in ("scale", "var"):
      return jax.device_put(rng.uniform(0.5, 1.5, spec.shape).astype(np.float32))
    return jax.device_put(0.1 * rng.standard_normal(spec.shape).astype(np.float32))

  return jax.tree_util.tree_map_with_path(leaf, abstract)


def _abstract_init(model, shape):
  """The abstract variables of ``model``, traced in the reference execution form (the variables of every
  form; the default form would trace each platform's)."""
  with execution.use_form(execution.REFERENCE):
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                          jax.ShapeDtypeStruct(shape, jnp.float32))


def _inflation_gap(model_2d, model_3d, image_shape, frames, seed=0) -> float:
  """max |logits_3d(static clip) - logits_2d(frame)| / max |logits_2d|."""
  variables_2d = _random_variables(_abstract_init(model_2d, image_shape), seed)
  clip_shape = (image_shape[0], frames, *image_shape[1:])
  variables_3d = convert.inflate(variables_2d, _abstract_init(model_3d, clip_shape))
  image = jax.device_put(np.random.default_rng(seed + 1).standard_normal(image_shape, dtype=np.float32))
  clip = jnp.repeat(image[:, None], frames, axis=1)
  logits_2d = jax.jit(lambda v, x: model_2d.apply(v, x, train=False))(variables_2d, image)
  logits_3d = jax.jit(lambda v, x: model_3d.apply(v, x, train=False))(variables_3d, clip)
  chex.assert_equal_shape([logits_2d, logits_3d])
  return float(jnp.max(jnp.abs(logits_3d - logits_2d)) / jnp.max(jnp.abs(logits_2d)))


_SMALL = dict(stage_sizes=(1, 1), widths=(8, 16), stem_features=8, num_classes=5)


@pytest.mark.parametrize("block, alpha, octave_axes", [
    pytest.param(models.Bottleneck, 0.0, (1, 2), marks=pytest.mark.slow),
    pytest.param(models.Bottleneck, 0.5, (1, 2), marks=pytest.mark.slow),
    (models.Bottleneck, 0.5, (0, 1, 2)),
    pytest.param(models.BasicBlock, 0.5, (1, 2), marks=pytest.mark.slow)])
def test_inflated_network_gives_the_2d_logits_on_a_static_clip(block, alpha, octave_axes):
  model_2d = models.ResNet(block_cls=block, alpha=alpha, **_SMALL)
  model_3d = models.VideoResNet(block_cls=block, alpha=alpha, octave_axes=octave_axes,
                                time_kernels=((3,), (3,)), stem_time_kernel=5, **_SMALL)
  # 5 frames (odd, and fewer than the stem's reach of 2 on each side), odd spatial sizes.
  assert _inflation_gap(model_2d, model_3d, (2, 21, 18, 3), frames=5) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["oct_i3d_resnet50", "oct_c2d_resnet50"])
@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_inflated_oct_resnet50_gives_the_2d_logits(name, alpha):
  gap = _inflation_gap(models.oct_resnet50(alpha=alpha), models.get_model(name, alpha=alpha, num_classes=1000),
                       (1, 64, 64, 3), frames=4)
  assert gap <= 1e-5


def test_inflate_reports_every_mismatch():
  variables = {"params": {"a": {"kernel": np.ones((3, 3, 2, 4))}, "b": {"bias": np.ones(4)}}}
  target = {"params": {"a": {"kernel": np.ones((3, 3, 3, 2, 5))}, "c": {"bias": np.ones(4)}}}
  with pytest.raises(ValueError) as info:
    convert.inflate(variables, target)
  message = str(info.value)
  for part in ("3 variable(s)", "params/c/bias", "params/b/bias", "params/a/kernel: 2-D shape (3, 3, 2, 4)"):
    assert part in message


def test_time_padding_repeats_the_edge_frames():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1, 4, 3, 3, 2)).astype(np.float32)
  kernel = rng.standard_normal((3, 1, 1, 2, 1)).astype(np.float32)
  conv = models.video.replicate_time_padding(lambda *a: pytest.fail("a 3-tap time kernel must not reach conv_fn"))
  y = np.asarray(conv(jnp.asarray(x), jnp.asarray(kernel)))
  padded = np.concatenate([x[:, :1], x, x[:, -1:]], axis=1).astype(np.float64)
  expected = sum(np.einsum("nthwc,co->nthwo", padded[:, i:i + 4], kernel[i, 0, 0]) for i in range(3))
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


# The paper's Table 8 (Kinetics-400, ResNet-50, 8 x 224 x 224 clips): GFLOPs (= GMACs).
PAPER_GMACS = {("oct_i3d_resnet50", 0.0): 28.1, ("oct_i3d_resnet50", 0.1): 25.6,
               ("oct_i3d_resnet50", 0.2): 22.1, ("oct_c2d_resnet50", 0.0): 19.3,
               ("oct_c2d_resnet50", 0.1): 17.4}


@pytest.mark.slow  # about 4 s: traces four Oct-ResNet-50-sized video networks
def test_video_macs_are_the_2d_layers_times_frames_and_time_taps():
  # With a spatial octave every 3-D layer costs (frames it runs on) x (time taps) x its 2-D
  # cost, the head once per clip: a closed form from the 2-D Oct-ResNet-50's own layers.
  alpha = 0.1
  layers_2d = {layer.name: layer.macs for layer in cost.analyze(
      models.oct_resnet50(alpha=alpha, num_classes=400), (1, 224, 224, 3)).layers}
  for name, kernels, stem_t in (("oct_i3d_resnet50", models.video.I3D_TIME_KERNELS, 5),
                                ("oct_c2d_resnet50", models.video.C2D_TIME_KERNELS, 1)):
    expected = 0
    for layer, macs in layers_2d.items():
      if layer == "stem_conv":
        expected += 8 * stem_t * macs
      elif layer.startswith("stage"):
        stage, block = int(layer[5]) - 1, int(layer.split("_block")[1].split("/")[0])
        taps = kernels[stage][block] if "/conv1/" in layer else 1
        expected += (8 if stage == 0 else 4) * taps * macs
      else:
        expected += macs  # the classifier
    report = cost.analyze(models.get_model(name, alpha=alpha), (1, 8, 224, 224, 3))
    assert report.macs == expected, name
    assert round(report.gmacs, 4) == {"oct_i3d_resnet50": 25.7808, "oct_c2d_resnet50": 17.5059}[name]
    assert abs(report.gmacs - PAPER_GMACS[name, alpha]) / PAPER_GMACS[name, alpha] < 0.015


def test_video_macs_with_time_an_octave_axis():
  # Time halved too: the low part's cost falls by another 2 (paper's alpha .2 row: 22.1).
  with execution.use_form(execution.REFERENCE):  # analyze counts the equations as written in any form
    report = cost.analyze(models.oct_i3d_resnet50(alpha=0.2, octave_axes=(0, 1, 2)), (1, 8, 224, 224, 3))
  assert round(report.gmacs, 4) == 22.3075


@pytest.mark.slow  # inits two video ResNet-50s
def test_video_models_have_the_2d_parameter_count():
  for name in ("oct_i3d_resnet50", "oct_c2d_resnet50"):
    variables = _abstract_init(models.get_model(name, alpha=0.5), (1, 4, 32, 32, 3))
    params = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables["params"]))
    r50 = 25_557_032 - 2048 * 600 - 600  # ResNet-50 with a 400-class head
    # I3D adds four time taps to the stem (5 x 7 x 7) and two to each inflated 1x1 conv.
    inflated = 0 if name == "oct_c2d_resnet50" else 4 * 7 * 7 * 3 * 64 + 2 * sum(
        c_in * w for c_in, w in [(64, 64), (256, 64), (256, 64), (256, 128), (512, 128),
                                 (512, 256), (1024, 256), (1024, 256), (2048, 512)])
    assert params == r50 + inflated, name


def test_video_features_and_shapes():
  model = models.oct_i3d_tiny(alpha=0.25)
  variables = _abstract_init(model, (2, 8, 32, 32, 1))
  features = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, return_features=True), variables,
                            jax.ShapeDtypeStruct((2, 8, 33, 31, 1), jnp.float32))
  assert features["strides"] == {"stem": (1, 2, 2), "stage1": (1, 4, 4), "stage2": (2, 8, 8),
                                 "stage3": (2, 16, 16)}
  chex.assert_shape([features["stage1"].high, features["stage1"].low], [(2, 8, 9, 8, 12), (2, 8, 5, 4, 4)])
  chex.assert_shape([features["stage2"].high, features["stage2"].low], [(2, 4, 5, 4, 24), (2, 4, 3, 2, 8)])
  assert features["stage3"].low is None


@pytest.mark.parametrize("make, argument", [
    (lambda: models.oct_i3d_resnet50(octave_axes=(3,)), "octave_axes"),
    (lambda: models.oct_i3d_resnet50(octave_axes=(1, 1)), "octave_axes"),
    (lambda: models.oct_i3d_resnet50(stem_time_kernel=4), "time kernels"),
    (lambda: models.oct_i3d_resnet50(time_kernels=((3,),)), "time_kernels"),
])
def test_bad_video_arguments_name_themselves(make, argument):
  with pytest.raises(ValueError, match=argument):
    make()


def test_video_model_rejects_images():
  model = models.oct_i3d_tiny()
  with pytest.raises(ValueError, match=r"clips \[N, T, H, W, C\]"):
    model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)), train=False)


@pytest.mark.slow
def test_trainer_runs_oct_i3d_on_moving_fashion_mnist(tmp_path):
  from octflax import training
  _write_fashion_mnist(tmp_path, 64, splits=("train", "test"))
  config = training.default_config()
  config.model.name, config.model.alpha = "oct_i3d_tiny", 0.25
  config.data.name, config.data.dir = "moving_fashion_mnist", str(tmp_path)
  config.batch_size, config.num_epochs, config.progress_bar = 16, 1, False
  summary = training.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["steps"] == 4 and 0.0 <= summary["test_accuracy"] <= 1.0
  assert summary["gmacs_per_image"] == pytest.approx(11.134464e-3)  # per 8 x 32 x 32 clip
