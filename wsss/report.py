"""The workbench's result table: `reports/metrics.csv` (every column) and `reports/metrics.md`.

Each row is one result with its provenance, so a number can be traced back to the configuration
and code that produced it and re-run. A row's key is (method, variant, stage, split, CRF, config
hash); the config hash covers the preset, data, seed, backbone and every option, so runs that
differ in any of them keep their own rows. Writing a row replaces the row with the same key (a
re-run updates its rows); a replaced row whose numbers changed goes to metrics_history.csv, so no
result is lost. One result recorded under two names (a method's notebook and the comparison
notebook name the same evaluation of the same run differently) is kept once.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from wsss.io import exclusive, write_text
from wsss.paths import reports_dir

# A row's identity. The background threshold is a result (chosen on the train split), not part of
# it: a re-run whose chosen threshold moved replaces its row instead of leaving the old one beside it.
KEY = ("method", "variant", "stage", "split", "crf", "config_hash")
# The same evaluation of the same run: equal numbers to full precision under one config.
RESULT = ("method", "stage", "split", "crf", "config_hash", "bg_threshold", "miou", "fg_precision", "fg_recall",
          "boundary_iou")
COLUMNS = (
    "method", "variant", "stage", "split", "bg_threshold", "crf", "miou", "fg_precision", "fg_recall",
    "boundary_iou", "context_fp_rate", "part_recall", "context_recall", "contour_f", "oracle_miou",
    "oracle_threshold", "train_s", "images_per_s", "scales", "flip", "seed", "backbone", "data", "config_hash",
    "config_file", "code_version", "preset",
)
# What metrics.md shows (metrics.csv keeps everything).
SUMMARY = (("method", "method"), ("variant", "variant"), ("stage", "stage"), ("split", "split"),
           ("preset", "preset"), ("seed", "seed"),
           ("miou", "mIoU"), ("fg_precision", "prec"), ("fg_recall", "rec"), ("boundary_iou", "bIoU"),
           ("context_fp_rate", "ctx FP"), ("part_recall", "part rec"), ("contour_f", "contour F"),
           ("bg_threshold", "thr"), ("oracle_miou", "oracle mIoU"), ("crf", "CRF"), ("train_s", "train s"), ("config_hash", "config"))


_PERCENT = ("miou", "fg_precision", "fg_recall", "boundary_iou", "context_fp_rate", "part_recall", "context_recall",
            "contour_f", "oracle_miou")


def make_row(scores: dict[str, Any], *, variant: str = "", stage: str = "cam",
             part_classes: Sequence[str] = (), context_classes: Sequence[str] = (), **extra: Any) -> dict[str, Any]:
    """A report row from evaluation scores (which carry provenance keys) plus `extra` columns.

    `part_recall` / `context_recall`: the mean recall of the part-defined classes / of the classes
    that come with a context region (SynthVOC's train and boat). Context FP counts context painted
    as the object; context recall shows the other half, the object itself lost (to background)."""
    row = {k: scores.get(k) for k in COLUMNS if k in scores}
    recall = scores.get("recall", {})
    for column, classes in (("part_recall", part_classes), ("context_recall", context_classes)):
        if classes and recall:
            vals = [recall[c] for c in classes if c in recall and not _isnan(recall[c])]
            row[column] = sum(vals) / len(vals) if vals else None
    row.update(variant=variant, stage=stage, **extra)
    return row


def _isnan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _key(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(_canonical(row.get(k, "")) for k in KEY)


def _canonical(value: Any) -> str:
    """One spelling per key value, so "0.0500" (an older table) and 0.05 name the same row."""
    text = str(value)
    try:
        return f"{float(text):.6g}"
    except ValueError:
        return text


def read_rows(path: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """The rows of a result table. A line whose field count differs from the header (a row
    appended under another header) is an error naming the file and line, never a shifted row."""
    return _read_table(Path(path) if path else reports_dir() / "metrics.csv")[1]


def _read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of a CSV table; ([], []) when there is none."""
    if not path.is_file():
        return [], []
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    if not lines:
        return [], []
    header, rows = lines[0], []
    for number, values in enumerate(lines[1:], start=2):
        if len(values) != len(header):
            raise ValueError(f"{path}, line {number}: {len(values)} fields under a header of {len(header)}; "
                             "the table is damaged (a row written under another header)")
        rows.append(dict(zip(header, values)))
    return header, rows


def record(rows: Iterable[dict[str, Any]], folder: str | os.PathLike | None = None) -> Path:
    """Upsert `rows` into metrics.csv and regenerate metrics.md; returns the CSV path. Rows they
    replace with other numbers are appended to metrics_history.csv."""
    folder = Path(folder) if folder else reports_dir()
    csv_path = folder / "metrics.csv"
    # Notebooks running side by side record into one table: read-modify-write under a lock, and
    # the file replaced atomically.
    with exclusive(folder / ".metrics.lock", "the metrics table"):
        table = {_key(r): r for r in read_rows(csv_path)}
        replaced = []
        for r in rows:
            r = {k: _fmt(v) for k, v in r.items() if k in COLUMNS}
            old = table.get(_key(r))
            if old is not None and _result(old) != _result(r):
                replaced.append(old)
            table[_key(r)] = r
        kept = _one_row_per_result(table.values())
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)
        if replaced:
            _append_history(folder / "metrics_history.csv", replaced)
        write_text(csv_path, buf.getvalue())
        write_text(folder / "metrics.md", markdown_table(kept))
    return csv_path


