"""SANCE (Li, Fan and Zhang, CVPR 2022) and the IRNet-style contour baseline it starts from.

Both are second stages on top of the CAM baseline: they train on the CAM seeds of the train split
(Eq. 1, refined with a dense CRF as IRNet's `cam_to_ir_label`), which arrive in the training
batches as `seed_mask`, augmented with the image (`training_masks`).

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

Seed thresholds follow the CAM run's best background threshold unless given (`seed_thresholds`).
Final pseudo labels (Sec. 3.3) propagate the segmentation map (SANCE) or the CAM (baseline) with
the test-time-augmented contour map; the constant background score is chosen by the same
validation sweep the CAM baseline uses, so every row is compared at its best threshold. Images
below 320 px get a walk sized to their maps (`PseudoLabelParams.for_source`).

Walk steps: final pseudo labels use IRNet's convention (t=8 matrix squarings = 256 steps); online
labels take Eq. 6's t literally (8 iterations) because they run at every training step, where 256
would cost 32x more (`online_log2_steps=True` restores it). Only the present classes' channels
are propagated (`walk_present`).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Sequence

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from wsss.cache import cached_folder, cached_json, digest
from wsss.data.transforms import denormalize_image
from wsss.inference import (SMALL_IMAGE, at_size, head_scales, load_cam, multiscale_maps, save_cam, scales_tag,
                            size_grouped_batches)
from wsss.io import IGNORE_INDEX, save_label_png
from wsss.methods.base import Batch, RunView, WSSSMethod, register_method
from wsss.metrics import ContourFMeter, ContourMassMeter, gt_boundaries
from wsss.models.backbones import Backbone
from wsss.models.heads import DeepLabV2ASPP
from wsss.refine.crf import CRFParams, crf_labels
from wsss.refine.random_walk import (
    affinity_from_boundary,
    affinity_targets,
    boundary_random_walk,
    class_balanced_affinity_loss,
    neighbor_offsets,
)

# IRNet's label-input CRF (`crf_inference_label`): bilateral sxy 50, srgb 5; labels get probability 0.7.
SEED_CRF = CRFParams(bilateral_sxy=50.0, bilateral_srgb=5.0)
SEED_LABEL_PROB = 0.7
# The online-label CRF runs on 1/4-resolution maps: PSA's spatial widths divided by the stride.
ONLINE_CRF = CRFParams(gaussian_sxy=1.0, bilateral_sxy=20.0)


# ---------------------------------------------------------------------------------- CAM seeds


def seed_label(keys: np.ndarray, cam: np.ndarray, fg_threshold: float = 0.30, bg_threshold: float = 0.05,
               image: np.ndarray | None = None, crf: CRFParams | None = None) -> np.ndarray:
    """CAM seed of one image (Eq. 1): class k + 1 where max_c S_c > fg, 0 where it is < bg, 255 between.

    With `crf`, as IRNet: the fg-thresholded and bg-thresholded label maps are each refined by a
    label-input dense CRF of `image`; pixels that stay foreground after the first are seeds of
    their class, pixels background after both are background, the rest unsure.
    """
    if not 0 <= bg_threshold <= fg_threshold:
        raise ValueError(f"need 0 <= bg_threshold <= fg_threshold, got {bg_threshold}, {fg_threshold}")
    h, w = cam.shape[1:]
    if cam.shape[0] == 0:
        return np.zeros((h, w), dtype=np.uint8)
    ids = np.concatenate([[0], np.asarray(keys) + 1]).astype(np.uint8)
    best, arg = cam.max(axis=0), cam.argmax(axis=0) + 1
    fg = np.where(best > fg_threshold, arg, 0)
    bg = np.where(best > bg_threshold, arg, 0)
    if crf is not None:
        if image is None:
            raise ValueError("the seed CRF needs the image")
        fg, bg = (_label_crf(image, lab, len(ids), crf) for lab in (fg, bg))
    out = ids[fg]
    out[fg == 0] = IGNORE_INDEX
    out[(fg == 0) & (bg == 0)] = 0
    return out


def _label_crf(image: np.ndarray, labels: np.ndarray, n: int, params: CRFParams) -> np.ndarray:
    """pydensecrf's `unary_from_labels(gt_prob=0.7)` then CRF inference: channel index per pixel."""
    onehot = np.eye(n, dtype=np.float32)[labels].transpose(2, 0, 1)
    probs = onehot * SEED_LABEL_PROB + (1 - onehot) * (1 - SEED_LABEL_PROB) / (n - 1)
    return crf_labels(image, probs, None, params)


