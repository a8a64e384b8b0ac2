"""Refresh the regression notebooks: every notebook executed by papermill on the tiny preset.

Run after a change that is meant to alter results (`.venv/bin/python tests/regression/update.py`),
look at the diff of the `NBVAL_CHECK_OUTPUT` cells, and commit it with the change.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import PINNED_NUMERICS  # threads and instruction sets change float results

    os.environ.update(PINNED_NUMERICS)
    scratch = Path(tempfile.mkdtemp(prefix="wsss-regression-"))
    for name in ("DATA", "RUNS", "REPORTS"):  # same isolation as the test suite
        os.environ[f"WSSS_{name}"] = str(scratch / name.lower())
    from wsss.runner import run_notebook

    names = sys.argv[1:] or [p.stem for p in sorted((ROOT / "notebooks").glob("*.ipynb"))]
    for name in names:
        out = run_notebook(ROOT / "notebooks" / f"{name}.ipynb", {"preset": "tiny"}, output_dir=HERE, progress=False,
                           output=f"{name}.ipynb")
        print(f"updated {out.relative_to(ROOT)}")
