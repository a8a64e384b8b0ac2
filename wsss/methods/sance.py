"""SANCE (Li, Fan and Zhang, CVPR 2022) and the IRNet-style contour baseline it starts from.

Both are second stages on top of the CAM baseline: they train on the CAM seeds of the train split
(Eq. 1, refined with a dense CRF as IRNet's `cam_to_ir_label`; the shared stage
`wsss.stages.cam_seeds`), which arrive in the training batches as `seed_mask`, augmented with the
image (`training_masks`). This file holds what the paper adds: the branches, the losses, the online
labels. Final pseudo labels are the shared propagation stage (`wsss.stages.propagation`); contour
scores and the notebook's views live in `wsss.analysis`.

- `irn_contour` (Table 1 "baseline"): a contour branch on all backbone stages at 1/4 resolution,
  trained only from inter-pixel affinities of the CAM seeds (Eqs. 2-4). Its pseudo labels
  propagate the CAM with the contour map (random walk, Eq. 6).
- `sance`: the same contour branch plus an ASPP segmentation branch on the shared backbone, both
  supervised by the CAM seeds and by online labels: the segmentation map propagated inside the
  contours (Eqs. 6-7), with the label refine module (Eq. 8: a dense CRF of the segmentation map
  decides background) for the contour branch, the paper's default (Table 4). `refine=None` is
  SANCE-naive. `sance_sal` lets the saliency map decide background instead.

Backbone (`detach_contour`, default on): as in IRNet's code, the contour branch learns on detached
backbone features, so the contour loss trains the contour branch alone. The baseline's backbone thus
stays as the CAM network left it (IRNet keeps its ImageNet backbone frozen, BN statistics included);
SANCE's learns from the segmentation loss only (Eq. 5 names what it optimizes: the segmentation
branch and the shared backbone), which is how the segmentation branch hands semantics to the
contours "through shared backbones". `detach_contour=False` lets the contour loss fine-tune the
backbone as well (notebook 04 reports that contour-only variant beside the baseline).

Seed thresholds follow the CAM run's background threshold (chosen on train) unless given (`seed_thresholds`).
Final pseudo labels (Sec. 3.3, `wsss.stages.propagation`) propagate the segmentation map (SANCE)
or the CAM (baseline) with the test-time-augmented contour map; the constant background score is
chosen on the train split as the CAM baseline's is, so no row uses the labels of the split it reports. The walk's
resolution, steps and scales come from the scale policy (`PseudoLabelParams.for_run`).

Walk steps: final pseudo labels use IRNet's convention (t=8 matrix squarings = 256 steps); online
labels take Eq. 6's t literally (8 iterations) because they run at every training step, where 256
would cost 32x more. Both are the paper's at VOC size; on smaller images the scale policy keeps
their reach (`wsss.scale`). Only the present classes' channels are propagated (`walk_present`).

Deviations from the paper and IRNet's code, with their reasons:
- ASPP rates: the paper names DeepLab's ASPP without rates; we take DeepLab v2's (6, 12, 18, 24) at
  the paper's output stride 16, converted by the scale policy ((2, 5, 7, 9) on 96 px images; the
  earlier hand-set (1, 3, 6, 9) was undocumented).
- Online walk: 1 step instead of 8 on 96 px images (the policy keeps delta = 3 and the reach).
- Final walk on small images: 1/2 resolution with contours from 2x upsampled input (policy's walk
  floor; 17.6 -> 55.8 val mIoU when it was introduced).
- Online labels wait for 10% of training (`online_start`): our segmentation head starts random.
- Contour-loss radius (delta-hat = 10, Eqs. 2-3 as the loss uses them; IRNet's radius 10): converted by the
  scale policy like every neighbourhood, but never below the walks' radius on the contour map
  (`WALK_RADIUS_CELLS`, 3 cells), so 3 on 96 px images instead of 10 cells, 40% of a 24-cell map.
  Measured, quick preset, 3 seeds, paired against radius 10 (95% CI): SANCE's pseudo masks
  (train mIoU) +0.67 [+0.26, +1.07]; contour mass inside objects, SANCE +2.98 [+2.34, +3.62] and
  the baseline -1.00 [-1.56, -0.44] points. The policy's plain value, 2, lost 4.67 [2.80, 6.55]
  points of SANCE's pseudo-mask mIoU (+9.6 points of contours inside): it no longer trains the
  pairs the online walk (radius 3) propagates through. Training, one thread: SANCE 51.5 -> 106.9
  images/s, the baseline 88.6 -> 350.0 (the path maxima of ~150 offsets per pixel were most of a step).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Sequence

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from wsss.data.transforms import denormalize_image
from wsss.inference import at_size
from wsss.io import IGNORE_INDEX
from wsss.methods.base import Batch, RunView, WSSSMethod, register_method
from wsss.models.backbones import Backbone
from wsss.scale import PAPER_SCALE, ScalePolicy
from wsss.models.heads import DeepLabV2ASPP
from wsss.refine.crf import CRFParams, crf_labels
from wsss.refine.random_walk import (
    Propagation,
    affinity_from_boundary,
    affinity_targets,
    class_balanced_affinity_loss,
    neighbor_offsets,
    walk_present,
)
from wsss.stages.cam_seeds import write_cam_seeds
from wsss.stages.propagation import PseudoLabelParams, propagated_pseudo_labels

# The online-label CRF runs on 1/4-resolution maps: PSA's spatial widths divided by the stride.
ONLINE_CRF = CRFParams(gaussian_sxy=1.0, bilateral_sxy=20.0)


# ---------------------------------------------------------------------------------- branches


class ContourBranch(nn.Module):
    """IRNet's class-boundary branch: each stage -> 1x1 conv, GroupNorm, ReLU, upsampled to the
    first stage (stride 4), concatenated, 1x1 conv to one logit."""

    def __init__(self, channels: Sequence[int], width: int = 32) -> None:
        super().__init__()
        self.side = nn.ModuleList(nn.Sequential(nn.Conv2d(c, width, 1, bias=False), nn.GroupNorm(4, width),
                                                nn.ReLU(inplace=True)) for c in channels)
        self.fuse = nn.Conv2d(width * len(channels), 1, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        sides = [side(f) for side, f in zip(self.side, feats)]
        sides = [s if s.shape[-2:] == size else F.interpolate(s, size=size, mode="bilinear", align_corners=False)
                 for s in sides]
        return self.fuse(torch.cat(sides, dim=1))


# ---------------------------------------------------------------------------------- losses, online labels


def contour_loss(affinity: torch.Tensor, offsets: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Eq. 4 on affinities (Eq. 2) against the targets (Eq. 3) of a seed or online label map."""
    return class_balanced_affinity_loss(affinity, affinity_targets(label, offsets))


