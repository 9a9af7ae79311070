"""The forms of OctConv and OctBatchNorm: the same equations as fewer or differently grouped kernels.

`oct_conv` and `batch_stats` are what the Linen and NNX modules call; each runs in the form
`by_platform` picks. `oct_conv_in_form` and `batch_stats_in_form` run one given form.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from octflax import functional
from octflax.execution.choice import CONVS, Form, by_platform, chosen_conv
from octflax.execution.norm import batch_means, channel_slices, joinable, normalize
from octflax.resample import UPSAMPLE_METHODS
from octflax.tensor import OctTensor, as_oct

Array = jax.Array


def oct_conv(x: Any, kernels: Mapping[str, Array], biases: Mapping[str, Array] | None = None, *,
             strides: Any = 1, octave_axes: Any = None, kernel_dilation: Any = 1, precision: Any = None,
             pool_stride: bool = True) -> OctTensor:
  """`functional.oct_conv` in the form chosen for the platform (`by_platform`): what the modules call.

  Same arguments and result as `functional.oct_conv` (to float rounding), except that the
  path convolution comes from the form (or `use_conv`).
  """
  x = as_oct(x)
  biases = dict(biases or {})
  settings = dict(strides=strides, octave_axes=octave_axes, kernel_dilation=kernel_dilation, precision=precision)
  if not pool_stride and functional.is_strided(x, kernels, strides, octave_axes, kernel_dilation):
    return functional.strided_vanilla_conv(x, kernels, biases, **settings)
  return by_platform(lambda form, x, kernels, biases: oct_conv_in_form(form, x, kernels, biases, **settings),
                     x, dict(kernels), biases, relevant=("paths", "pool", "conv", "upsample"))


def oct_conv_in_form(form: Form, x: OctTensor, kernels: Mapping[str, Array], biases: Mapping[str, Array], *,
                     strides: Any = 1, octave_axes: Any = None, kernel_dilation: Any = 1,
                     precision: Any = None) -> OctTensor:
  """`functional.oct_conv` (with ``pool_stride=True``) executed in ``form``."""
  plan = functional.plan_paths(as_oct(x), kernels, strides=strides, octave_axes=octave_axes,
                               kernel_dilation=kernel_dilation, pool_method=form.pool,
                               upsample_method=form.upsample if form.upsample in UPSAMPLE_METHODS else "broadcast")
  conv = chosen_conv() or CONVS[form.conv]

  def run(inputs: Sequence[Array], path_kernels: Sequence[Array], groups: int) -> Array:
    inp = inputs[0] if len(inputs) == 1 else jnp.concatenate(inputs, axis=-1)
    kernel = path_kernels[0] if len(path_kernels) == 1 else jnp.concatenate(path_kernels, axis=-2)
    return conv(inp, kernel, groups, precision, plan.dilation)

  # L->H and its upsample as one transposed convolution (upsample="transposed", where it applies).
  transposed = form.upsample == "transposed" and "l2h" in kernels and plan.groups["l2h"] == 1 \
      and bool(plan.upsample_axes)
  low_paths = all(p in kernels and plan.groups[p] == 1 for p in ("l2l", "l2h")) and not transposed
  low_paths = low_paths and plan.inputs["l2l"].shape == plan.inputs["l2h"].shape
  if form.paths == "two_convs" and low_paths and "h2l" in kernels and plan.groups["h2l"] == 1 \
      and plan.inputs["h2l"].shape[1:-1] == plan.inputs["l2l"].shape[1:-1]:
    # [P(X^H) | X^L] * [[W^hl, 0], [W^ll, W^lh]] = [Y^L | L->H before U]: one low-resolution conv.
    w_hl, w_ll, w_lh = kernels["h2l"], kernels["l2l"], kernels["l2h"]
    top = jnp.concatenate([w_hl, jnp.zeros(w_hl.shape[:-1] + w_lh.shape[-1:], w_hl.dtype)], axis=-1)
    block = jnp.concatenate([top, jnp.concatenate([w_ll, w_lh], axis=-1)], axis=-2)
    z = conv(jnp.concatenate([plan.inputs["h2l"], plan.inputs["l2l"]], axis=-1), block, 1, precision,
             plan.dilation)
    low, from_low = z[..., :w_ll.shape[-1]], plan.upsample_l2h(z[..., w_ll.shape[-1]:])
    high = from_low if "h2h" not in kernels else run([plan.inputs["h2h"]], [kernels["h2h"]], plan.groups["h2h"]) + from_low
    return OctTensor(functional.with_biases(high, ("h2h", "l2h"), biases),
                     functional.with_biases(low, ("l2l", "h2l"), biases))
  if form.paths == "shared_input" and low_paths:
    # X^L * [W^ll | W^lh] = [L->L | L->H before U]: X^L read once.
    c_low = kernels["l2l"].shape[-1]
    z = conv(plan.inputs["l2l"], jnp.concatenate([kernels["l2l"], kernels["l2h"]], axis=-1), 1, precision,
             plan.dilation)
    low, high = z[..., :c_low], plan.upsample_l2h(z[..., c_low:])
    if "h2l" in kernels:
      low = low + run([plan.inputs["h2l"]], [kernels["h2l"]], plan.groups["h2l"])
    if "h2h" in kernels:
      high = run([plan.inputs["h2h"]], [kernels["h2h"]], plan.groups["h2h"]) + high
    return OctTensor(functional.with_biases(high, ("h2h", "l2h"), biases),
                     functional.with_biases(low, ("l2l", "h2l"), biases))
  fuse = form.paths != "separate"  # the closest form for the layers the others do not apply to

  def part(direct: str, cross: str) -> Array | None:
    present = [p for p in (direct, cross) if p in kernels]
    if not present:
      return None
    inputs = [plan.inputs[p] for p in present]
    # 'shared_widening': one convolution only where the part has as many channels as both inputs.
    widens = form.paths != "shared_widening" or kernels[present[0]].shape[-1] >= sum(i.shape[-1] for i in inputs)
    if fuse and widens and len(present) == 2 and inputs[0].shape[1:-1] == inputs[1].shape[1:-1] \
        and plan.groups[direct] == plan.groups[cross] == 1 and not (transposed and cross == "l2h"):
      # Y = [X_a | X_b] * [W_a ; W_b]: the two paths as one convolution over concatenated inputs.
      y = run(inputs, [kernels[p] for p in present], 1)
      y = plan.upsample_l2h(y) if present[-1] == "l2h" else y
    else:
      terms = [l2h_transposed(plan, plan.inputs[p], kernels[p], precision) if p == "l2h" and transposed else
               plan.upsample_l2h(run([plan.inputs[p]], [kernels[p]], plan.groups[p])) if p == "l2h" else
               run([plan.inputs[p]], [kernels[p]], plan.groups[p]) for p in present]
      y = terms[0] if len(terms) == 1 else terms[0] + terms[1]
    return functional.with_biases(y, present, biases)

  return OctTensor(high=part("h2h", "l2h"), low=part("l2l", "h2l"))


def l2h_transposed(plan: functional.PathPlan, x: Array, kernel: Array, precision: Any = None) -> Array:
  """``U(conv(x, kernel))`` (the L->H term, upsampled and cropped) as one transposed convolution.

  On an upsampled axis, with kernel size k, dilation d and SAME padding p = d (k - 1) / 2:
  ``U(Z)[i] = Z[i // 2] = sum_t W[t] x[i // 2 + d t - p]``. Dilating ``x`` by 2 (``x[j]`` at
  ``2j``) and padding it by ``2p + 1`` in front, output ``i`` reads position ``i + s - 2p - 1``,
  which holds ``x[i // 2 + d t - p]`` for ``s = 2 d t + 1 - (i mod 2)``. So the kernel K has
  ``2 d (k - 1) + 2`` taps, ``K[2 d t] = K[2 d t + 1] = W[t]`` (each tap repeated once, for
  d = 1), and the padding behind makes the output the high size (2n - 1 or 2n). Other axes
  are as in `functional.conv`. It runs `lax.conv_general_dilated` itself: the form's ``conv``
  and `use_conv` do not apply to this path.
  """
  nd = plan.spatial_dims
  axes = set(plan.upsample_axes)
  dtype = jnp.result_type(x, kernel)
  k = kernel.astype(dtype)
  zero = jnp.zeros((), dtype)
  pads, lhs_dilation = [], []
  for a in range(nd):
    size, d = kernel.shape[a], plan.dilation[a]
    p = d * (size - 1) // 2
    if a not in axes:
      pads.append((p, p))
      lhs_dilation.append(1)
      continue
    config = [(0, 0, 0)] * kernel.ndim
    config[a] = (0, 1, 2 * d - 1)
    spread = lax.pad(k, zero, config)
    config[a] = (1, 0, 2 * d - 1)
    k = spread + lax.pad(k, zero, config)
    taps = 2 * d * (size - 1) + 2
    size_out = 2 * x.shape[1 + a] if plan.high_size is None else plan.high_size[a]  # no high input: 2n
    pads.append((2 * p + 1, size_out + taps - 1 - (2 * p + 1) - (2 * x.shape[1 + a] - 1)))
    lhs_dilation.append(2)
  dilation = tuple(1 if a in axes else plan.dilation[a] for a in range(nd))
  with jax.named_scope("l2h_transposed"):
    return lax.conv_general_dilated(x.astype(dtype), k, (1,) * nd, pads, lhs_dilation=tuple(lhs_dilation),
                                    rhs_dilation=dilation, dimension_numbers=functional.dimension_numbers(nd),
                                    precision=precision)


# ----------------------------------------------------------------------------- OctBatchNorm forms


def batch_norm(x: OctTensor, scale: Array | None, bias: Array | None, averages: tuple[Array, Array], momentum: float,
               epsilon: float, dtype: Any = None, axis_name: str | None = None
               ) -> tuple[OctTensor, tuple[Array, Array]]:
  """BatchNorm's training step on both parts in the platform's form: ``(y, new running (mean, var))``.

  ``scale``, ``bias`` and the running ``averages`` (``(mean, var)``) run over all of ``x``'s
  channels, the high part's first (`octflax.OctBatchNorm`'s variables); each part is
  `functional.batch_norm` with its channels of them, and the averages are updated with the batch
  statistics by `functional.running_average` (``momentum * average + (1 - momentum) * statistic``;
  in XLA:CPU's form with each part's statistic scaled before the join, as when each part was a
  `flax.linen.BatchNorm` of its own). With ``norm_grad='one_pass'`` the parts go through
  `octflax.execution.norm.normalize` (one reduction forward and one backward, for both parts
  together under ``norm='joint'``).
  """
  x = as_oct(x)
  return by_platform(lambda form, high, low: batch_norm_in_form(form, OctTensor(high, low), scale, bias, averages,
                                                                momentum, epsilon, dtype, axis_name),
                     x.high, x.low, relevant=("norm", "pool", "norm_grad", "conv"))


def batch_norm_in_form(form: Form, x: OctTensor, scale: Array | None, bias: Array | None,
                       averages: tuple[Array, Array], momentum: float, epsilon: float, dtype: Any = None,
                       axis_name: str | None = None) -> tuple[OctTensor, tuple[Array, Array]]:
  """`batch_norm` in ``form``."""
  present = [p for p in (x.high, x.low) if p is not None]
  if form.norm_grad == "one_pass":
    ys, mean, var = normalize(present, scale, bias, epsilon, dtype, axis_name,
                              joint=form.pool if form.norm == "joint" else None)
    ys = iter(ys)
    new = tuple(functional.running_average(a, st, momentum) for a, st in zip(averages, (mean, var)))
    return OctTensor(*(None if p is None else next(ys) for p in (x.high, x.low))), new
  stats = [st for st in batch_stats_in_form(form, x, axis_name) if st is not None]
  slices = channel_slices(present)
  take = lambda v, s: None if v is None else v[s]
  ys = iter([functional.batch_norm(p, m, v, take(scale, s), take(bias, s), epsilon, dtype)
             for p, (m, v), s in zip(present, stats, slices)])
  if form.conv == "xla_cpu":
    # Each part's statistic scaled before the join (`functional.running_average`): XLA:CPU then
    # folds ``(sum / n) * (1 - momentum)`` into one multiply, as it did when each part was a
    # BatchNorm of its own, so a run saved at checkpoint format 2 resumes bit for bit
    # (tests/test_checkpoint.py). Not in the other forms: for a TPU v5e the change moved the
    # compiler's choices for the whole Oct-ResNet-50 step (estimate 71.23 -> 72.31 ms).
    new = tuple(functional.running_average(a, [st[i] for st in stats], momentum) for i, a in enumerate(averages))
  else:
    new = tuple(functional.running_average(a, stats[0][i] if len(stats) == 1 else
                                           jnp.concatenate([st[i] for st in stats]), momentum)
                for i, a in enumerate(averages))
  return OctTensor(*(None if p is None else next(ys) for p in (x.high, x.low))), new


def batch_stats(x: OctTensor, axis_name: str | None = None) -> tuple[tuple[Array, Array] | None, ...]:
  """Each part's BatchNorm statistics ``(mean, var)`` (float32, per channel) in the platform's form.

  ``var = E[x^2] - E[x]^2`` clipped at 0, averaged over the axis ``axis_name`` when given, as
  `flax.linen.BatchNorm` computes them; a part that is None gives None.
  """
  x = as_oct(x)
  return by_platform(lambda form, high, low: batch_stats_in_form(form, OctTensor(high, low), axis_name),
                     x.high, x.low, relevant=("norm", "pool"))


def batch_stats_in_form(form: Form, x: OctTensor, axis_name: str | None = None
                        ) -> tuple[tuple[Array, Array] | None, tuple[Array, Array] | None]:
  """`batch_stats` in ``form``: ``'joint'`` sums both parts in one reduction, ``'per_part'`` one each."""
  parts = [None if p is None else p.astype(jnp.promote_types(p.dtype, jnp.float32)) for p in (x.high, x.low)]
  present = [p for p in parts if p is not None]
  if form.norm == "joint" and joinable(present):
    # One reduction over [N, *low, C_h + C_l] gives both parts' sums of x and x^2.
    plain_sums = lambda values: tuple(v.sum(tuple(range(v.ndim - 1))) for v in values)
    mean, mean2 = batch_means([(p, p * p) for p in present], form.pool, axis_name, plain_sums)
    return tuple((mean[s], jnp.maximum(0.0, mean2[s] - mean[s] * mean[s])) for s in channel_slices(present))
  stats = []
  for p in parts:
    if p is None:
      stats.append(None)
      continue
    axes = tuple(range(p.ndim - 1))
    mean, mean2 = p.mean(axes), (p * p).mean(axes)
    if axis_name is not None:
      mean, mean2 = tuple(lax.pmean(jnp.stack([mean, mean2]), axis_name))
    stats.append((mean, jnp.maximum(0.0, mean2 - mean * mean)))
  return tuple(stats)


__all__ = ["batch_norm", "batch_norm_in_form", "batch_stats", "batch_stats_in_form", "oct_conv",
           "oct_conv_in_form"]
