"""RCM + MAM (Yoon, Kweon et al., 2022): pixel-level self-supervision from an EMA SupportNet.

Two networks of identical structure (backbone -> 1x1 feature head with D = 256 channels -> 1x1
classifier; the CAM is the rectified classifier applied densely): the MainNet trains by gradients,
the SupportNet only follows it by an exponential moving average (alpha = 0.997) and supplies the
self-supervision. Both see the image at scales 0.5, 1.0 and 2.0 (the scale policy drops 0.5 where
its map would be under 8 cells: on 96 px images, where that 6x6 map held 8.8% of its activation on
the object against 23-31% at scales 1 and 2, yet got the largest MAM weight, and context false
positives rose from 30% to 52-54%); every map is resized to the feature size of scale 1 and
max-normalized per class.

- Regional Contrastive Module (`rcm`): the SupportNet's multi-scale-inference CAM, thresholded at
  0.20 and argmaxed over the present classes, gives class region masks (background where no class
  wins, Eqs. 1-2); in images where a present class gets no region the background is ignored.
  Masked means of SupportNet features give one prototype per class and background (Eq. 3),
  averaged over the batch; a class missing from a batch keeps its latest prototype (a buffer).
  Every MainNet pixel feature is pulled to its region's prototype and pushed from the others by
  InfoNCE at temperature T = 0.5 on L2-normalized vectors (Eqs. 4-5).
- Multi-scale Attentive Module (`mam`): class-wise cosine distances xi_ij = 2 - cos(A_i^F, A_j^G)
  between the MainNet CAM at scale i and the SupportNet CAM at scale j (Eq. 6) weight the
  SupportNet CAMs into a target per scale, (1/3) sum_j xi_ij A_j^G (Eq. 7); the MainNet CAMs regress
  it with an L1 loss (Eq. 8), for the present classes the SupportNet sees at some scale. Switched
  on after a warm-up (the paper: epoch 6 of 20).

Choices the paper leaves open (stated once here): maps live at the middle scale's feature
resolution rather than the image's (same geometry, 1/64 of the cost); Eq. 5 is read as InfoNCE
(the log of the softmax, as in the CPC loss it cites), a mean over each image's valid pixels; the
MAM loss is a per-pixel mean, summed over scales and present classes; the classification loss is on the
middle scale only, as in the CAM baseline, so the MainNet's 0.5 and 2.0 passes are skipped while
MAM is off; the SupportNet runs with eval-mode batch norm, its statistics also averaged.

Pseudo labels (Sec. 4.4): the class maps propagated by a random walk (`pseudo_labels`). The paper
takes AffinityNet's; here the walk is the one the workbench shares (IRNet's contours and
propagation, `wsss.stages.propagation`), with a contour run seeded by this run's class maps.
`random_walk=False` keeps the thresholded class maps.

Deviations: the 0.5 scale dropped on small images by the scale policy (above); the random walk's
affinities from IRNet's contours instead of AffinityNet's; a 3-epoch quick recipe (two networks on
several scales train several times slower per image than a CAM).
"""
from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from wsss.methods.base import (Batch, RunView, WSSSMethod, cam_from_features, classification_loss, gap_cam_logits,
                               register_method, valid_at)
from wsss.models.backbones import Backbone
from wsss.scale import PAPER_SCALE, ScalePolicy
from wsss.train import RESULT_NEUTRAL_KEYS

SCALES: tuple[float, float, float] = (0.5, 1.0, 2.0)
THRESHOLD = 0.20  # of the SupportNet's msinf-CAM, for class regions (Eq. 1)
TEMPERATURE = 0.5  # of RCM's InfoNCE (Eq. 5)
IGNORE = -1  # class-region label of crop padding


# ---------------------------------------------------------------------- maps


def max_normalize(cams: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """A^k / max(A^k) over the spatial dimensions of each (image, class) map."""
    return cams / (cams.flatten(-2).amax(dim=-1)[..., None, None] + eps)


def rescale(images: torch.Tensor, scale: float) -> torch.Tensor:
    return images if scale == 1.0 else F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False,
                                                     antialias=scale < 1.0)


