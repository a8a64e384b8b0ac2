"""RCM + MAM: the EMA SupportNet, class region masks, prototypes and their memory, the contrastive
loss and MAM's distances and targets on hand-made inputs, and resume / DDP equivalence."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from wsss.methods.base import build_method
from wsss.methods.rcm_mam import (IGNORE, RCMMAM, batch_prototypes, class_region_masks, drop_unlocalized,
                                  mam_distances, mam_loss, mam_targets, max_normalize, regional_contrastive_loss)
from wsss.train import MODEL


def _small(**options) -> RCMMAM:
    torch.manual_seed(0)
    return build_method("rcm_mam", 8, "small", backbone_options={"widths": (8, 8, 16, 16)}, feature_dim=16,
                        **options)


def _batch(b: int = 4, size: int = 32, k: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    label = torch.zeros(b, k)
    label[torch.arange(b), torch.arange(b) % k] = 1.0
    valid = torch.ones(b, size, size, dtype=torch.bool)
    valid[0, :, size // 2:] = False  # crop padding on one image
    return {"image": torch.randn(b, 3, size, size, generator=g), "label": label, "valid": valid}


# ---------------------------------------------------------------------- SupportNet


def test_support_net_gets_no_gradient_and_moves_by_ema_only() -> None:
    model = _small(ema_warmup=False, ema_decay=0.9)
    support = list(model.support.parameters())
    assert support and all(not p.requires_grad for p in support)
    optimized = {id(p) for g in model.param_groups() for p in g["params"]}
    assert not optimized & {id(p) for p in support}, "SupportNet parameters reached the optimizer"
    before = [p.detach().clone() for p in support]
    opt = torch.optim.SGD([p for g in model.param_groups() for p in g["params"]], lr=0.5)
    losses = model(_batch(), progress=0.9)  # MAM on: every loss term runs
    assert {"cls", "rcm", "mam"} <= set(losses)
    opt.zero_grad()
    losses["loss"].backward()
    assert all(p.grad is None for p in support)
    opt.step()
    for p, q in zip(support, before):
        torch.testing.assert_close(p, q, rtol=0, atol=0)  # gradients and the optimizer left it alone
    main = [p.detach().clone() for p in model.main_parts().parameters()]
    assert any(not torch.equal(p, q) for p, q in zip(main, before)), "the MainNet did not train"
    model.after_optimizer_step(0.9)
    for p, q, f in zip(support, before, main):
        torch.testing.assert_close(p, 0.9 * q + 0.1 * f)  # theta_G <- alpha theta_G + (1 - alpha) theta_F


def test_ema_warmup_averages_the_main_net_before_reaching_alpha() -> None:
    model = _small(ema_decay=0.997)
    assert model.ema_momentum() == 0.0  # step 0: the SupportNet becomes a copy of the MainNet
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    model.after_optimizer_step(0.0)
    torch.testing.assert_close(model.support[2].weight, model.classifier.weight)
    model.ema_steps.fill_(3)
    assert model.ema_momentum() == pytest.approx(0.75)  # 1 - 1/(t + 1): the running mean of 4 weights
    model.ema_steps.fill_(10_000)
    assert model.ema_momentum() == pytest.approx(0.997)
    assert _small(ema_warmup=False).ema_momentum() == pytest.approx(0.997)


def test_support_net_and_prototypes_are_in_the_state_dict() -> None:
    model = _small()
    model(_batch(), progress=0.0)
    state = model.state_dict()
    assert any(k.startswith("support.0.") for k in state) and "support.1.weight" in state
    assert {"prototypes", "prototype_seen", "ema_steps"} <= set(state)
    fresh = _small()
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.prototypes, model.prototypes)
    assert torch.equal(fresh.prototype_seen, model.prototype_seen)
    model.train()
    assert not model.support.training, "the SupportNet must keep eval-mode batch norm"


# ---------------------------------------------------------------------- RCM


def test_class_region_masks_on_hand_made_cams() -> None:
    cams = torch.zeros(1, 3, 1, 5)
    cams[0, 0] = torch.tensor([0.9, 0.1, 0.5, 0.0, 0.9])
    cams[0, 1] = torch.tensor([0.3, 0.15, 0.6, 0.0, 0.9])
    cams[0, 2] = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0])  # absent class: never wins
    label = torch.tensor([[1.0, 1.0, 0.0]])
    valid = torch.tensor([[[True, True, True, True, False]]])
    # class 0 wins; nothing above 0.20 -> background; class 1 wins; background; padding.
    assert class_region_masks(cams, label, 0.20, valid).tolist() == [[[1, 0, 2, 0, IGNORE]]]
    assert class_region_masks(cams, label, 0.55).tolist() == [[[1, 0, 2, 0, 1]]]


def test_background_of_images_with_an_unlocalized_present_class_is_ignored() -> None:
    masks = torch.tensor([[[0, 1, 2]], [[0, 1, 0]], [[0, 0, IGNORE]]])
    label = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    # Image 1 has no region of class 1: its background may hide that object; its class-0 region stays.
    assert drop_unlocalized(masks, label).tolist() == [[[0, 1, 2]], [[IGNORE, 1, IGNORE]], [[0, 0, IGNORE]]]


def test_batch_prototypes_average_per_image_means_over_the_batch() -> None:
    # Image 0: background at pixels 0, class 1 (region 2) at pixels 1-2; image 1: class 1 at pixel 0.
    features = torch.tensor([[[[1.0, 0.0, 2.0]], [[0.0, 2.0, 0.0]]],
                             [[[0.0, 5.0, 5.0]], [[4.0, 5.0, 5.0]]]])
    masks = torch.tensor([[[0, 2, 2]], [[2, IGNORE, IGNORE]]])
    protos, found = batch_prototypes(features, masks, 4)
    assert found.tolist() == [True, False, True, False]
    torch.testing.assert_close(protos[0], torch.tensor([1.0, 0.0]))
    # Per-image means (1, 1) and (0, 4), averaged: (0.5, 2.5), then L2-normalized.
    torch.testing.assert_close(protos[2], torch.tensor([0.5, 2.5]) / math.hypot(0.5, 2.5))


def test_prototypes_of_absent_classes_persist() -> None:
    model = _small()
    d = model.prototypes.shape[1]
    first = torch.zeros(9, d)
    first[:, 0] = 1.0
    model._update_prototypes(first, torch.tensor([True, True, True] + [False] * 6))
    second = torch.zeros(9, d)
    second[:, 1] = 1.0
    model._update_prototypes(second, torch.tensor([True, False, False, True] + [False] * 5))
    assert model.prototype_seen.tolist() == [True, True, True, True] + [False] * 5
    torch.testing.assert_close(model.prototypes[[1, 2]], first[[1, 2]])  # absent now: kept
    torch.testing.assert_close(model.prototypes[[0, 3]], second[[0, 3]])  # present: replaced
    assert not model.prototypes[4:].any()


def test_contrastive_loss_on_a_hand_made_case() -> None:
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    features = torch.tensor([[[[3.0, 0.0, 1.0]], [[0.0, 1.0, 1.0]]]])  # pixels (1,0), (0,1), (1,1)/sqrt2
    masks = torch.tensor([[[0, 0, IGNORE]]])
    t = 0.5
    # Pixel 0 matches prototype 0: logits (2, 0, -2); pixel 1 is orthogonal to it: logits (0, 2, 0).
    nll0 = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2)))
    nll1 = -math.log(1 / (1 + math.exp(2) + 1))
    available = torch.tensor([True, True, True])
    loss = regional_contrastive_loss(features, masks, prototypes, available, t)
    assert loss.item() == pytest.approx((nll0 + nll1) / 2, rel=1e-5)
    # A prototype never seen drops out of the denominator.
    available = torch.tensor([True, True, False])
    nll0 = -math.log(math.exp(2) / (math.exp(2) + 1))
    nll1 = -math.log(1 / (1 + math.exp(2)))
    loss = regional_contrastive_loss(features, masks, prototypes, available, t)
    assert loss.item() == pytest.approx((nll0 + nll1) / 2, rel=1e-5)


# ---------------------------------------------------------------------- MAM


def test_mam_distances_and_targets_on_hand_made_cams() -> None:
    # One image, one class, scales (s, m, l), two pixels.
    main = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]).reshape(1, 3, 1, 1, 2)
    support = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).reshape(1, 3, 1, 1, 2)
    xi = mam_distances(main, support)[0, 0]
    c = 1 / math.sqrt(2)
    expected = torch.tensor([[1.0, 1.0, 2.0], [2 - c, 2 - c, 2 - c], [2.0, 2.0, 1.0]])
    torch.testing.assert_close(xi, expected)
    target = mam_targets(support, xi[None, None])[0, :, 0, 0]
    # target_i = (xi_is A_s + xi_im A_m + xi_il A_l) / 3 with A_s = A_m = (1, 0), A_l = (0, 1).
    torch.testing.assert_close(target, torch.tensor([[2 / 3, 2 / 3], [2 * (2 - c) / 3, (2 - c) / 3],
                                                     [4 / 3, 1 / 3]]))
    # L1 to the targets, summed over scales: |1 - 2/3| + |0 - 2/3| + ... over 2 pixels.
    err = (target - main[0, :, 0, 0]).abs().sum() / 2
    loss = mam_loss(main, support, torch.ones(1, 1))
    assert loss.item() == pytest.approx(err.item(), rel=1e-5)
    assert mam_loss(main, support, torch.zeros(1, 1)).item() == 0.0  # absent classes: no loss


def test_mam_skips_classes_the_support_net_does_not_see() -> None:
    model = _small(rcm=False, mam_start=0.0)
    with torch.no_grad():
        model.support[2].weight.fill_(-1.0)  # all SupportNet CAMs zero: nothing to learn from
        model.support[1].weight.abs_()
    batch = _batch()
    batch["image"] = batch["image"].abs()  # non-negative features everywhere
    assert model(batch, 0.5)["mam"].item() == 0.0


def test_mam_target_carries_no_gradient_and_max_normalize() -> None:
    main = torch.rand(2, 3, 2, 4, 4, requires_grad=True)
    support = torch.rand(2, 3, 2, 4, 4)
    mam_loss(main, support, torch.ones(2, 2)).backward()
    # A constant target leaves the L1 gradient a sign per element, times 1 / (16 pixels x 2 images).
    assert torch.all(main.grad.abs().isclose(torch.tensor(1 / 32)) | (main.grad == 0))
    maps = torch.tensor([[[[0.0, 2.0], [1.0, 4.0]]]])
    torch.testing.assert_close(max_normalize(maps, eps=0.0), maps / 4)


def test_switches_select_the_losses() -> None:
    batch = _batch()
    assert set(_small(rcm=False)(batch, 0.9)) == {"loss", "cls", "mam"}
    assert set(_small(mam=False)(batch, 0.9)) == {"loss", "cls", "rcm", "rcm_kept"}
    warm = _small(rcm=False)(batch, 0.1)  # MAM's lambda is 0 before `mam_start`
    assert warm["mam"].item() == 0.0 and warm["loss"].item() == pytest.approx(warm["cls"].item())


# ---------------------------------------------------------------------- training loop

SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from wsss.data.transforms import train_transform
    from wsss.data.voc import VOCDataset
    from wsss.methods.base import build_method
    from wsss.train import TrainConfig, train

    root, run_dir, max_steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.manual_seed(0)
    torch.set_num_threads(1)
    method = build_method("rcm_mam", 8, "small", backbone_options={"norm": "gn", "widths": (8, 8, 16, 16)},
                          feature_dim=16, mam_start=0.25)
    ds = VOCDataset(root, "train", transform=train_transform(32), with_mask=False, cache=True)
    cfg = TrainConfig(max_steps=4, batch_size=8, lr=2e-3, ckpt_every=2, progress=False)
    if max_steps < 4:  # Ctrl-C at the start of step `max_steps + 1`: the loop checkpoints, then stops
        forward = method.forward
        def stop(*args, **kwargs):
            if int(method.ema_steps) == max_steps:
                raise KeyboardInterrupt
            return forward(*args, **kwargs)
        method.forward = stop
    try:
        train(method, ds, cfg, run_dir)
    except KeyboardInterrupt:
        pass
""")


