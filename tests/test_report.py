"""The result table: rows upsert by key, whatever spelling an older table used for a number."""
from __future__ import annotations

from pathlib import Path

from wsss.report import read_rows, record

ROW = dict(method="cam", variant="CAM", stage="cam", split="val", bg_threshold=0.05, crf=False, miou=0.14,
           config_hash="abc")


def test_rerecording_a_row_replaces_it(tmp_path: Path) -> None:
    record([ROW], tmp_path)
    record([{**ROW, "miou": 0.16}], tmp_path)
    rows = read_rows(tmp_path / "metrics.csv")
    assert [r["miou"] for r in rows] == ["0.16"]
    assert "| cam | CAM | cam | val | 16.0 |" in (tmp_path / "metrics.md").read_text()


def test_an_older_spelling_of_the_threshold_is_the_same_row(tmp_path: Path) -> None:
    record([{**ROW, "bg_threshold": "0.0500"}], tmp_path)
    record([ROW], tmp_path)
    assert len(read_rows(tmp_path / "metrics.csv")) == 1


def test_rows_differing_in_a_key_are_kept(tmp_path: Path) -> None:
    record([ROW, {**ROW, "crf": True}, {**ROW, "bg_threshold": 0.1}, {**ROW, "split": "train"}], tmp_path)
    assert len(read_rows(tmp_path / "metrics.csv")) == 4
