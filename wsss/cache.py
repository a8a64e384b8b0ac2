"""Cached stage outputs that are never served stale.

A stage's output (a folder of maps or masks, or a JSON of scores) is stored with the *key* it was
computed from: the stage's settings, the exact list of image ids, a fingerprint of the data files,
a fingerprint of the model it read and the fingerprint of the code that computes numbers. A
cached output is used only when its key equals the key asked for; otherwise it is recomputed
and replaced. The record also stamps the code version and time *of the computation*, so a
number reports the code that made it, not the code that later read it.

One marker file, `_done`, ends a finished folder (a killed stage leaves none, and is redone).
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from wsss import __version__
from wsss.io import exclusive, write_json

MARKER = "_done"
PACKAGE = Path(__file__).resolve().parent
# Modules that only present or orchestrate numbers (tables, plots, the command line, the widget,
# progress bars, benchmarks): editing them does not change a cached number, so they stay out of the code key.
_PRESENTATION = {"viz.py", "explorer.py", "report.py", "runner.py", "cli.py", "compare.py", "claims.py", "ceiling.py",
                 "dose_response.py", "paper_numbers.py", "parallel.py", "progress.py"}


def digest(obj: Any, length: int = 12) -> str:
    """A short, stable hash of any JSON-able object."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:length]


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of the package code that computes numbers (every module but the presentation ones), as
    Python runs it (`executable_source`): an edited comment or docstring recomputes nothing."""
    h = hashlib.sha1()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "benchmarks" or (len(rel.parts) == 1 and rel.name in _PRESENTATION):
            continue
        h.update(str(rel).encode())
        h.update(executable_source(path.read_text()))
    return h.hexdigest()[:12]


def executable_source(source: str) -> bytes:
    """`source` without what Python does not run: comments, docstrings and layout (its syntax tree
    without positions). Hashing the bytes made a docstring edit recompute every cached stage, and a
    recomputation with another thread count moves float results, which then made runs trained on
    the first result stale."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree).encode()


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus git commit (and '-dirty' with uncommitted changes), when in a checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PACKAGE, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=PACKAGE, capture_output=True,
                               text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+{commit}{'-dirty' if dirty else ''}" if commit else __version__


def files_fingerprint(paths: Iterable[Path | None]) -> str:
    """Hash of (name, size, modification time) of `paths`: a cheap stand-in for their contents
    (a regenerated or edited file changes it). Missing files count as missing."""
    entries = []
    for p in paths:
        if p is None:
            continue
        try:
            st = os.stat(p)
            entries.append((str(p), st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            entries.append((str(p), None))
    return digest(entries)


def contents_fingerprint(folder: str | os.PathLike) -> str:
    """Hash of the names and bytes of the files in `folder` (its marker left out): equal for a
    folder rebuilt with the same contents, unlike `files_fingerprint`."""
    h = hashlib.sha1()
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name != MARKER):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None  # missing, or written by an older version (a bare timestamp): recompute
    return record if isinstance(record, dict) else None


def _stamp(key: Mapping[str, Any]) -> dict[str, Any]:
    return {"key": dict(key), "code_version": code_version(), "computed_at": time.strftime("%Y-%m-%dT%H:%M:%S")}


def folder_record(out: Path, key: Mapping[str, Any]) -> dict[str, Any] | None:
    """The marker record of `out` when it was finished with exactly `key`, else None."""
    record = _read_record(Path(out) / MARKER)
    return record if record is not None and record.get("key") == json.loads(json.dumps(key)) else None


def cached_folder(out: str | os.PathLike, key: Mapping[str, Any], build: Callable[[Path], Any], what: str) -> Path:
    """`out`, built by `build(out)` unless it was finished with the same `key`.

    A folder finished with another key (other ids, data, model or code) is emptied and rebuilt,
    so no file of the old computation survives. Processes that need the same folder wait on its
    lock and then find it done."""
    out = Path(out)
    if folder_record(out, key) is not None:
        return out
    with exclusive(out.parent / f".{out.name}.lock", what):
        if folder_record(out, key) is None:  # another process may have built it meanwhile
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            build(out)
            write_json(out / MARKER, _stamp(key))
    return out


def stored_result(path: str | os.PathLike) -> Any | None:
    """The result in a `cached_json` record at `path` (whatever its key), None when there is none."""
    record = _read_record(Path(path))
    return record.get("result") if record is not None else None


def cached_json(path: str | os.PathLike, key: Mapping[str, Any], compute: Callable[[], Any]) -> dict[str, Any]:
    """The record {"key", "code_version", "computed_at", "result"} of `compute()` under `key`,
    computed now unless `path` holds one with the same key."""
    path = Path(path)
    record = _read_record(path)
    if record is not None and record.get("key") == json.loads(json.dumps(key)) and "result" in record:
        return record
    write_json(path, {**_stamp(key), "result": compute()})
    return json.loads(path.read_text())  # as a later read will see it (numpy scalars become floats)
