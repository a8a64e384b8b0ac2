"""Bad input is an error that names the file (and the image id), never a silently wrong result.

One test (or group) per fault: duplicate / BOM / path-like ids in split lists, non-0/1 or
unpickle-unsafe cls_labels.npy, 16-bit and truncated label PNGs, context masks of the wrong size,
ground truth without a prediction in `wsss eval`, and images too large for multi-scale inference.
"""
from __future__ import annotations

import os
import pickle
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsss.data import synthvoc
from wsss.data.voc import DatasetError, VOCDataset, load_cls_labels
from wsss.inference import MAX_PIXELS_ENV, MAX_SCALED_PIXELS, infer_class_maps, load_cam, max_scaled_pixels
from wsss.io import load_label_dict, load_label_png, save_label_png
from wsss.metrics import evaluate_folders, read_id_list, register


def make_voc(root: Path, ids: tuple[str, ...] = ("a", "b"), size: tuple[int, int] = (8, 6)) -> Path:
    """A minimal VOC-layout tree: every image holds class 1 (a square) on background."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    (root / "labels.txt").write_text("cat\ndog\n")
    w, h = size
    mask = np.zeros((h, w), np.uint8)
    mask[1:4, 1:4] = 1
    for sid in ids:
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / "JPEGImages" / f"{sid}.jpg")
        Image.fromarray(mask, mode="L").save(root / "SegmentationClass" / f"{sid}.png")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def write_split(root: Path, text: str, encoding: str = "utf-8") -> Path:
    path = root / "ImageSets" / "Segmentation" / "train.txt"
    path.write_text(text, encoding=encoding)
    return path


def run_eval_cli(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="wsss")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", *argv, "--no-progress"])
    return int(args.func(args) or 0)


# ------------------------------------------------------------------ 1-3: split lists


def test_duplicate_id_in_split_is_an_error(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc")
    split = write_split(root, "a\nb\na\n")
    with pytest.raises(DatasetError, match=rf"{re.escape(str(split))} lists 1 id\(s\) more than once, e.g. \['a'\]"):
        VOCDataset(root, "train")
    with pytest.raises(ValueError, match=rf"{re.escape(str(split))} .*more than once.*'a'"):  # wsss eval --list
        read_id_list(split)


def test_bom_blank_lines_and_whitespace_in_split(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc")
    split = write_split(root, "a\n\n   b  \n\n", encoding="utf-8-sig")  # Windows editors write a BOM
    assert split.read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_id_list(split) == ["a", "b"]
    assert VOCDataset(root, "train").ids == ["a", "b"]


@pytest.mark.parametrize("bad_id", ["../../x", "sub/a", "..", "a\\b"])
def test_path_like_id_is_rejected(tmp_path: Path, bad_id: str) -> None:
    root = make_voc(tmp_path / "voc")
    split = write_split(root, f"a\n{bad_id}\n")
    pattern = rf"{re.escape(str(split))}: 1 id\(s\) are not plain file names.*{re.escape(repr(bad_id))}"
    with pytest.raises(DatasetError, match=pattern):
        VOCDataset(root, "train")
    with pytest.raises(ValueError, match=pattern):
        read_id_list(split)


# ------------------------------------------------------------------ 4-5: cls_labels.npy


@pytest.mark.parametrize("bad", [3.0, float("nan"), -1.0])
def test_label_values_other_than_0_and_1(tmp_path: Path, bad: float) -> None:
    root = make_voc(tmp_path / "voc")
    path = root / "cls_labels.npy"
    np.save(path, {"a": np.array([1.0, 0.0]), "b": np.array([0.0, bad])})
    pattern = rf"{re.escape(str(path))}: label vector of 'b' holds {bad}; entries must be 0 or 1"
    with pytest.raises(DatasetError, match=pattern):
        VOCDataset(root, "train")


def test_scalar_cls_labels_names_the_file_and_the_format(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc")
    path = root / "cls_labels.npy"
    np.save(path, np.float64(1.0))
    with pytest.raises(DatasetError, match=rf"{re.escape(str(path))} is not a dict .*float64 array of shape \(\).*"
                                           r"expected np.save of a dict \{image id: multi-hot label vector\}"):
        VOCDataset(root, "train")
    np.save(path, np.array([{"a": np.array([1, 0])}], dtype=object))  # a list-like object array
    with pytest.raises(DatasetError, match=rf"{re.escape(str(path))} is not a dict .*object array of shape \(1,\)"):
        load_label_dict(path)


def test_legit_label_dicts_load_without_unrestricted_pickle(tmp_path: Path) -> None:
    irnet, eps, proto2 = tmp_path / "irnet.npy", tmp_path / "eps.npy", tmp_path / "proto2.npy"
    np.save(irnet, {2007000032: np.array([1, 0], np.float32), np.int32(2007000039): np.array([0, 1])})
    np.save(eps, {"2007_000032": np.array([1.0, 0.0]), "2007_000039": np.array([0, 1], np.uint8)})
    # Files from older numpy pickle with protocol 2 (bytes via _codecs.encode).
    arr = np.array({"2007_000032": np.array([1.0, 0.0])}, dtype=object)
    with open(proto2, "wb") as f:
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(arr))
        pickle.dump(arr, f, protocol=2)
    labels = load_label_dict(irnet)
    assert set(labels) == {2007000032, 2007000039}
    assert all(v.dtype == np.float32 and v.shape == (2,) for v in labels.values())
    assert set(load_cls_labels(irnet, 2)) == set(load_cls_labels(eps, 2)) == {"2007_000032", "2007_000039"}
    np.testing.assert_array_equal(load_cls_labels(proto2, 2)["2007_000032"], [1, 0])


class _RunsACommand:
    """Pickles as a call of os.system, as a crafted cls_labels.npy would."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return os.system, (self.command,)