def _train(script: Path, root: Path, run_dir: Path, max_steps: int = 4, torchrun: bool = False) -> None:
    cmd = [sys.executable, str(script)]
    if torchrun:
        cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2", str(script)]
    out = subprocess.run([*cmd, str(root), str(run_dir), str(max_steps)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]


def _assert_same_model(a_dir: Path, b_dir: Path) -> None:
    a = torch.load(a_dir / MODEL, weights_only=True)
    b = torch.load(b_dir / MODEL, weights_only=True)
    assert any(k.startswith("support.") for k in b)
    for k in b:
        # Float-level only: a split batch sums in another order, and Adam's normalization magnifies
        # that on near-zero gradients (~2e-5 after 4 steps); prototypes, unit vectors from one batch,
        # move by ~1e-4. Rank-local prototypes or per-rank pixel means would differ by far more.
        tol = 1e-3 if k == "prototypes" else 1e-4
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=tol, msg=lambda m: f"{k}: {m}")


@pytest.mark.slow
def test_resume_and_ddp_reproduce_the_support_net_and_prototypes(tiny_root: Path, tmp_path: Path) -> None:
    script = tmp_path / "train_rcm_mam.py"
    script.write_text(SCRIPT)
    _train(script, tiny_root, tmp_path / "reference")
    _train(script, tiny_root, tmp_path / "resumed", max_steps=2)  # interrupted after 2 of 4 steps
    assert not (tmp_path / "resumed" / MODEL).exists()
    _train(script, tiny_root, tmp_path / "resumed")
    _assert_same_model(tmp_path / "resumed", tmp_path / "reference")
    _train(script, tiny_root, tmp_path / "ddp", torchrun=True)  # prototypes averaged over both processes
    _assert_same_model(tmp_path / "ddp", tmp_path / "reference")


