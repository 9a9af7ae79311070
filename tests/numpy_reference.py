"""A float64 NumPy reference of OctConv, written from docs/design.md ("Semantics of OctConv").

Nothing here imports or mirrors octflax: every operator is a direct loop over the
definition, so the tests hold the library against the contract, not against itself.

  conv     stride-1 cross-correlation (what `flax.linen.Conv` computes), symmetric zero
           padding (k-1)/2 each side, HWIO kernel [kh, kw, in/groups, out], grouped
  pool     2x2 average pool, stride 2, ceil mode, averaging only the in-map pixels
  up       2x nearest upsample, cropped to the high part's size

  stride 1: Y^H = conv(X^H; W_hh) + up(conv(X^L; W_lh))
            Y^L = conv(X^L; W_ll) + conv(pool(X^H); W_hl)
  stride 2: Y^H = conv(pool(X^H); W_hh) + conv(X^L; W_lh)          (no upsample)
            Y^L = conv(pool(X^L); W_ll) + conv(pool(pool(X^H)); W_hl)
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np


def conv2d(x, w, groups: int = 1, stride: int = 1):
  """Cross-correlation of x [N, H, W, Cin] with w [kh, kw, Cin/groups, Cout], float64.

  Symmetric zero padding (k-1)/2 on each side; with ``stride`` > 1 the stride-1 result
  is subsampled at every ``stride``-th pixel (a strided conv with symmetric padding).
  """
  x = np.asarray(x, np.float64)
  w = np.asarray(w, np.float64)
  n, h, wd, cin = x.shape
  kh, kw, cin_g, cout = w.shape
  assert kh % 2 == 1 and kw % 2 == 1, "odd kernels only"
  assert cin == cin_g * groups, (cin, cin_g, groups)
  assert cout % groups == 0, (cout, groups)
  ph, pw = (kh - 1) // 2, (kw - 1) // 2
  xp = np.zeros((n, h + 2 * ph, wd + 2 * pw, cin))
  xp[:, ph:ph + h, pw:pw + wd, :] = x
  cout_g = cout // groups
  out = np.zeros((n, h, wd, cout))
  for g in range(groups):
    xg = xp[..., g * cin_g:(g + 1) * cin_g]
    wg = w[..., g * cout_g:(g + 1) * cout_g]
    for i in range(kh):
      for j in range(kw):
        out[..., g * cout_g:(g + 1) * cout_g] += np.einsum(
            "nhwc,cd->nhwd", xg[:, i:i + h, j:j + wd, :], wg[i, j])
  return out[:, ::stride, ::stride, :]


def avg_pool2(x):
  """2x2 / stride 2 average pool, ceil mode, mean over the pixels inside the map."""
  x = np.asarray(x, np.float64)
  h, w = x.shape[-3], x.shape[-2]
  oh, ow = math.ceil(h / 2), math.ceil(w / 2)
  out = np.zeros(x.shape[:-3] + (oh, ow, x.shape[-1]))
  for i in range(oh):
    for j in range(ow):
      # NumPy slicing stops at the border, so only in-map pixels are averaged.
      out[..., i, j, :] = x[..., 2 * i:2 * i + 2, 2 * j:2 * j + 2, :].mean(axis=(-3, -2))
  return out


def upsample2(x, size=None):
  """Nearest 2x upsample y[i, j] = x[i // 2, j // 2], cropped to ``size`` = (H, W)."""
  x = np.asarray(x, np.float64)
  h, w = x.shape[-3], x.shape[-2]
  th, tw = (2 * h, 2 * w) if size is None else size
  out = np.zeros(x.shape[:-3] + (th, tw, x.shape[-1]))
  for i in range(th):
    for j in range(tw):
      out[..., i, j, :] = x[..., i // 2, j // 2, :]
  return out


def max_pool_same(x, window: int, stride: int):
  """Max pool with TensorFlow/Flax SAME padding (extra pad at the end), -inf padding."""
  x = np.asarray(x, np.float64)
  n, h, w, c = x.shape
  oh, ow = math.ceil(h / stride), math.ceil(w / stride)
  pad_h = max((oh - 1) * stride + window - h, 0)
  pad_w = max((ow - 1) * stride + window - w, 0)
  top, left = pad_h // 2, pad_w // 2
  xp = np.full((n, h + pad_h, w + pad_w, c), -np.inf)
  xp[:, top:top + h, left:left + w, :] = x
  out = np.zeros((n, oh, ow, c))
  for i in range(oh):
    for j in range(ow):
      out[:, i, j, :] = xp[:, i * stride:i * stride + window, j * stride:j * stride + window, :].max(axis=(1, 2))
  return out


def oct_conv(xh, xl, kernels: Mapping[str, np.ndarray], biases: Mapping[str, np.ndarray] | None = None,
             stride: int = 1, groups: int | Mapping[str, int] = 1):
  """OctConv of (xh, xl) (either may be None) with path kernels; returns (yh, yl).

  ``groups``: one group count for every path, or a per-path mapping (depthwise).
  """
  biases = dict(biases or {})
  if isinstance(groups, int):
    groups = {p: groups for p in ("h2h", "h2l", "l2h", "l2l")}
  assert stride in (1, 2)
  # Stride 2: the input (both parts) is average-pooled first, then everything is stride 1;
  # the L->H path reads the unpooled X^L, which is already at the output resolution.
  if stride == 2:
    xh_s = None if xh is None else avg_pool2(xh)
    xl_to_low = None if xl is None else avg_pool2(xl)
  else:
    xh_s = xh
    xl_to_low = xl
  if xh_s is not None:
    high_size = xh_s.shape[1:3]
  else:  # no high input: the high output is twice the low input (stride 1) or equal (stride 2)
    high_size = (2 * xl.shape[1], 2 * xl.shape[2]) if stride == 1 else xl.shape[1:3]

  def add(acc, term):
    return term if acc is None else acc + term

  yh = None
  if "h2h" in kernels:
    yh = add(yh, conv2d(xh_s, kernels["h2h"], groups["h2h"]))
  if "l2h" in kernels:
    t = conv2d(xl, kernels["l2h"], groups["l2h"])
    if stride == 1:
      t = upsample2(t, high_size)
    yh = add(yh, t)
  yl = None
  if "l2l" in kernels:
    yl = add(yl, conv2d(xl_to_low, kernels["l2l"], groups["l2l"]))
  if "h2l" in kernels:
    yl = add(yl, conv2d(avg_pool2(xh_s), kernels["h2l"], groups["h2l"]))
  for path, b in biases.items():
    b = np.asarray(b, np.float64)
    if path in ("h2h", "l2h"):
      yh = yh + b
    else:
      yl = yl + b
  return yh, yl


def split(channels: int, alpha: float) -> tuple[int, int]:
  """(C_h, C_l) with C_l = floor(alpha * C), the rule stated in docs/design.md ("Channel split")."""
  low = math.floor(alpha * channels)
  return channels - low, low


def path_channels(c_in: int, c_out: int, alpha_in: float, alpha_out: float):
  """Present paths and their (input, output) channel counts per the design."""
  ih, il = split(c_in, alpha_in)
  oh, ol = split(c_out, alpha_out)
  paths = {"h2h": (ih, oh), "h2l": (ih, ol), "l2h": (il, oh), "l2l": (il, ol)}
  return {p: io for p, io in paths.items() if io[0] and io[1]}


def blocks(kernel, bias, c_in: int, alpha_in: float, alpha_out: float, groups: int = 1, depthwise: bool = False):
  """The paths' kernels and biases in an OctConv's one kernel [..., C_in / groups, C_out] and bias [C_out].

  docs/design.md, "Parameters": path a2b is the block of input part a's rows (the high part's
  C_in^H / groups rows first) and output part b's columns (the high part's C_out^H first); a
  depthwise kernel [..., 1, C] splits by columns only, into h2h and l2l. Each output part's bias
  goes to its direct path, or to the cross path when the direct one is absent.

  Returns:
    ``(kernels, biases, groups_per_path)``.
  """
  c_out = kernel.shape[-1]
  paths = path_channels(c_in, c_out, alpha_in, alpha_out)
  out_high = split(c_out, alpha_out)[0]
  cols = {"h": slice(0, out_high), "l": slice(out_high, c_out)}
  if depthwise:
    paths = {p: io for p, io in paths.items() if p in ("h2h", "l2l")}
    kernels = {p: kernel[..., :, cols[p[2]]] for p in paths}
    per_path_groups = {p: io[0] for p, io in paths.items()}
  else:
    in_rows = split(c_in, alpha_in)[0] // groups
    rows = {"h": slice(0, in_rows), "l": slice(in_rows, kernel.shape[-2])}
    kernels = {p: kernel[..., rows[p[0]], cols[p[2]]] for p in paths}
    per_path_groups = {p: groups for p in paths}
  biases = {}
  if bias is not None:
    for direct, cross in (("h2h", "l2h"), ("l2l", "h2l")):
      carrier = next((p for p in (direct, cross) if p in paths), None)
      if carrier is not None:
        biases[carrier] = bias[cols[carrier[2]]]
  return kernels, biases, per_path_groups


# ----------------------------------------------------------------------------- any number of spatial axes
#
# docs/design.md, "Spatial rank and octave axes": the low part has ceil(n/2) of the high part's
# size on the octave axes O and the same size on the others. With S the axes of stride 2:
#   h2h: conv(pool_S(X^H))             h2l: conv(pool_O(pool_S(X^H)))
#   l2l: conv(pool_S(X^L))             l2h: up_{O-S}(conv(pool_{S-O}(X^L))), cropped to Y^H's size


def conv_nd(x, w, groups: int = 1, dilation=None, stride=None):
  """Cross-correlation of x [N, *spatial, Cin] with w [*k, Cin/groups, Cout], float64.

  Zero padding d (k-1)/2 on each side of each axis (odd k), dilation d; with ``stride`` the
  stride-1 result is subsampled on each axis (a strided conv with symmetric padding).
  """
  x = np.asarray(x, np.float64)
  w = np.asarray(w, np.float64)
  rank = w.ndim - 2
  dilation = tuple(dilation or (1,) * rank)
  spatial = x.shape[1:-1]
  assert len(spatial) == rank, (x.shape, w.shape)
  cin, cin_g, cout = x.shape[-1], w.shape[-2], w.shape[-1]
  assert all(k % 2 == 1 for k in w.shape[:rank]), "odd kernels only"
  assert cin == cin_g * groups and cout % groups == 0, (cin, cin_g, cout, groups)
  pads = [d * (k - 1) // 2 for k, d in zip(w.shape[:rank], dilation)]
  xp = np.pad(x, [(0, 0)] + [(p, p) for p in pads] + [(0, 0)])
  cout_g = cout // groups
  out = np.zeros((x.shape[0], *spatial, cout))
  for g in range(groups):
    for tap in np.ndindex(*w.shape[:rank]):
      window = tuple(slice(t * d, t * d + n) for t, d, n in zip(tap, dilation, spatial))
      xs = xp[(slice(None), *window, slice(g * cin_g, (g + 1) * cin_g))]
      out[..., g * cout_g:(g + 1) * cout_g] += xs @ w[tap][:, g * cout_g:(g + 1) * cout_g]
  if stride is not None:
    out = out[(slice(None), *(slice(None, None, s) for s in stride))]
  return out


def pool_axes(x, axes):
  """Average pool by 2 (ceil mode, in-map elements only) on the spatial ``axes`` of [N, *spatial, C]."""
  x = np.asarray(x, np.float64)
  for a in axes:
    axis = 1 + a
    n = x.shape[axis]
    # The mean over an in-map box is the product of per-axis means: pool one axis at a time.
    x = np.stack([np.take(x, range(2 * i, min(2 * i + 2, n)), axis=axis).mean(axis=axis)
                  for i in range(math.ceil(n / 2))], axis=axis)
  return x


def upsample_axes(x, axes, size=None):
  """Nearest upsample by 2 on the spatial ``axes``, cropped to the spatial ``size`` when given."""
  x = np.asarray(x, np.float64)
  for a in axes:
    x = np.repeat(x, 2, axis=1 + a)
  if size is not None:
    x = x[(slice(None), *(slice(0, s) for s in size))]
  return x


def oct_conv_nd(xh, xl, kernels, biases=None, strides=None, groups=1, octave_axes=None, dilation=None):
  """N-D OctConv of (xh, xl) (either may be None) with path kernels; returns (yh, yl)."""
  rank = next(iter(kernels.values())).ndim - 2
  octave = tuple(range(rank)) if octave_axes is None else tuple(octave_axes)
  strides = tuple(strides or (1,) * rank)
  s2 = [i for i in range(rank) if strides[i] == 2]
  if isinstance(groups, int):
    groups = {p: groups for p in ("h2h", "h2l", "l2h", "l2l")}
  biases = dict(biases or {})
  xh_s = None if xh is None else pool_axes(xh, s2)

  def add(acc, term):
    return term if acc is None else acc + term

  yh = yl = None
  if "h2h" in kernels:
    yh = add(yh, conv_nd(xh_s, kernels["h2h"], groups["h2h"], dilation))
  if "l2h" in kernels:
    t = conv_nd(pool_axes(xl, [i for i in s2 if i not in octave]), kernels["l2h"], groups["l2h"], dilation)
    t = upsample_axes(t, [i for i in octave if i not in s2], None if xh_s is None else xh_s.shape[1:-1])
    yh = add(yh, t)
  if "l2l" in kernels:
    yl = add(yl, conv_nd(pool_axes(xl, s2), kernels["l2l"], groups["l2l"], dilation))
  if "h2l" in kernels:
    yl = add(yl, conv_nd(pool_axes(xh_s, octave), kernels["h2l"], groups["h2l"], dilation))
  for path, b in biases.items():
    if path in ("h2h", "l2h"):
      yh = yh + np.asarray(b, np.float64)
    else:
      yl = yl + np.asarray(b, np.float64)
  return yh, yl


# ----------------------------------------------------------------------------- transposed OctConv
#
# docs/design.md, "Transposed OctConv": each path is the transposed conv of its input part with
# the pooling (h2l) and upsampling (l2h) of OctConv at stride 1; here the high output has
# s * n positions (or a given size), the low one ceil(half) of that on the octave axes.


def conv_transpose_nd(x, w, stride, dilation=None):
  """What flax.linen.ConvTranspose(padding='SAME') computes, float64, from its definition.

  On each axis: s - 1 zeros between the inputs, zero padding (a, b) with k' = d (k - 1) + 1,
  a = k' - 1 if s > k' - 1 else ceil((k' + s - 2) / 2), b = k' + s - 2 - a (lax.conv_transpose's
  SAME rule), then a stride-1 cross-correlation with the dilated kernel: s * n outputs.
  """
  x = np.asarray(x, np.float64)
  w = np.asarray(w, np.float64)
  rank = w.ndim - 2
  dilation = tuple(dilation or (1,) * rank)
  spatial = x.shape[1:-1]
  zeros_between = np.zeros((x.shape[0], *(s * (n - 1) + 1 for s, n in zip(stride, spatial)), x.shape[-1]))
  zeros_between[(slice(None), *(slice(None, None, s) for s in stride))] = x
  pads = []
  for k, s, d in zip(w.shape[:rank], stride, dilation):
    k_eff = d * (k - 1) + 1
    a = k_eff - 1 if s > k_eff - 1 else math.ceil((k_eff + s - 2) / 2)
    pads.append((a, k_eff + s - 2 - a))
  xp = np.pad(zeros_between, [(0, 0)] + pads + [(0, 0)])
  out_size = tuple(s * n for s, n in zip(stride, spatial))
  out = np.zeros((x.shape[0], *out_size, w.shape[-1]))
  for tap in np.ndindex(*w.shape[:rank]):
    window = tuple(slice(t * d, t * d + n) for t, d, n in zip(tap, dilation, out_size))
    out += xp[(slice(None), *window, slice(None))] @ w[tap]
  return out


def oct_conv_transpose_nd(xh, xl, kernels, biases=None, strides=None, octave_axes=None, dilation=None,
                          output_size=None):
  """Transposed OctConv of (xh, xl); returns (yh, yl)."""
  rank = next(iter(kernels.values())).ndim - 2
  octave = tuple(range(rank)) if octave_axes is None else tuple(octave_axes)
  strides = tuple(strides or (1,) * rank)
  in_high = xh.shape[1:-1] if xh is not None else tuple(2 * n if i in octave else n
                                                          for i, n in enumerate(xl.shape[1:-1]))
  high_size = tuple(output_size or (s * n for s, n in zip(strides, in_high)))
  low_size = tuple(math.ceil(n / 2) if i in octave else n for i, n in enumerate(high_size))

  def crop(y, size):
    return y[(slice(None), *(slice(0, n) for n in size))]

  biases = dict(biases or {})
  yh = yl = None
  if "h2h" in kernels:
    yh = crop(conv_transpose_nd(xh, kernels["h2h"], strides, dilation), high_size)
  if "l2h" in kernels:
    t = upsample_axes(conv_transpose_nd(xl, kernels["l2h"], strides, dilation), octave)
    yh = crop(t, high_size) if yh is None else yh + crop(t, high_size)
  if "l2l" in kernels:
    yl = crop(conv_transpose_nd(xl, kernels["l2l"], strides, dilation), low_size)
  if "h2l" in kernels:
    t = crop(conv_transpose_nd(pool_axes(xh, octave), kernels["h2l"], strides, dilation), low_size)
    yl = t if yl is None else yl + t
  for path, b in biases.items():
    if path in ("h2h", "l2h"):
      yh = yh + np.asarray(b, np.float64)
    else:
      yl = yl + np.asarray(b, np.float64)
  return yh, yl
