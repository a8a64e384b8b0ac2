"""Where data, runs and reports live, wherever a notebook or command is started from.

The project root is `$WSSS_HOME`, else the nearest folder above the working directory holding
`pyproject.toml` (a checkout), else the working directory. `$WSSS_DATA`, `$WSSS_RUNS` and
`$WSSS_REPORTS` override single folders (tests point them at temporary folders).
"""
from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    if os.environ.get("WSSS_HOME"):
        return Path(os.environ["WSSS_HOME"])
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "wsss").is_dir():
            return folder
    return cwd


def data_dir() -> Path:
    return Path(os.environ.get("WSSS_DATA") or project_root() / "data")


def runs_dir() -> Path:
    return Path(os.environ.get("WSSS_RUNS") or project_root() / "runs")


def reports_dir() -> Path:
    return Path(os.environ.get("WSSS_REPORTS") or project_root() / "reports")


def notebooks_dir() -> Path:
    """The project's notebooks; outside a checkout, those of the checkout this package runs from."""
    here = project_root() / "notebooks"
    package_checkout = Path(__file__).resolve().parent.parent / "notebooks"
    return here if here.is_dir() or not package_checkout.is_dir() else package_checkout


def portable(path: str | os.PathLike) -> str:
    """`path` relative to the project root when it lies inside it (reports and run records then
    read the same on every machine), else as given."""
    path = Path(path)
    try:
        return path.resolve().relative_to(project_root().resolve()).as_posix()
    except ValueError:
        return str(path)
