"""Import of PyTorch weights (`octflax.convert`) and the convert / evaluate commands.

State_dict-only tests run everywhere: the key listing of the PyTorch port's Oct-ResNets
and of torchvision's ResNets (generated here from the networks' structure and checked
against the port's published Oct-ResNet-50 listing), round trips and every import error.
With torch installed, a PyTorch Oct-ResNet-50 (alpha .5, the port's module structure,
written here from docs/design.md's equations) and a torchvision-layout ResNet-50 are imported
and must give the same logits as octflax to 1e-4.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import octflax.checkpoint
import octflax.errors
from octflax import convert, execution, models, training
from octflax.checkpoint import format2
from octflax.layers import octave_layers

# The PyTorch port's published Oct-ResNet-50 (alpha 0.5) state_dict listing: key and shape a line.
REFERENCE = Path(__file__).resolve().parent / "data" / "pytorch_port_oct_resnet50_state_dict.txt"

from benchmarks import torch_reference as ref  # noqa: E402

torch = ref.torch
if torch is not None:
  from torch import nn as tnn

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


@pytest.fixture(autouse=True)
def reference_form(request):
  """The conversions trace a model only for its variables, which every execution form shares: in the
  reference form that trace holds one branch per layer, in the default form one per platform. The slow
  tests, which run the networks, keep the default form."""
  if request.node.get_closest_marker("slow"):
    yield
    return
  with execution.use_form(execution.REFERENCE):
    yield

# ----------------------------------------------------------------------------- key listings
# Written from the networks' structure, independently of octflax.convert.


def _bn(prefix: str, channels: int) -> dict:
  return {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,),
          f"{prefix}.running_mean": (channels,), f"{prefix}.running_var": (channels,),
          f"{prefix}.num_batches_tracked": ()}


def port_shapes(arch: str, alpha: float, num_classes: int = 1000) -> dict:
  """The PyTorch port's state_dict: key -> shape, in the port's order."""
  shapes = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}

  def unit(prefix, c_in, c_out, k, a_in, a_out):
    in_h, in_l = ref.split(c_in, a_in)
    out_h, out_l = ref.split(c_out, a_out)
    for path, i, o in (("l2l", in_l, out_l), ("l2h", in_l, out_h), ("h2l", in_h, out_l),
                       ("h2h", in_h, out_h)):
      if i and o:
        shapes[f"{prefix}.conv.conv_{path}.weight"] = (o, i, k, k)
    if out_h:
      shapes.update(_bn(f"{prefix}.bn_h", out_h))
    if out_l:
      shapes.update(_bn(f"{prefix}.bn_l", out_l))

  for layer, index, c_in, width, out, _, a_in, a_out, down in ref.blocks(arch, alpha):
    p = f"layer{layer}.{index}"
    if ref.BOTTLENECK[arch]:
      unit(f"{p}.conv1", c_in, width, 1, a_in, a_out)
      unit(f"{p}.conv2", width, width, 3, a_out, a_out)
      unit(f"{p}.conv3", width, out, 1, a_out, a_out)
    else:
      unit(f"{p}.conv1", c_in, width, 3, a_in, a_out)
      unit(f"{p}.conv2", width, out, 3, a_out, a_out)
    if down:
      unit(f"{p}.downsample.0", c_in, out, 1, a_in, a_out)
  final = 2048 if ref.BOTTLENECK[arch] else 512
  shapes.update({"fc.weight": (num_classes, final), "fc.bias": (num_classes,)})
  return shapes


def torchvision_shapes(arch: str, num_classes: int = 1000) -> dict:
  """torchvision's ResNet state_dict: key -> shape, in torchvision's order."""
  shapes = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
  for layer, index, c_in, width, out, _, _, _, down in ref.blocks(arch, 0.0):
    p = f"layer{layer}.{index}"
    if ref.BOTTLENECK[arch]:
      convs = ((c_in, width, 1), (width, width, 3), (width, out, 1))
    else:
      convs = ((c_in, width, 3), (width, out, 3))
    for k, (i, o, size) in enumerate(convs, start=1):
      shapes[f"{p}.conv{k}.weight"] = (o, i, size, size)
      shapes.update(_bn(f"{p}.bn{k}", o))
    if down:
      shapes[f"{p}.downsample.0.weight"] = (out, c_in, 1, 1)
      shapes.update(_bn(f"{p}.downsample.1", out))
  final = 2048 if ref.BOTTLENECK[arch] else 512
  shapes.update({"fc.weight": (num_classes, final), "fc.bias": (num_classes,)})
  return shapes


def random_state_dict(shapes: dict, seed: int = 0) -> dict:
  """NumPy values for a key -> shape listing (positive variances, integer counters)."""
  rng = np.random.default_rng(seed)
  state = {}
  for key, shape in shapes.items():
    if key.endswith("num_batches_tracked"):
      state[key] = np.asarray(rng.integers(0, 1000), np.int64)
    elif key.endswith("running_var"):
      state[key] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    else:
      state[key] = rng.standard_normal(shape, dtype=np.float32)
  return state


def read_reference() -> dict:
  shapes = {}
  for line in REFERENCE.read_text().splitlines():
    if line.strip() and not line.startswith("#"):
      key, shape = line.split(" ", 1)
      shapes[key] = ast.literal_eval(shape.strip())
  return shapes


# ----------------------------------------------------------------------------- listings


def test_port_listing_equals_the_published_oct_resnet50():
  reference = read_reference()
  assert len(reference) == 654
  generated = port_shapes("oct_resnet50", 0.5)
  assert set(generated) == set(reference)
  assert generated == reference
  expected = convert.expected_state_dict_shapes("oct_resnet50", alpha=0.5, source="port")
  assert list(expected.items()) == list(reference.items())  # same keys, shapes and order


@pytest.mark.parametrize("arch,alpha", [("oct_resnet26", 0.5), ("oct_resnet26", 0.25),
                                        ("oct_resnet50", 0.0), ("oct_resnet18", 0.5)])
def test_port_listing(arch, alpha):
  expected = convert.expected_state_dict_shapes(arch, alpha=alpha, source="port", num_classes=10)
  assert list(expected.items()) == list(port_shapes(arch, alpha, 10).items())


@pytest.mark.parametrize("arch", ["oct_resnet18", "oct_resnet50"])
def test_torchvision_listing(arch):
  expected = convert.expected_state_dict_shapes(arch, source="torchvision")
  assert list(expected.items()) == list(torchvision_shapes(arch).items())
  assert len(expected) == {"oct_resnet18": 122, "oct_resnet50": 320}[arch]


# ----------------------------------------------------------------------------- conversion


def _flat(tree, prefix=()):
  for name, value in tree.items():
    if isinstance(value, dict):
      yield from _flat(value, prefix + (name,))
    else:
      yield prefix + (name,), value


def _assert_trees_equal(a, b):
  a, b = dict(_flat(a)), dict(_flat(b))
  assert set(a) == set(b)
  for key in a:
    np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg="/".join(key))


def test_import_places_every_tensor():
  sd = random_state_dict(port_shapes("oct_resnet26", 0.5, 10))
  variables = convert.from_torch_state_dict(sd, arch="oct_resnet26", alpha=0.5)  # layout detected
  params, stats = variables["params"], variables["batch_stats"]
  hwio = lambda w: np.transpose(w, (2, 3, 1, 0))
  # The port's convolutions per path and BatchNorms per part are blocks and slices of the one
  # kernel and BatchNorm of each unit (format2.split gives that view; test_checkpoint pins it).
  layers = octave_layers(convert.model_for("oct_resnet26", 0.5, "port", num_classes=10), jnp.zeros((1, 64, 64, 3)),
                         train=False)
  params, stats = format2.split(params, layers), format2.split(stats, layers)
  assert params["stage1_block1"]["conv2"]["conv"]["h2l"]["kernel"].shape == (3, 3, 32, 32)
  checks = [
      (params["stem_conv"]["kernel"], hwio(sd["conv1.weight"])),
      (params["stem_bn"]["scale"], sd["bn1.weight"]),
      (stats["stem_bn"]["var"], sd["bn1.running_var"]),
      (params["stage1_block0"]["conv1"]["conv"]["h2l"]["kernel"], hwio(sd["layer1.0.conv1.conv.conv_h2l.weight"])),
      (params["stage1_block1"]["conv2"]["conv"]["l2h"]["kernel"], hwio(sd["layer1.1.conv2.conv.conv_l2h.weight"])),
      (params["stage1_block1"]["conv2"]["conv"]["h2l"]["kernel"], hwio(sd["layer1.1.conv2.conv.conv_h2l.weight"])),
      (params["stage2_block0"]["shortcut"]["conv"]["l2l"]["kernel"],
       hwio(sd["layer2.0.downsample.0.conv.conv_l2l.weight"])),
      (params["stage2_block0"]["shortcut"]["bn"]["low"]["bias"], sd["layer2.0.downsample.0.bn_l.bias"]),
      (stats["stage3_block1"]["conv3"]["bn"]["low"]["mean"], sd["layer3.1.conv3.bn_l.running_mean"]),
      (stats["stage4_block0"]["conv1"]["bn"]["high"]["var"], sd["layer4.0.conv1.bn_h.running_var"]),
      (params["stage4_block0"]["conv1"]["conv"]["l2h"]["kernel"], hwio(sd["layer4.0.conv1.conv.conv_l2h.weight"])),
      (params["head"]["fc"]["kernel"], sd["fc.weight"].T),
      (params["head"]["fc"]["bias"], sd["fc.bias"]),
  ]
  for got, want in checks:
    np.testing.assert_array_equal(np.asarray(got), want)
  # The variables have exactly the model's structure (num_classes read from fc.weight).
  model = convert.model_for("oct_resnet26", 0.5, "port", num_classes=10)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
  assert jax.tree.map(lambda a: (a.shape, a.dtype), dict(abstract)) == \
      jax.tree.map(lambda a: (a.shape, a.dtype), variables)


@pytest.mark.parametrize("arch,alpha,source", [("oct_resnet26", 0.5, "port"),
                                               ("oct_resnet18", 0.0, "torchvision")])
def test_round_trips(arch, alpha, source):
  shapes = (port_shapes(arch, alpha, 10) if source == "port" else torchvision_shapes(arch, 10))
  sd = random_state_dict(shapes, seed=1)
  variables = convert.from_torch_state_dict(sd, arch=arch, alpha=alpha, source=source)
  back = convert.to_torch_state_dict(variables, arch=arch, alpha=alpha, source=source)
  assert list(back) == list(shapes)
  for key, value in sd.items():
    if key.endswith("num_batches_tracked"):
      assert back[key].shape == () and back[key].dtype == np.int64  # the counter is not kept
    else:
      np.testing.assert_array_equal(back[key], value, err_msg=key)
  # octflax -> torch -> octflax gives identical variables.
  rng = np.random.default_rng(2)
  fresh = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(np.float32), variables)
  again = convert.from_torch_state_dict(
      convert.to_torch_state_dict(fresh, arch=arch, alpha=alpha, source=source),
      arch=arch, alpha=alpha, source=source)
  _assert_trees_equal(again, fresh)


def test_conv_and_dense_layouts_are_pytorch_s_and_invert():
  kernel = np.arange(3 * 5 * 2 * 4, dtype=np.float32).reshape(3, 5, 2, 4)  # [kh, kw, in, out]
  torch_kernel = convert._to_torch_layout("conv", kernel)
  assert torch_kernel.shape == convert._torch_shape("conv", kernel.shape) == (4, 2, 3, 5)
  assert torch_kernel[3, 1, 2, 4] == kernel[2, 4, 1, 3]  # [out, in, kh, kw]
  np.testing.assert_array_equal(convert._to_flax_layout("conv", torch_kernel), kernel)
  dense = np.arange(6, dtype=np.float32).reshape(2, 3)  # [in, out]
  assert convert._torch_shape("dense", dense.shape) == (3, 2)
  np.testing.assert_array_equal(convert._to_torch_layout("dense", dense), dense.T)
  np.testing.assert_array_equal(convert._to_flax_layout("dense", dense.T), dense)
  vector = np.arange(4.0)
  assert convert._to_flax_layout("vector", vector) is vector
  assert convert._torch_shape("vector", (4,)) == (4,)


def test_num_batches_tracked_is_optional():
  sd = random_state_dict(port_shapes("oct_resnet26", 0.5))
  sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
  variables = convert.from_torch_state_dict(sd, arch="oct_resnet26", alpha=0.5, source="port")
  assert variables["params"]["head"]["fc"]["kernel"].shape == (2048, 1000)


def test_errors_list_every_problem_at_once():
  shapes = port_shapes("oct_resnet26", 0.5)
  sd = random_state_dict(shapes)
  del sd["layer2.1.conv2.conv.conv_h2l.weight"]
  del sd["layer4.0.downsample.0.bn_h.running_var"]
  sd["layer1.0.conv1.conv.conv_l2l.weight"] = np.zeros((32, 32, 1, 1), np.float32)
  sd["extra.thing"] = np.zeros(3, np.float32)
  sd["layer3.0.conv2.conv.conv_h2h.weight"] = np.zeros((128, 128, 1, 1), np.float32)
  sd["layer1.1.conv1.bn_l.running_mean"] = np.zeros(31, np.float32)
  sd["bn1.num_batches_tracked"] = np.zeros(3, np.int64)
  with pytest.raises(ValueError) as info:
    convert.from_torch_state_dict(sd, arch="oct_resnet26", alpha=0.5, source="port")
  message = str(info.value)
  assert "2 missing, 2 unexpected, 3 of the wrong shape" in message
  for line in [
      "missing key: layer2.1.conv2.conv.conv_h2l.weight (expected shape (64, 64, 3, 3))",
      "missing key: layer4.0.downsample.0.bn_h.running_var (expected shape (2048,))",
      "unexpected key: layer1.0.conv1.conv.conv_l2l.weight (got shape (32, 32, 1, 1))",
      "unexpected key: extra.thing (got shape (3,))",
      "wrong shape: layer3.0.conv2.conv.conv_h2h.weight (expected shape (128, 128, 3, 3), got shape (128, 128, 1, 1))",
      "wrong shape: layer1.1.conv1.bn_l.running_mean (expected shape (32,), got shape (31,))",
      "wrong shape: bn1.num_batches_tracked (expected shape (), got shape (3,))",
  ]:
    assert line in message
  assert len(message.splitlines()) == 1 + 7


def test_wrong_alpha_or_layout_is_reported():
  sd = random_state_dict(port_shapes("oct_resnet26", 0.5))
  with pytest.raises(ValueError, match=r"0 missing, 0 unexpected, \d+ of the wrong shape"):
    convert.from_torch_state_dict(sd, arch="oct_resnet26", alpha=0.25, source="port")
  with pytest.raises(ValueError, match=r"(?s)unexpected key: layer1.0.conv1.bn_l.weight.*wrong shape: "):
    convert.from_torch_state_dict(sd, arch="oct_resnet26", alpha=0.0, source="port")
  with pytest.raises(ValueError, match="missing key: layer1.0.bn1.weight"):
    convert.from_torch_state_dict(sd, arch="oct_resnet26", alpha=0.0, source="torchvision")
  with pytest.raises(ValueError, match="alpha must be 0"):
    convert.from_torch_state_dict(sd, arch="oct_resnet26", alpha=0.5, source="torchvision")
  with pytest.raises(ValueError, match="source must be one of"):
    convert.from_torch_state_dict(sd, arch="oct_resnet26", alpha=0.5, source="caffe")
  with pytest.raises(ValueError, match="cannot tell the state_dict's layout"):
    convert.from_torch_state_dict({"fc.weight": np.zeros((10, 2048))}, arch="oct_resnet26")
  with pytest.raises(ValueError, match="no PyTorch layout"):
    convert.from_torch_state_dict(sd, arch="oct_mobilenet_v1", alpha=0.5, source="port")
  with pytest.raises(ValueError, match="alpha"):
    convert.from_torch_state_dict(sd, arch="oct_resnet26", alpha=1.5, source="port")
  assert convert.detect_source(torchvision_shapes("oct_resnet18")) == "torchvision"
  assert convert.detect_source(port_shapes("oct_resnet26", 0.0)) == "port"


def test_to_torch_reports_bad_variables():
  variables = convert.from_torch_state_dict(
      random_state_dict(torchvision_shapes("oct_resnet18", 10)), arch="oct_resnet18")
  variables["params"]["stage1_block0"]["conv1"]["conv"]["kernel"] = np.zeros((1, 1, 64, 64))
  del variables["batch_stats"]["stem_bn"]["mean"]
  variables["params"]["extra"] = {"kernel": np.zeros(2)}
  with pytest.raises(ValueError) as info:
    convert.to_torch_state_dict(variables, arch="oct_resnet18", source="torchvision")
  message = str(info.value)
  assert "missing variable: batch_stats/stem_bn/mean (expected shape (64,))" in message
  assert ("wrong shape: params/stage1_block0/conv1/conv/kernel (expected shape (3, 3, 64, 64), "
          "got shape (1, 1, 64, 64))") in message
  assert "unexpected variable: params/extra/kernel" in message


def test_unwrap_state_dict():
  sd = {"conv1.weight": np.zeros(1), "fc.bias": np.zeros(2)}
  assert convert.unwrap_state_dict(sd) == sd
  wrapped = {"epoch": 3, "arch": "oct_resnet50", "state_dict": {"module." + k: v for k, v in sd.items()}}
  assert convert.unwrap_state_dict(wrapped) == sd
  with pytest.raises(ValueError, match="state_dict"):
    convert.unwrap_state_dict([1, 2])


def test_model_for():
  assert convert.model_for("oct_resnet50", 0.5).pool_stride
  tv = convert.model_for("oct_resnet50", 0.0, "torchvision", num_classes=10)
  assert not tv.pool_stride and tv.num_classes == 10
  with pytest.raises(ValueError, match="alpha must be 0"):
    convert.model_for("oct_resnet50", 0.5, "torchvision")


# ----------------------------------------------------------------------------- checkpoints


def _small_variables(arch="oct_resnet18", alpha=0.5, num_classes=10, seed=0):
  return convert.from_torch_state_dict(
      random_state_dict(port_shapes(arch, alpha, num_classes), seed), arch=arch, alpha=alpha,
      source="port")


def test_checkpoint_round_trip(tmp_path):
  variables = _small_variables()
  out = convert.save_checkpoint(tmp_path / "ckpt", variables, arch="oct_resnet18", alpha=0.5,
                                source="port")
  restored, meta = octflax.checkpoint.read_checkpoint(out)
  _assert_trees_equal(restored, variables)
  assert meta["source"] == "port" and meta["format"] == octflax.checkpoint.FORMAT
  # The trainer's format: what experiments.evaluate and --config.init_from read.
  assert meta["identity"] == {"model.name": "oct_resnet18", "model.alpha": 0.5, "model.overrides": {},
                              "data.name": "image_folder", "num_classes": 10, "image_shape": [224, 224, 3]}
  model, loaded = octflax.checkpoint.load_model(out)
  _assert_trees_equal(loaded, variables)
  assert (type(model).__name__, model.alpha, model.num_classes) == ("ResNet", 0.5, 10)
  logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 32, 32, 3)), train=False), loaded)
  assert logits.shape == (1, 10)
  tv = convert.save_checkpoint(tmp_path / "tv", convert.from_torch_state_dict(
      random_state_dict(torchvision_shapes("oct_resnet18", 10)), arch="oct_resnet18", source="torchvision"),
      arch="oct_resnet18", alpha=0.0, source="torchvision")
  assert octflax.checkpoint.read_checkpoint(tv)[1]["identity"]["model.overrides"] == {"pool_stride": False}
  assert octflax.checkpoint.load_model(tv)[0].pool_stride is False
  with pytest.raises(octflax.errors.CheckpointError, match="holds no octflax checkpoint"):
    octflax.checkpoint.read_checkpoint(tmp_path / "nothing")


def test_checkpoint_of_the_older_imported_layout_is_migrated_as_it_is_read(tmp_path):
  import orbax.checkpoint as ocp

  variables = _small_variables()
  old = tmp_path / "old"  # Written before the identity was stored: arch, alpha, num_classes, pool_stride.
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    checkpointer.save(old, args=ocp.args.Composite(
        state=ocp.args.StandardSave(variables),
        meta=ocp.args.JsonSave({"arch": "oct_resnet18", "alpha": 0.5, "num_classes": 10, "pool_stride": False,
                                "source": "torchvision"})))
  _, meta = octflax.checkpoint.read_checkpoint(old)
  assert meta["format"] == octflax.checkpoint.FORMAT
  assert meta["identity"] == {"model.name": "oct_resnet18", "model.alpha": 0.5, "model.overrides": {"pool_stride": False},
                              "data.name": "image_folder", "num_classes": 10, "image_shape": [224, 224, 3]}
  model, _ = octflax.checkpoint.load_model(old)
  assert model.pool_stride is False and model.alpha == 0.5


def test_training_checkpoint_without_a_format_loses_the_fuse_override_as_it_is_read(tmp_path):
  import orbax.checkpoint as ocp

  variables = _small_variables()
  # A training checkpoint written before meta.format: today's identity, with the execution choice `fuse`.
  identity = {"model.name": "oct_resnet18", "model.alpha": 0.5, "model.overrides": {"fuse": True, "pool_stride": False},
              "data.name": "image_folder", "num_classes": 10, "image_shape": [224, 224, 3]}
  old = tmp_path / "checkpoints" / "4"
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    checkpointer.save(old, args=ocp.args.Composite(
        state=ocp.args.StandardSave(variables),
        meta=ocp.args.JsonSave({"identity": identity, "config": {}, "step": 4})))
  _, meta = octflax.checkpoint.read_checkpoint(old)
  assert meta["format"] == octflax.checkpoint.FORMAT and meta["step"] == 4
  assert meta["identity"] == {**identity, "model.overrides": {"pool_stride": False}}
  model, _ = octflax.checkpoint.load_model(old)
  assert model.pool_stride is False and model.alpha == 0.5
  # A run with the same model (no fuse, which no longer exists) resumes it; another alpha is refused.
  same = octflax.checkpoint.ModelIdentity("oct_resnet18", 0.5, 10, (224, 224, 3), overrides={"pool_stride": False},
                                          data="image_folder")
  octflax.checkpoint.CheckpointStore(str(old.parent), identity=same).check_identity()
  other = dataclasses.replace(same, alpha=0.25)
  with pytest.raises(octflax.errors.CheckpointMismatchError, match="model.alpha"):
    octflax.checkpoint.CheckpointStore(str(old.parent), identity=other).check_identity()


def _write_image_folder(root: Path, per_class: int = 3) -> None:
  from PIL import Image

  rng = np.random.default_rng(0)
  for name in ("n01_b", "n00_a"):  # class index = sorted position: n00_a is class 0
    (root / name).mkdir(parents=True)
    for i in range(per_class):
      pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)  # 40 wide, 30 high
      Image.fromarray(pixels).save(root / name / f"img{i}.JPEG", quality=90)


@pytest.mark.slow  # converts and evaluates a network through the command
def test_evaluate_command_on_an_imported_checkpoint(tmp_path, capsys, monkeypatch):
  from experiments import evaluate

  variables = _small_variables()
  fc = variables["params"]["head"]["fc"]
  # A classifier that ignores the image: ranks 0 > 2 > 3 > 4 > 5 > ... > 1. Class 0
  # (folder n00_a) is top-1 and class 1 (n01_b) outside the top 5: top-1 = top-5 = 50%.
  bias = np.array([9, -9, 7, 6, 5, 4, 3, 2, 1, 0], np.float32)
  variables["params"]["head"]["fc"] = {"kernel": np.zeros_like(fc["kernel"]), "bias": bias}
  convert.save_checkpoint(tmp_path / "ckpt", variables, arch="oct_resnet18", alpha=0.5, source="port")
  _write_image_folder(tmp_path / "val")
  monkeypatch.chdir(tmp_path)  # Relative paths, as a user types them.
  argv = ["--checkpoint", "ckpt", "--data", "val", "--batch-size", "8", "--image-size", "32",
          "--json", "result.json"]
  assert evaluate.main(argv) == 0
  line = capsys.readouterr().out.strip().splitlines()[-1]
  assert line.startswith("oct_resnet18 a=0.5: top-1 50.00% top-5 50.00% on 6 images; ")
  result = json.loads((tmp_path / "result.json").read_text())
  assert result["examples"] == 6 and result["top1"] == 50.0 and result["top5"] == 50.0
  assert result["image_shape"] == [32, 32, 3] and result["num_classes"] == 10
  # A missing folder and a missing checkpoint: one line each, status 1.
  assert evaluate.main(["--checkpoint", "ckpt", "--data", "nothing"]) == 1
  assert capsys.readouterr().err.count("\n") == 1
  assert evaluate.main(["--checkpoint", "nothing", "--data", "val"]) == 1
  assert "holds no octflax checkpoint" in capsys.readouterr().err


def _randomise(model, seed):
  """Random weights and BatchNorm statistics that keep activations O(1) through 16 blocks."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, tnn.Conv2d):
        fan_in = module.weight[0].numel()
        module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
      elif isinstance(module, tnn.BatchNorm2d):
        n = module.num_features
        module.weight.copy_(torch.rand(n, generator=generator) * 0.6 + 0.2)
        module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
        module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
        module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
        module.num_batches_tracked.fill_(1234)
      elif isinstance(module, tnn.Linear):
        module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.05)
        module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
  return model.eval()


