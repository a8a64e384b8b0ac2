"""Contour quality of a run that predicts contours (methods with `predicts_contours`: SANCE and
its contour baseline): contour F-measure against the ground-truth label boundaries and where the
contour mass lies. Notebook 04's Table 2 and the comparison's contour column.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from wsss.cache import cached_json
from wsss.inference import scales_tag, size_grouped_batches
from wsss.methods.base import RunView
from wsss.metrics import ContourFMeter, ContourMassMeter, gt_boundaries
from wsss.stages.propagation import tta_maps

# Depths past which contour mass inside objects is reported too: one and two cells of the
# 1/4-resolution contour map at scale 1, i.e. past the blur of a true contour.
INSIDE_DEPTHS_PX: tuple[float, ...] = (4.0, 8.0)


@torch.no_grad()
def contour_scores(experiment: RunView, split: str | None = None, scales: Sequence[float] = (1.0,),
                   flip: bool = True) -> dict[str, Any]:
    """Contour F-measure (ODS/OIS) and where the contour mass lies (inside objects, on boundaries,
    in background; inside also beyond `INSIDE_DEPTHS_PX`), contour maps upsampled to image
    resolution against the GT label boundaries. Cached per split and scales."""
    split = split or experiment.config.eval_split
    key = experiment.stage_key("contours", split, scales=list(scales), flip=flip, depths_px=list(INSIDE_DEPTHS_PX))

    def compute() -> dict[str, Any]:
        method, device = experiment.inference_method(), experiment.device
        fmeter, mass = ContourFMeter(), ContourMassMeter(depths_px=INSIDE_DEPTHS_PX)
        for group in size_grouped_batches(experiment.dataset(split)):
            images = torch.stack([s["image"] for s in group]).to(device)
            boundary = F.interpolate(tta_maps(method, images, scales, flip)[:, :1], size=images.shape[-2:],
                                     mode="bilinear", align_corners=False)[:, 0].cpu().numpy()
            for prob, s in zip(boundary, group):
                gt = s["mask"].numpy()
                fmeter.update(prob, gt_boundaries(gt))
                mass.update(prob, gt)
        return {**fmeter.scores(), **mass.scores()}

    return cached_json(experiment.run_dir / f"contours_{split}_{scales_tag(scales, flip)}.json", key, compute)["result"]
