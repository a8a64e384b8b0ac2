"""Notebook 06's views of a shape cues run: what SCM and SPR do on one image, SPR's balance alpha
swept with the network held fixed (the paper's Table 6), the time of one online SPR step, and
Table 5 over seeds."""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wsss.io import IGNORE_INDEX
from wsss.inference import present_with_background, size_grouped_batches
from wsss.methods.shape_cues import ShapeCues, drop_probability, self_information
from wsss.metrics import ConfusionMeter
from wsss.refine.spr import propagate, pseudo_mask, spr_affinity

# The rows of the paper's Table 5: (name, scm, spr).
ABLATION_ROWS: tuple[tuple[str, bool, bool], ...] = (
    ("baseline", False, False), ("+SPR", False, True), ("+SCM", True, False), ("+SCM +SPR", True, True))


@torch.no_grad()
def explain(model: ShapeCues, image: torch.Tensor, label: torch.Tensor) -> dict[str, Any]:
    """What the method does on one (3, H, W) image, at the decoder's resolution (numpy arrays):
    `information` (SCM self-information, all offsets), `drop_prob`, `keep` (survival probability),
    `sampled_keep` (one training draw), `probs` (1 + K, h, w) decoder probabilities, and label maps
    (0 = background, k + 1 = class k) over background + present classes: `spr_steps` (T + 1, the
    argmax after each SPR iteration), `pseudo` (the online pseudo mask, 255 = ignored) and
    `prediction` (the decoder's argmax)."""
    x = image[None]
    out: dict[str, Any] = {}
    if model.scm is not None:
        feats = model.backbone(x)[0]
        info = self_information(feats, model.scm.offsets, model.scm.bandwidth, model.scm.patch)
        out["information"] = info[0].cpu().numpy()
        out["drop_prob"] = drop_probability(info, model.scm.tau)[0].cpu().numpy()
        out["keep"] = model.scm.keep_mask(feats)[0, 0].cpu().numpy()
        model.scm.train()
        out["sampled_keep"] = model.scm.keep_mask(feats)[0, 0].cpu().numpy()
        model.scm.eval()
    scores = model.scores(x).float()
    probs = scores.softmax(dim=1)
    present = present_with_background(label[None]).to(probs)[..., None, None]
    small = F.adaptive_avg_pool2d(x.float(), probs.shape[-2:])
    fg = probs * present
    dilations = model.spr_dilations
    steps = propagate(fg, spr_affinity(small, model.semantic_maps(scores, probs), model.alpha, dilations), dilations)
    out["probs"] = probs[0].cpu().numpy()
    out["spr_steps"] = [s.masked_fill(present == 0, -1.0).argmax(dim=1)[0].cpu().numpy() for s in steps]
    out["pseudo"] = pseudo_mask(steps[-1])[0].cpu().numpy()
    out["prediction"] = fg.masked_fill(present == 0, -1.0).argmax(dim=1)[0].cpu().numpy()
    return out


# Table 6's balances: colour only (PAMR) down to class scores only.
ALPHA_SWEEP: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.0)


