"""Backbones: each named architecture builds without weights and has the stage strides it reports."""
from __future__ import annotations

import pytest
import torch

from wsss.models.backbones import build_backbone


@pytest.mark.parametrize("name", ["small", "resnet18", "resnet50"])
def test_backbone_stage_outputs_match_reported_channels_and_strides(name: str) -> None:
    net = build_backbone(name).eval()
    with torch.no_grad():
        feats = net(torch.zeros(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == net.channels
    assert [64 // f.shape[-1] for f in feats] == net.strides


def test_resnet18_keeps_output_stride_16_without_dilation() -> None:
    # torchvision's BasicBlock cannot dilate: the last stage must lose its stride another way
    net = build_backbone("resnet18")
    assert net.output_stride == 16
    assert net.stages[3][0].conv1.stride == (1, 1)
