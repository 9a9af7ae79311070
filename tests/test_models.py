"""The model zoo: registry, parameter counts, alpha placement, shapes, BatchNorm statistics, the layout
both front ends build from (octflax.models.structure).

Everything that only needs shapes is traced abstractly (`jax.eval_shape`), so no FLOPs are
spent and no parameters are drawn, and in the reference execution form (`reference_form`). Real forward passes use small nets or small inputs, with
parameters filled from the abstract tree by `_filled` (drawing every initialiser of a large
net would dominate the run time), under `jax.jit` (one compilation beats hundreds of eager
per-op compilations; conftest.py makes compiling cheap, and compiling, not running, is the cost).
"""

from __future__ import annotations

import functools
import inspect
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from octflax import OctConv, OctTensor, execution, models
from octflax.checkpoint import format2
from octflax.layers import octave_layers
from octflax.models import structure

PATHS = {"h2h", "h2l", "l2h", "l2l"}
R50_STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))  # (base width, blocks)

# Abstract traces run in the reference execution form, one convolution per path: the default form holds a
# branch per platform until it is lowered, so tracing it traces every platform's form of every layer. The
# shapes and variables are those of every form (test_execution pins that the forms compute the same);
# test_registry_builds_every_model traces each model in the default form.
reference_form = functools.partial(execution.use_form, execution.REFERENCE)


# ----------------------------------------------------------------------------- helpers


def _ceil_half(n: int) -> int:
  return -(-n // 2)


def _n_low(channels: int, alpha: float) -> int:
  """Low channels as the design states it (C_l = floor(a C)), recomputed here on purpose."""
  return math.floor(alpha * channels)


def _abstract(name: str, alpha: float, shape=(2, 32, 32, 3), form=execution.REFERENCE, **kwargs):
  """(logits ShapeDtypeStruct, abstract variables) of a registry model, traced once in ``form``.

  A ``num_classes`` equal to the model's default is dropped, so that the calls with and without
  it share one trace.
  """
  if kwargs.get("num_classes") == models.get_model(name).num_classes:
    del kwargs["num_classes"]
  return _abstract_traced(name, alpha, tuple(shape), form, **kwargs)


@functools.lru_cache(maxsize=None)
def _abstract_traced(name: str, alpha: float, shape: tuple[int, ...], form, **kwargs):
  model = models.get_model(name, alpha=alpha, **kwargs)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  with execution.use_form(form):
    return jax.eval_shape(lambda inp: model.init_with_output(jax.random.key(0), inp, train=False), x)


def _per_path_and_part(model, variables, shape):
  """``variables`` read as each OctConv's path kernels and each OctBatchNorm's parts (`format2.split`):
  where alpha places low parts shows there."""
  with reference_form():
    layers = octave_layers(model, np.zeros(shape, np.float32), train=False)
  return jax.eval_shape(lambda v: {c: format2.split(t, layers) for c, t in v.items()}, dict(variables))


def _abstract_paths(name: str, alpha: float, shape=(2, 32, 32, 3), **kwargs):
  """`_abstract`'s variables per path and part (`_per_path_and_part`)."""
  model = models.get_model(name, alpha=alpha, **kwargs)
  return _per_path_and_part(model, _abstract(name, alpha, shape, **kwargs)[1], shape)


def _num_params(variables) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables["params"]))


def _filled(abstract, seed: int = 0):
  """Concrete variables for an abstract tree: He-normal kernels, unit scales/variances, zero rest."""
  rng = np.random.default_rng(seed)

  def leaf(path, spec):
    name = path[-1].key
    if name == "kernel":
      fan_in = math.prod(spec.shape[:-1])
      kernel = rng.standard_normal(spec.shape, dtype=np.float32) * np.sqrt(2.0 / fan_in)
      return jax.device_put(kernel.astype(spec.dtype))
    if name in ("scale", "var"):
      return jax.device_put(np.ones(spec.shape, spec.dtype))
    return jax.device_put(np.zeros(spec.shape, spec.dtype))

  return jax.tree_util.tree_map_with_path(leaf, abstract)


def _conv_paths(params, prefix=()) -> dict[str, dict]:
  """'a/b/conv' -> {path: kernel shape} for every OctConv parameter dict in ``params``."""
  found = {}
  for key, value in params.items():
    if not isinstance(value, dict):
      continue
    if value and set(value) <= PATHS:
      found["/".join(prefix + (key,))] = {p: tuple(v["kernel"].shape) for p, v in value.items()}
    else:
      found.update(_conv_paths(value, prefix + (key,)))
  return found


def _spec(part):
  return None if part is None else jax.ShapeDtypeStruct(part.shape, part.dtype)


