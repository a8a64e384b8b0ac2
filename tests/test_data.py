"""The VOC reader and the joint augmentations: every bad input named, every convertible image
converted, masks and saliency aligned with the image after augmentation."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.data.transforms import Compose, RandomCrop, RandomHFlip, RandomRescale, ToTensor, train_transform
from wsss.data.voc import DatasetError, VOCDataset, load_cls_labels, read_rgb

CLASSES = ("cat", "dog")


def make_voc(root: Path, ids=("a", "b"), size=(20, 16), with_saliency: bool = False) -> Path:
    """A minimal VOC-layout tree: two images with a class-1 square and a class-2 square."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    w, h = size
    for i, sid in enumerate(ids):
        img = np.full((h, w, 3), 40 * (i + 1), dtype=np.uint8)
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[2:8, 2:8] = 1
        mask[9:14, 10:18] = 2
        img[mask > 0] = 200
        Image.fromarray(img).save(root / "JPEGImages" / f"{sid}.jpg", quality=95)
        Image.fromarray(mask, mode="L").save(root / "SegmentationClass" / f"{sid}.png")
        if with_saliency:
            (root / "SaliencyMaps").mkdir(exist_ok=True)
            Image.fromarray((mask > 0).astype(np.uint8) * 255).save(root / "SaliencyMaps" / f"{sid}.png")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.fixture()
def voc(tmp_path: Path) -> Path:
    return make_voc(tmp_path / "voc")


def test_reads_a_valid_tree(voc: Path) -> None:
    ds = VOCDataset(voc, "train")
    s = ds[0]
    assert ds.class_names == CLASSES
    assert s["image"].shape == (16, 20, 3) and s["image"].dtype == np.uint8
    assert s["mask"].shape == (16, 20)
    np.testing.assert_array_equal(s["label"], [1.0, 1.0])  # derived from the mask without cls_labels.npy


def test_missing_root_and_folders(tmp_path: Path, voc: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        VOCDataset(tmp_path / "nowhere")
    shutil.rmtree(voc / "JPEGImages")
    with pytest.raises(DatasetError, match="JPEGImages is missing"):
        VOCDataset(voc)


def test_unknown_split_lists_the_available_ones(voc: Path) -> None:
    with pytest.raises(DatasetError, match=r"val\.txt does not exist.*\['train'\]"):
        VOCDataset(voc, "val")


def test_listed_id_without_image_or_mask(voc: Path) -> None:
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("a\nb\nc\n")
    with pytest.raises(DatasetError, match=r"mask .*c\.png is missing"):
        VOCDataset(voc, "train")  # labels are derived from masks, so the missing mask surfaces at once
    shutil.copy(voc / "SegmentationClass" / "a.png", voc / "SegmentationClass" / "c.png")
    ds = VOCDataset(voc, "train")
    with pytest.raises(DatasetError, match=r"image .*c\.jpg is missing"):
        ds[2]


def test_mask_and_image_of_different_size(voc: Path) -> None:
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="L").save(voc / "SegmentationClass" / "b.png")
    ds = VOCDataset(voc, "train")
    with pytest.raises(DatasetError, match=r"b\.png is 10x10 but its image is 20x16"):
        ds[1]


def test_mask_with_colours_or_unknown_class(voc: Path) -> None:
    Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(voc / "SegmentationClass" / "a.png")
    with pytest.raises(DatasetError, match=r"a\.png has mode 'RGB'"):
        VOCDataset(voc, "train")
    mask = np.zeros((16, 20), np.uint8)
    mask[0, 0] = 7
    Image.fromarray(mask, mode="L").save(voc / "SegmentationClass" / "a.png")
    with pytest.raises(DatasetError, match=r"a\.png holds class index 7, but the dataset has 2 classes"):
        VOCDataset(voc, "train")


@pytest.mark.parametrize("fmt", ["irnet", "eps"])
def test_cls_labels_formats(tmp_path: Path, fmt: str) -> None:
    root = make_voc(tmp_path / "voc", ids=("2007_000032", "2007_000039"))
    key = (lambda s: int(s.replace("_", ""))) if fmt == "irnet" else str
    np.save(root / "cls_labels.npy", {key("2007_000032"): np.array([1, 0]), key("2007_000039"): np.array([0, 1])})
    ds = VOCDataset(root, "train", with_mask=False)
    np.testing.assert_array_equal(ds.label(0), [1, 0])
    np.testing.assert_array_equal(ds.label(1), [0, 1])


def test_label_vector_of_wrong_length(voc: Path) -> None:
    np.save(voc / "cls_labels.npy", {"a": np.array([1, 0, 0]), "b": np.array([0, 1, 0])})
    with pytest.raises(DatasetError, match=r"label vector of 'a' has length 3, expected 2"):
        VOCDataset(voc, "train")
    np.save(voc / "cls_labels.npy", {"a": np.array([1, 0])})
    with pytest.raises(DatasetError, match=r"no label for 1 listed id"):
        VOCDataset(voc, "train")
    (voc / "cls_labels.npy").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="is not a dict saved with np.save"):
        load_cls_labels(voc / "cls_labels.npy", 2)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "1"])
