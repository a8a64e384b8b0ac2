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
differentiable, with Python loops only over offsets / path points / steps.

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
  ``normalization="mass"`` gives ``(A + I) D^-1`` instead, which preserves the
  total mass ``sum_i x_i``.
* Steps: IRNet's ``exp_times`` (8) and SANCE's ``t`` (8) are the number of
  *squarings* of the dense transition matrix in IRNet's code
  (``misc/indexing.py: to_transition_matrix``), i.e. ``2**8 = 256`` walk steps.
  :func:`propagate` takes the literal number of steps; :func:`random_walk_labels`
  has ``log2_steps=True`` by default so that ``steps=8`` means 256 steps like
  the reference implementation.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "IGNORE_INDEX",
    "neighbor_offsets",
    "valid_neighbor_mask",
    "path_max",
    "affinity_from_boundary",
    "AffinityTargets",
    "affinity_targets",
    "class_balanced_affinity_loss",
    "Transition",
    "transition_from_affinity",
    "apply_transition",
    "propagate",
    "propagate_transition",
    "to_sparse_transition",
    "sparse_propagate",
    "boundary_random_walk",
    "random_walk_labels",
]

IGNORE_INDEX = 255


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


def class_balanced_affinity_loss(affinity_pred: torch.Tensor, target, eps: float = 1e-5) -> torch.Tensor:
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
        target: an :class:`AffinityTargets` (or the same 4-tuple).  A bare
            target tensor (1/0/255) is also accepted; then bg/fg cannot be told
            apart and the loss is ``mean_pos + mean_neg`` (documented fallback).
    """
    a = affinity_pred
    if isinstance(target, torch.Tensor):
        if target.shape != a.shape:
            raise ValueError(f"target shape {tuple(target.shape)} != affinity shape {tuple(a.shape)}")
        pos = (target == 1).to(a.dtype)
        neg = (target == 0).to(a.dtype)
        pos_loss = -(torch.log(a + eps) * pos).sum() / (pos.sum() + eps)
        neg_loss = -(torch.log(1.0 + eps - a) * neg).sum() / (neg.sum() + eps)
        return pos_loss + neg_loss
    if not (isinstance(target, tuple) and len(target) == 4):
        raise TypeError("target must be an AffinityTargets (or a 1/0/255 tensor)")
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
    self_weight: torch.Tensor | None  # (B, 1, h, w) or None (no self loop)
    offsets: torch.Tensor  # (K, 2)


def transition_from_affinity(
    A: torch.Tensor,
    offsets,
    include_self: bool = True,
    normalization: str = "row",
    min_degree: float = 1e-12,
) -> Transition:
    """Normalise banded affinities into a random-walk transition.

    ``d_i = [include_self] + sum_k A[k, i]`` (self loop with affinity 1).

    * ``"row"`` (default, IRNet/SANCE): ``T = D^-1 (A + I)``; rows sum to 1, a
      constant field is a fixed point.  Equal to the papers' column-normalised
      ``Â`` acting on row-vector scores, because ``A`` is symmetric.
    * ``"mass"``: ``T = (A + I) D^-1``; columns sum to 1, ``sum_i x_i`` is preserved.

    Pixels with zero degree (only possible with ``include_self=False``) get
    all-zero rows.
    """
    if A.dim() != 4:
        raise ValueError(f"A must be (B,K,h,w), got {tuple(A.shape)}")
    off = torch.as_tensor(offsets, dtype=torch.long, device=A.device).reshape(-1, 2)
    if off.shape[0] != A.shape[1]:
        raise ValueError(f"A has {A.shape[1]} offsets channels but offsets has {off.shape[0]} rows")
    deg = A.sum(dim=1, keepdim=True)
    if include_self:
        deg = deg + 1.0
    inv = 1.0 / deg.clamp_min(min_degree)
    self_w = inv if include_self else None
    if normalization == "row":
        nbr = A * inv
    elif normalization == "mass":
        offs = _offset_list(off)
        h, w = A.shape[-2:]
        p = _pad_size(offs)
        inv_p = F.pad(inv, (p, p, p, p), value=0.0)
        inv_nb = torch.cat([_shifted(inv_p, p, dy, dx, h, w) for dy, dx in offs], dim=1)
        nbr = A * inv_nb
    else:
        raise ValueError(f"normalization must be 'row' or 'mass', got {normalization!r}")
    return Transition(nbr, self_w, off)


def _step(
    x: torch.Tensor, nbrs: list[torch.Tensor], self_w, offs: list[tuple[int, int]], p: int
) -> torch.Tensor:
    """``nbrs[k]``: ``(B, 1, h, w)`` weight of neighbour ``offs[k]``."""
    h, w = x.shape[-2:]
    xp = F.pad(x, (p, p, p, p))  # zeros: out-of-image neighbours contribute 0
    out = x * self_w if self_w is not None else torch.zeros_like(x)
    for wk, (dy, dx) in zip(nbrs, offs):
        out = out.addcmul_(wk, _shifted(xp, p, dy, dx, h, w))
    return out


def _split(nbr: torch.Tensor) -> list[torch.Tensor]:
    return [t.unsqueeze(1).contiguous() for t in nbr.unbind(1)]


def _propagate_inplace(
    x: torch.Tensor, nbrs: list[torch.Tensor], self_w, offs: list[tuple[int, int]], p: int, steps: int
) -> torch.Tensor:
    """Allocation-free variant of repeated :func:`_step` (no autograd): one zero-bordered
    buffer whose interior holds the current scores, shifted views computed once."""
    B, C, h, w = x.shape
    xp = x.new_zeros((B, C, h + 2 * p, w + 2 * p))
    cur = xp[..., p : p + h, p : p + w]
    cur.copy_(x)
    views = [_shifted(xp, p, dy, dx, h, w) for dy, dx in offs]
    out = torch.empty_like(x)
    for i in range(steps):
        if self_w is not None:
            torch.mul(cur, self_w, out=out)
        else:
            out.zero_()
        for wk, v in zip(nbrs, views):
            out.addcmul_(wk, v)
        if i + 1 < steps:
            cur.copy_(out)
    return out


def apply_transition(x: torch.Tensor, transition: Transition) -> torch.Tensor:
    """One random-walk step ``x <- T x`` for scores ``x`` of shape ``(B, C, h, w)``.

    Out-of-image neighbours contribute 0 (zero padding + slicing, not ``roll``).
    """
    offs = _offset_list(transition.offsets)
    return _step(x, _split(transition.neighbors), transition.self_weight, offs, _pad_size(offs))


def propagate_transition(scores: torch.Tensor, transition: Transition, steps: int) -> torch.Tensor:
    """Apply a precomputed :class:`Transition` ``steps`` times."""
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    nbr, self_w, off = transition
    if scores.dim() != 4:
        raise ValueError(f"scores must be (B,C,h,w), got {tuple(scores.shape)}")
    if scores.shape[0] != nbr.shape[0] or scores.shape[-2:] != nbr.shape[-2:]:
        raise ValueError(
            f"scores {tuple(scores.shape)} incompatible with affinities {tuple(nbr.shape)}"
        )
    offs = _offset_list(off)
    p = _pad_size(offs)
    nbrs = _split(nbr)
    x = scores.to(nbr.dtype)
    steps = int(steps)
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or nbr.requires_grad or (self_w is not None and self_w.requires_grad)
    )
    if steps == 0:
        return x.clone()
    if not needs_grad:
        return _propagate_inplace(x, nbrs, self_w, offs, p, steps)
    for _ in range(steps):
        x = _step(x, nbrs, self_w, offs, p)
    return x


def propagate(
    scores: torch.Tensor,
    A: torch.Tensor,
    offsets,
    steps: int,
    include_self: bool = True,
    normalization: str = "row",
) -> torch.Tensor:
    """Random walk: ``x <- T x`` applied ``steps`` times (literal count) with ``T`` from
    :func:`transition_from_affinity`.

    Args:
        scores: ``(B, C, h, w)``.
        A: ``(B, K, h, w)`` banded affinities, ``offsets`` ``(K, 2)``.
    """
    tr = transition_from_affinity(A, offsets, include_self=include_self, normalization=normalization)
    return propagate_transition(scores, tr, steps)


# --------------------------------------------------------------------------- sparse path


def to_sparse_transition(
    A: torch.Tensor, offsets, include_self: bool = True, normalization: str = "row"
) -> torch.Tensor:
    """The same transition as a ``torch.sparse_csr`` matrix of size ``(B*h*w, B*h*w)``.

    Block-diagonal over the batch; pixel ``(b, y, x)`` has index ``(b*h + y)*w + x``.
    Use with :func:`sparse_propagate` (``x_new = T @ x`` with ``x`` of shape
    ``(B*h*w, C)``), or for explicit matrix powers on small maps.
    """
    tr = transition_from_affinity(A, offsets, include_self=include_self, normalization=normalization)
    B, K, h, w = A.shape
    dev = A.device
    off, weights = tr.offsets, tr.neighbors
    if tr.self_weight is not None:
        off = torch.cat([off, off.new_zeros(1, 2)])
        weights = torch.cat([weights, tr.self_weight], dim=1)
    # col - row == dy * w + dx for every in-image entry: ordering the offsets by this
    # displacement yields sorted, unique column indices in every row, so the CSR
    # arrays are built directly (no COO sort).
    disp = off[:, 0] * w + off[:, 1]
    order = torch.argsort(disp)
    off, disp, weights = off[order], disp[order], weights[:, order]
    n = B * h * w
    valid = valid_neighbor_mask(off, h, w, device=dev).expand(B, -1, h, w).permute(0, 2, 3, 1)
    rows = torch.arange(n, device=dev).view(B, h, w, 1)
    cols = (rows + disp.view(1, 1, 1, -1)).expand(B, h, w, -1)[valid]
    vals = weights.permute(0, 2, 3, 1)[valid]  # boolean indexing keeps row-major order
    crow = torch.zeros(n + 1, dtype=torch.long, device=dev)
    crow[1:] = valid.reshape(n, -1).sum(dim=1).cumsum(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(crow, cols, vals, (n, n), check_invariants=False)


def sparse_propagate(scores: torch.Tensor, T: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` random-walk steps with a sparse transition from :func:`to_sparse_transition`."""
    B, C, h, w = scores.shape
    if T.shape[0] != B * h * w:
        raise ValueError(f"transition of size {tuple(T.shape)} does not match scores {tuple(scores.shape)}")
    x = scores.to(T.dtype).permute(0, 2, 3, 1).reshape(B * h * w, C)
    for _ in range(int(steps)):
        x = T @ x
    return x.reshape(B, h, w, C).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------- pseudo labels


