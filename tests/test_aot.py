"""octflax.aot: compiling for a GPU or a TPU without one, the kernel census, and the trainer's --aot.

The census is pinned on hand-written optimized-HLO excerpts of the shapes XLA:GPU and the TPU
compiler write (cuDNN custom calls, loops, asynchronous collectives, memory-space transfers),
which need no plugin. The compiles for an H100 and a TPU slice need the plugins
(``pip install -e '.[aot]'``) and are skipped without them, saying so; they are slow tests
(``pytest -m slow tests/test_aot.py``, which CI runs on Python 3.12 with the plugins).
"""

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

from octflax import aot, execution, models
from octflax.aot import census, targets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_CUDA_PLUGIN = importlib.util.find_spec("jax_cuda12_plugin") is not None
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_cuda = pytest.mark.skipif(not HAS_CUDA_PLUGIN, reason="needs the CUDA plugin: pip install -e '.[aot]'")
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason="needs libtpu: pip install -e '.[aot]'")

GPU_HLO = """\
HloModule jit_step, entry_computation_layout={(f32[3,3,8,8]{3,2,1,0})->f32[]}

%fused_reduce (p0: f32[4,8]) -> f32[8] {
  %p0 = f32[4,8]{1,0} parameter(0)
  %c = f32[] constant(0)
  ROOT %r = f32[8]{0} reduce(%p0, %c), dimensions={0}, to_apply=%add
}

%fused_relu (p0: bf16[4,6,6,8]) -> bf16[4,6,6,8] {
  %p0 = bf16[4,6,6,8]{3,2,1,0} parameter(0)
  %z = bf16[] constant(0)
  %b = bf16[4,6,6,8]{3,2,1,0} broadcast(%z), dimensions={}
  ROOT %m = bf16[4,6,6,8]{3,2,1,0} maximum(%p0, %b)
}

%fused_transpose (p0: f32[3,3,8,8]) -> bf16[8,3,3,8] {
  %p0 = f32[3,3,8,8]{3,2,1,0} parameter(0)
  %t = f32[8,3,3,8]{3,2,1,0} transpose(%p0), dimensions={3,0,1,2}
  ROOT %cv = bf16[8,3,3,8]{3,2,1,0} convert(%t)
}

%fused_concat (p0: f32[4], p1: f32[4]) -> f32[8] {
  %p0 = f32[4]{0} parameter(0)
  %p1 = f32[4]{0} parameter(1)
  ROOT %cc = f32[8]{0} concatenate(%p0, %p1), dimensions={0}
}

%body (arg: (s32[], f32[8])) -> (s32[], f32[8]) {
  %arg = (s32[], f32[8]{0}) parameter(0)
  %i = s32[] get-tuple-element(%arg), index=0
  %v = f32[8]{0} get-tuple-element(%arg), index=1
  %ar = f32[8]{0} all-reduce-start(%v), replica_groups={}, to_apply=%add
  %ard = f32[8]{0} all-reduce-done(%ar)
  ROOT %t = (s32[], f32[8]{0}) tuple(%i, %ard)
}

%cond (arg: (s32[], f32[8])) -> pred[] {
  %arg = (s32[], f32[8]{0}) parameter(0)
  ROOT %p = pred[] constant(true)
}

ENTRY %main (w: f32[3,3,8,8], x: bf16[4,6,6,8], dy: bf16[4,6,6,8]) -> f32[] {
  %w = f32[3,3,8,8]{3,2,1,0} parameter(0)
  %x = bf16[4,6,6,8]{3,2,1,0} parameter(1)
  %dy = bf16[4,6,6,8]{3,2,1,0} parameter(2)
  %wt = bf16[8,3,3,8]{3,2,1,0} fusion(%w), kind=kInput, calls=%fused_transpose
  %fwd = (bf16[4,6,6,8]{3,2,1,0}, u8[0]{0}) custom-call(%x, %wt), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward", metadata={op_name="jit(step)/jvp(Net)/conv_general_dilated"}
  %bin = (bf16[4,6,6,8]{3,2,1,0}, u8[0]{0}) custom-call(%dy, %wt), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardInput", metadata={op_name="jit(step)/transpose(jvp(Net))/conv_general_dilated"}
  %bf = (bf16[8,3,3,8]{3,2,1,0}, u8[0]{0}) custom-call(%x, %dy), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardFilter", metadata={op_name="jit(step)/transpose(jvp(Net))/conv_general_dilated"}
  %bin1 = (bf16[4,6,6,8]{3,2,1,0}, u8[0]{0}) custom-call(%dy, %wt), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward", metadata={op_name="jit(step)/transpose(jvp(Net))/conv_general_dilated"}
  %y = bf16[4,6,6,8]{3,2,1,0} get-tuple-element(%fwd), index=0
  %relu = bf16[4,6,6,8]{3,2,1,0} fusion(%y), kind=kLoop, calls=%fused_relu
  %s = f32[4,8]{1,0} parameter(3)
  %red = f32[8]{0} fusion(%s), kind=kInput, calls=%fused_reduce
  %h = f32[4]{0} parameter(4)
  %cat = f32[8]{0} fusion(%h, %h), kind=kLoop, calls=%fused_concat
  %cp = f32[3,3,8,8]{3,2,1,0} copy(%w)
  %gemm = (bf16[4,10]{1,0}, s8[0]{0}) custom-call(%s, %s), custom_call_target="__cublas$gemm", backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"]}}}
  %zero = s32[] constant(0)
  %init = (s32[], f32[8]{0}) tuple(%zero, %red)
  %loop = (s32[], f32[8]{0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  ROOT %out = f32[] constant(0)
}
"""