def resize(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return maps if tuple(maps.shape[-2:]) == tuple(size) else F.interpolate(
        maps, size=tuple(size), mode="bilinear", align_corners=False)


def class_region_masks(cams: torch.Tensor, label: torch.Tensor, threshold: float = THRESHOLD,
                       valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B, K, h, w) max-normalized CAMs -> (B, h, w) class regions (Eqs. 1-2): k + 1 where class k
    is the argmax among the image's present classes and exceeds `threshold`, 0 (background) where
    no class does, IGNORE on crop padding."""
    present = label[:, :, None, None] > 0.5
    scores = cams.masked_fill(~present, -1.0)
    best, arg = scores.max(dim=1)
    masks = torch.where(best > threshold, arg + 1, torch.zeros_like(arg))
    return masks if valid is None else masks.masked_fill(~valid, IGNORE)


def drop_unlocalized(masks: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """IGNORE the background of the images where some present class got no region: that object
    would be taught as background. The regions found are kept. (A from-scratch SupportNet's CAMs
    are often all zero at first; the paper's ImageNet-initialized ones localize from the start.)"""
    regions = F.one_hot(masks.clamp_min(0).flatten(1), label.shape[1] + 1)[:, :, 1:].amax(dim=1)  # (B, K)
    missing = ((label > 0.5) & (regions == 0)).any(dim=1)
    return masks.masked_fill(missing[:, None, None] & (masks == 0), IGNORE)


def batch_prototypes(features: torch.Tensor, masks: torch.Tensor, num_regions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-wise prototypes (Eq. 3): the mean feature of each region of each image, averaged over
    the images holding that region (and over processes under DDP, so N processes agree with one).
    Returns (num_regions, D) L2-normalized prototypes and a (num_regions,) bool of those found."""
    d = features.shape[1]
    onehot = F.one_hot(masks.clamp_min(0).flatten(1), num_regions).to(features.dtype)  # (B, P, R)
    onehot = onehot * (masks.flatten(1) >= 0)[..., None].to(features.dtype)
    area = onehot.sum(dim=1)  # (B, R)
    per_image = torch.einsum("bdp,bpr->brd", features.flatten(2).float(), onehot.float()) / area.clamp_min(1)[..., None]
    holds = (area > 0).float()
    sums = torch.cat([(per_image * holds[..., None]).sum(dim=0), holds.sum(dim=0)[:, None]], dim=1)  # (R, D + 1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    count = sums[:, d]
    return F.normalize(sums[:, :d] / count.clamp_min(1)[:, None], dim=1), count > 0


def regional_contrastive_loss(features: torch.Tensor, masks: torch.Tensor, prototypes: torch.Tensor,
                              available: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """InfoNCE of every valid pixel feature against the prototypes (Eqs. 4-5): its own region's
    prototype is the positive, the other available prototypes are the negatives. (B, D, h, w)
    features, (B, h, w) regions, (R, D) unit prototypes, (R,) bool."""
    logits = torch.einsum("bdhw,rd->brhw", F.normalize(features.float(), dim=1), prototypes.float()) / temperature
    # A finite "minus infinity": rows stay finite even before any prototype exists.
    logits = logits.masked_fill(~available[None, :, None, None], -1e9)
    nll = F.cross_entropy(logits, masks, ignore_index=IGNORE, reduction="none").flatten(1)  # 0 where ignored
    pixels = (masks >= 0).flatten(1).sum(dim=1).clamp_min(1)
    # Per-image means averaged over the batch: the same loss whichever way DDP splits the batch.
    return (nll.sum(dim=1) / pixels).mean()


def mam_distances(main_cams: torch.Tensor, support_cams: torch.Tensor) -> torch.Tensor:
    """xi[b, k, i, j] = 2 - cos(A_i^{F,k}, A_j^{G,k}) (Eq. 6) for (B, S, K, h, w) maps: in [1, 2]
    for non-negative maps, larger where scale j saw the class differently from scale i."""
    f = F.normalize(main_cams.flatten(3).float(), dim=-1)
    g = F.normalize(support_cams.flatten(3).float(), dim=-1)
    return 2.0 - torch.einsum("bikp,bjkp->bkij", f, g)


def mam_targets(support_cams: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """Eq. 7: target_i = (1/S) sum_j xi_ij A_j^G, (B, S, K, h, w)."""
    return torch.einsum("bkij,bjkhw->bikhw", distances, support_cams.float()) / support_cams.shape[1]


def mam_loss(main_cams: torch.Tensor, support_cams: torch.Tensor, label: torch.Tensor,
             valid: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 8: L1 between the MainNet CAMs and their targets, a mean over valid pixels summed over
    scales and present classes, averaged over the batch. The target carries no gradient."""
    with torch.no_grad():
        target = mam_targets(support_cams, mam_distances(main_cams, support_cams))
    err = (target - main_cams.float()).abs()  # (B, S, K, h, w)
    weight = label.float()[:, None, :, None, None].expand_as(err)
    if valid is not None:
        weight = weight * valid[:, None, None].float()
    pixels = (valid.flatten(1).float().sum(dim=1) if valid is not None
              else err.new_full((err.shape[0],), err.shape[-1] * err.shape[-2])).clamp_min(1)
    return ((err * weight).flatten(1).sum(dim=1) / pixels).mean()


# ---------------------------------------------------------------------- the method


def net_forward(parts: nn.ModuleList, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features X, CAM A) of one network (backbone, feature head, classifier) on one scale."""
    backbone, head, classifier = parts
    x = head(backbone(images)[-1])
    return x, cam_from_features(x, classifier)


@register_method
class RCMMAM(WSSSMethod):
    name = "rcm_mam"
    notebook = "05_rcm_mam"
    # Two networks on three scales train about 7x slower per image than a CAM (3.3 vs 24 images/s
    # on one CPU thread): the quick preset's 8 epochs would take an hour on 2 cores, 3 take ~20 min.
    recipe_overrides = {"quick": {"epochs": 3}}
    revision = 1  # 1: MAM's scales from the scale policy ((1, 2) on 96 px images)

    def __init__(self, num_classes: int, backbone: Backbone, rcm: bool = True, mam: bool = True,
                 feature_dim: int = 256, ema_decay: float = 0.997, mam_start: float = 0.3,
                 ema_warmup: bool = True, random_walk: bool = True, scale: ScalePolicy = PAPER_SCALE) -> None:
        super().__init__(num_classes, backbone, scale=scale)
        self.random_walk = random_walk
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        self.rcm, self.mam = rcm, mam
        self.ema_decay, self.mam_start, self.ema_warmup = ema_decay, mam_start, ema_warmup
        # MAM's scales where the coarsest map keeps MIN_MAP_CELLS: (1, 2) on 96 px images.
        self.scales = scale.scales(SCALES, backbone.output_stride)
        self.feature_head = nn.Conv2d(backbone.out_channels, feature_dim, 1, bias=False)
        self.classifier = nn.Conv2d(feature_dim, num_classes, 1, bias=False)
        # SupportNet: a copy that never sees a gradient; it moves by EMA in `after_optimizer_step`.
        self.support = copy.deepcopy(self.main_parts())
        self.support.requires_grad_(False)
        self.support.eval()
        # Latest non-empty prototype of background (row 0) and each class (row k + 1).
        self.register_buffer("prototypes", torch.zeros(num_classes + 1, feature_dim))
        self.register_buffer("prototype_seen", torch.zeros(num_classes + 1, dtype=torch.bool))
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))

    def main_parts(self) -> nn.ModuleList:
        # A fresh, unregistered container: the MainNet's modules stay registered at top level only.
        return nn.ModuleList([self.backbone, self.feature_head, self.classifier])

    def new_modules(self) -> list[nn.Module]:
        return [self.feature_head, self.classifier]

    def train(self, mode: bool = True) -> "RCMMAM":
        super().train(mode)
        self.support.eval()  # eval-mode batch norm: a stable teacher, its statistics averaged too
        return self

    # ------------------------------------------------------------------ training

    def forward(self, batch: Batch, progress: float = 0.0) -> dict[str, torch.Tensor]:
        images, label = batch["image"], batch["label"]
        mam_on = self.mam and progress >= self.mam_start
        main = {s: net_forward(self.main_parts(), rescale(images, s)) for s in (self.scales if mam_on else (1.0,))}
        feats = main[1.0][0]
        size = feats.shape[-2:]
        valid = valid_at(batch.get("valid"), size)
        losses = {"cls": classification_loss(gap_cam_logits(feats, self.classifier), label)}
        zero = feats.new_zeros(())
        if self.rcm or mam_on:
            support_feats, support_cams, msinf = self.support_maps(images, size)
        if self.rcm:
            masks = drop_unlocalized(class_region_masks(msinf, label, valid=valid), label)
            kept = (masks >= 0).flatten(1).any(dim=1).float().mean()  # logged: how much RCM teaches
            self._update_prototypes(*batch_prototypes(support_feats, masks, self.num_classes + 1))
            losses["rcm"] = regional_contrastive_loss(feats, masks, self.prototypes, self.prototype_seen)
        if self.mam:  # logged from the first step (a constant CSV header), zero during the warm-up
            losses["mam"] = zero
            if mam_on:
                main_cams = torch.stack([max_normalize(resize(main[s][1], size)) for s in self.scales], dim=1)
                # Classes the SupportNet does not see at any scale give an all-zero target: skipped.
                seen = (support_cams.flatten(3).amax(dim=(1, 3)) > 0).to(label.dtype)
                losses["mam"] = mam_loss(main_cams, support_cams, label * seen, valid)
        total = losses["cls"] + losses.get("rcm", zero) + (losses["mam"] if mam_on else zero)
        logged = {k: v.detach() for k, v in losses.items()}
        if self.rcm:
            logged["rcm_kept"] = kept
        return {"loss": total, **logged}

    @torch.no_grad()
    def support_maps(self, images: torch.Tensor, size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SupportNet outputs at `size`: middle-scale features (B, D, h, w), per-scale max-normalized
        CAMs (B, S, K, h, w) and the multi-scale-inference CAM (sum over scales, max-normalized)."""
        outs = {s: net_forward(self.support, rescale(images, s)) for s in self.scales}
        raw = torch.stack([resize(outs[s][1].float(), size) for s in self.scales], dim=1)
        return outs[1.0][0], max_normalize(raw), max_normalize(raw.sum(dim=1))

    @torch.no_grad()
    def _update_prototypes(self, prototypes: torch.Tensor, found: torch.Tensor) -> None:
        self.prototypes[found] = prototypes[found].to(self.prototypes.dtype)
        self.prototype_seen |= found

    def pseudo_labels(self, experiment: RunView, split: str) -> Path | None:
        """The paper's pseudo labels (Sec. 4.4: 71.0 mIoU on VOC train with the random walk): this
        run's class maps propagated by the shared random walk (`wsss.stages.propagation`) along the
        contours of an IRNet-style contour run seeded by these maps (`irn_contour` with
        `cam_method="rcm_mam"`); the paper uses AffinityNet's affinities, IRNet's are the walk this
        workbench shares. `random_walk=False`: the thresholded class maps."""
        if not self.random_walk:
            return None
        c = experiment.config
        # This very run (its config hash) as the seed source.
        own = {**c.method_options, **{k: v for k, v in asdict(c.train).items() if k not in RESULT_NEUTRAL_KEYS}}
        walk = experiment.related_run("irn_contour", cam_method=self.name, cam_options=own)
        return walk.final_pseudo_masks(split)

    def ema_momentum(self) -> float:
        """alpha, or with `ema_warmup` min(alpha, 1 - 1/(t + 1)) at step t (Mean Teacher's ramp): the
        SupportNet starts as the plain average of the MainNet's weights so far instead of keeping
        most of its random initialization for the first few hundred steps of a from-scratch run."""
        t = int(self.ema_steps)
        return min(self.ema_decay, 1.0 - 1.0 / (t + 1)) if self.ema_warmup else self.ema_decay

    @torch.no_grad()
    def after_optimizer_step(self, progress: float) -> None:
        """theta_G <- alpha theta_G + (1 - alpha) theta_F, batch-norm statistics alike."""
        weight = 1.0 - self.ema_momentum()
        main = self.main_parts()
        for g, f in zip(self.support.parameters(), main.parameters()):
            g.lerp_(f, weight)
        for g, f in zip(self.support.buffers(), main.buffers()):
            if g.is_floating_point():
                g.lerp_(f, weight)
            else:
                g.copy_(f)
        self.ema_steps += 1

    # ------------------------------------------------------------------ maps

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        return net_forward(self.main_parts(), images)[1]

    def image_logits(self, images: torch.Tensor) -> torch.Tensor:
        return gap_cam_logits(net_forward(self.main_parts(), images)[0], self.classifier)
