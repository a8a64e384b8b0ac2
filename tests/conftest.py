"""Shared fixtures. Every test writes data, runs and reports under one temporary folder, so the
suite never touches the checkout's data/, runs/ or reports/ (every notebook run shares it, which
lets notebooks reuse the tiny runs that other notebooks and tests trained)."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import warnings
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

# Float results of CPU kernels differ between instruction sets and CPU vendors, so the regression
# tables are compared within a tolerance (wsss.nbcheck), and every test process and notebook kernel
# (they inherit this environment) runs the same code paths on any x86-64 CPU with AVX2, as
# tests/regression/update.py does when it writes the tables:
# - torch's own kernels on AVX2, oneDNN and OpenCV's dispatch out (wsss.numerics);
# - MKL on its COMPATIBLE branch: its AVX2 branch is Intel-only (elsewhere MKL falls back to its
#   AUTO dispatch), which moved the tiny preset's tables by up to 5.6 points between an AMD EPYC
#   and a Xeon, and the weights of the tiny CAM run differ bit for bit between the two branches;
# - OpenBLAS on its Haswell kernels, and numpy's own loops without their AVX-512 versions (its
#   float32 power differs in the last bit with them).


# Prints numpy's dispatched AVX-512 targets that are active in a fresh interpreter.
NUMPY_AVX512_QUERY = ("from numpy._core import _multiarray_umath as m; print(' '.join(f for f in m.__cpu_dispatch__ "
                      "if m.__cpu_features__.get(f) and (f == 'X86_V4' or 'AVX512' in f)))")


def _numpy_features_above_avx2() -> str:
    """numpy's dispatched AVX-512 targets that this CPU has, for NPY_DISABLE_CPU_FEATURES. A fresh
    interpreter answers (numpy reads the variable once, when it is first imported), without the
    variable: pytest-xdist's workers inherit the pin from the main process, which would hide them."""
    env = {k: v for k, v in os.environ.items() if k != "NPY_DISABLE_CPU_FEATURES"}
    return subprocess.run([sys.executable, "-c", NUMPY_AVX512_QUERY], capture_output=True, text=True, check=True,
                          env=env).stdout.strip()


PINNED_NUMERICS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE",
                   "OPENBLAS_CORETYPE": "Haswell", "NPY_DISABLE_CPU_FEATURES": _numpy_features_above_avx2(),
                   "OMP_NUM_THREADS": "1", "WSSS_PORTABLE_NUMERICS": "1"}
if "numpy" in sys.modules:  # too late for its pins in this process (kernels still get them)
    warnings.warn("numpy was imported before tests/conftest.py pinned its CPU features")
for _name, _value in PINNED_NUMERICS.items():
    os.environ[_name] = _value


@pytest.fixture(scope="session")
def tiny_root() -> Path:
    """The tiny SynthVOC preset, generated once per test session."""
    from wsss.data import synthvoc

    return synthvoc.generate(synthvoc.default_root("tiny", 0), preset="tiny", seed=0, progress=False)


@pytest.fixture(scope="session")
def tiny_voc_sized_root() -> Path:
    """The tiny preset cut to VOC's image shapes (500x375, 375x500, 500x333, ... scaled to 64 px), with
    a third of its images: the notebooks run on it to show that every stage takes such shapes, which
    needs no more than two batches (with the tiny preset's 48 training images the runs on it took a
    quarter of the suite)."""
    from wsss.data import synthvoc

    return synthvoc.generate(_SESSION_DIR / "data" / "synthvoc-tiny-vocsizes-s0", preset="tiny", seed=0,
                             progress=False, voc_sizes=True, n_train=16, n_val=8, n_test=4)