def _trace_octconvs(model, variables, shape):
  """Abstract forward; records (input, output) OctTensors of every OctConv and the head's input."""
  calls = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__":
      path = "/".join(context.module.path)
      if isinstance(context.module, OctConv):
        x = args[0] if isinstance(args[0], OctTensor) else OctTensor(args[0], None)
        calls[path] = (OctTensor(_spec(x.high), _spec(x.low)), OctTensor(_spec(out.high), _spec(out.low)))
      elif path == "head":
        calls[path] = args[0]
    return out

  def forward(v, inp):
    with nn.intercept_methods(record):
      return model.apply(v, inp, train=False)

  with reference_form():
    out = jax.eval_shape(forward, variables, jax.ShapeDtypeStruct(shape, jnp.float32))
  calls["head"] = OctTensor(_spec(calls["head"].high), _spec(calls["head"].low)) \
      if isinstance(calls["head"], OctTensor) else OctTensor(_spec(calls["head"]), None)
  return out, calls


def _resnet_params(stage_sizes, widths, expansion, stem, num_classes, stem_features=64,
                   groups=1, base_width=64, se=False) -> int:
  """Parameter count of a vanilla (torchvision-style, post-activation) ResNet, in closed form."""
  bn = lambda c: 2 * c
  if stem == "imagenet":
    total = 7 * 7 * 3 * stem_features + bn(stem_features)
  else:
    total = 3 * 3 * 3 * stem_features + bn(stem_features)
  c_in = stem_features
  for stage, (n, w) in enumerate(zip(stage_sizes, widths)):
    for block in range(n):
      stride = 2 if stage > 0 and block == 0 else 1
      out = w * expansion
      if expansion == 4:
        mid = int(w * base_width / 64) * groups
        total += c_in * mid + bn(mid) + 9 * mid * mid // groups + bn(mid) + mid * out + bn(out)
        if se:
          r = out // 16
          total += out * r + r + r * out + out
      else:
        total += 9 * c_in * out + bn(out) + 9 * out * out + bn(out)
      if stride != 1 or c_in != out:
        total += c_in * out + bn(out)
      c_in = out
  return total + c_in * num_classes + num_classes


def _wrn_params(depth: int, k: int, num_classes: int) -> int:
  """Parameter count of WRN-depth-k (pre-activation, no conv biases), in closed form."""
  n = (depth - 4) // 6
  total, c_in = 3 * 3 * 3 * 16, 16
  for stage, w in enumerate((16 * k, 32 * k, 64 * k)):
    for block in range(n):
      total += 2 * c_in + 9 * c_in * w + 2 * w + 9 * w * w
      if c_in != w or (stage > 0 and block == 0):
        total += c_in * w
      c_in = w
  return total + 2 * c_in + c_in * num_classes + num_classes


# ----------------------------------------------------------------------------- registry


def test_list_models_is_sorted_and_complete():
  names = models.list_models()
  assert names == sorted(names)
  for expected in ("oct_resnet18", "oct_resnet26", "oct_resnet50", "oct_resnet101", "oct_resnet152",
                   "oct_resnet200", "oct_resnext50_32x4d", "oct_se_resnet50", "oct_resnet20",
                   "oct_wrn_16_4", "oct_wrn_28_10", "oct_mobilenet_v1", "oct_mobilenet_v2",
                   "oct_i3d_resnet50", "oct_c2d_resnet50", "oct_i3d_tiny"):
    assert expected in names


_DEEP = ("oct_resnet101", "oct_resnet152", "oct_resnet200", "oct_resnext101_32x4d")
# Deeper or wider instances of a definition the default run already builds (slow marker).
_SAME_DEFINITION = _DEEP + ("oct_resnet26", "oct_resnet34", "oct_resnet32", "oct_resnet56", "oct_wrn_16_8",
                            "oct_wrn_28_10", "oct_c2d_resnet50", "oct_i3d_resnet50")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _SAME_DEFINITION else n
                                  for n in models.list_models()])
def test_registry_builds_every_model(name):
  video = isinstance(models.get_model(name), models.VideoResNet)
  logits, variables = _abstract(name, 0.5, shape=(2, 4, 32, 32, 3) if video else (2, 32, 32, 3),
                                form=None, num_classes=10)  # the default form: every platform's
  chex.assert_shape(logits, (2, 10))
  assert logits.dtype == jnp.float32
  assert _num_params(variables) > 0
  assert "batch_stats" in variables


def test_unknown_model_lists_the_names():
  with pytest.raises(ValueError) as info:
    models.get_model("nope")
  message = str(info.value)
  assert "'nope'" in message
  for name in models.list_models():
    assert name in message