def test_quick_recipe_is_shortened_for_rcm_mam_only_and_explicit_epochs_win() -> None:
    from wsss.experiment import ExperimentConfig

    assert ExperimentConfig.for_preset("quick", method="rcm_mam").train.epochs == 3
    assert ExperimentConfig.for_preset("quick", method="cam").train.epochs == 8
    assert ExperimentConfig.for_preset("quick", method="rcm_mam", epochs=5).train.epochs == 5


@pytest.mark.slow
def test_pseudo_labels_are_the_random_walk_of_its_own_class_maps(tiny_root: Path) -> None:
    """Sec. 4.4: RCM + MAM's pseudo labels propagate its class maps along the contours of a contour
    run seeded by those maps, not by the CAM baseline's."""
    from dataclasses import asdict

    from wsss.experiment import Experiment, ExperimentConfig
    from wsss.train import RESULT_NEUTRAL_KEYS

    # The tiny recipe's run and its contour run: the ones notebook 05's test trains (the suite shares runs).
    cfg = ExperimentConfig.for_preset("tiny", method="rcm_mam")
    exp = Experiment(cfg, progress=False)
    exp.train()
    masks = exp.final_pseudo_masks("val")
    own = {k: v for k, v in asdict(cfg.train).items() if k not in RESULT_NEUTRAL_KEYS}
    walk = exp.related_run("irn_contour", cam_method="rcm_mam", cam_options=own)
    assert walk.method.seed_run(walk).run_dir == exp.run_dir  # seeded by this very run
    assert masks.is_relative_to(walk.run_dir) and len(list(masks.glob("*.png"))) == len(exp.dataset("val"))
    assert 0 <= exp.evaluate_masks(masks, "val")["miou"] <= 1
    plain = Experiment(ExperimentConfig.for_preset("tiny", method="rcm_mam", method_options={"random_walk": False}),
                       progress=False)
    assert plain.method.pseudo_labels(plain, "val") is None  # the thresholded class maps
