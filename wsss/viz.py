"""Pictures for notebooks: overlays, label colouring, grids, curves. No computation lives here."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from wsss.io import IGNORE_INDEX, VOC_PALETTE
from wsss.paths import reports_dir


def colorize(label: np.ndarray) -> np.ndarray:
    """Label map -> RGB with the VOC palette; the ignore band is drawn white."""
    rgb = VOC_PALETTE[np.asarray(label, dtype=np.uint8)]
    rgb[np.asarray(label) == IGNORE_INDEX] = 255
    return rgb


def heat(values: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """A [0, 1] map -> RGB uint8."""
    return (matplotlib.colormaps[cmap](np.clip(values, 0, 1))[..., :3] * 255).astype(np.uint8)


def overlay(image: np.ndarray, values: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a [0, 1] map (CAM, saliency, contour) over an RGB image."""
    return (image.astype(np.float32) * (1 - alpha) + heat(values, cmap).astype(np.float32) * alpha).astype(np.uint8)


def image_grid(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[Sequence[str]] | None = None,
               row_labels: Sequence[str] | None = None, size: float = 1.8,
               class_names: Sequence[str] | None = None, score_bar: bool = False) -> plt.Figure:
    """A grid of images (rows x columns); titles per cell, labels per row. With `class_names`, a
    legend of every class colour (and the ignore band) for grids of label maps; with `score_bar`,
    a colour bar for the [0, 1] maps drawn by `heat` / `overlay`."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(size * n_cols, size * n_rows), squeeze=False)
    for i in range(n_rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(rows[i]):
                img = rows[i][j]
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1 if img.dtype != np.uint8 else 255,
                          interpolation="nearest")
                if titles is not None and j < len(titles[i]):
                    ax.set_title(titles[i][j], fontsize=8)
        if row_labels is not None:
            axes[i][0].text(-0.08, 0.5, row_labels[i], transform=axes[i][0].transAxes, rotation=90, va="center",
                            ha="right", fontsize=8)
    fig.tight_layout()
    if class_names is not None:
        add_label_legend(fig, class_names, np.arange(len(class_names) + 1))
    if score_bar:
        add_score_colorbar(fig, fig.axes, label="map value")
    return fig


def add_label_legend(fig: plt.Figure, class_names: Sequence[str], labels: Any) -> None:
    """A legend under `fig` of the colours of the label values in `labels` (0 background, k + 1
    class k) and of white, the ignore label 255: ground truth's band along object boundaries, and
    the pixels a pseudo mask leaves unlabelled."""
    from matplotlib.patches import Patch

    values = sorted({int(v) for v in np.unique(np.asarray(labels))} - {IGNORE_INDEX})
    names = ["background", *class_names]
    handles = [Patch(facecolor=VOC_PALETTE[v] / 255, edgecolor="0.6", label=names[v]) for v in values]
    handles.append(Patch(facecolor="white", edgecolor="0.6", label="ignored: boundary band, unlabelled"))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), 5),
               fontsize=7, frameon=False)


def add_score_colorbar(fig: plt.Figure, axes: Any, label: str = "class score", cmap: str = "jet") -> None:
    """A [0, 1] colour bar beside `axes` for the maps drawn by `heat` / `overlay`."""
    scale = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, 1), cmap=cmap)
    fig.colorbar(scale, ax=axes, fraction=0.03, pad=0.01).set_label(label, fontsize=7)


def titled_grid(rows: Sequence[Mapping[str, np.ndarray]], row_labels: Sequence[str] | None = None,
                size: float = 1.8, class_names: Sequence[str] | None = None, score_bar: bool = False) -> plt.Figure:
    """`image_grid` from rows of {title: image}: each row names its own panels."""
    return image_grid([list(r.values()) for r in rows], [list(r) for r in rows], row_labels, size, class_names,
                      score_bar)


def plot_curves(logs: dict[str, list[dict[str, float]]], keys: Sequence[str] = ("loss",), smooth: int = 10) -> plt.Figure:
    """Training curves of one or more runs (rows of train_log.csv), moving-average smoothed."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, rows in logs.items():
            rows = [r for r in rows if key in r]
            if not rows:
                continue
            steps = np.array([r["step"] for r in rows])
            vals = np.array([r[key] for r in rows])
            k = max(1, min(smooth, len(vals)))
            ax.plot(steps[k - 1:], np.convolve(vals, np.ones(k) / k, mode="valid"), label=name)
        ax.set_xlabel("step")
        ax.set_title(key)
        if ax.lines:
            ax.legend(fontsize=7)
        else:  # no run logs this quantity (e.g. a loss term of one method only)
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


def plot_sweeps(sweeps: dict[str, dict[str, Any]]) -> plt.Figure:
    """mIoU against background threshold for each run, with its best point marked."""
    fig, ax = plt.subplots(figsize=(5, 3))
    for name, sw in sweeps.items():
        ax.plot(sw["thresholds"], np.array(sw["miou"]) * 100, marker=".", label=name)
        best = int(np.nanargmax(sw["miou"]))
        ax.scatter([sw["thresholds"][best]], [sw["miou"][best] * 100], s=40)
    ax.set_xlabel("background threshold")
    ax.set_ylabel("mIoU (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, name: str, folder: str | os.PathLike | None = None) -> Path:
    folder = Path(folder) if folder else reports_dir() / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], digits: int = 1,
                   percent: Sequence[str] = ()) -> str:
    """A small Markdown table for notebooks; `percent` columns are shown x100."""
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            if isinstance(v, float):
                v = f"{v * 100:.{digits}f}" if c in percent else f"{v:.{digits + 2}g}"
            cells.append(str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def pick_examples(dataset, n: int) -> list[tuple[int, int]]:
    """(index, class) pairs: the first images showing each class in turn, so every class is seen."""
    picks: list[tuple[int, int]] = []
    used: set[int] = set()
    for round_ in range(n):
        for c in range(dataset.num_classes):
            if len(picks) >= n:
                return picks
            for i in range(len(dataset)):
                if i not in used and dataset.label(i)[c] > 0.5:
                    picks.append((i, c))
                    used.add(i)
                    break
    return picks


def cam_example_grid(dataset, cam_dir: str | os.PathLike, n: int, bg_threshold: float,
                     extra: dict[str, Any] | None = None) -> plt.Figure:
    """Rows of image | CAM of one present class | pseudo mask | ground truth (+ `extra` columns:
    name -> function(sample) returning an image)."""
    from wsss.inference import load_cam
    from wsss.stages.pseudo_masks import cam_to_label

    rows, titles, shown = [], [], []
    for index, c in pick_examples(dataset, n):
        sample = dataset.load(index)
        keys, cam = load_cam(Path(cam_dir) / f"{sample['id']}.npz")
        cls_map = cam[list(keys).index(c)] if c in keys else np.zeros(sample["image"].shape[:2])
        pseudo = cam_to_label(keys, cam, bg_threshold)
        row = [sample["image"], overlay(sample["image"], cls_map), colorize(pseudo), colorize(sample["mask"])]
        title = [sample["id"], f"CAM: {dataset.class_names[c]}", f"pseudo (thr {bg_threshold:.2f})", "ground truth"]
        for name, fn in (extra or {}).items():
            row.append(fn(sample))
            title.append(name)
        rows.append(row)
        titles.append(title)
        shown += [np.unique(pseudo), np.unique(sample["mask"])]
    fig = image_grid(rows, titles)
    add_label_legend(fig, dataset.class_names, np.concatenate(shown) if shown else [0])
    add_score_colorbar(fig, fig.axes)
    return fig
