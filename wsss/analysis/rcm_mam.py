"""Notebook 05's views of an RCM + MAM run (the paper's Figs. 2-4): the class regions and prototype
similarities RCM works with, and MAM's per-scale CAMs, distances and targets."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsss.methods.rcm_mam import (RCMMAM, TEMPERATURE, class_region_masks, mam_distances, mam_targets, max_normalize,
                                  net_forward, rescale, resize)
from wsss.inference import present_with_background

# The rows of the paper's Tables 1-2: (name, rcm, mam); "baseline" is the CAM method itself.
ABLATION_ROWS: tuple[tuple[str, bool, bool], ...] = (
    ("baseline", False, False), ("RCM", True, False), ("MAM", False, True), ("RCM + MAM", True, True))


@torch.no_grad()
def explain(method: RCMMAM, image: torch.Tensor, label: torch.Tensor) -> dict[str, Any]:
    """What RCM and MAM see for one (3, H, W) image, all at the image size, as numpy:
    `keys` (present classes), `support_msinf` (n, H, W) SupportNet msinf-CAMs, `regions` (H, W)
    class region labels (0 background, k + 1 class k), `similarity` (n + 1, H, W) softmax of the
    MainNet features over the background and present-class prototypes, `main_cams` and
    `support_cams` (S, n, H, W) per-scale CAMs, `distances` (n, S, S) MAM's xi and `targets`
    (S, n, H, W) MAM's targets."""
    images, label = image[None], label[None].to(image.device)
    keys = torch.nonzero(label[0] > 0.5).flatten()
    main_out = {s: net_forward(method.main_parts(), rescale(images, s)) for s in method.scales}
    feats = main_out[1.0][0]
    size = feats.shape[-2:]
    _, support_cams, msinf = method.support_maps(images, size)
    main_cams = torch.stack([max_normalize(resize(main_out[s][1].float(), size)) for s in method.scales], dim=1)
    regions = class_region_masks(msinf, label)
    rows = torch.nonzero(present_with_background(label)[0]).flatten()
    logits = torch.einsum("bdhw,rd->brhw", F.normalize(feats.float(), dim=1), method.prototypes[rows].float())
    distances = mam_distances(main_cams[:, :, keys], support_cams[:, :, keys])
    targets = mam_targets(support_cams[:, :, keys], distances)
    full = image.shape[-2:]

    def up(maps: torch.Tensor) -> np.ndarray:
        return F.interpolate(maps.float(), size=tuple(full), mode="bilinear", align_corners=False).cpu().numpy()

    region_up = F.interpolate(regions[:, None].float(), size=tuple(full), mode="nearest")[0, 0]
    return {"keys": keys.cpu().numpy(), "support_msinf": up(msinf[:, keys])[0],
            "regions": region_up.long().cpu().numpy(),
            "similarity": up((logits / TEMPERATURE).softmax(dim=1))[0],
            "main_cams": up(main_cams[0, :, keys]), "support_cams": up(support_cams[0, :, keys]),
            "distances": distances[0].cpu().numpy(), "targets": up(targets[0])}
