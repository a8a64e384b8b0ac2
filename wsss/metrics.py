"""Segmentation, boundary and contour metrics, folder evaluation, and the `wsss eval` command.

Everything is computed per image from integer counts (numpy bincount, scipy.ndimage filters and
distance transforms) and *accumulated over the dataset* before any ratio is taken: dataset-level
IoU is sum(intersection) / sum(union), never a mean of per-image IoUs, as in the VOC / IRNet
evaluation scripts. Label maps are (H, W) integer arrays; 255 (`IGNORE_INDEX`) in the ground truth
marks pixels that are excluded from every score.

Definitions (all accumulated over the dataset):

* confusion matrix `conf[g, p]`: number of non-ignored pixels with ground truth g predicted as p.
* IoU_c = TP_c / (GT_c + PRED_c - TP_c); NaN when class c is absent from both ground truth and
  prediction, and NaN classes are left out of mIoU (`np.nanmean`, as the VOC/IRNet scripts do).
* precision_c = TP_c / PRED_c, recall_c = TP_c / GT_c (NaN when the denominator is 0).
  `fg_precision` / `fg_recall` are the nan-mean of the per-class values over the foreground classes
  1..K-1: the way EPS / RCM report the precision and recall of pseudo masks.
* boundary IoU (Cheng et al., CVPR 2021): see `boundary_iou`.
* contour F-measure ODS/OIS (BSDS style): see `ContourFMeter`.
* contour mass inside objects (the SANCE observation): see `contour_mass_inside`.
* context false-positive rate: see `context_false_positive_rate`.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import ndimage

from wsss.io import IGNORE_INDEX, DatasetError, load_label_png, read_id_list, write_json

try:  # OpenCV's morphology and distance transform are 5-10x faster than scipy's on 512x512 maps
    import cv2 as _cv2
except ImportError:  # pragma: no cover - opencv is a dependency; scipy is the exact fallback
    _cv2 = None

# Slack on distance comparisons: distances between pixel centres are sqrt(integer), at least
# ~0.02 apart in the range used, so 1e-4 only absorbs float32 rounding (cv2 returns float32).
_DIST_EPS = 1e-4

__all__ = [
    "confusion_matrix",
    "ConfusionMeter",
    "segmentation_scores",
    "boundary_iou",
    "boundary_iou_counts",
    "BoundaryIoUMeter",
    "gt_boundaries",
    "ContourFMeter",
    "contour_mass_inside",
    "ContourMassMeter",
    "context_false_positive_rate",
    "ContextFPMeter",
    "evaluate_folders",
    "format_table",
    "read_id_list",
    "read_class_names",
    "register",
]


# --------------------------------------------------------------------------------------------
# Confusion matrix, IoU, precision / recall
# --------------------------------------------------------------------------------------------


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    return pred, gt


def _label_index(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int | None
) -> np.ndarray:
    """Flat integer index gt * K + pred per pixel, K*K at ignored pixels; labels range-checked.

    Full-image arithmetic instead of boolean indexing (pred[valid]): on a 512x512 map each masked
    copy costs more than the whole bincount, and one index serves every count of the image.
    """
    pred, gt = _check_pair(pred, gt)
    k = num_classes
    valid = gt != ignore_index if ignore_index is not None else np.ones(gt.shape, dtype=bool)
    # Cheap whole-image min/max first; the masked search for the culprit only runs when it may fail.
    if pred.size and (pred.min() < 0 or pred.max() >= k):
        bad = pred[valid & ((pred < 0) | (pred >= k))]
        if bad.size:
            raise ValueError(
                f"prediction label {int(bad[0])} outside 0..{k - 1} (num_classes={k}) "
                f"at a pixel not marked {ignore_index} in the ground truth"
            )
    bad = gt[valid & ((gt < 0) | (gt >= k))]
    if bad.size:
        raise ValueError(f"ground-truth label {int(bad[0])} outside 0..{k - 1} (num_classes={k}) and not {ignore_index}")
    # int32 halves the memory traffic of int64; K <= 46340 keeps K*K in range.
    idx_t = np.int32 if k * k * 4 < 2**31 else np.int64
    idx = gt.astype(idx_t) * idx_t(k) + pred.astype(idx_t)
    return np.where(valid, idx, idx_t(k * k)).ravel()


def confusion_matrix(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int | None = IGNORE_INDEX
) -> np.ndarray:
    """(K, K) int64 counts, rows = ground truth, columns = prediction; gt == ignore_index skipped.

    A prediction value >= num_classes at a non-ignored pixel is a bug upstream (e.g. an uncertain
    pseudo-label region left at 255): raise rather than silently dropping those pixels.
    """
    k = num_classes
    idx = _label_index(pred, gt, k, ignore_index)
    return np.bincount(idx, minlength=k * k + 1)[: k * k].reshape(k, k)


def _nan_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def default_class_names(num_classes: int) -> list[str]:
    return ["background"] + [f"class_{i}" for i in range(1, num_classes)]


def segmentation_scores(conf: np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Scores of a (K, K) confusion matrix (rows gt, cols pred); definitions in the module docstring.

    Returns iou / precision / recall (lists, NaN for undefined), per_class_iou ({name: iou}), miou,
    pixel_acc, mean_acc, fg_precision, fg_recall, num_pixels, num_classes, class_names.
    """
    conf = np.asarray(conf, dtype=np.int64)
    k = conf.shape[0]
    if conf.shape != (k, k):
        raise ValueError(f"confusion matrix must be square, got {conf.shape}")
    names = list(class_names) if class_names is not None else default_class_names(k)
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} classes")
    tp = np.diag(conf)
    gt_count = conf.sum(axis=1)
    pred_count = conf.sum(axis=0)
    iou = _nan_div(tp, gt_count + pred_count - tp)
    precision = _nan_div(tp, pred_count)
    recall = _nan_div(tp, gt_count)
    total = int(conf.sum())
    return {
        "iou": iou.tolist(),
        "per_class_iou": dict(zip(names, iou.tolist())),
        "miou": _nanmean(iou),
        "pixel_acc": float(tp.sum() / total) if total else float("nan"),
        "mean_acc": _nanmean(recall),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        # EPS / RCM: mean over foreground classes of the per-class values (background excluded).
        "fg_precision": _nanmean(precision[1:]),
        "fg_recall": _nanmean(recall[1:]),
        "num_pixels": total,
        "num_classes": k,
        "class_names": names,
    }


