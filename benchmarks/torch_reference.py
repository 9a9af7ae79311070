"""PyTorch reference networks with the module structure of the PyTorch Oct-ResNet port.

Written from docs/design.md's equations (stride 2 = 2x2 average pool, then a stride-1 conv;
H->L pools X^H; L->H upsamples by nearest neighbour, cropped to X^H's size, at stride 1;
BatchNorm per part; odd sizes: ceil-mode pooling over the pixels inside the map), with the
port's module names, so that ``state_dict()`` has the port's keys. `OctResNet` is the
port's Oct-ResNet (bottleneck depths), `TVResNet` torchvision's ResNet-50 layout. The tests
import them to check `octflax.convert` against PyTorch's logits, and
`benchmarks/benchmark.py` times `OctResNet` next to octflax (``torch_oct_resnet50``).

`split`, `blocks`, `LAYERS` and `BOTTLENECK` need no torch; the networks exist only when
torch is installed.
"""

from __future__ import annotations

try:
  import torch
  from torch import nn as tnn
  from torch.nn import functional as TF
except ImportError:
  torch = None

LAYERS = {"oct_resnet18": (2, 2, 2, 2), "oct_resnet26": (2, 2, 2, 2), "oct_resnet34": (3, 4, 6, 3),
          "oct_resnet50": (3, 4, 6, 3), "oct_resnet101": (3, 4, 23, 3)}
BOTTLENECK = {"oct_resnet18": False, "oct_resnet26": True, "oct_resnet34": False,
              "oct_resnet50": True, "oct_resnet101": True}


def split(channels: int, alpha: float) -> tuple[int, int]:
  low = int(alpha * channels)
  return channels - low, low


def blocks(arch: str, alpha: float):
  """(layer, index, in, width, out, stride, alpha_in, alpha_out, has_downsample) of every block."""
  bottleneck = BOTTLENECK[arch]
  expansion = 4 if bottleneck else 1
  inplanes, a_in = 64, 0.0
  for layer, (count, planes) in enumerate(zip(LAYERS[arch], (64, 128, 256, 512)), start=1):
    a_out = 0.0 if layer == 4 else alpha
    for index in range(count):
      stride = 2 if layer > 1 and index == 0 else 1
      out = planes * expansion
      yield (layer, index, inplanes, planes, out, stride, a_in, a_out,
             stride != 1 or inplanes != out)
      inplanes, a_in = out, a_out


# ----------------------------------------------------------------------------- networks
# A PyTorch Oct-ResNet with the port's module structure (so its state_dict keys are the
# port's), written from docs/design.md: stride 2 = 2x2 average pool then a stride-1 conv;
# H->L pools X^H; L->H upsamples (nearest, cropped to X^H's size) at stride 1 and not at
# stride 2; BatchNorm per part; odd sizes: ceil-mode pooling over the pixels inside the map.