def segmentation_loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Eq. 5: cross-entropy over the non-ignored pixels (0 when there are none)."""
    ce = F.cross_entropy(logits.float(), label, ignore_index=IGNORE_INDEX, reduction="sum")
    return ce / (label != IGNORE_INDEX).sum().clamp_min(1)


def online_labels(seg_prob: torch.Tensor, boundary: torch.Tensor, label: torch.Tensor, valid: torch.Tensor,
                  walk: Propagation, bg_score: float) -> torch.Tensor:
    """Y^b (Eqs. 6-7): the foreground probabilities of the present classes propagated inside the
    contours, a constant background score, argmax. 255 outside `valid` (crop padding), which
    also acts as a wall so no score leaks in or out of the image.

    seg_prob (B, 1 + K, h, w) softmax, boundary (B, 1, h, w), label (B, K) multi-hot, valid (B, h, w).
    """
    if seg_prob.shape[1] != label.shape[1] + 1:
        raise ValueError(f"seg_prob has {seg_prob.shape[1]} channels, expected background + {label.shape[1]}")
    fg = seg_prob[:, 1:] * valid[:, None]
    wall = torch.where(valid[:, None], boundary, torch.ones_like(boundary))
    rw = walk_present(walk, fg, label > 0.5, wall)
    scores = torch.cat([rw.new_full(rw[:, :1].shape, bg_score), rw], dim=1)
    y = scores.argmax(dim=1)
    return y.masked_fill(~valid, IGNORE_INDEX)


def refine_labels(labels: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Label refine module (Eq. 8): background where the reference (CRF or saliency) says so."""
    return labels.masked_fill(background & (labels != IGNORE_INDEX), 0)


