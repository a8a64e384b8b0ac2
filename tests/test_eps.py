"""EPS: saliency loss and map selection on hand-computed tensors, saliency sources, bad saliency input."""
from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from wsss.data.voc import DatasetError, VOCDataset
from wsss.experiment import Experiment, ExperimentConfig
from wsss.methods.base import build_method
from wsss.methods.eps import estimated_saliency, overlap_ratio, saliency_loss, select_maps, to_map_size
from wsss.saliency import CLASSICAL, classical_cache_dir, classical_saliency, saliency_folder
from wsss.train import collate


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


# Two classes on a 2x2 grid; the saliency covers three pixels.
MAPS = t([[[[0.9, 0.6], [0.2, 0.1]],     # B_0 = top row: both pixels salient -> ratio 2/2
           [[0.0, 0.5], [0.7, 0.8]],     # B_1 = bottom row (0.5 is not > 0.5): 1 of 2 salient -> 1/2
           [[0.1, 0.1], [0.1, 0.1]]]])   # B_2 empty -> ratio undefined (NaN)
SALIENCY = t([[[0.8, 0.9], [0.6, 0.2]]])


def ratios(*args) -> list[float]:
    return [round(x, 6) if x == x else "nan" for x in overlap_ratio(*args)[0].tolist()]


def test_overlap_ratio_by_hand():
    assert ratios(MAPS, SALIENCY) == [1.0, 0.5, "nan"]
    # Weighted: the top-right pixel does not count (crop padding): B_0 has 1 pixel, salient.
    assert ratios(MAPS, SALIENCY, t([[[1.0, 0.0], [1.0, 1.0]]])) == [1.0, 0.5, "nan"]
    # Bottom-left (the salient pixel of B_1) is padding: B_1 keeps one non-salient pixel.
    assert ratios(MAPS, SALIENCY, t([[[1.0, 1.0], [0.0, 1.0]]])) == [1.0, 0.0, "nan"]


def test_map_selection_by_hand():
    label = t([[1.0, 1.0, 0.0]])
    fg, bg, ratio = select_maps(MAPS, SALIENCY, label, tau=0.4)
    assert fg.tolist() == [[True, True, False]] and bg.tolist() == [[False, False, False]]
    fg, bg, _ = select_maps(MAPS, SALIENCY, label, tau=0.5)  # ratio must *exceed* tau
    assert fg.tolist() == [[True, False, False]] and bg.tolist() == [[False, True, False]]
    # An absent class goes nowhere even with a high ratio; nor does a present map with no pixel > 0.5.
    fg, bg, _ = select_maps(MAPS, SALIENCY, t([[0.0, 1.0, 1.0]]), tau=0.4)
    assert fg.tolist() == [[False, True, False]] and bg.tolist() == [[False, False, False]]
    fg, bg, _ = select_maps(MAPS, SALIENCY, t([[0.0, 1.0, 1.0]]), tau=0.5)
    assert fg.tolist() == [[False, False, False]] and bg.tolist() == [[False, True, False]]


def test_estimated_saliency_and_loss_by_hand():
    # Three classes (class 2 absent) and the background, on two pixels.
    probs = t([[[[0.5, 0.1]], [[0.2, 0.2]], [[0.2, 0.1]], [[0.1, 0.6]]]])
    fg, bg = torch.tensor([[True, False, False]]), torch.tensor([[False, True, False]])
    # M_fg = [0.5, 0.1]; M_bg = class 1 + background = [0.3, 0.8]; 1 - M_bg = [0.7, 0.2].
    est = estimated_saliency(probs, fg, bg, lam=0.5)
    assert torch.allclose(est, t([[[0.6, 0.15]]]))
    assert torch.allclose(estimated_saliency(probs, fg, bg, lam=0.25), t([[[0.65, 0.175]]]))
    sal = t([[[1.0, 0.0]]])
    assert torch.isclose(saliency_loss(est, sal), t((0.4 ** 2 + 0.15 ** 2) / 2))
    assert torch.isclose(saliency_loss(est, sal, t([[[1.0, 0.0]]])), t(0.16))


def test_saliency_to_map_size_averages_valid_pixels():
    sal = t([[[1, 0, 1, 1], [1, 0, 0, 1]]])
    valid = torch.tensor([[[1, 1, 1, 0], [1, 1, 1, 0]]], dtype=torch.bool)
    small, weight = to_map_size(sal, valid, (1, 2))
    assert torch.allclose(small, t([[[0.5, 0.5]]])) and torch.allclose(weight, t([[[1.0, 0.5]]]))


