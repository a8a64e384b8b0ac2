"""VWL (Ru, Du and Wu, IJCAI 2021): visual words and hybrid spatial pyramid pooling.

Two additions to the CAM network, each switchable so that the paper's ablation (Table 1) is this
one method with options:

- Visual word encoder (`vwe`): a learnable codebook of k words encodes every feature location by
  a softmax over cosine similarities (Eqs. 1-2). The argmax word of each location gives each image
  a multi-hot word label, predicted from the GAP feature (word loss); the soft word histogram
  predicts the image label (word-to-image loss). Words are finer than classes, so predicting them
  makes the backbone describe more of each object than its most discriminative part.
- Hybrid spatial pyramid pooling (`hspp`): the image classifier sees the average of max pooling
  over 1x1, 2x2 and 4x4 grids plus gamma times GAP, between GMP (too little of the object) and
  GAP (too much background).

With both parts off this is exactly the CAM baseline (same layers, initialization and loss).

Deviations from the paper, following the authors' code (github.com/rulixiang/vwe):

- The word histogram sums the word probabilities over locations (`torch.sum(x_corr, [2, 3])`);
  Eq. 4 prints a mean. With the mean (each row summing to 1) the word-to-image branch stayed at the
  label prior on SynthVOC quick (loss 0.535 vs the prior's 0.538, val mAP 0.45); the sum, 144x larger
  on a 12 x 12 map, lets it learn (mAP 0.755, 197 words in use instead of 104).
- The CAM is the image branch alone, as the authors' `infer_cam.py` computes it; Eq. 12's max with
  the word-branch CAM is left out. With the mean histogram the word branch never exceeded the
  image branch, so the max equalled the image CAM (40.10 mIoU both); the word branch stays
  available (`word_cam`) for the notebook's panels.
- HSPP's grids (1, 2, 4) are kept at every image size. They are fractions of the map, not cells, so
  the scale policy (`wsss.scale`) has nothing to convert: a 4x4 grid covers the same share of a
  96 px image as of a VOC one. HSPP lowers mIoU on SynthVOC quick (41.1 -> 38.0 at 2 epochs, one
  seed): its 4x4 bins hold the class in only 33% of bins, and class evidence rises on context (0.520
  -> 0.572) and plain background, not on objects. That is the share of objects in SynthVOC's
  images, not a resolution effect.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from wsss.methods.base import Batch, WSSSMethod, cam_from_features, classification_loss, gap_cam_logits, register_method, valid_at
from wsss.models.backbones import Backbone
from wsss.scale import PAPER_SCALE, ScalePolicy

HSPP_LEVELS: tuple[int, ...] = (1, 2, 4)


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


def word_histogram(probs: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B, k, h, w) -> (B, k): the soft bag of words, word probabilities summed over valid locations
    (the authors' code; Eq. 4 prints the mean, see the module notes); each row sums to the number
    of valid locations."""
    if valid is None:
        return probs.sum(dim=(2, 3))
    return (probs * valid.to(probs.dtype).unsqueeze(1)).sum(dim=(2, 3))


class VisualWordEncoder(nn.Module):
    """A codebook of `num_words` learnable words; `forward` gives each location's softmax over its
    cosine similarities to the words (the paper uses no temperature)."""

    def __init__(self, channels: int, num_words: int = 256) -> None:
        super().__init__()
        if num_words < 2:
            raise ValueError(f"a codebook needs at least 2 words, got {num_words}")
        self.codebook = nn.Parameter(torch.randn(num_words, channels))

    @property
    def num_words(self) -> int:
        return self.codebook.shape[0]

    def similarity(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, k, h, w) cosine similarity of every location to every word. The
        features are detached, as in the authors' code: the codebook then learns only from the
        word-to-image loss, and the backbone only from the image and word-label losses."""
        features = features.detach()
        words = F.normalize(self.codebook.to(features.dtype), dim=1)
        return F.conv2d(F.normalize(features, dim=1), words[:, :, None, None])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.similarity(features).softmax(dim=1)


@register_method
class VWL(WSSSMethod):
    name = "vwl"
    notebook = "03_vwl"
    revision = 1  # 1: the word histogram sums over locations (the authors' code), no longer the mean

    def __init__(self, num_classes: int, backbone: Backbone, vwe: bool = True, hspp: bool = True,
                 num_words: int = 256, gamma: float = 2.0, scale: ScalePolicy = PAPER_SCALE) -> None:
        super().__init__(num_classes, backbone, scale=scale)
        if gamma < 0:
            raise ValueError(f"gamma must be non-negative, got {gamma}")
        d = backbone.out_channels
        self.vwe, self.hspp, self.gamma = vwe, hspp, gamma
        # Created first, as in the CAM baseline, so that both parts off reproduces it exactly.
        self.classifier = nn.Conv2d(d, num_classes, 1, bias=False)
        if vwe:
            self.encoder = VisualWordEncoder(d, num_words)
            self.word_classifier = nn.Conv2d(d, num_words, 1, bias=False)
            self.word_to_image = nn.Conv2d(num_words, num_classes, 1, bias=False)

    def new_modules(self) -> list[nn.Module]:
        return [self.classifier] + ([self.encoder, self.word_classifier, self.word_to_image] if self.vwe else [])

    def forward(self, batch: Batch, progress: float = 0.0) -> dict[str, torch.Tensor]:
        feats = self.backbone(batch["image"])[-1]
        label = batch["label"]
        losses = {"img": classification_loss(self._image_branch_logits(feats), label)}
        if self.vwe:
            probs = self.encoder(feats)
            valid = valid_at(batch.get("valid"), feats.shape[-2:])
            losses["word"] = classification_loss(gap_cam_logits(feats, self.word_classifier), word_labels(probs, valid))
            w2i_logits = self.word_to_image(word_histogram(probs, valid)[..., None, None]).flatten(1)
            losses["w2i"] = classification_loss(w2i_logits, label)
        total = sum(losses.values())
        return {"loss": total, **{k: v.detach() for k, v in losses.items()}}

    def _image_branch_logits(self, feats: torch.Tensor) -> torch.Tensor:
        if self.hspp:
            return self.classifier(hybrid_spatial_pyramid_pool(feats, self.gamma)[..., None, None]).flatten(1)
        return gap_cam_logits(feats, self.classifier)

    def image_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The image branch's scores, the branch the authors' inference reads."""
        return self._image_branch_logits(self.backbone(images)[-1])

    # ------------------------------------------------------------------ maps

    def image_cam(self, images: torch.Tensor) -> torch.Tensor:
        """The image branch: ReLU(W_img^T F) (Eq. 10), (B, K, h, w)."""
        return cam_from_features(self.backbone(images)[-1], self.classifier)

    def word_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(B, k, h, w) softmax over words at every location."""
        self._require_vwe()
        return self.encoder(self.backbone(images)[-1])

    def word_cam(self, images: torch.Tensor) -> torch.Tensor:
        """The word branch: ReLU(W_w2i^T P) (Eq. 11), (B, K, h, w), times the number of locations, so
        that (before the ReLU) its spatial mean, like the image CAM's, is its branch's logit."""
        probs = self.word_probabilities(images)
        return F.relu(F.conv2d(probs, self.word_to_image.weight)) * (probs.shape[-2] * probs.shape[-1])

    def word_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, h, w) index of the winning word at every location."""
        return self.word_probabilities(images).argmax(dim=1)

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        """The image-branch CAM, as the authors' inference computes it (see the module notes)."""
        return self.image_cam(images)

    def _require_vwe(self) -> None:
        if not self.vwe:
            raise RuntimeError("this VWL model was built with vwe=False: it has no visual words")