def crf_background(seg_prob: torch.Tensor, label: torch.Tensor, images: np.ndarray,
                   params: CRFParams = ONLINE_CRF) -> torch.Tensor:
    """Y^crf == 0: dense CRF of the segmentation map over background + present classes (B, h, w) bool.
    `images` (B, h, w, 3) uint8 at the map's resolution."""
    probs = seg_prob.detach().float().cpu().numpy()
    present = label.detach().cpu().numpy() > 0.5
    out = np.zeros((probs.shape[0], *probs.shape[-2:]), dtype=bool)
    for b in range(probs.shape[0]):
        channels = np.concatenate([[0], np.flatnonzero(present[b]) + 1])
        p = probs[b, channels]
        out[b] = crf_labels(images[b], p / p.sum(axis=0, keepdims=True).clip(1e-8), None, params) == 0
    return torch.from_numpy(out).to(seg_prob.device)


def small_images(images: torch.Tensor, size: Sequence[int]) -> np.ndarray:
    """Normalized (B, 3, H, W) batch -> (B, h, w, 3) uint8 at the map resolution (area average)."""
    return np.stack([cv2.resize(denormalize_image(im), (size[1], size[0]), interpolation=cv2.INTER_AREA)
                     for im in images])


# ---------------------------------------------------------------------------------- methods


CONTOUR_STRIDE = 4  # the contour branch's map, where the online and final walks run (IRNet's)
# The largest walk radius in cells of the contour map: SANCE's online walk (delta = 3, kept by the
# scale policy); the final walk's delta = 5 runs at twice the resolution on small images (2.5 cells).
WALK_RADIUS_CELLS = 3
PAPER_BACKBONE_STRIDE = 16  # the paper's main backbone (ResNet101, output stride 16)
ASPP_RATES: tuple[int, ...] = (6, 12, 18, 24)  # DeepLab v2's ASPP, the segmentation branch ("Aspp [8]")


