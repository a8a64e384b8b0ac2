"""Interactive CAM explorer over saved run artifacts: nothing is retrained or re-inferred.

A run qualifies when its `cams/<split>/` folder is complete (`_done`, written by
`Experiment.class_maps`). Pick a run, an image and a class; move the background threshold and
switch the dense CRF: the view (image, CAM overlay, pseudo mask, ground truth) and the
per-image IoU update at once. The state the view shows (`pseudo`, `iou`) is kept on the object,
so a test can drive the widgets and check what is rendered.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from wsss import viz
from wsss.cache import MARKER, stored_result
from wsss.data.voc import VOCDataset
from wsss.inference import load_cam
from wsss.metrics import confusion_matrix, segmentation_scores
from wsss.paths import data_dir, runs_dir
from wsss.stages.pseudo_masks import cam_to_label
from wsss.refine.crf import CRFParams


def runs_with_cams(root: str | os.PathLike | None = None, split: str = "val") -> list[Path]:
    """Run folders under `root` (default: the runs dir) whose class maps of `split` are complete."""
    root = Path(root) if root else runs_dir()
    return sorted(p for p in root.glob("*") if (p / "cams" / split / MARKER).is_file() and (p / "config.json").is_file())


def run_data_root(run: str | os.PathLike) -> Path:
    """The dataset a run was trained on, from its config.json (SynthVOC presets by name)."""
    config = json.loads((Path(run) / "config.json").read_text())
    if config.get("data_root"):
        return Path(config["data_root"])
    return data_dir() / f"synthvoc-{config['preset']}-s{config.get('data_seed', 0)}"


def run_label(run: str | os.PathLike) -> str:
    """A run as a reader names it: method, preset, seed, the options it sets, and its hash."""
    run = Path(run)
    try:
        config = json.loads((run / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return run.name
    parts = [config.get("method", "?"), config.get("preset", "?"), f"seed {config.get('train', {}).get('seed', 0)}"]
    options = config.get("method_options") or {}
    parts += [f"{k}={v}" for k, v in sorted(options.items())]
    if config.get("data_root"):
        parts.append(Path(config["data_root"]).name)
    return " · ".join(str(p) for p in parts) + f" ({run.name.rsplit('-', 1)[-1]})"


def image_iou(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> float:
    """mIoU of one image over the classes present in its prediction or ground truth (255 ignored)."""
    return segmentation_scores(confusion_matrix(pred, gt, num_classes + 1))["miou"]


class CAMExplorer:
    """Widgets: run, image, class, background threshold, CRF; a rendered view and an IoU line."""

    def __init__(self, runs: Sequence[str | os.PathLike] | None = None, split: str = "val",
                 bg_threshold: float | None = None, crf_params: CRFParams | None = None) -> None:
        import ipywidgets as w

        self.split = split
        self.runs = [Path(r) for r in (runs if runs is not None else runs_with_cams(split=split))]
        if not self.runs:
            raise FileNotFoundError(f"no run under {runs_dir()} has complete class maps of split {split!r}; "
                                    "run a method notebook (or Experiment.class_maps) first")
        self.crf_params = crf_params or CRFParams()
        self._datasets: dict[Path, VOCDataset] = {}
        fit = {"description_width": "initial"}  # labels never cut ("bg thresh...")
        self.run = w.Dropdown(options=[(run_label(r), r) for r in self.runs], description="run", style=fit,
                              layout=w.Layout(width="auto"))
        self.image = w.Dropdown(description="image", style=fit)
        self.previous, self.next = w.Button(description="◀ previous"), w.Button(description="next ▶")
        self.cls = w.Dropdown(description="class", style=fit)
        self.threshold = w.FloatSlider(value=0.3, min=0.0, max=1.0, step=0.01, description="background threshold",
                                       continuous_update=True, style=fit)
        self.crf = w.Checkbox(value=False, description="dense CRF")
        self.view = w.Image(format="png")
        self.info = w.HTML()
        wrap = w.Layout(flex_flow="row wrap")  # narrow windows: controls move to the next line
        self.widget = w.VBox([w.HBox([self.run], layout=wrap),
                              w.HBox([self.previous, self.image, self.next, self.cls], layout=wrap),
                              w.HBox([self.threshold, self.crf], layout=wrap), self.view, self.info])
        self.pseudo: np.ndarray | None = None
        self.iou: float = float("nan")
        self._fixed_threshold = bg_threshold
        self._quiet = False
        self._select_run()
        self.run.observe(lambda _: self._select_run(), names="value")
        self.image.observe(lambda _: self._select_image(), names="value")
        self.previous.on_click(lambda _: self.step(-1))
        self.next.on_click(lambda _: self.step(1))
        for control in (self.cls, self.threshold, self.crf):
            control.observe(lambda _: self.render(), names="value")

    # ------------------------------------------------------------------ data

    def dataset(self) -> VOCDataset:
        run = self.run.value
        if run not in self._datasets:
            self._datasets[run] = VOCDataset(run_data_root(run), self.split, with_mask=True, cache=True)
        return self._datasets[run]

    def _best_threshold(self, run: Path) -> float:
        """The run's threshold chosen on train (its train sweep), else its sweep of the split shown."""
        sweep = stored_result(run / "sweep_train.json") or stored_result(run / f"sweep_{self.split}.json")
        return float(sweep["best_threshold"]) if sweep else 0.3

    def _select_run(self) -> None:
        """New run: its image list, its best threshold; one render once every control is set."""
        ds = self.dataset()
        self._quiet = True
        try:
            self.threshold.value = self._fixed_threshold if self._fixed_threshold is not None else \
                self._best_threshold(self.run.value)
            if self.image.value not in ds.ids:
                self.image.options = ds.ids
                self.image.value = ds.ids[0]
            self._set_classes()
        finally:
            self._quiet = False
        self.render()

    def _select_image(self) -> None:
        if self._quiet:  # a new run's image list: _select_run finishes the update
            return
        self._quiet = True
        try:
            self._set_classes()
        finally:
            self._quiet = False
        self.render()

    def step(self, offset: int) -> None:
        """The previous (-1) or next (+1) image of the split, wrapping around."""
        ids = list(self.image.options)
        self.image.value = ids[(ids.index(self.image.value) + offset) % len(ids)]

    def _set_classes(self) -> None:
        """The class choices are the image's present classes (the ones its CAM file holds); the
        chosen class stays when the new image or run has it."""
        ds = self.dataset()
        keys, _ = load_cam(self.run.value / "cams" / self.split / f"{self.image.value}.npz")
        kept = self.cls.value
        self.cls.options = [(ds.class_names[k], int(k)) for k in keys] or [("(no class)", -1)]
        values = [v for _, v in self.cls.options]
        self.cls.value = kept if kept in values else values[0]

    # ------------------------------------------------------------------ view

    def render(self) -> None:
        """Recompute the pseudo mask and IoU for the current controls and redraw."""
        if self._quiet or self.image.value is None or self.cls.value is None:
            return
        ds = self.dataset()
        index = ds.ids.index(self.image.value)
        sample = ds.load(index)
        keys, cam = load_cam(self.run.value / "cams" / self.split / f"{self.image.value}.npz")
        thr = float(self.threshold.value)
        self.pseudo = cam_to_label(keys, cam, thr, sample["image"], self.crf_params if self.crf.value else None)
        self.iou = image_iou(self.pseudo, sample["mask"], ds.num_classes)
        c = int(self.cls.value)
        cls_map = cam[list(keys).index(c)] if c in keys else np.zeros(sample["image"].shape[:2], np.float32)
        name = ds.class_names[c] if c >= 0 else "none"
        fig = viz.image_grid([[sample["image"], viz.overlay(sample["image"], cls_map), viz.colorize(self.pseudo),
                               viz.colorize(sample["mask"])]],
                             [[sample["id"], f"CAM: {name}", f"pseudo (thr {thr:.2f}{', CRF' if self.crf.value else ''})",
                               "ground truth"]], size=2.4)
        self.view.value = _png(fig)
        self.info.value = f"<b>{self.run.value.name}</b> {sample['id']}: image mIoU {100 * self.iou:.1f}% " \
                          f"at threshold {thr:.2f}{' with CRF' if self.crf.value else ''}"

    def state(self) -> dict[str, Any]:
        return {"run": self.run.value.name, "image": self.image.value, "class": self.cls.value,
                "bg_threshold": float(self.threshold.value), "crf": bool(self.crf.value), "iou": self.iou}


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Decode rendered PNG bytes (for tests and saving): (H, W, 3|4) uint8."""
    return np.asarray(Image.open(io.BytesIO(data)))


def runs_or_baseline(preset: str, split: str = "val") -> list[Path]:
    """Runs with class maps; when there are none yet, the CAM baseline's of `preset` (trained if needed)."""
    runs = runs_with_cams(split=split)
    if runs:
        return runs
    from wsss.experiment import Experiment, ExperimentConfig

    exp = Experiment(ExperimentConfig.for_preset(preset, method="cam"), progress=False)
    exp.class_maps(split)
    exp.sweep(split)
    return [exp.run_dir]
