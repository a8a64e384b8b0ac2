"""Notebook 03's views of a VWL run (the paper's Figs. 4 and 5): the two CAM branches,
the visual-word map of an image, word usage per class, the words specific to a class and the
image patches where a word wins."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wsss.inference import multiscale_maps, size_grouped_batches
from wsss.methods.vwl import VWL

# The rows of the paper's ablation (Table 1): (name, vwe, hspp).
ABLATION_ROWS: tuple[tuple[str, bool, bool], ...] = (
    ("baseline", False, False), ("+VWE", True, False), ("+HSPP", False, True), ("+VWE +HSPP", True, True))


@torch.no_grad()
def branch_cams(method: VWL, image: torch.Tensor, label: torch.Tensor, scales: Sequence[float] = (1.0,),
                flip: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(present class indices, {"image", "word": (n, H, W)}) for one (3, H, W) image: the two
    branches, each summed over scales (and flips) like CAM inference and both divided by the larger
    of their per-class maxima, so the panels show which branch is stronger where."""
    fns = {"image": method.image_cam, "word": method.word_cam}
    maps = {name: multiscale_maps(fn, image[None], scales, flip)[0] for name, fn in fns.items()}
    keys = torch.nonzero(label > 0.5).flatten().to(image.device)
    peak = torch.maximum(*(m[keys].flatten(1).amax(dim=1) for m in maps.values())).clamp_min(1e-5)[:, None, None]
    return keys.cpu().numpy(), {name: (m[keys] / peak).cpu().numpy() for name, m in maps.items()}


@torch.no_grad()
def word_map_at(method: VWL, image: torch.Tensor) -> np.ndarray:
    """(H, W) winning word of one (3, H, W) image, each feature location drawn as its cell."""
    words = method.word_map(image[None]).float()[:, None]
    return F.interpolate(words, size=image.shape[-2:], mode="nearest")[0, 0].long().cpu().numpy()


@torch.no_grad()
def word_usage(method: VWL, dataset: Any, device: str | torch.device = "cpu", batch_size: int = 16) -> np.ndarray:
    """(K + 1, k) counts of feature locations whose winning word is j, by ground-truth class
    (row 0 background; masks taken at feature resolution by nearest neighbour, ignore skipped)."""
    k, rows = method.encoder.num_words, method.num_classes + 1
    counts = np.zeros(rows * k, dtype=np.int64)
    for group in size_grouped_batches(dataset, batch_size):
        images = torch.stack([s["image"] for s in group]).to(device)
        masks = torch.stack([s["mask"] for s in group]).to(device)
        words = method.word_map(images)
        gt = F.interpolate(masks[:, None].float(), size=words.shape[-2:], mode="nearest")[:, 0].long()
        keep = gt < rows
        counts += np.bincount((gt[keep] * k + words[keep]).cpu().numpy(), minlength=rows * k)
    return counts.reshape(rows, k)


def distinctive_words(usage: np.ndarray, per_class: int = 1, min_count: int = 20) -> dict[int, list[int]]:
    """For each row (class) of `usage`, the words most specific to it: highest share of the word's
    locations falling in that class, among words it uses at least `min_count` times."""
    share = usage / np.maximum(usage.sum(axis=0, keepdims=True), 1)
    share = np.where(usage >= min_count, share, -1.0)
    order = np.argsort(-share, axis=1, kind="stable")[:, :per_class]
    return {c: [int(w) for w in order[c] if share[c, w] >= 0] for c in range(usage.shape[0])}


@torch.no_grad()
def word_examples(method: VWL, dataset: Any, words: Sequence[int], n: int = 6, patch: int = 32,
                  device: str | torch.device = "cpu", batch_size: int = 16) -> dict[int, list[np.ndarray]]:
    """For each word, `n` image patches (one per image) centred where the word wins with the
    highest probability: the paper's per-word sample rows (Fig. 5)."""
    words_t = torch.as_tensor(list(words), dtype=torch.long, device=device)
    best, where = [], []
    for group in size_grouped_batches(dataset, batch_size):
        images = torch.stack([s["image"] for s in group]).to(device)
        probs = method.word_probabilities(images)
        won = probs.argmax(dim=1, keepdim=True) == words_t[None, :, None, None]
        score = torch.where(won, probs[:, words_t], torch.zeros((), device=probs.device)).flatten(2)
        value, pos = score.max(dim=2)
        best.append(value.cpu())
        where.append(torch.stack([pos // probs.shape[-1], pos % probs.shape[-1]], dim=-1).cpu())
        fh, fw = probs.shape[-2:]
    best_all, where_all = torch.cat(best), torch.cat(where)  # (N, W), (N, W, 2)
    scale = np.array(dataset.load(0)["image"].shape[:2]) / np.array([fh, fw])
    out: dict[int, list[np.ndarray]] = {}
    for j, w in enumerate(words):
        top = [int(i) for i in torch.argsort(best_all[:, j], descending=True)[:n] if best_all[i, j] > 0]
        out[int(w)] = [_patch(dataset.load(i)["image"], (where_all[i, j].numpy() + 0.5) * scale, patch) for i in top]
    return out


def _patch(image: np.ndarray, centre: np.ndarray, size: int) -> np.ndarray:
    """A size x size crop of `image` around `centre` (y, x), shifted to stay inside the image."""
    h, w = image.shape[:2]
    y0 = int(np.clip(round(centre[0]) - size // 2, 0, max(h - size, 0)))
    x0 = int(np.clip(round(centre[1]) - size // 2, 0, max(w - size, 0)))
    return image[y0:y0 + size, x0:x0 + size]