if torch is not None:

  def _pool(x):
    return TF.avg_pool2d(x, 2, 2, ceil_mode=True)  # divides by the pixels inside the map

  class OctaveConv(tnn.Module):

    def __init__(self, c_in, c_out, k, alpha_in, alpha_out, stride=1):
      super().__init__()
      in_h, in_l = split(c_in, alpha_in)
      out_h, out_l = split(c_out, alpha_out)
      self.stride = stride
      make = lambda i, o: tnn.Conv2d(i, o, k, 1, (k - 1) // 2, bias=False) if i and o else None
      self.conv_l2l = make(in_l, out_l)
      self.conv_l2h = make(in_l, out_h)
      self.conv_h2l = make(in_h, out_l)
      self.conv_h2h = make(in_h, out_h)

    def forward(self, x):
      x_h, x_l = x
      if self.stride == 2:
        x_h = _pool(x_h) if x_h is not None else None
        x_ll = _pool(x_l) if x_l is not None else None
      else:
        x_ll = x_l
      y_h = y_l = None
      if self.conv_h2h is not None:
        y_h = self.conv_h2h(x_h)
      if self.conv_l2h is not None:
        t = self.conv_l2h(x_l)
        if self.stride == 1:
          t = TF.interpolate(t, scale_factor=2, mode="nearest")[:, :, :x_h.shape[2], :x_h.shape[3]]
        y_h = t if y_h is None else y_h + t
      if self.conv_l2l is not None:
        y_l = self.conv_l2l(x_ll)
      if self.conv_h2l is not None:
        t = self.conv_h2l(_pool(x_h))
        y_l = t if y_l is None else y_l + t
      return y_h, y_l

  class ConvBN(tnn.Module):

    def __init__(self, c_in, c_out, k, alpha_in, alpha_out, stride=1, act=False):
      super().__init__()
      out_h, out_l = split(c_out, alpha_out)
      self.conv = OctaveConv(c_in, c_out, k, alpha_in, alpha_out, stride)
      self.bn_h = tnn.BatchNorm2d(out_h) if out_h else None
      self.bn_l = tnn.BatchNorm2d(out_l) if out_l else None
      self.act = act

    def forward(self, x):
      y_h, y_l = self.conv(x)
      y_h = self.bn_h(y_h) if y_h is not None else None
      y_l = self.bn_l(y_l) if y_l is not None else None
      if self.act:
        y_h = TF.relu(y_h) if y_h is not None else None
        y_l = TF.relu(y_l) if y_l is not None else None
      return y_h, y_l

  class OctBottleneck(tnn.Module):

    def __init__(self, c_in, width, out, stride, alpha_in, alpha_out, downsample):
      super().__init__()
      self.conv1 = ConvBN(c_in, width, 1, alpha_in, alpha_out, act=True)
      self.conv2 = ConvBN(width, width, 3, alpha_out, alpha_out, stride, act=True)
      self.conv3 = ConvBN(width, out, 1, alpha_out, alpha_out)
      self.downsample = (tnn.Sequential(ConvBN(c_in, out, 1, alpha_in, alpha_out, stride))
                         if downsample else None)

    def forward(self, x):
      y_h, y_l = self.conv3(self.conv2(self.conv1(x)))
      s_h, s_l = self.downsample(x) if self.downsample is not None else x
      return (TF.relu(y_h + s_h) if y_h is not None else None,
              TF.relu(y_l + s_l) if y_l is not None else None)

  class OctResNet(tnn.Module):

    def __init__(self, arch, alpha, num_classes=1000):
      super().__init__()
      self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
      self.bn1 = tnn.BatchNorm2d(64)
      layers = [[] for _ in range(4)]
      for layer, _, c_in, width, out, stride, a_in, a_out, down in blocks(arch, alpha):
        layers[layer - 1].append(OctBottleneck(c_in, width, out, stride, a_in, a_out, down))
      self.layer1, self.layer2, self.layer3, self.layer4 = (tnn.Sequential(*l) for l in layers)
      self.fc = tnn.Linear(2048, num_classes)

    def forward(self, x):
      x = TF.max_pool2d(TF.relu(self.bn1(self.conv1(x))), 3, 2, 1)
      x = (x, None)
      for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
        for block in layer:
          x = block(x)
      return self.fc(x[0].mean(dim=(2, 3)))

  class TVBottleneck(tnn.Module):
    """torchvision's Bottleneck (v1.5: the stride on the 3x3 conv)."""

    def __init__(self, c_in, width, out, stride, downsample):
      super().__init__()
      self.conv1 = tnn.Conv2d(c_in, width, 1, bias=False)
      self.bn1 = tnn.BatchNorm2d(width)
      self.conv2 = tnn.Conv2d(width, width, 3, stride, 1, bias=False)
      self.bn2 = tnn.BatchNorm2d(width)
      self.conv3 = tnn.Conv2d(width, out, 1, bias=False)
      self.bn3 = tnn.BatchNorm2d(out)
      self.downsample = (tnn.Sequential(tnn.Conv2d(c_in, out, 1, stride, bias=False),
                                        tnn.BatchNorm2d(out)) if downsample else None)

    def forward(self, x):
      y = TF.relu(self.bn1(self.conv1(x)))
      y = TF.relu(self.bn2(self.conv2(y)))
      y = self.bn3(self.conv3(y))
      return TF.relu(y + (self.downsample(x) if self.downsample is not None else x))

  class TVResNet(tnn.Module):
    """torchvision's ResNet-50 structure."""

    def __init__(self, arch="oct_resnet50", num_classes=1000):
      super().__init__()
      self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
      self.bn1 = tnn.BatchNorm2d(64)
      layers = [[] for _ in range(4)]
      for layer, _, c_in, width, out, stride, _, _, down in blocks(arch, 0.0):
        layers[layer - 1].append(TVBottleneck(c_in, width, out, stride, down))
      self.layer1, self.layer2, self.layer3, self.layer4 = (tnn.Sequential(*l) for l in layers)
      self.fc = tnn.Linear(2048, num_classes)

    def forward(self, x):
      x = TF.max_pool2d(TF.relu(self.bn1(self.conv1(x))), 3, 2, 1)
      for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
        x = layer(x)
      return self.fc(x.mean(dim=(2, 3)))