def _compare_logits(torch_model, arch, alpha, source, size=(65, 57), seed=0):
  images = torch.randn((2, 3) + size, generator=torch.Generator().manual_seed(seed))
  with torch.no_grad():
    want = torch_model(images).numpy()
  variables = convert.from_torch_state_dict(torch_model.state_dict(), arch=arch, alpha=alpha,
                                            source=source)
  model = convert.model_for(arch, alpha, source)
  got = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, jnp.asarray(images.permute(0, 2, 3, 1).numpy()))
  got = np.asarray(got)
  assert got.shape == want.shape == (2, 1000)
  assert np.abs(want).max() > 0.5  # the comparison is not between near-zero numbers
  difference = float(np.abs(got - want).max())
  print(f"{arch} alpha={alpha} {source}: max |logit difference| = {difference:.3g} "
        f"(logits up to {np.abs(want).max():.3g})")
  assert difference < 1e-4
  return difference


@pytest.mark.slow
@needs_torch
def test_port_oct_resnet50_logits_match_pytorch():
  torch_model = _randomise(ref.OctResNet("oct_resnet50", 0.5), seed=0)
  listing = {k: tuple(v.shape) for k, v in torch_model.state_dict().items()}
  assert list(listing.items()) == list(read_reference().items())
  _compare_logits(torch_model, "oct_resnet50", 0.5, "port")
  # The reverse conversion loads into the PyTorch model with strict key checking.
  variables = convert.from_torch_state_dict(torch_model.state_dict(), arch="oct_resnet50", alpha=0.5)
  back = convert.to_torch_state_dict(variables, arch="oct_resnet50", alpha=0.5, source="port")
  fresh = ref.OctResNet("oct_resnet50", 0.5)
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
  for key, value in torch_model.state_dict().items():
    if not key.endswith("num_batches_tracked"):
      assert torch.equal(fresh.state_dict()[key], value), key