class ConfusionMeter:
    """Accumulates a dataset-level confusion matrix."""

    def __init__(self, num_classes: int, ignore_index: int | None = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.conf = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        self.conf += confusion_matrix(pred, gt, self.num_classes, self.ignore_index)

    def scores(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        return segmentation_scores(self.conf, class_names)


# --------------------------------------------------------------------------------------------
# Boundary IoU
# --------------------------------------------------------------------------------------------


# Boundary IoU's band as the shape cues paper sets it (Sec. 4.2.4: d = 5% of the image diagonal,
# about 30 px on VOC), the one paper here that reports boundary IoU; Cheng et al.'s default is 2%.
# 7 px on SynthVOC's 96 px images.
BOUNDARY_BAND = 0.05


def _inner_band(label: np.ndarray, d: int) -> np.ndarray:
    """Pixels whose (2d+1)^2 square holds another label or reaches past the image border.

    For the pixels of class c this is exactly mask_c minus mask_c eroded d times by a 3x3 square
    with zero padding (the Boundary IoU reference `mask_to_boundary`): one max and one min filter
    (separable, O(HW)) give the bands of all classes at once instead of one erosion per class.
    """
    label = np.asarray(label)
    size = 2 * d + 1
    if _cv2 is not None and label.dtype == np.uint8:
        # (The border mode is irrelevant: every pixel within d of the border is set below.)
        kernel = np.ones((size, size), np.uint8)
        band = _cv2.dilate(label, kernel) != _cv2.erode(label, kernel)
    else:
        band = ndimage.maximum_filter(label, size=size, mode="nearest") != ndimage.minimum_filter(
            label, size=size, mode="nearest"
        )
    # The reference pads with 0 so that masks cut by the image border count as boundary there.
    band[:d, :] = True
    band[-d:, :] = True
    band[:, :d] = True
    band[:, -d:] = True
    return band


def _as_uint8(label: np.ndarray) -> np.ndarray:
    # Labels are range-checked before this (0..K-1 or the ignore value), so uint8 is lossless
    # whenever every value fits; min/max filters on uint8 are also the fastest.
    if label.dtype != np.uint8 and label.size and label.min() >= 0 and label.max() <= 255:
        return label.astype(np.uint8)
    return label


def boundary_dilation(shape: tuple[int, int], dilation_ratio: float = BOUNDARY_BAND) -> int:
    """Band width d = max(1, round(ratio * image diagonal)), as in Cheng et al. 2021."""
    h, w = shape
    return max(1, int(round(dilation_ratio * math.hypot(h, w))))


def _image_counts(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    dilation_ratio: float,
    ignore_index: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(confusion matrix, boundary intersections, boundary unions) of one image from ONE bincount.

    Each pixel's key is (in pred band, in gt band, gt, pred); the joint histogram gives the
    confusion matrix (sum over bands), the per-class band sizes and the band intersections.
    """
    k = num_classes
    idx = _label_index(pred, gt, k, ignore_index)
    pred = _as_uint8(np.asarray(pred))
    gt = _as_uint8(np.asarray(gt))
    d = boundary_dilation(gt.shape, dilation_ratio)
    group = _inner_band(pred, d).ravel().astype(idx.dtype) + idx.dtype.type(2) * _inner_band(gt, d).ravel()
    n = k * k + 1  # the last bin of each group collects the ignored pixels
    hist = np.bincount(group * idx.dtype.type(n) + idx, minlength=4 * n).reshape(4, n)[:, : k * k].reshape(4, k, k)
    conf = hist.sum(axis=0)
    pred_band = (hist[1] + hist[3]).sum(axis=0)  # pred band of class c, at non-ignored pixels
    gt_band = (hist[2] + hist[3]).sum(axis=1)
    inter = np.diagonal(hist[3]).copy()  # in both bands and gt == pred == c
    return conf, inter, pred_band + gt_band - inter


def boundary_iou_counts(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    dilation_ratio: float = BOUNDARY_BAND,
    ignore_index: int | None = IGNORE_INDEX,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class (intersection, union) pixel counts of the boundary bands of one image.

    Only non-ignored pixels count: the VOC 255 band around objects is left out here as in mIoU.
    """
    _, inter, union = _image_counts(pred, gt, num_classes, dilation_ratio, ignore_index)
    return inter, union


def boundary_iou(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    dilation_ratio: float = BOUNDARY_BAND,
    ignore_index: int | None = IGNORE_INDEX,
) -> float:
    """Boundary IoU of one image (Cheng et al., CVPR 2021), mean over classes present.

    For each class, the inner boundary band of width d = max(1, round(ratio * diagonal)) of the
    predicted mask and of the ground-truth mask (mask minus its d-fold 3x3 erosion, the image border
    counting as outside), IoU of the two bands. Pixels with gt == ignore_index are excluded.
    Classes whose bands are empty in both are NaN and left out of the mean. For a dataset use
    `BoundaryIoUMeter`, which sums intersections and unions over images before dividing.
    """
    inter, union = boundary_iou_counts(pred, gt, num_classes, dilation_ratio, ignore_index)
    return _nanmean(_nan_div(inter, union))


class BoundaryIoUMeter:
    """Dataset-level Boundary IoU: per-class intersections and unions summed over images."""

    def __init__(self, num_classes: int, dilation_ratio: float = BOUNDARY_BAND, ignore_index: int | None = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.dilation_ratio = dilation_ratio
        self.ignore_index = ignore_index
        self.inter = np.zeros(num_classes, dtype=np.int64)
        self.union = np.zeros(num_classes, dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        i, u = boundary_iou_counts(pred, gt, self.num_classes, self.dilation_ratio, self.ignore_index)
        self.add_counts(i, u)

    def add_counts(self, inter: np.ndarray, union: np.ndarray) -> None:
        self.inter += inter[: self.num_classes]
        self.union += union[: self.num_classes]

    def scores(self) -> dict[str, Any]:
        per_class = _nan_div(self.inter, self.union)
        return {"boundary_iou": _nanmean(per_class), "boundary_iou_per_class": per_class.tolist()}


# --------------------------------------------------------------------------------------------
# Semantic boundaries and contour F-measure
# --------------------------------------------------------------------------------------------


def gt_boundaries(label_map: np.ndarray, ignore_index: int | None = IGNORE_INDEX) -> np.ndarray:
    """(H, W) bool map of semantic boundaries of a label map.

    Boundary = every ignore pixel, plus both pixels of every 4-neighbour pair of two different
    non-ignore classes. In VOC the annotators drew a ~5 px 255 band along object outlines, so the
    band *is* the boundary there; where classes touch without a band (synthetic data, touching
    objects) the class change marks it. The image border is not a boundary. Caveat: VOC also fills
    whole "difficult" objects with 255; those regions count as boundary in full.
    """
    lab = np.asarray(label_map)
    ign = lab == ignore_index if ignore_index is not None else np.zeros(lab.shape, dtype=bool)
    out = ign.copy()
    ok = ~ign
    dh = (lab[:, 1:] != lab[:, :-1]) & ok[:, 1:] & ok[:, :-1]
    out[:, 1:] |= dh
    out[:, :-1] |= dh
    dv = (lab[1:, :] != lab[:-1, :]) & ok[1:, :] & ok[:-1, :]
    out[1:, :] |= dv
    out[:-1, :] |= dv
    return out


def contour_tolerance(shape: tuple[int, int], ratio: float = 0.0075) -> float:
    """BSDS matching tolerance: ratio * image diagonal, at least 1 px."""
    return max(1.0, ratio * math.hypot(*shape))


def _distance_to(features: np.ndarray) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest True pixel of `features` (which has one)."""
    if _cv2 is not None:
        # DIST_MASK_PRECISE is the exact Euclidean transform (Felzenszwalb), not the 3x3/5x5 chamfer.
        return _cv2.distanceTransform((~features).astype(np.uint8), _cv2.DIST_L2, _cv2.DIST_MASK_PRECISE)
    return ndimage.distance_transform_edt(~features)


def _disk_max(x: np.ndarray, radius: float) -> np.ndarray:
    """Max of x over the Euclidean disk dx^2 + dy^2 <= radius^2 around every pixel (float32).

    Without OpenCV: one horizontal 1-D max filter per row offset of the disk (each O(HW)) and a
    vertical shift, O(HW * radius) instead of O(HW * radius^2).
    """
    x = np.asarray(x, dtype=np.float32)
    h, w = x.shape
    r = int(math.floor(radius))
    halves = [int(math.floor(math.sqrt(max(radius * radius - dy * dy, 0.0)))) for dy in range(-r, r + 1)]
    if _cv2 is not None:
        kernel = np.zeros((2 * r + 1, 2 * r + 1), np.uint8)
        for i, half in enumerate(halves):
            kernel[i, r - half : r + half + 1] = 1
        # cv2's default dilate border is -inf, i.e. only pixels inside the image count.
        return _cv2.dilate(x, kernel)
    out = np.full(x.shape, -np.inf, dtype=np.float32)
    rows: dict[int, np.ndarray] = {}
    for dy, half in zip(range(-r, r + 1), halves):
        if half not in rows:
            rows[half] = ndimage.maximum_filter1d(x, size=2 * half + 1, axis=1, mode="constant", cval=-np.inf)
        src = rows[half]
        # out[y] = max(out[y], src[y + dy]) where y + dy is inside the image.
        if dy >= 0:
            np.maximum(out[: h - dy], src[dy:], out=out[: h - dy])
        else:
            np.maximum(out[-dy:], src[: h + dy], out=out[-dy:])
    return out


def _counts_at_or_above(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """counts[i] = #(values >= thresholds[i]) for ascending thresholds.

    Sorting once and binary-searching the ~100 thresholds is several times faster than
    binary-searching each of the ~10^5 values among the thresholds.
    """
    v = np.sort(values.ravel()).astype(np.float64)  # compare in float64 like `values >= t` would
    return (v.size - np.searchsorted(v, thresholds, side="left")).astype(np.int64)


def _f_measure(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    s = p + r
    return np.where(s > 0, 2 * p * r / np.where(s > 0, s, 1), 0.0)


class ContourFMeter:
    """Contour precision / recall / F-measure with ODS and OIS, accumulated BSDS-style.

    For every threshold t, the predicted contour is {contour_prob >= t} with *no* thinning or
    non-maximum suppression (the simple variant: thick predicted contours are scored as they are,
    which lowers precision compared with the BSDS protocol that thins first). Matching uses a
    tolerance radius (default 0.0075 * image diagonal, at least 1 px, as BSDS's maxDist) without
    the BSDS one-to-one assignment:

    * precision = share of predicted pixels within the tolerance of some GT boundary pixel
      (Euclidean distance transform of the GT boundary);
    * recall = share of GT boundary pixels within the tolerance of some predicted pixel (a GT pixel
      is recalled at t iff the max of contour_prob over its tolerance disk is >= t, which gives
      all thresholds at once and is the same Euclidean criterion).

    Counts are summed over the dataset per threshold; ODS = the best F of the dataset-level P/R
    over thresholds; OIS picks each image's best threshold (ties -> the highest) and sums those
    images' counts. An empty prediction has precision 0 and F = 0.
    """

    def __init__(
        self, thresholds: Sequence[float] | np.ndarray = np.linspace(0.01, 0.99, 99), tolerance_px: float | None = None
    ) -> None:
        self.thresholds = np.sort(np.asarray(thresholds, dtype=np.float64))
        self.tolerance_px = tolerance_px
        t = len(self.thresholds)
        self.pred_total = np.zeros(t, dtype=np.int64)
        self.pred_matched = np.zeros(t, dtype=np.int64)
        self.gt_total = 0
        self.gt_matched = np.zeros(t, dtype=np.int64)
        self.ois_counts = np.zeros(4, dtype=np.int64)  # pred_matched, pred_total, gt_matched, gt_total
        self.n_images = 0

    def image_counts(self, contour_prob: np.ndarray, gt_boundary: np.ndarray) -> dict[str, Any]:
        prob = np.asarray(contour_prob, dtype=np.float32)
        gtb = np.asarray(gt_boundary, dtype=bool)
        if prob.shape != gtb.shape or prob.ndim != 2:
            raise ValueError(f"contour map shape {prob.shape} differs from boundary shape {gtb.shape}")
        tol = self.tolerance_px if self.tolerance_px is not None else contour_tolerance(prob.shape)
        thr = self.thresholds
        gt_total = int(gtb.sum())
        pred_total = _counts_at_or_above(prob.ravel(), thr)
        if gt_total:
            near_gt = _distance_to(gtb) <= tol + _DIST_EPS
            pred_matched = _counts_at_or_above(prob[near_gt], thr)
            gt_matched = _counts_at_or_above(_disk_max(prob, tol + _DIST_EPS)[gtb], thr)
        else:
            pred_matched = np.zeros(len(thr), dtype=np.int64)
            gt_matched = np.zeros(len(thr), dtype=np.int64)
        return {"pred_total": pred_total, "pred_matched": pred_matched, "gt_total": gt_total, "gt_matched": gt_matched}

    def add_counts(self, c: dict[str, Any]) -> None:
        self.pred_total += c["pred_total"]
        self.pred_matched += c["pred_matched"]
        self.gt_total += c["gt_total"]
        self.gt_matched += c["gt_matched"]
        p = _nan_div(c["pred_matched"], c["pred_total"])
        r = _nan_div(c["gt_matched"], c["gt_total"]) if c["gt_total"] else np.zeros(len(self.thresholds))
        f = _f_measure(np.nan_to_num(p), np.nan_to_num(r))
        best = len(f) - 1 - int(np.argmax(f[::-1]))  # highest threshold among the ties
        self.ois_counts += [c["pred_matched"][best], c["pred_total"][best], c["gt_matched"][best], c["gt_total"]]
        self.n_images += 1

    def update(self, contour_prob: np.ndarray, gt_boundary: np.ndarray) -> None:
        self.add_counts(self.image_counts(contour_prob, gt_boundary))

    def curve(self) -> dict[str, np.ndarray]:
        p = np.nan_to_num(_nan_div(self.pred_matched, self.pred_total))
        r = np.nan_to_num(_nan_div(self.gt_matched, self.gt_total)) if self.gt_total else np.zeros(len(self.thresholds))
        return {"thresholds": self.thresholds, "precision": p, "recall": r, "f": _f_measure(p, r)}

    def scores(self) -> dict[str, Any]:
        c = self.curve()
        i = int(np.argmax(c["f"]))
        pm, pt, gm, gtt = self.ois_counts
        op = pm / pt if pt else 0.0
        orc = gm / gtt if gtt else 0.0
        return {
            "ods_f": float(c["f"][i]),
            "ods_threshold": float(self.thresholds[i]),
            "precision": float(c["precision"][i]),
            "recall": float(c["recall"][i]),
            "ois_f": float(_f_measure(np.float64(op), np.float64(orc))),
            "n_images": self.n_images,
        }


# --------------------------------------------------------------------------------------------
# Contour mass inside objects (SANCE)
# --------------------------------------------------------------------------------------------


def contour_mass_inside(
    contour_prob: np.ndarray,
    label_map: np.ndarray,
    band_px: float = 2,
    threshold: float = 0.5,
    ignore_index: int | None = IGNORE_INDEX,
    depths_px: Sequence[float] = (),
) -> dict[str, float]:
    """Where the predicted contour mass lies: inside objects, on true boundaries, or in background.

    Regions (from `gt_boundaries(label_map)`, Euclidean distance): *boundary* = pixels within
    band_px of a GT boundary pixel (ignore pixels are boundary by construction); *inside* =
    foreground pixels (class not 0 / ignore) farther than band_px; *background* = class-0 pixels
    farther than band_px. SANCE's observation is that CAM-derived contour maps put much of their
    mass *inside* objects (part edges), which is what this measures.

    Returns the summed contour_prob per region (mass_*), the total, their shares (share_*, NaN when
    the total is 0), `intra_object_pixels` (inside pixels with prob >= threshold) and the region
    sizes; for each d of `depths_px`, `share_inside_beyond_<d>px`: the share of the mass on object
    pixels farther than d px from a boundary, which tells the fringe of a blurred true contour
    (just past the band) from edges deep inside objects. `ContourMassMeter` sums these over a dataset.
    """
    c = _contour_mass_counts(contour_prob, label_map, band_px, threshold, ignore_index, depths_px)
    return _contour_mass_scores(c, depths_px)


def _contour_mass_counts(
    contour_prob: np.ndarray, label_map: np.ndarray, band_px: float, threshold: float, ignore_index: int | None,
    depths_px: Sequence[float] = (),
) -> np.ndarray:
    prob = np.asarray(contour_prob, dtype=np.float64)
    lab = np.asarray(label_map)
    if prob.shape != lab.shape:
        raise ValueError(f"contour map shape {prob.shape} differs from label map shape {lab.shape}")
    gtb = gt_boundaries(lab, ignore_index)
    dist = _distance_to(gtb) if gtb.any() else np.full(lab.shape, np.inf)
    on_boundary = dist <= band_px + _DIST_EPS
    ign = lab == ignore_index if ignore_index is not None else np.zeros(lab.shape, dtype=bool)
    inside = ~on_boundary & (lab != 0) & ~ign
    background = ~on_boundary & (lab == 0)
    return np.array(
        [
            prob[inside].sum(),
            prob[on_boundary].sum(),
            prob[background].sum(),
            prob.sum(),
            np.count_nonzero(inside & (prob >= threshold)),
            np.count_nonzero(inside),
            np.count_nonzero(on_boundary),
            np.count_nonzero(background),
            *(prob[inside & (dist > d + _DIST_EPS)].sum() for d in depths_px),
        ],
        dtype=np.float64,
    )


def _contour_mass_scores(c: np.ndarray, depths_px: Sequence[float] = ()) -> dict[str, float]:
    total = c[3]
    share = (lambda m: float(m / total)) if total > 0 else (lambda m: float("nan"))
    return {
        **{f"share_inside_beyond_{d:g}px": share(m) for d, m in zip(depths_px, c[8:])},
        "mass_inside": float(c[0]),
        "mass_boundary": float(c[1]),
        "mass_background": float(c[2]),
        "mass_total": float(total),
        "share_inside": share(c[0]),
        "share_boundary": share(c[1]),
        "share_background": share(c[2]),
        "intra_object_pixels": int(c[4]),
        "inside_pixels": int(c[5]),
        "boundary_pixels": int(c[6]),
        "background_pixels": int(c[7]),
    }


class ContourMassMeter:
    """Dataset-level `contour_mass_inside`: masses and pixel counts summed over images."""

    def __init__(self, band_px: float = 2, threshold: float = 0.5, ignore_index: int | None = IGNORE_INDEX,
                 depths_px: Sequence[float] = ()) -> None:
        self.band_px = band_px
        self.threshold = threshold
        self.ignore_index = ignore_index
        self.depths_px = tuple(depths_px)
        self.counts = np.zeros(8 + len(self.depths_px), dtype=np.float64)
        self.n_images = 0

    def update(self, contour_prob: np.ndarray, label_map: np.ndarray) -> None:
        self.counts += _contour_mass_counts(contour_prob, label_map, self.band_px, self.threshold, self.ignore_index,
                                            self.depths_px)
        self.n_images += 1

    def scores(self) -> dict[str, float]:
        return {**_contour_mass_scores(self.counts, self.depths_px), "n_images": self.n_images}


# --------------------------------------------------------------------------------------------
# Context false positives
# --------------------------------------------------------------------------------------------


def context_false_positive_rate(
    pred: np.ndarray, context_mask: np.ndarray, ignore_index: int | None = IGNORE_INDEX
) -> tuple[int, int]:
    """(fp_pixels, context_pixels) of one image.

    context_mask value c > 0 marks a context region tied to class c (e.g. water for boat, rails
    for train): a pixel there is a false positive when the prediction labels it c. 0 = no context;
    ignore_index (255) is treated as no context too. The dataset rate is sum(fp) / sum(context).
    """
    pred, ctx = _check_pair(pred, context_mask)
    in_ctx = ctx != 0
    if ignore_index is not None:
        in_ctx &= ctx != ignore_index
    fp = np.count_nonzero(in_ctx & (pred == ctx))
    return int(fp), int(np.count_nonzero(in_ctx))


class ContextFPMeter:
    def __init__(self, ignore_index: int | None = IGNORE_INDEX) -> None:
        self.ignore_index = ignore_index
        self.fp = 0
        self.context = 0

    def update(self, pred: np.ndarray, context_mask: np.ndarray) -> None:
        self.add_counts(*context_false_positive_rate(pred, context_mask, self.ignore_index))

    def add_counts(self, fp: int, context: int) -> None:
        self.fp += fp
        self.context += context

    def scores(self) -> dict[str, Any]:
        rate = self.fp / self.context if self.context else float("nan")
        return {"context_fp_rate": rate, "context_fp_pixels": self.fp, "context_pixels": self.context}


# --------------------------------------------------------------------------------------------
# Folder evaluation
# --------------------------------------------------------------------------------------------

# Working label range when num_classes is not known up front: every non-ignore uint8 label.
_MAX_CLASSES = 255


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names from a labels.txt (one per line). Like SynthVOC's / the VOC reader's labels.txt,
    the file lists foreground classes; "background" is prepended as class 0 unless it is already first."""
    path = Path(path)
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path} lists no class names")
    if names[0].lower() not in ("background", "_background_", "bg", "__background__"):
        names = ["background"] + names
    return names


def _eval_one(
    image_id: str,
    pred_path: Path,
    gt_path: Path,
    ctx_path: Path | None,
    num_classes: int,
    dilation_ratio: float,
) -> dict[str, Any]:
    pred = load_label_png(pred_path)
    gt = load_label_png(gt_path)
    if pred.shape != gt.shape:
        raise ValueError(f"{pred_path}: prediction shape {pred.shape} differs from ground truth {gt_path} shape {gt.shape}")
    try:
        conf, binter, bunion = _image_counts(pred, gt, num_classes, dilation_ratio, IGNORE_INDEX)
    except ValueError as e:
        raise ValueError(f"{pred_path} / {gt_path}: {e}") from None
    # Largest labels seen, read off the confusion matrix, for inferring K afterwards.
    rows, cols = np.nonzero(conf)
    out: dict[str, Any] = {
        "id": image_id,
        "conf": conf,
        "binter": binter,
        "bunion": bunion,
        "pred_max": int(cols.max()) if cols.size else -1,
        "gt_max": int(rows.max()) if rows.size else -1,
    }
    if ctx_path is not None:
        ctx = load_label_png(ctx_path)
        if ctx.shape != gt.shape:
            raise DatasetError(f"context mask {ctx_path} has shape {ctx.shape}, expected {gt.shape} "
                               f"(the shape of its ground truth {gt_path})")
        out["ctx"] = context_false_positive_rate(pred, ctx)
    return out


def evaluate_folders(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    ids: Iterable[str] | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    context_dir: str | os.PathLike | None = None,
    progress: bool = True,
    dilation_ratio: float = BOUNDARY_BAND,
    num_workers: int | None = None,
    allow_missing: bool = False,
) -> dict[str, Any]:
    """Evaluate `<pred_dir>/<id>.png` label maps against `<gt_dir>/<id>.png`.

    ids default to the PNG stems of pred_dir and gt_dir together. num_classes defaults to
    len(class_names), else to the largest ground-truth label (255 excluded) + 1; a prediction label
    beyond it is a ValueError naming the file. Every file is checked to exist before any work: ids
    without a prediction are a FileNotFoundError naming them (with allow_missing, a warning with
    their count, and they are left out); a missing ground truth or context mask always is one.
    Decoding and per-image counting run in a thread pool (PIL's PNG decoder and the numpy/scipy
    kernels release the GIL); the counts are summed in the caller.

    Returns segmentation_scores(...) plus boundary_iou, boundary_iou_per_class, n_images and, with
    context_dir (`<context_dir>/<id>.png`, see `context_false_positive_rate`), context_fp_rate,
    context_fp_pixels and context_pixels.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    ctx_dir = Path(context_dir) if context_dir is not None else None
    for d, what in ((pred_dir, "prediction"), (gt_dir, "ground-truth"), (ctx_dir, "context")):
        if d is not None and not d.is_dir():
            raise FileNotFoundError(f"{what} folder {d} does not exist")
    if ids is None:
        # Ground truth without a prediction would otherwise drop out of the scores unnoticed.
        ids = sorted({p.stem for d in (pred_dir, gt_dir) for p in d.glob("*.png")})
    ids = list(ids)
    missing = [i for i in ids if not (pred_dir / f"{i}.png").is_file()]
    if missing:
        first = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        what = (f"{len(missing)} of {len(ids)} images have no prediction in {pred_dir} "
                f"(e.g. {pred_dir / (missing[0] + '.png')}; ids {first})")
        if not allow_missing:
            raise FileNotFoundError(f"{what}; pass allow_missing=True (wsss eval --allow-missing) to score the rest")
        warnings.warn(f"{what}: scoring the other {len(ids) - len(missing)} only", stacklevel=2)
        skipped = set(missing)
        ids = [i for i in ids if i not in skipped]
    if not ids:
        raise ValueError(f"no images to evaluate (no PNG in {pred_dir} or an empty id list)")
    if class_names is not None:
        class_names = list(class_names)
        if num_classes is None:
            num_classes = len(class_names)
        elif len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for num_classes={num_classes}")
    jobs = []
    for i in ids:
        paths = [pred_dir / f"{i}.png", gt_dir / f"{i}.png"] + ([ctx_dir / f"{i}.png"] if ctx_dir else [])
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"{p} does not exist (id {i!r})")
        jobs.append((i, paths[0], paths[1], paths[2] if ctx_dir else None))

    work_k = num_classes if num_classes is not None else _MAX_CLASSES
    conf = np.zeros((work_k, work_k), dtype=np.int64)
    bmeter = BoundaryIoUMeter(work_k, dilation_ratio)
    cmeter = ContextFPMeter()
    pred_max: list[tuple[int, str]] = []
    gt_max = -1
    workers = num_workers or min(8, os.cpu_count() or 1)

    from tqdm import tqdm

    def run(job: tuple[str, Path, Path, Path | None]) -> dict[str, Any]:
        return _eval_one(*job, num_classes=work_k, dilation_ratio=dilation_ratio)

    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        results = pool.map(run, jobs) if workers > 1 else map(run, jobs)
        for r in tqdm(results, total=len(jobs), desc="eval", unit="img", disable=not progress, file=sys.stderr):
            conf += r["conf"]
            bmeter.add_counts(r["binter"], r["bunion"])
            if "ctx" in r:
                cmeter.add_counts(*r["ctx"])
            pred_max.append((r["pred_max"], r["id"]))
            gt_max = max(gt_max, r["gt_max"])
    finally:
        # On an error, drop the queued images instead of decoding the rest of the dataset first.
        pool.shutdown(wait=True, cancel_futures=True)

    if num_classes is None:
        num_classes = max(gt_max + 1, 1)
        bad = [(v, i) for v, i in pred_max if v >= num_classes]
        if bad:
            v, i = bad[0]
            raise ValueError(
                f"{pred_dir / (i + '.png')}: prediction label {v} outside 0..{num_classes - 1} "
                f"(num_classes={num_classes} inferred from the ground truth; pass num_classes explicitly)"
            )
        conf = conf[:num_classes, :num_classes]
        bmeter.inter, bmeter.union = bmeter.inter[:num_classes], bmeter.union[:num_classes]

    scores = segmentation_scores(conf, class_names)
    scores.update(bmeter.scores())
    if ctx_dir is not None:
        scores.update(cmeter.scores())
    scores["n_images"] = len(jobs)
    return scores


def _pct(x: float | None) -> str:
    return "   -  " if x is None or not np.isfinite(x) else f"{100 * x:6.2f}"


def format_table(scores: dict[str, Any], class_names: Sequence[str] | None = None) -> str:
    """Plain-text table: one row per class (IoU, precision, recall, boundary IoU, in %), then totals."""
    iou = scores["iou"]
    names = list(class_names or scores.get("class_names") or default_class_names(len(iou)))
    cols = [("IoU", iou)]
    for key, title in (("precision", "Prec"), ("recall", "Rec"), ("boundary_iou_per_class", "bIoU")):
        if key in scores:
            cols.append((title, scores[key]))
    width = max([len(n) for n in names] + [20])
    lines = [f"{'class':<{width}}" + "".join(f"  {t:>6}" for t, _ in cols)]
    lines.append("-" * len(lines[0]))
    for k, name in enumerate(names):
        lines.append(f"{name:<{width}}" + "".join(f"  {_pct(v[k])}" for _, v in cols))
    lines.append("-" * len(lines[0]))
    summary = [
        ("mIoU", "miou"),
        ("pixel accuracy", "pixel_acc"),
        ("mean class accuracy", "mean_acc"),
        ("fg precision", "fg_precision"),
        ("fg recall", "fg_recall"),
        ("boundary IoU", "boundary_iou"),
        ("context FP rate", "context_fp_rate"),
    ]
    for title, key in summary:
        if key in scores:
            lines.append(f"{title:<{width}}  {_pct(scores[key])}")
    if "n_images" in scores:
        lines.append(f"{'images':<{width}}  {scores['n_images']:>6}")
    return "\n".join(lines)


def _json_safe(obj: Any) -> Any:
    """NaN -> null so the JSON is strict (json.dumps would write the non-standard NaN token)."""
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a folder of predicted label PNGs against ground truth",
        description="mIoU, per-class IoU, pixel accuracy, foreground precision/recall and boundary IoU "
        "of <pred-dir>/<id>.png against <gt-dir>/<id>.png (255 in the ground truth is ignored).",
    )
    p.add_argument("--pred-dir", required=True, type=Path, help="folder of predicted label PNGs")
    p.add_argument("--gt-dir", required=True, type=Path, help="folder of ground-truth label PNGs")
    p.add_argument("--list", type=Path, help="id list (e.g. ImageSets/Segmentation/val.txt); default: PNGs in --pred-dir")
    p.add_argument("--json", type=Path, help="write the scores to this JSON file")
    p.add_argument("--num-classes", type=int, help="number of classes incl. background (default: from --labels or the GT)")
    p.add_argument("--labels", type=Path, help="labels.txt of foreground class names (default: <gt-dir>/../labels.txt if present)")
    p.add_argument("--context-dir", type=Path, help="folder of context masks <id>.png for the context false-positive rate")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: min(8, CPUs))")
    p.add_argument("--allow-missing", action="store_true",
                   help="score only the images that have a prediction (warns with the count) instead of failing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    names: list[str] | None = None
    if args.labels is not None:
        names = read_class_names(args.labels)
    else:
        auto = args.gt_dir.resolve().parent / "labels.txt"
        if auto.is_file():
            names = read_class_names(auto)
            if args.num_classes is not None and len(names) != args.num_classes:
                print(
                    f"note: {auto} names {len(names)} classes but --num-classes is {args.num_classes}; ignoring it",
                    file=sys.stderr,
                )
                names = None
    ids = read_id_list(args.list) if args.list is not None else None
    scores = evaluate_folders(
        args.pred_dir,
        args.gt_dir,
        ids=ids,
        num_classes=args.num_classes,
        class_names=names,
        context_dir=args.context_dir,
        progress=not args.no_progress,
        num_workers=args.workers,
        allow_missing=args.allow_missing,
    )
    print(format_table(scores))
    if args.json is not None:
        write_json(args.json, _json_safe(scores))
    return 0