TPU_HLO = """\
HloModule jit_step

%fused_conv (p0: bf16[4,6,6,8], p1: bf16[3,3,8,8]) -> bf16[4,6,6,8] {
  %p0 = bf16[4,6,6,8]{3,2,1,0} parameter(0)
  %p1 = bf16[3,3,8,8]{3,2,1,0} parameter(1)
  ROOT %cv = bf16[4,6,6,8]{3,2,1,0} convolution(%p0, %p1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(step)/transpose(jvp(Net))/conv_general_dilated"}
}

%fused_wgrad (p0: bf16[4,6,6,8], p1: bf16[4,6,6,8]) -> f32[3,3,8,8] {
  %p0 = bf16[4,6,6,8]{3,2,1,0} parameter(0)
  %p1 = bf16[4,6,6,8]{3,2,1,0} parameter(1)
  ROOT %cv = f32[3,3,8,8]{3,2,1,0} convolution(%p0, %p1), window={size=6x6 pad=1_1x1_1}, dim_labels=f01b_i01o->01bf, metadata={op_name="jit(step)/transpose(jvp(Net))/conv_general_dilated"}
}

ENTRY %main (x: bf16[4,6,6,8], w: bf16[3,3,8,8]) -> f32[8] {
  %x = bf16[4,6,6,8]{3,2,1,0:T(8,128)(2,1)} parameter(0)
  %w = bf16[3,3,8,8]{3,2,1,0:T(8,128)(2,1)} parameter(1)
  %pre = (bf16[3,3,8,8]{3,2,1,0:T(8,128)(2,1)S(1)}, bf16[3,3,8,8]{3,2,1,0:T(8,128)(2,1)}, u32[]{:S(2)}) copy-start(%w)
  %pred = bf16[3,3,8,8]{3,2,1,0:T(8,128)(2,1)S(1)} copy-done(%pre)
  %din = bf16[4,6,6,8]{3,2,1,0} fusion(%x, %pred), kind=kOutput, calls=%fused_conv, backend_config={"window_config":{"estimated_cycles":"1200"}}
  %dw = f32[3,3,8,8]{3,2,1,0} fusion(%x, %din), kind=kOutput, calls=%fused_wgrad, backend_config={"window_config":{"estimated_cycles":"800"}}
  %b = f32[8]{0} broadcast(%w), dimensions={}, backend_config={"window_config":{"estimated_cycles":"10"}}
  %ar = f32[8]{0} all-reduce(%b), replica_groups={{0,1,2,3}}, to_apply=%add, backend_config={"estimated_cycles":"90"}
  ROOT %r = f32[8]{0} reduce(%ar, %ar), dimensions={}, backend_config={"window_config":{"estimated_cycles":"100"}}
}
"""


