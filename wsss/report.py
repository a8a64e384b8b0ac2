"""The workbench's result table: `reports/metrics.csv` (every column) and `reports/metrics.md`.

Each row is one (method, variant, stage, split, threshold, CRF) result with its provenance, so a
number can be traced back to the configuration and code that produced it and re-run. Writing a
row replaces an older row with the same key: re-running a notebook updates its rows.
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

# A row's identity. The background threshold is a result (the sweep's best), not part of it: a
# re-run whose best threshold moved replaces its row instead of leaving the old one beside it.
KEY = ("method", "variant", "stage", "split", "crf")
COLUMNS = (
    "method", "variant", "stage", "split", "bg_threshold", "crf", "miou", "fg_precision", "fg_recall",
    "boundary_iou", "context_fp_rate", "part_recall", "context_recall", "contour_f",
    "train_s", "images_per_s", "scales", "flip", "seed", "backbone", "data", "config_hash", "config_file",
    "code_version",
)
# What metrics.md shows (metrics.csv keeps everything).
SUMMARY = (("method", "method"), ("variant", "variant"), ("stage", "stage"), ("split", "split"),
           ("miou", "mIoU"), ("fg_precision", "prec"), ("fg_recall", "rec"), ("boundary_iou", "bIoU"),
           ("context_fp_rate", "ctx FP"), ("part_recall", "part rec"), ("contour_f", "contour F"),
           ("bg_threshold", "thr"), ("crf", "CRF"), ("train_s", "train s"), ("config_hash", "config"))


_PERCENT = ("miou", "fg_precision", "fg_recall", "boundary_iou", "context_fp_rate", "part_recall", "context_recall",
            "contour_f")


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
    path = Path(path) if path else reports_dir() / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def record(rows: Iterable[dict[str, Any]], folder: str | os.PathLike | None = None) -> Path:
    """Upsert `rows` into metrics.csv and regenerate metrics.md; returns the CSV path."""
    folder = Path(folder) if folder else reports_dir()
    csv_path = folder / "metrics.csv"
    # Notebooks running side by side record into one table: read-modify-write under a lock.
    with exclusive(folder / ".metrics.lock", "the metrics table"):
        table = {_key(r): r for r in read_rows(csv_path)}
        for r in rows:
            r = {k: _fmt(v) for k, v in r.items()}
            table[_key(r)] = r
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(sorted(table.values(),
                                key=lambda r: (r.get("method", ""), r.get("stage", ""), r.get("variant", ""))))
        write_text(csv_path, buf.getvalue())
        write_text(folder / "metrics.md", markdown_table(list(table.values())))
    return csv_path


def archive_table(folder: str | os.PathLike | None = None) -> Path | None:
    """Start an empty table (a demo's rows are then exactly the demo's): the current rows are
    appended to metrics_history.csv, so no result is lost. Returns the history file, if written."""
    folder = Path(folder) if folder else reports_dir()
    csv_path, history = folder / "metrics.csv", folder / "metrics_history.csv"
    with exclusive(folder / ".metrics.lock", "the metrics table"):
        rows = read_rows(csv_path)
        if not rows:
            return None
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
        if not history.is_file():
            writer.writeheader()
        writer.writerows(rows)
        with open(history, "a", newline="") as f:
            f.write(buf.getvalue())
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
    rows = sorted(rows, key=lambda r: (r.get("method", ""), r.get("stage", ""), r.get("variant", "")))
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
            "recall of the part-defined classes. Every row's full provenance is in metrics.csv.\n")
    return "\n".join(lines) + "\n" + note


def speed_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per training run ({name: TrainResult}): steps, seconds, images/s."""
    return [{"run": name, "steps": r.steps, "seconds": r.seconds, "images/s": r.images_per_s}
            for name, r in results.items()]


def versus_rows(runs: dict[str, Any], results: dict[str, Any] | None = None, crf: bool = False,
                part_classes: Sequence[str] = ()) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Rows ("cam" stage, best threshold of each run's sweep) of experiments compared in one table,
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
