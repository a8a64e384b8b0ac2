"""Random-walk propagation of class maps with a contour map (Sec. 3.3 of SANCE, IRNet's
`make_sem_seg_labels`): the step SANCE and its IRNet-style contour baseline share to make their
final pseudo labels.

A contour method's `maps(images)` ((B, 1 [+ 1 + K], h, w): contour probability first, then its
segmentation softmax if it has one) gives the contour map, averaged over scales and flips
(`walk_inputs`); the scores it propagates are the segmentation map ("seg") or the CAM run's class maps
("cam"). The propagated maps are written in the CAM npz format, so the shared background-threshold
sweep and mask writer apply: the constant background score is the best of the train split's sweep,
as for the CAM rows (the reported split's best is shown only as an oracle). The walk's resolution,
steps and scales come from the scale policy (`PseudoLabelParams.for_source`). Everything is cached in the run folder (`propagated/`,
`pseudo_labels/`).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from wsss.progress import tqdm

from wsss.cache import cached_folder, cached_json, digest
from wsss.inference import in_bf16, load_cam, multiscale_maps, save_cam, size_grouped_batches
from wsss.methods.base import RunView, WSSSMethod
from wsss.refine.random_walk import Propagation, walk_present
from wsss.scale import PAPER_SCALE, ScalePolicy


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
    def for_source(cls, source: str, scale: ScalePolicy = PAPER_SCALE, coarsest_stride: int = 16,
                   tta: bool | None = None, **overrides: Any) -> "PseudoLabelParams":
        """Defaults per source, converted by the scale policy for a network whose coarsest map has
        `coarsest_stride`; `tta` (None: on for "seg", off for "cam", as the paper's baseline refines
        the CAM with single-scale contours) averages several scales. Flips are averaged either way:
        IRNet's `make_sem_seg_labels` averages the edge map of the image and of its flip.

        At VOC size these are the paper's settings: maps at 1/4 resolution, t = 8 squarings, TTA
        over scales 1, 0.5, 1.5, 2. On smaller images the policy keeps the walk's map at least
        MIN_WALK_CELLS long (1/2 resolution, 48 cells, for 96 px), scales its steps to keep the
        paper's reach (t = 5 there) and drops the scales whose maps are too coarse (0.5). The contour
        branch (stride 4) then runs on input upsampled to the walk's resolution (2x; 1.5x and 2x with
        TTA) so that its map is computed, not interpolated, at the walk's cells. Measured on SynthVOC
        quick val, SANCE seg map: the paper's settings unconverted gave 17.6 mIoU, these 55.8."""
        tta = source == "seg" if tta is None else tta
        paper = cls(source=source)
        stride = scale.walk_stride(paper.stride)
        up = paper.stride / stride
        base = replace(paper, scales=scale.scales(paper.scales, coarsest_stride) if tta else (1.0,), stride=stride,
                       steps=scale.walk_log2_steps(paper.steps, stride, paper.stride),
                       contour_scales=None if up == 1 else ((0.75 * up, up) if tta else (up,)))
        return replace(base, **overrides)

    @classmethod
    def for_run(cls, experiment: RunView, source: str, tta: bool | None = None,
                **overrides: Any) -> "PseudoLabelParams":
        """`for_source` for the images and network of a contour run."""
        return cls.for_source(source, experiment.scale_policy(), experiment.method.backbone.output_stride, tta,
                              **overrides)

    def tag(self) -> str:
        d = asdict(self)
        return f"{self.source}-{hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]}"


@torch.no_grad()
def tta_maps(method: WSSSMethod, images: torch.Tensor, scales: Sequence[float], flip: bool,
             stride: int = 4, amp: bool = False) -> torch.Tensor:
    """`method.maps` of a contour method (contour channel first) averaged over scales and flips, at
    1/`stride` of the resolution of `images`; `amp`: the network runs under bf16 autocast."""
    total = multiscale_maps(in_bf16(method.maps, images.device) if amp else method.maps, images, scales, flip)
    return _mean_at_stride(total, len(scales) * (2 if flip else 1), stride)


def _mean_at_stride(total: torch.Tensor, passes: int, stride: int) -> torch.Tensor:
    """A sum of `passes` maps at image resolution, averaged and area-pooled to 1/`stride` of it."""
    size = (math.ceil(total.shape[-2] / stride), math.ceil(total.shape[-1] / stride))
    return F.interpolate(total / passes, size=size, mode="area")


