"""Boundary-guided inter-pixel affinities and random-walk score propagation.

This is the shared "score propagation" machinery of IRNet (Ahn et al., CVPR'19)
and SANCE (Eq. 2-7): a class-boundary / contour map ``B`` in ``[0, 1]`` defines
affinities between pixels closer than a radius ``delta``

    a_ij = (1 - max_{k in path(i, j)} B_k) ** n          (SANCE Eq. 2)

and a random walk with the normalised affinity matrix propagates (CAM or
segmentation) scores inside regions enclosed by boundaries (SANCE Eq. 6).

Banded representation
---------------------
The affinity matrix is never stored densely.  For a radius ``delta`` we use the
``K`` integer offsets ``(dy, dx)`` with ``0 < dy^2 + dx^2 < delta^2``
(:func:`neighbor_offsets`), both directions, so the represented matrix is
symmetric.  Affinities are a tensor ``A`` of shape ``(B, K, h, w)``::

    A[b, k, y, x] = a((y, x), (y + dy_k, x + dx_k))     (0 if the neighbour is outside)

Offsets are sorted lexicographically, so the reverse of offset ``k`` is offset
``K - 1 - k`` (``offsets.flip(0) == -offsets``).  All operations are shifted
slices of padded tensors: vectorised over pixels, device-agnostic (CPU/CUDA),
with Python loops only over offsets / path points / steps.

Conventions / choices (see also the docstrings)
-----------------------------------------------
* Path pixels: the path from ``p`` to ``p + (dy, dx)`` is every pixel of their
  bounding box whose centre lies at distance < 1 from the segment (the
  criterion of IRNet's ``PathIndex``).  The set does not depend on the
  direction, hence ``A`` is exactly symmetric, and — unlike a thin digital
  line, e.g. ``round(t * (dy, dx))`` samples — it cannot step diagonally
  through a 1-pixel-thin 8-connected boundary.
* Transition: ``T = D^-1 (A + I)`` with ``D = diag(1 + sum_j a_ij)`` (self loop
  with affinity 1, as IRNet adds the identity).  ``x_new = T x`` is a weighted
  average of a pixel and its neighbours: a constant field stays constant.
  Because ``A`` is symmetric this is exactly IRNet's / SANCE's "column
  normalised" ``Â`` applied to row-vector scores (``M Â = (D^-1 A M^T)^T``).
* Steps: IRNet's ``exp_times`` (8) and SANCE's ``t`` (8) are the number of
  *squarings* of the dense transition matrix in IRNet's code
  (``misc/indexing.py: to_transition_matrix``), i.e. ``2**8 = 256`` walk steps.
  :func:`random_walk_propagate` takes the literal number of steps;
  :func:`boundary_random_walk` (and :class:`Propagation`) has ``log2_steps=True``
  by default so that ``steps=8`` means 256 steps like the reference implementation.
* The walk itself is not differentiable (it runs in place, under ``torch.no_grad``
  wherever the workbench uses it); the affinities are, for the contour loss.
  ``wsss/benchmarks/random_walk.py`` holds a sparse-matrix implementation of the same
  walk, the reference the tests and the timings compare with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from wsss.inference import pack_present
from wsss.io import IGNORE_INDEX

__all__ = [
    "neighbor_offsets",
    "valid_neighbor_mask",
    "path_max",
    "affinity_from_boundary",
    "AffinityTargets",
    "affinity_targets",
    "class_balanced_affinity_loss",
    "Transition",
    "transition_from_affinity",
    "random_walk_propagate",
    "boundary_random_walk",
    "Propagation",
    "walk_present",
]


# --------------------------------------------------------------------------- offsets


def neighbor_offsets(radius: float, half: bool = False, device=None) -> torch.Tensor:
    """Integer offsets ``(dy, dx)`` with ``0 < sqrt(dy^2 + dx^2) < radius``.

    Args:
        radius: the distance threshold ``delta`` (strict inequality, as Eq. 2/3
            and IRNet's ``PathIndex``).
        half: return only one offset of each ``{o, -o}`` pair (those with
            ``dy > 0`` or ``dy == 0, dx > 0``; IRNet's "search directions").
            Enough for losses, since the affinity is symmetric.
        device: device of the returned tensor.

    Returns:
        ``LongTensor (K, 2)`` sorted lexicographically by ``(dy, dx)``.  With
        ``half=False``, ``offsets[K - 1 - k] == -offsets[k]``.
    """
    radius = float(radius)
    if not radius > 0 or not math.isfinite(radius):
        raise ValueError(f"radius must be a positive finite number, got {radius!r}")
    r = int(math.ceil(radius))
    r2 = radius * radius
    offs = [
        (dy, dx)
        for dy in range(-r, r + 1)
        for dx in range(-r, r + 1)
        if 0 < dy * dy + dx * dx < r2
    ]
    if half:
        offs = [(dy, dx) for dy, dx in offs if dy > 0 or (dy == 0 and dx > 0)]
    return torch.tensor(offs, dtype=torch.long, device=device).reshape(-1, 2)


def _offset_list(offsets) -> list[tuple[int, int]]:
    if isinstance(offsets, torch.Tensor):
        offsets = offsets.detach().cpu().tolist()
    out = [(int(dy), int(dx)) for dy, dx in np.asarray(offsets, dtype=np.int64).reshape(-1, 2)]
    if not out:
        raise ValueError("offsets is empty (radius too small?)")
    return out


def _pad_size(offs: list[tuple[int, int]]) -> int:
    return max(max(abs(dy), abs(dx)) for dy, dx in offs)


def _shifted(padded: torch.Tensor, p: int, dy: int, dx: int, h: int, w: int) -> torch.Tensor:
    """View ``v`` of a tensor padded by ``p`` on each side with ``v[.., y, x] = x[.., y+dy, x+dx]``."""
    return padded[..., p + dy : p + dy + h, p + dx : p + dx + w]


@lru_cache(maxsize=4096)
def _path_points(dy: int, dx: int) -> tuple[tuple[int, int], ...]:
    """Pixels of the path (0,0) -> (dy,dx): every pixel of the bounding box whose centre
    is at distance < 1 from the segment (IRNet's ``PathIndex`` criterion).  Both ends are
    included; the set is the same for the reversed path; a 1-pixel-thin 8-connected
    (diagonal) boundary cannot be jumped over."""
    n2 = dy * dy + dx * dx
    if n2 == 0:
        return ((0, 0),)
    pts = [
        (y, x)
        for y in range(min(0, dy), max(0, dy) + 1)
        for x in range(min(0, dx), max(0, dx) + 1)
        if (dy * x - dx * y) ** 2 < n2  # squared distance to the line < 1
    ]
    return tuple(pts)


def valid_neighbor_mask(offsets, h: int, w: int, device=None, dtype=torch.bool) -> torch.Tensor:
    """``(1, K, h, w)`` mask: 1 where ``(y + dy_k, x + dx_k)`` lies inside the ``h x w`` image."""
    off = torch.as_tensor(offsets, dtype=torch.long, device=device).reshape(-1, 2)
    ys = torch.arange(h, device=off.device)
    xs = torch.arange(w, device=off.device)
    ny = ys[None, :] + off[:, :1]  # (K, h)
    nx = xs[None, :] + off[:, 1:]  # (K, w)
    vy = (ny >= 0) & (ny < h)
    vx = (nx >= 0) & (nx < w)
    return (vy[:, :, None] & vx[:, None, :]).unsqueeze(0).to(dtype)


# --------------------------------------------------------------------------- affinities


def _as_boundary(boundary: torch.Tensor) -> torch.Tensor:
    if not isinstance(boundary, torch.Tensor):
        boundary = torch.as_tensor(np.asarray(boundary))
    if boundary.dim() == 4:
        if boundary.shape[1] != 1:
            raise ValueError(f"boundary must be (B,1,h,w) or (B,h,w), got {tuple(boundary.shape)}")
        boundary = boundary[:, 0]
    if boundary.dim() != 3:
        raise ValueError(f"boundary must be (B,1,h,w) or (B,h,w), got {tuple(boundary.shape)}")
    if not boundary.is_floating_point():
        boundary = boundary.float()
    return boundary


def path_max(boundary: torch.Tensor, offsets, pad_value: float = 1.0) -> torch.Tensor:
    """Max of ``boundary`` along the straight path from each pixel to each neighbour.

    The path is the set of pixels at distance < 1 from the segment joining the two
    pixel centres (see the module doc), both ends included.

    Args:
        boundary: ``(B, 1, h, w)`` or ``(B, h, w)`` boundary map.
        offsets: ``(K, 2)`` offsets from :func:`neighbor_offsets`.
        pad_value: boundary value assumed outside the image (only affects
            pairs whose neighbour is outside, which :func:`affinity_from_boundary`
            zeroes anyway).

    Returns:
        ``(B, K, h, w)``: ``out[b, k, y, x] = max_{q in path((y,x), (y,x)+o_k)} boundary[b, q]``,
        both end pixels included.
    """
    b = _as_boundary(boundary)
    offs = tuple(_offset_list(offsets))
    if torch.is_grad_enabled() and b.requires_grad:
        return _PathMax.apply(b, offs, float(pad_value))
    h, w = b.shape[-2:]
    p = _pad_size(offs)
    padded = F.pad(b, (p, p, p, p), value=float(pad_value))
    outs = []
    for dy, dx in offs:
        pts = _path_points(dy, dx)
        m = _shifted(padded, p, *pts[0], h, w)
        for qy, qx in pts[1:]:
            m = torch.maximum(m, _shifted(padded, p, qy, qx, h, w))
        outs.append(m)
    return torch.stack(outs, dim=1)


class _PathMax(torch.autograd.Function):
    """:func:`path_max` with a lean backward: autograd of the ``torch.maximum`` chain keeps every
    intermediate map and runs one backward node per path pixel (thousands at radius 10, the
    contour loss's cost); this keeps only the arg-max position along each path (uint8) and
    routes each gradient to that pixel with one ``scatter_add`` per offset."""

    @staticmethod
    def forward(ctx, b: torch.Tensor, offs: tuple[tuple[int, int], ...], pad_value: float) -> torch.Tensor:
        h, w = b.shape[-2:]
        p = _pad_size(offs)
        padded = F.pad(b, (p, p, p, p), value=pad_value)
        outs, args = [], []
        for dy, dx in offs:
            views = torch.stack([_shifted(padded, p, qy, qx, h, w) for qy, qx in _path_points(dy, dx)], dim=1)
            value, arg = views.max(dim=1)
            outs.append(value)
            args.append(arg.to(torch.uint8))  # paths have < 256 pixels for any practical radius
        ctx.offs, ctx.p = offs, p
        ctx.save_for_backward(torch.stack(args, dim=1))
        return torch.stack(outs, dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (args,) = ctx.saved_tensors
        offs, p = ctx.offs, ctx.p
        B, _, h, w = args.shape
        wp = w + 2 * p
        ys = torch.arange(h, device=grad.device)[:, None]
        xs = torch.arange(w, device=grad.device)[None, :]
        base = ((ys + p) * wp + xs + p).reshape(1, h * w)  # flat padded index of each output pixel
        gpad = grad.new_zeros(B, (h + 2 * p) * wp)
        for k, (dy, dx) in enumerate(offs):
            delta = torch.tensor([qy * wp + qx for qy, qx in _path_points(dy, dx)], device=grad.device)
            idx = base + delta[args[:, k].reshape(B, h * w).long()]
            gpad.scatter_add_(1, idx, grad[:, k].reshape(B, h * w))
        return gpad.view(B, h + 2 * p, wp)[:, p:p + h, p:p + w], None, None


def affinity_from_boundary(
    boundary: torch.Tensor, radius: float = 5.0, power: float = 10.0, offsets=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """SANCE Eq. 2 / IRNet: ``a_ij = (1 - max_{k in path(i,j)} B_k) ** power`` for ``d(i,j) < radius``.

    Args:
        boundary: ``(B, 1, h, w)`` or ``(B, h, w)`` boundary probabilities in ``[0, 1]``
            (values are clamped).  Gradients flow through (for the contour loss).
        radius: ``delta``.  Ignored when ``offsets`` is given.
        power: ``n`` (IRNet's ``beta``).
        offsets: optional precomputed offsets (e.g. ``neighbor_offsets(r, half=True)``).

    Returns:
        ``(A, offsets)`` with ``A`` of shape ``(B, K, h, w)``; 0 where the
        neighbour is outside the image.
    """
    b = _as_boundary(boundary)
    if offsets is None:
        offsets = neighbor_offsets(radius, device=b.device)
    else:
        offsets = torch.as_tensor(offsets, dtype=torch.long, device=b.device).reshape(-1, 2)
    pm = path_max(b, offsets)
    a = (1.0 - pm).clamp(0.0, 1.0)
    if power != 1:
        a = a.pow(power)
    h, w = b.shape[-2:]
    a = a * valid_neighbor_mask(offsets, h, w, device=b.device, dtype=a.dtype)
    return a, offsets


class AffinityTargets(NamedTuple):
    """Output of :func:`affinity_targets` (all ``(B, K, h, w)``)."""

    target: torch.Tensor  # uint8: 1 same class, 0 different class, 255 ignore
    bg_pos: torch.Tensor  # bool: both ends background (label 0)
    fg_pos: torch.Tensor  # bool: both ends the same foreground class
    neg: torch.Tensor  # bool: both ends labelled, different classes


def affinity_targets(
    seed_label: torch.Tensor, offsets, ignore_index: int = IGNORE_INDEX
) -> AffinityTargets:
    """Affinity labels from a seed label map (SANCE Eq. 3, IRNet's inter-pixel relations).

    Args:
        seed_label: ``(B, h, w)`` (or ``(h, w)``) integer labels, 0 = background,
            ``ignore_index`` = unsure.
        offsets: ``(K, 2)`` offsets (radius ``delta_hat``).

    Returns:
        :class:`AffinityTargets`; ``target`` is 255 where either end is ignored
        or the neighbour falls outside the image.
    """
    y = torch.as_tensor(seed_label)
    if y.dim() == 2:
        y = y.unsqueeze(0)
    if y.dim() != 3:
        raise ValueError(f"seed_label must be (B,h,w) or (h,w), got {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"seed_label must be an integer tensor, got {y.dtype}")
    y = y.long()
    offs = _offset_list(offsets)
    h, w = y.shape[-2:]
    p = _pad_size(offs)
    padded = F.pad(y, (p, p, p, p), value=int(ignore_index))
    nb = torch.stack([_shifted(padded, p, dy, dx, h, w) for dy, dx in offs], dim=1)
    src = y.unsqueeze(1)
    valid = (src != ignore_index) & (nb != ignore_index)
    same = src == nb
    pos = valid & same
    neg = valid & ~same
    target = torch.full(nb.shape, int(ignore_index), dtype=torch.uint8, device=y.device)
    target[pos] = 1
    target[neg] = 0
    bg_pos = pos & (src == 0)
    fg_pos = pos & (src != 0)
    return AffinityTargets(target, bg_pos, fg_pos, neg)


def class_balanced_affinity_loss(affinity_pred: torch.Tensor, target: AffinityTargets,
                                 eps: float = 1e-5) -> torch.Tensor:
    """Class-balanced contour/affinity loss, SANCE Eq. 4::

        L = - sum_{bg+} log(a) / (2 N_bg+) - sum_{fg+} log(a) / (2 N_fg+) - sum_{neg} log(1 - a) / N-

    i.e. ``bg_pos/2 + fg_pos/2 + neg`` of the three mean log-losses.  IRNet's
    ``train_irn.py`` computes the same terms and returns ``(pos + neg) / 2`` —
    exactly half of Eq. 4 (same minimiser; halve the weight to match IRNet's
    gradient scale).  Logs use IRNet's ``log(a + eps)`` / ``log(1 + eps - a)``
    so gradients survive at ``a in {0, 1}``; an empty group contributes 0.

    Args:
        affinity_pred: ``(B, K, h, w)`` affinities in ``[0, 1]`` (e.g. from
            :func:`affinity_from_boundary` on the predicted contour map).
        target: an :class:`AffinityTargets` (or the same 4-tuple).
    """
    a = affinity_pred
    if not (isinstance(target, tuple) and len(target) == 4):
        raise TypeError("target must be an AffinityTargets")
    _, bg_pos, fg_pos, neg = target
    for name, m in (("bg_pos", bg_pos), ("fg_pos", fg_pos), ("neg", neg)):
        if m.shape != a.shape:
            raise ValueError(f"{name} shape {tuple(m.shape)} != affinity shape {tuple(a.shape)}")
    bg = bg_pos.to(a.dtype)
    fg = fg_pos.to(a.dtype)
    ng = neg.to(a.dtype)
    log_a = torch.log(a + eps)
    bg_loss = -(log_a * bg).sum() / (bg.sum() + eps)
    fg_loss = -(log_a * fg).sum() / (fg.sum() + eps)
    neg_loss = -(torch.log(1.0 + eps - a) * ng).sum() / (ng.sum() + eps)
    return bg_loss / 2 + fg_loss / 2 + neg_loss


# --------------------------------------------------------------------------- random walk


class Transition(NamedTuple):
    """Banded transition matrix: ``x_new[i] = self_weight[i] x[i] + sum_k neighbors[k, i] x[i + o_k]``."""

    neighbors: torch.Tensor  # (B, K, h, w)
    self_weight: torch.Tensor  # (B, 1, h, w)
    offsets: torch.Tensor  # (K, 2)


def transition_from_affinity(A: torch.Tensor, offsets) -> Transition:
    """Normalise banded affinities into a random-walk transition (IRNet/SANCE):
    ``T = D^-1 (A + I)`` with ``d_i = 1 + sum_k A[k, i]`` (self loop with affinity 1).
    Rows sum to 1, a constant field is a fixed point; equal to the papers' column-normalised
    ``Â`` acting on row-vector scores, because ``A`` is symmetric.
    """
    if A.dim() != 4:
        raise ValueError(f"A must be (B,K,h,w), got {tuple(A.shape)}")
    off = torch.as_tensor(offsets, dtype=torch.long, device=A.device).reshape(-1, 2)
    if off.shape[0] != A.shape[1]:
        raise ValueError(f"A has {A.shape[1]} offsets channels but offsets has {off.shape[0]} rows")
    inv = 1.0 / (A.sum(dim=1, keepdim=True) + 1.0)
    return Transition(A * inv, inv, off)


def _split(nbr: torch.Tensor) -> list[torch.Tensor]:
    return [t.unsqueeze(1).contiguous() for t in nbr.unbind(1)]


def _propagate_inplace(
    x: torch.Tensor, nbrs: list[torch.Tensor], self_w: torch.Tensor, offs: list[tuple[int, int]], p: int, steps: int
) -> torch.Tensor:
    """``steps`` walk steps without allocations (no autograd): one zero-bordered buffer whose
    interior holds the current scores, shifted views computed once; ``nbrs[k]``: ``(B, 1, h, w)``
    weight of neighbour ``offs[k]``.  Out-of-image neighbours contribute 0 (zero padding +
    slicing, not ``roll``)."""
    B, C, h, w = x.shape
    xp = x.new_zeros((B, C, h + 2 * p, w + 2 * p))
    cur = xp[..., p : p + h, p : p + w]
    cur.copy_(x)
    views = [_shifted(xp, p, dy, dx, h, w) for dy, dx in offs]
    out = torch.empty_like(x)
    for i in range(steps):
        torch.mul(cur, self_w, out=out)
        for wk, v in zip(nbrs, views):
            out.addcmul_(wk, v)
        if i + 1 < steps:
            cur.copy_(out)
    return out


def random_walk_propagate(scores: torch.Tensor, A: torch.Tensor, offsets, steps: int) -> torch.Tensor:
    """Random walk: ``x <- T x`` applied ``steps`` times (literal count) with ``T`` from
    :func:`transition_from_affinity`.  Not differentiable: with gradients enabled, inputs that
    require them are refused (run it under ``torch.no_grad()``).

    Args:
        scores: ``(B, C, h, w)``.
        A: ``(B, K, h, w)`` banded affinities, ``offsets`` ``(K, 2)``.
    """
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    nbr, self_w, off = transition_from_affinity(A, offsets)
    if scores.dim() != 4:
        raise ValueError(f"scores must be (B,C,h,w), got {tuple(scores.shape)}")
    if scores.shape[0] != nbr.shape[0] or scores.shape[-2:] != nbr.shape[-2:]:
        raise ValueError(
            f"scores {tuple(scores.shape)} incompatible with affinities {tuple(nbr.shape)}"
        )
    x = scores.to(nbr.dtype)
    if torch.is_grad_enabled() and (x.requires_grad or nbr.requires_grad):
        raise ValueError("the random walk is not differentiable: run it under torch.no_grad()")
    if steps == 0:
        return x.clone()
    offs = _offset_list(off)
    return _propagate_inplace(x, _split(nbr), self_w, offs, _pad_size(offs), int(steps))


# --------------------------------------------------------------------------- score propagation


def boundary_random_walk(
    scores: torch.Tensor,
    boundary: torch.Tensor,
    radius: float = 5.0,
    power: float = 10.0,
    steps: int = 8,
    *,
    log2_steps: bool = True,
) -> torch.Tensor:
    """Batched score propagation, SANCE Eq. 6: ``(M ⊙ (1 - B)) Â^s``.

    Args:
        scores: ``(B, C, h, w)`` non-negative scores (CAMs, segmentation probabilities).
        boundary: ``(B, 1, h, w)`` or ``(B, h, w)`` boundary map in ``[0, 1]`` (clamped).
        steps: ``s = 2**steps`` walk steps if ``log2_steps`` (IRNet's ``exp_times``) else ``steps``.

    Returns:
        ``(B, C, h, w)`` propagated scores (no normalization).
    """
    if scores.dim() != 4:
        raise ValueError(f"scores must be (B, C, h, w), got {tuple(scores.shape)}")
    bnd = _as_boundary(boundary).to(device=scores.device, dtype=scores.dtype).clamp(0.0, 1.0)
    if bnd.shape[0] != scores.shape[0] or bnd.shape[-2:] != scores.shape[-2:]:
        raise ValueError(f"boundary {tuple(bnd.shape)} does not match scores {tuple(scores.shape)}")
    x = scores.clamp_min(0.0) * (1.0 - bnd[:, None])
    A, offs = affinity_from_boundary(bnd[:, None], radius=radius, power=power)
    n_steps = 2 ** int(steps) if log2_steps else int(steps)
    return random_walk_propagate(x, A, offs, n_steps)


@dataclass(frozen=True)
class Propagation:
    """Random-walk hyper-parameters: radius delta, power n, steps t (2**t walk steps with
    `log2_steps`, the reference code's matrix squarings)."""

    radius: float
    power: float
    steps: int = 8
    log2_steps: bool = True

    def walk(self, scores: torch.Tensor, boundary: torch.Tensor) -> torch.Tensor:
        return boundary_random_walk(scores.float(), boundary.float(), self.radius, self.power, self.steps,
                                    log2_steps=self.log2_steps)


def walk_present(walk: Propagation, scores: torch.Tensor, present: torch.Tensor,
                 boundary: torch.Tensor) -> torch.Tensor:
    """`walk` of the present classes' channels only (absent ones come back 0).

    The walk is linear and per channel, so only the (few) present channels of each image are
    propagated, packed into max-present-count channels: the cost follows the image labels, not K.
    scores (B, K, h, w), present (B, K) bool, boundary (B, 1, h, w).
    """
    b, k, h, w = scores.shape
    out = torch.zeros_like(scores, dtype=torch.float32)
    order, kept = pack_present(present)
    n = order.shape[1]
    if n == 0:
        return out
    keep = kept[:, :, None, None]
    idx = order[:, :, None, None].expand(b, n, h, w)
    packed = torch.gather(scores.float(), 1, idx) * keep
    return out.scatter_(1, idx, walk.walk(packed, boundary) * keep)
