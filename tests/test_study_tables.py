"""Where the comparison notebook reads the seed studies' tables from."""
from __future__ import annotations

from pathlib import Path

import pytest

from wsss.ceiling import GROUND_TRUTH, read_ceiling, source_rows, write_ceiling
from wsss.study_tables import table_folder


def _ceiling(tmp: Path, miou: float) -> None:
    scores = [{"miou": miou, "miou_crf": miou, "precision": "fp32", "train_s": 1.0}] * 2
    write_ceiling(source_rows(GROUND_TRUTH, scores, scores, "quick"), tmp)


def test_the_demo_shows_the_checkouts_study_until_it_has_its_own(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The quick demo writes into reports/demo/ and runs no study: its comparison reads the
    checkout's reports/ tables, and a table of its own folder wins over them."""
    checkout, demo = tmp_path / "reports", tmp_path / "reports" / "demo"
    demo.mkdir(parents=True)
    monkeypatch.setenv("WSSS_HOME", str(tmp_path))
    monkeypatch.setenv("WSSS_REPORTS", str(demo))
    assert table_folder("ceiling.csv") == demo and read_ceiling() == []  # no table anywhere
    _ceiling(checkout, 0.8)
    assert table_folder("ceiling.csv") == checkout
    assert read_ceiling()[0]["miou_mean"] == pytest.approx(0.8)
    _ceiling(demo, 0.7)
    assert table_folder("ceiling.csv") == demo
    assert read_ceiling()[0]["miou_mean"] == pytest.approx(0.7)
    assert read_ceiling(checkout)[0]["miou_mean"] == pytest.approx(0.8)  # a named folder is read as named
