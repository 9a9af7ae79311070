"""How OctConv is executed on each backend: the forms of its convolutions, pooling and BatchNorm.

`octflax.functional` holds the math (`functional.oct_conv`: each path its own convolution,
exactly what `flax.linen.Conv` computes per path). This module owns every choice of how that
math runs, so that models and checkpoints never carry one. A `Form` names six choices, each
computing the same numbers to float rounding with the same parameters:

- ``paths``: ``'separate'`` (four convolutions, as written), ``'shared_output'`` (the paths
  that write one output part at one resolution as one convolution over their concatenated
  inputs), ``'shared_input'`` (L->L and L->H as one convolution of X^L with their kernels
  side by side: three convolutions at stride 1), or ``'two_convs'`` (at stride 1, H->H at full
  resolution and one low-resolution convolution of ``concat([P(X^H), X^L])`` with the block
  kernel ``[[W^hl, 0], [W^ll, W^lh]]``, whose outputs are Y^L and the L->H term before its
  upsample), or ``'shared_widening'`` (``'shared_output'`` only for a part with at least as
  many channels as the two inputs together, e.g. a bottleneck's last 1x1 convolution: there the
  part's gradient is read by two convolutions instead of four; the others path by path). A layer
  a form does not apply to (stride 2, two paths, groups) runs the closest one: ``'shared_output'``.
- ``pool``: `avg_pool2`'s method, ``'reshape'`` (a reduction) or ``'slices'`` (a sum of
  strided slices, elementwise, which XLA can fuse into its reader).
- ``norm``: ``'per_part'`` (each part's BatchNorm statistics as its own reduction) or
  ``'joint'`` (both parts' statistics in one reduction); the same variables and values.
- ``conv``: the stride-1 convolution each path runs, ``'plain'`` (`functional.conv`) or
  ``'xla_cpu'`` (`xla_cpu_conv`: 1x1 as a dot, channel counts padded to a multiple of 8).
- ``norm_grad``: BatchNorm's gradient, ``'autodiff'`` (jax's) or ``'one_pass'`` (hand-written:
  one reduction forward and one backward, per part or joint; `octflax.execution.norm`).
- ``upsample``: how the L->H term is upsampled: `upsample2`'s method, ``'broadcast'`` (a
  broadcast and a reshape), ``'pads'`` (a sum of interior-padded copies, whose gradient is a sum
  of strided slices) or ``'ones_conv'`` (a depthwise transposed convolution with a window of
  ones), or ``'transposed'`` (no upsample: the L->H convolution and its upsample as one
  transposed convolution, stride 2, of X^L with each tap of W^lh repeated on each octave axis;
  `forms.l2h_transposed`).

The default is the form of the platform a step is lowered for (`PLATFORM_FORMS`: `CPU_FORM`,
`GPU_FORM`, `TPU_FORM`; `REFERENCE` elsewhere), chosen when the function is lowered
(`jax.lax.platform_dependent`), never by the host, so a step lowered on a CPU for a GPU or TPU
(`octflax.aot`) carries that accelerator's form. `use_form` chooses one
form for every OctConv and OctBatchNorm traced inside; `use_conv` replaces the path
convolution of whatever form runs::

  with octflax.execution.use_form("two_convs+slices"):
    y = model.apply(variables, x)
  with octflax.execution.use_conv(octflax.functional.conv):   # exactly nn.Conv's numbers
    y = model.apply(variables, x)

Both apply while a function is traced (a function jitted before keeps its compiled form).
The XLA compiler options octflax compiles with (`train_compiler_options`,
`inference_compiler_options`, `init_compiler_options`) are execution choices too, and live here.
The measurements behind each default are in docs/benchmarks.md.
"""

from octflax.execution.choice import (CONVS, CPU_FORM, GPU_FORM, PLATFORM_FORMS, PROBE_FORMS, REFERENCE, TPU_FORM, Form,
                                      by_platform,
                                      chosen_conv, form_for, chosen_form, current_conv, default_conv, platform_conv, use_conv,
                                      use_form)
from octflax.execution.compiler import (inference_compiler_options, init_compiler_options, train_compiler_options,
                                        xla_accepts)
from octflax.execution.cpu import xla_cpu_conv, xla_cpu_conv_unpadded
from octflax.execution.forms import (batch_norm, batch_norm_in_form, batch_stats, batch_stats_in_form,
                                     oct_conv, oct_conv_in_form)

__all__ = [
    "CONVS", "CPU_FORM", "Form", "GPU_FORM", "PLATFORM_FORMS", "PROBE_FORMS", "REFERENCE", "TPU_FORM", "batch_norm",
    "batch_norm_in_form", "batch_stats", "batch_stats_in_form",
    "by_platform", "chosen_conv", "chosen_form", "form_for", "current_conv", "default_conv", "inference_compiler_options",
    "init_compiler_options", "oct_conv", "oct_conv_in_form", "platform_conv",
    "train_compiler_options",
    "use_conv", "use_form", "xla_accepts", "xla_cpu_conv", "xla_cpu_conv_unpadded",
]