@pytest.mark.parametrize("make, argument", [
    (lambda: models.get_model("oct_resnet50", alpha=1.5), "alpha"),
    (lambda: models.get_model("oct_resnet50", alpha=-0.1), "alpha"),
    (lambda: models.get_model("oct_mobilenet_v1", alpha=1.5), "alpha"),
    (lambda: models.get_model("oct_wrn_16_4", alpha=1.5), "alpha"),
    (lambda: models.get_model("oct_resnet50", num_classes=0), "num_classes"),
    (lambda: models.get_model("oct_resnet20", num_classes=0), "num_classes"),
    (lambda: models.get_model("oct_mobilenet_v2", num_classes=0), "num_classes"),
    (lambda: models.WideResNet(depth=15), "depth"),
    (lambda: models.get_model("oct_mobilenet_v1", width_multiplier=0.0), "width_multiplier"),
])
def test_invalid_arguments_raise_value_error_naming_them(make, argument):
  with pytest.raises(ValueError, match=argument):
    make()


_SETTINGS = ("num_classes", "alpha", "dtype", "momentum", "epsilon", "axis_name")


@pytest.mark.parametrize("cls, num_classes", [
    (models.ResNet, 1000), (models.WideResNet, 10), (models.MobileNetV1, 1000),
    (models.MobileNetV2, 1000), (models.VideoResNet, 400)])
def test_network_settings_are_keyword_only_with_shared_defaults(cls, num_classes):
  parameters = inspect.signature(cls.__init__).parameters
  assert [p for p in parameters if parameters[p].kind is inspect.Parameter.KEYWORD_ONLY] == list(_SETTINGS)
  defaults = {p: parameters[p].default for p in _SETTINGS}
  assert defaults == dict(num_classes=num_classes, alpha=0.0, dtype=jnp.float32, momentum=0.9,
                          epsilon=1e-5, axis_name=None)


def test_every_zoo_network_checks_num_classes_and_alpha_at_construction():
  # Only octflax's own networks: other tests register small models of their own.
  zoo = [name for name in models.list_models() if type(models.get_model(name)).__module__.startswith("octflax.")]
  assert len(zoo) >= 20
  for name in zoo:
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
      models.get_model(name, num_classes=0)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\].*got 1.5"):
      models.get_model(name, alpha=1.5)
    with pytest.raises(ValueError, match="num_classes"):
      models.get_model(name).clone(num_classes=2.5)


# ----------------------------------------------------------------------------- parameter counts


def test_resnet50_params_equal_torchvision_for_every_alpha():
  expected = _resnet_params((3, 4, 6, 3), (64, 128, 256, 512), 4, "imagenet", 1000)
  assert expected == 25_557_032  # torchvision's and Flax's ResNet-50
  for alpha in (0.0, 0.5):
    assert _num_params(_abstract("oct_resnet50", alpha)[1]) == expected


@pytest.mark.parametrize("name, kwargs, published", [
    ("oct_resnet18", dict(stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512), expansion=1,
                          stem="imagenet", num_classes=1000), 11_689_512),
    ("oct_resnet34", dict(stage_sizes=(3, 4, 6, 3), widths=(64, 128, 256, 512), expansion=1,
                          stem="imagenet", num_classes=1000), 21_797_672),
    ("oct_resnext50_32x4d", dict(stage_sizes=(3, 4, 6, 3), widths=(64, 128, 256, 512), expansion=4,
                                 stem="imagenet", num_classes=1000, groups=32, base_width=4), 25_028_904),
    ("oct_resnet20", dict(stage_sizes=(3, 3, 3), widths=(16, 32, 64), expansion=1, stem="cifar",
                          stem_features=16, num_classes=10), 272_474),
])
def test_param_counts_match_the_closed_form_and_torchvision(name, kwargs, published):
  num_classes = kwargs["num_classes"]
  assert _resnet_params(**kwargs) == published
  for alpha in (0.0, 0.5):
    assert _num_params(_abstract(name, alpha, num_classes=num_classes)[1]) == published


