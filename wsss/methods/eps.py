"""EPS (Lee, Lee, Lee and Shim, CVPR 2021): saliency as pseudo-pixel supervision.

The classifier predicts C + 1 localization maps (softmax over the C object classes and one
background class at every location). The image scores are the GAP of the C object logits, trained
with the multi-label soft-margin loss; the background channel gets no classification gradient.
The saliency loss compares an estimated saliency map with a given one (Eqs. 1-3):

    M_fg = sum of the present classes' maps whose overlap ratio with the saliency exceeds tau,
    M_bg = background map + the present classes' maps that do not (map selection, Eq. 2),
    M_s_hat = lambda * M_fg + (1 - lambda) * (1 - M_bg),
    L_sal = mean over pixels of (M_s - M_s_hat)^2,

where the overlap ratio is |B_i and B_s| / |B_i| with maps binarized at 0.5. Classes the saliency
detector misses (its systematic error) then train as background instead of being pulled to zero,
and context the detector ignores (rail, water) is pushed into the background map.

Class maps for inference are the C object channels of the softmax, as in the authors' code; the
background map takes part through the softmax (where it is high, object probabilities are low).

Deviations from the authors' code (github.com/halbielee/EPS):

- A map with no pixel above 0.5 has an undefined overlap ratio and joins neither side of the map
  selection; the authors' epsilon sends it to the background. From a start whose maps do not yet
  peak, every class would train as background (observed: no map selected as foreground in 84 steps
  of a quick-preset run from scratch).
- Crop padding is left out of the overlap ratio and of the saliency loss (weight 0). The authors pad
  the saliency map with 0 and count the padded pixels in both, i.e. as certain background. Here a
  crop of a down-scaled 96 px image is up to half padding (scale 0.7: 67 px in a 96 px crop), which
  would make "padding is background" a large share of the loss; the effect of counting it was not
  measured.
- The saliency map is brought to the map size by averaging over valid pixels (`to_map_size`); the
  authors subsample it by nearest neighbour, which aliases thin parts.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from wsss.methods.base import Batch, RunView, WSSSMethod, classification_loss, register_method
from wsss.models.backbones import Backbone
from wsss.scale import PAPER_SCALE, ScalePolicy
from wsss.saliency import SOURCES, saliency_folder


def overlap_ratio(class_maps: torch.Tensor, saliency: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, h, w) maps and (B, h, w) saliency -> (B, C): |B_i and B_s| / |B_i|, both binarized at
    > 0.5; `weight` (B, h, w) counts pixels (0 on crop padding). NaN for a map with no pixel above
    0.5: its overlap is undefined."""
    b_i = (class_maps > 0.5).to(class_maps.dtype)
    b_s = (saliency > 0.5).to(class_maps.dtype).unsqueeze(1)
    w = torch.ones_like(b_s) if weight is None else weight.to(class_maps.dtype).unsqueeze(1)
    area = (b_i * w).sum(dim=(2, 3))
    ratio = (b_i * b_s * w).sum(dim=(2, 3)) / area.clamp_min(1e-6)
    return torch.where(area > 0, ratio, torch.full_like(ratio, float("nan")))


