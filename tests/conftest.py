"""Shared fixtures. Every test writes data, runs and reports under one temporary folder, so the
suite never touches the checkout's data/, runs/ or reports/ (notebook runs and nbval share it,
which lets the regression notebooks reuse the tiny runs the notebook tests trained)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="wsss-tests-"))
for _name in ("DATA", "RUNS", "REPORTS"):
    os.environ[f"WSSS_{_name}"] = str(_SESSION_DIR / _name.lower())
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def tiny_root() -> Path:
    """The tiny SynthVOC preset, generated once per test session."""
    from wsss.data import synthvoc

    return synthvoc.generate(synthvoc.default_root("tiny", 0), preset="tiny", seed=0, progress=False)
