"""Real VOC without anything from another repository: image labels from the folder's own object
annotations (or masks), read back by the dataset, on images of VOC's varied sizes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.cli import main as cli
from wsss.data.voc import VOC_CLASS_NAMES, DatasetError, VOCDataset, image_labels
from wsss.io import VOC_PALETTE, load_label_dict

# id -> (width, height, objects in its XML, or None: no XML, the mask gives the label)
IMAGES = {
    "2007_000032": (500, 375, ["aeroplane", "aeroplane", "person"]),
    "2007_000039": (375, 500, ["tvmonitor"]),
    "2008_000002": (500, 333, None),
    "2009_000010": (333, 500, ["dog", "cat"]),
}
MASK_CLASSES = {"2008_000002": (5, 15)}  # bottle, person


def _annotation(objects: list[str], width: int, height: int) -> str:
    body = "".join(f"<object><name>{n}</name><difficult>{i % 2}</difficult></object>" for i, n in enumerate(objects))
    return f"<annotation><size><width>{width}</width><height>{height}</height></size>{body}</annotation>"


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    root = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (w, h, objects) in IMAGES.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{i}.jpg")
        mask = np.zeros((h, w), np.uint8)
        for k, c in enumerate(MASK_CLASSES.get(i, ())):
            mask[k * 40:(k + 1) * 40, :60] = c
        mask[-3:] = 255  # VOC's ignore border
        png = Image.fromarray(mask, mode="P")
        png.putpalette(VOC_PALETTE.reshape(-1).tolist())
        png.save(root / "SegmentationClass" / f"{i}.png")
        if objects is not None:
            (root / "Annotations" / f"{i}.xml").write_text(_annotation(objects, w, h))
    (root / "ImageSets/Segmentation/train.txt").write_text("2007_000032\n2008_000002\n2009_000010\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("2007_000039\n")
    return root


def test_voc_labels_are_written_in_irnets_format_and_read_back(voc: Path) -> None:
    assert cli(["data", "voc-labels", str(voc)]) == 0
    stored = load_label_dict(voc / "cls_labels.npy")
    assert sorted(stored) == [2007000032, 2007000039, 2008000002, 2009000010]  # IRNet's int keys
    names = list(VOC_CLASS_NAMES)
    expected = {"2007_000032": {"aeroplane", "person"}, "2007_000039": {"tvmonitor"},
                "2008_000002": {"bottle", "person"}, "2009_000010": {"cat", "dog"}}
    for split in ("train", "val"):
        ds = VOCDataset(voc, split)
        for index, i in enumerate(ds.ids):
            assert {names[k] for k in np.flatnonzero(ds.label(index))} == expected[i]
            sample = ds.load(index)
            w, h, _ = IMAGES[i]
            assert sample["image"].shape == (h, w, 3) and sample["mask"].shape == (h, w)


def test_an_image_without_annotation_or_mask_is_named(voc: Path) -> None:
    (voc / "Annotations" / "2007_000039.xml").unlink()
    (voc / "SegmentationClass" / "2007_000039.png").unlink()
    with pytest.raises(DatasetError, match="2007_000039.*neither"):
        image_labels(voc)


def test_an_unknown_class_in_an_annotation_is_named(voc: Path) -> None:
    (voc / "Annotations" / "2007_000039.xml").write_text(_annotation(["unicorn"], 375, 500))
    with pytest.raises(DatasetError, match=r"2007_000039.xml names classes \['unicorn'\]"):
        image_labels(voc)