def select_maps(class_maps: torch.Tensor, saliency: torch.Tensor, label: torch.Tensor, tau: float,
                weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Map selection (Eq. 2): (foreground, background, ratio), each (B, C). A present class goes to the
    foreground when its overlap ratio exceeds `tau`, to the background when it does not; absent classes
    and maps with no pixel above 0.5 (undefined ratio) go to neither, like the absent classes in the
    authors' code. The authors' epsilon sends empty maps to the background instead: from ImageNet
    weights maps peak from the first step, but from scratch every map starts below 0.5, all classes
    would train as background, and the saliency loss would push them off the salient objects, a
    fixed point the classifier never leaves. A constant of the loss: no gradient flows through it."""
    ratio = overlap_ratio(class_maps.detach(), saliency, weight)
    present = label > 0.5
    return present & (ratio > tau), present & (ratio <= tau), ratio


def estimated_saliency(probs: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, lam: float) -> torch.Tensor:
    """(B, C + 1, h, w) localization maps (background last) and (B, C) selections -> (B, h, w):
    lam * M_fg + (1 - lam) * (1 - M_bg) (Eq. 1)."""
    objects, background = probs[:, :-1], probs[:, -1]
    m_fg = (objects * fg[..., None, None].to(probs.dtype)).sum(dim=1)
    m_bg = (objects * bg[..., None, None].to(probs.dtype)).sum(dim=1) + background
    return lam * m_fg + (1.0 - lam) * (1.0 - m_bg)


def saliency_loss(estimate: torch.Tensor, saliency: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared difference over pixels (Eq. 3), over the weighted (valid) pixels when `weight` is given."""
    sq = (estimate - saliency) ** 2
    if weight is None:
        return sq.mean()
    w = weight.to(sq.dtype)
    return (sq * w).sum() / w.sum().clamp_min(1e-6)


def to_map_size(saliency: torch.Tensor, valid: torch.Tensor | None,
                size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Image-resolution saliency (B, H, W) -> (saliency, weight) at the maps' resolution: area
    averages over the valid pixels (the authors' nearest-neighbour subsampling aliases thin parts);
    weight is the valid fraction of each cell."""
    v = torch.ones_like(saliency) if valid is None else valid.to(saliency.dtype)
    weight = F.interpolate(v[:, None], size=size, mode="area")
    sal = F.interpolate((saliency * v)[:, None], size=size, mode="area") / weight.clamp_min(1e-6)
    return sal[:, 0], weight[:, 0]


@register_method
class EPS(WSSSMethod):
    name = "eps"
    notebook = "02_eps"
    requires = ("saliency",)

    def __init__(self, num_classes: int, backbone: Backbone, tau: float = 0.4, lam: float = 0.5,
                 saliency: str = "dataset", scale: ScalePolicy = PAPER_SCALE) -> None:
        super().__init__(num_classes, backbone, scale=scale)
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must lie in [0, 1], got {lam}")
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must lie in [0, 1], got {tau}")
        if saliency not in SOURCES:
            raise ValueError(f"unknown saliency source {saliency!r}; choose one of {SOURCES}")
        self.tau, self.lam, self.saliency = tau, lam, saliency
        # C object classes + the background, last (the authors' layout).
        self.classifier = nn.Conv2d(backbone.out_channels, num_classes + 1, 1, bias=False)

    def new_modules(self) -> list[nn.Module]:
        return [self.classifier]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C + 1, h, w) dense classifier scores, background last."""
        return self.classifier(self.backbone(images)[-1])

    def image_logits(self, images: torch.Tensor) -> torch.Tensor:
        # GAP commutes with the 1x1 classifier: these are the image scores of the C objects.
        return self.logits(images)[:, :-1].mean(dim=(2, 3))

    def localization_maps(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C + 1, h, w) softmax over the C objects and the background at every location."""
        return self.logits(images).softmax(dim=1)

    def forward(self, batch: Batch, progress: float = 0.0) -> dict[str, torch.Tensor]:
        logits = self.logits(batch["image"])
        # GAP commutes with the 1x1 classifier: these are the image scores of the C objects.
        cls = classification_loss(logits[:, :-1].mean(dim=(2, 3)), batch["label"])
        probs = logits.float().softmax(dim=1)
        sal, weight = to_map_size(batch["saliency"].float(), batch.get("valid"), probs.shape[-2:])
        fg, bg, _ = select_maps(probs[:, :-1], sal, batch["label"], self.tau, weight)
        sal_loss = saliency_loss(estimated_saliency(probs, fg, bg, self.lam), sal, weight)
        present = (batch["label"] > 0.5).sum().clamp_min(1)
        return {"loss": cls + sal_loss, "cls": cls.detach(), "sal": sal_loss.detach(),
                "fg_selected": fg.sum().float() / present, "bg_selected": bg.sum().float() / present}

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        return self.localization_maps(images)[:, :-1]

    def saliency_folder(self, experiment: RunView) -> Path | None:
        return saliency_folder(self.saliency, experiment.data_root, experiment.config.saliency_dir,
                               experiment.run_dir.parent)