def test_gpu_census_classes_and_counts():
  found = census.kernels(GPU_HLO)
  classes = census.by_class(found)
  assert classes == {"conv forward": 1, "conv input-grad": 2, "conv weight-grad": 1, "gemm": 1,
                     "reduction fusion": 1, "loop fusion": 1, "data-movement fusion": 1, "transpose": 1,
                     "copy": 1, "collective": 3, "other": 0}
  assert sum(classes.values()) == sum(k.count for k in found) == 13
  assert census.collectives(found) == {"all-reduce": 3}  # the loop's body, 3 trips; -done not counted
  by_name = {k.name: k for k in found}
  # Each direction costs the forward convolution's MACs, taps on the padding not counted: a 3-tap
  # window over a 6-wide axis padded by 1 reads 16 of its 18 (output, tap) pairs per axis.
  assert by_name["fwd"].flops == by_name["bin"].flops == by_name["bf"].flops == 2 * (4 * 8) * 8 * 16 * 16
  assert by_name["gemm"].flops == 2 * 4 * 10 * 8
  assert by_name["relu"].flops == 0 and by_name["relu"].bytes == 2 * 1152 * 2
  # A forward cuDNN call whose source is a gradient is an input gradient.
  assert by_name["bin1"].cls == "conv input-grad"


def test_tpu_census_skips_memory_space_transfers_and_sums_cycles():
  found = census.kernels(TPU_HLO)
  classes = census.by_class(found)
  assert classes["conv input-grad"] == 1 and classes["conv weight-grad"] == 1
  assert classes["copy"] == 0  # the S(1) prefetch is a transfer, not a kernel
  assert classes["data-movement fusion"] == 1 and classes["reduction fusion"] == 1 and classes["collective"] == 1
  assert sum(classes.values()) == len(found) == 5
  assert sum(k.cycles for k in found) == 1200 + 800 + 10 + 90 + 100
  # Only taps that read the input count: on a 6-wide axis with padding 1, a 3-tap window reads
  # 2 + 3 * 4 + 2 = 16 of its 18 (output, tap) pairs, for the input and the weight gradient alike.
  by_name = {k.name: k for k in found}
  assert by_name["dw"].flops == 2 * (8 * 8) * 4 * 16 * 16  # C_in x C_out, over the batch of 4
  assert by_name["din"].flops == 2 * (4 * 8) * 8 * 16 * 16  # N x C_out, over C_in = 8


def test_kernels_are_attributed_to_the_part_they_serve():
  kernel = lambda cls, source: census.Kernel("k", cls, "", 0.0, 0.0, 1, 0.0, source)
  model = "jit(step)/jvp(ResNet)/stage1_block0/conv2"
  cases = {
      ("conv weight-grad", f"jit(step)/transpose(jvp(ResNet))/stage1_block0/conv2/conv/conv_general_dilated"):
          "convolutions",
      ("transpose", f"{model}/conv/conv_general_dilated"): "casts and layout",
      ("loop fusion", f"{model}/conv/convert_element_type"): "casts and layout",
      ("reduction fusion", f"{model}/conv/avg_pool2/reduce_sum"): "pooling",
      ("loop fusion", f"jit(step)/transpose(jvp(ResNet))/stage1_block0/conv2/conv/upsample2/reduce_sum"):
          "upsampling",
      ("conv forward", f"{model}/conv/upsample2/conv_general_dilated"): "upsampling",
      ("conv input-grad", f"jit(step)/transpose(jvp(ResNet))/stage1_block0/conv2/conv/upsample2/conv_general_dilated"):
          "upsampling",
      ("reduction fusion", f"{model}/bn/reduce_sum"): "BatchNorm",
      ("reduction fusion", "jit(step)/jvp(Net)/BatchNorm_0/reduce_sum"): "BatchNorm",
      ("loop fusion", "jit(step)/add"): "optimizer",
      ("loop fusion", f"{model}/max"): "other",
  }
  for (cls, source), part in cases.items():
    assert census.part_of(kernel(cls, source)) == part, (cls, source)
  counts = census.by_part([kernel(*case) for case in cases])
  assert tuple(counts) == census.PARTS and sum(counts.values()) == len(cases)


def test_report_estimates_state_their_model():
  target = aot.get_target("h100")
  found = census.kernels(GPU_HLO)
  memory = {"argument": 10 * 2**30, "output": 10 * 2**30, "alias": 10 * 2**30, "temp": 75 * 2**30}
  memory["peak"] = 85 * 2**30
  report = aot.Report(target, 1.0, found, memory, GPU_HLO)
  roofline = 1e3 * sum(max(k.flops / 989.4e12, k.bytes / 3.35e12) for k in found)
  assert report.estimate_ms == pytest.approx(aot.GPU_MODEL.scale * roofline + 13 * aot.GPU_MODEL.per_kernel_us / 1e3)
  assert "an estimate, not a measurement" in report.estimate_line()
  assert aot.GPU_MODEL.describe() in report.estimate_line()
  assert not report.fits and "DOES NOT FIT" in report.memory_line()
  tpu = aot.Report(aot.get_target("tpu:v5e:2x2"), 1.0, census.kernels(TPU_HLO), dict(memory, peak=2**30), "")
  assert tpu.estimate_ms == pytest.approx(1e3 * 2200 / aot.TPU_CHIPS["v5e"].clock_hz)
  assert tpu.fits and "GHz" in tpu.estimate_line()


