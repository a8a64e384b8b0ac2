"""Every method side by side: CAMs, pseudo masks, the final segmentation network, the papers.

Each method's main run is `ExperimentConfig.for_preset(preset, method=name)`, the run its own
notebook trains, so the comparison costs nothing for methods already run. The protocol is the
papers': class maps scored on val, pseudo masks on train (what the final network learns from),
the final network on val, and the weak/full ratio against the same network on ground truth.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import matplotlib.pyplot as plt

from wsss import viz
from wsss.experiment import Experiment, ExperimentConfig
from wsss.io import load_label_png
from wsss.methods.base import WSSSMethod, available_methods, main_methods, method_class
from wsss.paper_numbers import paper_numbers
from wsss.report import make_row
from wsss.stages.final import FinalStage, SegConfig, threshold_of_masks

def split_registered(methods: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(registered, missing) among `methods`, order kept; None: every main method of the registry
    (those with a notebook), in notebook order."""
    if methods is None:
        return main_methods(), []
    known = set(available_methods())
    return [m for m in methods if m in known], [m for m in methods if m not in known]


def main_experiment(preset: str, method: str, progress: bool = False, **overrides: Any) -> Experiment:
    """The method's main run (no method options: its paper defaults), shared with its notebook."""
    return Experiment(ExperimentConfig.for_preset(preset, method=method, **overrides), progress=progress)


def has_class_maps(method: str) -> bool:
    return method_class(method).class_maps is not WSSSMethod.class_maps


def contour_scorer(method: str) -> Callable[[Experiment], dict[str, Any]] | None:
    """`wsss.analysis.contours.contour_scores` for methods that predict contours (their class sets
    `predicts_contours`: SANCE and its contour baseline), else None."""
    from wsss.analysis.contours import contour_scores

    return contour_scores if getattr(method_class(method), "predicts_contours", False) else None


def pseudo_mask_scores(exp: Experiment, split: str = "train") -> dict[str, Any]:
    """Scores of the method's final pseudo masks of `split`, with provenance (and their folder)."""
    masks = exp.final_pseudo_masks(split)
    crf = masks.name.endswith("_crf")
    return {**exp.evaluate_masks(masks, split), **exp.provenance(split, threshold_of_masks(masks), crf),
            "pseudo_source": str(masks)}


