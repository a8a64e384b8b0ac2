"""Interactive CAM explorer over saved run artifacts: nothing is retrained or re-inferred.

A run qualifies when its `cams/<split>/` folder is complete (`_done`, written by
`Experiment.class_maps`). Pick a run, an image and a class; move the background threshold and
switch the dense CRF: the view (image, CAM overlay, pseudo mask, ground truth, with a class
legend and a score colour bar) and the per-image IoU update at once. Images can be listed worst
first by their IoU at the run's chosen threshold and filtered by class, so failures are found
fast; a second run can be shown beside the first on the same image. The state the view shows
(`pseudo`, `iou`, and `beside_iou` for the second run) is kept on the object, so a test can drive
the widgets and check what is rendered.
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


def image_ious(run: Path, dataset: VOCDataset, split: str, bg_threshold: float) -> dict[str, float]:
    """{image id: image mIoU} of the run's thresholded class maps (no CRF) over the split."""
    ious = {}
    for index, sample_id in enumerate(dataset.ids):
        keys, cam = load_cam(run / "cams" / split / f"{sample_id}.npz")
        ious[sample_id] = image_iou(cam_to_label(keys, cam, bg_threshold), dataset.load(index)["mask"],
                                    dataset.num_classes)
    return ious


ORDERS = {"split order": "split", "worst image mIoU first": "worst", "best image mIoU first": "best"}


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
        self.order = w.Dropdown(options=list(ORDERS.items()), value="split", description="order", style=fit)
        self.with_class = w.Dropdown(description="images with", style=fit)
        # "" for no second run: a Dropdown takes the value None for "nothing selected"
        self.beside = w.Dropdown(options=[("no second run", ""), *((run_label(r), r) for r in self.runs)],
                                 description="beside", style=fit, layout=w.Layout(width="auto"))
        self.threshold = w.FloatSlider(value=0.3, min=0.0, max=1.0, step=0.01, description="background threshold",
                                       continuous_update=True, style=fit)
        self.crf = w.Checkbox(value=False, description="dense CRF")
        self.view = w.Image(format="png")
        self.info = w.HTML()
        wrap = w.Layout(flex_flow="row wrap")  # narrow windows: controls move to the next line
        self.widget = w.VBox([w.HBox([self.run, self.beside], layout=wrap),
                              w.HBox([self.order, self.with_class], layout=wrap),
                              w.HBox([self.previous, self.image, self.next, self.cls], layout=wrap),
                              w.HBox([self.threshold, self.crf], layout=wrap), self.view, self.info])
        self.pseudo: np.ndarray | None = None
        self.iou: float = float("nan")
        self.beside_iou: float | None = None
        self._ious: dict[Path, dict[str, float]] = {}
        self._fixed_threshold = bg_threshold
        self._quiet = False
        self._select_run()
        self.run.observe(lambda _: self._select_run(), names="value")
        self.image.observe(lambda _: self._select_image(), names="value")
        for control in (self.order, self.with_class):
            control.observe(lambda _: self._list_images(), names="value")
        self.previous.on_click(lambda _: self.step(-1))
        self.next.on_click(lambda _: self.step(1))
        self.crf.observe(self._toggle_crf, names="value")
        for control in (self.cls, self.threshold, self.beside):
            control.observe(lambda _: self.render(), names="value")

    # ------------------------------------------------------------------ data

    def dataset(self) -> VOCDataset:
        run = self.run.value
        if run not in self._datasets:
            self._datasets[run] = VOCDataset(run_data_root(run), self.split, with_mask=True, cache=True)
        return self._datasets[run]

    def _best_threshold(self, run: Path, crf: bool = False) -> float:
        """The run's threshold chosen on train (its train sweep), else its sweep of the split shown;
        with `crf` the one chosen on train with CRF where the run has it (`Experiment.crf_threshold`)."""
        climb = stored_result(run / "crf_threshold_train.json") if crf else None
        if climb:
            return float(climb["best_threshold"])
        sweep = stored_result(run / "sweep_train.json") or stored_result(run / f"sweep_{self.split}.json")
        return float(sweep["best_threshold"]) if sweep else 0.3

    def _toggle_crf(self, change: dict[str, Any]) -> None:
        """CRF on or off: a slider at the run's chosen threshold moves to the one chosen for the new
        setting (maps through CRF have their own, lower one); a slider the user moved stays."""
        run = self.run.value
        at_chosen = abs(self.threshold.value - self._best_threshold(run, change["old"])) < 1e-6
        if self._fixed_threshold is None and at_chosen:
            quiet, self._quiet = self._quiet, True
            try:
                self.threshold.value = self._best_threshold(run, change["new"])
            finally:
                self._quiet = quiet
        self.render()

    def ious(self, run: Path) -> dict[str, float]:
        """Per-image mIoU of `run` at its chosen threshold (what the order sorts by), computed once."""
        if run not in self._ious:
            self._ious[run] = image_ious(run, self.dataset(), self.split, self._best_threshold(run))
        return self._ious[run]

    def _select_run(self) -> None:
        """New run: its image list, its best threshold; one render once every control is set."""
        ds = self.dataset()
        self._quiet = True
        try:
            self.threshold.value = self._fixed_threshold if self._fixed_threshold is not None else \
                self._best_threshold(self.run.value, self.crf.value)
            kept = self.with_class.value
            self.with_class.options = [("any class", -1), *((n, k) for k, n in enumerate(ds.class_names))]
            self.with_class.value = kept if kept in dict(self.with_class.options).values() else -1
            self._list_images(render=False)  # also sets the image's classes
        finally:
            self._quiet = False
        self.render()

    def _list_images(self, render: bool = True) -> None:
        """The image list in the chosen order, only images whose label has the chosen class; the
        shown image stays when it is still listed."""
        ds = self.dataset()
        c = self.with_class.value
        ids = [i for k, i in enumerate(ds.ids) if c is None or c < 0 or ds.label(k)[c] > 0.5]
        if not ids:
            ids = list(ds.ids)  # no image has the class: the whole split rather than an empty list
        if self.order.value != "split":
            ious = self.ious(self.run.value)
            ids.sort(key=lambda i: ious[i], reverse=self.order.value == "best")
            options = [(f"{i}  (mIoU {100 * ious[i]:.1f}%)", i) for i in ids]
        else:
            options = [(i, i) for i in ids]
        quiet, self._quiet = self._quiet, True
        try:
            current = self.image.value
            self.image.options = options
            self.image.value = current if current in ids else ids[0]
            self._set_classes()
        finally:
            self._quiet = quiet
        if render:
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
        """The previous (-1) or next (+1) image of the list, wrapping around."""
        ids = [v for _, v in self.image.options]
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
        sample = ds.load(ds.ids.index(self.image.value))
        thr, c = float(self.threshold.value), int(self.cls.value)
        name = ds.class_names[c] if c >= 0 else "none"
        crf = ", CRF" if self.crf.value else ""
        rows, titles, infos, shown = [], [], [], [np.unique(sample["mask"])]
        self.beside_iou = None
        runs = [self.run.value]
        beside = self.beside.value
        if beside and (beside / "cams" / self.split / f"{self.image.value}.npz").is_file():
            runs.append(beside)
        for first, run in zip((True, False), runs):
            keys, cam = load_cam(run / "cams" / self.split / f"{self.image.value}.npz")
            # the second run at its own chosen threshold (the slider is the first run's)
            run_thr = thr if first else self._best_threshold(run, self.crf.value)
            pseudo = cam_to_label(keys, cam, run_thr, sample["image"], self.crf_params if self.crf.value else None)
            iou = image_iou(pseudo, sample["mask"], ds.num_classes)
            shown.append(np.unique(pseudo))
            cls_map = cam[list(keys).index(c)] if c in keys else np.zeros(sample["image"].shape[:2], np.float32)
            rows.append([sample["image"], viz.overlay(sample["image"], cls_map), viz.colorize(pseudo),
                         viz.colorize(sample["mask"])])
            titles.append([sample["id"], f"CAM: {name}", f"pseudo (thr {run_thr:.2f}{crf})", "ground truth"])
            infos.append(f"<b>{run_label(run)}</b>: image mIoU {100 * iou:.1f}% at threshold {run_thr:.2f}{crf}")
            if first:
                self.pseudo, self.iou = pseudo, iou
            else:
                self.beside_iou = iou
        fig = viz.image_grid(rows, titles, row_labels=[run_label(r) for r in runs] if len(runs) > 1
                             else None, size=2.4)
        viz.add_label_legend(fig, ds.class_names, np.concatenate(shown))
        viz.add_score_colorbar(fig, fig.axes)
        self.view.value = _png(fig)
        if beside and len(runs) == 1:  # a run on other data: nothing to show beside this image
            infos.append(f"<b>{run_label(beside)}</b> has no class maps of {self.image.value}")
        self.info.value = f"{sample['id']}<br>" + "<br>".join(infos)

    def state(self) -> dict[str, Any]:
        return {"run": self.run.value.name, "image": self.image.value, "class": self.cls.value,
                "bg_threshold": float(self.threshold.value), "crf": bool(self.crf.value), "iou": self.iou,
                "beside": self.beside.value.name if self.beside.value else None,
                "beside_iou": self.beside_iou, "order": self.order.value, "images_with": self.with_class.value}


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

    print(f"No run has class maps of {split} yet: making the CAM baseline of preset {preset} "
          "(training, class maps, threshold sweep; about 2 minutes at quick on 2 CPU cores).", flush=True)
    exp = Experiment(ExperimentConfig.for_preset(preset, method="cam"), progress=True)
    exp.class_maps(split)
    exp.sweep(split)
    return [exp.run_dir]
