"""Dataset statistics: class frequencies, co-occurrence, and how strongly each SynthVOC
phenomenon is present (context co-occurrence, saliency quality, intra-object edges).

Works on any VOC-layout dataset; the phenomenon statistics need SynthVOC's `meta.json` and
`ContextMasks/` (context) or a saliency folder (saliency quality). One pass over the split,
vectorized per image.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from wsss.progress import tqdm

from wsss.evaluation import context_dir_of
from wsss.io import IGNORE_INDEX
from wsss.metrics import gt_boundaries
from wsss.data.voc import VOCDataset, read_mask, read_saliency


@dataclass
class SplitStatistics:
    """What one pass over a split measures. Counts are over images unless named `pixels`."""

    class_names: tuple[str, ...]
    images: int = 0
    images_per_class: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cooccurrence: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (K, K) images with both
    pixels_per_class: np.ndarray = field(default_factory=lambda: np.zeros(0))  # background first, ignore excluded
    classes_per_image: np.ndarray = field(default_factory=lambda: np.zeros(0))  # histogram, index = count
    context: dict[str, dict[str, float]] = field(default_factory=dict)
    saliency: dict[str, float] = field(default_factory=dict)
    edges: dict[str, float] = field(default_factory=dict)

    def class_table(self) -> list[dict[str, Any]]:
        total = max(self.pixels_per_class.sum(), 1)
        return [{"class": "background", "images": self.images, "pixel_share": self.pixels_per_class[0] / total}] + [
            {"class": c, "images": int(self.images_per_class[k]), "pixel_share": self.pixels_per_class[k + 1] / total}
            for k, c in enumerate(self.class_names)]


def split_statistics(dataset: VOCDataset, meta: dict[str, Any] | None = None, edge_threshold: float = 0.15,
                     progress: bool = True) -> SplitStatistics:
    """Class, co-occurrence and phenomenon statistics of `dataset` (loaded with masks).

    `edge_threshold` is the Sobel magnitude (on [0, 1] luminance) above which a pixel counts as an
    image edge; the intra-object share is the part of those edges that lies inside objects, away
    from any ground-truth boundary, which is what a contour detector trained on image evidence
    alone would wrongly fire on.
    """
    K = dataset.num_classes
    labels = np.stack([dataset.label(i) for i in range(len(dataset))]).astype(np.int64)
    stats = SplitStatistics(dataset.class_names, images=len(dataset), images_per_class=labels.sum(0),
                            cooccurrence=labels.T @ labels,
                            classes_per_image=np.bincount(labels.sum(1), minlength=K + 1))
    pixels = np.zeros(K + 1, dtype=np.int64)
    phen = (meta or {}).get("phenomena", {})
    ctx_dir = context_dir_of(dataset)
    ctx_label = phen.get("context_label", {})
    # per context: [images with the class, of them with context, images with context, of them with the class,
    #               context pixels]
    ctx_counts = {cls: np.zeros(5, dtype=np.int64) for cls in phen.get("context", {})}
    sal_dir = dataset.layout.saliency_dir
    sal_tp = sal_fp = sal_fn = 0
    edge_inside = edge_total = 0
    for i in tqdm(range(len(dataset)), desc="statistics", disable=not progress):
        sample = dataset.load(i)
        mask = sample["mask"]
        valid = mask != IGNORE_INDEX
        pixels += np.bincount(mask[valid].ravel(), minlength=K + 1)[:K + 1]
        present = labels[i].astype(bool)
        if ctx_dir is not None:
            ctx = read_mask(ctx_dir / f"{sample['id']}.png")
            for cls, name in phen.get("context", {}).items():
                has_cls = present[dataset.class_names.index(cls)]
                has_ctx = bool((ctx == ctx_label[name]).any())
                ctx_counts[cls] += [has_cls, has_cls and has_ctx, has_ctx, has_ctx and has_cls,
                                    int((ctx == ctx_label[name]).sum())]
        if sal_dir is not None and (sal_dir / f"{sample['id']}.png").is_file():
            sal = read_saliency(sal_dir / f"{sample['id']}.png")
            if sal.shape == mask.shape:
                s, fg = (sal > 0.5)[valid], (mask > 0)[valid]
                sal_tp += int((s & fg).sum())
                sal_fp += int((s & ~fg).sum())
                sal_fn += int((~s & fg).sum())
        edges = _image_edges(sample["image"], edge_threshold)
        near_boundary = cv2.dilate(gt_boundaries(mask).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        inside = (mask > 0) & valid & ~near_boundary
        edge_total += int(edges.sum())
        edge_inside += int((edges & inside).sum())
    stats.pixels_per_class = pixels
    for cls, (n_cls, n_cls_ctx, n_ctx, n_ctx_cls, ctx_px) in ctx_counts.items():
        stats.context[cls] = {"context": phen["context"][cls], "p_context_given_class": n_cls_ctx / max(n_cls, 1),
                              "p_class_given_context": n_ctx_cls / max(n_ctx, 1),
                              "context_pixel_share": ctx_px / max(pixels.sum(), 1)}
    if sal_tp + sal_fp + sal_fn:
        stats.saliency = {"iou": sal_tp / (sal_tp + sal_fp + sal_fn), "precision": sal_tp / max(sal_tp + sal_fp, 1),
                          "recall": sal_tp / max(sal_tp + sal_fn, 1)}
    stats.edges = {"edge_pixels": float(edge_total), "intra_object_share": edge_inside / max(edge_total, 1)}
    return stats


def _image_edges(image: np.ndarray, threshold: float) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3) / 4.0
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3) / 4.0
    return np.hypot(gx, gy) > threshold


def part_share(class_name: str, size: int = 128) -> float:
    """Share of a part-defined object that is its discriminative part (horn, tail): the only
    pixels that tell it from its twin, so all a classifier needs to look at."""
    from wsss.data.synthvoc import shape_masks

    full, part = shape_masks(class_name, size, size / 2, size / 2, 0.8 * size)
    return float(part.sum() / max(full.sum(), 1))