def write_cam_seeds(cam_exp: Any, split: str, fg_threshold: float = 0.30, bg_threshold: float = 0.05,
                    crf: CRFParams | None = SEED_CRF) -> Path:
    """Seed PNGs of every image of `split` from the CAM run's class maps, cached in that run."""
    tag = f"{split}_fg{fg_threshold:.2f}_bg{bg_threshold:.2f}{'_crf' if crf is not None else ''}"
    key = {"stage": "cam_seeds", "class_maps": digest(cam_exp.class_maps_key(split)), "fg": fg_threshold,
           "bg": bg_threshold, "crf": asdict(crf) if crf is not None else None}

    def build(out: Path) -> None:
        cam_dir, ds = cam_exp.class_maps(split), cam_exp.dataset(split)
        for i in tqdm(range(len(ds)), desc=f"CAM seeds -> {tag}", disable=not cam_exp.progress, dynamic_ncols=True):
            sample_id = ds.ids[i]
            keys, cam = load_cam(cam_dir / f"{sample_id}.npz")
            image = ds.load(i)["image"] if crf is not None else None
            save_label_png(out / f"{sample_id}.png", seed_label(keys, cam, fg_threshold, bg_threshold, image, crf))

    return cached_folder(cam_exp.run_dir / "seeds" / tag, key, build, f"CAM seeds of {split}")


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


@dataclass(frozen=True)
class Propagation:
    """Random-walk hyper-parameters: radius delta, power n, steps t (2**t walk steps with
    `log2_steps`, the reference code's matrix squarings)."""

    radius: float
    power: float
    steps: int = 8
    log2_steps: bool = True

    def walk(self, scores: torch.Tensor, boundary: torch.Tensor) -> torch.Tensor:
        return boundary_random_walk(scores.float(), boundary.float(), self.radius, self.power, self.steps,
                                    log2_steps=self.log2_steps)


def walk_present(walk: Propagation, scores: torch.Tensor, present: torch.Tensor,
                 boundary: torch.Tensor) -> torch.Tensor:
    """`walk` of the present classes' channels only (absent ones come back 0).

    The walk is linear and per channel, so only the (few) present channels of each image are
    propagated, packed into max-present-count channels: the cost follows the image labels, not K.
    scores (B, K, h, w), present (B, K) bool, boundary (B, 1, h, w).
    """
    b, k, h, w = scores.shape
    n = int(present.sum(dim=1).max()) if present.numel() else 0
    out = torch.zeros_like(scores, dtype=torch.float32)
    if n == 0:
        return out
    # Indices of each image's present classes first (stable sort keeps class order).
    order = torch.sort(present.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :n]
    keep = torch.gather(present, 1, order)[:, :, None, None]
    idx = order[:, :, None, None].expand(b, n, h, w)
    packed = torch.gather(scores.float(), 1, idx) * keep
    return out.scatter_(1, idx, walk.walk(packed, boundary) * keep)


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