def boundary_random_walk(
    scores: torch.Tensor,
    boundary: torch.Tensor,
    radius: float = 5.0,
    power: float = 10.0,
    steps: int = 8,
    *,
    log2_steps: bool = True,
    include_self: bool = True,
    method: str = "banded",
) -> torch.Tensor:
    """Batched score propagation, SANCE Eq. 6: ``(M ⊙ (1 - B)) Â^s``.

    Args:
        scores: ``(B, C, h, w)`` non-negative scores (CAMs, segmentation probabilities).
        boundary: ``(B, 1, h, w)`` or ``(B, h, w)`` boundary map in ``[0, 1]`` (clamped).
        steps: ``s = 2**steps`` walk steps if ``log2_steps`` (IRNet's ``exp_times``) else ``steps``.
        method: ``"banded"`` or ``"sparse"`` (block-diagonal CSR over the batch), same result.

    Returns:
        ``(B, C, h, w)`` propagated scores (no normalization).
    """
    if scores.dim() != 4:
        raise ValueError(f"scores must be (B, C, h, w), got {tuple(scores.shape)}")
    if method not in ("banded", "sparse"):
        raise ValueError(f"method must be 'banded' or 'sparse', got {method!r}")
    bnd = _as_boundary(boundary).to(device=scores.device, dtype=scores.dtype).clamp(0.0, 1.0)
    if bnd.shape[0] != scores.shape[0] or bnd.shape[-2:] != scores.shape[-2:]:
        raise ValueError(f"boundary {tuple(bnd.shape)} does not match scores {tuple(scores.shape)}")
    x = scores.clamp_min(0.0) * (1.0 - bnd[:, None])
    A, offs = affinity_from_boundary(bnd[:, None], radius=radius, power=power)
    n_steps = 2 ** int(steps) if log2_steps else int(steps)
    if method == "sparse":
        return sparse_propagate(x, to_sparse_transition(A, offs, include_self=include_self), n_steps)
    return propagate(x, A, offs, n_steps, include_self=include_self)


