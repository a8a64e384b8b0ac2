"""Dataset-level evaluation of label maps and class maps against ground truth.

Bundles the metrics every report row carries (mIoU, per-class IoU, foreground precision and
recall, boundary IoU, SynthVOC's context false-positive rate) and the background-threshold
sweep of IRNet's `eval_cam`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from wsss.progress import tqdm

from wsss.inference import load_cam
from wsss.io import DatasetError, load_label_png
from wsss.metrics import BoundaryIoUMeter, ConfusionMeter, ContextFPMeter
from wsss.stages.pseudo_masks import cam_to_label, cam_to_labels_sweep
from wsss.refine.crf import CRFParams

DEFAULT_THRESHOLDS = tuple(np.round(np.arange(0.05, 0.951, 0.05), 2).tolist())


def context_dir_of(dataset) -> Path | None:
    """SynthVOC's ContextMasks folder beside the images, if the dataset has one."""
    path = dataset.layout.root / "ContextMasks"
    return path if path.is_dir() else None


class SegmentationEvaluator:
    """Accumulates mIoU, precision/recall, boundary IoU and (when given) the context FP rate."""

    def __init__(self, class_names: Sequence[str], boundary: bool = True) -> None:
        self.class_names = ["background", *class_names]
        k = len(self.class_names)
        self.conf = ConfusionMeter(k)
        self.boundary = BoundaryIoUMeter(k) if boundary else None
        self.context = ContextFPMeter()

    def update(self, pred: np.ndarray, gt: np.ndarray, context: np.ndarray | None = None) -> None:
        self.conf.update(pred, gt)
        if self.boundary is not None:
            self.boundary.update(pred, gt)
        if context is not None:
            self.context.update(pred, context)

    def scores(self) -> dict[str, Any]:
        s = self.conf.scores(self.class_names)
        out: dict[str, Any] = {
            "miou": s["miou"], "pixel_acc": s["pixel_acc"],
            "fg_precision": s["fg_precision"], "fg_recall": s["fg_recall"],
            "iou": dict(zip(self.class_names, s["iou"])),
            "precision": dict(zip(self.class_names, s["precision"])),
            "recall": dict(zip(self.class_names, s["recall"])),
        }
        if self.boundary is not None:
            out["boundary_iou"] = self.boundary.scores()["boundary_iou"]
        ctx = self.context.scores()
        out["context_fp_rate"] = ctx["context_fp_rate"]
        return out


def _context(context_dir: Path | None, sample_id: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The image's context mask, which must have the shape of its ground truth."""
    if context_dir is None:
        return None
    path = context_dir / f"{sample_id}.png"
    context = load_label_png(path)
    if context.shape != tuple(shape):
        raise DatasetError(f"context mask {path} has shape {context.shape}, expected {tuple(shape)} "
                           "(the shape of its ground truth)")
    return context


def sweep_cam_thresholds(cam_dir: str | os.PathLike, dataset, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                         progress: bool = True) -> dict[str, Any]:
    """mIoU (and the rest) of the thresholded class maps at every background threshold.

    Returns {"thresholds", "miou" (list), "best_threshold", "per_threshold": the scores at each threshold}.
    """
    cam_dir = Path(cam_dir)
    ctx_dir = context_dir_of(dataset)
    evals = [SegmentationEvaluator(dataset.class_names, boundary=False) for _ in thresholds]
    for i in tqdm(range(len(dataset)), desc="threshold sweep", disable=not progress, dynamic_ncols=True):
        sample_id = dataset.ids[i]
        keys, cam = load_cam(cam_dir / f"{sample_id}.npz")
        gt = dataset.load(i)["mask"]
        context = _context(ctx_dir, sample_id, gt.shape)
        for ev, pred in zip(evals, cam_to_labels_sweep(keys, cam, thresholds)):
            ev.update(pred, gt, context)
    mious = [ev.scores()["miou"] for ev in evals]
    best = int(np.nanargmax(mious))
    return {"thresholds": list(thresholds), "miou": mious, "best_threshold": float(thresholds[best]),
            "per_threshold": [ev.scores() for ev in evals]}


def evaluate_cams(cam_dir: str | os.PathLike, dataset, bg_threshold: float, crf: CRFParams | None = None,
                  progress: bool = True, boundary: bool = True) -> dict[str, Any]:
    """Scores (with boundary IoU unless `boundary=False`) of the class maps thresholded at
    `bg_threshold`, with optional CRF."""
    cam_dir = Path(cam_dir)
    ctx_dir = context_dir_of(dataset)
    ev = SegmentationEvaluator(dataset.class_names, boundary=boundary)
    desc = f"eval thr={bg_threshold:.2f}{' +crf' if crf else ''}"
    for i in tqdm(range(len(dataset)), desc=desc, disable=not progress, dynamic_ncols=True):
        sample = dataset.load(i)
        keys, cam = load_cam(cam_dir / f"{sample['id']}.npz")
        pred = cam_to_label(keys, cam, bg_threshold, sample["image"], crf)
        ev.update(pred, sample["mask"], _context(ctx_dir, sample["id"], sample["mask"].shape))
    return ev.scores()


def climb_crf_threshold(cam_dir: str | os.PathLike, dataset, start: float, crf: CRFParams,
                        thresholds: Sequence[float] = DEFAULT_THRESHOLDS, progress: bool = True) -> dict[str, Any]:
    """The background threshold whose maps score the best mIoU *after* CRF, on `dataset`.

    CRF trades recall for precision, so its best threshold sits below the raw maps' (CAM on
    SynthVOC quick: 0.30 against 0.45, 11 val points apart). A CRF per image and threshold makes
    the full sweep dear (19 thresholds), so this climbs the threshold grid from `start` (the raw
    maps' choice), first downwards, one step at a time while mIoU rises: 4-5 passes on the runs
    measured. A subset of the images would be cheaper but is noisy where the optimum is flat (300
    of SynthVOC quick's 1,500 train images chose one step off for two runs of four).

    Returns {"thresholds", "miou" (the steps taken, ascending), "best_threshold", "start"}.
    """
    grid = sorted(float(t) for t in thresholds)
    if start not in grid:
        raise ValueError(f"start threshold {start} is not on the grid {grid}")
    scores: dict[int, float] = {}

    def miou(j: int) -> float:
        if j not in scores:
            scores[j] = float(evaluate_cams(cam_dir, dataset, grid[j], crf, progress, boundary=False)["miou"])
        return scores[j]

    first = best = grid.index(start)
    for step in (-1, 1):
        j = best + step
        while 0 <= j < len(grid) and miou(j) > miou(best):
            best, j = j, j + step
        if best != first:
            break
    steps = sorted(scores)
    return {"thresholds": [grid[j] for j in steps], "miou": [scores[j] for j in steps],
            "best_threshold": grid[best], "start": grid[first]}


def evaluate_label_dir(pred_dir: str | os.PathLike, dataset, progress: bool = True) -> dict[str, Any]:
    """Scores of a folder of label PNGs (pseudo masks or predictions) over `dataset`'s ids."""
    pred_dir = Path(pred_dir)
    ctx_dir = context_dir_of(dataset)
    ev = SegmentationEvaluator(dataset.class_names)
    for i in tqdm(range(len(dataset)), desc=f"eval {pred_dir.name}", disable=not progress, dynamic_ncols=True):
        sample = dataset.load(i)
        path = pred_dir / f"{sample['id']}.png"
        if not path.is_file():
            raise FileNotFoundError(f"prediction {path} is missing")
        ev.update(load_label_png(path), sample["mask"], _context(ctx_dir, sample["id"], sample["mask"].shape))
    return ev.scores()