def test_crafted_pickle_is_refused_and_not_run(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc")
    sentinel = tmp_path / "SENTINEL"
    path = root / "cls_labels.npy"
    np.save(path, {"a": np.array([1, 0]), "b": _RunsACommand(f"touch {shlex.quote(str(sentinel))}")})
    for load in (lambda: VOCDataset(root, "train"), lambda: synthvoc.load_cls_labels(root)):
        with pytest.raises(DatasetError, match=rf"{re.escape(str(path))} .*would call (posix|nt)\.system.*not run"):
            load()
        assert not sentinel.exists()


# ------------------------------------------------------------------ 6-9: wsss eval


def _eval_case(root: Path, ids: tuple[str, ...] = ("a", "b")) -> tuple[Path, Path]:
    """Predictions equal to the ground truth (classes 0..2 on 4x4) for every id."""
    label = np.repeat(np.arange(4, dtype=np.uint8) % 3, 4).reshape(4, 4)
    for i in ids:
        save_label_png(root / "pred" / f"{i}.png", label)
        save_label_png(root / "gt" / f"{i}.png", label)
    return root / "pred", root / "gt"


def test_16bit_label_png_above_255_is_an_error(tmp_path: Path) -> None:
    pred_dir, gt_dir = _eval_case(tmp_path)
    gt = load_label_png(gt_dir / "a.png")
    # 256 + class: read as uint8 it wraps onto the right classes and scored 100 %.
    Image.fromarray(gt.astype(np.uint16) + 256).save(pred_dir / "a.png")
    with pytest.raises(DatasetError, match=rf"label map {re.escape(str(pred_dir / 'a.png'))} holds values 256..258"):
        evaluate_folders(pred_dir, gt_dir, progress=False)
    Image.fromarray(gt.astype(np.uint16)).save(pred_dir / "a.png")  # 16-bit, values fit: fine
    with Image.open(pred_dir / "a.png") as img:
        assert img.mode in ("I;16", "I")
    assert evaluate_folders(pred_dir, gt_dir, progress=False)["miou"] == 1.0


def test_truncated_png_names_the_file(tmp_path: Path) -> None:
    pred_dir, gt_dir = _eval_case(tmp_path)
    noise = np.random.default_rng(0).integers(0, 3, (64, 64)).astype(np.uint8)  # an IDAT of ~1 kB
    save_label_png(gt_dir / "a.png", noise)
    save_label_png(pred_dir / "a.png", noise)
    data = (gt_dir / "a.png").read_bytes()
    (gt_dir / "a.png").write_bytes(data[: len(data) - 300])  # cut inside the pixel data
    with pytest.raises(DatasetError, match=rf"label map {re.escape(str(gt_dir / 'a.png'))} cannot be read") as err:
        evaluate_folders(pred_dir, gt_dir, progress=False, num_workers=1)
    assert isinstance(err.value.__cause__, OSError)
    # The dataset reader names the file as well.
    root = make_voc(tmp_path / "voc")
    mask = root / "SegmentationClass" / "b.png"
    mask.write_bytes(mask.read_bytes()[:60])
    with pytest.raises(DatasetError, match=rf"mask {re.escape(str(mask))} cannot be read"):
        VOCDataset(root, "train")


def test_context_mask_of_the_wrong_size(tmp_path: Path) -> None:
    pred_dir, gt_dir = _eval_case(tmp_path)
    save_label_png(tmp_path / "ctx" / "a.png", np.zeros((4, 4), np.uint8))
    save_label_png(tmp_path / "ctx" / "b.png", np.zeros((3, 4), np.uint8))
    ctx = re.escape(str(tmp_path / "ctx" / "b.png"))
    with pytest.raises(DatasetError, match=rf"context mask {ctx} has shape \(3, 4\), expected \(4, 4\)"):
        evaluate_folders(pred_dir, gt_dir, context_dir=tmp_path / "ctx", progress=False)


def test_ground_truth_without_prediction(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred_dir, gt_dir = _eval_case(tmp_path, ids=("a", "b", "c", "d"))
    (pred_dir / "c.png").unlink()
    (pred_dir / "d.png").unlink()
    # Without --list: the ground-truth folder says which images should have a prediction.
    with pytest.raises(FileNotFoundError, match=rf"2 of 4 images have no prediction in {re.escape(str(pred_dir))}"
                                                r".*ids c, d.*--allow-missing"):
        run_eval_cli(["--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir)])
    with pytest.warns(UserWarning, match=r"2 of 4 images have no prediction.*scoring the other 2 only"):
        assert run_eval_cli(["--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--allow-missing"]) == 0
    assert re.search(r"images\s+2\b", capsys.readouterr().out)
    # With --list: every missing id is named, not only the first.
    (tmp_path / "val.txt").write_text("a\nb\nc\nd\n")
    with pytest.raises(FileNotFoundError, match=r"2 of 4 images have no prediction.*c\.png; ids c, d"):
        run_eval_cli(["--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--list", str(tmp_path / "val.txt")])


# ------------------------------------------------------------------ 10: inference on huge images


class _Images(torch.utils.data.Dataset):
    """Eval-transformed samples of the given sizes; images are expanded views, so no memory is used."""

    def __init__(self, sizes: dict[str, tuple[int, int]]) -> None:
        self.ids = list(sizes)
        self.sizes = sizes

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        h, w = self.sizes[self.ids[i]]
        return {"id": self.ids[i], "image": torch.zeros(3, 1, 1).expand(3, h, w), "label": torch.tensor([1.0, 0.0])}


class _PassRecorder:
    """Zero class maps of 2 classes at stride 1, recording each forward pass's input shape."""

    def __init__(self) -> None:
        self.passes: list[tuple[int, ...]] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.passes.append(tuple(x.shape))
        return torch.zeros(x.shape[0], 2, *x.shape[-2:])


def test_a_huge_image_runs_within_the_pixel_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2000 x 1500 photo under a budget of 1 M pixels per pass: scale 0.5 (0.75 M px) runs its
    flipped copy in a second pass; scales 1 and 2 (3 M and 12 M px) run at the largest size that
    fits, 1154 x 866, with a warning; the maps come back at the image's size."""
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    assert max_scaled_pixels() == MAX_SCALED_PIXELS == 4096 * 4096
    monkeypatch.setenv(MAX_PIXELS_ENV, "5e7")
    assert max_scaled_pixels() == 5 * 10**7
    net = _PassRecorder()
    data = _Images({"small": (8, 8), "2008_huge": (1500, 2000)})
    with pytest.warns(UserWarning, match=r"a 2000x1500 image at scale 2 exceeds 1\.0 M pixels .* runs at 1154x866"):
        infer_class_maps(net, data, tmp_path / "cams", scales=(0.5, 1.0, 2.0), batch_size=2, progress=False,
                         max_pixels=10**6)
    assert all(n * h * w <= 10**6 for n, _, h, w in net.passes)
    assert [p for p in net.passes if p[-1] > 16] == [(1, 3, 750, 1000)] * 2 + [(1, 3, 866, 1154)] * 4
    keys, cam = load_cam(tmp_path / "cams" / "2008_huge.npz")
    assert keys.tolist() == [0] and cam.shape == (1, 1500, 2000)
    assert load_cam(tmp_path / "cams" / "small.npz")[1].shape == (1, 8, 8)


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: tried to allocate 9 GB"),
])
def test_out_of_memory_names_the_image(tmp_path: Path, error: RuntimeError) -> None:
    def oom(x: torch.Tensor) -> torch.Tensor:
        raise error

    expected = r"image\(s\) img_7 \(12x10, batch of 1.*lower the pixel budget per pass \(16\.8 M, WSSS_MAX_INFER_PIXELS\)"
    with pytest.raises(torch.OutOfMemoryError, match=expected) as err:
        infer_class_maps(oom, _Images({"img_7": (10, 12)}), tmp_path / "cams", progress=False)
    assert err.value.__cause__ is error


def test_other_runtime_errors_pass_through(tmp_path: Path) -> None:
    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="^mat1 and mat2"):
        infer_class_maps(broken, _Images({"img_7": (10, 12)}), tmp_path / "cams", progress=False)
