"""The CAM explorer, driven headless through its widgets on hand-made run artifacts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsss.data.voc import VOCDataset
from wsss.explorer import CAMExplorer, decode_png, image_iou, runs_with_cams
from wsss.inference import save_cam
from wsss.io import write_json


def _fake_run(root: Path, name: str, data_root: Path, fg: float, best: float | None = None,
              missed: frozenset[int] = frozenset()) -> Path:
    """A run whose val CAMs are `fg` on each present class's ground-truth region and 0.2 elsewhere
    (0.1 everywhere on the images `missed`: their pseudo masks are all background)."""
    run = root / name
    ds = VOCDataset(data_root, "val")
    for i, sample_id in enumerate(ds.ids):
        mask = ds.load(i)["mask"]
        keys = np.flatnonzero(ds.label(i) > 0.5)
        on, off = (0.1, 0.1) if i in missed else (fg, 0.2)
        cam = np.stack([np.where(mask == k + 1, on, off) for k in keys]).astype(np.float32) \
            if len(keys) else np.zeros((0,) + mask.shape, np.float32)
        save_cam(run / "cams" / "val" / f"{sample_id}.npz", keys, cam)
    (run / "cams" / "val" / "_done").write_text("done")
    write_json(run / "config.json", {"data_root": str(data_root), "preset": "tiny", "method": "cam"})
    if best is not None:
        write_json(run / "sweep_val.json", {"key": {}, "result": {"best_threshold": best}})  # a cached_json record
    return run


def test_image_iou_by_hand() -> None:
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 0, 2]])
    # background: 3 / 5 (gt 4, pred 4, both 3); class 1: 2 / 4; class 2: only on an ignored pixel -> absent
    assert image_iou(pred, gt, 2) == pytest.approx((3 / 5 + 2 / 4) / 2)


def test_explorer_updates_with_its_controls(tiny_root: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    a = _fake_run(runs, "a-run", tiny_root, fg=0.8, best=0.5)
    b = _fake_run(runs, "b-run", tiny_root, fg=0.4)
    (runs / "no-cams").mkdir()
    assert runs_with_cams(runs) == [a, b]

    ex = CAMExplorer(runs_with_cams(runs))
    ds = VOCDataset(tiny_root, "val")
    index = next(i for i in range(len(ds)) if ds.label(i).sum() > 0)
    ex.image.value = ds.ids[index]
    gt = ds.load(index)["mask"]
    # the run's best threshold is preselected; CAM 0.8 on the objects, 0.2 elsewhere -> the GT itself
    assert ex.threshold.value == 0.5
    np.testing.assert_array_equal(ex.pseudo[gt != 255], gt[gt != 255])
    assert ex.iou == pytest.approx(1.0) and "100.0%" in ex.info.value
    first_view = ex.view.value
    assert decode_png(first_view).ndim == 3

    ex.threshold.value = 0.9  # above every CAM value: all background
    assert (ex.pseudo == 0).all()
    valid = gt != 255
    n_fg_classes = len(np.unique(gt[valid & (gt > 0)]))
    assert ex.iou == pytest.approx(np.mean(gt[valid] == 0) / (n_fg_classes + 1))
    assert ex.view.value != first_view and "0.90" in ex.info.value

    ex.crf.value = True
    assert ex.state()["crf"] and "CRF" in ex.info.value

    ex.threshold.value, ex.crf.value = 0.3, False
    ex.run.value = b  # fg 0.4 > 0.3: still the GT; the other run has no sweep, so 0.3 is the default
    assert ex.state()["run"] == "b-run" and ex.threshold.value == 0.3
    assert ex.iou == pytest.approx(1.0)
    ex.threshold.value = 0.45
    assert (ex.pseudo == 0).all()

    classes = [v for _, v in ex.cls.options]
    assert classes == [int(k) for k in np.flatnonzero(ds.label(index) > 0.5)]

    # Runs read as method, preset, seed; previous / next step through the images, and the chosen
    # class stays where the next image has it.
    assert [label for label, _ in ex.run.options] == [f"cam · tiny · seed 0 · {tiny_root.name} (run)"] * 2
    labels = [set(np.flatnonzero(ds.label(i) > 0.5)) for i in range(len(ds))]
    # an image pair sharing a class that is not the next image's first (which a reset would pick)
    i, shared = next((i, c) for i in range(len(ds) - 1) for c in labels[i] & labels[i + 1] if c != min(labels[i + 1]))
    ex.image.value = ds.ids[i]
    ex.cls.value = int(shared)
    ex.next.click()
    assert ex.image.value == ds.ids[i + 1] and ex.cls.value == shared
    ex.previous.click()
    assert ex.image.value == ds.ids[i] and ex.cls.value == shared
    ex.image.value = ds.ids[-1]
    ex.step(1)
    assert ex.image.value == ds.ids[0]


def test_the_crf_switch_moves_a_chosen_threshold_to_the_one_chosen_with_crf(tiny_root: Path, tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "runs", "a-run", tiny_root, fg=0.8, best=0.5)
    write_json(run / "crf_threshold_train.json", {"key": {}, "result": {"best_threshold": 0.35}})
    ex = CAMExplorer([run])
    ex.image.value = VOCDataset(tiny_root, "val").ids[0]
    assert ex.threshold.value == pytest.approx(0.5)
    ex.crf.value = True
    assert ex.threshold.value == pytest.approx(0.35) and "threshold 0.35, CRF" in ex.info.value
    ex.crf.value = False
    assert ex.threshold.value == pytest.approx(0.5)
    ex.threshold.value = 0.6  # moved by hand: the switch leaves it where the user put it
    ex.crf.value = True
    assert ex.threshold.value == pytest.approx(0.6) and "threshold 0.60, CRF" in ex.info.value


def test_explorer_without_runs_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="class maps"):
        CAMExplorer([], split="val")


def test_explorer_finds_failures_and_compares_two_runs(tiny_root: Path, tmp_path: Path) -> None:
    ds = VOCDataset(tiny_root, "val")
    with_objects = [i for i in range(len(ds)) if ds.label(i).sum() > 0]
    missed = frozenset(with_objects[1::2])
    good = _fake_run(tmp_path / "runs", "good-run", tiny_root, fg=0.8, best=0.5)
    poor = _fake_run(tmp_path / "runs", "poor-run", tiny_root, fg=0.8, best=0.5, missed=missed)
    ex = CAMExplorer([poor, good])
    single_view = decode_png(ex.view.value)

    # Worst first: the missed images (all background) lead, every listed id carries its mIoU.
    ex.order.value = "worst"
    listed = [v for _, v in ex.image.options]
    ious = ex.ious(poor)
    assert [ious[i] for i in listed] == sorted(ious.values())
    assert set(listed[:len(missed)]) == {ds.ids[i] for i in missed}
    assert all("mIoU" in label for label, _ in ex.image.options)
    ex.image.value = listed[0]  # a new order keeps the image shown; next follows the order
    ex.next.click()
    assert ex.image.value == listed[1]

    # Only the images whose label holds the chosen class, in the same order.
    c = int(np.flatnonzero(ds.label(with_objects[0]) > 0.5)[0])
    ex.with_class.value = c
    kept = [v for _, v in ex.image.options]
    assert kept == [i for i in listed if ds.label(ds.ids.index(i))[c] > 0.5] and kept

    # The good run beside the poor one on a missed image: its own mIoU, a second row in the view.
    ex.with_class.value = -1
    ex.image.value = ds.ids[min(missed)]
    ex.beside.value = good
    assert ex.iou < 1.0 and ex.beside_iou == pytest.approx(1.0)
    assert ex.state()["beside"] == "good-run" and ex.info.value.count("image mIoU") == 2
    assert decode_png(ex.view.value).shape[0] > single_view.shape[0]
    ex.beside.value = ""
    assert ex.beside_iou is None and ex.state()["beside"] is None

    # A run on other data has no maps of this image: said, not an error.
    other = _fake_run(tmp_path / "runs", "other-run", tiny_root, fg=0.8)
    for path in (other / "cams" / "val").glob("*.npz"):
        path.unlink()
    ex = CAMExplorer([poor, other])
    ex.beside.value = other
    assert ex.beside_iou is None and "has no class maps" in ex.info.value
