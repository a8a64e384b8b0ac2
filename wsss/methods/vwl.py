"""VWL (Ru, Du and Wu, IJCAI 2021): visual words and hybrid spatial pyramid pooling.

Two additions to the CAM network, each switchable so that the paper's ablation (Table 1) is this
one method with options:

- Visual word encoder (`vwe`): a learnable codebook of k words encodes every feature location by
  a softmax over cosine similarities (Eqs. 1-2). The argmax word of each location gives each image
  a multi-hot word label, predicted from the GAP feature (word loss); the soft word frequencies
  predict the image label (word-to-image loss). Words are finer than classes, so predicting them
  makes the backbone describe more of each object than its most discriminative part.
- Hybrid spatial pyramid pooling (`hspp`): the image classifier sees the average of max pooling
  over 1x1, 2x2 and 4x4 grids plus gamma times GAP, between GMP (too little of the object) and
  GAP (too much background).

The CAM is the element-wise max of the rectified image-branch CAM (classifier on features) and the
rectified word-branch CAM (word-to-image weights on word probabilities) (Eqs. 10-12). Both are on
the scale of the logits: each map's spatial mean is its branch's GAP logit, so they are compared
without a per-branch normalization the paper does not state.

With both parts off this is exactly the CAM baseline (same layers, initialization and loss).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from wsss.inference import multiscale_maps, size_grouped_batches
from wsss.methods.base import Batch, WSSSMethod, cam_from_features, classification_loss, gap_cam_logits, register_method, valid_at
from wsss.models.backbones import Backbone

HSPP_LEVELS: tuple[int, ...] = (1, 2, 4)
# The rows of the paper's ablation (Table 1): (name, vwe, hspp).
ABLATION_ROWS: tuple[tuple[str, bool, bool], ...] = (
    ("baseline", False, False), ("+VWE", True, False), ("+HSPP", False, True), ("+VWE +HSPP", True, True))


def hybrid_spatial_pyramid_pool(features: torch.Tensor, gamma: float = 2.0,
                                levels: Sequence[int] = HSPP_LEVELS) -> torch.Tensor:
    """(B, C, h, w) -> (B, C): (sum over r of the mean of r x r bin maxima + gamma * GAP) / (gamma + #levels).

    Adaptive bins handle sizes that r does not divide (multi-scale crops)."""
    local_max = sum(F.adaptive_max_pool2d(features, r).mean(dim=(2, 3)) for r in levels)
    return (local_max + gamma * features.mean(dim=(2, 3))) / (gamma + len(levels))


def word_labels(probs: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B, k, h, w) word probabilities -> (B, k) multi-hot: the words that win (argmax) at one or
    more valid locations. A constant target: it carries no gradient."""
    b, k = probs.shape[:2]
    winner = probs.detach().argmax(dim=1).flatten(1)
    present = torch.ones_like(winner, dtype=probs.dtype) if valid is None else valid.flatten(1).to(probs.dtype)
    return probs.new_zeros(b, k).scatter_reduce(1, winner, present, reduce="amax")


def word_frequencies(probs: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B, k, h, w) -> (B, k): the soft bag of words, mean word probability over valid locations
    (Eq. 4); each row sums to one."""
    if valid is None:
        return probs.mean(dim=(2, 3))
    w = valid.to(probs.dtype).unsqueeze(1)
    return (probs * w).sum(dim=(2, 3)) / w.sum(dim=(2, 3)).clamp_min(1.0)


class VisualWordEncoder(nn.Module):
    """A codebook of `num_words` learnable words; `forward` gives each location's softmax over its
    cosine similarities to the words (the paper uses no temperature: `temperature=1`)."""

    def __init__(self, channels: int, num_words: int = 256, temperature: float = 1.0,
                 detach_features: bool = True) -> None:
        super().__init__()
        if num_words < 2:
            raise ValueError(f"a codebook needs at least 2 words, got {num_words}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.codebook = nn.Parameter(torch.randn(num_words, channels))
        self.temperature = temperature
        # The authors' code detaches the features here: the codebook then learns only from the
        # word-to-image loss, and the backbone only from the image and word-label losses.
        self.detach_features = detach_features

    @property
    def num_words(self) -> int:
        return self.codebook.shape[0]

    def similarity(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, k, h, w) cosine similarity of every location to every word."""
        if self.detach_features:
            features = features.detach()
        words = F.normalize(self.codebook.to(features.dtype), dim=1)
        return F.conv2d(F.normalize(features, dim=1), words[:, :, None, None])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (self.similarity(features) / self.temperature).softmax(dim=1)


@register_method
class VWL(WSSSMethod):
    name = "vwl"
    notebook = "03_vwl"

    def __init__(self, num_classes: int, backbone: Backbone, vwe: bool = True, hspp: bool = True,
                 num_words: int = 256, gamma: float = 2.0, temperature: float = 1.0,
                 detach_features: bool = True) -> None:
        super().__init__(num_classes, backbone)
        if gamma < 0:
            raise ValueError(f"gamma must be non-negative, got {gamma}")
        d = backbone.out_channels
        self.vwe, self.hspp, self.gamma = vwe, hspp, gamma
        # Created first, as in the CAM baseline, so that both parts off reproduces it exactly.
        self.classifier = nn.Conv2d(d, num_classes, 1, bias=False)
        if vwe:
            self.encoder = VisualWordEncoder(d, num_words, temperature, detach_features)
            self.word_classifier = nn.Conv2d(d, num_words, 1, bias=False)
            self.word_to_image = nn.Conv2d(num_words, num_classes, 1, bias=False)

    def new_modules(self) -> list[nn.Module]:
        return [self.classifier] + ([self.encoder, self.word_classifier, self.word_to_image] if self.vwe else [])

    def forward(self, batch: Batch, progress: float = 0.0) -> dict[str, torch.Tensor]:
        feats = self.backbone(batch["image"])[-1]
        label = batch["label"]
        if self.hspp:
            logits = self.classifier(hybrid_spatial_pyramid_pool(feats, self.gamma)[..., None, None]).flatten(1)
        else:
            logits = gap_cam_logits(feats, self.classifier)
        losses = {"img": classification_loss(logits, label)}
        if self.vwe:
            probs = self.encoder(feats)
            valid = valid_at(batch.get("valid"), feats.shape[-2:])
            losses["word"] = classification_loss(gap_cam_logits(feats, self.word_classifier), word_labels(probs, valid))
            w2i_logits = self.word_to_image(word_frequencies(probs, valid)[..., None, None]).flatten(1)
            losses["w2i"] = classification_loss(w2i_logits, label)
        total = sum(losses.values())
        return {"loss": total, **{k: v.detach() for k, v in losses.items()}}

    # ------------------------------------------------------------------ maps

    def image_cam(self, images: torch.Tensor) -> torch.Tensor:
        """The image branch: ReLU(W_img^T F) (Eq. 10), (B, K, h, w)."""
        return cam_from_features(self.backbone(images)[-1], self.classifier)

    def word_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(B, k, h, w) softmax over words at every location."""
        self._require_vwe()
        return self.encoder(self.backbone(images)[-1])

    def word_cam(self, images: torch.Tensor) -> torch.Tensor:
        """The word branch: ReLU(W_w2i^T P) (Eq. 11), (B, K, h, w)."""
        return F.relu(F.conv2d(self.word_probabilities(images), self.word_to_image.weight))

    def word_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, h, w) index of the winning word at every location."""
        return self.word_probabilities(images).argmax(dim=1)

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        """max(image CAM, word CAM) (Eq. 12); the image CAM alone without the word encoder."""
        feats = self.backbone(images)[-1]
        cam = cam_from_features(feats, self.classifier)
        if not self.vwe:
            return cam
        return torch.maximum(cam, F.relu(F.conv2d(self.encoder(feats), self.word_to_image.weight)))

    def _require_vwe(self) -> None:
        if not self.vwe:
            raise RuntimeError("this VWL model was built with vwe=False: it has no visual words")


# ---------------------------------------------------------------------- analysis (Figs. 4 and 5)


@torch.no_grad()
def branch_cams(method: VWL, image: torch.Tensor, label: torch.Tensor, scales: Sequence[float] = (1.0,),
                flip: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(present class indices, {"image", "word", "fused": (n, H, W)}) for one (3, H, W) image: the
    two branches and their max, each summed over scales (and flips) like CAM inference and all
    divided by the fused map's per-class max, so the panels show which branch is stronger where."""
    fns = {"image": method.image_cam, "word": method.word_cam, "fused": method.class_maps}
    maps = {name: multiscale_maps(fn, image[None], scales, flip)[0] for name, fn in fns.items()}
    keys = torch.nonzero(label > 0.5).flatten().to(image.device)
    peak = maps["fused"][keys].flatten(1).amax(dim=1).clamp_min(1e-5)[:, None, None]
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