def _result(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(_canonical(row.get(k, "")) for k in RESULT)


def _one_row_per_result(rows: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    """Sorted rows, one per result: of rows with the same result, the first in sort order stays."""
    kept: dict[tuple[str, ...], dict[str, str]] = {}
    for r in sorted(rows, key=_sort_key):
        kept.setdefault(_result(r), r)
    return list(kept.values())


def _sort_key(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(row.get(k, "")) for k in ("method", "stage", "variant", "preset", "seed", "config_hash"))


def _append_history(history: Path, rows: list[dict[str, str]]) -> None:
    """Append `rows` to the history table; a history written under other columns is rewritten
    once under the union of both (each old row under its own header), never appended to blindly."""
    header, old_rows = _read_table(history)
    if header == list(COLUMNS):
        buf = io.StringIO()
        csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore").writerows(rows)
        with open(history, "a", newline="") as f:
            f.write(buf.getvalue())
        return
    columns = list(COLUMNS) + [c for c in header if c not in COLUMNS]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(old_rows + rows)
    write_text(history, buf.getvalue())


def archive_table(folder: str | os.PathLike | None = None) -> Path | None:
    """Start an empty table (a demo's rows are then exactly the demo's): the current rows are
    appended to metrics_history.csv, so no result is lost. Returns the history file, if written."""
    folder = Path(folder) if folder else reports_dir()
    csv_path, history = folder / "metrics.csv", folder / "metrics_history.csv"
    with exclusive(folder / ".metrics.lock", "the metrics table"):
        rows = read_rows(csv_path)
        if not rows:
            return None
        _append_history(history, rows)
        csv_path.unlink()
        (folder / "metrics.md").unlink(missing_ok=True)
    return history


def _fmt(v: Any) -> str:
    if v is None or _isnan(v):
        return ""
    if isinstance(v, float):
        return f"{v:.10g}"  # full precision: tables rounding to 0.1% must agree with the notebooks
    if isinstance(v, (list, tuple)):
        return " ".join(str(x) for x in v)
    return str(v)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    rows = sorted(rows, key=_sort_key)
    lines = ["| " + " | ".join(h for _, h in SUMMARY) + " |", "|" + "---|" * len(SUMMARY)]
    for r in rows:
        cells = []
        for k, _ in SUMMARY:
            v = r.get(k, "")
            if v != "" and k in _PERCENT:
                v = f"{100 * float(v):.1f}"
            elif v != "" and k == "bg_threshold":
                v = f"{float(v):.2f}"
            elif v != "" and k == "train_s":
                v = f"{float(v):.0f}"
            cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    note = ("\nPercentages. mIoU over background + classes; prec/rec: mean over foreground classes; bIoU: boundary "
            "IoU; ctx FP: share of context pixels (rail, water) labelled as their co-occurring class; part rec: "
            "recall of the part-defined classes; thr: background threshold, chosen on the train split; oracle mIoU: "
            "at the best threshold of the reported split's own sweep (with CRF: of a climb from the train choice, "
            "`climb_crf_threshold`), an upper reference no method may claim. "
            "Every row's full provenance is in metrics.csv.\n")
    return "\n".join(lines) + "\n" + note


def speed_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per training run ({name: TrainResult}): steps, seconds, images/s."""
    return [{"run": name, "steps": r.steps, "seconds": r.seconds, "images/s": r.images_per_s}
            for name, r in results.items()]


def versus_rows(runs: dict[str, Any], results: dict[str, Any] | None = None, crf: bool = False,
                part_classes: Sequence[str] = ()) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Rows ("cam" stage, each run's threshold chosen on train) of experiments compared in one table,
    `runs` = {variant: Experiment}, plus their scores; with `crf` a "+ CRF" row per run. Training time
    and images/s come from `results` ({variant: TrainResult}) where given."""
    results = results or {}
    scores = {name: exp.evaluate() for name, exp in runs.items()}
    rows = []
    for name, exp in runs.items():
        r = results.get(name)
        timing = {"train_s": r.seconds, "images_per_s": r.images_per_s} if r is not None else {}
        rows.append(make_row(scores[name], variant=name, stage="cam", part_classes=part_classes, **timing))
    if crf:
        rows += [make_row(exp.evaluate(crf=True), variant=f"{name} + CRF", stage="cam", part_classes=part_classes)
                 for name, exp in runs.items()]
    return rows, scores


def per_class_rows(scores: dict[str, dict[str, Any]], metrics: Sequence[str] = ("iou", "recall"),
                   phenomena: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Per-class table of several runs ({variant: scores}): a column per (variant, metric), and the
    planted phenomenon of the class (part-defined, context) when `phenomena` (SynthVOC meta) is given."""
    phenomena = phenomena or {}
    part, context = phenomena.get("part_defined", []), phenomena.get("context", {})
    classes = list(next(iter(scores.values()))["iou"])
    return [{"class": c, **{f"{name} {m}": s[m][c] for m in metrics for name, s in scores.items()},
             "phenomenon": "part-defined" if c in part else ("context" if c in context else "")}
            for c in classes]
