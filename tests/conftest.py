"""Shared fixtures. Every test writes data, runs and reports under one temporary folder, so the
suite never touches the checkout's data/, runs/ or reports/ (every notebook run shares it, which
lets notebooks reuse the tiny runs that other notebooks and tests trained)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Under pytest-xdist every worker imports this file; they share one folder (keyed by the run's
# id) so a notebook's tiny runs are trained once, and the run and dataset locks keep workers
# from writing the same run at once.
_XDIST_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
if _XDIST_RUN:
    _SESSION_DIR = Path(tempfile.gettempdir()) / f"wsss-tests-{_XDIST_RUN}"
    _SESSION_DIR.mkdir(exist_ok=True)
else:
    _SESSION_DIR = Path(tempfile.mkdtemp(prefix="wsss-tests-"))
for _name in ("DATA", "RUNS", "REPORTS"):
    os.environ[f"WSSS_{_name}"] = str(_SESSION_DIR / _name.lower())
os.environ.setdefault("MPLBACKEND", "Agg")

# Float results of CPU kernels differ between instruction sets, so the regression tables are
# compared within a tolerance (wsss.nbcheck). Pinning torch's own kernels, MKL and OpenBLAS
# (numpy's) to their AVX2 paths and taking oneDNN and OpenCV's dispatch out (wsss.numerics) in
# every test process and notebook kernel (they inherit this environment), as
# tests/regression/update.py does when it writes them, keeps those differences small.
PINNED_NUMERICS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2",
                   "OPENBLAS_CORETYPE": "Haswell",
                   "OMP_NUM_THREADS": "1", "WSSS_PORTABLE_NUMERICS": "1"}
for _name, _value in PINNED_NUMERICS.items():
    os.environ[_name] = _value


@pytest.fixture(scope="session")
def tiny_root() -> Path:
    """The tiny SynthVOC preset, generated once per test session."""
    from wsss.data import synthvoc

    return synthvoc.generate(synthvoc.default_root("tiny", 0), preset="tiny", seed=0, progress=False)


@pytest.fixture(scope="session")
def tiny_voc_sized_root() -> Path:
    """The tiny preset cut to VOC's image shapes (500x375, 375x500, 500x333, ... scaled to 64 px)."""
    from wsss.data import synthvoc

    return synthvoc.generate(_SESSION_DIR / "data" / "synthvoc-tiny-vocsizes-s0", preset="tiny", seed=0,
                             progress=False, voc_sizes=True)
