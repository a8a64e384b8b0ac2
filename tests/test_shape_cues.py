"""Shape cues: SCM self-information, SPR, pseudo masks, losses and one training step on tiny data."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss.analysis.shape_cues import spr_alpha_sweep
from wsss.io import IGNORE_INDEX
from wsss.methods.base import build_method
from wsss.methods.shape_cues import (
    ShapeCueModule,
    balanced_pixel_loss,
    complete_masks,
    decoder_masks,
    drop_probability,
    focal_mask_penalty,
    manhattan_offsets,
    region_loss,
    self_information,
)
from wsss.refine.spr import propagate, pseudo_mask, spr, spr_affinity


# ---------------------------------------------------------------------------------- SCM


def test_manhattan_offsets_fill_the_ball() -> None:
    off = manhattan_offsets(2)
    assert len(off) == 12  # 2 r (r + 1) points at distance 1..r
    assert off.abs().sum(dim=1).max() == 2 and (off.abs().sum(dim=1) > 0).all()


def _step_edge() -> torch.Tensor:
    """(1, 2, 16, 32): flat left half, flat right half of another value: one vertical edge at x = 16."""
    x = torch.zeros(1, 2, 16, 32)
    x[:, :, :, 16:] = 1.0
    return x


def test_self_information_is_low_on_flat_texture_and_high_on_an_edge() -> None:
    info = self_information(_step_edge(), manhattan_offsets(7), bandwidth=1.0)[0]
    flat = -math.log(1 / math.sqrt(2 * math.pi))  # every neighbour patch identical: density = 1 / sqrt(2 pi)
    assert info[8, 3].item() == pytest.approx(flat, abs=1e-5)
    assert info[8, 28].item() == pytest.approx(flat, abs=1e-5)
    assert info[8, 15].item() > flat + 0.3 and info[8, 16].item() > flat + 0.3
    # The drop distribution favours the flat region.
    prob = drop_probability(info[None], tau=0.5)[0]
    assert prob.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert prob[8, 3] > 2 * prob[8, 15]


def test_scm_training_drops_and_evaluation_is_deterministic() -> None:
    torch.manual_seed(0)
    scm = ShapeCueModule(2, 4, radius=7, samples=9, drop_rate=0.5)
    x = _step_edge()
    keep = scm.keep_mask(x)
    assert set(keep.unique().tolist()) <= {0.0, 1.0}
    assert 0 < (keep == 0).sum() <= round(0.5 * 16 * 32)
    scm.eval()
    a, b = scm.keep_mask(x), scm.keep_mask(x)
    assert torch.equal(a, b) and ((a > 0) & (a < 1)).all()
    assert a[0, 0, 8, 15] > a[0, 0, 8, 3]  # edges survive more often


# ---------------------------------------------------------------------------------- SPR


def test_spr_with_alpha_one_is_pure_colour_refinement() -> None:
    torch.manual_seed(0)
    image = torch.rand(2, 3, 10, 12)
    p1, p2 = torch.rand(2, 3, 10, 12), torch.rand(2, 3, 10, 12)
    a1, a2 = spr_affinity(image, p1, alpha=1.0), spr_affinity(image, p2, alpha=1.0)
    assert torch.allclose(a1, a2)  # the scores play no part
    assert torch.allclose(a1.sum(dim=2), torch.ones(2, 1, 10, 12))
    # with semantics the affinity depends on the scores, per class
    s1 = spr_affinity(image, p1, alpha=0.8)
    assert s1.shape == (2, 3, 48, 10, 12) and not torch.allclose(s1[:, :1], a1)


def test_spr_on_a_flat_image_averages_the_eight_neighbours() -> None:
    image = torch.ones(1, 3, 7, 7)
    probs = torch.zeros(1, 1, 7, 7)
    probs[0, 0, 3, 3] = 1.0
    out = spr(probs, image, alpha=1.0, dilations=(1,), iterations=1)[0, 0]
    expected = torch.zeros(7, 7)
    expected[2:5, 2:5] = 1 / 8
    expected[3, 3] = 0.0  # the centre is not its own neighbour
    assert torch.allclose(out, expected, atol=1e-6)


def test_spr_does_not_cross_a_colour_edge() -> None:
    image = torch.zeros(1, 3, 8, 8)
    image[..., 4:] = 1.0
    probs = torch.zeros(1, 1, 8, 8)
    probs[..., :4] = 1.0
    steps = propagate(probs, spr_affinity(image, probs, alpha=1.0, dilations=(1, 2)), (1, 2), iterations=10)
    assert steps[-1][..., 4:].max() < 1e-3 and steps[-1][..., :4].min() > 0.99


def test_pseudo_mask_ignores_unsure_and_conflicting_pixels() -> None:
    refined = torch.tensor([[[[1.0, 0.5, 0.1, 0.7]],       # background
                             [[0.0, 0.9, 0.1, 0.8]]]])     # class
    labels = pseudo_mask(refined, cutoff=0.6, floor=0.2, background_cutoff=0.6)[0, 0]
    # thresholds: bg 0.6, class 0.54 -> pixel 0 bg; 1 class; 2 nobody (unsure); 3 both (conflict)
    assert labels.tolist() == [0, 1, IGNORE_INDEX, IGNORE_INDEX]
    low = pseudo_mask(refined * 0.25, cutoff=0.6, floor=0.2, background_cutoff=0.6)[0, 0]  # the floor rules
    assert low.tolist() == [0, 1, IGNORE_INDEX, IGNORE_INDEX]
    assert pseudo_mask(refined, torch.tensor([[[True, False, True, True]]]))[0, 0, 1] == IGNORE_INDEX
    # SSSS's background cut is 0.7 of its peak: pixel 3's background (0.7) no longer claims it
    assert pseudo_mask(refined)[0, 0].tolist() == [0, 1, IGNORE_INDEX, 1]


def test_a_pixel_claimed_by_one_channel_gets_that_channel_not_the_argmax() -> None:
    """SSSS's rule: each channel is cut relative to its own peak, so a weak object's pixel can pass its
    class's cut while the background's raw score there is higher but below the background's cut. It
    belongs to the object (the argmax would give it to the background)."""
    refined = torch.tensor([[[[1.0, 0.5]],      # background: cut 0.7 -> only pixel 0
                             [[0.0, 0.35]]]])   # a weak class, peak 0.35: cut max(0.21, 0.2) -> pixel 1
    assert refined[0, :, 0, 1].argmax() == 0
    assert pseudo_mask(refined)[0, 0].tolist() == [0, 1]


# ---------------------------------------------------------------------------------- losses


def _log(p: list[list[float]]) -> torch.Tensor:
    """Two pixels side by side: [[p_a], [p_b]] -> (1, C, 1, 2) log-probabilities."""
    return torch.tensor(p).t().log().view(1, -1, 1, 2)


def test_region_loss_hand_made() -> None:
    a, b = [0.9, 0.1], [0.2, 0.8]
    kl_ba = 0.2 * math.log(0.2 / 0.9) + 0.8 * math.log(0.8 / 0.1)  # KL(m_b || m_a)
    kl_ab = 0.9 * math.log(0.9 / 0.2) + 0.1 * math.log(0.1 / 0.8)
    same = region_loss(_log([a, b]), torch.tensor([[[0, 0]]]), radius=1, margin=3.0)
    assert same.item() == pytest.approx((kl_ba + kl_ab) / 2, rel=1e-5)
    differ = region_loss(_log([a, b]), torch.tensor([[[0, 1]]]), radius=1, margin=3.0)
    assert differ.item() == pytest.approx((max(0, 3 - kl_ba) + max(0, 3 - kl_ab)) / 2, rel=1e-5)
    # an ignored neighbour leaves the other pixel without pairs: nothing to average
    assert region_loss(_log([a, b]), torch.tensor([[[0, IGNORE_INDEX]]]), radius=1).item() == 0.0


def test_balanced_pixel_loss_weighs_classes_equally() -> None:
    probs = torch.tensor([[0.8, 0.6, 0.5, 0.3], [0.2, 0.4, 0.5, 0.7]]).view(1, 2, 1, 4)
    labels = torch.tensor([[[0, 0, 0, 1]]])
    expected = (-(math.log(0.8) + math.log(0.6) + math.log(0.5)) / 3 - math.log(0.7)) / 2
    assert balanced_pixel_loss(probs.log(), labels).item() == pytest.approx(expected, rel=1e-6)


def test_only_masks_with_every_present_class_are_complete() -> None:
    labels = torch.tensor([[[0, 2, IGNORE_INDEX]], [[0, 0, IGNORE_INDEX]], [[2, 2, 1]]])  # (3, 1, 3)
    label = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])  # every image shows class 1 (label 2)
    # image 0 has background and class 1; image 1 lost the class; image 2 lost the background
    assert complete_masks(labels, label).tolist() == [True, False, False]


# ---------------------------------------------------------------------------------- training step


def test_one_training_step_on_tiny(tiny_root: Path) -> None:
    from wsss.data.transforms import train_transform
    from wsss.data.voc import VOCDataset
    from wsss.train import collate

    ds = VOCDataset(tiny_root, "train", transform=train_transform(64, (0.7, 1.3)), with_mask=False)
    batch = collate([ds[i] for i in range(4)])
    torch.manual_seed(0)
    model = build_method("shape_cues", ds.num_classes, "small", backbone_init=None)
    model.train()
    scores = model.scores(batch["image"])
    assert scores.shape == (4, ds.num_classes + 1, 16, 16)
    assert torch.equal(scores[:, 0], torch.ones(4, 16, 16))
    losses = model(batch, progress=0.5)
    assert set(losses) == {"loss", "cls", "pixel", "region", "complete"} and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    for name, module in (("backbone", model.backbone), ("scm", model.scm), ("aspp", model.aspp),
                         ("decoder", model.decoder), ("classifier", model.classifier)):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), name
    assert sum(float(p.grad.abs().sum()) for p in model.scm.parameters()) > 0
    # before mask_start only the classification loss is trained
    early = model(batch, progress=0.0)
    assert early["pixel"] == 0 and early["region"] == 0 and early["loss"] == early["cls"]
    model.eval()
    maps = model.class_maps(batch["image"])
    assert maps.shape == (4, ds.num_classes, 16, 16) and (maps >= 0).all()
    masks = decoder_masks(model, batch["image"], batch["label"], scales=(1.0, 0.5), flip=True)
    allowed = [{0, *(np.flatnonzero(lab.numpy()) + 1)} for lab in batch["label"]]
    assert masks.shape == (4, 64, 64) and all(set(np.unique(m)) <= a for m, a in zip(masks, allowed))


def test_class_maps_and_decoder_masks_come_from_one_pass_and_equal_two(tiny_root: Path, tmp_path: Path) -> None:
    """The class-map stage writes the decoder masks too; both equal what separate passes give."""
    from types import SimpleNamespace

    from wsss.data.transforms import eval_transform
    from wsss.data.voc import VOCDataset
    from wsss.inference import infer_class_maps, load_cam, size_grouped_batches
    from wsss.io import load_label_png

    ds = VOCDataset(tiny_root, "val", transform=eval_transform(), with_mask=False)
    torch.manual_seed(0)
    model = build_method("shape_cues", ds.num_classes, "small", backbone_init=None).eval()
    calls = []
    model.probabilities = lambda x, f=model.probabilities: calls.append(len(x)) or f(x)  # type: ignore[method-assign]
    run = SimpleNamespace(trained_method=lambda: model, inference_method=lambda: model, dataset=lambda split: ds,
                          tta_scales=lambda: (1.0, 1.5),
                          config=SimpleNamespace(flip=True, train=SimpleNamespace(amp=False, num_workers=0)),
                          device=torch.device("cpu"), progress=False, class_maps=lambda split: tmp_path / "joint")
    (tmp_path / "joint").mkdir()
    model.write_class_maps(run, "val", tmp_path / "joint")
    assert sum(calls) == 2 * 2 * len(ds)  # two scales, each with its flip, once per image
    infer_class_maps(model.class_maps, ds, tmp_path / "alone", scales=(1.0, 1.5), flip=True, progress=False)
    masks = model.pseudo_labels(run, "val")
    for group in size_grouped_batches(ds):
        images, labels = torch.stack([s["image"] for s in group]), torch.stack([s["label"] for s in group])
        for s, expected in zip(group, decoder_masks(model, images, labels, (1.0, 1.5), flip=True)):
            np.testing.assert_array_equal(load_label_png(masks / f"{s['id']}.png"), expected)
            (k1, c1), (k2, c2) = (load_cam(tmp_path / d / f"{s['id']}.npz") for d in ("joint", "alone"))
            np.testing.assert_array_equal(k1, k2)
            np.testing.assert_allclose(c1, c2, atol=1e-3)  # float16 files


def test_ablation_switches() -> None:
    base = build_method("shape_cues", 3, "small", scm=False, spr=False, backbone_init=None)
    assert base.scm is None and base.alpha == 1.0
    full = build_method("shape_cues", 3, "small", backbone_init=None)
    assert full.scm is not None and full.alpha == 0.8
    with pytest.raises(ValueError):
        build_method("shape_cues", 3, "small", backbone_init="imagenet")


def test_focal_mask_penalty_punishes_empty_masks_and_spares_full_ones() -> None:
    probs = torch.zeros(1, 3, 4, 4)
    probs[0, 1] = 1.0  # class 1 covers the image, class 2 is empty, class 0 covers half
    probs[0, 0, :2] = 1.0
    pen = focal_mask_penalty(probs, power=3.0, lam=0.01)[0]
    assert pen[1] == pytest.approx(0.0, abs=1e-6)
    assert pen[2] == pytest.approx(math.log(0.01))
    assert pen[0] == pytest.approx(0.5 ** 3 * math.log(0.51))
    valid = torch.zeros(1, 4, 4, dtype=torch.bool)
    valid[0, :2] = True  # over the valid half, class 0 is full
    assert focal_mask_penalty(probs, valid)[0, 0] == pytest.approx(0.0, abs=1e-6)


def test_learning_rates_keep_the_papers_ratio() -> None:
    m = build_method("shape_cues", 3, "small", backbone_init=None)
    assert [g["lr_mult"] for g in m.param_groups()] == [0.1, 1.0]
    m = build_method("shape_cues", 3, "small", backbone_init=None, backbone_lr_mult=1.0, decoder_lr_mult=None)
    assert [g["lr_mult"] for g in m.param_groups()] == [1.0, None]


def test_spr_semantic_term_on_decoder_scores_leaves_background_to_colour() -> None:
    """Eq. 5 compares class scores: the constant background score gives the background channel the
    colour kernel alone (at weight alpha), while object channels follow their score differences."""
    torch.manual_seed(0)
    image = torch.rand(1, 3, 8, 8)
    scores = torch.cat([torch.ones(1, 1, 8, 8), 3 * torch.randn(1, 2, 8, 8)], dim=1)
    a = spr_affinity(image, scores, alpha=0.8, dilations=(1, 2))
    colour = spr_affinity(image, scores, alpha=1.0, dilations=(1, 2))
    tempered = (0.8 * colour.log()).softmax(dim=2)  # the colour kernel at weight 0.8
    assert torch.allclose(a[:, :1], tempered, atol=1e-5)
    assert colour.shape[1] == 1 and not torch.allclose(a[:, 1:], tempered.expand_as(a[:, 1:]), atol=1e-3)
    # the method refines probabilities but compares scores unless told otherwise
    m = build_method("shape_cues", 2, "small", backbone_init=None)
    assert torch.equal(m.semantic_maps(scores, scores.softmax(dim=1)), scores)
    probs = build_method("shape_cues", 2, "small", backbone_init=None,
                         spr_semantics="probs").semantic_maps(scores, scores.softmax(dim=1))
    assert torch.allclose(probs, scores.softmax(dim=1))
    with pytest.raises(ValueError):
        build_method("shape_cues", 2, "small", backbone_init=None, spr_semantics="logits")


def test_alpha_sweep_colour_pulls_an_overshoot_back_and_semantics_keep_it() -> None:
    """A decoder whose class reaches 2 cells past a colour edge: colour-only refinement (alpha = 1)
    moves those cells back to the background, the semantic term (alpha = 0.8) anchors them to the
    prediction, where they end up unsure rather than corrected."""
    model = build_method("shape_cues", 1, "small", scm=False, backbone_init=None).eval()

    def overshooting_scores(images: torch.Tensor) -> torch.Tensor:
        s = torch.full((images.shape[0], 2, 16, 16), -3.0)
        s[:, 0] = 1.0
        s[:, 1, :, :10] = 3.0
        return s

    model.scores = overshooting_scores
    image = torch.full((3, 64, 64), -1.0)
    image[:, :, :32] = 1.0
    mask = torch.zeros(64, 64, dtype=torch.long)
    mask[:, :32] = 1
    rows = spr_alpha_sweep(model, [{"image": image, "label": torch.ones(1), "mask": mask}] * 3, alphas=(1.0, 0.8),
                           batch_size=2)
    colour, semantic = rows
    assert colour["alpha"] == 1.0 and colour["miou"] == 1.0 and colour["labelled"] == 1.0
    assert colour["changed"] == pytest.approx(2 / 16)
    assert semantic["changed"] == 0.0 and semantic["labelled"] == pytest.approx(14 / 16)
