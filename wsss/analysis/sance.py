"""Notebook 04's views of SANCE runs: scores of propagated pseudo labels, example contour maps and
the online labels a SANCE run kept over training."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from wsss.inference import multiscale_maps
from wsss.methods.base import RunView
from wsss.stages.propagation import PseudoLabelParams, propagated_pseudo_labels, propagation_sweep

if TYPE_CHECKING:
    from wsss.methods.sance import SANCE


def pseudo_label_scores(experiment: RunView, params: PseudoLabelParams, split: str | None = None) -> dict[str, Any]:
    """Scores (with provenance) of the propagated pseudo labels of `split` made with `params`, at the
    threshold chosen on the train split; `oracle_miou` is the best of `split`'s own sweep."""
    split = split or experiment.config.eval_split
    thr = propagation_sweep(experiment, params)["best_threshold"]
    scores = experiment.evaluate_masks(propagated_pseudo_labels(experiment, split, params), split)
    oracle = propagation_sweep(experiment, params, split)
    best = oracle["thresholds"].index(oracle["best_threshold"])
    return {**scores, **experiment.provenance(split, thr, False), "oracle_miou": oracle["miou"][best],
            "oracle_threshold": oracle["best_threshold"]}


@torch.no_grad()
def example_contours(experiment: RunView, indices: Sequence[int], split: str | None = None) -> list[np.ndarray]:
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
