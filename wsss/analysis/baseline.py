"""The section every method notebook opens with: the method's run next to the CAM baseline's, as
background-threshold sweeps and as report rows (with + CRF rows), the method's rows recorded."""
from __future__ import annotations

from typing import Any, Sequence

from wsss import report, viz
from wsss.experiment import Experiment


def threshold_sweeps(runs: dict[str, Experiment], figure: str) -> dict[str, dict[str, Any]]:
    """Each run's background-threshold sweep, plotted and saved as `figure`; prints the best ones."""
    sweeps = {name: run.sweep() for name, run in runs.items()}
    viz.save_figure(viz.plot_sweeps(sweeps), figure)
    print({name: sw["best_threshold"] for name, sw in sweeps.items()})
    return sweeps


def versus_baseline(runs: dict[str, Experiment], results: dict[str, Any], crf: bool = True,
                    part_classes: Sequence[str] = ()) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """`report.versus_rows` of `runs` ({variant: run}, the CAM baseline among them); every row but
    the baseline's is recorded (notebook 01 records those)."""
    rows, scores = report.versus_rows(runs, results, crf=crf, part_classes=part_classes)
    report.record([r for r in rows if r["method"] != "cam"])
    return rows, scores