def test_calibrate_goes_through_both_points():
  model = aot.calibrate([(11.0, 1000, 24.0), (10.0, 2500, 36.0)])
  assert 11.0 * model.scale + 1000 * model.per_kernel_us / 1e3 == pytest.approx(24.0, abs=0.02)
  assert 10.0 * model.scale + 2500 * model.per_kernel_us / 1e3 == pytest.approx(36.0, abs=0.02)


def test_target_names():
  assert aot.get_target("TPU:v5e:4x4").name == "tpu:v5e:4x4" and aot.get_target("tpu:v5e:4x4").num_chips == 16
  assert aot.get_target("h200").chip.memory_bytes == 150754820096
  for bad in ("a100", "tpu:v9:2x2", "v5e:2y2", "tpu:v5e"):
    with pytest.raises(aot.TargetUnavailable, match="unknown target .* use h100, h200, or tpu:GENERATION:TOPOLOGY"):
      aot.get_target(bad)


def test_gpu_target_configs_are_kept_with_their_sources():
  for name in aot.GPU_TARGETS:
    text = targets.gpu_target_config(name)
    assert "#" not in text and "cuda_compute_capability { major: 9 }" in text
    assert f"device_memory_size: {aot.get_target(name).chip.memory_bytes}" in text
    with open(os.path.join(targets.GPU_TARGET_DIR, f"{name}.txtpb")) as f:
      assert "Where the numbers come from" in f.read()


def _stablehlo_ops(model, shape, platform):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  text = jax.jit(lambda v, x: model.apply(v, x, train=False)).trace(variables, x).lower(
      lowering_platforms=(platform,)).as_text()
  upsamples = len(re.findall(r"lhs_dilate = \[[0-9, ]*2", text))  # the TPU's form upsamples by convolutions
  return text.count("stablehlo.convolution") - upsamples, text.count("stablehlo.dot_general")


def test_the_lowering_platform_decides_the_convolution_not_the_host(monkeypatch):
  """A video model (its convolutions wrapped by use_conv) lowered on this CPU for a TPU: the TPU's."""
  # Every path its own convolution on the TPU too ('shared_widening' joins some), so that they count alike.
  monkeypatch.setitem(execution.PLATFORM_FORMS, "tpu", dataclasses.replace(execution.TPU_FORM, paths="separate"))
  model = models.oct_i3d_tiny(alpha=0.25)
  convs_cpu, dots_cpu = _stablehlo_ops(model, (1, 4, 16, 16, 1), "cpu")
  convs_tpu, dots_tpu = _stablehlo_ops(model, (1, 4, 16, 16, 1), "tpu")
  assert dots_tpu == 1 and dots_cpu > dots_tpu  # the classifier only, against XLA:CPU's 1x1 dots
  assert convs_tpu == convs_cpu + (dots_cpu - dots_tpu)


def test_compiler_options_follow_the_platform_compiled_for():
  assert execution.train_compiler_options("tpu") is None
  assert execution.inference_compiler_options("cuda") is None
  assert execution.init_compiler_options("tpu") is None
  assert execution.init_compiler_options("cpu") == {"xla_backend_optimization_level": 0}


