"""From normalized class maps to pseudo masks: background threshold, optional dense CRF.

The background gets a constant score (the threshold) and each pixel takes the arg-max, as in
IRNet's `eval_cam`; with CRF, those scores become the unary probabilities of a dense CRF.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from wsss.progress import tqdm

from wsss.inference import load_cam
from wsss.io import save_label_png
from wsss.refine.crf import CRFParams, dense_crf


def scores_with_background(cam: np.ndarray, bg_threshold: float) -> np.ndarray:
    """(n, H, W) class maps -> (n + 1, H, W) with a constant background plane first."""
    bg = np.full((1,) + cam.shape[1:], bg_threshold, dtype=np.float32)
    return np.concatenate([bg, cam.astype(np.float32)], axis=0)


def cam_to_label(keys: np.ndarray, cam: np.ndarray, bg_threshold: float, image: np.ndarray | None = None,
                 crf: CRFParams | None = None) -> np.ndarray:
    """A (H, W) uint8 label map: 0 background, k + 1 for class index k."""
    labels = np.concatenate([[0], keys + 1]).astype(np.uint8)
    if cam.shape[0] == 0:
        return np.zeros(cam.shape[1:], dtype=np.uint8)
    scores = scores_with_background(cam, bg_threshold)
    if crf is not None:
        if image is None:
            raise ValueError("dense CRF needs the image")
        probs = scores / scores.sum(axis=0, keepdims=True)
        scores = dense_crf(image, probs, crf)
    return labels[np.argmax(scores, axis=0)]


def cam_to_labels_sweep(keys: np.ndarray, cam: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Label maps for many thresholds at once, (T, H, W): the arg-max over classes is shared, only
    the comparison with the background threshold changes."""
    if cam.shape[0] == 0:
        return np.zeros((len(thresholds),) + cam.shape[1:], dtype=np.uint8)
    best = cam.max(axis=0)
    cls = (keys + 1).astype(np.uint8)[cam.argmax(axis=0)]
    thr = np.asarray(thresholds, dtype=np.float32)[:, None, None]
    # The background wins ties, as in argmax over [threshold, cams] with background first.
    return np.where(best[None] > thr, cls[None], np.uint8(0))


def write_pseudo_masks(cam_dir: str | os.PathLike, dataset, out_dir: str | os.PathLike, bg_threshold: float,
                       crf: CRFParams | None = None, progress: bool = True) -> Path:
    """Write `<out_dir>/<id>.png` (VOC palette) for every image of `dataset`, skipping done ones."""
    cam_dir, out_dir = Path(cam_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(len(dataset)) if not (out_dir / f"{dataset.ids[i]}.png").is_file()]
    for i in tqdm(todo, desc=f"pseudo masks -> {out_dir.name}", disable=not progress, dynamic_ncols=True):
        sample_id = dataset.ids[i]
        keys, cam = load_cam(cam_dir / f"{sample_id}.npz")
        image = dataset.load(i)["image"] if crf is not None else None
        save_label_png(out_dir / f"{sample_id}.png", cam_to_label(keys, cam, bg_threshold, image, crf))
    return out_dir
