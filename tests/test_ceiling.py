"""The ceiling study: final networks over seeds, weak/full ratios and whether the ceiling bounds."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from wsss.ceiling import (GROUND_TRUTH, ceiling_markdown, measure_finals, read_ceiling, run_ceiling, source_rows,
                          write_ceiling)
from wsss.claims import paired_interval
from wsss.io import read_csv_rows


def _scores(mious: list[float], crf_gain: float = 0.02) -> list[dict]:
    return [{"miou": m, "miou_crf": m + crf_gain, "precision": "fp32", "train_s": 10.0} for m in mious]


def test_ratios_and_the_ceiling_verdict_come_from_per_seed_pairs() -> None:
    ceiling = _scores([0.80, 0.84, 0.82])
    weak, crf = source_rows("eps", _scores([0.60, 0.66, 0.61]), ceiling, "quick")
    assert (weak["crf"], crf["crf"]) == ("no", "yes") and weak["seeds"] == 3
    assert (weak["ratio_mean"], weak["ratio_low"], weak["ratio_high"]) == pytest.approx(
        paired_interval([0.60 / 0.80, 0.66 / 0.84, 0.61 / 0.82]))
    assert weak["miou_mean"] == pytest.approx(0.62333333) and weak["ceiling"] == "bounded"
    # + CRF divides by the ground truth's network + CRF, but must stay below the ceiling without it
    assert crf["ratio_mean"] == pytest.approx(sum(w / c for w, c in zip([0.62, 0.68, 0.63], [0.82, 0.86, 0.84])) / 3)
    assert crf["gap_mean"] == pytest.approx(sum([0.80 - 0.62, 0.84 - 0.68, 0.82 - 0.63]) / 3)
    assert source_rows("eps", _scores([0.85, 0.88, 0.86]), ceiling, "quick")[0]["ceiling"] == "exceeded"
    assert source_rows("eps", _scores([0.70, 0.90, 0.80]), ceiling, "quick")[0]["ceiling"] == "inconclusive"
    assert source_rows("eps", _scores([0.6]), ceiling[:1], "quick")[0]["ceiling"] == "inconclusive"  # one seed
    full = source_rows(GROUND_TRUTH, ceiling, ceiling, "quick")
    assert [r["ratio_mean"] for r in full] == pytest.approx([1.0, 1.0])
    assert all(r["ceiling"] == "" and math.isnan(r["gap_mean"]) for r in full)
    with pytest.raises(ValueError, match="2 seeds of scores against 3"):
        source_rows("eps", _scores([0.6, 0.7]), ceiling, "quick")


def test_the_table_keeps_other_sources_and_reads_back(tmp_path: Path) -> None:
    ceiling = _scores([0.80, 0.84])
    write_ceiling(source_rows("cam", _scores([0.5, 0.52]), ceiling, "quick"), tmp_path)
    write_ceiling(source_rows(GROUND_TRUTH, ceiling, ceiling, "quick"), tmp_path)
    write_ceiling(source_rows("cam", _scores([0.55, 0.57]), ceiling, "quick"), tmp_path)  # replaces cam's rows
    rows = read_ceiling(tmp_path)
    assert [(r["source"], r["crf"]) for r in rows] == [(GROUND_TRUTH, "no"), (GROUND_TRUTH, "yes"), ("cam", "no"),
                                                        ("cam", "yes")]
    assert rows[2]["miou_mean"] == pytest.approx(0.56)
    md = (tmp_path / "ceiling.md").read_text()
    assert md == ceiling_markdown(rows)
    assert "| cam | no | 56.0 [" in md and "| bounded | 2 | fp32 |" in md
    assert read_ceiling(tmp_path / "nothing") == []
    assert all(r["code_version"] and r["measured"] for r in rows)
    replaced = read_csv_rows(tmp_path / "ceiling_history.csv")  # cam's first rows are kept, not lost
    assert [(r["source"], r["crf"], float(r["miou_mean"])) for r in replaced] == [("cam", "no", pytest.approx(0.51)),
                                                                                   ("cam", "yes", pytest.approx(0.53))]


def test_bad_requests_fail_before_training() -> None:
    with pytest.raises(ValueError, match="no mask source ground_truht"):
        list(measure_finals(["ground_truht"], "tiny", [0]))
    with pytest.raises(ValueError, match="no seeds"):
        list(measure_finals(["cam"], "tiny", []))
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        list(measure_finals(["cam"], "tiny", [0], jobs=0))
    with pytest.raises(ValueError, match="at least 1"):
        run_ceiling("tiny", 0)


@pytest.mark.slow
def test_final_networks_train_per_seed_and_in_processes_as_in_one(tiny_root: Path, tmp_path: Path,
                                                                   capfd: pytest.CaptureFixture[str]) -> None:
    """Each (source, seed) trains its own network from that seed's method run; two processes give
    the rows one process reads back from the same cached networks, and show their progress as text."""
    settings = dict(run_root=str(tmp_path / "runs"), max_steps=1,
                    final={"max_steps": 2, "batch_size": 4, "crop_size": 32, "scales": (1.0,)})
    lines: list[str] = []
    two = [row for rows in measure_finals(["cam"], "tiny", [0, 1], jobs=2, log=lines.append, progress=True,
                                          **settings) for row in rows]
    # the workers' bars, in ascii text (widgets or redraws of several processes would garble a terminal)
    assert capfd.readouterr().err.count("train segmentation: 100%|##########| 2/2") == 4
    assert [(r["source"], r["crf"]) for r in two] == [(GROUND_TRUTH, "no"), (GROUND_TRUTH, "yes"), ("cam", "no"),
                                                       ("cam", "yes")]
    finals = sorted(p.name.split("-")[1] for p in (tmp_path / "runs").iterdir() if p.name.startswith("final-"))
    assert finals == ["cam", "cam", "gt", "gt"]  # one network per source and seed
    assert sum("[ceiling] cam seed" in line for line in lines) == 2
    one = [row for rows in measure_finals(["cam"], "tiny", [0, 1], log=lambda _: None, **settings) for row in rows]
    for a, b in zip(two, one):
        for key in ("miou_mean", "ratio_mean", "ratio_low", "gap_mean"):
            assert a[key] == pytest.approx(b[key], abs=1e-9, nan_ok=True), (a["source"], a["crf"], key)
        assert all(0.0 <= float(v) <= 1.0 for v in a["values"].split())


def test_a_merge_writes_the_kept_rows_seed_counts_back_as_integers(tmp_path: Path) -> None:
    ceiling = _scores([0.80, 0.84])
    write_ceiling(source_rows(GROUND_TRUTH, ceiling, ceiling, "quick"), tmp_path)
    write_ceiling(source_rows("eps", _scores([0.60, 0.66]), ceiling, "quick"), tmp_path)  # re-reads the GT rows
    rows = read_csv_rows(tmp_path / "ceiling.csv")
    assert [(r["source"], r["seeds"]) for r in rows] == [(GROUND_TRUTH, "2")] * 2 + [("eps", "2")] * 2
    assert read_ceiling(tmp_path)[0]["miou_mean"] == pytest.approx(0.82)


def test_a_ceiling_study_rerenders_the_ceiling_cell_of_executed_comparison_notebooks(tmp_path: Path) -> None:
    """An executed 07_compare (here and in demo/) shows the ceiling as it was when it ran; writing the
    table re-renders that cell and no other, so the notebook and ceiling.md agree."""
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("claim_rows = claims.read_claims()", outputs=[
            nbformat.v4.new_output("display_data", data={"text/markdown": "| claims |", "text/plain": "x"})]),
        nbformat.v4.new_code_cell("ceiling_rows = ceiling.read_ceiling()\ndisplay(Markdown(...))", outputs=[
            nbformat.v4.new_output("display_data",
                                   data={"text/markdown": "No ceiling study yet", "text/plain": "x"})])])
    (tmp_path / "demo").mkdir()
    notebooks = (tmp_path / "07_compare.ipynb", tmp_path / "demo" / "07_compare.ipynb")
    for path in notebooks:
        nbformat.write(nb, path)
    ceiling = _scores([0.80, 0.84])
    write_ceiling(source_rows(GROUND_TRUTH, ceiling, ceiling, "quick"), tmp_path)
    write_ceiling(source_rows("cam", _scores([0.5, 0.52]), ceiling, "quick"), tmp_path)
    md = (tmp_path / "ceiling.md").read_text()
    assert "| cam | no | 51.0 [" in md
    for path in notebooks:
        claims_cell, ceiling_cell = nbformat.read(path, as_version=4).cells
        assert claims_cell.outputs[0]["data"]["text/markdown"] == "| claims |"
        [out] = ceiling_cell.outputs
        assert out["data"]["text/markdown"] == md and ceiling_cell.metadata["wsss"]["ceiling_refreshed"]


REPO = Path(__file__).resolve().parent.parent


def test_the_shipped_ceiling_markdown_shows_the_shipped_table() -> None:
    rows = read_ceiling(REPO / "reports")
    assert rows and rows[0]["source"] == GROUND_TRUTH, "reports/ceiling.csv is missing its ground-truth rows"
    assert (REPO / "reports" / "ceiling.md").read_text() == ceiling_markdown(rows)