def method_rows(exp: Experiment, part_classes: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Report rows of one method's main run: "cam" (val, threshold chosen on train, when it has class maps) and
    "pseudo" (train split), with training time and images/s; contour F where the method has one."""
    name = exp.config.method
    t = time.perf_counter()
    result = exp.train()
    timing = {"train_s": result.seconds, "images_per_s": result.images_per_s}
    rows: dict[str, dict[str, Any]] = {}
    if has_class_maps(name):
        rows["cam"] = make_row(exp.evaluate(), variant=name, stage="cam", part_classes=part_classes, **timing)
    scorer = contour_scorer(name)
    contour = {"contour_f": scorer(exp)["ods_f"]} if scorer else {}
    rows["pseudo"] = make_row(pseudo_mask_scores(exp, "train"), variant=name, stage="pseudo",
                              part_classes=part_classes, **timing, **contour)
    rows["pseudo"]["stage_s"] = time.perf_counter() - t
    return rows


COMPARISON_COLUMNS = ("variant", "stage", "split", "bg_threshold", "miou", "fg_precision", "fg_recall", "context_fp_rate",
                      "part_recall")


def comparison_rows_table(exp: Experiment, part_classes: Sequence[str] = ()) -> str:
    """Markdown of `method_rows(exp)`: the rows notebook 07 compares, made by the method's own
    notebook so that they are ready (cached) when the comparison runs after the method notebooks,
    which `wsss demo` runs side by side."""
    rows = list(method_rows(exp, part_classes).values())
    columns = [c for c in COMPARISON_COLUMNS if any(c in r for r in rows)]
    return viz.markdown_table(rows, columns, percent=[c for c in columns if c not in ("variant", "stage", "split",
                                                                                        "bg_threshold")])


def best_by_pseudo(rows: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The method with the highest pseudo-mask mIoU (train)."""
    return max(rows, key=lambda m: rows[m]["pseudo"]["miou"])


def default_final_methods(rows: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The CAM baseline (when run) plus the best method by pseudo-mask mIoU."""
    best = best_by_pseudo(rows)
    return [m for m in ("cam",) if m in rows and m != best] + [best]


def final_stage(exp: Experiment, ground_truth: bool = False, config: SegConfig | None = None,
                progress: bool = False) -> FinalStage:
    return (FinalStage.ground_truth(exp, config, progress) if ground_truth
            else FinalStage.from_experiment(exp, config, progress=progress))


def final_row(stage: FinalStage, crf: bool = False, part_classes: Sequence[str] = ()) -> dict[str, Any]:
    """The "final" row of a trained (or cached) final stage, with its training and inference cost."""
    t = time.perf_counter()
    result = stage.train()
    scores = stage.evaluate(crf=crf)
    gt = stage.source["kind"] == "ground_truth"
    extra = {"method": "ground_truth"} if gt else {}
    variant = f"{stage.variant}{' + CRF' if crf else ''}"
    row = make_row(scores, variant=variant, stage="final", part_classes=part_classes, train_s=result.seconds,
                   images_per_s=result.images_per_s, **extra)
    row["stage_s"] = time.perf_counter() - t
    return row


def comparison_table(rows: dict[str, dict[str, dict[str, Any]]], finals: dict[str, dict[str, Any]],
                     upper: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One line per method: CAM mIoU (val), pseudo-mask scores (train), final mIoU (val) and its
    ratio to the ground-truth-trained network."""
    table = []
    for m, r in rows.items():
        p = r["pseudo"]
        line = {"method": m, "cam_miou": r.get("cam", {}).get("miou", ""), "pseudo_miou": p["miou"],
                "precision": p.get("fg_precision"), "recall": p.get("fg_recall"), "boundary_iou": p.get("boundary_iou"),
                "context_fp": p.get("context_fp_rate"), "part_recall": p.get("part_recall", ""),
                "contour_f": p.get("contour_f", ""), "train_s": round(float(p["train_s"])),
                "final_miou": "", "weak_full": ""}
        if m in finals:
            line["final_miou"] = finals[m]["miou"]
            if upper is not None:
                line["weak_full"] = finals[m]["miou"] / upper["miou"]
        table.append(line)
    if upper is not None:
        table.append({"method": "ground truth (upper bound)", "final_miou": upper["miou"], "weak_full": 1.0,
                      "train_s": round(float(upper["train_s"]))})
    return table


def papers_table(methods: Sequence[str], rows: dict[str, dict[str, dict[str, Any]]],
                 finals: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Ours (SynthVOC) next to the papers' PASCAL VOC 2012 numbers (percent)."""
    out = []
    for m in methods:
        p = paper_numbers(m)
        ours = rows.get(m, {})
        out.append({"method": m,
                    "ours CAM (val)": ours.get("cam", {}).get("miou", ""),
                    "ours pseudo (train)": ours.get("pseudo", {}).get("miou", ""),
                    "ours final (val)": finals.get(m, {}).get("miou", ""),
                    "paper CAM (train)": _pct(p.cam_train if p else None),
                    "paper pseudo (train)": _pct(p.pseudo_train if p else None),
                    "paper final (val)": _pct(p.seg_val if p else None),
                    "paper final (test)": _pct(p.seg_test if p else None),
                    "paper source": p.source if p else ""})
    return out


def _pct(v: float | None) -> float | str:
    return v / 100 if v is not None else ""


def side_by_side(dataset, label_dirs: dict[str, str | os.PathLike], n: int = 4) -> plt.Figure:
    """The same images of `dataset` across methods: image | ground truth | one label map per entry."""
    rows, titles = [], []
    for index, _ in viz.pick_examples(dataset, n):
        sample = dataset.load(index)
        row = [sample["image"], viz.colorize(sample["mask"])]
        title = [sample["id"], "ground truth"]
        for name, folder in label_dirs.items():
            row.append(viz.colorize(load_label_png(Path(folder) / f"{sample['id']}.png")))
            title.append(name)
        rows.append(row)
        titles.append(title)
    return viz.image_grid(rows, titles, class_names=dataset.class_names)
