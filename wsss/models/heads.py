"""Segmentation heads shared by the methods and the final stage (moved here unchanged, so the
parameter names in saved models stay the same).

- `DeepLabV2ASPP`: DeepLab v2's atrous spatial pyramid pooling classifier, the sum of dilated 3x3
  convolutions (SANCE's segmentation branch).
- `DeepLabV3ASPP`: DeepLab v3's ASPP with GroupNorm, for batches of a few small crops (shape cues'
  single-stage network); `conv_gn_relu` is its building block.
- `deeplabv3_head`: torchvision's DeepLab v3 head (BatchNorm) at a chosen width.
- `DeepLabV3PlusHead`: DeepLab v3+'s decoder, the ASPP output refined at stride 4 with a low-level
  skip (the final stage: shapes are drawn at the skip's resolution, not the ASPP's).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class DeepLabV2ASPP(nn.Module):
    """DeepLab v2's atrous spatial pyramid pooling head: the sum of dilated 3x3 classifiers."""

    def __init__(self, in_channels: int, num_outputs: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(in_channels, num_outputs, 3, padding=r, dilation=r) for r in rates)
        for conv in self.branches:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches)


def conv_gn_relu(cin: int, cout: int, k: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=False),
                         nn.GroupNorm(min(8, cout), cout), nn.ReLU(inplace=True))


class DeepLabV3ASPP(nn.Module):
    """DeepLabV3's ASPP: 1x1 conv, dilated 3x3 convs, image pooling; concatenated and projected."""

    def __init__(self, in_channels: int, channels: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList([conv_gn_relu(in_channels, channels)] +
                                      [conv_gn_relu(in_channels, channels, 3, r) for r in rates])
        self.pool = conv_gn_relu(in_channels, channels)
        self.project = conv_gn_relu(channels * (len(rates) + 2), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(F.adaptive_avg_pool2d(x, 1)).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


def torchvision_aspp(in_channels: int, rates: Sequence[int], width: int) -> nn.Module:
    """torchvision's DeepLab v3 ASPP (imported here, not with this module: see wsss.models.backbones)."""
    from torchvision.models.segmentation.deeplabv3 import ASPP

    return ASPP(in_channels, list(rates), width)


def deeplabv3_head(in_channels: int, out_classes: int, rates: Sequence[int], width: int) -> nn.Sequential:
    """torchvision's DeepLabHead with a chosen width (its own is fixed at 256 channels)."""
    return nn.Sequential(torchvision_aspp(in_channels, rates, width), nn.Conv2d(width, width, 3, padding=1, bias=False),
                         nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.Conv2d(width, out_classes, 1))


def _conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DeepLabV3PlusHead(nn.Module):
    """DeepLab v3+ (Chen et al., 2018): ASPP on the deepest features, upsampled to the grid of the
    low-level features, concatenated with their 1x1 projection, two 3x3 convolutions, a classifier.

    The paper projects the stride-4 features to 48 of 256 decoder channels; `low_width` keeps that
    ratio at a smaller `width`."""

    def __init__(self, high_channels: int, low_channels: int, out_classes: int, rates: Sequence[int],
                 width: int = 128, low_width: int = 24) -> None:
        super().__init__()
        self.aspp = torchvision_aspp(high_channels, rates, width)
        self.low = _conv_bn_relu(low_channels, low_width, 1)
        self.fuse = nn.Sequential(_conv_bn_relu(width + low_width, width, 3), _conv_bn_relu(width, width, 3))
        self.classifier = nn.Conv2d(width, out_classes, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        context = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([context, self.low(low)], dim=1)))
