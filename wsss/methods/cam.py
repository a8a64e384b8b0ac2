"""The CAM baseline every paper starts from (IRNet's `resnet50_cam`).

Backbone -> global average pooling -> 1x1 classifier without bias, trained with the multi-label
soft-margin loss; the CAM is the classifier applied at every location, rectified.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from wsss.methods.base import Batch, WSSSMethod, cam_from_features, classification_loss, gap_cam_logits, register_method
from wsss.models.backbones import Backbone
from wsss.scale import PAPER_SCALE, ScalePolicy


@register_method
class CAM(WSSSMethod):
    name = "cam"
    notebook = "01_cam_baseline"

    def __init__(self, num_classes: int, backbone: Backbone, *, scale: ScalePolicy = PAPER_SCALE) -> None:
        super().__init__(num_classes, backbone, scale=scale)
        self.classifier = nn.Conv2d(backbone.out_channels, num_classes, 1, bias=False)

    def new_modules(self) -> list[nn.Module]:
        return [self.classifier]

    def image_logits(self, images: torch.Tensor) -> torch.Tensor:
        return gap_cam_logits(self.backbone(images)[-1], self.classifier)

    def forward(self, batch: Batch, progress: float = 0.0) -> dict[str, torch.Tensor]:
        loss = classification_loss(self.image_logits(batch["image"]), batch["label"])
        return {"loss": loss, "cls": loss.detach()}

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        return cam_from_features(self.backbone(images)[-1], self.classifier)