class _ContourMethod(WSSSMethod):
    """Shared by the baseline and SANCE: contour branch, CAM seeds, contour loss, pseudo labels."""

    default_source: ClassVar[str] = "cam"

    def __init__(self, num_classes: int, backbone: Backbone, *, seed_fg: float | None = None,
                 seed_bg: float | None = None,
                 seed_crf: bool = True, loss_radius: float = 10.0, loss_power: float = 1.0,
                 contour_width: int = 32, backbone_init: str | None = "cam", detach_contour: bool = True) -> None:
        super().__init__(num_classes, backbone)
        if backbone.strides[0] != 4:
            raise ValueError(f"the contour map lives at 1/4 resolution: the first backbone stage must have "
                             f"stride 4, not {backbone.strides[0]}")
        self.seed_fg, self.seed_bg, self.seed_crf = seed_fg, seed_bg, seed_crf
        self.loss_offsets: torch.Tensor
        self.register_buffer("loss_offsets", neighbor_offsets(loss_radius, half=True), persistent=False)
        self.loss_power = loss_power
        self.detach_contour = detach_contour
        self.contour = ContourBranch(backbone.channels, contour_width)
        self.declare_backbone_init(backbone_init)

    # ------------------------------------------------------------------ stage 1

    def seed_thresholds(self, cam_exp: Any) -> tuple[float, float]:
        """(fg, bg) of Eq. 1. Unset ones follow the CAM run's best background threshold t* (its
        validation sweep): fg = t* + 0.15, bg = t* / 3. At IRNet's VOC t* = 0.15 that is the paper's
        0.30 / 0.05; SynthVOC's CAMs are broader (t* = 0.45), where 0.30 / 0.05 marks 36% of the
        labelled background as foreground (train split, after the seed CRF) and t*-relative seeds 4%."""
        if self.seed_fg is not None and self.seed_bg is not None:
            return self.seed_fg, self.seed_bg
        t = cam_exp.best_threshold()
        fg = self.seed_fg if self.seed_fg is not None else round(t + 0.15, 2)
        bg = self.seed_bg if self.seed_bg is not None else round(t / 3, 2)
        return fg, bg

    def training_masks(self, experiment: RunView, split: str) -> dict[str, Path]:
        """The CAM seeds of `split` (`seed_mask` in batches)."""
        cam_exp = experiment.cam_run()
        return {"seed": write_cam_seeds(cam_exp, split, *self.seed_thresholds(cam_exp),
                                        SEED_CRF if self.seed_crf else None)}

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

    def pseudo_labels(self, experiment: Any, split: str) -> Path:
        return propagated_pseudo_labels(experiment, split,
                                        PseudoLabelParams.for_source(self.default_source, experiment.crop_size()))


