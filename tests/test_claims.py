"""Claims as paired differences over seeds: the interval, the verdict, and a study end to end."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from wsss.claims import (CLAIMS, claims_markdown, measure_claim, measure_claims, paired_interval, read_claims, run_study,
                         verdict, write_claims)
from wsss.io import read_csv_rows
from wsss.methods.base import available_methods


def test_the_paired_interval_is_students_t() -> None:
    mean, low, high = paired_interval([0.01, 0.02, 0.03])
    half = 4.302652729911275 * 0.01 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert mean == pytest.approx(0.02) and low == pytest.approx(0.02 - half) and high == pytest.approx(0.02 + half)
    assert paired_interval([0.5])[1:] == (-math.inf, math.inf)  # one seed decides nothing


@pytest.mark.parametrize("low, high, higher, expected", [
    (0.1, 0.3, True, "reproduced"), (-0.3, -0.1, True, "contradicted"), (-0.1, 0.2, True, "inconclusive"),
    (-0.3, -0.1, False, "reproduced"), (0.1, 0.3, False, "contradicted"), (-math.inf, math.inf, False, "inconclusive")])
def test_the_verdict_follows_the_claimed_direction(low: float, high: float, higher: bool, expected: str) -> None:
    assert verdict(low, high, higher) == expected


def test_every_claim_names_registered_methods() -> None:
    known = set(available_methods())
    assert all({c.method.method, c.baseline.method} <= known for c in CLAIMS)
    assert len({c.key for c in CLAIMS}) == len(CLAIMS)


def test_a_study_refuses_no_seeds_and_unknown_claims() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        run_study("tiny", 0)
    with pytest.raises(ValueError, match="no claim eps_contxt; claims: eps_context"):
        run_study("tiny", 2, ["eps_contxt"])


@pytest.mark.slow
def test_a_claim_is_measured_over_seeds_and_written(tiny_root: Path, tmp_path: Path) -> None:
    claim = next(c for c in CLAIMS if c.key == "eps_context")
    # The tiny recipe's runs in the suite's shared folder: seed 0's are the notebook tests', seed 1's CAM
    # the seed loop's (tests/test_results_integrity.py).
    row = measure_claim(claim, "tiny", [0, 1], log=lambda _: None)
    assert row["seeds"] == 2 and row["ci_low"] <= row["diff_mean"] <= row["ci_high"]
    assert row["diff_mean"] == pytest.approx(row["method_mean"] - row["baseline_mean"])
    assert row["verdict"] in ("reproduced", "contradicted", "inconclusive")
    per_seed = [[float(v) for v in row[k].split()] for k in ("method_values", "baseline_values")]
    assert [len(v) for v in per_seed] == [2, 2]
    assert paired_interval([m - b for m, b in zip(*per_seed)]) == pytest.approx(
        (row["diff_mean"], row["ci_low"], row["ci_high"]), abs=1e-5)
    md = write_claims([row], tmp_path).read_text()
    read = read_claims(tmp_path)[0]
    assert read["diff_mean"] == pytest.approx(row["diff_mean"]) and claims_markdown([read]) == md
    assert read["method_values"] == row["method_values"]
    assert read_claims(tmp_path / "nothing") == []
    assert "| EPS | saliency removes co-occurring context | context_fp_rate (lower is better) |" in md
    assert (tmp_path / "claims.csv").is_file()


@pytest.mark.slow
def test_seeds_in_processes_give_the_rows_of_one_process(tiny_root: Path, tmp_path: Path) -> None:
    """`jobs` > 1 trains the (claim, seed) pairs in spawned workers; one process reading the same
    runs back (their models and cached scores) gets the same row, so no value lands on the wrong
    seed or claim."""
    claims = [c for c in CLAIMS if c.key in ("eps_context", "vwl_parts")]
    tasks = [(c, {"run_root": str(tmp_path / "runs"), "max_steps": 1}) for c in claims]
    two = dict(measure_claims(tasks, "tiny", [0, 1], jobs=2, log=lambda _: None))
    assert sorted(two) == [0, 1] and all(r["seeds"] == 2 for r in two.values())
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "runs").iterdir()) == ["cam", "cam", "eps", "eps",
                                                                                  "vwl", "vwl"]
    for i, (claim, settings) in enumerate(tasks):
        one = measure_claim(claim, "tiny", [0, 1], log=lambda _: None, **settings)
        for key in ("method_mean", "baseline_mean", "diff_mean", "ci_low", "ci_high"):
            assert two[i][key] == pytest.approx(one[key], abs=1e-9), (claim.key, key)


@pytest.mark.slow
def test_a_failing_run_in_a_worker_stops_the_study(tiny_root: Path, tmp_path: Path) -> None:
    claim = next(c for c in CLAIMS if c.key == "eps_context")
    tasks = [(claim, {"run_root": str(tmp_path / "runs"), "backbone": "no_such_backbone"})]
    with pytest.raises(ValueError, match="no_such_backbone"):
        list(measure_claims(tasks, "tiny", [0, 1], jobs=2, log=lambda _: None))
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        list(measure_claims(tasks, "tiny", [0], jobs=0))


def _row(key: str, diff: float) -> dict:
    claim = next(c for c in CLAIMS if c.key == key)
    return {"claim": key, "paper": claim.paper, "text": claim.text, "metric": claim.metric, "better": "higher",
            "method": "m", "baseline": "b", "paper_evidence": "e", "seeds": 5, "method_mean": 0.5,
            "baseline_mean": 0.5 - diff, "diff_mean": diff, "ci_low": diff - 0.01, "ci_high": diff + 0.01,
            "verdict": "reproduced", "preset": "quick", "precision": "fp32", "measured": "2026-12-01",
            "code_version": "0.1.0+abc"}


def test_writing_a_subset_keeps_the_other_claims(tmp_path: Path) -> None:
    """A study of some claims adds its rows to the table; it never drops the rows of others."""
    write_claims([_row("vwl_parts", 0.02)], tmp_path)
    write_claims([_row("eps_context", 0.03)], tmp_path)
    write_claims([_row("vwl_parts", 0.04)], tmp_path)
    read = read_claims(tmp_path)
    assert [r["claim"] for r in read] == ["eps_context", "vwl_parts"]  # the order of CLAIMS
    assert [r["diff_mean"] for r in read] == pytest.approx([0.03, 0.04])
    assert "| 5 | fp32 | reproduced |" in (tmp_path / "claims.md").read_text()


@pytest.mark.slow
def test_every_claim_yields_its_metric(tiny_root: Path) -> None:
    """Each claim's two arms train and score at tiny, and both carry the claim's metric. The runs are
    the tiny recipe's at seed 0 in the suite's shared folder, the ones the notebook tests train: a
    private folder retrained and rescored every method (180 s of the suite)."""
    rows = [measure_claim(c, "tiny", [0], log=lambda _: None) for c in CLAIMS]
    for claim, row in zip(CLAIMS, rows):
        assert math.isfinite(row["method_mean"]) and math.isfinite(row["baseline_mean"]), claim.key
        assert row["verdict"] == "inconclusive", claim.key  # one seed decides nothing


def test_a_replaced_claim_row_with_other_numbers_goes_to_the_history(tmp_path: Path) -> None:
    """A rerun never loses the row it replaces: other numbers go to claims_history.csv, the same
    numbers measured again (another date, another commit) do not."""
    write_claims([_row("vwl_parts", 0.02)], tmp_path)
    write_claims([{**_row("vwl_parts", 0.02), "measured": "2026-12-02", "code_version": "0.1.0+def"}], tmp_path)
    assert not (tmp_path / "claims_history.csv").exists()
    write_claims([{**_row("vwl_parts", 0.04), "method_values": "0.5 0.5"}], tmp_path)  # a new column too
    history = read_csv_rows(tmp_path / "claims_history.csv")
    assert [(r["claim"], float(r["diff_mean"]), r["code_version"]) for r in history] == [("vwl_parts", 0.02, "0.1.0+def")]
    write_claims([_row("vwl_parts", 0.05)], tmp_path)
    assert [float(r["diff_mean"]) for r in read_csv_rows(tmp_path / "claims_history.csv")] == [0.02, 0.04]
    assert [float(r["diff_mean"]) for r in read_claims(tmp_path)] == [0.05]


def test_a_study_rerenders_the_claims_table_of_executed_comparison_notebooks(tmp_path: Path) -> None:
    """An executed 07_compare shows the table as it was when it ran; a later study re-renders that
    cell (and only that cell), so the notebook and claims.md agree."""
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("print(1)", outputs=[nbformat.v4.new_output("stream", text="1\n")]),
        nbformat.v4.new_code_cell("claim_rows = claims.read_claims()\ndisplay(Markdown(...))", outputs=[
            nbformat.v4.new_output("display_data", data={"text/markdown": "| old table |", "text/plain": "x"})])])
    (tmp_path / "demo").mkdir()
    for path in (tmp_path / "07_compare.ipynb", tmp_path / "demo" / "07_compare__preset-quick.ipynb"):
        nbformat.write(nb, path)
    write_claims([_row("eps_context", 0.03)], tmp_path)
    md = (tmp_path / "claims.md").read_text()
    for path in (tmp_path / "07_compare.ipynb", tmp_path / "demo" / "07_compare__preset-quick.ipynb"):
        cells = nbformat.read(path, as_version=4).cells
        assert cells[0].outputs[0]["text"] == "1\n"
        [out] = cells[1].outputs
        assert out["data"]["text/markdown"] == md and "+3.00 [+2.00, +4.00]" in md
        assert cells[1].metadata["wsss"]["claims_refreshed"]


REPO = Path(__file__).resolve().parent.parent


def test_the_shipped_claims_agree_everywhere() -> None:
    """reports/claims.csv, the README's claims table and the shipped comparison notebook's claims
    cell show the same numbers: a study that updates one and not the others serves stale claims."""
    import nbformat

    rows = read_claims(REPO / "reports")
    assert rows, "reports/claims.csv is missing"
    readme = (REPO / "README.md").read_text()
    for r in rows:
        label = f"| {r['paper']}: {r['text']} ("
        lines = [line for line in readme.splitlines() if line.startswith(label)]
        assert len(lines) == 1, f"README: {len(lines)} rows for {r['claim']}"
        cells = [c.strip() for c in lines[0].strip("|").split("|")]
        shown = claims_markdown([r]).splitlines()[-1]  # the table's own rendering of the row
        method, baseline, difference, _, _, verdict = [c.strip() for c in shown.strip("|").split("|")][4:]
        assert cells[1:] == [method, baseline, difference, verdict], r["claim"]
        assert ("seeds)" in cells[0]) == (int(r["seeds"]) != 5), f"README must name a row's seeds unless 5: {r['claim']}"
    notebook = nbformat.read(REPO / "reports" / "07_compare.ipynb", as_version=4)
    [cell] = [c for c in notebook.cells if c.cell_type == "code" and "claims.read_claims()" in c.source]
    assert cell.outputs[0]["data"]["text/markdown"] == claims_markdown(rows)
