"""The result table: rows upsert by key, whatever spelling an older table used for a number."""
from __future__ import annotations

from pathlib import Path

from wsss.report import archive_table, make_row, read_rows, record

ROW = dict(method="cam", variant="CAM", stage="cam", split="val", bg_threshold=0.05, crf=False, miou=0.14,
           config_hash="abc")


def test_rerecording_a_row_replaces_it(tmp_path: Path) -> None:
    record([ROW], tmp_path)
    record([{**ROW, "miou": 0.16}], tmp_path)
    rows = read_rows(tmp_path / "metrics.csv")
    assert [r["miou"] for r in rows] == ["0.16"]
    assert "| cam | CAM | cam | val |  |  | 16.0 |" in (tmp_path / "metrics.md").read_text()  # no preset, seed given


def test_an_older_spelling_of_a_value_is_the_same_row(tmp_path: Path) -> None:
    record([{**ROW, "crf": "False"}], tmp_path)
    record([ROW], tmp_path)
    assert len(read_rows(tmp_path / "metrics.csv")) == 1


def test_a_rerun_with_a_new_best_threshold_replaces_its_row(tmp_path: Path) -> None:
    record([ROW], tmp_path)
    record([{**ROW, "bg_threshold": 0.25, "miou": 0.5}], tmp_path)
    assert [(r["bg_threshold"], r["miou"]) for r in read_rows(tmp_path / "metrics.csv")] == [("0.25", "0.5")]


def test_rows_differing_in_a_key_are_kept(tmp_path: Path) -> None:
    record([ROW, {**ROW, "crf": True}, {**ROW, "variant": "CAM x", "miou": 0.2}, {**ROW, "split": "train"},
            {**ROW, "config_hash": "other"}], tmp_path)
    assert len(read_rows(tmp_path / "metrics.csv")) == 5


def test_archiving_starts_an_empty_table_and_keeps_the_old_rows(tmp_path: Path) -> None:
    assert archive_table(tmp_path) is None  # nothing to archive
    record([ROW], tmp_path)
    archive_table(tmp_path)
    assert not (tmp_path / "metrics.csv").exists() and not (tmp_path / "metrics.md").exists()
    record([{**ROW, "miou": 0.42}], tmp_path)
    history = archive_table(tmp_path)
    assert [r["miou"] for r in read_rows(history)] == ["0.14", "0.42"]  # appended, one header
    record([{**ROW, "crf": True}], tmp_path)
    assert [r["crf"] for r in read_rows(tmp_path / "metrics.csv")] == ["True"]


def test_rows_carry_the_mean_recall_of_part_and_context_classes() -> None:
    scores = {**ROW, "recall": {"background": 0.9, "train": 0.2, "boat": 0.4, "horned": 0.5, "tailed": float("nan")}}
    row = make_row(scores, variant="x", part_classes=["horned", "tailed"], context_classes=["train", "boat"])
    assert row["part_recall"] == 0.5  # NaN (class absent from the split) left out
    assert abs(row["context_recall"] - 0.3) < 1e-12
    assert "context_recall" not in make_row(scores, variant="x")


def test_a_new_column_joins_an_older_table(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text("method,variant,stage,split,crf,miou\ncam,old,cam,val,False,0.1\n")
    record([{**ROW, "context_recall": 0.25}], tmp_path)
    rows = {r["variant"]: r for r in read_rows(tmp_path / "metrics.csv")}
    assert rows["old"]["context_recall"] == "" and rows["CAM"]["context_recall"] == "0.25"


def test_a_curve_panel_without_data_says_so_without_a_warning() -> None:
    import warnings

    from wsss import viz

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = viz.plot_curves({"a": [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]}, keys=("loss", "ce"))
    assert [t.get_text() for t in fig.axes[1].texts] == ["not logged"] and fig.axes[0].get_legend() is not None