@pytest.mark.slow  # two ResNet-50 inits
def test_se_resnet50_adds_exactly_the_squeeze_excite_parameters():
  r50 = _num_params(_abstract("oct_resnet50", 0.5)[1])
  se = _num_params(_abstract("oct_se_resnet50", 0.5)[1])
  # Each bottleneck output of C channels gets Dense(C -> C/16) and Dense(C/16 -> C) with biases.
  added = sum(n * (c * (c // 16) + c // 16 + (c // 16) * c + c)
              for c, n in ((256, 3), (512, 4), (1024, 6), (2048, 3)))
  assert added == 2_530_992
  assert se - r50 == added
  assert se == 28_088_024  # SE-ResNet-50 (Hu et al.)
  assert _num_params(_abstract("oct_se_resnet50", 0.0)[1]) == se


@pytest.mark.parametrize("name, depth, k, published_millions", [
    ("oct_wrn_16_4", 16, 4, 2.7), ("oct_wrn_28_10", 28, 10, 36.5)])
def test_wide_resnet_param_counts(name, depth, k, published_millions):
  count = _num_params(_abstract(name, 0.5, num_classes=10)[1])
  assert count == _wrn_params(depth, k, 10)
  assert round(count / 1e6, 1) == published_millions  # Zagoruyko & Komodakis, Table 1


# ----------------------------------------------------------------------------- alpha placement


def _expected_r50_paths(stage: int, block: int, conv: str) -> set[str]:
  """Paths of every conv of Oct-ResNet-50 at alpha > 0 under the official placement."""
  everything = set(PATHS)
  if stage < 4:
    if stage == 1 and block == 0 and conv in ("conv1", "shortcut"):
      return {"h2h", "h2l"}  # converts in: alpha_in 0 -> alpha
    return everything
  if block == 0 and conv in ("conv1", "shortcut"):
    return {"h2h", "l2h"}  # converts back: alpha -> 0
  return {"h2h"}


def test_resnet50_alpha_placement():
  variables = _abstract_paths("oct_resnet50", 0.5)
  params = variables["params"]
  # Stem: a vanilla flax Conv and BatchNorm, not an OctConv.
  assert set(params["stem_conv"]) == {"kernel"}
  chex.assert_shape(params["stem_conv"]["kernel"], (7, 7, 3, 64))
  assert set(params["stem_bn"]) == {"scale", "bias"}
  convs = _conv_paths(params)
  assert len(convs) == 16 * 3 + 4  # three convs per block, four projection shortcuts
  for path, kernels in convs.items():
    match = re.fullmatch(r"stage(\d)_block(\d+)/(conv\d|shortcut)/conv", path)
    assert match, path
    stage, block, conv = int(match[1]), int(match[2]), match[3]
    assert set(kernels) == _expected_r50_paths(stage, block, conv), path
    block_name, unit = path.split("/")[:2]
    bn = params[block_name][unit]["bn"]
    has_low = bool({"h2l", "l2l"} & set(kernels))
    assert set(bn) == ({"high", "low"} if has_low else {"high"}), path
  # Classifier: the high part of the last stage (alpha 0), 2048 channels.
  chex.assert_shape(params["head"]["fc"]["kernel"], (2048, 1000))


@pytest.mark.parametrize("name", ["oct_resnet50", "oct_resnet20", "oct_wrn_16_4", "oct_mobilenet_v1",
                                  "oct_mobilenet_v2", "oct_resnext50_32x4d"])
def test_alpha_zero_has_only_high_to_high_paths(name):
  variables = _abstract_paths(name, 0.0)
  convs = _conv_paths(variables["params"])
  assert convs
  for path, kernels in convs.items():
    assert set(kernels) == {"h2h"}, path
  stats = jax.tree_util.tree_flatten_with_path(variables["batch_stats"])[0]
  assert not any(getattr(k, "key", None) == "low" for keypath, _ in stats for k in keypath)


@pytest.mark.parametrize("name, alpha", [("oct_wrn_16_4", 0.5), ("oct_resnet20", 0.25)])
def test_cifar_nets_alpha_placement(name, alpha):
  convs = _conv_paths(_abstract(name, alpha)[1]["params"])
  for path, kernels in convs.items():
    stage_block = re.match(r"stage(\d)_block(\d+)", path)
    if stage_block is None:  # the stem
      assert set(kernels) == {"h2h"}, path
      continue
    stage, block = int(stage_block[1]), int(stage_block[2])
    first_conv = path.split("/")[1] in ("conv1", "shortcut")
    if stage == 1 and block == 0 and first_conv:
      assert set(kernels) == {"h2h", "h2l"}, path
    elif stage == 3 and block == 0 and first_conv:
      assert set(kernels) == {"h2h", "l2h"}, path
    elif stage == 3:
      assert set(kernels) == {"h2h"}, path
    else:
      assert set(kernels) == PATHS, path


def test_resnext_grouped_kernel_shapes():
  alpha, groups = 0.5, 32
  convs = _conv_paths(_abstract_paths("oct_resnext50_32x4d", alpha)["params"])
  for stage, (base, _) in enumerate(R50_STAGES, start=1):
    width = base * 4 // 64 * groups  # 4 channels per group at base 64
    a = alpha if stage < 4 else 0.0
    c_l = _n_low(width, a)
    c_h = width - c_l
    kernels = convs[f"stage{stage}_block1/conv2/conv"]
    expected = {"h2h": (3, 3, c_h // groups, c_h)}
    if c_l:
      expected.update(h2l=(3, 3, c_h // groups, c_l), l2h=(3, 3, c_l // groups, c_h),
                      l2l=(3, 3, c_l // groups, c_l))
    assert kernels == expected, stage
    # Grouped paths keep the grouped vanilla conv's parameter count.
    assert sum(math.prod(s) for s in kernels.values()) == 9 * width * width // groups
  # The 1x1 convs are not grouped.
  assert convs["stage1_block1/conv1/conv"]["h2h"] == (1, 1, 128, 64)


@pytest.mark.parametrize("name", ["oct_mobilenet_v1", "oct_mobilenet_v2"])
def test_mobilenet_depthwise_has_only_intra_frequency_paths(name):
  convs = _conv_paths(_abstract_paths(name, 0.5)["params"])
  depthwise = {p: k for p, k in convs.items() if "depthwise" in p}
  assert depthwise
  octave = 0
  for path, kernels in depthwise.items():
    assert set(kernels) <= {"h2h", "l2l"}, path
    for kernel in kernels.values():
      assert kernel[:3] == (3, 3, 1), path
    octave += "l2l" in kernels
  assert octave > 0  # some depthwise convs do run on both parts
  if name == "oct_mobilenet_v1":
    k = convs["block1_depthwise/conv"]  # 64 channels at alpha .5
    assert k == {"h2h": (3, 3, 1, 32), "l2l": (3, 3, 1, 32)}
    assert set(convs["block0_depthwise/conv"]) == {"h2h"}  # after the vanilla stem
    assert set(convs["block12_depthwise/conv"]) == {"h2h"}  # the last stage is vanilla


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("height, width", [(224, 224), (225, 199)])
def test_resnet50_octave_shapes(height, width):
  alpha = 0.5
  model = models.oct_resnet50(alpha=alpha)
  variables = _abstract("oct_resnet50", alpha)[1]
  logits, calls = _trace_octconvs(model, variables, (1, height, width, 3))
  chex.assert_shape(logits, (1, 1000))
  # Stem: 7x7/2 conv then 3x3/2 max-pool (both SAME-like): ceil twice; each later stage halves (ceil).
  size = {1: (_ceil_half(_ceil_half(height)), _ceil_half(_ceil_half(width)))}
  for stage in (2, 3, 4):
    size[stage] = tuple(_ceil_half(s) for s in size[stage - 1])
  low = lambda hw: tuple(_ceil_half(s) for s in hw)
  for path, call in calls.items():
    if path == "head":
      continue
    x, y = call
    stage = int(path[len("stage")])
    at = stage - 1 if stage > 1 and path.endswith("_block0/conv1/conv") else stage  # stride on conv2
    channels = y.high.shape[-1] + (0 if y.low is None else y.low.shape[-1])
    a_out = alpha if stage < 4 else 0.0
    c_l = _n_low(channels, a_out)
    chex.assert_shape(y.high, (1, *size[at], channels - c_l))
    if c_l:
      chex.assert_shape(y.low, (1, *low(size[at]), c_l))
    else:
      assert y.low is None, path

  # One block in detail: the strided first block of stage 2 (from 57x50 to 29x25 at 225x199).
  h1, w1 = size[1]
  h2, w2 = size[2]
  x, y = calls["stage2_block0/conv1/conv"]
  chex.assert_shape([x.high, x.low], [(1, h1, w1, 128), (1, _ceil_half(h1), _ceil_half(w1), 128)])
  chex.assert_shape([y.high, y.low], [(1, h1, w1, 64), (1, _ceil_half(h1), _ceil_half(w1), 64)])
  x, y = calls["stage2_block0/conv2/conv"]  # carries the stride
  chex.assert_shape([y.high, y.low], [(1, h2, w2, 64), (1, _ceil_half(h2), _ceil_half(w2), 64)])
  x, y = calls["stage2_block0/conv3/conv"]
  chex.assert_shape([y.high, y.low], [(1, h2, w2, 256), (1, _ceil_half(h2), _ceil_half(w2), 256)])
  x, y = calls["stage2_block0/shortcut/conv"]
  chex.assert_shape([x.high, x.low], [(1, h1, w1, 128), (1, _ceil_half(h1), _ceil_half(w1), 128)])
  chex.assert_shape([y.high, y.low], [(1, h2, w2, 256), (1, _ceil_half(h2), _ceil_half(w2), 256)])
  # Converting back: the last stage's first block reads both parts and writes the high part only.
  x, y = calls["stage4_block0/conv1/conv"]
  chex.assert_shape([x.high, x.low], [(1, *size[3], 512), (1, *low(size[3]), 512)])
  chex.assert_shape(y.high, (1, *size[3], 512))
  assert y.low is None
  # The classifier sees the high part only.
  chex.assert_shape(calls["head"].high, (1, *size[4], 2048))
  assert calls["head"].low is None
  if (height, width) == (225, 199):
    assert (size[1], size[2], size[3], size[4]) == ((57, 50), (29, 25), (15, 13), (8, 7))


@pytest.mark.parametrize("name", [
    "oct_mobilenet_v1", "oct_mobilenet_v2",
    # The grouped ResNet-50 runs oct_resnet50's block code, whose odd-size shapes test_resnet50_octave_shapes pins.
    pytest.param("oct_resnext50_32x4d", marks=pytest.mark.slow)])
def test_odd_imagenet_size_forward_shape(name):
  model = models.get_model(name, alpha=0.5)
  variables = _abstract(name, 0.5)[1]
  with reference_form():
    logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                            jax.ShapeDtypeStruct((1, 225, 199, 3), jnp.float32))
  chex.assert_shape(logits, (1, 1000))


@pytest.mark.parametrize("name", ["oct_resnet20", "oct_wrn_16_4", "oct_resnet50"])
@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5])
def test_forward_shape_32x32(name, alpha):
  logits, _ = _abstract(name, alpha)  # the model's own classes: the traces of the tests above
  chex.assert_shape(logits, (2, models.get_model(name).num_classes))


def test_real_forward_small_net_odd_size():
  shape = (2, 27, 31, 3)
  model = models.oct_resnet20(alpha=0.5, num_classes=10)
  variables = _filled(_abstract("oct_resnet20", 0.5, num_classes=10)[1])  # the same variables at any size
  x = jax.device_put(np.random.default_rng(1).standard_normal(shape, dtype=np.float32))
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  chex.assert_shape(logits, (2, 10))
  chex.assert_tree_all_finite(logits)
  assert float(jnp.std(logits)) > 0


@pytest.mark.slow  # about 3 s: a ResNet-50 forward pass
def test_real_forward_resnet50_odd_size():
  shape = (1, 65, 57, 3)
  model = models.oct_resnet50(alpha=0.5)
  variables = _filled(_abstract("oct_resnet50", 0.5)[1])
  x = jax.device_put(np.random.default_rng(2).standard_normal(shape, dtype=np.float32))
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  chex.assert_shape(logits, (1, 1000))
  chex.assert_tree_all_finite(logits)
  assert float(jnp.std(logits)) > 0


# ----------------------------------------------------------------------------- training-mode state


def test_batch_stats_update_per_part():
  shape, momentum = (4, 28, 28, 3), 0.9
  model = models.oct_resnet20(alpha=0.5, num_classes=10)
  variables = _filled(_abstract("oct_resnet20", 0.5, num_classes=10)[1])
  x = jax.device_put(np.random.default_rng(3).standard_normal(shape, dtype=np.float32))
  block = "stage2_block1"

  def forward(v, x):
    return model.apply(v, x, train=True, mutable=["batch_stats", "intermediates"],
                       capture_intermediates=lambda mdl, method: (
                           method == "__call__" and isinstance(mdl, OctConv)
                           and mdl.path[:1] == (block,)))

  logits, updates = jax.jit(forward)(variables, x)
  chex.assert_shape(logits, (4, 10))
  chex.assert_tree_all_finite(logits)
  chex.assert_trees_all_equal_shapes(updates["batch_stats"], variables["batch_stats"])
  conv_out = updates["intermediates"][block]["conv1"]["conv"]["__call__"][0]
  chex.assert_shape(updates["batch_stats"][block]["conv1"]["bn"]["mean"], (32,))  # both parts' channels
  split = lambda stats: {part: {k: np.asarray(v)[sl] for k, v in stats.items()}
                         for part, sl in (("high", slice(0, 16)), ("low", slice(16, 32)))}
  old = split(variables["batch_stats"][block]["conv1"]["bn"])
  new = split(updates["batch_stats"][block]["conv1"]["bn"])
  for part in ("high", "low"):
    y = np.asarray(getattr(conv_out, part), np.float64)
    mean, var = y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2))
    assert not np.allclose(new[part]["mean"], old[part]["mean"])
    np.testing.assert_allclose(new[part]["mean"], momentum * old[part]["mean"] + (1 - momentum) * mean,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new[part]["var"], momentum * old[part]["var"] + (1 - momentum) * var,
                               rtol=1e-4, atol=1e-5)
  # The two parts have their own statistics (they see different maps).
  assert not np.allclose(new["high"]["mean"], new["low"]["mean"])


@pytest.mark.parametrize("block_cls, last, zero", [
    (models.Bottleneck, "conv3", True), (models.BasicBlock, "conv2", True),
    (models.BasicBlock, "conv2", False)])
def test_zero_init_residual_zeroes_the_last_bn_scale(block_cls, last, zero):
  model = models.ResNet(stage_sizes=(1, 1), block_cls=block_cls, widths=(8, 16), stem="cifar",
                        stem_features=8, alpha=0.5, num_classes=3, zero_init_residual=zero)
  x = jnp.zeros((1, 8, 8, 3))
  # An 'rbg' key: the same initialisers, far less to compile than threefry for a one-off init.
  key = jax.random.key(0, impl="rbg")
  params = jax.jit(lambda x: model.init(key, x, train=False))(x)["params"]
  params = format2.split(jax.tree.map(np.asarray, params), octave_layers(model, x, train=False))
  for block in ("stage1_block0", "stage2_block0"):
    units = params[block]
    assert last in units
    for unit in units:
      for part in ("high", "low"):
        if unit == "shortcut" or part not in units[unit]["bn"]:
          continue
        scale = np.asarray(units[unit]["bn"][part]["scale"])
        expected = 0.0 if (zero and unit == last) else 1.0
        assert np.all(scale == expected), (block, unit, part)
  assert set(params["stage1_block0"][last]["bn"]) == {"high", "low"}  # both parts zeroed at alpha .5


# ----------------------------------------------------------------------------- injected parts


def test_block_partial_keeps_groups_and_squeeze_excite():
  # A partial of Bottleneck is a block like any other: the network passes the same keywords
  # to every block, so what the partial binds (groups, SE) reaches the block.
  block = functools.partial(models.Bottleneck, groups=4, base_width=16, squeeze_excite=True)
  model = models.ResNet(stage_sizes=(1, 1), block_cls=block, widths=(8, 16), stem="cifar",
                        stem_features=8, alpha=0.5, num_classes=3)
  with reference_form():
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                               jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32))
  params = _per_path_and_part(model, variables, (1, 8, 8, 3))["params"]["stage1_block0"]
  width = int(8 * 16 / 64) * 4  # 8 channels, 4 groups of 2
  c_l = _n_low(width, 0.5)
  assert _conv_paths(params)["conv2/conv"] == {
      "h2h": (3, 3, (width - c_l) // 4, width - c_l), "h2l": (3, 3, (width - c_l) // 4, c_l),
      "l2h": (3, 3, c_l // 4, width - c_l), "l2l": (3, 3, c_l // 4, c_l)}
  chex.assert_shape([params["se"]["reduce"]["kernel"], params["se"]["expand"]["kernel"]],
                    [(32, 2), (2, 32)])


def test_block_options_live_only_in_the_block():
  # groups and SE are a block's attributes, bound into block_cls; the network has no copy
  # of them that a partial could silently bypass.
  with pytest.raises(TypeError, match="groups"):
    models.ResNet(stage_sizes=(1,), widths=(8,), block_cls=models.Bottleneck, groups=32)


def test_zoo_variants_are_partials_of_one_network():
  assert models.oct_resnext50_32x4d.func is models.ResNet
  assert models.oct_resnext50_32x4d.keywords["block_cls"].keywords == {"groups": 32, "base_width": 4}
  assert models.oct_se_resnet50.keywords["block_cls"].keywords == {"squeeze_excite": True}
  # Any attribute of the network can be overridden, the partial's own included.
  model = models.get_model("oct_resnet20", alpha=0.25, num_classes=7, stage_sizes=(1, 1, 1))
  assert (model.alpha, model.num_classes, tuple(model.stage_sizes)) == (0.25, 7, (1, 1, 1))


def test_structure_names_the_variables_of_both_zoos():
  layout = structure.resnet((1, 2), (4, 8), 0.5, stem="imagenet", stem_features=8, in_features=3, expansion=4,
                            num_classes=10, dtype=jnp.float32)
  names = [layer.name for layer in layout.layers()]
  assert names == ["stem_conv", "stem_bn", "stage1_block0", "stage2_block0", "stage2_block1", "head"]
  assert [b.alpha_out for stage in layout.stages for b in stage] == [0.5, 0.0, 0.0]
  assert [b.strides for stage in layout.stages for b in stage] == [1, 2, 1]
  block = structure.bottleneck(16, 8, 0.5, 0.0, strides=2, squeeze_excite=True)
  assert [layer.name for layer in block.layers()] == ["conv1", "conv2", "conv3", "se", "shortcut"]
  linen = models.get_model("oct_se_resnet50", alpha=0.5, num_classes=10).clone(stage_sizes=(1, 2), widths=(4, 8),
                                                                              stem_features=8)
  with reference_form():
    variables = jax.eval_shape(lambda: linen.init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32),
                                                  train=False))
  assert set(variables["params"]) == set(names)
  assert set(variables["params"]["stage2_block0"]) == {"conv1", "conv2", "conv3", "se", "shortcut"}


# ----------------------------------------------------------------------------- backbone features


_IMAGENET_STRIDES = {"stem": 2, "stage1": 4, "stage2": 8, "stage3": 16, "stage4": 32}
_CIFAR_STRIDES = {"stem": 1, "stage1": 1, "stage2": 2, "stage3": 4}
# One model per network definition and block kind (the deeper ones run the same code).
_FEATURE_STRIDES = {
    "oct_resnet18": _IMAGENET_STRIDES, "oct_resnet50": _IMAGENET_STRIDES,
    "oct_se_resnet50": _IMAGENET_STRIDES, "oct_resnext50_32x4d": _IMAGENET_STRIDES,
    "oct_resnet20": _CIFAR_STRIDES, "oct_wrn_16_4": _CIFAR_STRIDES,
    "oct_mobilenet_v1": _IMAGENET_STRIDES, "oct_mobilenet_v2": _IMAGENET_STRIDES,
}


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.slow) if name in ("oct_se_resnet50", "oct_resnext50_32x4d") else name
    for name in _FEATURE_STRIDES])  # the SE and grouped ResNet-50s run the same block code as oct_resnet50