class _ContourMethod(WSSSMethod):
    """Shared by the baseline and SANCE: contour branch, CAM seeds, contour loss, pseudo labels."""

    default_source: ClassVar[str] = "cam"
    # Its runs have contour maps (`maps` channel 0): the comparison and notebook 04 score them
    # with `wsss.analysis.contours.contour_scores`.
    predicts_contours: ClassVar[bool] = True

    def __init__(self, num_classes: int, backbone: Backbone, *, seed_fg: float | None = None,
                 seed_bg: float | None = None, loss_radius: float = 10.0, loss_power: float = 1.0,
                 contour_width: int = 32, backbone_init: str | None = "cam", detach_contour: bool = True,
                 cam_method: str = "cam", cam_options: dict[str, Any] | None = None,
                 scale: ScalePolicy = PAPER_SCALE) -> None:
        super().__init__(num_classes, backbone, scale=scale)
        # The run whose class maps give the seeds and, for source "cam", the scores the walk
        # propagates: the CAM baseline, or another method's run (RCM + MAM's random walk).
        self.cam_method, self.cam_options = cam_method, dict(cam_options or {})
        if backbone.strides[0] != 4:
            raise ValueError(f"the contour map lives at 1/4 resolution: the first backbone stage must have "
                             f"stride 4, not {backbone.strides[0]}")
        self.seed_fg, self.seed_bg = seed_fg, seed_bg
        # delta-hat of Eq. 3 (IRNet's radius 10) is a neighbourhood in cells of the paper's 1/4 map,
        # converted by the scale policy like every radius (2 on 96 px images' 24-cell maps, where 10
        # cells reach across 40% of the map), but never below the walks' radius on this map: in the
        # papers the loss trains every pair a walk propagates through (delta-hat 10 > delta 3
        # online, 5 final), and the policy keeps walk radii (SANCE's online walk: 3 cells).
        self.loss_radius = self.scale.size(loss_radius, CONTOUR_STRIDE, CONTOUR_STRIDE, floor=WALK_RADIUS_CELLS)
        self.loss_offsets: torch.Tensor
        self.register_buffer("loss_offsets", neighbor_offsets(self.loss_radius, half=True), persistent=False)
        self.loss_power = loss_power
        self.detach_contour = detach_contour
        self.contour = ContourBranch(backbone.channels, contour_width)
        self.declare_backbone_init(backbone_init)

    # ------------------------------------------------------------------ stage 1

    def seed_run(self, experiment: RunView) -> RunView:
        """The run whose class maps seed the contours (and that source "cam" propagates)."""
        return experiment.related_run(self.cam_method, **self.cam_options)

    def seed_thresholds(self, cam_exp: RunView) -> tuple[float, float]:
        """(fg, bg) of Eq. 1. Unset ones follow the CAM run's best background threshold t* (its
        sweep on the train split, never on the reported one): fg = t* + 0.15, bg = t* / 3. At IRNet's VOC t* = 0.15 that is the paper's
        0.30 / 0.05; SynthVOC's CAMs are broader (t* = 0.45), where 0.30 / 0.05 marks 36% of the
        labelled background as foreground (train split, after the seed CRF) and t*-relative seeds 4%."""
        if self.seed_fg is not None and self.seed_bg is not None:
            return self.seed_fg, self.seed_bg
        t = cam_exp.best_threshold()
        fg = self.seed_fg if self.seed_fg is not None else round(t + 0.15, 2)
        bg = self.seed_bg if self.seed_bg is not None else round(t / 3, 2)
        return fg, bg

    def training_masks(self, experiment: RunView, split: str) -> dict[str, Path]:
        """The CAM seeds of `split` (`seed_mask` in batches), refined by IRNet's seed CRF."""
        cam_exp = self.seed_run(experiment)
        return {"seed": write_cam_seeds(cam_exp, split, *self.seed_thresholds(cam_exp))}

    # ------------------------------------------------------------------ training pieces

    def _features(self, images: torch.Tensor, backbone_grad: bool = True) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Backbone features and contour logits; `backbone_grad=False` skips recording the backbone's
        graph when no loss will reach it."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and backbone_grad):
            feats = self.backbone(images)
        return feats, self.contour([f.detach() for f in feats] if self.detach_contour else feats)

    def _affinity(self, boundary: torch.Tensor) -> torch.Tensor:
        """Eq. 2 with the loss radius (one direction of each pair: the affinity is symmetric)."""
        return affinity_from_boundary(boundary.float(), power=self.loss_power, offsets=self.loss_offsets)[0]

    # ------------------------------------------------------------------ inference

    def maps(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1 [+ 1 + K], h, w) at 1/4 resolution: contour probability [, segmentation softmax]."""
        return torch.sigmoid(self._features(images)[1])

    def pseudo_labels(self, experiment: RunView, split: str) -> Path:
        """The propagation stage on `default_source` ("cam": the CAM run's maps, "seg": the
        segmentation map) with this run's contours."""
        return propagated_pseudo_labels(experiment, split,
                                        PseudoLabelParams.for_run(experiment, self.default_source))