@register_method
class IRNContour(_ContourMethod):
    """Table 1's baseline: contour branch supervised by CAM-seed affinities only."""

    name = "irn_contour"

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
    `online_power`, `online_steps`; Eq. 6's t counts walk iterations, as the paper words it, unless
    `online_log2_steps`: IRNet's 2**t squarings cost 32x more per training step), background score
    `online_bg` (tau_b, not given in the paper), `refine` "crf" (label refine module) or None
    (SANCE-naive), `refine_for` the branches whose online label is refined (Table 4: the contour
    branch), `online_start` the training progress from which online labels supervise (the paper
    starts from ImageNet weights; our segmentation head starts random, so its online labels wait
    for the first 10% of training), `seed_priority` (confident CAM seed pixels overrule the online
    labels of both branches; off in the paper), `snapshot_indices` training images whose online labels are
    kept for display.
    """

    name = "sance"
    notebook = "04_sance"
    default_source = "seg"
    refine_modes: ClassVar[tuple[str | None, ...]] = ("crf", None)

    def __init__(self, num_classes: int, backbone: Backbone, *, refine: str | None = "crf",
                 refine_for: Sequence[str] = ("contour",), online_radius: float = 3.0, online_power: float = 10.0,
                 online_steps: int = 8, online_log2_steps: bool = False, online_bg: float = 0.5,
                 online_start: float = 0.1, seed_priority: bool = False,
                 aspp_rates: Sequence[int] = (1, 3, 6, 9), snapshot_indices: Sequence[int] = (0, 1, 2, 3),
                 **options: Any) -> None:
        super().__init__(num_classes, backbone, **options)
        if refine not in self.refine_modes:
            raise ValueError(f"refine must be one of {self.refine_modes} for {self.name!r}, got {refine!r}"
                             + (" (use method 'sance_sal' for saliency)" if refine == "saliency" else ""))
        if not set(refine_for) <= {"contour", "seg"}:
            raise ValueError(f"refine_for takes 'contour' and/or 'seg', got {refine_for!r}")
        self.refine, self.refine_for = refine, tuple(refine_for)
        self.online = Propagation(online_radius, online_power, online_steps, online_log2_steps)
        self.online_bg, self.online_start, self.seed_priority = online_bg, online_start, seed_priority
        self.seg = DeepLabV2ASPP(backbone.out_channels, num_classes + 1, aspp_rates)
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
                if self.seed_priority:  # confident CAM seeds overrule the online labels
                    y_b, y_r = (torch.where((seed != IGNORE_INDEX) & (y != IGNORE_INDEX), seed, y) for y in (y_b, y_r))
            losses["contour_online"] = contour_loss(affinity, self.loss_offsets,
                                                    y_r if "contour" in self.refine_for else y_b)
            losses["seg_online"] = segmentation_loss(seg_logits, y_r if "seg" in self.refine_for else y_b)
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


# ---------------------------------------------------------------------------------- final pseudo labels


def walk_steps_for(cells: int, radius: float) -> int:
    """log2 of the walk steps that spread a score as far, relative to the map, as IRNet's 2**8 steps
    of radius 5 on 128-cell maps (a diffusion reach of radius * sqrt(steps) = 80 cells, 62.5%)."""
    return max(1, round(math.log2((0.625 * cells / radius) ** 2)))


@dataclass(frozen=True)
class PseudoLabelParams:
    """How final pseudo labels are made (Sec. 3.3): propagate `source` ("seg": the segmentation map,
    "cam": the CAM run's maps) averaged over `scales` (and flips) with the contour map averaged over
    `contour_scales` (None: `scales`), both at 1/`stride` of the image, with delta=5, n=10, t=8.
    `normalize` "max" divides each image's propagated scores by their maximum (IRNet, for CAMs; for
    the segmentation map too, since its propagated probabilities, diluted by (1 - B) and the walk,
    fall below the shared sweep's 0.05 floor on SynthVOC quick); None keeps the propagated
    probabilities."""

    source: str = "seg"
    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    flip: bool = True
    radius: float = 5.0
    power: float = 10.0
    steps: int = 8
    normalize: str | None = "max"
    stride: int = 4
    contour_scales: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.source not in ("seg", "cam"):
            raise ValueError(f"source must be 'seg' or 'cam', got {self.source!r}")
        if self.normalize not in ("max", None):
            raise ValueError(f"normalize must be 'max' or None, got {self.normalize!r}")
        if not self.scales or (self.contour_scales is not None and not self.contour_scales):
            raise ValueError("scales and contour_scales must not be empty")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")

    @classmethod
    def for_source(cls, source: str, image_size: int | None = None, tta: bool | None = None,
                   **overrides: Any) -> "PseudoLabelParams":
        """Defaults per source; `tta` (None: on for "seg", off for "cam", as the paper's baseline
        refines the CAM with single-scale contours) averages flips and several scales.

        Images of at least SMALL_IMAGE px (or `image_size` None) get the paper's settings: maps at
        1/4 resolution, TTA over scales 1, 0.5, 1.5, 2. Smaller images keep delta = 5 and n = 10 but
        the contour branch runs on 2x upsampled input (1.5x and 2x with TTA), all maps live at 1/2
        resolution (48 cells for 96 px) and the walk's steps are scaled to the map size
        (`walk_steps_for`: t = 5 at 48 cells). The segmentation map stays at the scale it was
        trained on (scale 0.5 would shrink 96 px objects to a few cells). Measured on SynthVOC quick
        val, SANCE seg map (contour loss still tuning the backbone then): the paper's settings gave
        17.6 mIoU, the adapted ones 55.8 (the map without any walk: 52.7)."""
        tta = source == "seg" if tta is None else tta
        scales = head_scales((1.0, 0.5, 1.5, 2.0), image_size) if tta else (1.0,)
        if image_size is None or image_size >= SMALL_IMAGE:
            base = cls(source=source, scales=scales, flip=tta)
        else:
            stride = 2
            base = cls(source=source, scales=scales, flip=tta, stride=stride,
                       contour_scales=(1.5, 2.0) if tta else (2.0,),
                       steps=walk_steps_for(math.ceil(image_size / stride), cls.radius))
        return replace(base, **overrides)

    def tag(self) -> str:
        d = asdict(self)
        return f"{self.source}-{hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]}"


@torch.no_grad()
def tta_maps(method: _ContourMethod, images: torch.Tensor, scales: Sequence[float], flip: bool,
             stride: int = 4) -> torch.Tensor:
    """`method.maps` averaged over scales and flips, at 1/`stride` of the resolution of `images`."""
    size = (math.ceil(images.shape[-2] / stride), math.ceil(images.shape[-1] / stride))
    total = multiscale_maps(method.maps, images, scales, flip)
    return F.interpolate(total / (len(scales) * (2 if flip else 1)), size=size, mode="area")


@torch.no_grad()
def propagated_maps(experiment: Any, split: str, params: PseudoLabelParams) -> Path:
    """Random-walk refined class maps of `split` in the CAM npz format (`<id>.npz`, keys + maps of the
    present classes at image resolution), so the shared threshold sweep and mask writer apply."""
    return cached_folder(experiment.run_dir / "propagated" / f"{split}_{params.tag()}",
                         propagation_key(experiment, split, params),
                         lambda out: _write_propagated_maps(experiment, split, params, out), f"random walk of {split}")


def propagation_key(experiment: Any, split: str, params: PseudoLabelParams) -> dict[str, Any]:
    """The cache key of propagated maps: the run's model and data, the params, and the CAM run's
    class maps when they are the source."""
    cam = digest(experiment.cam_run().class_maps_key(split)) if params.source == "cam" else None
    return experiment.stage_key("propagate", split, params=asdict(params), cam_maps=cam)


@torch.no_grad()
def _write_propagated_maps(experiment: Any, split: str, params: PseudoLabelParams, out: Path) -> None:
    method, device = experiment.trained_method(), experiment.device
    ds = experiment.dataset(split)
    cam_dir = experiment.cam_run().class_maps(split) if params.source == "cam" else None
    walk = Propagation(params.radius, params.power, params.steps)
    bar = tqdm(total=len(ds), desc=f"random walk -> {out.name}", disable=not experiment.progress, dynamic_ncols=True)
    for group in size_grouped_batches(ds):
        images = torch.stack([s["image"] for s in group]).to(device)
        labels = torch.stack([s["label"] for s in group]).to(device)
        maps = tta_maps(method, images, params.scales, params.flip, params.stride)
        if params.contour_scales is not None:
            maps[:, :1] = tta_maps(method, images, params.contour_scales, params.flip, params.stride)[:, :1]
        if cam_dir is None:
            scores = maps[:, 2:]
        else:
            scores = torch.zeros(len(group), method.num_classes, *images.shape[-2:], device=device)
            for b, s in enumerate(group):
                keys, cam = load_cam(cam_dir / f"{s['id']}.npz")
                scores[b, torch.from_numpy(keys).to(device)] = torch.from_numpy(cam).to(device)
            scores = F.interpolate(scores, size=maps.shape[-2:], mode="area")
        rw = F.interpolate(walk_present(walk, scores, labels > 0.5, maps[:, :1]), size=images.shape[-2:],
                           mode="bilinear", align_corners=False)
        for b, s in enumerate(group):
            keys = torch.nonzero(labels[b] > 0.5).flatten()
            cam = rw[b, keys]
            if params.normalize == "max" and cam.numel():
                cam = cam / cam.max().clamp_min(1e-5)
            save_cam(out / f"{s['id']}.npz", keys.cpu().numpy(), cam.clamp(0, 1).cpu().numpy())
        bar.update(len(group))
    bar.close()


def propagation_sweep(experiment: Any, params: PseudoLabelParams) -> dict[str, Any]:
    """Background-threshold sweep of the propagated maps on the evaluation split (cached)."""
    from wsss.evaluation import sweep_cam_thresholds

    split = experiment.config.eval_split
    maps = propagated_maps(experiment, split, params)
    key = {"stage": "sweep", "maps": digest(propagation_key(experiment, split, params)),
           "thresholds": list(experiment.config.thresholds)}
    return cached_json(maps / "sweep.json", key, lambda: sweep_cam_thresholds(
        maps, experiment.dataset(split), experiment.config.thresholds, progress=experiment.progress))["result"]


def propagated_pseudo_labels(experiment: Any, split: str, params: PseudoLabelParams) -> Path:
    """Final pseudo labels of `split`: propagated maps, background score from the validation sweep."""
    from wsss.pseudo import write_pseudo_masks

    thr = propagation_sweep(experiment, params)["best_threshold"]
    key = {"stage": "pseudo_labels", "maps": digest(propagation_key(experiment, split, params)), "bg_threshold": thr}
    return cached_folder(experiment.run_dir / "pseudo_labels" / f"{split}_{params.tag()}_thr{thr:.2f}", key,
                         lambda out: write_pseudo_masks(propagated_maps(experiment, split, params),
                                                        experiment.dataset(split), out, thr,
                                                        progress=experiment.progress),
                         f"pseudo labels of {split}")


# ---------------------------------------------------------------------------------- contour quality

# Depths past which contour mass inside objects is reported too: one and two cells of the
# 1/4-resolution contour map at scale 1, i.e. past the blur of a true contour.
INSIDE_DEPTHS_PX: tuple[float, ...] = (4.0, 8.0)


@torch.no_grad()
def contour_scores(experiment: Any, split: str | None = None, scales: Sequence[float] = (1.0,),
                   flip: bool = True) -> dict[str, Any]:
    """Contour F-measure (ODS/OIS) and where the contour mass lies (inside objects, on boundaries,
    in background; inside also beyond `INSIDE_DEPTHS_PX`), contour maps upsampled to image
    resolution against the GT label boundaries. Cached per split and scales."""
    split = split or experiment.config.eval_split
    key = experiment.stage_key("contours", split, scales=list(scales), flip=flip, depths_px=list(INSIDE_DEPTHS_PX))

    def compute() -> dict[str, Any]:
        method, device = experiment.trained_method(), experiment.device
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


# ---------------------------------------------------------------------------------- notebook views


def pseudo_label_scores(experiment: Any, params: PseudoLabelParams, split: str | None = None) -> dict[str, Any]:
    """Scores (with provenance) of the propagated pseudo labels of `split` made with `params`."""
    split = split or experiment.config.eval_split
    thr = propagation_sweep(experiment, params)["best_threshold"]
    scores = experiment.evaluate_masks(propagated_pseudo_labels(experiment, split, params), split)
    return {**scores, **experiment.provenance(split, thr, False)}


@torch.no_grad()
def example_contours(experiment: Any, indices: Sequence[int], split: str | None = None) -> list[np.ndarray]:
    """Contour maps (image resolution, flip-averaged) of images `indices` of `split`."""
    ds = experiment.dataset(split or experiment.config.eval_split)
    method = experiment.trained_method()
    out = []
    for i in indices:
        image = ds[i]["image"][None].to(experiment.device)
        boundary = multiscale_maps(method.maps, image, (1.0,), True)[0, 0] / 2
        out.append(boundary.cpu().numpy())
    return out


def online_label_history(method: "SANCE", index: int, n: int) -> list[dict[str, Any]]:
    """Up to `n` snapshots of training image `index`, evenly spread over training (first and last kept)."""
    shots = sorted((s for s in method.snapshots if s["index"] == index), key=lambda s: s["progress"])
    if len(shots) <= n:
        return shots
    return [shots[round(j * (len(shots) - 1) / max(n - 1, 1))] for j in range(n)]
