"""The "+ CRF" rows' background threshold: chosen on train with CRF, by a climb over the grid."""
from __future__ import annotations

from pathlib import Path

import pytest

import wsss.evaluation as evaluation
from wsss.evaluation import climb_crf_threshold, evaluate_cams
from wsss.experiment import Experiment, ExperimentConfig
from wsss.refine.crf import CRFParams

GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


def _scripted_curve(monkeypatch: pytest.MonkeyPatch, curve: dict[float, float]) -> list[float]:
    """Make `evaluate_cams` score each threshold by `curve`; returns the thresholds asked for."""
    asked: list[float] = []

    def fake(cam_dir, dataset, thr, crf, progress, boundary):
        asked.append(thr)
        return {"miou": curve[thr]}

    monkeypatch.setattr(evaluation, "evaluate_cams", fake)
    return asked


def test_the_climb_walks_down_from_the_raw_choice_to_the_crf_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _scripted_curve(monkeypatch, {0.1: 0.60, 0.2: 0.66, 0.3: 0.70, 0.4: 0.65, 0.5: 0.58, 0.6: 0.50})
    result = climb_crf_threshold("cams", list(range(10)), 0.5, CRFParams(), GRID, progress=False)
    assert result["best_threshold"] == 0.3 and result["start"] == 0.5
    assert asked == [0.4, 0.5, 0.3, 0.2]  # stops one step past the peak, never tries above the start
    assert result["thresholds"] == [0.2, 0.3, 0.4, 0.5] and result["miou"] == [0.66, 0.70, 0.65, 0.58]


def test_the_climb_walks_up_where_a_lower_threshold_is_worse(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _scripted_curve(monkeypatch, {0.1: 0.50, 0.2: 0.55, 0.3: 0.60, 0.4: 0.65, 0.5: 0.64, 0.6: 0.4})
    result = climb_crf_threshold("cams", list(range(10)), 0.2, CRFParams(), GRID, progress=False)
    assert result["best_threshold"] == 0.4 and sorted(set(asked)) == [0.1, 0.2, 0.3, 0.4, 0.5]


def test_the_climb_keeps_the_start_when_both_neighbours_are_no_better(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _scripted_curve(monkeypatch, {0.1: 0.5, 0.2: 0.6, 0.3: 0.6, 0.4: 0.55, 0.5: 0.7, 0.6: 0.9})
    assert climb_crf_threshold("cams", [0], 0.3, CRFParams(), GRID, progress=False)["best_threshold"] == 0.3
    assert sorted(asked) == [0.2, 0.3, 0.4]  # a tie does not move it; the far peak at 0.6 is not searched


def test_a_start_off_the_grid_is_an_error() -> None:
    with pytest.raises(ValueError, match="not on the grid"):
        climb_crf_threshold("cams", [0], 0.35, CRFParams(), GRID, progress=False)


@pytest.mark.slow
def test_crf_rows_use_the_threshold_chosen_on_train_with_crf(tiny_root: Path, tmp_path: Path) -> None:
    exp = Experiment(ExperimentConfig.for_preset("tiny", data_root=str(tiny_root), run_root=str(tmp_path / "runs"),
                                                 max_steps=2), progress=False)
    thr = exp.crf_threshold()
    assert exp.evaluate(crf=True)["bg_threshold"] == thr and exp.evaluate()["bg_threshold"] == exp.best_threshold()
    # The reported split's oracle with CRF: the best of a climb on val from the train choice.
    scores, val_climb = exp.evaluate(crf=True), exp.crf_climb("val")
    assert val_climb["start"] == thr and scores["oracle_threshold"] == val_climb["best_threshold"]
    assert scores["oracle_miou"] >= scores["miou"] - 1e-9
    assert scores["oracle_miou"] == pytest.approx(max(val_climb["miou"]))
    assert exp.pseudo_masks(crf=True).name == f"train_thr{thr:.2f}_crf"
    # The choice is a local optimum of train's mIoU with CRF (the climb's own numbers, recomputed).
    train = exp.dataset("train")
    grid = list(exp.config.thresholds)

    def miou_with_crf(t: float) -> float:
        return evaluate_cams(exp.class_maps("train"), train, t, exp.config.crf, progress=False, boundary=False)["miou"]

    here = miou_with_crf(thr)
    neighbours = [grid[j] for j in (grid.index(thr) - 1, grid.index(thr) + 1) if 0 <= j < len(grid)]
    assert all(miou_with_crf(t) <= here + 1e-12 for t in neighbours)
    assert here >= miou_with_crf(exp.best_threshold()) - 1e-12
