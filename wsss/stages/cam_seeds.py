"""CAM seeds (IRNet's `cam_to_ir_label`, SANCE Eq. 1): the CAM run's class maps of a split
thresholded into class / background / unsure label maps, each refined with a label-input dense CRF
of the image, written as PNGs (255: unsure) in the CAM run's folder. The contour methods train on
them (`training_masks` of `wsss.methods.sance`).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
from wsss.progress import tqdm

from wsss.cache import cached_folder, digest
from wsss.inference import load_cam
from wsss.io import IGNORE_INDEX, save_label_png
from wsss.methods.base import RunView
from wsss.refine.crf import CRFParams, crf_labels

# IRNet's label-input CRF (`crf_inference_label`): bilateral sxy 50, srgb 5; labels get probability 0.7.
SEED_CRF = CRFParams(bilateral_sxy=50.0, bilateral_srgb=5.0)
SEED_LABEL_PROB = 0.7


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


def write_cam_seeds(cam_exp: RunView, split: str, fg_threshold: float = 0.30, bg_threshold: float = 0.05,
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