@pytest.mark.slow
@needs_torch
def test_torchvision_resnet50_logits_match_pytorch():
  torch_model = _randomise(ref.TVResNet("oct_resnet50"), seed=1)
  listing = {k: tuple(v.shape) for k, v in torch_model.state_dict().items()}
  assert list(listing.items()) == list(torchvision_shapes("oct_resnet50").items())
  _compare_logits(torch_model, "oct_resnet50", 0.0, "torchvision")


@needs_torch
def test_convert_torch_command(tmp_path, capsys):
  from experiments import convert_torch

  sd = random_state_dict(port_shapes("oct_resnet18", 0.5, 10), seed=3)
  sd["layer1.0.conv1.bn_h.weight"] = sd["layer1.0.conv1.bn_h.weight"].astype(np.float16)
  checkpoint = {"epoch": 90, "arch": "oct_resnet18", "best_acc1": 70.0,
                "state_dict": {"module." + k: torch.from_numpy(v) for k, v in sd.items()}}
  path = tmp_path / "model_best.pth"
  torch.save(checkpoint, path)
  out = tmp_path / "converted"
  argv = [str(path), "--arch", "oct_resnet18", "--alpha", "0.5", "--out", str(out)]
  assert convert_torch.main(argv) == 0
  assert "source=port" in capsys.readouterr().out
  variables, meta = octflax.checkpoint.read_checkpoint(out)
  identity = meta["identity"]
  assert identity["model.name"] == "oct_resnet18" and identity["model.alpha"] == 0.5 and meta["source"] == "port"
  assert identity["num_classes"] == 10 and meta["converted_from"] == str(path)
  _assert_trees_equal(variables, convert.from_torch_state_dict(sd, arch="oct_resnet18", alpha=0.5))
  assert variables["params"]["stage1_block0"]["conv1"]["bn"]["high"]["scale"].dtype == np.float32
  assert identity["model.overrides"] == {}  # The port's layout: the zoo's pool_stride=True.
  # An existing checkpoint is kept unless --force; a wrong alpha is one error listing.
  assert convert_torch.main(argv) == 1
  assert "--force" in capsys.readouterr().err
  (tmp_path / "not_a_checkpoint").mkdir()
  (tmp_path / "not_a_checkpoint" / "notes.txt").write_text("mine")
  assert convert_torch.main(argv[:-1] + [str(tmp_path / "not_a_checkpoint"), "--force"]) == 1
  assert (tmp_path / "not_a_checkpoint" / "notes.txt").exists()
  assert convert_torch.main(argv + ["--force"]) == 0
  assert convert_torch.main([str(path), "--arch", "oct_resnet18", "--alpha", "0.25",
                             "--out", str(tmp_path / "other")]) == 1
  assert "wrong shape: " in capsys.readouterr().err
  assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_fine_tune_an_imported_oct_resnet_on_an_image_folder_with_other_classes(tmp_path, capsys):
  from test_training import write_image_folder

  sd = random_state_dict(port_shapes("oct_resnet26", 0.5, num_classes=10), seed=5)
  variables = convert.from_torch_state_dict(sd, arch="oct_resnet26", alpha=0.5, source="port")
  imported = convert.save_checkpoint(tmp_path / "imported", variables, arch="oct_resnet26", alpha=0.5)
  write_image_folder(tmp_path / "images", per_class=6)  # 3 classes (ant, bee, cat), train and val.

  config = training.default_config()
  config.model.name, config.model.alpha = "oct_resnet26", 0.5
  config.data.name, config.data.dir = "image_folder", str(tmp_path / "images")
  config.data.train_split, config.data.test_split = "train", "val"
  config.data.augment, config.data.image_size = "imagenet", 32
  config.batch_size, config.num_epochs, config.learning_rate = 8, 1, 1e-3
  config.progress_bar = False
  config.init_from = imported
  summary = training.train_and_evaluate(config, str(tmp_path / "run"))  # ResNet-26: ResNet-50's blocks, fewer.
  out = capsys.readouterr().out
  assert "init_from: the checkpoint has 10 classes, this run 3: params/head/fc/bias, params/head/fc/kernel " \
         "re-initialised." in out
  assert summary["steps"] == 18 // 8 and 0 <= summary["test_accuracy"] <= 1
  tuned, _ = octflax.checkpoint.read_checkpoint(str(tmp_path / "run"))
  assert tuned["params"]["head"]["fc"]["kernel"].shape == (2048, 3)
  # Two small steps from the imported weights: the stem moved, but little.
  stem, start = tuned["params"]["stem_conv"], variables["params"]["stem_conv"]
  difference = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), stem, start)
  assert 0 < max(jax.tree.leaves(difference)) < 0.1


