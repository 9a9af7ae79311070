"""benchmarks/benchmark.py: the fields of its JSON lines and its ratios, on tiny configurations."""

from __future__ import annotations

import json

import numpy as np
import pytest

import octflax
from benchmarks import benchmark, torch_reference


FIELDS = ("model", "alpha", "batch", "mode", "backend", "device_kind", "median_ms", "images_per_second",
          "gmacs", "time_ratio_to_alpha0", "macs_ratio_to_alpha0", "peak_device_bytes", "framework")


def _run(tmp_path, *args):
  out = tmp_path / "out.jsonl"
  assert benchmark.main([*args, "--repeats", "2", "--warmup", "1", "--json", str(out)]) == 0
  return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.slow  # compiles and times four networks (about 8 s each mode)
@pytest.mark.parametrize("mode", ["inference", "train"])
def test_rows_have_the_issue_fields_and_ratios_to_alpha0_of_the_same_run(tmp_path, capsys, mode):
  rows = _run(tmp_path, "--models", "oct_resnet20", "--alphas", "0.5", "--batch", "2", "--mode", mode,
              "--image-size", "8", "--channels", "1", "--num-classes", "10")
  # alpha 0 is added when not asked for: every ratio needs it from the same run.
  assert [r["alpha"] for r in rows] == [0.0, 0.5]
  for r in rows:
    assert set(FIELDS) <= set(r) and r["mode"] == mode and r["framework"] == "octflax" and r["channels"] == 1
    assert r["median_ms"] > 0 and r["images_per_second"] == pytest.approx(2e3 / r["median_ms"])
  base, oct_ = rows
  assert base["time_ratio_to_alpha0"] == 1.0 and base["macs_ratio_to_alpha0"] == 1.0
  assert oct_["time_ratio_to_alpha0"] == pytest.approx(oct_["median_ms"] / base["median_ms"])
  assert oct_["macs_ratio_to_alpha0"] == pytest.approx(oct_["gmacs"] / base["gmacs"]) and oct_["gmacs"] < base["gmacs"]
  assert "oct_resnet20" in capsys.readouterr().out


def test_unknown_variant_is_refused_and_old_setting_suffixes_name_their_flag():
  with pytest.raises(ValueError, match="unknown model variant ':fast'"):
    benchmark.build_model("oct_resnet20:fast", 0.5, 10, None)
  with pytest.raises(ValueError, match="':xladefault' is not a model variant; use --compile xla-default"):
    benchmark.build_model("oct_resnet20:xladefault", 0.5, 10, None)
  with pytest.raises(SystemExit):
    benchmark.main(["--models", "oct_resnet20", "--compile", "fastest"])


