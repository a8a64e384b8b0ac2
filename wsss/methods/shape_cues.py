"""Shape cues (Kho, Lee et al., Pattern Recognition): single-stage WSSS with a shape cue module
(SCM) and semantics-augmented pixel refinement (SPR).

One network trained end to end on image labels; its decoder output is the final mask.

- Network: DeepLabV3 encoder-decoder (ASPP on the last stage, output stride 16 on ResNets; the
  `small` backbone keeps its own strides) with a small decoder at the first stage's resolution.
  The decoder's K class scores get a constant background score of 1 (Sec. 3.1.1); normalized
  global weighted pooling (Eq. 1) turns them into image scores for the classification loss over
  the object classes (Eq. 2).
- SCM (Eqs. 3-4): the self-information of every location of an encoder feature map is estimated
  with a Gaussian kernel density over 9 random neighbour patches within Manhattan radius 7
  (bandwidth 1, distances normalized by their mean, as Informative Dropout does); locations are
  dropped with probability proportional to exp(-I / tau), tau = 0.5, and a conv turns the
  surviving (shape-biased) features into shape cues concatenated into the decoder.
- SPR (`wsss.refine.spr`): the decoder's probabilities over background + present classes are
  refined with colour + class-score affinities (alpha = 0.8, T = 10, dilations 1..24) and cut into
  pseudo masks (60% of each channel's maximum, floor 0.2, unsure and conflicting pixels ignored);
  as in SSSS, a mask that misses a class of the image label is not used.
- Losses from the pseudo masks: class-balanced pixel cross-entropy (Eq. 7) and the region loss
  (Eq. 8: KL to agreeing neighbours, hinge with margin 3 to disagreeing ones, radius 3), weighted
  by lambda = progress (annealed 0 -> 1).

Ablation switches: `scm=False` removes the shape cue module; `spr=False` refines with colour
alone (alpha = 1, PAMR), which is the paper's "conventional colour-based refinement" baseline.

Sizes in cells (ASPP rates, SCM radius, SPR dilations, region-loss radius) are the paper's at its
map sizes (DeepLabV3 at output stride 16, decoder maps at stride 4), converted by the scale policy
(`wsss.scale`); on 96 px images: rates (2, 5, 7), SCM radius 2, dilations (1, 2, 5), radius 1.

Deviations from the paper, with their reasons (Table 5's effects are measured over seeds in
notebook 06 and docs/findings.md):
- The backbone starts from the CAM baseline's classification network (`backbone_init="cam"`), as
  the paper's starts from an ImageNet classifier; SANCE does the same here.
- The mask losses start after `mask_start` of training so that the randomly initialized decoder
  first learns from image labels (SSSS's pretraining epochs).
- The paper's 10x rate of the new modules over the backbone is kept by running the backbone at
  0.1x (`backbone_lr_mult`), see `param_groups`: under AdamW a 10x decoder stays at the label prior.
- SSSS's focal mask penalty (`size_penalty`) is available but off, as in the paper's Eq. 1. Its
  measured effect on the train pseudo masks (EPYC, fp32, seeds 0-4): on 45.4 / 45.7 / 46.4 / 46.0 /
  47.4 mIoU, off 42.5 / 27.2 / 27.2 / 44.1 / 44.0, +9.19 [-1.84, +20.21], inconclusive over five
  seeds but positive on each. Without it two seeds of five collapse: the online masks stop
  covering the image's classes (in the last epoch 35% of the training images get a mask for every
  class of their label, against 73-75% on the seeds that hold and 81-83% with the penalty;
  `complete_masks` drops the rest from the mask losses), and the pseudo masks fall to 27 mIoU; on
  the other three it adds 1.8-3.4 points (docs/findings.md).
- SPR's sigma is the local one pooled over all dilations (PAMR); Eq. 5's per-class sigma_s^c,
  read as the class map's deviation over the image, lowered mIoU (`wsss.refine.spr`).
- The SCM radius has a floor of 2 so that its 9 samples fit (radius 1 has 4 neighbours).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from wsss.inference import at_size, infer_class_maps, multiscale_maps, pack_present, present_with_background
from wsss.io import IGNORE_INDEX, save_label_png
from wsss.methods.base import (Batch, RunView, WSSSMethod, class_map_settings, classification_loss,
                               register_method)
from wsss.models.backbones import Backbone
from wsss.scale import PAPER_SCALE, ScalePolicy
from wsss.models.heads import DeepLabV3ASPP, conv_gn_relu
from wsss.refine.spr import ALPHA, DILATIONS, pseudo_mask, shifted_stack, spr

# The paper's sizes and the strides of the maps they apply to there (DeepLabV3 at output stride 16,
# the decoder, SCM and SPR at stride 4), for the scale policy.
ASPP_RATES: tuple[int, ...] = (6, 12, 18)
PAPER_OUTPUT_STRIDE = 16
PAPER_DECODER_STRIDE = 4
SCM_RADIUS = 7  # R1
REGION_RADIUS = 3  # R3

# What SPR's semantic term compares (Eq. 5's s^c): the decoder's class scores, or its probabilities.
SPR_SEMANTICS: tuple[str, ...] = ("scores", "probs")


# ---------------------------------------------------------------------------------- SCM


def manhattan_offsets(radius: int) -> torch.Tensor:
    """(n, 2) integer offsets (dy, dx) with 0 < |dy| + |dx| <= radius."""
    r = torch.arange(-radius, radius + 1)
    grid = torch.stack(torch.meshgrid(r, r, indexing="ij"), dim=-1).reshape(-1, 2)
    dist = grid.abs().sum(dim=1)
    return grid[(dist > 0) & (dist <= radius)]


def self_information(features: torch.Tensor, offsets: torch.Tensor, bandwidth: float = 1.0,
                     patch: int = 3) -> torch.Tensor:
    """Eq. 3: -log of the Gaussian kernel density of each patch among its neighbour patches.

    features (B, C, h, w), offsets (n, 2) of the neighbours -> (B, h, w). The squared distance of
    two `patch` x `patch` patches is divided by its mean over the image (Informative Dropout's
    normalization), so the bandwidth is relative to the image's typical patch difference."""
    if patch % 2 != 1:
        raise ValueError(f"patch size must be odd, got {patch}")
    x = features.detach().float()
    h, w = x.shape[-2:]
    r = int(offsets.abs().max())
    padded = F.pad(x, [r] * 4, mode="replicate")
    dists = torch.stack([(x - padded[:, :, r + dy:r + dy + h, r + dx:r + dx + w]).pow(2).sum(dim=1)
                         for dy, dx in offsets.tolist()], dim=1)  # (B, n, h, w); loop over offsets only
    dists = F.avg_pool2d(dists, patch, stride=1, padding=patch // 2, count_include_pad=False)
    dists = dists / dists.mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    density = torch.exp(-dists / (2 * bandwidth ** 2)).mean(dim=1) / (math.sqrt(2 * math.pi) * bandwidth)
    return -torch.log(density.clamp_min(1e-30))


def drop_probability(info: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """Eq. 4: r proportional to exp(-I / tau), normalized to sum to 1 over each image. (B, h, w)."""
    b, h, w = info.shape
    return (-info / tau).flatten(1).softmax(dim=1).view(b, h, w)


class ShapeCueModule(nn.Module):
    """Self-information dropout of a feature map, then a conv: texture-dropped, shape-biased features.

    Training drops `drop_rate * h * w` locations drawn with replacement from the drop distribution
    (Informative Dropout's sampling; its default rate 1.5, which the paper does not restate), with
    fresh neighbour offsets each call. Evaluation is deterministic: the density uses every offset
    of the Manhattan ball (the expectation over the random choice) and the features are multiplied
    by each location's probability of surviving the draws, as dropout does at test time."""

    def __init__(self, in_channels: int, out_channels: int, radius: int = 7, samples: int = 9,
                 bandwidth: float = 1.0, tau: float = 0.5, drop_rate: float = 1.5, patch: int = 3) -> None:
        super().__init__()
        if tau <= 0 or bandwidth <= 0 or drop_rate < 0:
            raise ValueError(f"need tau > 0, bandwidth > 0, drop_rate >= 0; got {tau}, {bandwidth}, {drop_rate}")
        self.offsets: torch.Tensor
        self.register_buffer("offsets", manhattan_offsets(radius), persistent=False)
        if not 0 < samples <= len(self.offsets):
            raise ValueError(f"samples must lie in 1..{len(self.offsets)} for radius {radius}, got {samples}")
        self.samples, self.bandwidth, self.tau, self.drop_rate, self.patch = samples, bandwidth, tau, drop_rate, patch
        self.conv = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                                  nn.GroupNorm(min(8, out_channels), out_channels), nn.ReLU(inplace=True))

    def information(self, features: torch.Tensor) -> torch.Tensor:
        offsets = self.offsets
        if self.training:
            offsets = offsets[torch.randperm(len(offsets), device=offsets.device)[:self.samples]]
        return self_information(features, offsets, self.bandwidth, self.patch)

    def keep_mask(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w): 0/1 in training, the survival probability (1 - r)^n in evaluation."""
        prob = drop_probability(self.information(features), self.tau)
        b, h, w = prob.shape
        draws = int(round(self.drop_rate * h * w))
        if not self.training:
            return ((1 - prob) ** draws)[:, None]
        keep = prob.new_ones(b, h * w)
        if draws:
            keep.scatter_(1, torch.multinomial(prob.flatten(1), draws, replacement=True), 0.0)
        return keep.view(b, 1, h, w)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv(features * self.keep_mask(features).to(features.dtype))


# ---------------------------------------------------------------------------------- network


def ngwp(scores: torch.Tensor, probs: torch.Tensor, valid: torch.Tensor | None = None,
         eps: float = 1.0) -> torch.Tensor:
    """Eq. 1, normalized global weighted pooling: v^c = sum_i m_i^c s_i^c / (eps + sum_i m_i^c),
    (B, C, h, w) -> (B, C); `valid` (B, h, w) leaves crop padding out."""
    if valid is not None:
        probs = probs * valid[:, None].to(probs.dtype)
    return (probs * scores).sum(dim=(2, 3)) / (eps + probs.sum(dim=(2, 3)))


def focal_mask_penalty(probs: torch.Tensor, valid: torch.Tensor | None = None, power: float = 3.0,
                       lam: float = 0.01) -> torch.Tensor:
    """SSSS's focal mask penalty, added to the nGWP score: (1 - mbar^c)^p log(lam + mbar^c), mbar^c the
    mean mask of class c over the (valid) pixels, (B, C, h, w) -> (B, C).

    The shape cues paper takes its network and nGWP from SSSS [12] without restating this term. With
    it an empty mask scores log(lam) and a present class is pushed to cover its object; on SynthVOC
    it also pushes the masks over the context that always comes with train and boat (rails, water),
    on every seed. Without it (`size_penalty=False`) runs are bimodal: on two seeds of five the
    masks stop covering their classes and the pseudo masks fall from 45-47 to 27 mIoU (module
    docstring)."""
    if valid is None:
        mbar = probs.mean(dim=(2, 3))
    else:
        v = valid[:, None].to(probs.dtype)
        mbar = (probs * v).sum(dim=(2, 3)) / v.sum(dim=(2, 3)).clamp_min(1.0)
    return (1 - mbar).pow(power) * torch.log(lam + mbar)


# ---------------------------------------------------------------------------------- losses


def complete_masks(labels: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """(B,) True where the pseudo mask (B, h, w) has pixels of the background and of every class
    of the image label (B, K). As in SSSS, whose pipeline the paper follows, only such masks
    supervise: a mask that lost a present class teaches the decoder to erase it, and on a decoder
    trained from scratch that feeds back into an all-background collapse."""
    k = label.shape[1]
    hits = F.one_hot(labels.masked_fill(labels == IGNORE_INDEX, k + 1).flatten(1), k + 2).amax(dim=1)[:, :k + 1]
    present = present_with_background(label)
    return ((hits > 0) | ~present).all(dim=1)


def balanced_pixel_loss(log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 7 normalized per class: cross-entropy averaged over the pixels of each (image, pseudo
    class), then over those pairs, so small objects weigh as much as the background."""
    b, c = log_probs.shape[:2]
    valid = labels != IGNORE_INDEX
    target = labels.masked_fill(~valid, 0)
    ce = -log_probs.gather(1, target[:, None])[:, 0] * valid
    bins = labels.masked_fill(~valid, c).flatten(1)  # ignored pixels go to a spare bin
    sums = ce.new_zeros(b, c + 1).scatter_add_(1, bins, ce.flatten(1))[:, :c]
    counts = ce.new_zeros(b, c + 1).scatter_add_(1, bins, valid.flatten(1).to(ce.dtype))[:, :c]
    present = counts > 0
    if not present.any():
        return log_probs.sum() * 0.0
    return (sums[present] / counts[present]).mean()


def region_loss(log_probs: torch.Tensor, labels: torch.Tensor, radius: int = 3, margin: float = 3.0) -> torch.Tensor:
    """Eq. 8 (minimized with a positive sign; the printed minus contradicts its stated aim).

    For each labelled pixel i and each labelled neighbour j in its (2r+1)^2 window: KL(m_j || m_i)
    when their pseudo labels agree, max(0, margin - KL(m_j || m_i)) when they differ; averaged over
    the neighbours of i, then over the labelled pixels i."""
    b, c, h, w = log_probs.shape
    k = 2 * radius + 1
    nb_log = shifted_stack(F.pad(log_probs, [radius] * 4, mode="replicate"), k, 1, (h, w))
    nb_lab = shifted_stack(F.pad(labels[:, None].float(), [radius] * 4, value=IGNORE_INDEX), k, 1, (h, w))[:, 0]
    kl = (nb_log.exp() * (nb_log - log_probs[:, :, None])).sum(dim=1)  # (B, k*k, h, w)
    centre = labels[:, None].float()
    pairs = (nb_lab != IGNORE_INDEX) & (centre != IGNORE_INDEX)
    pairs[:, k * k // 2] = False
    loss = torch.where(nb_lab == centre, kl, F.relu(margin - kl))
    counts = pairs.sum(dim=1)
    per_pixel = (loss * pairs).sum(dim=1) / counts.clamp_min(1)
    used = counts > 0
    if not used.any():
        return log_probs.sum() * 0.0
    return per_pixel[used].mean()


# ---------------------------------------------------------------------------------- method


@register_method
class ShapeCues(WSSSMethod):
    """Options: `scm`, `spr` (ablation switches), `spr_semantics` ("scores": the decoder's class
    scores, as Eq. 5 writes it, so the constant background score leaves the background channel with
    colour affinities alone; "probs": the softmax probabilities), `size_penalty` (SSSS's focal mask
    penalty), `mask_start`, `backbone_init` and the learning rates (`backbone_lr_mult`,
    `decoder_lr_mult`). The paper's hyper-parameters are the defaults of the parts: SCM's of
    `ShapeCueModule`, SPR's of `wsss.refine.spr` (alpha 0.8, dilations 1..24, 10 iterations, cutoff
    0.6, floor 0.2; the background's cutoff 0.7 and the label of a pixel one channel claims, as in
    SSSS's code, which the paper follows), the region loss's and the focal penalty's of their
    functions, with sizes converted by the scale policy (module docstring). The decoder is
    min(256, backbone width / 2) wide."""

    name = "shape_cues"
    notebook = "06_shape_cues"
    # 1: pseudo masks label a pixel with the one channel that claims it (SSSS), not the argmax;
    # 2: sizes from the scale policy, SPR's sigma pooled over dilations (PAMR), focal penalty off
    revision = 2

    def __init__(self, num_classes: int, backbone: Backbone, *, scm: bool = True, spr: bool = True,
                 spr_semantics: str = "scores", mask_start: float = 0.25, backbone_init: str | None = "cam",
                 size_penalty: bool = False, backbone_lr_mult: float = 0.1,
                 decoder_lr_mult: float | None = 1.0, scale: ScalePolicy = PAPER_SCALE) -> None:
        super().__init__(num_classes, backbone, scale=scale)
        if not 0.0 <= mask_start <= 1.0:
            raise ValueError(f"mask_start must lie in [0, 1], got {mask_start}")
        if spr_semantics not in SPR_SEMANTICS:
            raise ValueError(f"spr_semantics must be one of {SPR_SEMANTICS}, got {spr_semantics!r}")
        self.alpha = ALPHA if spr else 1.0  # without SPR: the colour-only refinement (PAMR)
        self.spr_semantics, self.mask_start, self.size_penalty = spr_semantics, mask_start, size_penalty
        self.backbone_lr_mult, self.decoder_lr_mult = backbone_lr_mult, decoder_lr_mult
        width = min(256, backbone.out_channels // 2)
        # The paper's sizes at its map sizes, converted by the scale policy (96 px images: ASPP
        # rates (2, 5, 7), SCM radius 2, SPR dilations (1, 2, 5), region-loss radius 1).
        fine = backbone.strides[0]
        rates = scale.sizes(ASPP_RATES, backbone.output_stride, PAPER_OUTPUT_STRIDE)
        self.spr_dilations = scale.sizes(DILATIONS, fine, PAPER_DECODER_STRIDE)
        self.region_radius = scale.size(REGION_RADIUS, fine, PAPER_DECODER_STRIDE)
        # 9 neighbour samples need a Manhattan radius of 2 at least (12 offsets).
        scm_radius = scale.size(SCM_RADIUS, fine, PAPER_DECODER_STRIDE, floor=2)
        self.aspp = DeepLabV3ASPP(backbone.out_channels, width, rates)
        self.low = conv_gn_relu(backbone.channels[0], width // 2)
        self.scm = ShapeCueModule(backbone.channels[0], width // 2, radius=scm_radius) if scm else None
        # Four decoder layers: low-level projection, two 3x3 convs, classifier.
        fused = width + width // 2 + (width // 2 if scm else 0)
        self.decoder = nn.Sequential(conv_gn_relu(fused, width, 3), conv_gn_relu(width, width, 3))
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.declare_backbone_init(backbone_init)

    def new_modules(self) -> list[nn.Module]:
        return [m for m in (self.aspp, self.low, self.scm, self.decoder, self.classifier) if m is not None]

    def param_groups(self) -> list[dict[str, Any]]:
        """The paper trains the new modules at 10x the backbone's rate (SGD, 1e-2 vs 1e-3). Under
        AdamW (the SynthVOC recipes) a 10x rate keeps the four-layer decoder at the label prior
        (nGWP classification loss 0.55 vs 0.49 after 80 steps at 1x), so the ratio is kept by
        slowing the backbone instead: `backbone_lr_mult` 0.1, `decoder_lr_mult` 1 (None: the
        recipe's `new_layer_lr_mult`)."""
        groups = super().param_groups()
        groups[0]["lr_mult"] = self.backbone_lr_mult
        if self.decoder_lr_mult is not None:
            groups[1]["lr_mult"] = self.decoder_lr_mult
        return groups

    # ------------------------------------------------------------------ network

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1 + K, h, w) at the first stage's resolution: constant background 1, class scores.
        The shape cues come from the first stage's features too."""
        feats = self.backbone(images)
        low = feats[0]
        size = low.shape[-2:]
        parts = [F.interpolate(self.aspp(feats[-1]), size=size, mode="bilinear", align_corners=False), self.low(low)]
        if self.scm is not None:
            parts.append(self.scm(low))
        logits = self.classifier(self.decoder(torch.cat(parts, dim=1)))
        return torch.cat([torch.ones_like(logits[:, :1]), logits], dim=1)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax over background + K classes, (B, 1 + K, h, w)."""
        return self.scores(images).float().softmax(dim=1)

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        """The decoder's foreground probabilities."""
        return self.probabilities(images)[:, 1:]

    def _pooled_scores(self, scores: torch.Tensor, probs: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """(B, 1 + K) image scores: nGWP, plus the focal mask penalty where it is on."""
        pooled = ngwp(scores, probs, valid)
        return pooled + focal_mask_penalty(probs, valid) if self.size_penalty else pooled

    def image_logits(self, images: torch.Tensor) -> torch.Tensor:
        scores = self.scores(images).float()
        return self._pooled_scores(scores, scores.softmax(dim=1), None)[:, 1:]

    # ------------------------------------------------------------------ training

    def semantic_maps(self, scores: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """What SPR's semantic term compares: the decoder's (B, 1 + K, h, w) scores or their softmax."""
        return scores if self.spr_semantics == "scores" else probs

    @torch.no_grad()
    def online_pseudo_masks(self, images: torch.Tensor, scores: torch.Tensor, label: torch.Tensor,
                            valid: torch.Tensor | None = None, alpha: float | None = None) -> torch.Tensor:
        """SPR of the decoder's probabilities over background + present classes (from its scores
        (B, 1 + K, h, w)), then thresholded: (B, h, w) with IGNORE_INDEX. `alpha` overrides the
        model's balance (the Table 6 sweep).

        Only the present channels are refined (absent ones are zero and stay zero): they are
        gathered into the first n = max present count channels, which cuts SPR's cost ~K/n-fold."""
        channels, kept = pack_present(present_with_background(label))  # (B, n)
        kept = kept[..., None, None]
        index = channels[..., None, None].expand(-1, -1, *scores.shape[-2:])
        scores = scores.float()
        probs = scores.softmax(dim=1)
        compact = probs.gather(1, index) * kept
        semantics = self.semantic_maps(scores, probs).gather(1, index)
        small = F.adaptive_avg_pool2d(images.float(), scores.shape[-2:])
        refined = spr(compact, small, self.alpha if alpha is None else alpha, self.spr_dilations, scores=semantics)
        labels = pseudo_mask(refined, valid)
        ignored = labels == IGNORE_INDEX
        return channels.gather(1, labels.masked_fill(ignored, 0).flatten(1)).view_as(labels).masked_fill(ignored,
                                                                                                          IGNORE_INDEX)

    def forward(self, batch: Batch, progress: float = 0.0) -> dict[str, torch.Tensor]:
        scores = self.scores(batch["image"]).float()
        log_probs = scores.log_softmax(dim=1)
        probs = log_probs.exp()
        valid = at_size(batch["valid"], scores.shape[-2:]) if "valid" in batch else None
        losses = {"cls": classification_loss(self._pooled_scores(scores, probs, valid)[:, 1:], batch["label"])}
        complete = log_probs.new_zeros(())
        if progress >= self.mask_start:
            labels = self.online_pseudo_masks(batch["image"], scores.detach(), batch["label"], valid)
            whole = complete_masks(labels, batch["label"])
            labels = labels.masked_fill(~whole[:, None, None], IGNORE_INDEX)
            complete = whole.float().mean()
            losses["pixel"] = balanced_pixel_loss(log_probs, labels)
            losses["region"] = progress * region_loss(log_probs, labels, self.region_radius)
        else:  # logged as 0 so that the training log has their columns from the first step
            losses["pixel"] = losses["region"] = log_probs.new_zeros(())
        total = sum(losses.values())
        return {"loss": total, **{k: v.detach() for k, v in losses.items()}, "complete": complete}

    # ------------------------------------------------------------------ final masks

    def write_class_maps(self, experiment: RunView, split: str, out: Path) -> None:
        """Class maps (the decoder's foreground probabilities) and the decoder masks, its final
        masks, from one multi-scale pass of the decoder's probabilities over `split`: the masks go
        to `out/decoder_masks`. Two passes cost twice the time for the same network outputs."""
        model = experiment.inference_method()
        masks = out / DECODER_MASKS
        masks.mkdir()

        def save_masks(samples: list[dict[str, Any]], probs: torch.Tensor) -> None:
            labels = torch.stack([s["label"] for s in samples]).to(probs.device)
            for s, mask in zip(samples, present_argmax(probs, labels)):
                save_label_png(masks / f"{s['id']}.png", mask)

        infer_class_maps(model.probabilities, experiment.dataset(split), out, **class_map_settings(experiment),
                         first_class=1, also=save_masks)

    def pseudo_labels(self, experiment: RunView, split: str) -> Path:
        """The decoder's argmax over background + present classes (the run's test-time scales and
        flips), as label PNGs; made with the class maps of `split` (`write_class_maps`)."""
        return experiment.class_maps(split) / DECODER_MASKS


DECODER_MASKS = "decoder_masks"


def present_argmax(probs: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """(B, H, W) uint8 label maps from (B, 1 + K, H, W) decoder probabilities (or their sum over
    scales): the argmax over background and the classes of the image labels (B, K); 0 = background,
    k + 1 = class k."""
    present = present_with_background(labels)[..., None, None]
    return probs.masked_fill(~present, -1.0).argmax(dim=1).to(torch.uint8).cpu().numpy()


@torch.no_grad()
def decoder_masks(model: ShapeCues, images: torch.Tensor, labels: torch.Tensor,
                  scales: Sequence[float] = (1.0,), flip: bool = False) -> np.ndarray:
    """`present_argmax` of the decoder probabilities of `images`, summed over scales and flips."""
    return present_argmax(multiscale_maps(model.probabilities, images, scales, flip), labels)