def test_features_have_their_strides_and_octave_layout(name):
  shape = (2, 32, 32, 3)
  model = models.get_model(name, alpha=0.5, num_classes=10)
  variables = _abstract(name, 0.5, num_classes=10)[1]
  with reference_form():
    features = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, return_features=True),
                              variables, jax.ShapeDtypeStruct(shape, jnp.float32))
  strides = features.pop("strides")
  assert strides == {key: (s, s) for key, s in _FEATURE_STRIDES[name].items()}
  assert set(features) == set(strides)
  assert list(strides) == list(_FEATURE_STRIDES[name])  # network order (jax sorts dict keys)
  last = list(strides)[-1]
  for key, feature in features.items():
    assert isinstance(feature, OctTensor), key
    size = 32 // strides[key][0]
    chex.assert_shape(feature.high, (2, size, size, None))
    if feature.low is not None:
      chex.assert_shape(feature.low, (2, _ceil_half(size), _ceil_half(size), None))
  assert features[last].low is None  # the last stage is vanilla
  if name == "oct_resnet50":
    assert [features[k].channels for k in strides] == [64, 256, 512, 1024, 2048]
    assert [features[k].low_channels for k in strides] == [0, 128, 256, 512, 0]


def test_features_are_the_blocks_outputs_and_feed_the_classifier():
  shape = (2, 15, 17, 3)  # odd sizes: the low parts are ceil(n / 2)
  model = models.oct_resnet8(alpha=0.5)
  variables = _filled(_abstract("oct_resnet8", 0.5, num_classes=10)[1])
  x = jax.device_put(np.random.default_rng(4).standard_normal(shape, dtype=np.float32))

  def forward(v, x):
    logits, state = model.apply(v, x, train=False, mutable=["intermediates"],
                                capture_intermediates=lambda mdl, method: mdl.name == "stage2_block0")
    return logits, state["intermediates"]["stage2_block0"]["__call__"][0], model.apply(
        v, x, train=False, return_features=True)

  logits, block_out, features = jax.jit(forward)(variables, x)
  chex.assert_trees_all_equal(features["stage2"], block_out)
  chex.assert_shape([features["stage2"].high, features["stage2"].low], [(2, 8, 9, 16), (2, 4, 5, 16)])
  head = models.resnet.Classifier(10, name="head")
  np.testing.assert_allclose(head.apply({"params": variables["params"]["head"]}, features["stage3"]),
                             logits, rtol=1e-6, atol=1e-6)
  # One array per stage for necks that expect plain maps.
  merged = features["stage1"].merge()
  chex.assert_shape(merged, (2, 15, 17, 16))
  np.testing.assert_array_equal(merged[:, ::2, ::2, 8:], features["stage1"].low)


