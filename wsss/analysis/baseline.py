"""The section every method notebook opens with: the method's run next to the CAM baseline's, as
background-threshold sweeps and as report rows (with + CRF rows), the method's rows recorded."""
from __future__ import annotations

from typing import Any, Sequence

from wsss import report, viz
from wsss.experiment import Experiment


def threshold_sweeps(runs: dict[str, Experiment], figure: str) -> dict[str, dict[str, Any]]:
    """Each run's background-threshold sweeps on the train split (where the threshold is chosen)
    and on the reported split, plotted and saved as `figure`; prints both choices."""
    sweeps = {}
    for name, run in runs.items():
        sweeps[f"{name} ({run.config.train_split})"] = run.sweep(run.config.train_split)
        sweeps[f"{name} ({run.config.eval_split}, oracle)"] = run.sweep()
    viz.save_figure(viz.plot_sweeps(sweeps), figure)
    print("background threshold chosen on train:", {name: run.best_threshold() for name, run in runs.items()},
          "| best on the reported split (oracle):", {name: run.sweep()["best_threshold"] for name, run in runs.items()})
    return sweeps


def versus_baseline(runs: dict[str, Experiment], results: dict[str, Any], crf: bool = True,
                    part_classes: Sequence[str] = ()) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """`report.versus_rows` of `runs` ({variant: run}, the CAM baseline among them); every row but
    the baseline's is recorded (notebook 01 records those)."""
    rows, scores = report.versus_rows(runs, results, crf=crf, part_classes=part_classes)
    report.record([r for r in rows if r["method"] != "cam"])
    return rows, scores
