"""Semantics-augmented pixel refinement (SPR, Kho et al., shape cues paper Eqs. 5-6) and the
pseudo masks it makes.

Class scores are propagated by local affinities over dilated 3x3 windows: each pixel takes a
softmax-weighted average of its 8 neighbours at every dilation (the windows of all dilations share
one softmax). The kernel of class c mixes colour and class-score differences:

    k^c(i, j) = -alpha |x_i - x_j| / (beta sigma_x) - (1 - alpha) |m^c_i - m^c_j| / (beta sigma_m^c)

with sigma the standard deviation over the 3x3 windows of all dilations together (PAMR pools one
sigma over its whole neighbourhood) and the colour term averaged over RGB. Eq. 5 scales the semantic term by a per-class sigma_s^c; the class map's standard
deviation over the image, tried as that reading, lowered the shape cues runs' mIoU
(docs/findings.md), so both terms use the pooled local one. The paper prints sigma^2 but equates alpha = 1
with PAMR (SSSS's refinement), whose kernel is |dx| / (0.1 sigma); we use PAMR's scaling
(beta = 0.1), so alpha = 1 is exactly PAMR. The semantic term compares the class scores s of
Eq. 5 (`scores`; by default the maps m being refined). Shape cues passes its decoder's scores,
whose constant background score leaves the background channel with colour affinities alone.
Affinities are computed once and applied T times. Everything is unfold / tensor algebra: no loops
over pixels.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from wsss.io import IGNORE_INDEX

DILATIONS: tuple[int, ...] = (1, 2, 4, 8, 12, 24)
ALPHA = 0.8  # Eq. 5's balance: colour alone at 1, class scores alone at 0


def _windows(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 9, H, W): the 3x3 window at `dilation` (index 4 is the centre);
    replicate padding, so border pixels see copies of themselves rather than zeros."""
    return shifted_stack(F.pad(x, [dilation] * 4, mode="replicate"), 3, dilation, x.shape[-2:])


def shifted_stack(padded: torch.Tensor, k: int, dilation: int, size: Sequence[int]) -> torch.Tensor:
    """(B, C, H + 2p, W + 2p) padded by p = dilation * (k // 2) -> (B, C, k * k, H, W): the k x k
    dilated window of every pixel, row-major. Shifted slices (a loop over the k * k offsets only);
    F.unfold's im2col is an order of magnitude slower on CPU for these few channels."""
    h, w = size
    return torch.stack([padded[..., dy * dilation:dy * dilation + h, dx * dilation:dx * dilation + w]
                        for dy in range(k) for dx in range(k)], dim=2)


_NEIGHBOURS = [k for k in range(9) if k != 4]


def local_differences(x: torch.Tensor, dilations: Sequence[int] = DILATIONS) -> torch.Tensor:
    """|x_i - x_j| / sigma for the 8 neighbours j of every dilation: (B, C, 8 * len(dilations), H, W),
    sigma the standard deviation of i's windows of all dilations together (PAMR's LocalStDev)."""
    wins = torch.cat([_windows(x, d) for d in dilations], dim=2)
    # Unbiased std written out: Tensor.std over a middle dimension is ~10x slower on CPU.
    n = wins.shape[2]
    std = (wins - wins.mean(dim=2, keepdim=True)).pow(2).sum(dim=2, keepdim=True).div(n - 1).sqrt()
    neighbours = wins.view(*wins.shape[:2], len(dilations), 9, *wins.shape[-2:])[:, :, :, _NEIGHBOURS]
    return (neighbours.flatten(2, 3) - x[:, :, None]).abs() / (std + 1e-8)


def local_neighbours(x: torch.Tensor, dilations: Sequence[int] = DILATIONS) -> torch.Tensor:
    """The values of the 8 neighbours of every dilation: (B, C, 8 * len(dilations), H, W)."""
    return torch.cat([_windows(x, d)[:, :, _NEIGHBOURS] for d in dilations], dim=2)


def spr_affinity(image: torch.Tensor, scores: torch.Tensor, alpha: float = ALPHA,
                 dilations: Sequence[int] = DILATIONS, beta: float = 0.1) -> torch.Tensor:
    """delta^c_{j->i} (Eq. 5 and its local softmax): (B, C, P, H, W), summing to 1 over P.

    image (B, 3, H, W) at the resolution of the class maps `scores` (B, C, H, W) of the semantic
    term. With alpha = 1 the affinity is the same for every class (pure colour refinement, PAMR)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if image.shape[-2:] != scores.shape[-2:] or image.shape[0] != scores.shape[0]:
        raise ValueError(f"image {tuple(image.shape)} and scores {tuple(scores.shape)} must share batch and size")
    kernel = -alpha * local_differences(image.float(), dilations).mean(dim=1, keepdim=True) / beta
    if alpha < 1.0:
        kernel = kernel - (1.0 - alpha) * local_differences(scores.float(), dilations) / beta
    return kernel.softmax(dim=2)


def propagate(probs: torch.Tensor, affinity: torch.Tensor, dilations: Sequence[int] = DILATIONS,
              iterations: int = 10) -> list[torch.Tensor]:
    """Eq. 6 applied `iterations` times: [m_0, m_1, ..., m_T]."""
    steps = [probs.float()]
    for _ in range(iterations):
        steps.append((local_neighbours(steps[-1], dilations) * affinity).sum(dim=2))
    return steps


@torch.no_grad()
def spr(probs: torch.Tensor, image: torch.Tensor, alpha: float = ALPHA, dilations: Sequence[int] = DILATIONS,
        iterations: int = 10, scores: torch.Tensor | None = None) -> torch.Tensor:
    """Refined maps m_T (B, C, H, W) of probs (B, C, H, W) guided by image (B, 3, H, W) and, in
    the semantic term, by `scores` (B, C, H, W; None: probs)."""
    affinity = spr_affinity(image, probs if scores is None else scores, alpha, dilations)
    return propagate(probs, affinity, dilations, iterations)[-1]


def pseudo_mask(refined: torch.Tensor, valid: torch.Tensor | None = None, cutoff: float = 0.6,
                floor: float = 0.2, background_cutoff: float = 0.7) -> torch.Tensor:
    """(B, H, W) labels (channel index, IGNORE_INDEX for unsure or conflicting pixels) from
    (B, 1 + K, H, W) refined scores, background first, as SSSS's `pseudo_gtmask` makes them.

    Channel c claims the pixels above max(cutoff * its maximum over the image, floor), the
    background with `background_cutoff`; a pixel claimed by exactly one channel gets that channel
    (even where another channel's raw score is higher: each channel is cut relative to its own
    peak), one claimed by none is unsure, one claimed by two or more is conflicting; both are
    ignored, as is everything outside `valid` (crop padding). Channels of absent classes should be
    zero."""
    scores = refined.float()
    if valid is not None:
        scores = scores * valid[:, None].to(scores.dtype)
    peak = scores.flatten(2).amax(dim=2)[..., None, None]
    ratio = torch.full_like(peak, cutoff)
    ratio[:, :1] = background_cutoff
    claimed = scores > (ratio * peak).clamp_min(floor)
    labels = claimed.to(torch.uint8).argmax(dim=1)  # the claiming channel where there is exactly one
    keep = claimed.sum(dim=1) == 1
    if valid is not None:
        keep &= valid.bool()
    return labels.masked_fill(~keep, IGNORE_INDEX)