@pytest.mark.slow  # initialises and runs a ResNet-18 (7 s on 2 cores)
def test_a_vanilla_resnet_starts_an_oct_resnet_at_any_alpha(tmp_path):
  """torchvision's ResNet-18 (alpha 0, strided convs) initialises Oct-ResNet-18 at alpha .5 as it is:
  the same variables, each OctConv's paths being blocks of the vanilla kernel."""
  sd = random_state_dict(torchvision_shapes("oct_resnet18", 10), seed=3)
  variables = convert.from_torch_state_dict(sd, arch="oct_resnet18", source="torchvision")
  path = convert.save_checkpoint(tmp_path / "resnet18", variables, arch="oct_resnet18", alpha=0.0,
                                 source="torchvision")
  model = models.get_model("oct_resnet18", alpha=0.5, num_classes=10)
  fresh = training.create_train_state(model, training.make_optimizer(0.1), seed=0, input_shape=(1, 32, 32, 3))
  loaded = training.state.init_from_checkpoint(fresh, path)
  for name, values in (("params", variables["params"]), ("batch_stats", variables["batch_stats"])):
    flat = jax.tree_util.tree_leaves_with_path(values)
    assert len(flat) == len(jax.tree.leaves(getattr(loaded, name)))
    for key_path, value in flat:
      got = loaded.params if name == "params" else loaded.batch_stats
      for key in key_path:
        got = got[key.key]
      np.testing.assert_array_equal(np.asarray(got), np.asarray(value), err_msg=jax.tree_util.keystr(key_path))
  logits = model.apply({"params": loaded.params, "batch_stats": loaded.batch_stats}, jnp.ones((1, 32, 32, 3)),
                       train=False)
  assert logits.shape == (1, 10) and bool(jnp.all(jnp.isfinite(logits)))
