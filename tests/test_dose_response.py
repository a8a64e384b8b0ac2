"""Dose-response sweeps: a claim measured at several strengths of the phenomenon it targets."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from wsss.claims import CLAIMS
from wsss.data import synthvoc
from wsss.dose_response import (KNOBS, knob_data_root, measure_dose_response, plot_dose_response,
                                read_dose_response, write_dose_response)
from wsss.paths import runs_dir


def test_every_knob_is_a_generator_setting_and_names_known_claims() -> None:
    fields = set(synthvoc.SynthConfig.__dataclass_fields__)
    keys = {c.key for c in CLAIMS}
    for name, knob in KNOBS.items():
        assert knob.field in fields and set(knob.claims) <= keys, name
        default = getattr(synthvoc.make_config("quick"), knob.field)
        assert default in knob.strengths, f"{name}: the preset's strength reuses the study's runs"


def test_refuses_unknown_knobs_claims_and_no_seeds() -> None:
    with pytest.raises(ValueError, match="no knob 'colour'; knobs: cooccurrence"):
        measure_dose_response("colour", "tiny", 2)
    with pytest.raises(ValueError, match="at least 1"):
        measure_dose_response("cooccurrence", "tiny", 0)
    with pytest.raises(ValueError, match="no claim eps_contxt"):
        measure_dose_response("cooccurrence", "tiny", 2, claims=["eps_contxt"])


def test_the_presets_strength_is_the_presets_dataset(tmp_path: Path) -> None:
    assert knob_data_root("tiny", "p_context", 0.9) is None
    root = Path(knob_data_root("tiny", "p_context", 0.5))
    assert json.loads((root / "meta.json").read_text())["params"]["p_context"] == 0.5
    assert knob_data_root("tiny", "p_context", 0.5) == str(root)  # cached


def test_a_longer_part_covers_more_of_the_creature() -> None:
    shares = []
    for scale in (0.5, 1.0, 2.0):
        full, part = synthvoc.shape_masks("horned", 256, 128, 160, 120, part_scale=scale)
        shares.append(part.sum() / full.sum())
    assert shares[0] < 0.05 < shares[1] < 0.1 < shares[2]
    with pytest.raises(ValueError, match="part_scale"):
        synthvoc.make_config("tiny", part_scale=0.0)


def test_rows_merge_by_knob_strength_and_claim(tmp_path: Path) -> None:
    def row(strength: float, diff: float, seeds: int = 3) -> dict:
        return {"knob": "cooccurrence", "field": "p_context", "strength": strength, "claim": "eps_context",
                "metric": "context_fp_rate", "better": "lower", "preset": "quick", "seeds": seeds, "method": "eps",
                "baseline": "cam", "method_mean": 0.1,
                "baseline_mean": 0.1 - diff, "diff_mean": diff, "ci_low": diff - 0.02 if seeds > 1 else float("-inf"),
                "ci_high": diff + 0.02 if seeds > 1 else float("inf"), "verdict": "reproduced"}

    write_dose_response([row(0.5, -0.1), row(0.9, -0.2)], tmp_path)
    write_dose_response([row(0.5, -0.05, seeds=1)], tmp_path)
    rows = read_dose_response(tmp_path)
    assert [(r["strength"], r["diff_mean"]) for r in rows] == [(0.5, -0.05), (0.9, -0.2)]
    fig = plot_dose_response(rows, "cooccurrence")
    (line,) = [c for c in fig.axes[0].containers]
    assert list(line.lines[0].get_ydata()) == pytest.approx([-5.0, -20.0])
    method, baseline = fig.axes[1].get_lines()  # both arms beside the effect
    assert list(method.get_ydata()) == pytest.approx([10.0, 10.0])
    assert list(baseline.get_ydata()) == pytest.approx([15.0, 30.0])


@pytest.mark.slow
def test_a_sweep_trains_each_strength_and_writes_its_rows(tiny_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WSSS_REPORTS", str(tmp_path / "reports"))
    # The tiny recipe's runs in the suite's shared folder: at the preset's strength (0.9) they are the
    # claims tests' (tests/test_claims.py), so only the other strength trains here.
    rows = measure_dose_response("cooccurrence", "tiny", 2, strengths=(0.5, 0.9), claims=("eps_context",),
                                 log=lambda _: None)
    assert [(r["strength"], r["claim"], r["seeds"]) for r in rows] == [(0.5, "eps_context", 2), (0.9, "eps_context", 2)]
    assert [r["strength"] for r in read_dose_response()] == [0.5, 0.9]
    configs = [json.loads(p.read_text()) for p in runs_dir().glob("*/config.json")]
    at_half = [c for c in configs if c["data_root"] and Path(c["data_root"]).name == "synthvoc-tiny-s0-p_context0.5"]
    assert sorted((c["method"], c["train"]["seed"]) for c in at_half) == [("cam", 0), ("cam", 1), ("eps", 0), ("eps", 1)]
    assert {(c["method"], c["train"]["seed"]) for c in configs if not c["data_root"]} >= {("cam", 0), ("eps", 1)}


def test_conditions_say_where_each_claim_holds_from_the_curves() -> None:
    from wsss.dose_response import conditions_markdown

    def row(strength: float, diff: float, verdict: str) -> dict:
        return {"paper": "EPS", "claim": "eps_context", "knob": "cooccurrence", "field": "p_context",
                "text": "saliency removes co-occurring context", "metric": "context_fp_rate", "better": "lower",
                "method": "eps", "baseline": "cam", "strength": strength, "diff_mean": diff, "seeds": 3,
                "verdict": verdict}

    text = conditions_markdown([row(0.9, -0.2, "reproduced"), row(0.5, -0.01, "inconclusive"),
                                row(0.7, -0.1, "reproduced")])
    assert text.startswith("**EPS.**")
    assert "inconclusive at 0.5; reproduced at 0.7, 0.9" in text
    assert "from -1.0 to -20.0 points" in text  # ordered by strength, not by row
