"""SynthVOC's probe splits plant what they name, and a run is scored on them (wsss.analysis.probes)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wsss.data import synthvoc as sv
from wsss.inference import save_cam
from wsss.io import IGNORE_INDEX, load_label_png

CFG = sv.make_config("tiny")
CONTEXT_CLASSES = {sv.CLASS_NAMES.index(c) + 1 for c in sv.CONTEXT_OF}
PART_CLASSES = {sv.CLASS_NAMES.index(c) + 1 for c in sv.PART_DEFINED}


def _samples(probe: str | None, n: int = 24) -> list[sv.SynthSample]:
    """`n` images of a probe split, or of the dataset itself (the training distribution)."""
    return [sv.render_image(CFG, 0, i, probe) for i in range(n)]


def _present(sample: sv.SynthSample) -> set[int]:
    return {int(c) for c in np.unique(sample.label) if 0 < c < IGNORE_INDEX}


def test_objects_alone_have_no_context() -> None:
    samples = _samples("object_alone")
    assert all(_present(s) & CONTEXT_CLASSES for s in samples)  # a train or a boat in every image
    assert all(not s.context.any() for s in samples)


def test_swapped_contexts_lie_under_the_other_class() -> None:
    samples = _samples("swapped")
    assert sum(s.context.any() for s in samples) >= len(samples) // 2
    for s in samples:
        on = set(np.unique(s.context)) - {0}
        assert on <= _present(s) & CONTEXT_CLASSES  # marked with the class standing on it
        assert not (s.context > 0)[s.label > 0].any()  # context is background
    # the texture is the other context's: water (smooth, bluish) under a train, rails under a boat
    train = sv.CLASS_NAMES.index("train") + 1
    under_train = [s.image[s.context == train] for s in samples if (s.context == train).any()]
    under_val_train = [s.image[s.context == sv.CONTEXT_LABEL["rail"]] for s in _samples(None, 72)
                       if (s.context == sv.CONTEXT_LABEL["rail"]).any()]
    blue = lambda px: float(np.mean(px[:, 2].astype(float) - px[:, 0]))  # noqa: E731
    assert np.mean([blue(p) for p in under_train]) > np.mean([blue(p) for p in under_val_train]) + 20


def test_contexts_alone_come_without_their_objects() -> None:
    samples = _samples("context_alone")
    assert all(not (_present(s) & CONTEXT_CLASSES) for s in samples)
    assert sum(s.context.any() for s in samples) >= len(samples) * 3 // 4


def test_parts_lie_on_their_objects() -> None:
    val = _samples(None, 72)
    with_parts = [s for s in val if _present(s) & PART_CLASSES]
    assert with_parts and all(s.parts.any() for s in with_parts)
    assert all(not s.parts.any() for s in val if not _present(s) & PART_CLASSES)
    assert all(np.isin(s.label[s.parts], list(PART_CLASSES)).all() for s in val)


def test_part_interventions_change_the_paired_scene_only_at_the_part() -> None:
    kept, removed, moved = (_samples(p) for p in ("part_kept", "part_removed", "part_moved"))
    assert sum(k.parts.any() for k in kept) >= len(kept) * 3 // 4  # a part can hide behind a later object
    far_side = 0
    for k, r, m in zip(kept, removed, moved):
        assert _present(k) & PART_CLASSES
        assert np.array_equal(k.classes, r.classes) and np.array_equal(k.classes, m.classes)  # labels stay
        near_part = k.parts | (k.label == IGNORE_INDEX)  # the void band around an object moves with it
        assert not (np.any(k.image != r.image, axis=2) & ~near_part).any()
        assert not r.parts.any()
        changed = np.any(k.image != m.image, axis=2)
        assert not (changed & ~(near_part | m.parts | (m.label == IGNORE_INDEX))).any()
        assert np.isin(m.label[m.parts], list(PART_CLASSES)).all()
        if k.parts.any() and m.parts.any():  # mirrored through the body: the part's centroid crosses to the other side
            body = (r.label > 0) & (r.label < IGNORE_INDEX) & np.isin(r.label, list(PART_CLASSES))
            centre = np.argwhere(body).mean(axis=0)
            before, after = np.argwhere(k.parts).mean(axis=0) - centre, np.argwhere(m.parts).mean(axis=0) - centre
            far_side += float(before @ after) < 0
    assert far_side >= len(kept) * 3 // 4


def test_probe_tree_is_cached_and_rerenders_by_id(tmp_path: Path) -> None:
    root = sv.generate_probes(tmp_path / "p", "tiny", 0, n=4, progress=False)
    for name in sv.PROBES:
        ids = (root / "ImageSets" / "Segmentation" / f"{name}.txt").read_text().split()
        assert ids == [sv.probe_id(name, i) for i in range(4)]
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert sv.generate_probes(root, "tiny", 0, n=4, progress=False) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamps
    with pytest.raises(FileExistsError, match="different SynthVOC"):
        sv.generate_probes(root, "tiny", 0, n=5, progress=False)
    iid = sv.probe_id("swapped", 2)
    again = sv.render_by_id(root, iid)
    assert np.array_equal(again.label, load_label_png(root / "SegmentationClass" / f"{iid}.png"))
    assert np.array_equal(again.context, load_label_png(root / "ContextMasks" / f"{iid}.png"))
    with pytest.raises(ValueError, match="at least one image"):
        sv.generate_probes(tmp_path / "q", "tiny", 0, n=0, progress=False)


def test_mass_and_size_scores_of_perfect_and_spilled_maps(tiny_root: Path, tmp_path: Path) -> None:
    from wsss.analysis.probes import mass_and_size_scores
    from wsss.data.voc import VOCDataset

    ds = VOCDataset(tiny_root, "val", with_mask=True)
    perfect, spilled = tmp_path / "perfect", tmp_path / "spilled"
    for folder in (perfect, spilled):
        folder.mkdir()
    for i in range(len(ds)):
        s = ds.load(i)
        keys = np.flatnonzero(s["label"] > 0.5)
        maps = np.stack([(s["mask"] == k + 1).astype(np.float32) for k in keys])
        save_cam(perfect / f"{s['id']}.npz", keys, maps)
        save_cam(spilled / f"{s['id']}.npz", keys, maps + 0.25 * (s["mask"] == 0))  # a quarter on background
    exact = mass_and_size_scores(perfect, ds, 0.5)
    assert exact["relevance_mass"] == pytest.approx(1.0)
    assert exact["elsewhere_mass"] == pytest.approx(0.0, abs=1e-6)
    assert 0 < exact["part_mass"] < 0.3 and exact["part_mass"] + exact["body_mass"] == pytest.approx(1.0)
    assert all(exact[f"iou_{b}"] == pytest.approx(1.0) for b in ("small", "medium", "large")
               if not np.isnan(exact[f"iou_{b}"]))
    spill = mass_and_size_scores(spilled, ds, 0.5)
    assert spill["relevance_mass"] < 0.8 and spill["elsewhere_mass"] > 0.2
    assert spill["iou_large"] == pytest.approx(exact["iou_large"])  # below the threshold: no label moves


def test_a_near_empty_map_has_no_mass_to_split(tiny_root: Path, tmp_path: Path) -> None:
    """A map whose whole mass is a float16 step off the object is noise, not "all elsewhere": it
    is left out like an empty one (it was counted on one CPU and not on another)."""
    from wsss.analysis.probes import MIN_MAP_MASS, mass_and_size_scores
    from wsss.data.voc import VOCDataset

    ds = VOCDataset(tiny_root, "val", with_mask=True)
    empty, speck, faint = tmp_path / "empty", tmp_path / "speck", tmp_path / "faint"
    for folder in (empty, speck, faint):
        folder.mkdir()
    for i in range(len(ds)):
        s = ds.load(i)
        keys = np.flatnonzero(s["label"] > 0.5)
        maps = np.zeros((len(keys), *s["mask"].shape), np.float32)
        save_cam(empty / f"{s['id']}.npz", keys, maps)
        maps[:, 0, 0] = 2.4e-7  # a corner pixel, background in SynthVOC's layout
        save_cam(speck / f"{s['id']}.npz", keys, maps)
        maps[:, 0, 0] = 2 * MIN_MAP_MASS  # little, but enough to label a pixel at the lowest threshold
        save_cam(faint / f"{s['id']}.npz", keys, maps)
    for folder in (empty, speck):
        scores = mass_and_size_scores(folder, ds, 0.5)
        assert all(np.isnan(scores[k]) for k in ("relevance_mass", "part_mass", "body_mass", "elsewhere_mass"))
    faint_scores = mass_and_size_scores(faint, ds, 0.5)
    assert faint_scores["relevance_mass"] == pytest.approx(0.0, abs=1e-6)
    assert faint_scores["elsewhere_mass"] == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["cam", "eps", "vwl", "sance", "rcm_mam", "shape_cues"])
def test_every_method_gives_image_level_probabilities(method: str) -> None:
    import torch

    from wsss.methods.base import build_method

    torch.manual_seed(0)
    model = build_method(method, 8, "small", backbone_options={"widths": (8, 8, 16, 16)}).eval()
    with torch.no_grad():
        probs = model.image_probabilities(torch.randn(2, 3, 64, 64))
    assert probs.shape == (2, 8) and bool(((probs >= 0) & (probs <= 1)).all())


@pytest.mark.slow
def test_benchmark_row_of_a_trained_run(tiny_root: Path) -> None:
    from wsss.analysis.probes import benchmark_row, part_intervention_row
    from wsss.experiment import experiment_factory

    run = experiment_factory("tiny", progress=False)("cam")  # the tiny recipe's run, shared with notebook 08's test
    row = benchmark_row(run)
    groups = ["val", *sv.PROBES]
    assert row["worst_group_miou"] == min(row[f"miou_{g}"] for g in groups)
    assert row[f"miou_{row['worst_group']}"] == row["worst_group_miou"]
    assert 0 <= row["context_fp_swapped"] <= 1 and 0 <= row["relevance_mass"] <= 1
    assert (run.run_dir / "probes" / "swapped").is_dir()
    again = benchmark_row(run)  # cached maps, same numbers (NaN where a tiny CAM has no part-class mass)
    assert json.dumps(again, sort_keys=True) == json.dumps(row, sort_keys=True)
    parts = part_intervention_row(run)
    assert 0 <= parts["part_recognized_kept"] <= 1
    # nothing of the part is left to hold mass (NaN where a tiny CAM put no mass on these classes)
    assert np.isnan(parts["part_mass_removed"]) or parts["part_mass_removed"] == 0
    for name in ("kept", "removed", "moved"):
        shares = [parts[f"{where}_mass_{name}"] for where in ("part", "body", "elsewhere")]
        assert all(np.isnan(shares)) or sum(shares) == pytest.approx(1.0)


def test_part_intervention_summary_pairs_seeds_and_skips_nan() -> None:
    from wsss.analysis.probes import part_intervention_summary

    def row(method: str, seed: int, flips: float) -> dict:
        return {"method": method, "seed": seed, "label_flips_removed": flips}

    rows = [row("cam", 0, 0.5), row("cam", 1, 0.6), row("cam", 2, 0.7),
            row("vwl", 0, 0.4), row("vwl", 1, 0.4), row("vwl", 2, float("nan"))]
    cam, vwl = part_intervention_summary(rows, columns=["label_flips_removed"])
    assert cam["label_flips_removed"] == pytest.approx(0.6) and "label_flips_removed_diff" not in cam
    assert vwl["label_flips_removed"] == pytest.approx(0.4)  # the NaN seed left out
    assert vwl["label_flips_removed_diff"] == pytest.approx(-0.15)  # seeds 0 and 1: -0.1, -0.2
    assert vwl["label_flips_removed_low"] < -0.15 < vwl["label_flips_removed_high"]
    with pytest.raises(ValueError, match="no cam rows"):
        part_intervention_summary(rows[3:], columns=["label_flips_removed"])


@pytest.mark.slow
def test_part_intervention_study_writes_a_row_per_method_and_seed(tiny_root: Path) -> None:
    import csv

    from wsss.analysis.probes import part_intervention_study
    from wsss.paths import reports_dir

    rows = part_intervention_study("tiny", 1, ["eps"], log=lambda _msg: None)  # the suite's shared tiny runs
    assert [(r["method"], r["seed"]) for r in rows] == [("cam", 0), ("eps", 0)]
    with open(reports_dir() / "part_interventions.csv") as f:
        assert [(r["method"], r["seed"]) for r in csv.DictReader(f)] == [("cam", "0"), ("eps", "0")]
    with pytest.raises(ValueError, match="no method nope"):
        part_intervention_study("tiny", 1, ["nope"])
