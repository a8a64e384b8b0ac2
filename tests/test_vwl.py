"""VWL: hybrid spatial pyramid pooling, the visual word encoder's labels and frequencies, gradient
flow to the codebook, the two-branch CAM and the ablation switches."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss.methods.base import build_method
from wsss.analysis.vwl import distinctive_words
from wsss.methods.vwl import hybrid_spatial_pyramid_pool, word_histogram, word_labels


def _batch(b: int = 3, size: int = 32, k: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    label = torch.zeros(b, k)
    label[torch.arange(b), torch.arange(b) % k] = 1.0
    return {"image": torch.randn(b, 3, size, size, generator=g), "label": label,
            "valid": torch.ones(b, size, size, dtype=torch.bool)}


def _small(**options) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_method("vwl", 8, "small", backbone_options={"widths": (8, 8, 16, 16)}, num_words=16, **options)


def test_hspp_on_a_hand_computed_feature_map() -> None:
    ramp = torch.arange(16.0).reshape(4, 4)  # rows 0-3, 4-7, 8-11, 12-15
    spike = torch.zeros(4, 4)
    spike[0, 0] = 1.0
    features = torch.stack([ramp, spike])[None]
    # ramp: GMP 15; 2x2 bin maxima 5, 7, 13, 15 -> 10; 4x4 bins = pixels -> 7.5; GAP 7.5.
    # spike: GMP 1; 2x2 -> 1/4; 4x4 -> 1/16; GAP 1/16.
    expected = torch.tensor([[(15 + 10 + 7.5 + 2 * 7.5) / 5, (1 + 0.25 + 1 / 16 + 2 / 16) / 5]])
    torch.testing.assert_close(hybrid_spatial_pyramid_pool(features, gamma=2.0), expected)
    # gamma weighs GAP against the three max levels: gamma = 0 leaves their plain mean.
    torch.testing.assert_close(hybrid_spatial_pyramid_pool(features, gamma=0.0)[0, 0], torch.tensor(32.5 / 3))


def test_hspp_handles_sizes_the_grid_does_not_divide() -> None:
    features = torch.rand(2, 5, 6, 7)
    pooled = hybrid_spatial_pyramid_pool(features)
    assert pooled.shape == (2, 5)
    gap, gmp = features.mean(dim=(2, 3)), features.amax(dim=(2, 3))
    assert torch.all(pooled >= gap - 1e-6) and torch.all(pooled <= gmp + 1e-6)


def test_word_labels_mark_the_winning_words_of_valid_locations() -> None:
    probs = torch.zeros(1, 4, 1, 3)
    probs[0, :, 0, 0] = torch.tensor([0.7, 0.1, 0.1, 0.1])  # word 0 wins
    probs[0, :, 0, 1] = torch.tensor([0.1, 0.1, 0.6, 0.2])  # word 2 wins
    probs[0, :, 0, 2] = torch.tensor([0.1, 0.1, 0.1, 0.7])  # word 3 wins, on padding
    valid = torch.tensor([[[True, True, False]]])
    assert word_labels(probs).tolist() == [[1.0, 0.0, 1.0, 1.0]]
    assert word_labels(probs, valid).tolist() == [[1.0, 0.0, 1.0, 0.0]]
    # The histogram sums the valid locations only.
    torch.testing.assert_close(word_histogram(probs, valid), torch.tensor([[0.8, 0.2, 0.7, 0.3]]))


def test_the_word_histogram_sums_over_locations_as_the_authors_code() -> None:
    """`torch.sum(x_corr, [2, 3])` in the authors' VWE: each row sums to the number of (valid) locations."""
    model = _small()
    feats = model.backbone(_batch()["image"])[-1]
    probs = model.encoder(feats)
    valid = torch.rand(probs.shape[0], *probs.shape[-2:]) > 0.3
    torch.testing.assert_close(word_histogram(probs).sum(dim=1), torch.full((3,), 16.0))  # 4 x 4 locations
    torch.testing.assert_close(word_histogram(probs, valid).sum(dim=1), valid.flatten(1).sum(dim=1).float())
    assert word_histogram(probs).shape == (3, 16)


def test_gradients_reach_the_codebook_through_the_word_to_image_loss() -> None:
    model = _small()
    losses = model(_batch())
    assert set(losses) == {"loss", "img", "word", "w2i"}
    model.zero_grad()
    losses["loss"].backward()
    grad = model.encoder.codebook.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # With the authors' detached features, the word-to-image loss trains the codebook, not the backbone.
    model.zero_grad()
    feats = model.backbone(_batch()["image"])[-1]
    freq = word_histogram(model.encoder(feats))
    model.word_to_image(freq[..., None, None]).sum().backward()
    assert model.encoder.codebook.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone.parameters())


def test_both_parts_off_is_the_cam_baseline() -> None:
    torch.manual_seed(0)
    cam = build_method("cam", 8, "small", backbone_options={"widths": (8, 8, 16, 16)})
    plain = _small(vwe=False, hspp=False)
    for (ka, a), (kb, b) in zip(cam.state_dict().items(), plain.state_dict().items()):
        assert ka == kb and torch.equal(a, b)
    batch = _batch()
    torch.testing.assert_close(cam(batch)["loss"], plain(batch)["loss"])
    assert plain.new_modules() == [plain.classifier]


def test_class_maps_are_the_image_branch_as_the_authors_infer_them() -> None:
    model = _small().eval()
    images = _batch()["image"]
    with torch.no_grad():
        img, word, cam = model.image_cam(images), model.word_cam(images), model.class_maps(images)
        words = model.word_map(images)
        feats = model.backbone(images)[-1]
        logits = model.word_to_image(word_histogram(model.encoder(feats))[..., None, None]).flatten(1)
    torch.testing.assert_close(cam, img)
    assert (cam >= 0).all() and cam.shape == word.shape == (3, 8, 4, 4)
    # The word branch is on its logit's scale: where no location is rectified, its mean is the logit.
    positive = (logits > 0) & (word.flatten(2).min(dim=2).values > 0)
    assert positive.any()
    torch.testing.assert_close(word.flatten(2).mean(dim=2)[positive], logits[positive])
    assert words.shape == (3, 4, 4) and int(words.max()) < 16
    with pytest.raises(RuntimeError, match="no visual words"):
        _small(vwe=False).word_map(images)


def test_distinctive_words_prefer_words_specific_to_a_class() -> None:
    usage = np.array([[100, 50, 0, 30],   # background
                      [0, 50, 40, 30],    # class 1: word 2 is only its own
                      [0, 0, 10, 30]])    # class 2: word 2 too rare for it; word 3 shared
    assert distinctive_words(usage, per_class=1, min_count=20) == {0: [0], 1: [2], 2: [3]}


def test_a_method_revision_gives_its_runs_a_new_folder() -> None:
    """VWL's training changed (revision 1): runs trained by the earlier code must not be served."""
    from wsss.experiment import ExperimentConfig
    from wsss.methods.vwl import VWL

    config = ExperimentConfig.for_preset("tiny", method="vwl")
    current = config.config_hash()
    try:
        VWL.revision = 0
        assert config.config_hash() != current
    finally:
        VWL.revision = 1
