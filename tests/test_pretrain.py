"""Stage 0: the generated pretraining corpus, the pretraining loop and where its weights are used."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss.data import synthvoc
from wsss.experiment import ExperimentConfig, config_hash
from wsss.models.backbones import build_backbone, weights_digest
from wsss.pretrain import PretrainConfig, average_precision, pretrain, render_corpus
from wsss.stages.final import SegConfig


def test_average_precision_on_hand_made_rankings() -> None:
    labels = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=np.float32)
    perfect = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.7], [0.2, 0.9]])
    np.testing.assert_allclose(average_precision(perfect, labels), [1.0, 1.0])
    # class 0's positives ranked 2nd and 4th: AP = (1/2 + 2/4) / 2
    worse = np.array([[0.8, 0.0], [0.05, 0.0], [0.9, 0.0], [0.1, 0.0]])
    assert average_precision(worse, labels)[0] == pytest.approx(0.5)


def test_corpus_is_disjoint_from_the_dataset_and_has_easy_images(tiny_root: Path) -> None:
    cfg = PretrainConfig(preset="tiny", n_images=16, easy_fraction=0.5, batch_size=8, workers=1)
    images, labels = render_corpus(cfg, progress=False)
    assert images.shape == (16, 3, 64, 64) and images.dtype == torch.uint8 and labels.shape == (16, 8)
    assert torch.all(labels.sum(1) >= 1)
    # its own seed: no image of the corpus is one of the dataset's (seed 0) images
    dataset = synthvoc.render_image(synthvoc.make_config("tiny"), 0, 0).image
    assert not any(np.array_equal(img.permute(1, 2, 0).numpy(), dataset) for img in images)
    # easy images (first half) carry at most two objects and no two-tone paint: fewer distinct colours
    n_colours = [np.unique(img.reshape(3, -1).numpy() // 32, axis=1).shape[1] for img in images]
    assert np.mean(n_colours[:8]) < np.mean(n_colours[8:])


def test_pretrain_saves_a_backbone_that_methods_load(tmp_path: Path, tiny_root: Path) -> None:
    out = tmp_path / "small.pt"
    cfg = PretrainConfig(preset="tiny", n_images=16, batch_size=8, steps=2, eval_every=1, workers=1)
    record = pretrain(cfg, out, progress=False)
    assert [h["step"] for h in record["history"]] == [1, 2]
    assert all(0.0 <= h["val_map"] <= 1.0 for h in record["history"])
    assert json.loads(out.with_suffix(".json").read_text())["config"]["steps"] == 2
    net = build_backbone("small", pretrained=out)
    saved = torch.load(out, weights_only=True)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, saved[k])
    with pytest.raises(ValueError):
        PretrainConfig(n_images=4, batch_size=8)


def test_presets_choose_the_start_and_the_hash_follows_the_file(tmp_path: Path) -> None:
    assert ExperimentConfig.for_preset("quick").pretrained == "synthvoc"
    assert ExperimentConfig.for_preset("quick", pretrained=None).pretrained == "synthvoc"  # None: preset default
    assert ExperimentConfig.for_preset("quick", pretrained="scratch").pretrained == "scratch"
    assert ExperimentConfig.for_preset("tiny").pretrained is None
    assert ExperimentConfig.for_preset("quick", backbone="resnet50").pretrained is None
    voc = tmp_path / "VOC2012"
    voc.mkdir()
    with pytest.warns(UserWarning, match="treated as real PASCAL VOC"):
        real = ExperimentConfig.for_preset("quick", data_root=str(voc))
    assert real.pretrained is None  # real data: no SynthVOC start
    assert SegConfig.for_preset("quick").pretrained == "synthvoc" and SegConfig.for_preset("tiny").pretrained is None
    assert build_backbone("small", pretrained="scratch").stem[0].weight.shape[0] == 32

    path = tmp_path / "w.pt"
    torch.save(build_backbone("small").state_dict(), path)
    record = ExperimentConfig.for_preset("tiny", pretrained=str(path)).to_dict()
    first, digest = config_hash(record), weights_digest(path)
    torch.save(build_backbone("small").state_dict(), path)  # other weights under the same name
    assert weights_digest(path) != digest and config_hash(record) != first
    assert weights_digest(None) is None and weights_digest("scratch") is None
