"""Multi-scale inference keeps every map cell where it lies on the image, at any image size."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsss.inference import multiscale_maps, output_stride, to_image_grid


def _stride16_means(images: torch.Tensor) -> torch.Tensor:
    """A stand-in network at output stride 16: each cell is the mean of its 16 x 16 input block
    (blocks past the edge see zero padding, as a padded convolution does)."""
    h, w = images.shape[-2:]
    padded = F.pad(images[:, :1], (0, -w % 16, 0, -h % 16))
    return F.avg_pool2d(padded, 16)


def _edge_column(row: torch.Tensor) -> float:
    """Where a rising profile crosses 0.5, interpolated between pixel centres."""
    i = int(torch.nonzero(row >= 0.5)[0])
    return i - 1 + float((0.5 - row[i - 1]) / (row[i] - row[i - 1]))


def test_a_375x500_image_stays_aligned_to_the_pixel() -> None:
    """A vertical edge at column 400 of a 375 x 500 image (a multiple of 16, so one stride-16 cell
    boundary) must come back at column 400 (the boundary between pixel centres 399 and 400). A plain
    resize of the 32-cell map (512 px of extent) onto 500 px puts it at 390.6."""
    image = torch.zeros(1, 3, 375, 500)
    image[..., 400:] = 1.0
    assert output_stride((375, 500), _stride16_means(image).shape[-2:]) == 16
    for flip in (False, True):
        maps = multiscale_maps(_stride16_means, image, (1.0,), flip) / (2 if flip else 1)
        assert maps.shape == (1, 1, 375, 500)
        # Within a pixel: the flipped pass cuts its cells at other columns (its padding is on the left).
        assert abs(_edge_column(maps[0, 0, 200]) - 399.5) < 1.0, flip
    plain = F.interpolate(_stride16_means(image), size=(375, 500), mode="bilinear", align_corners=False)
    assert abs(_edge_column(plain[0, 0, 200]) - 399.5) > 8  # what the old resize did


def test_maps_of_a_multiple_of_the_stride_are_resized_as_before() -> None:
    """SynthVOC's 96 px images (and every scale of them) are multiples of the stride: the aligned
    resize is then exactly the plain one, so no stored result moves."""
    maps = torch.randn(2, 3, 12, 12)
    plain = F.interpolate(maps, size=(96, 96), mode="bilinear", align_corners=False)
    assert torch.equal(to_image_grid(maps, (96, 96), (96, 96)), plain)
    assert torch.equal(to_image_grid(maps, (48, 48), (96, 96)), plain)  # scale 0.5 at stride 4


def test_passes_split_to_the_pixel_budget_give_the_same_maps() -> None:
    """A budget of one image per pass at the largest scale runs the batch in several passes per
    scale; the summed maps equal the one-pass maps."""
    torch.manual_seed(0)
    images = torch.rand(3, 3, 40, 56)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def net(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(conv(x), 8)

    passes = []
    one_pass = multiscale_maps(net, images, (1.0, 0.5, 1.5), True, max_pixels=10**9)
    split = multiscale_maps(lambda x: passes.append(x.shape[0]) or net(x), images, (1.0, 0.5, 1.5), True,
                            max_pixels=60 * 84)
    assert passes == [2, 2, 2, 6, 1, 1, 1, 1, 1, 1]  # 6 images (3 and their flips) at 40 x 56, 20 x 28, 60 x 84
    torch.testing.assert_close(split, one_pass, rtol=1e-5, atol=1e-6)


def test_explain_gives_a_runs_stored_class_maps_for_any_image(tiny_root, tmp_path) -> None:
    """Three lines from a run folder to maps: on a val image they equal the run's stored class maps
    (same scales, flips and scaling); any other image, at its own size, gets maps of its size."""
    import numpy as np
    from PIL import Image

    from wsss.experiment import Experiment, experiment_factory
    from wsss.explain import explain, overlay
    from wsss.inference import load_cam

    run = experiment_factory("tiny", progress=False, run_root=str(tmp_path), max_steps=2)("cam")
    stored_dir = run.class_maps("val")
    sample = run.dataset("val")[0]
    result = explain(run.run_dir, sample["image_uint8"].numpy(), scales=run.config.scales)
    keys, stored = load_cam(stored_dir / f"{sample['id']}.npz")
    np.testing.assert_allclose(result.maps[0][keys], stored, atol=2e-3)  # stored as float16
    assert result.class_names == run.class_names and len(result.top_classes(0, 2)) == 2

    path = tmp_path / "other.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)).save(path)
    other = explain(Experiment.from_run(run.run_dir, progress=False), [path])
    assert other.maps[0].shape == (len(run.class_names), 37, 53) and 0 <= other.maps[0].min() <= other.maps[0].max() <= 1
    assert overlay(other.images[0], other.maps[0][0]).shape == (37, 53, 3)
    with pytest.raises(ValueError, match="class_names"):
        explain(run.trained_method(), [path])


def test_loader_processes_give_the_same_batches_and_maps(tiny_voc_sized_root, tmp_path) -> None:
    """Reading images in worker processes changes nothing but speed: the same size groups in the
    same order, and class maps equal to those read in the main process. The wait for each batch
    is counted for the stage (`DATA_WAIT`)."""
    import numpy as np

    from wsss.data.transforms import eval_transform
    from wsss.data.voc import VOCDataset
    from wsss.inference import infer_class_maps, load_cam, size_grouped_batches
    from wsss.progress import DATA_WAIT

    ds = VOCDataset(tiny_voc_sized_root, "train", transform=eval_transform(), with_mask=False)
    inline = [[s["id"] for s in g] for g in size_grouped_batches(ds, 8)]
    in_workers = [[s["id"] for s in g] for g in size_grouped_batches(ds, 8, num_workers=2)]
    assert in_workers == inline and sum(map(len, inline)) == len(ds)
    assert any(len(g) < 8 for g in inline[:-1])  # VOC shapes split chunks into several groups

    def maps(images: torch.Tensor) -> torch.Tensor:
        means = _stride16_means(images)  # (B, 1, h, w)
        return means * torch.linspace(0.5, 1.5, len(ds.class_names))[:, None, None]

    waited_before = DATA_WAIT.get("class_maps", 0.0)
    a = infer_class_maps(maps, ds, tmp_path / "inline", scales=(1.0,), progress=False)
    b = infer_class_maps(maps, ds, tmp_path / "workers", scales=(1.0,), progress=False, num_workers=2)
    assert DATA_WAIT["class_maps"] > waited_before
    for image_id in ds.ids:
        (ka, ca), (kb, cb) = load_cam(a / f"{image_id}.npz"), load_cam(b / f"{image_id}.npz")
        assert np.array_equal(ka, kb) and np.array_equal(ca, cb)