def random_walk_labels(
    cam,
    boundary,
    present_classes: Sequence[int],
    radius: float = 5.0,
    power: float = 10.0,
    steps: int = 8,
    bg_score: float = 0.25,
    *,
    log2_steps: bool = True,
    normalize: str | None = "max",
    out_size: tuple[int, int] | None = None,
    scale_factor: float | None = None,
    include_self: bool = True,
    method: str = "banded",
    return_scores: bool = False,
):
    """IRNet / SANCE pseudo labels: boundary-aware random walk of class scores.

    1. ``x = relu(cam) * (1 - B)`` (SANCE Eq. 6 ``M ⊙ (1 - B)``; IRNet does the same).
    2. ``A`` from Eq. 2 with ``radius`` (delta) and ``power`` (n / beta).
    3. ``x <- T^s x`` with ``s = 2**steps`` if ``log2_steps`` (IRNet's
       ``exp_times``: ``steps=8`` -> 256 steps, the reference behaviour) else ``steps``.
    4. Optional bilinear resize: ``scale_factor`` (then crop to ``out_size`` —
       IRNet upsamples x4 and crops) or directly to ``out_size``.
    5. ``normalize``: ``"max"`` divides by the global max over all classes and
       pixels (IRNet ``rw_up / max(rw_up)``), ``"channel"`` by each class's max,
       ``None`` keeps raw propagated scores (SANCE's online labels compare raw
       ``M^b`` with tau_b).
    6. A constant background channel ``bg_score`` is prepended (IRNet
       ``sem_seg_bg_thres = 0.25`` on max-normalised scores; SANCE's tau_b, value
       not given in the paper), argmax, and channel ``c`` is mapped to
       ``present_classes[c - 1]`` (0 = background).

    ``method="sparse"`` runs step 3 with a CSR matrix (:func:`to_sparse_transition`),
    same result; in ``wsss/benchmarks/random_walk.py`` (1 CPU thread, 256 steps)
    it was faster than the banded loop (32x32: ~0.1 s vs ~0.25 s; 128x128:
    ~1.9 s vs ~2.2 s), slower for few steps.  Not measured on CUDA yet.

    Args:
        cam: ``(C, h, w)`` scores of the present foreground classes (tensor or array).
        boundary: ``(h, w)`` boundary map in ``[0, 1]`` at the same resolution.
        present_classes: the ``C`` class ids (background excluded).

    Returns:
        ``LongTensor (H, W)`` of class ids on ``cam``'s device; with
        ``return_scores=True`` also the ``(1 + C, H, W)`` scores (bg first).
    """
    cam_t = cam if isinstance(cam, torch.Tensor) else torch.as_tensor(np.asarray(cam))
    if cam_t.dim() != 3:
        raise ValueError(f"cam must be (C, h, w), got {tuple(cam_t.shape)}")
    if cam_t.dtype not in (torch.float32, torch.float64):
        cam_t = cam_t.float()  # ints / half precision: compute in float32
    dev = cam_t.device
    bnd = boundary if isinstance(boundary, torch.Tensor) else torch.as_tensor(np.asarray(boundary))
    bnd = bnd.to(device=dev, dtype=cam_t.dtype)
    if bnd.dim() == 3 and bnd.shape[0] == 1:
        bnd = bnd[0]
    if bnd.dim() != 2 or bnd.shape != cam_t.shape[-2:]:
        raise ValueError(f"boundary must be (h, w) = {tuple(cam_t.shape[-2:])}, got {tuple(bnd.shape)}")
    keys = [int(c) for c in present_classes]
    C, h, w = cam_t.shape
    if len(keys) != C:
        raise ValueError(f"present_classes has {len(keys)} entries but cam has {C} channels")
    if any(k == 0 for k in keys):
        raise ValueError("present_classes must not contain the background id 0")
    if method not in ("banded", "sparse"):
        raise ValueError(f"method must be 'banded' or 'sparse', got {method!r}")
    if normalize not in ("max", "channel", None):
        raise ValueError(f"normalize must be 'max', 'channel' or None, got {normalize!r}")
    bnd = bnd.clamp(0.0, 1.0)

    if C > 0:
        rw = boundary_random_walk(cam_t[None], bnd[None], radius, power, steps, log2_steps=log2_steps,
                                  include_self=include_self, method=method)
    else:
        rw = cam_t.new_zeros((1, 1, h, w))  # dummy channel so resizing works; dropped below

    if scale_factor is not None:
        rw = F.interpolate(rw, scale_factor=scale_factor, mode="bilinear", align_corners=False)
        if out_size is not None:
            rw = rw[..., : out_size[0], : out_size[1]]
    elif out_size is not None and tuple(out_size) != (h, w):
        rw = F.interpolate(rw, size=tuple(out_size), mode="bilinear", align_corners=False)
    rw = rw[0, :C]

    if C > 0:
        if normalize == "max":
            rw = rw / rw.max().clamp_min(1e-5)
        elif normalize == "channel":
            rw = rw / rw.flatten(1).amax(dim=1).clamp_min(1e-5)[:, None, None]

    scores = torch.cat([rw.new_full((1, *rw.shape[-2:]), float(bg_score)), rw], dim=0)
    lut = torch.tensor([0, *keys], dtype=torch.long, device=dev)
    labels = lut[scores.argmax(dim=0)]
    if return_scores:
        return labels, scores
    return labels
