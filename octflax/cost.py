"""Analytic cost accounting: MACs, parameters and activation memory of any Flax model.

The counter traces the model once (`jax.make_jaxpr`, no FLOPs are spent) and counts
what the traced program actually computes:

* MACs of every convolution: ``output elements * prod(kernel_size) * in_channels / groups``
  in any number of spatial axes (every tap, padded ones included: the paper's convention);
* MACs of every matrix product (dense layers): ``output elements * contracted size``;
* activation memory: the output elements of every convolution-like layer
  (`OctConv`, `flax.linen.Conv`, `flax.linen.Dense`), both parts of an OctTensor;
* parameters: the size of the ``params`` collection.

Pooling, normalisation and activations are not counted, as in the paper's tables.

An OctConv layer (`octflax.OctConv`, any rank) costs the sum over its present paths of
``positions * prod(kernel_size) * c_in / groups * c_out``, where ``positions`` is the number
of spatial positions at which the path's convolution runs: the high output's P^H for h2h, the
low output's P^L for h2l and l2l, and for l2h the low input's positions after the stride
pooling (P^L at stride 1, where the upsample follows the conv). With channel splits
``(c_in^H, c_in^L)``, ``(c_out^H, c_out^L)`` at stride 1::

  MACs = prod(k) / groups * [P^H c_in^H c_out^H + P^L (c_in^L c_out^H + c_in^L c_out^L + c_in^H c_out^L)]

With ``d`` octave axes of even size, ``P^L = 2^-d P^H``, and for ``alpha_in = alpha_out = a``
the ratio to the vanilla conv's ``prod(k) / groups * P^H C_in C_out`` is
``1 - (1 - 2^-d)(2a - a^2)``: ``1 - 3/4 (2a - a^2)`` in 2-D (the paper's Table 1),
``1 - 1/2 (2a - a^2)`` in 1-D, ``1 - 7/8 (2a - a^2)`` in 3-D with every axis an octave axis.
`xla_flops` is the cross-check: XLA counts 2 FLOPs per MAC and skips padded taps.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from octflax import execution
from octflax.layers import OctConv


@dataclasses.dataclass(frozen=True)
class LayerCost:
  """Cost of one layer (a module path): its MACs and the elements of its output."""

  name: str
  macs: int
  activations: int


@dataclasses.dataclass(frozen=True)
class CostReport:
  """Totals and per-layer costs of a model at one input shape.

  Attributes:
    macs: multiply-accumulates of convolutions and dense layers for the whole input batch.
    params: number of parameters.
    activations: output elements of all conv/dense layers.
    layers: per-layer costs, in execution order.
    batch: the batch size of the input shape the model was traced with.
  """

  macs: int
  params: int
  activations: int
  layers: tuple[LayerCost, ...]
  batch: int

  @property
  def gmacs(self) -> float:
    """MACs per example, in billions."""
    return self.macs / self.batch / 1e9

  def table(self) -> str:
    """A plain-text per-layer table."""
    width = max([len(layer.name) for layer in self.layers] + [5])
    lines = [f"{'layer':<{width}}  {'MMACs':>10}  {'activations':>12}"]
    for layer in self.layers:
      lines.append(f"{layer.name:<{width}}  {layer.macs / 1e6:>10.3f}  {layer.activations:>12d}")
    lines.append(f"{'total':<{width}}  {self.macs / 1e6:>10.3f}  {self.activations:>12d}")
    return "\n".join(lines)


def _sub_jaxprs(eqn):
  for value in eqn.params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if hasattr(item, "eqns"):
        yield item
      elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
        yield item.jaxpr


def _eqn_macs(eqn) -> int:
  name = eqn.primitive.name
  if name == "conv_general_dilated":
    rhs = eqn.invars[1].aval.shape
    spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
    taps = math.prod(rhs[d] for d in spec[2:])
    return math.prod(eqn.outvars[0].aval.shape) * rhs[spec[1]] * taps
  if name == "dot_general":
    (contract_lhs, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract_lhs)
  return 0


def count_macs(jaxpr) -> OrderedDict[str, int]:
  """MACs per name-stack scope of a (closed) jaxpr, recursing into sub-jaxprs."""
  totals: OrderedDict[str, int] = OrderedDict()

  def walk(jp, prefix: str, times: int):
    for eqn in jp.eqns:
      scope = "/".join(s for s in (prefix, str(eqn.source_info.name_stack)) if s)
      macs = _eqn_macs(eqn)
      if macs:
        totals[scope] = totals.get(scope, 0) + macs * times
      subs = list(_sub_jaxprs(eqn))
      if eqn.primitive.name == "cond":
        # One branch runs: count the most expensive one.
        costs = [sum(count_macs(sub).values()) for sub in subs]
        subs = [subs[costs.index(max(costs))]] if subs else []
      repeat = int(eqn.params.get("length", 1)) if eqn.primitive.name == "scan" else 1
      for sub in subs:
        walk(sub, scope, times * repeat)

  walk(jaxpr.jaxpr if hasattr(jaxpr, "jaxpr") else jaxpr, "", 1)
  return totals


def analyze(model: nn.Module, input_shape: Sequence[int], *, dtype: Any = jnp.float32,
            **call_kwargs: Any) -> CostReport:
  """Counts MACs, parameters and activation memory of ``model`` on inputs of ``input_shape``.

  Nothing is computed: the model is traced abstractly.

  Args:
    model: a Flax module called as ``model(x, **call_kwargs)``; octflax networks are
      called with ``train=False`` unless ``call_kwargs`` says otherwise.
    input_shape: e.g. ``(1, 224, 224, 3)``; MACs in the report cover the whole batch.
    dtype: input dtype.
    **call_kwargs: extra arguments of the call.

  Returns:
    A `CostReport`.

  Examples:
    >>> from octflax import models
    >>> report = analyze(models.oct_resnet50(alpha=0.5), (1, 224, 224, 3))
    >>> round(report.gmacs, 4), report.params
    (2.3671, 25557032)
  """
  x = jax.ShapeDtypeStruct(tuple(input_shape), dtype)
  if "train" not in call_kwargs and _accepts_train(model):
    call_kwargs["train"] = False
  variables = jax.eval_shape(lambda inp: model.init(jax.random.key(0), inp, **call_kwargs), x)
  params = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables.get("params", {})))

  outputs: OrderedDict[str, int] = OrderedDict()

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and isinstance(context.module, (OctConv, nn.Conv, nn.Dense)):
      leaves = [leaf for leaf in jax.tree.leaves(out) if hasattr(leaf, "shape")]
      path = "/".join(context.module.path)
      outputs[path] = outputs.get(path, 0) + sum(math.prod(leaf.shape) for leaf in leaves)
    return out

  def forward(v, inp):
    with nn.intercept_methods(record):
      return model.apply(v, inp, **call_kwargs)

  # The layers' equations as written (`execution.REFERENCE`), not the form a backend runs them in.
  with execution.use_form(execution.REFERENCE):
    macs_by_scope = count_macs(jax.make_jaxpr(forward)(variables, x))
  # Name stacks start with the top module's class name; module paths do not.
  top = type(model).__name__
  layers = []
  for scope, macs in macs_by_scope.items():
    path = scope.split("/", 1)[1] if scope.startswith(top + "/") else scope
    layers.append([path, macs, outputs.get(path, 0)])
  seen = {layer[0] for layer in layers}
  for path, elements in outputs.items():
    if path not in seen:
      layers.append([path, 0, elements])
  layers_t = tuple(LayerCost(*layer) for layer in layers)
  return CostReport(
      macs=sum(layer.macs for layer in layers_t), params=params,
      activations=sum(layer.activations for layer in layers_t), layers=layers_t,
      batch=int(input_shape[0]))


def model_cost(model: nn.Module, image_shape: Sequence[int]) -> dict[str, Any]:
  """``params``, ``macs_per_image`` and ``gmacs_per_image`` of ``model`` on one image (traced at float32,
  nothing computed): what a training run's summary and TensorBoard report."""
  shape = (1, *image_shape)
  report = analyze(model.clone(dtype=jnp.float32) if hasattr(model, "dtype") else model, shape)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))["params"]
  return {"params": sum(math.prod(x.shape) for x in jax.tree.leaves(params)),
          "macs_per_image": report.macs // report.batch, "gmacs_per_image": report.gmacs}


def xla_flops(model: nn.Module, input_shape: Sequence[int], *, dtype: Any = jnp.float32,
              **call_kwargs: Any) -> float:
  """FLOPs of the compiled forward pass as XLA's ``cost_analysis()`` reports them.

  XLA counts 2 FLOPs per MAC for convolutions and dot products, and does not count
  the taps that fall on padding, so for SAME-padded convs it is slightly below
  ``2 * analyze(...).macs``; it also counts elementwise work (BN, pooling, adds).
  """
  if "train" not in call_kwargs and _accepts_train(model):
    call_kwargs["train"] = False
  x = jax.ShapeDtypeStruct(tuple(input_shape), dtype)
  variables = jax.eval_shape(lambda inp: model.init(jax.random.key(0), inp, **call_kwargs), x)
  compiled = jax.jit(lambda v, inp: model.apply(v, inp, **call_kwargs)).lower(variables, x).compile()
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis["flops"])


def _accepts_train(model: nn.Module) -> bool:
  import inspect

  try:
    return "train" in inspect.signature(type(model).__call__).parameters
  except (TypeError, ValueError):
    return False


__all__ = ["CostReport", "LayerCost", "analyze", "count_macs", "model_cost", "xla_flops"]
