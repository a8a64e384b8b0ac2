"""The final segmentation stage: training on label folders, inference, evaluation, caching, models."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from wsss.evaluation import evaluate_label_dir
from wsss.experiment import Experiment, ExperimentConfig
from wsss.io import load_label_png, save_label_png
from wsss.stages.final import FinalStage, SegConfig, SegmentationNet, threshold_of_masks

FAST = dict(max_steps=4, batch_size=4, lr=5e-3, ckpt_every=1000)


def _experiment(tiny_root: Path, tmp_path: Path) -> Experiment:
    return Experiment(ExperimentConfig.for_preset("tiny", method="cam", data_root=str(tiny_root),
                                                  run_root=str(tmp_path / "runs")), progress=False)


def _constant_masks(exp: Experiment, folder: Path, value: int) -> Path:
    """Pseudo masks that call every pixel `value`, with a 255 (ignored) band on the left."""
    ds = exp.dataset("train")
    for i, sample_id in enumerate(ds.ids):
        h, w = ds.load(i)["image"].shape[:2]
        mask = np.full((h, w), value, np.uint8)
        mask[:, :4] = 255
        save_label_png(folder / f"{sample_id}.png", mask)
    return folder


def test_loss_ignores_255() -> None:
    torch.manual_seed(0)
    net = SegmentationNet(3).eval()
    images = torch.randn(2, 3, 32, 32)
    target = torch.full((2, 32, 32), 255, dtype=torch.long)
    target[0, 5, 7], target[1, 20, 3] = 2, 0
    loss = net({"image": images, "target_mask": target})["loss"]
    logp = F.log_softmax(net.logits(images), dim=1)
    expected = -(logp[0, 2, 5, 7] + logp[1, 0, 20, 3]) / 2
    assert torch.allclose(loss, expected, atol=1e-5)
    with pytest.raises(KeyError, match="target_mask"):
        net({"image": images})


def test_trains_on_pseudo_masks_and_predicts_them(tiny_root: Path, tmp_path: Path) -> None:
    """Masks that say 'class 2 everywhere' must come out as class 2 everywhere, scored exactly as
    a hand-written all-2 folder is scored."""
    exp = _experiment(tiny_root, tmp_path)
    masks = _constant_masks(exp, tmp_path / "pseudo_thr0.25", 2)
    config = SegConfig.for_preset("tiny", crop_size=32, scales=(1.0,), **FAST)
    stage = FinalStage.from_experiment(exp, config, masks=masks, progress=False)
    result = stage.train()
    assert result.steps == FAST["max_steps"]
    pred_dir = stage.predict("val")
    val = exp.dataset("val")
    preds = [load_label_png(pred_dir / f"{i}.png") for i in val.ids]
    assert all(p.shape == val.load(0)["image"].shape[:2] for p in preds)
    assert np.mean([np.mean(p == 2) for p in preds]) > 0.95

    reference = tmp_path / "all2"
    for i, p in zip(val.ids, preds):
        save_label_png(reference / f"{i}.png", p)
    scores = stage.evaluate("val")
    assert scores["miou"] == pytest.approx(evaluate_label_dir(reference, val, progress=False)["miou"])
    # provenance of a final-stage row
    assert scores["split"] == "val" and scores["crf"] is False and scores["seed"] == 0
    assert scores["bg_threshold"] == 0.25 and scores["scales"] == [1.0]
    assert scores["config_hash"] == stage.config_hash() and Path(scores["config_file"]).is_file()
    assert json.loads(Path(scores["config_file"]).read_text())["source"]["masks"] == str(masks)
    assert scores["code_version"] and scores["train_s"] > 0
    # cached: the same source and settings give the same run dir; other settings another one
    again = FinalStage.from_experiment(exp, config, masks=masks, progress=False)
    assert again.run_dir == stage.run_dir and again.evaluate("val")["miou"] == scores["miou"]
    other = FinalStage.from_experiment(exp, SegConfig.for_preset("tiny", crop_size=32, scales=(1.0, 0.5), **FAST),
                                       masks=masks, progress=False)
    assert other.run_dir != stage.run_dir


def test_ground_truth_upper_bound_learns_from_the_dataset_masks(tiny_root: Path, tmp_path: Path) -> None:
    exp = _experiment(tiny_root, tmp_path)
    config = SegConfig.for_preset("tiny", crop_size=32, scales=(1.0,), **{**FAST, "max_steps": 1})
    gt = FinalStage.ground_truth(exp, config, progress=False)
    assert gt.masks == tiny_root / "SegmentationClass" and gt.source["kind"] == "ground_truth"
    assert gt.variant == "GT upper bound" and gt.run_dir.name.startswith("final-gt-")
    batch = next(iter(torch.utils.data.DataLoader(gt.dataset(), batch_size=2)))
    raw = exp.dataset("train").load(0)["mask"]
    assert set(batch["target_mask"].unique().tolist()) <= set(range(exp.dataset("train").num_classes + 1)) | {255}
    assert batch["target_mask"].shape[-2:] == (32, 32) and raw.max() > 0
    gt.train()
    assert 0.0 <= gt.evaluate("val", crf=True)["miou"] <= 1.0
    assert (gt.run_dir / "predictions" / "val_crf" / "_done").is_file()


def test_deeplabv3_resnet50_loads_a_local_weight_file(tmp_path: Path) -> None:
    state = torchvision.models.resnet50(weights=None).state_dict()
    state["conv1.weight"] = torch.full_like(state["conv1.weight"], 0.25)
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    net = SegmentationNet(4, "deeplabv3_resnet50", pretrained=path).eval()
    assert torch.all(net.backbone.conv1.weight == 0.25)
    with torch.no_grad():
        out = net.class_maps(torch.randn(1, 3, 48, 48))
    assert out.shape == (1, 5, 48, 48) and torch.allclose(out.sum(1), torch.ones(1, 48, 48), atol=1e-5)
    with pytest.raises(FileNotFoundError):
        SegmentationNet(4, "deeplabv3_resnet50", pretrained=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="do not fit"):  # ResNet weights for the small backbone
        SegmentationNet(4, "small_aspp", pretrained=path)
    with pytest.raises(ValueError, match="unknown segmentation model"):
        SegmentationNet(4, "unet")


def test_voc_recipe_and_threshold_parsing() -> None:
    voc = SegConfig.for_preset("quick", voc=True)
    assert voc.model == "deeplabv3_resnet50" and voc.train.optimizer == "sgd"
    assert SegConfig.for_preset("quick", epochs=None).train.epochs == SegConfig.for_preset("quick").train.epochs
    with pytest.raises(ValueError, match="unknown final-stage settings"):
        SegConfig.for_preset("tiny", bogus=1)
    assert threshold_of_masks("runs/x/pseudo_masks/train_thr0.30_crf") == 0.30
    assert threshold_of_masks("runs/x/sance_pseudo/train") is None


def test_the_deeplabv3plus_decoder_draws_at_the_skips_resolution() -> None:
    """The default SynthVOC network refines the stride-8 ASPP output with the stride-4 features, so a
    change in one stride-4 cell of the skip moves the scores there and nowhere far from it."""
    torch.manual_seed(0)
    plus = SegmentationNet(3, "small_deeplabv3plus").eval()
    images = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        features = plus.backbone(images)
        head_out = plus.head(features[0], features[-1])
        low = features[0].clone()
        low[..., 5, 7] += 10.0  # one stride-4 cell of the skip
        moved = plus.head(low, features[-1]) - head_out
        out = plus.class_maps(images)
    assert head_out.shape[-2:] == features[0].shape[-2:] == (16, 12)
    assert out.shape == (2, 4, 64, 48) and torch.allclose(out.sum(1), torch.ones(2, 64, 48), atol=1e-5)
    assert moved[..., 5, 7].abs().max() > 0 and moved[..., 0, 0].abs().max() == 0  # local, at stride 4
    assert SegConfig.for_preset("quick").model == "small_deeplabv3plus"
