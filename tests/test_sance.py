"""SANCE and its contour baseline: seeds, affinities, propagation, online labels, path-max gradient,
one training step and a tiny end-to-end run."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss.benchmarks.random_walk import sparse_boundary_random_walk
from wsss.inference import at_size
from wsss.methods.base import build_method
from wsss.methods.sance import contour_loss, online_labels, refine_labels
from wsss.refine.random_walk import (
    Propagation,
    _path_points,
    affinity_from_boundary,
    boundary_random_walk,
    neighbor_offsets,
    path_max,
    walk_present,
)
from wsss.stages.cam_seeds import SEED_CRF, seed_label
from wsss.scale import ScalePolicy
from wsss.stages.propagation import PseudoLabelParams

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def wall(h: int, w: int, col: int, batch: int = 1) -> torch.Tensor:
    b = torch.zeros(batch, 1, h, w)
    b[..., col] = 1.0
    return b


# ---------------------------------------------------------------------------------- seeds


def test_seed_label_thresholds_by_hand() -> None:
    keys = np.array([2, 5])  # classes 3 and 6 in label ids
    cam = np.array([[[0.50, 0.10, 0.01, 0.20, 0.31]],
                    [[0.40, 0.20, 0.04, 0.60, 0.30]]], dtype=np.float32)
    # max > 0.30 -> argmax class; max < 0.05 -> background; else unsure
    assert seed_label(keys, cam).tolist() == [[3, 255, 0, 6, 3]]
    assert seed_label(keys, cam, fg_threshold=0.5, bg_threshold=0.15).tolist() == [[255, 255, 0, 6, 255]]
    assert seed_label(np.zeros(0, dtype=np.int64), np.zeros((0, 2, 3), np.float32)).tolist() == [[0] * 3] * 2
    with pytest.raises(ValueError):
        seed_label(keys, cam, fg_threshold=0.05, bg_threshold=0.3)


def test_seed_crf_snaps_seeds_to_the_colour_region() -> None:
    # A red square on grey; the CAM is confident on most of the square, unsure on a ring around it
    # that covers red and grey pixels: the CRF gives the whole square to the class, the ring's grey
    # to the background.
    image = np.full((24, 24, 3), 128, np.uint8)
    image[6:18, 6:18] = (220, 30, 30)
    cam = np.full((1, 24, 24), 0.02, np.float32)
    cam[0, 4:20, 4:20] = 0.2
    cam[0, 7:17, 7:17] = 0.9
    assert (seed_label(np.array([0]), cam)[6, 6:18] == 255).all()  # without the CRF: unsure
    seeds = seed_label(np.array([0]), cam, image=image, crf=SEED_CRF)
    expected = np.zeros((24, 24), np.uint8)
    expected[6:18, 6:18] = 1
    assert (seeds == expected).all()
    with pytest.raises(ValueError):
        seed_label(np.array([0]), cam, crf=SEED_CRF)  # the CRF needs the image


# ---------------------------------------------------------------------------------- affinities


def test_affinity_from_contour_map_by_hand() -> None:
    b = torch.tensor([[[[0.1, 0.4, 0.0, 0.8]]]])
    for power, expect in ((1, [0.6, 0.6, 0.2, 0.0]), (10, [0.6**10, 0.6**10, 0.2**10, 0.0])):
        a, off = affinity_from_boundary(b, power=power, offsets=neighbor_offsets(2, half=True))
        k = off.tolist().index([0, 1])
        assert a[0, k, 0].tolist() == pytest.approx(expect)  # 1 - max of both ends; 0 off the image
    # radius 3 reaches two pixels: the path includes the pixel in between
    a, off = affinity_from_boundary(b, power=1, offsets=neighbor_offsets(3, half=True))
    assert a[0, off.tolist().index([0, 2]), 0].tolist() == pytest.approx([0.6, 0.2, 0.0, 0.0])


def test_contour_loss_prefers_contours_on_seed_boundaries() -> None:
    seed = torch.zeros(1, 8, 10, dtype=torch.long)
    seed[:, :, :5] = 1
    seed[:, :, 5] = 255  # unsure band between object and background
    off = neighbor_offsets(3, half=True)
    on_edge = contour_loss(affinity_from_boundary(wall(8, 10, 5) * 0.9 + 0.05, power=1, offsets=off)[0], off, seed)
    inside = contour_loss(affinity_from_boundary(wall(8, 10, 2) * 0.9 + 0.05, power=1, offsets=off)[0], off, seed)
    assert on_edge < inside


# ---------------------------------------------------------------------------------- propagation


def test_one_walk_step_by_hand() -> None:
    # 1 x 3 map, no contour: each pixel averages itself (self loop) and its in-image neighbours.
    x = torch.tensor([[[[3.0, 0.0, 0.0]]]])
    out = boundary_random_walk(x, torch.zeros(1, 1, 1, 3), radius=1.5, power=1, steps=1, log2_steps=False)
    assert out[0, 0, 0].tolist() == pytest.approx([1.5, 1.0, 0.0])
    # Eq. 6 weights the scores by (1 - B) before walking: a half-contour pixel starts at half its score
    b = torch.tensor([[[[0.5, 0.0, 0.0]]]])
    out = boundary_random_walk(x, b, radius=1.5, power=1, steps=1, log2_steps=False)
    assert out[0, 0, 0].tolist() == pytest.approx([(1.5 + 0) / 1.5, 1.5 * 0.5 / 2.5, 0.0])


def banded_walk(scores: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return boundary_random_walk(scores, b, radius=5, power=10, steps=6)  # 2**6 steps


def sparse_walk(scores: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return sparse_boundary_random_walk(scores, b, radius=5, power=10, steps=2**6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("walk", [banded_walk, sparse_walk], ids=["banded", "sparse"])
def test_contour_wall_stops_batched_propagation(device: str, walk) -> None:
    h, w = 10, 12
    scores = torch.zeros(2, 2, h, w, device=device)
    scores[:, 0, 4, 1] = 1.0  # class 0 seeded left
    scores[:, 1, 4, 10] = 1.0  # class 1 seeded right
    b = torch.cat([wall(h, w, 6), torch.zeros(1, 1, h, w)]).to(device)  # image 0 walled, image 1 open
    out = walk(scores, b)
    assert torch.all(out[0, 0, :, 7:] == 0) and torch.all(out[0, 1, :, :6] == 0)
    assert torch.all(out[0, 0, :, :6] > 0) and torch.all(out[0, 1, :, 7:] > 0)
    assert torch.all(out[0, :, :, 6] == 0)  # the wall itself holds no score
    assert torch.all(out[1, 0, :, 7:] > 0) and torch.all(out[1, 1, :, :6] > 0)
    # batched = one image at a time; the library's banded walk = the benchmark's sparse one
    alone = walk(scores[1:], b[1:])
    assert torch.allclose(out[1:], alone, atol=1e-6)
    other = sparse_walk(scores, b) if walk is banded_walk else banded_walk(scores, b)
    assert torch.allclose(out, other, atol=1e-5)


def test_walk_present_equals_the_full_walk_of_masked_scores() -> None:
    torch.manual_seed(0)
    scores, b = torch.rand(3, 5, 7, 9), torch.rand(3, 1, 7, 9)
    present = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    walk = Propagation(radius=3, power=2, steps=3)
    full = walk.walk(scores * present[:, :, None, None], b)
    assert torch.allclose(walk_present(walk, scores, present, b), full, atol=1e-6)


# ---------------------------------------------------------------------------------- online labels


def test_online_labels_by_hand() -> None:
    # one row of 7 pixels, classes (a, b); only a is in the image label
    seg = torch.zeros(1, 3, 1, 7)
    seg[0, 1, 0, :3] = 0.9  # a left of the contour
    seg[0, 2, 0, 4:] = 0.95  # b (absent) right of it: must not be labelled
    seg[0, 0] = 1 - seg[0, 1:].sum(0)
    boundary = torch.zeros(1, 1, 1, 7)
    boundary[..., 3] = 1.0
    valid = torch.ones(1, 1, 7, dtype=torch.bool)
    valid[..., 6] = False  # crop padding
    walk = Propagation(radius=1.5, power=10, steps=8, log2_steps=False)
    y = online_labels(seg, boundary, torch.tensor([[1.0, 0.0]]), valid, walk, bg_score=0.3)
    assert y.tolist() == [[[1, 1, 1, 0, 0, 0, 255]]]
    # without the contour the class leaks across: pixel 3 then averages 0.9 from the left
    y_open = online_labels(seg, torch.zeros_like(boundary), torch.tensor([[1.0, 0.0]]), valid, walk, bg_score=0.3)
    assert y_open[0, 0, 3] == 1
    with pytest.raises(ValueError):
        online_labels(seg[:, :2], boundary, torch.tensor([[1.0, 0.0]]), valid, walk, 0.3)


def test_label_refine_module_eq8() -> None:
    y_b = torch.tensor([[1, 2, 255, 0, 1]])
    background = torch.tensor([[True, False, True, False, False]])
    assert refine_labels(y_b, background).tolist() == [[0, 2, 255, 0, 1]]


# ---------------------------------------------------------------------------------- path max


def max_chain(b: torch.Tensor, offsets: torch.Tensor, pad_value: float = 1.0) -> torch.Tensor:
    """Reference: the plain torch.maximum chain over each path, differentiated by autograd."""
    h, w = b.shape[-2:]
    p = int(offsets.abs().max())
    padded = F.pad(b, (p, p, p, p), value=pad_value)
    outs = []
    for dy, dx in offsets.tolist():
        pts = _path_points(dy, dx)
        m = padded[..., p + pts[0][0]:p + pts[0][0] + h, p + pts[0][1]:p + pts[0][1] + w]
        for qy, qx in pts[1:]:
            m = torch.maximum(m, padded[..., p + qy:p + qy + h, p + qx:p + qx + w])
        outs.append(m)
    return torch.stack(outs, dim=1)


def test_path_max_gradient_matches_autograd_of_the_max_chain() -> None:
    torch.manual_seed(0)
    b = torch.rand(2, 9, 11, dtype=torch.float64)
    off = neighbor_offsets(5, half=True)
    lean, plain = b.clone().requires_grad_(), b.clone().requires_grad_()
    out_lean, out_plain = path_max(lean, off), max_chain(plain, off)
    assert torch.equal(out_lean, out_plain)
    weights = torch.rand_like(out_plain)
    (out_lean * weights).sum().backward()
    (out_plain * weights).sum().backward()
    assert torch.allclose(lean.grad, plain.grad)
    assert torch.autograd.gradcheck(lambda t: path_max(t, neighbor_offsets(2.5, half=True)),
                                    (torch.rand(1, 4, 5, dtype=torch.float64, requires_grad=True),))


# ---------------------------------------------------------------------------------- training


def _batch(b: int = 2, size: int = 32, k: int = 4) -> dict:
    torch.manual_seed(0)
    seed = torch.full((b, size, size), 255, dtype=torch.long)
    seed[:, :8] = 0
    seed[:, 12:24, 8:20] = 1
    label = torch.zeros(b, k)
    label[:, 0] = 1
    valid = torch.ones(b, size, size, dtype=torch.bool)
    valid[:, :, -4:] = False
    return {"image": torch.randn(b, 3, size, size), "label": label, "valid": valid, "seed_mask": seed,
            "index": torch.arange(b)}


@pytest.mark.parametrize("name,options", [("irn_contour", {}), ("sance", {}), ("sance", {"refine": None})])
def test_one_training_step(name: str, options: dict) -> None:
    m = build_method(name, 4, "small", None, backbone_init=None, **options)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    losses = m(_batch(), progress=0.5)
    keys = {"loss", "contour_seed"} | ({"seg_seed", "contour_online", "seg_online"} if name == "sance" else set())
    assert set(losses) == keys and all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    opt.step()
    # The contour loss stops at the (detached) backbone features: only SANCE's segmentation loss
    # trains the backbone; the baseline's stays as the CAM network left it.
    parts = ("contour", "seg", "backbone") if name == "sance" else ("contour",)
    for part in parts:
        moved = [not torch.equal(p, before[n]) for n, p in m.named_parameters() if n.startswith(part)]
        assert any(moved), f"{part} got no update"
    if name == "irn_contour":
        assert all(torch.equal(p, before[n]) for n, p in m.named_parameters() if n.startswith("backbone"))
    maps = m.maps(_batch()["image"])
    assert maps.shape == (2, 1 + (5 if name == "sance" else 0), 8, 8)


@pytest.mark.parametrize("detach", [True, False])
def test_contour_loss_reaches_the_backbone_only_when_not_detached(detach: bool) -> None:
    m = build_method("sance", 4, "small", None, backbone_init=None, detach_contour=detach)
    batch = _batch()
    _, logits = m._features(batch["image"])
    seed = at_size(batch["seed_mask"], logits.shape[-2:])
    contour_loss(m._affinity(torch.sigmoid(logits)), m.loss_offsets, seed).backward()
    reached = any(p.grad is not None and bool(p.grad.abs().sum() > 0)
                  for n, p in m.named_parameters() if n.startswith("backbone"))
    assert reached is not detach
    assert all(p.grad is not None for p in m.contour.parameters())


def test_baseline_backbone_keeps_its_statistics_in_training_mode() -> None:
    m = build_method("irn_contour", 4, "small", None, backbone_init=None).train()
    assert m.contour.training and not any(mod.training for mod in m.backbone.modules())
    m = build_method("irn_contour", 4, "small", None, backbone_init=None, detach_contour=False).train()
    assert m.backbone.training


def test_snapshots_and_online_start() -> None:
    m = build_method("sance", 4, "small", None, backbone_init=None, online_start=0.5, snapshot_indices=[1])
    assert "contour_online" not in m(_batch(), progress=0.2)
    assert "contour_online" in m(_batch(), progress=0.6)
    assert [s["index"] for s in m.snapshots] == [1] and m.snapshots[0]["online"].shape == (8, 8)
    with pytest.raises(ValueError):
        build_method("sance", 4, "small", None, refine="saliency")


class _CamRun:
    def best_threshold(self) -> float:
        return 0.45


def test_seed_thresholds_follow_the_cam_threshold_unless_given() -> None:
    m = build_method("irn_contour", 4, "small", None, backbone_init=None)
    assert m.seed_thresholds(_CamRun()) == (0.60, 0.15)
    m = build_method("irn_contour", 4, "small", None, backbone_init=None, seed_fg=0.30, seed_bg=0.05)
    assert m.seed_thresholds(_CamRun()) == (0.30, 0.05)


def test_pseudo_label_params_flip_and_validate() -> None:
    # The walk's sizes come from the scale policy (tests/test_scale.py); flips are averaged either way.
    baseline = PseudoLabelParams.for_source("cam", ScalePolicy(96), 8)
    assert baseline.contour_scales == (2.0,) and baseline.flip  # IRNet averages the edges of the image and its flip
    with pytest.raises(ValueError):
        PseudoLabelParams(stride=0)


def test_contour_methods_get_the_contour_scores() -> None:
    from wsss.analysis.contours import contour_scores
    from wsss.compare import contour_scorer

    assert contour_scorer("sance") is contour_scores and contour_scorer("irn_contour") is contour_scores
    assert contour_scorer("cam") is None


@pytest.mark.parametrize("name,source", [("sance", "seg"), ("irn_contour", "cam")])
def test_walk_inputs_equal_separate_passes_with_each_scale_run_once(name: str, source: str) -> None:
    from wsss.stages.propagation import tta_maps, walk_inputs

    torch.manual_seed(0)
    m = build_method(name, 4, "small", None, backbone_init=None).eval()
    images = torch.randn(2, 3, 32, 32)
    params = PseudoLabelParams.for_source(source, ScalePolicy(image_size=96), tta=True)
    assert params.contour_scales == (1.5, 2.0) and params.scales == (1.0, 1.5, 2.0)
    sizes = []
    maps = m.maps
    m.maps = lambda x: sizes.append(x.shape[-1]) or maps(x)  # type: ignore[method-assign]
    contour, scores = walk_inputs(m, images, params)
    # one pass per scale (a flip is in the same batch): none twice, none for a map that is not read
    assert sorted(sizes) == ([32, 48, 64] if source == "seg" else [48, 64])
    separate = tta_maps(m, images, params.contour_scales, True, params.stride)[:, :1]
    torch.testing.assert_close(contour, separate, rtol=0, atol=0)
    if source == "seg":
        torch.testing.assert_close(scores, tta_maps(m, images, params.scales, True, params.stride)[:, 2:], rtol=0,
                                   atol=0)
    else:
        assert scores is None


@pytest.mark.slow
def test_tiny_end_to_end(tiny_root) -> None:
    from wsss.analysis.contours import contour_scores
    from wsss.experiment import Experiment, ExperimentConfig
    from wsss.stages.propagation import propagated_pseudo_labels

    # The session's run folder: the tiny CAM run (stage 1) is the one the notebook tests train.
    cfg = ExperimentConfig.for_preset("tiny", method="sance", data_root=str(tiny_root), max_steps=2)
    exp = Experiment(cfg, progress=False)
    exp.train()
    params = PseudoLabelParams.for_source("seg", scales=(1.0,), flip=False)
    scores = exp.evaluate_masks(propagated_pseudo_labels(exp, "val", params), "val")
    assert 0 <= scores["miou"] <= 1
    c = contour_scores(exp)
    assert 0 <= c["ods_f"] <= 1 and c["share_inside"] + c["share_boundary"] + c["share_background"] == pytest.approx(1)