@register_method
class IRNContour(_ContourMethod):
    """Table 1's baseline: contour branch supervised by CAM-seed affinities only."""

    name = "irn_contour"
    revision = 2  # 1, 2: loss radius from the scale policy (2: at least the walks' radius)

    def new_modules(self) -> list[nn.Module]:
        return [self.contour]

    def train(self, mode: bool = True) -> "IRNContour":
        super().train(mode)
        if self.detach_contour:  # no loss reaches the backbone: keep its BN statistics too, as IRNet
            self.backbone.eval()
        return self

    def forward(self, batch: Batch, progress: float = 0.0) -> dict[str, torch.Tensor]:
        _, logits = self._features(batch["image"], backbone_grad=not self.detach_contour)
        seed = at_size(batch["seed_mask"], logits.shape[-2:])
        loss = contour_loss(self._affinity(torch.sigmoid(logits)), self.loss_offsets, seed)
        return {"loss": loss, "contour_seed": loss.detach()}

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("irn_contour has no class maps of its own: its pseudo labels propagate the "
                                  "CAM run's maps with its contours (pseudo_labels)")


@register_method
class SANCE(_ContourMethod):
    """SANCE: contour + ASPP segmentation branches, CAM seeds + online labels.

    Options (paper defaults): online labels with delta=3, n=10, t=8 (`online_radius`,
    `online_power`, `online_steps`; Eq. 6's t counts walk iterations, as the paper words it:
    IRNet's 2**t squarings would cost 32x more per training step), background score `online_bg`
    (tau_b, not given in the paper), `refine` "crf" (label refine module, applied to the contour
    branch's online label as in Table 4) or None (SANCE-naive), `online_start` the training
    progress from which online labels supervise (the paper starts from ImageNet weights; our
    segmentation head starts random, so its online labels wait for the first 10% of training),
    `snapshot_indices` training images whose online labels are kept for display.
    """

    name = "sance"
    notebook = "04_sance"
    revision = 3  # 1: ASPP rates and online-walk steps from the scale policy; 2, 3: loss radius from it
    default_source = "seg"
    refine_modes: ClassVar[tuple[str | None, ...]] = ("crf", None)

    def __init__(self, num_classes: int, backbone: Backbone, *, refine: str | None = "crf",
                 online_radius: float = 3.0, online_power: float = 10.0, online_steps: int = 8,
                 online_bg: float = 0.5, online_start: float = 0.1,
                 aspp_rates: Sequence[int] = ASPP_RATES, snapshot_indices: Sequence[int] = (0, 1, 2, 3),
                 **options: Any) -> None:
        super().__init__(num_classes, backbone, **options)
        if refine not in self.refine_modes:
            raise ValueError(f"refine must be one of {self.refine_modes} for {self.name!r}, got {refine!r}"
                             + (" (use method 'sance_sal' for saliency)" if refine == "saliency" else ""))
        self.refine = refine
        # Both are given at the paper's map size and converted by the scale policy: the walk keeps
        # its radius and reach (1 step on 96 px images' 24-cell contour maps), the rates their share
        # of the map ((2, 5, 7, 9) on 12-cell maps).
        steps = self.scale.walk_steps(online_steps, CONTOUR_STRIDE, CONTOUR_STRIDE)
        self.online = Propagation(online_radius, online_power, steps, log2_steps=False)
        self.online_bg, self.online_start = online_bg, online_start
        rates = self.scale.sizes(aspp_rates, backbone.output_stride, PAPER_BACKBONE_STRIDE)
        self.seg = DeepLabV2ASPP(backbone.out_channels, num_classes + 1, rates)
        self.snapshot_indices = frozenset(int(i) for i in snapshot_indices)
        self.snapshots: list[dict[str, Any]] = []

    def new_modules(self) -> list[nn.Module]:
        return [self.contour, self.seg]

    def _seg_logits(self, feats: list[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        return F.interpolate(self.seg(feats[-1]), size=tuple(size), mode="bilinear", align_corners=False)

    def forward(self, batch: Batch, progress: float = 0.0) -> dict[str, torch.Tensor]:
        feats, logits = self._features(batch["image"])
        size = logits.shape[-2:]
        seg_logits = self._seg_logits(feats, size)
        boundary = torch.sigmoid(logits)
        affinity = self._affinity(boundary)
        seed = at_size(batch["seed_mask"], size)
        losses = {"contour_seed": contour_loss(affinity, self.loss_offsets, seed),
                  "seg_seed": segmentation_loss(seg_logits, seed)}
        if progress >= self.online_start:
            with torch.no_grad():
                valid = at_size(batch["valid"], size)
                seg_prob = seg_logits.detach().float().softmax(dim=1)
                y_b = online_labels(seg_prob, boundary.detach(), batch["label"], valid, self.online, self.online_bg)
                y_r = refine_labels(y_b, self._background(batch, seg_prob, size)) if self.refine else y_b
            losses["contour_online"] = contour_loss(affinity, self.loss_offsets, y_r)  # Table 4: refined
            losses["seg_online"] = segmentation_loss(seg_logits, y_b)
            self._snapshot(batch, progress, seed, y_b, y_r, boundary, seg_prob)
        total = sum(losses.values())
        return {"loss": total, **{k: v.detach() for k, v in losses.items()}}

    def _background(self, batch: Batch, seg_prob: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return crf_background(seg_prob, batch["label"], small_images(batch["image"], size))

    def maps(self, images: torch.Tensor) -> torch.Tensor:
        feats, logits = self._features(images)
        return torch.cat([torch.sigmoid(logits), self._seg_logits(feats, logits.shape[-2:]).softmax(dim=1)], dim=1)

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        """The segmentation branch's foreground probabilities."""
        feats = self.backbone(images)
        return self.seg(feats[-1]).softmax(dim=1)[:, 1:]

    def image_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """SANCE has no image classifier: a class is predicted where it wins a pixel's softmax
        somewhere, i.e. its highest probability over the map."""
        return self.class_maps(images).float().flatten(2).amax(dim=2)

    # ------------------------------------------------------------------ online-label snapshots

    def _snapshot(self, batch: Batch, progress: float, seed: torch.Tensor, y_b: torch.Tensor, y_r: torch.Tensor,
                  boundary: torch.Tensor, seg_prob: torch.Tensor) -> None:
        """Keep the online labels of the `snapshot_indices` training images each time they come by."""
        index = batch["index"]
        for b, i in enumerate(index.tolist() if isinstance(index, torch.Tensor) else index):
            if int(i) in self.snapshot_indices:
                self.snapshots.append({
                    "index": int(i), "progress": float(progress),
                    "image": torch.from_numpy(denormalize_image(batch["image"][b])),
                    "seed": seed[b].to(torch.uint8).cpu(), "online": y_b[b].to(torch.uint8).cpu(),
                    "refined": y_r[b].to(torch.uint8).cpu(), "seg": seg_prob[b].argmax(0).to(torch.uint8).cpu(),
                    "boundary": boundary[b, 0].detach().to(torch.float16).cpu()})

    def get_extra_state(self) -> dict[str, Any]:
        return {"snapshots": self.snapshots}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.snapshots = list(state.get("snapshots", []))


@register_method
class SANCESal(SANCE):
    """SANCE with the saliency map deciding background in the label refine module ("Ours-sal")."""

    name = "sance_sal"
    requires = ("saliency",)
    refine_modes = ("saliency",)

    def __init__(self, num_classes: int, backbone: Backbone, *, refine: str = "saliency",
                 saliency_threshold: float = 0.5, **options: Any) -> None:
        super().__init__(num_classes, backbone, refine=refine, **options)
        self.saliency_threshold = saliency_threshold

    def _background(self, batch: Batch, seg_prob: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        sal = F.interpolate(batch["saliency"][:, None].float(), size=tuple(size), mode="area")[:, 0]
        return sal < self.saliency_threshold