def test_convertible_image_modes(tmp_path: Path, mode: str) -> None:
    rgb = np.zeros((8, 10, 3), np.uint8)
    rgb[:, 5:] = (250, 250, 250)
    img = Image.fromarray(rgb)
    img = img.convert("L").convert(mode) if mode in ("I;16", "1") else img.convert(mode)
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    img.save(path)
    out = read_rgb(path)
    assert out.shape == (8, 10, 3) and out.dtype == np.uint8
    # Left half dark, right half bright, whatever the mode.
    assert out[:, :5].mean() < 30 and out[:, 5:].mean() > 200


def test_rgba_transparency_composited_on_black(tmp_path: Path) -> None:
    rgba = np.full((4, 4, 4), 255, np.uint8)
    rgba[:, :2, 3] = 0  # transparent left half
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "x.png")
    out = read_rgb(tmp_path / "x.png")
    assert (out[:, :2] == 0).all() and (out[:, 2:] == 255).all()


def test_unreadable_image(voc: Path) -> None:
    (voc / "JPEGImages" / "a.jpg").write_bytes(b"\x00garbage")
    with pytest.raises(DatasetError, match=r"image .*a\.jpg cannot be read"):
        VOCDataset(voc, "train")[0]


def test_saliency_missing_and_resized(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc", with_saliency=True)
    ds = VOCDataset(root, "train", with_saliency=True)
    np.testing.assert_array_equal(ds[0]["saliency"] > 0.5, ds[0]["mask"] > 0)
    Image.fromarray(np.full((8, 10), 255, np.uint8)).save(root / "SaliencyMaps" / "a.png")
    with pytest.warns(UserWarning, match=r"a\.png is 10x8, image is 20x16: resized"):
        sal = VOCDataset(root, "train", with_saliency=True)[0]["saliency"]
    assert sal.shape == (16, 20)
    (root / "SaliencyMaps" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"saliency map .*b\.png is missing"):
        VOCDataset(root, "train", with_saliency=True)[1]
    with pytest.raises(DatasetError, match="saliency folder .* does not exist"):
        VOCDataset(root, "train", saliency_dir=tmp_path / "nope")


def test_joint_augmentation_keeps_mask_and_saliency_aligned(tmp_path: Path) -> None:
    """Encode the mask into the image and the saliency, augment, and check they still agree."""
    root = make_voc(tmp_path / "voc", size=(40, 32), with_saliency=True)
    # The image is 200 inside objects and dark outside; saliency is 1 inside objects.
    ds = VOCDataset(root, "train", with_saliency=True, transform=Compose([
        RandomRescale(0.6, 1.6), RandomHFlip(0.5), RandomCrop(36), ToTensor()]))
    for epoch in range(6):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            s = ds[i]
            mask, valid, sal = s["mask"].numpy(), s["valid"].numpy(), s["saliency"].numpy()
            bright = s["image"].numpy().mean(0) > 0.5  # normalized intensity: bright inside objects
            # Away from interpolation edges the three agree exactly.
            inside = (mask > 0) & (mask != 255)
            assert (mask[~valid] == 255).all()
            agree = (bright == inside)[valid].mean()
            assert agree > 0.93, agree
            assert ((sal > 0.5) == inside)[valid].mean() > 0.93


def test_augmentation_is_reproducible_per_seed_epoch_index(voc: Path) -> None:
    ds = VOCDataset(voc, "train", transform=train_transform(16), seed=3)
    a, b = ds[1]["image"], ds[1]["image"]
    assert (a == b).all()
    ds.set_epoch(1)
    assert not (ds[1]["image"] == a).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        VOCDataset(voc, "train", transform=train_transform(16), seed=3)[1]


def test_split_statistics_on_a_hand_made_tree(tmp_path: Path) -> None:
    from wsss.data.stats import split_statistics

    root = make_voc(tmp_path / "voc", with_saliency=True)
    st = split_statistics(VOCDataset(root, "train"), progress=False)
    np.testing.assert_array_equal(st.cooccurrence, [[2, 2], [2, 2]])
    np.testing.assert_array_equal(st.classes_per_image, [0, 0, 2])
    np.testing.assert_array_equal(st.pixels_per_class, [2 * (320 - 36 - 40), 2 * 36, 2 * 40])
    assert st.saliency == {"iou": 1.0, "precision": 1.0, "recall": 1.0}
    # Uniform objects on a flat background: every image edge is on an object outline.
    assert st.edges["intra_object_share"] == 0.0 and st.edges["edge_pixels"] > 0
