"""Where saliency maps come from, for methods that learn from them (EPS).

- "dataset": the dataset's own maps, as `VOCDataset` finds them: `ExperimentConfig.saliency_dir`
  when given, else `<root>/SaliencyMaps` (SynthVOC's simulated detector).
- "folder": a user-supplied folder of `<id>.png` maps (e.g. PFAN trained on DUTS for real VOC),
  given as `ExperimentConfig.saliency_dir`; required, so a forgotten setting is an error.
- "spectral_residual", "fine_grained": a training-free classical detector (OpenCV-contrib's
  static saliency, Hou & Zhang 2007 / Montabone & Soto 2010) for data without maps. The maps are
  written once per dataset and detector into a cache folder and then read like any other folder.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from wsss.progress import tqdm

from wsss.cache import cached_folder, code_fingerprint, digest, files_fingerprint
from wsss.data.voc import DatasetError, VOCLayout, read_rgb
from wsss.io import save_gray_png

CLASSICAL: dict[str, Callable[[], "cv2.saliency.StaticSaliency"]] = {
    "spectral_residual": lambda: cv2.saliency.StaticSaliencySpectralResidual_create(),
    "fine_grained": lambda: cv2.saliency.StaticSaliencyFineGrained_create(),
}
SOURCES: tuple[str, ...] = ("dataset", "folder", *CLASSICAL)


def classical_saliency(image: np.ndarray, detector: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float32 saliency in [0, 1] (min-max scaled per image)."""
    if detector not in CLASSICAL:
        raise ValueError(f"unknown classical saliency detector {detector!r}; choose one of {tuple(CLASSICAL)}")
    ok, sal = CLASSICAL[detector]().computeSaliency(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"OpenCV {detector} saliency failed on an image of shape {image.shape}")
    sal = np.asarray(sal, dtype=np.float32)
    lo, hi = float(sal.min()), float(sal.max())
    return (sal - lo) / (hi - lo) if hi > lo else np.zeros_like(sal)


def write_classical_saliency(image_dir: str | os.PathLike, ids: list[str], out_dir: str | os.PathLike,
                             detector: str, progress: bool = True) -> Path:
    """Write `<out_dir>/<id>.png` (8-bit gray) for every id whose map is not there yet."""
    image_dir, out_dir = Path(image_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [i for i in ids if not (out_dir / f"{i}.png").is_file()]
    for i in tqdm(todo, desc=f"{detector} saliency -> {out_dir}", disable=not progress, dynamic_ncols=True):
        sal = classical_saliency(read_rgb(image_dir / f"{i}.jpg"), detector)
        save_gray_png(out_dir / f"{i}.png", np.round(sal * 255.0).astype(np.uint8))
    return out_dir


def classical_cache_dir(data_root: str | os.PathLike, detector: str, cache_root: str | os.PathLike) -> Path:
    """One folder per (dataset, detector): the dataset's folder name plus a hash of its full path."""
    root = Path(data_root).resolve()
    tag = hashlib.sha1(str(root).encode()).hexdigest()[:8]
    return Path(cache_root) / "saliency" / f"{root.name}-{tag}" / detector


def saliency_folder(source: str, data_root: str | os.PathLike, saliency_dir: str | os.PathLike | None,
                    cache_root: str | os.PathLike, progress: bool = True) -> Path | None:
    """The folder of saliency maps for `source` (None: the dataset's own, see the module doc). The
    classical detectors cover every image listed in the dataset's split lists, so the maps of
    every split are there for display and evaluation, computed once."""
    if source == "dataset":
        return Path(saliency_dir) if saliency_dir else None
    if source == "folder":
        if not saliency_dir:
            raise DatasetError("saliency source 'folder' needs ExperimentConfig.saliency_dir: the folder of your "
                               "saliency maps (<id>.png, e.g. PFAN trained on DUTS)")
        return Path(saliency_dir)
    if source not in CLASSICAL:
        raise ValueError(f"unknown saliency source {source!r}; choose one of {SOURCES}")
    layout = VOCLayout.discover(data_root)
    ids = sorted({i for split in sorted(layout.list_dir.glob("*.txt")) for i in layout.split_ids(split.stem)})
    key = {"detector": source, "ids": digest(ids), "images": files_fingerprint(layout.image_dir / f"{i}.jpg" for i in ids),
           "code": code_fingerprint()}
    return cached_folder(classical_cache_dir(data_root, source, cache_root), key,
                         lambda out: write_classical_saliency(layout.image_dir, ids, out, source, progress),
                         f"{source} saliency")
