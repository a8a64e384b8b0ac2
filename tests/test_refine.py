"""Tests for wsss.refine: dense CRF and boundary-guided random walk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss.benchmarks.random_walk import sparse_propagate, to_sparse_transition
from wsss.refine.crf import CRFParams, crf_labels, dense_crf
from wsss.refine.random_walk import (
    AffinityTargets,
    _pad_size,
    _shifted,
    affinity_from_boundary,
    affinity_targets,
    class_balanced_affinity_loss,
    neighbor_offsets,
    path_max,
    random_walk_propagate,
    transition_from_affinity,
    valid_neighbor_mask,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def wall_boundary(h: int, w: int, col: int) -> torch.Tensor:
    b = torch.zeros(1, 1, h, w)
    b[..., col] = 1.0
    return b


# --------------------------------------------------------------------------- offsets


def test_neighbor_offsets_radius2_hand_list():
    off = neighbor_offsets(2)
    assert off.dtype == torch.long and off.shape == (8, 2)
    assert off.tolist() == [[-1, -1], [-1, 0], [-1, 1], [0, -1], [0, 1], [1, -1], [1, 0], [1, 1]]
    assert neighbor_offsets(2, half=True).tolist() == [[0, 1], [1, -1], [1, 0], [1, 1]]
    # strict inequality: distance exactly 1 is excluded for radius 1
    assert neighbor_offsets(1).shape == (0, 2)


@pytest.mark.parametrize("radius,k", [(3, 24), (5, 68), (10, 304)])
def test_neighbor_offsets_counts_and_symmetry(radius, k):
    off = neighbor_offsets(radius)
    assert off.shape == (k, 2)
    assert torch.equal(off.flip(0), -off)  # reverse of k is K-1-k
    d2 = (off**2).sum(1)
    assert bool((d2 > 0).all()) and bool((d2 < radius**2).all())
    half = neighbor_offsets(radius, half=True)
    assert torch.equal(half, off[k // 2 :])


def test_valid_neighbor_mask():
    m = valid_neighbor_mask(torch.tensor([[0, 1], [-1, 0]]), 3, 4)
    assert m.shape == (1, 2, 3, 4)
    assert not m[0, 0, :, 3].any() and m[0, 0, :, :3].all()
    assert not m[0, 1, 0].any() and m[0, 1, 1:].all()


# --------------------------------------------------------------------------- path max / affinities


def test_path_max_hand_map():
    b = torch.zeros(5, 5)
    b[1, 1] = 1.0
    off = torch.tensor([[0, 1], [2, 1], [1, 2], [2, 0], [-1, -1], [1, 0]])
    pm = path_max(b[None], off)[0]
    assert pm.shape == (6, 5, 5)
    # endpoints are included
    assert pm[0, 1, 0] == 1 and pm[0, 1, 1] == 1 and pm[0, 1, 2] == 0 and pm[0, 0, 0] == 0
    # (2,1): every pixel of the 3x2 box is within distance 1 of the segment
    assert pm[1, 0, 0] == 1 and pm[1, 0, 1] == 1 and pm[1, 0, 2] == 0 and pm[1, 2, 0] == 0
    # (1,2): 2x3 box
    assert pm[2, 0, 0] == 1 and pm[2, 1, 0] == 1 and pm[2, 2, 0] == 0 and pm[2, 0, 2] == 0
    # (2,0): vertical, only the column
    assert pm[3, 0, 1] == 1 and pm[3, 0, 0] == 0 and pm[3, 0, 2] == 0 and pm[3, 2, 1] == 0
    # (-1,-1) from (2,2) reaches the spike at (1,1)
    assert pm[4, 2, 2] == 1 and pm[4, 3, 3] == 0
    # full hand-made map for the diagonal (1,1) with a spike at (2,2) on 4x4:
    # its 2x2 box {y,y+1}x{x,x+1} must contain the spike; last row/col leave the image (pad 1)
    b = torch.zeros(1, 4, 4)
    b[0, 2, 2] = 1.0
    expected = torch.tensor(
        [[0, 0, 0, 1], [0, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.float32
    )
    assert torch.equal(path_max(b, torch.tensor([[1, 1]]))[0, 0], expected)
    # graded values: the max is taken
    g = torch.arange(25, dtype=torch.float32).view(1, 1, 5, 5) / 24
    pm = path_max(g, torch.tensor([[1, 0]]))
    assert torch.allclose(pm[0, 0, :4], g[0, 0, 1:])


def test_thin_diagonal_boundary_is_not_jumped():
    n = 8
    b = torch.eye(n).view(1, 1, n, n)  # 1-pixel-thin, 8-connected diagonal wall
    A, off = affinity_from_boundary(b, radius=5, power=1)
    ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    side = torch.sign(xs - ys)  # +1 above, -1 below, 0 on the wall
    ny = ys + off[:, 0].view(-1, 1, 1)
    nx = xs + off[:, 1].view(-1, 1, 1)
    valid = valid_neighbor_mask(off, n, n)[0]
    nside = torch.sign(nx - ny)
    crossing = valid & (side * nside < 0)
    assert crossing.any() and torch.all(A[0][crossing] == 0)
    seeds = torch.zeros(1, 1, n, n)
    seeds[0, 0, 5, 1] = 1.0  # below the diagonal
    out = random_walk_propagate(seeds, A, off, steps=50)
    assert torch.all(out[0, 0][side > 0] == 0) and torch.all(out[0, 0][side < 0] > 0)


def test_path_max_symmetric():
    torch.manual_seed(0)
    b = torch.rand(2, 1, 9, 11)
    A, off = affinity_from_boundary(b, radius=4, power=1)
    K = off.shape[0]
    h, w = 9, 11
    for k, (dy, dx) in enumerate(off.tolist()):
        kr = K - 1 - k
        ys, ye = max(0, -dy), min(h, h - dy)
        xs, xe = max(0, -dx), min(w, w - dx)
        fwd = A[:, k, ys:ye, xs:xe]
        bwd = A[:, kr, ys + dy : ye + dy, xs + dx : xe + dx]
        assert torch.equal(fwd, bwd)


@pytest.mark.parametrize("power", [1, 3, 10])
def test_affinity_wall(power):
    h, w, col = 6, 9, 4
    b = wall_boundary(h, w, col)
    A, off = affinity_from_boundary(b, radius=3, power=power)
    valid = valid_neighbor_mask(off, h, w)[0]
    xs = torch.arange(w).view(1, 1, w).expand(len(off), h, w)
    nx = xs + off[:, 1].view(-1, 1, 1)
    left = (xs < col) & (nx < col) & valid
    right = (xs > col) & (nx > col) & valid
    crossing = valid & ~left & ~right  # crosses or touches the wall
    assert torch.all(A[0][left] == 1) and torch.all(A[0][right] == 1)
    assert torch.all(A[0][crossing] == 0)
    assert torch.all(A[0][~valid] == 0)
    # soft boundary: (1 - 0.5) ** n
    b2 = torch.zeros(1, 1, 5, 5)
    b2[0, 0, 2, 2] = 0.5
    A2, off2 = affinity_from_boundary(b2, radius=2, power=power)
    k = off2.tolist().index([0, 1])
    assert A2[0, k, 2, 1].item() == pytest.approx(0.5**power)
    assert A2[0, k, 0, 0].item() == 1.0


def test_affinity_values_in_range_and_outside_zero():
    torch.manual_seed(1)
    A, off = affinity_from_boundary(torch.rand(1, 7, 8) * 1.2 - 0.1, radius=5, power=2)
    assert A.shape == (1, 68, 7, 8)
    assert A.min() >= 0 and A.max() <= 1
    assert torch.all(A[0][~valid_neighbor_mask(off, 7, 8)[0]] == 0)


# --------------------------------------------------------------------------- propagation


@pytest.mark.parametrize("device", DEVICES)
def test_propagation_blocked_by_wall(device):
    h, w, col = 12, 14, 7
    seeds = torch.zeros(1, 1, h, w, device=device)
    seeds[0, 0, 5, 1] = 1.0
    A, off = affinity_from_boundary(wall_boundary(h, w, col).to(device), radius=5, power=10)
    out = random_walk_propagate(seeds, A, off, steps=100)
    assert torch.all(out[..., col + 1 :] == 0)  # never reaches the right side
    assert torch.all(out[..., :col] > 0)  # fills the left side
    # without the wall it crosses
    A0, off0 = affinity_from_boundary(torch.zeros(1, 1, h, w, device=device), radius=5, power=10)
    out0 = random_walk_propagate(seeds, A0, off0, steps=100)
    assert torch.all(out0[..., col + 1 :] > 0)


def test_propagation_no_wraparound_at_border():
    h, w = 6, 6
    x = torch.zeros(1, 1, h, w)
    x[0, 0, :, w - 1] = 1.0  # right border column
    A, off = affinity_from_boundary(torch.zeros(1, 1, h, w), radius=2, power=1)
    out = random_walk_propagate(x, A, off, steps=1)
    assert torch.all(out[..., 0] == 0)  # torch.roll would leak into column 0
    assert torch.all(out[..., w - 2] > 0)


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 2e-4)])
def test_row_normalization_keeps_constant_field(dtype, atol):
    torch.manual_seed(2)
    A, off = affinity_from_boundary(torch.rand(2, 1, 10, 9, dtype=dtype), radius=5, power=3)
    x = torch.full((2, 3, 10, 9), 0.7, dtype=dtype)
    out = random_walk_propagate(x, A, off, steps=20)
    assert out.dtype == dtype
    assert torch.allclose(out, x, atol=atol)
    tr = transition_from_affinity(A, off)
    rows = tr.neighbors.sum(1, keepdim=True) + tr.self_weight
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-6)


def test_isolated_pixel_keeps_its_score():
    A = torch.zeros(1, 8, 3, 3)
    off = neighbor_offsets(2)
    x = torch.rand(1, 1, 3, 3)
    assert torch.equal(random_walk_propagate(x, A, off, steps=3), x)  # the self loop alone


def test_sparse_matches_banded():
    torch.manual_seed(4)
    b = torch.rand(2, 1, 8, 7)
    A, off = affinity_from_boundary(b, radius=3, power=2)
    x = torch.rand(2, 4, 8, 7)
    banded = random_walk_propagate(x, A, off, steps=6)
    T = to_sparse_transition(A, off)
    assert T.layout == torch.sparse_csr and T.shape == (2 * 8 * 7, 2 * 8 * 7)
    sparse = sparse_propagate(x, T, steps=6)
    assert torch.allclose(banded, sparse, atol=1e-5)
    # dense matrix power agrees too
    Td = T.to_dense()
    xd = x.permute(0, 2, 3, 1).reshape(-1, 4)
    dense = torch.linalg.matrix_power(Td, 6) @ xd
    assert torch.allclose(dense.reshape(2, 8, 7, 4).permute(0, 3, 1, 2), banded, atol=1e-5)
    D = torch.diag(1.0 / torch.diag(Td))  # D = diag(deg), Td = D^-1 (A + I)
    sym = D @ Td
    assert torch.allclose(sym, sym.T, atol=1e-6)  # underlying affinity is symmetric


@pytest.mark.parametrize("h,w,radius", [(5, 3, 3), (4, 2, 5), (1, 9, 3)])
def test_sparse_transition_tiny_maps_valid_csr(h, w, radius):
    torch.manual_seed(7)
    A, off = affinity_from_boundary(torch.rand(2, 1, h, w), radius=radius, power=2)
    T = to_sparse_transition(A, off)
    with torch.sparse.check_sparse_tensor_invariants():  # sorted, in-range, consistent
        torch.sparse_csr_tensor(T.crow_indices(), T.col_indices(), T.values(), T.shape)
    x = torch.rand(2, 3, h, w)
    assert torch.allclose(random_walk_propagate(x, A, off, 4), sparse_propagate(x, T, 4), atol=1e-6)


def plain_walk(x: torch.Tensor, A: torch.Tensor, off: torch.Tensor, steps: int) -> torch.Tensor:
    """Reference: each step a fresh weighted sum of zero-padded shifted copies."""
    tr = transition_from_affinity(A, off)
    offs = [tuple(o) for o in off.tolist()]
    p, (h, w) = _pad_size(offs), x.shape[-2:]
    for _ in range(steps):
        xp = torch.nn.functional.pad(x, (p, p, p, p))
        x = x * tr.self_weight + sum(tr.neighbors[:, k:k + 1] * _shifted(xp, p, dy, dx, h, w)
                                     for k, (dy, dx) in enumerate(offs))
    return x


def test_in_place_walk_matches_the_plain_steps():
    torch.manual_seed(8)
    A, off = affinity_from_boundary(torch.rand(2, 1, 6, 7), radius=3, power=2)
    x = torch.rand(2, 3, 6, 7)
    x0 = x.clone()
    assert torch.allclose(random_walk_propagate(x, A, off, steps=5), plain_walk(x, A, off, 5), atol=1e-6)
    assert torch.equal(x, x0)  # input untouched
    assert torch.equal(random_walk_propagate(x, A, off, steps=0), x)
    with pytest.raises(ValueError):  # not differentiable: refused rather than silently detached
        random_walk_propagate(x.requires_grad_(), A, off, steps=1)


# --------------------------------------------------------------------------- affinity targets / loss


def _reference_targets(seed: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
    B, h, w = seed.shape
    t = torch.full((B, len(off), h, w), 255, dtype=torch.uint8)
    for b in range(B):
        for k, (dy, dx) in enumerate(off.tolist()):
            for y in range(h):
                for x in range(w):
                    yy, xx = y + dy, x + dx
                    if not (0 <= yy < h and 0 <= xx < w):
                        continue
                    a, c = int(seed[b, y, x]), int(seed[b, yy, xx])
                    if a == 255 or c == 255:
                        continue
                    t[b, k, y, x] = 1 if a == c else 0
    return t


def test_affinity_targets_hand_3x3():
    seed = torch.tensor([[0, 0, 1], [0, 255, 1], [2, 2, 1]])
    off = neighbor_offsets(2)
    ol = off.tolist()
    res = affinity_targets(seed, off)
    assert isinstance(res, AffinityTargets)
    t, bg, fg, neg = res
    assert t.shape == (1, 8, 3, 3) and t.dtype == torch.uint8
    r = ol.index([0, 1])
    d = ol.index([1, 0])
    dr = ol.index([1, 1])
    up = ol.index([-1, 0])
    assert t[0, r, 0, 0] == 1 and bg[0, r, 0, 0] and not fg[0, r, 0, 0]  # 0-0
    assert t[0, r, 0, 1] == 0 and neg[0, r, 0, 1]  # 0-1
    assert t[0, dr, 0, 0] == 255  # neighbour is ignore
    assert t[0, r, 1, 0] == 255  # neighbour (1,1) is ignore
    assert t[0, d, 1, 1] == 255  # source is ignore
    assert t[0, up, 0, 0] == 255  # outside the image
    assert t[0, d, 0, 2] == 1 and fg[0, d, 0, 2]  # 1-1
    assert t[0, r, 2, 0] == 1 and fg[0, r, 2, 0]  # 2-2
    assert t[0, r, 2, 1] == 0 and neg[0, r, 2, 1]  # 2-1
    assert t[0, d, 1, 0] == 0  # 0-2
    # masks partition the non-ignored targets; everything matches a brute-force reference
    assert torch.equal(t, _reference_targets(seed[None], off))
    assert torch.equal(bg | fg, t == 1) and torch.equal(neg, t == 0)
    assert not (bg & fg).any()


def test_affinity_targets_random_matches_reference():
    g = torch.Generator().manual_seed(5)
    seed = torch.randint(0, 4, (2, 6, 7), generator=g)
    seed[seed == 3] = 255
    off = neighbor_offsets(3)
    assert torch.equal(affinity_targets(seed, off).target, _reference_targets(seed, off))
    with pytest.raises(TypeError):
        affinity_targets(seed.float(), off)


def test_class_balanced_loss_finite_with_gradients():
    torch.manual_seed(6)
    logits = torch.randn(2, 1, 10, 10, requires_grad=True)
    seed = torch.randint(0, 3, (2, 10, 10))
    seed[:, :2] = 255
    A, off = affinity_from_boundary(torch.sigmoid(logits), radius=4, power=1)
    tg = affinity_targets(seed, off)
    loss = class_balanced_affinity_loss(A, tg)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    with pytest.raises(TypeError):  # the targets, not the bare 1/0/255 tensor
        class_balanced_affinity_loss(A.detach(), tg.target)


def test_class_balanced_loss_values():
    seed = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1]]])
    off = neighbor_offsets(2)
    tg = affinity_targets(seed, off)
    perfect = (tg.target == 1).float()
    assert class_balanced_affinity_loss(perfect, tg).item() == pytest.approx(0.0, abs=1e-3)
    # uniform a = 0.5: bg/2 + fg/2 + neg = log 2 * (1/2 + 1/2 + 1)
    half = torch.full(perfect.shape, 0.5)
    assert class_balanced_affinity_loss(half, tg).item() == pytest.approx(2 * np.log(2), rel=1e-3)
    # no foreground pairs at all: the empty group contributes 0, no NaN
    tg0 = affinity_targets(torch.zeros(1, 3, 3, dtype=torch.long), off)
    assert class_balanced_affinity_loss(torch.full((1, 8, 3, 3), 0.5), tg0).item() == pytest.approx(
        0.5 * np.log(2), rel=1e-3
    )
    with pytest.raises(ValueError):
        class_balanced_affinity_loss(half[:, :4], tg)


# --------------------------------------------------------------------------- dense CRF


def two_region_image(h=40, w=40, split=20):
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :split] = (200, 40, 30)
    img[:, split:] = (30, 60, 210)
    gt = np.zeros((h, w), np.int64)
    gt[:, split:] = 1
    return img, gt


def test_crf_params_defaults():
    p = CRFParams()
    assert (p.iterations, p.gaussian_sxy, p.gaussian_compat) == (10, 3, 3)
    assert (p.bilateral_sxy, p.bilateral_srgb, p.bilateral_compat) == (80, 13, 10)
    with pytest.raises(ValueError):
        CRFParams(iterations=-1)
    with pytest.raises(Exception):
        p.iterations = 3  # frozen


def test_dense_crf_keeps_confident_prediction():
    img, gt = two_region_image()
    probs = np.where(np.stack([gt == 0, gt == 1]), 0.95, 0.05).astype(np.float32)
    q = dense_crf(img, probs)
    assert q.shape == probs.shape and q.dtype == np.float32
    assert np.allclose(q.sum(0), 1.0, atol=1e-4)
    assert np.array_equal(q.argmax(0), gt)
    assert np.array_equal(crf_labels(img, probs, labels=[0, 15]), np.where(gt == 1, 15, 0))


def test_dense_crf_cleans_noisy_prediction_along_colour_edge():
    img, gt = two_region_image()
    rng = np.random.default_rng(0)
    flip = rng.random(gt.shape) < 0.25
    noisy = np.where(flip, 1 - gt, gt)
    p1 = np.where(noisy == 1, 0.6, 0.4).astype(np.float32)
    probs = np.stack([1 - p1, p1])
    before = (probs.argmax(0) == gt).mean()
    lab = crf_labels(img, probs)
    after = (lab == gt).mean()
    assert before < 0.8
    assert after > 0.99
    # non-contiguous inputs are handled
    lab2 = crf_labels(img[:, ::-1], probs[:, :, ::-1])
    assert (lab2 == gt[:, ::-1]).mean() > 0.99


def test_crf_input_validation():
    img, gt = two_region_image(10, 12, 6)
    probs = np.full((2, 10, 12), 0.5, np.float32)
    with pytest.raises(TypeError):
        dense_crf(img.astype(np.float32), probs)
    with pytest.raises(ValueError):
        dense_crf(img[..., 0], probs)
    with pytest.raises(ValueError):
        dense_crf(img, probs[:, :5])
    with pytest.raises(ValueError):
        dense_crf(img, probs[0])
    with pytest.raises(TypeError):
        dense_crf(img, probs.astype(np.int64))
    with pytest.raises(TypeError):
        dense_crf(torch.from_numpy(img), probs)
    bad = probs.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError):
        dense_crf(img, bad)
    with pytest.raises(ValueError):
        crf_labels(img, probs, labels=[0, 1, 2])


def test_spr_sigma_is_pooled_over_all_dilations() -> None:
    """PAMR's LocalStDev: one sigma per pixel over the 3x3 windows of every dilation together."""
    from wsss.refine.spr import _windows, local_differences

    x = torch.rand(1, 1, 9, 9, generator=torch.Generator().manual_seed(0))
    dilations = (1, 2)
    wins = torch.cat([_windows(x, d) for d in dilations], dim=2)  # (1, 1, 18, 9, 9)
    sigma = wins.std(dim=2, keepdim=True)
    expected = torch.cat([(_windows(x, d)[:, :, [k for k in range(9) if k != 4]] - x[:, :, None]).abs()
                          for d in dilations], dim=2) / (sigma + 1e-8)
    assert torch.allclose(local_differences(x, dilations), expected, atol=1e-5)