@torch.no_grad()
def spr_alpha_sweep(model: ShapeCues, dataset, alphas: Sequence[float] = ALPHA_SWEEP, batch_size: int = 16,
                    limit: int | None = None, device: str | torch.device = "cpu") -> list[dict[str, float]]:
    """The paper's Table 6 "train-pseudo" row with the network held fixed: the online pseudo masks
    that SPR at each alpha makes from this model's decoder on `dataset` (its first `limit` images),
    scored against the ground truth at the decoder's resolution. Per alpha: `miou` over the pixels
    the masks label, `labelled` (their share of the non-ignored pixels) and `changed` (the share of
    labelled pixels whose pseudo label differs from the decoder's own argmax over the present
    classes: how much correction the masks carry back into training)."""
    k = model.classifier.out_channels + 1
    n = len(dataset) if limit is None else min(limit, len(dataset))
    meters = {a: ConfusionMeter(k) for a in alphas}
    counts = {a: np.zeros(3) for a in alphas}  # labelled, changed, non-ignored ground truth
    for samples in size_grouped_batches(dataset, batch_size, range(n)):
        images = torch.stack([s["image"] for s in samples]).to(device)
        labels = torch.stack([s["label"] for s in samples]).to(device)
        scores = model.scores(images).float()
        gt = F.interpolate(torch.stack([torch.as_tensor(s["mask"]) for s in samples])[:, None].float(),
                           size=scores.shape[-2:], mode="nearest")[:, 0].to(torch.int64).numpy()
        present = present_with_background(labels)[..., None, None]
        argmax = scores.masked_fill(~present, -torch.inf).argmax(dim=1).cpu().numpy()
        for a in alphas:
            pseudo = model.online_pseudo_masks(images, scores, labels, alpha=a).cpu().numpy()
            labelled = (pseudo != IGNORE_INDEX) & (gt != IGNORE_INDEX)
            meters[a].update(pseudo, np.where(labelled, gt, IGNORE_INDEX))
            counts[a] += [labelled.sum(), (labelled & (pseudo != argmax)).sum(), (gt != IGNORE_INDEX).sum()]
    return [{"alpha": a, "miou": meters[a].scores()["miou"], "labelled": float(counts[a][0] / max(counts[a][2], 1)),
             "changed": float(counts[a][1] / max(counts[a][0], 1))} for a in alphas]


@torch.no_grad()
def spr_seconds_per_batch(model: ShapeCues, dataset, batch_size: int = 16, repeats: int = 3,
                          device: str | torch.device = "cpu") -> float:
    """Wall time of one online SPR + pseudo-mask step on a batch of `dataset` (best of `repeats`): up
    to `batch_size` images of the most common size among its first images (sizes vary on VOC)."""
    groups = size_grouped_batches(dataset, 4 * batch_size, range(min(4 * batch_size, len(dataset))))
    samples = max(groups, key=len)[:batch_size]
    images = torch.stack([s["image"] for s in samples]).to(device)
    labels = torch.stack([s["label"] for s in samples]).to(device)
    scores = model.scores(images).float()
    times = []
    for _ in range(repeats):
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        model.online_pseudo_masks(images, scores, labels)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times)


def table5_over_seeds(preset: str, seeds: Sequence[int], progress: bool = False,
                      log: Callable[[str], None] = print, **settings: Any) -> list[dict[str, Any]]:
    """Table 5 over seeds: each row's decoder masks on the evaluation split (mIoU, boundary IoU) per
    seed, its means, and its paired difference to the baseline row with a 95% t-interval and a
    verdict (`wsss.claims`). `settings` go to every run (e.g. data_root for another SynthVOC)."""
    from wsss.claims import paired_interval, verdict
    from wsss.experiment import experiment_factory

    scores: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in ABLATION_ROWS}
    for seed in seeds:
        make = experiment_factory(preset, progress=progress, seed=seed, **settings)
        for name, scm, spr in ABLATION_ROWS:
            t = time.perf_counter()
            run = make("shape_cues", scm=scm, spr=spr)
            split = run.config.eval_split
            s = run.evaluate_masks(run.final_pseudo_masks(split), split)
            scores[name].append({k: float(s[k]) for k in ("miou", "boundary_iou")})
            log(f"[table 5] seed {seed} {name}: mIoU {100 * s['miou']:.1f}, bIoU {100 * s['boundary_iou']:.1f} "
                f"({time.perf_counter() - t:.0f} s)")
    base = scores[ABLATION_ROWS[0][0]]
    rows = []
    for name, _, _ in ABLATION_ROWS:
        row: dict[str, Any] = {"row": name, "seeds": len(scores[name])}
        for metric in ("miou", "boundary_iou"):
            values = [s[metric] for s in scores[name]]
            row[metric] = sum(values) / len(values)
            row[f"{metric}_per_seed"] = values
            if name != ABLATION_ROWS[0][0]:
                mean, low, high = paired_interval([v - b[metric] for v, b in zip(values, base)])
                row.update({f"{metric}_diff": mean, f"{metric}_ci": (low, high),
                            f"{metric}_verdict": verdict(low, high, True)})
        rows.append(row)
    return rows
