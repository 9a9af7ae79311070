"""One description under both front ends: the layer specs (octflax.spec), and no code of the Linen side
repeated in the NNX one.

The zoo's structure (octflax.models.structure): test_models.py.
"""

import ast
import dataclasses
import io
import keyword
import tokenize
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import octflax
import octflax.nnx as onnx
from octflax import spec

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [(octflax.OctConv, spec.OctConvSpec), (octflax.OctConvTranspose, spec.OctConvTransposeSpec),
         (octflax.OctBatchNorm, spec.OctBatchNormSpec), (octflax.OctConvBN, spec.OctConvBNSpec)]


@pytest.mark.parametrize("module,spec_cls", PAIRS)
def test_linen_attributes_are_the_spec_fields(module, spec_cls):
  fields = [(f.name, f.default) for f in dataclasses.fields(module) if f.name not in ("parent", "name")]
  assert fields == [(f.name, f.default) for f in dataclasses.fields(spec_cls)]


def test_both_front_ends_build_the_same_spec():
  kwargs = dict(strides=2, feature_group_count=2, activation=jax.nn.relu, octave_axes=[0, 1], kernel_dilation=(1, 1))
  linen = octflax.OctConvBN(16, 3, 0.25, 0.5, **kwargs)
  unit = onnx.OctConvBN(8, 16, 3, 0.25, 0.5, rngs=nnx.Rngs(0), **kwargs)
  assert linen.spec == unit.spec and hash(linen.spec) == hash(unit.spec)
  assert unit.conv.spec == unit.spec.conv and unit.conv.spec.octave_axes == (0, 1)
  assert unit.bn.spec == unit.spec.norm(False)


def test_spec_gives_the_linen_parameter_shapes():
  layer = octflax.OctConv(16, (3, 3), 0.5, 0.25, feature_group_count=2)
  x = octflax.OctTensor.from_array(jnp.ones((1, 8, 8, 8)), 0.5)
  variables = jax.eval_shape(layer.init, jax.random.key(0), x)["params"]
  params = layer.spec.params(8)
  assert (variables["kernel"].shape, variables["bias"].shape) == (params.kernel, params.bias) == ((3, 3, 4, 16), (16,))
  # The paths are the blocks of that kernel whose shapes `paths` gives.
  blocks, _ = octflax.kernel_blocks(jnp.zeros(params.kernel), None, 8, 0.5, 0.25, 2)
  assert {p: b.shape for p, b in blocks.items()} == {p: s.kernel for p, s in layer.spec.paths(8).items()}


def test_settings_are_checked_in_both_front_ends():
  for build in (lambda **kw: octflax.OctConv(8, 3, 0.5, 0.5, **kw),
                lambda **kw: onnx.OctConv(8, 8, 3, 0.5, 0.5, rngs=nnx.Rngs(0), **kw)):
    with pytest.raises(ValueError, match="padding must be 'SAME'"):
      build(padding="VALID")
    with pytest.raises(ValueError, match="pool_stride=False"):
      build(pool_stride=False)
  with pytest.raises(TypeError, match="paddng"):
    onnx.OctConv(8, 8, 3, 0.5, 0.5, rngs=nnx.Rngs(0), paddng="SAME")
  with pytest.raises(TypeError, match="feature_group_count"):
    onnx.OctConvTranspose(8, 8, 3, 0.5, 0.5, rngs=nnx.Rngs(0), feature_group_count=2)


def _code_lines(path):
  """(line, code) of a file with names, numbers and strings as N, 0, S (attribute and keyword names kept).

  Blank lines, comments, docstrings and imports are left out.
  """
  source = path.read_text()
  docstrings = set()
  for node in ast.walk(ast.parse(source)):
    body = getattr(node, "body", None)
    if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
        getattr(body[0].value, "value", None), str):
      docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
  tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
            if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                              tokenize.ENDMARKER) and t.start[0] not in docstrings]
  lines = {}
  for i, t in enumerate(tokens):
    after_dot = i and tokens[i - 1].string == "."
    keyword_arg = i + 1 < len(tokens) and tokens[i + 1].string == "="
    if t.type == tokenize.NAME and not keyword.iskeyword(t.string) and not after_dot and not keyword_arg:
      text = "N"
    else:
      text = {tokenize.NUMBER: "0", tokenize.STRING: "S"}.get(t.type, t.string)
    lines.setdefault(t.start[0], []).append(text)
  rows = [(n, " ".join(words).rstrip(",").strip()) for n, words in sorted(lines.items())]
  return [(n, code) for n, code in rows if code not in ("", ")", "]", "):", "*,")
          and not code.startswith(("import ", "from "))]


def test_the_nnx_front_end_repeats_no_block_of_the_linen_side():
  """No 5 consecutive code lines of octflax/nnx/ have the shape of 5 lines elsewhere in octflax/."""
  def blocks(path):
    rows = _code_lines(path)
    return {tuple(code for _, code in rows[i:i + 5]): rows[i][0] for i in range(len(rows) - 4)}

  elsewhere = {}
  for path in sorted((ROOT / "octflax").rglob("*.py")):
    if "nnx" not in path.relative_to(ROOT).parts:
      for block, line in blocks(path).items():
        elsewhere.setdefault(block, f"{path.relative_to(ROOT)}:{line}")
  repeats = [f"{path.relative_to(ROOT)}:{line} repeats {elsewhere[block]}"
             for path in sorted((ROOT / "octflax" / "nnx").glob("*.py"))
             for block, line in blocks(path).items() if block in elsewhere]
  assert not repeats, repeats
