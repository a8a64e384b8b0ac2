"""The method registry drives the demo, the comparison and the paper numbers: a method registered
with a notebook is picked up everywhere without another edit."""
from __future__ import annotations

from pathlib import Path

import pytest

from wsss import compare
from wsss.methods import base
from wsss.methods.cam import CAM
from wsss.paper_numbers import paper_numbers
from wsss.runner import COMPARE_NOTEBOOK, DATASET_NOTEBOOK, demo_notebooks

NOTEBOOK_SOURCES = Path(__file__).resolve().parent.parent / "notebooks" / "src"


class ToyCAM(CAM):
    """A sixth method as a newcomer would start one: CAM's network under another name."""

    name = "toy"
    notebook = "08_toy"


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> str:
    base.method_class("cam")  # import every method module first, as the registry does
    monkeypatch.setitem(base._REGISTRY, ToyCAM.name, ToyCAM)
    return ToyCAM.name


def test_every_main_method_has_its_notebook_source_and_paper_numbers() -> None:
    methods = base.main_methods()
    assert methods == ["cam", "eps", "vwl", "sance", "rcm_mam", "shape_cues"]
    for m in methods:
        assert (NOTEBOOK_SOURCES / f"{base.method_class(m).notebook}.py").is_file(), m
        assert paper_numbers(m) is not None, m
    assert demo_notebooks() == (DATASET_NOTEBOOK, "01_cam_baseline", "02_eps", "03_vwl", "04_sance",
                                "05_rcm_mam", "06_shape_cues", COMPARE_NOTEBOOK)
    assert demo_notebooks(full=True) == (*demo_notebooks(), "08_probes")  # the probe splits: full demo only


def test_a_registered_method_joins_the_demo_and_the_comparison(toy: str) -> None:
    assert demo_notebooks()[-2:] == ("08_toy", COMPARE_NOTEBOOK)  # before the comparison, which reads it
    assert compare.split_registered(None)[0][-1] == toy
    assert compare.papers_table([toy], {}, {})[0]["method"] == toy  # no paper numbers: blank columns


@pytest.mark.slow
def test_the_comparison_scores_a_registered_method(toy: str, tiny_root: Path, tmp_path: Path) -> None:
    exp = compare.main_experiment("tiny", toy, run_root=str(tmp_path), max_steps=2)
    rows = compare.method_rows(exp)
    assert set(rows) == {"cam", "pseudo"}
    assert rows["cam"]["method"] == toy and 0.0 <= rows["cam"]["miou"] <= 1.0