def _small_step_report(target_name, alpha=0.5, form=None):
  target = aot.get_target(target_name)
  mesh = jax.sharding.Mesh(target.devices(), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  net = models.get_model("oct_resnet8", alpha=alpha, num_classes=10, dtype=jnp.bfloat16)
  tx = optax.sgd(0.1, momentum=0.9)
  with execution.use_form(form):
    shapes = jax.eval_shape(lambda x: net.init(jax.random.key(0), x, train=False), jnp.zeros((1, 16, 16, 1)))
    state = {"params": shapes["params"], "batch_stats": shapes["batch_stats"],
             "opt": jax.eval_shape(tx.init, shapes["params"])}
    state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), state)
    n = 2 * target.num_chips
    x = jax.ShapeDtypeStruct((n, 16, 16, 1), jnp.float32, sharding=sharded)
    y = jax.ShapeDtypeStruct((n,), jnp.int32, sharding=sharded)

    def step(state, x, y):
      def loss_fn(params):
        logits, updates = net.apply({"params": params, "batch_stats": state["batch_stats"]}, x, train=True,
                                    mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean(), updates

      (_, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
      u, opt = tx.update(grads, state["opt"], state["params"])
      return {"params": optax.apply_updates(state["params"], u), "batch_stats": updates["batch_stats"], "opt": opt}

    return aot.compile_for(target, jax.jit(step, donate_argnums=0), state, x, y)


@pytest.mark.slow  # two train steps compiled for an H100 (about 20 s)
@needs_cuda
def test_h100_census_of_a_train_step():
  report = _small_step_report("h100")
  classes = report.classes
  assert sum(classes.values()) == report.launches == sum(k.count for k in report.kernels)
  assert classes["conv forward"] and classes["conv weight-grad"]
  # The accelerator form: 1x1 layers are cuDNN convolutions; the only matrix products are the
  # classifier's (forward, input and weight gradients).
  assert classes["gemm"] <= 3
  assert report.flops > 0 and report.memory["peak"] > 0 and report.fits
  assert report.estimate_ms > 0
  # The GPU's default form is in the program: fewer convolution kernels than the reference form.
  reference = _small_step_report("h100", form="reference")
  conv_kernels = lambda r: sum(r.classes[c] for c in census.CONV_CLASSES)
  assert execution.GPU_FORM.paths == "two_convs" and conv_kernels(report) < conv_kernels(reference)


@pytest.mark.slow  # a train step compiled for a TPU slice (about 8 s)
@needs_libtpu
def test_tpu_census_of_a_data_parallel_train_step():
  report = _small_step_report("tpu:v5e:2x2")
  assert sum(report.classes.values()) == report.launches
  assert report.classes["conv forward"] and report.classes["conv weight-grad"]
  assert census.collectives(report.kernels).get("all-reduce", 0) >= 1  # the gradient all-reduce
  assert report.estimate_ms and report.estimate_ms > 0


def _train_cli(*args, env=None):
  return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=600, env=env)


@pytest.mark.slow  # the trainer compiling for a TPU slice (about 8 s)
@needs_libtpu
def test_trainer_aot_on_a_four_chip_tpu_slice(tmp_path):
  result = _train_cli("--aot=tpu:v5e:2x2", "--config.model.name=oct_resnet8", "--config.batch_size=32",
                      "--config.data.name=synthetic", "--config.data.image_size=16",
                      "--config.data.max_train_examples=64", "--config.data.max_test_examples=32")
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert "tpu:v5e:2x2 (4 x" in out and "global batch 32 (8 per chip)" in out
  assert "memory per chip" in out and "fits" in out
  assert "all-reduce" in out and "UNEXPECTED" not in out
  assert "an estimate, not a measurement" in out
  assert "Traceback" not in result.stderr


@pytest.mark.slow  # the trainer compiling for an H100 (about 12 s)
@needs_cuda
def test_trainer_aot_without_the_data_compiles_for_the_runs_shapes(tmp_path):
  """The ImageNet config on a host without ImageNet: synthetic images of the run's size, its classes."""
  result = _train_cli("--aot=h100", "--config", "experiments/configs/imagenet.py", "--config.model.name=oct_resnet8",
                      "--config.batch_size=8", "--config.eval_batch_size=8", "--config.data.image_size=16",
                      f"--config.data.dir={tmp_path / 'no_imagenet'}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "compiling for synthetic 16x16x3 images and 1000 classes" in result.stdout
  assert "global batch 8 (8 per chip), bfloat16" in result.stdout and "estimated step" in result.stdout


@pytest.mark.skipif(HAS_CUDA_PLUGIN, reason="checks the message shown when the CUDA plugin is missing")
def test_trainer_aot_without_the_plugin_says_what_to_install():
  result = _train_cli("--aot=h100")
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith("error: cannot compile for h100") and "pip install -e '.[aot]'" in lines[0]


def test_trainer_aot_with_an_unknown_target_says_what_is_allowed():
  result = _train_cli("--aot=a100")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      result.stderr.strip()] and "unknown target 'a100': use h100, h200" in result.stderr