@functools.lru_cache(maxsize=None)
def _abstract_vanilla_resnet50():
  """The abstract variables of the nn.Conv ResNet-50 of benchmarks/networks.py, traced once."""
  from benchmarks.networks import vanilla_resnet50  # pylint: disable=g-import-not-at-top

  return jax.eval_shape(lambda x: vanilla_resnet50(1000, jnp.float32).init(jax.random.key(0), x, train=False),
                        jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_oct_resnet50_variables_are_the_vanilla_resnet50s(alpha):
  """One kernel per OctConv and one BatchNorm per OctBatchNorm: the tree of the nn.Conv ResNet-50, name for name."""
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)  # `_abstract`'s input: its trace of oct_resnet50 is reused
  ours = _abstract("oct_resnet50", alpha)[1]
  vanilla = _abstract_vanilla_resnet50()
  chex.assert_trees_all_equal_shapes_and_dtypes(ours, vanilla)
  assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(vanilla)
  # ... so the vanilla network's variables run the Oct-ResNet at this alpha as they are (shapes are all
  # that running them abstractly reads).
  with reference_form():
    logits = jax.eval_shape(lambda v, x: models.get_model("oct_resnet50", alpha=alpha, num_classes=1000).apply(
        v, x, train=False), vanilla, x)
  assert logits.shape == (2, 1000)
