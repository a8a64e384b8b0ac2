"""Every notebook runs headless under papermill on the tiny preset.

The regression side (same notebooks, outputs of the `NBVAL_CHECK_OUTPUT` cells compared with the
stored ones) is nbval on tests/regression/*.ipynb; refresh those with
`python tests/regression/update.py` after a change that is meant to alter results.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import nbformat
import pytest

from wsss.runner import run_notebook

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
SOURCES = NOTEBOOKS[0].parent / "src"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_one_parameters_cell(notebook: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{notebook.name} needs exactly one cell tagged 'parameters'"
    assert "preset" in tagged[0].source, "the demo and the tests pass `preset`"
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"


@pytest.fixture(scope="module")
def build() -> ModuleType:
    """notebooks/src/build.py, which is a script rather than a package module."""
    spec = importlib.util.spec_from_file_location("build", SOURCES / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_matches_its_source(notebook: Path, build: ModuleType, tmp_path: Path) -> None:
    """notebooks/src/NAME.py is the reviewed source: the notebook must be what build.py makes of it."""
    build.build(SOURCES / f"{notebook.stem}.py", tmp_path / notebook.name)

    def cells(path: Path) -> list[tuple[str, str, list[str]]]:
        return [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in nbformat.read(path, as_version=4).cells]

    assert cells(notebook) == cells(tmp_path / notebook.name), \
        f"{notebook.name} differs from notebooks/src/{notebook.stem}.py: edit the source, then run build.py"


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_under_papermill(notebook: Path, tiny_root: Path, tmp_path: Path) -> None:
    out = run_notebook(notebook, {"preset": "tiny"}, output_dir=tmp_path, progress=False)
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert any(o.get("output_type") == "display_data" for c in nb.cells for o in c.get("outputs", [])), \
        "the notebook shows no figure"


@pytest.mark.slow
def test_demo_runs_method_notebooks_side_by_side(tiny_root: Path) -> None:
    import json

    from wsss.paths import reports_dir, runs_dir
    from wsss.runner import run_demo

    timings = run_demo("tiny", ("00_dataset", "01_cam_baseline", "03_vwl"), progress=False, jobs=2)
    assert {"00_dataset", "01_cam_baseline", "03_vwl", "total"} <= set(timings)
    for name in ("01_cam_baseline", "03_vwl"):
        nb = nbformat.read(reports_dir() / f"{name}.ipynb", as_version=4)
        assert not [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
        assert (runs_dir() / "demo_logs" / f"{name}.log").is_file()
    assert json.loads((reports_dir() / "demo_timing.json").read_text())["jobs"] == 2