@pytest.mark.slow  # compiles several networks
def test_compile_settings_change_the_compiled_program_not_the_result():
  make = lambda mode="inference", **kw: benchmark.make_case("oct_resnet20", 0.5, 2, mode, 8, 10,
                                                            benchmark.jnp.float32, 1, **kw)
  default, xla, dots = make(), make(compile="xla-default"), make(compile="ynn-dot")
  # Inference compiles with octflax's inference options, a train step with its train options,
  # 'xla-default' with none.
  assert default.compiler_options == octflax.inference_compiler_options() is not None
  assert make("train").compiler_options == octflax.train_compiler_options()
  assert xla.compiler_options is None and make("train", compile="xla-default").compiler_options is None
  assert dots.compiler_options == benchmark.COMPILE_SETTINGS["ynn-dot"]
  # Each option reaches XLA (another fusion plan) and the network computes the same logits.
  assert len({default.hlo, xla.hlo, dots.hlo}) == 3
  for case in (xla, dots):
    np.testing.assert_allclose(np.asarray(case.fn()), np.asarray(default.fn()), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # about 5 s: six compiled networks
def test_conv_settings_and_compile_settings_get_their_own_rows_and_alpha0(tmp_path):
  rows = _run(tmp_path, "--models", "oct_resnet8", "--alphas", "0.5", "--batch", "2", "--image-size", "8",
              "--channels", "1", "--num-classes", "10", "--compile", "xla-default", "--conv", "default,plain")
  settings = [(r["compile"], r["conv"], r["alpha"]) for r in rows]
  assert settings == [("xla-default", v, a) for v in ("default", "plain") for a in (0.0, 0.5)]
  for r in rows:
    base = next(b for b in rows if (b["compile"], b["conv"], b["alpha"]) == (r["compile"], r["conv"], 0.0))
    assert r["time_ratio_to_alpha0"] == pytest.approx(r["median_ms"] / base["median_ms"])
    assert r["gmacs"] == rows[0 if r["alpha"] == 0 else 1]["gmacs"]  # the settings never change the MACs


@pytest.mark.slow  # a PyTorch comparison
@pytest.mark.skipif(torch_reference.torch is None, reason="torch is not installed")
def test_torch_network_is_timed_with_octflax_macs(tmp_path):
  rows = _run(tmp_path, "--models", "torch_oct_resnet50", "--alphas", "0.5", "--batch", "1",
              "--image-size", "32")
  assert [r["alpha"] for r in rows] == [0.0, 0.5]
  assert all(r["framework"].startswith("torch ") and r["params"] == 25_557_032 for r in rows)
  assert rows[1]["macs_ratio_to_alpha0"] < 0.7
  with pytest.raises(ValueError, match="inference mode only"):
    benchmark.make_case("torch_oct_resnet50", 0.5, 1, "train", 32, 10, benchmark.jnp.float32)


@pytest.mark.slow  # compiles several networks
def test_profile_ops_finds_the_convolutions(capsys):
  from benchmarks.probes import profile_ops  # pylint: disable=g-import-not-at-top

  x = benchmark.jnp.ones((1, 8, 8, 3))
  k = benchmark.jnp.ones((3, 3, 3, 4))
  conv = lambda x, k: benchmark.jax.nn.relu(benchmark.jax.lax.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
  hlo = benchmark.jax.jit(conv).lower(x, k).compile().as_text()
  assert "convolution" in profile_ops.op_kinds(hlo).values()

  jax = benchmark.jax
  transpose = lambda x: jax.numpy.transpose(jax.nn.relu(x) + 1.0, (3, 1, 2, 0))
  kinds = profile_ops.op_kinds(jax.jit(transpose).lower(x).compile().as_text())
  assert "transpose" in kinds.values() and "convolution" not in kinds.values()

  assert profile_ops.main(["--model", "oct_resnet20", "--alphas", "0,0.5", "--batch", "2", "--image-size", "8",
                           "--num-classes", "10", "--calls", "2", "--top", "3"]) == 0
  out = capsys.readouterr().out
  assert "convolution" in out and "MACs ratio" in out
  listed = [line.split() for line in out.splitlines() if line.startswith(" ") and "f32[" in line]
  assert len(listed) == 6, out  # three ops for each of the two alphas, longest first
  for rows in (listed[:3], listed[3:]):
    times = [float(row[0]) for row in rows]
    assert times == sorted(times, reverse=True) and times[0] > 0, out
  assert any(row[1] == "convolution" for row in listed), out

  # Convolutions without trace events are found, so the tool can say its totals miss them.
  two_convs = jax.jit(lambda x, k: conv(conv(x, k)[..., :3], k)).lower(x, k).compile().as_text()
  entry = two_convs[two_convs.index("ENTRY"):]
  names = [n for n, kind in profile_ops.op_kinds(two_convs).items() if kind == "convolution" and f"%{n} = " in entry]
  assert len(names) == 2
  assert profile_ops.untraced_convolutions(two_convs, {names[0]: 1.0}) == names[1:]
  assert profile_ops.untraced_convolutions(two_convs, dict.fromkeys(names, 1.0)) == []


@pytest.mark.slow  # compiles several networks
def test_decompose_splits_the_time_and_leaves_no_convolution_macs(capsys):
  from benchmarks.probes import decompose  # pylint: disable=g-import-not-at-top
  from octflax import execution  # pylint: disable=g-import-not-at-top

  real = execution.current_conv()
  x, k = benchmark.jnp.ones((2, 5, 5, 3)), benchmark.jnp.ones((3, 3, 3, 4))
  with decompose.convolutions_replaced():
    assert execution.current_conv() is decompose._stand_in
    assert execution.current_conv()(x, k).shape == (2, 5, 5, 4)
  assert execution.current_conv() is real  # restored

  rows = decompose.run("oct_resnet20", [0.5], 2, "inference", 8, 10, 1, repeats=2, warmup=1)
  assert [r["alpha"] for r in rows] == [0.0, 0.5]
  for r in rows:
    # Every MAC of the CIFAR network (no nn.Conv stem) is in an OctConv convolution, except the classifier.
    assert 0 < r["conv_gmacs"] < r["gmacs"] and r["gmacs"] - r["conv_gmacs"] == pytest.approx(64 * 10 / 1e9)
    assert r["total_ms"] == pytest.approx(r["conv_ms"] + r["rest_ms"])
  base, oct_ = rows
  assert base["conv_ratio"] == base["rest_ratio"] == 1.0
  assert oct_["conv_macs_ratio"] == pytest.approx(oct_["conv_gmacs"] / base["conv_gmacs"])
  assert oct_["conv_macs_ratio"] < 0.7
  assert decompose.main(["--model", "oct_resnet20", "--alphas", "0.5", "--batch", "2", "--image-size", "8",
                         "--channels", "1", "--num-classes", "10", "--repeats", "2"]) == 0
  assert "convolutions" in capsys.readouterr().out


HLO = """HloModule m

%fused_computation (p0: f32[4,8]) -> f32[4,8] {
  ROOT %p0 = f32[4,8]{1,0} parameter(0)
}

ENTRY %main (x: f32[4,8], w: f32[8,2]) -> (f32[4,2], bf16[4,8]) {
  %x = f32[4,8]{1,0} parameter(0)
  %w = f32[8,2]{1,0} parameter(1)
  %c = f32[] constant(0)
  %wrapped_broadcast = f32[4,8]{1,0} fusion(%c), kind=kLoop, calls=%fused_computation
  %add_fusion = f32[4,8]{1,0} fusion(%x, %wrapped_broadcast, %x), kind=kLoop, calls=%fused_computation
  %ynn_fusion = f32[4,2]{1,0} fusion(%add_fusion, %w), kind=kCustom, calls=%fused_computation
  %convert = bf16[4,8]{1,0} convert(%add_fusion)
  ROOT %t = (f32[4,2]{1,0}, bf16[4,8]{1,0}) tuple(%ynn_fusion, %convert)
}
"""


def test_hlo_traffic_counts_bytes_read_and_written_per_kind():
  from benchmarks.probes import hlo_traffic  # pylint: disable=g-import-not-at-top

  rows = {r.name: r for r in hlo_traffic.entry_instructions(HLO)}
  assert set(rows) == {"wrapped_broadcast", "add_fusion", "ynn_fusion", "convert"}
  assert (rows["wrapped_broadcast"].kind, rows["wrapped_broadcast"].read, rows["wrapped_broadcast"].written) == ("broadcast", 4, 128)
  assert (rows["add_fusion"].kind, rows["add_fusion"].read, rows["add_fusion"].big_operands) == ("loop", 3 * 128, 3)
  assert (rows["ynn_fusion"].kind, rows["ynn_fusion"].read, rows["ynn_fusion"].written) == ("library", 128 + 64, 32)
  assert (rows["convert"].kind, rows["convert"].written) == ("other", 64)  # bf16: 2 bytes
  s = hlo_traffic.summarize(list(rows.values()))
  assert s["loop_read_mb"] == pytest.approx(384e-6) and s["library_written_mb"] == pytest.approx(32e-6)
  with pytest.raises(ValueError, match="no ENTRY"):
    hlo_traffic.entry_instructions("HloModule m")


@pytest.mark.slow  # compiles several networks
def test_hlo_traffic_of_a_compiled_network(capsys):
  from benchmarks.probes import hlo_traffic  # pylint: disable=g-import-not-at-top

  case = benchmark.make_case("oct_resnet20", 0.5, 2, "inference", 8, 10, benchmark.jnp.float32, 1)
  rows = hlo_traffic.entry_instructions(case.hlo)
  # Every network moves data through both XLA's own loops and library kernels (its dots and convs).
  assert {"loop", "library"} <= {r.kind for r in rows}
  assert all(r.written > 0 for r in rows) and sum(r.read for r in rows if r.kind == "library") > 0
  assert hlo_traffic.main(["--model", "oct_resnet20", "--alphas", "0.5", "--batch", "2", "--image-size", "8",
                           "--channels", "1", "--num-classes", "10", "--top", "1"]) == 0
  assert "oct_resnet20" in capsys.readouterr().out
