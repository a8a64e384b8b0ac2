"""SynthVOC: determinism, caching, VOC layout and the planted phenomena, on the tiny preset."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss import cli
from wsss.data import synthvoc as sv
from wsss.io import IGNORE_INDEX, load_label_png

K = len(sv.CLASS_NAMES)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sv.generate(tmp_path_factory.mktemp("synth") / "tiny", "tiny", seed=0, progress=False)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _split_ids(root: Path, split: str) -> list[str]:
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


def test_deterministic_per_seed(tiny: Path, tmp_path: Path) -> None:
    """The same files, byte for byte, for a seed, rendered by one process or by several."""
    again = sv.generate(tmp_path / "again", "tiny", seed=0, progress=False, workers=2)
    other = sv.generate(tmp_path / "other", "tiny", seed=1, progress=False)
    assert _hashes(again) == _hashes(tiny)
    ref, alt = _hashes(tiny), _hashes(other)
    assert ref.keys() == alt.keys()
    jpegs = [k for k in ref if k.startswith("JPEGImages")]
    assert all(ref[k] != alt[k] for k in jpegs)


def test_image_independent_of_split_sizes() -> None:
    """Per-image generators: growing a later split leaves earlier images unchanged."""
    small, big = sv.make_config("tiny"), sv.make_config("tiny", n_test=20)
    a, b = sv.render_image(small, 3, 5), sv.render_image(big, 3, 5)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)


def test_cache_and_conflicts(tmp_path: Path) -> None:
    root = sv.generate(tmp_path / "d", "tiny", seed=0, progress=False, n_train=8, n_val=8, n_test=8)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert sv.generate(root, "tiny", seed=0, progress=False, n_train=8, n_val=8, n_test=8) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamps

    with pytest.raises(FileExistsError, match="different SynthVOC"):
        sv.generate(root, "tiny", seed=1, progress=False, n_train=8, n_val=8, n_test=8)
    sv.generate(root, "tiny", seed=1, progress=False, n_train=8, n_val=4, n_test=4, overwrite=True)
    assert len(list((root / "JPEGImages").iterdir())) == 16  # the old dataset's extra files are gone
    assert json.loads((root / "meta.json").read_text())["seed"] == 1


def test_interrupted_run_is_redone_and_foreign_folder_refused(tmp_path: Path) -> None:
    root = sv.generate(tmp_path / "d", "tiny", seed=0, progress=False, n_train=8, n_val=8, n_test=8)
    (root / "meta.json").unlink()  # as if killed before the end: the incomplete marker is still there
    (root / ".synthvoc-incomplete").write_text("{}")
    (root / "JPEGImages" / "synth_999999.jpg").write_bytes(b"stale")
    sv.generate(root, "tiny", seed=0, progress=False, n_train=8, n_val=8, n_test=8)
    assert (root / "meta.json").exists() and not (root / ".synthvoc-incomplete").exists()
    assert not (root / "JPEGImages" / "synth_999999.jpg").exists()

    foreign = tmp_path / "voc"
    (foreign / "JPEGImages").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="no SynthVOC meta.json"):
        sv.generate(foreign, "tiny", progress=False)


def test_argument_validation() -> None:
    with pytest.raises(ValueError, match="valid presets: tiny, quick, full"):
        sv.generate("unused", "huge")
    with pytest.raises(ValueError, match="valid fields: image_size"):
        sv.make_config("tiny", n_trian=3)
    with pytest.raises(ValueError, match="p_context"):
        sv.make_config("tiny", p_context=1.5)


def test_layout_and_formats(tiny: Path) -> None:
    meta = json.loads((tiny / "meta.json").read_text())
    cfg = sv.make_config("tiny")
    assert meta["generator_version"] == sv.GENERATOR_VERSION and meta["seed"] == 0 and meta["preset"] == "tiny"
    assert meta["counts"] == {"train": 48, "val": 16, "test": 8}
    assert meta["phenomena"]["part_defined"] == ["horned", "tailed"]
    assert meta["phenomena"]["context"] == {"train": "rail", "boat": "water"}
    assert (tiny / "labels.txt").read_text().splitlines() == list(sv.CLASS_NAMES)

    ids = {s: _split_ids(tiny, s) for s in sv.SPLITS}
    assert {s: len(v) for s, v in ids.items()} == meta["counts"]
    all_ids = [i for v in ids.values() for i in v]
    assert len(set(all_ids)) == len(all_ids) and all(i.startswith("synth_") for i in all_ids)
    assert _split_ids(tiny, "trainval") == ids["train"] + ids["val"]

    labels = sv.load_cls_labels(tiny)
    assert set(labels) == set(all_ids)
    size = cfg.image_size
    for iid in all_ids:
        with Image.open(tiny / "JPEGImages" / f"{iid}.jpg") as im:
            assert im.mode == "RGB" and im.size == (size, size)
        with Image.open(tiny / "SegmentationClass" / f"{iid}.png") as im:
            assert im.mode == "P"
        with Image.open(tiny / "SaliencyMaps" / f"{iid}.png") as im:
            assert im.mode == "L" and im.size == (size, size)
        gt = load_label_png(tiny / "SegmentationClass" / f"{iid}.png")
        values = set(np.unique(gt).tolist())
        assert values <= set(range(K + 1)) | {IGNORE_INDEX}
        assert IGNORE_INDEX in values  # the void band around objects
        vec = labels[iid]
        assert vec.dtype == np.float32 and vec.shape == (K,) and vec.sum() >= 1
        assert {c + 1 for c in np.flatnonzero(vec)} == values - {0, IGNORE_INDEX}


def test_context_is_background_and_not_salient(tiny: Path) -> None:
    context_pixels = {c: 0 for c in ("train", "boat")}
    saliency_in, saliency_fg = [], []
    for iid in _split_ids(tiny, "train") + _split_ids(tiny, "val"):
        gt = load_label_png(tiny / "SegmentationClass" / f"{iid}.png")
        ctx = load_label_png(tiny / "ContextMasks" / f"{iid}.png")
        sal = np.asarray(Image.open(tiny / "SaliencyMaps" / f"{iid}.png"))
        assert set(np.unique(ctx).tolist()) <= {0, sv.CLASS_NAMES.index("train") + 1, sv.CLASS_NAMES.index("boat") + 1}
        assert np.all(gt[ctx > 0] == 0)
        for name in context_pixels:
            context_pixels[name] += int(np.count_nonzero(ctx == sv.CLASS_NAMES.index(name) + 1))
        if (ctx > 0).any():
            saliency_in.append(sal[ctx > 0].mean())
        fg = (gt > 0) & (gt != IGNORE_INDEX)
        saliency_fg.append(sal[fg].mean())
    assert all(n > 0 for n in context_pixels.values())
    assert np.mean(saliency_in) < 40 < np.mean(saliency_fg)


def test_part_defined_classes_differ_by_a_small_part() -> None:
    size = 128
    horned, horn = sv.shape_masks("horned", size, 64, 64, 80, angle=0.1, flip=-1)
    tailed, tail = sv.shape_masks("tailed", size, 64, 64, 80, angle=0.1, flip=-1)
    assert np.array_equal(horned & ~horn, tailed & ~tail)  # the very same body
    for full, part in ((horned, horn), (tailed, tail)):
        assert 0.03 <= part.sum() / full.sum() <= 0.15
    _, none = sv.shape_masks("disk", size, 64, 64, 80)
    assert not none.any()


def test_every_class_in_every_split(tiny: Path) -> None:
    labels = sv.load_cls_labels(tiny)
    for split in sv.SPLITS:
        counts = sum(labels[i] for i in _split_ids(tiny, split))
        assert np.all(counts >= 1), (split, counts)
    train_counts = sum(labels[i] for i in _split_ids(tiny, "train"))
    assert train_counts.min() >= 6  # 48 images, up to 3 objects each: no class is rare


def test_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # only the module of the command being run is imported
    out = tmp_path / "cli"
    assert cli.main(["data", "synth", "--preset", "tiny", "--out", str(out), "--seed", "2"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["preset"] == "tiny" and meta["seed"] == 2
    assert str(out) in capsys.readouterr().out

    monkeypatch.setenv("WSSS_DATA", str(tmp_path / "store"))
    assert sv.default_root("tiny", 5) == tmp_path / "store" / "synthvoc-tiny-s5"
    with pytest.raises(SystemExit):
        cli.main(["data", "synth", "--preset", "huge"])


def test_torchvision_reads_the_tree(tiny: Path, tmp_path: Path) -> None:
    tv_datasets = pytest.importorskip("torchvision.datasets")
    (tmp_path / "VOCdevkit").mkdir()
    (tmp_path / "VOCdevkit" / "VOC2012").symlink_to(tiny, target_is_directory=True)
    ds = tv_datasets.VOCSegmentation(str(tmp_path), year="2012", image_set="val", download=False)
    ids = _split_ids(tiny, "val")
    assert len(ds) == len(ids)
    for k in (0, len(ds) - 1):
        img, mask = ds[k]
        assert np.array_equal(np.asarray(img), np.asarray(Image.open(tiny / "JPEGImages" / f"{ids[k]}.jpg")))
        assert np.array_equal(np.asarray(mask), np.asarray(Image.open(tiny / "SegmentationClass" / f"{ids[k]}.png")))


def test_voc_sizes_cut_each_square_render_to_a_voc_shape() -> None:
    """Long side kept, short side at VOC's ratios, both orientations; the pixels are those of the
    square render and the image label is what the cut keeps."""
    square_cfg, voc_cfg = sv.make_config("tiny"), sv.make_config("tiny", voc_sizes=True)
    shapes = set()
    for index in range(40):
        square, voc = sv.render_image(square_cfg, 0, index), sv.render_image(voc_cfg, 0, index)
        h, w = voc.image.shape[:2]
        shapes.add((h, w))
        assert max(h, w) == 64 and voc.label.shape == voc.saliency.shape == voc.context.shape == (h, w)
        windows = [(t, l) for t in range(65 - h) for l in range(65 - w)
                   if np.array_equal(square.label[t:t + h, l:l + w], voc.label)
                   and np.array_equal(square.image[t:t + h, l:l + w], voc.image)]
        assert windows, f"image {index} is no window of its square render"
        kept = {c - 1 for c in np.unique(voc.label) if 0 < c <= sv.NUM_CLASSES}
        assert set(np.flatnonzero(voc.classes)) == kept
    assert any(h < w for h, w in shapes) and any(h > w for h, w in shapes) and len(shapes) >= 4
    assert any(min(s) % 8 for s in shapes)  # sizes that are no multiple of the stride