@torch.no_grad()
def walk_inputs(method: WSSSMethod, images: torch.Tensor, params: PseudoLabelParams,
                amp: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What the walk of `params` reads from a contour method, at 1/`params.stride` of `images`:
    the contour map (B, 1, h, w) averaged over `contour_scales` (None: `scales`) and flips, and for
    source "seg" the segmentation map's class channels (B, K, h, w) averaged over `scales`, else None.

    Equal to `tta_maps` over each set of scales, but each scale's network pass is made once for
    both (on 96 px images the contour scales 1.5 and 2 are among the segmentation's 1, 1.5, 2), and
    none is made for a segmentation map that source "cam" does not read."""
    map_fn = in_bf16(method.maps, images.device) if amp else method.maps
    contour_scales = params.contour_scales or params.scales
    seg_scales = params.scales if params.source == "seg" else ()
    per_scale = {s: multiscale_maps(map_fn, images, (s,), params.flip)
                 for s in dict.fromkeys((*seg_scales, *contour_scales))}

    def mean(scales: Sequence[float], channels: slice) -> torch.Tensor:
        total = sum(per_scale[s][:, channels] for s in scales)  # in `scales` order, as `multiscale_maps` sums
        return _mean_at_stride(total, len(scales) * (2 if params.flip else 1), params.stride)

    return mean(contour_scales, slice(0, 1)), mean(seg_scales, slice(2, None)) if seg_scales else None


@torch.no_grad()
def propagated_maps(experiment: RunView, split: str, params: PseudoLabelParams) -> Path:
    """Random-walk refined class maps of `split` in the CAM npz format (`<id>.npz`, keys + maps of the
    present classes at image resolution), so the shared threshold sweep and mask writer apply."""
    return cached_folder(experiment.run_dir / "propagated" / f"{split}_{params.tag()}",
                         propagation_key(experiment, split, params),
                         lambda out: _write_propagated_maps(experiment, split, params, out), f"random walk of {split}")


def propagation_key(experiment: RunView, split: str, params: PseudoLabelParams) -> dict[str, Any]:
    """The cache key of propagated maps: the run's model and data, the params, and the CAM run's
    class maps when they are the source."""
    cam = digest(_seed_run(experiment).class_maps_key(split)) if params.source == "cam" else None
    return experiment.stage_key("propagate", split, params=asdict(params), cam_maps=cam)


def _seed_run(experiment: RunView) -> RunView:
    """The run whose class maps a contour run propagates (source "cam"): the contour method's
    `seed_run` (the CAM baseline unless it names another method)."""
    return experiment.method.seed_run(experiment)  # type: ignore[attr-defined]


@torch.no_grad()
def _write_propagated_maps(experiment: RunView, split: str, params: PseudoLabelParams, out: Path) -> None:
    method, device = experiment.inference_method(), experiment.device
    amp = bool(experiment.config.train.amp)  # read in the precision the run trained in
    ds = experiment.dataset(split)
    cam_dir = _seed_run(experiment).class_maps(split) if params.source == "cam" else None
    walk = Propagation(params.radius, params.power, params.steps)
    bar = tqdm(total=len(ds), desc=f"random walk -> {out.name}", disable=not experiment.progress, dynamic_ncols=True)
    for group in size_grouped_batches(ds):
        images = torch.stack([s["image"] for s in group]).to(device)
        labels = torch.stack([s["label"] for s in group]).to(device)
        contour, scores = walk_inputs(method, images, params, amp)
        if scores is None:
            scores = torch.zeros(len(group), method.num_classes, *images.shape[-2:], device=device)
            for b, s in enumerate(group):
                keys, cam = load_cam(cam_dir / f"{s['id']}.npz")
                scores[b, torch.from_numpy(keys).to(device)] = torch.from_numpy(cam).to(device)
            scores = F.interpolate(scores, size=contour.shape[-2:], mode="area")
        rw = F.interpolate(walk_present(walk, scores, labels > 0.5, contour), size=images.shape[-2:],
                           mode="bilinear", align_corners=False)
        for b, s in enumerate(group):
            keys = torch.nonzero(labels[b] > 0.5).flatten()
            cam = rw[b, keys]
            if params.normalize == "max" and cam.numel():
                cam = cam / cam.max().clamp_min(1e-5)
            save_cam(out / f"{s['id']}.npz", keys.cpu().numpy(), cam.clamp(0, 1).cpu().numpy())
        bar.update(len(group))
    bar.close()


def propagation_sweep(experiment: RunView, params: PseudoLabelParams, split: str | None = None) -> dict[str, Any]:
    """Background-threshold sweep of the propagated maps of `split` (cached). The default, the train
    split, is where the pseudo labels' threshold is chosen; a sweep of the reported split is an oracle."""
    from wsss.evaluation import sweep_cam_thresholds

    split = split or experiment.config.train_split
    maps = propagated_maps(experiment, split, params)
    key = {"stage": "sweep", "maps": digest(propagation_key(experiment, split, params)),
           "thresholds": list(experiment.config.thresholds)}
    return cached_json(maps / "sweep.json", key, lambda: sweep_cam_thresholds(
        maps, experiment.dataset(split), experiment.config.thresholds, progress=experiment.progress))["result"]


def propagated_pseudo_labels(experiment: RunView, split: str, params: PseudoLabelParams) -> Path:
    """Final pseudo labels of `split`: propagated maps, background score chosen on the train split."""
    from wsss.stages.pseudo_masks import write_pseudo_masks

    thr = propagation_sweep(experiment, params)["best_threshold"]
    key = {"stage": "pseudo_labels", "maps": digest(propagation_key(experiment, split, params)), "bg_threshold": thr}
    return cached_folder(experiment.run_dir / "pseudo_labels" / f"{split}_{params.tag()}_thr{thr:.2f}", key,
                         lambda out: write_pseudo_masks(propagated_maps(experiment, split, params),
                                                        experiment.dataset(split), out, thr,
                                                        progress=experiment.progress),
                         f"pseudo labels of {split}")