def test_eps_forward_losses_and_background_gradient(tiny_root):
    exp = Experiment(ExperimentConfig.for_preset("tiny", method="eps", data_root=str(tiny_root)), progress=False)
    ds = exp.dataset("train", train=True)
    batch = collate([ds[i] for i in range(4)])
    model = build_method("eps", ds.num_classes, "small")
    out = model(batch)
    assert torch.isclose(out["loss"], out["cls"] + out["sal"])
    out["loss"].backward()
    # The background row of the classifier learns from the saliency loss.
    assert model.classifier.weight.grad[-1].abs().sum() > 0
    maps = model.class_maps(batch["image"])
    assert maps.shape[1] == ds.num_classes and (maps >= 0).all()
    assert torch.allclose(model.localization_maps(batch["image"]).sum(1), torch.ones(()))


def test_eps_rejects_bad_options():
    with pytest.raises(ValueError, match="saliency source"):
        build_method("eps", 3, "small", saliency="pfan")
    with pytest.raises(ValueError, match="tau"):
        build_method("eps", 3, "small", tau=1.5)


@pytest.mark.parametrize("detector", sorted(CLASSICAL))
def test_classical_saliency_finds_a_blob(detector):
    image = np.full((64, 64, 3), 90, np.uint8)
    image[24:40, 24:40] = (230, 40, 40)
    sal = classical_saliency(image, detector)
    assert sal.shape == (64, 64) and sal.dtype == np.float32 and sal.min() == 0.0 and sal.max() == 1.0
    assert sal[20:44, 20:44].mean() > 2 * sal[:8, :8].mean()


def test_saliency_sources(tiny_root, tmp_path):
    assert saliency_folder("dataset", tiny_root, None, tmp_path) is None
    assert saliency_folder("dataset", tiny_root, tmp_path, tmp_path) == tmp_path
    with pytest.raises(DatasetError, match="saliency_dir"):
        saliency_folder("folder", tiny_root, None, tmp_path)
    with pytest.raises(ValueError, match="unknown saliency source"):
        saliency_folder("pfan", tiny_root, None, tmp_path)
    out = saliency_folder("spectral_residual", tiny_root, None, tmp_path, progress=False)
    ids = VOCDataset(tiny_root, "train", with_mask=False).ids + VOCDataset(tiny_root, "val", with_mask=False).ids
    assert all((out / f"{i}.png").is_file() for i in ids)
    stamp = (out / f"{ids[0]}.png").stat().st_mtime_ns
    assert saliency_folder("spectral_residual", tiny_root, None, tmp_path) == out  # cached: nothing rewritten
    assert (out / f"{ids[0]}.png").stat().st_mtime_ns == stamp


def test_experiment_uses_the_chosen_source(tiny_root, tmp_path):
    cfg = ExperimentConfig.for_preset("tiny", method="eps", data_root=str(tiny_root), run_root=str(tmp_path),
                                      method_options={"saliency": "fine_grained"})
    ds = Experiment(cfg, progress=False).dataset("train", train=True)
    assert ds.layout.saliency_dir == classical_cache_dir(tiny_root, "fine_grained", tmp_path)
    s = ds[0]
    assert s["saliency"].shape == s["image"].shape[1:]
    assert 0 <= float(s["saliency"].min()) <= float(s["saliency"].max()) <= 1
    default = Experiment(ExperimentConfig.for_preset("tiny", method="eps", data_root=str(tiny_root),
                                                     run_root=str(tmp_path)), progress=False)
    assert default.dataset("train", train=True).layout.saliency_dir == tiny_root / "SaliencyMaps"


def test_missing_and_resized_saliency(tiny_root, tmp_path):
    folder = tmp_path / "sal"
    shutil.copytree(tiny_root / "SaliencyMaps", folder)
    ds = VOCDataset(tiny_root, "train", with_mask=False, with_saliency=True, saliency_dir=folder)
    missing = folder / f"{ds.ids[0]}.png"
    missing.unlink()
    with pytest.raises(DatasetError, match=str(missing)):
        ds.load(0)
    small = folder / f"{ds.ids[1]}.png"
    Image.fromarray(np.full((10, 20), 255, np.uint8)).save(small)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sample = ds.load(1)
    assert any(str(small) in str(w.message) and "resized" in str(w.message) for w in caught)
    assert sample["saliency"].shape == sample["image"].shape[:2]
    assert np.allclose(sample["saliency"], 1.0)
