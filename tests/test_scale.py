"""The scale policy: the papers' own settings at VOC size, converted ones on SynthVOC's 96 px."""
from __future__ import annotations

import pytest
import torch.nn as nn

from wsss.experiment import ExperimentConfig
from wsss.methods.base import build_method
from wsss.scale import MIN_MAP_CELLS, PAPER_SCALE, REFERENCE_SIZE, ScalePolicy
from wsss.stages.final import SegmentationNet
from wsss.stages.propagation import PseudoLabelParams

SMALL = ScalePolicy(96)  # SynthVOC quick


def test_only_the_smoke_preset_drops_test_time_scale_2() -> None:
    """The tests' tiny preset averages scales 1 and 1.5 (a smoke test's cost); quick and full keep
    the papers' list for the policy to convert, and a scale list given explicitly is kept."""
    papers = (1.0, 0.5, 1.5, 2.0)
    assert ExperimentConfig.for_preset("tiny").scales == (1.0, 1.5)
    assert ExperimentConfig.for_preset("quick").scales == ExperimentConfig.for_preset("full").scales == papers
    assert ExperimentConfig.for_preset("tiny", scales=papers).scales == papers


def dilations(module: nn.Module) -> tuple[int, ...]:
    """The dilations of a module's 3x3 convolutions with more than one (ASPP branches)."""
    return tuple(m.dilation[0] for m in module.modules()
                 if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.dilation[0] > 1)


def test_rules() -> None:
    assert PAPER_SCALE.image_size == REFERENCE_SIZE
    # Sizes: ratio of map sizes, capped at 1, rounded half up, floored, each once.
    assert SMALL.ratio(8, 16) == pytest.approx(12 / 31.25)
    assert ScalePolicy(1000).ratio(16, 16) == 1.0
    assert SMALL.sizes((1, 2, 4, 8, 12, 24), 4, 4) == (1, 2, 5)
    assert SMALL.size(3, 4, 4) == 1 and SMALL.size(7, 4, 4, floor=2) == 2
    # Scales: the coarsest map keeps MIN_MAP_CELLS; scale 1 stays even below it.
    assert SMALL.scales((1.0, 0.5, 1.5, 2.0), 8) == (1.0, 1.5, 2.0)
    assert ScalePolicy(32).scales((0.5, 1.0), 8) == (1.0,)
    assert ScalePolicy(MIN_MAP_CELLS * 16).scales((0.5, 1.0), 8) == (0.5, 1.0)
    with pytest.raises(ValueError, match="empty"):
        SMALL.scales((), 8)
    with pytest.raises(ValueError, match="image_size"):
        ScalePolicy(0)
    # Walks: reach kept with the radius unchanged; the map kept >= MIN_WALK_CELLS.
    assert PAPER_SCALE.walk_steps(8, 4, 4) == 8 and SMALL.walk_steps(8, 4, 4) == 1
    assert PAPER_SCALE.walk_log2_steps(8, 4, 4) == 8 and SMALL.walk_log2_steps(8, 2, 4) == 5
    assert PAPER_SCALE.walk_stride(4) == 4 and SMALL.walk_stride(4) == 2 and ScalePolicy(16).walk_stride(4) == 1
    # The tests' tiny preset (64 px) walks on 32-cell maps, not image-sized ones fed 4x-upsampled input.
    assert ScalePolicy(64).walk_stride(4) == 1 and ScalePolicy(64, min_walk_cells=32).walk_stride(4) == 2
    with pytest.raises(ValueError, match="min_walk_cells"):
        ScalePolicy(64, min_walk_cells=0)


def test_paper_settings_at_voc_size() -> None:
    """On VOC-sized images every method gets exactly the numbers its paper prints."""
    shape = build_method("shape_cues", 20, "resnet50", scale=PAPER_SCALE)
    assert dilations(shape.aspp) == (6, 12, 18)
    assert shape.spr_dilations == (1, 2, 4, 8, 12, 24) and shape.region_radius == 3
    assert shape.scm is not None and len(shape.scm.offsets) == 2 * 7 * 8  # Manhattan radius 7
    assert not shape.size_penalty  # SSSS's focal penalty is not in the paper's Eq. 1
    sance = build_method("sance", 20, "resnet50", scale=PAPER_SCALE)
    assert dilations(sance.seg) == (6, 12, 18, 24) and sance.online.steps == 8 and sance.online.radius == 3
    assert build_method("rcm_mam", 20, "resnet50", scale=PAPER_SCALE).scales == (0.5, 1.0, 2.0)
    walk = PseudoLabelParams.for_source("seg", PAPER_SCALE, 16)
    assert (walk.stride, walk.steps, walk.scales, walk.contour_scales) == (4, 8, (1.0, 0.5, 1.5, 2.0), None)
    assert PAPER_SCALE.scales((1.0, 0.5, 1.5, 2.0), 16) == (1.0, 0.5, 1.5, 2.0)  # IRNet's CAM inference
    assert dilations(SegmentationNet(20, "small_deeplabv3plus", scale=PAPER_SCALE).head) == (6, 12, 18)


def test_settings_on_96px_images() -> None:
    """The converted settings on SynthVOC quick, as the method docstrings state them."""
    shape = build_method("shape_cues", 5, "small", scale=SMALL)
    assert dilations(shape.aspp) == (2, 5, 7)
    assert shape.spr_dilations == (1, 2, 5) and shape.region_radius == 1
    assert shape.scm is not None and len(shape.scm.offsets) == 12  # radius 2: room for 9 samples
    sance = build_method("sance", 5, "small", scale=SMALL)
    assert dilations(sance.seg) == (2, 5, 7, 9) and sance.online.steps == 1
    assert build_method("rcm_mam", 5, "small", scale=SMALL).scales == (1.0, 2.0)
    walk = PseudoLabelParams.for_source("seg", SMALL, 8)
    assert (walk.stride, walk.steps, walk.scales, walk.contour_scales) == (2, 5, (1.0, 1.5, 2.0), (1.5, 2.0))
    assert PseudoLabelParams.for_source("cam", SMALL, 8).contour_scales == (2.0,)
    assert dilations(SegmentationNet(5, "small_deeplabv3plus", scale=SMALL).head) == (2, 5, 7)
