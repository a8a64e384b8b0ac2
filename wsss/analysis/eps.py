"""Notebook 02's views of an EPS run: one image's localization maps, map selection and estimated
saliency, the selection per (image, class), and the rows of the example grid."""
from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsss import viz
from wsss.data.transforms import eval_transform
from wsss.data.voc import VOCDataset
from wsss.methods.base import RunView
from wsss.methods.eps import EPS, estimated_saliency, select_maps, to_map_size


@torch.no_grad()
def explain(model: EPS, image: torch.Tensor, label: torch.Tensor, saliency: torch.Tensor,
            tau: float | None = None, lam: float | None = None) -> dict[str, Any]:
    """One image's EPS quantities at the image resolution, for display: `maps` (C + 1, H, W)
    localization maps (background last), `ratio` and `foreground` (C,) of the map selection against
    `saliency` (H, W) at the maps' resolution (as in training), and the `estimate` (H, W) of Eq. 1."""
    tau = model.tau if tau is None else tau
    lam = model.lam if lam is None else lam
    probs = model.localization_maps(image[None])
    sal, weight = to_map_size(saliency[None].to(probs), None, probs.shape[-2:])
    fg, bg, ratio = select_maps(probs[:, :-1], sal, label[None].to(probs), tau, weight)
    estimate = estimated_saliency(probs, fg, bg, lam)
    size = image.shape[-2:]
    up = lambda x: F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # noqa: E731
    return {"maps": up(probs)[0].cpu().numpy(), "estimate": up(estimate[:, None])[0, 0].cpu().numpy(),
            "ratio": ratio[0].cpu().numpy(), "foreground": fg[0].cpu().numpy().astype(bool),
            "background": bg[0].cpu().numpy().astype(bool),
            "present": (label > 0.5).cpu().numpy().astype(bool)}


def _destination(e: dict[str, Any], c: int) -> str:
    return "foreground" if e["foreground"][c] else ("background" if e["background"][c] else "neither (empty map)")


def selection_rows(model: EPS, dataset, indices: list[int], class_names: tuple[str, ...], device: torch.device,
                   tau: float | None = None) -> list[dict[str, Any]]:
    """One row per (image, present class): its overlap ratio with the given saliency and where map
    selection sends it. `dataset` must carry saliency (`with_saliency=True`)."""
    rows = []
    for i in indices:
        s = dataset[i]
        e = explain(model, s["image"].to(device), s["label"], s["saliency"], tau)
        for c in np.flatnonzero(e["present"]):
            rows.append({"image": s["id"], "class": class_names[c], "overlap": float(e["ratio"][c]),
                         "map goes to": _destination(e, c)})
    return rows


def non_default_options(**options: Any) -> dict[str, Any]:
    """`options` without those equal to EPS's defaults: a sweep point at the defaults then has the main
    run's config (hash) and reuses it."""
    defaults = {k: p.default for k, p in inspect.signature(EPS.__init__).parameters.items()}
    return {k: v for k, v in options.items() if k not in defaults or defaults[k] != v}


def saliency_dataset(experiment: RunView, split: str) -> VOCDataset:
    """`split` without augmentation, with masks and the saliency maps the method trains with."""
    folder = experiment.method.saliency_folder(experiment) or experiment.config.saliency_dir
    return VOCDataset(experiment.data_root, split, transform=eval_transform(), with_mask=True, with_saliency=True,
                      saliency_dir=folder)


def example_grid_rows(model: EPS, dataset: VOCDataset, picks: list[tuple[int, int]], device: torch.device,
                      ) -> list[dict[str, np.ndarray]]:
    """Rows for `viz.titled_grid`, {title: image}: image | given saliency | estimated saliency | each
    present class's map (titled with its overlap ratio and selection) | background map | ground truth."""
    rows = []
    for index, _ in picks:
        s, raw = dataset[index], dataset.load(index)
        e = explain(model, s["image"].to(device), s["label"], s["saliency"])
        rows.append({raw["id"]: raw["image"], "given saliency": viz.heat(raw["saliency"], "gray"),
                     "estimated saliency": viz.heat(e["estimate"], "gray"),
                     **{f"{dataset.class_names[c]}: O={e['ratio'][c]:.2f} -> {_destination(e, c).split()[0]}":
                        viz.overlay(raw["image"], e["maps"][c]) for c in np.flatnonzero(e["present"])},
                     "background map": viz.overlay(raw["image"], e["maps"][-1]),
                     "ground truth": viz.colorize(raw["mask"])})
    return rows
